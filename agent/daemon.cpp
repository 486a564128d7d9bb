#include "daemon.h"

#include <bpf/bpf.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <future>

#include <spdlog/spdlog.h>

#include "format.h"
#include "http/api.h"
#include "metrics.h"
#include "openvpn/source.h"
#include "store/background_commit.h"
#include "systemd_notify.h"
#include "unique_fd.h"

namespace vpnmeter {
namespace {

// How often a store that keeps failing is mentioned again.
constexpr auto kCommitFailureReminder = std::chrono::minutes(5);

// How long a cycle waits for the identity sources to answer before it goes
// ahead without the silent ones (their sessions are then left as they were).
std::chrono::milliseconds answer_timeout(const Config& config)
{
    return std::min<std::chrono::milliseconds>(config.collect_interval / 2, std::chrono::milliseconds(500));
}

Result<uint32_t> map_id(int fd, const char* what)
{
    bpf_map_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len)) return os_error(std::string("query ") + what);
    return info.id;
}

bool singbox_session_closes(const std::vector<std::pair<singbox::Server*, singbox::LedgerChange>>& changes)
{
    for (const auto& [server, change] : changes)
        if (std::any_of(change.sessions.begin(), change.sessions.end(), [](const Session& s) { return !s.active(); }))
            return true;
    return false;
}

} // namespace

void tune_heap_for_cycles()
{
    mallopt(M_MMAP_THRESHOLD, 15 << 20);
    mallopt(M_TRIM_THRESHOLD, kHeapKeptForCycles);
}

void accept_side_by_side(Reconciler& reconciler, QuotaController& quotas, const CycleCommit& commit, int64_t now)
{
    auto reconciled = std::async(std::launch::async, [&] { reconciler.accept(commit); });
    quotas.accept(commit, now);
    reconciled.get();
}

std::optional<TentativeAccept> accept_side_by_side_tentatively(Reconciler& reconciler, QuotaController& quotas,
                                                                const CycleCommit& commit, int64_t now)
{
    if (!QuotaController::undoable(commit)) return std::nullopt;
    auto reconciled = std::async(std::launch::async, [&] { return reconciler.accept_tentatively(commit); });
    auto quota_undo = quotas.accept_tentatively(commit, now);
    return TentativeAccept{reconciled.get(), std::move(*quota_undo)};
}

bool undo(Reconciler& reconciler, QuotaController& quotas, TentativeAccept&& taken)
{
    quotas.undo(std::move(taken.quotas));
    return reconciler.undo(std::move(taken.reconciled));
}

sigset_t daemon_signals()
{
    sigset_t signals;
    sigemptyset(&signals);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&signals, sig);
    return signals;
}

Result<CounterIdentity> counter_identity(const PinnedMaps& maps)
{
    CounterIdentity identity;
    std::ifstream boot("/proc/sys/kernel/random/boot_id");
    if (!std::getline(boot, identity.boot_id)) return os_error("read /proc/sys/kernel/random/boot_id");
    auto clients = map_id(maps.clients_fd(), kClientsMap);
    if (!clients) return clients.error();
    auto ifaces = map_id(maps.ifaces_fd(), kIfacesMap);
    if (!ifaces) return ifaces.error();
    identity.clients_map_id = clients.value();
    identity.ifaces_map_id = ifaces.value();
    return identity;
}

Daemon::Daemon(Config config, Datapath datapath, PinnedMaps maps, Store store)
    : config_(std::move(config)), datapath_(std::move(datapath)), maps_(std::move(maps)), store_(std::move(store))
{
}

