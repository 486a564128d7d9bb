// Enforcement under BPF_PROG_TEST_RUN (needs root): the real programs,
// policies and budgets written through Enforcer, counters read back
// through PinnedMaps and Enforcer::read_drops(), the paths the agent uses.
//
// Every case checks the interface invariant on what was read:
// sum(clients) + unattributed + dropped == total, per direction, and that a
// dropped packet is never a client's usage.
//
// The policer's clock cannot be simulated under a test run; instead many
// packets run back to back (repeat), far faster than a small rate refills,
// so only the bucket's depth passes. The live test (tests/e2e/
// test_enforcement_live.py) checks the rate with real TCP.
#include <catch2/catch.hpp>

#include "pin_guard.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/pkt_sched.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <netlink/errno.h>
#include <netlink/netlink.h>
#include <netlink/route/class.h>
#include <netlink/route/link.h>
#include <netlink/route/link/veth.h>
#include <netlink/route/qdisc.h>
#include <netlink/route/qdisc/htb.h>
#include <netlink/route/tc.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>

#include "bpf_maps.h"
#include "counters.h"
#include "datapath.h"
#include "enforcer.h"
#include "htb.h"
#include "netlink.h"
#include "packets.h"

using namespace vpnmeter;
using namespace vpnmeter::test;
using namespace vpnmeter::testing;

namespace {

constexpr uint32_t kLo = 1;
constexpr uint32_t kPass = 0xffffffff; // TC_ACT_UNSPEC as the test run's u32 retval
constexpr uint32_t kShot = 2;          // TC_ACT_SHOT
constexpr uint32_t kClassA = htb_classid(2), kClassB = htb_classid(3);

std::string show(const Count &c)
{
    return std::to_string(c.packets) + " pkts/" + std::to_string(c.bytes) + " B";
}
std::string show(const Traffic &t)
{
    return "up " + show(t.upload) + ", down " + show(t.download);
}

// Unpins (and detaches) whatever a test case made, also after a failure.

struct Run {
    uint32_t retval = 0;
    uint32_t priority = 0; // skb->priority after the program
};

// The programs with their maps pinned under a private path, an Enforcer on
// those maps, and helpers to run frames and read what was counted.
class Lab {
  public:
    explicit Lab(uint32_t max_clients = 64)
    {
        auto dp = Datapath::load({guard_.path(), max_clients});
        if (!dp) FAIL("Datapath::load: " << dp.error().message());
        dp_.emplace(std::move(dp.value()));
        auto enforcer = Enforcer::open(guard_.path());
        if (!enforcer) FAIL("Enforcer::open: " << enforcer.error().message());
        enforcer_.emplace(std::move(enforcer.value()));
    }

    Enforcer &enforcer() { return *enforcer_; }
    const std::string &pin_path() const { return guard_.path(); }

    // One test run of `repeat` runs; the verdict and priority are the last run's.
    Run run(bool upload, const Frame &frame, uint32_t repeat = 1, uint32_t priority_in = 0, uint32_t ifindex = kLo)
    {
        __sk_buff ctx_in{}, ctx_out{};
        ctx_in.ifindex = ifindex;
        ctx_in.priority = priority_in;
        Frame out(frame.size() + 256);
        LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame.data(), .data_out = out.data(),
                    .data_size_in = static_cast<uint32_t>(frame.size()),
                    .data_size_out = static_cast<uint32_t>(out.size()), .ctx_in = &ctx_in, .ctx_out = &ctx_out,
                    .ctx_size_in = sizeof ctx_in, .ctx_size_out = sizeof ctx_out, .repeat = static_cast<int>(repeat));
        const int fd = upload ? dp_->ingress_prog_fd() : dp_->egress_prog_fd();
        const int err = bpf_prog_test_run_opts(fd, &opts);
        INFO("bpf_prog_test_run_opts: " << (err ? std::strerror(-err) : "ok"));
        REQUIRE(err == 0);
        CHECK(opts.data_size_out == frame.size());
        out.resize(opts.data_size_out);
        CHECK(out == frame); // enforcement never rewrites a packet
        return {opts.retval, ctx_out.priority};
    }
    Run upload(const Frame &f, uint32_t repeat = 1, uint32_t priority = 0) { return run(true, f, repeat, priority); }
    Run download(const Frame &f, uint32_t repeat = 1, uint32_t priority = 0) { return run(false, f, repeat, priority); }

