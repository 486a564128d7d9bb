#include "config.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <net/if.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "quota/period.h"
#include "quota/units.h"

namespace vpnmeter {
namespace {

// Keys of later features: accepted (with a warning) so one config file can
// serve several agent versions.
constexpr std::array kFutureSections = {"api"};
constexpr uint64_t kMinStoreMapSize = 64 << 10; // the empty store takes a few pages

class Parser {
public:
    explicit Parser(std::string source) : source_(std::move(source)) {}

    [[noreturn]] void fail(const YAML::Node& node, const std::string& key, const std::string& what) const
    {
        std::ostringstream out;
        out << source_;
        if (node.IsDefined() && node.Mark().line >= 0)
            out << ':' << node.Mark().line + 1 << ':' << node.Mark().column + 1;
        out << ": " << key << ": " << what;
        throw ConfigError(out.str());
    }

    std::string scalar(const YAML::Node& node, const std::string& key, const char* expected) const
    {
        if (!node.IsScalar()) fail(node, key, std::string("expected ") + expected);
        return node.Scalar();
    }

    uint64_t integer(const YAML::Node& node, const std::string& key, uint64_t min, uint64_t max) const
    {
        std::string text = scalar(node, key, "an integer");
        text.erase(std::remove(text.begin(), text.end(), '_'), text.end());
        uint64_t value = 0;
        auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (err != std::errc() || end != text.data() + text.size() || value < min || value > max)
            fail(node, key,
                 "expected an integer from " + std::to_string(min) + " to " + std::to_string(max) +
                     ", got '" + node.Scalar() + "'");
        return value;
    }

    // The index of the value in `options`: "expected a, b or c, got 'x'" otherwise.
    size_t one_of(const YAML::Node& node, const std::string& key, std::initializer_list<const char*> options) const
    {
        std::string list;
        size_t index = 0;
        for (const char* option : options) {
            if (index++) list += index == options.size() ? " or " : ", ";
            list += option;
        }
        const std::string value = scalar(node, key, list.c_str());
        const auto found = std::find(options.begin(), options.end(), value);
        if (found == options.end()) fail(node, key, "expected " + list + ", got '" + value + "'");
        return static_cast<size_t>(found - options.begin());
    }

    uint64_t size(const YAML::Node& node, const std::string& key) const
    {
        const std::string text = scalar(node, key, "a size like 20MB or 5GiB");
        try {
            return parse_size(text);
        } catch (const std::invalid_argument& e) {
            fail(node, key, e.what());
        }
    }

    uint64_t rate(const YAML::Node& node, const std::string& key) const
    {
        const std::string text = scalar(node, key, "a rate like 12Mbit");
        try {
            return parse_rate(text);
        } catch (const std::invalid_argument& e) {
            fail(node, key, e.what());
        }
    }

    std::chrono::milliseconds duration(const YAML::Node& node, const std::string& key) const
    {
        try {
            return parse_duration(scalar(node, key, "a duration"));
        } catch (const std::invalid_argument& e) {
            fail(node, key, e.what());
        }
    }

    // Rejects keys not in `known`: a typo must not silently fall back to a default.
    void only_keys(const YAML::Node& map, const std::string& section,
                   std::initializer_list<const char*> known) const
    {
        if (!map.IsMap()) fail(map, section, "expected a mapping");
        for (const auto& entry : map) {
            const std::string name = entry.first.Scalar();
            if (std::none_of(known.begin(), known.end(), [&](const char* k) { return name == k; })) {
                std::string list;
                for (const char* k : known) list += std::string(list.empty() ? "" : ", ") + k;
                fail(entry.first, section.empty() ? name : section + "." + name,
                     "unknown key (expected one of: " + list + ")");
            }
        }
    }

