#include "singbox/poller.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "singbox/stats_client.h"

namespace vpnmeter::singbox {

Poller::Poller(SingboxInstance instance) : instance_(std::move(instance)), thread_([this] { run(); }) {}

Poller::~Poller()
{
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
}

std::optional<Poller::Latest> Poller::latest() const
{
    std::lock_guard lock(mutex_);
    return latest_;
}

PollerHealth Poller::health() const
{
    std::lock_guard lock(mutex_);
    return health_;
}

void Poller::run()
{
    using namespace std::chrono_literals;
    StatsClient client(instance_.stats_api);
    const auto max_backoff = std::max<std::chrono::milliseconds>(60s, instance_.interval);
    const auto timeout = std::clamp<std::chrono::milliseconds>(instance_.interval, 1s, 5s);
    std::chrono::milliseconds backoff = 1s;
    uint64_t sequence = 0;
    bool was_up = true; // so that a server down at start is reported once

    std::unique_lock lock(mutex_);
    while (!stopping_) {
        lock.unlock();
        auto reading = client.read(timeout);
        lock.lock();
        std::chrono::milliseconds wait = instance_.interval;
        if (reading) {
            latest_ = Latest{++sequence, std::move(reading.value())};
            health_.up = true;
            health_.last_ok = latest_->reading.time;
            health_.error.clear();
            if (!was_up) spdlog::info("singbox {}: stats API at {} answers again", instance_.name, instance_.stats_api);
            was_up = true;
            backoff = 1s;
        } else {
            health_.up = false;
            health_.error = reading.error().message();
            ++health_.failures;
            if (was_up)
                spdlog::error("singbox {}: {}; retrying with backoff (its users' bytes stay counted in the server "
                              "and are billed once it answers)",
                              instance_.name, health_.error);
            was_up = false;
            wait = backoff;
            backoff = std::min(backoff * 2, max_backoff);
        }
        wake_.wait_for(lock, wait, [this] { return stopping_; });
    }
}

} // namespace vpnmeter::singbox
