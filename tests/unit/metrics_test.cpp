#include <catch2/catch.hpp>

#include <algorithm>
#include <numeric>
#include <random>
#include <sstream>

#include "metrics.h"

using namespace vpnmeter;

namespace {

Traffic traffic(uint64_t up_packets, uint64_t up_bytes, uint64_t down_packets, uint64_t down_bytes)
{
    return {{up_packets, up_bytes}, {down_packets, down_bytes}};
}

Session session(const std::string& id, const std::string& user, Traffic usage, bool active = true)
{
    Session s;
    s.id = id;
    s.user = user;
    s.instance = "udp1194";
    s.interface = "tun0";
    s.usage = usage;
    if (!active) s.end = 1000;
    return s;
}

std::vector<std::string> lines_of(const std::string& text)
{
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
}

bool has_line(const std::string& text, const std::string& line)
{
    const auto all = lines_of(text);
    return std::find(all.begin(), all.end(), line) != all.end();
}

// The one sample `prefix` (a name with its labels) has in `text`.
std::optional<std::string> sample(const std::string& text, const std::string& prefix)
{
    for (const auto& line : lines_of(text))
        if (line.rfind(prefix + " ", 0) == 0) return line.substr(prefix.size() + 1);
    return std::nullopt;
}

struct Recorded {
    std::shared_ptr<MetricsExporter> exporter = std::make_shared<MetricsExporter>();
    MetricsRecorder recorder;

    explicit Recorded(MetricsConfig config) : recorder(config, "1.2.3", exporter) {}
    std::string text()
    {
        recorder.publish({});
        return exporter->render();
    }
};

} // namespace

