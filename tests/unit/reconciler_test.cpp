#include <catch2/catch.hpp>

#include <numeric>
#include <random>
#include <set>

#include "reconciler.h"

using namespace vpnmeter;

namespace {

constexpr uint32_t kTun0 = 7;
const Interfaces kInterfaces{{{"tun0", kTun0}}, {{kTun0, "tun0"}}};

Session connected(const std::string& user, uint64_t cid, const std::string& address, int64_t start = 1000)
{
    Session s;
    s.id = session_id("udp", std::to_string(cid), start);
    s.user = user;
    s.instance = "udp";
    s.interface = "tun0";
    s.addresses = {address};
    s.real_address = "192.0.2.1:1194";
    s.start = start;
    return s;
}

// Drives a Reconciler the way the daemon does: raw counters in, one commit
// per cycle, with running totals to check the invariants.
struct Harness {
    CounterSnapshot raw;
    CounterSnapshot baseline; // what the last cycle read
    std::optional<Cycle> counters; // the last cycle: its commit's address updates view it
    Reconciler reconciler{std::nullopt, {}};
    std::map<std::string, Session> sessions;           // as committed
    std::map<std::string, Traffic> users, unattributed; // sums of increments
    int64_t now = 2000;

    void traffic(const std::string& address, uint64_t up, uint64_t down)
    {
        const ClientKey key = ClientKey::parse(kTun0, address);
        raw.clients[key].upload += Count{1, up};
        raw.clients[key].download += Count{1, down};
        raw.interfaces[kTun0].total.upload += Count{1, up};
        raw.interfaces[kTun0].total.download += Count{1, down};
    }
    void non_ip(uint64_t up)
    {
        raw.interfaces[kTun0].total.upload += Count{1, up};
        raw.interfaces[kTun0].unattributed.upload += Count{1, up};
    }

    CycleCommit cycle(const ConnectedSessions& connected)
    {
        if (counters) baseline = std::move(counters->snapshot);
        counters = cycle_between(raw, baseline);
        CycleCommit commit = reconciler.plan(*counters, connected, kInterfaces, now++);
        reconciler.accept(commit);
        for (const auto& s : commit.sessions) sessions[s.id] = s;
        for (const auto& t : commit.session_totals) sessions[t.session->id] = with_totals(t);
        for (const auto& [user, t] : commit.user_usage) users[user] += t;
        for (const auto& [name, t] : commit.unattributed) unattributed[name] += t;
        return commit;
    }

    // sum(sessions) + unattributed == interface totals, to the byte.
    void check_invariant() const
    {
        Traffic sum = unattributed.count("tun0") ? unattributed.at("tun0") : Traffic{};
        for (const auto& [id, s] : sessions) sum += s.usage;
        CHECK(sum == raw.interfaces.at(kTun0).total);
        Traffic by_user;
        for (const auto& [user, t] : users) by_user += t;
        Traffic by_session;
        for (const auto& [id, s] : sessions) by_session += s.usage;
        CHECK(by_user == by_session);
    }
};

} // namespace

TEST_CASE("bytes go to the session holding the address", "[reconciler]")
{
    Harness h;
    const Session alice = connected("alice", 1, "10.8.0.2");
    const Session bob = connected("bob", 2, "fd00:8::1000");
    h.cycle({{"udp", {alice, bob}}});
    h.traffic("10.8.0.2", 100, 1000);
    h.traffic("fd00:8::1000", 50, 500);
    h.traffic("10.8.0.99", 7, 0); // nobody's
    h.non_ip(42);
    h.cycle({{"udp", {alice, bob}}});

    CHECK(h.sessions.at(alice.id).usage == Traffic{{1, 100}, {1, 1000}});
    CHECK(h.sessions.at(bob.id).usage == Traffic{{1, 50}, {1, 500}});
    CHECK(h.users.at("alice") == Traffic{{1, 100}, {1, 1000}});
    CHECK(h.unattributed.at("tun0") == Traffic{{2, 49}, {1, 0}});
    h.check_invariant();
}

