// The quota engine: from a plan, a run-time grant, usage and the time, what
// a user may do now. Pure: no I/O, the clock is an argument.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "quota/period.h"
#include "quota/plan.h"

namespace vpnmeter {

// Set or topped up at run time through the API (and persisted by its
// caller); overrides the config for one user.
struct Grant {
    std::optional<std::string> plan;     // instead of the configured plan ("unlimited": none)
    std::optional<uint64_t> limit_bytes; // instead of the plan's limit
    // Extra bytes on top of the limit, for the period they were bought in
    // only: once `topup_period_start` is not the current period's start, they
    // are gone. A `total` plan's period never ends, so its top-ups stay.
    uint64_t topup_bytes = 0;
    int64_t topup_period_start = 0;
    std::optional<int64_t> expires; // instead of the plan's expiry

    bool operator==(const Grant&) const = default;
};

// `grant` with `bytes` more top-up in `current`; a top-up left over from an
// earlier period is dropped first.
Grant add_topup(Grant grant, uint64_t bytes, const Period& current);

// {"plan": "small", "limit_bytes": 1000, "topup_bytes": 0,
//  "topup_period_start": 0, "expires": 1798761600}: times in unix seconds,
// absent optionals left out. Reading tolerates missing keys; a key of the
// wrong type throws nlohmann::json::exception.
void to_json(nlohmann::json& json, const Grant& grant);
void from_json(const nlohmann::json& json, Grant& grant);

// The plan `user` is on: the grant's if it names one the config has
// (or "unlimited"), else plan_for(). Null: unlimited.
const Plan* plan_of(const QuotaConfig& config, const std::string& user, const std::optional<Grant>& grant);

// The period `user`'s usage counts in at `now`. Without a plan, usage is
// still reported per calendar month (a default Plan's period).
Period period_of(const QuotaConfig& config, const std::string& user, const std::optional<Grant>& grant, int64_t now);

struct QuotaState {
    std::string user;
    std::string plan; // its name, or "unlimited"
    std::optional<uint64_t> limit_bytes; // with the grant and this period's top-up; none: unlimited
    uint64_t used_bytes = 0;             // what counts against the limit (see `direction`)
    Period period;
    // ok; warning: past the lowest threshold below 100%; at or over the
    // limit: blocked (action block or disconnect), throttled (action
    // throttle), exceeded (action none: reported, not enforced); expired:
    // past the plan's or grant's expiry, blocked whatever the usage.
    enum class State { ok, warning, exceeded, blocked, throttled, expired } state = State::ok;
    Plan::Direction direction = Plan::Direction::both; // what counts against the limit
    // Rate limits in effect now, bits/s: the plan's speed, or the throttle
    // rate once throttled (the lower of the two); 0: none.
    uint64_t download_bps = 0;
    uint64_t upload_bps = 0;
    bool block = false;      // drop the user's traffic
    bool disconnect = false; // and end their sessions (action disconnect)
    // Bytes (of `direction`) left before the limit, for the datapath: 0 at
    // or past it and once expired; none when there is no limit.
    std::optional<uint64_t> remaining_bytes;
    // With the same usage, grant and config the state stays as it is until
    // then: the period's end, or an expiry still to come if sooner.
    int64_t holds_until = kForever;
};

const char* to_string(QuotaState::State state);

// What /metrics shows of a QuotaState.
struct QuotaGauges {
    std::optional<uint64_t> limit_bytes; // none: the plan has no byte limit
    uint64_t used_bytes = 0;
    QuotaState::State state = QuotaState::State::ok;
    bool operator==(const QuotaGauges&) const = default;
};
// Users' gauges, by user.
using UserGauges = std::vector<std::pair<std::string, QuotaGauges>>;

// Where `user` stands at `now`, having used `used_upload`/`used_download`
// bytes in the current period (see roll()).
QuotaState evaluate(const QuotaConfig& config, const std::string& user, const std::optional<Grant>& grant,
                    uint64_t used_upload, uint64_t used_download, int64_t now);

// `vpnmeter quota get USER --json`: {"user", "plan", "limit_bytes" (null:
// unlimited), "used_bytes", "period_start", "period_end" (RFC 3339; null for
// a `total` plan, whose period never ends), "state"}.
nlohmann::json quota_json(const QuotaState& state);

// A user's usage in one period, as kept between cycles.
struct PeriodUsage {
    int64_t period_start = 0;
    uint64_t upload = 0;
    uint64_t download = 0;

    bool operator==(const PeriodUsage&) const = default;
};

// `stored` carried into `now_period`: a new period starts from zero. Usage
// that began within the current period is kept, so a switch to a plan with
// a longer period (daily -> monthly) keeps what was counted, and a switch
// to a shorter one starts afresh.
PeriodUsage roll(const PeriodUsage& stored, const Period& now_period);

// `usage` plus new bytes (saturating). Roll first: usage = add(roll(usage, period), up, down).
PeriodUsage add(const PeriodUsage& usage, uint64_t upload, uint64_t download);

// Thresholds (percent of `limit`, ascending) that `used` has reached and that
// did not fire yet this period, ascending; several at once after a jump. The
// caller adds them to its fired set and clears it when the period changes.
std::vector<int> thresholds_to_fire(const std::vector<int>& thresholds, uint64_t used, uint64_t limit,
                                    const std::set<int>& already_fired_this_period);

} // namespace vpnmeter
