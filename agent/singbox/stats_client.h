// A blocking client of the V2Ray-compatible StatsService (gRPC) that
// Sing-Box's v2ray_api, V2Ray and Xray serve.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "result.h"
#include "singbox/ledger.h"

namespace vpnmeter::singbox {

class StatsClient {
public:
    explicit StatsClient(const std::string& target); // host:port; connects lazily
    ~StatsClient();
    StatsClient(const StatsClient&) = delete;
    StatsClient& operator=(const StatsClient&) = delete;

    // The user counters (never reset) and, when the server has it, its
    // uptime. The counters are read first: a restart between the two calls
    // then shows as counters going down at the next reading, never as a
    // reading counted twice.
    Result<StatsReading> read(std::chrono::milliseconds timeout);

private:
    struct Stub;
    std::unique_ptr<Stub> stub_;
    std::string target_;
    bool has_uptime_ = true; // false once the server said GetSysStats is unimplemented
};

} // namespace vpnmeter::singbox
