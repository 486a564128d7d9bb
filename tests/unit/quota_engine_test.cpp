#include <catch2/catch.hpp>

#include "config.h"
#include "quota/engine.h"
#include "time_format.h"

using namespace vpnmeter;

namespace {

using State = QuotaState::State;

constexpr uint64_t kMB = 1'000'000;

QuotaConfig quotas(const std::string& yaml)
{
    return parse_config("interfaces: [tun0]\nquotas:\n" + yaml, "test.yaml").quotas;
}

const QuotaConfig kConfig = quotas(R"(
  timezone: UTC
  plans:
    small:   { limit: 20MB, period: daily, action: block }
    kick:    { limit: 20MB, period: daily, action: disconnect }
    slow:    { speed: { download: 2Mbit, upload: 2Mbit } }
    capped:  { limit: 5GiB, period: monthly, billing_day: 15, action: { throttle: 1Mbit } }
    capslow: { limit: 20MB, speed: { download: 500kbit }, action: { throttle: 1Mbit } }
    notify:  { limit: 20MB, action: none }
    down:    { limit: 10MB, direction: download }
    up:      { limit: 10MB, direction: upload }
    trial:   { limit: 1GB, period: total, expires: 2026-12-31 }
  users:
    user1: small
    kicked: kick
    slowpoke: slow
    "trial-*": trial
    capped1: capped
    capslow1: capslow
    watcher: notify
    downloader: down
    uploader: up
)");

const int64_t kNow = parse_time("2024-11-23T12:00:00Z");

QuotaState eval(const std::string& user, uint64_t up, uint64_t down, int64_t now = kNow,
                const std::optional<Grant>& grant = std::nullopt)
{
    return evaluate(kConfig, user, grant, up, down, now);
}

} // namespace

TEST_CASE("ok and warning below the limit", "[quota]")
{
    const QuotaState ok = eval("user1", 1 * kMB, 2 * kMB);
    CHECK(ok.user == "user1");
    CHECK(ok.plan == "small");
    CHECK(ok.state == State::ok);
    CHECK(ok.limit_bytes == 20 * kMB);
    CHECK(ok.used_bytes == 3 * kMB);
    CHECK(ok.remaining_bytes == 17 * kMB);
    CHECK(ok.period == Period{parse_time("2024-11-23"), parse_time("2024-11-24")});
    CHECK_FALSE(ok.block);
    CHECK_FALSE(ok.disconnect);
    CHECK(ok.download_bps == 0);
    CHECK(ok.upload_bps == 0);

    CHECK(eval("user1", 0, 15 * kMB - 1).state == State::ok);
    CHECK(eval("user1", 0, 15 * kMB).state == State::warning); // 75%
    CHECK(eval("user1", 10 * kMB, 9 * kMB).state == State::warning);
    CHECK(eval("user1", 0, 20 * kMB - 1).remaining_bytes == 1);
}

