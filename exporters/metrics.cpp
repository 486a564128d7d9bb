#include "metrics.h"

#include <openssl/evp.h>

#include <algorithm>
#include <limits>

#include <prometheus/text_serializer.h>

namespace vpnmeter {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;
using Labels = std::vector<ClientMetric::Label>;

// Prometheus rejects a whole scrape over one label value that is not UTF-8,
// and user names come from certificates: bad sequences become U+FFFD.
std::string utf8(const std::string& text)
{
    std::string out;
    out.reserve(text.size());
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    const size_t n = text.size();
    for (size_t i = 0; i < n;) {
        size_t len = s[i] < 0x80 ? 1 : (s[i] >> 5) == 0x6 ? 2 : (s[i] >> 4) == 0xe ? 3 : (s[i] >> 3) == 0x1e ? 4 : 0;
        bool valid = len > 0 && i + len <= n;
        for (size_t k = 1; valid && k < len; ++k) valid = (s[i + k] & 0xc0) == 0x80;
        if (valid && len > 1) {
            // Overlong forms, surrogates and code points past U+10FFFF.
            uint32_t cp = s[i] & (0xff >> (len + 1));
            for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (s[i + k] & 0x3f);
            static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
            valid = cp >= kMin[len] && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff);
        }
        if (valid) {
            out.append(text, i, len);
            i += len;
        } else {
            out += "\xef\xbf\xbd";
            ++i;
        }
    }
    return out;
}

std::string name_of(const Interfaces& devices, uint32_t ifindex)
{
    auto it = devices.name_by_ifindex.find(ifindex);
    return it != devices.name_by_ifindex.end() ? it->second : "if" + std::to_string(ifindex);
}

// A counter, or a gauge with a name that says what it counts.
class Family {
public:
    Family(std::string name, std::string help, MetricType type) : family_{std::move(name), std::move(help), type, {}} {}

    void add(Labels labels, double value)
    {
        ClientMetric metric;
        for (auto& label : labels) label.value = utf8(label.value);
        metric.label = std::move(labels);
        if (family_.type == MetricType::Counter) metric.counter.value = value;
        else metric.gauge.value = value;
        family_.metric.push_back(std::move(metric));
    }

    // Upload and download of one label set.
    void add_directions(const Labels& labels, double upload, double download)
    {
        Labels up = labels, down = labels;
        up.push_back({"direction", "upload"});
        down.push_back({"direction", "download"});
        add(std::move(up), upload);
        add(std::move(down), download);
    }

    // Empty families are left out of the exposition.
    void into(std::vector<MetricFamily>& out)
    {
        if (!family_.metric.empty()) out.push_back(std::move(family_));
    }

private:
    MetricFamily family_;
};

Labels client_labels(const MetricsSnapshot& snapshot, const ClientLabels& labels)
{
    Labels out = {{"interface", labels.interface}, {"user", labels.user}};
    if (snapshot.per_session) out.push_back({"session", labels.session});
    return out;
}

MetricFamily histogram(const DurationHistogram& h)
{
    ClientMetric metric;
    uint64_t cumulative = 0;
    for (size_t i = 0; i < h.kBounds.size(); ++i) {
        cumulative += h.buckets[i];
        metric.histogram.bucket.push_back({cumulative, h.kBounds[i]});
    }
    metric.histogram.bucket.push_back({h.count, std::numeric_limits<double>::infinity()});
    metric.histogram.sample_count = h.count;
    metric.histogram.sample_sum = h.sum;
    return {"vpnmeter_collection_duration_seconds",
            "Time one collection cycle took, from reading the counters to the end of its commit.",
            MetricType::Histogram,
            {std::move(metric)}};
}

SourceBytes& operator+=(SourceBytes& total, const SourceBytes& more)
{
    total.upload += more.upload;
    total.download += more.download;
    return total;
}

