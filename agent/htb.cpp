#include "htb.h"

#include <linux/pkt_sched.h>

#include <algorithm>
#include <memory>

#include <netlink/errno.h>
#include <netlink/netlink.h>
#include <netlink/route/class.h>
#include <netlink/route/link.h>
#include <netlink/route/qdisc.h>
#include <netlink/route/qdisc/htb.h>
#include <netlink/route/tc.h>
#include <spdlog/spdlog.h>

#include "bpf_maps.h"

namespace vpnmeter {
namespace {

struct QdiscDeleter {
    void operator()(rtnl_qdisc *q) const { rtnl_qdisc_put(q); }
};
struct ClassDeleter {
    void operator()(rtnl_class *c) const { rtnl_class_put(c); }
};
struct LinkDeleter {
    void operator()(rtnl_link *l) const { rtnl_link_put(l); }
};
using Qdisc = std::unique_ptr<rtnl_qdisc, QdiscDeleter>;
using Class = std::unique_ptr<rtnl_class, ClassDeleter>;
using Link = std::unique_ptr<rtnl_link, LinkDeleter>;

constexpr uint32_t kMaxQuantum = 200'000; // what HTB itself clamps to (with a warning)

std::string handle_text(uint32_t handle)
{
    char text[32];
    return rtnl_tc_handle2str(handle, text, sizeof text);
}

struct RootQdisc {
    bool present = false; // none listed: the device has the kernel's default
    uint32_t handle = 0;
    std::string kind;

