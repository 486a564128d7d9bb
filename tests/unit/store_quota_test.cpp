// The store's quota state: usage in the current period and alerts fired
// (committed with the cycle), grants (written on their own).
#include <catch2/catch.hpp>

#include <lmdb.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>
#include <thread>

#include "store/background_commit.h"
#include "store/encoding.h"
#include "store/store.h"
#include "store_support.h"

using namespace vpnmeter;

namespace {

constexpr int64_t kDay = 86400;

using namespace vpnmeter::testing;



Traffic traffic(uint64_t up_bytes, uint64_t down_bytes)
{
    return Traffic{Count{1, up_bytes}, Count{1, down_bytes}};
}

const int64_t kMay = utc(2024, 5, 1);
const int64_t kJune = utc(2024, 6, 1);

// A store laid out by the release before quotas: schema version 1 and only
// its seven databases.
void create_pre_quota_store(const std::string &path)
{
    REQUIRE(mkdir(path.c_str(), 0700) == 0);
    MDB_env *env = nullptr;
    REQUIRE(mdb_env_create(&env) == 0);
    REQUIRE(mdb_env_set_maxdbs(env, 16) == 0);
    REQUIRE(mdb_env_open(env, path.c_str(), 0, 0600) == 0);
    MDB_txn *txn = nullptr;
    REQUIRE(mdb_txn_begin(env, nullptr, 0, &txn) == 0);
    auto put = [&](MDB_dbi dbi, const std::string &key, const std::string &value) {
        MDB_val k{key.size(), const_cast<char *>(key.data())};
        MDB_val v{value.size(), const_cast<char *>(value.data())};
        REQUIRE(mdb_put(txn, dbi, &k, &v, 0) == 0);
    };
    for (const char *name : {"meta", "sessions", "usage", "unattributed", "checkpoint_addresses",
                             "checkpoint_interfaces", "checkpoint_meta"}) {
        MDB_dbi dbi = 0;
        REQUIRE(mdb_dbi_open(txn, name, MDB_CREATE, &dbi) == 0);
        if (std::strcmp(name, "meta") == 0) put(dbi, "schema_version", encoding::encode_u32(1));
        if (std::strcmp(name, "unattributed") == 0) put(dbi, "tun0", encoding::encode(traffic(40, 60)));
    }
    REQUIRE(mdb_txn_commit(txn) == 0);
    mdb_env_close(env);
}

} // namespace

TEST_CASE("quota usage commits with the cycle and replaces the stored record", "[store][quota]")
{
    TempDir dir;
    Store store = open_store(options_in(dir));
    CHECK(must(store.quota_usage()).empty());
    CHECK(must(store.quota_usage("alice")) == std::nullopt);

    CycleCommit first;
    first.time = kMay + 3600;
    first.user_usage = {{"alice", traffic(100, 900)}};
    first.quota_usage = {{"alice", {kMay, 100, 900}}, {"bob", {kMay, 0, 0}}};
    must_commit(store, first);
    auto before = must(store.snapshot());

    CycleCommit second;
    second.time = kMay + 7200;
    second.user_usage = {{"alice", traffic(5, 5)}};
    second.quota_usage = {{"alice", {kMay, 105, 905}}}; // absolute: replaces
    must_commit(store, second);

    CHECK(must(store.quota_usage()) ==
          std::map<std::string, QuotaUsageRecord>{{"alice", {kMay, 105, 905}}, {"bob", {kMay, 0, 0}}});
    CHECK(must(store.quota_usage("alice")) == QuotaUsageRecord{kMay, 105, 905});
    CHECK(must(store.quota_usage("al")) == std::nullopt);
    CHECK(must(store.quota_usage("")) == std::nullopt);
    CHECK(must(store.quota_usage(std::string(2000, 'x'))) == std::nullopt);
    CHECK(must(before.quota_usage("alice")) == QuotaUsageRecord{kMay, 100, 900}); // a snapshot keeps its view

    // A new period: the engine writes the new start and starts from zero.
    CycleCommit next_period;
    next_period.time = kJune + 60;
    next_period.quota_usage = {{"alice", {kJune, 1, 2}}};
    must_commit(store, next_period);
    CHECK(must(store.quota_usage("alice")) == QuotaUsageRecord{kJune, 1, 2});
}

