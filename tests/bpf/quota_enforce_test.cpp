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

// What the kernel's policies are compared with after each step.
enum class Reference {
    fresh, // a controller loaded from the store that walks everything once
    twin,  // one with the same history that walks everything every cycle
};

// Random steps (sessions coming and going, grants, reloads, time, usage) of
// `user_count` users: after each, the policies the controller leaves are
// the reference's. `slots`: too few makes users wait for one; `shared`: now
// and then an address is listed for two users' sessions at once.
void random_steps(Reference reference, int steps, size_t user_count, uint32_t slots, bool shared)
{
    TempDir dir;
    Store store = open_store(options_in(dir));
    const std::vector<QuotaConfig> plans = configs();
    size_t config = 0;
    Kernel kernel;
    QuotaController quotas(plans[config], store, &*kernel.enforcer, nullptr, nullptr, slots);
    REQUIRE(quotas.load());
    Kernel twin_kernel;
    QuotaController twin(plans[config], store, &*twin_kernel.enforcer, nullptr, nullptr, slots);
    REQUIRE(twin.load());

    std::mt19937 rng(5);
    auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
    std::vector<std::string> users;
    for (size_t i = 0; i < user_count; ++i) users.push_back("u" + std::to_string(i));
    std::map<std::string, std::set<uint32_t>> online; // user -> the last octets of their addresses (100+: shared, 200+: pooled)
    int64_t now = utc(2026, 3, 30, 22);
    std::map<uint32_t, int> steps_with; // policy flag -> steps whose kernel held it
    int steps_kicking = 0, steps_waiting = 0, steps_sharing = 0;
    for (int step = 0; step < steps; ++step) {
        CAPTURE(step, now, config);
        switch (pick(11)) {
        case 0: case 1: case 5: { // sessions come and go
            const std::string& user = users[pick(users.size())];
            if (pick(2) && !online[user].empty()) {
                online[user].erase(online[user].begin());
            } else if (shared && pick(3) == 0) { // listed for another user's session too, now and then
                online[user].insert(static_cast<uint32_t>(100 + pick(3)));
            } else if (const uint32_t pooled = static_cast<uint32_t>(200 + pick(3)); pick(3) == 0) {
                // from a pool: held by one user at a time, by another later
                if (std::none_of(online.begin(), online.end(), [&](const auto& o) { return o.second.count(pooled); }))
                    online[user].insert(pooled);
            } else {
                online[user].insert(static_cast<uint32_t>(2 + pick(3)));
            }
            if (online[user].empty()) online.erase(user);
            break;
        }
        case 6: // a pooled address goes from its user to another within one cycle
            for (auto held = online.begin(); held != online.end(); ++held) {
                auto pooled = held->second.lower_bound(200);
                if (pooled == held->second.end()) continue;
                const uint32_t octet = *pooled;
                held->second.erase(pooled);
                if (held->second.empty()) online.erase(held);
                online[users[pick(users.size())]].insert(octet);
                break;
            }
            break;
        case 2: { // a grant: a top-up, or an expiry soon
            const std::string& user = users[pick(4)];
            const bool topup = pick(2);
            const int64_t expires = now + 60 * static_cast<int64_t>(pick(120));
            REQUIRE(put_topup_or_expiry(quotas, user, topup, 25 * kMB, expires, now) == 200);
            REQUIRE(put_topup_or_expiry(twin, user, topup, 25 * kMB, expires, now) == 200);
            break;
        }
        case 3:
            config = 1 - config;
            quotas.reload(plans[config]);
            twin.reload(plans[config]);
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
        std::map<ClientKey, std::string> owner; // of a shared address: the user last in name order
        for (const auto& [user, octets] : online) {
            for (uint32_t octet : octets) {
                const std::string subnet = octet >= 200 ? "98" : octet >= 100 ? "99" : user.substr(1);
                const ClientKey key = ClientKey::parse(1, "10.7." + subnet + "." + std::to_string(octet));
                keys.emplace_back(user, key);
                steps_sharing += owner.count(key);
                owner[key] = user;
            }
        }
        quotas.accept(commit, now);
        quotas.enforce(keys, now);
        const std::vector<std::string> kicked = quotas.take_disconnects();
        const auto held = kernel.policies();

        if (reference == Reference::fresh) {
            // A fresh controller on maps of its own walks everything.
            Kernel fresh_kernel;
            QuotaController fresh(plans[config], store, &*fresh_kernel.enforcer, nullptr, nullptr, slots);
            REQUIRE(fresh.load());
            fresh.enforce(keys, now);
            REQUIRE(by_user(held, owner) == by_user(fresh_kernel.policies(), owner));
            REQUIRE(kicked == fresh.take_disconnects()); // asked again every cycle while they are over
        } else {
            // Who got a slot depends on who came first: the twin saw the
            // same, and a reload makes it walk everything. Its slots are
            // numbered alike (an address two users list has the slot of
            // one of them: which one is part of what must match).
            twin.accept(commit, now);
            twin.reload(plans[config]);
            twin.enforce(keys, now);
            REQUIRE(held == twin_kernel.policies());
            REQUIRE(kicked == twin.take_disconnects());
        }
        std::set<uint32_t> slots_held;
        for (const auto& [key, policy] : held) slots_held.insert(policy.user_slot);
        steps_waiting += slots_held.size() == slots && online.size() > slots;
        std::set<uint32_t> flags;
        for (const auto& [key, policy] : held)
            for (uint32_t flag : {VPNMETER_POLICY_BLOCK, VPNMETER_POLICY_POLICED, VPNMETER_POLICY_BUDGET})
                if (policy.flags & flag) flags.insert(flag);
        for (uint32_t flag : flags) ++steps_with[flag];
        steps_kicking += !kicked.empty();
    }
    CHECK(steps_kicking > 5);
    if (slots < users.size()) CHECK(steps_waiting > 10);
    if (shared) CHECK(steps_sharing > 10);
    // The run went through blocks, policers and budgets.
    for (uint32_t flag : {VPNMETER_POLICY_BLOCK, VPNMETER_POLICY_POLICED, VPNMETER_POLICY_BUDGET}) {
        CAPTURE(flag);
        CHECK(steps_with[flag] > 10);
    }
}

} // namespace

