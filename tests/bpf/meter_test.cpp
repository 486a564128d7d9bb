// The real tc programs under BPF_PROG_TEST_RUN (needs root).
//
// Every test case loads the programs through Datapath::load() with its own
// pin path, runs crafted frames through meter_ingress / meter_egress, and
// reads the counters back through PinnedMaps::read() (batch lookups,
// per-CPU sums): the path the daemon and the CLI use. A model of what was
// sent is compared with what was read, entry by entry, exactly.
//
// What a tc test run cannot do (kernel 6.18): BPF_F_TEST_RUN_ON_CPU is
// refused for tc programs (per-CPU spread comes from sched_setaffinity), and
// so is a frame whose ethertype is IPv4/IPv6 but which is shorter than the IP
// header; truncated frames go through a veth pair in a private netns instead.
#include <catch2/catch.hpp>

#include "pin_guard.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <netlink/errno.h>
#include <netlink/route/link.h>
#include <netlink/route/link/veth.h>

#include <cerrno>
#include <cstdio>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bpf_maps.h"
#include "counters.h"
#include "datapath.h"
#include "netlink.h"
#include "packets.h"

using namespace vpnmeter;
using namespace vpnmeter::test;
using namespace vpnmeter::testing;

namespace {

constexpr uint32_t kLoopback = 1;             // every netns has lo at ifindex 1
constexpr uint32_t kTcActUnspec = 0xffffffff; // TC_ACT_UNSPEC (-1) as the test run's u32 retval
const char* const kNoClient = nullptr;        // the frame must land in `unattributed`

enum class Dir { upload, download }; // ingress = upload, egress = download

// ---------------------------------------------------------------- printing

std::string show(const Count& c)
{
    return std::to_string(c.packets) + " pkts/" + std::to_string(c.bytes) + " B";
}

std::string show(const Traffic& t) { return "up " + show(t.upload) + ", down " + show(t.download); }

std::string show(const InterfaceTraffic& t)
{
    return "total {" + show(t.total) + "} unattributed {" + show(t.unattributed) + "} dropped {" + show(t.dropped) +
           "}";
}

std::string show(const ClientKey& key) { return key.address() + "@if" + std::to_string(key.ifindex); }

std::string show(const CounterSnapshot& snap)
{
    std::ostringstream out;
    out << "clients:";
    if (snap.clients.empty()) out << " none";
    for (const auto& [key, traffic] : snap.clients) out << "\n  " << show(key) << ": " << show(traffic);
    out << "\ninterfaces:";
    if (snap.interfaces.empty()) out << " none";
    for (const auto& [ifindex, traffic] : snap.interfaces) out << "\n  if" << ifindex << ": " << show(traffic);
    return out.str();
}

// ---------------------------------------------------------------- guards


// Pins the calling thread to one CPU; restores the old mask on scope exit.
class CpuPin {
public:
    CpuPin()
    {
        CPU_ZERO(&saved_);
        REQUIRE(sched_getaffinity(0, sizeof saved_, &saved_) == 0);
    }
    CpuPin(const CpuPin&) = delete;
    CpuPin& operator=(const CpuPin&) = delete;
    ~CpuPin() { sched_setaffinity(0, sizeof saved_, &saved_); }

    std::vector<int> allowed() const
    {
        std::vector<int> cpus;
        for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
            if (CPU_ISSET(cpu, &saved_)) cpus.push_back(cpu);
        return cpus;
    }
    void to(int cpu)
    {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        const int rc = sched_setaffinity(0, sizeof one, &one);
        INFO("sched_setaffinity to CPU " << cpu << ": " << (rc ? std::strerror(errno) : "ok"));
        REQUIRE(rc == 0);
        REQUIRE(sched_getcpu() == cpu);
    }

private:
    cpu_set_t saved_;
};

// Moves the calling thread into a fresh network namespace (only lo, at
// ifindex 1) and back on scope exit; the namespace and any device made in it
// vanish with the last reference, so nothing leaks into the host.
class PrivateNetns {
public:
    PrivateNetns()
    {
        orig_ = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        if (orig_ < 0) FAIL("open /proc/thread-self/ns/net: " << std::strerror(errno));
        if (unshare(CLONE_NEWNET) != 0) {
            const int err = errno;
            close(orig_);
            FAIL("unshare(CLONE_NEWNET): " << std::strerror(err));
        }
        // No IPv6 on the devices made here: no DAD, router solicitations or
        // MLD reports of our own to disturb exact counts on a link that is
        // up. (/proc/sys/net is the namespace of the thread that opens it.)
        for (const char* conf : {"all", "default"})
            std::ofstream(std::string("/proc/sys/net/ipv6/conf/") + conf + "/disable_ipv6") << "1\n";
    }
    PrivateNetns(const PrivateNetns&) = delete;
    PrivateNetns& operator=(const PrivateNetns&) = delete;
    ~PrivateNetns()
    {
        if (setns(orig_, CLONE_NEWNET) != 0)
            std::fprintf(stderr, "setns back to the original netns: %s\n", std::strerror(errno));
        close(orig_);
    }

