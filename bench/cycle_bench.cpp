// vpnmeter_bench_cycle: what one collection cycle of the agent costs.
//
// Fills the real pinned client map with N synthetic clients (100.64.0.1 and
// up on one interface), gives each its own connected session and user, and
// runs the daemon's cycle on them with the daemon's own classes: read every
// counter (Collector over PinnedMaps), reconcile (Reconciler::plan), commit
// to a fresh LMDB store (Store::commit, begun once the usage is final), then
// accept and publish the metrics snapshot (MetricsRecorder). Before every
// timed cycle, every client's counters move (the worst case: all N active),
// outside the timing. Then it renders /metrics from that state (and, for
// comparison, serializes it the old way, with prometheus-cpp) and reports
// the process's memory.
// See docs/benchmarks.md.
//
// Needs root (BPF, bpffs). The pin path and the store are private and
// removed at exit, on errors and on SIGINT/SIGTERM/SIGHUP. Exits non-zero on
// errors and failed checks only, never because the numbers are slow.
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <prometheus/text_serializer.h>

#include "bench_common.h"
#include "bpf_maps.h"
#include "collector.h"
#include "counters.h"
#include "daemon.h"
#include "datapath.h"
#include "enforcer.h"
#include "metrics.h"
#include "quota_controller.h"
#include "reconciler.h"
#include "result.h"
#include "store/background_commit.h"
#include "store/store.h"

