// Sing-Box (and V2Ray/Xray) usage: per-user byte counters read from the
// server's stats API, turned into usage the way the kernel's counters are.
// Pure logic; the gRPC client and its thread are in stats_client.h/poller.h.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "session.h"
#include "store/store.h"

namespace vpnmeter::singbox {

enum class Direction { uplink, downlink };

struct UserCounter {
    std::string user;
    Direction direction;
    bool operator==(const UserCounter&) const = default;
};

// "user>>>alice>>>traffic>>>uplink" -> {alice, uplink}. Inbound and outbound
// counters, and anything else, are not users': nullopt.
std::optional<UserCounter> parse_counter(std::string_view name);

// The pattern vpnmeter asks the server for (in `pattern` and `patterns`).
inline constexpr const char* kUserCounterPattern = "user>>>";

// One answer of the stats API.
struct StatsReading {
    std::map<std::string, int64_t> counters; // name -> value, as the server sent them
    std::optional<uint64_t> uptime;          // seconds, when the server reports it
    int64_t time = 0;                        // unix seconds, when it was read
};

// What one reading changes, to commit in the cycle's transaction.
struct LedgerChange {
    std::string instance;
    std::map<std::string, Traffic> usage; // user -> increment (bytes; the API has no packets)
    std::vector<Session> sessions;        // upserts: updated totals, closed, new
    StatsCheckpoint checkpoint;           // replaces the instance's stored one
    bool restarted = false;               // the server restarted since the checkpoint
    bool baseline = false;                // first reading ever: nothing is billed from it
};

// One Sing-Box instance's accounting. Rules (docs/architecture.md):
// - the agent never resets the server's counters; it keeps the last value it
//   accounted for (the checkpoint) and bills the difference;
// - a user counter below its checkpoint, or an uptime shorter than the time
//   since the checkpoint, is a server restart: every value counts from zero,
//   never negative, and the sessions of the old run end;
// - a counter the checkpoint lacks is new traffic (V2Ray creates counters on
//   first use), except in the very first reading of an instance, which is
//   the baseline: bytes counted before vpnmeter watched are not billed;
// - a user's session on an instance lasts while the server keeps the user's
//   counters: a restart (or the counters vanishing) ends it.
class Ledger {
public:
    Ledger(std::string instance, std::optional<StatsCheckpoint> checkpoint, std::vector<Session> open_sessions);

    LedgerChange plan(const StatsReading& reading) const;
    void accept(const LedgerChange& committed);

    const std::string& instance() const { return instance_; }
    const std::map<std::string, Session>& open() const { return open_; } // by user

private:
    bool restarted_since_checkpoint(const StatsReading& reading) const;

    std::string instance_;
    std::optional<StatsCheckpoint> checkpoint_;
    std::map<std::string, Session> open_;
};

} // namespace vpnmeter::singbox
