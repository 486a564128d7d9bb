#include <catch2/catch.hpp>

#include <random>
#include <stdexcept>
#include <thread>

#include "quota/period.h"
#include "time_format.h"

using namespace vpnmeter;

namespace {

constexpr int64_t kHour = 3600;

Plan plan_with(Plan::PeriodKind period, unsigned billing_day = 1)
{
    Plan plan;
    plan.name = "test";
    plan.period = period;
    plan.billing_day = billing_day;
    return plan;
}

// The period at `now` as RFC 3339 text, for readable failures.
std::pair<std::string, std::string> period_text(const Plan& plan, const std::string& now, const std::string& zone)
{
    const Period p = period_at(plan, parse_time(now), zone);
    return {format_rfc3339(p.start), format_rfc3339(p.end)};
}

using Span = std::pair<std::string, std::string>;

} // namespace

TEST_CASE("daily periods begin at local midnight", "[quota]")
{
    const Plan daily = plan_with(Plan::PeriodKind::daily);
    CHECK(period_text(daily, "2024-11-23T07:07:58Z", "UTC") == Span{"2024-11-23T00:00:00Z", "2024-11-24T00:00:00Z"});
    CHECK(period_text(daily, "2024-11-23T00:00:00Z", "UTC") == Span{"2024-11-23T00:00:00Z", "2024-11-24T00:00:00Z"});
    CHECK(period_text(daily, "2024-11-23T23:59:59Z", "UTC") == Span{"2024-11-23T00:00:00Z", "2024-11-24T00:00:00Z"});

    // +05:30: the day turns at 18:30 UTC.
    CHECK(period_text(daily, "2024-11-23T18:29:59Z", "Asia/Kolkata") ==
          Span{"2024-11-22T18:30:00Z", "2024-11-23T18:30:00Z"});
    CHECK(period_text(daily, "2024-11-23T18:30:00Z", "Asia/Kolkata") ==
          Span{"2024-11-23T18:30:00Z", "2024-11-24T18:30:00Z"});
    CHECK(period_text(daily, "2024-11-23T20:00:00Z", "Asia/Kolkata") ==
          Span{"2024-11-23T18:30:00Z", "2024-11-24T18:30:00Z"});
}

TEST_CASE("daily periods across DST changes last 23 and 25 hours", "[quota]")
{
    const Plan daily = plan_with(Plan::PeriodKind::daily);
    const std::string ny = "America/New_York";
    // 2024-03-10: 02:00 EST -> 03:00 EDT.
    const Period spring = period_at(daily, parse_time("2024-03-10T12:00:00Z"), ny);
    CHECK(format_rfc3339(spring.start) == "2024-03-10T05:00:00Z");
    CHECK(format_rfc3339(spring.end) == "2024-03-11T04:00:00Z");
    CHECK(spring.end - spring.start == 23 * kHour);
    CHECK(period_at(daily, parse_time("2024-03-10T06:59:59Z"), ny) == spring); // 01:59:59 EST
    CHECK(period_at(daily, parse_time("2024-03-10T07:00:00Z"), ny) == spring); // 03:00:00 EDT
    CHECK(period_at(daily, parse_time("2024-03-11T03:59:59Z"), ny) == spring);
    CHECK(period_at(daily, parse_time("2024-03-11T04:00:00Z"), ny).start == spring.end);

    // 2024-11-03: 02:00 EDT -> 01:00 EST; 01:30 happens twice, same day.
    const Period fall = period_at(daily, parse_time("2024-11-03T05:30:00Z"), ny);
    CHECK(format_rfc3339(fall.start) == "2024-11-03T04:00:00Z");
    CHECK(format_rfc3339(fall.end) == "2024-11-04T05:00:00Z");
    CHECK(fall.end - fall.start == 25 * kHour);
    CHECK(period_at(daily, parse_time("2024-11-03T06:30:00Z"), ny) == fall);
    CHECK(period_at(daily, parse_time("2024-11-03T03:59:59Z"), ny).end == fall.start);

    // A midnight the change skips (Sao Paulo, 2018-11-04 00:00 -> 01:00):
    // the day begins at the change.
    const Plan daily_sp = daily;
    CHECK(period_text(daily_sp, "2018-11-04T12:00:00Z", "America/Sao_Paulo") ==
          Span{"2018-11-04T03:00:00Z", "2018-11-05T02:00:00Z"});
    CHECK(period_text(daily_sp, "2018-11-04T02:59:59Z", "America/Sao_Paulo") ==
          Span{"2018-11-03T03:00:00Z", "2018-11-04T03:00:00Z"});
}

