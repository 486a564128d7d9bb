#include <catch2/catch.hpp>

#include "config.h"

using namespace vpnmeter;
using namespace std::chrono_literals;

namespace {

// The message of the ConfigError `text` raises.
std::string error_of(const std::string& text)
{
    try {
        parse_config(text, "test.yaml");
    } catch (const ConfigError& e) {
        return e.what();
    }
    FAIL("expected a ConfigError for:\n" << text);
    return {};
}

} // namespace

TEST_CASE("a full config parses", "[config]")
{
    const Config c = parse_config(R"(
interfaces: [tun0, "tun*"]
collect: { interval: 250ms }
bpf: { max_clients: 1_000_000, pin_path: /sys/fs/bpf/vpnmeter-test/ }
storage: { path: /var/lib/vpnmeter-test, timezone: Europe/Berlin }
log: { level: debug }
)",
                                  "test.yaml");
    CHECK(c.interfaces == std::vector<std::string>{"tun0", "tun*"});
    CHECK(c.collect_interval == 250ms);
    CHECK(c.max_clients == 1'000'000);
    CHECK(c.pin_path == "/sys/fs/bpf/vpnmeter-test");
    CHECK(c.storage_path == "/var/lib/vpnmeter-test");
    CHECK(c.storage_timezone == "Europe/Berlin");
    CHECK(c.log_level == "debug");
    CHECK(c.source == "test.yaml");
}

TEST_CASE("defaults fill what is not given", "[config]")
{
    const Config c = parse_config("interfaces: tun0\n", "test.yaml");
    CHECK(c.interfaces == std::vector<std::string>{"tun0"});
    CHECK(c.collect_interval == 1s);
    CHECK(c.max_clients == 65536);
    CHECK(c.pin_path == "/sys/fs/bpf/vpnmeter");
    CHECK(c.storage_path == "/var/lib/vpnmeter");
    CHECK(c.storage_timezone == "UTC");
}

TEST_CASE("errors name the file, the line, the key and what was expected", "[config]")
{
    CHECK(error_of("interfaces: [tun0]\ncollect:\n  interval: fast\n") ==
          "test.yaml:3:13: collect.interval: expected a duration like 1s or 500ms, got 'fast'");
    CHECK(error_of("interfaces: [tun0]\nbpf: { max_clients: 0 }\n") ==
          "test.yaml:2:21: bpf.max_clients: expected an integer from 1 to 16777216, got '0'");
    CHECK(error_of("interfaces: [tun0]\nbpf: { max_clients: lots }\n") ==
          "test.yaml:2:21: bpf.max_clients: expected an integer from 1 to 16777216, got 'lots'");
    CHECK(error_of("interfaces: [tun0]\nbpf: { pin_path: relative/dir }\n") ==
          "test.yaml:2:18: bpf.pin_path: expected an absolute path like /sys/fs/bpf/vpnmeter");
    CHECK(error_of("interfaces: [tun0]\ncollect: { intervall: 1s }\n") ==
          "test.yaml:2:12: collect.intervall: unknown key (expected one of: interval)");
    CHECK(error_of("interface: [tun0]\n") ==
          "test.yaml:1:1: interface: unknown key (expected one of: interfaces, collect, bpf, storage, log, openvpn)");
    CHECK(error_of("collect: { interval: 1s }\n").find("interfaces: missing") != std::string::npos);
    CHECK(error_of("interfaces: []\n") == "test.yaml:1:13: interfaces: expected at least one interface");
    CHECK(error_of("interfaces: [averyveryverylongname]\n").find("1 to 15 characters") != std::string::npos);
    CHECK(error_of("interfaces: {a: b}\n").find("expected a list of interface names") != std::string::npos);
    CHECK(error_of("interfaces: [tun0]\ncollect: { interval: 10ms }\n").find("at least 100ms") != std::string::npos);
    CHECK(error_of("interfaces: [tun0]\nlog: { level: loud }\n").find("expected trace, debug") != std::string::npos);
}

TEST_CASE("invalid YAML is reported with its position", "[config]")
{
    const std::string message = error_of("interfaces: [tun0\ncollect: {\n");
    CHECK(message.rfind("test.yaml:", 0) == 0);
    CHECK(message.find("invalid YAML") != std::string::npos);
}

