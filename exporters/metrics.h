// Prometheus metrics. The daemon's cycle loop owns a MetricsRecorder: after
// each committed cycle it builds an immutable MetricsSnapshot and publishes
// it to the MetricsExporter, which GET /metrics serializes on an HTTP
// thread. The HTTP threads never touch the daemon's live state.
#pragma once

#include <array>
#include <chrono>
#include <compare>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include "config.h"
#include "counters.h"
#include "enforcer.h"
#include "flat_map.h"
#include "quota/engine.h"
#include "reconciler.h"
#include "series_map.h"
#include "session.h"
#include "store/store.h"

namespace vpnmeter {

// The Prometheus text exposition format.
inline constexpr const char* kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";

// A per-session series is kept this long after its session ended, so that
// scrapes every few minutes still see its last bytes; then it is dropped.
inline constexpr int64_t kEndedSessionSeriesSeconds = 300;

// The label set of vpnmeter_client_{bytes,packets}_total. `session` is empty
// (no such label) unless metrics.per_session; then it is a session id, or
// "other" for the sessions past metrics.max_sessions.
struct ClientLabels {
    std::string interface;
    std::string user;
    std::string session;
    auto operator<=>(const ClientLabels&) const = default;
};

// vpnmeter_collection_duration_seconds: how long a cycle took, from reading
// the counters to the end of its commit.
struct DurationHistogram {
    static constexpr std::array<double, 11> kBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                       0.1,   0.25,   0.5,   1,    2.5};
    std::array<uint64_t, kBounds.size()> buckets{}; // observations in (previous bound, bound]
    uint64_t count = 0;                               // all of them, +Inf included
    double sum = 0;

    void observe(double seconds);
};

struct MapUsage {
    uint64_t entries = 0;
    uint64_t capacity = 0;
};

// A Sing-Box server's stats API as the agent sees it.
struct SingboxHealth {
    bool up = false;
    uint64_t failures = 0; // failed reads since the agent started
    uint64_t restarts = 0; // server restarts detected since the agent started
    bool operator==(const SingboxHealth&) const = default;
};

struct SourceBytes {
    uint64_t upload = 0;
    uint64_t download = 0;
};

// Everything /metrics shows, as of one committed cycle. Label values are
// final (user names already hashed where configured).
struct MetricsSnapshot {
    bool per_session = false;                         // the client families carry `session`
    SeriesCopy<ClientLabels, Traffic> clients;        // since the store began
    std::map<std::string, Traffic> interfaces;        // the kernel's totals, by device name
    std::map<std::string, Traffic> unattributed;      // since the store began, by device name
    std::map<std::string, ClientDrops> drops;         // the kernel's, by device name
    std::map<std::string, uint64_t> sessions_active;  // by OpenVPN or Sing-Box instance
    std::map<std::string, SingboxHealth> singbox;     // by Sing-Box instance
    SeriesCopy<std::pair<std::string, std::string>, SourceBytes> source_bytes; // (instance, user)
    FlatMap<std::string, QuotaGauges> quotas;         // users with a plan
    DurationHistogram collection_duration;
    std::map<std::string, MapUsage> maps;             // by BPF map ("clients": vpnmeter_clients)
    std::optional<uint64_t> store_size_bytes;
    std::map<std::string, uint64_t> errors;           // by operation
    std::map<std::string, uint64_t> store_commit_errors; // by reason: map_full, disk_full, other
    uint64_t alerts = 0;
    std::string version;
};

// The families of a snapshot, in a fixed order, series sorted by labels.
std::vector<prometheus::MetricFamily> metric_families(const MetricsSnapshot& snapshot);
// The text exposition format: byte for byte what prometheus::TextSerializer
// makes of metric_families(snapshot), written directly (several times faster).
std::string render_metrics(const MetricsSnapshot& snapshot);

