// vpnmeter_bench_datapath: what counting costs per packet.
//
// Runs the real tc programs (meter_egress, meter_ingress) and an empty tc
// program (the floor) with BPF_PROG_TEST_RUN on IPv4 UDP Ethernet frames,
// with the client map pre-filled with 1 .. 1M clients and the measured
// packet's address one of them (steady state: every lookup hits): with no
// policy on the node, with a policy on another client only (the policy
// lookup misses), and with a budget, a class and a policer on the measured
// client (the whole enforcement path). Floor and
// meter runs alternate round by round so that machine noise hits both alike;
// the table shows the median of each. See docs/benchmarks.md.
//
// Needs root (BPF, bpffs). Everything it pins lives under a fresh
// /sys/fs/bpf/vpnmeter-bench-* directory, removed at exit, on errors and on
// SIGINT/SIGTERM/SIGHUP. Exits non-zero on errors only, never because the
// numbers are slow: the targets live in the docs.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <sched.h>
#include <signal.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "bench_common.h"
#include "bpf_maps.h"
#include "counters.h"
#include "datapath.h"
#include "empty.skel.h"
#include "result.h"

namespace {

using vpnmeter::Error;
using vpnmeter::os_error;
using vpnmeter::Result;
using vpnmeter::Status;

volatile sig_atomic_t g_signal = 0;
void on_signal(int sig) { g_signal = sig; }

constexpr uint32_t kIfindex = 1;              // lo: the test run's skb->dev
constexpr uint32_t kFirstClient = 0x64400001; // 100.64.0.1: a /10 holds 4M clients
constexpr uint32_t kMaxClients = (1U << 22) - 2;
constexpr uint32_t kServer = 0xC0000201; // 192.0.2.1, outside the client range
constexpr uint32_t kTcActUnspec = static_cast<uint32_t>(-1);
constexpr size_t kEthHlen = 14, kIpHlen = 20, kUdpHlen = 8;
constexpr size_t kMinFrame = kEthHlen + kIpHlen + kUdpHlen, kMaxFrame = 1514;

struct Options {
    uint32_t repeat = 1'000'000;
    uint32_t rounds = 11;
    bool quick = false;
    std::vector<uint32_t> clients{1, 10'000, 100'000, 1'000'000};
    std::vector<uint32_t> frames{64, 1400};
    std::vector<std::string> policies{"off", "others", "own"};
    std::string direction = "both";
    int cpu = -1;
    bool verbose = false;
};

struct Direction {
    const char* name; // from the client's side, as in bpf_types.h
    int dir;          // VPNMETER_UPLOAD / VPNMETER_DOWNLOAD
    const char* prog;
};
constexpr Direction kDownload{"download", VPNMETER_DOWNLOAD, "meter_egress"};
constexpr Direction kUpload{"upload", VPNMETER_UPLOAD, "meter_ingress"};

struct Row {
    const char* direction;
    std::string policy;
    uint32_t clients;
    uint32_t frame;
    std::vector<uint32_t> floor_ns, meter_ns; // one per round
};

// Client i's key: 100.64.0.1 + i on the test interface.
vpnmeter_client_key client_key(uint32_t i)
{
    vpnmeter_client_key key{};
    key.ifindex = kIfindex;
    key.family = AF_INET;
    const uint32_t addr = htonl(kFirstClient + i);
    std::memcpy(key.addr, &addr, sizeof addr);
    return key;
}

// An Ethernet + IPv4 + UDP frame of `size` bytes; addresses in host order.
std::vector<uint8_t> make_frame(size_t size, uint32_t saddr, uint32_t daddr)
{
    std::vector<uint8_t> f(size, 0);
    const uint8_t dst_mac[6] = {0x02, 0, 0, 0, 0, 0x02}, src_mac[6] = {0x02, 0, 0, 0, 0, 0x01};
    std::memcpy(&f[0], dst_mac, 6);
    std::memcpy(&f[6], src_mac, 6);
    f[12] = 0x08; // ETH_P_IP
    f[13] = 0x00;
    uint8_t* ip = &f[kEthHlen];
    const uint16_t tot_len = htons(static_cast<uint16_t>(size - kEthHlen));
    ip[0] = 0x45; // version 4, ihl 5
    std::memcpy(ip + 2, &tot_len, 2);
    ip[8] = 64; // ttl
    ip[9] = 17; // UDP
    const uint32_t s = htonl(saddr), d = htonl(daddr);
    std::memcpy(ip + 12, &s, 4);
    std::memcpy(ip + 16, &d, 4);
    uint32_t sum = 0;
    for (size_t i = 0; i < kIpHlen; i += 2) sum += (ip[i] << 8) | ip[i + 1];
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    const uint16_t check = htons(static_cast<uint16_t>(~sum));
    std::memcpy(ip + 10, &check, 2);
    uint8_t* udp = ip + kIpHlen;
    const uint16_t sport = htons(40000), dport = htons(1194),
                   ulen = htons(static_cast<uint16_t>(size - kEthHlen - kIpHlen));
    std::memcpy(udp, &sport, 2);
    std::memcpy(udp + 2, &dport, 2);
    std::memcpy(udp + 4, &ulen, 2); // checksum 0: none, fine for IPv4
    return f;
}

// One BPF_PROG_TEST_RUN: the kernel's average ns per run over `repeat` runs.
Result<uint32_t> test_run(int prog_fd, std::vector<uint8_t>& frame, uint32_t repeat)
{
    // A signal handled outside the kernel's loop (between runs) is no longer
    // pending there, so check for it here as well.
    if (g_signal) return Error{"interrupted by signal " + std::to_string(g_signal)};
    __sk_buff ctx{};
    ctx.ifindex = kIfindex;
    LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame.data(),
                .data_size_in = static_cast<uint32_t>(frame.size()), .ctx_in = &ctx, .ctx_size_in = sizeof ctx,
                .repeat = static_cast<int>(repeat));
    if (int err = bpf_prog_test_run_opts(prog_fd, &opts); err) {
        if (err == -EINTR && g_signal) return Error{"interrupted by signal " + std::to_string(g_signal)};
        return os_error("BPF_PROG_TEST_RUN", err);
    }
    if (opts.retval != kTcActUnspec)
        return Error{"tc program returned " + std::to_string(static_cast<int32_t>(opts.retval)) +
                     ", expected TC_ACT_UNSPEC (-1)"};
    return opts.duration;
}

