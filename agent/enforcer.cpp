#include "enforcer.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "bpf_maps.h"

namespace vpnmeter {
namespace {

constexpr uint32_t kKnownFlags =
    VPNMETER_POLICY_BLOCK | VPNMETER_POLICY_BUDGET | VPNMETER_POLICY_SHAPED | VPNMETER_POLICY_POLICED;

Count to_count(const vpnmeter_count &c)
{
    return {c.packets, c.bytes};
}

Traffic to_traffic(const vpnmeter_count (&dir)[VPNMETER_DIRECTIONS])
{
    return {to_count(dir[VPNMETER_UPLOAD]), to_count(dir[VPNMETER_DOWNLOAD])};
}

std::string slot_text(uint32_t slot)
{
    return "user slot " + std::to_string(slot);
}

Result<bpf_map_info> map_info(int fd, const std::string &what)
{
    bpf_map_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len)) return os_error("query " + what);
    return info;
}

} // namespace

PolicyEntry PolicyEntry::from_bpf(const vpnmeter_policy &p)
{
    return {p.flags, p.user_slot, p.classid, p.rate_bps, p.burst_bytes};
}

vpnmeter_policy PolicyEntry::to_bpf() const
{
    vpnmeter_policy p;
    std::memset(&p, 0, sizeof p);
    p.flags = flags;
    p.user_slot = user_slot;
    p.classid = classid;
    p.rate_bps = rate_bps;
    p.burst_bytes = burst_bytes;
    return p;
}

Traffic ClientDrops::total() const
{
    Traffic sum = block;
    sum += quota;
    sum += policer;
    return sum;
}

ClientDrops sum_per_cpu(std::span<const vpnmeter_client_drops> per_cpu)
{
    ClientDrops sum;
    for (const auto &cpu : per_cpu) {
        sum.block += to_traffic(cpu.reason[VPNMETER_DROP_BLOCK]);
        sum.quota += to_traffic(cpu.reason[VPNMETER_DROP_QUOTA]);
        sum.policer += to_traffic(cpu.reason[VPNMETER_DROP_POLICER]);
    }
    return sum;
}

uint64_t policer_burst_bytes(uint64_t rate_bps)
{
    const uint64_t quarter_second = rate_bps / 8 / 4;
    return std::min(std::max<uint64_t>(quarter_second, 64 * 1024), kMaxPolicerBurstBytes);
}

// ---------------------------------------------------------------- Enforcer

Result<Enforcer> Enforcer::open(const std::string &pin_path)
{
    Enforcer e;
    e.ncpus_ = libbpf_num_possible_cpus();
    if (e.ncpus_ <= 0) return os_error("count possible CPUs", e.ncpus_);
    std::pair<UniqueFd *, const char *> pins[] = {{&e.policy_, kPolicyMap},
                                                  {&e.budgets_, kBudgetsMap},
                                                  {&e.policers_, kPolicersMap},
                                                  {&e.drops_, kDropsMap},
                                                  {&e.state_, kPolicyStateMap}};
    for (auto [fd, name] : pins) {
        auto opened = open_pinned_map(pin_path, name);
        if (!opened) return opened.error();
        *fd = std::move(opened.value());
    }

    const std::string budgets_path = pin_path + "/" + kBudgetsMap;
    auto info = map_info(e.budgets_.get(), budgets_path);
    if (!info) return info.error();
    if (info->value_size != sizeof(vpnmeter_budget) || !(info->map_flags & BPF_F_MMAPABLE))
        return Error{budgets_path + " has an incompatible layout (from another vpnmeter version?)"};
    e.max_users_ = info->max_entries;
    const auto page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    e.budgets_len_ = (sizeof(vpnmeter_budget) * e.max_users_ + page - 1) / page * page;
    void *mem = mmap(nullptr, e.budgets_len_, PROT_READ | PROT_WRITE, MAP_SHARED, e.budgets_.get(), 0);
    if (mem == MAP_FAILED) return os_error("mmap " + budgets_path);
    e.budgets_mem_ = mem;

    const std::pair<int, std::pair<const char *, uint32_t>> layouts[] = {
        {e.policy_.get(), {kPolicyMap, sizeof(vpnmeter_policy)}},
        {e.policers_.get(), {kPolicersMap, sizeof(vpnmeter_policer)}},
        {e.drops_.get(), {kDropsMap, sizeof(vpnmeter_client_drops)}},
        {e.state_.get(), {kPolicyStateMap, sizeof(vpnmeter_policy_state)}},
    };
    for (const auto &[fd, layout] : layouts) {
        const std::string path = pin_path + "/" + layout.first;
        auto i = map_info(fd, path);
        if (!i) return i.error();
        if (i->value_size != layout.second)
            return Error{path + " has an incompatible layout (from another vpnmeter version?)"};
    }
    return e;
}

