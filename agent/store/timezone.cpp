#include "store/timezone.h"

#include <date/tz.h>

#include <algorithm>
#include <limits>

namespace vpnmeter {
namespace {

constexpr int64_t kHour = 3600;
constexpr int64_t kDay = 86400;

int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - ((a % b != 0) && ((a < 0) != (b < 0)));
}

} // namespace

Result<BucketCalendar> BucketCalendar::load(const std::string& zone_name)
{
    if (zone_name == "UTC") return BucketCalendar(zone_name, nullptr);
    try {
        return BucketCalendar(zone_name, date::locate_zone(zone_name));
    } catch (const std::exception& e) {
        // Unknown names and a missing or unreadable tzdata both end here.
        return Error{"unknown time zone '" + zone_name +
                     "' (storage.timezone; an IANA name such as Europe/Berlin): " + e.what()};
    }
}

int64_t BucketCalendar::local_midnight(int64_t local_day) const
{
    if (!zone_) return local_day * kDay;
    // A midnight skipped by a DST change maps to the change (the first
    // moment of that day); a repeated one to its first occurrence.
    const auto midnight = date::local_seconds{std::chrono::seconds{local_day * kDay}};
    return zone_->to_sys(midnight, date::choose::earliest).time_since_epoch().count();
}

int64_t BucketCalendar::start(int64_t time, Granularity granularity) const
{
    int64_t offset = 0;
    int64_t offset_since = std::numeric_limits<int64_t>::min();
    if (zone_) {
        const auto info = zone_->get_info(date::sys_seconds{std::chrono::seconds{time}});
        offset = info.offset.count();
        offset_since = info.begin.time_since_epoch().count();
    }
    const int64_t local = time + offset;

    switch (granularity) {
    case Granularity::Hour:
        // A change of offset by a fraction of an hour starts a bucket of its
        // own, so the local-hour floor never reaches back before the change.
        return std::max(floor_div(local, kHour) * kHour - offset, offset_since);
    case Granularity::Day:
        return local_midnight(floor_div(local, kDay));
    case Granularity::Month: {
        const date::year_month_day day{date::sys_days{date::days{floor_div(local, kDay)}}};
        const date::sys_days first{day.year() / day.month() / 1};
        return local_midnight(first.time_since_epoch().count());
    }
    }
    return time;
}

} // namespace vpnmeter