    void interfaces(const YAML::Node& node, Config& config) const
    {
        std::vector<YAML::Node> items;
        if (node.IsScalar()) items.push_back(node);
        else if (node.IsSequence())
            for (const YAML::Node& item : node) items.push_back(item);
        else fail(node, "interfaces", "expected a list of interface names or globs like tun*");
        for (const auto& item : items) {
            std::string name = scalar(item, "interfaces", "an interface name or glob");
            if (name.empty() || name.size() >= IFNAMSIZ)
                fail(item, "interfaces",
                     "an interface name has 1 to " + std::to_string(IFNAMSIZ - 1) + " characters, got '" + name + "'");
            config.interfaces.push_back(std::move(name));
        }
        if (config.interfaces.empty()) fail(node, "interfaces", "expected at least one interface");
    }

    void collect(const YAML::Node& node, Config& config) const
    {
        only_keys(node, "collect", {"interval"});
        if (auto interval = node["interval"]) {
            config.collect_interval = duration(interval, "collect.interval");
            if (config.collect_interval < std::chrono::milliseconds(100))
                fail(interval, "collect.interval", "must be at least 100ms");
        }
    }

    void bpf(const YAML::Node& node, Config& config) const
    {
        only_keys(node, "bpf", {"max_clients", "pin_path"});
        if (auto max = node["max_clients"])
            config.max_clients = static_cast<uint32_t>(integer(max, "bpf.max_clients", 1, 16'777'216));
        if (auto pin = node["pin_path"]) {
            config.pin_path = scalar(pin, "bpf.pin_path", "a path");
            if (config.pin_path.empty() || config.pin_path.front() != '/')
                fail(pin, "bpf.pin_path", "expected an absolute path like /sys/fs/bpf/vpnmeter");
            while (config.pin_path.size() > 1 && config.pin_path.back() == '/') config.pin_path.pop_back();
        }
    }

    void storage(const YAML::Node& node, Config& config) const
    {
        only_keys(node, "storage", {"path", "timezone", "hourly_retention_days", "daily_retention_days", "map_size"});
        if (auto map_size = node["map_size"]) {
            config.storage_map_size = size(map_size, "storage.map_size");
            if (config.storage_map_size < kMinStoreMapSize)
                fail(map_size, "storage.map_size", "must be at least 64KiB");
        }
        if (auto days = node["hourly_retention_days"])
            config.hourly_retention_days = static_cast<uint32_t>(integer(days, "storage.hourly_retention_days", 1, 36500));
        if (auto days = node["daily_retention_days"])
            config.daily_retention_days = static_cast<uint32_t>(integer(days, "storage.daily_retention_days", 1, 36500));
        if (auto path = node["path"]) {
            config.storage_path = scalar(path, "storage.path", "a directory");
            if (config.storage_path.empty() || config.storage_path.front() != '/')
                fail(path, "storage.path", "expected an absolute path like /var/lib/vpnmeter");
        }
        if (auto tz = node["timezone"]) config.storage_timezone = scalar(tz, "storage.timezone", "a time zone name");
    }