TEST_CASE("a small snapshot renders to exactly these lines", "[metrics]")
{
    MetricsSnapshot s;
    s.clients[{"tun0", "alice", ""}] = traffic(10, 1000, 20, 20000);
    s.interfaces["tun0"] = traffic(12, 1200, 21, 20100);
    s.unattributed["tun0"] = traffic(2, 200, 1, 100);
    ClientDrops drops;
    drops.quota = traffic(3, 300, 4, 4000);
    s.drops["tun0"] = drops;
    s.sessions_active["udp1194"] = 1;
    s.source_bytes[{"udp1194", "alice"}] = {1500, 21000};
    s.quotas["alice"] = {20'000'000, 21000, QuotaState::State::warning};
    s.collection_duration.observe(0.25);
    s.collection_duration.observe(0.5);
    s.maps["clients"] = {2, 65536};
    s.store_size_bytes = 32768;
    s.errors["store_commit"] = 1;
    s.alerts = 1;
    s.version = "0.1.0";

    const std::string expected = R"(# HELP vpnmeter_client_bytes_total Bytes inside the tunnel of a user's sessions on an interface (upload: from the client), since the store began.
# TYPE vpnmeter_client_bytes_total counter
vpnmeter_client_bytes_total{interface="tun0",user="alice",direction="upload"} 1000
vpnmeter_client_bytes_total{interface="tun0",user="alice",direction="download"} 20000
# HELP vpnmeter_client_packets_total Packets inside the tunnel of a user's sessions on an interface, since the store began.
# TYPE vpnmeter_client_packets_total counter
vpnmeter_client_packets_total{interface="tun0",user="alice",direction="upload"} 10
vpnmeter_client_packets_total{interface="tun0",user="alice",direction="download"} 20
# HELP vpnmeter_interface_bytes_total Bytes through a metered interface as its own counters report them (upload: received).
# TYPE vpnmeter_interface_bytes_total counter
vpnmeter_interface_bytes_total{interface="tun0",direction="upload"} 1200
vpnmeter_interface_bytes_total{interface="tun0",direction="download"} 20100
# HELP vpnmeter_interface_packets_total Packets through a metered interface.
# TYPE vpnmeter_interface_packets_total counter
vpnmeter_interface_packets_total{interface="tun0",direction="upload"} 12
vpnmeter_interface_packets_total{interface="tun0",direction="download"} 21
# HELP vpnmeter_unattributed_bytes_total Bytes on an interface that belonged to no session, since the store began.
# TYPE vpnmeter_unattributed_bytes_total counter
vpnmeter_unattributed_bytes_total{interface="tun0",direction="upload"} 200
vpnmeter_unattributed_bytes_total{interface="tun0",direction="download"} 100
# HELP vpnmeter_unattributed_packets_total Packets on an interface that belonged to no session, since the store began.
# TYPE vpnmeter_unattributed_packets_total counter
vpnmeter_unattributed_packets_total{interface="tun0",direction="upload"} 2
vpnmeter_unattributed_packets_total{interface="tun0",direction="download"} 1
# HELP vpnmeter_dropped_bytes_total Bytes dropped by quota enforcement, by reason.
# TYPE vpnmeter_dropped_bytes_total counter
vpnmeter_dropped_bytes_total{interface="tun0",direction="upload",reason="block"} 0
vpnmeter_dropped_bytes_total{interface="tun0",direction="download",reason="block"} 0
vpnmeter_dropped_bytes_total{interface="tun0",direction="upload",reason="quota"} 300
vpnmeter_dropped_bytes_total{interface="tun0",direction="download",reason="quota"} 4000
vpnmeter_dropped_bytes_total{interface="tun0",direction="upload",reason="policer"} 0
vpnmeter_dropped_bytes_total{interface="tun0",direction="download",reason="policer"} 0
# HELP vpnmeter_dropped_packets_total Packets dropped by quota enforcement, by reason.
# TYPE vpnmeter_dropped_packets_total counter
vpnmeter_dropped_packets_total{interface="tun0",direction="upload",reason="block"} 0
vpnmeter_dropped_packets_total{interface="tun0",direction="download",reason="block"} 0
vpnmeter_dropped_packets_total{interface="tun0",direction="upload",reason="quota"} 3
vpnmeter_dropped_packets_total{interface="tun0",direction="download",reason="quota"} 4
vpnmeter_dropped_packets_total{interface="tun0",direction="upload",reason="policer"} 0
vpnmeter_dropped_packets_total{interface="tun0",direction="download",reason="policer"} 0
# HELP vpnmeter_sessions_active Sessions connected now, by VPN instance.
# TYPE vpnmeter_sessions_active gauge
vpnmeter_sessions_active{instance="udp1194"} 1
# HELP vpnmeter_source_bytes_total Bytes the VPN server itself counted (outer, encrypted) for the sessions seen since the agent started.
# TYPE vpnmeter_source_bytes_total counter
vpnmeter_source_bytes_total{source="udp1194",user="alice",direction="upload"} 1500
vpnmeter_source_bytes_total{source="udp1194",user="alice",direction="download"} 21000
# HELP vpnmeter_quota_limit_bytes A user's byte limit in the current period, top-ups included.
# TYPE vpnmeter_quota_limit_bytes gauge
vpnmeter_quota_limit_bytes{user="alice"} 20000000
# HELP vpnmeter_quota_used_bytes What a user used in the current period, as it counts against the limit.
# TYPE vpnmeter_quota_used_bytes gauge
vpnmeter_quota_used_bytes{user="alice"} 21000
# HELP vpnmeter_quota_state 1 for the state a user's quota is in, 0 for the others.
# TYPE vpnmeter_quota_state gauge
vpnmeter_quota_state{user="alice",state="ok"} 0
vpnmeter_quota_state{user="alice",state="warning"} 1
vpnmeter_quota_state{user="alice",state="exceeded"} 0
vpnmeter_quota_state{user="alice",state="blocked"} 0
vpnmeter_quota_state{user="alice",state="throttled"} 0
vpnmeter_quota_state{user="alice",state="expired"} 0
# HELP vpnmeter_collection_duration_seconds Time one collection cycle took, from reading the counters to the end of its commit.
# TYPE vpnmeter_collection_duration_seconds histogram
vpnmeter_collection_duration_seconds_count 2
vpnmeter_collection_duration_seconds_sum 0.75
vpnmeter_collection_duration_seconds_bucket{le="0.001"} 0
vpnmeter_collection_duration_seconds_bucket{le="0.0025"} 0
vpnmeter_collection_duration_seconds_bucket{le="0.005"} 0
vpnmeter_collection_duration_seconds_bucket{le="0.01"} 0
vpnmeter_collection_duration_seconds_bucket{le="0.025"} 0
vpnmeter_collection_duration_seconds_bucket{le="0.05"} 0
vpnmeter_collection_duration_seconds_bucket{le="0.1"} 0
vpnmeter_collection_duration_seconds_bucket{le="0.25"} 1
vpnmeter_collection_duration_seconds_bucket{le="0.5"} 2
vpnmeter_collection_duration_seconds_bucket{le="1"} 2
vpnmeter_collection_duration_seconds_bucket{le="2.5"} 2
vpnmeter_collection_duration_seconds_bucket{le="+Inf"} 2
# HELP vpnmeter_map_entries Entries in a BPF map.
# TYPE vpnmeter_map_entries gauge
vpnmeter_map_entries{map="clients"} 2
# HELP vpnmeter_map_capacity Entries a BPF map can hold.
# TYPE vpnmeter_map_capacity gauge
vpnmeter_map_capacity{map="clients"} 65536
# HELP vpnmeter_store_size_bytes Size of the usage store's data file.
# TYPE vpnmeter_store_size_bytes gauge
vpnmeter_store_size_bytes 32768
# HELP vpnmeter_errors_total Failures the agent logged and went on from, by operation.
# TYPE vpnmeter_errors_total counter
vpnmeter_errors_total{op="store_commit"} 1
# HELP vpnmeter_alerts_total Quota threshold alerts fired since the agent started.
# TYPE vpnmeter_alerts_total counter
vpnmeter_alerts_total 1
# HELP vpnmeter_build_info The agent's version; always 1.
# TYPE vpnmeter_build_info gauge
vpnmeter_build_info{version="0.1.0"} 1
)";
    CHECK(lines_of(render_metrics(s)) == lines_of(expected));
}

