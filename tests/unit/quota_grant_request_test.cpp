#include <catch2/catch.hpp>

#include "config.h"
#include "quota/grant_request.h"

using namespace vpnmeter;

namespace {

constexpr int64_t kNow = 1795414983; // 2026-11-23T06:23:03Z

QuotaConfig quotas()
{
    return parse_config("interfaces: [tun0]\n"
                        "quotas:\n"
                        "  plans:\n"
                        "    small: { limit: 20MB, period: daily }\n"
                        "  users:\n"
                        "    bob: small\n",
                        "test.yaml")
        .quotas;
}

std::string error_of(const std::string& body, Grant grant = {})
{
    auto applied = apply_grant_request(quotas(), "bob", grant, body, kNow);
    if (applied) FAIL("expected an error for " << body);
    return applied.error().message();
}

} // namespace

TEST_CASE("a quota PUT body sets the plan, limit, top-up and expiry", "[quota][api]")
{
    auto applied = apply_grant_request(quotas(), "bob", Grant{},
                                       R"({"plan": "small", "limit_bytes": 1000, "topup_bytes": 500,)"
                                       R"( "expires": "2026-12-31T23:59:59Z"})",
                                       kNow);
    REQUIRE(applied);
    const Grant& grant = applied.value();
    CHECK(grant.plan == "small");
    CHECK(grant.limit_bytes == 1000u);
    CHECK(grant.topup_bytes == 500);
    CHECK(grant.topup_period_start == 1795392000); // bob's daily period began 2026-11-23T00:00Z
    CHECK(grant.expires == 1798761599);

    Grant before;
    before.limit_bytes = 7;
    before.expires = 1;
    auto cleared = apply_grant_request(quotas(), "bob", before, R"({"limit_bytes": null, "expires": null})", kNow);
    REQUIRE(cleared);
    CHECK_FALSE(cleared.value().limit_bytes);
    CHECK_FALSE(cleared.value().expires);
    auto unlimited = apply_grant_request(quotas(), "bob", Grant{}, R"({"plan": "unlimited", "expires": 42})", kNow);
    REQUIRE(unlimited);
    CHECK(unlimited.value().plan == "unlimited");
    CHECK(unlimited.value().expires == 42);
}

TEST_CASE("a bad quota PUT body is refused whole, with the reason", "[quota][api]")
{
    CHECK(error_of("[1]") == "body: expected a JSON object, got array");
    CHECK(error_of(R"({"plan": "big"})") == "plan: no plan named 'big' in the configuration");
    CHECK(error_of(R"({"limit": 1})") == "unknown field 'limit' (expected plan, limit_bytes, topup_bytes, expires)");
    CHECK(error_of(R"({"limit_bytes": -1})") ==
          "limit_bytes: expected a number of bytes (0 to 2^64-1) or null, got number -1");
    CHECK(error_of(R"({"topup_bytes": "1GB"})") == "topup_bytes: expected a number of bytes (0 to 2^64-1), got string \"1GB\"");
    CHECK(error_of(R"({"expires": 18446744073709551615})") ==
          "expires: expected an RFC 3339 time, a date, unix seconds or null, got number 18446744073709551615");
    CHECK(error_of("1e400") == "body is not JSON: number overflow parsing '1e400'");
    CHECK_THAT(error_of("{\"plan\": "), Catch::StartsWith("body is not JSON: parse error at line 1, column 10: syntax error"));
    CHECK_THAT(error_of(R"({"expires": "someday"})"), Catch::StartsWith("expires: "));
    // A good field does not carry a bad one.
    CHECK_THAT(error_of(R"({"plan": "small", "topup_bytes": true})"), Catch::StartsWith("topup_bytes: "));
}
