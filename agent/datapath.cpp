#include "datapath.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/pkt_sched.h>
#include <linux/ethtool.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <vector>

#include <netlink/route/classifier.h>
#include <spdlog/spdlog.h>

#include "bpf_maps.h"
#include "bpffs.h"
#include "htb.h"
#include "meter.skel.h"
#include "netlink.h"

namespace vpnmeter {
namespace {

struct Hook {
    bpf_tc_attach_point point;
    uint32_t flag;
    const char* name;      // for messages
    const char* prog_name; // what our program is called in the kernel
};
constexpr Hook kHooks[] = {
    {BPF_TC_INGRESS, VPNMETER_LINK_INGRESS, "ingress", "meter_ingress"},
    {BPF_TC_EGRESS, VPNMETER_LINK_EGRESS, "egress", "meter_egress"},
};

// Capacity of an already pinned client map, 0 if none is pinned.
uint32_t pinned_capacity(const std::string& path)
{
    UniqueFd fd(bpf_obj_get(path.c_str()));
    if (!fd.valid()) return 0;
    bpf_map_info info{};
    uint32_t len = sizeof info;
    return bpf_obj_get_info_by_fd(fd.get(), &info, &len) == 0 ? info.max_entries : 0;
}

std::string prog_name_by_id(uint32_t id)
{
    UniqueFd fd(bpf_prog_get_fd_by_id(id));
    if (!fd.valid()) return {};
    bpf_prog_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd.get(), &info, &len)) return {};
    return info.name;
}

// Filters left on one clsact parent (ours already removed), or -1 if unknown.
int filters_on(nl_sock* sock, uint32_t ifindex, uint32_t parent)
{
    nl_cache* raw = nullptr;
    if (rtnl_cls_alloc_cache(sock, static_cast<int>(ifindex), parent, &raw) < 0) return -1;
    NlCache cache(raw);
    return nl_cache_nitems(cache.get());
}

// Removes our filter from one hook if it is there and it is ours.
Result<bool> detach_hook(uint32_t ifindex, const Hook& hook)
{
    LIBBPF_OPTS(bpf_tc_hook, tc_hook, .ifindex = static_cast<int>(ifindex), .attach_point = hook.point);
    LIBBPF_OPTS(bpf_tc_opts, query, .handle = kTcHandle, .priority = kTcPriority);
    if (int err = bpf_tc_query(&tc_hook, &query); err) {
        if (err == -ENOENT || err == -EINVAL) return false; // nothing of ours there
        return os_error(std::string("query tc ") + hook.name + " filter", err);
    }
    if (prog_name_by_id(query.prog_id) != hook.prog_name) return false; // someone else's filter
    LIBBPF_OPTS(bpf_tc_opts, remove, .handle = kTcHandle, .priority = kTcPriority);
    if (int err = bpf_tc_detach(&tc_hook, &remove); err)
        return os_error(std::string("detach tc ") + hook.name + " filter", err);
    return true;
}

// Whether the device takes GSO packets whole (TSO), or the kernel cuts them
// into segments for it (tun without offloads): then each segment is a
// packet with its own headers in the device's counters.
bool offloads_segmentation(const std::string& ifname)
{
    UniqueFd sock(socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    ifreq request{};
    ethtool_value value{};
    value.cmd = ETHTOOL_GTSO;
    std::strncpy(request.ifr_name, ifname.c_str(), IFNAMSIZ - 1);
    request.ifr_data = reinterpret_cast<char*>(&value);
    return sock.valid() && ioctl(sock.get(), SIOCETHTOOL, &request) == 0 && value.data;
}

int libbpf_log(enum libbpf_print_level level, const char* format, va_list args)
{
    static bool debug = false;
    if (!format) { // configuration call from route_libbpf_logs()
        debug = level == LIBBPF_DEBUG;
        return 0;
    }
    char line[1024];
    std::vsnprintf(line, sizeof line, format, args);
    std::string text(line);
    while (!text.empty() && text.back() == '\n') text.pop_back();
    // An existing clsact qdisc is fine (EEXIST), yet libbpf reports it.
    if (text.find("Exclusivity flag on") != std::string::npos) level = LIBBPF_DEBUG;
    if (level == LIBBPF_DEBUG && !debug) return 0;
    if (level == LIBBPF_WARN) spdlog::warn("libbpf: {}", text);
    else if (level == LIBBPF_INFO) spdlog::info("libbpf: {}", text);
    else spdlog::debug("libbpf: {}", text);
    return 0;
}

} // namespace

