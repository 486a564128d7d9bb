// Reads: each through one LMDB read transaction (a StoreSnapshot).
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

// Every session is decoded: fine for thousands. A store that keeps years of
// closed sessions wants an index by user and an active set.
Result<std::vector<Session>> StoreSnapshot::sessions(bool active_only, const std::optional<std::string>& user) const
{
    std::vector<Session> sessions;
    if (!state_->dbs->sessions) return sessions;
    auto scanned = scan(state_->txn, *state_->dbs->sessions, {}, [&](auto key, auto value) -> Result<bool> {
        auto session = encoding::decode_session(value);
        if (!session) return corrupt("session " + std::string(key) + ": " + session.error().context);
        if (active_only && !session->active()) return true;
        if (user && session->user != *user) return true;
        sessions.push_back(std::move(*session));
        return true;
    });
    if (!scanned) return scanned.error();
    return sessions;
}

Result<std::optional<Session>> StoreSnapshot::session(const std::string& id) const
{
    if (!state_->dbs->sessions || id.empty()) return std::optional<Session>();
    auto stored = state_->txn.get(*state_->dbs->sessions, id);
    if (!stored) return stored.error();
    if (!*stored) return std::optional<Session>();
    auto session = encoding::decode_session(**stored);
    if (!session) return corrupt("session " + id + ": " + session.error().context);
    return std::optional<Session>(std::move(*session));
}

Result<std::vector<UsageBucket>> StoreSnapshot::usage(const std::string& user, int64_t from, int64_t to,
                                                      Granularity granularity) const
{
    std::vector<UsageBucket> buckets;
    if (!state_->dbs->usage || from >= to) return buckets;
    // A user too long for a key cannot have been stored.
    if (user.size() + encoding::kUsageKeyOverhead > static_cast<size_t>(mdb_env_get_maxkeysize(state_->env)))
        return buckets;
    const std::string prefix = encoding::usage_prefix(user, granularity);
    // The bucket holding `from` overlaps the range even if it starts before.
    const std::string first = encoding::usage_key(user, granularity, state_->calendar->start(from, granularity));
    auto scanned = scan(state_->txn, *state_->dbs->usage, first, [&](auto key, auto value) -> Result<bool> {
        if (!key.starts_with(prefix)) return false;
        auto decoded = encoding::decode_usage_key(key);
        auto traffic = encoding::decode_traffic(value);
        if (!decoded || !traffic) return corrupt("usage record of user '" + user + "'");
        if (decoded->start >= to) return false;
        buckets.push_back(UsageBucket{decoded->start, *traffic});
        return true;
    });
    if (!scanned) return scanned.error();
    return buckets;
}

// One seek per user: past a user's last key (any granularity) is the key
// of the same length and name followed by 0xff, above every granularity byte.
Result<std::vector<std::string>> StoreSnapshot::users() const
{
    std::vector<std::string> users;
    if (!state_->dbs->usage) return users;
    auto cursor = lmdb::Cursor::open(state_->txn, *state_->dbs->usage);
    if (!cursor) return cursor.error();
    auto entry = cursor->move(MDB_FIRST);
    while (entry && *entry) {
        auto decoded = encoding::decode_usage_key((*entry)->key);
        if (!decoded) return corrupt("usage key");
        users.emplace_back(decoded->user);
        const std::string past = std::string((*entry)->key.substr(0, 2 + decoded->user.size())) + '\xff';
        entry = cursor->move(MDB_SET_RANGE, past);
    }
    if (!entry) return entry.error();
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
