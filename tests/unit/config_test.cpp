#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>

#include "config.h"
#include "test_support.h"

using namespace vpnmeter;
using namespace std::chrono_literals;
using vpnmeter::testing::config_error;

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
    CHECK(config_error("interfaces: [tun0]\ncollect:\n  interval: fast\n") ==
          "test.yaml:3:13: collect.interval: expected a duration like 1s or 500ms, got 'fast'");
    CHECK(config_error("interfaces: [tun0]\nbpf: { max_clients: 0 }\n") ==
          "test.yaml:2:21: bpf.max_clients: expected an integer from 1 to 16777216, got '0'");
    CHECK(config_error("interfaces: [tun0]\nbpf: { max_clients: lots }\n") ==
          "test.yaml:2:21: bpf.max_clients: expected an integer from 1 to 16777216, got 'lots'");
    CHECK(config_error("interfaces: [tun0]\nbpf: { pin_path: relative/dir }\n") ==
          "test.yaml:2:18: bpf.pin_path: expected an absolute path like /sys/fs/bpf/vpnmeter");
    CHECK(config_error("interfaces: [tun0]\ncollect: { intervall: 1s }\n") ==
          "test.yaml:2:12: collect.intervall: unknown key (expected one of: interval)");
    CHECK(config_error("interface: [tun0]\n") ==
          "test.yaml:1:1: interface: unknown key (expected one of: interfaces, collect, bpf, storage, log, openvpn, singbox, "
          "quotas, alerts, http, metrics)");
    CHECK(config_error("collect: { interval: 1s }\n").find("interfaces: missing") != std::string::npos);
    CHECK(config_error("interfaces: []\n") == "test.yaml:1:13: interfaces: expected at least one interface");
    CHECK(config_error("interfaces: [averyveryverylongname]\n").find("1 to 15 characters") != std::string::npos);
    CHECK(config_error("interfaces: {a: b}\n").find("expected a list of interface names") != std::string::npos);
    CHECK(config_error("interfaces: [tun0]\ncollect: { interval: 10ms }\n").find("at least 100ms") != std::string::npos);
    CHECK(config_error("interfaces: [tun0]\nlog: { level: loud }\n").find("expected trace, debug") != std::string::npos);
}

TEST_CASE("invalid YAML is reported with its position", "[config]")
{
    const std::string message = config_error("interfaces: [tun0\ncollect: {\n");
    CHECK(message.rfind("test.yaml:", 0) == 0);
    CHECK(message.find("invalid YAML") != std::string::npos);
}

TEST_CASE("sections of later versions are accepted and listed", "[config]")
{
    const Config c = parse_config("interfaces: [tun0]\napi: {}\nsingbox: []\nquotas: {}\n", "test.yaml");
    CHECK(c.unsupported_sections == std::vector<std::string>{"api"}); // singbox and quotas are handled now
}

TEST_CASE("singbox: servers, defaults, enforcement, and a node without interfaces", "[config][singbox]")
{
    const Config c = parse_config(R"(singbox:
  - name: sb1
    stats_api: "127.0.0.1:10085"
  - name: sb2
    stats_api: "[::1]:10085"
    interval: 2s
    enforce:
      config_file: /etc/sing-box/config.json
      reload_command: [/usr/bin/systemctl, reload, sing-box]
      command: [/usr/local/bin/act, --verbose]
      webhook: http://127.0.0.1:8089/sb
)", "test.yaml");
    CHECK(c.interfaces.empty());
    REQUIRE(c.singbox.size() == 2);
    CHECK(c.singbox[0].name == "sb1");
    CHECK(c.singbox[0].stats_api == "127.0.0.1:10085");
    CHECK(c.singbox[0].interval == std::chrono::seconds(10));
    CHECK(c.singbox[0].config_file.empty());
    CHECK(c.singbox[1].interval == std::chrono::seconds(2));
    CHECK(c.singbox[1].config_file == "/etc/sing-box/config.json");
    CHECK(c.singbox[1].reload_command == std::vector<std::string>{"/usr/bin/systemctl", "reload", "sing-box"});
    CHECK(c.singbox[1].command == std::vector<std::string>{"/usr/local/bin/act", "--verbose"});
    CHECK(c.singbox[1].webhook == "http://127.0.0.1:8089/sb");
}