TEST_CASE("weekly periods begin on Monday", "[quota]")
{
    const Plan weekly = plan_with(Plan::PeriodKind::weekly);
    // 2024-11-23 is a Saturday.
    CHECK(period_text(weekly, "2024-11-23T07:00:00Z", "UTC") == Span{"2024-11-18T00:00:00Z", "2024-11-25T00:00:00Z"});
    CHECK(period_text(weekly, "2024-11-18T00:00:00Z", "UTC") == Span{"2024-11-18T00:00:00Z", "2024-11-25T00:00:00Z"});
    CHECK(period_text(weekly, "2024-11-24T23:59:59Z", "UTC") == Span{"2024-11-18T00:00:00Z", "2024-11-25T00:00:00Z"});
    CHECK(period_text(weekly, "2024-11-25T00:00:00Z", "UTC") == Span{"2024-11-25T00:00:00Z", "2024-12-02T00:00:00Z"});
    // Sunday 19:00 UTC is Monday 00:30 in Kolkata.
    CHECK(period_text(weekly, "2024-11-24T19:00:00Z", "Asia/Kolkata") ==
          Span{"2024-11-24T18:30:00Z", "2024-12-01T18:30:00Z"});
    // The week holding the spring change is 167 hours.
    const Period dst_week = period_at(weekly, parse_time("2024-03-10T12:00:00Z"), "America/New_York");
    CHECK(format_rfc3339(dst_week.start) == "2024-03-04T05:00:00Z");
    CHECK(dst_week.end - dst_week.start == 167 * kHour);
}

TEST_CASE("monthly periods begin on the billing day", "[quota]")
{
    const Plan monthly = plan_with(Plan::PeriodKind::monthly);
    CHECK(period_text(monthly, "2024-11-23T07:00:00Z", "UTC") == Span{"2024-11-01T00:00:00Z", "2024-12-01T00:00:00Z"});
    CHECK(period_text(monthly, "2024-12-31T23:59:59Z", "UTC") == Span{"2024-12-01T00:00:00Z", "2025-01-01T00:00:00Z"});
    CHECK(period_text(monthly, "2024-11-15T00:00:00Z", "America/New_York") ==
          Span{"2024-11-01T04:00:00Z", "2024-12-01T05:00:00Z"}); // EDT to EST

    const Plan fifteenth = plan_with(Plan::PeriodKind::monthly, 15);
    CHECK(period_text(fifteenth, "2025-01-14T23:59:59Z", "UTC") == Span{"2024-12-15T00:00:00Z", "2025-01-15T00:00:00Z"});
    CHECK(period_text(fifteenth, "2025-01-15T00:00:00Z", "UTC") == Span{"2025-01-15T00:00:00Z", "2025-02-15T00:00:00Z"});
    CHECK(period_text(fifteenth, "2025-02-20T00:00:00Z", "Asia/Kolkata") ==
          Span{"2025-02-14T18:30:00Z", "2025-03-14T18:30:00Z"});
}

TEST_CASE("a billing day past the month's end starts the period on its last day", "[quota]")
{
    const Plan day31 = plan_with(Plan::PeriodKind::monthly, 31);
    // 2025: not a leap year.
    CHECK(period_text(day31, "2025-01-30T12:00:00Z", "UTC") == Span{"2024-12-31T00:00:00Z", "2025-01-31T00:00:00Z"});
    CHECK(period_text(day31, "2025-01-31T00:00:00Z", "UTC") == Span{"2025-01-31T00:00:00Z", "2025-02-28T00:00:00Z"});
    CHECK(period_text(day31, "2025-02-27T23:59:59Z", "UTC") == Span{"2025-01-31T00:00:00Z", "2025-02-28T00:00:00Z"});
    CHECK(period_text(day31, "2025-02-28T00:00:00Z", "UTC") == Span{"2025-02-28T00:00:00Z", "2025-03-31T00:00:00Z"});
    CHECK(period_text(day31, "2025-03-15T00:00:00Z", "UTC") == Span{"2025-02-28T00:00:00Z", "2025-03-31T00:00:00Z"});
    CHECK(period_text(day31, "2025-04-30T00:00:00Z", "UTC") == Span{"2025-04-30T00:00:00Z", "2025-05-31T00:00:00Z"});
    // 2024: a leap year.
    CHECK(period_text(day31, "2024-02-28T12:00:00Z", "UTC") == Span{"2024-01-31T00:00:00Z", "2024-02-29T00:00:00Z"});
    CHECK(period_text(day31, "2024-02-29T00:00:00Z", "UTC") == Span{"2024-02-29T00:00:00Z", "2024-03-31T00:00:00Z"});

    const Plan day30 = plan_with(Plan::PeriodKind::monthly, 30);
    CHECK(period_text(day30, "2025-03-01T00:00:00Z", "UTC") == Span{"2025-02-28T00:00:00Z", "2025-03-30T00:00:00Z"});
    const Plan day29 = plan_with(Plan::PeriodKind::monthly, 29);
    CHECK(period_text(day29, "2024-03-01T00:00:00Z", "UTC") == Span{"2024-02-29T00:00:00Z", "2024-03-29T00:00:00Z"});
    CHECK(period_text(day29, "2025-03-01T00:00:00Z", "UTC") == Span{"2025-02-28T00:00:00Z", "2025-03-29T00:00:00Z"});
}

