// vpnmeter: the operator's command line. Reads the kernel maps and the store
// directly (read-only), so those reports work whether or not the daemon
// runs; status, top and quota ask the running agent's API.
#include <net/if.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>

#include <CLI/CLI.hpp>

#include <nlohmann/json.hpp>

#include "bpf_maps.h"
#include "cli/api_client.h"
#include "cli/exit_codes.h"
#include "cli/top.h"
#include "clients_report.h"
#include "config.h"
#include "format.h"
#include "status_report.h"
#include "store/store.h"
#include "time_format.h"
#include "usage_export.h"
#include "usage_report.h"

using namespace vpnmeter;

namespace {

using namespace vpnmeter::exit_code;
constexpr int kExitError = kError;
constexpr int kExitUsage = kUsage;

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
    std::string timezone = "UTC"; // storage.timezone: where the store's buckets begin
    bool json = false;
    bool exact_bytes = false; // --bytes
    std::string format = "csv";
    std::string output;
    bool progress = false;
    std::string check_file;
    TopOptions top;
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
    else std::cout << clients_table(snapshot.value(), names, o.exact_bytes);
    return 0;
}

Result<Store> open_store(const Options& o)
{
    StoreOptions options;
    options.path = o.store_path;
    options.timezone = o.timezone;
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
    else std::cout << sessions_table(list.value(), spare.value(), o.exact_bytes);
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
    else std::cout << usage_table(o.user, buckets.value(), o.exact_bytes);
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
    if (!reply) return fail("quota", reply.error().message(), kUnreachable);
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
                    of_http_status(reply->status));
    }
    if (o.json) {
        std::cout << reply->body << '\n';
        return 0;
    }
    const auto q = nlohmann::json::parse(reply->body);
    auto bytes = [&](uint64_t n) { return o.exact_bytes ? std::to_string(n) + " bytes" : human_bytes(n); };
    std::cout << "user    " << q.value("user", "") << "\nplan    " << q.value("plan", "") << "\nstate   "
              << q.value("state", "") << "\nused    " << bytes(q.value("used_bytes", uint64_t{0})) << "\nlimit   "
              << (q["limit_bytes"].is_null() ? "unlimited" : bytes(q["limit_bytes"].get<uint64_t>()))
              << "\nperiod  " << (q["period_start"].is_null() ? "-" : q["period_start"].get<std::string>()) << " .. "
              << (q["period_end"].is_null() ? "-" : q["period_end"].get<std::string>()) << '\n';
    return 0;
}

// What can be told without the agent: are its pins and its store there?
nlohmann::json local_status(const Options& o)
{
    nlohmann::json pins = {{"path", o.pin_path}, {"present", false}, {"error", nullptr}};
    if (auto maps = PinnedMaps::open(o.pin_path)) pins["present"] = true;
    else pins["error"] = maps.error().message();
    nlohmann::json store = {{"path", o.store_path}, {"readable", false}, {"size_bytes", nullptr}, {"error", nullptr}};
    if (auto opened = open_store(o)) {
        store["readable"] = true;
        std::error_code error;
        const auto size = std::filesystem::file_size(o.store_path + "/data.mdb", error);
        if (!error) store["size_bytes"] = size;
        if (auto checkpoint = opened->checkpoint(); checkpoint && checkpoint.value())
            store["has_checkpoint"] = true;
    } else {
        store["error"] = opened.error().message();
    }
    return {{"pins", pins}, {"store", store}};
}

