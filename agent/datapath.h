// Loading the metering programs, pinning their maps, attaching them to tc.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "result.h"

struct meter_bpf;

namespace vpnmeter {

struct DatapathOptions {
    std::string pin_path = "/sys/fs/bpf/vpnmeter";
    uint32_t max_clients = 65536;
};

// Our tc filters are recognised by this handle and priority (and the
// program name), so detach removes ours and nothing else.
inline constexpr uint32_t kTcHandle = 0x766d; // "vm"
inline constexpr uint32_t kTcPriority = 1;    // first: count every packet, before other filters decide

// Owns the loaded skeleton. The maps are pinned and the tc filters stay
// attached when this object (or the process) goes away: counting goes on
// across a daemon restart, and the next load picks the same maps up again.
class Datapath {
public:
    // Ensures the bpffs, reuses maps pinned under pin_path (keeping their
    // capacity when it differs from max_clients, with a warning) or creates
    // and pins new ones, and loads the programs.
    static Result<Datapath> load(const DatapathOptions& options);

    Datapath(Datapath&&) noexcept;
    Datapath& operator=(Datapath&&) noexcept;
    ~Datapath();

    // Attaches ingress (upload) and egress (download) to the interface,
    // creating the clsact qdisc if needed, replacing our own earlier filters;
    // records the attachment in the pinned registry.
    Status attach(uint32_t ifindex, const std::string& ifname);

    int ingress_prog_fd() const;
    int egress_prog_fd() const;
    uint32_t max_clients() const { return max_clients_; }
    const std::string& pin_path() const { return pin_path_; }

private:
    struct SkeletonDeleter {
        void operator()(meter_bpf* skel) const;
    };
    Datapath() = default;
    std::unique_ptr<meter_bpf, SkeletonDeleter> skel_;
    std::string pin_path_;
    uint32_t max_clients_ = 0;
};

// Removes what the agent pinned under pin_path and attached (tc filters,
// clsact qdiscs it created and that hold no other filters, HTB root qdiscs
// it created for shaping), nothing else.
// Run in the network namespace the agent ran in. Returns a human summary.
Result<std::string> detach_all(const std::string& pin_path);

// libbpf's messages to the agent's logger; debug ones only if asked.
void route_libbpf_logs(bool debug);

} // namespace vpnmeter