// Adds clients [from, to) to the client map, zeroed on every CPU.
Status fill_clients(int fd, uint32_t from, uint32_t to, int ncpus)
{
    constexpr uint32_t kChunk = 8192;
    std::vector<vpnmeter_client_key> keys;
    keys.reserve(kChunk);
    const std::vector<vpnmeter_client_counters> values(static_cast<size_t>(kChunk) * ncpus);
    bool batch = true;
    for (uint32_t i = from; i < to;) {
        if (g_signal) return Error{"interrupted by signal " + std::to_string(g_signal)};
        const uint32_t n = std::min(kChunk, to - i);
        keys.clear();
        for (uint32_t j = 0; j < n; ++j) keys.push_back(client_key(i + j));
        if (batch) {
            uint32_t count = n;
            LIBBPF_OPTS(bpf_map_batch_opts, opts); // elem_flags: only BPF_F_LOCK is allowed, so BPF_ANY
            int err = bpf_map_update_batch(fd, keys.data(), values.data(), &count, &opts);
            if (err == -EINVAL || err == -ENOTSUP || err == -EOPNOTSUPP) {
                batch = false; // kernel without batch ops: one by one
                continue;
            }
            if (err) return os_error("fill client map (batch update at client " + std::to_string(i) + ")", err);
            if (count != n) return Error{"fill client map: batch update stored " + std::to_string(count) + " of " +
                                         std::to_string(n)};
        } else {
            for (uint32_t j = 0; j < n; ++j)
                if (bpf_map_update_elem(fd, &keys[j], values.data(), BPF_NOEXIST))
                    return os_error("fill client map (client " + std::to_string(i + j) + ")");
        }
        i += n;
    }
    return vpnmeter::ok();
}