TEST_CASE("a snapshot without plans, drops or sessions leaves those families out", "[metrics]")
{
    MetricsSnapshot s;
    s.version = "0.1.0";
    const std::string text = render_metrics(s);
    CHECK(text.find("vpnmeter_quota") == std::string::npos);
    CHECK(text.find("vpnmeter_dropped") == std::string::npos);
    CHECK(text.find("vpnmeter_client_bytes_total") == std::string::npos);
    CHECK(has_line(text, "vpnmeter_build_info{version=\"0.1.0\"} 1"));
    CHECK(has_line(text, "vpnmeter_alerts_total 0"));
    CHECK(has_line(text, "vpnmeter_collection_duration_seconds_count 0"));
}

TEST_CASE("label values are escaped and made UTF-8", "[metrics]")
{
    MetricsSnapshot s;
    s.clients[{"tun0", "a\"b\\c\xff", ""}] = traffic(1, 1, 0, 0);
    const std::string text = render_metrics(s);
    CHECK(has_line(text, "vpnmeter_client_bytes_total{interface=\"tun0\",user=\"a\\\"b\\\\c\xef\xbf\xbd\","
                         "direction=\"upload\"} 1"));
}

TEST_CASE("client counters start from the store's sessions and grow by what sessions gain", "[metrics]")
{
    Recorded r({});
    r.recorder.load({session("s1", "alice", traffic(1, 100, 2, 200), /*active=*/false),
                     session("s2", "alice", traffic(3, 300, 4, 400)), session("s3", "bob", traffic(0, 0, 1, 50))},
                    {{"tun0", traffic(1, 10, 1, 20)}});
    std::string text = r.text();
    CHECK(sample(text, R"(vpnmeter_client_bytes_total{interface="tun0",user="alice",direction="upload"})") == "400");
    CHECK(sample(text, R"(vpnmeter_client_bytes_total{interface="tun0",user="alice",direction="download"})") == "600");
    CHECK(sample(text, R"(vpnmeter_client_packets_total{interface="tun0",user="alice",direction="download"})") == "6");
    CHECK(sample(text, R"(vpnmeter_unattributed_bytes_total{interface="tun0",direction="download"})") == "20");

    // s2 gains 1000 up and ends; a new session s4 of alice starts and gains 5.
    CycleCommit commit;
    commit.time = 2000;
    Session ended = session("s2", "alice", traffic(4, 1300, 4, 400), false);
    Session fresh = session("s4", "alice", traffic(1, 5, 0, 0));
    commit.sessions = {ended, fresh};
    commit.unattributed["tun0"] = traffic(1, 1, 0, 0);
    r.recorder.account(commit);
    text = r.text();
    CHECK(sample(text, R"(vpnmeter_client_bytes_total{interface="tun0",user="alice",direction="upload"})") == "1405");
    CHECK(sample(text, R"(vpnmeter_client_bytes_total{interface="tun0",user="bob",direction="download"})") == "50");
    CHECK(sample(text, R"(vpnmeter_unattributed_bytes_total{interface="tun0",direction="upload"})") == "11");
    CHECK(text.find("session=") == std::string::npos);
}

