// The usage store (LMDB): sessions, per-user usage buckets, checkpoints,
// and the quota engine's state (usage in the current period, alerts fired,
// grants).
#pragma once

#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "address_updates.h"
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

struct Checkpoint {
    CounterIdentity identity;
    AddressCheckpoints addresses;
    std::map<uint32_t, InterfaceTraffic> interfaces; // raw, by ifindex
    std::map<uint32_t, std::string> interface_names;  // ifindex -> name at the time
};

// Sing-Box: the raw stats-API counters of one instance last accounted for.
struct StatsCheckpoint {
    std::map<std::string, uint64_t> counters; // counter name -> value
    std::optional<uint64_t> uptime;            // the server's, seconds, when it reports one
    int64_t time = 0;                          // unix seconds of the reading
    bool operator==(const StatsCheckpoint&) const = default;
};

// A user's usage so far in their current quota period: absolute values, as
// the quota engine computed them (it owns what a period is).
struct QuotaUsageRecord {
    int64_t period_start = 0; // unix seconds
    uint64_t upload = 0;      // bytes
    uint64_t download = 0;    // bytes
    bool operator==(const QuotaUsageRecord&) const = default;
};

// A threshold alert that fired: at most one per (user, period_start,
// threshold), the first one recorded.
struct AlertRecord {
    std::string user;
    int64_t period_start = 0; // unix seconds: the quota period it belongs to
    int threshold = 0;        // percent of the limit
    int64_t fired_at = 0;     // unix seconds
    bool operator==(const AlertRecord&) const = default;
};

// Everything one collection cycle changes, committed in ONE write
// transaction: the usage increments and the checkpoints move together, so a
// crash at any moment neither loses nor double-counts.
// New totals of an active session whose record is otherwise unchanged
// since it was last committed: the store rewrites a small record, not the
// whole session, and nobody copies the session.
struct SessionTotals {
    const Session* session = nullptr; // as last committed (the reconciler's record, valid until its accept())
    Traffic usage;
    uint64_t source_upload_bytes = 0;
    uint64_t source_download_bytes = 0;
    bool operator==(const SessionTotals&) const = default;
};
SessionTotals totals_of(const Session& session);
// The whole session with these totals (a copy: for tests and rare paths).
Session with_totals(const SessionTotals& totals);

struct CycleCommit {
    int64_t time = 0; // unix seconds: which hour/day/month the increments go to
    // Upserts of whole sessions: new, closed, or changed beyond their
    // totals (roamed, readdressed).
    std::vector<Session> sessions;
    // Active sessions whose totals alone changed (usage, the VPN's
    // counters), in id order; none is also in `sessions`.
    std::vector<SessionTotals> session_totals;
    FlatMap<std::string, Traffic> user_usage;      // user -> increment (flat: a user per client)
    std::map<std::string, Traffic> unattributed;   // interface name -> increment
    std::optional<CounterIdentity> identity;       // set when it changed
    AddressUpdates address_updates; // views the snapshot plan() read: keep that alive until committed
    std::map<uint32_t, InterfaceTraffic> interface_updates;
    std::map<uint32_t, std::string> interface_names;
    // Quotas, in the same transaction as the usage they account for, so a
    // restart resumes from a period total that matches the buckets.
    FlatMap<std::string, QuotaUsageRecord> quota_usage; // user -> record, replacing the stored one (flat: a user per client)
    std::vector<AlertRecord> alerts_fired; // one already recorded keeps its first fired_at
    // Sing-Box: the counters the usage above came from, by instance
    // (replacing the stored checkpoint of each instance present).
    std::map<std::string, StatsCheckpoint> stats_checkpoints;
};

enum class Granularity { Hour, Day, Month };