    void openvpn(const YAML::Node& node, Config& config) const
    {
        if (!node.IsSequence())
            fail(node, "openvpn", "expected a list like [{ name: udp1194, interface: tun0, management: \"127.0.0.1:7505\" }]");
        for (size_t i = 0; i < node.size(); ++i) {
            const YAML::Node item = node[i];
            const std::string at = "openvpn[" + std::to_string(i) + "]";
            only_keys(item, at, {"name", "interface", "management", "management_password_file", "status_file", "user_from"});
            OpenVpnInstance instance;
            for (const char* required : {"name", "interface"})
                if (!item[required]) fail(item, at + "." + required, "missing");
            instance.name = scalar(item["name"], at + ".name", "a name like udp1194");
            if (instance.name.empty() || instance.name.find_first_of(": /") != std::string::npos)
                fail(item["name"], at + ".name", "expected a non-empty name without ':', '/' or spaces");
            for (const auto& other : config.openvpn)
                if (other.name == instance.name) fail(item["name"], at + ".name", "'" + instance.name + "' is used twice");
            instance.interface = scalar(item["interface"], at + ".interface", "a tun device name");
            if (item["management"]) instance.management = scalar(item["management"], at + ".management", "host:port or a unix socket path");
            if (item["status_file"]) instance.status_file = scalar(item["status_file"], at + ".status_file", "a path");
            if (instance.management.empty() == instance.status_file.empty())
                fail(item, at, "expected exactly one of `management` (host:port or socket path) or `status_file`");
            if (!instance.management.empty() && instance.management.front() != '/' &&
                instance.management.rfind(':') == std::string::npos)
                fail(item["management"], at + ".management", "expected host:port (e.g. 127.0.0.1:7505) or an absolute socket path, got '" + instance.management + "'");
            if (item["management_password_file"])
                instance.management_password_file = scalar(item["management_password_file"], at + ".management_password_file", "a path");
            if (auto from = item["user_from"]) {
                const std::string value = scalar(from, at + ".user_from", "common_name or username");
                if (value == "common_name") instance.user_from = OpenVpnInstance::UserFrom::CommonName;
                else if (value == "username") instance.user_from = OpenVpnInstance::UserFrom::Username;
                else fail(from, at + ".user_from", "expected common_name or username, got '" + value + "'");
            }
            config.openvpn.push_back(std::move(instance));
        }
    }

    void singbox(const YAML::Node& node, Config& config) const
    {
        if (!node.IsSequence())
            fail(node, "singbox", "expected a list like [{ name: sb1, stats_api: \"127.0.0.1:10085\" }]");
        for (size_t i = 0; i < node.size(); ++i) {
            const YAML::Node item = node[i];
            const std::string at = "singbox[" + std::to_string(i) + "]";
            only_keys(item, at, {"name", "stats_api", "interval", "enforce"});
            for (const char* required : {"name", "stats_api"})
                if (!item[required]) fail(item, at + "." + required, "missing");
            SingboxInstance instance;
            instance.name = scalar(item["name"], at + ".name", "a name like sb1");
            if (instance.name.empty() || instance.name.find_first_of(": /") != std::string::npos)
                fail(item["name"], at + ".name", "expected a non-empty name without ':', '/' or spaces");
            for (const auto& other : config.openvpn)
                if (other.name == instance.name)
                    fail(item["name"], at + ".name", "'" + instance.name + "' is already an openvpn instance");
            for (const auto& other : config.singbox)
                if (other.name == instance.name) fail(item["name"], at + ".name", "'" + instance.name + "' is used twice");
            instance.stats_api = scalar(item["stats_api"], at + ".stats_api", "host:port");
            const size_t colon = instance.stats_api.rfind(':');
            if (colon == std::string::npos || colon == 0 || colon + 1 == instance.stats_api.size() ||
                instance.stats_api.find_first_not_of("0123456789", colon + 1) != std::string::npos)
                fail(item["stats_api"], at + ".stats_api",
                     "expected host:port like 127.0.0.1:10085, got '" + instance.stats_api + "'");
            if (auto interval = item["interval"]) {
                instance.interval = duration(interval, at + ".interval");
                if (instance.interval < std::chrono::milliseconds(100))
                    fail(interval, at + ".interval", "must be at least 100ms");
            }
            if (auto enforce = item["enforce"]) singbox_enforce(enforce, at + ".enforce", instance);
            config.singbox.push_back(std::move(instance));
        }
    }

