#include "metrics.h"

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <span>
#include <string_view>

namespace vpnmeter {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

// The length of the well-formed UTF-8 sequence at text[i], or 0. Overlong
// forms, surrogates and code points past U+10FFFF are not well-formed.
size_t utf8_sequence(std::string_view text, size_t i)
{
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    const size_t n = text.size();
    const size_t len = s[i] < 0x80 ? 1 : (s[i] >> 5) == 0x6 ? 2 : (s[i] >> 4) == 0xe ? 3 : (s[i] >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || i + len > n) return 0;
    for (size_t k = 1; k < len; ++k)
        if ((s[i + k] & 0xc0) != 0x80) return 0;
    if (len == 1) return 1;
    uint32_t cp = s[i] & (0xff >> (len + 1));
    for (size_t k = 1; k < len; ++k) cp = (cp << 6) | (s[i + k] & 0x3f);
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    return cp >= kMin[len] && cp <= 0x10ffff && !(cp >= 0xd800 && cp <= 0xdfff) ? len : 0;
}

constexpr std::string_view kReplacement = "\xef\xbf\xbd"; // U+FFFD

// Prometheus rejects a whole scrape over one label value that is not UTF-8,
// and user names come from certificates: bad sequences become U+FFFD.
std::string utf8(std::string_view text)
{
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
        const size_t len = utf8_sequence(text, i);
        if (len) out.append(text, i, len);
        else out += kReplacement;
        i += len ? len : 1;
    }
    return out;
}

std::string name_of(const Interfaces& devices, uint32_t ifindex)
{
    auto it = devices.name_by_ifindex.find(ifindex);
    return it != devices.name_by_ifindex.end() ? it->second : "if" + std::to_string(ifindex);
}

// One family as the walk below announces it.
struct FamilySpec {
    std::string_view name;
    std::string_view help;
    MetricType type;
};

// A label of a series; the value as in the snapshot (sinks make it UTF-8).
struct Label {
    std::string_view name;
    std::string_view value;
};

// The families of a snapshot in their fixed order, series sorted by labels.
// Both metric_families() and render_metrics() are this one walk, so the
// Collectable interface and /metrics cannot disagree. A Sink has
//   family(spec): the series that follow belong to it (a family without
//                 series is left out of the exposition);
//   sample(labels, value): one series of a counter or gauge;
//   histogram(spec, h): a whole histogram family.
template <class Sink>
class Walk {
public:
    Walk(const MetricsSnapshot& s, Sink& sink) : s_(s), sink_(sink) {}