TEST_CASE("the VPN's own counters only grow across sessions", "[metrics]")
{
    Recorded r({});
    Session first = session("s1", "alice", {});
    first.source_upload_bytes = 1000;
    first.source_download_bytes = 5000;
    r.recorder.load({first}, {});
    const std::string up = R"(vpnmeter_source_bytes_total{source="udp1194",user="alice",direction="upload"})";
    CHECK(sample(r.text(), up) == "1000");

    CycleCommit commit;
    first.source_upload_bytes = 1500;
    first.end = 10; // ends at 1500
    Session second = session("s2", "alice", {});
    second.source_upload_bytes = 200;
    commit.sessions = {first, second};
    r.recorder.account(commit);
    CHECK(sample(r.text(), up) == "1700");

    commit.sessions = {second};
    commit.sessions[0].source_upload_bytes = 250;
    r.recorder.account(commit);
    CHECK(sample(r.text(), up) == "1750");
}

TEST_CASE("a cycle staged while the store commits: discarded when the commit fails, as if never seen", "[metrics]")
{
    // Two recorders over random cycles: `staged` stages every cycle and
    // confirms or discards it as its commit lands or fails; `committed` only
    // sees the cycles that landed. A failed cycle's bytes come again in the
    // next commit, as the reconciler plans them: the same totals, grown.
    MetricsConfig config;
    config.per_session = GENERATE(false, true);
    config.max_sessions = 3;
    CAPTURE(config.per_session);
    Recorded staged(config), committed(config);
    std::mt19937 rng(11);
    auto pick = [&](uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); };
    std::map<std::string, Session> open, landed; // now, and as last committed
    std::vector<Session> ended;                  // since the last commit that landed
    Traffic unattributed;
    uint64_t landed_upload = 0, next_id = 0, failures = 0;
    int64_t now = 1000;
    auto upload_total = [](const std::string& text) {
        uint64_t sum = 0;
        for (const auto& line : lines_of(text))
            if (line.rfind("vpnmeter_client_bytes_total{", 0) == 0 && line.find("direction=\"upload\"") != std::string::npos)
                sum += std::stoull(line.substr(line.rfind(' ') + 1));
        return sum;
    };
    for (int step = 0; step < 300; ++step) {
        CAPTURE(step);
        now += static_cast<int64_t>(pick(200));
        for (auto& [id, s] : open) {
            if (pick(3)) s.usage += traffic(1, pick(5000), 1, pick(5000));
            s.source_upload_bytes = pick(20) ? s.source_upload_bytes + pick(900) : pick(10); // sometimes a restart
            s.source_download_bytes += pick(900);
        }
        if (pick(3) == 0) {
            Session s = session("s" + std::to_string(next_id++), "user" + std::to_string(pick(4)),
                                traffic(1, pick(5000), 0, 0));
            open[s.id] = s;
        }
        if (!open.empty() && pick(4) == 0) {
            auto it = std::next(open.begin(), static_cast<std::ptrdiff_t>(pick(open.size())));
            it->second.end = now;
            ended.push_back(it->second);
            open.erase(it);
        }
        unattributed += traffic(1, pick(100), 0, 0);
        CycleCommit commit;
        commit.time = now;
        for (const auto& [id, s] : open)
            if (auto it = landed.find(id); it == landed.end() || !(it->second == s)) commit.sessions.push_back(s);
        commit.sessions.insert(commit.sessions.end(), ended.begin(), ended.end());
        commit.unattributed["tun0"] = unattributed;

        const bool lands = pick(3) != 0;
        auto cycle = staged.recorder.stage(commit);
        if (!lands) {
            staged.recorder.discard(std::move(cycle));
            ++failures;
            continue;
        }
        staged.recorder.confirm(commit, std::move(cycle));
        committed.recorder.account(commit);
        for (const Session& s : commit.sessions)
            landed_upload += s.usage.upload.bytes - (landed.count(s.id) ? landed[s.id].usage.upload.bytes : 0);
        landed = open;
        ended.clear();
        unattributed = {};
        const std::string text = committed.text();
        REQUIRE(staged.text() == text); // the copies stage() made
        REQUIRE(staged.text() == text); // the series themselves
        if (!config.per_session) REQUIRE(upload_total(text) == landed_upload); // (ended sessions' series expire)
    }
    CHECK(failures > 50);
    CHECK(landed_upload > 0);
}