    // Creates a veth pair here; returns the ifindexes of both ends.
    std::pair<uint32_t, uint32_t> add_veth(const std::string& a, const std::string& b)
    {
        auto sock = open_route_socket();
        if (!sock) FAIL(sock.error().message());
        // The peer goes to the namespace of this thread (a tid works for
        // IFLA_NET_NS_PID): the private one, never the host's.
        const int err = rtnl_link_veth_add(sock->get(), a.c_str(), b.c_str(), gettid());
        if (err < 0) FAIL("create veth " << a << "/" << b << ": " << nl_geterror(err));
        const uint32_t ia = if_nametoindex(a.c_str()), ib = if_nametoindex(b.c_str());
        INFO(a << " ifindex " << ia << ", " << b << " ifindex " << ib);
        REQUIRE(ia != 0);
        REQUIRE(ib != 0);
        return {ia, ib};
    }

    void up(const std::string& name)
    {
        const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd >= 0);
        ifreq ifr{};
        std::strncpy(ifr.ifr_name, name.c_str(), IFNAMSIZ - 1);
        int rc = ioctl(fd, SIOCGIFFLAGS, &ifr);
        if (rc == 0) {
            ifr.ifr_flags |= IFF_UP;
            rc = ioctl(fd, SIOCSIFFLAGS, &ifr);
        }
        const int err = errno;
        close(fd);
        if (rc != 0) FAIL("set " << name << " up: " << std::strerror(err));
    }

private:
    int orig_ = -1;
};

// Sends raw Ethernet frames out of one device (AF_PACKET, SOCK_RAW): they
// pass that device's tc egress, and for a veth its peer's tc ingress, with
// skb->protocol from the ethertype and nothing checking the IP header.
class PacketSender {
public:
    explicit PacketSender(uint32_t ifindex) : ifindex_(ifindex)
    {
        fd_ = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0); // protocol 0: receives nothing
        if (fd_ < 0) FAIL("AF_PACKET socket: " << std::strerror(errno));
    }
    PacketSender(const PacketSender&) = delete;
    PacketSender& operator=(const PacketSender&) = delete;
    ~PacketSender() { close(fd_); }

    void send(const Frame& frame)
    {
        sockaddr_ll to{};
        to.sll_family = AF_PACKET;
        to.sll_ifindex = static_cast<int>(ifindex_);
        to.sll_protocol = htons(static_cast<uint16_t>(frame.at(12) << 8 | frame.at(13)));
        to.sll_halen = 6;
        std::memcpy(to.sll_addr, frame.data(), 6);
        const ssize_t sent = sendto(fd_, frame.data(), frame.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to);
        INFO("send " << frame.size() << "-byte frame on ifindex " << ifindex_ << ": "
                     << (sent < 0 ? std::strerror(errno) : "ok"));
        REQUIRE(sent == static_cast<ssize_t>(frame.size()));
    }

private:
    uint32_t ifindex_;
    int fd_ = -1;
};

// ---------------------------------------------------------------- the meter

struct RunResult {
    int err = 0;
    uint32_t retval = 0;
    Frame out;
};

// One BPF_PROG_TEST_RUN of prog on frame, `repeat` times, as if on ifindex.
RunResult test_run(int prog_fd, const Frame& frame, uint32_t ifindex, uint32_t repeat)
{
    __sk_buff ctx{};
    ctx.ifindex = ifindex;
    RunResult result;
    result.out.assign(frame.size() + 256, 0xee);
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame.data(), .data_out = result.out.data(),
                .data_size_in = static_cast<uint32_t>(frame.size()),
                .data_size_out = static_cast<uint32_t>(result.out.size()), .ctx_in = &ctx,
                .ctx_size_in = sizeof ctx, .repeat = static_cast<int>(repeat));
    result.err = bpf_prog_test_run_opts(prog_fd, &opts);
    result.retval = opts.retval;
    result.out.resize(result.err ? 0 : opts.data_size_out);
    return result;
}