    void run()
    {
        const auto C = MetricType::Counter;
        const auto G = MetricType::Gauge;

        family("vpnmeter_client_bytes_total",
               "Bytes inside the tunnel of a user's sessions on an interface (upload: from the client), since the "
               "store began.",
               C);
        for (const auto& [labels, traffic] : s_.clients) client(labels, traffic.upload.bytes, traffic.download.bytes);
        family("vpnmeter_client_packets_total",
               "Packets inside the tunnel of a user's sessions on an interface, since the store began.", C);
        for (const auto& [labels, traffic] : s_.clients)
            client(labels, traffic.upload.packets, traffic.download.packets);

        family("vpnmeter_interface_bytes_total",
               "Bytes through a metered interface as its own counters report them (upload: received).", C);
        for (const auto& [name, traffic] : s_.interfaces)
            directions({{"interface", name}}, traffic.upload.bytes, traffic.download.bytes);
        family("vpnmeter_interface_packets_total", "Packets through a metered interface.", C);
        for (const auto& [name, traffic] : s_.interfaces)
            directions({{"interface", name}}, traffic.upload.packets, traffic.download.packets);

        family("vpnmeter_unattributed_bytes_total",
               "Bytes on an interface that belonged to no session, since the store began.", C);
        for (const auto& [name, traffic] : s_.unattributed)
            directions({{"interface", name}}, traffic.upload.bytes, traffic.download.bytes);
        family("vpnmeter_unattributed_packets_total",
               "Packets on an interface that belonged to no session, since the store began.", C);
        for (const auto& [name, traffic] : s_.unattributed)
            directions({{"interface", name}}, traffic.upload.packets, traffic.download.packets);

        family("vpnmeter_dropped_bytes_total", "Bytes dropped by quota enforcement, by reason.", C);
        drops(&Count::bytes);
        family("vpnmeter_dropped_packets_total", "Packets dropped by quota enforcement, by reason.", C);
        drops(&Count::packets);

        family("vpnmeter_sessions_active", "Sessions connected now, by VPN instance.", G);
        for (const auto& [instance, count] : s_.sessions_active) sample({{"instance", instance}}, count);

        family("vpnmeter_singbox_up", "1 if the Sing-Box stats API answered the last read, else 0.", G);
        for (const auto& [instance, health] : s_.singbox) sample({{"instance", instance}}, health.up ? 1 : 0);
        family("vpnmeter_singbox_read_failures_total",
               "Failed reads of a Sing-Box stats API since the agent started (retried with backoff).", C);
        for (const auto& [instance, health] : s_.singbox) sample({{"instance", instance}}, health.failures);
        family("vpnmeter_singbox_restarts_total",
               "Sing-Box server restarts (counters starting again from zero) seen since the agent started.", C);
        for (const auto& [instance, health] : s_.singbox) sample({{"instance", instance}}, health.restarts);

        family("vpnmeter_source_bytes_total",
               "Bytes the VPN server itself counted (outer, encrypted) for the sessions seen since the agent started.",
               C);
        for (const auto& [key, bytes] : s_.source_bytes)
            directions({{"source", key.first}, {"user", key.second}}, bytes.upload, bytes.download);

        family("vpnmeter_quota_limit_bytes", "A user's byte limit in the current period, top-ups included.", G);
        for (const auto& [user, quota] : s_.quotas)
            if (quota.limit_bytes) sample({{"user", user}}, *quota.limit_bytes);
        family("vpnmeter_quota_used_bytes", "What a user used in the current period, as it counts against the limit.",
               G);
        for (const auto& [user, quota] : s_.quotas) sample({{"user", user}}, quota.used_bytes);
        family("vpnmeter_quota_state", "1 for the state a user's quota is in, 0 for the others.", G);
        for (const auto& [user, quota] : s_.quotas)
            for (auto each : {QuotaState::State::ok, QuotaState::State::warning, QuotaState::State::exceeded,
                              QuotaState::State::blocked, QuotaState::State::throttled, QuotaState::State::expired})
                sample({{"user", user}, {"state", to_string(each)}}, quota.state == each ? 1 : 0);

        sink_.histogram({"vpnmeter_collection_duration_seconds",
                         "Time one collection cycle took, from reading the counters to the end of its commit.",
                         MetricType::Histogram},
                        s_.collection_duration);

        family("vpnmeter_map_entries", "Entries in a BPF map.", G);
        for (const auto& [map, usage] : s_.maps) sample({{"map", map}}, usage.entries);
        family("vpnmeter_map_capacity", "Entries a BPF map can hold.", G);
        for (const auto& [map, usage] : s_.maps) sample({{"map", map}}, usage.capacity);

        family("vpnmeter_store_size_bytes", "Size of the usage store's data file.", G);
        if (s_.store_size_bytes) sample({}, *s_.store_size_bytes);

        family("vpnmeter_errors_total", "Failures the agent logged and went on from, by operation.", C);
        for (const auto& [op, count] : s_.errors) sample({{"op", op}}, count);

        family("vpnmeter_store_commit_errors_total",
               "Cycles whose store commit failed, by reason; their bytes go into the next commit.", C);
        for (const auto& [reason, count] : s_.store_commit_errors) sample({{"reason", reason}}, count);

        family("vpnmeter_alerts_total", "Quota threshold alerts fired since the agent started.", C);
        sample({}, s_.alerts);

        family("vpnmeter_build_info", "The agent's version; always 1.", G);
        sample({{"version", s_.version}}, 1);
    }

private:
    void family(std::string_view name, std::string_view help, MetricType type) { sink_.family({name, help, type}); }
    // Prometheus values are doubles: counters past 2^53 round, in any client library.
    void sample(std::initializer_list<Label> labels, double value)
    {
        sink_.sample({labels.begin(), labels.size()}, value);
    }

    // Upload and download of one label set (at most three labels): `direction` comes last.
    void directions(std::initializer_list<Label> labels, double upload, double download)
    {
        std::array<Label, 4> all;
        std::copy(labels.begin(), labels.end(), all.begin());
        const size_t n = labels.size() + 1;
        all[n - 1] = {"direction", "upload"};
        sink_.sample({all.data(), n}, upload);
        all[n - 1] = {"direction", "download"};
        sink_.sample({all.data(), n}, download);
    }

