#include "quota/plan.h"

#include <fnmatch.h>

#include <algorithm>

namespace vpnmeter {

const Plan* QuotaConfig::find_plan(const std::string& name) const
{
    const auto it = std::find_if(plans.begin(), plans.end(), [&](const Plan& plan) { return plan.name == name; });
    return it == plans.end() ? nullptr : &*it;
}

const Plan* plan_for(const QuotaConfig& config, const std::string& user)
{
    for (const PlanAssignment& line : config.users)
        if (line.pattern == user) return config.find_plan(line.plan);
    for (const PlanAssignment& line : config.users)
        if (fnmatch(line.pattern.c_str(), user.c_str(), 0) == 0) return config.find_plan(line.plan);
    return config.find_plan(config.default_plan);
}

const char* to_string(Plan::Direction direction)
{
    switch (direction) {
    case Plan::Direction::both: return "both";
    case Plan::Direction::upload: return "upload";
    case Plan::Direction::download: return "download";
    }
    return "?";
}

const char* to_string(Plan::PeriodKind period)
{
    switch (period) {
    case Plan::PeriodKind::daily: return "daily";
    case Plan::PeriodKind::weekly: return "weekly";
    case Plan::PeriodKind::monthly: return "monthly";
    case Plan::PeriodKind::total: return "total";
    }
    return "?";
}

const char* to_string(Plan::Action action)
{
    switch (action) {
    case Plan::Action::block: return "block";
    case Plan::Action::throttle: return "throttle";
    case Plan::Action::disconnect: return "disconnect";
    case Plan::Action::none: return "none";
    }
    return "?";
}

} // namespace vpnmeter
