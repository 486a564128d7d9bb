#include <catch2/catch.hpp>

#include <numeric>

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
    std::optional<CounterSnapshot> baseline;
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
        Cycle counters{raw, compute_delta(raw, baseline.value_or(CounterSnapshot{}))};
        CycleCommit commit = reconciler.plan(counters, connected, kInterfaces, now++);
        reconciler.accept(commit);
        baseline = raw;
        for (const auto& s : commit.sessions) sessions[s.id] = s;
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