TEST_CASE("the snapshot a publish replaces is freed by the next stage, off the cycle's path", "[metrics]")
{
    Recorded r({});
    r.recorder.load({session("s1", "alice", traffic(1, 100, 2, 200))}, {});
    r.recorder.publish({});
    std::weak_ptr<const MetricsSnapshot> first = r.exporter->latest();
    REQUIRE(!first.expired());

    CycleCommit commit;
    commit.time = 2000;
    commit.sessions = {session("s1", "alice", traffic(2, 300, 2, 200))};
    auto staged = r.recorder.stage(commit);
    CHECK(!first.expired()); // still the published one
    r.recorder.confirm(commit, std::move(staged));
    r.recorder.publish({});
    CHECK(r.exporter->latest() != first.lock());
    CHECK(!first.expired()); // replaced, kept for the next stage() to free

    std::weak_ptr<const MetricsSnapshot> second = r.exporter->latest();
    commit.sessions[0].usage = traffic(3, 400, 2, 200);
    auto next = r.recorder.stage(commit);
    CHECK(first.expired());
    CHECK(!second.expired());
    r.recorder.confirm(commit, std::move(next));
    CHECK(sample(r.text(), R"(vpnmeter_client_bytes_total{interface="tun0",user="alice",direction="upload"})") == "400");
}

TEST_CASE("hash_users replaces user names with 12 hex digits of SHA-256", "[metrics]")
{
    CHECK(hashed_user("alice") == "2bd806c97f0e");
    CHECK(hashed_user("bob") == "81b637d8fcd2");

    MetricsConfig config;
    config.hash_users = true;
    Recorded r(config);
    Session alice = session("s1", "alice", traffic(1, 100, 1, 100));
    alice.source_upload_bytes = 7;
    r.recorder.load({alice}, {});
    LiveMetrics live;
    live.quotas = {{"alice", QuotaGauges{1000, 200, QuotaState::State::ok}}};
    r.recorder.publish(live);
    const std::string text = r.exporter->render();
    CHECK(text.find("alice") == std::string::npos);
    CHECK(sample(text, R"(vpnmeter_client_bytes_total{interface="tun0",user="2bd806c97f0e",direction="upload"})") ==
          "100");
    CHECK(sample(text, R"(vpnmeter_source_bytes_total{source="udp1194",user="2bd806c97f0e",direction="upload"})") ==
          "7");
    CHECK(sample(text, R"(vpnmeter_quota_limit_bytes{user="2bd806c97f0e"})") == "1000");
    CHECK(sample(text, R"(vpnmeter_quota_state{user="2bd806c97f0e",state="ok"})") == "1");
}