// The programs loaded under a private pin path, and a model of what they
// must have counted.
class Meter {
public:
    explicit Meter(uint32_t max_clients = 64, std::string pin_path = unique_pin_path())
        : guard_(std::move(pin_path))
    {
        auto dp = Datapath::load({guard_.path(), max_clients});
        if (!dp) FAIL("Datapath::load(" << guard_.path() << "): " << dp.error().message());
        dp_.emplace(std::move(dp.value()));
    }

    Datapath& datapath() { return *dp_; }
    const std::string& pin_path() const { return guard_.path(); }

    // Runs the frame through the program of `dir`, checks the verdict and
    // that the packet is untouched, and records what must be counted: for
    // `client`, or unattributed when client is kNoClient.
    void send(Dir dir, const Frame& frame, uint32_t ifindex, uint32_t repeat, const char* client)
    {
        const int fd = dir == Dir::upload ? dp_->ingress_prog_fd() : dp_->egress_prog_fd();
        INFO((dir == Dir::upload ? "meter_ingress" : "meter_egress")
             << " on ifindex " << ifindex << ", " << frame.size() << "-byte frame (ethertype 0x" << std::hex
             << (frame.size() >= 14 ? (frame[12] << 8 | frame[13]) : 0) << std::dec << "), repeat " << repeat);
        const RunResult run = test_run(fd, frame, ifindex, repeat);
        INFO("bpf_prog_test_run_opts: " << (run.err ? std::strerror(-run.err) : "ok"));
        REQUIRE(run.err == 0);
        CHECK(run.retval == kTcActUnspec);
        CHECK(run.out.size() == frame.size());
        CHECK(run.out == frame);
        record(dir, frame.size(), ifindex, repeat, client);
    }
    void upload(const Frame& f, uint32_t ifindex, uint32_t repeat, const char* client)
    {
        send(Dir::upload, f, ifindex, repeat, client);
    }
    void download(const Frame& f, uint32_t ifindex, uint32_t repeat, const char* client)
    {
        send(Dir::download, f, ifindex, repeat, client);
    }

    // What must be counted when packets went through without this object
    // (another Meter on the same pins, or a raw test run).
    void record(Dir dir, size_t len, uint32_t ifindex, uint64_t packets, const char* client)
    {
        const Count c{packets, packets * len};
        auto& iface = expected_.interfaces[ifindex];
        pick(iface.total, dir) += c;
        if (client) pick(expected_.clients[ClientKey::parse(ifindex, client)], dir) += c;
        else pick(iface.unattributed, dir) += c;
    }

    // Attaches to a real device; the loader adds a zeroed totals entry.
    void attach(uint32_t ifindex, const std::string& name)
    {
        auto status = dp_->attach(ifindex, name);
        if (!status) FAIL("attach to " << name << ": " << status.error().message());
        expected_.interfaces[ifindex];
    }