// Holds the latest published snapshot. publish() from the cycle loop,
// Collect()/text()/render() from any thread.
class MetricsExporter : public prometheus::Collectable {
public:
    // Returns the snapshot it replaces, to be let go of outside its lock
    // (at 100,000 users freeing one takes milliseconds).
    std::shared_ptr<const MetricsSnapshot> publish(std::shared_ptr<const MetricsSnapshot> snapshot);
    std::shared_ptr<const MetricsSnapshot> latest() const;

    std::vector<prometheus::MetricFamily> Collect() const override;
    // render_metrics() of the latest snapshot, rendered once: by the first
    // call after its publish(); later calls share that text. Empty before
    // the first publish().
    std::shared_ptr<const std::string> text() const;
    std::string render() const { return *text(); }

private:
    mutable std::mutex mutex_; // latest_, published_
    std::shared_ptr<const MetricsSnapshot> latest_;
    uint64_t published_ = 0; // publish() calls: which snapshot a text is of

    // One render at a time, so that concurrent scrapes of a new snapshot
    // render it once; publish() never takes it, so the cycle loop never
    // waits for a render.
    mutable std::mutex render_mutex_; // text_, text_of_
    mutable std::shared_ptr<const std::string> text_;
    mutable uint64_t text_of_ = 0; // the published_ value text_ was rendered for
};

// The first 12 hex digits of SHA-256(user): metrics.hash_users.
std::string hashed_user(const std::string& user);

// What a snapshot reads from the daemon's live state after a commit.
struct LiveMetrics {
    std::map<std::string, Traffic> interfaces;
    std::optional<std::map<std::string, ClientDrops>> drops; // none: could not read, keep the last
    std::map<std::string, uint64_t> sessions_active;
    std::map<std::string, SingboxHealth> singbox;
    UserGauges quotas; // users with a plan, by user in name order
    std::map<std::string, MapUsage> maps;
    std::optional<uint64_t> store_size_bytes;
    uint64_t alerts = 0;
    uint64_t webhook_failures = 0;
};

// Helpers that turn the daemon's state into LiveMetrics. Devices missing
// from `devices` are named "if<ifindex>", as the reconciler names them.
std::map<std::string, Traffic> interface_totals(const CounterSnapshot& counters, const Interfaces& devices);
std::map<std::string, ClientDrops> drops_by_interface(const std::map<ClientKey, ClientDrops>& drops,
                                                      const Interfaces& devices);
// Active sessions per instance (Reconciler::sessions_by_instance()), with
// every instance in `instances`, 0 included.
std::map<std::string, uint64_t> sessions_by_instance(std::map<std::string, uint64_t> active,
                                                     const std::vector<std::string>& instances);

// The cumulative side of the metrics, kept by the cycle loop (one thread).
//
// Client counters only grow: per (interface, user) they start from the
// user's sessions in the store (closed ones included: the same bytes as the
// user's usage buckets, since the reconciler adds every byte to both) and
// each committed cycle adds what its sessions gained. With per_session, a
// session keeps the series it got first (its own while fewer than
// max_sessions are held, else "other") so no counter ever goes down; an
// ended session's series is dropped kEndedSessionSeriesSeconds later.
class MetricsRecorder {
    struct Tracked;

public:
    // What stage() took from a cycle, and the next snapshot's copies of the series.
    class Staged {
        friend class MetricsRecorder;
        // One session's totals before, to give back. What its series gained
        // follows from them and the new ones, kept in its Tracked. Small: a
        // cycle takes every active session (100,000 of these a cycle).
        struct Taken {
            Tracked* tracked = nullptr;
            Traffic usage;
            SourceBytes source;
        };
        struct Added { // a session new to the recorder, to be forgotten again
            size_t taken = 0; // its entry in taken_
            std::string id;
            std::optional<SeriesMap<ClientLabels, Traffic>::iterator> new_series;
            std::optional<SeriesMap<std::pair<std::string, std::string>, SourceBytes>::iterator> new_source;
            bool new_own_series = false;
        };
        std::vector<Taken> taken_;
        std::vector<Added> added_; // in the order taken
        SeriesCopy<ClientLabels, Traffic> clients_;
        SeriesCopy<std::pair<std::string, std::string>, SourceBytes> source_bytes_;
    };