    void client(const ClientLabels& l, double upload, double download)
    {
        if (s_.per_session)
            directions({{"interface", l.interface}, {"user", l.user}, {"session", l.session}}, upload, download);
        else
            directions({{"interface", l.interface}, {"user", l.user}}, upload, download);
    }

    void drops(uint64_t Count::*field)
    {
        for (const auto& [name, d] : s_.drops)
            for (const auto& [reason, traffic] :
                 {std::pair{"block", &d.block}, std::pair{"quota", &d.quota}, std::pair{"policer", &d.policer}}) {
                sample({{"interface", name}, {"direction", "upload"}, {"reason", reason}}, traffic->upload.*field);
                sample({{"interface", name}, {"direction", "download"}, {"reason", reason}}, traffic->download.*field);
            }
    }

    const MetricsSnapshot& s_;
    Sink& sink_;
};

// Builds prometheus::MetricFamily objects.
class FamilySink {
public:
    explicit FamilySink(std::vector<MetricFamily>& out) : out_(out) {}

    void family(const FamilySpec& spec) { pending_ = spec; }

    void sample(std::span<const Label> labels, double value)
    {
        if (pending_) {
            out_.push_back({std::string(pending_->name), std::string(pending_->help), pending_->type, {}});
            pending_.reset();
        }
        ClientMetric metric;
        metric.label.reserve(labels.size());
        for (const auto& label : labels) metric.label.push_back({std::string(label.name), utf8(label.value)});
        if (out_.back().type == MetricType::Counter) metric.counter.value = value;
        else metric.gauge.value = value;
        out_.back().metric.push_back(std::move(metric));
    }

    void histogram(const FamilySpec& spec, const DurationHistogram& h)
    {
        pending_.reset();
        ClientMetric metric;
        uint64_t cumulative = 0;
        for (size_t i = 0; i < h.kBounds.size(); ++i) {
            cumulative += h.buckets[i];
            metric.histogram.bucket.push_back({cumulative, h.kBounds[i]});
        }
        metric.histogram.bucket.push_back({h.count, std::numeric_limits<double>::infinity()});
        metric.histogram.sample_count = h.count;
        metric.histogram.sample_sum = h.sum;
        out_.push_back({std::string(spec.name), std::string(spec.help), spec.type, {std::move(metric)}});
    }

private:
    std::vector<MetricFamily>& out_;
    std::optional<FamilySpec> pending_;
};

// Writes the text exposition format 0.0.4 exactly as prometheus-cpp 1.0's
// TextSerializer writes the same families (the unit tests compare them byte
// for byte), straight into one string. Each line first makes room for its
// longest possible text, then writes through a plain cursor: std::string's
// own appends are out-of-line calls, and a line is a dozen of them.
class TextSink {
public:
    explicit TextSink(size_t estimate) { text_.resize(estimate); }

    std::string take() &&
    {
        text_.resize(used_);
        return std::move(text_);
    }

    void family(const FamilySpec& spec)
    {
        pending_ = spec;
        name_ = spec.name;
    }

    void sample(std::span<const Label> labels, double value)
    {
        if (pending_) header();
        size_t longest = name_.size() + 2 + kNumber + 1; // braces, space, value, newline
        for (const auto& label : labels) longest += label.name.size() + 4 + 3 * label.value.size();
        char* p = room(longest);
        p = put(p, name_);
        if (!labels.empty()) {
            char separator = '{';
            for (const auto& label : labels) {
                *p++ = separator;
                p = put(p, label.name);
                *p++ = '=';
                *p++ = '"';
                p = label_value(p, label.value);
                *p++ = '"';
                separator = ',';
            }
            *p++ = '}';
        }
        *p++ = ' ';
        p = number(p, value);
        *p++ = '\n';
        done(p);
    }

    void histogram(const FamilySpec& spec, const DurationHistogram& h)
    {
        family(spec);
        header();
        const size_t line = name_.size() + 32 + 2 * kNumber;
        char* p = room((h.kBounds.size() + 3) * line);
        p = integer(put(put(p, name_), "_count "), h.count);
        *p++ = '\n';
        p = number(put(put(p, name_), "_sum "), h.sum);
        *p++ = '\n';
        uint64_t cumulative = 0;
        for (size_t i = 0; i < h.kBounds.size(); ++i) {
            cumulative += h.buckets[i];
            p = number(put(put(p, name_), "_bucket{le=\""), h.kBounds[i]);
            p = integer(put(p, "\"} "), cumulative);
            *p++ = '\n';
        }
        p = integer(put(put(p, name_), "_bucket{le=\"+Inf\"} "), h.count);
        *p++ = '\n';
        done(p);
    }

private:
    static constexpr size_t kNumber = 32; // the longest number: %.16g takes at most 23 bytes

