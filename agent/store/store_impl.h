// The store's internals, shared by store.cpp (open, writes) and
// snapshot.cpp (reads). Not for use outside agent/store/.
#pragma once

#include <atomic>
#include <functional>
#include <mutex>
#include <optional>
#include <shared_mutex>

#include "store/lmdb.h"
#include "store/store.h"
#include "store/timezone.h"

namespace vpnmeter {

// 2: binary session records (store.cpp, migrate_1_to_2); 3: time-major usage
// keys, a users list, active sessions apart from closed ones (migrate_2_to_3);
// 4: compact address checkpoints (migrate_3_to_4); 5: day and month buckets
// rolled up from the hour buckets once the hour is over (migrate_4_to_5);
// 6: active sessions' totals in a small record of their own, the full record
// rewritten only when something else changes (nothing to migrate: without a
// totals record the full one holds them).
constexpr uint32_t kSchemaVersion = 7;

// In "meta": hour buckets that start before this (unix seconds) are added to
// their day and month buckets; those from it on are not yet (commit() rolls
// them up when a later hour begins; readers add them). None: nothing is.
constexpr const char* kRolledToKey = "usage_rolled_to";

// The named databases. Opened read-only, a store the daemon never
// initialised has none of them: reads then find nothing.
struct Databases {
    std::optional<MDB_dbi> meta;
    std::optional<MDB_dbi> sessions;        // closed
    std::optional<MDB_dbi> sessions_active;
    std::optional<MDB_dbi> session_totals;  // of active sessions: override the full record's
    std::optional<MDB_dbi> usage;           // "usage_by_time"
    std::optional<MDB_dbi> users;
    std::optional<MDB_dbi> unattributed;
    std::optional<MDB_dbi> checkpoint_addresses;
    std::optional<MDB_dbi> checkpoint_owners; // schema 7: apart from the raw values each cycle rewrites
    std::optional<MDB_dbi> checkpoint_interfaces;
    std::optional<MDB_dbi> checkpoint_meta;
    std::optional<MDB_dbi> quota_usage;
    std::optional<MDB_dbi> alerts_fired;
    std::optional<MDB_dbi> grants;
    std::optional<MDB_dbi> stats_checkpoints;
};

inline Error prefixed(const std::string& context, const Error& error)
{
    return Error{context + ": " + error.context, error.code};
}

inline Error corrupt(const std::string& what)
{
    return Error{"the store is corrupt: " + what};
}

// Calls visit(key, value) for each entry of `dbi` from `from` (the first
// entry when empty) until it returns false.
template <class Visit> Status scan(const lmdb::Txn& txn, MDB_dbi dbi, std::string_view from, Visit&& visit)
{
    auto cursor = lmdb::Cursor::open(txn, dbi);
    if (!cursor) return cursor.error();
    auto entry = from.empty() ? cursor->move(MDB_FIRST) : cursor->move(MDB_SET_RANGE, from);
    for (; entry && *entry; entry = cursor->move(MDB_NEXT)) {
        Result<bool> more = visit((*entry)->key, (*entry)->value);
        if (!more) return more.error();
        if (!*more) return ok();
    }
    if (!entry) return entry.error();
    return ok();
}

// Where the hour buckets are rolled up to (kRolledToKey); the smallest
// int64 when nothing is yet.
Result<int64_t> read_rolled_to(const lmdb::Txn& txn, MDB_dbi meta);

// The quota parts of commit() and prune() (quota.cpp), inside their
// transactions.
Status write_quota_records(lmdb::Txn& txn, const Databases& dbs, const CycleCommit& cycle);
// Drops alerts of periods before the user's quota usage record's, or before
// `orphan_cutoff` for users without one.
Status prune_alerts(lmdb::Txn& txn, const Databases& dbs, int64_t orphan_cutoff);

// LMDB breaks if one process opens the same environment twice (closing
// either drops the other's file locks), so each open claims the directory.
class OpenStoreClaim {
public:
    static Result<OpenStoreClaim> claim(const std::string& directory);
    OpenStoreClaim(OpenStoreClaim&& other) noexcept : id_(std::exchange(other.id_, std::nullopt)) {}
    OpenStoreClaim& operator=(OpenStoreClaim&&) = delete;
    OpenStoreClaim(const OpenStoreClaim&) = delete;
    ~OpenStoreClaim();

private:
    using Id = std::pair<uint64_t, uint64_t>; // device, inode
    explicit OpenStoreClaim(Id id) : id_(id) {}
    std::optional<Id> id_;
};

struct StoreSnapshotState {
    // Declared first, released last: the map must not be resized while the
    // transaction is open.
    std::shared_lock<std::shared_timed_mutex> map_lock;
    lmdb::Txn txn;
    MDB_env* env = nullptr;
    const Databases* dbs = nullptr;
    const BucketCalendar* calendar = nullptr;
};

struct Store::Impl {
    Impl(StoreOptions options, BucketCalendar calendar, OpenStoreClaim claim, lmdb::Env env)
        : options(std::move(options)), calendar(std::move(calendar)), claim(std::move(claim)), env(std::move(env)),
          max_map_size(this->options.max_map_size)
    {
    }

    // One write transaction around `apply`, retried with a bigger map while
    // LMDB reports MDB_MAP_FULL (up to max_map_size). `apply` may run
    // several times and must only touch the transaction. `failure`, if
    // given, says what kind of failure an error was.
    Status write(const std::string& what, const std::function<Status(lmdb::Txn&)>& apply,
                 StoreFailure* failure = nullptr);
    // The daemon's open: creates the databases, stamps or migrates the schema.
    Status initialise();
    // The CLI's open: finds what exists, changes nothing.
    Status attach();
    Result<std::unique_ptr<StoreSnapshotState>> begin_read() const;

    const StoreOptions options;
    const BucketCalendar calendar;
    OpenStoreClaim claim; // outlives env: released only once the files are closed
    lmdb::Env env;
    Databases dbs;
    uint32_t schema_version = 0;
    std::atomic<uint64_t> max_map_size; // options.max_map_size, until set_max_map_size()

    // Shared by every transaction of this process, exclusive while the map
    // is resized (LMDB requires no transaction to be active then).
    mutable std::shared_timed_mutex map_lock;
    // Held while a resize waits for map_lock, so that new readers queue
    // behind it instead of starving it (glibc's rwlock prefers readers).
    mutable std::mutex resize_gate;
    std::mutex write_lock; // one commit or prune at a time

private:
    Status resize_map(uint64_t size) const; // 0: adopt the size another process set
};

} // namespace vpnmeter
