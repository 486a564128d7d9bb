// Telling systemd (Type=notify) what the daemon is doing. Without a
// NOTIFY_SOCKET (started by hand, in a test) every call does nothing.
#pragma once

#include <string>

namespace vpnmeter::systemd {

// The datapath is attached and the HTTP API listens: `systemctl start` (or
// reload) returns. `status` is the line `systemctl status` shows.
void notify_ready(const std::string& status);
// Around a SIGHUP reload: `systemctl reload` waits for the READY=1 after it.
void notify_reloading();
// Shutting down: the final cycle is being written.
void notify_stopping();

} // namespace vpnmeter::systemd
