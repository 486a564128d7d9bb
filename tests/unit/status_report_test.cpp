#include <catch2/catch.hpp>

#include "status_report.h"

using namespace vpnmeter;

TEST_CASE("status JSON has the documented shape, nulls where nothing is known yet", "[status]")
{
    AgentStatus s;
    s.version = "1.2.3";
    s.pid = 42;
    s.started = 1000;
    s.config_path = "/etc/vpnmeter/vpnmeter.yaml";
    s.pin_path = "/sys/fs/bpf/vpnmeter";
    s.interfaces = {{"tun0", 7, true}, {"tun1", 8, false}};
    s.sources = {{"openvpn", "udp1194", true, 1090, std::nullopt},
                 {"openvpn", "tcp443", false, std::nullopt, "refused"}};
    s.store_path = "/var/lib/vpnmeter";
    s.store_size_bytes = 4096;
    const auto j = status_json(s, 1100);
    CHECK(j["agent"]["uptime_seconds"] == 100);
    CHECK(j["agent"]["pid"] == 42);
    CHECK(j["interfaces"][1] == nlohmann::json{{"name", "tun1"}, {"ifindex", 8}, {"attached", false}});
    CHECK(j["sources"][0]["state"] == "up");
    CHECK(j["sources"][0]["error"].is_null());
    CHECK(j["sources"][1]["last_refresh"].is_null());
    CHECK(j["sources"][1]["error"] == "refused");
    CHECK(j["store"]["last_commit"].is_null());
    CHECK(j["quotas"].is_null());

    s.last_commit = 1099;
    s.users_blocked = 2;
    s.users_throttled = 1;
    const auto later = status_json(s, 1100);
    CHECK(later["store"]["last_commit"] == 1099);
    CHECK(later["quotas"] == nlohmann::json{{"users_blocked", 2}, {"users_throttled", 1}});

    const std::string text = status_text(later, 1100, false);
    CHECK(text.find("pid 42, up 1m 40s") != std::string::npos);
    CHECK(text.find("4.00 KiB") != std::string::npos);
    CHECK(text.find("2 users blocked, 1 throttled") != std::string::npos);
    CHECK(text.find("tcp443") != std::string::npos);
    CHECK(text.find("refused") != std::string::npos);
    CHECK(text.find("NO") != std::string::npos); // tun1 not attached
    CHECK(status_text(later, 1100, true).find("4096 bytes") != std::string::npos);
}

TEST_CASE("durations read at a glance", "[status]")
{
    CHECK(human_duration(-3) == "0s");
    CHECK(human_duration(59) == "59s");
    CHECK(human_duration(61) == "1m 01s");
    CHECK(human_duration(3 * 3600 + 5 * 60) == "3h 05m");
    CHECK(human_duration(2 * 86400 + 3 * 3600) == "2d 3h");
}
