#include "quota_controller.h"

#include <algorithm>
#include <span>
#include <string_view>
#include <unordered_set>
#include <spdlog/spdlog.h>

#include "format.h"
#include "quota/grant_request.h"

namespace vpnmeter {
namespace {

uint32_t budget_flags(Plan::Direction direction)
{
    switch (direction) {
    case Plan::Direction::upload: return VPNMETER_POLICY_BUDGET_UPLOAD;
    case Plan::Direction::download: return VPNMETER_POLICY_BUDGET_DOWNLOAD;
    default: return VPNMETER_POLICY_BUDGET;
    }
}

// HTB classes per user: one for the always-on speed, one for the throttle.
uint16_t speed_minor(uint32_t slot) { return static_cast<uint16_t>(2 + 2 * slot); }
uint16_t throttle_minor(uint32_t slot) { return static_cast<uint16_t>(3 + 2 * slot); }

} // namespace

QuotaController::QuotaController(QuotaConfig config, Store& store, Enforcer* enforcer, PinnedMaps* registry,
                                 std::unique_ptr<WebhookSender> webhook, uint32_t slots)
    : config_(std::move(config)), store_(store), enforcer_(enforcer), registry_(registry),
      webhook_(std::move(webhook)), slots_(slots)
{
}

namespace {

// Entries of a map by name looked up in ascending order of names, along
// the map's entries listed in name order: steps from the last one found, a
// search only when it is further (at 100,000 users a search each cost more
// than their states). For `lookups` names in all, when walking the whole
// list costs less than searching for each, it only steps. An entry it adds
// is not in the list, which stays in order: the next walk's list has it.
template <class Map>
class NameWalk {
public:
    using Value = typename Map::value_type;
    using Entry = std::conditional_t<std::is_const_v<Map>, const Value, Value>;

