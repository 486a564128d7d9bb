#include "systemd_notify.h"

#include <systemd/sd-daemon.h>
#include <time.h>

#include <cstdint>
#include <cstring>

#include <spdlog/spdlog.h>

namespace vpnmeter::systemd {
namespace {

void notify(const std::string& state)
{
    // 0: no NOTIFY_SOCKET, not under systemd. A failure is worth a line, not
    // a stop: systemd then times the start out and says why itself.
    if (int rc = sd_notify(0, state.c_str()); rc < 0)
        spdlog::warn("sd_notify({}): {}", state.substr(0, state.find('\n')), std::strerror(-rc));
}

} // namespace

void notify_ready(const std::string& status)
{
    notify("READY=1\nSTATUS=" + status);
}

void notify_reloading()
{
    timespec now{};
    clock_gettime(CLOCK_MONOTONIC, &now);
    const auto usec = static_cast<uint64_t>(now.tv_sec) * 1000000 + static_cast<uint64_t>(now.tv_nsec) / 1000;
    notify("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec) + "\nSTATUS=reloading the configuration");
}

void notify_stopping()
{
    notify("STOPPING=1\nSTATUS=stopping; programs stay attached and counting");
}

} // namespace vpnmeter::systemd