    // For live traffic, which a softirq may count a little later: waits
    // until every interface total reaches the model's (or 2 s pass).
    CounterSnapshot settle() const
    {
        for (int i = 0; i < 200; ++i) {
            const CounterSnapshot got = read();
            bool reached = true;
            for (const auto& [ifindex, want] : expected_.interfaces) {
                auto it = got.interfaces.find(ifindex);
                if (it == got.interfaces.end() || it->second.total.upload.packets < want.total.upload.packets ||
                    it->second.total.download.packets < want.total.download.packets)
                    reached = false;
            }
            if (reached) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return check();
    }

    CounterSnapshot read() const
    {
        auto maps = PinnedMaps::open(guard_.path());
        if (!maps) FAIL("PinnedMaps::open: " << maps.error().message());
        auto snap = maps->read();
        if (!snap) FAIL("PinnedMaps::read: " << snap.error().message());
        return std::move(snap.value());
    }

    // Reads the maps and compares them with the model: the same client and
    // interface entries, the same values, and total == clients + unattributed
    // on every interface.
    CounterSnapshot check() const
    {
        const CounterSnapshot got = read();
        INFO("read from the maps:\n" << show(got) << "\nexpected:\n" << show(expected_));
        for (const auto& [key, want] : expected_.clients) {
            INFO("client " << show(key));
            auto it = got.clients.find(key);
            if (it == got.clients.end()) {
                FAIL_CHECK("no entry for client " << show(key) << " (expected " << show(want) << ")");
                continue;
            }
            CHECK(show(it->second) == show(want));
        }
        for (const auto& [key, traffic] : got.clients)
            if (!expected_.clients.count(key)) FAIL_CHECK("unexpected client entry " << show(key) << ": " << show(traffic));

        for (const auto& [ifindex, want] : expected_.interfaces) {
            INFO("interface " << ifindex);
            auto it = got.interfaces.find(ifindex);
            if (it == got.interfaces.end()) {
                FAIL_CHECK("no entry for ifindex " << ifindex << " (expected " << show(want) << ")");
                continue;
            }
            CHECK(show(it->second) == show(want));
        }
        for (const auto& [ifindex, traffic] : got.interfaces)
            if (!expected_.interfaces.count(ifindex))
                FAIL_CHECK("unexpected interface entry if" << ifindex << ": " << show(traffic));

        check_totals_add_up(got);
        return got;
    }

    // sum(clients) + unattributed + dropped == total, per interface, on what
    // was read (nothing is dropped here: no policies).
    static void check_totals_add_up(const CounterSnapshot& got)
    {
        std::map<uint32_t, Traffic> attributed;
        for (const auto& [key, traffic] : got.clients) attributed[key.ifindex] += traffic;
        for (const auto& [ifindex, iface] : got.interfaces) {
            INFO("interface " << ifindex << ": clients sum to " << show(attributed[ifindex]) << ", "
                              << show(iface));
            Traffic sum = attributed[ifindex];
            sum += iface.unattributed;
            sum += iface.dropped;
            CHECK(show(sum) == show(iface.total));
            CHECK(iface.dropped.empty());
        }
        for (const auto& [ifindex, traffic] : attributed)
            if (!got.interfaces.count(ifindex))
                FAIL_CHECK("clients counted on if" << ifindex << " (" << show(traffic)
                                                   << ") but no interface totals entry");
    }

private:
    static Count& pick(Traffic& t, Dir dir) { return dir == Dir::upload ? t.upload : t.download; }

    PinGuard guard_; // first: destroyed last, after the programs are closed
    std::optional<Datapath> dp_;
    CounterSnapshot expected_;
};

// Per-CPU values of one client entry, straight from the map (not summed).
std::vector<vpnmeter_client_counters> per_cpu_values(const std::string& pin_path, const ClientKey& key)
{
    auto maps = PinnedMaps::open(pin_path);
    if (!maps) FAIL(maps.error().message());
    std::vector<vpnmeter_client_counters> values(static_cast<size_t>(libbpf_num_possible_cpus()));
    const vpnmeter_client_key raw = key.to_bpf();
    if (bpf_map_lookup_elem(maps->clients_fd(), &raw, values.data()) != 0)
        FAIL("lookup " << show(key) << " in " << kClientsMap << ": " << std::strerror(errno));
    return values;
}

bool pinned(const std::string& path)
{
    std::error_code ec;
    return std::filesystem::exists(path, ec);
}

} // namespace

// ====================================================================== tests

TEST_CASE("IPv4 and IPv6 UDP count per client address, source on ingress, destination on egress",
          "[bpf][meter]")
{
    Meter m;
    // Upload: the client is the source; the destination is somewhere else.
    for (size_t len : {kIpv4UdpMin, size_t{60}, size_t{343}, size_t{1514}})
        m.upload(ipv4_udp("10.8.0.2", "198.51.100.7", len), kLoopback, 3, "10.8.0.2");
    // Download: the client is the destination; the server/internet the source.
    for (size_t len : {kIpv4UdpMin, size_t{576}, size_t{1500}})
        m.download(ipv4_udp("198.51.100.7", "10.8.0.2", len), kLoopback, 2, "10.8.0.2");
    // Another IPv4 client, only downloading.
    m.download(ipv4_udp("10.8.0.1", "10.8.0.3", 100), kLoopback, 7, "10.8.0.3");

    for (size_t len : {kIpv6UdpMin, size_t{101}, size_t{1294}, size_t{1514}})
        m.upload(ipv6_udp("fd00:8::2", "2001:db8::7", len), kLoopback, 5, "fd00:8::2");
    for (size_t len : {kIpv6UdpMin, size_t{1280}})
        m.download(ipv6_udp("2001:db8::7", "fd00:8::2", len), kLoopback, 4, "fd00:8::2");
    m.download(ipv6_udp("fd00:8::1", "fd00:8::1000", 200), kLoopback, 1, "fd00:8::1000");

    // No entries for 198.51.100.7, 10.8.0.1, 2001:db8::7, fd00:8::1: check()
    // fails on any client entry the model does not have.
    const CounterSnapshot got = m.check();
    CHECK(got.clients.size() == 4);
    // The IPv4 key is the 4 address bytes, the rest zero.
    CHECK(got.clients.count(ClientKey::parse(kLoopback, "10.8.0.2")) == 1);
}

