// `GET /v1/status` and `vpnmeter status`: how the agent is doing.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "identity_source.h"

namespace vpnmeter {

struct InterfaceStatus {
    std::string name;
    uint32_t ifindex = 0;
    bool attached = false; // false: selected by `interfaces`, but attaching failed
};

// What the daemon knows about itself, refreshed each cycle.
struct AgentStatus {
    std::string version;
    int64_t pid = 0;
    int64_t started = 0; // unix seconds
    std::string config_path;
    std::string pin_path;
    std::vector<InterfaceStatus> interfaces;
    std::vector<SourceStatus> sources;
    std::string store_path;
    uint64_t store_size_bytes = 0;
    std::optional<int64_t> last_commit;                     // unix seconds; none before the first cycle
    std::optional<uint64_t> users_blocked, users_throttled; // none: quotas not evaluated yet
};

// {"agent":{version, pid, started, uptime_seconds, config_path, pin_path},
//  "interfaces":[{name, ifindex, attached}],
//  "sources":[{kind, instance, state: "up"|"down", last_refresh|null, error|null}],
//  "store":{path, size_bytes, last_commit|null}, "quotas":{users_blocked, users_throttled}|null}
nlohmann::json status_json(const AgentStatus& status, int64_t now);

// The same for a terminal; `exact_bytes`: integers instead of human units.
std::string status_text(const nlohmann::json& status, int64_t now, bool exact_bytes);

// "3d 4h", "2h 05m", "42s"
std::string human_duration(int64_t seconds);

} // namespace vpnmeter