// Why a write failed, for the caller's logs and metrics.
enum class StoreFailure {
    none,
    map_full,  // the map reached max_map_size (storage.map_size)
    disk_full, // the file system said ENOSPC or EDQUOT
    other,
};
const char* to_string(StoreFailure failure); // "map_full", "disk_full", ...

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
    // Every user with usage buckets, in byte order of their names.
    Result<std::vector<std::string>> users() const;

    Result<std::map<std::string, QuotaUsageRecord>> quota_usage() const;
    Result<std::optional<QuotaUsageRecord>> quota_usage(const std::string& user) const;
    // The thresholds that fired for one user in one period.
    Result<std::set<int>> alerts_fired(const std::string& user, int64_t period_start) const;
    // Every alert record (of one user), by user, period, threshold.
    Result<std::vector<AlertRecord>> alerts(const std::optional<std::string>& user = std::nullopt) const;
    Result<std::optional<std::string>> grant(const std::string& user) const;
    Result<std::map<std::string, std::string>> grants() const;
    Result<std::map<std::string, StatsCheckpoint>> stats_checkpoints() const; // by instance

private:
    friend class Store;
    explicit StoreSnapshot(std::unique_ptr<StoreSnapshotState> state);
    std::unique_ptr<StoreSnapshotState> state_;
};

// Thread safety: the reads and snapshot() may be called from any thread
// (MDB_NOTLS), concurrently with commit() and prune(). The writes (commit,
// prune, put_grant, erase_grant) may be called from any thread too: they
// take turns, each waiting for the one in progress. LMDB allows ONE open
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
    // whole cycle later: the kernel keeps counting meanwhile). `failure`,
    // if given, is set to the kind of failure (none on success).
    // The commit may begin while the cycle is still being planned on other
    // threads, once its time and user_usage are final. `quotas_planned`, if
    // valid: quota_usage and alerts_fired are still being filled in;
    // `rest_planned`, if valid: everything else is. The commit writes the
    // usage first, then reads the quota records once they are ready, then
    // the rest once it is; false (or a broken promise): nothing is written.
    Status commit(const CycleCommit& cycle, StoreFailure* failure = nullptr,
                  std::shared_future<bool> quotas_planned = {}, std::shared_future<bool> rest_planned = {});

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
    Result<std::map<std::string, StatsCheckpoint>> stats_checkpoints() const; // by instance
    Result<std::vector<std::string>> users() const;
    // Adds the hour buckets before `now`'s hour to their days and months,
    // each hour once (the meta record usage_rolled_to moves with them): a
    // write once an hour, nothing otherwise. Off the cycle's path: the
    // daemon calls it after each cycle. Until it runs, readers add the hours
    // not rolled up yet themselves, so days and months are always whole.
    Status roll_up(int64_t now);
    // Drops hour and day buckets past their retention, and alert records of
    // past quota periods: older than the period of the user's quota usage
    // record or, for a user without one, older than daily_retention_days.
    Status prune(int64_t now);

    // Quotas (see CycleCommit for their writes).
    Result<std::map<std::string, QuotaUsageRecord>> quota_usage() const;
    Result<std::optional<QuotaUsageRecord>> quota_usage(const std::string& user) const;
    Result<std::set<int>> alerts_fired(const std::string& user, int64_t period_start) const;
    Result<std::vector<AlertRecord>> alerts(const std::optional<std::string>& user = std::nullopt) const;

    // Grants set at run time (a purchased top-up): one opaque JSON text per
    // user, its format the quota engine's. Each write is a small transaction
    // of its own, durable when it returns; it waits for a commit in progress.
    Status put_grant(const std::string& user, const std::string& json); // replaces the user's grant
    Status erase_grant(const std::string& user);                        // none: fine
    Result<std::optional<std::string>> grant(const std::string& user) const;
    Result<std::map<std::string, std::string>> grants() const;

    // 0: opened read-only before the daemon ever initialised the store.
    uint32_t schema_version() const;
    uint64_t map_size() const;
    // A new limit for the map's growth (a configuration reload). A map
    // already larger keeps its size: it is never shrunk.
    void set_max_map_size(uint64_t size);
    uint64_t max_map_size() const;

    // Start of the bucket holding `time` in the store's timezone.
    int64_t bucket_start(int64_t time, Granularity granularity) const;

private:
    struct Impl;
    explicit Store(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

} // namespace vpnmeter
