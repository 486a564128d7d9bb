#include <catch2/catch.hpp>

#include "quota/plan.h"

using namespace vpnmeter;

namespace {

QuotaConfig config_with(std::vector<PlanAssignment> users, std::string default_plan = kUnlimitedPlan)
{
    QuotaConfig config;
    for (const char* name : {"small", "big", "trial", "staff"}) {
        Plan plan;
        plan.name = name;
        config.plans.push_back(plan);
    }
    config.users = std::move(users);
    config.default_plan = std::move(default_plan);
    return config;
}

std::string plan_name(const QuotaConfig& config, const std::string& user)
{
    const Plan* plan = plan_for(config, user);
    return plan ? plan->name : "(none)";
}

} // namespace

TEST_CASE("an exact name wins over any glob", "[quota]")
{
    const QuotaConfig config = config_with({{"trial-*", "trial"}, {"trial-bob", "big"}, {"alice", "small"}});
    CHECK(plan_name(config, "alice") == "small");
    CHECK(plan_name(config, "trial-bob") == "big"); // listed after the glob, still wins
    CHECK(plan_name(config, "trial-carol") == "trial");
}

TEST_CASE("globs are tried in file order", "[quota]")
{
    const QuotaConfig config = config_with({{"staff-*", "staff"}, {"*-vip", "big"}, {"*", "small"}});
    CHECK(plan_name(config, "staff-vip") == "staff");
    CHECK(plan_name(config, "guest-vip") == "big");
    CHECK(plan_name(config, "guest") == "small");
    const QuotaConfig reversed = config_with({{"*-vip", "big"}, {"staff-*", "staff"}});
    CHECK(plan_name(reversed, "staff-vip") == "big");
    CHECK(plan_name(config_with({{"user?", "small"}, {"[ab]*", "big"}}), "user7") == "small");
    CHECK(plan_name(config_with({{"user?", "small"}, {"[ab]*", "big"}}), "bob") == "big");
}

TEST_CASE("unmatched users get the default plan, if any", "[quota]")
{
    CHECK(plan_name(config_with({{"alice", "small"}}), "bob") == "(none)");
    CHECK(plan_name(config_with({{"alice", "small"}}, "big"), "bob") == "big");
    CHECK(plan_name(config_with({{"alice", "small"}}, "big"), "alice") == "small");
    CHECK(plan_name(config_with({}), "anyone") == "(none)");
}

TEST_CASE("\"unlimited\" means no plan, unless one has that name", "[quota]")
{
    // An exact line can exempt a user from a glob or the default.
    QuotaConfig config = config_with({{"boss", kUnlimitedPlan}, {"*", "small"}}, "big");
    CHECK(plan_name(config, "boss") == "(none)");
    CHECK(plan_name(config, "worker") == "small");

    Plan named;
    named.name = kUnlimitedPlan;
    named.speed_download_bps = 100'000'000;
    config.plans.push_back(named);
    CHECK(plan_name(config, "boss") == "unlimited");
    CHECK(plan_for(config, "boss")->speed_download_bps == 100'000'000);
}

TEST_CASE("plan enums have their config names", "[quota]")
{
    CHECK(std::string(to_string(Plan::Direction::download)) == "download");
    CHECK(std::string(to_string(Plan::PeriodKind::weekly)) == "weekly");
    CHECK(std::string(to_string(Plan::Action::throttle)) == "throttle");
}