Result<std::unique_ptr<Daemon>> Daemon::start(Config config)
{
    tune_heap_for_cycles();
    StoreOptions store_options;
    store_options.path = config.storage_path;
    store_options.timezone = config.storage_timezone;
    store_options.hourly_retention_days = config.hourly_retention_days;
    store_options.daily_retention_days = config.daily_retention_days;
    store_options.max_map_size = config.storage_map_size;
    store_options.initial_map_size = std::min(store_options.initial_map_size, config.storage_map_size);
    auto store = Store::open(store_options);
    if (!store) return store.error();

    auto datapath = Datapath::load({config.pin_path, config.max_clients});
    if (!datapath) return datapath.error();
    auto maps = PinnedMaps::open(config.pin_path);
    if (!maps) return maps.error();
    std::unique_ptr<Daemon> daemon(
        new Daemon(std::move(config), std::move(datapath.value()), std::move(maps.value()), std::move(store.value())));
    if (auto status = daemon->resume(); !status) return status.error();

    for (const auto& instance : daemon->config_.openvpn) daemon->sources_.push_back(make_openvpn_source(instance));

    // Enforcement: without it (an older pin layout) quotas are still
    // computed and reported, just not applied in the kernel.
    if (auto enforcer = Enforcer::open(daemon->config_.pin_path))
        daemon->enforcer_ = std::make_unique<Enforcer>(std::move(enforcer.value()));
    else
        spdlog::error("enforcement unavailable: {}", enforcer.error().message());
    std::unique_ptr<WebhookSender> webhook;
    if (const auto& hook = daemon->config_.alerts.webhook)
        webhook = std::make_unique<WebhookSender>(hook->url, hook->timeout, hook->retries);
    daemon->quotas_ = std::make_unique<QuotaController>(daemon->config_.quotas, daemon->store_,
                                                        daemon->enforcer_.get(), &daemon->maps_, std::move(webhook));
    if (auto status = daemon->quotas_->load(); !status) return status.error();
    if (auto status = daemon->start_metrics(); !status) return status.error();
    daemon->status_.version = VPNMETER_VERSION;
    daemon->status_.pid = getpid();
    daemon->status_.started = static_cast<int64_t>(std::time(nullptr));
    daemon->status_.config_path = daemon->config_.source;
    daemon->status_.pin_path = daemon->config_.pin_path;
    daemon->status_.store_path = daemon->config_.storage_path;

    if (!daemon->config_.http_listen.empty()) {
        Daemon* d = daemon.get();
        http::ApiContext api;
        api.store = &d->store_;
        api.ready = [d] { return d->ready_.load(); };
        api.get_quota = [d](const std::string& user) -> std::optional<std::string> {
            auto quota = d->quotas_->quota(user, static_cast<int64_t>(std::time(nullptr)));
            return quota ? std::optional(quota->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace))
                         : std::nullopt;
        };
        api.put_quota = [d](const std::string& user, const std::string& body) {
            return d->quotas_->put_quota(user, body, static_cast<int64_t>(std::time(nullptr)));
        };
        api.status = [d] {
            std::lock_guard lock(d->status_mutex_);
            return status_json(d->status_, static_cast<int64_t>(std::time(nullptr)));
        };
        api.quotas = [d] { return d->quotas_->quotas(static_cast<int64_t>(std::time(nullptr))); };
        auto router = http::make_api(std::move(api));
        router->add("GET", "/metrics", [exporter = d->metrics_->exporter()](const http::Request&) {
            http::Response response;
            response.content_type = kMetricsContentType;
            response.body = exporter->render();
            return response;
        });
        for (const auto& [method, pattern] : router->routes()) spdlog::debug("http route: {} {}", method, pattern);
        d->auth_ = std::make_shared<http::Authenticator>(d->config_.http_tokens, std::move(router));
        auto server = http::Server::start(d->config_.http_listen,
                                          [auth = d->auth_](const http::Request& r) { return auth->dispatch(r); });
        if (!server) return server.error();
        d->http_ = std::move(server.value());
        spdlog::info("HTTP API on {} ({})", d->config_.http_listen,
                     d->config_.http_tokens.empty() ? std::string("open: no http.tokens")
                                                    : std::to_string(d->config_.http_tokens.size()) + " tokens");
        if (d->config_.http_tokens.empty() && !http::is_loopback_listen(d->config_.http_listen))
            spdlog::warn("http.listen {} is not a loopback address and http.tokens is empty: anyone who reaches it "
                         "can read usage and change quotas; add tokens (vpnmeterd --hash-token)",
                         d->config_.http_listen);
    }

    auto watcher = LinkWatcher::open([d = daemon.get()](auto change, const Link& link) { d->on_link(change, link); });
    if (!watcher) return watcher.error();
    daemon->links_ = std::move(watcher.value());
    for (const Link& link : daemon->links_->links()) daemon->on_link(LinkWatcher::Change::Added, link);
    daemon->update_status(std::nullopt);
    if (daemon->attached_.empty() && !daemon->config_.interfaces.empty())
        spdlog::warn("no device matches interfaces {} yet; waiting for one to appear",
                     fmt::join(daemon->config_.interfaces, ", "));
    return daemon;
}

