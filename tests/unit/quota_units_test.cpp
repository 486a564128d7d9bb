#include <catch2/catch.hpp>

#include <stdexcept>

#include "quota/units.h"

using namespace vpnmeter;

namespace {

std::string size_error(const std::string& text)
{
    try {
        parse_size(text);
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    FAIL("expected parse_size to refuse '" << text << "'");
    return {};
}

std::string rate_error(const std::string& text)
{
    try {
        parse_rate(text);
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
    FAIL("expected parse_rate to refuse '" << text << "'");
    return {};
}

} // namespace

TEST_CASE("sizes in every unit", "[quota]")
{
    CHECK(parse_size("0") == 0);
    CHECK(parse_size("1234") == 1234);
    CHECK(parse_size("20B") == 20);
    CHECK(parse_size("20kB") == 20'000);
    CHECK(parse_size("20MB") == 20'000'000);
    CHECK(parse_size("20GB") == 20'000'000'000);
    CHECK(parse_size("2TB") == 2'000'000'000'000);
    CHECK(parse_size("20KiB") == 20 * 1024);
    CHECK(parse_size("20MiB") == 20 * 1024 * 1024);
    CHECK(parse_size("5GiB") == 5ULL * 1024 * 1024 * 1024);
    CHECK(parse_size("2TiB") == 2ULL * 1024 * 1024 * 1024 * 1024);
    CHECK(parse_size("20 MB") == 20'000'000);
    CHECK(parse_size("18446744073709551615B") == 18446744073709551615ULL);
}

TEST_CASE("sizes with decimals come to whole bytes", "[quota]")
{
    CHECK(parse_size("1.5GB") == 1'500'000'000);
    CHECK(parse_size("1.1GB") == 1'100'000'000); // exact, no floating point
    CHECK(parse_size("0.5KiB") == 512);
    CHECK(parse_size("1.25GiB") == 1'342'177'280);
    CHECK(parse_size(".5MB") == 500'000);
    CHECK(parse_size("2.000001MB") == 2'000'001);
    CHECK(size_error("1.5B") == "expected a whole number of bytes, got '1.5B'");
    CHECK(size_error("1.3KiB") == "expected a whole number of bytes, got '1.3KiB'");
    CHECK(size_error("2.0000001MB") == "expected a whole number of bytes, got '2.0000001MB'");
}

TEST_CASE("sizes refuse ambiguous and unknown units", "[quota]")
{
    CHECK(size_error("20mb") ==
          "'20mb' is ambiguous: write 20MB (10^6 bytes) or 20MiB (2^20 bytes); speeds are in bits, like 20Mbit");
    CHECK(size_error("20Mb") ==
          "'20Mb' is ambiguous: write 20MB (10^6 bytes) or 20MiB (2^20 bytes); speeds are in bits, like 20Mbit");
    CHECK(size_error("1KB") ==
          "'1KB' is ambiguous: write 1kB (10^3 bytes) or 1KiB (2^10 bytes); speeds are in bits, like 1Kbit");
    CHECK(size_error("5 gb").find("write 5GB (10^9 bytes) or 5GiB (2^30 bytes)") != std::string::npos);
    CHECK(size_error("2tb").find("write 2TB (10^12 bytes) or 2TiB (2^40 bytes)") != std::string::npos);
    const std::string expected =
        "expected a size like 20MB, 1.5GB or 5GiB (units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), got ";
    CHECK(size_error("20mib") == expected + "'20mib'");
    CHECK(size_error("20Mbit") == expected + "'20Mbit'");
    CHECK(size_error("lots") == expected + "'lots'");
    CHECK(size_error("") == expected + "''");
    CHECK(size_error("-5MB") == expected + "'-5MB'");
    CHECK(size_error("MB") == expected + "'MB'");
    CHECK(size_error("1.MB") == expected + "'1.MB'");
    CHECK(size_error("1..5MB") == expected + "'1..5MB'");
    CHECK(size_error("20  MB") == expected + "'20  MB'");
    CHECK(size_error("20PB") == expected + "'20PB'");
    CHECK(size_error("20000000TB") == "'20000000TB' is too large");
    CHECK(size_error("99999999999999999999") == expected + "'99999999999999999999'");
}

TEST_CASE("rates in bits per second", "[quota]")
{
    CHECK(parse_rate("1bit") == 1);
    CHECK(parse_rate("500kbit") == 500'000);
    CHECK(parse_rate("12Mbit") == 12'000'000);
    CHECK(parse_rate("1Gbit") == 1'000'000'000);
    CHECK(parse_rate("2mbit") == 2'000'000); // tc's spelling
    CHECK(parse_rate("2Kbit") == 2'000);
    CHECK(parse_rate("1.5Mbit") == 1'500'000);
    CHECK(parse_rate("0.5 Gbit") == 500'000'000);

    const std::string expected = "expected a rate like 12Mbit or 500kbit (units bit, kbit, Mbit, Gbit), got ";
    CHECK(rate_error("2000000") == expected + "'2000000'"); // bits or bytes? say it
    CHECK(rate_error("2MB") == expected + "'2MB'");
    CHECK(rate_error("2Mbps") == expected + "'2Mbps'");
    CHECK(rate_error("fast") == expected + "'fast'");
    CHECK(rate_error("1.5bit") == "expected a whole number of bits per second, got '1.5bit'");
    CHECK(rate_error("0Mbit") == "a rate must be above 0 (leave it out to not limit), got '0Mbit'");
}
