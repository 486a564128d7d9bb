// Telling systemd (Type=notify) what the daemon is doing. Without a
// NOTIFY_SOCKET (started by hand, in a test) every call does nothing.
#pragma once

#include <string>

namespace vpnmeter::systemd {

// The datapath is attached and the HTTP API listens: `systemctl start` (or
// reload) returns. `status` is the line `systemctl status` shows.
void notify_ready(const std::string& status);
// A SIGHUP reload begins; a notify_ready() ends it, also when it was rejected.
// With MONOTONIC_USEC, so Type=notify-reload (systemd 253+) works too.
void notify_reloading();
// Shutting down: the final cycle is being written.
void notify_stopping();

} // namespace vpnmeter::systemd