TEST_CASE("repeat N counts N packets of the frame's length", "[bpf][meter]")
{
    Meter m;
    m.upload(ipv4_udp("10.8.0.2", "192.0.2.1", 1000), kLoopback, 1, "10.8.0.2");
    m.upload(ipv4_udp("10.8.0.2", "192.0.2.1", 1000), kLoopback, 10000, "10.8.0.2");
    m.download(ipv6_udp("2001:db8::1", "fd00:8::2", 777), kLoopback, 4321, "fd00:8::2");
    const CounterSnapshot got = m.check();
    const auto& v4 = got.clients.at(ClientKey::parse(kLoopback, "10.8.0.2"));
    CHECK(v4.upload.packets == 10001);
    CHECK(v4.upload.bytes == 10001ull * 1000);
    CHECK(show(v4.download) == show(Count{}));
}

TEST_CASE("the verdict is TC_ACT_UNSPEC and no frame is modified", "[bpf][meter]")
{
    Meter m;
    const std::vector<std::pair<std::string, Frame>> frames = {
        {"IPv4/UDP", ipv4_udp("10.8.0.2", "192.0.2.1", 128)},
        {"IPv6/UDP", ipv6_udp("fd00:8::2", "2001:db8::1", 128)},
        {"ARP", arp_request("10.8.0.2", "10.8.0.1")},
        {"bare Ethernet header", ethernet(0x88b5, kEthHeader)},
        {"unknown ethertype", ethernet(0x88b5, 90)},
    };
    const std::vector<std::pair<std::string, int>> progs = {
        {"meter_ingress", m.datapath().ingress_prog_fd()},
        {"meter_egress", m.datapath().egress_prog_fd()},
    };
    for (const auto& [prog, fd] : progs) {
        for (const auto& [what, frame] : frames) {
            INFO(prog << " on " << what << " (" << frame.size() << " bytes)");
            const RunResult run = test_run(fd, frame, kLoopback, 3);
            INFO("bpf_prog_test_run_opts: " << (run.err ? std::strerror(-run.err) : "ok"));
            REQUIRE(run.err == 0);
            CHECK(run.retval == kTcActUnspec);
            CHECK(run.out.size() == frame.size());
            CHECK(run.out == frame);
        }
    }
}

TEST_CASE("non-IP frames count on the interface as unattributed, with no client entry", "[bpf][meter]")
{
    Meter m;
    // ARP carries IPv4 addresses, but it is not an IP packet.
    m.upload(arp_request("10.8.0.2", "10.8.0.1"), kLoopback, 3, kNoClient);
    m.upload(arp_request("10.8.0.2", "10.8.0.1", 42), kLoopback, 1, kNoClient);
    m.download(arp_request("10.8.0.1", "10.8.0.2"), kLoopback, 2, kNoClient);
    // Some other ethertype, long enough to hold any address.
    m.download(ethernet(0x88b5, 200), kLoopback, 5, kNoClient);
    const CounterSnapshot got = m.check();
    CHECK(got.clients.empty());
    REQUIRE(got.interfaces.count(kLoopback) == 1);
    const InterfaceTraffic& lo = got.interfaces.at(kLoopback);
    CHECK(show(lo.unattributed) == show(lo.total));
    CHECK(show(lo.total) == show(Traffic{{4, 3 * 60 + 42}, {7, 2 * 60 + 5 * 200}}));
}

