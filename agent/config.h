// The agent's YAML configuration: what the operator writes, validated.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "quota/plan.h"

namespace vpnmeter {

// A bad config, located: "vpnmeter.yaml:4:13: collect.interval: expected ...".
class ConfigError : public std::runtime_error {
    using std::runtime_error::runtime_error;
};

// One OpenVPN server process and the tun device it uses.
struct OpenVpnInstance {
    std::string name;      // stable: part of session ids
    std::string interface; // its tun device
    // Exactly one of these two: the management interface ("host:port" or a
    // unix socket path), or the status file it writes.
    std::string management;
    std::string management_password_file;
    std::string status_file;
    // Whose usage a session is: the certificate's common name, or the
    // username (auth-user-pass) where the client sent one.
    enum class UserFrom { CommonName, Username } user_from = UserFrom::CommonName;
};

// One Sing-Box (or V2Ray/Xray) server: per-user usage from its V2Ray-
// compatible stats API, quota actions through what the operator configures.
struct SingboxInstance {
    std::string name;      // stable: part of session ids
    std::string stats_api; // host:port of the gRPC StatsService
    std::chrono::milliseconds interval{10'000};
    // Quota actions (all optional). config_file: the server's JSON config;
    // blocked users are taken out of its inbounds' user lists (and put back
    // when they may connect again), then reload_command runs.
    std::string config_file;
    std::vector<std::string> reload_command; // argv, no shell
    std::vector<std::string> command;        // argv; then <action> <user> <instance>
    std::string webhook;                     // POST {"user", "instance", "action", ...}
};

// Where quota alerts (thresholds crossed, blocked, expired) are sent.
struct WebhookConfig {
    std::string url; // http:// or https://
    std::chrono::milliseconds timeout{5000};
    uint32_t retries = 5; // further attempts after a failed delivery
};

struct AlertsConfig {
    std::optional<WebhookConfig> webhook; // none: no webhook
};

// A bearer token of the API, stored as the SHA-256 of its text.
struct ApiToken {
    std::string name; // for logs and messages; never the secret
    std::array<uint8_t, 32> sha256{};
    enum class Scope { read, admin } scope = Scope::read; // read: GET; admin: also PUT
    // User-name globs whose data it sees; none: every user.
    std::optional<std::vector<std::string>> tenant;
};

// What /metrics exposes: label cardinality is bounded and configurable.
struct MetricsConfig {
    bool per_session = false;    // a `session` label on the client families
    uint32_t max_sessions = 1000; // per_session: series of their own; later sessions go to session="other"
    bool hash_users = false;     // user labels are the first 12 hex digits of SHA-256(user)
    bool operator==(const MetricsConfig&) const = default;
};

struct Config {
    std::string source = "<defaults>"; // the file it came from, for messages

    // Names or globs ("tun*"): interfaces to meter, also ones that appear later.
    std::vector<std::string> interfaces;
    std::chrono::milliseconds collect_interval{1000};
    uint32_t max_clients = 65536;
    std::string pin_path = "/sys/fs/bpf/vpnmeter";
    std::string storage_path = "/var/lib/vpnmeter";
    std::string storage_timezone = "UTC";
    uint32_t hourly_retention_days = 90;
    uint32_t daily_retention_days = 1095;
    // The most the store may grow to (LMDB's map size): it starts at
    // min(64 MiB, this) and doubles when full. Past it, commits fail (the
    // kernel keeps counting) until it is raised; SIGHUP applies a new value.
    uint64_t storage_map_size = 16ull << 30;
    std::vector<OpenVpnInstance> openvpn;
    std::vector<SingboxInstance> singbox;
    std::string log_level = "info";
    QuotaConfig quotas; // no plans: everyone unlimited
    AlertsConfig alerts;
    // The HTTP server (/metrics, /v1/...): loopback unless opened on purpose;
    // empty: off.
    std::string http_listen = "127.0.0.1:9477";
    // None: the API is open to whoever reaches http.listen.
    std::vector<ApiToken> http_tokens;
    MetricsConfig metrics;
    // Top-level sections this version does not handle yet, kept for a warning.
    std::vector<std::string> unsupported_sections;
};

// Parses `text`, naming `source` in errors. Throws ConfigError.
Config parse_config(const std::string& text, const std::string& source);
// Reads and parses a file. Throws ConfigError (also when it can't be read,
// and when check_config_file_owner refuses it).
Config load_config(const std::string& path);

// vpnmeterd runs as root and does what its configuration says (files it
// reads, where it writes, who may call the API), so the file must not be
// anyone else's to change: a world-writable one is refused, and when
// running as root (`euid` 0) also one owned by another user. Throws
// ConfigError naming the file, its mode and the fix.
void check_config_file_owner(const std::string& path, uint32_t mode, uint32_t owner, uint32_t euid);

// "1s", "500ms", "2m", "1h"; a bare number means seconds. Throws std::invalid_argument.
std::chrono::milliseconds parse_duration(const std::string& text);

// Whether an interface name matches one of the configured names or globs.
bool interface_selected(const Config& config, const std::string& ifname);

} // namespace vpnmeter