TEST_CASE("an address listed for two sessions goes to the one listed last, every cycle", "[reconciler]")
{
    Harness h;
    const Session alice = connected("alice", 1, "10.8.0.2");
    Session two = connected("alice", 3, "10.8.0.4");
    two.addresses.push_back("10.8.0.5");
    h.cycle({{"udp", {alice, two}}});
    const ClientKey shared = ClientKey::parse(kTun0, "10.8.0.2"), fifth = ClientKey::parse(kTun0, "10.8.0.5");
    CHECK(h.reconciler.owners().at(shared) == alice.id);
    // A new session listed before alice with her address (a reconnect the
    // server has not finished): alice, listed after it, keeps the address.
    const Session bob = connected("bob", 2, "10.8.0.2", 1001);
    h.cycle({{"udp", {bob, alice, two}}});
    CHECK(h.reconciler.owners().at(shared) == alice.id);
    // Listed after her, the newcomer takes it; from then on the order decides.
    const Session carol = connected("carol", 4, "10.8.0.5", 1002);
    h.cycle({{"udp", {bob, alice, two, carol}}});
    CHECK(h.reconciler.owners().at(fifth) == carol.id);
    h.cycle({{"udp", {bob, carol, alice, two}}});
    CHECK(h.reconciler.owners().at(fifth) == two.id);
    CHECK(h.reconciler.owners().at(shared) == alice.id);
    h.traffic("10.8.0.5", 10, 10);
    h.cycle({{"udp", {bob, carol, alice, two}}});
    CHECK(h.sessions.at(two.id).usage == Traffic{{1, 10}, {1, 10}});
    h.check_invariant();
}

TEST_CASE("a disconnected session is closed at the last value; the next owner starts from it", "[reconciler]")
{
    Harness h;
    const Session alice = connected("alice", 1, "10.8.0.2");
    h.cycle({{"udp", {alice}}});
    h.traffic("10.8.0.2", 100, 1000);
    // Alice's last bytes and her disconnect are seen in the same cycle.
    h.cycle({{"udp", {}}});
    CHECK(h.sessions.at(alice.id).usage == Traffic{{1, 100}, {1, 1000}});
    CHECK(h.sessions.at(alice.id).end.has_value());

    // Bob gets the same address.
    const Session bob = connected("bob", 2, "10.8.0.2", 3000);
    h.cycle({{"udp", {bob}}});
    h.traffic("10.8.0.2", 5, 50);
    h.cycle({{"udp", {bob}}});
    CHECK(h.sessions.at(alice.id).usage == Traffic{{1, 100}, {1, 1000}}); // unchanged
    CHECK(h.sessions.at(bob.id).usage == Traffic{{1, 5}, {1, 50}});
    CHECK(h.users.count("bob"));
    h.check_invariant();
}

TEST_CASE("bytes between two sessions on one address are unattributed", "[reconciler]")
{
    Harness h;
    const Session alice = connected("alice", 1, "10.8.0.2");
    h.cycle({{"udp", {alice}}});
    h.cycle({{"udp", {}}});
    h.traffic("10.8.0.2", 10, 10); // stray packets after the disconnect
    h.cycle({{"udp", {}}});
    CHECK(h.sessions.at(alice.id).usage == Traffic{});
    CHECK(h.unattributed.at("tun0") == Traffic{{1, 10}, {1, 10}});
    h.check_invariant();
}

TEST_CASE("a source that did not answer keeps its sessions open", "[reconciler]")
{
    Harness h;
    const Session alice = connected("alice", 1, "10.8.0.2");
    h.cycle({{"udp", {alice}}});
    h.traffic("10.8.0.2", 10, 20);
    h.cycle({}); // management interface down this cycle
    CHECK(h.sessions.at(alice.id).active());
    CHECK(h.sessions.at(alice.id).usage == Traffic{{1, 10}, {1, 20}});
    h.check_invariant();
}

TEST_CASE("the VPN's own counters are kept beside ours, never mixed in", "[reconciler]")
{
    Harness h;
    Session alice = connected("alice", 1, "10.8.0.2");
    h.cycle({{"udp", {alice}}});
    alice.source_upload_bytes = 5000;
    alice.source_download_bytes = 9000;
    h.traffic("10.8.0.2", 100, 200);
    h.cycle({{"udp", {alice}}});
    const Session& stored = h.sessions.at(alice.id);
    CHECK(stored.source_upload_bytes == 5000);
    CHECK(stored.source_download_bytes == 9000);
    CHECK(stored.usage == Traffic{{1, 100}, {1, 200}});
}

