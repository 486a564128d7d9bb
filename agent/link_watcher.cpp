#include "link_watcher.h"

#include <netlink/cache.h>
#include <netlink/route/link.h>

#include "netlink.h"

namespace vpnmeter {
namespace {

Link to_link(nl_object* obj)
{
    auto* link = reinterpret_cast<rtnl_link*>(obj);
    const char* name = rtnl_link_get_name(link);
    return {static_cast<uint32_t>(rtnl_link_get_ifindex(link)), name ? name : ""};
}

} // namespace

Result<std::unique_ptr<LinkWatcher>> LinkWatcher::open(Callback on_change)
{
    std::unique_ptr<LinkWatcher> watcher(new LinkWatcher());
    watcher->on_change_ = std::move(on_change);
    if (int err = nl_cache_mngr_alloc(nullptr, NETLINK_ROUTE, 0, &watcher->manager_); err < 0)
        return nl_error("watch network devices (rtnetlink)", err);
    if (int err = nl_cache_mngr_add(watcher->manager_, "route/link", &LinkWatcher::on_cache_change,
                                    watcher.get(), &watcher->cache_);
        err < 0)
        return nl_error("list network devices (rtnetlink)", err);
    return watcher;
}

LinkWatcher::~LinkWatcher()
{
    if (manager_) nl_cache_mngr_free(manager_);
}

void LinkWatcher::on_cache_change(nl_cache*, nl_object* obj, int action, void* self)
{
    auto* watcher = static_cast<LinkWatcher*>(self);
    if (action == NL_ACT_NEW || action == NL_ACT_CHANGE) watcher->on_change_(Change::Added, to_link(obj));
    else if (action == NL_ACT_DEL) watcher->on_change_(Change::Removed, to_link(obj));
}

std::vector<Link> LinkWatcher::links() const
{
    std::vector<Link> out;
    for (nl_object* obj = nl_cache_get_first(cache_); obj; obj = nl_cache_get_next(obj))
        out.push_back(to_link(obj));
    return out;
}

int LinkWatcher::fd() const { return nl_cache_mngr_get_fd(manager_); }

Status LinkWatcher::process_events()
{
    if (int err = nl_cache_mngr_data_ready(manager_); err < 0) return nl_error("read rtnetlink events", err);
    return ok();
}

} // namespace vpnmeter