    // The cursor, with room for `n` more bytes after it.
    char* room(size_t n)
    {
        if (text_.size() - used_ < n) text_.resize(std::max(2 * text_.size(), used_ + n));
        return text_.data() + used_;
    }
    void done(const char* end) { used_ = static_cast<size_t>(end - text_.data()); }

    static char* put(char* p, std::string_view s)
    {
        std::memcpy(p, s.data(), s.size());
        return p + s.size();
    }

    void header()
    {
        const std::string_view type = pending_->type == MetricType::Counter     ? " counter\n"
                                      : pending_->type == MetricType::Gauge     ? " gauge\n"
                                      : pending_->type == MetricType::Histogram ? " histogram\n"
                                      : pending_->type == MetricType::Summary   ? " summary\n"
                                                                                : " untyped\n";
        char* p = room(2 * pending_->name.size() + pending_->help.size() + 32);
        if (!pending_->help.empty()) // as prometheus-cpp: not escaped (ours have no backslash or newline)
            p = put(put(put(put(put(p, "# HELP "), pending_->name), " "), pending_->help), "\n");
        p = put(put(put(p, "# TYPE "), pending_->name), type);
        done(p);
        pending_.reset();
    }

    static char* integer(char* p, uint64_t value) { return std::to_chars(p, p + kNumber, value).ptr; }

    // prometheus-cpp writes a double through an ostream with precision 16
    // (max_digits10 - 1), printf's %.16g, and NaN and infinities by name.
    static char* number(char* p, double value)
    {
        if (std::isnan(value)) return put(p, "Nan");
        if (std::isinf(value)) return put(p, value < 0 ? "-Inf" : "+Inf");
        if (!std::signbit(value) && value < 1e16 && value == std::trunc(value))
            return integer(p, static_cast<uint64_t>(value)); // %.16g shows these in full: the common case, made cheap
        return std::to_chars(p, p + kNumber, value, std::chars_format::general, 16).ptr;
    }

    // The value made UTF-8 as utf8() does, with \, " and newline escaped:
    // at most 3 bytes for each of its bytes.
    static char* label_value(char* p, std::string_view text)
    {
        for (size_t i = 0; i < text.size();) {
            const char c = text[i];
            if (static_cast<unsigned char>(c) >= 0x80) {
                if (const size_t len = utf8_sequence(text, i)) {
                    p = put(p, text.substr(i, len));
                    i += len;
                } else {
                    p = put(p, kReplacement);
                    ++i;
                }
                continue;
            }
            if (c == '\n') {
                *p++ = '\\';
                *p++ = 'n';
            } else {
                if (c == '\\' || c == '"') *p++ = '\\';
                *p++ = c;
            }
            ++i;
        }
        return p;
    }

    std::string text_; // [0, used_) written, the rest room
    size_t used_ = 0;
    std::optional<FamilySpec> pending_; // announced, header not written yet
    std::string_view name_;
};

// About what the text of a snapshot takes, so that its string rarely grows:
// the client and source series are nearly all of it.
size_t estimated_size(const MetricsSnapshot& s)
{
    constexpr size_t kSeries = 96; // a series line with short label values
    return 16384 + kSeries * (4 * s.clients.size() + 2 * s.source_bytes.size() + 8 * s.quotas.size());
}

SourceBytes& operator+=(SourceBytes& total, const SourceBytes& more)
{
    total.upload += more.upload;
    total.download += more.download;
    return total;
}

// What a counter gained since `before`; a smaller value is a restart.
uint64_t gained(uint64_t now, uint64_t before) { return now >= before ? now - before : now; }
SourceBytes gained(const SourceBytes& now, const SourceBytes& before)
{
    return {gained(now.upload, before.upload), gained(now.download, before.download)};
}

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
    FamilySink sink(out);
    Walk(s, sink).run();
    return out;
}

std::string render_metrics(const MetricsSnapshot& s)
{
    TextSink sink(estimated_size(s));
    Walk(s, sink).run();
    return std::move(sink).take();
}