TEST_CASE("discard gives back what stage took: the known sessions' totals, the new ones and their places",
          "[metrics]")
{
    MetricsConfig config;
    config.per_session = true;
    config.max_sessions = 2;
    Recorded r(config);
    r.recorder.load({session("s1", "alice", traffic(1, 10, 0, 0))}, {});
    const std::string before = r.text();
    // s1 moves; s2 (new) takes the last place of its own, s3 (new) goes to "other";
    // a new session first in the cycle, where the undo ends.
    CycleCommit commit;
    commit.time = 1000;
    commit.sessions = {session("s0", "bob", traffic(1, 5, 0, 0)), session("s1", "alice", traffic(3, 50, 0, 0)),
                       session("s3", "carol", traffic(1, 30, 0, 0))};
    commit.sessions[1].source_upload_bytes = 7;
    r.recorder.discard(r.recorder.stage(commit));
    CHECK(r.text() == before);

    // The places are free again: the next new ones get them in their order.
    commit.sessions = {session("s2", "dave", traffic(1, 20, 0, 0))};
    r.recorder.account(commit);
    const std::string text = r.text();
    auto bytes = [&](const std::string& user, const std::string& id) {
        return sample(text, "vpnmeter_client_bytes_total{interface=\"tun0\",user=\"" + user + "\",session=\"" + id +
                                "\",direction=\"upload\"}");
    };
    CHECK(bytes("dave", "s2") == "20");
    CHECK(bytes("alice", "s1") == "10");
    CHECK_FALSE(bytes("bob", "s0"));
    CHECK_FALSE(bytes("bob", "other"));
}

TEST_CASE("per_session: at most max_sessions series of their own, the rest under session=\"other\"", "[metrics]")
{
    MetricsConfig config;
    config.per_session = true;
    config.max_sessions = 2;
    Recorded r(config);
    // Closed sessions of the store are history: not per-session series.
    r.recorder.load(
        {session("old", "alice", traffic(1, 999, 0, 0), false), session("s1", "alice", traffic(1, 10, 0, 0))}, {});
    CycleCommit commit;
    commit.time = 1000;
    commit.sessions = {session("s2", "bob", traffic(1, 20, 0, 0)), session("s3", "bob", traffic(1, 30, 0, 0)),
                       session("s4", "bob", traffic(1, 40, 0, 0))};
    r.recorder.account(commit);
    auto bytes = [&](const std::string& text, const std::string& user, const std::string& id) {
        return sample(text, "vpnmeter_client_bytes_total{interface=\"tun0\",user=\"" + user + "\",session=\"" + id +
                                "\",direction=\"upload\"}");
    };
    std::string text = r.text();
    CHECK(bytes(text, "alice", "s1") == "10");
    CHECK(bytes(text, "bob", "s2") == "20");
    CHECK(bytes(text, "bob", "other") == "70"); // s3 and s4
    CHECK_FALSE(bytes(text, "bob", "s3"));
    CHECK_FALSE(bytes(text, "alice", "old"));

    // s1 ends: its series stays for a while, then goes and frees its place;
    // s3 stays in "other" (moving it would make "other" go down), s5 takes the place.
    commit.sessions = {session("s1", "alice", traffic(2, 15, 0, 0), false)};
    r.recorder.account(commit);
    CHECK(bytes(r.text(), "alice", "s1") == "15");
    commit.time = 1000 + kEndedSessionSeriesSeconds;
    commit.sessions = {session("s3", "bob", traffic(2, 35, 0, 0)), session("s5", "carol", traffic(1, 1, 0, 0))};
    r.recorder.account(commit);
    text = r.text();
    CHECK_FALSE(bytes(text, "alice", "s1"));
    CHECK(bytes(text, "carol", "s5") == "1");
    CHECK(bytes(text, "bob", "other") == "75");
    size_t own = 0;
    for (const auto& line : lines_of(text))
        if (line.rfind("vpnmeter_client_bytes_total{", 0) == 0 && line.find("session=\"other\"") == std::string::npos &&
            line.find("direction=\"upload\"") != std::string::npos)
            ++own;
    CHECK(own == 2);
}

TEST_CASE("errors of a failed cycle are published without waiting for a good one", "[metrics]")
{
    Recorded r({});
    r.recorder.publish({});
    r.recorder.count_error("store_commit");
    r.recorder.count_error("store_commit");
    r.recorder.publish_errors();
    const std::string text = r.exporter->render();
    CHECK(has_line(text, R"(vpnmeter_errors_total{op="store_commit"} 2)"));
    CHECK(has_line(text, R"(vpnmeter_errors_total{op="collect"} 0)"));
    CHECK(has_line(text, R"(vpnmeter_build_info{version="1.2.3"} 1)"));

    LiveMetrics live;
    live.webhook_failures = 3;
    r.recorder.publish(live);
    CHECK(has_line(r.exporter->render(), R"(vpnmeter_errors_total{op="webhook"} 3)"));
}