TEST_CASE("two sessions of one user add up to the user", "[reconciler]")
{
    Harness h;
    const Session phone = connected("alice", 1, "10.8.0.2");
    const Session laptop = connected("alice", 2, "10.8.0.3");
    h.cycle({{"udp", {phone, laptop}}});
    h.traffic("10.8.0.2", 1, 2);
    h.traffic("10.8.0.3", 10, 20);
    h.cycle({{"udp", {phone, laptop}}});
    CHECK(h.users.at("alice") == Traffic{{2, 11}, {2, 22}});
    CHECK(h.sessions.size() == 2);
    h.check_invariant();
}

TEST_CASE("a counter reset counts the new values once, never negative", "[reconciler]")
{
    Harness h;
    const Session alice = connected("alice", 1, "10.8.0.2");
    h.cycle({{"udp", {alice}}});
    h.traffic("10.8.0.2", 1000, 1000);
    h.cycle({{"udp", {alice}}});
    // The map was recreated: counters restart from zero.
    const Traffic before = h.sessions.at(alice.id).usage;
    h.raw = {};
    h.traffic("10.8.0.2", 30, 40);
    h.cycle({{"udp", {alice}}});
    CHECK(h.sessions.at(alice.id).usage.upload.bytes == before.upload.bytes + 30);
    CHECK(h.sessions.at(alice.id).usage.download.bytes == before.download.bytes + 40);
}

TEST_CASE("resuming from a checkpoint keeps ownership and counts nothing twice", "[reconciler]")
{
    Harness h;
    const Session alice = connected("alice", 1, "10.8.0.2");
    h.cycle({{"udp", {alice}}});
    h.traffic("10.8.0.2", 100, 100);
    h.cycle({{"udp", {alice}}});

    // "Restart": a new reconciler from what was committed.
    Checkpoint checkpoint;
    for (const auto& [key, owner] : h.reconciler.owners()) checkpoint.addresses[key] = {{}, owner};
    std::vector<Session> open;
    for (const auto& [id, s] : h.sessions) open.push_back(s);
    h.reconciler = Reconciler(checkpoint, open);
    h.traffic("10.8.0.2", 1, 1);
    h.cycle({{"udp", {alice}}});
    CHECK(h.sessions.at(alice.id).usage == Traffic{{2, 101}, {2, 101}});
    h.check_invariant();
}

TEST_CASE("sessions ending together are all closed and their addresses freed; others keep theirs", "[reconciler]")
{
    Harness h;
    const Session alice = connected("alice", 1, "10.8.0.2");
    const Session bob = connected("bob", 2, "10.8.0.3");
    const Session carol = connected("carol", 3, "10.8.0.4");
    h.cycle({{"udp", {alice, bob, carol}}});
    h.traffic("10.8.0.2", 10, 100);
    h.traffic("10.8.0.4", 30, 300);
    // Alice and Carol leave in the same cycle (one with bytes in it, one without: Bob).
    h.cycle({{"udp", {bob}}});
    CHECK(h.sessions.at(alice.id).end.has_value());
    CHECK(h.sessions.at(carol.id).end.has_value());
    CHECK_FALSE(h.sessions.at(bob.id).end.has_value());
    CHECK(h.sessions.at(carol.id).usage == Traffic{{1, 30}, {1, 300}});
    CHECK(h.reconciler.owners() == FlatMap<ClientKey, std::string>{{ClientKey::parse(kTun0, "10.8.0.3"), bob.id}});

    // Their addresses' later bytes are nobody's; Bob's are still his.
    h.traffic("10.8.0.2", 1, 1);
    h.traffic("10.8.0.3", 2, 2);
    h.cycle({{"udp", {bob}}});
    CHECK(h.sessions.at(alice.id).usage == Traffic{{1, 10}, {1, 100}});
    CHECK(h.sessions.at(bob.id).usage == Traffic{{1, 2}, {1, 2}});
    CHECK(h.unattributed.at("tun0") == Traffic{{1, 1}, {1, 1}});
    h.check_invariant();
}

