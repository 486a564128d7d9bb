// QuotaController without a kernel (no enforcer): period usage and alerts
// planned into the commit, and what it remembers across a restart.
#include <catch2/catch.hpp>

#include <random>
#include <tuple>

#include "quota_controller.h"
#include "quota_support.h"
#include "store_support.h"

using namespace vpnmeter;
using namespace vpnmeter::testing;

namespace {

constexpr uint64_t kGB = 1'000'000'000;

QuotaConfig one_plan()
{
    QuotaConfig config;
    Plan plan;
    plan.name = "10G";
    plan.limit_bytes = 10 * kGB;
    config.plans = {plan};
    config.default_plan = plan.name;
    config.thresholds = {50, 90, 100};
    return config;
}

// One cycle in which each user in `moved` downloads that many bytes:
// planned, committed, accepted. Returns the alerts it fired.
std::vector<AlertRecord> cycle(QuotaController& quotas, Store& store, const std::map<std::string, uint64_t>& moved,
                               int64_t now)
{
    CycleCommit commit;
    commit.time = now;
    for (const auto& [user, bytes] : moved) commit.user_usage[user] = Traffic{{}, {1, bytes}};
    quotas.plan(commit, now);
    must_commit(store, commit);
    quotas.accept(commit, now);
    return commit.alerts_fired;
}

std::vector<int> thresholds(const std::vector<AlertRecord>& alerts, const std::string& user)
{
    std::vector<int> out;
    for (const auto& alert : alerts)
        if (alert.user == user) out.push_back(alert.threshold);
    return out;
}

} // namespace

TEST_CASE("alerts fire once per period, also across a restart of the daemon", "[quota]")
{
    TempDir dir;
    const auto options = options_in(dir);
    const int64_t may = utc(2024, 5, 10, 12), june = utc(2024, 6, 2, 12);
    {
        Store store = open_store(options);
        QuotaController quotas(one_plan(), store, nullptr, nullptr, nullptr);
        REQUIRE(quotas.load());
        CHECK(thresholds(cycle(quotas, store, {{"alice", 6 * kGB}, {"bob", 1 * kGB}}, may), "alice") ==
              std::vector<int>{50});
        CHECK(cycle(quotas, store, {{"alice", 1 * kGB}}, may + 60).empty()); // 70 %: nothing new
    }
    // A new daemon on the same store remembers what fired in May.
    Store store = open_store(options);
    QuotaController quotas(one_plan(), store, nullptr, nullptr, nullptr);
    REQUIRE(quotas.load());
    auto fired = cycle(quotas, store, {{"alice", 3 * kGB}, {"bob", 4 * kGB}}, may + 120); // alice 100 %, bob 50 %
    CHECK(thresholds(fired, "alice") == std::vector<int>{90, 100});
    CHECK(thresholds(fired, "bob") == std::vector<int>{50});
    CHECK(cycle(quotas, store, {{"alice", 1}, {"bob", 1}}, may + 180).empty());
    // June is a new period: the thresholds fire again, once.
    CHECK(thresholds(cycle(quotas, store, {{"alice", 5 * kGB}}, june), "alice") == std::vector<int>{50});
    CHECK(cycle(quotas, store, {{"alice", 1}}, june + 60).empty());
    CHECK(must(store.alerts_fired("alice", utc(2024, 6, 1))) == std::set<int>{50});
    CHECK(must(store.alerts_fired("alice", utc(2024, 5, 1))) == std::set<int>{50, 90, 100});
}