    void singbox_enforce(const YAML::Node& node, const std::string& at, SingboxInstance& instance) const
    {
        only_keys(node, at, {"config_file", "reload_command", "command", "webhook"});
        if (auto file = node["config_file"]) {
            instance.config_file = scalar(file, at + ".config_file", "a path");
            if (instance.config_file.empty() || instance.config_file.front() != '/')
                fail(file, at + ".config_file", "expected an absolute path like /etc/sing-box/config.json");
        }
        if (auto reload = node["reload_command"]) instance.reload_command = argv(reload, at + ".reload_command");
        if (auto command = node["command"]) instance.command = argv(command, at + ".command");
        if (auto hook = node["webhook"]) {
            instance.webhook = scalar(hook, at + ".webhook", "a URL");
            if (instance.webhook.rfind("http://", 0) != 0 && instance.webhook.rfind("https://", 0) != 0)
                fail(hook, at + ".webhook", "expected an http:// or https:// URL, got '" + instance.webhook + "'");
        }
        if (!instance.reload_command.empty() && instance.config_file.empty())
            fail(node, at + ".reload_command", "needs config_file: it runs after that file was rewritten");
    }

    // A command as its arguments: nothing goes through a shell, so a user
    // name can never become shell syntax.
    std::vector<std::string> argv(const YAML::Node& node, const std::string& key) const
    {
        if (!node.IsSequence() || node.size() == 0)
            fail(node, key, "expected a command as a list of arguments like [systemctl, reload, sing-box] (no shell)");
        std::vector<std::string> args;
        for (const auto& arg : node) args.push_back(scalar(arg, key, "an argument"));
        if (args.front().empty() || args.front().front() != '/')
            fail(node, key, "expected the program as an absolute path like /usr/bin/systemctl, got '" + args.front() + "'");
        return args;
    }

    void http(const YAML::Node& node, Config& config) const
    {
        only_keys(node, "http", {"listen", "tokens"});
        if (auto listen = node["listen"]) {
            config.http_listen = scalar(listen, "http.listen", "host:port, or an empty string to turn it off");
            const size_t colon = config.http_listen.rfind(':');
            if (!config.http_listen.empty() &&
                (colon == std::string::npos || colon + 1 == config.http_listen.size() ||
                 config.http_listen.find_first_not_of("0123456789", colon + 1) != std::string::npos))
                fail(listen, "http.listen",
                     "expected host:port like 127.0.0.1:9477 or [::1]:9477, got '" + config.http_listen + "'");
        }
        if (auto tokens = node["tokens"]) {
            if (!tokens.IsSequence())
                fail(tokens, "http.tokens",
                     "expected a list like [{ name: billing, sha256: \"<vpnmeterd --hash-token>\", scope: read }]");
            for (size_t i = 0; i < tokens.size(); ++i) config.http_tokens.push_back(token(tokens[i], i, config));
        }
    }