int status(const Options& o)
{
    const int64_t now = static_cast<int64_t>(std::time(nullptr));
    auto reply = api_request("GET", o.api + "/v1/status", {}, o.token);
    if (reply && reply->status == 200) {
        try {
            const auto body = nlohmann::json::parse(reply->body);
            if (o.json) std::cout << reply->body << '\n';
            else std::cout << status_text(body, now, o.exact_bytes);
            return kOk;
        } catch (const std::exception& e) {
            return fail("status", std::string("unreadable answer from the agent: ") + e.what());
        }
    }
    // The agent did not answer (or refused): say what can be seen from here.
    const bool reached = static_cast<bool>(reply);
    const std::string why = reached ? "the agent answered " + std::to_string(reply->status) + ": " + reply->body
                                    : reply.error().message();
    const nlohmann::json local = local_status(o);
    if (o.json) {
        std::cout << nlohmann::json{{"agent", nullptr}, {"api", o.api}, {"error", why}, {"local", local}}.dump()
                  << '\n';
    } else {
        const auto& pins = local["pins"];
        const auto& store = local["store"];
        std::string store_state;
        if (!store["readable"].get<bool>()) {
            store_state = "not readable: " + store["error"].get<std::string>();
        } else {
            store_state = "readable";
            if (const auto& size = store["size_bytes"]; size.is_number())
                store_state += ", " + (o.exact_bytes ? std::to_string(size.get<uint64_t>()) + " bytes"
                                                     : human_bytes(size.get<uint64_t>()));
        }
        std::cout << "agent    not answering at " << o.api << "\n"
                  << "pins     " << o.pin_path << ": "
                  << (pins["present"].get<bool>() ? "present (the datapath keeps counting)"
                                                  : "missing: " + pins["error"].get<std::string>())
                  << "\nstore    " << o.store_path << ": " << store_state << '\n';
    }
    std::fprintf(stderr, "vpnmeter status: %s\n", why.c_str());
    return reached ? of_http_status(reply->status) : kUnreachable;
}

std::optional<Granularity> granularity_of(const std::string& by)
{
    if (by == "hour") return Granularity::Hour;
    if (by == "day") return Granularity::Day;
    if (by == "month") return Granularity::Month;
    return std::nullopt;
}

// Progress on stderr, "\r"-rewritten at most every 100 ms and at the end.
class ProgressLine {
public:
    void operator()(size_t done, size_t total)
    {
        const auto now = std::chrono::steady_clock::now();
        if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
        last_ = now;
        std::fprintf(stderr, "\rexport: %3zu%% (%zu of %zu users)", total ? done * 100 / total : 100, done, total);
        if (done == total) std::fputc('\n', stderr);
        std::fflush(stderr);
    }

private:
    std::chrono::steady_clock::time_point last_{};
};

int export_usage_command(const Options& o)
{
    const auto granularity = granularity_of(o.by);
    if (!granularity) return fail("export", "--by: expected hour, day or month, got '" + o.by + "'", kUsage);
    ExportFormat format;
    if (o.format == "csv") format = ExportFormat::csv;
    else if (o.format == "json") format = ExportFormat::json;
    else return fail("export", "--format: expected csv or json, got '" + o.format + "'", kUsage);
    ExportRange range{0, static_cast<int64_t>(std::time(nullptr)) + 1, *granularity};
    try {
        if (!o.from.empty()) range.from = parse_time(o.from);
        if (!o.to.empty()) range.to = parse_time(o.to);
    } catch (const std::invalid_argument& e) {
        return fail("export", std::string("--from/--to: ") + e.what(), kUsage);
    }
    if (range.to < range.from) return fail("export", "--to is before --from", kUsage);
    auto store = open_store(o);
    if (!store) return fail("export", store.error().message());
    // Buckets are the finest detail the store has: one that --from or --to
    // cuts through is reported whole; say so rather than pretend.
    if (const int64_t first = store->bucket_start(range.from, *granularity); !o.from.empty() && first != range.from)
        std::fprintf(stderr, "vpnmeter export: note: --from falls inside a %s bucket; it is reported whole, from %s\n",
                     to_string(*granularity), format_rfc3339(first).c_str());
    if (!o.to.empty() && store->bucket_start(range.to, *granularity) != range.to)
        std::fprintf(stderr, "vpnmeter export: note: --to falls inside a %s bucket; it is reported whole, from %s\n",
                     to_string(*granularity), format_rfc3339(store->bucket_start(range.to, *granularity)).c_str());
    std::vector<std::string> users;
    if (!o.user.empty()) {
        users.push_back(o.user);
    } else {
        auto all = store->users();
        if (!all) return fail("export", all.error().message());
        users = std::move(all.value());
    }
    std::ofstream file;
    if (!o.output.empty()) {
        file.open(o.output, std::ios::binary | std::ios::trunc);
        if (!file) return fail("export", "cannot write " + o.output + ": " + std::strerror(errno));
    }
    std::ostream& out = o.output.empty() ? std::cout : file;
    ExportProgress progress;
    if (o.progress || isatty(STDERR_FILENO)) progress = ProgressLine{};
    if (auto status = export_usage(store.value(), users, range, format, out, progress); !status)
        return fail("export", status.error().message() + (o.output.empty() ? "" : " (" + o.output + ")"));
    return kOk;
}

