// vpnmeter: the operator's command line.
#include <net/if.h>

#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>

#include "bpf_maps.h"
#include "clients_report.h"
#include "config.h"

using namespace vpnmeter;

namespace {

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

// Names from the agent's registry (which remembers devices that are gone),
// else from the kernel.
InterfaceNames interface_names(const PinnedMaps& maps, const CounterSnapshot& snapshot)
{
    InterfaceNames names;
    if (auto links = maps.links())
        for (const auto& [ifindex, link] : links.value()) names[ifindex] = link.name;
    auto fill = [&](uint32_t ifindex) {
        char name[IF_NAMESIZE];
        if (!names.count(ifindex) && if_indextoname(ifindex, name)) names[ifindex] = name;
    };
    for (const auto& [ifindex, t] : snapshot.interfaces) fill(ifindex);
    for (const auto& [key, t] : snapshot.clients) fill(key.ifindex);
    return names;
}

int clients(const std::string& pin_path, bool json)
{
    auto maps = PinnedMaps::open(pin_path);
    if (!maps) {
        std::fprintf(stderr, "vpnmeter clients: %s\n", maps.error().message().c_str());
        return kExitError;
    }
    auto snapshot = maps->read();
    if (!snapshot) {
        std::fprintf(stderr, "vpnmeter clients: %s\n", snapshot.error().message().c_str());
        return kExitError;
    }
    const InterfaceNames names = interface_names(maps.value(), snapshot.value());
    if (json) std::cout << clients_json(snapshot.value(), names).dump() << '\n';
    else std::cout << clients_table(snapshot.value(), names);
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    CLI::App app{"vpnmeter: reports from the vpnmeter agent on this node", "vpnmeter"};
    app.require_subcommand(1);
    app.set_version_flag("--version", std::string("vpnmeter ") + VPNMETER_VERSION);
    std::string config_path;
    std::string pin_path;
    bool json = false;

    auto* clients_cmd = app.add_subcommand("clients", "live per-client and per-interface counters from the kernel");
    clients_cmd->add_flag("--json", json, "one JSON object instead of tables");
    clients_cmd->add_option("--pin-path", pin_path, "where the agent pinned its maps (default: bpf.pin_path of "
                                                    "--config, else /sys/fs/bpf/vpnmeter)");
    clients_cmd->add_option("-c,--config", config_path, "the agent's configuration file");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : kExitUsage;
    }

    if (pin_path.empty()) {
        pin_path = "/sys/fs/bpf/vpnmeter";
        if (!config_path.empty()) {
            try {
                pin_path = load_config(config_path).pin_path;
            } catch (const ConfigError& e) {
                std::fprintf(stderr, "vpnmeter: %s\n", e.what());
                return kExitUsage;
            }
        }
    }
    if (*clients_cmd) return clients(pin_path, json);
    return kExitUsage;
}
