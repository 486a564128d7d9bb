// Quota periods: when a plan's count starts from zero, in a time zone.
#pragma once

#include <cstdint>
#include <limits>
#include <string>

#include "quota/plan.h"

namespace vpnmeter {

// [start, end) in unix seconds. A `total` plan has one period, [0, kForever).
struct Period {
    int64_t start = 0;
    int64_t end = 0;

    bool contains(int64_t time) const { return start <= time && time < end; }
    bool operator==(const Period&) const = default;
};

inline constexpr int64_t kForever = std::numeric_limits<int64_t>::max();

// The period of `plan` holding `now`. Boundaries are local midnights in
// `timezone` (an IANA name): daily from midnight (a DST change day lasts 23
// or 25 hours), weekly from Monday midnight, monthly from midnight on the
// billing day, or on the month's last day when it has fewer days. A
// midnight that a DST change skips begins at the change. Zone rules come
// from the system tzdata (see store/timezone.h for its 2037 limitation).
// Throws std::invalid_argument for an unknown zone (the config checks it).
Period period_at(const Plan& plan, int64_t now, const std::string& timezone);

// Throws std::invalid_argument unless the tz database knows `timezone`.
void check_timezone(const std::string& timezone);

// An expiry as written in the config or the API: a date ("2026-12-31") is
// the end of that day in `timezone` (the next local midnight); a time
// ("2026-12-31T18:00:00Z", "...+05:30") or unix seconds is itself. Throws
// std::invalid_argument.
int64_t parse_expiry(const std::string& text, const std::string& timezone);

} // namespace vpnmeter
