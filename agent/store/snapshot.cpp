// Reads: each through one LMDB read transaction (a StoreSnapshot).
#include <algorithm>
#include <iterator>
#include <limits>

#include "store/encoding.h"
#include "store/store.h"
#include "store/store_impl.h"

namespace vpnmeter {

StoreSnapshot::StoreSnapshot(std::unique_ptr<StoreSnapshotState> state) : state_(std::move(state)) {}
StoreSnapshot::StoreSnapshot(StoreSnapshot&&) noexcept = default;
StoreSnapshot& StoreSnapshot::operator=(StoreSnapshot&&) noexcept = default;
StoreSnapshot::~StoreSnapshot() = default;

Result<StoreSnapshot> Store::snapshot() const
{
    auto state = impl_->begin_read();
    if (!state) return state.error();
    return StoreSnapshot(std::move(*state));
}

Result<std::optional<Checkpoint>> StoreSnapshot::checkpoint() const
{
    const lmdb::Txn& txn = state_->txn;
    const Databases& dbs = *state_->dbs;
    Checkpoint checkpoint;
    bool found = false;

    if (dbs.checkpoint_meta) {
        auto stored = txn.get(*dbs.checkpoint_meta, "identity");
        if (!stored) return stored.error();
        if (*stored) {
            auto identity = encoding::decode_identity(**stored);
            if (!identity) return corrupt("counter identity record");
            checkpoint.identity = std::move(*identity);
            found = true;
        }
    }
    if (dbs.checkpoint_addresses) {
        auto scanned = scan(txn, *dbs.checkpoint_addresses, {}, [&](auto key, auto value) -> Result<bool> {
            auto client = encoding::decode_client_key(key);
            auto address = encoding::decode_address_checkpoint(value);
            if (!client || !address) return corrupt("address checkpoint record");
            checkpoint.addresses.try_emplace(*client, std::move(*address)); // in key order: appends
            return true;
        });
        if (!scanned) return scanned.error();
    }
    if (dbs.checkpoint_owners) { // schema 7; before, the owner ended each address's record
        auto address = checkpoint.addresses.begin();
        auto scanned = scan(txn, *dbs.checkpoint_owners, {}, [&](auto key, auto value) -> Result<bool> {
            auto client = encoding::decode_client_key(key);
            if (!client) return corrupt("address owner record");
            while (address != checkpoint.addresses.end() && address->first < *client) ++address;
            // Written with its address's checkpoint, in one transaction.
            if (address == checkpoint.addresses.end() || address->first != *client)
                return corrupt("owner of " + client->address() + " without a checkpoint");
            address->second.owner = value;
            return true;
        });
        if (!scanned) return scanned.error();
    }
    if (dbs.checkpoint_interfaces) {
        auto scanned = scan(txn, *dbs.checkpoint_interfaces, {}, [&](auto key, auto value) -> Result<bool> {
            auto ifindex = encoding::decode_interface_key(key);
            auto record = encoding::decode_interface_record(value);
            if (!ifindex || !record) return corrupt("interface checkpoint record");
            if (record->traffic) checkpoint.interfaces.emplace(*ifindex, *record->traffic);
            if (!record->name.empty()) checkpoint.interface_names.emplace(*ifindex, std::move(record->name));
            return true;
        });
        if (!scanned) return scanned.error();
    }
    found =
        found || !checkpoint.addresses.empty() || !checkpoint.interfaces.empty() || !checkpoint.interface_names.empty();
    if (!found) return std::optional<Checkpoint>();
    return std::optional<Checkpoint>(std::move(checkpoint));
}

namespace {

// The sessions of one database (`dbi` unset: none) that pass `keep`, in id order.
template <class Keep>
Result<std::vector<Session>> scan_sessions(const lmdb::Txn& txn, std::optional<MDB_dbi> dbi, Keep&& keep)
{
    std::vector<Session> sessions;
    if (!dbi) return sessions;
    auto scanned = scan(txn, *dbi, {}, [&](auto key, auto value) -> Result<bool> {
        auto session = encoding::decode_session(value);
        if (!session) return corrupt("session " + std::string(key) + ": " + session.error().context);
        if (keep(*session)) sessions.push_back(std::move(*session));
        return true;
    });
    if (!scanned) return scanned.error();
    return sessions;
}

// An active session takes its totals from its totals record, if it has one.
Status take_totals(const lmdb::Txn& txn, MDB_dbi totals, Session& session)
{
    auto stored = txn.get(totals, session.id);
    if (!stored) return stored.error();
    if (*stored && !encoding::decode_session_totals(**stored, session))
        return corrupt("totals of session " + session.id);
    return ok();
}

// Active sessions (in id order) likewise: one walk of both.
Status take_totals(const lmdb::Txn& txn, std::optional<MDB_dbi> totals, std::vector<Session>& active)
{
    if (!totals || active.empty()) return ok();
    if (active.size() < 64) { // a few (one user's): looked up
        for (Session& session : active)
            if (auto taken = take_totals(txn, *totals, session); !taken) return taken;
        return ok();
    }
    auto next = active.begin();
    return scan(txn, *totals, active.front().id, [&](auto key, auto value) -> Result<bool> {
        while (next != active.end() && next->id < key) ++next;
        if (next == active.end()) return false;
        if (next->id == key && !encoding::decode_session_totals(value, *next))
            return corrupt("totals of session " + next->id);
        return true;
    });
}

} // namespace

// Every closed session is decoded: fine for thousands. A store that keeps
// years of them wants an index by user.
Result<std::vector<Session>> StoreSnapshot::sessions(bool active_only, const std::optional<std::string>& user) const
{
    auto keep = [&](const Session& session) {
        return (!active_only || session.active()) && (!user || session.user == *user);
    };
    auto active = scan_sessions(state_->txn, state_->dbs->sessions_active, keep);
    if (!active) return active;
    if (auto totals = take_totals(state_->txn, state_->dbs->session_totals, *active); !totals) return totals.error();
    if (active_only) return active;
    auto closed = scan_sessions(state_->txn, state_->dbs->sessions, keep);
    if (!closed) return closed;
    std::vector<Session> all;
    all.reserve(active->size() + closed->size());
    std::merge(std::make_move_iterator(active->begin()), std::make_move_iterator(active->end()),
               std::make_move_iterator(closed->begin()), std::make_move_iterator(closed->end()),
               std::back_inserter(all), [](const Session& a, const Session& b) { return a.id < b.id; });
    return all;
}

Result<std::optional<Session>> StoreSnapshot::session(const std::string& id) const
{
    if (id.empty()) return std::optional<Session>();
    for (auto dbi : {state_->dbs->sessions_active, state_->dbs->sessions}) {
        if (!dbi) continue;
        auto stored = state_->txn.get(*dbi, id);
        if (!stored) return stored.error();
        if (!*stored) continue;
        auto session = encoding::decode_session(**stored);
        if (!session) return corrupt("session " + id + ": " + session.error().context);
        if (dbi == state_->dbs->sessions_active && state_->dbs->session_totals) {
            if (auto taken = take_totals(state_->txn, *state_->dbs->session_totals, *session); !taken)
                return taken.error();
        }
        return std::optional<Session>(std::move(*session));
    }
    return std::optional<Session>();
}

// Two lookups per bucket start present in the store (for anyone): one for
// the user's bucket, one to find the next start.
Result<std::vector<UsageBucket>> StoreSnapshot::usage(const std::string& user, int64_t from, int64_t to,
                                                      Granularity granularity) const
{
    std::vector<UsageBucket> buckets;
    if (!state_->dbs->usage || from >= to) return buckets;
    // A user too long for a key cannot have been stored.
    if (user.size() + encoding::kUsageKeyOverhead > static_cast<size_t>(mdb_env_get_maxkeysize(state_->env)))
        return buckets;
    const lmdb::Txn& txn = state_->txn;
    const MDB_dbi dbi = *state_->dbs->usage;
    auto cursor = lmdb::Cursor::open(txn, dbi);
    if (!cursor) return cursor.error();
    // Calls add(start, traffic) for each of the user's buckets of `run`
    // from `start` on, until past(start).
    auto each_bucket = [&](Granularity run, int64_t start, auto&& past, auto&& add) -> Status {
        while (!past(start)) {
            auto entry = cursor->move(MDB_SET_RANGE, encoding::usage_key(run, start, {}));
            if (!entry) return entry.error();
            if (!*entry) break;
            const auto present = encoding::decode_usage_key((*entry)->key);
            if (!present) return corrupt("usage key");
            if (present->granularity != run || past(present->start)) break;
            start = present->start;
            auto stored = txn.get(dbi, encoding::usage_key(run, start, user));
            if (!stored) return stored.error();
            if (*stored) {
                auto traffic = encoding::decode_traffic(**stored);
                if (!traffic) return corrupt("usage record of user '" + user + "'");
                add(start, *traffic);
            }
            if (start == std::numeric_limits<int64_t>::max()) break;
            ++start;
        }
        return ok();
    };
    // The bucket holding `from` overlaps the range even if it starts before.
    const int64_t first = state_->calendar->start(from, granularity);
    auto stored = each_bucket(granularity, first, [&](int64_t start) { return start >= to; },
                              [&](int64_t start, const Traffic& traffic) { buckets.push_back(UsageBucket{start, traffic}); });
    if (!stored) return stored.error();
    if (granularity == Granularity::Hour) return buckets;
    // The hours not yet rolled up into their days and months (kRolledToKey).
    auto rolled = read_rolled_to(txn, *state_->dbs->meta);
    if (!rolled) return rolled.error();
    // An hour belongs to the range if the day or month it goes into does.
    auto past = [&](int64_t hour) { return state_->calendar->start(hour, granularity) >= to; };
    auto unrolled = each_bucket(Granularity::Hour, std::max(first, *rolled), past, [&](int64_t hour, const Traffic& traffic) {
        const int64_t start = state_->calendar->start(hour, granularity);
        auto it = std::lower_bound(buckets.begin(), buckets.end(), start,
                                   [](const UsageBucket& bucket, int64_t at) { return bucket.start < at; });
        if (it == buckets.end() || it->start != start) it = buckets.insert(it, UsageBucket{start, {}});
        it->traffic += traffic;
    });
    if (!unrolled) return unrolled.error();
    return buckets;
}

Result<std::vector<std::string>> StoreSnapshot::users() const
{
    std::vector<std::string> users;
    if (!state_->dbs->users) return users;
    auto scanned = scan(state_->txn, *state_->dbs->users, {}, [&](auto key, auto) -> Result<bool> {
        auto user = encoding::decode_user_key(key);
        if (!user) return corrupt("user key");
        users.emplace_back(*user);
        return true;
    });
    if (!scanned) return scanned.error();
    return users;
}

Result<std::vector<UnattributedUsage>> StoreSnapshot::unattributed() const
{
    std::vector<UnattributedUsage> usage;
    if (!state_->dbs->unattributed) return usage;
    auto scanned = scan(state_->txn, *state_->dbs->unattributed, {}, [&](auto key, auto value) -> Result<bool> {
        auto traffic = encoding::decode_traffic(value);
        if (!traffic) return corrupt("unattributed usage of " + std::string(key));
        usage.push_back(UnattributedUsage{std::string(key), *traffic});
        return true;
    });
    if (!scanned) return scanned.error();
    return usage;
}

// The Store's own reads: a snapshot each.
Result<std::optional<Checkpoint>> Store::checkpoint() const
{
    auto snap = snapshot();
    if (!snap) return snap.error();
    return snap->checkpoint();
}

Result<std::vector<Session>> Store::sessions(bool active_only, const std::optional<std::string>& user) const
{
    auto snap = snapshot();
    if (!snap) return snap.error();
    return snap->sessions(active_only, user);
}

Result<std::optional<Session>> Store::session(const std::string& id) const
{
    auto snap = snapshot();
    if (!snap) return snap.error();
    return snap->session(id);
}

Result<std::vector<UsageBucket>> Store::usage(const std::string& user, int64_t from, int64_t to,
                                              Granularity granularity) const
{
    auto snap = snapshot();
    if (!snap) return snap.error();
    return snap->usage(user, from, to, granularity);
}

Result<std::vector<UnattributedUsage>> Store::unattributed() const
{
    auto snap = snapshot();
    if (!snap) return snap.error();
    return snap->unattributed();
}

Result<std::map<std::string, StatsCheckpoint>> StoreSnapshot::stats_checkpoints() const
{
    std::map<std::string, StatsCheckpoint> checkpoints;
    if (!state_->dbs->stats_checkpoints) return checkpoints;
    auto scanned = scan(state_->txn, *state_->dbs->stats_checkpoints, {}, [&](auto key, auto value) -> Result<bool> {
        auto checkpoint = encoding::decode_stats_checkpoint(value);
        if (!checkpoint) return corrupt("Sing-Box checkpoint of " + std::string(key) + ": " + checkpoint.error().context);
        checkpoints.emplace_hint(checkpoints.end(), key, std::move(*checkpoint));
        return true;
    });
    if (!scanned) return scanned.error();
    return checkpoints;
}

Result<std::map<std::string, StatsCheckpoint>> Store::stats_checkpoints() const
{
    auto snap = snapshot();
    if (!snap) return snap.error();
    return snap->stats_checkpoints();
}

Result<std::vector<std::string>> Store::users() const
{
    auto snap = snapshot();
    if (!snap) return snap.error();
    return snap->users();
}

} // namespace vpnmeter