// BPF_PROG_TEST_RUN cannot make these: kernel 6.18 refuses (EINVAL) a test
// run whose ethertype is IPv4 or IPv6 but whose frame is shorter than the
// IP header (34 / 54 bytes). So they go through a real veth pair in a
// private netns, with the programs attached by Datapath::attach(): each
// frame sent out of A passes A's tc egress (download: destination) and B's
// tc ingress (upload: source).
TEST_CASE("truncated IP frames are unattributed until they hold the client address (live veth)",
          "[bpf][meter][live]")
{
    PrivateNetns netns; // before the Meter: detach and unpin happen in the netns
    const auto [a, b] = netns.add_veth("vmtest0", "vmtest1");
    netns.up("vmtest0");
    netns.up("vmtest1");
    Meter m;
    m.attach(a, "vmtest0");
    m.attach(b, "vmtest1");
    PacketSender tx(a);

    // frame from A to B: `to` is the client on A's egress, `from` on B's ingress.
    const auto send = [&](const Frame& frame, uint32_t n, const char* to, const char* from) {
        for (uint32_t i = 0; i < n; ++i) tx.send(frame);
        m.record(Dir::download, frame.size(), a, n, to);
        m.record(Dir::upload, frame.size(), b, n, from);
    };

    SECTION("IPv4") // saddr at 12..15, daddr at 16..19 of the IP header
    {
        const Frame v4 = ipv4_udp("10.8.0.2", "10.8.0.9", 100);
        send(v4, 2, "10.8.0.9", "10.8.0.2"); // whole: both ends attributed
        send(truncated(v4, kEthHeader), 1, kNoClient, kNoClient);
        send(truncated(v4, kEthHeader + 8), 2, kNoClient, kNoClient);
        send(truncated(v4, kEthHeader + 15), 3, kNoClient, kNoClient);  // ends inside the source
        send(truncated(v4, kEthHeader + 16), 4, kNoClient, "10.8.0.2");  // source, part of the destination
        send(truncated(v4, kEthHeader + 19), 1, kNoClient, "10.8.0.2");
        send(truncated(v4, kEthHeader + 20), 5, "10.8.0.9", "10.8.0.2"); // the bare header
    }
    SECTION("IPv6") // saddr at 8..23, daddr at 24..39 of the IP header
    {
        const Frame v6 = ipv6_udp("fd00:8::2", "fd00:8::9", 100);
        send(v6, 2, "fd00:8::9", "fd00:8::2");
        send(truncated(v6, kEthHeader), 1, kNoClient, kNoClient);
        send(truncated(v6, kEthHeader + 20), 2, kNoClient, kNoClient);
        send(truncated(v6, kEthHeader + 23), 3, kNoClient, kNoClient);
        send(truncated(v6, kEthHeader + 24), 4, kNoClient, "fd00:8::2");
        send(truncated(v6, kEthHeader + 39), 1, kNoClient, "fd00:8::2");
        send(truncated(v6, kEthHeader + 40), 5, "fd00:8::9", "fd00:8::2");
    }
    SECTION("non-IP and whole frames count the same as under a test run")
    {
        send(arp_request("10.8.0.1", "10.8.0.2"), 3, kNoClient, kNoClient);
        send(ipv4_udp("10.8.0.2", "10.8.0.9", 1514), 2, "10.8.0.9", "10.8.0.2");
        send(ipv6_udp("fd00:8::2", "fd00:8::9", 1514), 2, "fd00:8::9", "fd00:8::2");
    }
    m.settle();
}

TEST_CASE("a full client map sends new clients to unattributed, totals stay exact", "[bpf][meter]")
{
    Meter m(4);
    CHECK(m.datapath().max_clients() == 4);
    {
        auto maps = PinnedMaps::open(m.pin_path());
        REQUIRE(maps);
        CHECK(maps->max_clients() == 4);
    }
    const char* const sources[] = {"10.8.0.2", "10.8.0.3", "fd00:8::4", "10.8.0.5", "10.8.0.6", "fd00:8::7"};
    for (size_t i = 0; i < std::size(sources); ++i) {
        const std::string src = sources[i];
        const Frame f = src.find(':') == std::string::npos ? ipv4_udp(src, "192.0.2.1", 100 + i)
                                                           : ipv6_udp(src, "2001:db8::1", 100 + i);
        m.upload(f, kLoopback, static_cast<uint32_t>(i + 1), i < 4 ? sources[i] : kNoClient);
    }
    // Known clients keep counting; the ones left out stay left out, both ways.
    m.download(ipv4_udp("192.0.2.1", "10.8.0.2", 300), kLoopback, 2, "10.8.0.2");
    m.download(ipv6_udp("2001:db8::1", "fd00:8::4", 300), kLoopback, 2, "fd00:8::4");
    m.download(ipv4_udp("192.0.2.1", "10.8.0.6", 300), kLoopback, 3, kNoClient);
    m.upload(ipv6_udp("fd00:8::7", "2001:db8::1", 300), kLoopback, 1, kNoClient);

    const CounterSnapshot got = m.check();
    CHECK(got.clients.size() == 4);
}