    MetricsRecorder(MetricsConfig config, std::string version, std::shared_ptr<MetricsExporter> exporter);

    // The store as the agent found it. Call once, before the first cycle.
    void load(const std::vector<Session>& sessions, const std::vector<UnattributedUsage>& unattributed);
    // A committed cycle: its sessions' new totals and unattributed bytes.
    void account(const CycleCommit& commit);
    // account() in two steps around the store's commit, so that the next
    // snapshot's copies of the series are made while the commit is written:
    // stage() takes the sessions' new totals and copies the series; then
    // confirm() once the commit has landed (ended sessions and unattributed
    // bytes, taken only then), or discard() if it has not, which undoes what
    // stage() did (the next cycle's commit holds these bytes again). Nothing
    // else may change the recorder in between.
    Staged stage(const CycleCommit& commit);
    void confirm(const CycleCommit& commit, Staged staged);
    void discard(Staged staged);
    void observe_cycle(std::chrono::duration<double> elapsed);
    // Counted at once; shown with the next publish() or publish_errors().
    void count_error(const std::string& op);
    // A failed store commit (also counted as op="store_commit"), by reason.
    void count_store_commit_error(const std::string& reason);

    // A new snapshot from the cumulative state and `live`, to the exporter.
    void publish(LiveMetrics live);
    // The last snapshot again with the current error counts: for a cycle
    // that failed before it could publish.
    void publish_errors();

    const std::shared_ptr<MetricsExporter>& exporter() const { return exporter_; }

private:
    struct Tracked {
        ClientLabels labels;
        Traffic usage;     // the session's total when last seen
        SourceBytes source; // the VPN's counters when last seen
        std::optional<int64_t> ended;
        // Its entries in clients_ and source_bytes_ (map nodes stay put): a
        // cycle adds to them without looking up three-string keys.
        Traffic* series = nullptr;
        SourceBytes* source_total = nullptr;
        const std::string* id = nullptr; // its key in sessions_
        uint32_t position = UINT32_MAX;  // in hints_, if there
    };
    const std::string& user_label(const std::string& user);
    // The session's entry; a new one is noted in `added` (when given), to be given back.
    Tracked& track(const Session& session, Staged::Added* added = nullptr);
    using Sessions = std::unordered_map<std::string, Tracked>; // by session id
    // Erases the session's entry, and the hint to it. Returns the next.
    Sessions::iterator forget(Sessions::iterator it);
    void expire(int64_t now);
    std::map<std::string, uint64_t> errors() const;

    MetricsConfig config_;
    std::string version_;
    std::shared_ptr<MetricsExporter> exporter_;
    std::map<std::string, std::string> hashed_; // user -> label, when hash_users
    Sessions sessions_;
    // The session each position of the last stage() took held (null: gone):
    // a cycle's sessions come in the same id order as the last one's, and
    // checking an id costs less than hashing it (~20 ms at 100,000).
    std::vector<Tracked*> hints_;
    size_t own_series_ = 0;                     // per_session: sessions with a series of their own
    size_t ended_series_ = 0;                   // of those, ended ones kept a while (expire())
    SeriesMap<ClientLabels, Traffic> clients_;
    std::map<std::string, Traffic> unattributed_;
    SeriesMap<std::pair<std::string, std::string>, SourceBytes> source_bytes_;
    DurationHistogram duration_;
    std::map<std::string, uint64_t> errors_;
    std::map<std::string, uint64_t> store_commit_errors_;
    uint64_t webhook_failures_ = 0;
    std::optional<Staged> confirmed_; // its copies are the next snapshot's
    std::shared_ptr<const MetricsSnapshot> last_;
    // The snapshot publish() replaced: freed by the next stage(), while the
    // store writes, not on the cycle's path (~4 ms at 100,000 users).
    std::shared_ptr<const MetricsSnapshot> retired_;
};

} // namespace vpnmeter
