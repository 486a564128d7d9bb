// Reads one Sing-Box server's stats API on a thread of its own, every
// `interval`, so a slow or hung server never stalls the daemon's cycle. A
// server that is down is retried with backoff (1 s doubling, at most the
// larger of 60 s and the interval).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "config.h"
#include "singbox/ledger.h"

namespace vpnmeter::singbox {

struct PollerHealth {
    bool up = false;                // the last attempt succeeded
    std::optional<int64_t> last_ok; // unix seconds of the last good reading
    std::string error;              // of the last failed attempt
    uint64_t failures = 0;          // failed attempts since start
};

class Poller {
public:
    explicit Poller(SingboxInstance instance);
    ~Poller(); // stops the thread (an RPC in flight ends at its deadline)
    Poller(const Poller&) = delete;
    Poller& operator=(const Poller&) = delete;

    // The newest reading and its number (1, 2, ...; readings are absolute,
    // so a cycle that failed to commit simply uses a newer one).
    struct Latest {
        uint64_t sequence = 0;
        StatsReading reading;
    };
    std::optional<Latest> latest() const;
    PollerHealth health() const;
    const SingboxInstance& instance() const { return instance_; }

private:
    void run();

    const SingboxInstance instance_;
    mutable std::mutex mutex_;
    std::condition_variable wake_;
    bool stopping_ = false;
    std::optional<Latest> latest_;
    PollerHealth health_;
    std::thread thread_; // last: started once the members above exist
};

} // namespace vpnmeter::singbox
