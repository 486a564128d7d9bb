// OpenVPN's client list (`status` file or the `status` management command),
// versions 1, 2 and 3, parsed from text. Pure: the caller reads the file.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "result.h"

namespace vpnmeter::openvpn {

// One connected client, as the OpenVPN server sees it.
struct StatusClient {
    std::string common_name;
    std::string username;        // empty when OpenVPN says UNDEF (and in v1, which has none)
    std::string real_address;    // as printed: "10.99.0.10:38357", "[AF_INET6]..." etc.
    std::string virtual_address; // IPv4, empty if none
    std::string virtual_ipv6;    // empty if none
    // The server's own byte counts of the tunnel packets (outer, encrypted):
    // received = from the client (its upload), sent = to the client.
    uint64_t bytes_received = 0;
    uint64_t bytes_sent = 0;
    // Unix seconds. v2/v3 give a time_t; v1 only a clock text in the server's
    // local time zone, which is read in *this* process's local zone (TZ), so
    // both must agree (see parse_local_time).
    int64_t connected_since = 0;
    std::optional<uint64_t> client_id; // v2/v3: the management interface's CID
    std::optional<uint32_t> peer_id;   // v2/v3 (2.4+)
    std::string cipher;                // data channel cipher (2.5+), empty if absent

    bool operator==(const StatusClient&) const = default;
};

// Note: not vpnmeter::Status (result.h), which is Result<Ok>.
struct Status {
    int version = 0;     // 1, 2 or 3
    int64_t updated = 0; // unix seconds the server wrote it (v1: local time text)
    std::vector<StatusClient> clients;

    bool operator==(const Status&) const = default;
};

// Recognises the version from the content: v1 starts "OpenVPN CLIENT LIST",
// v2 "TITLE,", v3 "TITLE<tab>". Columns are found by their HEADER names, so
// columns added by newer OpenVPN versions are skipped; without a HEADER the
// 2.6 layout is assumed. v1 takes the virtual addresses from its ROUTING
// TABLE (host routes of the same common name and real address); v2/v3 do too
// where their CLIENT_LIST leaves them empty.
//
// OpenVPN rewrites the file in place, so a reader can see it empty, cut short
// or with the old tail after the new END. All of these are errors ("empty",
// "truncated ... no END", "content after END"), like malformed lines
// ("openvpn status line 4: Bytes Received: expected a number, got \"12x\""):
// the caller keeps its previous state and reads again later.
Result<Status> parse_status(std::string_view text);

} // namespace vpnmeter::openvpn