int check_config(const Options& o)
{
    const std::string path = !o.check_file.empty() ? o.check_file
                             : !o.config_path.empty() ? o.config_path
                                                      : "/etc/vpnmeter/vpnmeter.yaml";
    try {
        const Config config = load_config(path);
        if (o.json) {
            std::cout << nlohmann::json{{"file", path}, {"valid", true}, {"error", nullptr}}.dump() << '\n';
        } else {
            std::cout << path << ": OK (" << config.interfaces.size() << " interface patterns, "
                      << config.openvpn.size() << " OpenVPN instances, " << config.quotas.plans.size()
                      << " quota plans, collect every " << config.collect_interval.count() << " ms)\n";
            for (const auto& section : config.unsupported_sections)
                std::cout << path << ": warning: section `" << section << "` is not supported by this version\n";
        }
        return kOk;
    } catch (const ConfigError& e) {
        if (o.json) std::cout << nlohmann::json{{"file", path}, {"valid", false}, {"error", e.what()}}.dump() << '\n';
        std::fprintf(stderr, "%s\n", e.what());
        return kConfigInvalid;
    }
}

} // namespace

int main(int argc, char** argv)
{
    CLI::App app{std::string("vpnmeter: reports from the vpnmeter agent on this node. Sizes are in human units "
                             "(--bytes: exact integers); --json and --csv give raw numbers.\n") +
                     kHelp,
                 "vpnmeter"};
    app.require_subcommand(1);
    app.set_version_flag("--version", std::string("vpnmeter ") + VPNMETER_VERSION);
    Options o;
    app.add_option("-c,--config", o.config_path,
                   "the agent's configuration file (for the pin path, store location and API address)");

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

    auto* status_cmd = app.add_subcommand(
        "status", "the agent, its interfaces, identity sources and store (through the agent's API); when the agent "
                  "does not answer, what can be seen locally (pins, store), with exit code 3");
    status_cmd->add_flag("--json", o.json, "the agent's JSON answer (or {agent: null, error, local} without one)");
    status_cmd->add_option("--pin-path", o.pin_path, "where the agent pinned its maps (default: from --config)");
    status_cmd->add_option("--store", o.store_path, "the store directory (default: from --config)");

    auto* top_cmd = app.add_subcommand("top", "live per-user rates and quota bars, redrawn every --interval (q or "
                                              "Ctrl-C quits); bars: green < 75%, yellow 75-100%, red at or past the "
                                              "limit or blocked");
    top_cmd->add_option("--interval", o.top.interval, "seconds between frames")->capture_default_str();
    top_cmd->add_flag("--once", o.top.once, "print one frame (two readings --interval apart, for the rates) "
                                            "without cursor movement or colours, and exit");
    top_cmd->add_flag("--json", o.top.json, "print one JSON snapshot (two readings --interval apart) and exit");

    auto* export_cmd = app.add_subcommand(
        "export", "every user's usage per bucket over a time range, from the store, streamed as CSV or JSON");
    export_cmd->add_option("--format", o.format, "csv or json")->capture_default_str();
    export_cmd->add_option("--from", o.from,
                           "start, inclusive (2024-11-01, RFC 3339, or unix seconds; default: the beginning)");
    export_cmd->add_option("--to", o.to,
                           "end, EXCLUSIVE (default: now): --from 2024-11-01 --to 2024-12-01 is November. A bucket "
                           "that --from or --to cuts through is reported whole (a note on stderr says so)");
    export_cmd->add_option("--by", o.by, "bucket size: hour, day or month")->capture_default_str();
    export_cmd->add_option("--user", o.user, "only this user (default: every user with usage)");
    export_cmd->add_option("-o,--output", o.output, "write to this file instead of stdout");
    export_cmd->add_flag("--progress", o.progress, "progress on stderr even when it is not a terminal");

    auto* check_cmd = app.add_subcommand(
        "check-config", "validate a configuration file as vpnmeterd does: OK, or FILE:LINE:COL: what was expected "
                        "(exit code 5)");
    check_cmd->add_option("file", o.check_file, "the file (default: --config, else /etc/vpnmeter/vpnmeter.yaml)");
    check_cmd->add_flag("--json", o.json, "{file, valid, error}");

    auto* quota_cmd = app.add_subcommand("quota", "a user's quota: get, set or top up (through the agent's API)");
    quota_cmd->require_subcommand(1);
    auto* quota_get = quota_cmd->add_subcommand("get", "plan, limit, usage in the period and state");
    auto* quota_set = quota_cmd->add_subcommand("set", "set the user's plan, limit or expiry");
    auto* quota_topup = quota_cmd->add_subcommand("topup", "add bytes to this period's limit (a purchase)");
    for (auto* cmd : {quota_get, quota_set, quota_topup}) {
        cmd->add_option("user", o.user, "the user")->required();
        cmd->add_flag("--json", o.json, "the agent's JSON answer");
    }
    quota_set->add_option("--plan", o.plan, "a plan of the configuration, or unlimited");
    quota_set->add_option("--limit", o.limit, "limit in bytes for the period");
    quota_set->add_option("--expires", o.expires, "RFC 3339 time or date");
    quota_topup->add_option("bytes", o.topup, "bytes to add")->required();

    // Through the API.
    for (auto* cmd : {quota_get, quota_set, quota_topup, status_cmd, top_cmd}) {
        cmd->add_option("--api", o.api, "the agent's API (default: http://<http.listen of --config>)");
        cmd->add_option("--token", o.token,
                        "bearer token for the API (one of http.tokens; prefer the environment variable: "
                        "arguments are visible to other users in ps)")
            ->envname("VPNMETER_TOKEN");
    }
    for (auto* cmd : {sessions_cmd, usage_cmd}) {
        cmd->add_flag("--json", o.json, "one JSON object");
        cmd->add_flag("--csv", o.csv, "CSV with a header row");
    }
    for (auto* cmd : {sessions_cmd, usage_cmd, export_cmd})
        cmd->add_option("--store", o.store_path, "the store directory (default: storage.path of --config, else "
                                                 "/var/lib/vpnmeter)");
    for (auto* cmd : {clients_cmd, sessions_cmd, usage_cmd, quota_get, quota_set, quota_topup, status_cmd, top_cmd})
        cmd->add_flag("--bytes", o.exact_bytes, "exact byte counts instead of human units");
    for (auto* cmd : {clients_cmd, sessions_cmd, usage_cmd, status_cmd, top_cmd, export_cmd, check_cmd, quota_get,
                      quota_set, quota_topup})
        cmd->add_option("-c,--config", o.config_path, "the agent's configuration file");

    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? kOk : kUsage;
    }
    if (*check_cmd) return check_config(o);

    Config config; // defaults, or the agent's file
    if (!o.config_path.empty()) {
        try {
            config = load_config(o.config_path);
        } catch (const ConfigError& e) {
            return fail("", e.what(), kConfigInvalid);
        }
    }
    if (o.pin_path.empty()) o.pin_path = config.pin_path;
    if (o.store_path.empty()) o.store_path = config.storage_path;
    o.timezone = config.storage_timezone;
    if (o.api.empty()) o.api = api_base(config.http_listen.empty() ? "127.0.0.1:9477" : config.http_listen);

    if (*clients_cmd) return clients(o);
    if (*sessions_cmd) return sessions(o);
    if (*usage_cmd) return usage(o);
    if (*status_cmd) return status(o);
    if (*export_cmd) return export_usage_command(o);
    if (*top_cmd) {
        o.top.api = o.api;
        o.top.token = o.token;
        o.top.exact_bytes = o.exact_bytes;
        return run_top(o.top);
    }
    if (*quota_cmd) {
        o.quota_action = *quota_get ? "get" : *quota_set ? "set" : "topup";
        return quota(o);
    }
    return kUsage;
}
