// vpnmeter_policy_tool: sets enforcement on the pinned maps of a running
// agent, for live tests (tests/e2e/test_enforcement_live.py). Not installed:
// in production the quota engine drives Enforcer and HtbShaper itself.
//
// Run it in the agent's network namespace (interface names and HTB qdiscs
// are per namespace), with the agent's pin path:
//   vpnmeter_policy_tool --pin-path P policy set --interface eth0 --address 10.67.0.2 --block
//   vpnmeter_policy_tool --pin-path P policy set ... --shape 2 --police 2M [--burst BYTES]
//   vpnmeter_policy_tool --pin-path P policy set ... --budget both --slot 3
//   vpnmeter_policy_tool --pin-path P policy clear --interface eth0 --address 10.67.0.2
//   vpnmeter_policy_tool --pin-path P budget set --slot 3 --bytes 1000000 [--exhausted throttle
//                        --throttle-class 3 --throttle-rate 1M]
//   vpnmeter_policy_tool --pin-path P budget add --slot 3 --bytes 500000
//   vpnmeter_policy_tool --pin-path P budget show --slot 3          (JSON)
//   vpnmeter_policy_tool --pin-path P htb class --interface eth0 --minor 2 --rate 2M
//   vpnmeter_policy_tool --pin-path P htb remove --interface eth0
//   vpnmeter_policy_tool --pin-path P drops                          (JSON)
// Rates are bit/s with an optional k, M or G (powers of 1000).
#include <net/if.h>

#include <cstdio>
#include <stdexcept>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "bpf_maps.h"
#include "enforcer.h"
#include "htb.h"
#include "netlink.h"

using namespace vpnmeter;

namespace {

uint64_t parse_rate(const std::string &text)
{
    size_t used = 0;
    const double value = std::stod(text, &used);
    std::string unit = text.substr(used);
    if (unit.size() >= 3 && unit.compare(unit.size() - 3, 3, "bit") == 0) unit.resize(unit.size() - 3);
    double scale = 1;
    if (unit == "k" || unit == "K")
        scale = 1e3;
    else if (unit == "m" || unit == "M")
        scale = 1e6;
    else if (unit == "g" || unit == "G")
        scale = 1e9;
    else if (!unit.empty())
        throw std::invalid_argument("bad rate '" + text + "'");
    return static_cast<uint64_t>(value * scale);
}

uint32_t ifindex_of(const std::string &name)
{
    const unsigned index = if_nametoindex(name.c_str());
    if (!index) throw std::runtime_error("no interface " + name + " in this network namespace");
    return index;
}

template <class T> T must(Result<T> result)
{
    if (!result) throw std::runtime_error(result.error().message());
    return std::move(result.value());
}

nlohmann::json traffic_json(const std::string &reason, const Traffic &t)
{
    return {{reason + "_upload_packets", t.upload.packets},
            {reason + "_upload_bytes", t.upload.bytes},
            {reason + "_download_packets", t.download.packets},
            {reason + "_download_bytes", t.download.bytes}};
}

} // namespace

