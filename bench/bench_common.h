// What the benchmarks share: a private pin path that is removed at exit,
// and reading the machine's description for the report.
#pragma once

#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <system_error>
#include <utility>

#include "bpf_maps.h"
#include "datapath.h"

namespace vpnmeter::bench {

// Removes everything pinned under a benchmark's private pin path.
class PinCleanup {
public:
    explicit PinCleanup(std::string path) : path_(std::move(path)) {}
    PinCleanup(const PinCleanup&) = delete;
    PinCleanup& operator=(const PinCleanup&) = delete;
    ~PinCleanup()
    {
        std::error_code ec;
        if (!std::filesystem::exists(path_, ec)) return;
        if (std::filesystem::exists(path_ + "/" + kClientsMap, ec)) {
            auto done = detach_all(path_);
            if (!done) std::fprintf(stderr, "cleanup: %s\n", done.error().message().c_str());
        }
        // Leftovers of a half-done load; the directory is ours alone.
        for (const char* name : {kClientsMap, kIfacesMap, kLinksMap}) std::filesystem::remove(path_ + "/" + name, ec);
        std::filesystem::remove(path_, ec);
        if (std::filesystem::exists(path_, ec))
            std::fprintf(stderr, "cleanup: could not remove %s\n", path_.c_str());
    }

private:
    std::string path_;
};

// SIGINT, SIGTERM and SIGHUP to `handler` (no SA_RESTART: a test run stops
// with EINTR, and the pins are cleaned up on the way out), and the process
// pinned to `cpu` unless it is negative. False (said on stderr) if pinning failed.
inline bool prepare_process(void (*handler)(int), int cpu)
{
    struct sigaction sa {};
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &sa, nullptr);
    if (cpu < 0) return true;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) == 0) return true;
    std::fprintf(stderr, "error: pin to CPU %d: %s\n", cpu, std::strerror(errno));
    return false;
}

// A fresh /sys/fs/bpf/vpnmeter-bench-<pid>-<random>.
inline std::string unique_pin_path()
{
    std::random_device rd;
    for (;;) {
        char name[96];
        std::snprintf(name, sizeof name, "/sys/fs/bpf/vpnmeter-bench-%d-%08x", static_cast<int>(getpid()), rd());
        std::error_code ec;
        if (!std::filesystem::exists(name, ec)) return name;
    }
}

// The first line of a file, or the value of its first "prefix: value" line.
inline std::string read_first_line(const char* path, const std::string& prefix = {})
{
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
        if (prefix.empty()) return line;
        if (line.rfind(prefix, 0) == 0) {
            auto colon = line.find(':');
            return colon == std::string::npos ? line : line.substr(line.find_first_not_of(" \t", colon + 1));
        }
    }
    return "?";
}

} // namespace vpnmeter::bench