    ApiToken token(const YAML::Node& item, size_t index, const Config& config) const
    {
        const std::string at = "http.tokens[" + std::to_string(index) + "]";
        if (item.IsMap() && item["token"])
            fail(item["token"], at + ".token",
                 "tokens are not written in the file: put the output of `vpnmeterd --hash-token` in `sha256`");
        only_keys(item, at, {"name", "sha256", "scope", "tenant"});
        for (const char* required : {"name", "sha256", "scope"})
            if (!item[required]) fail(item, at + "." + required, "missing");
        ApiToken token;
        token.name = scalar(item["name"], at + ".name", "a name like billing");
        if (token.name.empty() || token.name.find_first_of(" \t\r\n") != std::string::npos)
            fail(item["name"], at + ".name", "expected a non-empty name without spaces");
        for (const auto& other : config.http_tokens)
            if (other.name == token.name) fail(item["name"], at + ".name", "'" + token.name + "' is used twice");

        const std::string hex = scalar(item["sha256"], at + ".sha256", "64 hex digits");
        auto nibble = [](char c) {
            if (c >= '0' && c <= '9') return c - '0';
            if (c >= 'a' && c <= 'f') return c - 'a' + 10;
            if (c >= 'A' && c <= 'F') return c - 'A' + 10;
            return -1;
        };
        if (hex.size() != 64 || std::any_of(hex.begin(), hex.end(), [&](char c) { return nibble(c) < 0; }))
            fail(item["sha256"], at + ".sha256",
                 "expected the 64 hex digits of the token's SHA-256 (from `vpnmeterd --hash-token`), got '" + hex +
                     "' (" + std::to_string(hex.size()) + " characters)");
        for (size_t b = 0; b < token.sha256.size(); ++b)
            token.sha256[b] = static_cast<uint8_t>(nibble(hex[2 * b]) << 4 | nibble(hex[2 * b + 1]));
        for (const auto& other : config.http_tokens)
            if (other.sha256 == token.sha256)
                fail(item["sha256"], at + ".sha256", "the same token as '" + other.name + "': each needs its own");

        token.scope = static_cast<ApiToken::Scope>(one_of(item["scope"], at + ".scope", {"read", "admin"}));

        if (auto tenant = item["tenant"]) {
            std::vector<YAML::Node> globs;
            if (tenant.IsScalar()) globs.push_back(tenant);
            else if (tenant.IsSequence())
                for (const YAML::Node& glob : tenant) globs.push_back(glob);
            else fail(tenant, at + ".tenant", "expected a list of user names or globs like [\"acme-*\", bob]");
            if (globs.empty())
                fail(tenant, at + ".tenant",
                     "expected at least one user name or glob (leave `tenant` out for all users)");
            token.tenant.emplace();
            for (const auto& glob : globs) {
                std::string pattern = scalar(glob, at + ".tenant", "a user name or glob");
                if (pattern.empty()) fail(glob, at + ".tenant", "expected a non-empty user name or glob");
                token.tenant->push_back(std::move(pattern));
            }
        }
        return token;
    }

    void log(const YAML::Node& node, Config& config) const
    {
        only_keys(node, "log", {"level"});
        if (auto level = node["level"]) {
            config.log_level = scalar(level, "log.level", "a log level");
            static constexpr std::array levels = {"trace", "debug", "info", "warn", "error"};
            if (std::find(levels.begin(), levels.end(), config.log_level) == levels.end())
                fail(level, "log.level", "expected trace, debug, info, warn or error, got '" + config.log_level + "'");
        }
    }

    void quotas(const YAML::Node& node, Config& config) const
    {
        only_keys(node, "quotas", {"timezone", "thresholds", "default_plan", "plans", "users"});
        QuotaConfig& quotas = config.quotas;
        // The zone first: plans' expiry dates are days in it.
        if (auto zone = node["timezone"]) {
            quotas.timezone = scalar(zone, "quotas.timezone", "a time zone name");
            try {
                check_timezone(quotas.timezone);
            } catch (const std::invalid_argument& e) {
                fail(zone, "quotas.timezone", e.what());
            }
        }
        if (auto list = node["thresholds"]) {
            if (!list.IsSequence())
                fail(list, "quotas.thresholds", "expected a list of percentages like [75, 90, 100]");
            quotas.thresholds.clear();
            for (size_t i = 0; i < list.size(); ++i)
                quotas.thresholds.push_back(
                    static_cast<int>(integer(list[i], "quotas.thresholds[" + std::to_string(i) + "]", 1, 1000)));
            std::sort(quotas.thresholds.begin(), quotas.thresholds.end());
            quotas.thresholds.erase(std::unique(quotas.thresholds.begin(), quotas.thresholds.end()),
                                    quotas.thresholds.end());
        }
        // Plans before the references to them, wherever they are in the file.
        if (auto plans = node["plans"]) {
            if (!plans.IsMap())
                fail(plans, "quotas.plans",
                     "expected a mapping of plan names to plans, like { small: { limit: 20MB } }");
            for (const auto& entry : plans) {
                const std::string name = scalar(entry.first, "quotas.plans", "a plan name");
                if (name.empty()) fail(entry.first, "quotas.plans", "expected a non-empty plan name");
                if (quotas.find_plan(name)) fail(entry.first, "quotas.plans." + name, "defined twice");
                quotas.plans.push_back(plan(name, entry.second, quotas.timezone));
            }
        }
        if (auto users = node["users"]) {
            if (!users.IsMap())
                fail(users, "quotas.users",
                     "expected a mapping of user names or globs to plan names, like "
                     "{ user1: small, \"trial-*\": capped }");
            for (const auto& entry : users) {
                PlanAssignment line;
                line.pattern = scalar(entry.first, "quotas.users", "a user name or glob");
                const std::string at = "quotas.users." + line.pattern;
                if (line.pattern.empty()) fail(entry.first, "quotas.users", "expected a non-empty user name or glob");
                for (const auto& other : quotas.users)
                    if (other.pattern == line.pattern) fail(entry.first, at, "listed twice");
                line.plan = plan_reference(entry.second, at, quotas);
                quotas.users.push_back(std::move(line));
            }
        }
        if (auto fallback = node["default_plan"])
            quotas.default_plan = plan_reference(fallback, "quotas.default_plan", quotas);
    }