// What a counter gained since `before`; a smaller value is a restart.
uint64_t gained(uint64_t now, uint64_t before) { return now >= before ? now - before : now; }

} // namespace

void DurationHistogram::observe(double seconds)
{
    ++count;
    sum += seconds;
    auto bound = std::lower_bound(kBounds.begin(), kBounds.end(), seconds);
    if (bound != kBounds.end()) ++buckets[static_cast<size_t>(bound - kBounds.begin())];
}

std::vector<MetricFamily> metric_families(const MetricsSnapshot& s)
{
    std::vector<MetricFamily> out;
    const auto C = MetricType::Counter;
    const auto G = MetricType::Gauge;

    Family client_bytes("vpnmeter_client_bytes_total",
                        "Bytes inside the tunnel of a user's sessions on an interface (upload: from the client), "
                        "since the store began.",
                        C);
    Family client_packets("vpnmeter_client_packets_total",
                          "Packets inside the tunnel of a user's sessions on an interface, since the store began.", C);
    for (const auto& [labels, traffic] : s.clients) {
        client_bytes.add_directions(client_labels(s, labels), traffic.upload.bytes, traffic.download.bytes);
        client_packets.add_directions(client_labels(s, labels), traffic.upload.packets, traffic.download.packets);
    }
    client_bytes.into(out);
    client_packets.into(out);

    Family iface_bytes("vpnmeter_interface_bytes_total",
                       "Bytes through a metered interface as its own counters report them (upload: received).", C);
    Family iface_packets("vpnmeter_interface_packets_total", "Packets through a metered interface.", C);
    for (const auto& [name, traffic] : s.interfaces) {
        iface_bytes.add_directions({{"interface", name}}, traffic.upload.bytes, traffic.download.bytes);
        iface_packets.add_directions({{"interface", name}}, traffic.upload.packets, traffic.download.packets);
    }
    iface_bytes.into(out);
    iface_packets.into(out);

    Family spare_bytes("vpnmeter_unattributed_bytes_total",
                       "Bytes on an interface that belonged to no session, since the store began.", C);
    Family spare_packets("vpnmeter_unattributed_packets_total",
                         "Packets on an interface that belonged to no session, since the store began.", C);
    for (const auto& [name, traffic] : s.unattributed) {
        spare_bytes.add_directions({{"interface", name}}, traffic.upload.bytes, traffic.download.bytes);
        spare_packets.add_directions({{"interface", name}}, traffic.upload.packets, traffic.download.packets);
    }
    spare_bytes.into(out);
    spare_packets.into(out);

    Family drop_bytes("vpnmeter_dropped_bytes_total", "Bytes dropped by quota enforcement, by reason.", C);
    Family drop_packets("vpnmeter_dropped_packets_total", "Packets dropped by quota enforcement, by reason.", C);
    for (const auto& [name, drops] : s.drops) {
        for (const auto& [reason, traffic] : {std::pair{"block", drops.block}, std::pair{"quota", drops.quota},
                                              std::pair{"policer", drops.policer}}) {
            for (const auto& [direction, count] :
                 {std::pair{"upload", traffic.upload}, std::pair{"download", traffic.download}}) {
                drop_bytes.add({{"interface", name}, {"direction", direction}, {"reason", reason}}, count.bytes);
                drop_packets.add({{"interface", name}, {"direction", direction}, {"reason", reason}}, count.packets);
            }
        }
    }
    drop_bytes.into(out);
    drop_packets.into(out);

    Family active("vpnmeter_sessions_active", "Sessions connected now, by VPN instance.", G);
    for (const auto& [instance, count] : s.sessions_active) active.add({{"instance", instance}}, count);
    active.into(out);

    Family singbox_up("vpnmeter_singbox_up", "1 if the Sing-Box stats API answered the last read, else 0.", G);
    Family singbox_failures("vpnmeter_singbox_read_failures_total",
                            "Failed reads of a Sing-Box stats API since the agent started (retried with backoff).", C);
    Family singbox_restarts("vpnmeter_singbox_restarts_total",
                            "Sing-Box server restarts (counters starting again from zero) seen since the agent "
                            "started.",
                            C);
    for (const auto& [instance, health] : s.singbox) {
        singbox_up.add({{"instance", instance}}, health.up ? 1 : 0);
        singbox_failures.add({{"instance", instance}}, health.failures);
        singbox_restarts.add({{"instance", instance}}, health.restarts);
    }
    singbox_up.into(out);
    singbox_failures.into(out);
    singbox_restarts.into(out);

    Family source("vpnmeter_source_bytes_total",
                  "Bytes the VPN server itself counted (outer, encrypted) for the sessions seen since the agent "
                  "started.",
                  C);
    for (const auto& [key, bytes] : s.source_bytes)
        source.add_directions({{"source", key.first}, {"user", key.second}}, bytes.upload, bytes.download);
    source.into(out);

    Family limit("vpnmeter_quota_limit_bytes", "A user's byte limit in the current period, top-ups included.", G);
    Family used("vpnmeter_quota_used_bytes", "What a user used in the current period, as it counts against the limit.",
                G);
    Family state("vpnmeter_quota_state", "1 for the state a user's quota is in, 0 for the others.", G);
    for (const auto& [user, quota] : s.quotas) {
        if (quota.limit_bytes) limit.add({{"user", user}}, static_cast<double>(*quota.limit_bytes));
        used.add({{"user", user}}, static_cast<double>(quota.used_bytes));
        for (auto each : {QuotaState::State::ok, QuotaState::State::warning, QuotaState::State::exceeded,
                          QuotaState::State::blocked, QuotaState::State::throttled, QuotaState::State::expired}) {
            const std::string name = to_string(each);
            state.add({{"user", user}, {"state", name}}, quota.state == name ? 1 : 0);
        }
    }
    limit.into(out);
    used.into(out);
    state.into(out);

    out.push_back(histogram(s.collection_duration));

    Family entries("vpnmeter_map_entries", "Entries in a BPF map.", G);
    Family capacity("vpnmeter_map_capacity", "Entries a BPF map can hold.", G);
    for (const auto& [map, usage] : s.maps) {
        entries.add({{"map", map}}, static_cast<double>(usage.entries));
        capacity.add({{"map", map}}, static_cast<double>(usage.capacity));
    }
    entries.into(out);
    capacity.into(out);

    Family store("vpnmeter_store_size_bytes", "Size of the usage store's data file.", G);
    if (s.store_size_bytes) store.add({}, static_cast<double>(*s.store_size_bytes));
    store.into(out);

    Family errors("vpnmeter_errors_total", "Failures the agent logged and went on from, by operation.", C);
    for (const auto& [op, count] : s.errors) errors.add({{"op", op}}, static_cast<double>(count));
    errors.into(out);

    Family commit_errors("vpnmeter_store_commit_errors_total",
                         "Cycles whose store commit failed, by reason; their bytes go into the next commit.", C);
    for (const auto& [reason, count] : s.store_commit_errors)
        commit_errors.add({{"reason", reason}}, static_cast<double>(count));
    commit_errors.into(out);

    Family alerts("vpnmeter_alerts_total", "Quota threshold alerts fired since the agent started.", C);
    alerts.add({}, static_cast<double>(s.alerts));
    alerts.into(out);

    Family build("vpnmeter_build_info", "The agent's version; always 1.", G);
    build.add({{"version", s.version}}, 1);
    build.into(out);
    return out;
}