// Picks up where the last committed cycle left off. If the kernel counters
// are not the ones the checkpoint was taken from (reboot, maps recreated),
// they restarted from zero: every byte in them now is new.
Status Daemon::resume()
{
    auto identity = counter_identity(maps_);
    if (!identity) return identity.error();
    identity_ = identity.value();
    auto checkpoint = store_.checkpoint();
    if (!checkpoint) return checkpoint.error();
    auto open_sessions = store_.sessions(/*active_only=*/true);
    if (!open_sessions) return open_sessions.error();

    std::optional<Checkpoint> resumed = checkpoint.value();
    CounterSnapshot baseline;
    if (resumed && resumed->identity == identity_) {
        identity_committed_ = true;
        for (const auto& [key, address] : resumed->addresses) baseline.clients[key] = address.raw;
        baseline.interfaces = resumed->interfaces;
        spdlog::info("resuming from the checkpoint: {} addresses, {} open sessions", resumed->addresses.size(),
                     open_sessions->size());
    } else if (resumed) {
        spdlog::warn("kernel counters were reset since the last checkpoint (reboot or maps recreated): counting "
                     "what they hold now as new traffic");
        for (auto& [key, address] : resumed->addresses) address.raw = {};
        resumed->interfaces.clear();
    }
    collector_ = std::make_unique<Collector>(maps_, std::move(baseline));
    reconciler_ = std::make_unique<Reconciler>(resumed, address_sessions(open_sessions.value()));
    return start_singbox(open_sessions.value());
}

// Sing-Box sessions are the ledgers' (they own no addresses).
std::vector<Session> Daemon::address_sessions(const std::vector<Session>& open_sessions) const
{
    std::vector<Session> out;
    for (const auto& session : open_sessions)
        if (std::none_of(config_.singbox.begin(), config_.singbox.end(),
                         [&](const SingboxInstance& s) { return s.name == session.instance; }))
            out.push_back(session);
    return out;
}

Status Daemon::resume_reconciler()
{
    auto checkpoint = store_.checkpoint();
    if (!checkpoint) return checkpoint.error();
    auto open_sessions = store_.sessions(/*active_only=*/true);
    if (!open_sessions) return open_sessions.error();
    reconciler_ = std::make_unique<Reconciler>(checkpoint.value(), address_sessions(open_sessions.value()));
    return ok();
}

// Each server resumes from its checkpoint, committed with the usage it
// accounts for: a restart of the agent neither loses nor repeats bytes.
Status Daemon::start_singbox(const std::vector<Session>& open_sessions)
{
    auto checkpoints = store_.stats_checkpoints();
    if (!checkpoints) return checkpoints.error();
    for (const auto& instance : config_.singbox) {
        std::optional<StatsCheckpoint> checkpoint;
        if (auto found = checkpoints->find(instance.name); found != checkpoints->end()) checkpoint = found->second;
        std::vector<Session> open;
        for (const auto& session : open_sessions)
            if (session.instance == instance.name) open.push_back(session);
        spdlog::info("singbox {}: stats API {} every {} ms, {}", instance.name, instance.stats_api,
                     instance.interval.count(),
                     checkpoint ? "resuming from its checkpoint (" + std::to_string(open.size()) + " open sessions)"
                                : std::string("first reading is the baseline"));
        singbox_.push_back(std::make_unique<singbox::Server>(instance, std::move(checkpoint), std::move(open)));
    }
    return ok();
}