TEST_CASE("quota records and usage commit all or nothing", "[store][quota]")
{
    TempDir dir;
    auto options = options_in(dir);
    Store store = open_store(options);

    CycleCommit bad;
    bad.time = kMay + 60;
    bad.user_usage = {{"alice", traffic(10, 10)}};
    bad.quota_usage = {{"alice", {kMay, 10, 10}}};
    bad.alerts_fired = {{"alice", kMay, 80, kMay + 60}, {"", kMay, 80, kMay + 60}};
    const auto failed = store.commit(bad);
    REQUIRE_FALSE(failed);
    CHECK_THAT(failed.error().message(), Catch::Contains("empty user name"));
    CHECK(must(store.usage("alice", 0, kJune, Granularity::Month)).empty());
    CHECK(must(store.quota_usage()).empty());
    CHECK(must(store.alerts()).empty());
}

TEST_CASE("quota records planned while the commit is written go in with it, or nothing does", "[store][quota]")
{
    TempDir dir;
    auto options = options_in(dir);
    Store store = open_store(options);
    CycleCommit cycle;
    cycle.time = kMay + 60;
    cycle.user_usage = {{"alice", traffic(10, 20)}};

    SECTION("planned: filled after the commit began, written with it")
    {
        std::promise<bool> planned;
        auto committing = std::async(std::launch::async, [&, ready = planned.get_future().share()] {
            return store.commit(cycle, nullptr, ready);
        });
        std::this_thread::sleep_for(std::chrono::milliseconds(50)); // the commit is waiting by now
        cycle.quota_usage = {{"alice", {kMay, 10, 20}}};
        cycle.alerts_fired = {{"alice", kMay, 80, kMay + 60}};
        planned.set_value(true);
        REQUIRE(committing.get());
        CHECK(must(store.quota_usage("alice")) == QuotaUsageRecord{kMay, 10, 20});
        CHECK(must(store.alerts_fired("alice", kMay)) == std::set<int>{80});
        CHECK(must(store.usage("alice", 0, kJune, Granularity::Hour)).size() == 1);
    }
    SECTION("not planned, or the planner gone: nothing at all")
    {
        for (bool broken : {false, true}) {
            auto committing = [&] {
                std::promise<bool> planned;
                auto result = std::async(std::launch::async, [&, ready = planned.get_future().share()] {
                    return store.commit(cycle, nullptr, ready);
                });
                if (!broken) planned.set_value(false);
                return result; // a broken promise: it goes with this scope
            }();
            const auto failed = committing.get();
            REQUIRE_FALSE(failed);
            CHECK_THAT(failed.error().message(), Catch::Contains("quota usage was not planned"));
        }
        CHECK(must(store.usage("alice", 0, kJune, Granularity::Hour)).empty());
        CHECK(must(store.quota_usage()).empty());
    }
}

TEST_CASE("a commit begun on the usage alone writes the rest as it is planned, or nothing", "[store][quota]")
{
    // The daemon's order: the store starts once the users' usage is final,
    // the quota records come next, the sessions and checkpoints last.
    TempDir dir;
    Store store = open_store(options_in(dir));
    CycleCommit cycle;
    cycle.time = kMay + 60;
    cycle.user_usage = {{"alice", traffic(10, 20)}};
    auto fill_quotas = [&] { cycle.quota_usage = {{"alice", {kMay, 10, 20}}}; };
    auto fill_rest = [&] {
        Session session;
        session.id = "udp1194:alice:1";
        session.user = "alice";
        session.start = kMay;
        session.usage = Traffic{{1, 10}, {1, 20}};
        cycle.sessions = {session};
        cycle.unattributed["tun0"] = traffic(3, 4);
    };
    auto nothing_written = [&] {
        CHECK(must(store.usage("alice", 0, kJune, Granularity::Hour)).empty());
        CHECK(must(store.quota_usage()).empty());
        CHECK(must(store.sessions()).empty());
        CHECK(must(store.unattributed()).empty());
    };

    SECTION("planned while it writes: all of it lands")
    {
        BackgroundCommit committing;
        committing.start(store, cycle);
        std::this_thread::sleep_for(std::chrono::milliseconds(30)); // writing the usage, then waiting
        fill_quotas();
        committing.quotas_planned(true);
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
        fill_rest();
        committing.rest_planned(true);
        REQUIRE(committing.wait());
        CHECK(must(store.usage("alice", 0, kJune, Granularity::Hour)).size() == 1);
        CHECK(must(store.quota_usage("alice")) == QuotaUsageRecord{kMay, 10, 20});
        CHECK(must(store.sessions()).size() == 1);
        CHECK(must(store.unattributed()).size() == 1);
    }
    SECTION("the rest never planned: nothing")
    {
        BackgroundCommit committing;
        committing.start(store, cycle);
        fill_quotas();
        committing.quotas_planned(true);
        committing.rest_planned(false);
        const auto failed = committing.wait();
        REQUIRE_FALSE(failed);
        CHECK_THAT(failed.error().message(), Catch::Contains("sessions and checkpoints were not planned"));
        nothing_written();
    }
    SECTION("the planning thread unwinds: the commit is refused and waited for, nothing written")
    {
        try {
            BackgroundCommit committing;
            committing.start(store, cycle);
            fill_quotas();
            committing.quotas_planned(true);
            throw std::runtime_error("planning failed");
        } catch (const std::runtime_error&) {
        }
        nothing_written();
        fill_rest();
        REQUIRE(store.commit(cycle)); // the store takes the next one
        CHECK(must(store.sessions()).size() == 1);
    }
}