std::string render_metrics(const MetricsSnapshot& snapshot)
{
    return prometheus::TextSerializer().Serialize(metric_families(snapshot));
}

void MetricsExporter::publish(std::shared_ptr<const MetricsSnapshot> snapshot)
{
    std::lock_guard lock(mutex_);
    latest_ = std::move(snapshot);
}

std::shared_ptr<const MetricsSnapshot> MetricsExporter::latest() const
{
    std::lock_guard lock(mutex_);
    return latest_;
}

std::vector<MetricFamily> MetricsExporter::Collect() const
{
    auto snapshot = latest(); // serialized outside the lock: the cycle loop never waits for a scrape
    return snapshot ? metric_families(*snapshot) : std::vector<MetricFamily>{};
}

std::string MetricsExporter::render() const { return prometheus::TextSerializer().Serialize(Collect()); }

std::string hashed_user(const std::string& user)
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (EVP_Digest(user.data(), user.size(), digest, &length, EVP_sha256(), nullptr) != 1)
        return "unhashable"; // OpenSSL without SHA-256: never the real name
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < 6 && i < length; ++i) {
        out += kHex[digest[i] >> 4];
        out += kHex[digest[i] & 0xf];
    }
    return out;
}

std::map<std::string, Traffic> interface_totals(const CounterSnapshot& counters, const Interfaces& devices)
{
    // A device recreated under the same name has a new ifindex: the old
    // one's counts stay in the map, so the sum by name still only grows.
    std::map<std::string, Traffic> out;
    for (const auto& [ifindex, traffic] : counters.interfaces) out[name_of(devices, ifindex)] += traffic.total;
    return out;
}

