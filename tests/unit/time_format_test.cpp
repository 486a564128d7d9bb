#include <catch2/catch.hpp>

#include "time_format.h"

using namespace vpnmeter;

TEST_CASE("RFC 3339 out, several forms in", "[time]")
{
    CHECK(format_rfc3339(0) == "1970-01-01T00:00:00Z");
    CHECK(format_rfc3339(1732345678) == "2024-11-23T07:07:58Z");
    CHECK(parse_time("2024-11-23T07:07:58Z") == 1732345678);
    CHECK(parse_time("2024-11-23T12:37:58+05:30") == 1732345678);
    CHECK(parse_time("2024-11-23T02:07:58-05:00") == 1732345678);
    CHECK(parse_time("2024-11-23") == 1732320000);
    CHECK(parse_time("1732345678") == 1732345678);
    CHECK_THROWS_AS(parse_time("yesterday"), std::invalid_argument);
    CHECK_THROWS_AS(parse_time("2024-13-01"), std::invalid_argument);
    CHECK_THROWS_AS(parse_time("2024-11-23T07:07"), std::invalid_argument);
    CHECK_THROWS_AS(parse_time("2024-11-23T07:07:58+5"), std::invalid_argument);
}