std::shared_ptr<const MetricsSnapshot> MetricsExporter::publish(std::shared_ptr<const MetricsSnapshot> snapshot)
{
    std::lock_guard lock(mutex_);
    ++published_;
    return std::exchange(latest_, std::move(snapshot));
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

std::shared_ptr<const std::string> MetricsExporter::text() const
{
    std::lock_guard render_lock(render_mutex_);
    std::shared_ptr<const MetricsSnapshot> snapshot;
    uint64_t published = 0;
    {
        std::lock_guard lock(mutex_);
        snapshot = latest_;
        published = published_;
    }
    if (!text_ || text_of_ != published) {
        text_ = std::make_shared<const std::string>(snapshot ? render_metrics(*snapshot) : std::string());
        text_of_ = published;
    }
    return text_;
}

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

std::map<std::string, uint64_t> sessions_by_instance(std::map<std::string, uint64_t> active,
                                                     const std::vector<std::string>& instances)
{
    for (const auto& instance : instances) active.try_emplace(instance, 0);
    return active;
}

MetricsRecorder::MetricsRecorder(MetricsConfig config, std::string version, std::shared_ptr<MetricsExporter> exporter)
    : config_(config), version_(std::move(version)), exporter_(std::move(exporter))
{
    // Present from the start, so that rate() sees the first failure.
    for (const char* op : {"collect", "source", "store_commit", "store_roll_up", "store_prune", "read_drops", "webhook"})
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

MetricsRecorder::Tracked& MetricsRecorder::track(const Session& session, Staged::Added* added)
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
            if (added) added->new_own_series = true;
        } else {
            tracked.labels.session = "other";
        }
    }
    auto series = clients_.try_emplace(tracked.labels); // the series exists from the session's start
    auto source = source_bytes_.try_emplace({session.instance, tracked.labels.user});
    tracked.series = &series.first->second;
    tracked.source_total = &source.first->second;
    if (added) {
        added->id = session.id;
        if (series.second) added->new_series = series.first;
        if (source.second) added->new_source = source.first;
    }
    auto entry = sessions_.emplace(session.id, std::move(tracked)).first;
    entry->second.id = &entry->first;
    return entry->second;
}

MetricsRecorder::Sessions::iterator MetricsRecorder::forget(Sessions::iterator it)
{
    const uint32_t position = it->second.position;
    if (position < hints_.size() && hints_[position] == &it->second) hints_[position] = nullptr;
    return sessions_.erase(it);
}

void MetricsRecorder::load(const std::vector<Session>& sessions, const std::vector<UnattributedUsage>& unattributed)
{
    confirmed_.reset(); // its copies are from before
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
        *tracked.source_total += tracked.source;
    }
    for (const auto& spare : unattributed) unattributed_[spare.interface] += spare.traffic;
}

void MetricsRecorder::account(const CycleCommit& commit) { confirm(commit, stage(commit)); }

MetricsRecorder::Staged MetricsRecorder::stage(const CycleCommit& commit)
{
    retired_.reset(); // before this stage's copies: never three snapshots' worth at once
    Staged staged;
    staged.taken_.reserve(commit.sessions.size() + commit.session_totals.size());
    expire(commit.time); // first: a place freed now goes to a session new in this cycle
    // `session`'s new totals: `usage` and the VPN's counters `source`.
    std::vector<Tracked*> hints(commit.sessions.size() + commit.session_totals.size());
    std::ptrdiff_t shift = 0; // sessions that came or went before: how far the hints moved
    auto take = [&](const Session& session, const Traffic& usage, SourceBytes source) {
        const auto position = static_cast<std::ptrdiff_t>(staged.taken_.size());
        const std::ptrdiff_t was = position - shift;
        Tracked* hinted = was >= 0 && static_cast<size_t>(was) < hints_.size() ? hints_[was] : nullptr;
        if (!hinted || *hinted->id != session.id) {
            Staged::Added added;
            hinted = &track(session, &added);
            if (!added.id.empty()) {
                added.taken = static_cast<size_t>(position);
                staged.added_.push_back(std::move(added));
            }
            if (hinted->position < hints_.size() && hints_[hinted->position] == hinted)
                shift = position - static_cast<std::ptrdiff_t>(hinted->position);
        }
        Tracked& tracked = *hinted;
        hints[position] = &tracked;
        tracked.position = static_cast<uint32_t>(position); // in `hints`, hints_ once this stage is done
        staged.taken_.push_back({&tracked, tracked.usage, tracked.source}); // an element of sessions_ stays put
        // A session's totals only grow: what they gained is this cycle's.
        *tracked.series += delta(usage, tracked.usage);
        tracked.usage = usage;
        *tracked.source_total += gained(source, tracked.source);
        tracked.source = source;
    };
    for (const Session& s : commit.sessions) take(s, s.usage, {s.source_upload_bytes, s.source_download_bytes});
    for (const SessionTotals& t : commit.session_totals)
        take(*t.session, t.usage, {t.source_upload_bytes, t.source_download_bytes});
    hints_ = std::move(hints);
    // Flat copies: a snapshot per cycle of 100,000 map nodes was most of
    // what publishing cost.
    staged.clients_ = clients_.copy();
    staged.source_bytes_ = source_bytes_.copy();
    return staged;
}