void route_libbpf_logs(bool debug)
{
    va_list none{};
    libbpf_log(debug ? LIBBPF_DEBUG : LIBBPF_INFO, nullptr, none);
    libbpf_set_print(libbpf_log);
}

void Datapath::SkeletonDeleter::operator()(meter_bpf* skel) const { meter_bpf__destroy(skel); }

Datapath::Datapath(Datapath&&) noexcept = default;
Datapath& Datapath::operator=(Datapath&&) noexcept = default;
Datapath::~Datapath() = default;

Result<Datapath> Datapath::load(const DatapathOptions& options)
{
    if (auto status = ensure_bpffs_dir(options.pin_path); !status) return status.error();

    Datapath dp;
    dp.pin_path_ = options.pin_path;
    dp.skel_.reset(meter_bpf__open());
    if (!dp.skel_) return os_error("open BPF skeleton");

    bpf_map* maps[] = {dp.skel_->maps.vpnmeter_clients,  dp.skel_->maps.vpnmeter_ifaces,
                       dp.skel_->maps.vpnmeter_ifaces_more, dp.skel_->maps.vpnmeter_links,
                       dp.skel_->maps.vpnmeter_policy,   dp.skel_->maps.vpnmeter_budgets,
                       dp.skel_->maps.vpnmeter_policers, dp.skel_->maps.vpnmeter_drops,
                       dp.skel_->maps.vpnmeter_policy_state};
    for (bpf_map* map : maps) {
        const std::string path = options.pin_path + "/" + bpf_map__name(map);
        if (int err = bpf_map__set_pin_path(map, path.c_str()); err) return os_error("set pin path " + path, err);
    }

    // A pinned map keeps the capacity it was made with: changing it means
    // recreating the map, which would lose the counts in it.
    dp.max_clients_ = options.max_clients;
    const uint32_t pinned = pinned_capacity(options.pin_path + "/" + kClientsMap);
    if (pinned && pinned != options.max_clients) {
        spdlog::warn("bpf.max_clients is {} but the pinned client map under {} holds {}; keeping {} so no counts "
                     "are lost (run `vpnmeterd --detach` to recreate it, which resets the counters)",
                     options.max_clients, options.pin_path, pinned, pinned);
        dp.max_clients_ = pinned;
    }
    // Policies and drops are per client address too.
    for (bpf_map* map : {dp.skel_->maps.vpnmeter_clients, dp.skel_->maps.vpnmeter_policy, dp.skel_->maps.vpnmeter_drops})
        if (int err = bpf_map__set_max_entries(map, dp.max_clients_); err)
            return os_error(std::string("set capacity of ") + bpf_map__name(map), err);

    if (int err = meter_bpf__load(dp.skel_.get()); err)
        return os_error("load BPF programs (if the maps pinned under " + options.pin_path +
                            " come from another vpnmeter version, run `vpnmeterd --detach` first)",
                        err);
    return dp;
}

