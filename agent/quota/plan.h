// Quota plans and who is on which: the `quotas:` section of the config.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace vpnmeter {

// What a user may use, per period, and what happens beyond it. A plan with
// no limit, no speed and no expiry is allowed ("unlimited").
struct Plan {
    std::string name;

    std::optional<uint64_t> limit_bytes; // per period; none: unlimited
    // Which traffic counts against the limit.
    enum class Direction { both, upload, download } direction = Direction::both;
    // When the count starts from zero: local midnight, Monday midnight, the
    // billing day's midnight (in QuotaConfig::timezone), or never.
    enum class PeriodKind { daily, weekly, monthly, total } period = PeriodKind::monthly;
    // First day of a monthly period, 1..31; in a shorter month the period
    // starts on its last day (31 -> Feb 28/29, Apr 30).
    unsigned billing_day = 1;
    std::optional<int64_t> expires; // unix seconds; from then on the user is blocked

    // Always-on rate limits, bits per second; 0: none.
    uint64_t speed_download_bps = 0;
    uint64_t speed_upload_bps = 0;

    // At the limit: block, throttle to `throttle_bps` both ways, block and
    // drop the user's sessions, or only report it (`none`: state exceeded).
    enum class Action { block, throttle, disconnect, none } action = Action::block;
    uint64_t throttle_bps = 0;
};

// One `users:` line: an exact name or a glob (fnmatch), and its plan.
struct PlanAssignment {
    std::string pattern;
    std::string plan; // a name from QuotaConfig::plans, or "unlimited"
};

// Plan references may say "unlimited": no plan, unless one is defined with
// that name.
inline constexpr const char* kUnlimitedPlan = "unlimited";

struct QuotaConfig {
    std::string timezone = "UTC"; // where days, weeks and months begin
    std::vector<int> thresholds = {75, 90, 100}; // percent of the limit, ascending, for alerts
    std::string default_plan = kUnlimitedPlan;   // for users no `users:` line matches
    std::vector<Plan> plans;                     // in file order
    std::vector<PlanAssignment> users;           // in file order: globs are tried in it

    const Plan* find_plan(const std::string& name) const;
};

// The plan of `user`: a `users:` line naming it exactly, else the first
// glob that matches in file order, else `default_plan`. Null: unlimited (no
// plan). Points into `config`.
const Plan* plan_for(const QuotaConfig& config, const std::string& user);

const char* to_string(Plan::Direction direction);
const char* to_string(Plan::PeriodKind period);
const char* to_string(Plan::Action action);

} // namespace vpnmeter