    // Usage of one client (zero when it has no entry).
    Traffic usage(const std::string &address, uint32_t ifindex = kLo)
    {
        const CounterSnapshot snap = read();
        auto it = snap.clients.find(ClientKey::parse(ifindex, address));
        return it != snap.clients.end() ? it->second : Traffic{};
    }

    ClientDrops drops(const std::string &address, uint32_t ifindex = kLo)
    {
        auto all = enforcer_->read_drops();
        if (!all) FAIL("read_drops: " << all.error().message());
        auto it = all->find(ClientKey::parse(ifindex, address));
        return it != all->end() ? it->second : ClientDrops{};
    }

    CounterSnapshot read()
    {
        auto maps = PinnedMaps::open(guard_.path());
        if (!maps) FAIL("PinnedMaps::open: " << maps.error().message());
        auto snap = maps->read();
        if (!snap) FAIL("PinnedMaps::read: " << snap.error().message());
        return std::move(snap.value());
    }

    // sum(clients) + unattributed + dropped == total on every interface, and
    // the interface's dropped == the sum of the clients' drops.
    void check_invariant()
    {
        const CounterSnapshot snap = read();
        auto all_drops = enforcer_->read_drops();
        REQUIRE(all_drops);
        std::map<uint32_t, Traffic> clients, dropped;
        for (const auto &[key, t] : snap.clients)
            clients[key.ifindex] += t;
        for (const auto &[key, d] : all_drops.value())
            dropped[key.ifindex] += d.total();
        for (const auto &[ifindex, iface] : snap.interfaces) {
            Traffic sum = clients[ifindex];
            sum += iface.unattributed;
            sum += iface.dropped;
            INFO("if" << ifindex << ": clients " << show(clients[ifindex]) << "; unattributed "
                      << show(iface.unattributed) << "; dropped " << show(iface.dropped) << "; total "
                      << show(iface.total));
            CHECK(show(sum) == show(iface.total));
            CHECK(show(iface.dropped) == show(dropped[ifindex]));
        }
    }

    uint32_t active_flag()
    {
        UniqueFd fd(bpf_obj_get((guard_.path() + "/" + kPolicyStateMap).c_str()));
        REQUIRE(fd.valid());
        const uint32_t zero = 0;
        vpnmeter_policy_state state{};
        REQUIRE(bpf_map_lookup_elem(fd.get(), &zero, &state) == 0);
        return state.active;
    }

    void must(const Status &status)
    {
        if (!status) FAIL(status.error().message());
    }

  private:
    PinGuard guard_{unique_pin_path("vpnmeter-policy-test")}; // first: destroyed last
    std::optional<Datapath> dp_;
    std::optional<Enforcer> enforcer_;
};

ClientKey lo(const std::string &address)
{
    return ClientKey::parse(kLo, address);
}

PolicyEntry policy(uint32_t flags, uint32_t slot = 0)
{
    PolicyEntry p;
    p.flags = flags;
    p.user_slot = slot;
    return p;
}

BudgetEntry budget(int64_t bytes, ExhaustedAction action = ExhaustedAction::block)
{
    BudgetEntry b;
    b.remaining_bytes = bytes;
    b.exhausted_action = action;
    return b;
}

} // namespace

// ====================================================================== tests