    NameWalk(Map& map, const std::vector<const Value*>& by_name, size_t lookups = 0)
        : map_(map), by_name_(by_name), max_steps_(lookups * 16 >= by_name.size() ? SIZE_MAX : 4)
    {
    }
    Entry* find(std::string_view name)
    {
        for (size_t step = 0; at_ < by_name_.size() && by_name_[at_]->first < name; ++step) {
            if (step == max_steps_) {
                auto before = [](const Value* entry, std::string_view n) { return entry->first < n; };
                auto from = by_name_.begin() + static_cast<std::ptrdiff_t>(at_);
                at_ = static_cast<size_t>(std::lower_bound(from, by_name_.end(), name, before) - by_name_.begin());
                break;
            }
            if (++at_ + kAhead < by_name_.size()) __builtin_prefetch(by_name_[at_ + kAhead]);
        }
        if (at_ == by_name_.size() || by_name_[at_]->first != name) return nullptr;
        // The map's own entry: a walk over a mutable map may change it.
        return const_cast<Entry*>(by_name_[at_]);
    }
    auto* get(std::string_view name)
    {
        Entry* entry = find(name);
        return entry ? &entry->second : nullptr;
    }
    // The entry of `name`, a new empty one if it had none.
    Entry* find_or_add(std::string_view name)
    {
        if (Entry* entry = find(name)) return entry;
        return &*map_.emplace(std::string(name), typename Map::mapped_type{}).first;
    }

private:
    static constexpr size_t kAhead = 8;
    Map& map_;
    const std::vector<const Value*>& by_name_;
    size_t at_ = 0;
    size_t max_steps_;
};

} // namespace

const std::vector<const QuotaController::Users::value_type*>& QuotaController::users_by_name() const
{
    if (by_name_.size() != users_.size()) {
        by_name_.clear();
        by_name_.reserve(users_.size());
        for (const auto& entry : users_) by_name_.push_back(&entry);
    }
    return by_name_;
}

Status QuotaController::load()
{
    auto usage = store_.quota_usage();
    if (!usage) return usage.error();
    for (const auto& [user, record] : usage.value())
        users_[user].usage = PeriodUsage{record.period_start, record.upload, record.download};
    auto grants = store_.grants();
    if (!grants) return grants.error();
    // The thresholds fired in each user's latest period, so plan() needs no
    // store read per user per cycle (accept() keeps this up to date).
    auto alerts = store_.alerts();
    if (!alerts) return alerts.error();
    for (const auto& alert : alerts.value()) remember_fired(alert); // by user, then period: the latest comes last
    for (const auto& [user, text] : grants.value()) {
        try {
            users_[user].grant = nlohmann::json::parse(text).get<Grant>();
            ++granted_;
        } catch (const std::exception& e) {
            spdlog::warn("quota: ignoring the stored grant of {}: {}", user, e.what());
        }
    }
    return ok();
}

// A user's record keeps their latest period's alerts only: an alert of a
// newer one replaces what it held.
void QuotaController::remember_fired(const AlertRecord& alert)
{
    UserQuota& record = users_[alert.user];
    if (record.fired_period != alert.period_start) record.fired.clear();
    record.fired_period = alert.period_start;
    record.fired.insert(alert.threshold);
}

const std::optional<Grant>& QuotaController::grant_in(const UserQuota* record)
{
    static const std::optional<Grant> none;
    return record ? record->grant : none;
}

QuotaState QuotaController::evaluate_user(const std::string& user, const UserQuota* record, int64_t now) const
{
    return evaluate_usage(user, grant_in(record), record ? record->usage : std::nullopt, now);
}

QuotaState QuotaController::evaluate_usage(const std::string& user, const std::optional<Grant>& grant,
                                           const std::optional<PeriodUsage>& stored, int64_t now) const
{
    const PeriodUsage used = roll(stored.value_or(PeriodUsage{}), period_of(config_, user, grant, now));
    return evaluate(config_, user, grant, used.upload, used.download, now);
}

QuotaState QuotaController::state_of(const std::string& user, int64_t now) const
{
    auto it = users_.find(user);
    return evaluate_user(user, it != users_.end() ? &it->second : nullptr, now);
}

QuotaController::Enforced QuotaController::enforced_from(const QuotaState& state)
{
    return {state.state,        state.block,     state.disconnect, state.remaining_bytes.has_value(),
            state.download_bps, state.upload_bps, state.period.start, state.limit_bytes};
}

const QuotaState* QuotaController::kept_for(const UserQuota& record, const std::optional<PeriodUsage>& usage,
                                            int64_t now)
{
    const auto& kept = record.state;
    if (!kept || record.state_of_usage != usage || now < kept->period.start || now >= kept->holds_until) return nullptr;
    return &*kept;
}

const QuotaState& QuotaController::kept_state(const std::string& user, const UserQuota& record, int64_t now) const
{
    if (const QuotaState* kept = kept_for(record, record.usage, now)) return *kept;
    record.state = evaluate_user(user, &record, now);
    record.state_of_usage = record.usage;
    return *record.state;
}

void QuotaController::plan(CycleCommit& commit, int64_t now) const
{
    std::lock_guard lock(mutex_);
    static const UserQuota nothing;
    NameWalk records(users_, users_by_name(), commit.user_usage.size());
    commit.quota_usage.reserve(commit.quota_usage.size() + commit.user_usage.size());
    for (const auto& [user, moved] : commit.user_usage) { // in user order
        const UserQuota* found = records.get(user);
        const UserQuota& record = found ? *found : nothing;
        const Period period = period_of(config_, user, record.grant, now);
        const PeriodUsage used =
            add(roll(record.usage.value_or(PeriodUsage{}), period), moved.upload.bytes, moved.download.bytes);
        const QuotaUsageRecord record_now{used.period_start, used.upload, used.download};
        if (auto [it, added] = commit.quota_usage.try_emplace(user, record_now); !added) it->second = record_now;

        QuotaState state = evaluate(config_, user, record.grant, used.upload, used.download, now);
        if (state.limit_bytes && *state.limit_bytes > 0) {
            // A record holds every alert of the user's latest period (load()
            // and accept()): none of another period is of this one.
            static const std::set<int> none;
            const std::set<int>& already = record.fired_period == period.start ? record.fired : none;
            for (int threshold : thresholds_to_fire(config_.thresholds, state.used_bytes, *state.limit_bytes, already))
                commit.alerts_fired.push_back({user, period.start, threshold, now});
        }
        // Kept for the usage it is of: once committed, accept() and the
        // gauges find it evaluated (at 100,000 users ~4 ms a cycle).
        if (found) {
            found->state = std::move(state);
            found->state_of_usage = used;
        }
    }
}

void QuotaController::accept(const CycleCommit& commit, int64_t now)
{
    accept(commit, now, nullptr);
}

bool QuotaController::undoable(const CycleCommit& planned)
{
    return planned.alerts_fired.empty();
}

std::optional<QuotaController::Undo> QuotaController::accept_tentatively(const CycleCommit& planned, int64_t now)
{
    if (!undoable(planned)) return std::nullopt;
    Undo undo;
    undo.usage.reserve(planned.quota_usage.size());
    accept(planned, now, &undo);
    return undo;
}

void QuotaController::undo(Undo&& undo)
{
    std::lock_guard lock(mutex_);
    for (auto& [record, usage] : undo.usage) record->usage = std::move(usage); // a kept state knows its usage
    if (undo.walked) walked_ = std::move(undo.walked);
    if (walked_ && undo.holds_until) walked_->holds_until = *undo.holds_until;
}

void QuotaController::accept(const CycleCommit& commit, int64_t now, Undo* undo)
{
    {
        std::lock_guard lock(mutex_);
        if (undo && walked_) undo->holds_until = walked_->holds_until;
        NameWalk records(users_, users_by_name(), commit.quota_usage.size()); // both in user order: one walk
        for (const auto& [user, stored] : commit.quota_usage) {
            UserQuota& record = records.find_or_add(user)->second;
            if (undo) undo->usage.emplace_back(&record, record.usage);
            record.usage = PeriodUsage{stored.period_start, stored.upload, stored.download};
            if (!walked_ || !record.enforced) continue;
            // More usage: the kernel's policies still hold unless it changed
            // what they were set from (a threshold crossed, a block).
            const QuotaState& state = kept_state(user, record, now);
            if (enforced_from(state) == *record.enforced)
                walked_->holds_until = std::min(walked_->holds_until, state.holds_until);
            else if (undo)
                undo->walked = std::exchange(walked_, std::nullopt);
            else
                walked_.reset();
        }
        for (const auto& alert : commit.alerts_fired) {
            remember_fired(alert);

            const QuotaState state = state_of(alert.user, now);
            spdlog::warn("quota: {} reached {}% of {} ({} of {}) on plan {}", alert.user, alert.threshold,
                         state.limit_bytes ? human_bytes(*state.limit_bytes) : "unlimited",
                         human_bytes(state.used_bytes), state.limit_bytes ? human_bytes(*state.limit_bytes) : "-",
                         state.plan);
            ++alerts_sent_;
            if (webhook_ && state.limit_bytes)
                webhook_->enqueue(alert_payload(alert.user, state.plan, state.used_bytes, *state.limit_bytes,
                                                alert.threshold, state.period.start, state.period.end));
        }
    }
}

Result<uint32_t> QuotaController::shaped_class(uint32_t ifindex, uint16_t minor, uint64_t rate_bps)
{
    auto it = shapers_.find(ifindex);
    if (it == shapers_.end()) {
        auto shaper = HtbShaper::attach(ifindex, registry_);
        if (!shaper) return shaper.error();
        it = shapers_.emplace(ifindex, std::move(shaper.value())).first;
    }
    return it->second.set_class(minor, rate_bps);
}

// The user's enforcement slot, if held, goes back (its budget zeroed; set
// again from the committed usage if they need one).
void QuotaController::give_back_slot(const std::string& user, UserQuota* record)
{
    if (auto slot = slots_.release(user)) {
        if (auto released = enforcer_->release_slot(*slot); !released)
            spdlog::error("quota: releasing the slot of {}: {}", user, released.error().message());
    }
    if (record) {
        record->slot.reset();
        record->budget_basis.reset();
    }
}

// Both lists are by user in name order: one walk along both.
std::vector<QuotaController::KeysChange>
QuotaController::keys_changes(const std::vector<std::pair<std::string, ClientKey>>& before, const UserKeys& now)
{
    // The usual: nothing changed (a plain comparison costs less than the walk).
    if (std::equal(before.begin(), before.end(), now.begin(), now.end(),
                   [](const auto& a, const auto& b) { return a.second == b.second && a.first == b.first; }))
        return {};
    auto group_end = [](const auto& keys, size_t from) {
        size_t to = from + 1;
        while (to < keys.size() && keys[to].first == keys[from].first) ++to;
        return to;
    };
    std::vector<KeysChange> changes;
    size_t b = 0, n = 0;
    while (b < before.size() || n < now.size()) {
        // < 0: before's user has no keys now; > 0: now's user had none.
        const int order = b == before.size() ? 1
                          : n == now.size()  ? -1
                                             : std::string_view(before[b].first).compare(now[n].first);
        KeysChange change{b, b, n, n};
        if (order <= 0) change.before_end = group_end(before, b);
        if (order >= 0) change.now_end = group_end(now, n);
        const bool same = order == 0 && std::equal(before.begin() + b, before.begin() + change.before_end,
                                                   now.begin() + n, now.begin() + change.now_end,
                                                   [](const auto& x, const auto& y) { return x.second == y.second; });
        if (!same) changes.push_back(change);
        b = change.before_end;
        n = change.now_end;
    }
    return changes;
}

namespace {

// In key order; of entries with one key (an address two sessions list),
// the last one counts, as it was set last.
void sort_wanted(std::vector<std::pair<ClientKey, PolicyEntry>>& wanted)
{
    std::stable_sort(wanted.begin(), wanted.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    size_t kept = 0;
    for (size_t i = 0; i < wanted.size(); ++i)
        if (i + 1 == wanted.size() || wanted[i + 1].first != wanted[i].first) wanted[kept++] = wanted[i];
    wanted.resize(kept);
}

} // namespace

void QuotaController::enforce(const UserKeys& keys, int64_t now)
{
    if (!enforcer_) return;
    std::lock_guard lock(mutex_);
    // Metering only (no plans, no grants): nobody can have a plan or a block,
    // so once whatever an earlier config set is undone there is nothing to
    // walk (at 100,000 users the walk cost ~115 ms a cycle).
    if (config_.plans.empty() && granted_ == 0 && slots_.size() == 0 && policies_.empty()) return;
    // While what the last walk set holds, only the users whose keys changed
    // since are walked (none: nothing to do).
    std::vector<KeysChange> changes;
    if (walked_) changes = keys_changes(walked_->keys, keys);
    if (walked_ && walked_->at <= now && now < walked_->holds_until)
        if (changes.empty() || enforce_changes(keys, changes, now)) return;
    const bool keys_walked = walked_ && changes.empty();

    // Users with no session left give their slot back (its budget is
    // zeroed; set again from the committed usage if they return): users come
    // and go by the thousand, and slots held by departed ones would run out.
    std::vector<std::string> departed;
    auto connected = keys.begin(); // both in name order
    for (const auto& [user, slot] : slots_.by_user()) {
        while (connected != keys.end() && connected->first < user) ++connected;
        if (connected == keys.end() || connected->first != user) departed.push_back(user);
    }
    for (const std::string& user : departed) {
        auto record = users_.find(user);
        give_back_slot(user, record != users_.end() ? &record->second : nullptr);
    }

    Walk walk;
    walk.wanted.reserve(keys.size());
    NameWalk records(users_, users_by_name(), keys.size());
    for (auto group = keys.begin(); group != keys.end();) {
        auto group_end = std::find_if(group, keys.end(), [&](const auto& e) { return e.first != group->first; });
        enforce_user(*records.find_or_add(group->first), {group, group_end}, now, walk);
        group = group_end;
    }

    // What the kernel holds against what it should: one walk of both in key order.
    sort_wanted(walk.wanted);
    auto held = policies_.begin();
    for (const auto& [key, policy] : walk.wanted) {
        while (held != policies_.end() && held->first < key) held = drop_policy(held, walk);
        const bool same = held != policies_.end() && held->first == key;
        if (same && held->second == policy) ++held;
        else if (!put_policy(key, policy, walk)) held = same ? std::next(held) : held;
        else if (same) (held++)->second = policy;
        else policies_.emplace_hint(held, key, policy);
    }
    while (held != policies_.end()) held = drop_policy(held, walk);

    if (!finish_walk(walk, unslotted_.size())) return;
    if (!keys_walked) {
        walked_ = Walked{};
        walked_->keys.reserve(keys.size());
        for (const auto& [user, key] : keys) walked_->keys.emplace_back(user, key);
    }
    walked_->at = now;
    walked_->holds_until = walk.holds_until;
}

// Only the users whose keys changed since the last walk, and those waiting
// for a slot while one is free: sessions come and go every cycle, and at
// 100,000 users a walk over all of them cost ~25 ms. False, with nothing
// done, when an address of theirs is also another user's: whose policy it
// gets is decided among all of them, by a full walk.
bool QuotaController::enforce_changes(const UserKeys& keys, const std::vector<KeysChange>& changes, int64_t now)
{
    std::vector<std::pair<std::string, ClientKey>>& before = walked_->keys;
    auto gone = [](const KeysChange& change) { return change.now_begin == change.now_end; };
    auto by_user = [](const auto& a, const auto& b) { return a.first < b.first; };
    auto keys_of = [&](std::string_view user) {
        auto [begin, end] = std::equal_range(keys.begin(), keys.end(), UserKeys::value_type{user, {}}, by_user);
        return std::pair<size_t, size_t>(begin - keys.begin(), end - keys.begin());
    };
    // Who this walk may visit: the changed users still connected, and the
    // first of those an earlier walk left without a slot, as many as there
    // will be free slots.
    size_t free_slots = slots_.capacity() - slots_.size();
    for (const KeysChange& change : changes)
        if (gone(change) && slots_.find(before[change.before_begin].first)) ++free_slots;
    const size_t may_get_slot = std::min(free_slots, unslotted_.size());
    std::vector<std::pair<size_t, size_t>> visited; // their ranges in `keys`
    std::unordered_set<ClientKey, ClientKeyHash> touched; // their keys, and those the changed ones had
    for (const KeysChange& change : changes) {
        for (size_t i = change.before_begin; i < change.before_end; ++i) touched.insert(before[i].second);
        visited.emplace_back(change.now_begin, change.now_end);
    }
    for (size_t w = 0; w < may_get_slot; ++w) visited.push_back(keys_of(unslotted_[w]));
    for (auto [begin, end] : visited)
        for (size_t i = begin; i < end; ++i) touched.insert(keys[i].second);
    // An address of theirs that is also another user's: whose policy it
    // gets is decided among all of them, by a full walk.
    std::sort(visited.begin(), visited.end());
    size_t from = 0; // along the keys of the users not visited
    auto others_hold = [&](size_t to) {
        for (; from < to; ++from)
            if (touched.count(keys[from].second)) return true;
        return false;
    };
    for (auto [begin, end] : visited) {
        if (others_hold(begin)) return false;
        from = std::max(from, end);
    }
    if (others_hold(keys.size())) return false;

    // The departed give their slot back first, as in a full walk.
    for (const KeysChange& change : changes) {
        if (!gone(change)) continue;
        const std::string& user = before[change.before_begin].first;
        if (!slots_.find(user)) continue;
        auto record = users_.find(user);
        give_back_slot(user, record != users_.end() ? &record->second : nullptr);
    }

    // Then the others, in name order (a full walk's).
    Walk walk;
    NameWalk records(users_, users_by_name(), changes.size() + may_get_slot);
    auto visit = [&](std::string_view user, std::pair<size_t, size_t> range) {
        enforce_user(*records.find_or_add(user), {keys.begin() + range.first, keys.begin() + range.second}, now, walk);
    };
    std::vector<std::string> waiting = std::exchange(unslotted_, {});
    auto next_waiting = waiting.begin();
    // Those waiting before `until` (none: all); once every slot is taken,
    // the rest wait on.
    auto visit_waiting = [&](std::optional<std::string_view> until) {
        for (; next_waiting != waiting.end() && (!until || *next_waiting < *until); ++next_waiting) {
            if (next_waiting - waiting.begin() >= static_cast<std::ptrdiff_t>(may_get_slot) || slots_.full())
                walk.unslotted.push_back(std::move(*next_waiting));
            else if (auto range = keys_of(*next_waiting); range.first != range.second)
                visit(*next_waiting, range);
        }
    };
    for (const KeysChange& change : changes) {
        const std::string_view user = gone(change) ? std::string_view(before[change.before_begin].first)
                                                   : keys[change.now_begin].first;
        visit_waiting(user);
        if (next_waiting != waiting.end() && *next_waiting == user) ++next_waiting; // visited here, or gone
        if (!gone(change)) visit(user, {change.now_begin, change.now_end});
    }
    visit_waiting(std::nullopt);

    // Their policies; the addresses they no longer hold are nobody's now.
    sort_wanted(walk.wanted);
    for (const auto& [key, policy] : walk.wanted) {
        auto held = policies_.find(key);
        if (held != policies_.end() && held->second == policy) continue;
        if (!put_policy(key, policy, walk)) continue;
        if (held != policies_.end()) held->second = policy;
        else policies_.emplace(key, policy);
    }
    auto wanted = [&](const ClientKey& key) {
        return std::binary_search(walk.wanted.begin(), walk.wanted.end(), std::pair{key, PolicyEntry{}},
                                  [](const auto& a, const auto& b) { return a.first < b.first; });
    };
    for (const KeysChange& change : changes) {
        for (size_t i = change.before_begin; i < change.before_end; ++i) {
            auto held = policies_.find(before[i].second);
            if (held != policies_.end() && !wanted(held->first)) drop_policy(held, walk);
        }
    }

    const int64_t holds_until = std::min(walked_->holds_until, walk.holds_until);
    if (!finish_walk(walk, waiting.size())) return true;
    // The keys walked: the unchanged users' moved over, the changed ones' copied.
    std::vector<std::pair<std::string, ClientKey>> walked;
    walked.reserve(keys.size());
    size_t kept_from = 0;
    for (const KeysChange& change : changes) {
        std::move(before.begin() + kept_from, before.begin() + change.before_begin, std::back_inserter(walked));
        for (size_t i = change.now_begin; i < change.now_end; ++i) walked.emplace_back(keys[i].first, keys[i].second);
        kept_from = change.before_end;
    }
    std::move(before.begin() + kept_from, before.end(), std::back_inserter(walked));
    walked_->keys = std::move(walked);
    walked_->at = now;
    walked_->holds_until = holds_until;
    return true;
}

// One user's policies into `walk`, with the slot they need and their
// budget set again if its basis changed.
void QuotaController::enforce_user(Users::value_type& entry, std::span<const UserKeys::value_type> user_keys,
                                   int64_t now, Walk& walk)
{
    const std::string& user = entry.first;
    UserQuota& record = entry.second;
    const Plan* plan = plan_of(config_, user, record.grant);
    const QuotaState& state = kept_state(user, record, now);
    record.enforced = enforced_from(state);
    walk.holds_until = std::min(walk.holds_until, state.holds_until);
    // `action: none` reports only: no budget in the kernel, which would
    // block at zero.
    const bool report_only = plan && plan->action == Plan::Action::none;
    const bool limited = state.remaining_bytes.has_value() && !report_only;
    if (!plan && !state.block) {
        give_back_slot(user, &record);
        return;
    }
    if (!record.slot) record.slot = slots_.acquire(user);
    if (!record.slot) { // every slot taken: not enforced
        walk.unslotted.push_back(user);
        return;
    }
    const uint32_t slot = *record.slot;
    if (state.disconnect) disconnects_.insert(user);

    for (const auto& [name, key] : user_keys) {
        PolicyEntry policy;
        policy.user_slot = slot;
        if (state.block) {
            policy.flags = VPNMETER_POLICY_BLOCK;
            walk.wanted.emplace_back(key, policy);
            continue;
        }
        if (limited) policy.flags |= budget_flags(state.direction);
        const uint64_t speed_down = plan ? plan->speed_download_bps : 0;
        const uint64_t speed_up = plan ? plan->speed_upload_bps : 0;
        const uint64_t down = state.state == QuotaState::State::throttled ? state.download_bps : speed_down;
        const uint64_t up = state.state == QuotaState::State::throttled ? state.upload_bps : speed_up;
        if (down) {
            auto classid = shaped_class(key.ifindex, speed_minor(slot), down);
            if (classid) {
                policy.flags |= VPNMETER_POLICY_SHAPED;
                policy.classid = classid.value();
            } else {
                spdlog::error("quota: shaping {}: {}", user, classid.error().message());
                walk.failed = true;
            }
        }
        if (up) {
            policy.flags |= VPNMETER_POLICY_POLICED;
            policy.rate_bps = std::max(up, kMinPolicerRateBps);
        }
        walk.wanted.emplace_back(key, policy);
    }

    // The kernel spends the budget packet by packet: set it only when
    // its basis changes (new user, new period, new limit or top-up).
    if (!limited || state.block) return;
    const std::pair<int64_t, uint64_t> basis{state.period.start, state.limit_bytes.value_or(0)};
    if (record.budget_basis == basis) return;
    BudgetEntry budget;
    budget.remaining_bytes = static_cast<int64_t>(*state.remaining_bytes);
    if (plan && plan->action == Plan::Action::throttle && plan->throttle_bps) {
        budget.exhausted_action = ExhaustedAction::throttle;
        budget.exhausted_rate_bps = std::max(plan->throttle_bps, kMinPolicerRateBps);
        auto classid = shaped_class(user_keys.front().second.ifindex, throttle_minor(slot), plan->throttle_bps);
        if (classid) {
            budget.exhausted_classid = classid.value();
        } else {
            spdlog::error("quota: throttle class for {}: {}", user, classid.error().message());
            walk.failed = true;
        }
    }
    if (auto status = enforcer_->set_budget(slot, budget); !status) {
        spdlog::error("quota: budget of {}: {}", user, status.error().message());
        walk.failed = true;
    } else {
        record.budget_basis = basis;
    }
}

bool QuotaController::put_policy(const ClientKey& key, const PolicyEntry& policy, Walk& walk)
{
    if (auto status = enforcer_->set_policy(key, policy); !status) {
        spdlog::error("quota: policy for {}: {}", key.address(), status.error().message());
        walk.failed = true;
        return false;
    }
    return true;
}

std::map<ClientKey, PolicyEntry>::iterator QuotaController::drop_policy(std::map<ClientKey, PolicyEntry>::iterator held,
                                                                        Walk& walk)
{
    if (auto cleared = enforcer_->clear_policy(held->first); !cleared) {
        spdlog::error("quota: clearing the policy of {}: {}", held->first.address(), cleared.error().message());
        walk.failed = true;
    }
    return policies_.erase(held);
}

bool QuotaController::finish_walk(Walk& walk, size_t unslotted_before)
{
    unslotted_ = std::move(walk.unslotted);
    // Said when the number changes, not every cycle for every user (at
    // 100,000 users that was 34,000 lines a cycle).
    if (unslotted_.size() != unslotted_before) {
        if (!unslotted_.empty())
            spdlog::error("quota: {} connected users with a plan are not enforced: all {} enforcement slots are "
                          "taken (first: {})",
                          unslotted_.size(), slots_.capacity(), unslotted_.front());
        else
            spdlog::info("quota: every connected user with a plan is enforced again");
    }
    // A failed kernel write is tried again next cycle; a disconnect is asked
    // for again every cycle until its sessions are gone; a slot given back
    // after those waiting were visited goes to them next cycle.
    if (walk.failed || !disconnects_.empty() || (!unslotted_.empty() && !slots_.full())) {
        walked_.reset();
        return false;
    }
    return true;
}

std::vector<std::string> QuotaController::take_disconnects()
{
    std::lock_guard lock(mutex_);
    std::vector<std::string> out(disconnects_.begin(), disconnects_.end());
    disconnects_.clear();
    return out;
}

std::optional<nlohmann::json> QuotaController::quota(const std::string& user, int64_t now) const
{
    std::lock_guard lock(mutex_);
    return quota_json(state_of(user, now));
}

std::map<std::string, nlohmann::json> QuotaController::quotas(int64_t now) const
{
    std::lock_guard lock(mutex_);
    std::map<std::string, nlohmann::json> out;
    for (const auto& [user, record] : users_) {
        if (!record.usage && !record.grant) continue;
        const QuotaState state = evaluate_user(user, &record, now);
        const PeriodUsage used = roll(record.usage.value_or(PeriodUsage{}), state.period);
        nlohmann::json entry = quota_json(state);
        entry["upload_bytes"] = used.upload;
        entry["download_bytes"] = used.download;
        out.emplace(user, std::move(entry));
    }
    return out;
}

// PUT /v1/users/{user}/quota: {"plan": "small"} | {"limit_bytes": N} |
// {"topup_bytes": N} | {"expires": "2026-12-31T23:59:59Z"}, any combination.
http::Response QuotaController::put_quota(const std::string& user, const std::string& body, int64_t now)
{
    std::lock_guard lock(mutex_);
    auto existing = users_.find(user);
    const std::optional<Grant> before = existing != users_.end() ? existing->second.grant : std::nullopt;
    auto applied = apply_grant_request(config_, user, before.value_or(Grant{}), body, now);
    if (!applied) return http::error(400, applied.error().message());
    const Grant& grant = applied.value();
    // User names come from certificates: not necessarily UTF-8.
    const std::string text = nlohmann::json(grant).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (auto status = store_.put_grant(user, text); !status)
        return http::error(503, "store: " + status.error().message());
    UserQuota& record = users_[user];
    if (!record.grant) ++granted_;
    record.grant = grant;
    walked_.reset();
    record.state.reset();
    spdlog::info("quota: grant for {} set: {}", user, text);
    return http::json(200, quota_json(state_of(user, now)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void QuotaController::reload(QuotaConfig config)
{
    std::lock_guard lock(mutex_);
    config_ = std::move(config);
    walked_.reset();
    for (auto& [user, record] : users_) { // plans may have changed: evaluate and set budgets afresh
        record.state.reset();
        record.budget_basis.reset();
    }
}

QuotaState QuotaController::current_state(const std::string& user, int64_t now) const
{
    std::lock_guard lock(mutex_);
    return state_of(user, now);
}

template <typename Visit>
void QuotaController::each_planned_state(std::vector<std::string_view> also, int64_t now, Visit&& visit) const
{
    std::lock_guard lock(mutex_);
    if (config_.plans.empty() && granted_ == 0) return; // nobody has a plan
    if (!std::is_sorted(also.begin(), also.end())) std::sort(also.begin(), also.end());
    also.erase(std::unique(also.begin(), also.end()), also.end());
    // The union of the users on record (with usage or a grant) and `also`,
    // both in name order: one walk.
    auto extra = also.begin();
    auto add = [&](const std::string& user, const UserQuota* record) {
        if (!plan_of(config_, user, grant_in(record))) return; // no copy of the grant
        if (record) visit(user, kept_state(user, *record, now));
        else visit(user, evaluate_user(user, nullptr, now));
    };
    const auto& by_name = users_by_name();
    for (size_t i = 0; i < by_name.size(); ++i) {
        if (i + 8 < by_name.size()) __builtin_prefetch(by_name[i + 8]);
        const auto& [user, record] = *by_name[i];
        for (; extra != also.end() && *extra < user; ++extra) add(std::string(*extra), nullptr);
        const bool connected = extra != also.end() && *extra == user;
        if (connected) ++extra;
        if (connected || record.usage || record.grant) add(user, &record);
    }
    for (; extra != also.end(); ++extra) add(std::string(*extra), nullptr);
}

std::vector<QuotaState> QuotaController::planned_states(std::vector<std::string_view> also, int64_t now) const
{
    std::vector<QuotaState> out;
    each_planned_state(std::move(also), now, [&](const std::string&, const QuotaState& state) { out.push_back(state); });
    return out;
}

UserGauges QuotaController::gauges(std::vector<std::string_view> also, int64_t now) const
{
    UserGauges out;
    out.reserve(also.size());
    each_planned_state(std::move(also), now, [&](const std::string& user, const QuotaState& state) {
        out.emplace_back(user, QuotaGauges{state.limit_bytes, state.used_bytes, state.state});
    });
    return out;
}

uint64_t QuotaController::webhook_failures() const { return webhook_ ? webhook_->failed() + webhook_->dropped() : 0; }

} // namespace vpnmeter