TEST_CASE("periods partition time", "[quota]")
{
    for (const char* zone : {"UTC", "Asia/Kolkata", "America/New_York"})
        for (auto kind : {Plan::PeriodKind::daily, Plan::PeriodKind::weekly, Plan::PeriodKind::monthly}) {
            const Plan plan = plan_with(kind, 31);
            int64_t t = parse_time("2023-12-25T00:00:00Z");
            Period previous = period_at(plan, t, zone);
            for (; t < parse_time("2025-01-10T00:00:00Z"); t += 1800) {
                const Period p = period_at(plan, t, zone);
                INFO(zone << " " << to_string(kind) << " at " << format_rfc3339(t));
                REQUIRE(p.contains(t));
                REQUIRE((p == previous || p.start == previous.end));
                previous = p;
            }
        }
}

TEST_CASE("a total period never ends", "[quota]")
{
    const Plan total = plan_with(Plan::PeriodKind::total);
    CHECK(period_at(total, parse_time("2024-11-23T07:00:00Z"), "Asia/Kolkata") == Period{0, kForever});
    CHECK(period_at(total, 0, "UTC") == Period{0, kForever});
}

TEST_CASE("unknown time zones are refused", "[quota]")
{
    CHECK_NOTHROW(check_timezone("UTC"));
    CHECK_NOTHROW(check_timezone("Europe/Berlin"));
    CHECK_THROWS_WITH(check_timezone("Mars/Olympus"),
                      "unknown time zone 'Mars/Olympus' (expected an IANA name such as Europe/Berlin)");
    CHECK_THROWS_AS(period_at(plan_with(Plan::PeriodKind::daily), 0, "Nowhere"), std::invalid_argument);
}

TEST_CASE("expiry dates end with their local day", "[quota]")
{
    CHECK(parse_expiry("2026-12-31", "UTC") == parse_time("2027-01-01T00:00:00Z"));
    CHECK(parse_expiry("2026-12-31", "Asia/Kolkata") == parse_time("2026-12-31T18:30:00Z"));
    CHECK(parse_expiry("2026-07-04", "America/New_York") == parse_time("2026-07-05T04:00:00Z"));
    CHECK(parse_expiry("2028-02-29", "UTC") == parse_time("2028-03-01T00:00:00Z"));
    CHECK(parse_expiry("2026-12-31T18:00:00Z", "Asia/Kolkata") == parse_time("2026-12-31T18:00:00Z"));
    CHECK(parse_expiry("2026-12-31T23:00:00+05:30", "UTC") == parse_time("2026-12-31T17:30:00Z"));
    CHECK_THROWS_AS(parse_expiry("2026-02-29", "UTC"), std::invalid_argument);
    CHECK_THROWS_AS(parse_expiry("2026-13-01", "UTC"), std::invalid_argument);
    CHECK_THROWS_AS(parse_expiry("next year", "UTC"), std::invalid_argument);
}

TEST_CASE("periods found again come from the kept ones and equal a fresh computation", "[quota]")
{
    // A fresh thread has nothing kept: its answer is computed from scratch.
    auto fresh = [](const Plan& plan, int64_t now, const std::string& zone) {
        Period out;
        std::thread([&] { out = period_at(plan, now, zone); }).join();
        return out;
    };
    std::mt19937 rng(7);
    const std::vector<std::string> zones{"UTC", "Asia/Kolkata", "America/New_York", "Australia/Lord_Howe",
                                         "Europe/Berlin"};
    const std::vector<Plan> plans{plan_with(Plan::PeriodKind::daily), plan_with(Plan::PeriodKind::weekly),
                                  plan_with(Plan::PeriodKind::monthly, 1), plan_with(Plan::PeriodKind::monthly, 31)};
    const int64_t from = parse_time("2024-01-01T00:00:00Z");
    std::uniform_int_distribution<int64_t> offset(0, 400 * 86400);
    for (int i = 0; i < 400; ++i) {
        // Interleaved zones and plans, and moments close together (kept ones
        // hit) and far apart (missed), including across DST changes.
        const Plan& plan = plans[rng() % plans.size()];
        const std::string& zone = zones[rng() % zones.size()];
        const int64_t now = from + (i % 2 ? offset(rng) : (i * 3571) % (30 * 86400));
        INFO(zone << " " << to_string(plan.period) << " billing day " << plan.billing_day << " at "
                  << format_rfc3339(now));
        const Period kept = period_at(plan, now, zone);
        REQUIRE(kept == fresh(plan, now, zone));
        REQUIRE(period_at(plan, now, zone) == kept);
    }
}