TEST_CASE("block drops both directions at once, counted by reason and never as usage", "[bpf][policy]")
{
    Lab lab;
    const Frame up = ipv4_udp("10.8.0.2", "192.0.2.1", 300), down = ipv4_udp("192.0.2.1", "10.8.0.2", 500);
    const Frame up6 = ipv6_udp("fd00:8::2", "2001:db8::1", 200);
    const Frame other = ipv4_udp("10.8.0.3", "192.0.2.1", 100);

    // Before: counted as usage.
    CHECK(lab.upload(up, 2).retval == kPass);
    CHECK(lab.active_flag() == 0);

    lab.must(lab.enforcer().set_policy(lo("10.8.0.2"), policy(VPNMETER_POLICY_BLOCK)));
    lab.must(lab.enforcer().set_policy(lo("fd00:8::2"), policy(VPNMETER_POLICY_BLOCK)));
    CHECK(lab.active_flag() == 1);
    CHECK(lab.upload(up, 5).retval == kShot);
    CHECK(lab.download(down, 3).retval == kShot);
    CHECK(lab.upload(up6, 4).retval == kShot);
    CHECK(lab.upload(other, 7).retval == kPass); // someone else: untouched

    CHECK(show(lab.usage("10.8.0.2")) == show(Traffic{{2, 600}, {}})); // only what passed before
    CHECK(show(lab.usage("fd00:8::2")) == show(Traffic{}));
    CHECK(show(lab.usage("10.8.0.3")) == show(Traffic{{7, 700}, {}}));
    const ClientDrops d = lab.drops("10.8.0.2");
    CHECK(show(d.block) == show(Traffic{{5, 1500}, {3, 1500}}));
    CHECK(show(d.quota) == show(Traffic{}));
    CHECK(show(d.policer) == show(Traffic{}));
    CHECK(show(lab.drops("fd00:8::2").block) == show(Traffic{{4, 800}, {}}));
    CHECK(show(lab.read().interfaces.at(kLo).dropped) == show(Traffic{{9, 2300}, {3, 1500}}));
    lab.check_invariant();

    // Cleared: counted again; the last policy gone turns the lookups off.
    lab.must(lab.enforcer().clear_policy(lo("10.8.0.2")));
    CHECK(lab.active_flag() == 1);
    lab.must(lab.enforcer().clear_policy(lo("fd00:8::2")));
    lab.must(lab.enforcer().clear_policy(lo("fd00:8::2"))); // twice is fine
    CHECK(lab.active_flag() == 0);
    CHECK(lab.download(down, 1).retval == kPass);
    CHECK(show(lab.usage("10.8.0.2")) == show(Traffic{{2, 600}, {1, 500}}));
    CHECK(show(lab.drops("10.8.0.2").block) == show(Traffic{{5, 1500}, {3, 1500}})); // drops stay
    lab.check_invariant();
}

