#include <catch2/catch.hpp>

#include "format.h"
#include "top_view.h"

using namespace vpnmeter;

namespace {

TopUser user(uint64_t used, std::optional<uint64_t> limit, const std::string& state = "ok")
{
    TopUser u;
    u.user = "u";
    u.state = state;
    u.used_bytes = used;
    u.limit_bytes = limit;
    return u;
}

nlohmann::json reading(std::initializer_list<nlohmann::json> users) { return {{"users", users}}; }

nlohmann::json quota(const std::string& name, uint64_t up, uint64_t down, nlohmann::json limit,
                     const std::string& state = "ok")
{
    return {{"user", name},         {"plan", "p"},        {"state", state},        {"used_bytes", up + down},
            {"limit_bytes", limit}, {"upload_bytes", up}, {"download_bytes", down}};
}

} // namespace

TEST_CASE("bar colours: green under 75%, yellow from 75% to the limit, red at it or blocked", "[top]")
{
    CHECK(level_of(user(0, 1000)) == QuotaLevel::green);
    CHECK(level_of(user(749, 1000)) == QuotaLevel::green);
    CHECK(level_of(user(750, 1000)) == QuotaLevel::yellow); // exactly 75%
    CHECK(level_of(user(999, 1000)) == QuotaLevel::yellow);
    CHECK(level_of(user(1000, 1000)) == QuotaLevel::red); // exactly 100%
    CHECK(level_of(user(5000, 1000)) == QuotaLevel::red);
    CHECK(level_of(user(10, 1000, "blocked")) == QuotaLevel::red); // expired plan, a block via the API
    CHECK(level_of(user(10, 1000, "throttled")) == QuotaLevel::red);
    CHECK(level_of(user(0, 0)) == QuotaLevel::red); // a zero limit is spent from the start
    CHECK(level_of(user(1'000'000, std::nullopt)) == QuotaLevel::none);
    CHECK(level_of(user(1'000'000, std::nullopt, "expired")) == QuotaLevel::red);
    // 75% of a huge limit, no overflow in the comparison.
    const uint64_t big = 16'000'000'000'000'000'000ull;
    CHECK(level_of(user(big / 4 * 3, big)) == QuotaLevel::yellow);
    CHECK(level_of(user(big / 4 * 3 - 1, big)) == QuotaLevel::green);
}

TEST_CASE("quota bars fill in proportion and stop at full", "[top]")
{
    CHECK(quota_bar(0, 100, 10) == "[----------]");
    CHECK(quota_bar(50, 100, 10) == "[#####-----]");
    CHECK(quota_bar(99, 100, 10) == "[#########-]"); // not full before the limit
    CHECK(quota_bar(100, 100, 10) == "[##########]");
    CHECK(quota_bar(300, 100, 10) == "[##########]");
    CHECK(quota_bar(0, 0, 4) == "[####]");
    CHECK(quota_bar(UINT64_MAX - 1, UINT64_MAX, 20).size() == 22);
}

TEST_CASE("rates come from two readings; a new period or a new user shows 0", "[top]")
{
    const auto before = reading({quota("alice", 1000, 5000, 1'000'000), quota("bob", 9000, 9000, nullptr)});
    const auto now = reading({quota("alice", 1500, 6000, 1'000'000), quota("bob", 10, 20, nullptr),
                              quota("carol", 100, 100, 100, "blocked")});
    const auto users = top_users(now, before, 2.0);
    REQUIRE(users.size() == 3);
    CHECK(users[0].user == "alice"); // busiest first
    CHECK(users[0].upload_bps == Approx(500 * 8 / 2.0));
    CHECK(users[0].download_bps == Approx(1000 * 8 / 2.0));
    CHECK(users[1].user == "carol"); // then most used
    CHECK(users[1].upload_bps == 0);
    CHECK(users[2].user == "bob");
    CHECK(users[2].download_bps == 0); // counters went down: the period rolled over
    CHECK_FALSE(users[2].limit_bytes.has_value());
}

TEST_CASE("a frame lists every user with units, and colours only the bar when asked", "[top]")
{
    const auto now = reading({quota("alice", 600'000, 300'000, 1'000'000), quota("bob", 10, 20, 1'000'000),
                              quota("carol", 2'000'000, 0, 1'000'000, "blocked"), quota("dave", 5, 5, nullptr)});
    const auto users = top_users(now, nullptr, 1.0);
    const std::string plain = top_frame(users, 1'700'000'000, {});
    CHECK(plain.find("4 users, 1 blocked, 0 throttled") != std::string::npos);
    CHECK(plain.find("\x1b[") == std::string::npos);
    CHECK(plain.find("[##################--]") != std::string::npos); // alice at 90%
    CHECK(plain.find(" 90%") != std::string::npos);
    CHECK(plain.find("unlimited") != std::string::npos);
    CHECK(plain.find("879 KiB") != std::string::npos); // 900000 bytes, human
    CHECK(plain.find("0 bit/s") != std::string::npos);

    TopStyle style;
    style.color = true;
    style.exact_bytes = true;
    const std::string colored = top_frame(users, 1'700'000'000, style);
    CHECK(colored.find("900000") != std::string::npos);
    CHECK(colored.find("\x1b[33m[##################--]\x1b[0m") != std::string::npos); // alice yellow
    CHECK(colored.find("\x1b[31m[####################]\x1b[0m") != std::string::npos); // carol red
    CHECK(colored.find("\x1b[32m[--------------------]\x1b[0m") != std::string::npos); // bob green

    CHECK(top_frame({}, 0, {}).find("no users") != std::string::npos);
}

TEST_CASE("the JSON snapshot has raw numbers, percent and level", "[top]")
{
    const auto users = top_users(reading({quota("alice", 100, 650, 1000)}), reading({quota("alice", 0, 0, 1000)}), 1.0);
    const auto j = top_json(users, 42, 1.0);
    CHECK(j["time"] == 42);
    REQUIRE(j["users"].size() == 1);
    const auto& a = j["users"][0];
    CHECK(a["used_bytes"] == 750);
    CHECK(a["percent"] == 75.0);
    CHECK(a["level"] == "yellow");
    CHECK(a["upload_bps"] == 800);
    CHECK(a["download_bps"] == 5200);
    CHECK(top_json(top_users(reading({quota("x", 1, 1, nullptr)}), nullptr, 1), 0, 1)["users"][0]["limit_bytes"]
              .is_null());
}

TEST_CASE("rates in SI bits per second", "[format]")
{
    CHECK(human_rate(0) == "0 bit/s");
    CHECK(human_rate(-5) == "0 bit/s");
    CHECK(human_rate(800) == "800 bit/s");
    CHECK(human_rate(1500) == "1.50 kbit/s");
    CHECK(human_rate(12'000'000) == "12.0 Mbit/s");
    CHECK(human_rate(2.5e9) == "2.50 Gbit/s");
}
