// The quota engine's state: usage in the current period and alerts fired
// (written with each cycle's commit), grants (written on their own), and
// their reads. The byte layout is in encoding.h.
#include "store/encoding.h"
#include "store/store.h"
#include "store/store_impl.h"

namespace vpnmeter {
namespace {

// Users are keys of their own here: LMDB refuses empty and oversized keys.
bool fits_key(MDB_env *env, size_t size)
{
    return size > 0 && size <= static_cast<size_t>(mdb_env_get_maxkeysize(env));
}

Status check_user_key(MDB_env *env, const std::string &user)
{
    if (user.empty()) return Error{"empty user name"};
    if (!fits_key(env, user.size()))
        return Error{"user name of " + std::to_string(user.size()) + " bytes is longer than the store's limit of " +
                     std::to_string(mdb_env_get_maxkeysize(env))};
    return ok();
}

} // namespace

Status write_quota_records(lmdb::Txn &txn, const Databases &dbs, const CycleCommit &cycle)
{
    auto cursor = lmdb::WriteCursor::open(txn, *dbs.quota_usage); // users in key order: LMDB searches from the cursor
    if (!cursor) return prefixed("store quota usage", cursor.error());
    std::string value; // one buffer for all of them
    for (const auto &[user, record] : cycle.quota_usage) {
        if (user.empty()) return Error{"store quota usage: empty user name"};
        encoding::encode(record, value);
        if (auto put = cursor->put(user, value); !put)
            return prefixed("store quota usage of user '" + user + "'", put.error());
    }
    for (const AlertRecord &alert : cycle.alerts_fired) {
        const std::string context =
            "record alert " + std::to_string(alert.threshold) + "% of user '" + alert.user + "'";
        if (alert.user.empty()) return Error{context + ": empty user name"};
        const auto key = encoding::alert_key(alert.user, alert.period_start, alert.threshold);
        auto stored = txn.get(*dbs.alerts_fired, key);
        if (!stored) return prefixed(context, stored.error());
        if (*stored) continue; // fired before: the first record stands
        if (auto put = txn.put(*dbs.alerts_fired, key, encoding::encode_i64(alert.fired_at)); !put)
            return prefixed(context, put.error());
    }
    return ok();
}

Status prune_alerts(lmdb::Txn &txn, const Databases &dbs, int64_t orphan_cutoff)
{
    std::vector<std::string> doomed;
    {
        auto cursor = lmdb::Cursor::open(txn, *dbs.alerts_fired);
        if (!cursor) return cursor.error();
        std::optional<std::string> user; // whose alerts the cursor is in (keys group by user)
        int64_t cutoff = orphan_cutoff;
        auto entry = cursor->move(MDB_FIRST);
        for (; entry && *entry; entry = cursor->move(MDB_NEXT)) {
            const auto key = encoding::decode_alert_key((*entry)->key);
            if (!key) continue; // not ours: leave it
            if (!user || *user != key->user) {
                user = std::string(key->user);
                auto stored = txn.get(*dbs.quota_usage, *user);
                if (!stored) return stored.error();
                const auto record = *stored ? encoding::decode_quota_usage(**stored) : std::nullopt;
                cutoff = record ? record->period_start : orphan_cutoff;
            }
            if (key->period_start < cutoff) doomed.emplace_back((*entry)->key);
        }
        if (!entry) return entry.error();
    } // the cursor goes before the deletes
    for (const std::string &key : doomed) {
        if (auto removed = txn.del(*dbs.alerts_fired, key); !removed) return removed.error();
    }
    return ok();
}

Status Store::put_grant(const std::string &user, const std::string &json)
{
    const std::string context = "store grant of user '" + user + "'";
    if (impl_->options.read_only) return Error{context + ": the store is open read-only"};
    if (auto valid = check_user_key(impl_->env.get(), user); !valid) return prefixed(context, valid.error());
    if (json.empty()) return Error{context + ": empty grant (erase_grant removes one)"};
    return impl_->write(context, [&](lmdb::Txn &txn) { return txn.put(*impl_->dbs.grants, user, json); });
}

Status Store::erase_grant(const std::string &user)
{
    const std::string context = "erase grant of user '" + user + "'";
    if (impl_->options.read_only) return Error{context + ": the store is open read-only"};
    if (!fits_key(impl_->env.get(), user.size())) return ok(); // could not have been stored
    return impl_->write(context, [&](lmdb::Txn &txn) { return txn.del(*impl_->dbs.grants, user); });
}

Result<std::map<std::string, QuotaUsageRecord>> StoreSnapshot::quota_usage() const
{
    std::map<std::string, QuotaUsageRecord> records;
    if (!state_->dbs->quota_usage) return records;
    auto scanned = scan(state_->txn, *state_->dbs->quota_usage, {}, [&](auto key, auto value) -> Result<bool> {
        auto record = encoding::decode_quota_usage(value);
        if (!record) return corrupt("quota usage record of user '" + std::string(key) + "'");
        records.emplace_hint(records.end(), key, *record);
        return true;
    });
    if (!scanned) return scanned.error();
    return records;
}

Result<std::optional<QuotaUsageRecord>> StoreSnapshot::quota_usage(const std::string &user) const
{
    if (!state_->dbs->quota_usage || !fits_key(state_->env, user.size())) return std::optional<QuotaUsageRecord>();
    auto stored = state_->txn.get(*state_->dbs->quota_usage, user);
    if (!stored) return stored.error();
    if (!*stored) return std::optional<QuotaUsageRecord>();
    auto record = encoding::decode_quota_usage(**stored);
    if (!record) return corrupt("quota usage record of user '" + user + "'");
    return std::optional<QuotaUsageRecord>(*record);
}

Result<std::set<int>> StoreSnapshot::alerts_fired(const std::string &user, int64_t period_start) const
{
    std::set<int> thresholds;
    if (!state_->dbs->alerts_fired || !fits_key(state_->env, user.size() + encoding::kAlertKeyOverhead))
        return thresholds;
    const std::string prefix = encoding::alert_prefix(user, period_start);
    auto scanned = scan(state_->txn, *state_->dbs->alerts_fired, prefix, [&](auto key, auto) -> Result<bool> {
        if (!key.starts_with(prefix)) return false;
        auto decoded = encoding::decode_alert_key(key);
        if (!decoded) return corrupt("alert record of user '" + user + "'");
        thresholds.insert(decoded->threshold);
        return true;
    });
    if (!scanned) return scanned.error();
    return thresholds;
}

Result<std::vector<AlertRecord>> StoreSnapshot::alerts(const std::optional<std::string> &user) const
{
    std::vector<AlertRecord> records;
    if (!state_->dbs->alerts_fired) return records;
    auto scanned = scan(state_->txn, *state_->dbs->alerts_fired, {}, [&](auto key, auto value) -> Result<bool> {
        auto decoded = encoding::decode_alert_key(key);
        auto fired_at = encoding::decode_i64(value);
        if (!decoded || !fired_at) return corrupt("alert record");
        if (user && decoded->user != *user) return true;
        records.push_back(
            AlertRecord{std::string(decoded->user), decoded->period_start, decoded->threshold, *fired_at});
        return true;
    });
    if (!scanned) return scanned.error();
    return records;
}

Result<std::optional<std::string>> StoreSnapshot::grant(const std::string &user) const
{
    if (!state_->dbs->grants || !fits_key(state_->env, user.size())) return std::optional<std::string>();
    auto stored = state_->txn.get(*state_->dbs->grants, user);
    if (!stored) return stored.error();
    if (!*stored) return std::optional<std::string>();
    return std::optional<std::string>(std::string(**stored));
}

Result<std::map<std::string, std::string>> StoreSnapshot::grants() const
{
    std::map<std::string, std::string> grants;
    if (!state_->dbs->grants) return grants;
    auto scanned = scan(state_->txn, *state_->dbs->grants, {}, [&](auto key, auto value) -> Result<bool> {
        grants.emplace_hint(grants.end(), key, value);
        return true;
    });
    if (!scanned) return scanned.error();
    return grants;
}

// The Store's own reads: a snapshot each.
Result<std::map<std::string, QuotaUsageRecord>> Store::quota_usage() const
{
    auto snap = snapshot();
    if (!snap) return snap.error();
    return snap->quota_usage();
}

Result<std::optional<QuotaUsageRecord>> Store::quota_usage(const std::string &user) const
{
    auto snap = snapshot();
    if (!snap) return snap.error();
    return snap->quota_usage(user);
}

Result<std::set<int>> Store::alerts_fired(const std::string &user, int64_t period_start) const
{
    auto snap = snapshot();
    if (!snap) return snap.error();
    return snap->alerts_fired(user, period_start);
}

Result<std::vector<AlertRecord>> Store::alerts(const std::optional<std::string> &user) const
{
    auto snap = snapshot();
    if (!snap) return snap.error();
    return snap->alerts(user);
}

Result<std::optional<std::string>> Store::grant(const std::string &user) const
{
    auto snap = snapshot();
    if (!snap) return snap.error();
    return snap->grant(user);
}

Result<std::map<std::string, std::string>> Store::grants() const
{
    auto snap = snapshot();
    if (!snap) return snap.error();
    return snap->grants();
}

} // namespace vpnmeter