namespace {

using vpnmeter::Error;
using vpnmeter::os_error;
using vpnmeter::Result;
using vpnmeter::Status;
using Clock = std::chrono::steady_clock;

volatile sig_atomic_t g_signal = 0;
void on_signal(int sig) { g_signal = sig; }

constexpr uint32_t kIfindex = 1; // any: the reconciler is told its name
constexpr const char* kInterface = "bench0";
constexpr const char* kInstance = "bench";
constexpr uint32_t kFirstClient = 0x64400001; // 100.64.0.1
constexpr uint32_t kMaxClients = (1U << 22) - 2;
// What every client gains per cycle, per direction.
constexpr uint64_t kUpBytes = 1000, kDownBytes = 1500;

struct Options {
    std::vector<uint32_t> clients{10'000, 100'000, 1'000'000};
    uint32_t cycles = 5;
    uint32_t renders = 5;
    bool quick = false;
    int cpu = -1;
    std::string fill_pinned; // only set the counters of the maps pinned there
    uint64_t moves = 1;
    uint32_t history_days = 0;
    bool quotas = true;
};

// Every user on one plan: 1 TB a month, blocked beyond (no speed limits, so
// no HTB classes): the quota engine's per-cycle work, and a kernel policy
// per client and a budget per user once.
vpnmeter::QuotaConfig bench_quotas()
{
    vpnmeter::QuotaConfig config;
    vpnmeter::Plan plan;
    plan.name = "bench";
    plan.limit_bytes = 1ull << 40;
    config.plans = {plan};
    config.default_plan = plan.name;
    return config;
}

// Client i's key: 100.64.0.1 + i on the benchmark's interface.
vpnmeter_client_key client_key(uint32_t i)
{
    vpnmeter_client_key key{};
    key.ifindex = kIfindex;
    key.family = AF_INET;
    const uint32_t addr = htonl(kFirstClient + i);
    std::memcpy(key.addr, &addr, sizeof addr);
    return key;
}

std::string client_address(uint32_t i)
{
    const uint32_t addr = htonl(kFirstClient + i);
    char text[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &addr, text, sizeof text);
    return text;
}

// Sets clients [0, n) (every `stride`-th of them) to `moves` cycles' worth
// of traffic, counted on CPU 0 (the other CPUs' copies zero): the map as
// after `moves` busy cycles.
Status set_counters(int fd, uint32_t n, uint64_t moves, int ncpus, uint32_t stride = 1)
{
    constexpr uint32_t kChunk = 8192;
    std::vector<vpnmeter_client_key> keys;
    keys.reserve(kChunk);
    std::vector<vpnmeter_client_counters> values(static_cast<size_t>(kChunk) * ncpus);
    for (uint32_t j = 0; j < kChunk; ++j) {
        auto& v = values[static_cast<size_t>(j) * ncpus];
        v.dir[VPNMETER_UPLOAD] = {moves, moves * kUpBytes};
        v.dir[VPNMETER_DOWNLOAD] = {moves, moves * kDownBytes};
    }
    for (uint32_t i = 0; i < n;) {
        if (g_signal) return Error{"interrupted by signal " + std::to_string(g_signal)};
        keys.clear();
        for (; i < n && keys.size() < kChunk; i += stride) keys.push_back(client_key(i));
        const auto count_in = static_cast<uint32_t>(keys.size());
        uint32_t count = count_in;
        LIBBPF_OPTS(bpf_map_batch_opts, opts);
        if (int err = bpf_map_update_batch(fd, keys.data(), values.data(), &count, &opts); err)
            return os_error("set the client counters (batch update before client " + std::to_string(i) + ")", err);
        if (count != count_in)
            return Error{"set the client counters: batch update stored " + std::to_string(count) + " of " +
                         std::to_string(count_in)};
    }
    return vpnmeter::ok();
}

// The identity source's answer: one session per client, each its own user.
std::vector<vpnmeter::Session> make_sessions(uint32_t n, int64_t since)
{
    std::vector<vpnmeter::Session> sessions(n);
    for (uint32_t i = 0; i < n; ++i) {
        auto& s = sessions[i];
        s.user = "user" + std::to_string(i);
        s.id = vpnmeter::session_id(kInstance, s.user, since);
        s.instance = kInstance;
        s.interface = kInterface;
        s.addresses = {client_address(i)};
        s.real_address = "192.0.2.1:" + std::to_string(1024 + i % 60000);
        s.start = since;
    }
    return sessions;
}

// A private store directory, removed with everything in it.
class TempDir {
public:
    explicit TempDir(std::string path) : path_(std::move(path)) {}
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir()
    {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
        if (ec) std::fprintf(stderr, "cleanup: remove %s: %s\n", path_.c_str(), ec.message().c_str());
    }
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

double median(std::vector<double> v)
{
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

// VmRSS and VmHWM of this process, in MiB.
std::pair<double, double> memory_mib()
{
    auto kib = [](const char* field) {
        const std::string v = vpnmeter::bench::read_first_line("/proc/self/status", field);
        return std::strtod(v.c_str(), nullptr) / 1024.0;
    };
    return {kib("VmRSS:"), kib("VmHWM:")};
}

struct Phases {
    std::vector<double> read, reconcile, quota, commit, publish, total;
    std::vector<double> cpu; // the process's CPU time in the cycle, all threads
};

// CPU time (user + system) of every thread of this process so far, ms.
double process_cpu_ms()
{
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    auto ms = [](const timeval& t) { return t.tv_sec * 1e3 + t.tv_usec / 1e3; };
    return ms(usage.ru_utime) + ms(usage.ru_stime);
}

// The share of clients that move in the partial cycles: one in kPartialStride.
constexpr uint32_t kPartialStride = 10;
// And of sessions replaced in each cycle with churn: one in kChurnStride.
constexpr uint32_t kChurnStride = 1000;

struct SizeResult {
    uint32_t clients = 0;
    double fill_s = 0, history_s = 0, first_cycle_ms = 0, new_hour_ms = 0, roll_up_ms = 0, all_end_ms = 0;
    Phases phases;
    Phases partial; // one client in kPartialStride moves
    Phases churn;   // the same, and one session in kChurnStride replaced
    double render_ms = 0, prometheus_ms = 0, cached_ms = 0;
    size_t render_bytes = 0;
    double rss_mib = 0, hwm_mib = 0;
    uint64_t store_bytes = 0;
};

// A store as after `days` days of service: every user has an hour bucket
// for each of those hours (and the day and month buckets they add to), and
// every client one closed session per day (a daily reconnect). Written
// through Store::commit, as the daemon would have, a day per transaction.
Status fill_history(vpnmeter::Store& store, uint32_t n, uint32_t days, int64_t now)
{
    std::vector<std::pair<std::string, vpnmeter::Traffic>> users; // the same every hour
    for (const auto& session : make_sessions(n, now))
        users.emplace_back(session.user, vpnmeter::Traffic{{1, kUpBytes}, {1, kDownBytes}});
    const auto hourly = vpnmeter::FlatMap<std::string, vpnmeter::Traffic>::from_unsorted(std::move(users));
    for (uint32_t d = days; d >= 1; --d) {
        const int64_t day_start = now - int64_t{d} * 86400;
        for (int h = 0; h < 24; ++h) {
            if (g_signal) return Error{"interrupted by signal " + std::to_string(g_signal)};
            vpnmeter::CycleCommit history;
            history.time = day_start + h * 3600;
            history.user_usage = hourly;
            if (h == 23) {
                history.sessions = make_sessions(n, day_start);
                for (auto& session : history.sessions) session.end = day_start + 86000;
            }
            if (auto st = store.commit(history); !st) return st.error();
            if (auto st = store.roll_up(history.time); !st) return st.error(); // the hour before, as the daemon
        }
    }
    return vpnmeter::ok();
}

Result<SizeResult> run_size(vpnmeter::PinnedMaps& maps, const std::string& pin_path, uint32_t n, const Options& o,
                            int ncpus)
{
    SizeResult out;
    out.clients = n;
    const auto fill_start = Clock::now();
    // Sizes run in increasing order, so the map holds clients [0, n) once
    // these are set: all zero, as new entries are.
    if (auto st = set_counters(maps.clients_fd(), n, 0, ncpus); !st) return st.error();
    out.fill_s = ms_since(fill_start) / 1000.0;

    TempDir dir("/tmp/vpnmeter-bench-cycle-" + std::to_string(getpid()) + "-" + std::to_string(n));
    std::error_code ec;
    std::filesystem::remove_all(dir.path(), ec);
    auto store = vpnmeter::Store::open({.path = dir.path()});
    if (!store) return store.error();

    const int64_t since = static_cast<int64_t>(std::time(nullptr)) - 3600;
    if (o.history_days) {
        const auto history_start = Clock::now();
        if (auto st = fill_history(*store, n, o.history_days, since); !st) return st.error();
        out.history_s = ms_since(history_start) / 1000.0;
    }
    vpnmeter::ConnectedSessions connected{{kInstance, make_sessions(n, since)}};
    const vpnmeter::Interfaces devices{{{kInterface, kIfindex}}, {{kIfindex, kInterface}}};
    vpnmeter::Collector collector(maps);
    vpnmeter::Reconciler reconciler(std::nullopt, {});
    vpnmeter::MetricsRecorder metrics({}, "bench", std::make_shared<vpnmeter::MetricsExporter>());
    metrics.load({}, {});
    auto enforcer = vpnmeter::Enforcer::open(pin_path);
    if (!enforcer) return enforcer.error();
    vpnmeter::QuotaController quotas(o.quotas ? bench_quotas() : vpnmeter::QuotaConfig{}, *store, &enforcer.value(),
                                     &maps, nullptr);
    if (auto st = quotas.load(); !st) return st.error();

    // One cycle as Daemon::finish_cycle() runs it.
    // `ahead`: seconds added to the clock (a cycle in a later hour).
    double cycle_ms = 0, roll_up_ms = 0; // the last cycle's, and its roll-up after it
    auto cycle = [&](uint64_t moves, uint32_t movers, Phases* phases, int64_t ahead = 0) -> Status {
        const auto t0 = Clock::now();
        const double cpu0 = process_cpu_ms();
        auto counters = collector.collect();
        if (!counters) return counters.error();
        const auto t1 = Clock::now();
        const int64_t now = static_cast<int64_t>(std::time(nullptr)) + ahead;
        // As the daemon does: the commit begins once the usage is final, the
        // quotas are planned beside the rest of the reconciliation.
        vpnmeter::CycleCommit commit;
        vpnmeter::BackgroundCommit committing;
        double quota_ms = 0;
        reconciler.plan(counters.value(), connected, devices, now, commit, [&] {
            committing.start(*store, commit);
            const auto q0 = Clock::now();
            quotas.plan(commit, now);
            committing.quotas_planned(true);
            quota_ms = std::chrono::duration<double, std::milli>(Clock::now() - q0).count();
        });
        committing.rest_planned(true);
        const auto t2 = Clock::now();
        auto staged = metrics.stage(commit);
        // The reconciler and the quotas take the commit side by side, as the
        // daemon does: already while the store finishes when that can be put back.
        const bool tentative = vpnmeter::accept_side_by_side_tentatively(reconciler, quotas, commit, now).has_value();
        std::optional<vpnmeter::UserGauges> gauges;
        if (tentative) { // as the daemon: the keys enforce() needs and the gauges, meanwhile
            reconciler.keys_by_user(devices);
            gauges = quotas.gauges(reconciler.users(), now);
        }
        if (auto st = committing.wait(); !st) return st.error(); // the benchmark stops: nothing to put back
        const auto t3 = Clock::now();
        if (!tentative) vpnmeter::accept_side_by_side(reconciler, quotas, commit, now);
        const auto t3q = Clock::now();
        quotas.enforce(reconciler.keys_by_user(devices), now);
        const auto t3e = Clock::now();
        collector.accept(std::move(counters.value()));
        metrics.confirm(commit, std::move(staged));
        metrics.observe_cycle(Clock::now() - t0);
        vpnmeter::LiveMetrics live;
        live.interfaces = vpnmeter::interface_totals(collector.last(), devices);
        live.drops.emplace();
        live.sessions_active = vpnmeter::sessions_by_instance(reconciler.sessions_by_instance(), {kInstance});
        // As Daemon::publish_metrics.
        live.quotas = gauges ? std::move(*gauges) : quotas.gauges(reconciler.users(), now);
        live.maps["clients"] = {collector.last().clients.size(), maps.max_clients()};
        metrics.publish(std::move(live));
        const auto t4 = Clock::now();
        cycle_ms = std::chrono::duration<double, std::milli>(t4 - t0).count();
        // As the daemon, after the cycle: the hours that are over into their
        // days and months (a write once an hour, nothing otherwise).
        if (auto st = store->roll_up(now); !st) return st.error();
        roll_up_ms = ms_since(t4);

        // Every mover moved by one step, all of it attributed to its user.
        vpnmeter::Traffic moved;
        for (const auto& [user, traffic] : commit.user_usage) moved += traffic;
        const uint64_t m = movers;
        if (commit.user_usage.size() != m || moved.upload.bytes != m * kUpBytes ||
            moved.download.bytes != m * kDownBytes || !commit.unattributed.empty() ||
            reconciler.active().size() != n)
            return Error{"consistency check failed at cycle " + std::to_string(moves) + ": " +
                         std::to_string(commit.user_usage.size()) + " users gained " +
                         std::to_string(moved.upload.bytes) + " B up, expected " + std::to_string(m) + " users and " +
                         std::to_string(m * kUpBytes) + " B; " + std::to_string(reconciler.active().size()) +
                         " sessions active"};
        if (phases) {
            auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
            phases->read.push_back(ms(t0, t1));
            phases->reconcile.push_back(ms(t1, t2) - quota_ms);
            phases->quota.push_back(quota_ms + ms(t3q, t3e));
            phases->commit.push_back(ms(t2, t3));
            phases->publish.push_back(ms(t3, t3q) + ms(t3e, t4));
            phases->total.push_back(ms(t0, t4));
            phases->cpu.push_back(process_cpu_ms() - cpu0);
        }
        return vpnmeter::ok();
    };

    // The first cycle finds N new sessions and writes them all.
    if (auto st = cycle(0, 0, nullptr); !st) return st.error();
    out.first_cycle_ms = cycle_ms; // not the roll-up after it
    for (uint32_t c = 1; c <= o.cycles; ++c) {
        if (auto st = set_counters(maps.clients_fd(), n, c, ncpus); !st) return st.error();
        if (auto st = cycle(c, n, &out.phases); !st) return st.error();
    }

    // The store holds every session's total.
    const auto sessions = connected.at(kInstance);
    for (uint32_t i : {0U, n / 2, n - 1}) {
        auto s = store->session(sessions[i].id);
        if (!s) return s.error();
        if (!*s || (*s)->usage.upload.bytes != o.cycles * kUpBytes ||
            (*s)->usage.download.bytes != o.cycles * kDownBytes)
            return Error{"consistency check failed: session " + sessions[i].id + " in the store has not " +
                         std::to_string(o.cycles * kUpBytes) + " B up"};
    }

    // The first cycle of the next hour, every client active: its commit
    // also adds the hour just over to the users' days and months (once an
    // hour). The cycles after it are in that hour too.
    constexpr int64_t kNextHour = 3600;
    if (auto st = set_counters(maps.clients_fd(), n, o.cycles + 1, ncpus); !st) return st.error();
    if (auto st = cycle(o.cycles + 1, n, nullptr, kNextHour); !st) return st.error();
    out.new_hour_ms = cycle_ms;
    out.roll_up_ms = roll_up_ms;

    // Then one client in kPartialStride moves per cycle: 0, 10, 20, ...
    // (their store totals are no longer the ones checked above).
    const uint32_t partial_movers = (n + kPartialStride - 1) / kPartialStride;
    for (uint32_t c = 1; c <= o.cycles; ++c) {
        const uint64_t moves = o.cycles + 1 + c;
        if (auto st = set_counters(maps.clients_fd(), n, moves, ncpus, kPartialStride); !st) return st.error();
        if (auto st = cycle(moves, partial_movers, &out.partial, kNextHour); !st) return st.error();
    }

    // Then the same with churn: before each cycle one session in
    // kChurnStride leaves the list and a new one on its address joins at the
    // end, every other one of another user (a reconnect, a new customer).
    const uint32_t replaced = std::max(1U, n / kChurnStride);
    for (uint32_t c = 1; c <= o.cycles; ++c) {
        const uint64_t moves = 2 * o.cycles + 1 + c;
        std::vector<vpnmeter::Session>& list = connected.at(kInstance);
        for (uint32_t k = 0; k < replaced; ++k) {
            const size_t at = (size_t{k} * n / replaced + c * 7) % list.size();
            vpnmeter::Session next = list[at];
            list.erase(list.begin() + static_cast<std::ptrdiff_t>(at));
            if (k % 2) next.user += "-next";
            next.start = since + c;
            next.id = vpnmeter::session_id(kInstance, next.user, next.start);
            list.push_back(std::move(next));
        }
        if (auto st = set_counters(maps.clients_fd(), n, moves, ncpus, kPartialStride); !st) return st.error();
        if (auto st = cycle(moves, partial_movers, &out.churn, kNextHour); !st) return st.error();
    }

    // /metrics: the renderer GET /metrics uses (the exporter renders a
    // snapshot once; each render here is a new one), prometheus-cpp's
    // serializer over the same families (the old path, for the ratio), and
    // a scrape of the exporter's cached text.
    const auto& exporter = metrics.exporter();
    const auto snapshot = exporter->latest();
    std::vector<double> render_ms, prometheus_ms, cached_ms;
    for (uint32_t r = 0; r < o.renders; ++r) {
        auto t = Clock::now();
        const std::string text = vpnmeter::render_metrics(*snapshot);
        render_ms.push_back(ms_since(t));
        t = Clock::now();
        const std::string old_text = prometheus::TextSerializer().Serialize(vpnmeter::metric_families(*snapshot));
        prometheus_ms.push_back(ms_since(t));
        if (r == 0) exporter->render(); // renders and keeps the text
        t = Clock::now();
        const std::string scraped = exporter->render();
        cached_ms.push_back(ms_since(t));
        out.render_bytes = text.size();
        if (text != old_text || scraped != text)
            return Error{"consistency check failed: /metrics differs from prometheus-cpp's serialization (" +
                         std::to_string(text.size()) + ", " + std::to_string(old_text.size()) + " and " +
                         std::to_string(scraped.size()) + " bytes)"};
        if (text.find("user=\"user" + std::to_string(n - 1) + "\"") == std::string::npos)
            return Error{"/metrics lacks the series of user" + std::to_string(n - 1)};
    }
    out.render_ms = median(render_ms);
    out.prometheus_ms = median(prometheus_ms);
    out.cached_ms = median(cached_ms);
    std::tie(out.rss_mib, out.hwm_mib) = memory_mib();
    out.store_bytes = std::filesystem::file_size(dir.path() + "/data.mdb", ec);

    // The VPN restarts: every session ends in one cycle (nothing moved).
    {
        const vpnmeter::ConnectedSessions none{{kInstance, {}}};
        auto counters = collector.collect();
        if (!counters) return counters.error();
        const auto t = Clock::now();
        vpnmeter::CycleCommit commit =
            reconciler.plan(counters.value(), none, devices, static_cast<int64_t>(std::time(nullptr)) + kNextHour);
        if (auto st = store->commit(commit); !st) return st.error();
        reconciler.accept(commit);
        out.all_end_ms = ms_since(t);
        if (commit.sessions.size() != n || !reconciler.active().empty())
            return Error{"consistency check failed: " + std::to_string(commit.sessions.size()) + " of " +
                         std::to_string(n) + " sessions ended when all left"};
        if (const auto& owners = reconciler.owners(); !owners.empty())
            return Error{"consistency check failed: " + owners.begin()->first.address() + " still owned by " +
                         owners.begin()->second};
    }
    return out;
}

void print_machine(const Options& o, uint32_t capacity)
{
    utsname u{};
    uname(&u);
    std::printf("machine: %ld online CPUs, kernel %s, %s\n", sysconf(_SC_NPROCESSORS_ONLN), u.release,
                vpnmeter::bench::read_first_line("/proc/cpuinfo", "model name").c_str());
    std::printf("%u timed cycles per size with every client moving, then as many with one in %u, %u /metrics "
                "renders, client map "
                "capacity %u, cpu %s\n",
                o.cycles, kPartialStride, o.renders, capacity, o.cpu < 0 ? "not pinned" : std::to_string(o.cpu).c_str());
    std::fflush(stdout);
}

void print_table(const std::vector<SizeResult>& results)
{
    std::printf("\ncollection cycle, median ms over the timed cycles:\n");
    std::printf("%9s %8s %10s %8s %8s %8s %8s %8s %13s %9s %8s %9s\n", "clients", "read", "reconcile", "quota",
                "commit", "publish", "total", "cpu", "first cycle", "new hour", "roll-up", "all end");
    for (const auto& r : results)
        std::printf("%9u %8.1f %10.1f %8.1f %8.1f %8.1f %8.1f %8.1f %13.1f %9.1f %8.1f %9.1f\n", r.clients,
                    median(r.phases.read), median(r.phases.reconcile), median(r.phases.quota),
                    median(r.phases.commit), median(r.phases.publish), median(r.phases.total), median(r.phases.cpu),
                    r.first_cycle_ms, r.new_hour_ms, r.roll_up_ms, r.all_end_ms);
    std::printf("\nthe same with one client in %u moving (the others idle), median ms:\n", kPartialStride);
    std::printf("%9s %8s %8s %10s %8s %8s %8s %8s %8s\n", "clients", "moved", "read", "reconcile", "quota", "commit",
                "publish", "total", "cpu");
    for (const auto& r : results)
        std::printf("%9u %8u %8.1f %10.1f %8.1f %8.1f %8.1f %8.1f %8.1f\n", r.clients,
                    (r.clients + kPartialStride - 1) / kPartialStride, median(r.partial.read),
                    median(r.partial.reconcile), median(r.partial.quota), median(r.partial.commit),
                    median(r.partial.publish), median(r.partial.total), median(r.partial.cpu));
    std::printf("\nthe same with one session in %u replaced before each cycle (half of them by another user), "
                "median ms:\n", kChurnStride);
    std::printf("%9s %8s %8s %8s %10s %8s %8s %8s %8s %8s\n", "clients", "moved", "replaced", "read", "reconcile",
                "quota", "commit", "publish", "total", "cpu");
    for (const auto& r : results)
        std::printf("%9u %8u %8u %8.1f %10.1f %8.1f %8.1f %8.1f %8.1f %8.1f\n", r.clients,
                    (r.clients + kPartialStride - 1) / kPartialStride, std::max(1U, r.clients / kChurnStride),
                    median(r.churn.read), median(r.churn.reconcile), median(r.churn.quota), median(r.churn.commit),
                    median(r.churn.publish), median(r.churn.total), median(r.churn.cpu));
    std::printf("\n/metrics (six series per user) and memory after the size's cycles:\n");
    std::printf("%9s %10s %18s %10s %13s %10s %10s %12s\n", "users", "render ms", "prometheus-cpp ms", "cached ms",
                "render bytes", "VmRSS MiB", "VmHWM MiB", "store MiB");
    for (const auto& r : results)
        std::printf("%9u %10.1f %18.1f %10.2f %13zu %10.1f %10.1f %12.1f\n", r.clients, r.render_ms, r.prometheus_ms,
                    r.cached_ms, r.render_bytes, r.rss_mib, r.hwm_mib, r.store_bytes / 1048576.0);
    std::printf("\nread: Collector::collect (batch read of the map, deltas); reconcile: Reconciler::plan, but\n"
                "for the quota plan inside it; quota: QuotaController::plan (period usage, alerts; every user\n"
                "on a 1 TB/month plan unless --no-quotas), run as soon as the users' usage is final, while the\n"
                "sessions that came or went are still to be worked out, + enforce (kernel policies and\n"
                "budgets); commit: Store::commit (one LMDB write transaction, fsync) on its own thread, begun\n"
                "as soon as the usage is final (it writes the buckets, then the quota records once planned,\n"
                "then the rest once the reconciliation is done), while the cycle's thread stages the metrics\n"
                "(MetricsRecorder::stage: the sessions' totals, copies of the series values) and (when no\n"
                "alert fired: the quotas' part can be put back) has the reconciler and the quotas take it and\n"
                "works out the kernel keys and the quota gauges, as the daemon does; this column is the wait\n"
                "after the reconciliation;\n"
                "publish: otherwise the reconciler's and the quotas' accept side by side, then the metrics\n"
                "snapshot;\n"
                "cpu: the process's CPU time in the cycle, all threads (user + system);\n"
                "first cycle: N new sessions; new hour: the first cycle of the next hour, all active (its\n"
                "commit adds a new bucket for every user); roll-up: after it, as the daemon after each cycle,\n"
                "Store::roll_up adds the hour just over to the users' days and months (a write once an hour;\n"
                "not in any cycle's time); all end: every session ends at once (reconcile + commit).\n"
                "render: render_metrics, what a scrape costs after a new snapshot; prometheus-cpp: its\n"
                "TextSerializer over metric_families, the same bytes (the old path); cached: a repeated scrape\n"
                "(MetricsExporter::render copying the kept text).\n"
                "VmRSS/VmHWM are this process's: they include the benchmark's own copy of the sessions;\n"
                "VmHWM only grows, so a size's value is the peak up to and including it.\n");
}

// --fill-pinned: the client map of a running vpnmeterd (its pin path) as
// after `moves` busy cycles of N clients, for measuring the daemon itself.
int fill_pinned(const Options& o)
{
    const int ncpus = libbpf_num_possible_cpus();
    auto maps = vpnmeter::PinnedMaps::open(o.fill_pinned);
    if (ncpus <= 0 || !maps) {
        std::fprintf(stderr, "error: %s\n", maps ? "count possible CPUs" : maps.error().message().c_str());
        return 1;
    }
    const uint32_t n = *std::max_element(o.clients.begin(), o.clients.end());
    if (auto st = set_counters(maps->clients_fd(), n, o.moves, ncpus); !st) {
        std::fprintf(stderr, "error: %s\n", st.error().message().c_str());
        return 1;
    }
    return 0;
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
    print_machine(o, capacity);

    const std::string pin_path = vpnmeter::bench::unique_pin_path();
    vpnmeter::bench::PinCleanup cleanup(pin_path); // declared first: runs last
    auto fail = [](const Error& e) {
        std::fprintf(stderr, "error: %s\n", e.message().c_str());
        return g_signal ? 128 + g_signal : 1;
    };
    auto dp = vpnmeter::Datapath::load({.pin_path = pin_path, .max_clients = capacity});
    if (!dp) return fail(dp.error());
    auto maps = vpnmeter::PinnedMaps::open(pin_path);
    if (!maps) return fail(maps.error());

    std::vector<uint32_t> sizes = o.clients;
    std::sort(sizes.begin(), sizes.end());
    sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
    std::vector<SizeResult> results;
    for (uint32_t n : sizes) {
        auto r = run_size(maps.value(), pin_path, n, o, ncpus);
        if (!r) return fail(r.error());
        std::printf("%u clients: map filled in %.2f s, first cycle (creates %u sessions) %.0f ms, total per cycle",
                    n, r->fill_s, n, r->first_cycle_ms);
        for (double v : r->phases.total) std::printf(" %.1f", v);
        std::printf(" ms\n");
        std::fflush(stdout);
        results.push_back(std::move(r.value()));
    }
    print_table(results);
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    vpnmeter::tune_heap_for_cycles(); // as the daemon does
    Options o;
    CLI::App app{"vpnmeter collection cycle benchmark: read, reconcile and commit N synthetic clients through the "
                 "daemon's own classes; /metrics render time and size; memory. Needs root."};
    app.add_option("--clients", o.clients, "clients (each a session and a user), one size each "
                                           "(default 10000,100000,1000000)")
        ->delimiter(',')
        ->check(CLI::Range(1U, kMaxClients));
    app.add_option("--cycles", o.cycles, "timed cycles per size; the table shows medians (default 5)")
        ->check(CLI::PositiveNumber);
    app.add_option("--renders", o.renders, "/metrics renders per size (default 5)")->check(CLI::PositiveNumber);
    app.add_flag("--quick", o.quick, "smoke run for CI: 1000 and 10000 clients, 2 cycles, 2 renders (unless given)");
    app.add_option("--cpu", o.cpu, "pin the benchmark to this CPU")->check(CLI::NonNegativeNumber);
    app.add_option("--fill-pinned", o.fill_pinned,
                   "only set the largest --clients count of clients in the map pinned at this path (a running "
                   "vpnmeterd's) to --moves cycles' worth of traffic, and exit");
    app.add_flag("!--no-quotas", o.quotas, "no quota plans (the quota engine still runs, as in a daemon without them)");
    app.add_option("--history-days", o.history_days,
                   "start each size's store as after this many days of service: hourly usage of every user and "
                   "a closed session per client per day (default 0: an empty store)");
    app.add_option("--moves", o.moves, "with --fill-pinned: the cycles' worth of traffic (default 1)");
    CLI11_PARSE(app, argc, argv);
    if (o.quick) {
        if (!app.count("--clients")) o.clients = {1'000, 10'000};
        if (!app.count("--cycles")) o.cycles = 2;
        if (!app.count("--renders")) o.renders = 2;
    }

    if (!vpnmeter::bench::prepare_process(on_signal, o.cpu)) return 1;
    vpnmeter::route_libbpf_logs(false);
    try {
        return o.fill_pinned.empty() ? run(o) : fill_pinned(o);
    } catch (const std::exception& e) { // cleanup has run while unwinding
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}