Result<vpnmeter::Count> client_count(int fd, const vpnmeter_client_key& key, int dir, int ncpus)
{
    std::vector<vpnmeter_client_counters> per_cpu(ncpus);
    if (bpf_map_lookup_elem(fd, &key, per_cpu.data())) return os_error("look the measured client up");
    const vpnmeter::Traffic t = vpnmeter::sum_per_cpu(per_cpu);
    return dir == VPNMETER_UPLOAD ? t.upload : t.download;
}

Result<vpnmeter::InterfaceTraffic> iface_count(int fd, int ncpus)
{
    std::vector<vpnmeter_iface_counters> per_cpu(ncpus);
    const uint32_t ifindex = kIfindex;
    if (bpf_map_lookup_elem(fd, &ifindex, per_cpu.data())) return os_error("look the test interface's totals up");
    return vpnmeter::sum_per_cpu(per_cpu);
}

// The enforcement maps, for the rows with quotas in force:
//   off:    no policy anywhere (vpnmeter_policy_state inactive): one array load.
//   others: policies active, one on a client no round measures: the measured
//           packet pays the policy hash lookup, which misses.
//   own:    the measured client has a budget (both directions), a download
//           class and an upload policer: enforce_policy() runs in full. The
//           budget and rate are far above what a row uses, so every packet
//           passes and is counted.
constexpr uint32_t kUserSlot = 1;
constexpr int64_t kBudgetBytes = int64_t{1} << 62;

class Policies {
public:
    static Result<Policies> open(const std::string& pin_path)
    {
        Policies p;
        for (auto [fd, name] : {std::pair{&p.policy_, vpnmeter::kPolicyMap}, {&p.budgets_, vpnmeter::kBudgetsMap},
                                {&p.policers_, vpnmeter::kPolicersMap}, {&p.state_, vpnmeter::kPolicyStateMap}}) {
            auto map = vpnmeter::open_pinned_map(pin_path, name);
            if (!map) return map.error();
            *fd = std::move(map.value());
        }
        return p;
    }

    // Removes the policies this added, then sets up `mode`; `unmeasured` is a
    // key no round measures (for "others").
    Status set_mode(const std::string& mode, const vpnmeter_client_key& unmeasured)
    {
        for (const auto& key : added_) bpf_map_delete_elem(policy_.get(), &key); // gone already: fine
        added_.clear();
        mode_ = mode;
        const vpnmeter_policy_state state{.active = mode == "off" ? 0U : 1U, .reserved = 0};
        const uint32_t zero = 0;
        if (bpf_map_update_elem(state_.get(), &zero, &state, BPF_ANY))
            return os_error(std::string("update ") + vpnmeter::kPolicyStateMap);
        if (mode == "others") return put(unmeasured, VPNMETER_POLICY_BUDGET);
        return vpnmeter::ok();
    }

    // Before a round: in "own" mode, the measured client's policy, a full
    // budget and a full bucket.
    Status prepare(const vpnmeter_client_key& measured)
    {
        if (mode_ != "own") return vpnmeter::ok();
        if (auto st = put(measured, VPNMETER_POLICY_BUDGET | VPNMETER_POLICY_SHAPED | VPNMETER_POLICY_POLICED); !st)
            return st;
        const vpnmeter_budget budget{.remaining_bytes = kBudgetBytes,
                                     .exhausted_action = VPNMETER_EXHAUSTED_BLOCK,
                                     .exhausted_classid = 0,
                                     .exhausted_rate_bps = 0,
                                     .exhausted_burst_bytes = 0};
        if (bpf_map_update_elem(budgets_.get(), &kUserSlot, &budget, BPF_ANY))
            return os_error(std::string("update ") + vpnmeter::kBudgetsMap);
        const vpnmeter_policer bucket{}; // last_ns 0: a full bucket
        if (bpf_map_update_elem(policers_.get(), &kUserSlot, &bucket, BPF_ANY))
            return os_error(std::string("update ") + vpnmeter::kPolicersMap);
        return vpnmeter::ok();
    }