int main(int argc, char **argv)
{
    CLI::App app{"Sets vpnmeter enforcement on a running agent's pinned maps (test helper)."};
    app.require_subcommand(1);
    std::string pin_path = "/sys/fs/bpf/vpnmeter";
    app.add_option("--pin-path", pin_path, "the agent's bpf.pin_path");

    std::string interface, address, budget_dirs, police, exhausted = "block", throttle_rate, rate;
    uint32_t slot = 0, shape = 0, throttle_class = 0, minor = 0;
    uint64_t burst = 0;
    int64_t bytes = 0;
    bool block = false;

    CLI::App *policy = app.add_subcommand("policy", "per-address policies")->require_subcommand(1);
    CLI::App *policy_set = policy->add_subcommand("set", "install or replace one address's policy");
    CLI::App *policy_clear = policy->add_subcommand("clear", "remove one address's policy");
    for (CLI::App *cmd : {policy_set, policy_clear}) {
        cmd->add_option("--interface", interface, "the client's interface")->required();
        cmd->add_option("--address", address, "the client's address")->required();
    }
    policy_set->add_flag("--block", block, "drop everything, both directions");
    policy_set->add_option("--budget", budget_dirs, "directions that draw on the user's budget")
        ->check(CLI::IsMember({"up", "down", "both"}));
    policy_set->add_option("--slot", slot, "the user's slot (budget and policer)");
    policy_set->add_option("--shape", shape, "HTB class minor for download (7670:MINOR)");
    policy_set->add_option("--police", police, "upload rate, bit/s");
    policy_set->add_option("--burst", burst, "policer bucket depth in bytes (default from the rate)");

    CLI::App *budget = app.add_subcommand("budget", "per-user budgets")->require_subcommand(1);
    CLI::App *budget_set = budget->add_subcommand("set", "replace a user's budget");
    CLI::App *budget_add = budget->add_subcommand("add", "add bytes to a user's budget, atomically");
    CLI::App *budget_show = budget->add_subcommand("show", "print a user's budget (JSON)");
    for (CLI::App *cmd : {budget_set, budget_add, budget_show})
        cmd->add_option("--slot", slot)->required();
    for (CLI::App *cmd : {budget_set, budget_add})
        cmd->add_option("--bytes", bytes)->required();
    budget_set->add_option("--exhausted", exhausted, "block or throttle")->check(CLI::IsMember({"block", "throttle"}));
    budget_set->add_option("--throttle-class", throttle_class, "HTB class minor once used up");
    budget_set->add_option("--throttle-rate", throttle_rate, "upload rate once used up, bit/s");

    CLI::App *htb = app.add_subcommand("htb", "HTB shaping classes")->require_subcommand(1);
    CLI::App *htb_class = htb->add_subcommand("class", "create or change class 7670:MINOR");
    CLI::App *htb_remove = htb->add_subcommand("remove", "take our HTB root qdisc off the interface");
    for (CLI::App *cmd : {htb_class, htb_remove})
        cmd->add_option("--interface", interface)->required();
    htb_class->add_option("--minor", minor)->required()->check(CLI::Range(2, 0xfffe));
    htb_class->add_option("--rate", rate, "bit/s")->required();

    CLI::App *drops = app.add_subcommand("drops", "drops per client and reason (JSON)");

    CLI11_PARSE(app, argc, argv);
    spdlog::set_default_logger(spdlog::stderr_color_mt("vpnmeter_policy_tool")); // stdout is for answers

    try {
        if (*policy_set || *policy_clear) {
            Enforcer enforcer = must(Enforcer::open(pin_path));
            const ClientKey key = ClientKey::parse(ifindex_of(interface), address);
            if (*policy_clear) {
                must(enforcer.clear_policy(key));
                return 0;
            }
            PolicyEntry entry;
            entry.user_slot = slot;
            if (block) entry.flags |= VPNMETER_POLICY_BLOCK;
            if (budget_dirs == "up" || budget_dirs == "both") entry.flags |= VPNMETER_POLICY_BUDGET_UPLOAD;
            if (budget_dirs == "down" || budget_dirs == "both") entry.flags |= VPNMETER_POLICY_BUDGET_DOWNLOAD;
            if (shape) {
                entry.flags |= VPNMETER_POLICY_SHAPED;
                entry.classid = htb_classid(static_cast<uint16_t>(shape));
            }
            if (!police.empty()) {
                entry.flags |= VPNMETER_POLICY_POLICED;
                entry.rate_bps = parse_rate(police);
                entry.burst_bytes = burst;
            }
            must(enforcer.set_policy(key, entry));
        } else if (*budget_set || *budget_add || *budget_show) {
            Enforcer enforcer = must(Enforcer::open(pin_path));
            if (*budget_set) {
                BudgetEntry entry;
                entry.remaining_bytes = bytes;
                entry.exhausted_action = exhausted == "throttle" ? ExhaustedAction::throttle : ExhaustedAction::block;
                if (throttle_class) entry.exhausted_classid = htb_classid(static_cast<uint16_t>(throttle_class));
                if (!throttle_rate.empty()) entry.exhausted_rate_bps = parse_rate(throttle_rate);
                must(enforcer.set_budget(slot, entry));
                must(enforcer.reset_policer(slot));
            } else if (*budget_add) {
                std::printf("%lld\n", static_cast<long long>(must(enforcer.add_budget(slot, bytes))));
            } else {
                const BudgetEntry b = must(enforcer.budget(slot));
                std::printf("%s\n", nlohmann::json{{"remaining_bytes", b.remaining_bytes},
                                                   {"exhausted_action", static_cast<uint32_t>(b.exhausted_action)},
                                                   {"exhausted_classid", b.exhausted_classid},
                                                   {"exhausted_rate_bps", b.exhausted_rate_bps}}
                                        .dump()
                                        .c_str());
            }
        } else if (*htb_class || *htb_remove) {
            if (*htb_remove) { // no attach: that would put one there first
                NlSocket sock = must(open_route_socket());
                std::printf("%s\n", must(remove_htb_root(sock.get(), ifindex_of(interface))) ? "removed" : "none");
                return 0;
            }
            PinnedMaps registry = must(PinnedMaps::open(pin_path));
            HtbShaper shaper = must(HtbShaper::attach(ifindex_of(interface), &registry));
            const uint32_t classid = must(shaper.set_class(static_cast<uint16_t>(minor), parse_rate(rate)));
            std::printf("0x%08x\n", classid);
        } else if (*drops) {
            Enforcer enforcer = must(Enforcer::open(pin_path));
            auto list = nlohmann::json::array();
            for (const auto &[key, d] : must(enforcer.read_drops())) {
                char name[IF_NAMESIZE] = {};
                nlohmann::json entry = {{"interface", if_indextoname(key.ifindex, name) ? name : ""},
                                        {"ifindex", key.ifindex},
                                        {"address", key.address()}};
                entry.update(traffic_json("block", d.block));
                entry.update(traffic_json("quota", d.quota));
                entry.update(traffic_json("policer", d.policer));
                list.push_back(entry);
            }
            std::printf("%s\n", nlohmann::json{{"clients", list}}.dump().c_str());
        }
    } catch (const std::exception &e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}
