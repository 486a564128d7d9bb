#include <catch2/catch.hpp>

#include "singbox/ledger.h"

using namespace vpnmeter;
using namespace vpnmeter::singbox;

namespace {

StatsReading reading(std::map<std::string, int64_t> users, std::optional<uint64_t> uptime, int64_t time)
{
    StatsReading r;
    for (const auto& [user, value] : users) {
        // value: upload in the low half, download = 2 * upload (enough to tell them apart)
        r.counters["user>>>" + user + ">>>traffic>>>uplink"] = value;
        r.counters["user>>>" + user + ">>>traffic>>>downlink"] = 2 * value;
    }
    r.counters["inbound>>>vmess-in>>>traffic>>>uplink"] = 999'999; // not a user's
    r.uptime = uptime;
    r.time = time;
    return r;
}

// Drives a ledger the way the daemon does, keeping what was billed.
struct Harness {
    Ledger ledger{"sb1", std::nullopt, {}};
    std::map<std::string, Traffic> billed;
    std::map<std::string, Session> sessions; // every session ever, by id

    LedgerChange feed(const StatsReading& r)
    {
        LedgerChange change = ledger.plan(r);
        for (const auto& [user, traffic] : change.usage) billed[user] += traffic;
        for (const auto& s : change.sessions) sessions[s.id] = s;
        ledger.accept(change);
        return change;
    }
    uint64_t up(const std::string& user) { return billed[user].upload.bytes; }
    uint64_t down(const std::string& user) { return billed[user].download.bytes; }
};

} // namespace

TEST_CASE("parse_counter: user counters only, names with the separator's pieces intact")
{
    CHECK(parse_counter("user>>>alice>>>traffic>>>uplink") == UserCounter{"alice", Direction::uplink});
    CHECK(parse_counter("user>>>alice@example.com>>>traffic>>>downlink") ==
          UserCounter{"alice@example.com", Direction::downlink});
    CHECK(parse_counter("user>>>a>>>b>>>traffic>>>uplink") == UserCounter{"a>>>b", Direction::uplink});
    CHECK_FALSE(parse_counter("inbound>>>vmess>>>traffic>>>uplink"));
    CHECK_FALSE(parse_counter("user>>>alice>>>traffic>>>sideways"));
    CHECK_FALSE(parse_counter("user>>>>>>traffic>>>uplink"));
    CHECK_FALSE(parse_counter("user>>>alice"));
    CHECK_FALSE(parse_counter(""));
}

TEST_CASE("Ledger: the first reading is the baseline, then deltas")
{
    Harness h;
    auto first = h.feed(reading({{"alice", 1000}}, 50, 100));
    CHECK(first.baseline);
    CHECK(first.usage.empty());
    REQUIRE(first.sessions.size() == 1); // alice's session opens at zero
    CHECK(first.sessions[0].usage == Traffic{});
    CHECK(first.sessions[0].source_upload_bytes == 1000);
    CHECK(first.checkpoint.counters.size() == 2); // the inbound counter is not kept

    h.feed(reading({{"alice", 1500}}, 60, 110));
    CHECK(h.up("alice") == 500);
    CHECK(h.down("alice") == 1000);
    CHECK(h.ledger.open().at("alice").usage.upload.bytes == 500);
}

TEST_CASE("Ledger: nothing moved, nothing billed or rewritten")
{
    Harness h;
    h.feed(reading({{"alice", 10}}, 5, 100));
    auto same = h.feed(reading({{"alice", 10}}, 15, 110));
    CHECK(same.usage.empty());
    CHECK(same.sessions.empty());
    CHECK_FALSE(same.restarted);
}

TEST_CASE("Ledger: a new user's counter is all new traffic")
{
    Harness h;
    h.feed(reading({{"alice", 10}}, 5, 100));
    h.feed(reading({{"alice", 10}, {"bob", 700}}, 15, 110));
    CHECK(h.up("bob") == 700);
    CHECK(h.down("bob") == 1400);
    CHECK(h.ledger.open().contains("bob"));
}

TEST_CASE("Ledger: a restart (uptime went down) counts from zero and ends the sessions")
{
    Harness h;
    h.feed(reading({{"alice", 1000}}, 5, 100));
    h.feed(reading({{"alice", 3000}}, 500, 200)); // +2000
    const std::string before = h.ledger.open().at("alice").id;
    // Restarted: alice did 4000 more since, past her old value: only uptime tells.
    auto change = h.feed(reading({{"alice", 4000}}, 3, 210));
    CHECK(change.restarted);
    CHECK(h.up("alice") == 2000 + 4000);
    CHECK(h.down("alice") == 4000 + 8000);
    CHECK_FALSE(h.sessions.at(before).active());
    CHECK(h.sessions.at(before).end == 210);
    CHECK(h.sessions.at(before).usage.upload.bytes == 2000);
    const Session& now = h.ledger.open().at("alice");
    CHECK(now.id != before);
    CHECK(now.usage.upload.bytes == 4000);
}

