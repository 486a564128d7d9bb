#include <catch2/catch.hpp>

#include <sys/socket.h>

#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "counters.h"

using namespace vpnmeter;

TEST_CASE("client keys round-trip to the BPF layout with zeroed padding", "[counters]")
{
    const ClientKey key = ClientKey::parse(7, "10.8.0.2");
    CHECK(key.family == AF_INET);
    const vpnmeter_client_key raw = key.to_bpf();
    const unsigned char expected[24] = {7, 0, 0, 0, AF_INET, 0, 0, 0, 10, 8, 0, 2};
    CHECK(std::memcmp(&raw, expected, sizeof expected) == 0); // the hash sees every byte
    CHECK(ClientKey::from_bpf(raw) == key);
}

TEST_CASE("addresses print as dotted quads and RFC 5952 IPv6", "[counters]")
{
    CHECK(ClientKey::parse(1, "10.8.0.2").address() == "10.8.0.2");
    CHECK(ClientKey::parse(1, "FD00:0008:0000:0000:0000:0000:0000:1000").address() == "fd00:8::1000");
    CHECK(ClientKey::parse(1, "2001:db8:0:1:0:0:0:1").address() == "2001:db8:0:1::1");
    CHECK(ClientKey::parse(1, "2001:db8::1:0:0:1").address() == "2001:db8::1:0:0:1");
    CHECK_THROWS_AS(ClientKey::parse(1, "10.8.0"), std::invalid_argument);
}

TEST_CASE("per-CPU values are summed", "[counters]")
{
    std::vector<vpnmeter_client_counters> per_cpu(3);
    per_cpu[0].dir[VPNMETER_UPLOAD] = {1, 100};
    per_cpu[1].dir[VPNMETER_UPLOAD] = {2, 200};
    per_cpu[2].dir[VPNMETER_DOWNLOAD] = {5, 5000};
    const Traffic sum = sum_per_cpu(std::span<const vpnmeter_client_counters>(per_cpu));
    CHECK(sum.upload == Count{3, 300});
    CHECK(sum.download == Count{5, 5000});

    std::vector<vpnmeter_iface_counters> ifaces(2);
    ifaces[0].total[VPNMETER_DOWNLOAD] = {4, 400};
    ifaces[1].total[VPNMETER_DOWNLOAD] = {1, 60};
    ifaces[1].unattributed[VPNMETER_DOWNLOAD] = {1, 60};
    ifaces[0].total[VPNMETER_UPLOAD] = {3, 300};
    ifaces[0].dropped[VPNMETER_UPLOAD] = {2, 200};
    ifaces[1].dropped[VPNMETER_UPLOAD] = {1, 100};
    const InterfaceTraffic total = sum_per_cpu(std::span<const vpnmeter_iface_counters>(ifaces));
    CHECK(total.total.download == Count{5, 460});
    CHECK(total.unattributed.download == Count{1, 60});
    CHECK(total.total.upload == Count{3, 300});
    CHECK(total.dropped.upload == Count{3, 300});
    CHECK(total.dropped.download == Count{});
}

TEST_CASE("deltas subtract, and a counter that went down is a reset", "[counters]")
{
    const Traffic before{{10, 1000}, {20, 2000}};
    CHECK(delta(Traffic{{12, 1300}, {20, 2000}}, before) == Traffic{{2, 300}, {0, 0}});
    CHECK(delta(before, before) == Traffic{});
    // A recreated map starts from zero: everything now is new, never negative.
    const Traffic after_reset{{1, 60}, {30, 9000}};
    CHECK(delta(after_reset, before) == after_reset);

    const InterfaceTraffic ib{{{10, 1000}, {10, 1000}}, {{1, 42}, {0, 0}}};
    const InterfaceTraffic in{{{11, 1100}, {12, 1300}}, {{2, 84}, {0, 0}}};
    CHECK(delta(in, ib) == InterfaceTraffic{{{1, 100}, {2, 300}}, {{1, 42}, {0, 0}}});
    const InterfaceTraffic reset{{{1, 100}, {0, 0}}, {{0, 0}, {0, 0}}};
    CHECK(delta(reset, ib) == reset);

    // Dropped moves like the rest, and resets with the entry.
    const InterfaceTraffic db{{{10, 1000}, {0, 0}}, {}, {{4, 400}, {0, 0}}};
    const InterfaceTraffic dn{{{13, 1300}, {0, 0}}, {}, {{6, 600}, {0, 0}}};
    CHECK(delta(dn, db) == InterfaceTraffic{{{3, 300}, {0, 0}}, {}, {{2, 200}, {0, 0}}});
    const InterfaceTraffic dropped_reset{{{13, 1300}, {0, 0}}, {}, {{1, 100}, {0, 0}}};
    CHECK(delta(dropped_reset, db) == dropped_reset);
}

TEST_CASE("client keys order by interface, family, then address bytes", "[counters]")
{
    // Random keys from a small alphabet, so that long shared prefixes (and
    // equal keys) are common; the order must be the plain lexicographic one.
    std::mt19937 rng(11);
    auto random_key = [&] {
        ClientKey key;
        key.ifindex = rng() % 3;
        key.family = rng() % 2 ? AF_INET : AF_INET6;
        for (auto& byte : key.addr) byte = static_cast<uint8_t>(rng() % 3 == 0 ? rng() : 0x80 * (rng() % 2));
        return key;
    };
    auto bytewise = [](const ClientKey& a, const ClientKey& b) {
        return std::tie(a.ifindex, a.family, a.addr) <=> std::tie(b.ifindex, b.family, b.addr);
    };
    for (int i = 0; i < 100000; ++i) {
        const ClientKey a = random_key(), b = random_key();
        REQUIRE((a <=> b) == bytewise(a, b));
        REQUIRE((a == b) == (bytewise(a, b) == 0));
    }
}