TEST_CASE("a budget of B bytes passes floor(B/S) packets of S bytes, one more at most, then drops as quota",
          "[bpf][policy]")
{
    Lab lab;
    constexpr uint32_t kSlot = 7;
    constexpr size_t S = 300;
    const Frame up = ipv4_udp("10.8.0.2", "192.0.2.1", S), down = ipv4_udp("192.0.2.1", "10.8.0.2", S);

    for (int64_t B : {int64_t{10'000}, int64_t{9'900}, int64_t{1}}) {
        INFO("budget " << B << " bytes, " << S << "-byte packets");
        const Traffic before = lab.usage("10.8.0.2");
        const ClientDrops drops_before = lab.drops("10.8.0.2");
        lab.must(lab.enforcer().set_budget(kSlot, budget(B)));
        lab.must(lab.enforcer().set_policy(lo("10.8.0.2"), policy(VPNMETER_POLICY_BUDGET_UPLOAD, kSlot)));
        CHECK(lab.upload(up, 100).retval == kShot);

        const uint64_t passed = lab.usage("10.8.0.2").upload.packets - before.upload.packets;
        const uint64_t passed_bytes = lab.usage("10.8.0.2").upload.bytes - before.upload.bytes;
        const uint64_t floor = static_cast<uint64_t>(B) / S;
        CHECK(passed >= floor);
        CHECK(passed <= floor + 1);
        CHECK(passed_bytes == passed * S);
        CHECK(passed_bytes < static_cast<uint64_t>(B) + S); // overshoot: less than one packet
        // One CPU: exactly the packets that found bytes left, ceil(B/S).
        CHECK(passed == (static_cast<uint64_t>(B) + S - 1) / S);
        CHECK(lab.drops("10.8.0.2").quota.upload.packets - drops_before.quota.upload.packets == 100 - passed);
        auto left = lab.enforcer().budget(kSlot);
        REQUIRE(left);
        CHECK(left->remaining_bytes == B - static_cast<int64_t>(passed_bytes));

        // Upload only: download is not charged and not dropped.
        CHECK(lab.download(down, 3).retval == kPass);
        CHECK(lab.enforcer().budget(kSlot)->remaining_bytes == left->remaining_bytes);
    }

    // Both directions: download is now over budget too.
    lab.must(lab.enforcer().set_policy(lo("10.8.0.2"), policy(VPNMETER_POLICY_BUDGET, kSlot)));
    CHECK(lab.download(down, 2).retval == kShot);
    CHECK(lab.drops("10.8.0.2").quota.download.packets == 2);

    // A top-up while traffic flows: atomic, on top of the overshoot.
    const int64_t now = lab.enforcer().budget(kSlot)->remaining_bytes;
    auto topped = lab.enforcer().add_budget(kSlot, 3000);
    REQUIRE(topped);
    CHECK(topped.value() == now + 3000);
    const Traffic before = lab.usage("10.8.0.2");
    CHECK(lab.download(down, 50).retval == kShot);
    const uint64_t passed = lab.usage("10.8.0.2").download.packets - before.download.packets;
    CHECK(passed == static_cast<uint64_t>((now + 3000 + static_cast<int64_t>(S) - 1) / static_cast<int64_t>(S)));
    lab.check_invariant();
}

TEST_CASE("the addresses of one user share one budget", "[bpf][policy]")
{
    Lab lab;
    constexpr uint32_t kSlot = 3;
    lab.must(lab.enforcer().set_budget(kSlot, budget(1000)));
    for (const char *address : {"10.8.0.2", "fd00:8::2"})
        lab.must(lab.enforcer().set_policy(lo(address), policy(VPNMETER_POLICY_BUDGET, kSlot)));
    // Another user with its own budget is not affected.
    lab.must(lab.enforcer().set_budget(kSlot + 1, budget(1'000'000)));
    lab.must(lab.enforcer().set_policy(lo("10.8.0.9"), policy(VPNMETER_POLICY_BUDGET, kSlot + 1)));

    CHECK(lab.upload(ipv4_udp("10.8.0.2", "192.0.2.1", 400)).retval == kPass);      // 1000 -> 600
    CHECK(lab.download(ipv6_udp("2001:db8::1", "fd00:8::2", 400)).retval == kPass); // 600 -> 200
    CHECK(lab.download(ipv4_udp("192.0.2.1", "10.8.0.2", 400)).retval == kPass);    // 200 -> -200
    CHECK(lab.upload(ipv6_udp("fd00:8::2", "2001:db8::1", 100)).retval == kShot);   // used up
    CHECK(lab.upload(ipv4_udp("10.8.0.9", "192.0.2.1", 400), 10).retval == kPass);
    CHECK(lab.enforcer().budget(kSlot)->remaining_bytes == -200);
    CHECK(lab.enforcer().budget(kSlot + 1)->remaining_bytes == 1'000'000 - 4000);
    CHECK(show(lab.drops("fd00:8::2").quota) == show(Traffic{{1, 100}, {}}));
    lab.check_invariant();
}