std::map<std::string, ClientDrops> drops_by_interface(const std::map<ClientKey, ClientDrops>& drops,
                                                      const Interfaces& devices)
{
    std::map<std::string, ClientDrops> out;
    for (const auto& [key, d] : drops) {
        ClientDrops& sum = out[name_of(devices, key.ifindex)];
        sum.block += d.block;
        sum.quota += d.quota;
        sum.policer += d.policer;
    }
    return out;
}

std::map<std::string, uint64_t> sessions_by_instance(const std::map<std::string, Session>& active,
                                                     const std::vector<std::string>& instances)
{
    std::map<std::string, uint64_t> out;
    for (const auto& instance : instances) out[instance] = 0;
    for (const auto& [id, session] : active) ++out[session.instance];
    return out;
}

MetricsRecorder::MetricsRecorder(MetricsConfig config, std::string version, std::shared_ptr<MetricsExporter> exporter)
    : config_(config), version_(std::move(version)), exporter_(std::move(exporter))
{
    // Present from the start, so that rate() sees the first failure.
    for (const char* op : {"collect", "source", "store_commit", "store_prune", "read_drops", "webhook"})
        errors_[op] = 0;
    for (const char* reason : {"map_full", "disk_full", "other"})
        store_commit_errors_[reason] = 0;
}

const std::string& MetricsRecorder::user_label(const std::string& user)
{
    if (!config_.hash_users) return user;
    auto it = hashed_.find(user);
    if (it == hashed_.end()) it = hashed_.emplace(user, hashed_user(user)).first;
    return it->second;
}

MetricsRecorder::Tracked& MetricsRecorder::track(const Session& session)
{
    auto it = sessions_.find(session.id);
    if (it != sessions_.end()) return it->second;
    Tracked tracked;
    tracked.labels = {session.interface, user_label(session.user), ""};
    if (config_.per_session) {
        // Once "other", always "other": moving it to a series of its own
        // later would make "other" go down.
        if (own_series_ < config_.max_sessions) {
            tracked.labels.session = session.id;
            ++own_series_;
        } else {
            tracked.labels.session = "other";
        }
    }
    tracked.series = &clients_[tracked.labels]; // the series exists from the session's start
    tracked.source_total = &source_bytes_[{session.instance, tracked.labels.user}];
    return sessions_.emplace(session.id, std::move(tracked)).first->second;
}