TEST_CASE("singbox errors are located and say what was expected", "[config][singbox]")
{
    CHECK_THAT(config_error("singbox: [{ name: sb1 }]\n"), Catch::Contains("singbox[0].stats_api: missing"));
    CHECK_THAT(config_error("singbox: [{ name: sb1, stats_api: localhost }]\n"),
               Catch::Contains("expected host:port like 127.0.0.1:10085, got 'localhost'"));
    CHECK_THAT(config_error("singbox: [{ name: sb1, stats_api: \"h:1\" }, { name: sb1, stats_api: \"h:2\" }]\n"),
               Catch::Contains("'sb1' is used twice"));
    CHECK_THAT(config_error("singbox:\n  - name: sb1\n    stats_api: \"h:1\"\n    enforce: { command: \"kill.sh $USER\" }\n"),
               Catch::Contains("test.yaml:4:") && Catch::Contains("as a list of arguments"));
    CHECK_THAT(config_error("singbox: [{ name: sb1, stats_api: \"h:1\", enforce: { command: [sh, -c, x] } }]\n"),
               Catch::Contains("expected the program as an absolute path"));
    CHECK_THAT(config_error("singbox: [{ name: sb1, stats_api: \"h:1\", enforce: { reload_command: [/bin/true] } }]\n"),
               Catch::Contains("needs config_file"));
    CHECK_THAT(config_error("singbox: [{ name: sb1, stats_api: \"h:1\", interval: 1ms }]\n"),
               Catch::Contains("singbox[0].interval: must be at least 100ms"));
    CHECK_THAT(config_error("collect: { interval: 1s }\n"), Catch::Contains("interfaces: missing"));
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

// Out of int64's range the cast to milliseconds was undefined behaviour;
// tests/fuzz/config_fuzz.cpp (UBSan) stopped on it.
TEST_CASE("durations too long to hold, and nan and inf, are errors", "[config][fuzz]")
{
    for (const char* text : {"1e300s", "1e17", "inf", "nan", "infms", "1e300h"}) {
        INFO(text);
        CHECK_THROWS_WITH(parse_duration(text), "expected a duration up to 1000 years, got '" + std::string(text) + "'");
    }
    CHECK(parse_duration("1e10s") == std::chrono::seconds(10'000'000'000));
    CHECK_THAT(config_error("interfaces: [tun0]\ncollect: { interval: 1e300s }\n"),
               Catch::Contains("test.yaml:2:22: collect.interval: expected a duration up to 1000 years"));
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

    CHECK(config_error("interfaces: [tun0]\nopenvpn:\n  - { name: a, interface: tun0 }\n") ==
          "test.yaml:3:5: openvpn[0]: expected exactly one of `management` (host:port or socket path) or `status_file`");
    CHECK(config_error("interfaces: [tun0]\nopenvpn:\n  - { interface: tun0, status_file: /x }\n") ==
          "test.yaml:3:5: openvpn[0].name: missing");
    CHECK(config_error("interfaces: [tun0]\nopenvpn:\n  - { name: a, interface: tun0, status_file: /x }\n"
                   "  - { name: a, interface: tun1, status_file: /y }\n")
              .find("'a' is used twice") != std::string::npos);
    CHECK(config_error("interfaces: [tun0]\nopenvpn:\n  - { name: a, interface: tun0, management: localhost }\n")
              .find("expected host:port") != std::string::npos);
    CHECK(config_error("interfaces: [tun0]\nopenvpn:\n  - { name: a, interface: tun0, status_file: /x, user_from: cn }\n")
              .find("expected common_name or username") != std::string::npos);
}

TEST_CASE("quotas and alerts parse", "[config][quota]")
{
    const Config c = parse_config(R"(
interfaces: [tun0]
quotas:
  timezone: Asia/Kolkata
  thresholds: [90, 75, 100, 90]
  default_plan: slow
  plans:
    small:   { limit: 20MB, period: daily, action: block }
    slow:    { speed: { download: 2Mbit, upload: 2Mbit } }
    capped:  { limit: 5GiB, period: monthly, billing_day: 15, action: { throttle: 1Mbit } }
    kick:    { limit: 1.5GB, direction: download, period: weekly, action: disconnect, expires: 2026-12-31 }
    notify:  { limit: 100GB, period: total, action: none, expires: "2026-06-01T12:00:00Z" }
    free:    {}
    vip:
  users:
    user1: small
    "trial-*": capped
    boss: unlimited
alerts:
  webhook: { url: "http://127.0.0.1:8089/hook", timeout: 2s, retries: 3 }
)",
                                  "test.yaml");
    const QuotaConfig& q = c.quotas;
    CHECK(q.timezone == "Asia/Kolkata");
    CHECK(q.thresholds == std::vector<int>{75, 90, 100});
    CHECK(q.default_plan == "slow");
    REQUIRE(q.plans.size() == 7);

    const Plan& small = q.plans[0];
    CHECK(small.name == "small");
    CHECK(small.limit_bytes == 20'000'000u);
    CHECK(small.period == Plan::PeriodKind::daily);
    CHECK(small.action == Plan::Action::block);
    CHECK(small.direction == Plan::Direction::both);
    CHECK(small.expires == std::nullopt);

    const Plan& slow = *q.find_plan("slow");
    CHECK(slow.limit_bytes == std::nullopt);
    CHECK(slow.speed_download_bps == 2'000'000);
    CHECK(slow.speed_upload_bps == 2'000'000);
    CHECK(slow.period == Plan::PeriodKind::monthly);

    const Plan& capped = *q.find_plan("capped");
    CHECK(capped.limit_bytes == 5ULL << 30);
    CHECK(capped.billing_day == 15);
    CHECK(capped.action == Plan::Action::throttle);
    CHECK(capped.throttle_bps == 1'000'000);

    const Plan& kick = *q.find_plan("kick");
    CHECK(kick.limit_bytes == 1'500'000'000u);
    CHECK(kick.direction == Plan::Direction::download);
    CHECK(kick.period == Plan::PeriodKind::weekly);
    CHECK(kick.action == Plan::Action::disconnect);
    CHECK(kick.expires == 1798741800); // 2027-01-01 00:00 in Kolkata = 2026-12-31T18:30:00Z

    const Plan& notify = *q.find_plan("notify");
    CHECK(notify.period == Plan::PeriodKind::total);
    CHECK(notify.action == Plan::Action::none);
    CHECK(notify.expires == 1780315200); // 2026-06-01T12:00:00Z

    for (const char* name : {"free", "vip"}) {
        const Plan& plan = *q.find_plan(name);
        CHECK(plan.limit_bytes == std::nullopt);
        CHECK(plan.speed_download_bps == 0);
        CHECK(plan.expires == std::nullopt);
    }

    REQUIRE(q.users.size() == 3);
    CHECK(q.users[0].pattern == "user1");
    CHECK(q.users[0].plan == "small");
    CHECK(q.users[1].pattern == "trial-*");
    CHECK(q.users[1].plan == "capped");
    CHECK(q.users[2].plan == "unlimited");

    REQUIRE(c.alerts.webhook);
    CHECK(c.alerts.webhook->url == "http://127.0.0.1:8089/hook");
    CHECK(c.alerts.webhook->timeout == 2s);
    CHECK(c.alerts.webhook->retries == 3);
}

TEST_CASE("quota and alert defaults", "[config][quota]")
{
    const Config none = parse_config("interfaces: [tun0]\n", "test.yaml");
    CHECK(none.quotas.timezone == "UTC");
    CHECK(none.quotas.thresholds == std::vector<int>{75, 90, 100});
    CHECK(none.quotas.default_plan == "unlimited");
    CHECK(none.quotas.plans.empty());
    CHECK(none.quotas.users.empty());
    CHECK_FALSE(none.alerts.webhook);

    const Config c = parse_config("interfaces: [tun0]\nquotas: { plans: { p: { limit: 1GB } }, thresholds: [] }\n"
                                  "alerts: { webhook: { url: \"https://example.com/hook\" } }\n",
                                  "test.yaml");
    CHECK(c.quotas.thresholds.empty());
    const Plan& p = c.quotas.plans.at(0);
    CHECK(p.period == Plan::PeriodKind::monthly);
    CHECK(p.billing_day == 1);
    CHECK(p.action == Plan::Action::block);
    CHECK(p.direction == Plan::Direction::both);
    REQUIRE(c.alerts.webhook);
    CHECK(c.alerts.webhook->timeout == 5s);
    CHECK(c.alerts.webhook->retries == 5);
    CHECK(parse_config("interfaces: [tun0]\nalerts: {}\n", "test.yaml").alerts.webhook == std::nullopt);
}

TEST_CASE("users may be listed before the plans they name", "[config][quota]")
{
    const Config c = parse_config("interfaces: [tun0]\nquotas:\n  default_plan: p\n  users: { u: p }\n"
                                  "  plans: { p: { limit: 1GB } }\n",
                                  "test.yaml");
    CHECK(c.quotas.users.at(0).plan == "p");
    CHECK(c.quotas.default_plan == "p");
}

TEST_CASE("quota errors are located, with the key path and what was expected", "[config][quota]")
{
    const std::string head = "interfaces: [tun0]\nquotas:\n";
    const auto plan_error = [&](const std::string& plan) {
        return config_error(head + "  plans:\n    small: " + plan + "\n");
    };
    // Exact messages.
    CHECK(plan_error("{ limit: 20mb }") ==
          "test.yaml:4:21: quotas.plans.small.limit: '20mb' is ambiguous: write 20MB (10^6 bytes) or 20MiB "
          "(2^20 bytes); speeds are in bits, like 20Mbit");
    CHECK(plan_error("{ limit: 20MB, period: daily, billing_day: 15 }") ==
          "test.yaml:4:55: quotas.plans.small.billing_day: only for period: monthly (this plan's period is daily)");
    CHECK(plan_error("{ limit: 20MB, billing_day: 32 }") ==
          "test.yaml:4:40: quotas.plans.small.billing_day: expected an integer from 1 to 31, got '32'");
    CHECK(plan_error("{ speed: { download: 2MB } }") ==
          "test.yaml:4:33: quotas.plans.small.speed.download: expected a rate like 12Mbit or 500kbit (units bit, "
          "kbit, Mbit, Gbit), got '2MB'");
    CHECK(plan_error("{ limit: 1GB, periode: daily }") ==
          "test.yaml:4:26: quotas.plans.small.periode: unknown key (expected one of: limit, direction, period, "
          "billing_day, expires, speed, action)");
    CHECK(config_error(head + "  plans: { small: { limit: 1GB } }\n  users:\n    user1: big\n") ==
          "test.yaml:5:12: quotas.users.user1: unknown plan 'big' (expected one of: small, unlimited)");
    CHECK(config_error(head + "  default_plan: gold\n") ==
          "test.yaml:3:17: quotas.default_plan: unknown plan 'gold' (expected one of: unlimited)");
    CHECK(config_error(head + "  timezone: Mars/Olympus\n") ==
          "test.yaml:3:13: quotas.timezone: unknown time zone 'Mars/Olympus' (expected an IANA name such as "
          "Europe/Berlin)");
    CHECK(config_error(head + "  quota: {}\n") ==
          "test.yaml:3:3: quotas.quota: unknown key (expected one of: timezone, thresholds, default_plan, plans, "
          "users)");

    // Every key.
    const auto has = [](const std::string& message, const std::string& part) {
        INFO(message);
        return message.find(part) != std::string::npos;
    };
    CHECK(has(config_error(head + "  - a\n"), "quotas: expected a mapping"));
    CHECK(has(config_error(head + "  timezone: [UTC]\n"), "quotas.timezone: expected a time zone name"));
    CHECK(has(config_error(head + "  thresholds: 75\n"), "quotas.thresholds: expected a list of percentages like [75, 90, 100]"));
    CHECK(has(config_error(head + "  thresholds: [75, 0]\n"), "3:20: quotas.thresholds[1]: expected an integer from 1 to 1000, got '0'"));
    CHECK(has(config_error(head + "  thresholds: [high]\n"), "quotas.thresholds[0]: expected an integer"));
    CHECK(has(config_error(head + "  plans: [small]\n"), "quotas.plans: expected a mapping of plan names to plans"));
    CHECK(has(config_error(head + "  plans: { small: {}, small: {} }\n"), "quotas.plans.small: defined twice"));
    CHECK(has(plan_error("[20MB]"), "quotas.plans.small: expected a mapping"));
    CHECK(has(plan_error("{ limit: lots }"), "quotas.plans.small.limit: expected a size like 20MB, 1.5GB or 5GiB"));
    CHECK(has(plan_error("{ limit: [1] }"), "quotas.plans.small.limit: expected a size like 20MB or 5GiB"));
    CHECK(has(plan_error("{ limit: 1.5B }"), "quotas.plans.small.limit: expected a whole number of bytes, got '1.5B'"));
    CHECK(has(plan_error("{ direction: in }"), "quotas.plans.small.direction: expected both, upload or download, got 'in'"));
    CHECK(has(plan_error("{ period: yearly }"),
              "quotas.plans.small.period: expected daily, weekly, monthly or total, got 'yearly'"));
    CHECK(has(plan_error("{ period: total, billing_day: 5 }"), "billing_day: only for period: monthly (this plan's period is total)"));
    CHECK(has(plan_error("{ expires: someday }"),
              "quotas.plans.small.expires: expected a date like 2026-12-31 (the end of that day in quotas.timezone) "
              "or a time like 2026-12-31T18:00:00Z, got 'someday'"));
    CHECK(has(plan_error("{ expires: 2026-02-30 }"), "quotas.plans.small.expires: expected a date like 2026-12-31"));
    CHECK(has(plan_error("{ speed: 2Mbit }"), "quotas.plans.small.speed: expected a mapping"));
    CHECK(has(plan_error("{ speed: {} }"), "quotas.plans.small.speed: expected download and/or upload"));
    CHECK(has(plan_error("{ speed: { down: 2Mbit } }"), "quotas.plans.small.speed.down: unknown key (expected one of: download, upload)"));
    CHECK(has(plan_error("{ speed: { upload: 2000000 } }"), "quotas.plans.small.speed.upload: expected a rate like 12Mbit"));
    CHECK(has(plan_error("{ speed: { upload: 0kbit } }"), "quotas.plans.small.speed.upload: a rate must be above 0"));
    CHECK(has(plan_error("{ action: drop }"),
              "quotas.plans.small.action: expected block, disconnect, none or { throttle: RATE }, got 'drop'"));
    CHECK(has(plan_error("{ action: throttle }"), "quotas.plans.small.action: throttle needs a rate, like { throttle: 1Mbit }"));
    CHECK(has(plan_error("{ action: { throttle: 1MB } }"), "quotas.plans.small.action.throttle: expected a rate like 12Mbit"));
    CHECK(has(plan_error("{ action: { slow: 1Mbit } }"), "quotas.plans.small.action.slow: unknown key (expected one of: throttle)"));
    CHECK(has(plan_error("{ action: {} }"), "quotas.plans.small.action: expected block, disconnect, none or { throttle: RATE }, like"));
    CHECK(has(plan_error("{ action: [block] }"), "quotas.plans.small.action: expected block, disconnect, none or { throttle: RATE }"));
    CHECK(has(config_error(head + "  users: [user1]\n"), "quotas.users: expected a mapping of user names or globs to plan names"));
    CHECK(has(config_error(head + "  users: { user1: [a] }\n"), "quotas.users.user1: expected a plan name"));
    CHECK(has(config_error(head + "  users: { user1: unlimited, user1: unlimited }\n"), "quotas.users.user1: listed twice"));
    CHECK(has(config_error(head + "  users: { \"\": unlimited }\n"), "quotas.users: expected a non-empty user name or glob"));
}

TEST_CASE("alert errors", "[config][quota]")
{
    const std::string head = "interfaces: [tun0]\nalerts:\n";
    CHECK(config_error(head + "  webhook: { url: \"ftp://example.com/\" }\n") ==
          "test.yaml:3:19: alerts.webhook.url: expected an http:// or https:// URL like http://127.0.0.1:8089/hook, "
          "got 'ftp://example.com/'");
    CHECK(config_error(head + "  webhook: { timeout: 5s }\n") == "test.yaml:3:12: alerts.webhook.url: missing");
    CHECK(config_error(head + "  email: {}\n") == "test.yaml:3:3: alerts.email: unknown key (expected one of: webhook)");
    CHECK(config_error(head + "  webhook: { url: \"http://\" }\n").find("expected an http:// or https:// URL") != std::string::npos);
    CHECK(config_error(head + "  webhook: { url: \"http:///x\" }\n").find("expected an http:// or https:// URL") != std::string::npos);
    CHECK(config_error(head + "  webhook: { url: \"http://a b/\" }\n").find("expected an http:// or https:// URL") != std::string::npos);
    CHECK(config_error(head + "  webhook: { url: \"http://h/\", timeout: soon }\n") ==
          "test.yaml:3:41: alerts.webhook.timeout: expected a duration like 1s or 500ms, got 'soon'");
    CHECK(config_error(head + "  webhook: { url: \"http://h/\", timeout: 10ms }\n") ==
          "test.yaml:3:41: alerts.webhook.timeout: must be at least 100ms");
    CHECK(config_error(head + "  webhook: { url: \"http://h/\", retries: 101 }\n") ==
          "test.yaml:3:41: alerts.webhook.retries: expected an integer from 0 to 100, got '101'");
    CHECK(config_error(head + "  webhook: { url: \"http://h/\", retry: 1 }\n") ==
          "test.yaml:3:32: alerts.webhook.retry: unknown key (expected one of: url, timeout, retries)");
    CHECK(config_error(head + "  webhook: \"http://h/\"\n").find("alerts.webhook: expected a mapping") != std::string::npos);
}

TEST_CASE("http.listen", "[config]")
{
    CHECK(parse_config("interfaces: [tun0]\n", "t.yaml").http_listen == "127.0.0.1:9477");
    CHECK(parse_config("interfaces: [tun0]\nhttp: { listen: \"[::1]:9000\" }\n", "t.yaml").http_listen == "[::1]:9000");
    CHECK(parse_config("interfaces: [tun0]\nhttp: { listen: \"\" }\n", "t.yaml").http_listen.empty());
    CHECK(config_error("interfaces: [tun0]\nhttp: { listen: localhost }\n") ==
          "test.yaml:2:17: http.listen: expected host:port like 127.0.0.1:9477 or [::1]:9477, got 'localhost'");
}

TEST_CASE("metrics: per_session, max_sessions and hash_users", "[config]")
{
    const Config defaults = parse_config("interfaces: [tun0]\n", "test.yaml");
    CHECK(defaults.metrics == MetricsConfig{false, 1000, false});
    const Config c = parse_config(
        "interfaces: [tun0]\nmetrics: { per_session: true, max_sessions: 50, hash_users: true }\n", "test.yaml");
    CHECK(c.metrics == MetricsConfig{true, 50, true});
    CHECK(c.unsupported_sections.empty());
    CHECK(config_error("interfaces: [tun0]\nmetrics: { per_session: yes }\n") ==
          "test.yaml:2:25: metrics.per_session: expected false or true, got 'yes'");
    CHECK(config_error("interfaces: [tun0]\nmetrics: { max_session: 5 }\n") ==
          "test.yaml:2:12: metrics.max_session: unknown key (expected one of: per_session, max_sessions, hash_users)");
}

TEST_CASE("storage.map_size: a size, 16GiB by default, at least 64KiB", "[config]")
{
    CHECK(parse_config("interfaces: tun0\n", "test.yaml").storage_map_size == 16ull << 30);
    CHECK(parse_config("interfaces: tun0\nstorage: { map_size: 64MB }\n", "test.yaml").storage_map_size ==
          64'000'000);
    CHECK(parse_config("interfaces: tun0\nstorage: { map_size: 64KiB }\n", "test.yaml").storage_map_size == 65536);
    CHECK(config_error("interfaces: tun0\nstorage: { map_size: 4kB }\n") ==
          "test.yaml:2:22: storage.map_size: must be at least 64KiB");
    CHECK_THAT(config_error("interfaces: tun0\nstorage: { map_size: lots }\n"),
               Catch::StartsWith("test.yaml:2:22: storage.map_size: "));
    CHECK(load_config(VPNMETER_SOURCE_DIR "/config/vpnmeter.yaml").storage_map_size == 16ull << 30);
}

TEST_CASE("a world-writable config file is refused, naming the file and its mode", "[config][security]")
{
    vpnmeter::testing::TempDir dir;
    const std::string path = dir.path() + "/vpnmeter.yaml";
    std::ofstream(path) << "interfaces: [tun0]\n";

    REQUIRE(chmod(path.c_str(), 0666) == 0);
    try {
        load_config(path);
        FAIL("a world-writable file was loaded");
    } catch (const ConfigError& e) {
        CHECK(std::string(e.what()) == path + ": refusing a world-writable configuration (mode 0666): any user could "
                                              "change what vpnmeterd does; chmod o-w " + path);
    }
    REQUIRE(chmod(path.c_str(), 0602) == 0); // not readable by others, still writable: refused
    CHECK_THROWS_AS(load_config(path), ConfigError);

    for (mode_t mode : {0644, 0600, 0640, 0664}) { // group-writable is the operator's choice
        INFO(std::oct << mode);
        REQUIRE(chmod(path.c_str(), mode) == 0);
        CHECK(load_config(path).interfaces == std::vector<std::string>{"tun0"});
    }
}

TEST_CASE("as root, a config file owned by another user is refused", "[config][security]")
{
    CHECK_NOTHROW(check_config_file_owner("a.yaml", S_IFREG | 0644, 0, 0));
    CHECK_NOTHROW(check_config_file_owner("a.yaml", S_IFREG | 0644, 1000, 1000)); // not root: its own file
    CHECK_NOTHROW(check_config_file_owner("a.yaml", S_IFREG | 0644, 0, 1000));
    CHECK_THROWS_WITH(check_config_file_owner("a.yaml", S_IFREG | 0600, 1000, 0),
                      "a.yaml: refusing a configuration owned by uid 1000 while running as root (mode 0600): its "
                      "owner could change what vpnmeterd does; chown root a.yaml");
    CHECK_THROWS_WITH(check_config_file_owner("a.yaml", S_IFREG | 0666, 0, 1000),
                      Catch::Contains("world-writable") && Catch::Contains("0666"));

    if (geteuid() != 0) {
        WARN("not root: the chown half of this test is skipped");
        return;
    }
    vpnmeter::testing::TempDir dir;
    const std::string path = dir.path() + "/vpnmeter.yaml";
    std::ofstream(path) << "interfaces: [tun0]\n";
    REQUIRE(chown(path.c_str(), 65534, 65534) == 0); // nobody
    CHECK_THROWS_WITH(load_config(path), Catch::Contains("owned by uid 65534") && Catch::Contains(path));
    REQUIRE(chown(path.c_str(), 0, 0) == 0);
    CHECK(load_config(path).interfaces == std::vector<std::string>{"tun0"});
}
