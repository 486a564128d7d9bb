// Enforcement, the mechanism: per-address policies, per-user budgets and
// upload policers in the pinned maps, and the drops the datapath counted.
// Who gets which policy is the quota engine's business; this only writes it
// down where bpf/policy.bpf.h reads it.
#pragma once

#include <compare>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include <vpnmeter/bpf_types.h>

#include "counters.h"
#include "result.h"
#include "unique_fd.h"

namespace vpnmeter {

// The policy of one client address (struct vpnmeter_policy).
struct PolicyEntry {
    uint32_t flags = 0;       // VPNMETER_POLICY_*
    uint32_t user_slot = 0;   // BUDGET_* and POLICED: the user's budget and bucket
    uint32_t classid = 0;     // SHAPED: htb_classid(minor) of an HtbShaper class
    uint64_t rate_bps = 0;    // POLICED: upload rate, >= kMinPolicerRateBps
    uint64_t burst_bytes = 0; // POLICED: bucket depth; 0 = policer_burst_bytes(rate_bps)

    auto operator<=>(const PolicyEntry &) const = default;
    static PolicyEntry from_bpf(const vpnmeter_policy &policy);
    vpnmeter_policy to_bpf() const; // zeroed padding included
};

enum class ExhaustedAction : uint32_t {
    block = VPNMETER_EXHAUSTED_BLOCK,       // drop, reason quota
    throttle = VPNMETER_EXHAUSTED_THROTTLE, // exhausted_classid / exhausted_rate_bps
};

// A user's budget (struct vpnmeter_budget).
struct BudgetEntry {
    int64_t remaining_bytes = 0;
    ExhaustedAction exhausted_action = ExhaustedAction::block;
    uint32_t exhausted_classid = 0;     // throttle: download class; 0 keeps the policy's
    uint64_t exhausted_rate_bps = 0;    // throttle: upload rate; 0 keeps the policy's
    uint64_t exhausted_burst_bytes = 0; // 0 = policer_burst_bytes(exhausted_rate_bps)

    auto operator<=>(const BudgetEntry &) const = default;
};

// What the datapath dropped for one client address, summed over CPUs.
struct ClientDrops {
    Traffic block;   // VPNMETER_DROP_BLOCK
    Traffic quota;   // VPNMETER_DROP_QUOTA
    Traffic policer; // VPNMETER_DROP_POLICER

    auto operator<=>(const ClientDrops &) const = default;
    Traffic total() const;
};

ClientDrops sum_per_cpu(std::span<const vpnmeter_client_drops> per_cpu);

inline constexpr uint64_t kMinPolicerRateBps = 8000;
inline constexpr uint64_t kMaxPolicerBurstBytes = 1ull << 30; // the datapath's bound

// Default bucket depth for an upload policer at rate_bps: 250 ms of
// traffic, at least 64 KiB. A policer drops the tail of a TCP window, which
// TCP often recovers by a retransmission timeout (200 ms at least): with a
// smaller bucket TCP stays below the rate (measured on veth at 2 Mbit/s:
// 16 KiB gave 0.7 Mbit/s, 32 KiB 1.4, 64 KiB 2.0). A GSO packet (veth, GRO)
// is up to 64 KiB whole. The cost: a burst of that size passes at line rate.
uint64_t policer_burst_bytes(uint64_t rate_bps);

// The enforcement maps an agent pinned under one pin path. Move-only.
class Enforcer {
  public:
    // Fails with a message naming the path when nothing is pinned there.
    static Result<Enforcer> open(const std::string &pin_path);

    Enforcer(Enforcer &&) noexcept;
    Enforcer &operator=(Enforcer &&) noexcept;
    ~Enforcer();

    // Installs or replaces the policy of one address: effective for the
    // next packet. Checks the entry (flags known, slot in range, class and
    // rate given where the flags need them).
    Status set_policy(const ClientKey &key, const PolicyEntry &policy);
    // Back to counting only; no policy there is fine.
    Status clear_policy(const ClientKey &key);
    Result<std::optional<PolicyEntry>> policy(const ClientKey &key) const;
    Result<std::map<ClientKey, PolicyEntry>> policies() const;

    // Replaces a user's budget. The datapath may subtract from it at the
    // same moment: use add_budget() to top up while traffic flows.
    Status set_budget(uint32_t slot, const BudgetEntry &budget);
    // Adds (or with a negative value takes) bytes, atomically with the
    // datapath's subtractions. Returns the new remaining bytes.
    Result<int64_t> add_budget(uint32_t slot, int64_t bytes);
    Result<BudgetEntry> budget(uint32_t slot) const;

    // A full bucket for the user's upload policer (e.g. on a new rate).
    Status reset_policer(uint32_t slot);
    // Budget zeroed and bucket reset: the slot is ready for another user.
    Status release_slot(uint32_t slot);
    // The slots the current policies refer to (to rebuild a UserSlots).
    Result<std::set<uint32_t>> slots_in_use() const;

    // Drops per client address and reason, per-CPU values summed.
    Result<std::map<ClientKey, ClientDrops>> read_drops() const;

    uint32_t max_users() const { return max_users_; }

  private:
    Enforcer() = default;
    Status check_slot(uint32_t slot) const;
    Status set_active(bool active);
    vpnmeter_budget *budget_at(uint32_t slot) const;

    UniqueFd policy_, budgets_, policers_, drops_, state_;
    void *budgets_mem_ = nullptr; // the budget array, mmap()ed
    size_t budgets_len_ = 0;
    uint32_t max_users_ = 0;
    int ncpus_ = 0;
};

// Which user holds which slot: in memory, smallest free slot first. After a
// restart the quota engine adopts what it knew (its own store, checked
// against Enforcer::slots_in_use()).
class UserSlots {
  public:
    explicit UserSlots(uint32_t capacity = VPNMETER_MAX_USERS) : capacity_(capacity) {}

    // The user's slot, taking the smallest free one for a new user;
    // nothing when every slot is taken.
    std::optional<uint32_t> acquire(const std::string &user);
    std::optional<uint32_t> find(const std::string &user) const;
    // Frees the user's slot and returns it (to Enforcer::release_slot()).
    std::optional<uint32_t> release(const std::string &user);
    // Records a known assignment; fails if the slot is out of range or held
    // by someone else.
    Status adopt(const std::string &user, uint32_t slot);
    size_t size() const { return by_user_.size(); }
    uint32_t capacity() const { return capacity_; }
    bool full() const { return free_.empty() && next_ >= capacity_; } // acquire() would find none
    // Holders in name order.
    const std::map<std::string, uint32_t, std::less<>> &by_user() const { return by_user_; }

  private:
    uint32_t capacity_;
    uint32_t next_ = 0;       // slots from here on were never handed out
    std::set<uint32_t> free_; // released (or skipped by adopt) below next_
    std::map<std::string, uint32_t, std::less<>> by_user_;
    std::set<uint32_t> taken_;
};

} // namespace vpnmeter