Enforcer::Enforcer(Enforcer &&other) noexcept
    : policy_(std::move(other.policy_)), budgets_(std::move(other.budgets_)), policers_(std::move(other.policers_)),
      drops_(std::move(other.drops_)), state_(std::move(other.state_)),
      budgets_mem_(std::exchange(other.budgets_mem_, nullptr)), budgets_len_(std::exchange(other.budgets_len_, 0)),
      max_users_(other.max_users_), ncpus_(other.ncpus_)
{
}

Enforcer &Enforcer::operator=(Enforcer &&other) noexcept
{
    if (this != &other) {
        if (budgets_mem_) munmap(budgets_mem_, budgets_len_);
        policy_ = std::move(other.policy_);
        budgets_ = std::move(other.budgets_);
        policers_ = std::move(other.policers_);
        drops_ = std::move(other.drops_);
        state_ = std::move(other.state_);
        budgets_mem_ = std::exchange(other.budgets_mem_, nullptr);
        budgets_len_ = std::exchange(other.budgets_len_, 0);
        max_users_ = other.max_users_;
        ncpus_ = other.ncpus_;
    }
    return *this;
}

Enforcer::~Enforcer()
{
    if (budgets_mem_) munmap(budgets_mem_, budgets_len_);
}

Status Enforcer::check_slot(uint32_t slot) const
{
    if (slot >= max_users_)
        return Error{slot_text(slot) + " is out of range (the maps hold " + std::to_string(max_users_) + ")"};
    return ok();
}

vpnmeter_budget *Enforcer::budget_at(uint32_t slot) const
{
    return static_cast<vpnmeter_budget *>(budgets_mem_) + slot;
}

Status Enforcer::set_active(bool active)
{
    const uint32_t zero = 0;
    vpnmeter_policy_state state{};
    state.active = active ? 1 : 0;
    if (bpf_map_update_elem(state_.get(), &zero, &state, BPF_ANY))
        return os_error(std::string("update ") + kPolicyStateMap);
    return ok();
}

Status Enforcer::set_policy(const ClientKey &key, const PolicyEntry &policy)
{
    const std::string who = "policy of " + key.address() + "@if" + std::to_string(key.ifindex);
    if (policy.flags & ~kKnownFlags) return Error{who + ": unknown flags " + std::to_string(policy.flags)};
    PolicyEntry entry = policy;
    if (entry.flags & (VPNMETER_POLICY_BUDGET | VPNMETER_POLICY_POLICED)) {
        if (auto checked = check_slot(entry.user_slot); !checked) return Error{who + ": " + checked.error().message()};
    }
    if ((entry.flags & VPNMETER_POLICY_SHAPED) && !entry.classid) return Error{who + ": shaped without a class id"};
    if (entry.flags & VPNMETER_POLICY_POLICED) {
        if (entry.rate_bps < kMinPolicerRateBps)
            return Error{who + ": policer rate " + std::to_string(entry.rate_bps) + " bit/s is below " +
                         std::to_string(kMinPolicerRateBps)};
        if (!entry.burst_bytes) entry.burst_bytes = policer_burst_bytes(entry.rate_bps);
        if (entry.burst_bytes > kMaxPolicerBurstBytes)
            return Error{who + ": policer burst " + std::to_string(entry.burst_bytes) + " bytes is over 1 GiB"};
    }
    // The flag first: from the moment the entry exists the datapath must look.
    if (auto active = set_active(true); !active) return active;
    const vpnmeter_client_key raw_key = key.to_bpf();
    const vpnmeter_policy value = entry.to_bpf();
    if (bpf_map_update_elem(policy_.get(), &raw_key, &value, BPF_ANY)) return os_error("set " + who);
    return ok();
}