TEST_CASE("interface totals and drops are summed by device name", "[metrics]")
{
    Interfaces devices;
    devices.name_by_ifindex = {{4, "tun0"}, {9, "tun0"}}; // tun0 recreated: a new ifindex
    CounterSnapshot counters;
    counters.interfaces[4] = {traffic(1, 100, 1, 100), {}};
    counters.interfaces[9] = {traffic(2, 50, 0, 0), {}};
    counters.interfaces[12] = {traffic(1, 1, 0, 0), {}};
    const auto totals = interface_totals(counters, devices);
    CHECK(totals.at("tun0") == traffic(3, 150, 1, 100));
    CHECK(totals.at("if12") == traffic(1, 1, 0, 0));

    std::map<ClientKey, ClientDrops> drops;
    drops[ClientKey::parse(4, "10.8.0.2")].block = traffic(1, 10, 0, 0);
    drops[ClientKey::parse(9, "10.8.0.3")].block = traffic(1, 5, 0, 0);
    CHECK(drops_by_interface(drops, devices).at("tun0").block == traffic(2, 15, 0, 0));

    CHECK(sessions_by_instance({{"udp1194", 1}}, {"udp1194", "tcp443"}) ==
          std::map<std::string, uint64_t>{{"tcp443", 0}, {"udp1194", 1}});
}

TEST_CASE("the histogram counts each observation in its bucket", "[metrics]")
{
    DurationHistogram h;
    h.observe(0.001); // on a bound: le is inclusive
    h.observe(0.003);
    h.observe(10);
    CHECK(h.count == 3);
    CHECK(h.buckets[0] == 1);
    CHECK(h.buckets[2] == 1);
    CHECK(std::accumulate(h.buckets.begin(), h.buckets.end(), uint64_t{0}) == 2); // 10 s: only in +Inf
}

TEST_CASE("failed store commits are counted by reason and as store_commit errors", "[metrics]")
{
    Recorded r({});
    r.recorder.publish({});
    r.recorder.count_store_commit_error("map_full");
    r.recorder.count_store_commit_error("map_full");
    r.recorder.count_store_commit_error("disk_full");
    r.recorder.publish_errors();
    const std::string text = r.exporter->render();
    CHECK(has_line(text, R"(vpnmeter_store_commit_errors_total{reason="map_full"} 2)"));
    CHECK(has_line(text, R"(vpnmeter_store_commit_errors_total{reason="disk_full"} 1)"));
    CHECK(has_line(text, R"(vpnmeter_store_commit_errors_total{reason="other"} 0)"));
    CHECK(has_line(text, R"(vpnmeter_errors_total{op="store_commit"} 3)"));

    r.recorder.publish({}); // a good cycle keeps the counts
    CHECK(has_line(r.exporter->render(), R"(vpnmeter_store_commit_errors_total{reason="map_full"} 2)"));
}

TEST_CASE("the series' copy is the map's, through insertions and erasures few or many", "[metrics]")
{
    std::mt19937 rng(7);
    SeriesMap<std::string, uint64_t> series;
    std::map<std::string, uint64_t> model;
    for (int round = 0; round < 200; ++round) {
        // Some rounds change a few series (kept in the list one by one),
        // others many (the list made afresh).
        const int changes = round % 10 == 0 ? 2000 : std::uniform_int_distribution<int>(0, 30)(rng);
        for (int i = 0; i < changes; ++i) {
            const std::string key = "user" + std::to_string(std::uniform_int_distribution<int>(0, 3000)(rng));
            switch (std::uniform_int_distribution<int>(0, 3)(rng)) {
            case 0:
                series.erase(key);
                model.erase(key);
                break;
            case 1:
                if (auto it = series.try_emplace(key).first; true) {
                    series.erase(it);
                    model.erase(key);
                }
                break;
            default:
                series[key] += static_cast<uint64_t>(i);
                model[key] += static_cast<uint64_t>(i);
            }
        }
        const auto copy = series.copy();
        REQUIRE(series.size() == model.size());
        std::vector<std::pair<std::string, uint64_t>> copied;
        for (const auto& [key, value] : copy) copied.emplace_back(key, value);
        REQUIRE(copied == std::vector<std::pair<std::string, uint64_t>>(model.begin(), model.end()));
    }
}