TEST_CASE("quota state survives a reopen and reads from a read-only store", "[store][quota]")
{
    TempDir dir;
    auto options = options_in(dir);
    CycleCommit cycle;
    cycle.time = kMay + 60;
    cycle.user_usage = {{"alice", traffic(10, 10)}};
    cycle.quota_usage = {{"alice", {kMay, 10, 10}}};
    cycle.alerts_fired = {{"alice", kMay, 80, kMay + 60}};
    {
        Store store = open_store(options);
        must_commit(store, cycle);
        REQUIRE(store.put_grant("alice", R"({"bytes":100000000000})"));
    }
    options.read_only = true;
    Store reader = open_store(options);
    CHECK(must(reader.quota_usage("alice")) == QuotaUsageRecord{kMay, 10, 10});
    CHECK(must(reader.alerts()) == cycle.alerts_fired);
    CHECK(must(reader.grant("alice")) == R"({"bytes":100000000000})");
    const auto put = reader.put_grant("bob", "{}");
    REQUIRE_FALSE(put);
    CHECK_THAT(put.error().message(), Catch::Contains("read-only"));
    const auto erased = reader.erase_grant("alice");
    REQUIRE_FALSE(erased);
    CHECK_THAT(erased.error().message(), Catch::Contains("read-only"));
}

TEST_CASE("an alert is recorded once per user, period and threshold", "[store][quota]")
{
    TempDir dir;
    Store store = open_store(options_in(dir));
    CHECK(must(store.alerts_fired("alice", kMay)).empty());

    CycleCommit first;
    first.time = kMay + 100;
    first.alerts_fired = {{"alice", kMay, 80, kMay + 100}, {"alice", kMay, 100, kMay + 100},
                          {"bob", kMay, 80, kMay + 100},   {"al", kMay, 50, kMay + 100},
                          {"alice", -kDay, 90, 5},         {"alice", kMay, -1, kMay + 100}};
    must_commit(store, first);
    CycleCommit again; // the same alert again, as after a crash before the engine saw the commit
    again.time = kMay + 200;
    again.alerts_fired = {{"alice", kMay, 80, kMay + 200}, {"alice", kJune, 80, kJune + 1}};
    must_commit(store, again);

    CHECK(must(store.alerts_fired("alice", kMay)) == std::set<int>{-1, 80, 100});
    CHECK(must(store.alerts_fired("alice", kJune)) == std::set<int>{80});
    CHECK(must(store.alerts_fired("alice", -kDay)) == std::set<int>{90});
    CHECK(must(store.alerts_fired("alice", kMay + 1)).empty());
    CHECK(must(store.alerts_fired("al", kMay)) == std::set<int>{50});
    CHECK(must(store.alerts_fired("bob", kMay)) == std::set<int>{80});
    CHECK(must(store.alerts_fired("carol", kMay)).empty());
    CHECK(must(store.alerts_fired(std::string(2000, 'x'), kMay)).empty());

    // By user (length first), then period, then threshold; the first fired_at stands.
    CHECK(must(store.alerts("alice")) == std::vector<AlertRecord>{{"alice", -kDay, 90, 5},
                                                                  {"alice", kMay, -1, kMay + 100},
                                                                  {"alice", kMay, 80, kMay + 100},
                                                                  {"alice", kMay, 100, kMay + 100},
                                                                  {"alice", kJune, 80, kJune + 1}});
    CHECK(must(store.alerts()).size() == 7);
    CHECK(must(store.alerts())[0] == AlertRecord{"al", kMay, 50, kMay + 100});
}