Daemon::SingboxChanges Daemon::plan_singbox(CycleCommit& commit)
{
    SingboxChanges changes;
    for (const auto& server : singbox_) {
        auto change = server->plan();
        if (!change) continue;
        if (change->baseline)
            spdlog::info("singbox {}: baseline of {} counters; bytes counted before vpnmeter watched are not billed",
                         change->instance, change->checkpoint.counters.size());
        if (change->restarted)
            spdlog::warn("singbox {}: the server restarted; its counters count from zero again", change->instance);
        // Added to the OpenVPN users' increments: users on both add up.
        std::map<std::string, Traffic> new_users;
        for (const auto& [user, traffic] : change->usage) {
            if (auto it = commit.user_usage.find(user); it != commit.user_usage.end()) it->second += traffic;
            else new_users[user] += traffic;
        }
        commit.user_usage.merge(std::move(new_users)); // one pass, not an insert each
        commit.stats_checkpoints[change->instance] = change->checkpoint;
        changes.emplace_back(server.get(), std::move(*change));
    }
    return changes;
}

// Quota states to each server's configured actions: its users with an open
// session, and those it blocked (whose counters the server may have
// dropped with them).
void Daemon::enforce_singbox(int64_t now)
{
    for (auto& server : singbox_) {
        if (!server->actions.configured()) continue;
        std::set<std::string> users = server->actions.blocked();
        for (const auto& [user, session] : server->ledger.open()) users.insert(user);
        std::map<std::string, singbox::Wanted> wanted;
        for (const auto& user : users) {
            const QuotaState state = quotas_->current_state(user, now);
            singbox::Wanted& want = wanted[user];
            want.state = to_string(state.state);
            if (state.block) {
                want.mode = singbox::Wanted::Mode::block;
            } else if (state.state == QuotaState::State::throttled) {
                want.mode = singbox::Wanted::Mode::throttle;
                want.download_bps = state.download_bps;
                want.upload_bps = state.upload_bps;
            }
        }
        server->actions.apply(wanted);
    }
}

void Daemon::on_link(LinkWatcher::Change change, const Link& link)
{
    auto known = attached_.find(link.ifindex);
    if (change == LinkWatcher::Change::Removed) {
        failed_.erase(link.ifindex);
        if (known == attached_.end()) return;
        spdlog::info("{} (ifindex {}) went away; its counts are kept, metering resumes when it is back", known->second,
                     link.ifindex);
        attached_.erase(known);
        return;
    }
    if (known != attached_.end() && known->second == link.name) return; // already metered
    if (!interface_selected(config_, link.name) || failed_.count(link.ifindex)) return;

    if (auto status = datapath_.attach(link.ifindex, link.name); !status) {
        // A device that vanished between the event and the attach is no news.
        if (status.error().code == ENODEV) return;
        spdlog::error("{}", status.error().message());
        failed_.insert(link.ifindex); // once per device, not on every link event
        return;
    }
    attached_[link.ifindex] = link.name;
    spdlog::info("metering {} (ifindex {})", link.name, link.ifindex);
}

Interfaces Daemon::interfaces() const
{
    Interfaces out;
    if (auto registry = maps_.links())
        for (const auto& [ifindex, link] : registry.value()) out.name_by_ifindex[ifindex] = link.name;
    for (const Link& link : links_->links()) {
        out.ifindex_by_name[link.name] = link.ifindex;
        out.name_by_ifindex[link.ifindex] = link.name;
    }
    return out;
}

void Daemon::start_cycle(SteadyClock::time_point now)
{
    for (auto& source : sources_) source->request_refresh(now);
    answer_deadline_ = now + answer_timeout(config_);
}

bool Daemon::cycle_answered(SteadyClock::time_point now) const
{
    if (now >= *answer_deadline_) return true;
    for (const auto& source : sources_)
        if (!source->refreshed()) return false;
    return true;
}

