// vpnmeterd's run loop: attach to matching devices as they come and go, collect.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "collector.h"
#include "config.h"
#include "datapath.h"
#include "link_watcher.h"

namespace vpnmeter {

class Daemon {
public:
    // Loads and pins the datapath and attaches to the configured devices.
    // Fatal problems (no bpffs, no permission) come back as an Error.
    static Result<std::unique_ptr<Daemon>> start(Config config);

    // Until SIGTERM or SIGINT. The programs stay attached and the maps pinned.
    Status run();

private:
    Daemon(Config config, Datapath datapath, PinnedMaps maps);
    void on_link(LinkWatcher::Change change, const Link& link);
    void collect_once();

    Config config_;
    Datapath datapath_;
    PinnedMaps maps_;
    Collector collector_;
    std::unique_ptr<LinkWatcher> links_;
    std::map<uint32_t, std::string> attached_; // ifindex -> name
    std::set<uint32_t> failed_;                // attach failed: reported once
    uint64_t cycles_ = 0;
};

} // namespace vpnmeter