    // After a round: in "own" mode the budget went down by exactly the bytes
    // the meter passed (the floor never touches it), so the policy path ran.
    Status check(uint64_t bytes) const
    {
        if (mode_ != "own") return vpnmeter::ok();
        vpnmeter_budget budget{};
        if (bpf_map_lookup_elem(budgets_.get(), &kUserSlot, &budget))
            return os_error(std::string("look up ") + vpnmeter::kBudgetsMap);
        if (kBudgetBytes - budget.remaining_bytes != static_cast<int64_t>(bytes))
            return Error{"consistency check failed: the budget went down by " +
                         std::to_string(kBudgetBytes - budget.remaining_bytes) + " bytes, expected " +
                         std::to_string(bytes) + ": the policy path did not run"};
        return vpnmeter::ok();
    }

private:
    Status put(const vpnmeter_client_key& key, uint32_t flags)
    {
        // 10 Tbit/s with a 1 MiB bucket: a packet costs about 1 ns of credit,
        // so none is over the rate, yet police() does its arithmetic and lock.
        const vpnmeter_policy policy{.flags = flags,
                                     .user_slot = kUserSlot,
                                     .classid = (VPNMETER_HTB_MAJOR << 16) | 0x10,
                                     .reserved = 0,
                                     .rate_bps = 10'000'000'000'000ULL,
                                     .burst_bytes = 1 << 20};
        if (bpf_map_update_elem(policy_.get(), &key, &policy, BPF_ANY))
            return os_error(std::string("update ") + vpnmeter::kPolicyMap);
        added_.push_back(key);
        return vpnmeter::ok();
    }

    vpnmeter::UniqueFd policy_, budgets_, policers_, state_;
    std::vector<vpnmeter_client_key> added_;
    std::string mode_ = "off";
};

