// Reading the pinned counter maps: used by the daemon, the CLI and tests.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "counters.h"
#include "result.h"
#include "unique_fd.h"

namespace vpnmeter {

// Map names; the pinned files are <pin_path>/<name>.
inline constexpr const char* kClientsMap = "vpnmeter_clients";
inline constexpr const char* kIfacesMap = "vpnmeter_ifaces";          // array by ifindex
inline constexpr const char* kIfacesMoreMap = "vpnmeter_ifaces_more"; // hash, ifindex >= VPNMETER_MAX_LINKS
inline constexpr const char* kLinksMap = "vpnmeter_links";
// Enforcement (agent/enforcer.h, bpf/policy.bpf.h).
inline constexpr const char* kPolicyMap = "vpnmeter_policy";            // hash, client key
inline constexpr const char* kBudgetsMap = "vpnmeter_budgets";          // array, user slot
inline constexpr const char* kPolicersMap = "vpnmeter_policers";        // array, user slot
inline constexpr const char* kDropsMap = "vpnmeter_drops";              // per-CPU hash, client key
inline constexpr const char* kPolicyStateMap = "vpnmeter_policy_state"; // array, 1 entry

// The map pinned at <pin_path>/<name>; the error says whether nothing is
// pinned there (is the agent running with this pin path?).
Result<UniqueFd> open_pinned_map(const std::string& pin_path, const char* name);

// One entry of the attach registry (vpnmeter_links).
struct LinkRecord {
    std::string name;
    uint32_t flags = 0;
};

// Anything that yields raw counters: the pinned maps, or a fake in unit tests.
class CounterSource {
public:
    virtual ~CounterSource() = default;
    virtual Result<CounterSnapshot> read() = 0;
};

// The maps one agent pinned under a pin path.
class PinnedMaps : public CounterSource {
public:
    // Fails with a message naming the path when nothing is pinned there.
    static Result<PinnedMaps> open(const std::string& pin_path);

    // All client and interface counters, per-CPU values summed. Uses
    // BPF_MAP_LOOKUP_BATCH, or key iteration on kernels without it.
    Result<CounterSnapshot> read() override;
    Result<std::map<uint32_t, LinkRecord>> links() const;
    Status put_link(uint32_t ifindex, const LinkRecord& link);
    Status erase_link(uint32_t ifindex);

    int clients_fd() const { return clients_.get(); }
    int ifaces_fd() const { return ifaces_.get(); }
    uint32_t max_clients() const { return max_clients_; }

private:
    PinnedMaps() = default;
    UniqueFd clients_, ifaces_, ifaces_more_, links_;
    int ncpus_ = 0;
    uint32_t max_clients_ = 0;
    uint32_t ifaces_value_size_ = 0;
    size_t last_client_count_ = 0; // to size the next read's buffer
    std::string pin_path_;
};

} // namespace vpnmeter