Status Datapath::attach(uint32_t ifindex, const std::string& ifname)
{
    const int links_fd = bpf_map__fd(skel_->maps.vpnmeter_links);
    vpnmeter_link link{};
    const bool known = bpf_map_lookup_elem(links_fd, &ifindex, &link) == 0 &&
                       strncmp(link.name, ifname.c_str(), sizeof link.name) == 0;
    uint32_t flags = known ? (link.flags & (VPNMETER_LINK_CREATED_CLSACT | VPNMETER_LINK_CREATED_HTB)) : 0;

    if (!offloads_segmentation(ifname)) flags |= VPNMETER_LINK_SEGMENTS;

    const int prog_fds[] = {bpf_program__fd(skel_->progs.meter_ingress), bpf_program__fd(skel_->progs.meter_egress)};
    for (size_t i = 0; i < std::size(kHooks); ++i) {
        const Hook& hook = kHooks[i];
        LIBBPF_OPTS(bpf_tc_hook, tc_hook, .ifindex = static_cast<int>(ifindex), .attach_point = hook.point);
        if (i == 0) { // one clsact qdisc holds both hooks
            int err = bpf_tc_hook_create(&tc_hook);
            if (err == 0) flags |= VPNMETER_LINK_CREATED_CLSACT;
            else if (err != -EEXIST) return os_error("create clsact qdisc on " + ifname, err);
        }
        LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = prog_fds[i], .flags = BPF_TC_F_REPLACE, .handle = kTcHandle,
                    .priority = kTcPriority);
        if (int err = bpf_tc_attach(&tc_hook, &opts); err)
            return os_error(std::string("attach tc ") + hook.name + " on " + ifname, err);
        flags |= hook.flag;
    }

    std::memset(&link, 0, sizeof link);
    std::strncpy(link.name, ifname.c_str(), sizeof link.name - 1);
    link.flags = flags;
    if (bpf_map_update_elem(links_fd, &ifindex, &link, BPF_ANY))
        return os_error("record attachment of " + ifname + " in " + kLinksMap);
    return ok();
}

int Datapath::ingress_prog_fd() const { return bpf_program__fd(skel_->progs.meter_ingress); }
int Datapath::egress_prog_fd() const { return bpf_program__fd(skel_->progs.meter_egress); }

Result<std::string> detach_all(const std::string& pin_path)
{
    auto maps = PinnedMaps::open(pin_path);
    if (!maps) return maps.error();
    auto links = maps->links();
    if (!links) return links.error();
    auto sock = open_route_socket();
    if (!sock) return sock.error();

    std::string summary;
    for (const auto& [ifindex, link] : links.value()) {
        char name[IF_NAMESIZE] = {};
        // An ifindex now held by another device is not ours to touch.
        if (!if_indextoname(ifindex, name) || link.name != name) continue;
        // A record made only for an HTB qdisc (HtbShaper) has no hooks to look for.
        const bool hooked = link.flags & (VPNMETER_LINK_INGRESS | VPNMETER_LINK_EGRESS | VPNMETER_LINK_CREATED_CLSACT);
        for (const Hook& hook : kHooks) {
            if (!hooked) break;
            auto removed = detach_hook(ifindex, hook);
            if (!removed) return Error{link.name + ": " + removed.error().message()};
            if (removed.value()) summary += "detached " + std::string(hook.name) + " from " + link.name + "\n";
        }
        if (link.flags & VPNMETER_LINK_CREATED_CLSACT) {
            const int in = filters_on(sock->get(), ifindex, TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS));
            const int out = filters_on(sock->get(), ifindex, TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS));
            if (in == 0 && out == 0) { // -1 is "could not tell": keep the qdisc
                LIBBPF_OPTS(bpf_tc_hook, qdisc, .ifindex = static_cast<int>(ifindex),
                            .attach_point = static_cast<bpf_tc_attach_point>(BPF_TC_INGRESS | BPF_TC_EGRESS));
                if (int err = bpf_tc_hook_destroy(&qdisc); err && err != -ENOENT)
                    return os_error("remove clsact qdisc from " + link.name, err);
                summary += "removed clsact qdisc from " + link.name + "\n";
            } else {
                summary += "kept clsact qdisc on " + link.name + " (other filters use it)\n";
            }
        }
        if (link.flags & VPNMETER_LINK_CREATED_HTB) {
            auto removed = remove_htb_root(sock->get(), ifindex);
            if (!removed) return Error{link.name + ": " + removed.error().message()};
            if (removed.value()) summary += "removed HTB shaping qdisc from " + link.name + "\n";
        }
    }
    for (const char* name : {kClientsMap, kIfacesMap, kIfacesMoreMap, kLinksMap, kPolicyMap, kBudgetsMap,
                             kPolicersMap, kDropsMap, kPolicyStateMap}) {
        const std::string path = pin_path + "/" + name;
        if (unlink(path.c_str()) != 0 && errno != ENOENT) return os_error("unpin " + path);
    }
    summary += "unpinned maps under " + pin_path + "\n";
    std::error_code ec;
    std::filesystem::remove(pin_path, ec); // only if empty: other files are not ours
    return summary;
}

} // namespace vpnmeter
