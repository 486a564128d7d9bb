// Pin paths for BPF tests, and their cleanup.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "datapath.h"

namespace vpnmeter::testing {

// A pin path no other test (or test process) uses.
inline std::string unique_pin_path(const std::string& prefix = "vpnmeter-test")
{
    static int n = 0;
    return "/sys/fs/bpf/" + prefix + "-" + std::to_string(getpid()) + "-" + std::to_string(++n);
}

// Unpins whatever a test pinned, also when an assertion threw. Built before
// the load, so a load that failed half-way is cleaned up too.
class PinGuard {
public:
    explicit PinGuard(std::string path) : path_(std::move(path)) {}
    PinGuard(const PinGuard&) = delete;
    PinGuard& operator=(const PinGuard&) = delete;
    ~PinGuard()
    {
        std::error_code ec;
        if (!std::filesystem::exists(path_, ec)) return;
        if (auto done = detach_all(path_); !done)
            std::fprintf(stderr, "detach_all(%s): %s\n", path_.c_str(), done.error().message().c_str());
        // Whatever detach_all could not handle (e.g. only some maps pinned).
        std::filesystem::remove_all(path_, ec);
        if (ec) std::fprintf(stderr, "remove %s: %s\n", path_.c_str(), ec.message().c_str());
    }
    const std::string& path() const { return path_; }

private:
    std::string path_;
};

} // namespace vpnmeter::testing