Status Daemon::finish_cycle()
{
    const auto began = SteadyClock::now();
    answer_deadline_.reset();
    auto counters = collector_->collect();
    if (!counters) {
        spdlog::error("collect: {}", counters.error().message());
        metrics_->count_error("collect");
        metrics_->publish_errors();
        return ok();
    }
    ConnectedSessions connected;
    for (const auto& source : sources_) {
        // Not counted before the first commit: the sources are still connecting.
        if (!source->refreshed()) { // silent this cycle: its sessions stay as they were
            if (ready_) metrics_->count_error("source");
            continue;
        }
        if (auto list = source->sessions()) connected[source->instance()] = std::move(*list);
        else if (ready_) metrics_->count_error("source"); // unreachable, or its answer was unusable
    }
    const int64_t now = static_cast<int64_t>(std::time(nullptr));
    const Interfaces devices = interfaces();
    // The store begins the commit on a thread of its own once the users'
    // usage is final: it writes their buckets while this thread plans the
    // quotas (their records go in next), then works out the sessions that
    // came or went (the rest goes in last). At 100,000 clients each of these
    // took ten milliseconds or more.
    CycleCommit commit;
    StoreFailure failure = StoreFailure::none;
    BackgroundCommit committing; // if this unwinds, it refuses what is missing: nothing is written
    SingboxChanges singbox_changes;
    auto usage_final = [&] {
        singbox_changes = plan_singbox(commit); // Sing-Box users' increments join (their sessions below)
        committing.start(store_, commit, &failure);
        quotas_->plan(commit, now);
        committing.quotas_planned(true);
    };
    reconciler_->plan(counters.value(), connected, devices, now, commit, usage_final);
    for (const auto& [server, change] : singbox_changes)
        commit.sessions.insert(commit.sessions.end(), change.sessions.begin(), change.sessions.end());
    if (!identity_committed_) commit.identity = identity_;
    committing.rest_planned(true);

    auto staged = metrics_->stage(commit);
    // When what the quotas change can be put back (no alert fired), they and
    // the reconciler take the commit already, while the store finishes it
    // (much of that is waiting for the disk), and put it back if it fails;
    // the kernel keys and the quota gauges as they will be after it are
    // worked out meanwhile (the gauges not when a Sing-Box session closes:
    // its user leaves the ledger's open sessions only once it is accepted).
    auto tentative = accept_side_by_side_tentatively(*reconciler_, *quotas_, commit, now);
    std::optional<UserGauges> gauges;
    if (tentative) {
        reconciler_->keys_by_user(devices);
        if (!singbox_session_closes(singbox_changes)) gauges = quotas_->gauges(connected_users(), now);
    }
    if (auto status = committing.wait(); !status) {
        // Nothing was written; the kernel keeps counting and the next cycle
        // reads these bytes again. A reconciler that took sessions coming
        // or going starts again from the store, as after a restart.
        if (tentative && !undo(*reconciler_, *quotas_, std::move(*tentative))) {
            if (auto resumed = resume_reconciler(); !resumed)
                return Error{"after a failed commit, resume from the store: " + resumed.error().message()};
        }
        metrics_->discard(std::move(staged));
        note_commit_failure(status.error(), failure);
        metrics_->count_store_commit_error(to_string(failure));
        metrics_->publish_errors();
        update_status(std::nullopt);
        return ok();
    }
    if (commit_failing_)
        spdlog::info("store: commits succeed again after {} failed cycles; this one holds every byte since the last "
                     "good one, nothing was lost",
                     failed_commits_);
    commit_failing_ = false;
    failed_commits_ = 0;
    identity_committed_ = true;
    if (!tentative) accept_side_by_side(*reconciler_, *quotas_, commit, now);
    for (const auto& [server, change] : singbox_changes) server->accept(change);
    quotas_->enforce(reconciler_->keys_by_user(devices), now);
    enforce_singbox(now);
    for (const auto& user : quotas_->take_disconnects())
        for (auto& source : sources_) source->disconnect(user);
    ready_ = true;
    const size_t entries = counters->snapshot.clients.size();
    collector_->accept(std::move(counters.value()));
    metrics_->confirm(commit, std::move(staged));
    metrics_->observe_cycle(SteadyClock::now() - began);
    publish_metrics(devices, now, std::move(gauges));
    update_status(now);

    ++cycles_;
    Traffic moved;
    for (const auto& [user, traffic] : commit.user_usage) moved += traffic;
    for (const auto& session : commit.sessions) {
        if (!session.active()) spdlog::info("session {} of {} ended: up {}, down {}", session.id, session.user,
                                            human_bytes(session.usage.upload.bytes),
                                            human_bytes(session.usage.download.bytes));
    }
    spdlog::debug("cycle {}: {} client entries, {} sessions active, +{} up, +{} down", cycles_, entries,
                  reconciler_->active().size(), human_bytes(moved.upload.bytes), human_bytes(moved.download.bytes));
    // Said when it fills and when it has room again, not every cycle.
    const bool map_full = entries >= maps_.max_clients();
    if (map_full && !client_map_full_)
        spdlog::warn("client map is full ({} entries): new clients are counted as unattributed; raise bpf.max_clients",
                     maps_.max_clients());
    else if (!map_full && client_map_full_)
        spdlog::info("client map has room again ({} of {} entries)", entries, maps_.max_clients());
    client_map_full_ = map_full;
    // The hour just over into its day and month: a write once an hour,
    // after the cycle rather than in its commit.
    if (auto status = store_.roll_up(now); !status) {
        spdlog::warn("store roll-up: {}", status.error().message());
        metrics_->count_error("store_roll_up");
    }
    if (cycles_ % 3600 == 1) {
        if (auto status = store_.prune(now); !status) {
            spdlog::warn("store prune: {}", status.error().message());
            metrics_->count_error("store_prune");
        }
    }
    return ok();
}