TEST_CASE("a used-up budget with the throttle action steers into the throttle class instead of dropping",
          "[bpf][policy]")
{
    Lab lab;
    constexpr uint32_t kSlot = 0;
    BudgetEntry b = budget(1000, ExhaustedAction::throttle);
    b.exhausted_classid = kClassB;
    b.exhausted_rate_bps = 8000; // 1000 bytes/s upload once used up
    b.exhausted_burst_bytes = 1000;
    lab.must(lab.enforcer().set_budget(kSlot, b));
    PolicyEntry p = policy(VPNMETER_POLICY_BUDGET | VPNMETER_POLICY_SHAPED, kSlot);
    p.classid = kClassA;
    lab.must(lab.enforcer().set_policy(lo("10.8.0.2"), p));

    const Frame down = ipv4_udp("192.0.2.1", "10.8.0.2", 400), up = ipv4_udp("10.8.0.2", "192.0.2.1", 300);
    // Within budget: the policy's own class; upload is not policed at all.
    Run r = lab.download(down);
    CHECK(r.retval == kPass);
    CHECK(r.priority == kClassA);
    CHECK(lab.upload(up, 2).retval == kPass); // 600 -> 0: used up
    CHECK(lab.enforcer().budget(kSlot)->remaining_bytes == 0);

    // Used up: the throttle class, never a drop on download.
    for (int i = 0; i < 5; ++i) {
        r = lab.download(down, 10);
        CHECK(r.retval == kPass);
        CHECK(r.priority == kClassB);
    }
    // Upload at the throttle rate: the 1000-byte bucket passes 3 of 300 bytes.
    r = lab.upload(up, 50);
    CHECK(r.retval == kShot);
    const Traffic used = lab.usage("10.8.0.2");
    CHECK(show(used.download) == show(Count{51, 51 * 400}));
    CHECK(used.upload.packets >= 2 + 3);
    CHECK(used.upload.packets <= 2 + 4);
    const ClientDrops d = lab.drops("10.8.0.2");
    CHECK(d.policer.upload.packets == 2 + 50 - used.upload.packets);
    CHECK(show(d.quota) == show(Traffic{}));
    CHECK(lab.enforcer().budget(kSlot)->remaining_bytes == 0); // throttled traffic is not charged

    // Without a policy (or not shaped) the priority is left as it came.
    CHECK(lab.download(ipv4_udp("192.0.2.1", "10.8.0.7", 100), 1, 5).priority == 5);
    lab.check_invariant();
}

TEST_CASE("the upload policer passes the bucket's depth back to back, then drops as policer", "[bpf][policy]")
{
    Lab lab;
    constexpr uint32_t kSlot = 11;
    constexpr size_t S = 500;
    PolicyEntry p = policy(VPNMETER_POLICY_POLICED, kSlot);
    p.rate_bps = 8000; // 1000 bytes/s: 200 runs in well under a millisecond refill under a byte
    p.burst_bytes = 3000;
    lab.must(lab.enforcer().set_policy(lo("10.8.0.2"), p));
    lab.must(lab.enforcer().set_policy(lo("10.8.0.3"), p)); // same user: same bucket

    const Frame up = ipv4_udp("10.8.0.2", "192.0.2.1", S);
    CHECK(lab.upload(up, 200).retval == kShot);
    Traffic used = lab.usage("10.8.0.2");
    CHECK(used.upload.packets >= 3000 / S);
    CHECK(used.upload.packets <= 3000 / S + 1);
    CHECK(lab.drops("10.8.0.2").policer.upload.packets == 200 - used.upload.packets);

    // The bucket is the user's: the other address finds it empty.
    CHECK(lab.upload(ipv4_udp("10.8.0.3", "192.0.2.1", S), 5).retval == kShot);
    CHECK(lab.usage("10.8.0.3").upload.packets == 0);

    // Download is never policed (HTB shapes it instead).
    CHECK(lab.download(ipv4_udp("192.0.2.1", "10.8.0.2", 1400), 100).retval == kPass);

    // A reset bucket is full again.
    lab.must(lab.enforcer().reset_policer(kSlot));
    const uint64_t before = lab.usage("10.8.0.2").upload.packets;
    lab.upload(up, 200);
    const uint64_t again = lab.usage("10.8.0.2").upload.packets - before;
    CHECK(again >= 3000 / S);
    CHECK(again <= 3000 / S + 1);

    // A rate high enough for the burst to refill within the run passes all.
    p.rate_bps = 100'000'000'000ull;
    p.burst_bytes = 1'000'000;
    lab.must(lab.enforcer().set_policy(lo("10.8.0.4"), policy(0))); // a policy that does nothing
    lab.must(lab.enforcer().set_policy(lo("10.8.0.5"), [&] {
        auto q = p;
        q.user_slot = kSlot + 1;
        return q;
    }()));
    CHECK(lab.upload(ipv4_udp("10.8.0.5", "192.0.2.1", S), 1000).retval == kPass);
    CHECK(lab.usage("10.8.0.5").upload.packets == 1000);
    CHECK(lab.upload(ipv4_udp("10.8.0.4", "192.0.2.1", S), 10).retval == kPass);
    lab.check_invariant();
}