TEST_CASE("a session listed before it has its address takes the address once it is reported", "[reconciler]")
{
    Harness h;
    Session alice = connected("alice", 1, "10.8.0.2");
    Session early = alice;
    early.addresses.clear(); // OpenVPN lists the client before the address is assigned
    h.cycle({{"udp", {early}}});
    h.traffic("10.8.0.2", 10, 10); // nobody's yet
    h.cycle({{"udp", {early}}});
    CHECK(h.sessions.at(alice.id).usage == Traffic{});

    h.traffic("10.8.0.2", 20, 20);
    h.cycle({{"udp", {alice}}}); // the address appears: it is hers from the values just read
    CHECK(h.sessions.at(alice.id).addresses == alice.addresses);
    h.traffic("10.8.0.2", 30, 30);
    h.cycle({{"udp", {early}}}); // an empty list later (a half-written status file) takes nothing away
    h.traffic("10.8.0.2", 40, 40);
    h.cycle({{"udp", {alice}}});
    CHECK(h.sessions.at(alice.id).usage == Traffic{{2, 70}, {2, 70}});
    CHECK(h.unattributed.at("tun0") == Traffic{{2, 30}, {2, 30}});
    h.check_invariant();
}

namespace {

// An independent model of the accounting rules: each cycle's bytes on an
// address go to the session that held it when the cycle began (else to the
// interface's unattributed bucket); a session holds what its source listed
// for it at the end of the previous cycle.
struct Model {
    struct Instance {
        std::string name, interface;
        uint32_t ifindex;
        std::vector<Session> listed; // as the source reports them
    };
    std::vector<Instance> instances{{"udp", "tun0", 7, {}}, {"tcp", "tun1", 8, {}}};
    Interfaces interfaces{{{"tun0", 7}, {"tun1", 8}}, {{7, "tun0"}, {8, "tun1"}}};
    std::map<ClientKey, std::string> owner;  // as of the start of the next cycle
    std::map<std::string, Traffic> session_usage, user_usage, unattributed;
    std::map<std::string, std::string> user_of;

    void own_listed(const Instance& instance)
    {
        std::erase_if(owner, [&](const auto& entry) { return entry.first.ifindex == instance.ifindex; });
        for (const Session& s : instance.listed)
            for (const auto& address : s.addresses) owner[ClientKey::parse(instance.ifindex, address)] = s.id;
    }
};

// What the daemon's store would hold: committed records, applied in order.
struct Committed {
    std::map<std::string, Session> sessions;
    std::map<ClientKey, AddressCheckpoint> addresses;
    std::map<std::string, Traffic> users, unattributed;

    void apply(const CycleCommit& commit)
    {
        for (const auto& s : commit.sessions) sessions[s.id] = s;
        for (const auto& t : commit.session_totals) sessions[t.session->id] = with_totals(t);
        for (const auto& update : commit.address_updates) {
            AddressCheckpoint& stored = addresses[update.key()];
            stored.raw = update.raw();
            // As the store: an owner is written only when the plan changed it.
            if (update.owner_changed) stored.owner = commit.address_updates.owner(update);
        }
        for (const auto& [user, t] : commit.user_usage) users[user] += t;
        for (const auto& [name, t] : commit.unattributed) unattributed[name] += t;
    }
    Reconciler resume() const
    {
        Checkpoint checkpoint;
        for (const auto& [key, address] : addresses) checkpoint.addresses[key] = address;
        std::vector<Session> open;
        for (const auto& [id, s] : sessions)
            if (s.active()) open.push_back(s);
        return Reconciler(checkpoint, open);
    }
};

} // namespace

