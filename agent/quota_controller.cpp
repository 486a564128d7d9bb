#include "quota_controller.h"

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
    for (const auto& [user, text] : grants.value()) {
        try {
            grants_[user] = nlohmann::json::parse(text).get<Grant>();
        } catch (const std::exception& e) {
            spdlog::warn("quota: ignoring the stored grant of {}: {}", user, e.what());
        }
    }
    return ok();
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
    const auto grant = grant_of(user);
    const PeriodUsage used = usage_of(user, period_of(config_, user, grant, now));
    return evaluate(config_, user, grant, used.upload, used.download, now);
}

void QuotaController::plan(CycleCommit& commit, int64_t now) const
{
    std::lock_guard lock(mutex_);
    for (const auto& [user, moved] : commit.user_usage) {
        const auto grant = grant_of(user);
        const Period period = period_of(config_, user, grant, now);
        const PeriodUsage used = add(usage_of(user, period), moved.upload.bytes, moved.download.bytes);
        commit.quota_usage[user] = {used.period_start, used.upload, used.download};

        const QuotaState state = evaluate(config_, user, grant, used.upload, used.download, now);
        if (!state.limit_bytes || *state.limit_bytes == 0) continue;
        auto fired = fired_.find(user);
        std::set<int> already;
        if (fired != fired_.end() && fired->second.first == period.start) already = fired->second.second;
        else if (auto stored = store_.alerts_fired(user, period.start)) already = stored.value();
        for (int threshold : thresholds_to_fire(config_.thresholds, state.used_bytes, *state.limit_bytes, already))
            commit.alerts_fired.push_back({user, period.start, threshold, now});
    }
}

void QuotaController::accept(const CycleCommit& commit, const std::map<std::string, Session>& active,
                             const Interfaces& interfaces, int64_t now)
{
    {
        std::lock_guard lock(mutex_);
        for (const auto& [user, record] : commit.quota_usage)
            usage_[user] = {record.period_start, record.upload, record.download};
        for (const auto& alert : commit.alerts_fired) {
            auto& [period_start, thresholds] = fired_[alert.user];
            if (period_start != alert.period_start) thresholds.clear();
            period_start = alert.period_start;
            thresholds.insert(alert.threshold);

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

void QuotaController::enforce(const std::map<std::string, Session>& active, const Interfaces& interfaces, int64_t now)
{
    if (!enforcer_) return;
    std::lock_guard lock(mutex_);
    std::map<std::string, std::vector<ClientKey>> keys_by_user;
    for (const auto& [id, session] : active) {
        // A user with no address on a present interface gets no entry at all.
        for (const ClientKey& key : session_keys(session, interfaces)) keys_by_user[session.user].push_back(key);
    }

    // Users with no session left give their slot back (its budget is
    // zeroed; set again from the committed usage if they return): users come
    // and go by the thousand, and slots held by departed ones would run out.
    for (const std::string& user : slots_.users()) {
        if (keys_by_user.count(user)) continue;
        if (auto slot = slots_.release(user)) {
            if (auto released = enforcer_->release_slot(*slot); !released)
                spdlog::error("quota: releasing the slot of {}: {}", user, released.error().message());
        }
        budget_basis_.erase(user);
    }

    std::map<ClientKey, PolicyEntry> wanted;
    for (const auto& [user, keys] : keys_by_user) {
        const auto grant = grant_of(user);
        const Plan* plan = plan_of(config_, user, grant);
        const QuotaState state = state_of(user, now);
        // `action: none` reports only: no budget in the kernel, which would
        // block at zero.
        const bool report_only = plan && plan->action == Plan::Action::none;
        const bool limited = state.remaining_bytes.has_value() && !report_only;
        if (!plan && !state.block) {
            if (auto slot = slots_.release(user)) enforcer_->release_slot(*slot);
            budget_basis_.erase(user);
            continue;
        }
        auto slot = slots_.acquire(user);
        if (!slot) {
            spdlog::error("quota: no free enforcement slot for {} (max {})", user, VPNMETER_MAX_USERS);
            continue;
        }
        if (state.disconnect) disconnects_.insert(user);

        for (const ClientKey& key : keys) {
            PolicyEntry policy;
            policy.user_slot = *slot;
            if (state.block) {
                policy.flags = VPNMETER_POLICY_BLOCK;
                wanted[key] = policy;
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
            wanted[key] = policy;
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
                    auto classid = shaped_class(keys.front().ifindex, throttle_minor(*slot), plan->throttle_bps);
                    if (classid) budget.exhausted_classid = classid.value();
                    else spdlog::error("quota: throttle class for {}: {}", user, classid.error().message());
                }
                if (auto status = enforcer_->set_budget(*slot, budget); !status)
                    spdlog::error("quota: budget of {}: {}", user, status.error().message());
                else budget_basis_[user] = basis;
            }
        }
    }

    for (const auto& [key, policy] : wanted) {
        auto it = policies_.find(key);
        if (it != policies_.end() && it->second == policy) continue;
        if (auto status = enforcer_->set_policy(key, policy); !status)
            spdlog::error("quota: policy for {}: {}", key.address(), status.error().message());
        else policies_[key] = policy;
    }
    for (auto it = policies_.begin(); it != policies_.end();) {
        if (wanted.count(it->first)) {
            ++it;
            continue;
        }
        enforcer_->clear_policy(it->first);
        it = policies_.erase(it);
    }
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

std::vector<QuotaState> QuotaController::planned_states(const std::set<std::string>& also, int64_t now) const
{
    std::lock_guard lock(mutex_);
    std::set<std::string> users = also;
    for (const auto& [user, usage] : usage_) users.insert(user);
    for (const auto& [user, grant] : grants_) users.insert(user);
    std::vector<QuotaState> out;
    for (const auto& user : users)
        if (plan_of(config_, user, grant_of(user))) out.push_back(state_of(user, now));
    return out;
}

uint64_t QuotaController::webhook_failures() const { return webhook_ ? webhook_->failed() + webhook_->dropped() : 0; }

} // namespace vpnmeter
