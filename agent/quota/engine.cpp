#include "quota/engine.h"

#include <algorithm>
#include <limits>

#include "time_format.h"

namespace vpnmeter {
namespace {

uint64_t saturating_add(uint64_t a, uint64_t b)
{
    return a > std::numeric_limits<uint64_t>::max() - b ? std::numeric_limits<uint64_t>::max() : a + b;
}

// `used` is at least `percent`% of `limit` (no overflow: 128-bit products).
bool reached(uint64_t used, uint64_t limit, int percent)
{
    return static_cast<unsigned __int128>(used) * 100 >=
           static_cast<unsigned __int128>(limit) * static_cast<unsigned>(percent);
}

// The lower of two rates where 0 means none.
uint64_t tighter(uint64_t a, uint64_t b)
{
    if (a == 0) return b;
    if (b == 0) return a;
    return std::min(a, b);
}

const Plan& plan_or_default(const Plan* plan)
{
    static const Plan unlimited = [] {
        Plan none;
        none.name = kUnlimitedPlan;
        return none;
    }();
    return plan ? *plan : unlimited;
}

} // namespace

Grant add_topup(Grant grant, uint64_t bytes, const Period& current)
{
    if (grant.topup_period_start != current.start) {
        grant.topup_bytes = 0;
        grant.topup_period_start = current.start;
    }
    grant.topup_bytes = saturating_add(grant.topup_bytes, bytes);
    return grant;
}

void to_json(nlohmann::json& json, const Grant& grant)
{
    json = nlohmann::json::object();
    if (grant.plan) json["plan"] = *grant.plan;
    if (grant.limit_bytes) json["limit_bytes"] = *grant.limit_bytes;
    json["topup_bytes"] = grant.topup_bytes;
    json["topup_period_start"] = grant.topup_period_start;
    if (grant.expires) json["expires"] = *grant.expires;
}

void from_json(const nlohmann::json& json, Grant& grant)
{
    grant = Grant{};
    if (json.contains("plan") && !json["plan"].is_null()) grant.plan = json["plan"].get<std::string>();
    if (json.contains("limit_bytes") && !json["limit_bytes"].is_null())
        grant.limit_bytes = json["limit_bytes"].get<uint64_t>();
    grant.topup_bytes = json.value("topup_bytes", uint64_t{0});
    grant.topup_period_start = json.value("topup_period_start", int64_t{0});
    if (json.contains("expires") && !json["expires"].is_null()) grant.expires = json["expires"].get<int64_t>();
}

const Plan* plan_of(const QuotaConfig& config, const std::string& user, const std::optional<Grant>& grant)
{
    if (grant && grant->plan) {
        if (const Plan* plan = config.find_plan(*grant->plan)) return plan;
        if (*grant->plan == kUnlimitedPlan) return nullptr;
    }
    return plan_for(config, user);
}

Period period_of(const QuotaConfig& config, const std::string& user, const std::optional<Grant>& grant, int64_t now)
{
    return period_at(plan_or_default(plan_of(config, user, grant)), now, config.timezone);
}

const char* to_string(QuotaState::State state)
{
    switch (state) {
    case QuotaState::State::ok: return "ok";
    case QuotaState::State::warning: return "warning";
    case QuotaState::State::exceeded: return "exceeded";
    case QuotaState::State::blocked: return "blocked";
    case QuotaState::State::throttled: return "throttled";
    case QuotaState::State::expired: return "expired";
    }
    return "?";
}

QuotaState evaluate(const QuotaConfig& config, const std::string& user, const std::optional<Grant>& grant,
                    uint64_t used_upload, uint64_t used_download, int64_t now)
{
    using State = QuotaState::State;
    const Plan& plan = plan_or_default(plan_of(config, user, grant));

    QuotaState out;
    out.user = user;
    out.plan = plan.name;
    out.period = period_at(plan, now, config.timezone);
    out.direction = plan.direction;
    switch (plan.direction) {
    case Plan::Direction::both: out.used_bytes = saturating_add(used_upload, used_download); break;
    case Plan::Direction::upload: out.used_bytes = used_upload; break;
    case Plan::Direction::download: out.used_bytes = used_download; break;
    }
    out.download_bps = plan.speed_download_bps;
    out.upload_bps = plan.speed_upload_bps;

    out.limit_bytes = grant && grant->limit_bytes ? grant->limit_bytes : plan.limit_bytes;
    if (out.limit_bytes && grant && grant->topup_bytes && grant->topup_period_start == out.period.start)
        out.limit_bytes = saturating_add(*out.limit_bytes, grant->topup_bytes);
    if (out.limit_bytes)
        out.remaining_bytes = out.used_bytes < *out.limit_bytes ? *out.limit_bytes - out.used_bytes : 0;

    const std::optional<int64_t> expires = grant && grant->expires ? grant->expires : plan.expires;
    out.holds_until = expires && now < *expires ? std::min(out.period.end, *expires) : out.period.end;
    if (expires && now >= *expires) {
        out.state = State::expired;
        out.block = true;
        out.disconnect = plan.action == Plan::Action::disconnect;
        if (out.limit_bytes) out.remaining_bytes = 0;
        return out;
    }
    if (!out.limit_bytes) return out;

    if (out.used_bytes >= *out.limit_bytes) {
        switch (plan.action) {
        case Plan::Action::block:
            out.state = State::blocked;
            out.block = true;
            break;
        case Plan::Action::disconnect:
            out.state = State::blocked;
            out.block = true;
            out.disconnect = true;
            break;
        case Plan::Action::throttle:
            out.state = State::throttled;
            out.download_bps = tighter(out.download_bps, plan.throttle_bps);
            out.upload_bps = tighter(out.upload_bps, plan.throttle_bps);
            break;
        case Plan::Action::none: out.state = State::exceeded; break;
        }
        return out;
    }
    const auto lowest = std::min_element(config.thresholds.begin(), config.thresholds.end());
    if (lowest != config.thresholds.end() && *lowest < 100 && reached(out.used_bytes, *out.limit_bytes, *lowest))
        out.state = State::warning;
    return out;
}

nlohmann::json quota_json(const QuotaState& state)
{
    return {
        {"user", state.user},
        {"plan", state.plan},
        {"limit_bytes", state.limit_bytes ? nlohmann::json(*state.limit_bytes) : nlohmann::json(nullptr)},
        {"used_bytes", state.used_bytes},
        {"period_start", format_rfc3339(state.period.start)},
        {"period_end", state.period.end == kForever ? nlohmann::json(nullptr)
                                                    : nlohmann::json(format_rfc3339(state.period.end))},
        {"state", to_string(state.state)},
    };
}

PeriodUsage roll(const PeriodUsage& stored, const Period& now_period)
{
    if (stored.period_start >= now_period.start) return stored;
    return PeriodUsage{now_period.start, 0, 0};
}

PeriodUsage add(const PeriodUsage& usage, uint64_t upload, uint64_t download)
{
    return PeriodUsage{usage.period_start, saturating_add(usage.upload, upload),
                       saturating_add(usage.download, download)};
}

std::vector<int> thresholds_to_fire(const std::vector<int>& thresholds, uint64_t used, uint64_t limit,
                                    const std::set<int>& already_fired_this_period)
{
    std::vector<int> fire;
    for (int percent : thresholds)
        if (percent > 0 && reached(used, limit, percent) && !already_fired_this_period.count(percent))
            fire.push_back(percent);
    std::sort(fire.begin(), fire.end());
    fire.erase(std::unique(fire.begin(), fire.end()), fire.end());
    return fire;
}

} // namespace vpnmeter
