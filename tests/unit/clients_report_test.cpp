#include <catch2/catch.hpp>

#include "clients_report.h"

using namespace vpnmeter;

TEST_CASE("clients --json has the contract's shape", "[report]")
{
    CounterSnapshot s;
    s.clients[ClientKey::parse(4, "10.8.0.2")] = {{3, 300}, {5, 5000}};
    s.clients[ClientKey::parse(4, "fd00:8::2")] = {{1, 80}, {0, 0}};
    s.interfaces[4] = {{{7, 622}, {6, 5060}}, {{1, 42}, {1, 60}}, {{2, 200}, {0, 0}}};
    const auto j = clients_json(s, {{4, "tun0"}});

    REQUIRE(j["interfaces"].size() == 1);
    const auto& tun0 = j["interfaces"][0];
    CHECK(tun0["name"] == "tun0");
    CHECK(tun0["upload_bytes"] == 622);
    CHECK(tun0["download_bytes"] == 5060);
    CHECK(tun0["upload_packets"] == 7);
    CHECK(tun0["download_packets"] == 6);
    CHECK(tun0["unattributed_upload_bytes"] == 42);
    CHECK(tun0["unattributed_download_bytes"] == 60);
    CHECK(tun0["dropped_upload_bytes"] == 200); // by enforcement: in the total, no client's
    CHECK(tun0["dropped_upload_packets"] == 2);
    CHECK(tun0["dropped_download_bytes"] == 0);

    REQUIRE(j["clients"].size() == 2);
    const auto& v4 = j["clients"][0];
    CHECK(v4["interface"] == "tun0");
    CHECK(v4["address"] == "10.8.0.2");
    CHECK(v4["upload_bytes"] == 300);
    CHECK(v4["download_bytes"] == 5000);
    CHECK(v4["upload_packets"] == 3);
    CHECK(v4["download_packets"] == 5);
    CHECK(j["clients"][1]["address"] == "fd00:8::2");
}

TEST_CASE("the table shows human units, busiest client first", "[report]")
{
    CounterSnapshot s;
    s.clients[ClientKey::parse(4, "10.8.0.2")] = {{1, 100}, {0, 0}};
    s.clients[ClientKey::parse(4, "10.8.0.3")] = {{1, 3 * 1024 * 1024}, {0, 0}};
    s.interfaces[4] = {};
    const std::string table = clients_table(s, {});
    CHECK(table.find("if4") != std::string::npos); // unnamed interfaces still show
    CHECK(table.find("3.00 MiB") != std::string::npos);
    CHECK(table.find("10.8.0.3") < table.find("10.8.0.2"));
    const std::string exact = clients_table(s, {}, /*exact=*/true); // --bytes
    CHECK(exact.find("3145728") != std::string::npos);
    CHECK(exact.find("MiB") == std::string::npos);
}