double median(std::vector<uint32_t> v)
{
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

using vpnmeter::bench::PinCleanup;
using vpnmeter::bench::read_first_line;
using vpnmeter::bench::unique_pin_path;

void print_machine(const Options& o, uint32_t capacity, int ncpus)
{
    utsname u{};
    uname(&u);
    std::printf("machine: %ld online CPUs (%d possible), kernel %s, %s\n", sysconf(_SC_NPROCESSORS_ONLN), ncpus,
                u.release, read_first_line("/proc/cpuinfo", "model name").c_str());
    std::printf("bpf_jit_enable=%s bpf_stats_enabled=%s\n", read_first_line("/proc/sys/net/core/bpf_jit_enable").c_str(),
                read_first_line("/proc/sys/kernel/bpf_stats_enabled").c_str());
    std::printf("repeat %u per run, %u rounds (floor and meter alternating), client map capacity %u, cpu %s\n",
                o.repeat, o.rounds, capacity, o.cpu < 0 ? "not pinned" : std::to_string(o.cpu).c_str());
    std::fflush(stdout);
}

void print_table(const std::vector<Row>& rows)
{
    std::printf("\n%-9s %-6s %9s %12s %9s %9s %17s %6s\n", "direction", "policy", "clients", "frame bytes",
                "floor ns", "meter ns", "meter - floor ns", "ratio");
    for (const Row& r : rows) {
        const double floor = median(r.floor_ns), meter = median(r.meter_ns);
        std::printf("%-9s %-6s %9u %12u %9.1f %9.1f %17.1f %6.2f\n", r.direction, r.policy.c_str(), r.clients,
                    r.frame, floor, meter, meter - floor, floor > 0 ? meter / floor : 0.0);
    }
    std::printf("\nns are the medians over the rounds of the kernel's average per run (opts.duration);\n"
                "meter - floor is what counting (and enforcing) adds per packet. policy: off = none on\n"
                "the node; others = one on another client (the lookup misses); own = a budget, a class\n"
                "and a policer on the measured client.\n");
}

int run(const Options& o)
{
    const int ncpus = libbpf_num_possible_cpus();
    if (ncpus <= 0) {
        std::fprintf(stderr, "error: count possible CPUs: %s\n", std::strerror(-ncpus));
        return 1;
    }
    const uint32_t largest = *std::max_element(o.clients.begin(), o.clients.end());
    const uint32_t capacity = std::max<uint32_t>(VPNMETER_DEFAULT_MAX_CLIENTS, largest);
    print_machine(o, capacity, ncpus);

    const std::string pin_path = unique_pin_path();
    PinCleanup cleanup(pin_path); // declared first: runs after the skeletons are gone

    std::unique_ptr<empty_bpf, decltype(&empty_bpf__destroy)> empty(empty_bpf__open_and_load(), empty_bpf__destroy);
    if (!empty) {
        std::fprintf(stderr, "error: load the empty (floor) program: %s\n", std::strerror(errno));
        return 1;
    }
    auto dp = vpnmeter::Datapath::load({.pin_path = pin_path, .max_clients = capacity});
    if (!dp) {
        std::fprintf(stderr, "error: %s\n", dp.error().message().c_str());
        return 1;
    }
    auto maps = vpnmeter::PinnedMaps::open(pin_path);
    if (!maps) {
        std::fprintf(stderr, "error: %s\n", maps.error().message().c_str());
        return 1;
    }
    const int clients_fd = maps->clients_fd(), ifaces_fd = maps->ifaces_fd();
    auto policies = Policies::open(pin_path);
    if (!policies) {
        std::fprintf(stderr, "error: %s\n", policies.error().message().c_str());
        return 1;
    }
    const int floor_fd = bpf_program__fd(empty->progs.empty_tc);

    std::vector<Direction> directions;
    if (o.direction != "upload") directions.push_back(kDownload);
    if (o.direction != "download") directions.push_back(kUpload);

    std::vector<uint32_t> sizes = o.clients;
    std::sort(sizes.begin(), sizes.end());
    sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());

    auto fail = [](const Error& e) {
        std::fprintf(stderr, "error: %s\n", e.message().c_str());
        return g_signal ? 128 + g_signal : 1;
    };

    std::vector<Row> rows;
    uint32_t filled = 0;
    const auto start = std::chrono::steady_clock::now();
    for (uint32_t n : sizes) {
        const auto fill_start = std::chrono::steady_clock::now();
        if (auto st = fill_clients(clients_fd, filled, n, ncpus); !st) return fail(st.error());
        filled = n;
        const double fill_s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - fill_start).count();
        std::printf("client map holds %u clients (filled in %.2f s)\n", n, fill_s);
        std::fflush(stdout);

        for (const std::string& policy : o.policies) {
            // client_key(n) is outside the filled range: no round measures it.
            if (auto st = policies->set_mode(policy, client_key(n)); !st) return fail(st.error());
            for (uint32_t size : o.frames) {
                for (const Direction& d : directions) {
                    const int meter_fd = d.dir == VPNMETER_UPLOAD ? dp->ingress_prog_fd() : dp->egress_prog_fd();
                    Row row{d.name, policy, n, size, {}, {}};
                    // Round r measures another existing client, so the position of
                    // one entry in its hash chain does not decide the row.
                    auto client_of = [&](uint32_t r) {
                        return static_cast<uint32_t>((n / 2 + uint64_t(r) * 7919) % n);
                    };
                    auto frame_for = [&](uint32_t r) {
                        const uint32_t addr = kFirstClient + client_of(r);
                        return d.dir == VPNMETER_UPLOAD ? make_frame(size, addr, kServer)
                                                        : make_frame(size, kServer, addr);
                    };

                    // Warm-up: JIT image, map entries and the skb path into cache.
                    {
                        auto frame = frame_for(0);
                        if (auto st = policies->prepare(client_key(client_of(0))); !st) return fail(st.error());
                        const uint32_t warm = std::min<uint32_t>(o.repeat, 10'000);
                        if (auto t = test_run(floor_fd, frame, warm); !t) return fail(t.error());
                        if (auto t = test_run(meter_fd, frame, warm); !t) return fail(t.error());
                    }
                    for (uint32_t r = 0; r < o.rounds; ++r) {
                        auto frame = frame_for(r);
                        const vpnmeter_client_key key = client_key(client_of(r));
                        if (auto st = policies->prepare(key); !st) return fail(st.error());
                        auto before = client_count(clients_fd, key, d.dir, ncpus);
                        if (!before) return fail(before.error());
                        auto iface_before = iface_count(ifaces_fd, ncpus);
                        if (!iface_before) return fail(iface_before.error());

                        // Alternate which goes first so neither always follows the other.
                        for (int k = 0; k < 2; ++k) {
                            const bool floor_turn = (k == 0) == (r % 2 == 0);
                            auto t = test_run(floor_turn ? floor_fd : meter_fd, frame, o.repeat);
                            if (!t) return fail(t.error());
                            (floor_turn ? row.floor_ns : row.meter_ns).push_back(t.value());
                        }

                        // The meter counted every run, on the existing entry: a lookup hit.
                        auto after = client_count(clients_fd, key, d.dir, ncpus);
                        if (!after) return fail(after.error());
                        auto iface_after = iface_count(ifaces_fd, ncpus);
                        if (!iface_after) return fail(iface_after.error());
                        const vpnmeter::InterfaceTraffic di =
                            vpnmeter::delta(iface_after.value(), iface_before.value());
                        const vpnmeter::Count& total = d.dir == VPNMETER_UPLOAD ? di.total.upload : di.total.download;
                        if (after->packets - before->packets != o.repeat ||
                            after->bytes - before->bytes != uint64_t(o.repeat) * size || total.packets != o.repeat ||
                            !di.unattributed.empty())
                            return fail(Error{"consistency check failed: " + std::string(d.prog) + " did not count " +
                                              std::to_string(o.repeat) + " packets on the existing client entry"});
                        if (auto st = policies->check(uint64_t(o.repeat) * size); !st) return fail(st.error());
                    }
                    if (o.verbose) {
                        std::printf("  %s policy %s %u clients %u B: floor", d.name, policy.c_str(), n, size);
                        for (uint32_t v : row.floor_ns) std::printf(" %u", v);
                        std::printf(" | meter");
                        for (uint32_t v : row.meter_ns) std::printf(" %u", v);
                        std::printf("\n");
                        std::fflush(stdout);
                    }
                    rows.push_back(std::move(row));
                }
            }
        }
    }
    print_table(rows);
    std::printf("total time %.1f s\n",
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    Options o;
    CLI::App app{"vpnmeter datapath benchmark: ns per packet of the tc programs under BPF_PROG_TEST_RUN, against "
                 "an empty tc program (the floor). Needs root."};
    app.add_option("--repeat", o.repeat, "runs per BPF_PROG_TEST_RUN (default 1000000)")->check(CLI::PositiveNumber);
    app.add_option("--rounds", o.rounds, "floor/meter pairs per row; the table shows medians (default 11)")
        ->check(CLI::PositiveNumber);
    app.add_flag("--quick", o.quick, "smoke run for CI: repeat 10000, 3 rounds (unless given)");
    app.add_option("--clients", o.clients, "clients in the map, one row each (default 1,10000,100000,1000000)")
        ->delimiter(',')
        ->check(CLI::Range(1U, kMaxClients));
    app.add_option("--frames", o.frames, "Ethernet frame sizes in bytes (default 64,1400)")
        ->delimiter(',')
        ->check(CLI::Range(static_cast<uint32_t>(kMinFrame), static_cast<uint32_t>(kMaxFrame)));
    app.add_option("--policy", o.policies, "policy states, one row each: off, others, own (default all three)")
        ->delimiter(',')
        ->check(CLI::IsMember({"off", "others", "own"}));
    app.add_option("--direction", o.direction, "download (meter_egress), upload (meter_ingress) or both")
        ->check(CLI::IsMember({"download", "upload", "both"}));
    app.add_option("--cpu", o.cpu, "pin the benchmark to this CPU")->check(CLI::NonNegativeNumber);
    app.add_flag("--verbose", o.verbose, "print every round's numbers");
    CLI11_PARSE(app, argc, argv);
    if (o.quick) {
        if (!app.count("--repeat")) o.repeat = 10'000;
        if (!app.count("--rounds")) o.rounds = 3;
    }

    if (!vpnmeter::bench::prepare_process(on_signal, o.cpu)) return 1;
    vpnmeter::route_libbpf_logs(false);
    try {
        return run(o);
    } catch (const std::exception& e) { // cleanup has run while unwinding
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