void MetricsRecorder::discard(Staged staged)
{
    auto added = staged.added_.rbegin();
    for (size_t i = staged.taken_.size(); i-- > 0;) { // newest first: each finds the totals its stage left
        const Staged::Taken& taken = staged.taken_[i];
        Tracked& tracked = *taken.tracked;
        // What stage() added, from the same totals. The series holds at
        // least that: delta() is the exact difference.
        *tracked.series = delta(*tracked.series, delta(tracked.usage, taken.usage));
        const SourceBytes source_gained = gained(tracked.source, taken.source);
        tracked.source_total->upload -= source_gained.upload;
        tracked.source_total->download -= source_gained.download;
        tracked.usage = taken.usage;
        tracked.source = taken.source;
        if (added == staged.added_.rend() || added->taken != i) continue; // known before this cycle
        if (added->new_series) clients_.erase(*added->new_series);
        if (added->new_source) source_bytes_.erase(*added->new_source);
        if (added->new_own_series) --own_series_;
        forget(sessions_.find(added->id));
        ++added;
    }
}

void MetricsRecorder::confirm(const CycleCommit& commit, Staged staged)
{
    for (const Session& session : commit.sessions) {
        if (session.active()) continue;
        auto it = sessions_.find(session.id); // stage() tracked it
        Tracked& tracked = it->second;
        const bool own_series = config_.per_session && tracked.labels.session != "other";
        if (!own_series) {
            forget(it);
        } else if (!tracked.ended) {
            tracked.ended = session.end;
            ++ended_series_;
        }
    }
    for (const auto& [interface, traffic] : commit.unattributed) unattributed_[interface] += traffic;
    confirmed_ = std::move(staged);
}

void MetricsRecorder::expire(int64_t now)
{
    if (ended_series_ == 0) return; // nothing to walk 100,000 sessions for
    for (auto it = sessions_.begin(); it != sessions_.end();) {
        if (!it->second.ended || now - *it->second.ended < kEndedSessionSeriesSeconds) {
            ++it;
            continue;
        }
        clients_.erase(it->second.labels);
        --own_series_;
        --ended_series_;
        it = forget(it);
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
    // The series as confirm() left them: copied by stage(), or now.
    if (confirmed_) {
        s->clients = std::move(confirmed_->clients_);
        s->source_bytes = std::move(confirmed_->source_bytes_);
        confirmed_.reset();
    } else {
        s->clients = clients_.copy();
        s->source_bytes = source_bytes_.copy();
    }
    s->interfaces = std::move(live.interfaces);
    s->unattributed = unattributed_;
    for (const auto& [name, traffic] : s->interfaces) s->unattributed[name]; // 0 rather than absent
    if (live.drops) s->drops = std::move(*live.drops);
    else if (last_) s->drops = last_->drops;
    s->sessions_active = std::move(live.sessions_active);
    s->singbox = std::move(live.singbox);
    UserGauges quotas = std::move(live.quotas); // by user, unless hashed
    if (config_.hash_users)
        for (auto& [user, gauges] : quotas) user = user_label(user);
    const bool in_order = std::adjacent_find(quotas.begin(), quotas.end(), [](const auto& a, const auto& b) {
                              return !(a.first < b.first);
                          }) == quotas.end();
    s->quotas = in_order ? FlatMap<std::string, QuotaGauges>::adopt_sorted(std::move(quotas))
                         : FlatMap<std::string, QuotaGauges>::from_unsorted(std::move(quotas));
    s->collection_duration = duration_;
    s->maps = std::move(live.maps);
    s->store_size_bytes = live.store_size_bytes;
    webhook_failures_ = live.webhook_failures;
    s->errors = errors();
    s->store_commit_errors = store_commit_errors_;
    s->alerts = live.alerts;
    s->version = version_;
    retired_ = std::exchange(last_, s);
    exporter_->publish(std::move(s)); // the same as retired_, or one publish_errors() made
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