TEST_CASE("Enforcer refuses policies and budgets the datapath could not apply", "[bpf][policy][enforcer]")
{
    Lab lab;
    Enforcer &e = lab.enforcer();
    CHECK(e.max_users() == VPNMETER_MAX_USERS);
    CHECK_FALSE(e.set_policy(lo("10.8.0.2"), policy(1u << 20)));
    CHECK_FALSE(e.set_policy(lo("10.8.0.2"), policy(VPNMETER_POLICY_BUDGET_UPLOAD, VPNMETER_MAX_USERS)));
    CHECK_FALSE(e.set_policy(lo("10.8.0.2"), policy(VPNMETER_POLICY_SHAPED))); // no class
    PolicyEntry slow = policy(VPNMETER_POLICY_POLICED);
    slow.rate_bps = 100;
    CHECK_FALSE(e.set_policy(lo("10.8.0.2"), slow));
    CHECK_FALSE(e.set_budget(VPNMETER_MAX_USERS, budget(1)));
    CHECK(lab.active_flag() == 0); // nothing was written
    auto none = e.policy(lo("10.8.0.2"));
    REQUIRE(none);
    CHECK_FALSE(none->has_value());

    // The burst defaults from the rate; what is stored reads back.
    PolicyEntry policed = policy(VPNMETER_POLICY_POLICED | VPNMETER_POLICY_BUDGET_DOWNLOAD, 9);
    policed.rate_bps = 2'000'000;
    REQUIRE(e.set_policy(lo("10.8.0.2"), policed));
    auto stored = e.policy(lo("10.8.0.2"));
    REQUIRE(stored);
    REQUIRE(stored->has_value());
    CHECK((*stored)->burst_bytes == policer_burst_bytes(2'000'000));
    CHECK((*stored)->user_slot == 9);
    auto all = e.policies();
    REQUIRE(all);
    CHECK(all->size() == 1);
    auto slots = e.slots_in_use();
    REQUIRE(slots);
    CHECK(slots.value() == std::set<uint32_t>{9});

    BudgetEntry b = budget(123, ExhaustedAction::throttle);
    b.exhausted_rate_bps = 1'000'000;
    REQUIRE(e.set_budget(9, b));
    auto read = e.budget(9);
    REQUIRE(read);
    CHECK(read->remaining_bytes == 123);
    CHECK(read->exhausted_action == ExhaustedAction::throttle);
    CHECK(read->exhausted_burst_bytes == policer_burst_bytes(1'000'000));
    REQUIRE(e.release_slot(9));
    CHECK(e.budget(9)->remaining_bytes == 0);
    CHECK(e.budget(9)->exhausted_action == ExhaustedAction::block);
}