// Said once when commits start failing, then every kCommitFailureReminder
// while they go on, not every cycle.
void Daemon::note_commit_failure(const Error& error, StoreFailure failure)
{
    const auto now = SteadyClock::now();
    ++failed_commits_;
    std::string advice;
    if (failure == StoreFailure::map_full)
        advice = " (raise storage.map_size, then SIGHUP)";
    else if (failure == StoreFailure::disk_full)
        advice = " (free space on the file system of " + config_.storage_path + ")";
    if (!commit_failing_) {
        spdlog::error("store: {}{}; counting continues in the kernel, retrying every cycle", error.message(), advice);
        commit_failing_ = true;
        commit_failing_since_ = now;
        next_commit_reminder_ = now + kCommitFailureReminder;
    } else if (now >= next_commit_reminder_) {
        spdlog::error("store: commits still failing after {} s ({} cycles, {}): {}{}; nothing is lost while the kernel "
                      "counts",
                      std::chrono::duration_cast<std::chrono::seconds>(now - commit_failing_since_).count(),
                      failed_commits_, to_string(failure), error.message(), advice);
        next_commit_reminder_ = now + kCommitFailureReminder;
    }
}

// The client counters start from the store's totals: every session of a
// user, closed ones included, adds up to the user's usage buckets.
Status Daemon::start_metrics()
{
    metrics_ =
        std::make_unique<MetricsRecorder>(config_.metrics, VPNMETER_VERSION, std::make_shared<MetricsExporter>());
    auto sessions = store_.sessions();
    if (!sessions) return sessions.error();
    auto unattributed = store_.unattributed();
    if (!unattributed) return unattributed.error();
    metrics_->load(sessions.value(), unattributed.value());
    metrics_->publish({}); // the store's totals until the first cycle
    return ok();
}

std::vector<std::string_view> Daemon::connected_users() const
{
    // In name order as each source lists them: merged, not sorted (a set of
    // 100,000 names cost ~50 ms, a sort ~10 ms).
    std::vector<std::string_view> connected = reconciler_->users();
    for (const auto& server : singbox_) {
        const auto merged_from = static_cast<std::ptrdiff_t>(connected.size());
        for (const auto& [user, session] : server->ledger.open()) connected.push_back(user);
        std::inplace_merge(connected.begin(), connected.begin() + merged_from, connected.end());
    }
    return connected;
}