TEST_CASE("sections of later versions are accepted and listed", "[config]")
{
    const Config c = parse_config("interfaces: [tun0]\nsingbox: []\nquotas: {}\n", "test.yaml");
    CHECK(c.unsupported_sections == std::vector<std::string>{"singbox", "quotas"});
}

TEST_CASE("a missing file is a ConfigError naming it", "[config]")
{
    CHECK_THROWS_WITH(load_config("/nonexistent/vpnmeter.yaml"),
                      "/nonexistent/vpnmeter.yaml: cannot read: No such file or directory");
}

TEST_CASE("durations", "[config]")
{
    CHECK(parse_duration("1s") == 1s);
    CHECK(parse_duration("2") == 2s);
    CHECK(parse_duration("1.5s") == 1500ms);
    CHECK(parse_duration("500ms") == 500ms);
    CHECK(parse_duration("2m") == 120s);
    CHECK(parse_duration("1h") == 3600s);
    CHECK_THROWS_AS(parse_duration("1d"), std::invalid_argument);
    CHECK_THROWS_AS(parse_duration("-1s"), std::invalid_argument);
    CHECK_THROWS_AS(parse_duration(""), std::invalid_argument);
}

TEST_CASE("interface globs", "[config]")
{
    Config c;
    c.interfaces = {"tun*", "wg0"};
    CHECK(interface_selected(c, "tun0"));
    CHECK(interface_selected(c, "tun12"));
    CHECK(interface_selected(c, "wg0"));
    CHECK_FALSE(interface_selected(c, "wg1"));
    CHECK_FALSE(interface_selected(c, "eth0"));
}

TEST_CASE("the shipped example config is valid", "[config]")
{
    const Config c = load_config(VPNMETER_SOURCE_DIR "/config/vpnmeter.yaml");
    CHECK(c.interfaces == std::vector<std::string>{"tun*"});
    CHECK(c.pin_path == "/sys/fs/bpf/vpnmeter");
}

TEST_CASE("openvpn instances", "[config]")
{
    const Config c = parse_config(R"(
interfaces: [tun0, tun1]
openvpn:
  - { name: udp1194, interface: tun0, management: "127.0.0.1:7505", management_password_file: /etc/openvpn/pw }
  - { name: tcp443, interface: tun1, status_file: /run/openvpn/tcp.status, user_from: username }
)",
                                  "test.yaml");
    REQUIRE(c.openvpn.size() == 2);
    CHECK(c.openvpn[0].name == "udp1194");
    CHECK(c.openvpn[0].interface == "tun0");
    CHECK(c.openvpn[0].management == "127.0.0.1:7505");
    CHECK(c.openvpn[0].management_password_file == "/etc/openvpn/pw");
    CHECK(c.openvpn[0].user_from == OpenVpnInstance::UserFrom::CommonName);
    CHECK(c.openvpn[1].status_file == "/run/openvpn/tcp.status");
    CHECK(c.openvpn[1].user_from == OpenVpnInstance::UserFrom::Username);

    CHECK(error_of("interfaces: [tun0]\nopenvpn:\n  - { name: a, interface: tun0 }\n") ==
          "test.yaml:3:5: openvpn[0]: expected exactly one of `management` (host:port or socket path) or `status_file`");
    CHECK(error_of("interfaces: [tun0]\nopenvpn:\n  - { interface: tun0, status_file: /x }\n") ==
          "test.yaml:3:5: openvpn[0].name: missing");
    CHECK(error_of("interfaces: [tun0]\nopenvpn:\n  - { name: a, interface: tun0, status_file: /x }\n"
                   "  - { name: a, interface: tun1, status_file: /y }\n")
              .find("'a' is used twice") != std::string::npos);
    CHECK(error_of("interfaces: [tun0]\nopenvpn:\n  - { name: a, interface: tun0, management: localhost }\n")
              .find("expected host:port") != std::string::npos);
    CHECK(error_of("interfaces: [tun0]\nopenvpn:\n  - { name: a, interface: tun0, status_file: /x, user_from: cn }\n")
              .find("expected common_name or username") != std::string::npos);
}