TEST_CASE("prune drops alerts of past periods", "[store][quota]")
{
    TempDir dir;
    auto options = options_in(dir);
    options.daily_retention_days = 30;
    Store store = open_store(options);
    const int64_t now = kJune + 10 * kDay;
    const int64_t april = utc(2024, 4, 1);

    CycleCommit cycle;
    cycle.time = now;
    cycle.user_usage = {{"alice", traffic(1, 1)}};
    cycle.quota_usage = {
        {"alice", {kJune, 1, 1}}, // in June now
        {"carol", {kMay, 1, 1}},  // an alert of a later period than this stays
    };
    cycle.alerts_fired = {
        {"alice", april, 80, april}, {"alice", kMay, 80, kMay}, {"alice", kMay, 100, kMay},
        {"alice", kJune, 80, now},   {"bob", april, 80, april}, {"bob", kMay + 15 * kDay, 80, kMay},
        {"carol", kJune, 80, now},   {"carol", kMay, 90, now},
    };
    must_commit(store, cycle);
    REQUIRE(store.prune(now));

    CHECK(must(store.alerts()) == std::vector<AlertRecord>{
                                      {"bob", kMay + 15 * kDay, 80, kMay}, // no quota record: 30 days kept
                                      {"alice", kJune, 80, now},
                                      {"carol", kMay, 90, now},
                                      {"carol", kJune, 80, now},
                                  });
    REQUIRE(store.prune(now)); // idempotent
    CHECK(must(store.alerts()).size() == 4);
    // Usage pruning still runs in the same pass.
    CHECK(must(store.usage("alice", 0, now + 1, Granularity::Hour)).size() == 1);
}

TEST_CASE("grants are stored as given, replaced and erased", "[store][quota]")
{
    TempDir dir;
    auto options = options_in(dir);
    Store store = open_store(options);
    CHECK(must(store.grants()).empty());
    CHECK(must(store.grant("alice")) == std::nullopt);

    const std::string top_up = R"({"extra_bytes":100000000000,"until":"2024-06-01T00:00:00Z"})";
    const std::string odd_user("b\xff\0b", 4); // names are bytes
    REQUIRE(store.put_grant("alice", "{}"));
    REQUIRE(store.put_grant("alice", top_up));
    REQUIRE(store.put_grant(odd_user, "[1]"));
    CHECK(must(store.grant("alice")) == top_up);
    CHECK(must(store.grant(odd_user)) == "[1]");
    CHECK(must(store.grants()) == std::map<std::string, std::string>{{"alice", top_up}, {odd_user, "[1]"}});

    REQUIRE(store.erase_grant("alice"));
    REQUIRE(store.erase_grant("alice")); // already gone: fine
    REQUIRE(store.erase_grant(""));
    CHECK(must(store.grant("alice")) == std::nullopt);
    CHECK(must(store.grants()).size() == 1);

    auto refused = [&](const std::string &user, const std::string &json) {
        const auto put = store.put_grant(user, json);
        return put ? std::string("(accepted)") : put.error().message();
    };
    CHECK_THAT(refused("", "{}"), Catch::Contains("empty user name"));
    CHECK_THAT(refused("alice", ""), Catch::Contains("empty grant"));
    CHECK_THAT(refused(std::string(2000, 'x'), "{}"), Catch::Contains("2000 bytes is longer than the store's limit"));
    CHECK(must(store.grant("alice")) == std::nullopt);
    CHECK(must(store.grant(std::string(2000, 'x'))) == std::nullopt);
}

TEST_CASE("grants written from another thread while cycles commit", "[store][quota]")
{
    TempDir dir;
    auto options = options_in(dir);
    options.initial_map_size = 64 << 10; // commits grow the map under the grant writer and readers
    Store store = open_store(options);
    constexpr int kRounds = 300;
    std::atomic<int> failures = 0;
    std::atomic<bool> done = false;

    std::thread granter([&] {
        for (int i = 0; i < kRounds; ++i) {
            if (!store.put_grant("user-" + std::to_string(i), R"({"n":)" + std::to_string(i) + "}")) ++failures;
            if (i % 3 == 0 && !store.erase_grant("user-" + std::to_string(i))) ++failures;
        }
    });
    std::thread reader([&] {
        while (!done) {
            auto grants = store.grants();
            auto usage = store.quota_usage();
            if (!grants || !usage) ++failures;
        }
    });
    for (int i = 0; i < kRounds; ++i) {
        CycleCommit cycle;
        cycle.time = kMay + i;
        for (int u = 0; u < 20; ++u) {
            const std::string user = "cycle-user-" + std::to_string(u);
            cycle.user_usage[user] = traffic(1, 1);
            cycle.quota_usage[user] = {kMay, uint64_t(i + 1), uint64_t(i + 1)};
        }
        if (!store.commit(cycle)) ++failures;
    }
    granter.join();
    done = true;
    reader.join();

    CHECK(failures == 0);
    const auto grants = must(store.grants());
    CHECK(grants.size() == kRounds - kRounds / 3);
    CHECK(grants.at("user-299") == R"({"n":299})");
    CHECK_FALSE(grants.contains("user-3"));
    CHECK(must(store.quota_usage("cycle-user-7")) == QuotaUsageRecord{kMay, kRounds, kRounds});
    CHECK(must(store.usage("cycle-user-7", 0, kJune, Granularity::Month))[0].traffic ==
          Traffic{{kRounds, kRounds}, {kRounds, kRounds}});
}

