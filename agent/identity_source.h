// Who is connected: the interface every identity source (OpenVPN management,
// OpenVPN status file, later Sing-Box and WireGuard) offers the daemon.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "session.h"

namespace vpnmeter {

using SteadyClock = std::chrono::steady_clock;

// How a source is doing, for `GET /v1/status` and `vpnmeter status`.
struct SourceStatus {
    std::string kind;     // "openvpn", "singbox"
    std::string instance; // its configured name
    bool up = false;      // reachable, and its last answer was usable
    std::optional<int64_t> last_refresh; // unix seconds of the last good session list
    std::optional<std::string> error;    // the current trouble, if any
};

// Driven by the daemon's single-threaded poll loop: the source exposes a file
// descriptor to watch and does non-blocking I/O when told it is ready.
class IdentitySource {
public:
    virtual ~IdentitySource() = default;

    virtual const std::string& instance() const = 0;

    // The descriptor to poll, and for what (POLLIN/POLLOUT); -1 for none.
    virtual int fd() const = 0;
    virtual short events() const = 0;
    virtual void on_ready(short revents, SteadyClock::time_point now) = 0;

    // Time-driven work: reconnecting with backoff, timeouts.
    virtual void tick(SteadyClock::time_point now) = 0;

    // A cycle begins: fetch the current session list (asynchronously if it
    // must). refreshed() tells when it has arrived.
    virtual void request_refresh(SteadyClock::time_point now) = 0;
    virtual bool refreshed() const = 0;

    // The sessions connected as of the last refresh; nullopt when the source
    // is unreachable or the last refresh failed (not the same as "nobody").
    virtual std::optional<std::vector<Session>> sessions() const = 0;

    // True once after a client connected or disconnected: the daemon runs a
    // cycle at once, so an address changing hands is split exactly.
    virtual bool take_client_event() = 0;

    // Ends every session of `user` this source knows (quota action
    // `disconnect`); sources that cannot do that ignore it.
    virtual void disconnect(const std::string& user) { (void)user; }

    // Sources override this with what they know; the default says only
    // whether the last refresh gave a session list.
    virtual SourceStatus status() const
    {
        return SourceStatus{"", instance(), sessions().has_value(), std::nullopt, std::nullopt};
    }
};

} // namespace vpnmeter