TEST_CASE("per-CPU values are summed when reading", "[bpf][meter]")
{
    Meter m;
    CpuPin pin;
    const std::vector<int> cpus = pin.allowed();
    if (cpus.size() < 2) WARN("only " << cpus.size() << " CPU allowed: per-CPU spread not exercised");

    // BPF_F_TEST_RUN_ON_CPU is for raw tracepoints only: the kernel rejects
    // flags/cpu for tc programs, hence sched_setaffinity (a test run stays
    // on the CPU it starts on while the thread is pinned).
    const Frame v4 = ipv4_udp("10.8.0.2", "192.0.2.1", 500);
    const Frame v6 = ipv6_udp("2001:db8::1", "fd00:8::2", 300);
    std::map<int, uint64_t> v4_packets_on; // cpu -> packets
    uint32_t repeat = 11;
    for (int cpu : cpus) {
        pin.to(cpu);
        m.upload(v4, kLoopback, repeat, "10.8.0.2");
        m.download(v6, kLoopback, repeat + 1, "fd00:8::2");
        v4_packets_on[cpu] += repeat;
        repeat += 10;
    }
    pin.to(cpus.front()); // back to the first, on top of what it has
    m.upload(v4, kLoopback, 5, "10.8.0.2");
    v4_packets_on[cpus.front()] += 5;

    m.check(); // the summed values

    const auto values = per_cpu_values(m.pin_path(), ClientKey::parse(kLoopback, "10.8.0.2"));
    int cpus_used = 0;
    for (size_t cpu = 0; cpu < values.size(); ++cpu) {
        const auto& up = values[cpu].dir[VPNMETER_UPLOAD];
        const uint64_t want = v4_packets_on.count(static_cast<int>(cpu)) ? v4_packets_on[static_cast<int>(cpu)] : 0;
        INFO("CPU " << cpu << ": upload " << up.packets << " pkts/" << up.bytes << " B");
        CHECK(up.packets == want);
        CHECK(up.bytes == want * v4.size());
        CHECK(values[cpu].dir[VPNMETER_DOWNLOAD].packets == 0);
        cpus_used += up.packets != 0;
    }
    CHECK(cpus_used == static_cast<int>(cpus.size()));
}

TEST_CASE("a large client map is read on two cores, each entry once and exact", "[bpf][meter]")
{
    // From 32,768 entries PinnedMaps::read() reads half of the hash buckets
    // on each of two threads into room sized from the last read; the batch
    // that crosses the middle overlaps the other half, and those entries
    // must come out once. A map that grew past the room is read
    // sequentially instead.
    Meter m(100000); // 131,072 buckets
    auto maps = PinnedMaps::open(m.pin_path());
    REQUIRE(maps);
    const size_t ncpus = static_cast<size_t>(libbpf_num_possible_cpus());
    auto key_of = [](uint32_t i) { // v4 and v6 on three interfaces
        char address[40];
        if (i % 2) std::snprintf(address, sizeof address, "fd00:8::%x:%x", i >> 16, i & 0xffff);
        else std::snprintf(address, sizeof address, "10.%u.%u.%u", i >> 16 & 255, i >> 8 & 255, i & 255);
        return ClientKey::parse(1 + i % 3, address);
    };
    std::map<ClientKey, Traffic> want;
    auto fill = [&](uint64_t round, uint32_t clients) {
        std::vector<vpnmeter_client_counters> values(ncpus);
        for (uint32_t i = 0; i < clients; ++i) {
            const ClientKey key = key_of(i);
            Traffic sum;
            for (size_t cpu = 0; cpu < ncpus; ++cpu) {
                values[cpu] = {};
                values[cpu].dir[VPNMETER_UPLOAD] = {i + cpu + round, 100ull * i + cpu};
                values[cpu].dir[VPNMETER_DOWNLOAD] = {2ull * i + round, 7ull * i + cpu * round};
                sum.upload.packets += values[cpu].dir[VPNMETER_UPLOAD].packets;
                sum.upload.bytes += values[cpu].dir[VPNMETER_UPLOAD].bytes;
                sum.download.packets += values[cpu].dir[VPNMETER_DOWNLOAD].packets;
                sum.download.bytes += values[cpu].dir[VPNMETER_DOWNLOAD].bytes;
            }
            const vpnmeter_client_key raw = key.to_bpf();
            REQUIRE(bpf_map_update_elem(maps->clients_fd(), &raw, values.data(), BPF_ANY) == 0);
            want[key] = sum;
        }
    };
    // The first read is sequential (the map's size is not known yet), the
    // second finds 30,000 more than the room (sequential again), the later
    // ones in halves.
    for (uint64_t round = 1; round <= 4; ++round) {
        INFO("read " << round);
        fill(round, round == 1 ? 40000 : 70000);
        auto got = maps->read();
        REQUIRE(got);
        REQUIRE(got->clients.size() == want.size());
        size_t wrong = 0;
        auto expected = want.begin();
        for (const auto& [key, traffic] : got->clients) {
            if (key != expected->first || traffic != expected->second) ++wrong;
            ++expected;
        }
        CHECK(wrong == 0);
    }
}