    // A plan's name where one is used: a defined plan, or "unlimited".
    std::string plan_reference(const YAML::Node& node, const std::string& key, const QuotaConfig& quotas) const
    {
        const std::string name = scalar(node, key, "a plan name");
        if (name != kUnlimitedPlan && !quotas.find_plan(name)) {
            std::string list;
            for (const Plan& plan : quotas.plans) list += plan.name + ", ";
            fail(node, key, "unknown plan '" + name + "' (expected one of: " + list + kUnlimitedPlan + ")");
        }
        return name;
    }

    Plan plan(const std::string& name, const YAML::Node& node, const std::string& timezone) const
    {
        Plan plan;
        plan.name = name;
        const std::string at = "quotas.plans." + name;
        if (node.IsNull()) return plan; // `vip:` alone: unlimited
        only_keys(node, at, {"limit", "direction", "period", "billing_day", "expires", "speed", "action"});
        if (auto limit = node["limit"]) plan.limit_bytes = size(limit, at + ".limit");
        if (auto direction = node["direction"])
            plan.direction = static_cast<Plan::Direction>(
                one_of(direction, at + ".direction", {"both", "upload", "download"}));
        if (auto period = node["period"])
            plan.period = static_cast<Plan::PeriodKind>(
                one_of(period, at + ".period", {"daily", "weekly", "monthly", "total"}));
        if (auto day = node["billing_day"]) {
            if (plan.period != Plan::PeriodKind::monthly)
                fail(day, at + ".billing_day",
                     std::string("only for period: monthly (this plan's period is ") + to_string(plan.period) + ")");
            plan.billing_day = static_cast<unsigned>(integer(day, at + ".billing_day", 1, 31));
        }
        if (auto expires = node["expires"]) {
            const std::string text = scalar(expires, at + ".expires", "a date like 2026-12-31");
            try {
                plan.expires = parse_expiry(text, timezone);
            } catch (const std::invalid_argument&) {
                fail(expires, at + ".expires",
                     "expected a date like 2026-12-31 (the end of that day in quotas.timezone) or a time like "
                     "2026-12-31T18:00:00Z, got '" + text + "'");
            }
        }
        if (auto speed = node["speed"]) {
            only_keys(speed, at + ".speed", {"download", "upload"});
            if (speed.size() == 0)
                fail(speed, at + ".speed", "expected download and/or upload, like { download: 12Mbit, upload: 2Mbit }");
            if (auto down = speed["download"]) plan.speed_download_bps = rate(down, at + ".speed.download");
            if (auto up = speed["upload"]) plan.speed_upload_bps = rate(up, at + ".speed.upload");
        }
        if (auto action = node["action"]) {
            const std::string key = at + ".action";
            const std::string choices = "block, disconnect, none or { throttle: RATE }";
            if (action.IsMap()) {
                only_keys(action, key, {"throttle"});
                if (!action["throttle"]) fail(action, key, "expected " + choices + ", like { throttle: 1Mbit }");
                plan.action = Plan::Action::throttle;
                plan.throttle_bps = rate(action["throttle"], key + ".throttle");
            } else {
                const std::string value = scalar(action, key, choices.c_str());
                if (value == "block") plan.action = Plan::Action::block;
                else if (value == "disconnect") plan.action = Plan::Action::disconnect;
                else if (value == "none") plan.action = Plan::Action::none;
                else if (value == "throttle") fail(action, key, "throttle needs a rate, like { throttle: 1Mbit }");
                else fail(action, key, "expected " + choices + ", got '" + value + "'");
            }
        }
        return plan;
    }

