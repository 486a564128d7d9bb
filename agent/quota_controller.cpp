#include "quota_controller.h"

#include <algorithm>
#include <span>
#include <string_view>
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
                                 std::unique_ptr<WebhookSender> webhook)
    : config_(std::move(config)), store_(store), enforcer_(enforcer), registry_(registry),
      webhook_(std::move(webhook))
{
}

Status QuotaController::load()
{
    auto usage = store_.quota_usage();
    if (!usage) return usage.error();
    for (const auto& [user, record] : usage.value()) usage_[user] = {record.period_start, record.upload, record.download};
    auto grants = store_.grants();
    if (!grants) return grants.error();
    // The thresholds fired in each user's latest period, so plan() needs no
    // store read per user per cycle (accept() keeps this up to date).
    auto alerts = store_.alerts();
    if (!alerts) return alerts.error();
    for (const auto& alert : alerts.value()) remember_fired(alert); // by user, then period: the latest comes last
    for (const auto& [user, text] : grants.value()) {
        try {
            grants_[user] = nlohmann::json::parse(text).get<Grant>();
        } catch (const std::exception& e) {
            spdlog::warn("quota: ignoring the stored grant of {}: {}", user, e.what());
        }
    }
    return ok();
}

// fired_ keeps each user's latest period only: an alert of a newer one
// replaces what it held.
void QuotaController::remember_fired(const AlertRecord& alert)
{
    auto& [period_start, thresholds] = fired_[alert.user];
    if (period_start != alert.period_start) thresholds.clear();
    period_start = alert.period_start;
    thresholds.insert(alert.threshold);
}

std::optional<Grant> QuotaController::grant_of(const std::string& user) const
{
    auto it = grants_.find(user);
    return it == grants_.end() ? std::nullopt : std::optional(it->second);
}

PeriodUsage QuotaController::usage_of(const std::string& user, const Period& period) const
{
    auto it = usage_.find(user);
    return roll(it == usage_.end() ? PeriodUsage{} : it->second, period);
}

QuotaState QuotaController::state_of(const std::string& user, int64_t now) const
{
    auto it = usage_.find(user);
    return state_with(user, grant_of(user), it != usage_.end() ? &it->second : nullptr, now);
}

QuotaState QuotaController::state_with(const std::string& user, const std::optional<Grant>& grant,
                                       const PeriodUsage* stored, int64_t now) const
{
    const PeriodUsage used = roll(stored ? *stored : PeriodUsage{}, period_of(config_, user, grant, now));
    return evaluate(config_, user, grant, used.upload, used.download, now);
}

// Stored usage looked up by users in ascending order: a few steps along
// usage_ from the last one found, a search only when it is further (at
// 100,000 users a search each cost more than their states).
class QuotaController::UsageWalk {
public:
    explicit UsageWalk(const std::map<std::string, PeriodUsage>& usage) : usage_(usage), at_(usage.begin()) {}
    const PeriodUsage* find(std::string_view user)
    {
        for (int step = 0; at_ != usage_.end() && at_->first < user; ++step) {
            if (step == 4) {
                at_ = usage_.lower_bound(std::string(user));
                break;
            }
            ++at_;
        }
        return at_ != usage_.end() && at_->first == user ? &at_->second : nullptr;
    }

private:
    const std::map<std::string, PeriodUsage>& usage_;
    std::map<std::string, PeriodUsage>::const_iterator at_;
};

void QuotaController::plan(CycleCommit& commit, int64_t now) const
{
    std::lock_guard lock(mutex_);
    UsageWalk stored(usage_);
    for (const auto& [user, moved] : commit.user_usage) { // in user order
        const auto grant = grant_of(user);
        const Period period = period_of(config_, user, grant, now);
        const PeriodUsage* before = stored.find(user);
        const PeriodUsage used =
            add(roll(before ? *before : PeriodUsage{}, period), moved.upload.bytes, moved.download.bytes);
        commit.quota_usage.insert_or_assign(commit.quota_usage.end(), user,
                                            QuotaUsageRecord{used.period_start, used.upload, used.download});

        const QuotaState state = evaluate(config_, user, grant, used.upload, used.download, now);
        if (!state.limit_bytes || *state.limit_bytes == 0) continue;
        // fired_ holds every alert of the users' latest periods (load() and
        // accept()): none of another period is of this one.
        static const std::set<int> none;
        auto fired = fired_.find(user);
        const std::set<int>& already =
            fired != fired_.end() && fired->second.first == period.start ? fired->second.second : none;
        for (int threshold : thresholds_to_fire(config_.thresholds, state.used_bytes, *state.limit_bytes, already))
            commit.alerts_fired.push_back({user, period.start, threshold, now});
    }
}

