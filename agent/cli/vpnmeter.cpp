// vpnmeter: the operator's command line. Reads the kernel maps and the store
// directly (read-only), so it works whether or not the daemon runs.
#include <net/if.h>

#include <cstdio>
#include <ctime>
#include <iostream>

#include <CLI/CLI.hpp>

#include <nlohmann/json.hpp>

#include "bpf_maps.h"
#include "cli/api_client.h"
#include "clients_report.h"
#include "config.h"
#include "store/store.h"
#include "time_format.h"
#include "usage_report.h"

using namespace vpnmeter;

namespace {

// Stable exit codes for scripts.
constexpr int kExitError = 1; // the data could not be read
constexpr int kExitUsage = 2; // bad arguments or configuration

struct Options {
    std::string api;        // base URL of the agent's HTTP API
    std::string token;      // its bearer token, when http.tokens is set
    std::string quota_action;
    std::string plan;
    std::string limit;
    std::string expires;
    uint64_t topup = 0;
    std::string config_path;
    std::string pin_path;
    std::string store_path;
    bool json = false;
    bool csv = false;
    bool active = false;
    std::string user;
    std::string from, to;
    std::string by = "day";
};

int fail(const std::string& command, const std::string& message, int code = kExitError)
{
    std::fprintf(stderr, "vpnmeter %s: %s\n", command.c_str(), message.c_str());
    return code;
}

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

int clients(const Options& o)
{
    auto maps = PinnedMaps::open(o.pin_path);
    if (!maps) return fail("clients", maps.error().message());
    auto snapshot = maps->read();
    if (!snapshot) return fail("clients", snapshot.error().message());
    const InterfaceNames names = interface_names(maps.value(), snapshot.value());
    if (o.json) std::cout << clients_json(snapshot.value(), names).dump() << '\n';
    else std::cout << clients_table(snapshot.value(), names);
    return 0;
}

Result<Store> open_store(const Options& o)
{
    StoreOptions options;
    options.path = o.store_path;
    options.read_only = true;
    return Store::open(options);
}

int sessions(const Options& o)
{
    auto store = open_store(o);
    if (!store) return fail("sessions", store.error().message());
    auto list = store->sessions(o.active, o.user.empty() ? std::nullopt : std::optional(o.user));
    if (!list) return fail("sessions", list.error().message());
    auto spare = store->unattributed();
    if (!spare) return fail("sessions", spare.error().message());
    if (o.json) std::cout << sessions_json(list.value(), spare.value()).dump() << '\n';
    else if (o.csv) std::cout << sessions_csv(list.value());
    else std::cout << sessions_table(list.value(), spare.value());
    return 0;
}

int usage(const Options& o)
{
    Granularity granularity;
    if (o.by == "hour") granularity = Granularity::Hour;
    else if (o.by == "day") granularity = Granularity::Day;
    else if (o.by == "month") granularity = Granularity::Month;
    else return fail("usage", "--by: expected hour, day or month, got '" + o.by + "'", kExitUsage);
    int64_t from = 0, to = static_cast<int64_t>(std::time(nullptr)) + 1;
    try {
        if (!o.from.empty()) from = parse_time(o.from);
        if (!o.to.empty()) to = parse_time(o.to);
    } catch (const std::invalid_argument& e) {
        return fail("usage", std::string("--from/--to: ") + e.what(), kExitUsage);
    }
    auto store = open_store(o);
    if (!store) return fail("usage", store.error().message());
    auto buckets = store->usage(o.user, from, to, granularity);
    if (!buckets) return fail("usage", buckets.error().message());
    if (o.json) std::cout << usage_json(o.user, buckets.value()).dump() << '\n';
    else if (o.csv) std::cout << usage_csv(o.user, buckets.value());
    else std::cout << usage_table(o.user, buckets.value());
    return 0;
}

// quota get|set|topup: through the agent's API, so the running agent
// applies a change (and persists it) at once.
int quota(const Options& o)
{
    const std::string url = o.api + "/v1/users/" + url_segment(o.user) + "/quota";
    Result<ApiReply> reply = Error{};
    if (o.quota_action == "get") {
        reply = api_request("GET", url, {}, o.token);
    } else {
        nlohmann::json body = nlohmann::json::object();
        if (o.quota_action == "topup") body["topup_bytes"] = o.topup;
        if (!o.plan.empty()) body["plan"] = o.plan;
        if (!o.limit.empty()) {
            try {
                body["limit_bytes"] = std::stoull(o.limit);
            } catch (const std::exception&) {
                return fail("quota", "--limit: expected a number of bytes, got '" + o.limit + "'", kExitUsage);
            }
        }
        if (!o.expires.empty()) body["expires"] = o.expires;
        if (body.empty()) return fail("quota", "set: give --plan, --limit or --expires", kExitUsage);
        reply = api_request("PUT", url, body.dump(), o.token);
    }
    if (!reply) return fail("quota", reply.error().message());
    if (reply->status != 200) {
        std::string message = reply->body;
        try {
            message = nlohmann::json::parse(reply->body).value("error", reply->body);
        } catch (const std::exception&) {
        }
        if (reply->status == 401)
            message += o.token.empty() ? " (the API needs a token: --token or VPNMETER_TOKEN)"
                                       : " (check --token or VPNMETER_TOKEN)";
        return fail("quota", "the agent answered " + std::to_string(reply->status) + ": " + message,
                    reply->status == 400 ? kExitUsage : kExitError);
    }
    if (o.json) {
        std::cout << reply->body << '\n';
        return 0;
    }
    const auto q = nlohmann::json::parse(reply->body);
    std::cout << "user    " << q.value("user", "") << "\nplan    " << q.value("plan", "") << "\nstate   "
              << q.value("state", "") << "\nused    " << q.value("used_bytes", uint64_t{0}) << " bytes\nlimit   "
              << (q["limit_bytes"].is_null() ? "unlimited" : std::to_string(q["limit_bytes"].get<uint64_t>()) + " bytes")
              << "\nperiod  " << (q["period_start"].is_null() ? "-" : q["period_start"].get<std::string>()) << " .. "
              << (q["period_end"].is_null() ? "-" : q["period_end"].get<std::string>()) << '\n';
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    CLI::App app{"vpnmeter: reports from the vpnmeter agent on this node.\n"
                 "Exit codes: 0 ok, 1 the data could not be read, 2 bad arguments or configuration.",
                 "vpnmeter"};
    app.require_subcommand(1);
    app.set_version_flag("--version", std::string("vpnmeter ") + VPNMETER_VERSION);
    Options o;
    app.add_option("-c,--config", o.config_path,
                   "the agent's configuration file (for the pin path and store location)");

    auto* clients_cmd = app.add_subcommand("clients", "live per-client and per-interface counters from the kernel");
    clients_cmd->add_flag("--json", o.json, "one JSON object instead of tables");
    clients_cmd->add_option("--pin-path", o.pin_path, "where the agent pinned its maps (default: bpf.pin_path of "
                                                      "--config, else /sys/fs/bpf/vpnmeter)");

    auto* sessions_cmd = app.add_subcommand("sessions", "VPN sessions and their usage, from the store");
    sessions_cmd->add_flag("--active", o.active, "only sessions still connected");
    sessions_cmd->add_option("--user", o.user, "only this user's sessions");

    auto* usage_cmd = app.add_subcommand("usage", "a user's usage by hour, day or month, from the store");
    usage_cmd->add_option("user", o.user, "the user (common name or username)")->required();
    usage_cmd->add_option("--from", o.from, "start (2024-11-01, RFC 3339, or unix seconds; default: the beginning)");
    usage_cmd->add_option("--to", o.to, "end, exclusive (default: now)");
    usage_cmd->add_option("--by", o.by, "bucket size: hour, day or month")->capture_default_str();

    auto* quota_cmd = app.add_subcommand("quota", "a user's quota: get, set or top up (through the agent's API)");
    quota_cmd->require_subcommand(1);
    auto* quota_get = quota_cmd->add_subcommand("get", "plan, limit, usage in the period and state");
    auto* quota_set = quota_cmd->add_subcommand("set", "set the user's plan, limit or expiry");
    auto* quota_topup = quota_cmd->add_subcommand("topup", "add bytes to this period's limit (a purchase)");
    for (auto* cmd : {quota_get, quota_set, quota_topup}) {
        cmd->add_option("user", o.user, "the user")->required();
        cmd->add_flag("--json", o.json, "the agent's JSON answer");
        cmd->add_option("--api", o.api, "the agent's API (default: http://<http.listen of --config>)");
        cmd->add_option("--token", o.token,
                        "bearer token for the API (one of http.tokens; prefer the environment variable: "
                        "arguments are visible to other users in ps)")
            ->envname("VPNMETER_TOKEN");
        cmd->add_option("-c,--config", o.config_path, "the agent's configuration file");
    }
    quota_set->add_option("--plan", o.plan, "a plan of the configuration, or unlimited");
    quota_set->add_option("--limit", o.limit, "limit in bytes for the period");
    quota_set->add_option("--expires", o.expires, "RFC 3339 time or date");
    quota_topup->add_option("bytes", o.topup, "bytes to add")->required();

    for (auto* cmd : {sessions_cmd, usage_cmd}) {
        cmd->add_flag("--json", o.json, "one JSON object");
        cmd->add_flag("--csv", o.csv, "CSV with a header row");
        cmd->add_option("--store", o.store_path, "the store directory (default: storage.path of --config, else "
                                                 "/var/lib/vpnmeter)");
    }
    for (auto* cmd : {clients_cmd, sessions_cmd, usage_cmd})
        cmd->add_option("-c,--config", o.config_path, "the agent's configuration file");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? 0 : kExitUsage;
    }

    Config config; // defaults, or the agent's file
    if (!o.config_path.empty()) {
        try {
            config = load_config(o.config_path);
        } catch (const ConfigError& e) {
            return fail("", e.what(), kExitUsage);
        }
    }
    if (o.pin_path.empty()) o.pin_path = config.pin_path;
    if (o.store_path.empty()) o.store_path = config.storage_path;
    if (o.api.empty()) o.api = api_base(config.http_listen.empty() ? "127.0.0.1:9477" : config.http_listen);

    if (*clients_cmd) return clients(o);
    if (*sessions_cmd) return sessions(o);
    if (*usage_cmd) return usage(o);
    if (*quota_cmd) {
        o.quota_action = *quota_get ? "get" : *quota_set ? "set" : "topup";
        return quota(o);
    }
    return kExitUsage;
}