TEST_CASE("UserSlots hands out the smallest free slot and adopts known ones", "[policy][enforcer]")
{
    UserSlots slots(4);
    CHECK(slots.acquire("alice") == 0u);
    CHECK(slots.acquire("bob") == 1u);
    CHECK(slots.acquire("alice") == 0u); // same user, same slot
    CHECK(slots.release("alice") == 0u);
    CHECK_FALSE(slots.release("alice"));
    CHECK(slots.acquire("carol") == 0u); // the freed one first
    CHECK(slots.adopt("dave", 3));
    CHECK(slots.acquire("erin") == 2u);   // skipped by the adoption: free
    CHECK_FALSE(slots.acquire("frank"));  // full
    CHECK_FALSE(slots.adopt("frank", 1)); // bob's
    CHECK_FALSE(slots.adopt("bob", 2));   // bob holds 1
    CHECK(slots.adopt("bob", 1));         // what it has: fine
    CHECK_FALSE(slots.adopt("gina", 4));  // out of range
    CHECK(slots.size() == 4);
    CHECK(slots.find("dave") == 3u);
}

// ------------------------------------------------------------------ HTB shaping

namespace {

// A private network namespace for the calling thread, left on scope exit.
class PrivateNetns {
  public:
    PrivateNetns()
    {
        orig_ = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
        REQUIRE(orig_ >= 0);
        REQUIRE(unshare(CLONE_NEWNET) == 0);
    }
    PrivateNetns(const PrivateNetns &) = delete;
    PrivateNetns &operator=(const PrivateNetns &) = delete;
    ~PrivateNetns()
    {
        if (setns(orig_, CLONE_NEWNET) != 0) std::fprintf(stderr, "setns back: %s\n", std::strerror(errno));
        close(orig_);
    }

  private:
    int orig_ = -1;
};

struct QdiscView {
    std::string kind;
    uint32_t handle = 0;
};

// The root qdisc and the HTB classes (minor -> rate bit/s) of a device, read with libnl.
std::pair<std::optional<QdiscView>, std::map<uint16_t, uint64_t>> tc_state(uint32_t ifindex)
{
    auto sock = open_route_socket();
    REQUIRE(sock);
    std::optional<QdiscView> root;
    nl_cache *raw = nullptr;
    REQUIRE(rtnl_qdisc_alloc_cache(sock->get(), &raw) == 0);
    NlCache qdiscs(raw);
    for (nl_object *o = nl_cache_get_first(raw); o; o = nl_cache_get_next(o))
        if (static_cast<uint32_t>(rtnl_tc_get_ifindex(TC_CAST(o))) == ifindex &&
            rtnl_tc_get_parent(TC_CAST(o)) == TC_H_ROOT)
            root = QdiscView{rtnl_tc_get_kind(TC_CAST(o)) ? rtnl_tc_get_kind(TC_CAST(o)) : "",
                             rtnl_tc_get_handle(TC_CAST(o))};
    std::map<uint16_t, uint64_t> classes;
    raw = nullptr;
    REQUIRE(rtnl_class_alloc_cache(sock->get(), static_cast<int>(ifindex), &raw) == 0);
    NlCache cache(raw);
    for (nl_object *o = nl_cache_get_first(raw); o; o = nl_cache_get_next(o)) {
        uint64_t rate = 0;
        if (rtnl_htb_get_rate64(reinterpret_cast<rtnl_class *>(o), &rate) == 0)
            classes[static_cast<uint16_t>(TC_H_MIN(rtnl_tc_get_handle(TC_CAST(o))))] = rate * 8;
    }
    return {root, classes};
}

void set_up(const std::string &name)
{
    auto sock = open_route_socket();
    REQUIRE(sock);
    rtnl_link *link = nullptr;
    REQUIRE(rtnl_link_get_kernel(sock->get(), 0, name.c_str(), &link) == 0);
    rtnl_link *change = rtnl_link_alloc();
    rtnl_link_set_flags(change, IFF_UP);
    const int err = rtnl_link_change(sock->get(), link, change, 0);
    rtnl_link_put(change);
    rtnl_link_put(link);
    REQUIRE(err == 0);
}

} // namespace