TEST_CASE("Ledger: a counter that went down is a restart: everything counts from zero, never negative")
{
    Harness h;
    h.feed(reading({{"alice", 1000}, {"bob", 50}}, std::nullopt, 100));
    auto change = h.feed(reading({{"alice", 300}, {"bob", 80}}, std::nullopt, 110));
    CHECK(change.restarted);
    CHECK(h.up("alice") == 300);
    CHECK(h.up("bob") == 80); // bob's 80 are all of the new run
    CHECK(h.ledger.open().at("alice").usage.upload.bytes == 300);
    for (const auto& [user, traffic] : h.billed) CHECK(traffic.upload.bytes < (1ull << 62));
}

TEST_CASE("Ledger: an uptime shorter than the time since the checkpoint is a restart")
{
    Harness h;
    h.feed(reading({{"alice", 1000}}, 100, 1000));
    // An hour later (the agent was down), the server has been up 10 minutes:
    // alice's counter is higher than before, but all of it is the new run's.
    auto change = h.feed(reading({{"alice", 5000}}, 600, 4600));
    CHECK(change.restarted);
    CHECK(h.up("alice") == 5000);
    // Up the whole time (within 2 s of slack for whole seconds): no restart.
    auto steady = h.feed(reading({{"alice", 6000}}, 608, 4610));
    CHECK_FALSE(steady.restarted);
    CHECK(h.up("alice") == 6000);
}

TEST_CASE("Ledger: a user whose counters vanished has their session ended")
{
    Harness h;
    h.feed(reading({{"alice", 10}, {"bob", 20}}, 5, 100));
    auto change = h.feed(reading({{"alice", 10}}, 15, 110));
    CHECK_FALSE(h.ledger.open().contains("bob"));
    REQUIRE(change.sessions.size() == 1);
    CHECK(change.sessions[0].user == "bob");
    CHECK(change.sessions[0].end == 110);
}

TEST_CASE("Ledger: resumed from its checkpoint, the same reading bills nothing twice")
{
    Harness h;
    h.feed(reading({{"alice", 100}}, 5, 100));
    auto committed = h.feed(reading({{"alice", 600}}, 15, 110));
    std::vector<Session> open;
    for (const auto& [user, s] : h.ledger.open()) open.push_back(s);
    Ledger resumed("sb1", committed.checkpoint, open);
    auto again = resumed.plan(reading({{"alice", 600}}, 16, 111));
    CHECK(again.usage.empty());
    CHECK_FALSE(again.baseline);
    auto later = resumed.plan(reading({{"alice", 650}}, 20, 115));
    CHECK(later.usage.at("alice").upload.bytes == 50);
    REQUIRE(later.sessions.size() == 1);
    CHECK(later.sessions[0].id == open[0].id);
    CHECK(later.sessions[0].usage.upload.bytes == 500 + 50);
}

TEST_CASE("Ledger: sessions of other instances are not resumed")
{
    Session other;
    other.id = "udp:1:100";
    other.user = "alice";
    other.instance = "udp";
    Ledger ledger("sb1", StatsCheckpoint{}, {other});
    CHECK(ledger.open().empty());
}

TEST_CASE("Ledger: a negative value from the server counts as zero")
{
    Harness h;
    h.feed(reading({{"alice", 10}}, 5, 100));
    h.feed(reading({{"alice", -5}}, 15, 110));
    CHECK(h.up("alice") == 0);
}

#include "store_support.h"

TEST_CASE("Sing-Box checkpoints commit with the usage and read back per instance", "[store][singbox]")
{
    using namespace vpnmeter::testing;
    TempDir dir;
    const auto options = options_in(dir);
    {
        Store store = open_store(options);
        CHECK(must(store.stats_checkpoints()).empty());
        Harness h;
        h.feed(reading({{"alice", 100}}, 5, utc(2026, 11, 23, 10)));
        auto change = h.ledger.plan(reading({{"alice", 350}, {"bob", 7}}, 15, utc(2026, 11, 23, 10, 0, 10)));
        CycleCommit cycle;
        cycle.time = utc(2026, 11, 23, 10, 0, 10);
        for (const auto& [user, traffic] : change.usage) cycle.user_usage[user] = traffic;
        cycle.sessions = change.sessions;
        cycle.stats_checkpoints["sb1"] = change.checkpoint;
        cycle.stats_checkpoints["sb2"] = StatsCheckpoint{{{"user>>>x>>>traffic>>>uplink", 1}}, std::nullopt, 5};
        must_commit(store, cycle);
    }
    Store store = open_store(options); // reopened: what a restarted agent resumes from
    const auto checkpoints = must(store.stats_checkpoints());
    REQUIRE(checkpoints.size() == 2);
    CHECK(checkpoints.at("sb1").uptime == 15u);
    CHECK(checkpoints.at("sb1").time == utc(2026, 11, 23, 10, 0, 10));
    CHECK(checkpoints.at("sb1").counters.at("user>>>alice>>>traffic>>>uplink") == 350);
    CHECK(checkpoints.at("sb1").counters.at("user>>>bob>>>traffic>>>downlink") == 14);
    const auto alice = must(store.usage("alice", 0, utc(2027, 1, 1), Granularity::Month));
    REQUIRE(alice.size() == 1);
    CHECK(alice[0].traffic.upload.bytes == 250);
    CHECK(alice[0].traffic.download.bytes == 500);
    const auto open = must(store.sessions(true));
    CHECK(open.size() == 2);
}
