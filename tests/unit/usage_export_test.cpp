#include <catch2/catch.hpp>

#include <sstream>

#include <nlohmann/json.hpp>

#include "store_support.h"
#include "usage_export.h"

using namespace vpnmeter;
using namespace vpnmeter::testing;

namespace {

Traffic traffic(uint64_t up_bytes, uint64_t down_bytes)
{
    Traffic t;
    t.upload = {1, up_bytes};
    t.download = {2, down_bytes};
    return t;
}

// alice: 10:xx and 23:xx on May 1, 00:xx on May 2; bob: May 2; "c,d" needs quoting in CSV.
Store filled(const TempDir& dir)
{
    Store store = open_store(options_in(dir));
    auto commit = [&](int64_t time, const std::string& user, Traffic t) {
        CycleCommit cycle;
        cycle.time = time;
        cycle.user_usage[user] = t;
        must_commit(store, cycle);
    };
    commit(utc(2024, 5, 1, 10, 30), "alice", traffic(100, 1000));
    commit(utc(2024, 5, 1, 23, 59, 59), "alice", traffic(1, 10));
    commit(utc(2024, 5, 2, 0, 0, 0), "alice", traffic(2, 20));
    commit(utc(2024, 5, 2, 12), "bob", traffic(7, 70));
    commit(utc(2024, 5, 2, 12), "c,d", traffic(3, 30));
    return store;
}

std::string exported(const Store& store, std::vector<std::string> users, ExportRange range, ExportFormat format)
{
    std::ostringstream out;
    auto status = export_usage(store, users, range, format, out);
    if (!status) FAIL(status.error().message());
    return out.str();
}

} // namespace

TEST_CASE("the store lists every user with usage, once each", "[export]")
{
    TempDir dir;
    Store store = filled(dir);
    CHECK(must(store.users()) == std::vector<std::string>{"bob", "c,d", "alice"}); // by key: length, then name
    TempDir empty;
    Store none = open_store(options_in(empty));
    CHECK(must(none.users()).empty());
}

TEST_CASE("CSV export: a row per user and bucket, --to exclusive at a bucket edge", "[export]")
{
    TempDir dir;
    Store store = filled(dir);
    // May 1 only: the bucket starting at --to (May 2 00:00) is not in it.
    const std::string day =
        exported(store, {"alice", "bob"}, {utc(2024, 5, 1), utc(2024, 5, 2), Granularity::Day}, ExportFormat::csv);
    CHECK(day == "user,start,upload_bytes,download_bytes,upload_packets,download_packets\r\n"
                 "alice,2024-05-01T00:00:00Z,101,1010,2,4\r\n");
    // By hour over both days; the last second of May 1 and the first of May 2 in their own buckets.
    const std::string hours =
        exported(store, {"alice"}, {utc(2024, 5, 1), utc(2024, 5, 3), Granularity::Hour}, ExportFormat::csv);
    CHECK(hours == "user,start,upload_bytes,download_bytes,upload_packets,download_packets\r\n"
                   "alice,2024-05-01T10:00:00Z,100,1000,1,2\r\n"
                   "alice,2024-05-01T23:00:00Z,1,10,1,2\r\n"
                   "alice,2024-05-02T00:00:00Z,2,20,1,2\r\n");
    const std::string quoted = exported(store, {"c,d"}, {0, utc(2025, 1, 1), Granularity::Month}, ExportFormat::csv);
    CHECK(quoted.find("\"c,d\",2024-05-01T00:00:00Z,3,30,1,2\r\n") != std::string::npos);
}

TEST_CASE("JSON export is one document whose totals are the rows' sums", "[export]")
{
    TempDir dir;
    Store store = filled(dir);
    const std::string text =
        exported(store, must(store.users()), {0, utc(2025, 1, 1), Granularity::Day}, ExportFormat::json);
    const auto j = nlohmann::json::parse(text);
    CHECK(j["by"] == "day");
    CHECK(j["from"] == "1970-01-01T00:00:00Z");
    REQUIRE(j["rows"].size() == 4); // alice: 2 days, bob 1, c,d 1
    uint64_t up = 0, down = 0;
    for (const auto& row : j["rows"]) {
        up += row["upload_bytes"].get<uint64_t>();
        down += row["download_bytes"].get<uint64_t>();
    }
    CHECK(up == 113);
    CHECK(down == 1130);
    CHECK(j["upload_bytes"] == up);
    CHECK(j["download_bytes"] == down);

    const auto empty =
        nlohmann::json::parse(exported(store, {"nobody"}, {0, utc(2025, 1, 1), Granularity::Day}, ExportFormat::json));
    CHECK(empty["rows"].empty());
    CHECK(empty["upload_bytes"] == 0);
}

TEST_CASE("export reports progress after each user and fails on a broken output", "[export]")
{
    TempDir dir;
    Store store = filled(dir);
    std::vector<std::pair<size_t, size_t>> seen;
    std::ostringstream out;
    REQUIRE(export_usage(store, {"alice", "bob", "c,d"}, {0, utc(2025, 1, 1), Granularity::Day}, ExportFormat::csv, out,
                         [&](size_t done, size_t total) { seen.emplace_back(done, total); }));
    CHECK(seen == std::vector<std::pair<size_t, size_t>>{{1, 3}, {2, 3}, {3, 3}});

    std::ostringstream broken;
    broken.setstate(std::ios::badbit);
    CHECK_FALSE(export_usage(store, {"alice"}, {0, utc(2025, 1, 1), Granularity::Day}, ExportFormat::csv, broken));
}