    void alerts(const YAML::Node& node, Config& config) const
    {
        only_keys(node, "alerts", {"webhook"});
        if (auto hook = node["webhook"]) {
            only_keys(hook, "alerts.webhook", {"url", "timeout", "retries"});
            WebhookConfig webhook;
            if (!hook["url"]) fail(hook, "alerts.webhook.url", "missing");
            webhook.url = scalar(hook["url"], "alerts.webhook.url", "a URL");
            const std::string& url = webhook.url;
            const size_t scheme = url.rfind("http://", 0) == 0 ? 7 : url.rfind("https://", 0) == 0 ? 8 : 0;
            if (scheme == 0 || url.size() == scheme || url[scheme] == '/' ||
                url.find_first_of(" \t\r\n") != std::string::npos)
                fail(hook["url"], "alerts.webhook.url",
                     "expected an http:// or https:// URL like http://127.0.0.1:8089/hook, got '" + url + "'");
            if (auto timeout = hook["timeout"]) {
                webhook.timeout = duration(timeout, "alerts.webhook.timeout");
                if (webhook.timeout < std::chrono::milliseconds(100))
                    fail(timeout, "alerts.webhook.timeout", "must be at least 100ms");
            }
            if (auto retries = hook["retries"])
                webhook.retries = static_cast<uint32_t>(integer(retries, "alerts.webhook.retries", 0, 100));
            config.alerts.webhook = std::move(webhook);
        }
    }

    void metrics(const YAML::Node& node, Config& config) const
    {
        only_keys(node, "metrics", {"per_session", "max_sessions", "hash_users"});
        MetricsConfig& metrics = config.metrics;
        if (auto flag = node["per_session"]) metrics.per_session = one_of(flag, "metrics.per_session", {"false", "true"});
        if (auto max = node["max_sessions"])
            metrics.max_sessions = static_cast<uint32_t>(integer(max, "metrics.max_sessions", 0, 1'000'000));
        if (auto flag = node["hash_users"]) metrics.hash_users = one_of(flag, "metrics.hash_users", {"false", "true"});
    }

