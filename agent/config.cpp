#include "config.h"

#include <fnmatch.h>
#include <net/if.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>

#include <yaml-cpp/yaml.h>

namespace vpnmeter {
namespace {

// Keys of later features: accepted (with a warning) so one config file can
// serve several agent versions.
constexpr std::array kFutureSections = {"singbox", "quotas", "http", "metrics", "api"};

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
            try {
                config.collect_interval = parse_duration(scalar(interval, "collect.interval", "a duration"));
            } catch (const std::invalid_argument& e) {
                fail(interval, "collect.interval", e.what());
            }
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
        only_keys(node, "storage", {"path", "timezone", "hourly_retention_days", "daily_retention_days"});
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
            else if (std::find(kFutureSections.begin(), kFutureSections.end(), key) != kFutureSections.end())
                config.unsupported_sections.push_back(key);
            else
                fail(entry.first, key,
                     "unknown key (expected one of: interfaces, collect, bpf, storage, log, openvpn)");
        }
        if (config.interfaces.empty()) fail(root, "interfaces", "missing: list the devices to meter, e.g. [tun0, \"tun*\"]");
        return config;
    }

private:
    std::string source_;
};

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
    return std::chrono::milliseconds(static_cast<int64_t>(number * ms_per_unit));
}

Config parse_config(const std::string& text, const std::string& source)
{
    return Parser(source).parse(text);
}

Config load_config(const std::string& path)
{
    std::ifstream in(path);
    if (!in) throw ConfigError(path + ": cannot read: " + std::strerror(errno));
    std::stringstream text;
    text << in.rdbuf();
    return parse_config(text.str(), path);
}

bool interface_selected(const Config& config, const std::string& ifname)
{
    return std::any_of(config.interfaces.begin(), config.interfaces.end(),
                       [&](const std::string& pattern) { return fnmatch(pattern.c_str(), ifname.c_str(), 0) == 0; });
}

} // namespace vpnmeter