// After a committed cycle: what /metrics shows until the next one.
void Daemon::publish_metrics(const Interfaces& devices, int64_t now,
                             std::optional<UserGauges> gauges)
{
    LiveMetrics live;
    live.interfaces = interface_totals(collector_->last(), devices);
    if (!enforcer_) {
        live.drops.emplace();
    } else if (auto drops = enforcer_->read_drops()) {
        live.drops = drops_by_interface(drops.value(), devices);
    } else {
        spdlog::debug("metrics: {}", drops.error().message());
        metrics_->count_error("read_drops");
    }
    std::vector<std::string> instances;
    for (const auto& instance : config_.openvpn) instances.push_back(instance.name);
    live.sessions_active = sessions_by_instance(reconciler_->sessions_by_instance(), instances);
    for (const auto& server : singbox_) {
        live.sessions_active[server->ledger.instance()] = server->ledger.open().size();
        const auto health = server->poller.health();
        live.singbox[server->ledger.instance()] = {health.up, health.failures, server->restarts};
    }
    live.quotas = gauges ? std::move(*gauges) : quotas_->gauges(connected_users(), now);
    {
        std::lock_guard lock(status_mutex_);
        status_.users_blocked = std::count_if(live.quotas.begin(), live.quotas.end(), [](const auto& user) {
            return user.second.state == QuotaState::State::blocked || user.second.state == QuotaState::State::expired;
        });
        status_.users_throttled = std::count_if(live.quotas.begin(), live.quotas.end(), [](const auto& user) {
            return user.second.state == QuotaState::State::throttled;
        });
    }
    live.maps["clients"] = {collector_->last().clients.size(), maps_.max_clients()}; // vpnmeter_clients
    std::error_code error;
    const auto size = std::filesystem::file_size(config_.storage_path + "/data.mdb", error);
    if (!error) live.store_size_bytes = size;
    live.alerts = quotas_->alerts_sent();
    live.webhook_failures = quotas_->webhook_failures();
    metrics_->publish(std::move(live));
}

// What GET /v1/status shows: the devices `interfaces` selects (attached or
// not), each source's state, and the store.
void Daemon::update_status(std::optional<int64_t> committed_at)
{
    std::vector<InterfaceStatus> devices;
    for (const Link& link : links_->links()) {
        if (!interface_selected(config_, link.name)) continue;
        auto it = attached_.find(link.ifindex);
        devices.push_back({link.name, link.ifindex, it != attached_.end() && it->second == link.name});
    }
    std::vector<SourceStatus> sources;
    for (const auto& source : sources_) sources.push_back(source->status());
    for (const auto& server : singbox_) {
        const auto health = server->poller.health();
        sources.push_back({"singbox", server->ledger.instance(), health.up, health.last_ok,
                           health.up || health.error.empty() ? std::nullopt : std::optional(health.error)});
    }
    std::error_code error;
    const auto size = std::filesystem::file_size(config_.storage_path + "/data.mdb", error);

    std::lock_guard lock(status_mutex_);
    status_.interfaces = std::move(devices);
    status_.sources = std::move(sources);
    if (!error) status_.store_size_bytes = size;
    if (committed_at) status_.last_commit = committed_at;
}