TEST_CASE("at the limit: blocked, disconnected, throttled or only reported", "[quota]")
{
    const QuotaState blocked = eval("user1", 10 * kMB, 10 * kMB);
    CHECK(blocked.state == State::blocked);
    CHECK(blocked.block);
    CHECK_FALSE(blocked.disconnect);
    CHECK(blocked.remaining_bytes == 0);
    CHECK(eval("user1", 50 * kMB, 0).remaining_bytes == 0);

    const QuotaState kicked = eval("kicked", 0, 25 * kMB);
    CHECK(kicked.state == State::blocked);
    CHECK(kicked.block);
    CHECK(kicked.disconnect);

    const QuotaState throttled = eval("capped1", 0, 5ULL << 30);
    CHECK(throttled.state == State::throttled);
    CHECK_FALSE(throttled.block);
    CHECK(throttled.download_bps == 1'000'000);
    CHECK(throttled.upload_bps == 1'000'000);
    CHECK(throttled.remaining_bytes == 0);
    CHECK(eval("capped1", 0, (5ULL << 30) - 1).download_bps == 0);

    // The always-on speed stays where it is lower than the throttle rate.
    const QuotaState capslow = eval("capslow1", 0, 20 * kMB);
    CHECK(capslow.state == State::throttled);
    CHECK(capslow.download_bps == 500'000);
    CHECK(capslow.upload_bps == 1'000'000);
    CHECK(eval("capslow1", 0, 0).download_bps == 500'000);
    CHECK(eval("capslow1", 0, 0).upload_bps == 0);

    const QuotaState exceeded = eval("watcher", 0, 30 * kMB);
    CHECK(exceeded.state == State::exceeded);
    CHECK_FALSE(exceeded.block);
    CHECK(exceeded.download_bps == 0);
    CHECK(exceeded.remaining_bytes == 0);
}

TEST_CASE("speed limits apply always; no limit, no budget", "[quota]")
{
    const QuotaState slow = eval("slowpoke", 900'000 * kMB, 900'000 * kMB);
    CHECK(slow.state == State::ok);
    CHECK(slow.plan == "slow");
    CHECK(slow.limit_bytes == std::nullopt);
    CHECK(slow.remaining_bytes == std::nullopt);
    CHECK(slow.download_bps == 2'000'000);
    CHECK(slow.upload_bps == 2'000'000);

    const QuotaState nobody = eval("stranger", 5, 7);
    CHECK(nobody.plan == "unlimited");
    CHECK(nobody.state == State::ok);
    CHECK(nobody.used_bytes == 12);
    CHECK(nobody.limit_bytes == std::nullopt);
    CHECK(nobody.period == Period{parse_time("2024-11-01"), parse_time("2024-12-01")}); // reported per month
}

TEST_CASE("the direction decides what counts", "[quota]")
{
    const QuotaState down = eval("downloader", 500 * kMB, 1 * kMB);
    CHECK(down.state == State::ok);
    CHECK(down.used_bytes == 1 * kMB);
    CHECK(down.direction == Plan::Direction::download);
    CHECK(eval("downloader", 0, 10 * kMB).state == State::blocked);

    const QuotaState up = eval("uploader", 1 * kMB, 500 * kMB);
    CHECK(up.state == State::ok);
    CHECK(up.used_bytes == 1 * kMB);
    CHECK(eval("uploader", 10 * kMB, 0).state == State::blocked);

    CHECK(eval("user1", UINT64_MAX, 5).used_bytes == UINT64_MAX); // saturates
}

TEST_CASE("past the expiry the user is blocked whatever the usage", "[quota]")
{
    const int64_t end = parse_time("2027-01-01T00:00:00Z"); // expires: 2026-12-31 in UTC
    CHECK(eval("trial-1", 0, 0, end - 1).state == State::ok);
    const QuotaState expired = eval("trial-1", 0, 0, end);
    CHECK(expired.state == State::expired);
    CHECK(expired.block);
    CHECK_FALSE(expired.disconnect);
    CHECK(expired.remaining_bytes == 0);
    CHECK(expired.period == Period{0, kForever});

    // A grant's expiry replaces the plan's.
    Grant later;
    later.expires = parse_time("2027-06-30T00:00:00Z");
    CHECK(eval("trial-1", 0, 0, end, later).state == State::ok);
    Grant sooner;
    sooner.expires = kNow;
    CHECK(eval("user1", 0, 0, kNow, sooner).state == State::expired);
    CHECK(eval("stranger", 0, 0, kNow, sooner).state == State::expired);
    CHECK(eval("stranger", 0, 0, kNow, sooner).remaining_bytes == std::nullopt);
}

TEST_CASE("no warning state without a threshold below 100%", "[quota]")
{
    QuotaConfig config = kConfig;
    config.thresholds = {100};
    CHECK(evaluate(config, "user1", std::nullopt, 0, 19 * kMB, kNow).state == State::ok);
    config.thresholds = {};
    CHECK(evaluate(config, "user1", std::nullopt, 0, 19 * kMB, kNow).state == State::ok);
    config.thresholds = {50, 100};
    CHECK(evaluate(config, "user1", std::nullopt, 0, 10 * kMB, kNow).state == State::warning);
}

TEST_CASE("a grant replaces the plan or the limit", "[quota]")
{
    Grant bigger;
    bigger.limit_bytes = 100 * kMB;
    CHECK(eval("user1", 0, 50 * kMB, kNow, bigger).state == State::ok);
    CHECK(eval("user1", 0, 50 * kMB, kNow, bigger).limit_bytes == 100 * kMB);

    Grant to_capped;
    to_capped.plan = "capped";
    const QuotaState moved = eval("user1", 0, 50 * kMB, kNow, to_capped);
    CHECK(moved.plan == "capped");
    CHECK(moved.state == State::ok);
    CHECK(moved.period == Period{parse_time("2024-11-15"), parse_time("2024-12-15")});

    Grant freed;
    freed.plan = "unlimited";
    CHECK(eval("user1", 0, 50 * kMB, kNow, freed).plan == "unlimited");
    CHECK(eval("user1", 0, 50 * kMB, kNow, freed).state == State::ok);

    Grant stale; // its plan was removed from the config since
    stale.plan = "gone";
    CHECK(eval("user1", 0, 50 * kMB, kNow, stale).plan == "small");

    // A limit for a user without a plan: enforced with a default plan's rules.
    const QuotaState limited = eval("stranger", 0, 150 * kMB, kNow, bigger);
    CHECK(limited.limit_bytes == 100 * kMB);
    CHECK(limited.state == State::blocked);
}

TEST_CASE("a top-up raises the limit for the period it was bought in", "[quota]")
{
    const Period today = period_of(kConfig, "user1", std::nullopt, kNow);
    CHECK(today == Period{parse_time("2024-11-23"), parse_time("2024-11-24")});
    const Grant topped = add_topup(Grant{}, 10 * kMB, today);
    CHECK(topped.topup_bytes == 10 * kMB);
    CHECK(topped.topup_period_start == today.start);

    const QuotaState now = eval("user1", 0, 25 * kMB, kNow, topped);
    CHECK(now.limit_bytes == 30 * kMB);
    CHECK(now.state == State::warning); // 25 of 30 MB
    CHECK(now.remaining_bytes == 5 * kMB);

    // More in the same period adds up; the next day starts without it.
    CHECK(add_topup(topped, 5 * kMB, today).topup_bytes == 15 * kMB);
    const int64_t tomorrow = today.end + 3600;
    const QuotaState next = eval("user1", 0, 25 * kMB, tomorrow, topped);
    CHECK(next.limit_bytes == 20 * kMB);
    CHECK(next.state == State::blocked);
    const Period next_period = period_of(kConfig, "user1", topped, tomorrow);
    const Grant fresh = add_topup(topped, 5 * kMB, next_period);
    CHECK(fresh.topup_bytes == 5 * kMB);
    CHECK(fresh.topup_period_start == next_period.start);

    // Nothing to add to without a limit; a `total` plan keeps its top-ups.
    CHECK(eval("slowpoke", 0, 0, kNow, add_topup(Grant{}, kMB, today)).limit_bytes == std::nullopt);
    const Period forever = period_of(kConfig, "trial-1", std::nullopt, kNow);
    const Grant trial_topup = add_topup(Grant{}, 500 * kMB, forever);
    CHECK(eval("trial-1", 0, 0, kNow + 400 * 86400, trial_topup).limit_bytes == 1'500 * kMB);
}

TEST_CASE("grants as JSON", "[quota]")
{
    Grant grant;
    grant.plan = "capped";
    grant.limit_bytes = 1000;
    grant.topup_bytes = 500;
    grant.topup_period_start = 1731628800;
    grant.expires = 1798761600;
    const nlohmann::json json = grant;
    CHECK(json.dump() ==
          R"({"expires":1798761600,"limit_bytes":1000,"plan":"capped","topup_bytes":500,"topup_period_start":1731628800})");
    CHECK(json.get<Grant>() == grant);

    CHECK(nlohmann::json(Grant{}).dump() == R"({"topup_bytes":0,"topup_period_start":0})");
    CHECK(nlohmann::json::parse("{}").get<Grant>() == Grant{});
    CHECK(nlohmann::json::parse(R"({"plan":null,"limit_bytes":5})").get<Grant>().limit_bytes == 5u);
    CHECK_THROWS_AS(nlohmann::json::parse(R"({"limit_bytes":"lots"})").get<Grant>(), nlohmann::json::exception);
}

TEST_CASE("quota state as JSON", "[quota]")
{
    CHECK(quota_json(eval("user1", 10 * kMB, 6 * kMB)).dump() ==
          R"({"limit_bytes":20000000,"period_end":"2024-11-24T00:00:00Z","period_start":"2024-11-23T00:00:00Z",)"
          R"("plan":"small","state":"warning","used_bytes":16000000,"user":"user1"})");
    CHECK(quota_json(eval("slowpoke", 1, 2)).dump() ==
          R"({"limit_bytes":null,"period_end":"2024-12-01T00:00:00Z","period_start":"2024-11-01T00:00:00Z",)"
          R"("plan":"slow","state":"ok","used_bytes":3,"user":"slowpoke"})");
    const nlohmann::json trial = quota_json(eval("trial-x", 0, 0, parse_time("2027-01-01")));
    CHECK(trial["period_start"] == "1970-01-01T00:00:00Z");
    CHECK(trial["period_end"].is_null());
    CHECK(trial["state"] == "expired");
    for (State s : {State::ok, State::warning, State::exceeded, State::blocked, State::throttled, State::expired}) {
        QuotaState q;
        q.state = s;
        CHECK(quota_json(q)["state"] == to_string(s));
    }
}

TEST_CASE("usage rolls over into a new period from zero", "[quota]")
{
    const Period nov{parse_time("2024-11-01"), parse_time("2024-12-01")};
    const Period dec{parse_time("2024-12-01"), parse_time("2025-01-01")};
    PeriodUsage usage = roll(PeriodUsage{}, nov);
    CHECK(usage == PeriodUsage{nov.start, 0, 0});
    usage = add(usage, 10, 20);
    usage = add(roll(usage, nov), 1, 2);
    CHECK(usage == PeriodUsage{nov.start, 11, 22});
    CHECK(roll(usage, dec) == PeriodUsage{dec.start, 0, 0});
    CHECK(add(PeriodUsage{0, UINT64_MAX - 1, 0}, 5, 0).upload == UINT64_MAX);

    // A switch to a longer period keeps what was counted since, to a
    // shorter (or later) one starts afresh.
    const Period nov23{parse_time("2024-11-23"), parse_time("2024-11-24")};
    const PeriodUsage daily{nov23.start, 5, 5};
    CHECK(roll(daily, nov) == daily);
    const Period nov24{parse_time("2024-11-24"), parse_time("2024-11-25")};
    CHECK(roll(PeriodUsage{nov.start, 5, 5}, nov24) == PeriodUsage{nov24.start, 0, 0});
    CHECK(roll(PeriodUsage{0, 5, 5}, Period{0, kForever}) == PeriodUsage{0, 5, 5});
}

TEST_CASE("thresholds fire once per period", "[quota]")
{
    const std::vector<int> thresholds = {75, 90, 100};
    std::set<int> fired;
    CHECK(thresholds_to_fire(thresholds, 740, 1000, fired).empty());
    CHECK(thresholds_to_fire(thresholds, 750, 1000, fired) == std::vector<int>{75});
    fired.insert(75);
    CHECK(thresholds_to_fire(thresholds, 800, 1000, fired).empty());
    CHECK(thresholds_to_fire(thresholds, 1000, 1000, fired) == std::vector<int>{90, 100}); // a jump: both
    fired.insert({90, 100});
    CHECK(thresholds_to_fire(thresholds, 5000, 1000, fired).empty());
    // A new period: the caller clears its set.
    CHECK(thresholds_to_fire(thresholds, 950, 1000, {}) == std::vector<int>{75, 90});
    CHECK(thresholds_to_fire({150, 100}, 1600, 1000, {}) == std::vector<int>{100, 150});
    CHECK(thresholds_to_fire(thresholds, 0, 0, {}) == std::vector<int>{75, 90, 100});
    CHECK(thresholds_to_fire(thresholds, UINT64_MAX, UINT64_MAX, {}) == std::vector<int>{75, 90, 100});
    CHECK(thresholds_to_fire(thresholds, UINT64_MAX / 2, UINT64_MAX, {}).empty());
}