Status Enforcer::clear_policy(const ClientKey &key)
{
    const vpnmeter_client_key raw_key = key.to_bpf();
    if (bpf_map_delete_elem(policy_.get(), &raw_key) && errno != ENOENT)
        return os_error("clear policy of " + key.address());
    // The last one gone: traffic stops looking (one writer, the agent,
    // so no policy can appear between the check and the update).
    vpnmeter_client_key first{};
    if (bpf_map_get_next_key(policy_.get(), nullptr, &first) && errno == ENOENT) return set_active(false);
    return ok();
}

Result<std::optional<PolicyEntry>> Enforcer::policy(const ClientKey &key) const
{
    const vpnmeter_client_key raw_key = key.to_bpf();
    vpnmeter_policy value{};
    if (bpf_map_lookup_elem(policy_.get(), &raw_key, &value) == 0) return std::optional(PolicyEntry::from_bpf(value));
    if (errno == ENOENT) return std::optional<PolicyEntry>();
    return os_error("look up policy of " + key.address());
}

Result<std::map<ClientKey, PolicyEntry>> Enforcer::policies() const
{
    std::map<ClientKey, PolicyEntry> out;
    vpnmeter_client_key key{}, next{};
    for (void *prev = nullptr; bpf_map_get_next_key(policy_.get(), prev, &next) == 0; prev = &key) {
        key = next;
        vpnmeter_policy value{};
        if (bpf_map_lookup_elem(policy_.get(), &key, &value) == 0)
            out[ClientKey::from_bpf(key)] = PolicyEntry::from_bpf(value);
    }
    return out;
}

Status Enforcer::set_budget(uint32_t slot, const BudgetEntry &budget)
{
    if (auto checked = check_slot(slot); !checked) return checked;
    if (budget.exhausted_action != ExhaustedAction::block && budget.exhausted_action != ExhaustedAction::throttle)
        return Error{slot_text(slot) + ": unknown exhausted action"};
    if (budget.exhausted_rate_bps && budget.exhausted_rate_bps < kMinPolicerRateBps)
        return Error{slot_text(slot) + ": throttle rate below " + std::to_string(kMinPolicerRateBps) + " bit/s"};
    uint64_t burst = budget.exhausted_burst_bytes;
    if (budget.exhausted_rate_bps && !burst) burst = policer_burst_bytes(budget.exhausted_rate_bps);
    if (burst > kMaxPolicerBurstBytes) return Error{slot_text(slot) + ": throttle burst over 1 GiB"};

    // Straight into the mapped array: the action first, the bytes last, so
    // a packet that finds the budget used up finds the action that goes
    // with it.
    vpnmeter_budget *b = budget_at(slot);
    __atomic_store_n(&b->exhausted_action, static_cast<uint32_t>(budget.exhausted_action), __ATOMIC_RELAXED);
    __atomic_store_n(&b->exhausted_classid, budget.exhausted_classid, __ATOMIC_RELAXED);
    __atomic_store_n(&b->exhausted_rate_bps, budget.exhausted_rate_bps, __ATOMIC_RELAXED);
    __atomic_store_n(&b->exhausted_burst_bytes, burst, __ATOMIC_RELAXED);
    __atomic_store_n(&b->remaining_bytes, budget.remaining_bytes, __ATOMIC_SEQ_CST);
    return ok();
}

Result<int64_t> Enforcer::add_budget(uint32_t slot, int64_t bytes)
{
    if (auto checked = check_slot(slot); !checked) return checked.error();
    // A locked add on the same word as the datapath's BPF atomic add.
    return __atomic_add_fetch(&budget_at(slot)->remaining_bytes, bytes, __ATOMIC_SEQ_CST);
}

