// Where hour, day and month buckets begin in a time zone.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

#include "result.h"
#include "store/store.h"

namespace date {
class time_zone;
}

namespace vpnmeter {

// Buckets are local: a day is midnight to midnight on the zone's clock (23
// or 25 hours across a DST change), an hour is a local clock hour (so
// +05:30 hours begin at :30 UTC), a month begins at local midnight on the
// 1st. Zone rules come from the system tzdata (/usr/share/zoneinfo).
// Limitation: date's USE_OS_TZDB reads the listed transitions and ignores
// the TZif footer rule, and Debian's files list DST changes up to 2037;
// later times get the last listed offset (standard time).
class BucketCalendar {
public:
    // An IANA name ("Europe/Berlin"). "UTC" needs no tzdata.
    static Result<BucketCalendar> load(const std::string& zone_name);

    // Start of the bucket holding `time` (unix seconds). Buckets partition
    // time: start(start(t)) == start(t), and start is monotonic in t.
    int64_t start(int64_t time, Granularity granularity) const;

    const std::string& zone_name() const { return zone_name_; }

private:
    BucketCalendar(std::string name, const date::time_zone* zone) : zone_name_(std::move(name)), zone_(zone) {}
    int64_t local_midnight(int64_t local_day) const;

    std::string zone_name_;
    const date::time_zone* zone_ = nullptr; // null: UTC; owned by the tz database (lives forever)
};

} // namespace vpnmeter
