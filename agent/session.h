// A VPN session and what it used: the unit of billing.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "counters.h"

namespace vpnmeter {

struct Session {
    // Stable across agent restarts: "<instance>:<client id>:<connected since>".
    std::string id;
    std::string user;     // common name, or username where configured
    std::string instance; // the OpenVPN instance (config `openvpn[].name`)
    std::string interface;
    std::vector<std::string> addresses; // virtual IPv4 and/or IPv6, as text
    std::string real_address;           // the client's public ip:port
    int64_t start = 0;                  // unix seconds
    std::optional<int64_t> end;         // unset while active
    Traffic usage;                      // inner bytes counted by eBPF
    // The VPN's own (outer, encrypted) byte counters, kept for cross-checks
    // and never mixed into `usage`. From the client's side, like `usage`.
    uint64_t source_upload_bytes = 0;
    uint64_t source_download_bytes = 0;

    bool active() const { return !end.has_value(); }
    bool operator==(const Session&) const = default;
};

} // namespace vpnmeter