void MetricsRecorder::load(const std::vector<Session>& sessions, const std::vector<UnattributedUsage>& unattributed)
{
    for (const Session& session : sessions) {
        if (!session.active()) {
            // History: in the per-user totals only.
            if (!config_.per_session) clients_[{session.interface, user_label(session.user), ""}] += session.usage;
            continue;
        }
        Tracked& tracked = track(session);
        *tracked.series += session.usage;
        tracked.usage = session.usage;
        tracked.source = {session.source_upload_bytes, session.source_download_bytes};
        tracked.source_total->upload += tracked.source.upload;
        tracked.source_total->download += tracked.source.download;
    }
    for (const auto& spare : unattributed) unattributed_[spare.interface] += spare.traffic;
}

void MetricsRecorder::account(const CycleCommit& commit)
{
    expire(commit.time); // first: a place freed now goes to a session new in this cycle
    for (const Session& session : commit.sessions) {
        Tracked& tracked = track(session);
        // A session's totals only grow: what they gained is this cycle's.
        *tracked.series += delta(session.usage, tracked.usage);
        tracked.usage = session.usage;
        SourceBytes& source = *tracked.source_total;
        source.upload += gained(session.source_upload_bytes, tracked.source.upload);
        source.download += gained(session.source_download_bytes, tracked.source.download);
        tracked.source = {session.source_upload_bytes, session.source_download_bytes};
        if (session.active()) continue;
        const bool own_series = config_.per_session && tracked.labels.session != "other";
        if (own_series) tracked.ended = session.end;
        else sessions_.erase(session.id);
    }
    for (const auto& [interface, traffic] : commit.unattributed) unattributed_[interface] += traffic;
}

void MetricsRecorder::expire(int64_t now)
{
    for (auto it = sessions_.begin(); it != sessions_.end();) {
        if (!it->second.ended || now - *it->second.ended < kEndedSessionSeriesSeconds) {
            ++it;
            continue;
        }
        clients_.erase(it->second.labels);
        --own_series_;
        it = sessions_.erase(it);
    }
}

void MetricsRecorder::observe_cycle(std::chrono::duration<double> elapsed) { duration_.observe(elapsed.count()); }

void MetricsRecorder::count_error(const std::string& op) { ++errors_[op]; }

void MetricsRecorder::count_store_commit_error(const std::string& reason)
{
    ++errors_["store_commit"];
    ++store_commit_errors_[reason];
}

std::map<std::string, uint64_t> MetricsRecorder::errors() const
{
    auto out = errors_;
    out["webhook"] += webhook_failures_;
    return out;
}

void MetricsRecorder::publish(LiveMetrics live)
{
    auto s = std::make_shared<MetricsSnapshot>();
    s->per_session = config_.per_session;
    s->clients = clients_;
    s->interfaces = std::move(live.interfaces);
    s->unattributed = unattributed_;
    for (const auto& [name, traffic] : s->interfaces) s->unattributed[name]; // 0 rather than absent
    if (live.drops) s->drops = std::move(*live.drops);
    else if (last_) s->drops = last_->drops;
    s->sessions_active = std::move(live.sessions_active);
    s->singbox = std::move(live.singbox);
    s->source_bytes = source_bytes_;
    for (const QuotaState& quota : live.quotas)
        s->quotas[user_label(quota.user)] = {quota.limit_bytes, quota.used_bytes, to_string(quota.state)};
    s->collection_duration = duration_;
    s->maps = std::move(live.maps);
    s->store_size_bytes = live.store_size_bytes;
    webhook_failures_ = live.webhook_failures;
    s->errors = errors();
    s->store_commit_errors = store_commit_errors_;
    s->alerts = live.alerts;
    s->version = version_;
    last_ = s;
    exporter_->publish(std::move(s));
}

void MetricsRecorder::publish_errors()
{
    auto s = last_ ? std::make_shared<MetricsSnapshot>(*last_) : std::make_shared<MetricsSnapshot>();
    s->version = version_;
    s->errors = errors();
    s->store_commit_errors = store_commit_errors_;
    last_ = s;
    exporter_->publish(std::move(s));
}

} // namespace vpnmeter