TEST_CASE("HtbShaper puts its own HTB root on a device, manages classes idempotently, detach removes it",
          "[bpf][policy][htb]")
{
    PrivateNetns netns; // before the Lab: detach runs in the namespace
    auto sock = open_route_socket();
    REQUIRE(sock);
    REQUIRE(rtnl_link_veth_add(sock->get(), "vmhtb0", "vmhtb1", gettid()) == 0);
    const uint32_t dev = if_nametoindex("vmhtb0"), peer = if_nametoindex("vmhtb1");
    REQUIRE(dev != 0);
    set_up("vmhtb0");
    set_up("vmhtb1");
    Lab lab;
    auto maps = PinnedMaps::open(lab.pin_path());
    REQUIRE(maps);

    // The kernel's default root (noqueue on veth) is replaced.
    auto [before, no_classes] = tc_state(dev);
    CHECK((!before || before->handle == 0));
    {
        auto shaper = HtbShaper::attach(dev, &maps.value());
        if (!shaper) FAIL(shaper.error().message());
        CHECK(shaper->created());
        auto classid = shaper->set_class(2, 2'000'000);
        REQUIRE(classid);
        CHECK(classid.value() == kClassA);
        REQUIRE(shaper->set_class(2, 2'000'000)); // again: nothing changes
        REQUIRE(shaper->set_class(3, 5'000'000));
        REQUIRE(shaper->set_class(3, 3'000'000));     // changed in place
        CHECK_FALSE(shaper->set_class(1, 1'000'000)); // the default class is ours alone
        auto [root, classes] = tc_state(dev);
        REQUIRE(root);
        CHECK(root->kind == "htb");
        CHECK(root->handle == kHtbHandle);
        CHECK(classes == std::map<uint16_t, uint64_t>{{1, kHtbLineRateBps}, {2, 2'000'000}, {3, 3'000'000}});
        REQUIRE(shaper->remove_class(3));
        REQUIRE(shaper->remove_class(3)); // gone already: fine
        CHECK(tc_state(dev).second.count(3) == 0);
    }
    // A second attach (another run of the agent) adopts it with its classes.
    {
        auto again = HtbShaper::attach(dev, &maps.value());
        REQUIRE(again);
        CHECK_FALSE(again->created());
        CHECK(again->classes() == std::map<uint16_t, uint64_t>{{2, 2'000'000}});
    }
    auto links = maps->links();
    REQUIRE(links);
    REQUIRE(links->count(dev));
    CHECK((links->at(dev).flags & VPNMETER_LINK_CREATED_HTB));

    // Someone else's root qdisc is refused, named, and left alone.
    {
        rtnl_qdisc *q = rtnl_qdisc_alloc();
        rtnl_tc_set_ifindex(TC_CAST(q), static_cast<int>(peer));
        rtnl_tc_set_parent(TC_CAST(q), TC_H_ROOT);
        rtnl_tc_set_handle(TC_CAST(q), 0x10000);
        REQUIRE(rtnl_tc_set_kind(TC_CAST(q), "htb") == 0);
        REQUIRE(rtnl_qdisc_add(sock->get(), q, NLM_F_CREATE | NLM_F_EXCL) == 0);
        rtnl_qdisc_put(q);
        auto refused = HtbShaper::attach(peer, &maps.value());
        REQUIRE_FALSE(refused);
        INFO(refused.error().message());
        CHECK(refused.error().message().find("someone else") != std::string::npos);
        CHECK(tc_state(peer).first->handle == 0x10000u);
    }

    // detach_all removes our qdisc (the device goes back to its default), not the other one.
    auto summary = detach_all(lab.pin_path());
    REQUIRE(summary);
    CHECK(summary->find("removed HTB shaping qdisc from vmhtb0") != std::string::npos);
    auto [after, left] = tc_state(dev);
    CHECK((!after || after->handle == 0));
    CHECK(left.empty());
    CHECK(tc_state(peer).first->handle == 0x10000u);
}
