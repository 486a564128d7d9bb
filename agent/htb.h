// Download shaping: an HTB root qdisc of our own on a device's egress, over
// libnl-route (no tc binary).
//
// Layout on the device (handle major VPNMETER_HTB_MAJOR, "7670"):
//   7670:    htb root, default class 7670:1
//   7670:1   unshaped traffic, at line rate (kHtbLineRateBps)
//   7670:N   one class per shaping pipe, rate = ceil = its rate; N >= 2
// Every class hangs off the root directly: no borrowing, each is a hard
// limit. The egress program steers a shaped client's download into its
// class by setting skb->priority to the class id (HTB's first classifier).
// Whatever shares one class shares its rate: for a limit per user, give each
// user a class of its own (e.g. minor = 2 + user slot).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <vpnmeter/bpf_types.h>

#include "netlink.h"
#include "result.h"

namespace vpnmeter {

class PinnedMaps;

inline constexpr uint32_t kHtbHandle = uint32_t{VPNMETER_HTB_MAJOR} << 16; // 7670:
inline constexpr uint16_t kHtbDefaultMinor = 1;                            // 7670:1
inline constexpr uint16_t kHtbFirstShapedMinor = 2;
inline constexpr uint64_t kHtbLineRateBps = 10'000'000'000; // the default class: 10 Gbit/s

constexpr uint32_t htb_classid(uint16_t minor)
{
    return kHtbHandle | minor;
}

// Bucket depth of a class at rate_bps on a device with this MTU: a
// millisecond of traffic (HTB's timers and a scheduler tick are about
// that), never less than two full packets so a class can always send.
uint32_t htb_burst_bytes(uint64_t rate_bps, uint32_t mtu);

// Owns our HTB root on one device (in the caller's network namespace).
// Move-only; the qdisc stays when this object goes away (shaping goes on
// across an agent restart, like the tc filters): remove() or
// `vpnmeterd --detach` takes it off.
class HtbShaper {
  public:
    // Puts our HTB root (and its default class) on the device, or adopts
    // the one an earlier run put there, with its classes. A root qdisc the
    // kernel made (handle 0: pfifo_fast, noqueue, mq, fq_codel ...) is
    // replaced; one someone configured (any other handle, or not HTB) is
    // left alone and this fails saying so. When registry is given, the
    // device is recorded there as VPNMETER_LINK_CREATED_HTB, so that
    // detach_all() removes the qdisc.
    static Result<HtbShaper> attach(uint32_t ifindex, PinnedMaps *registry);

    HtbShaper(HtbShaper &&) noexcept = default;
    HtbShaper &operator=(HtbShaper &&) noexcept = default;

    // Class 7670:minor at rate = ceil = rate_bps, created or changed;
    // nothing is sent when it already has that rate. Returns its class id
    // (what VPNMETER_POLICY_SHAPED / exhausted_classid take).
    Result<uint32_t> set_class(uint16_t minor, uint64_t rate_bps);
    // Deletes class 7670:minor; one that is not there is fine.
    Status remove_class(uint16_t minor);
    // Takes our root qdisc (and so every class) off the device.
    Status remove();

    // minor -> rate in bit/s of the shaped classes (not the default one).
    const std::map<uint16_t, uint64_t> &classes() const { return classes_; }
    uint32_t ifindex() const { return ifindex_; }
    const std::string &ifname() const { return ifname_; }
    bool created() const { return created_; } // this object put the qdisc there

  private:
    HtbShaper() = default;
    Status put_class(uint16_t minor, uint64_t rate_bps);
    Status load_classes();

    NlSocket sock_;
    uint32_t ifindex_ = 0;
    std::string ifname_;
    uint32_t mtu_ = 1500;
    bool created_ = false;
    std::map<uint16_t, uint64_t> classes_;
};

// For detach_all(): removes the root qdisc of ifindex if it is our HTB
// (handle 7670:, kind htb). Returns whether it removed one.
Result<bool> remove_htb_root(nl_sock *sock, uint32_t ifindex);

} // namespace vpnmeter
