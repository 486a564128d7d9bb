#include <catch2/catch.hpp>

#include <lmdb.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <compare>
#include <thread>
#include <random>
#include <tuple>

#include "store/encoding.h"
#include "store/lmdb.h"
#include "store/store.h"
#include "store_support.h"
#include "unique_fd.h"

using namespace vpnmeter;

namespace {

constexpr int64_t kHour = 3600;
constexpr int64_t kDay = 86400;

using namespace vpnmeter::testing;

// A forked child, killed and reaped if the test ends before waiting for it.
struct ChildProcess {
    explicit ChildProcess(pid_t pid) : pid(pid) {}
    ChildProcess(const ChildProcess&) = delete;
    ChildProcess& operator=(const ChildProcess&) = delete;
    ~ChildProcess()
    {
        if (pid <= 0) return;
        kill(pid, SIGKILL);
        wait();
    }
    int wait()
    {
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        pid = -1;
        return status;
    }
    pid_t pid;
};



Traffic traffic(uint64_t up_packets, uint64_t up_bytes, uint64_t down_packets, uint64_t down_bytes)
{
    return Traffic{Count{up_packets, up_bytes}, Count{down_packets, down_bytes}};
}

Session session(const std::string& id, const std::string& user, std::optional<int64_t> end = std::nullopt)
{
    Session s;
    s.id = id;
    s.user = user;
    s.instance = "udp1194";
    s.interface = "tun0";
    s.addresses = {"10.8.0.2", "fd00::2"};
    s.real_address = "203.0.113.7:51820";
    s.start = utc(2024, 5, 1, 10);
    s.end = end;
    s.usage = traffic(10, 1000, 20, 20000);
    s.source_upload_bytes = 1500;
    s.source_download_bytes = 25000;
    return s;
}

ClientKey v4(uint32_t ifindex, const std::string& address)
{
    return ClientKey::parse(ifindex, address);
}

std::vector<UsageBucket> usage(const Store& store, const std::string& user, int64_t from, int64_t to, Granularity g)
{
    return must(store.usage(user, from, to, g));
}

// Writes a raw key into a named database of a closed store: how a newer
// release or a foreign tool would have left it.
mode_t mode_of(const std::string& path)
{
    struct stat st {};
    REQUIRE(stat(path.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

// A commit touching many keys: `users` users, one session each.
CycleCommit big_cycle(int64_t time, int users, const std::string& tag)
{
    CycleCommit cycle;
    cycle.time = time;
    for (int i = 0; i < users; ++i) {
        const std::string user = tag + "-user-" + std::to_string(i);
        cycle.user_usage[user] = traffic(1, 100, 2, 200);
        cycle.sessions.push_back(session(tag + ":" + std::to_string(i) + ":1", user));
    }
    return cycle;
}

} // namespace

TEST_CASE("a write cursor's puts and updates in key order, neighbours or far apart, end as a map's", "[store]")
{
    // WriteCursor steps to the next record when that is the key written
    // next, and searches otherwise: runs of neighbours, gaps, new keys
    // between old ones, values that grow and shrink, a key twice in a row.
    TempDir dir;
    auto env = lmdb::Env::create();
    REQUIRE(env);
    REQUIRE(mdb_env_set_mapsize(env->get(), 64 << 20) == 0);
    REQUIRE(mdb_env_open(env->get(), dir.path().c_str(), 0, 0600) == 0);
    MDB_dbi dbi = 0;
    {
        auto txn = lmdb::Txn::begin(env->get(), 0);
        REQUIRE(txn);
        REQUIRE(mdb_dbi_open(txn->get(), nullptr, 0, &dbi) == 0);
        REQUIRE(txn->commit());
    }
    std::mt19937 rng(5);
    auto pick = [&](uint32_t n) { return std::uniform_int_distribution<uint32_t>(0, n - 1)(rng); };
    auto key_of = [](uint32_t i) {
        char key[16];
        std::snprintf(key, sizeof key, "k%06u", i);
        return std::string(key);
    };
    std::map<std::string, std::string> model;
    for (int round = 0; round < 40; ++round) {
        CAPTURE(round);
        // A run of neighbours, a sparse pick, or both, ascending.
        std::vector<uint32_t> picked;
        const uint32_t from = pick(3000), run = pick(600), stride = 1 + pick(round % 3 ? 2 : 40);
        for (uint32_t i = from; i < from + run * stride; i += stride) picked.push_back(i);
        for (uint32_t i = 0; i < pick(200); ++i) picked.push_back(pick(5000));
        std::sort(picked.begin(), picked.end());
        auto txn = lmdb::Txn::begin(env->get(), 0);
        REQUIRE(txn);
        {
            auto cursor = lmdb::WriteCursor::open(*txn, dbi);
            REQUIRE(cursor);
            for (uint32_t i : picked) { // a key picked twice is written twice
                const std::string key = key_of(i);
                if (pick(2)) {
                    const std::string value(1 + pick(round % 2 ? 30 : 300), static_cast<char>('a' + pick(26)));
                    REQUIRE(cursor->put(key, value));
                    model[key] = value;
                } else {
                    std::string out;
                    auto grow = [&](std::optional<std::string_view> stored) -> Result<std::string_view> {
                        out = stored ? std::string(*stored) : std::string();
                        if (stored) CHECK(*stored == model.at(key));
                        else CHECK(model.count(key) == 0);
                        out = pick(4) ? out + char('0' + pick(10)) : out.substr(0, out.size() / 2) + "!";
                        return std::string_view(out);
                    };
                    REQUIRE(cursor->update(key, grow));
                    model[key] = out;
                }
            }
        }
        REQUIRE(txn->commit());
        auto read = lmdb::Txn::begin(env->get(), MDB_RDONLY);
        REQUIRE(read);
        auto cursor = lmdb::Cursor::open(*read, dbi);
        REQUIRE(cursor);
        std::map<std::string, std::string> stored;
        for (auto entry = cursor->move(MDB_FIRST); entry && *entry; entry = cursor->move(MDB_NEXT))
            stored.emplace((*entry)->key, (*entry)->value);
        REQUIRE(stored == model);
    }
    CHECK(model.size() > 1000);
}

TEST_CASE("a new store has schema version 6 and private files", "[store]")
{
    TempDir dir;
    const auto options = options_in(dir);
    Store store = open_store(options);
    CHECK(store.schema_version() == 7);
    CHECK(mode_of(options.path) == 0700);
    CHECK(mode_of(options.path + "/data.mdb") == 0600);
    CHECK(mode_of(options.path + "/lock.mdb") == 0600);
    CHECK(must(store.checkpoint()) == std::nullopt);
    CHECK(must(store.sessions()).empty());
    CHECK(must(store.unattributed()).empty());
}

TEST_CASE("store files are private whatever the umask, also ones made looser since", "[store][security]")
{
    TempDir dir;
    const auto options = options_in(dir);
    {
        const mode_t saved = umask(0); // a umask never adds protection: the modes come from the store itself
        auto store = Store::open(options);
        umask(saved);
        REQUIRE(store);
    }
    CHECK(mode_of(options.path) == 0700);
    CHECK(mode_of(options.path + "/data.mdb") == 0600);
    CHECK(mode_of(options.path + "/lock.mdb") == 0600);

    // A copy restored with a careless umask: the daemon's next open tightens it.
    REQUIRE(chmod((options.path + "/data.mdb").c_str(), 0644) == 0);
    REQUIRE(chmod((options.path + "/lock.mdb").c_str(), 0666) == 0);
    {
        Store store = open_store(options);
    }
    CHECK(mode_of(options.path + "/data.mdb") == 0600);
    CHECK(mode_of(options.path + "/lock.mdb") == 0600);

    // The CLI's read-only open changes nothing (it need not own the files).
    REQUIRE(chmod((options.path + "/data.mdb").c_str(), 0640) == 0);
    {
        auto read_only = options;
        read_only.read_only = true;
        Store store = open_store(read_only);
    }
    CHECK(mode_of(options.path + "/data.mdb") == 0640);
}

TEST_CASE("a commit reads back field by field", "[store]")
{
    TempDir dir;
    Store store = open_store(options_in(dir));
    const int64_t now = utc(2024, 5, 1, 12, 34, 56);

    CycleCommit cycle;
    cycle.time = now;
    Session closed = session("udp1194:7:1714557600", "alice", now);
    Session active = session("udp1194:8:1714557700", "bob");
    active.addresses = {"10.8.0.3"};
    active.usage = traffic(1, 2, 3, 4);
    cycle.sessions = {closed, active};
    cycle.user_usage = {{"alice", traffic(5, 500, 6, 600)}, {"bob", traffic(1, 2, 3, 4)}};
    cycle.unattributed = {{"tun0", traffic(7, 700, 8, 800)}};
    cycle.identity = CounterIdentity{"c0ffee-boot", 41, 42};
    cycle.address_updates = {{v4(3, "10.8.0.2"), {traffic(11, 1100, 12, 1200), closed.id}},
                             {ClientKey::parse(3, "fd00::2"), {traffic(1, 60, 0, 0), ""}}};
    cycle.interface_updates = {{3, InterfaceTraffic{traffic(20, 2000, 30, 3000), traffic(1, 60, 0, 0)}}};
    cycle.interface_names = {{3, "tun0"}};
    must_commit(store, cycle);

    CHECK(must(store.session(closed.id)) == closed);
    CHECK(must(store.session(active.id)) == active);
    CHECK(must(store.session("no-such-session")) == std::nullopt);
    CHECK(must(store.sessions()) == std::vector<Session>{closed, active});

    for (auto g : {Granularity::Hour, Granularity::Day, Granularity::Month}) {
        const auto buckets = usage(store, "alice", now - 40 * kDay, now + 40 * kDay, g);
        REQUIRE(buckets.size() == 1);
        CHECK(buckets[0].start == store.bucket_start(now, g));
        CHECK(buckets[0].traffic == traffic(5, 500, 6, 600));
    }
    CHECK(usage(store, "bob", now, now + 1, Granularity::Hour) ==
          std::vector<UsageBucket>{{utc(2024, 5, 1, 12), traffic(1, 2, 3, 4)}});

    const auto unattributed = must(store.unattributed());
    REQUIRE(unattributed.size() == 1);
    CHECK(unattributed[0].interface == "tun0");
    CHECK(unattributed[0].traffic == traffic(7, 700, 8, 800));

    const auto checkpoint = must(store.checkpoint());
    REQUIRE(checkpoint);
    CHECK(checkpoint->identity == *cycle.identity);
    CHECK(checkpoint->addresses == cycle.address_updates.checkpoints());
    CHECK(checkpoint->interfaces == cycle.interface_updates);
    CHECK(checkpoint->interface_names == cycle.interface_names);
}

TEST_CASE("increments add up across commits", "[store]")
{
    TempDir dir;
    Store store = open_store(options_in(dir));
    const int64_t t = utc(2024, 5, 1, 10, 15);
    for (int i = 0; i < 3; ++i) {
        CycleCommit cycle;
        cycle.time = t + i * 60; // same hour
        cycle.user_usage["alice"] = traffic(1, 100, 2, 200);
        cycle.unattributed["tun0"] = traffic(0, 0, 1, 40);
        must_commit(store, cycle);
    }
    CycleCommit later;
    later.time = t + kHour; // next hour, same day
    later.user_usage["alice"] = traffic(1, 1, 1, 1);
    later.user_usage["idle"] = Traffic{}; // nothing to add: no bucket
    must_commit(store, later);

    CHECK(usage(store, "alice", t - kDay, t + kDay, Granularity::Hour) ==
          std::vector<UsageBucket>{{utc(2024, 5, 1, 10), traffic(3, 300, 6, 600)},
                                   {utc(2024, 5, 1, 11), traffic(1, 1, 1, 1)}});
    CHECK(usage(store, "alice", t - kDay, t + kDay, Granularity::Day) ==
          std::vector<UsageBucket>{{utc(2024, 5, 1), traffic(4, 301, 7, 601)}});
    CHECK(usage(store, "alice", t - kDay, t + kDay, Granularity::Month) ==
          std::vector<UsageBucket>{{utc(2024, 5, 1), traffic(4, 301, 7, 601)}});
    CHECK(usage(store, "idle", t - kDay, t + kDay, Granularity::Hour).empty());
    const auto unattributed = must(store.unattributed());
    REQUIRE(unattributed.size() == 1);
    CHECK(unattributed[0].traffic == traffic(0, 0, 3, 120));
}

TEST_CASE("UTC buckets roll over at midnight and on the 1st", "[store]")
{
    TempDir dir;
    Store store = open_store(options_in(dir));
    const int64_t t = utc(2024, 1, 31, 23, 59, 59);
    CHECK(store.bucket_start(t, Granularity::Hour) == utc(2024, 1, 31, 23));
    CHECK(store.bucket_start(t, Granularity::Day) == utc(2024, 1, 31));
    CHECK(store.bucket_start(t, Granularity::Month) == utc(2024, 1, 1));
    CHECK(store.bucket_start(t + 1, Granularity::Day) == utc(2024, 2, 1));
    CHECK(store.bucket_start(t + 1, Granularity::Month) == utc(2024, 2, 1));
    CHECK(store.bucket_start(utc(1969, 12, 31, 23, 30), Granularity::Hour) == utc(1969, 12, 31, 23));

    for (int64_t time : {t, t + 1}) {
        CycleCommit cycle;
        cycle.time = time;
        cycle.user_usage["alice"] = traffic(1, 10, 0, 0);
        must_commit(store, cycle);
    }
    CHECK(usage(store, "alice", utc(2024, 1, 1), utc(2024, 3, 1), Granularity::Day) ==
          std::vector<UsageBucket>{{utc(2024, 1, 31), traffic(1, 10, 0, 0)}, {utc(2024, 2, 1), traffic(1, 10, 0, 0)}});
    CHECK(usage(store, "alice", utc(2024, 1, 1), utc(2024, 3, 1), Granularity::Month) ==
          std::vector<UsageBucket>{{utc(2024, 1, 1), traffic(1, 10, 0, 0)}, {utc(2024, 2, 1), traffic(1, 10, 0, 0)}});
}

TEST_CASE("Asia/Kolkata buckets begin at local hours and local midnight", "[store]")
{
    TempDir dir;
    Store store = open_store(options_in(dir, "Asia/Kolkata")); // +05:30, no DST
    // 2024-03-31 23:59:59 IST is 18:29:59 UTC; a second later it is April.
    const int64_t before = utc(2024, 3, 31, 18, 29, 59);
    const int64_t after = before + 1;
    CHECK(store.bucket_start(before, Granularity::Hour) == utc(2024, 3, 31, 17, 30));
    CHECK(store.bucket_start(after, Granularity::Hour) == utc(2024, 3, 31, 18, 30));
    CHECK(store.bucket_start(before, Granularity::Day) == utc(2024, 3, 30, 18, 30));
    CHECK(store.bucket_start(after, Granularity::Day) == utc(2024, 3, 31, 18, 30));
    CHECK(store.bucket_start(before, Granularity::Month) == utc(2024, 2, 29, 18, 30));
    CHECK(store.bucket_start(after, Granularity::Month) == utc(2024, 3, 31, 18, 30));

    for (int64_t time : {before, after}) {
        CycleCommit cycle;
        cycle.time = time;
        cycle.user_usage["asha"] = traffic(1, 10, 1, 20);
        must_commit(store, cycle);
    }
    const auto days = usage(store, "asha", utc(2024, 3, 1), utc(2024, 5, 1), Granularity::Day);
    REQUIRE(days.size() == 2);
    CHECK(days[0].start == utc(2024, 3, 30, 18, 30));
    CHECK(days[1].start == utc(2024, 3, 31, 18, 30));
    const auto months = usage(store, "asha", utc(2024, 1, 1), utc(2024, 5, 1), Granularity::Month);
    REQUIRE(months.size() == 2);
    CHECK(months[1].start == utc(2024, 3, 31, 18, 30));
}

TEST_CASE("America/New_York days last 23 and 25 hours across DST", "[store]")
{
    TempDir dir;
    Store store = open_store(options_in(dir, "America/New_York"));
    // 2024-03-10: clocks go 02:00 EST -> 03:00 EDT.
    const int64_t march_10 = store.bucket_start(utc(2024, 3, 10, 17), Granularity::Day);
    const int64_t march_11 = store.bucket_start(utc(2024, 3, 11, 17), Granularity::Day);
    CHECK(march_10 == utc(2024, 3, 10, 5)); // midnight EST
    CHECK(march_11 == utc(2024, 3, 11, 4)); // midnight EDT
    CHECK(march_11 - march_10 == 23 * kHour);
    // Local hours: 01:xx EST, then 03:xx EDT one hour later.
    CHECK(store.bucket_start(utc(2024, 3, 10, 6, 59), Granularity::Hour) == utc(2024, 3, 10, 6));
    CHECK(store.bucket_start(utc(2024, 3, 10, 7, 0), Granularity::Hour) == utc(2024, 3, 10, 7));

    // 2024-11-03: clocks go 02:00 EDT -> 01:00 EST; 01:xx happens twice.
    const int64_t nov_3 = store.bucket_start(utc(2024, 11, 3, 17), Granularity::Day);
    const int64_t nov_4 = store.bucket_start(utc(2024, 11, 4, 17), Granularity::Day);
    CHECK(nov_3 == utc(2024, 11, 3, 4));
    CHECK(nov_4 == utc(2024, 11, 4, 5));
    CHECK(nov_4 - nov_3 == 25 * kHour);
    CHECK(store.bucket_start(utc(2024, 11, 3, 5, 30), Granularity::Hour) == utc(2024, 11, 3, 5)); // 01:30 EDT
    CHECK(store.bucket_start(utc(2024, 11, 3, 6, 30), Granularity::Hour) == utc(2024, 11, 3, 6)); // 01:30 EST
    CHECK(store.bucket_start(utc(2024, 11, 3, 6, 30), Granularity::Month) == utc(2024, 11, 1, 4));

    // Traffic at 23:30 local on both sides of the short day lands in three days.
    for (int64_t time : {utc(2024, 3, 10, 4, 30), utc(2024, 3, 11, 3, 30), utc(2024, 3, 12, 3, 30)}) {
        CycleCommit cycle;
        cycle.time = time;
        cycle.user_usage["nora"] = traffic(1, 1, 1, 1);
        must_commit(store, cycle);
    }
    const auto days = usage(store, "nora", utc(2024, 3, 9), utc(2024, 3, 13), Granularity::Day);
    REQUIRE(days.size() == 3);
    CHECK(days[0].start == utc(2024, 3, 9, 5));
    CHECK(days[1].start == march_10);
    CHECK(days[2].start == march_11);
}

TEST_CASE("usage queries return the buckets overlapping [from, to)", "[store]")
{
    TempDir dir;
    Store store = open_store(options_in(dir));
    for (int h : {10, 11, 12, 13}) {
        CycleCommit cycle;
        cycle.time = utc(2024, 5, 1, h, 20);
        cycle.user_usage["alice"] = traffic(h, h, 0, 0);
        cycle.user_usage["al"] = traffic(100, 100, 0, 0); // a prefix of "alice"
        cycle.user_usage["alice2"] = traffic(1, 1, 0, 0); // "alice" is its prefix
        must_commit(store, cycle);
    }
    auto starts = [&](int64_t from, int64_t to, Granularity g) {
        std::vector<int64_t> out;
        for (const auto& bucket : usage(store, "alice", from, to, g))
            out.push_back(bucket.start);
        return out;
    };
    CHECK(starts(utc(2024, 5, 1, 11), utc(2024, 5, 1, 13), Granularity::Hour) ==
          std::vector<int64_t>{utc(2024, 5, 1, 11), utc(2024, 5, 1, 12)});
    CHECK(starts(utc(2024, 5, 1, 11, 30), utc(2024, 5, 1, 12), Granularity::Hour) ==
          std::vector<int64_t>{utc(2024, 5, 1, 11)});
    CHECK(starts(utc(2024, 5, 1, 11, 30), utc(2024, 5, 1, 12, 0, 1), Granularity::Hour) ==
          std::vector<int64_t>{utc(2024, 5, 1, 11), utc(2024, 5, 1, 12)});
    CHECK(starts(utc(2024, 5, 1), utc(2024, 5, 1, 10), Granularity::Hour).empty());
    CHECK(starts(utc(2024, 5, 1, 14), utc(2024, 5, 2), Granularity::Hour).empty());
    CHECK(starts(utc(2024, 5, 1, 12), utc(2024, 5, 1, 12), Granularity::Hour).empty());
    CHECK(starts(utc(2024, 5, 1, 12), utc(2024, 5, 1, 11), Granularity::Hour).empty());
    CHECK(starts(utc(2024, 5, 1, 12), utc(2024, 5, 1, 13), Granularity::Day) == std::vector<int64_t>{utc(2024, 5, 1)});
    CHECK(starts(utc(2024, 5, 2), utc(2024, 6, 1), Granularity::Day).empty());
    CHECK(usage(store, "alice", utc(2024, 5, 1), utc(2024, 5, 2), Granularity::Day) ==
          std::vector<UsageBucket>{{utc(2024, 5, 1), traffic(46, 46, 0, 0)}});
    CHECK(usage(store, "nobody", 0, utc(2030, 1, 1), Granularity::Hour).empty());
    CHECK(usage(store, std::string(2000, 'x'), 0, utc(2030, 1, 1), Granularity::Hour).empty());
}

TEST_CASE("sessions filter by activity and user", "[store]")
{
    TempDir dir;
    Store store = open_store(options_in(dir));
    CycleCommit cycle;
    cycle.time = utc(2024, 5, 1, 12);
    cycle.sessions = {session("a:1:1", "alice", utc(2024, 5, 1, 11)), session("a:2:1", "alice"),
                      session("b:1:1", "bob"), session("b:2:1", "bob", utc(2024, 5, 1, 11))};
    must_commit(store, cycle);

    auto ids = [](const std::vector<Session>& sessions) {
        std::vector<std::string> out;
        for (const auto& s : sessions)
            out.push_back(s.id);
        return out;
    };
    CHECK(ids(must(store.sessions())) == std::vector<std::string>{"a:1:1", "a:2:1", "b:1:1", "b:2:1"});
    CHECK(ids(must(store.sessions(true))) == std::vector<std::string>{"a:2:1", "b:1:1"});
    CHECK(ids(must(store.sessions(false, "bob"))) == std::vector<std::string>{"b:1:1", "b:2:1"});
    CHECK(ids(must(store.sessions(true, "alice"))) == std::vector<std::string>{"a:2:1"});
    CHECK(must(store.sessions(false, "carol")).empty());

    // An upsert closes a session.
    CycleCommit close;
    close.time = utc(2024, 5, 1, 13);
    close.sessions = {session("a:2:1", "alice", utc(2024, 5, 1, 13))};
    must_commit(store, close);
    CHECK(must(store.sessions(true, "alice")).empty());
    CHECK(must(store.session("a:2:1"))->end == utc(2024, 5, 1, 13));
}

TEST_CASE("checkpoints round-trip with owners, names and identity", "[store]")
{
    TempDir dir;
    Store store = open_store(options_in(dir));
    const ClientKey a = v4(3, "10.8.0.2"), b = v4(3, "10.8.0.3"), c = ClientKey::parse(4, "fd00::9");

    CycleCommit first;
    first.time = utc(2024, 5, 1, 12);
    first.identity = CounterIdentity{"boot-1", 10, 11};
    first.address_updates = {
        {a, {traffic(1, 1, 1, 1), "s1"}}, {b, {traffic(2, 2, 2, 2), "s2"}}, {c, {traffic(3, 3, 3, 3), ""}}};
    first.interface_updates = {{3, {traffic(5, 5, 5, 5), traffic(0, 0, 0, 0)}},
                               {4, {traffic(6, 6, 6, 6), traffic(3, 3, 3, 3)}}};
    first.interface_names = {{3, "tun0"}, {4, "tun1"}};
    must_commit(store, first);

    CycleCommit second;
    second.time = utc(2024, 5, 1, 12, 1);
    second.address_updates = {{a, {traffic(7, 7, 7, 7), "s3"}}, {b, {traffic(4, 4, 4, 4), ""}}}; // b: nobody's now
    second.interface_updates = {{3, {traffic(8, 8, 8, 8), traffic(1, 1, 1, 1)}}}; // name kept
    second.interface_names = {{4, "tun1-renamed"}, {5, "wg0"}};                   // traffic kept; a name only
    must_commit(store, second);

    auto checkpoint = must(store.checkpoint());
    REQUIRE(checkpoint);
    CHECK(checkpoint->identity == CounterIdentity{"boot-1", 10, 11}); // unchanged: not in the second commit
    CHECK(checkpoint->addresses == AddressCheckpoints{{a, {traffic(7, 7, 7, 7), "s3"}},
                                                      {b, {traffic(4, 4, 4, 4), ""}},
                                                      {c, {traffic(3, 3, 3, 3), ""}}});
    CHECK(checkpoint->interfaces ==
          std::map<uint32_t, InterfaceTraffic>{{3, {traffic(8, 8, 8, 8), traffic(1, 1, 1, 1)}},
                                               {4, {traffic(6, 6, 6, 6), traffic(3, 3, 3, 3)}}});
    CHECK(checkpoint->interface_names == std::map<uint32_t, std::string>{{3, "tun0"}, {4, "tun1-renamed"}, {5, "wg0"}});

    CycleCommit third;
    third.time = utc(2024, 5, 1, 12, 2);
    third.identity = CounterIdentity{"boot-2", 20, 21};
    must_commit(store, third);
    checkpoint = must(store.checkpoint());
    REQUIRE(checkpoint);
    CHECK(checkpoint->identity == CounterIdentity{"boot-2", 20, 21});
    CHECK(checkpoint->addresses.size() == 3); // kept
}

TEST_CASE("a full store fails the commit whole and works again with a larger limit", "[store]")
{
    TempDir dir;
    auto options = options_in(dir);
    options.initial_map_size = 64 << 10;
    options.max_map_size = 128 << 10;
    const int64_t t = utc(2024, 5, 1, 12);
    {
        Store store = open_store(options);
        must_commit(store, big_cycle(t, 3, "small"));

        const auto full = store.commit(big_cycle(t, 2000, "big"));
        REQUIRE_FALSE(full);
        INFO(full.error().message());
        CHECK_THAT(full.error().message(), Catch::Contains("is full") && Catch::Contains("131072 bytes"));
        CHECK(store.map_size() == 128 << 10);

        // Nothing of the failed commit, everything of the earlier one.
        CHECK(must(store.sessions()).size() == 3);
        CHECK(usage(store, "big-user-0", 0, t + kDay, Granularity::Hour).empty());
        CHECK(usage(store, "small-user-0", 0, t + kDay, Granularity::Hour).size() == 1);
        // Smaller commits still fit.
        must_commit(store, big_cycle(t, 1, "after"));
    }
    options.max_map_size = 64 << 20;
    Store store = open_store(options);
    must_commit(store, big_cycle(t, 2000, "big"));
    CHECK(must(store.sessions()).size() == 2004);
    CHECK(usage(store, "big-user-1999", 0, t + kDay, Granularity::Month).size() == 1);
}

TEST_CASE("a small map grows transparently up to the limit", "[store]")
{
    TempDir dir;
    auto options = options_in(dir);
    options.initial_map_size = 64 << 10;
    options.max_map_size = 64 << 20;
    Store store = open_store(options);
    CHECK(store.map_size() == 64 << 10);
    const int64_t t = utc(2024, 5, 1, 12);
    must_commit(store, big_cycle(t, 5000, "many"));
    CHECK(store.map_size() > (64 << 10));
    CHECK(store.map_size() <= (64 << 20));
    CHECK(must(store.sessions()).size() == 5000);
    CHECK(usage(store, "many-user-4999", 0, t + kDay, Granularity::Day) ==
          std::vector<UsageBucket>{{utc(2024, 5, 1), traffic(1, 100, 2, 200)}});
}

TEST_CASE("a reopened store keeps the map size it grew to", "[store]")
{
    TempDir dir;
    auto options = options_in(dir);
    options.initial_map_size = 64 << 10;
    uint64_t grown = 0;
    {
        Store store = open_store(options);
        must_commit(store, big_cycle(utc(2024, 5, 1, 12), 2000, "many"));
        grown = store.map_size();
    }
    CHECK(grown > (64 << 10));
    CHECK(open_store(options).map_size() == grown);
    options.initial_map_size = 4 * grown; // a larger initial size applies to an existing store too
    CHECK(open_store(options).map_size() == 4 * grown);
}

TEST_CASE("other threads read while commits grow the map", "[store]")
{
    TempDir dir;
    auto options = options_in(dir);
    options.initial_map_size = 64 << 10;
    Store store = open_store(options);
    const int64_t t = utc(2024, 5, 1, 12);

    std::atomic<int> failures = 0, reads = 0;
    {
        // Stopped and joined on the way out, also when a commit fails.
        struct Readers {
            std::atomic<bool> done = false;
            std::vector<std::thread> threads;
            ~Readers()
            {
                done = true;
                for (auto& thread : threads)
                    thread.join();
            }
        } readers;
        for (int i = 0; i < 3; ++i) {
            readers.threads.emplace_back([&] {
                size_t seen = 0;
                while (!readers.done) {
                    auto sessions = store.sessions();
                    // Commits only add sessions: a reader never sees fewer.
                    if (!sessions || sessions->size() < seen) ++failures;
                    if (sessions) seen = sessions->size();
                    ++reads;
                }
            });
        }
        for (int round = 0; round < 8; ++round)
            must_commit(store, big_cycle(t, 500, "round" + std::to_string(round)));
    }
    CHECK(failures == 0);
    CHECK(reads > 0);
    CHECK(store.map_size() > (64 << 10));
    CHECK(must(store.sessions()).size() == 4000);
}

TEST_CASE("a snapshot keeps its view while the same process commits", "[store]")
{
    TempDir dir;
    Store store = open_store(options_in(dir));
    must_commit(store, big_cycle(utc(2024, 5, 1, 12), 1, "first"));

    auto before = must(store.snapshot());
    must_commit(store, big_cycle(utc(2024, 5, 1, 12), 1, "second"));
    CHECK(must(before.sessions()).size() == 1);
    CHECK(must(store.sessions()).size() == 2);
}

TEST_CASE("a read-only store in another process reads while the daemon writes", "[store]")
{
    TempDir dir;
    auto options = options_in(dir);
    options.initial_map_size = 64 << 10; // the second commit grows it under the reader
    Store writer = open_store(options);
    const int64_t t = utc(2024, 5, 1, 12);
    must_commit(writer, big_cycle(t, 1, "first"));

    int fds[4];
    REQUIRE(pipe(fds) == 0);
    REQUIRE(pipe(fds + 2) == 0);
    UniqueFd from_parent(fds[0]), to_child(fds[1]), from_child(fds[2]), to_parent(fds[3]);
    ChildProcess child(fork());
    REQUIRE(child.pid >= 0);
    if (child.pid == 0) {
        // The reader: no Catch2 here; the exit code says what went wrong.
        to_child.reset();
        from_child.reset();
        auto reader_options = options;
        reader_options.read_only = true;
        auto reader = Store::open(reader_options);
        if (!reader) _exit(10);
        auto held = reader->snapshot();
        if (!held || held->sessions()->size() != 1) _exit(11);
        char byte = 'r';
        if (write(to_parent.get(), &byte, 1) != 1 || read(from_parent.get(), &byte, 1) != 1) _exit(12);
        // The writer has committed meanwhile, and was not blocked by `held`.
        if (held->sessions()->size() != 1) _exit(13);
        if (!held->usage("second-user-0", 0, t + kDay, Granularity::Hour)->empty()) _exit(14);
        held = Error{"released"}; // the reader adopts the grown map once no snapshot is open
        auto fresh = reader->sessions();
        if (!fresh || fresh->size() != 2001) _exit(15);
        if (reader->usage("second-user-0", 0, t + kDay, Granularity::Hour)->size() != 1) _exit(16);
        if (reader->commit(big_cycle(t, 1, "reader"))) _exit(17);
        if (reader->map_size() <= (64 << 10)) _exit(18);
        _exit(0);
    }
    from_parent.reset();
    to_parent.reset();
    char byte = 0;
    REQUIRE(read(from_child.get(), &byte, 1) == 1); // EOF if the child failed early
    must_commit(writer, big_cycle(t, 2000, "second"));
    REQUIRE(writer.map_size() > (64 << 10));
    REQUIRE(write(to_child.get(), &byte, 1) == 1);
    const int status = child.wait();
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("read-only opens: missing, never written, uninitialised", "[store]")
{
    TempDir dir;
    auto options = options_in(dir);
    options.read_only = true;

    SECTION("a missing store is an error that says where to look")
    {
        const auto missing = Store::open(options);
        REQUIRE_FALSE(missing);
        CHECK(missing.error().message() ==
              "no store at " + options.path + " (has vpnmeterd run with storage.path=" + options.path + "?)");
        CHECK_FALSE(std::filesystem::exists(options.path)); // and nothing was created
    }
    SECTION("a store the daemon opened but never committed to reads empty")
    {
        auto writer_options = options;
        writer_options.read_only = false;
        {
            Store writer = open_store(writer_options);
        }
        Store reader = open_store(options);
        CHECK(reader.schema_version() == 7);
        CHECK(must(reader.sessions()).empty());
        CHECK(must(reader.checkpoint()) == std::nullopt);
        CHECK(must(reader.unattributed()).empty());
        CHECK(usage(reader, "alice", 0, utc(2030, 1, 1), Granularity::Month).empty());
        CHECK_FALSE(reader.commit(CycleCommit{}));
        CHECK_FALSE(reader.prune(utc(2024, 1, 1)));
    }
    SECTION("an environment without the store's databases reads empty")
    {
        REQUIRE(mkdir(options.path.c_str(), 0700) == 0);
        put_raw(options.path, "unrelated", "k", "v");
        Store reader = open_store(options);
        CHECK(reader.schema_version() == 0);
        CHECK(must(reader.sessions()).empty());
        CHECK(must(reader.checkpoint()) == std::nullopt);
    }
    SECTION("an empty data file is no store")
    {
        REQUIRE(mkdir(options.path.c_str(), 0700) == 0);
        std::ofstream(options.path + "/data.mdb").close();
        const auto empty = Store::open(options);
        REQUIRE_FALSE(empty);
        CHECK_THAT(empty.error().message(), Catch::StartsWith("no store at " + options.path));
    }
}

TEST_CASE("a reopened store keeps everything", "[store]")
{
    TempDir dir;
    const auto options = options_in(dir, "Europe/Berlin");
    const int64_t t = utc(2024, 5, 1, 12);
    CycleCommit cycle = big_cycle(t, 3, "kept");
    cycle.unattributed["tun0"] = traffic(1, 2, 3, 4);
    cycle.identity = CounterIdentity{"boot", 1, 2};
    cycle.address_updates = {{v4(3, "10.8.0.2"), {traffic(1, 1, 1, 1), "kept:0:1"}}};
    cycle.interface_updates = {{3, {traffic(2, 2, 2, 2), traffic(1, 1, 1, 1)}}};
    cycle.interface_names = {{3, "tun0"}};
    {
        Store store = open_store(options);
        must_commit(store, cycle);
    }
    Store store = open_store(options);
    CHECK(store.schema_version() == 7);
    CHECK(must(store.sessions()) == cycle.sessions);
    CHECK(usage(store, "kept-user-2", 0, t + kDay, Granularity::Day) ==
          std::vector<UsageBucket>{{utc(2024, 4, 30, 22), traffic(1, 100, 2, 200)}}); // midnight CEST
    CHECK(must(store.unattributed()).size() == 1);
    const auto checkpoint = must(store.checkpoint());
    REQUIRE(checkpoint);
    CHECK(checkpoint->identity == *cycle.identity);
    CHECK(checkpoint->addresses == cycle.address_updates.checkpoints());
    CHECK(checkpoint->interfaces == cycle.interface_updates);
    CHECK(checkpoint->interface_names == cycle.interface_names);
}

TEST_CASE("opening fails clearly on a newer schema, an unknown zone, a second open", "[store]")
{
    TempDir dir;
    auto options = options_in(dir);

    SECTION("unknown time zone")
    {
        options.timezone = "Mars/Olympus_Mons";
        const auto store = Store::open(options);
        REQUIRE_FALSE(store);
        CHECK_THAT(store.error().message(), Catch::Contains("unknown time zone 'Mars/Olympus_Mons'"));
        CHECK_FALSE(std::filesystem::exists(options.path));
    }
    SECTION("a schema version from the future")
    {
        {
            Store store = open_store(options);
        }
        put_raw(options.path, "meta", "schema_version", encoding::encode_u32(8));
        for (bool read_only : {false, true}) {
            options.read_only = read_only;
            const auto store = Store::open(options);
            REQUIRE_FALSE(store);
            CHECK_THAT(store.error().message(), Catch::Contains("schema version 8") &&
                                                    Catch::Contains("newer than this vpnmeter understands (7)"));
        }
    }
    SECTION("the same store twice in one process")
    {
        Store first = open_store(options);
        const auto second = Store::open(options);
        REQUIRE_FALSE(second);
        CHECK_THAT(second.error().message(), Catch::Contains("already open in this process"));
        options.read_only = true;
        CHECK_FALSE(Store::open(options));
    }
    SECTION("a path that is a file")
    {
        std::ofstream(options.path).close();
        const auto store = Store::open(options);
        REQUIRE_FALSE(store);
        CHECK_THAT(store.error().message(), Catch::Contains("not a directory"));
    }
}

// An upgrade (or a downgrade) opens a store another release wrote: the
// package test does it for real; these pin down the schema checks.
TEST_CASE("a store from a newer release is refused and left as it was", "[store]")
{
    constexpr uint32_t kSchemaVersion = 7; // this release's (store_impl.h)
    TempDir dir;
    auto options = options_in(dir);
    const int64_t t = utc(2026, 11, 1, 12);
    {
        Store store = open_store(options);
        must_commit(store, big_cycle(t, 2, "old"));
    }
    put_raw(options.path, "meta", "schema_version", encoding::encode_u32(kSchemaVersion + 1));
    const auto refused = Store::open(options);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().message() ==
          "initialise store at " + options.path + ": the store at " + options.path + " has schema version " +
              std::to_string(kSchemaVersion + 1) + ", newer than this vpnmeter understands (" +
              std::to_string(kSchemaVersion) + "): it was written by a newer release; upgrade vpnmeter");

    // Nothing was stamped or migrated: with the version back, all is there.
    put_raw(options.path, "meta", "schema_version", encoding::encode_u32(kSchemaVersion));
    Store store = open_store(options);
    CHECK(store.schema_version() == kSchemaVersion);
    CHECK(must(store.sessions()).size() == 2);
    CHECK(usage(store, "old-user-1", 0, t + kDay, Granularity::Day) ==
          std::vector<UsageBucket>{{utc(2026, 11, 1), traffic(1, 100, 2, 200)}});
}

TEST_CASE("prune drops hour and day buckets past retention, keeps months", "[store]")
{
    TempDir dir;
    auto options = options_in(dir);
    options.hourly_retention_days = 2;
    options.daily_retention_days = 10;
    Store store = open_store(options);
    const int64_t now = utc(2024, 5, 20, 12, 30);
    const std::vector<int64_t> times = {utc(2024, 3, 1, 1),   utc(2024, 5, 1, 8),   utc(2024, 5, 10, 11),
                                        utc(2024, 5, 18, 11), utc(2024, 5, 18, 13), utc(2024, 5, 20, 12)};
    for (int64_t time : times) {
        CycleCommit cycle;
        cycle.time = time;
        for (const char* user : {"alice", "bob", "carol"})
            cycle.user_usage[user] = traffic(1, 1, 1, 1);
        must_commit(store, cycle);
        REQUIRE(store.roll_up(time)); // as the daemon, after each cycle
    }
    auto starts = [&](const std::string& user, Granularity g) {
        std::vector<int64_t> out;
        for (const auto& bucket : usage(store, user, 0, utc(2030, 1, 1), g))
            out.push_back(bucket.start);
        return out;
    };
    REQUIRE(starts("bob", Granularity::Hour).size() == 6);
    REQUIRE(store.prune(now));

    for (const char* user : {"alice", "bob", "carol"}) {
        INFO(user);
        // Hours: the cutoff is 2024-05-18 12:00; the bucket holding it stays.
        CHECK(starts(user, Granularity::Hour) == std::vector<int64_t>{utc(2024, 5, 18, 13), utc(2024, 5, 20, 12)});
        // Days: the cutoff is 2024-05-10.
        CHECK(starts(user, Granularity::Day) ==
              std::vector<int64_t>{utc(2024, 5, 10), utc(2024, 5, 18), utc(2024, 5, 20)});
        CHECK(starts(user, Granularity::Month) == std::vector<int64_t>{utc(2024, 3, 1), utc(2024, 5, 1)});
    }
    CHECK(usage(store, "alice", 0, utc(2030, 1, 1), Granularity::Month)[1].traffic == traffic(5, 5, 5, 5));
    REQUIRE(store.prune(now)); // idempotent
    CHECK(starts("carol", Granularity::Hour).size() == 2);
}

TEST_CASE("the usage key orders by granularity, time, then user", "[store]")
{
    using encoding::usage_key;
    CHECK(usage_key(Granularity::Hour, -5, "b") < usage_key(Granularity::Hour, 0, "a"));
    CHECK(usage_key(Granularity::Hour, 0, "zz") < usage_key(Granularity::Hour, 1, "a"));
    CHECK(usage_key(Granularity::Hour, 255, "a") < usage_key(Granularity::Hour, 256, "a"));
    CHECK(usage_key(Granularity::Hour, 7, "a") < usage_key(Granularity::Hour, 7, "ab"));
    CHECK(usage_key(Granularity::Hour, 7, "ab") < usage_key(Granularity::Hour, 7, "b"));
    // Every hour before every day and month bucket: runs per granularity.
    CHECK(usage_key(Granularity::Day, 1LL << 40, "a") < usage_key(Granularity::Hour, 0, "a"));
    CHECK(usage_key(Granularity::Hour, 1LL << 40, "a") < usage_key(Granularity::Month, 0, "a"));
    const std::string bytes = usage_key(Granularity::Month, -42, std::string("a\0b", 3));
    const auto key = encoding::decode_usage_key(bytes); // views into `bytes`
    REQUIRE(key);
    CHECK(key->user == std::string("a\0b", 3));
    CHECK(key->granularity == Granularity::Month);
    CHECK(key->start == -42);
    CHECK(encoding::encode(traffic(1, 2, 3, 4)).size() == encoding::kTrafficSize);
}

TEST_CASE("address checkpoint keys are compact and sort as client keys do", "[store]")
{
    CHECK(encoding::encode(v4(1, "10.0.0.1")).size() == 9);
    CHECK(encoding::encode(ClientKey::parse(7, "fd00::1")).size() == 21);
    // Random keys: IPv4 as the datapath writes them, IPv4 with bytes after the
    // address (never written, still kept exactly), IPv6; a few interfaces.
    std::mt19937_64 random(42);
    std::vector<ClientKey> keys;
    for (int i = 0; i < 5000; ++i) {
        ClientKey key;
        key.ifindex = static_cast<uint32_t>(random() % 3 + (random() % 2 ? 0 : 0x01000000));
        const int kind = static_cast<int>(random() % 3);
        key.family = kind == 2 ? AF_INET6 : AF_INET;
        const size_t size = kind == 0 ? 4 : 16;
        for (size_t b = 0; b < size; ++b) key.addr[b] = static_cast<uint8_t>(random() % 4); // collisions wanted
        keys.push_back(key);
    }
    std::vector<std::string> encoded;
    for (const ClientKey& key : keys) {
        encoded.push_back(encoding::encode(key));
        CHECK(encoding::decode_client_key(encoded.back()) == key);
    }
    for (size_t i = 1; i < keys.size(); ++i) {
        INFO(keys[i - 1].address() << " / " << keys[i].address());
        CHECK((keys[i - 1] <=> keys[i]) == (encoded[i - 1] <=> encoded[i]));
    }
    CHECK_FALSE(encoding::decode_client_key(std::string(9, '\0')));  // 4 address bytes but not IPv4
    CHECK_FALSE(encoding::decode_client_key(std::string(24, '\0'))); // the schema 3 size
}

TEST_CASE("address checkpoints hold any counter value, and reject truncated records", "[store]")
{
    for (uint64_t value : {uint64_t{0}, uint64_t{1}, uint64_t{127}, uint64_t{128}, uint64_t{1} << 40, ~uint64_t{0}}) {
        const AddressCheckpoint checkpoint{traffic(value, ~value, value / 3, 7), "udp:1:17"};
        const std::string bytes = encoding::encode(checkpoint);
        CHECK(encoding::decode_address_checkpoint(bytes) == checkpoint);
        CHECK_FALSE(encoding::decode_address_checkpoint(bytes.substr(0, 3)));
    }
    CHECK(encoding::encode(AddressCheckpoint{traffic(1, 1500, 1, 1500), ""}).size() == 6);
    CHECK_FALSE(encoding::decode_address_checkpoint(std::string(11, '\xff'))); // longer than a u64
}

TEST_CASE("a schema 3 store is migrated: address checkpoints rewritten compact, their owners apart", "[store]")
{
    TempDir dir;
    auto options = options_in(dir);
    REQUIRE(mkdir(options.path.c_str(), 0700) == 0);
    // The schema 3 layout: a 24-byte key, a 32-byte traffic value, the owner.
    auto old_key = [](const ClientKey& key) {
        std::string out;
        for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>(key.ifindex >> (8 * i)));
        out.push_back(static_cast<char>(key.family));
        out.append(3, '\0');
        out.append(reinterpret_cast<const char*>(key.addr.data()), key.addr.size());
        return out;
    };
    const AddressCheckpoints expected = AddressCheckpoints::from_unsorted({
        {v4(3, "10.8.0.2"), {traffic(5, 500, 6, 600), "udp:1:17"}},
        {v4(3, "10.8.0.10"), {traffic(1, 2, 3, 4), ""}},
        {ClientKey::parse(3, "fd00::2"), {traffic(~0ull, 1, 0, 0), "udp:1:17"}},
        {v4(12, "10.9.0.1"), {traffic(0, 0, 0, 0), ""}},
    });
    put_raw(options.path, "meta", "schema_version", encoding::encode_u32(3));
    for (const auto& [key, checkpoint] : expected)
        put_raw(options.path, "checkpoint_addresses", old_key(key),
                encoding::encode(checkpoint.raw) + checkpoint.owner);
    {
        Store store = open_store(options);
        CHECK(store.schema_version() == 7);
        auto checkpoint = must(store.checkpoint());
        REQUIRE(checkpoint);
        CHECK(checkpoint->addresses == expected);
    }
    CHECK(get_raw(options.path, "checkpoint_addresses", old_key(v4(3, "10.8.0.2"))).empty());
    CHECK(get_raw(options.path, "checkpoint_addresses", encoding::encode(v4(3, "10.8.0.2"))) ==
          encoding::encode_address_checkpoint(traffic(5, 500, 6, 600), ""));
    CHECK(get_raw(options.path, "checkpoint_owners", encoding::encode(v4(3, "10.8.0.2"))) == "udp:1:17");
    Store store = open_store(options); // as it is now
    CHECK(must(store.checkpoint())->addresses == expected);
}

TEST_CASE("a schema 6 store is migrated: the addresses' owners move apart from their raw values", "[store]")
{
    TempDir dir;
    auto options = options_in(dir);
    REQUIRE(mkdir(options.path.c_str(), 0700) == 0);
    const AddressCheckpoints expected = AddressCheckpoints::from_unsorted({
        {v4(3, "10.8.0.2"), {traffic(5, 500, 6, 600), "openvpn:alice:1700000000"}},
        {v4(3, "10.8.0.10"), {traffic(1, 2, 3, 4), ""}},
        {ClientKey::parse(3, "fd00::2"), {traffic(~0ull, 1, 0, 0), "openvpn:alice:1700000000"}},
    });
    put_raw(options.path, "meta", "schema_version", encoding::encode_u32(6));
    for (const auto& [key, checkpoint] : expected) // schema 6: the owner ends the record
        put_raw(options.path, "checkpoint_addresses", encoding::encode(key), encoding::encode(checkpoint));
    {
        Store store = open_store(options);
        CHECK(store.schema_version() == 7);
        auto checkpoint = must(store.checkpoint());
        REQUIRE(checkpoint);
        CHECK(checkpoint->addresses == expected);
    }
    for (const auto& [key, checkpoint] : expected) {
        CAPTURE(key.address());
        CHECK(get_raw(options.path, "checkpoint_addresses", encoding::encode(key)) ==
              encoding::encode_address_checkpoint(checkpoint.raw, ""));
        CHECK(get_raw(options.path, "checkpoint_owners", encoding::encode(key)) == checkpoint.owner);
    }
}

TEST_CASE("an address's owner is written when it changes; the raw values every cycle", "[store]")
{
    TempDir dir;
    auto options = options_in(dir);
    Store store = open_store(options);
    const ClientKey a = v4(3, "10.8.0.2"), b = v4(3, "10.8.0.3");
    const int64_t t = utc(2026, 11, 1, 12);
    {
        CycleCommit cycle;
        cycle.time = t;
        cycle.address_updates = {{a, {traffic(1, 100, 1, 100), "s1"}}, {b, {traffic(1, 50, 0, 0), "s2"}}};
        must_commit(store, cycle);
    }
    // As the reconciler's first step: the owners last committed, not noted
    // as changed. Had the store rewritten them, b's owner would now be "s9".
    const std::deque<AddressUpdates::Viewed> read{{a, traffic(2, 200, 2, 200)}, {b, traffic(2, 90, 0, 0)}};
    {
        CycleCommit cycle;
        cycle.time = t + 60;
        const uint32_t s1 = cycle.address_updates.add_owner("s1");
        cycle.address_updates.append(read[0], s1);
        cycle.address_updates.append(read[1], cycle.address_updates.add_owner("s9"));
        must_commit(store, cycle);
    }
    auto checkpoint = must(store.checkpoint());
    REQUIRE(checkpoint);
    CHECK(checkpoint->addresses == AddressCheckpoints::from_unsorted({{a, {traffic(2, 200, 2, 200), "s1"}},
                                                                      {b, {traffic(2, 90, 0, 0), "s2"}}}));
    // A change: a's owner leaves (nobody's: its owner record goes), b's is s3.
    {
        CycleCommit cycle;
        cycle.time = t + 120;
        cycle.address_updates = {{a, {traffic(3, 300, 3, 300), ""}}, {b, {traffic(3, 99, 0, 0), "s3"}}};
        must_commit(store, cycle);
    }
    checkpoint = must(store.checkpoint());
    CHECK(checkpoint->addresses == AddressCheckpoints::from_unsorted({{a, {traffic(3, 300, 3, 300), ""}},
                                                                      {b, {traffic(3, 99, 0, 0), "s3"}}}));
    CHECK(get_raw(options.path, "checkpoint_owners", encoding::encode(a)).empty());
    CHECK(get_raw(options.path, "checkpoint_owners", encoding::encode(b)) == "s3");
}

TEST_CASE("a full store says why, and a raised limit applies without reopening", "[store]")
{
    TempDir dir;
    auto options = options_in(dir);
    options.initial_map_size = 64 << 10;
    options.max_map_size = 64 << 10;
    const int64_t t = utc(2024, 5, 1, 12);
    Store store = open_store(options);
    StoreFailure failure = StoreFailure::other;
    REQUIRE(store.commit(big_cycle(t, 1, "small"), &failure));
    CHECK(failure == StoreFailure::none);

    REQUIRE_FALSE(store.commit(big_cycle(t, 2000, "big"), &failure));
    CHECK(failure == StoreFailure::map_full);
    CHECK(std::string(to_string(failure)) == "map_full");
    CHECK(must(store.sessions()).size() == 1);

    store.set_max_map_size(64 << 20); // a SIGHUP with a larger storage.map_size
    CHECK(store.max_map_size() == 64 << 20);
    REQUIRE(store.commit(big_cycle(t, 2000, "big"), &failure));
    CHECK(failure == StoreFailure::none);
    CHECK(must(store.sessions()).size() == 2001);
    CHECK(store.map_size() > (64 << 10));

    store.set_max_map_size(64 << 10); // lowered below the map: never shrunk, commits that fit go on
    must_commit(store, big_cycle(t, 1, "after"));
    CHECK(store.map_size() > (64 << 10));
}

namespace {

// A usage key as schemas 1 and 2 wrote it: user-major.
std::string schema2_usage_key(const std::string& user, char granularity, int64_t start)
{
    std::string key;
    key.push_back(static_cast<char>(user.size() >> 8));
    key.push_back(static_cast<char>(user.size()));
    key += user;
    key.push_back(granularity);
    const uint64_t flipped = static_cast<uint64_t>(start) ^ (uint64_t(1) << 63);
    for (int i = 7; i >= 0; --i) key.push_back(static_cast<char>(flipped >> (8 * i)));
    return key;
}

} // namespace

TEST_CASE("a schema 2 store is migrated: usage re-keyed by time, active sessions apart", "[store]")
{
    TempDir dir;
    auto options = options_in(dir);
    REQUIRE(mkdir(options.path.c_str(), 0700) == 0);
    const int64_t may1 = utc(2024, 5, 1), may2 = utc(2024, 5, 2), jun1 = utc(2024, 6, 1);
    const int64_t hour = utc(2024, 5, 2, 13);
    put_raw(options.path, "meta", "schema_version", encoding::encode_u32(2));
    const std::string alice("al\0ice", 6);
    for (auto [user, granularity, start, t] :
         {std::tuple{alice, 'h', hour, traffic(1, 10, 2, 20)}, {alice, 'd', may1, traffic(3, 30, 4, 40)},
          {alice, 'd', may2, traffic(1, 10, 2, 20)}, {alice, 'm', may1, traffic(4, 40, 6, 60)},
          {std::string("bob"), 'm', jun1, traffic(5, 50, 7, 70)}})
        put_raw(options.path, "usage", schema2_usage_key(user, granularity, start), encoding::encode(t));
    const Session open = session("udp:17:1700000000", alice);
    const Session closed = session("udp:17:1600000000", alice, 1'600'000'500); // sorts first
    put_raw(options.path, "sessions", open.id, encoding::encode(open));
    put_raw(options.path, "sessions", closed.id, encoding::encode(closed));

    auto read_only = options;
    read_only.read_only = true;
    { // The CLI leaves the migration to the daemon.
        auto reader = Store::open(read_only);
        REQUIRE_FALSE(reader);
        CHECK_THAT(reader.error().message(), Catch::Contains("has schema version 2; start this release's vpnmeterd"));
    }
    auto check = [&](const Store& store) {
        CHECK(store.schema_version() == 7);
        const int64_t end = utc(2030, 1, 1);
        CHECK(must(store.usage(alice, 0, end, Granularity::Hour)) ==
              std::vector<UsageBucket>{{hour, traffic(1, 10, 2, 20)}});
        CHECK(must(store.usage(alice, 0, end, Granularity::Day)) ==
              std::vector<UsageBucket>{{may1, traffic(3, 30, 4, 40)}, {may2, traffic(1, 10, 2, 20)}});
        CHECK(must(store.usage(alice, may2, end, Granularity::Day)) ==
              std::vector<UsageBucket>{{may2, traffic(1, 10, 2, 20)}});
        CHECK(must(store.usage(alice, 0, end, Granularity::Month)) ==
              std::vector<UsageBucket>{{may1, traffic(4, 40, 6, 60)}});
        CHECK(must(store.usage("bob", 0, end, Granularity::Month)) ==
              std::vector<UsageBucket>{{jun1, traffic(5, 50, 7, 70)}});
        CHECK(must(store.usage("bob", 0, end, Granularity::Day)).empty());
        CHECK(must(store.users()) == std::vector<std::string>{"bob", alice}); // by length, then name
        CHECK(must(store.sessions()) == std::vector<Session>{closed, open});
        CHECK(must(store.sessions(true)) == std::vector<Session>{open});
        CHECK(must(store.session(open.id)) == open);
        CHECK(must(store.session(closed.id)) == closed);
    };
    {
        Store store = open_store(options);
        check(store);
    }
    check(open_store(read_only));
    CHECK(get_raw(options.path, "usage", schema2_usage_key("bob", 'm', jun1)).empty()); // the old database is gone
    CHECK(get_raw(options.path, "sessions", open.id).empty());
    CHECK_FALSE(get_raw(options.path, "sessions_active", open.id).empty());

    // The migrated buckets keep adding up, and the session closes into the closed ones.
    Store store = open_store(options);
    CycleCommit cycle;
    cycle.time = hour + 60;
    cycle.user_usage[alice] = traffic(1, 1, 1, 1);
    Session ended = open;
    ended.end = hour + 60;
    cycle.sessions.push_back(ended);
    must_commit(store, cycle);
    CHECK(must(store.usage(alice, hour, hour + 1, Granularity::Hour)) ==
          std::vector<UsageBucket>{{hour, traffic(2, 11, 3, 21)}});
    CHECK(must(store.usage(alice, may2, may2 + 1, Granularity::Day)) ==
          std::vector<UsageBucket>{{may2, traffic(2, 11, 3, 21)}});
    CHECK(must(store.sessions(true)).empty());
    CHECK(must(store.sessions()) == std::vector<Session>{closed, ended});
    CHECK(get_raw(options.path, "sessions_active", open.id).empty());
}

// Schema 5: a cycle adds to its hour only; the hour goes into its day and
// month when a later hour is committed. Readers must see the same as if all
// three were written every cycle.
TEST_CASE("days and months include every hour, rolled up or not, across zones, gaps and a clock going back",
          "[store]")
{
    for (const char* zone : {"UTC", "Asia/Kolkata", "America/New_York"}) {
        CAPTURE(zone);
        TempDir dir;
        auto options = options_in(dir, zone);
        Store store = open_store(options);
        std::mt19937 rng(11);
        auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
        const std::vector<std::string> users{"alice", "bob", "carol"};
        std::map<std::tuple<Granularity, int64_t, std::string>, Traffic> model;
        int64_t now = utc(2024, 3, 9, 20); // a DST change in New York on the 10th
        for (int step = 0; step < 300; ++step) {
            CAPTURE(step, now);
            CycleCommit cycle;
            cycle.time = now;
            for (const auto& user : users) {
                if (pick(2) == 0) continue;
                const Traffic t = traffic(1, 1 + pick(1000), 1, 1 + pick(1000));
                cycle.user_usage[user] = t;
                for (Granularity g : {Granularity::Hour, Granularity::Day, Granularity::Month})
                    model[{g, store.bucket_start(now, g), user}] += t;
            }
            must_commit(store, cycle);
            if (pick(3) != 0) REQUIRE(store.roll_up(now)); // else left to the readers for now
            const int64_t from = utc(2024, 2, 1), to = utc(2025, 1, 1);
            for (const Store* view : {&store}) {
                for (Granularity g : {Granularity::Hour, Granularity::Day, Granularity::Month}) {
                    for (const auto& user : users) {
                        std::vector<UsageBucket> expected;
                        for (const auto& [key, t] : model)
                            if (std::get<0>(key) == g && std::get<2>(key) == user)
                                expected.push_back({std::get<1>(key), t});
                        std::sort(expected.begin(), expected.end(),
                                  [](const auto& a, const auto& b) { return a.start < b.start; });
                        REQUIRE(usage(*view, user, from, to, g) == expected);
                    }
                }
            }
            // Mostly minutes; now and then hours or days later, or back an hour.
            const uint64_t jump = pick(10);
            now += jump < 6 ? 60 * static_cast<int64_t>(pick(30)) : jump < 9 ? 3600 * static_cast<int64_t>(pick(40)) : -3600;
        }
    }
}

TEST_CASE("a schema 4 store is migrated: its current hour, already in its day and month, is not added again",
          "[store]")
{
    TempDir dir;
    auto options = options_in(dir);
    const int64_t now = static_cast<int64_t>(std::time(nullptr)); // the migration goes by the clock
    const int64_t hour = now / 3600 * 3600, day = now / kDay * kDay;
    // As schema 4 left it: this hour's usage in the hour, day and month
    // buckets, and no record of a roll-up.
    int64_t month = 0, next_month = 0;
    {
        Store before = open_store(options);
        month = before.bucket_start(now, Granularity::Month);
        next_month = before.bucket_start(hour + 3600, Granularity::Month);
    }
    put_raw(options.path, "meta", "schema_version", encoding::encode_u32(4));
    for (auto [g, start] : {std::pair{Granularity::Hour, hour}, {Granularity::Day, day}, {Granularity::Month, month}})
        put_raw(options.path, "usage_by_time", encoding::usage_key(g, start, "alice"),
                encoding::encode(traffic(1, 10, 1, 10)));
    put_raw(options.path, "users", encoding::user_key("alice"), "");

    Store store = open_store(options);
    CHECK(store.schema_version() == 7);
    CycleCommit cycle;
    cycle.time = now; // the same hour: taken as rolled up, so added to all three
    cycle.user_usage["alice"] = traffic(1, 5, 1, 5);
    must_commit(store, cycle);
    cycle.time = hour + 3600 + 60; // the next hour: into its hour only, until it is over
    must_commit(store, cycle);
    const Traffic both = traffic(2, 15, 2, 15), all = traffic(3, 20, 3, 20);
    CHECK(usage(store, "alice", hour, hour + 7200, Granularity::Hour) ==
          std::vector<UsageBucket>{{hour, both}, {hour + 3600, traffic(1, 5, 1, 5)}});
    const auto days = usage(store, "alice", day, day + 2 * kDay, Granularity::Day);
    Traffic summed;
    for (const auto& bucket : days) summed += bucket.traffic;
    CHECK(summed == all);
    Traffic months;
    for (const auto& bucket : usage(store, "alice", month, next_month + 1, Granularity::Month)) months += bucket.traffic;
    CHECK(months == all);
    CHECK(usage(store, "alice", month, month + 1, Granularity::Month).front().traffic == (next_month == month ? all : both));
    cycle.time = hour + 2 * 3600 + 60;
    must_commit(store, cycle);
    REQUIRE(store.roll_up(cycle.time)); // the hours before this one, once
    REQUIRE(store.roll_up(cycle.time));
    summed = {};
    for (const auto& bucket : usage(store, "alice", day, day + 2 * kDay, Granularity::Day)) summed += bucket.traffic;
    CHECK(summed == traffic(4, 25, 4, 25));
}

// Schema 6: an active session's totals in a record of their own.
TEST_CASE("totals-only commits keep every read of a session exact, through changes, closing and reopening",
          "[store]")
{
    TempDir dir;
    const auto options = options_in(dir);
    const int64_t t = utc(2026, 11, 1, 12);
    Session alice = session("udp:1:1", "alice"), bob = session("udp:2:1", "bob");
    // `whole`: sessions written whole; `moved`: sessions whose totals alone changed.
    auto commit = [&](std::vector<Session> whole, const std::vector<Session>& moved, Store& store) {
        CycleCommit cycle;
        cycle.time = t;
        cycle.sessions = std::move(whole);
        for (const Session& s : moved) cycle.session_totals.push_back(totals_of(s));
        must_commit(store, cycle);
    };
    auto read_back = [](const Store& store, const Session& expected) {
        CHECK(must(store.session(expected.id)) == std::optional(expected));
        auto all = must(store.sessions());
        auto active = must(store.sessions(true));
        auto of_user = must(store.sessions(false, expected.user));
        for (const auto* list : {&all, &active, &of_user}) {
            auto it = std::find_if(list->begin(), list->end(), [&](const Session& s) { return s.id == expected.id; });
            if (!expected.active() && list == &active) {
                CHECK(it == list->end());
                continue;
            }
            REQUIRE(it != list->end());
            CHECK(*it == expected);
        }
    };
    {
        Store store = open_store(options);
        commit({alice, bob}, {}, store); // new: whole records
        for (int i = 1; i <= 3; ++i) {
            alice.usage += traffic(1, 100, 1, 1000);
            alice.source_download_bytes += 1500;
            bob.usage += traffic(1, 7, 0, 0);
            commit({}, {bob, alice}, store); // in any order
        }
        read_back(store, alice);
        read_back(store, bob);
        alice.real_address = "198.51.100.7:4444"; // roamed: the whole record again
        alice.usage += traffic(1, 1, 1, 1);
        bob.usage += traffic(1, 1, 1, 1);
        commit({alice}, {bob}, store); // one of each
        read_back(store, alice);
        read_back(store, bob);
        alice.usage += traffic(1, 1, 1, 1);
        commit({}, {alice}, store);
        read_back(store, alice);
        bob.usage += traffic(2, 2, 2, 2);
        bob.end = t + 60; // closed: the whole record, and no totals left behind
        commit({bob}, {}, store);
        read_back(store, bob);
    }
    CHECK_FALSE(get_raw(options.path, "session_totals", alice.id).empty()); // in use
    CHECK(get_raw(options.path, "session_totals", bob.id).empty());
    CHECK(get_raw(options.path, "sessions_active", bob.id).empty());
    Store reopened = open_store(options); // what the daemon resumes from
    read_back(reopened, alice);
    read_back(reopened, bob);
}