    bool ours() const { return present && handle == kHtbHandle && kind == "htb"; }
    // The kernel's own default (pfifo_fast, noqueue, mq, fq_codel ...) has
    // handle 0; anything configured by tc or an agent has a handle.
    bool kernel_default() const { return !present || handle == 0; }
};

Result<RootQdisc> root_qdisc(nl_sock *sock, uint32_t ifindex)
{
    nl_cache *raw = nullptr;
    if (int err = rtnl_qdisc_alloc_cache(sock, &raw); err < 0) return nl_error("list qdiscs", err);
    NlCache cache(raw);
    RootQdisc root;
    for (nl_object *obj = nl_cache_get_first(raw); obj; obj = nl_cache_get_next(obj)) {
        rtnl_tc *tc = TC_CAST(obj);
        if (static_cast<uint32_t>(rtnl_tc_get_ifindex(tc)) != ifindex || rtnl_tc_get_parent(tc) != TC_H_ROOT) continue;
        const char *kind = rtnl_tc_get_kind(tc);
        root = {true, rtnl_tc_get_handle(tc), kind ? kind : ""};
    }
    return root;
}

Status delete_root(nl_sock *sock, uint32_t ifindex)
{
    Qdisc qdisc(rtnl_qdisc_alloc());
    if (!qdisc) return Error{"allocate qdisc", ENOMEM};
    rtnl_tc_set_ifindex(TC_CAST(qdisc.get()), static_cast<int>(ifindex));
    rtnl_tc_set_parent(TC_CAST(qdisc.get()), TC_H_ROOT);
    rtnl_tc_set_handle(TC_CAST(qdisc.get()), kHtbHandle);
    if (int err = rtnl_tc_set_kind(TC_CAST(qdisc.get()), "htb"); err < 0) return nl_error("set qdisc kind", err);
    if (int err = rtnl_qdisc_delete(sock, qdisc.get()); err < 0 && err != -NLE_OBJ_NOTFOUND)
        return nl_error("delete HTB root qdisc " + handle_text(kHtbHandle), err);
    return ok();
}

} // namespace

uint32_t htb_burst_bytes(uint64_t rate_bps, uint32_t mtu)
{
    const uint64_t millisecond = rate_bps / 8 / 1000;
    return static_cast<uint32_t>(std::min<uint64_t>(std::max<uint64_t>(millisecond + mtu, 2ull * mtu), UINT32_MAX));
}

Result<HtbShaper> HtbShaper::attach(uint32_t ifindex, PinnedMaps *registry)
{
    HtbShaper shaper;
    shaper.ifindex_ = ifindex;
    auto sock = open_route_socket();
    if (!sock) return sock.error();
    shaper.sock_ = std::move(sock.value());

    rtnl_link *raw_link = nullptr;
    if (int err = rtnl_link_get_kernel(shaper.sock_.get(), static_cast<int>(ifindex), nullptr, &raw_link); err < 0)
        return nl_error("look up ifindex " + std::to_string(ifindex), err);
    Link link(raw_link);
    shaper.ifname_ = rtnl_link_get_name(link.get()) ? rtnl_link_get_name(link.get()) : "";
    shaper.mtu_ = std::max(rtnl_link_get_mtu(link.get()), 576u);

    auto root = root_qdisc(shaper.sock_.get(), ifindex);
    if (!root) return root.error();
    if (root->ours()) {
        if (auto loaded = shaper.load_classes(); !loaded) return loaded.error();
    } else if (!root->kernel_default()) {
        return Error{shaper.ifname_ + " has a root qdisc configured by someone else (" + root->kind + ", handle " +
                     handle_text(root->handle) + "): vpnmeter shapes with an HTB root of its own (handle " +
                     handle_text(kHtbHandle) + ") and does not replace it; remove it (tc qdisc del dev " +
                     shaper.ifname_ + " root) or do not shape on this device"};
    } else {
        Qdisc qdisc(rtnl_qdisc_alloc());
        if (!qdisc) return Error{"allocate qdisc", ENOMEM};
        rtnl_tc *tc = TC_CAST(qdisc.get());
        rtnl_tc_set_ifindex(tc, static_cast<int>(ifindex));
        rtnl_tc_set_parent(tc, TC_H_ROOT);
        rtnl_tc_set_handle(tc, kHtbHandle);
        if (int err = rtnl_tc_set_kind(tc, "htb"); err < 0) return nl_error("set qdisc kind", err);
        rtnl_htb_set_defcls(qdisc.get(), kHtbDefaultMinor); // the minor: the major is the qdisc's
        rtnl_htb_set_rate2quantum(qdisc.get(), 10);
        // EXCL: if someone put a root qdisc there since we looked, fail rather than replace it.
        if (int err = rtnl_qdisc_add(shaper.sock_.get(), qdisc.get(), NLM_F_CREATE | NLM_F_EXCL); err < 0)
            return nl_error("add HTB root qdisc to " + shaper.ifname_, err);
        shaper.created_ = true;
        spdlog::info("{}: added HTB root qdisc {} for shaping", shaper.ifname_, handle_text(kHtbHandle));
    }
    // The default class, at line rate, is (re)stated on every attach: a
    // qdisc without it would hold unshaped traffic back.
    if (auto put = shaper.put_class(kHtbDefaultMinor, kHtbLineRateBps); !put) {
        if (shaper.created_) (void)delete_root(shaper.sock_.get(), ifindex);
        return put.error();
    }
    if (registry) {
        auto links = registry->links();
        if (!links) return links.error();
        LinkRecord record{shaper.ifname_, 0};
        if (auto it = links->find(ifindex); it != links->end() && it->second.name == shaper.ifname_)
            record = it->second;
        record.flags |= VPNMETER_LINK_CREATED_HTB;
        if (auto put = registry->put_link(ifindex, record); !put) return put.error();
    }
    return shaper;
}

Status HtbShaper::load_classes()
{
    nl_cache *raw = nullptr;
    if (int err = rtnl_class_alloc_cache(sock_.get(), static_cast<int>(ifindex_), &raw); err < 0)
        return nl_error("list classes of " + ifname_, err);
    NlCache cache(raw);
    for (nl_object *obj = nl_cache_get_first(raw); obj; obj = nl_cache_get_next(obj)) {
        rtnl_tc *tc = TC_CAST(obj);
        const uint32_t handle = rtnl_tc_get_handle(tc);
        if (TC_H_MAJ(handle) != kHtbHandle || TC_H_MIN(handle) == kHtbDefaultMinor) continue;
        uint64_t rate = 0; // bytes/s
        if (rtnl_htb_get_rate64(reinterpret_cast<rtnl_class *>(obj), &rate) < 0) continue;
        classes_[static_cast<uint16_t>(TC_H_MIN(handle))] = rate * 8;
    }
    return ok();
}

Status HtbShaper::put_class(uint16_t minor, uint64_t rate_bps)
{
    const std::string what = "class " + handle_text(htb_classid(minor)) + " on " + ifname_;
    Class cls(rtnl_class_alloc());
    if (!cls) return Error{"allocate class", ENOMEM};
    rtnl_tc *tc = TC_CAST(cls.get());
    rtnl_tc_set_ifindex(tc, static_cast<int>(ifindex_));
    rtnl_tc_set_parent(tc, kHtbHandle);
    rtnl_tc_set_handle(tc, htb_classid(minor));
    if (int err = rtnl_tc_set_kind(tc, "htb"); err < 0) return nl_error("set class kind", err);
    rtnl_tc_set_mtu(tc, mtu_);
    const uint64_t bytes_per_second = rate_bps / 8;
    const uint32_t burst = htb_burst_bytes(rate_bps, mtu_);
    const auto quantum = static_cast<uint32_t>(std::clamp<uint64_t>(bytes_per_second / 10, mtu_, kMaxQuantum));
    for (int err : {rtnl_htb_set_rate64(cls.get(), bytes_per_second), rtnl_htb_set_ceil64(cls.get(), bytes_per_second),
                    rtnl_htb_set_rbuffer(cls.get(), burst), rtnl_htb_set_cbuffer(cls.get(), burst),
                    rtnl_htb_set_quantum(cls.get(), quantum)})
        if (err < 0) return nl_error("set up " + what, err);
    // CREATE without EXCL: the kernel creates the class, or changes it.
    if (int err = rtnl_class_add(sock_.get(), cls.get(), NLM_F_CREATE); err < 0)
        return nl_error("add or change " + what, err);
    return ok();
}

Result<uint32_t> HtbShaper::set_class(uint16_t minor, uint64_t rate_bps)
{
    if (minor < kHtbFirstShapedMinor)
        return Error{"HTB class minor " + std::to_string(minor) + " is reserved (shaped classes start at " +
                     std::to_string(kHtbFirstShapedMinor) + ")"};
    if (rate_bps < 8000) return Error{"HTB class rate " + std::to_string(rate_bps) + " bit/s is below 8 kbit/s"};
    if (auto it = classes_.find(minor); it != classes_.end() && it->second == rate_bps) return htb_classid(minor);
    if (auto put = put_class(minor, rate_bps); !put) return put.error();
    classes_[minor] = rate_bps;
    return htb_classid(minor);
}

Status HtbShaper::remove_class(uint16_t minor)
{
    if (minor < kHtbFirstShapedMinor) return Error{"HTB class minor " + std::to_string(minor) + " is reserved"};
    Class cls(rtnl_class_alloc());
    if (!cls) return Error{"allocate class", ENOMEM};
    rtnl_tc_set_ifindex(TC_CAST(cls.get()), static_cast<int>(ifindex_));
    rtnl_tc_set_parent(TC_CAST(cls.get()), kHtbHandle);
    rtnl_tc_set_handle(TC_CAST(cls.get()), htb_classid(minor));
    if (int err = rtnl_class_delete(sock_.get(), cls.get()); err < 0 && err != -NLE_OBJ_NOTFOUND)
        return nl_error("delete class " + handle_text(htb_classid(minor)) + " on " + ifname_, err);
    classes_.erase(minor);
    return ok();
}

Status HtbShaper::remove()
{
    auto removed = remove_htb_root(sock_.get(), ifindex_);
    if (!removed) return removed.error();
    classes_.clear();
    return ok();
}

Result<bool> remove_htb_root(nl_sock *sock, uint32_t ifindex)
{
    auto root = root_qdisc(sock, ifindex);
    if (!root) return root.error();
    if (!root->ours()) return false; // gone already, or someone else's since
    if (auto deleted = delete_root(sock, ifindex); !deleted) return deleted.error();
    return true;
}

} // namespace vpnmeter