// SIGHUP: the new file is checked whole first; a bad one changes nothing.
// Quotas, API tokens, the interface list and the interval apply at once; sources, the
// pin path, the store and the HTTP address need a restart (said so).
void Daemon::reload()
{
    systemd::notify_reloading();
    Config fresh;
    try {
        fresh = load_config(config_.source);
    } catch (const ConfigError& e) {
        spdlog::error("reload rejected, the running configuration stays: {}", e.what());
        systemd::notify_ready(std::string("reload rejected: ") + e.what());
        return;
    }
    if (fresh.pin_path != config_.pin_path || fresh.storage_path != config_.storage_path ||
        fresh.http_listen != config_.http_listen || fresh.openvpn.size() != config_.openvpn.size() ||
        fresh.singbox.size() != config_.singbox.size() || fresh.metrics != config_.metrics)
        spdlog::warn("reload: bpf.pin_path, storage.path, http.listen, openvpn, singbox and metrics changes need a "
                     "restart");
    config_.interfaces = fresh.interfaces;
    config_.collect_interval = fresh.collect_interval;
    config_.quotas = fresh.quotas;
    quotas_->reload(fresh.quotas);
    if (fresh.storage_map_size != config_.storage_map_size) {
        store_.set_max_map_size(fresh.storage_map_size);
        spdlog::info("reload: storage.map_size is now {} (the map is {} now)", human_bytes(fresh.storage_map_size),
                     human_bytes(store_.map_size()));
        config_.storage_map_size = fresh.storage_map_size;
    }
    config_.http_tokens = fresh.http_tokens;
    if (auth_) {
        auth_->replace_tokens(fresh.http_tokens); // a revoked token stops working now
        if (fresh.http_tokens.empty() && !http::is_loopback_listen(config_.http_listen))
            spdlog::warn("reload: http.tokens is empty: the API on {} is open to anyone who reaches it",
                         config_.http_listen);
    }
    for (const Link& link : links_->links()) on_link(LinkWatcher::Change::Added, link);
    spdlog::info("reloaded {}", config_.source);
    systemd::notify_ready("reloaded " + config_.source);
}

Status Daemon::run()
{
    sigset_t signals = daemon_signals();
    if (sigprocmask(SIG_BLOCK, &signals, nullptr) != 0) return os_error("block signals");
    UniqueFd signal_fd(signalfd(-1, &signals, SFD_CLOEXEC));
    if (!signal_fd.valid()) return os_error("signalfd");

    spdlog::info("collecting every {} ms; maps pinned under {}; store {}", config_.collect_interval.count(),
                 config_.pin_path, config_.storage_path);
    auto next_cycle = SteadyClock::now();
    bool client_event = false;
    for (;;) {
        auto now = SteadyClock::now();
        for (auto& source : sources_) source->tick(now);
        if (!answer_deadline_ && (now >= next_cycle || client_event)) {
            start_cycle(now);
            client_event = false;
            if (now >= next_cycle) next_cycle = std::max(next_cycle + config_.collect_interval, now);
        }
        if (answer_deadline_ && cycle_answered(now))
            if (auto status = finish_cycle(); !status) return status;

        std::vector<pollfd> fds = {{signal_fd.get(), POLLIN, 0}, {links_->fd(), POLLIN, 0}};
        for (const auto& source : sources_) fds.push_back({source->fd(), source->events(), 0});
        auto wake = answer_deadline_ ? std::min(*answer_deadline_, next_cycle) : next_cycle;
        wake = std::min(wake, now + std::chrono::milliseconds(250)); // source timers (reconnects)
        const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(wake - now).count();
        if (poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(wait, 0))) < 0 && errno != EINTR)
            return os_error("poll");

        now = SteadyClock::now();
        for (size_t i = 0; i < sources_.size(); ++i) {
            if (fds[2 + i].revents) sources_[i]->on_ready(fds[2 + i].revents, now);
            client_event = sources_[i]->take_client_event() || client_event;
        }
        if (fds[1].revents & POLLIN) {
            if (auto status = links_->process_events(); !status) spdlog::warn("{}", status.error().message());
        }
        if (fds[0].revents & POLLIN) {
            signalfd_siginfo info{};
            if (read(signal_fd.get(), &info, sizeof info) != sizeof info) continue;
            if (info.ssi_signo == SIGHUP) {
                reload();
                continue;
            }
            systemd::notify_stopping();
            if (!answer_deadline_) start_cycle(SteadyClock::now());
            if (auto status = finish_cycle(); !status) return status; // the latest numbers into the store before leaving
            spdlog::info("stopping; programs stay attached and counting (vpnmeterd --detach removes them)");
            return ok();
        }
    }
}

} // namespace vpnmeter