void QuotaController::accept(const CycleCommit& commit, const std::map<std::string, Session>& active,
                             const Interfaces& interfaces, int64_t now)
{
    {
        std::lock_guard lock(mutex_);
        auto known = usage_.begin(); // both in user order: one walk, not a lookup each
        for (const auto& [user, record] : commit.quota_usage) {
            while (known != usage_.end() && known->first < user) ++known;
            const PeriodUsage used{record.period_start, record.upload, record.download};
            if (known != usage_.end() && known->first == user) (known++)->second = used;
            else usage_.emplace_hint(known, user, used);
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
    enforce(active, interfaces, now);
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
void QuotaController::give_back_slot(const std::string& user)
{
    if (auto slot = slots_.release(user)) {
        if (auto released = enforcer_->release_slot(*slot); !released)
            spdlog::error("quota: releasing the slot of {}: {}", user, released.error().message());
    }
    budget_basis_.erase(user);
}

void QuotaController::enforce(const std::map<std::string, Session>& active, const Interfaces& interfaces, int64_t now)
{
    if (!enforcer_) return;
    std::lock_guard lock(mutex_);
    // Metering only (no plans, no grants): nobody can have a plan or a block,
    // so once whatever an earlier config set is undone there is nothing to
    // walk (at 100,000 users the walk cost ~115 ms a cycle).
    if (config_.plans.empty() && grants_.empty() && slots_.size() == 0 && policies_.empty()) return;
    // Every address of every active session, by user (sorted vectors: at
    // 100,000 users maps of names cost more than the rest of this).
    std::vector<std::pair<std::string_view, ClientKey>> keys;
    keys.reserve(active.size());
    for (const auto& [id, session] : active) {
        // A user with no address on a present interface gets no entry at all.
        for (const ClientKey& key : session_keys(session, interfaces)) keys.emplace_back(session.user, key);
    }
    std::stable_sort(keys.begin(), keys.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    auto has_keys = [&](std::string_view user) {
        auto it = std::lower_bound(keys.begin(), keys.end(), user,
                                   [](const auto& entry, std::string_view name) { return entry.first < name; });
        return it != keys.end() && it->first == user;
    };

    // Users with no session left give their slot back (its budget is
    // zeroed; set again from the committed usage if they return): users come
    // and go by the thousand, and slots held by departed ones would run out.
    for (const std::string& user : slots_.users()) {
        if (!has_keys(user)) give_back_slot(user);
    }

    std::vector<std::pair<ClientKey, PolicyEntry>> wanted;
    wanted.reserve(keys.size());
    UsageWalk stored(usage_);
    std::vector<std::string> unslotted; // every slot taken: not enforced
    for (auto group = keys.begin(); group != keys.end();) {
        auto group_end = std::find_if(group, keys.end(), [&](const auto& e) { return e.first != group->first; });
        const std::string user(group->first);
        const std::span<const std::pair<std::string_view, ClientKey>> user_keys(group, group_end);
        group = group_end;
        const auto grant = grant_of(user);
        const Plan* plan = plan_of(config_, user, grant);
        const QuotaState state = state_with(user, grant, stored.find(user), now);
        // `action: none` reports only: no budget in the kernel, which would
        // block at zero.
        const bool report_only = plan && plan->action == Plan::Action::none;
        const bool limited = state.remaining_bytes.has_value() && !report_only;
        if (!plan && !state.block) {
            give_back_slot(user);
            continue;
        }
        auto slot = slots_.acquire(user);
        if (!slot) {
            unslotted.push_back(user);
            continue;
        }
        if (state.disconnect) disconnects_.insert(user);

        for (const auto& [name, key] : user_keys) {
            PolicyEntry policy;
            policy.user_slot = *slot;
            if (state.block) {
                policy.flags = VPNMETER_POLICY_BLOCK;
                wanted.emplace_back(key, policy);
                continue;
            }
            if (limited) policy.flags |= budget_flags(state.direction);
            const uint64_t speed_down = plan ? plan->speed_download_bps : 0;
            const uint64_t speed_up = plan ? plan->speed_upload_bps : 0;
            const uint64_t down = state.state == QuotaState::State::throttled ? state.download_bps : speed_down;
            const uint64_t up = state.state == QuotaState::State::throttled ? state.upload_bps : speed_up;
            if (down) {
                auto classid = shaped_class(key.ifindex, speed_minor(*slot), down);
                if (classid) {
                    policy.flags |= VPNMETER_POLICY_SHAPED;
                    policy.classid = classid.value();
                } else {
                    spdlog::error("quota: shaping {}: {}", user, classid.error().message());
                }
            }
            if (up) {
                policy.flags |= VPNMETER_POLICY_POLICED;
                policy.rate_bps = std::max(up, kMinPolicerRateBps);
            }
            wanted.emplace_back(key, policy);
        }

        // The kernel spends the budget packet by packet: set it only when
        // its basis changes (new user, new period, new limit or top-up).
        if (limited && !state.block) {
            const std::pair<int64_t, uint64_t> basis{state.period.start, state.limit_bytes.value_or(0)};
            if (budget_basis_[user] != basis) {
                BudgetEntry budget;
                budget.remaining_bytes = static_cast<int64_t>(*state.remaining_bytes);
                if (plan && plan->action == Plan::Action::throttle && plan->throttle_bps) {
                    budget.exhausted_action = ExhaustedAction::throttle;
                    budget.exhausted_rate_bps = std::max(plan->throttle_bps, kMinPolicerRateBps);
                    auto classid =
                        shaped_class(user_keys.front().second.ifindex, throttle_minor(*slot), plan->throttle_bps);
                    if (classid) budget.exhausted_classid = classid.value();
                    else spdlog::error("quota: throttle class for {}: {}", user, classid.error().message());
                }
                if (auto status = enforcer_->set_budget(*slot, budget); !status)
                    spdlog::error("quota: budget of {}: {}", user, status.error().message());
                else budget_basis_[user] = basis;
            }
        }
    }

    // Said when the number changes, not every cycle for every user (at
    // 100,000 users that was 34,000 lines a cycle).
    if (unslotted.size() != unslotted_) {
        if (!unslotted.empty())
            spdlog::error("quota: {} connected users with a plan are not enforced: all {} enforcement slots are "
                          "taken (first: {})",
                          unslotted.size(), VPNMETER_MAX_USERS, unslotted.front());
        else
            spdlog::info("quota: every connected user with a plan is enforced again");
        unslotted_ = unslotted.size();
    }

    // What the kernel holds against what it should: one walk of both in key
    // order. An address of two sessions keeps the policy set last, as before.
    std::stable_sort(wanted.begin(), wanted.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    auto held = policies_.begin();
    // Clears the kernel's policy at `held`, which is no longer wanted, and moves on.
    auto drop_held = [&] {
        if (auto cleared = enforcer_->clear_policy(held->first); !cleared)
            spdlog::error("quota: clearing the policy of {}: {}", held->first.address(), cleared.error().message());
        held = policies_.erase(held);
    };
    for (auto it = wanted.begin(); it != wanted.end(); ++it) {
        if (std::next(it) != wanted.end() && std::next(it)->first == it->first) continue;
        const auto& [key, policy] = *it;
        while (held != policies_.end() && held->first < key) drop_held();
        const bool same = held != policies_.end() && held->first == key;
        if (same && held->second == policy) {
            ++held;
            continue;
        }
        if (auto status = enforcer_->set_policy(key, policy); !status) {
            spdlog::error("quota: policy for {}: {}", key.address(), status.error().message());
            if (same) ++held;
            continue;
        }
        if (same) (held++)->second = policy;
        else policies_.emplace_hint(held, key, policy);
    }
    while (held != policies_.end()) drop_held();
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
    std::set<std::string> users;
    for (const auto& [user, usage] : usage_) users.insert(user);
    for (const auto& [user, grant] : grants_) users.insert(user);
    std::map<std::string, nlohmann::json> out;
    for (const auto& user : users) {
        const QuotaState state = state_of(user, now);
        const PeriodUsage used = usage_of(user, period_of(config_, user, grant_of(user), now));
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
    auto applied = apply_grant_request(config_, user, grant_of(user).value_or(Grant{}), body, now);
    if (!applied) return http::error(400, applied.error().message());
    const Grant& grant = applied.value();
    // User names come from certificates: not necessarily UTF-8.
    const std::string text = nlohmann::json(grant).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (auto status = store_.put_grant(user, text); !status)
        return http::error(503, "store: " + status.error().message());
    grants_[user] = grant;
    spdlog::info("quota: grant for {} set: {}", user, text);
    return http::json(200, quota_json(state_of(user, now)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

void QuotaController::reload(QuotaConfig config)
{
    std::lock_guard lock(mutex_);
    config_ = std::move(config);
    budget_basis_.clear(); // limits may have changed: set budgets afresh
}

QuotaState QuotaController::current_state(const std::string& user, int64_t now) const
{
    std::lock_guard lock(mutex_);
    return state_of(user, now);
}

std::vector<QuotaState> QuotaController::planned_states(std::vector<std::string_view> also, int64_t now) const
{
    std::lock_guard lock(mutex_);
    if (config_.plans.empty() && grants_.empty()) return {}; // nobody has a plan
    // The union of three sorted lists of names, without copying one (repeats go at the end).
    std::sort(also.begin(), also.end());
    std::vector<std::string_view> users;
    users.reserve(also.size() + usage_.size() + grants_.size());
    for (const auto& [user, usage] : usage_) users.push_back(user);
    const auto usage_end = users.size();
    users.insert(users.end(), also.begin(), also.end());
    std::inplace_merge(users.begin(), users.begin() + static_cast<std::ptrdiff_t>(usage_end), users.end());
    const auto merged_end = users.size();
    for (const auto& [user, grant] : grants_) users.push_back(user);
    std::inplace_merge(users.begin(), users.begin() + static_cast<std::ptrdiff_t>(merged_end), users.end());
    users.erase(std::unique(users.begin(), users.end()), users.end());
    std::vector<QuotaState> out;
    UsageWalk stored(usage_);
    for (std::string_view name : users) {
        const std::string user(name);
        const auto grant = grant_of(user);
        if (plan_of(config_, user, grant)) out.push_back(state_with(user, grant, stored.find(user), now));
    }
    return out;
}

uint64_t QuotaController::webhook_failures() const { return webhook_ ? webhook_->failed() + webhook_->dropped() : 0; }

} // namespace vpnmeter
