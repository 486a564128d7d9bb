// QuotaController enforcing into real maps (needs root): after every cycle
// of a random run, the kernel's policies are what a fresh controller's full
// walk sets from the same store, config and sessions. The controller skips
// its walk when nothing it depends on changed; this is what says the skip
// never leaves a policy stale.
#include <catch2/catch.hpp>

#include "pin_guard.h"

#include <map>
#include <random>
#include <set>

#include "../unit/quota_support.h"
#include "../unit/store_support.h"
#include "datapath.h"
#include "enforcer.h"
#include "quota_controller.h"

using namespace vpnmeter;
using namespace vpnmeter::testing;

namespace {

constexpr uint64_t kMB = 1'000'000;

// The maps of a datapath under a private pin path, and an Enforcer on them.
struct Kernel {
    PinGuard guard{unique_pin_path("vpnmeter-quota")};
    std::optional<Datapath> datapath;
    std::optional<Enforcer> enforcer;

    Kernel()
    {
        auto loaded = Datapath::load({guard.path(), 256});
        if (!loaded) FAIL("Datapath::load: " << loaded.error().message());
        datapath.emplace(std::move(loaded.value()));
        auto opened = Enforcer::open(guard.path());
        if (!opened) FAIL("Enforcer::open: " << opened.error().message());
        enforcer.emplace(std::move(opened.value()));
    }
    std::map<ClientKey, PolicyEntry> policies() const
    {
        auto all = enforcer->policies();
        if (!all) FAIL("policies: " << all.error().message());
        return all.value();
    }
};

// Two configs to reload between: limits, an upload speed, actions.
std::vector<QuotaConfig> configs()
{
    auto plan = [](const char* name, uint64_t limit, Plan::Action action = Plan::Action::block) {
        Plan p;
        p.name = name;
        p.limit_bytes = limit;
        p.period = Plan::PeriodKind::daily;
        p.action = action;
        return p;
    };
    QuotaConfig a;
    a.thresholds = {50, 100};
    Plan slow = plan("slow", 60 * kMB);
    slow.speed_upload_bps = 8'000'000;
    a.plans = {plan("small", 30 * kMB), slow, plan("watch", 20 * kMB, Plan::Action::none),
               plan("kick", 40 * kMB, Plan::Action::disconnect)};
    a.users = {{"u0", "small"}, {"u1", "slow"}, {"u2", "watch"}, {"u3", "kick"}, {"u4", "unlimited"}};
    a.default_plan = "small";
    QuotaConfig b = a;
    b.plans[0].limit_bytes = 50 * kMB;
    b.users = {{"u0", "slow"}, {"u1", "small"}, {"u2", "small"}};
    return {a, b};
}

// The policies by key, each user's slot replaced by the user's name (two
// controllers number their slots apart); fails if one user holds two slots
// or two users one.
std::map<ClientKey, std::pair<std::string, PolicyEntry>> by_user(const std::map<ClientKey, PolicyEntry>& policies,
                                                                 const std::map<ClientKey, std::string>& owner)
{
    std::map<ClientKey, std::pair<std::string, PolicyEntry>> out;
    std::map<uint32_t, std::string> user_of_slot;
    std::map<std::string, uint32_t> slot_of_user;
    for (auto [key, policy] : policies) {
        REQUIRE(owner.count(key)); // never a policy for an address nobody holds
        const std::string& user = owner.at(key);
        auto [slot, fresh] = user_of_slot.try_emplace(policy.user_slot, user);
        REQUIRE(slot->second == user);
        auto [held, first] = slot_of_user.try_emplace(user, policy.user_slot);
        REQUIRE(held->second == policy.user_slot);
        policy.user_slot = 0;
        out[key] = {user, policy};
    }
    return out;
}

} // namespace

TEST_CASE("the policies a controller leaves in the kernel are a fresh full walk's, cycle after cycle",
          "[bpf][quota][enforcer]")
{
    TempDir dir;
    Store store = open_store(options_in(dir));
    const std::vector<QuotaConfig> plans = configs();
    size_t config = 0;
    Kernel kernel;
    QuotaController quotas(plans[config], store, &*kernel.enforcer, nullptr, nullptr);
    REQUIRE(quotas.load());

    std::mt19937 rng(5);
    auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
    const std::vector<std::string> users{"u0", "u1", "u2", "u3", "u4", "u5"};
    std::map<std::string, std::set<uint32_t>> online; // user -> the last octets of their addresses
    int64_t now = utc(2026, 3, 30, 22);
    std::map<uint32_t, int> steps_with; // policy flag -> steps whose kernel held it
    int steps_kicking = 0;
    for (int step = 0; step < 150; ++step) {
        CAPTURE(step, now, config);
        switch (pick(10)) {
        case 0: case 1: { // sessions come and go
            const std::string& user = users[pick(users.size())];
            if (pick(2) && !online[user].empty()) online[user].erase(online[user].begin());
            else online[user].insert(static_cast<uint32_t>(2 + pick(3)));
            if (online[user].empty()) online.erase(user);
            break;
        }
        case 2: // a grant: a top-up, or an expiry soon
            REQUIRE(put_topup_or_expiry(quotas, users[pick(4)], pick(2), 25 * kMB, now + 60 * pick(120), now) == 200);
            break;
        case 3:
            config = 1 - config;
            quotas.reload(plans[config]);
            break;
        case 4: // time passes: into a new day now and then
            now += static_cast<int64_t>(pick(3) == 0 ? 3600 * pick(30) : 60 * pick(30));
            break;
        default:
            break;
        }
        // A cycle: some of the users online move a few MB.
        CycleCommit commit;
        commit.time = now;
        for (const auto& [user, octets] : online)
            if (pick(2)) commit.user_usage[user] = Traffic{{1, pick(4) * kMB}, {1, pick(6) * kMB}};
        quotas.plan(commit, now);
        must_commit(store, commit);
        UserKeys keys;
        std::map<ClientKey, std::string> owner;
        for (const auto& [user, octets] : online) {
            for (uint32_t octet : octets) {
                const ClientKey key = ClientKey::parse(1, "10.7." + user.substr(1) + "." + std::to_string(octet));
                keys.emplace_back(user, key);
                owner[key] = user;
            }
        }
        quotas.accept(commit, now);
        quotas.enforce(keys, now);
        const std::vector<std::string> kicked = quotas.take_disconnects();

        // A fresh controller on maps of its own walks everything.
        Kernel reference;
        QuotaController fresh(plans[config], store, &*reference.enforcer, nullptr, nullptr);
        REQUIRE(fresh.load());
        fresh.enforce(keys, now);
        const auto held = kernel.policies();
        REQUIRE(by_user(held, owner) == by_user(reference.policies(), owner));
        REQUIRE(kicked == fresh.take_disconnects()); // asked again every cycle while they are over
        std::set<uint32_t> flags;
        for (const auto& [key, policy] : held)
            for (uint32_t flag : {VPNMETER_POLICY_BLOCK, VPNMETER_POLICY_POLICED, VPNMETER_POLICY_BUDGET})
                if (policy.flags & flag) flags.insert(flag);
        for (uint32_t flag : flags) ++steps_with[flag];
        steps_kicking += !kicked.empty();
    }
    CHECK(steps_kicking > 5);
    // The run went through blocks, policers and budgets.
    for (uint32_t flag : {VPNMETER_POLICY_BLOCK, VPNMETER_POLICY_POLICED, VPNMETER_POLICY_BUDGET}) {
        CAPTURE(flag);
        CHECK(steps_with[flag] > 10);
    }
}