    Config parse(const std::string& text) const
    {
        YAML::Node root;
        try {
            root = YAML::Load(text);
        } catch (const YAML::ParserException& e) {
            throw ConfigError(source_ + ":" + std::to_string(e.mark.line + 1) + ":" +
                              std::to_string(e.mark.column + 1) + ": invalid YAML: " + e.msg);
        }
        Config config;
        config.source = source_;
        if (!root.IsMap()) fail(root, "(top level)", "expected a mapping with at least `interfaces:`");
        for (const auto& entry : root) {
            const std::string key = entry.first.Scalar();
            const YAML::Node& value = entry.second;
            if (key == "interfaces") interfaces(value, config);
            else if (key == "collect") collect(value, config);
            else if (key == "bpf") bpf(value, config);
            else if (key == "storage") storage(value, config);
            else if (key == "log") log(value, config);
            else if (key == "openvpn") openvpn(value, config);
            else if (key == "singbox") singbox(value, config);
            else if (key == "quotas") quotas(value, config);
            else if (key == "alerts") alerts(value, config);
            else if (key == "http") http(value, config);
            else if (key == "metrics") metrics(value, config);
            else if (std::find(kFutureSections.begin(), kFutureSections.end(), key) != kFutureSections.end())
                config.unsupported_sections.push_back(key);
            else
                fail(entry.first, key,
                     "unknown key (expected one of: interfaces, collect, bpf, storage, log, openvpn, singbox, quotas, alerts, "
                     "http, metrics)");
        }
        // A Sing-Box-only node has no tun devices to meter.
        if (config.interfaces.empty() && config.singbox.empty())
            fail(root, "interfaces", "missing: list the devices to meter, e.g. [tun0, \"tun*\"]");
        return config;
    }

private:
    std::string source_;
};

} // namespace

namespace {
constexpr double kMaxDurationMs = 1000.0 * 365.25 * 86'400'000;
} // namespace

std::chrono::milliseconds parse_duration(const std::string& text)
{
    double number = 0;
    auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), number);
    if (err != std::errc() || number < 0)
        throw std::invalid_argument("expected a duration like 1s or 500ms, got '" + text + "'");
    const std::string unit(end, text.data() + text.size());
    double ms_per_unit;
    if (unit.empty() || unit == "s") ms_per_unit = 1000;
    else if (unit == "ms") ms_per_unit = 1;
    else if (unit == "m") ms_per_unit = 60'000;
    else if (unit == "h") ms_per_unit = 3'600'000;
    else throw std::invalid_argument("expected a duration like 1s or 500ms (units ms, s, m, h), got '" + text + "'");
    // from_chars reads "nan", "inf" and "1e300" too: out of int64's range the
    // cast below would be undefined (UBSan in the config fuzz target says so).
    const double ms = number * ms_per_unit;
    if (!(ms <= kMaxDurationMs))
        throw std::invalid_argument("expected a duration up to 1000 years, got '" + text + "'");
    return std::chrono::milliseconds(static_cast<int64_t>(ms));
}

Config parse_config(const std::string& text, const std::string& source)
{
    return Parser(source).parse(text);
}

void check_config_file_owner(const std::string& path, uint32_t mode, uint32_t owner, uint32_t euid)
{
    char octal[8];
    std::snprintf(octal, sizeof octal, "%04o", mode & 07777);
    if (mode & S_IWOTH)
        throw ConfigError(path + ": refusing a world-writable configuration (mode " + octal +
                          "): any user could change what vpnmeterd does; chmod o-w " + path);
    if (euid == 0 && owner != 0)
        throw ConfigError(path + ": refusing a configuration owned by uid " + std::to_string(owner) +
                          " while running as root (mode " + octal + "): its owner could change what vpnmeterd does; "
                          "chown root " + path);
}

Config load_config(const std::string& path)
{
    // One open file for the check and the read: the file checked is the file read.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw ConfigError(path + ": cannot read: " + std::strerror(errno));
    std::string text;
    struct stat st {};
    int failed = fstat(fd, &st) != 0 ? errno : 0;
    if (!failed) {
        try {
            check_config_file_owner(path, st.st_mode, st.st_uid, geteuid());
        } catch (...) {
            close(fd);
            throw;
        }
        char buffer[65536];
        for (;;) {
            const ssize_t got = ::read(fd, buffer, sizeof buffer);
            if (got > 0) text.append(buffer, static_cast<size_t>(got));
            if (got == 0) break;
            if (got < 0 && errno != EINTR) {
                failed = errno;
                break;
            }
        }
    }
    close(fd);
    if (failed) throw ConfigError(path + ": cannot read: " + std::strerror(failed));
    return parse_config(text, path);
}

bool interface_selected(const Config& config, const std::string& ifname)
{
    return std::any_of(config.interfaces.begin(), config.interfaces.end(),
                       [&](const std::string& pattern) { return fnmatch(pattern.c_str(), ifname.c_str(), 0) == 0; });
}

} // namespace vpnmeter