TEST_CASE("the same address on two interfaces keeps separate entries", "[bpf][meter]")
{
    PrivateNetns netns; // before the Meter: its pins are unlinked first
    const auto [veth_a, veth_b] = netns.add_veth("vmtest0", "vmtest1");
    Meter m;

    for (uint32_t ifindex : {kLoopback, veth_a, veth_b}) {
        INFO("ifindex " << ifindex);
        const uint32_t n = ifindex * 3; // different counts per interface
        m.upload(ipv4_udp("10.8.0.2", "192.0.2.1", 90 + ifindex), ifindex, n, "10.8.0.2");
        m.download(ipv6_udp("2001:db8::1", "fd00:8::2", 100 + ifindex), ifindex, n + 1, "fd00:8::2");
    }
    // Only on one interface: no entry appears on the others.
    m.upload(ipv4_udp("10.8.0.77", "192.0.2.1", 64), veth_b, 2, "10.8.0.77");
    m.download(arp_request("10.8.0.1", "10.8.0.2"), veth_a, 4, kNoClient);

    const CounterSnapshot got = m.check();
    CHECK(got.interfaces.size() == 3);
    CHECK(got.clients.size() == 7);
    CHECK(show(got.clients.at(ClientKey::parse(veth_a, "10.8.0.2"))) !=
          show(got.clients.at(ClientKey::parse(veth_b, "10.8.0.2"))));
}

TEST_CASE("a test run on an ifindex that names no device is refused", "[bpf][meter]")
{
    // Guards the harness itself: counters land on ctx.ifindex only because
    // the kernel resolves it to a device in this netns.
    Meter m;
    const RunResult run = test_run(m.datapath().ingress_prog_fd(), ipv4_udp("10.8.0.2", "192.0.2.1", 64),
                                   0x7ffffff0, 1);
    CHECK(run.err == -ENODEV);
    const CounterSnapshot got = m.check(); // nothing counted
    CHECK(got.clients.empty());
    CHECK(got.interfaces.empty());
}

TEST_CASE("reloading over the pins keeps the maps, their counts and their capacity", "[bpf][meter]")
{
    Meter first(4);
    first.upload(ipv4_udp("10.8.0.2", "192.0.2.1", 100), kLoopback, 3, "10.8.0.2");
    {
        // A restarted daemon: new programs, same maps. A different
        // max_clients is overridden by the pinned capacity.
        auto again = Datapath::load({first.pin_path(), 1024});
        if (!again) FAIL("second Datapath::load: " << again.error().message());
        CHECK(again->max_clients() == 4);
        const Frame f = ipv4_udp("10.8.0.2", "192.0.2.1", 200);
        const RunResult run = test_run(again->ingress_prog_fd(), f, kLoopback, 5);
        REQUIRE(run.err == 0);
        CHECK(run.retval == kTcActUnspec);
        first.record(Dir::upload, f.size(), kLoopback, 5, "10.8.0.2");
    }
    first.check();
    auto maps = PinnedMaps::open(first.pin_path());
    REQUIRE(maps);
    CHECK(maps->max_clients() == 4);
}

TEST_CASE("test pins are removed at the end of a test case, also after a failure", "[bpf][meter]")
{
    std::string path;
    {
        Meter m;
        path = m.pin_path();
        REQUIRE(pinned(path + "/vpnmeter_clients"));
        REQUIRE(pinned(path + "/vpnmeter_ifaces"));
        REQUIRE(pinned(path + "/vpnmeter_links"));
    }
    CHECK_FALSE(pinned(path));

    try {
        Meter m;
        path = m.pin_path();
        REQUIRE(pinned(path));
        throw std::runtime_error("simulated assertion failure");
    } catch (const std::runtime_error&) {
    }
    CHECK_FALSE(pinned(path));
}
