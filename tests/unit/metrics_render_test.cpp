// render_metrics() against prometheus-cpp's TextSerializer, byte for byte,
// and the exporter's cached text.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include <prometheus/text_serializer.h>

#include "metrics.h"

using namespace vpnmeter;

namespace {

std::string serialized(const MetricsSnapshot& s) { return prometheus::TextSerializer().Serialize(metric_families(s)); }

// Fails with the first line that differs, not a screen of two whole texts.
void check_same_text(const MetricsSnapshot& s)
{
    const std::string want = serialized(s);
    const std::string got = render_metrics(s);
    if (got == want) {
        SUCCEED();
        return;
    }
    size_t at = 0;
    while (at < got.size() && at < want.size() && got[at] == want[at]) ++at;
    const size_t line = want.rfind('\n', at == 0 ? 0 : at - 1);
    const size_t from = line == std::string::npos ? 0 : line + 1;
    INFO("first difference at byte " << at << " of " << want.size() << " (got " << got.size() << " bytes)");
    INFO("prometheus-cpp: " << want.substr(from, want.find('\n', at) - from));
    INFO("render_metrics: " << got.substr(from, got.find('\n', at) - from));
    FAIL();
}

Traffic traffic(uint64_t up_packets, uint64_t up_bytes, uint64_t down_packets, uint64_t down_bytes)
{
    return {{up_packets, up_bytes}, {down_packets, down_bytes}};
}

constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

// Every family, with values and labels that exercise the formatting.
MetricsSnapshot everything(bool per_session)
{
    MetricsSnapshot s;
    s.per_session = per_session;
    s.clients[{"tun0", "alice", "s1"}] = traffic(10, 1000, 20, 20000);
    s.clients[{"tun0", "b\\o\"b\nx", "other"}] = traffic(0, 0, 0, 0);
    s.clients[{"tun1", "zoë 🦊", "s\\2"}] = traffic(1ULL << 53, (1ULL << 53) + 1, 100'000'000'000'000'000ULL,
                                                   123'456'789'012'345'678ULL);
    s.clients[{"tun1", "bad\xff\xc0\xaf\xed\xa0\x80\xe2\x82", "s3"}] = traffic(kMax, kMax - 1, 9'999'999'999'999'999ULL,
                                                                               10'000'000'000'000'000ULL);
    s.interfaces["tun0"] = traffic(12, 1200, 21, 20100);
    s.interfaces["tun\"1"] = traffic(1, 2, 3, 4);
    s.unattributed["tun0"] = traffic(2, 200, 1, 100);
    s.unattributed["tun\"1"] = {};
    ClientDrops drops;
    drops.block = traffic(1, 60, 0, 0);
    drops.quota = traffic(3, 300, 4, 4000);
    drops.policer = traffic(5, 7500, 6, 9000);
    s.drops["tun0"] = drops;
    s.drops["tun1"] = {};
    s.sessions_active["udp1194"] = 2;
    s.sessions_active["singbox"] = 0;
    s.singbox["singbox"] = {true, 3, 1};
    s.singbox["sb\\2"] = {false, 0, 0};
    s.source_bytes[{"udp1194", "alice"}] = {1500, 21000};
    s.source_bytes[{"singbox", "zoë 🦊"}] = {(1ULL << 60), 0};
    s.quotas["alice"] = {20'000'000, 21000, QuotaState::State::warning};
    s.quotas["bob"] = {std::nullopt, 5, QuotaState::State::ok};
    s.quotas["carol"] = {0, 0, QuotaState::State::blocked};
    s.quotas["dave"] = {kMax, kMax, QuotaState::State::expired};
    s.collection_duration.observe(0.0005);
    s.collection_duration.observe(0.001);
    s.collection_duration.observe(0.1 + 0.2);
    s.collection_duration.observe(3);
    s.collection_duration.observe(1e-7);
    s.maps["clients"] = {2, 65536};
    s.maps["policy"] = {0, 1'000'000};
    s.store_size_bytes = 32768;
    s.errors = {{"collect", 0}, {"store_commit", 1}, {"webhook", 1ULL << 40}};
    s.store_commit_errors = {{"map_full", 2}, {"disk_full", 0}, {"other", 0}};
    s.alerts = 7;
    s.version = "0.1.0-\"dev\"\\\n";
    return s;
}

// A value that is mostly ASCII, sometimes any bytes at all.
std::string random_label(std::mt19937_64& rng)
{
    std::string out(rng() % 12, 'x');
    for (char& c : out) c = static_cast<char>(rng() % 4 ? 'a' + rng() % 26 : rng() % 256);
    return out;
}

} // namespace

TEST_CASE("render_metrics writes what prometheus-cpp's TextSerializer writes", "[metrics]")
{
    SECTION("an empty snapshot") { check_same_text(MetricsSnapshot{}); }
    SECTION("every family, per_session off") { check_same_text(everything(false)); }
    SECTION("every family, per_session on") { check_same_text(everything(true)); }
    SECTION("store_size_bytes unset, empty maps, no limit anywhere")
    {
        MetricsSnapshot s = everything(false);
        s.store_size_bytes.reset();
        s.drops.clear();
        s.singbox.clear();
        s.maps.clear();
        s.errors.clear();
        s.store_commit_errors.clear();
        for (auto& [user, quota] : s.quotas) quota.limit_bytes.reset();
        check_same_text(s);
    }
    SECTION("histogram sums that are not plain numbers")
    {
        for (double sum : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                           -std::numeric_limits<double>::infinity(), -0.0, 1e17, 123456.789e-300, 1e16, 1e15 + 0.5}) {
            MetricsSnapshot s;
            s.collection_duration.count = 1;
            s.collection_duration.sum = sum;
            INFO("sum " << sum);
            check_same_text(s);
        }
    }
    SECTION("2,000 users with a session each, per_session on")
    {
        MetricsSnapshot s = everything(true);
        for (uint64_t i = 0; i < 2000; ++i) {
            const std::string user = "user" + std::to_string(i);
            s.clients[{"tun0", user, "udp1194-" + user + "-1700000000"}] = traffic(i, i * 1000, i * 3, i * i * 1500);
            s.source_bytes[{"udp1194", user}] = {i * 1100, i * 1600};
            s.quotas[user] = {i % 3 ? std::optional<uint64_t>(i << 30) : std::nullopt, i * 777, QuotaState::State::throttled};
        }
        check_same_text(s);
    }
    SECTION("random label bytes and counters")
    {
        std::mt19937_64 rng(20240601);
        MetricsSnapshot s;
        s.per_session = true;
        for (int i = 0; i < 500; ++i) {
            s.clients[{random_label(rng), random_label(rng), random_label(rng)}] =
                traffic(rng() >> (rng() % 64), rng() >> (rng() % 64), rng(), rng() % 1000);
            s.errors[random_label(rng)] = rng() >> (rng() % 64);
        }
        s.version = random_label(rng);
        check_same_text(s);
    }
}

TEST_CASE("the exporter renders a snapshot once and a new one after publish()", "[metrics]")
{
    MetricsExporter exporter;
    CHECK(exporter.render().empty());

    MetricsSnapshot first = everything(false);
    exporter.publish(std::make_shared<const MetricsSnapshot>(first));
    const auto text = exporter.text();
    CHECK(*text == render_metrics(first));
    CHECK(exporter.text() == text); // the same string: not rendered again
    CHECK(exporter.render() == *text);

    MetricsSnapshot second = first;
    second.alerts = 8;
    exporter.publish(std::make_shared<const MetricsSnapshot>(second));
    CHECK(*exporter.text() == render_metrics(second));
    CHECK(exporter.text() != text);
    CHECK(*text == render_metrics(first)); // a scrape still sending the old text keeps it

    // The same snapshot published again is a new publish: rendered again, same text.
    auto third = std::make_shared<const MetricsSnapshot>(second);
    exporter.publish(third);
    const auto before = exporter.text();
    exporter.publish(third);
    CHECK(exporter.text() != before);
    CHECK(*exporter.text() == *before);
}

TEST_CASE("concurrent scrapes of a new snapshot share one render", "[metrics]")
{
    MetricsExporter exporter;
    exporter.publish(std::make_shared<const MetricsSnapshot>(everything(true)));
    std::vector<std::shared_ptr<const std::string>> texts(4);
    std::vector<std::thread> scrapes;
    for (auto& text : texts) scrapes.emplace_back([&exporter, &text] { text = exporter.text(); });
    for (auto& scrape : scrapes) scrape.join();
    for (const auto& text : texts) CHECK(text == texts.front());
    CHECK(*texts.front() == serialized(everything(true)));
}
