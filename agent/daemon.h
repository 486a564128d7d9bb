// vpnmeterd's run loop: attach to matching devices as they come and go, and
// every cycle read the counters, ask the identity sources who is connected,
// attribute, and commit to the store in one transaction.
#pragma once

#include <signal.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "collector.h"
#include "config.h"
#include "datapath.h"
#include "enforcer.h"
#include "http/auth.h"
#include "http/server.h"
#include "identity_source.h"
#include "link_watcher.h"
#include "metrics.h"
#include "quota_controller.h"
#include "reconciler.h"
#include "singbox/server.h"
#include "status_report.h"
#include "store/store.h"

namespace vpnmeter {

// A cycle allocates and frees the same tables every time; glibc's defaults
// suit neither end:
// - From 15 MB up (the 16-56 MB tables of a 1M-client cycle) they are mapped
//   and given back when freed. Under glibc's adaptive thresholds, freed ones
//   below 32 MB stayed in the heap (untrimmed up to 64 MB) and the next
//   cycle's peak stacked on them.
// - Below that (a 100k-client cycle's tables), up to kHeapKeptForCycles
//   freed at the top of a heap stays there for the next cycle. Fixing the
//   first threshold fixes this one at 128 KiB, and each 100k-client cycle
//   then paid ~2,000 page faults to get its tables back from the kernel.
// For processes that run cycles: Daemon::start calls it, and so does the
// cycle benchmark.
constexpr int kHeapKeptForCycles = 8 << 20;
void tune_heap_for_cycles();

// A committed cycle, taken by the reconciler and the quotas side by side
// (neither touches the other's state; enforcement needs both).
void accept_side_by_side(Reconciler& reconciler, QuotaController& quotas, const CycleCommit& commit, int64_t now);
// The same while the store still finishes the commit, when what the quotas
// change can be put back (QuotaController::undoable: no alert fired): what
// undo() needs if the commit fails. nullopt, with nothing taken, otherwise.
struct TentativeAccept {
    Reconciler::Undo reconciled;
    QuotaController::Undo quotas;
};
std::optional<TentativeAccept> accept_side_by_side_tentatively(Reconciler& reconciler, QuotaController& quotas,
                                                                const CycleCommit& commit, int64_t now);
// False when the reconciler could not be put back (Reconciler::undo): it is
// to be made again from the store.
[[nodiscard]] bool undo(Reconciler& reconciler, QuotaController& quotas, TentativeAccept&& taken);

class Daemon {
public:
    // Loads and pins the datapath, opens the store, resumes from its
    // checkpoint, and attaches to the configured devices. Fatal problems (no
    // bpffs, no permission, unusable store) come back as an Error.
    static Result<std::unique_ptr<Daemon>> start(Config config);

    // Until SIGTERM or SIGINT. The programs stay attached and the maps pinned.
    Status run();

private:
    Daemon(Config config, Datapath datapath, PinnedMaps maps, Store store);
    Status resume();
    // The reconciler as the store has it: the checkpoint's owners and the
    // open sessions (after a failed commit it took already).
    Status resume_reconciler();
    std::vector<Session> address_sessions(const std::vector<Session>& open_sessions) const;
    void on_link(LinkWatcher::Change change, const Link& link);
    void start_cycle(SteadyClock::time_point now);
    bool cycle_answered(SteadyClock::time_point now) const;
    // An error only when the daemon cannot go on counting exactly.
    Status finish_cycle();
    void note_commit_failure(const Error& error, StoreFailure failure);
    void reload();
    Status start_metrics();
    // `gauges`: the quota gauges if already worked out (see finish_cycle).
    void publish_metrics(const Interfaces& devices, int64_t now,
                         std::optional<UserGauges> gauges = std::nullopt);
    using SingboxChanges = std::vector<std::pair<singbox::Server*, singbox::LedgerChange>>;
    // The users with a session now (OpenVPN's and Sing-Box's), in name order.
    std::vector<std::string_view> connected_users() const;
    Status start_singbox(const std::vector<Session>& open_sessions);
    // Each server's usage and checkpoint go into `commit` (its sessions are
    // for the caller to add); accept each once it is committed.
    SingboxChanges plan_singbox(CycleCommit& commit);
    void enforce_singbox(int64_t now);
    Interfaces interfaces() const;
    void update_status(std::optional<int64_t> committed_at);

    Config config_;
    Datapath datapath_;
    PinnedMaps maps_;
    Store store_;
    std::unique_ptr<Collector> collector_;
    std::unique_ptr<Reconciler> reconciler_;
    std::vector<std::unique_ptr<IdentitySource>> sources_;
    std::vector<std::unique_ptr<singbox::Server>> singbox_;
    std::unique_ptr<LinkWatcher> links_;
    std::map<uint32_t, std::string> attached_; // ifindex -> name
    std::set<uint32_t> failed_;                // attach failed: reported once
    CounterIdentity identity_;
    bool identity_committed_ = false;
    std::optional<SteadyClock::time_point> answer_deadline_; // a cycle waits for its sources
    bool commit_failing_ = false;
    uint64_t failed_commits_ = 0; // in a row
    bool client_map_full_ = false;
    SteadyClock::time_point commit_failing_since_{};
    SteadyClock::time_point next_commit_reminder_{};
    std::atomic<bool> ready_{false}; // a cycle has been committed (for /readyz)
    uint64_t cycles_ = 0;
    std::unique_ptr<Enforcer> enforcer_;
    std::unique_ptr<QuotaController> quotas_;
    std::unique_ptr<MetricsRecorder> metrics_; // the cycle's side; /metrics reads its exporter
    std::shared_ptr<http::Authenticator> auth_; // tokens replaced on SIGHUP
    mutable std::mutex status_mutex_; // the cycle writes status_, GET /v1/status reads it
    AgentStatus status_;
    // Last: its threads use the members above, so it stops first.
    std::unique_ptr<http::Server> http_;
};

// SIGINT, SIGTERM and SIGHUP: read from a signalfd by run(). Block them in
// main() before any thread starts (HTTP, webhooks): threads inherit the
// mask, and a thread without it would take the default action (exit).
sigset_t daemon_signals();

// Boot id and map ids: what a checkpoint's raw values are relative to.
Result<CounterIdentity> counter_identity(const PinnedMaps& maps);

} // namespace vpnmeter