TEST_CASE("random connects, disconnects, late addresses, silent sources and restarts match the model",
          "[reconciler]")
{
    const std::vector<std::string> pool{"10.8.0.2", "10.8.0.3", "10.8.0.4", "10.8.0.5", "10.8.0.6",
                                        "10.8.0.7", "fd00:8::a", "fd00:8::b", "fd00:8::c"};
    for (uint32_t seed = 1; seed <= 20; ++seed) {
        CAPTURE(seed);
        std::mt19937 rng(seed);
        auto chance = [&](double p) { return std::uniform_real_distribution<>(0, 1)(rng) < p; };
        auto pick = [&](size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); };
        Model model;
        Committed store;
        Reconciler reconciler{std::nullopt, {}};
        CounterSnapshot raw;
        std::optional<CounterSnapshot> previous;
        std::map<std::string, std::vector<std::string>> pending_address; // sessions listed before their address
        uint64_t next_client = 1;
        size_t put_back = 0, resumed = 0;
        ConnectedSessions committed_lists; // each source's last list that a commit took

        for (int64_t now = 1000; now < 1300; ++now) {
            CAPTURE(now);
            // Traffic under the ownership the cycle began with.
            for (size_t i = pick(6); i > 0; --i) {
                const Model::Instance& instance = model.instances[pick(2)];
                const ClientKey key = ClientKey::parse(instance.ifindex, pool[pick(pool.size())]);
                const Traffic t{{1, 1 + pick(1500)}, {1 + pick(2), 1 + pick(9000)}};
                raw.clients[key].upload += t.upload;
                raw.clients[key].download += t.download;
                raw.interfaces[instance.ifindex].total += t;
                if (auto it = model.owner.find(key); it != model.owner.end()) {
                    model.session_usage[it->second] += t;
                    model.user_usage[model.user_of.at(it->second)] += t;
                } else {
                    model.unattributed[instance.interface] += t;
                }
            }
            // What the sources report at the end of the cycle.
            const std::map<ClientKey, std::string> owner_before = model.owner;
            ConnectedSessions reported;
            for (Model::Instance& instance : model.instances) {
                if (chance(0.1)) continue; // the source did not answer: nothing changes
                if (!instance.listed.empty() && chance(0.3)) instance.listed.erase(instance.listed.begin() + pick(instance.listed.size()));
                std::set<std::string> taken;
                for (const Session& s : instance.listed) taken.insert(s.addresses.begin(), s.addresses.end());
                std::vector<std::string> free;
                for (const auto& address : pool)
                    if (!taken.count(address)) free.push_back(address);
                for (Session& s : instance.listed) {
                    if (chance(0.3)) s.source_download_bytes += 1 + pick(100); // the VPN's own counters
                    if (chance(0.05)) s.real_address = "192.0.2." + std::to_string(pick(250)) + ":1194"; // roamed
                    if (s.addresses.empty() && !free.empty() && chance(0.5)) {
                        s.addresses = {free.back()};
                        free.pop_back();
                    }
                }
                if (!free.empty() && chance(0.35)) {
                    Session s = connected("user" + std::to_string(pick(5)), next_client++, free.back(), now);
                    s.id = session_id(instance.name, std::to_string(next_client), now);
                    s.instance = instance.name;
                    s.interface = instance.interface;
                    if (chance(0.2)) s.addresses.clear(); // listed before its address
                    model.user_of[s.id] = s.user;
                    instance.listed.push_back(s);
                }
                reported[instance.name] = instance.listed;
                model.own_listed(instance);
            }
            const CounterSnapshot before = previous.value_or(CounterSnapshot{});
            const Cycle counters = cycle_between(raw, before);
            // As the daemon plans: the usage is final (and read elsewhere)
            // before the sessions that came or went are worked out.
            CycleCommit commit;
            std::optional<FlatMap<std::string, Traffic>> usage_at_hook;
            reconciler.plan(counters, reported, model.interfaces, now, commit, [&] {
                REQUIRE_FALSE(usage_at_hook);
                REQUIRE(commit.time == now);
                usage_at_hook = commit.user_usage;
            });
            REQUIRE(usage_at_hook == commit.user_usage);
            REQUIRE(std::is_sorted(commit.sessions.begin(), commit.sessions.end(),
                                   [](const Session& a, const Session& b) { return a.id < b.id; }));
            REQUIRE(std::is_sorted(commit.session_totals.begin(), commit.session_totals.end(),
                                   [](const auto& a, const auto& b) { return a.session->id < b.session->id; }));
            // Totals only for a session exactly as committed before; whole
            // copies only for new and ended ones, and for what changed beyond
            // its totals (usage and the VPN's counters).
            auto without_totals = [](Session s) {
                s.usage = {};
                s.source_upload_bytes = s.source_download_bytes = 0;
                return s;
            };
            std::set<std::string> ids;
            for (const SessionTotals& t : commit.session_totals) {
                REQUIRE(store.sessions.count(t.session->id));
                REQUIRE(*t.session == store.sessions.at(t.session->id));
                REQUIRE(ids.insert(t.session->id).second);
            }
            for (const Session& s : commit.sessions) {
                REQUIRE(ids.insert(s.id).second); // never in both
                auto stored = store.sessions.find(s.id);
                if (s.active() && stored != store.sessions.end() && stored->second.active())
                    REQUIRE(without_totals(s) != without_totals(stored->second));
            }
            // The daemon takes the commit while the store writes it. When
            // the store fails, it is put back, or, when sessions came or
            // went, the reconciler is made again from the store; the next
            // cycle's commit holds all of it, under the ownership last
            // committed (the sources report the same changes again).
            auto tentative = reconciler.accept_tentatively(commit);
            if (chance(0.3)) {
                const bool undone = reconciler.undo(std::move(tentative));
                REQUIRE(undone == Reconciler::undoable(commit));
                if (!undone) {
                    reconciler = store.resume();
                    ++resumed;
                }
                ++put_back;
                model.owner = owner_before;
                continue;
            }
            store.apply(commit);
            previous = raw;
            if (chance(0.05)) reconciler = store.resume(); // the agent restarts

            for (const auto& [id, usage] : model.session_usage) REQUIRE(store.sessions.at(id).usage == usage);
            for (const auto& [id, s] : store.sessions)
                REQUIRE(s.usage == (model.session_usage.count(id) ? model.session_usage.at(id) : Traffic{}));
            REQUIRE(store.users == model.user_usage);
            REQUIRE(store.unattributed == model.unattributed);
            FlatMap<ClientKey, std::string> owners;
            for (const auto& [key, id] : model.owner) owners.append(key, id);
            REQUIRE(reconciler.owners() == owners);
            for (const auto& [instance, list] : reported) committed_lists[instance] = list;
            for (const auto& [instance, list] : committed_lists)
                for (const Session& s : list) REQUIRE(store.sessions.at(s.id).active());
            // The quota engine's view: each active session's keys, by user
            // (tun1 is gone now and then: its sessions have none).
            const Interfaces now_present = chance(0.2) ? Interfaces{{{"tun0", 7}}, {{7, "tun0"}}} : model.interfaces;
            UserKeys expected;
            for (const auto& [id, s] : reconciler.active())
                for (const ClientKey& key : session_keys(s, now_present)) expected.emplace_back(s.user, key);
            UserKeys keys = reconciler.keys_by_user(now_present);
            // Kept counts and users, as the active sessions say.
            std::map<std::string, uint64_t> by_instance;
            std::set<std::string> users_now;
            for (const auto& [id, s] : reconciler.active()) {
                ++by_instance[s.instance];
                users_now.insert(s.user);
            }
            REQUIRE(reconciler.sessions_by_instance() == by_instance);
            REQUIRE(std::vector<std::string>(reconciler.users().begin(), reconciler.users().end()) ==
                    std::vector<std::string>(users_now.begin(), users_now.end()));
            REQUIRE(std::is_sorted(keys.begin(), keys.end(),
                                   [](const auto& a, const auto& b) { return a.first < b.first; }));
            std::sort(keys.begin(), keys.end());
            std::sort(expected.begin(), expected.end());
            REQUIRE(keys == expected);
        }
        CHECK(put_back > 5);
        CHECK(resumed > 2);
    }
}