TEST_CASE("the policies a controller leaves in the kernel are a fresh full walk's, cycle after cycle",
          "[bpf][quota][enforcer]")
{
    random_steps(Reference::fresh, 150, 6, VPNMETER_MAX_USERS, false);
}

TEST_CASE("with too few slots and shared addresses, the policies are those of a controller walking everything",
          "[bpf][quota][enforcer]")
{
    random_steps(Reference::twin, 600, 12, 4, true);
}

TEST_CASE("a slot given back after those waiting were visited is theirs the next cycle, though nothing else changed",
          "[bpf][quota][enforcer]")
{
    TempDir dir;
    Store store = open_store(options_in(dir));
    QuotaConfig config = configs()[0]; // everyone on a plan by default
    Kernel kernel;
    QuotaController quotas(config, store, &*kernel.enforcer, nullptr, nullptr, /*slots=*/1);
    REQUIRE(quotas.load());
    const int64_t now = utc(2026, 3, 30, 22);
    const ClientKey waiter = ClientKey::parse(1, "10.7.0.2"), holder = ClientKey::parse(1, "10.7.9.2");
    const UserKeys both{{"a", waiter}, {"b", holder}};
    // b takes the only slot; a, before b in name order, comes later and waits.
    quotas.enforce({{"b", holder}}, now);
    quotas.enforce(both, now);
    CHECK(kernel.policies().count(holder) == 1);
    CHECK(kernel.policies().count(waiter) == 0);
    // b is on no plan now: the walk visits a (no slot yet), then b gives its slot back.
    config.users.insert(config.users.begin(), {"b", "unlimited"});
    quotas.reload(config);
    quotas.enforce(both, now);
    CHECK(kernel.policies().empty());
    // The next cycle, the same sessions: a has the slot.
    quotas.enforce(both, now + 1);
    CHECK(kernel.policies().count(waiter) == 1);
}
