#include "quota/period.h"

#include <date/tz.h>

#include <array>
#include <cstdio>
#include <optional>
#include <stdexcept>

#include "time_format.h"

namespace vpnmeter {
namespace {

constexpr int64_t kDay = 86400;

int64_t floor_div(int64_t a, int64_t b)
{
    return a / b - ((a % b != 0) && ((a < 0) != (b < 0)));
}

// "UTC" needs no tzdata; null stands for it.
const date::time_zone* zone_named(const std::string& name)
{
    if (name == "UTC") return nullptr;
    try {
        return date::locate_zone(name);
    } catch (const std::exception&) {
        throw std::invalid_argument("unknown time zone '" + name + "' (expected an IANA name such as Europe/Berlin)");
    }
}

// Local calendar arithmetic in one zone: days are counted from 1970-01-01
// on the zone's own clock.
class LocalClock {
public:
    explicit LocalClock(const std::string& timezone) : zone_(zone_named(timezone)) {}

    date::sys_days local_day(int64_t time) const
    {
        const int64_t offset =
            zone_ ? zone_->get_info(date::sys_seconds{std::chrono::seconds{time}}).offset.count() : 0;
        return date::sys_days{date::days{floor_div(time + offset, kDay)}};
    }

    // The first moment of a local day: a midnight skipped by a DST change
    // maps to the change, a repeated one to its first occurrence.
    int64_t midnight(date::sys_days day) const
    {
        const int64_t local = day.time_since_epoch().count() * kDay;
        if (!zone_) return local;
        const auto at = date::local_seconds{std::chrono::seconds{local}};
        return zone_->to_sys(at, date::choose::earliest).time_since_epoch().count();
    }

private:
    const date::time_zone* zone_;
};

// The billing day in a month: `billing_day`, or the month's last day.
date::sys_days billing_start(date::year_month month, unsigned billing_day)
{
    const date::day last = (month / date::last).day();
    const date::day day{billing_day};
    return date::sys_days{month / (day < last ? day : last)};
}

} // namespace

namespace {

Period period_from(const Plan& plan, const LocalClock& clock, date::sys_days today)
{
    switch (plan.period) {
    case Plan::PeriodKind::daily:
        return {clock.midnight(today), clock.midnight(today + date::days{1})};
    case Plan::PeriodKind::weekly: {
        const date::sys_days monday = today - (date::weekday{today} - date::Monday);
        return {clock.midnight(monday), clock.midnight(monday + date::days{7})};
    }
    case Plan::PeriodKind::monthly: {
        const date::year_month_day ymd{today};
        date::year_month month = ymd.year() / ymd.month();
        if (today < billing_start(month, plan.billing_day)) month -= date::months{1};
        return {clock.midnight(billing_start(month, plan.billing_day)),
                clock.midnight(billing_start(month + date::months{1}, plan.billing_day))};
    }
    case Plan::PeriodKind::total:
        break;
    }
    return {0, kForever};
}

Period period_containing(const Plan& plan, int64_t now, const std::string& timezone)
{
    const LocalClock clock(timezone);
    const Period period = period_from(plan, clock, clock.local_day(now));
    // Where a DST change repeats midnight (the clock goes from 00:59 back to
    // 23:00), the repeated hour's local date is the day before, but the new
    // day has begun at the first midnight.
    if (now >= period.end) return period_from(plan, clock, clock.local_day(period.end));
    return period;
}

} // namespace

Period period_at(const Plan& plan, int64_t now, const std::string& timezone)
{
    // Periods partition time: the one found for any moment inside it is
    // the answer for all of them. Every user's state needs its period,
    // several times a cycle; finding it takes a zone lookup and calendar
    // arithmetic, so the last few found are kept (per thread: the API's
    // threads ask too).
    struct Found {
        Plan::PeriodKind kind;
        unsigned billing_day;
        std::string timezone;
        Period period;
    };
    thread_local std::array<std::optional<Found>, 4> found;
    thread_local size_t next = 0;
    for (const auto& entry : found)
        if (entry && entry->kind == plan.period && entry->billing_day == plan.billing_day &&
            entry->period.start <= now && now < entry->period.end && entry->timezone == timezone)
            return entry->period;
    const Period period = period_containing(plan, now, timezone);
    found[next] = Found{plan.period, plan.billing_day, timezone, period};
    next = (next + 1) % found.size();
    return period;
}

void check_timezone(const std::string& timezone)
{
    zone_named(timezone);
}

int64_t parse_expiry(const std::string& text, const std::string& timezone)
{
    int year = 0;
    unsigned month = 0, day = 0;
    int consumed = 0;
    if (text.size() == 10 && std::sscanf(text.c_str(), "%4d-%2u-%2u%n", &year, &month, &day, &consumed) == 3 &&
        consumed == 10) {
        const date::year_month_day date{date::year{year}, date::month{month}, date::day{day}};
        if (!date.ok()) throw std::invalid_argument("'" + text + "' is not a date");
        return LocalClock(timezone).midnight(date::sys_days{date} + date::days{1});
    }
    return parse_time(text);
}

} // namespace vpnmeter