TEST_CASE("a cycle's sessions and users come in id and name order, whether few or many moved", "[reconciler]")
{
    Harness h;
    std::vector<Session> list;
    for (uint64_t i = 0; i < 40; ++i) // ids and users out of byte order with respect to their addresses
        list.push_back(connected("user" + std::to_string(97 - i), 1000 - i, "10.8.1." + std::to_string(i + 1)));
    h.cycle({{"udp", list}});
    auto in_order = [](const CycleCommit& commit) {
        return std::is_sorted(commit.sessions.begin(), commit.sessions.end(),
                              [](const Session& a, const Session& b) { return a.id < b.id; }) &&
               std::is_sorted(commit.session_totals.begin(), commit.session_totals.end(),
                              [](const auto& a, const auto& b) { return a.session->id < b.session->id; }) &&
               std::is_sorted(commit.user_usage.begin(), commit.user_usage.end(),
                              [](const auto& a, const auto& b) { return a.first < b.first; });
    };
    for (size_t moving : {1, 2, 40}) { // below and above the point where the kept order is walked
        CAPTURE(moving);
        for (size_t i = 0; i < moving; ++i) h.traffic("10.8.1." + std::to_string(i + 1), 1, 2);
        list.push_back(connected("user" + std::to_string(moving), 2000 + moving, "10.8.2." + std::to_string(moving)));
        const CycleCommit commit = h.cycle({{"udp", list}});
        CHECK(commit.sessions.size() == 1); // the new one, whole
        CHECK(commit.session_totals.size() == moving);
        CHECK(commit.user_usage.size() == moving);
        CHECK(in_order(commit));
    }
    h.check_invariant();
}