TEST_CASE("the users' quota states for /metrics: those with a plan among usage, grants and the connected",
          "[quota]")
{
    TempDir dir;
    Store store = open_store(options_in(dir));
    QuotaConfig config = one_plan();
    config.default_plan = kUnlimitedPlan;
    config.users = {{"al*", "10G"}};
    QuotaController quotas(config, store, nullptr, nullptr, nullptr);
    REQUIRE(quotas.load());
    const int64_t now = utc(2024, 5, 10, 12);
    cycle(quotas, store, {{"alice", 6 * kGB}, {"bob", 1}}, now);                      // usage on record
    REQUIRE(quotas.put_quota("dave", R"({"plan": "10G"})", now).status == 200);     // a grant
    const std::vector<std::string_view> connected{"carol", "albert", "bob", "albert"}; // any order, repeats
    std::vector<std::string> users;
    for (const QuotaState& state : quotas.planned_states(connected, now)) users.push_back(state.user);
    CHECK(users == std::vector<std::string>{"albert", "alice", "dave"}); // bob and carol have no plan
    // The gauges are the same users' states, in the same order.
    UserGauges expected;
    for (const QuotaState& state : quotas.planned_states(connected, now))
        expected.emplace_back(state.user, QuotaGauges{state.limit_bytes, state.used_bytes, state.state});
    CHECK(quotas.gauges(connected, now) == expected);
    CHECK(expected.at(1).second == QuotaGauges{10 * kGB, 6 * kGB, QuotaState::State::warning}); // alice, 60%
    // Metering only: nobody has a plan.
    QuotaController unplanned(QuotaConfig{}, store, nullptr, nullptr, nullptr);
    REQUIRE(unplanned.load());
    std::vector<std::string> with_grant;
    for (const QuotaState& state : unplanned.planned_states(connected, now)) with_grant.push_back(state.user);
    CHECK(with_grant.empty()); // dave's grant names a plan this config does not have
}

TEST_CASE("kept quota states change with usage, time, grants and reloads as fresh ones do", "[quota]")
{
    TempDir dir;
    Store store = open_store(options_in(dir));
    QuotaConfig daily = one_plan();
    daily.plans[0].period = Plan::PeriodKind::daily;
    std::vector<QuotaConfig> configs{one_plan(), daily};
    size_t config = 0;
    QuotaController kept(configs[config], store, nullptr, nullptr, nullptr);
    REQUIRE(kept.load());
    const std::vector<std::string> users{"alice", "bob", "carol", "dave"};
    const std::vector<std::string_view> connected(users.begin(), users.end());
    auto fields = [](const QuotaState& s) {
        return std::tuple(s.user, s.plan, s.limit_bytes, s.used_bytes, s.period.start, s.period.end, s.state,
                          s.remaining_bytes, s.block, s.download_bps, s.holds_until);
    };
    std::mt19937 rng(7);
    auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
    int64_t now = utc(2024, 5, 30, 20);
    for (int step = 0; step < 400; ++step) {
        CAPTURE(step, now);
        switch (pick(8)) {
        case 0: // a top-up, or an expiry soon
            REQUIRE(put_topup_or_expiry(kept, users[pick(4)], pick(2), 3 * kGB, now + 60 * pick(600), now) == 200);
            break;
        case 1:
            config = 1 - config;
            kept.reload(configs[config]);
            break;
        default: {
            std::map<std::string, uint64_t> moved;
            for (const auto& user : users)
                if (pick(3) == 0) moved[user] = pick(2 * kGB);
            if (!moved.empty()) cycle(kept, store, moved, now);
        }
        }
        QuotaController fresh(configs[config], store, nullptr, nullptr, nullptr);
        REQUIRE(fresh.load());
        const auto a = kept.planned_states(connected, now), b = fresh.planned_states(connected, now);
        REQUIRE(a.size() == b.size());
        for (size_t i = 0; i < a.size(); ++i) REQUIRE(fields(a[i]) == fields(b[i]));
        now += static_cast<int64_t>(pick(4) == 0 ? pick(3 * 86400) : pick(1800)); // across days and months
    }
}