Result<BudgetEntry> Enforcer::budget(uint32_t slot) const
{
    if (auto checked = check_slot(slot); !checked) return checked.error();
    const vpnmeter_budget *b = budget_at(slot);
    BudgetEntry out;
    out.remaining_bytes = __atomic_load_n(&b->remaining_bytes, __ATOMIC_SEQ_CST);
    out.exhausted_action = static_cast<ExhaustedAction>(__atomic_load_n(&b->exhausted_action, __ATOMIC_RELAXED));
    out.exhausted_classid = __atomic_load_n(&b->exhausted_classid, __ATOMIC_RELAXED);
    out.exhausted_rate_bps = __atomic_load_n(&b->exhausted_rate_bps, __ATOMIC_RELAXED);
    out.exhausted_burst_bytes = __atomic_load_n(&b->exhausted_burst_bytes, __ATOMIC_RELAXED);
    return out;
}

Status Enforcer::reset_policer(uint32_t slot)
{
    if (auto checked = check_slot(slot); !checked) return checked;
    const vpnmeter_policer full{}; // last_ns 0: the datapath fills it on the next packet
    if (bpf_map_update_elem(policers_.get(), &slot, &full, BPF_F_LOCK))
        return os_error("reset the policer of " + slot_text(slot));
    return ok();
}

Status Enforcer::release_slot(uint32_t slot)
{
    if (auto reset = set_budget(slot, {}); !reset) return reset;
    return reset_policer(slot);
}

Result<std::set<uint32_t>> Enforcer::slots_in_use() const
{
    auto all = policies();
    if (!all) return all.error();
    std::set<uint32_t> slots;
    for (const auto &[key, policy] : all.value())
        if (policy.flags & (VPNMETER_POLICY_BUDGET | VPNMETER_POLICY_POLICED)) slots.insert(policy.user_slot);
    return slots;
}

Result<std::map<ClientKey, ClientDrops>> Enforcer::read_drops() const
{
    std::map<ClientKey, ClientDrops> out;
    std::vector<vpnmeter_client_drops> per_cpu(static_cast<size_t>(ncpus_));
    vpnmeter_client_key key{}, next{};
    // Entries exist only for clients with drops: few, so plain iteration.
    for (void *prev = nullptr; bpf_map_get_next_key(drops_.get(), prev, &next) == 0; prev = &key) {
        key = next;
        if (bpf_map_lookup_elem(drops_.get(), &key, per_cpu.data()) == 0)
            out[ClientKey::from_bpf(key)] = sum_per_cpu(per_cpu);
    }
    if (errno != ENOENT) return os_error(std::string("read ") + kDropsMap);
    return out;
}

// ---------------------------------------------------------------- UserSlots

std::optional<uint32_t> UserSlots::acquire(const std::string &user)
{
    if (auto known = find(user)) return known;
    uint32_t slot = 0;
    if (!free_.empty()) {
        slot = *free_.begin();
        free_.erase(free_.begin());
    } else if (next_ < capacity_) {
        slot = next_++;
    } else {
        return std::nullopt;
    }
    by_user_[user] = slot;
    taken_.insert(slot);
    return slot;
}

std::optional<uint32_t> UserSlots::find(const std::string &user) const
{
    auto it = by_user_.find(user);
    return it != by_user_.end() ? std::optional(it->second) : std::nullopt;
}

std::optional<uint32_t> UserSlots::release(const std::string &user)
{
    auto it = by_user_.find(user);
    if (it == by_user_.end()) return std::nullopt;
    const uint32_t slot = it->second;
    taken_.erase(slot);
    free_.insert(slot);
    by_user_.erase(it);
    return slot;
}

Status UserSlots::adopt(const std::string &user, uint32_t slot)
{
    const std::string what = "adopt " + slot_text(slot) + " for " + user;
    if (slot >= capacity_) return Error{what + ": out of range"};
    if (auto held = find(user)) {
        if (*held == slot) return ok();
        return Error{what + ": the user holds slot " + std::to_string(*held)};
    }
    if (taken_.count(slot)) return Error{what + ": held by another user"};
    for (; next_ < slot; ++next_)
        free_.insert(next_); // skipped over: free
    if (next_ == slot) ++next_;
    free_.erase(slot);
    by_user_[user] = slot;
    taken_.insert(slot);
    return ok();
}

} // namespace vpnmeter