TEST_CASE("thousands of reported sessions (looked up beside the bytes) end, start and count as a few do",
          "[reconciler]")
{
    Harness h;
    auto address = [](uint64_t i) { return "10." + std::to_string(8 + i / 65536) + "." + std::to_string(i / 256 % 256) +
                                           "." + std::to_string(i % 256); };
    std::vector<Session> list;
    for (uint64_t i = 0; i < 6000; ++i) list.push_back(connected("user" + std::to_string(i % 4000), i, address(i)));
    CHECK(h.cycle({{"udp", list}}).sessions.size() == 6000);
    for (int round = 0; round < 3; ++round) {
        h.reconciler.keys_by_user(kInterfaces); // kept, and brought up to date by the accept
        for (uint64_t i = 0; i < list.size(); ++i) h.traffic(list[i].addresses[0], 10 + i, 20);
        // Every 1000th ends; as many new ones come, listed among the others.
        std::set<std::string> ended;
        for (size_t i = round; i < list.size(); i += 1000) {
            ended.insert(list[i].id);
            // The one at 2000 + round is its user's only session: the user
            // comes back at once (dropped, then added again, in one accept).
            list[i] = i == 2000 + size_t(round)
                          ? connected(list[i].user, 900000 + round, list[i].addresses[0], 3000 + round)
                          : connected("new" + std::to_string(i), 100000 + 10 * i + round, list[i].addresses[0], 3000 + round);
        }
        const CycleCommit commit = h.cycle({{"udp", list}});
        std::set<std::string> closed, started;
        for (const Session& s : commit.sessions) (s.active() ? started : closed).insert(s.id);
        CHECK(closed == ended);
        CHECK(started.size() == ended.size());
        CHECK(commit.session_totals.size() == list.size() - ended.size());
        // In id order, as the store writes them: the kept order had the ended ones taken out and the new ones merged in.
        CHECK(std::is_sorted(commit.session_totals.begin(), commit.session_totals.end(),
                             [](const auto& a, const auto& b) { return a.session->id < b.session->id; }));
        CHECK(h.reconciler.active().size() == list.size());
        std::set<std::string> users;
        UserKeys keys;
        for (const Session& s : list) {
            users.insert(s.user);
            keys.emplace_back(s.user, ClientKey::parse(kTun0, s.addresses[0]));
        }
        CHECK(std::vector<std::string>(h.reconciler.users().begin(), h.reconciler.users().end()) ==
              std::vector<std::string>(users.begin(), users.end()));
        UserKeys kept = h.reconciler.keys_by_user(kInterfaces);
        std::sort(keys.begin(), keys.end());
        std::sort(kept.begin(), kept.end());
        CHECK(kept == keys);
        h.check_invariant();
    }
}