TEST_CASE("a planned state counts only once its commit is accepted", "[quota]")
{
    TempDir dir;
    Store store = open_store(options_in(dir));
    QuotaController quotas(one_plan(), store, nullptr, nullptr, nullptr);
    REQUIRE(quotas.load());
    const int64_t may = utc(2024, 5, 10, 12);
    cycle(quotas, store, {{"alice", 1 * kGB}}, may); // alice is on record
    auto used = [&](int64_t now) {
        const auto gauges = quotas.gauges({"alice"}, now);
        REQUIRE(gauges.size() == 1);
        return gauges[0].second.used_bytes;
    };
    REQUIRE(used(may) == 1 * kGB);

    // Planned (its state evaluated with 9 GB more), then the commit failed:
    // nothing of it is accepted, and the state is that of the 1 GB on record.
    CycleCommit failed;
    failed.time = may + 60;
    failed.user_usage["alice"] = Traffic{{}, {1, 8 * kGB}};
    quotas.plan(failed, may + 60);
    CHECK(failed.quota_usage.at("alice").download == 9 * kGB);
    CHECK(used(may + 60) == 1 * kGB);
    CHECK(quotas.current_state("alice", may + 60).used_bytes == 1 * kGB);

    // The next cycle holds those bytes again, with its own.
    cycle(quotas, store, {{"alice", 8 * kGB + 5}}, may + 120);
    CHECK(used(may + 120) == 9 * kGB + 5);
    CHECK(quotas.current_state("alice", may + 120).state == QuotaState::State::warning);
}

TEST_CASE("a commit taken tentatively and put back leaves the quotas as if it was never taken", "[quota]")
{
    // Two controllers over two stores see the same cycles; when a commit
    // fails, one took it tentatively and put it back, the other never took
    // it. Their states agree all along; a tentative accept that lands is an
    // accept.
    TempDir dir, twin_dir;
    Store store = open_store(options_in(dir));
    Store twin_store = open_store(options_in(twin_dir));
    QuotaConfig daily = one_plan();
    daily.plans[0].period = Plan::PeriodKind::daily;
    QuotaController quotas(daily, store, nullptr, nullptr, nullptr), twin(daily, twin_store, nullptr, nullptr, nullptr);
    REQUIRE(quotas.load());
    REQUIRE(twin.load());
    const std::vector<std::string> users{"alice", "bob", "carol", "dave"};
    std::vector<std::string_view> all(users.begin(), users.end());
    std::mt19937 rng(23);
    auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
    int64_t now = utc(2024, 5, 30, 20);
    size_t put_back = 0, landed = 0, not_undoable = 0;
    for (int step = 0; step < 300; ++step) {
        CAPTURE(step, now);
        CycleCommit commit, twin_commit;
        commit.time = twin_commit.time = now;
        for (const auto& user : users)
            if (pick(2)) commit.user_usage[user] = Traffic{{1, pick(kGB / 4)}, {1, pick(kGB)}};
        if (pick(8) == 0) commit.user_usage["new" + std::to_string(step)] = Traffic{{}, {1, 5}}; // no record yet
        twin_commit.user_usage = commit.user_usage;
        quotas.plan(commit, now);
        twin.plan(twin_commit, now);
        REQUIRE(commit.quota_usage == twin_commit.quota_usage);
        auto tentative = quotas.accept_tentatively(commit, now);
        REQUIRE(tentative.has_value() == QuotaController::undoable(commit));
        if (!tentative) ++not_undoable;
        if (tentative && pick(3) == 0) { // the store failed: nothing of it counts
            quotas.undo(std::move(*tentative));
            ++put_back;
        } else {
            must_commit(store, commit);
            must_commit(twin_store, twin_commit);
            if (!tentative) quotas.accept(commit, now);
            twin.accept(twin_commit, now);
            ++landed;
        }
        REQUIRE(quotas.gauges(all, now) == twin.gauges(all, now));
        REQUIRE(quotas.quotas(now) == twin.quotas(now));
        now += static_cast<int64_t>(pick(5) == 0 ? pick(2 * 86400) : pick(1800));
    }
    CHECK(put_back > 40);
    CHECK(landed > 100);
    CHECK(not_undoable > 5); // alerts fired
}
