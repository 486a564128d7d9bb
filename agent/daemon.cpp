#include "daemon.h"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>

#include <chrono>

#include <spdlog/spdlog.h>

#include "format.h"
#include "unique_fd.h"

namespace vpnmeter {

using Clock = std::chrono::steady_clock;

Daemon::Daemon(Config config, Datapath datapath, PinnedMaps maps)
    : config_(std::move(config)), datapath_(std::move(datapath)), maps_(std::move(maps)), collector_(maps_)
{
}

Result<std::unique_ptr<Daemon>> Daemon::start(Config config)
{
    auto datapath = Datapath::load({config.pin_path, config.max_clients});
    if (!datapath) return datapath.error();
    auto maps = PinnedMaps::open(config.pin_path);
    if (!maps) return maps.error();
    std::unique_ptr<Daemon> daemon(new Daemon(std::move(config), std::move(datapath.value()), std::move(maps.value())));

    auto watcher = LinkWatcher::open([d = daemon.get()](auto change, const Link& link) { d->on_link(change, link); });
    if (!watcher) return watcher.error();
    daemon->links_ = std::move(watcher.value());
    for (const Link& link : daemon->links_->links()) daemon->on_link(LinkWatcher::Change::Added, link);
    if (daemon->attached_.empty())
        spdlog::warn("no device matches interfaces {} yet; waiting for one to appear",
                     fmt::join(daemon->config_.interfaces, ", "));
    return daemon;
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

void Daemon::collect_once()
{
    auto cycle = collector_.collect();
    if (!cycle) {
        spdlog::error("collect: {}", cycle.error().message());
        return;
    }
    ++cycles_;
    Traffic moved;
    for (const auto& [key, traffic] : cycle->delta.clients) moved += traffic;
    spdlog::debug("cycle {}: {} client entries, {} active, +{} up, +{} down", cycles_, cycle->snapshot.clients.size(),
                  cycle->delta.clients.size(), human_bytes(moved.upload.bytes), human_bytes(moved.download.bytes));
    if (cycle->snapshot.clients.size() >= maps_.max_clients())
        spdlog::warn("client map is full ({} entries): new clients are counted as unattributed; raise bpf.max_clients",
                     maps_.max_clients());
}

Status Daemon::run()
{
    sigset_t signals;
    sigemptyset(&signals);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&signals, sig);
    if (sigprocmask(SIG_BLOCK, &signals, nullptr) != 0) return os_error("block signals");
    UniqueFd signal_fd(signalfd(-1, &signals, SFD_CLOEXEC));
    if (!signal_fd.valid()) return os_error("signalfd");

    spdlog::info("collecting every {} ms; maps pinned under {}", config_.collect_interval.count(), config_.pin_path);
    auto next = Clock::now();
    for (;;) {
        const auto now = Clock::now();
        if (now >= next) {
            collect_once();
            next += config_.collect_interval;
            if (next <= now) next = now + config_.collect_interval; // fell behind: do not burst
        }
        const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(next - Clock::now()).count();
        pollfd fds[] = {{signal_fd.get(), POLLIN, 0}, {links_->fd(), POLLIN, 0}};
        if (poll(fds, 2, static_cast<int>(std::max<int64_t>(wait, 0))) < 0 && errno != EINTR) return os_error("poll");
        if (fds[0].revents & POLLIN) {
            signalfd_siginfo info{};
            if (read(signal_fd.get(), &info, sizeof info) == sizeof info) {
                if (info.ssi_signo == SIGHUP) {
                    spdlog::info("SIGHUP: configuration reload is not supported yet; restart to apply changes");
                } else {
                    collect_once(); // the latest numbers for whoever reads the log
                    spdlog::info("stopping; programs stay attached and counting (vpnmeterd --detach removes them)");
                    return ok();
                }
            }
        }
        if (fds[1].revents & POLLIN) {
            if (auto status = links_->process_events(); !status) spdlog::warn("{}", status.error().message());
        }
    }
}

} // namespace vpnmeter
