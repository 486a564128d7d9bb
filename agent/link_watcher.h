// Network devices, from rtnetlink: the current set and changes as they happen.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "result.h"

struct nl_cache_mngr;
struct nl_cache;
struct nl_object;

namespace vpnmeter {

struct Link {
    uint32_t ifindex = 0;
    std::string name;
};

// Keeps a libnl link cache in sync with kernel events. Uses netlink only (no
// /sys/class/net), so it sees the devices of the network namespace the
// process is in, also when entered with `nsenter --net` alone.
class LinkWatcher {
public:
    enum class Change { Added, Removed };
    using Callback = std::function<void(Change, const Link&)>;

    // `on_change` runs from process_events() for every link added (or
    // renamed) and removed.
    static Result<std::unique_ptr<LinkWatcher>> open(Callback on_change);
    ~LinkWatcher();

    std::vector<Link> links() const;
    int fd() const; // poll() it for readability, then call process_events()
    Status process_events();

private:
    LinkWatcher() = default;
    static void on_cache_change(nl_cache*, nl_object* obj, int action, void* self);
    Callback on_change_;
    nl_cache_mngr* manager_ = nullptr;
    nl_cache* cache_ = nullptr; // owned by manager_
};

} // namespace vpnmeter