TEST_CASE("a store from before quotas gains their databases when the daemon opens it", "[store][quota]")
{
    TempDir dir;
    auto options = options_in(dir);
    create_pre_quota_store(options.path);

    auto reader_options = options;
    reader_options.read_only = true;
    { // The CLI of this release before the daemon migrated it (schema 1 -> 3): a clear refusal.
        auto reader = Store::open(reader_options);
        REQUIRE_FALSE(reader);
        CHECK_THAT(reader.error().message(), Catch::Contains("start this release's vpnmeterd once to upgrade it"));
    }
    open_store(options); // the daemon migrates it
    { // Then: no quota data yet, and nothing fails.
        Store reader = open_store(reader_options);
        CHECK(reader.schema_version() == 7);
        CHECK(must(reader.quota_usage()).empty());
        CHECK(must(reader.quota_usage("alice")) == std::nullopt);
        CHECK(must(reader.alerts_fired("alice", kMay)).empty());
        CHECK(must(reader.alerts()).empty());
        CHECK(must(reader.grants()).empty());
        CHECK(must(reader.grant("alice")) == std::nullopt);
    }
    {
        Store store = open_store(options);
        CHECK(store.schema_version() == 7); // migrated
        const auto unattributed = must(store.unattributed()); // the old data is there
        REQUIRE(unattributed.size() == 1);
        CHECK(unattributed[0].traffic == traffic(40, 60));
        CycleCommit cycle;
        cycle.time = kMay + 60;
        cycle.quota_usage = {{"alice", {kMay, 1, 2}}};
        cycle.alerts_fired = {{"alice", kMay, 80, kMay + 60}};
        must_commit(store, cycle);
        REQUIRE(store.put_grant("alice", "{}"));
        REQUIRE(store.prune(kMay + 60));
    }
    options.read_only = true;
    Store reader = open_store(options);
    CHECK(must(reader.quota_usage("alice")) == QuotaUsageRecord{kMay, 1, 2});
    CHECK(must(reader.alerts_fired("alice", kMay)) == std::set<int>{80});
    CHECK(must(reader.grant("alice")) == "{}");
}

TEST_CASE("quota encodings are fixed-width, little-endian values and ordered keys", "[store][quota]")
{
    using namespace std::string_literals;
    CHECK(encoding::encode(QuotaUsageRecord{-2, 0x0102, 3}) ==
          "\xfe\xff\xff\xff\xff\xff\xff\xff"s + "\x02\x01\0\0\0\0\0\0"s + "\x03\0\0\0\0\0\0\0"s);
    CHECK(encoding::encode(QuotaUsageRecord{}).size() == encoding::kQuotaUsageSize);
    CHECK(encoding::decode_quota_usage(encoding::encode(QuotaUsageRecord{kMay, 1ull << 40, 7})) ==
          QuotaUsageRecord{kMay, 1ull << 40, 7});
    CHECK(encoding::decode_quota_usage("short") == std::nullopt);
    CHECK(encoding::decode_i64(encoding::encode_i64(-kMay)) == -kMay);

    // u16 BE user length, user, i64 BE period ^ sign bit, i32 BE threshold ^ sign bit.
    CHECK(encoding::alert_key("a", 0, 80) == "\0\x01"s + "a" + "\x80\0\0\0\0\0\0\0"s + "\x80\0\0\x50"s);
    CHECK(encoding::alert_key("a", -1, 0) < encoding::alert_key("a", 0, 0));
    CHECK(encoding::alert_key("a", 0, -1) < encoding::alert_key("a", 0, 0));
    CHECK(encoding::alert_key("a", 0, 99) < encoding::alert_key("a", 0, 100));
    CHECK(encoding::alert_key("a", kMay, 100) < encoding::alert_key("a", kJune, 0));
    CHECK(encoding::alert_key("a", 0, 0).starts_with(encoding::alert_prefix("a", 0)));
    const std::string bytes = encoding::alert_key("a\0b"s, -42, -7);
    const auto key = encoding::decode_alert_key(bytes);
    REQUIRE(key);
    CHECK(key->user == "a\0b"s);
    CHECK(key->period_start == -42);
    CHECK(key->threshold == -7);
    CHECK(encoding::decode_alert_key(bytes.substr(1)) == std::nullopt);
}
