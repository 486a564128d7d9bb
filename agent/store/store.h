// The usage store (LMDB): sessions, per-user usage buckets, checkpoints.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "counters.h"
#include "result.h"
#include "session.h"

namespace vpnmeter {

struct StoreOptions {
    std::string path = "/var/lib/vpnmeter"; // a directory; created (0700) if missing
    std::string timezone = "UTC";           // IANA name: where days and months begin
    uint32_t hourly_retention_days = 90;    // hour buckets older than this are pruned
    uint32_t daily_retention_days = 1095;   // day buckets likewise; months are kept
    uint64_t initial_map_size = 64ull << 20;
    uint64_t max_map_size = 64ull << 30;
    bool read_only = false; // the CLI: never blocks or changes the daemon's writes
};

// Which kernel counters a checkpoint belongs to. If either differs on
// restart (reboot, or the maps were recreated), the raw values in the
// checkpoint are meaningless: the counters restarted from zero.
struct CounterIdentity {
    std::string boot_id;       // /proc/sys/kernel/random/boot_id
    uint32_t clients_map_id = 0; // bpf_map_info.id of vpnmeter_clients
    uint32_t ifaces_map_id = 0;
    bool operator==(const CounterIdentity&) const = default;
};

// The raw counter value last accounted for at one client address, and the
// session that owned the address then (empty: nobody, so unattributed).
struct AddressCheckpoint {
    Traffic raw;
    std::string owner;
    bool operator==(const AddressCheckpoint&) const = default;
};

struct Checkpoint {
    CounterIdentity identity;
    std::map<ClientKey, AddressCheckpoint> addresses;
    std::map<uint32_t, InterfaceTraffic> interfaces; // raw, by ifindex
    std::map<uint32_t, std::string> interface_names;  // ifindex -> name at the time
};

// Everything one collection cycle changes, committed in ONE write
// transaction: the usage increments and the checkpoints move together, so a
// crash at any moment neither loses nor double-counts.
struct CycleCommit {
    int64_t time = 0; // unix seconds: which hour/day/month the increments go to
    std::vector<Session> sessions;                 // upserts: new, updated totals, closed
    std::map<std::string, Traffic> user_usage;     // user -> increment
    std::map<std::string, Traffic> unattributed;   // interface name -> increment
    std::optional<CounterIdentity> identity;       // set when it changed
    std::map<ClientKey, AddressCheckpoint> address_updates;
    std::vector<ClientKey> address_removals;       // entries no longer tracked
    std::map<uint32_t, InterfaceTraffic> interface_updates;
    std::map<uint32_t, std::string> interface_names;
};

enum class Granularity { Hour, Day, Month };

struct UsageBucket {
    int64_t start = 0; // unix seconds of the bucket's beginning in the store's timezone
    Traffic traffic;
    bool operator==(const UsageBucket&) const = default;
};

struct UnattributedUsage {
    std::string interface;
    Traffic traffic;
};

struct StoreSnapshotState;

// A consistent view of the store: every read through it sees the store as
// of its creation (one LMDB read transaction), whatever commits meanwhile.
// Never blocks the writer. Hold it briefly: the map cannot grow while this
// process has one open (a commit that needs to grow waits a few seconds,
// then fails and is retried next cycle). Must not outlive its Store.
class StoreSnapshot {
public:
    StoreSnapshot(StoreSnapshot&&) noexcept;
    StoreSnapshot& operator=(StoreSnapshot&&) noexcept;
    ~StoreSnapshot();

    Result<std::optional<Checkpoint>> checkpoint() const;
    Result<std::vector<Session>> sessions(bool active_only = false,
                                          const std::optional<std::string>& user = std::nullopt) const;
    Result<std::optional<Session>> session(const std::string& id) const;
    Result<std::vector<UsageBucket>> usage(const std::string& user, int64_t from, int64_t to,
                                           Granularity granularity) const;
    Result<std::vector<UnattributedUsage>> unattributed() const;

private:
    friend class Store;
    explicit StoreSnapshot(std::unique_ptr<StoreSnapshotState> state);
    std::unique_ptr<StoreSnapshotState> state_;
};

// Thread safety: the reads and snapshot() may be called from any thread
// (MDB_NOTLS), concurrently with commit() and prune(). LMDB allows ONE open
// of a store per process: a second Store::open of the same path in this
// process fails (another process, e.g. the CLI beside the daemon, is fine).
class Store {
public:
    static Result<Store> open(const StoreOptions& options);
    Store(Store&&) noexcept;
    Store& operator=(Store&&) noexcept;
    ~Store();

    // One write transaction. On MDB_MAP_FULL the map is grown (doubling, up
    // to max_map_size) and the commit retried; if it still does not fit,
    // nothing is written and the error says why (the caller retries the
    // whole cycle later: the kernel keeps counting meanwhile).
    Status commit(const CycleCommit& cycle);

    // The reads below each use a snapshot of their own; take one with
    // snapshot() to read several things consistently.
    Result<StoreSnapshot> snapshot() const;

    // nullopt: no checkpoint was ever committed.
    Result<std::optional<Checkpoint>> checkpoint() const;
    Result<std::vector<Session>> sessions(bool active_only = false,
                                          const std::optional<std::string>& user = std::nullopt) const;
    Result<std::optional<Session>> session(const std::string& id) const;
    // Buckets overlapping [from, to), oldest first; empty buckets omitted.
    Result<std::vector<UsageBucket>> usage(const std::string& user, int64_t from, int64_t to,
                                           Granularity granularity) const;
    Result<std::vector<UnattributedUsage>> unattributed() const;
    // Drops hour and day buckets past their retention.
    Status prune(int64_t now);

    // 0: opened read-only before the daemon ever initialised the store.
    uint32_t schema_version() const;
    uint64_t map_size() const;

    // Start of the bucket holding `time` in the store's timezone.
    int64_t bucket_start(int64_t time, Granularity granularity) const;

private:
    struct Impl;
    explicit Store(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

} // namespace vpnmeter
