// Alert webhooks: JSON POSTed to a URL from a worker thread, retried with
// backoff.
//
// Delivery is at least once, within limits:
// - An alert is retried until a 2xx answer or until its retries are used up
//   by attempts the receiver saw (an error status, no answer in time). While
//   the receiver cannot be connected to at all (refused, unresolvable) no
//   retry is used: the alert stays queued, retried at the backoff's pace,
//   for as long as the agent runs, so a receiver that is down gets it once
//   it is back.
// - A receiver that got the POST but whose answer was lost (timeout, dropped
//   connection) gets it again: receivers de-duplicate on the payload's "id",
//   which is the same for every attempt and names the alert (node, user,
//   period, threshold), not the attempt.
// - The queue is in memory: alerts still queued when the agent stops are
//   logged as not delivered and lost (the store records that they fired, so
//   they are not sent again after a restart either).
// - One alert at a time, in order: while the oldest is retried, the ones
//   behind it wait (a receiver that is down fails them all alike).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace vpnmeter {

struct WebhookOptions {
    std::chrono::milliseconds timeout{10'000}; // one attempt, connecting included
    int retries = 8;                           // after the first attempt the receiver saw
    // Waits between attempts: first_backoff, doubling, at most max_backoff.
    // With the defaults a receiver may be down ~3 minutes (1+2+4+...+60+60 s).
    std::chrono::milliseconds first_backoff{1'000};
    std::chrono::milliseconds max_backoff{60'000};
    size_t capacity = 10'000; // alerts queued or in flight; more are dropped
};

class WebhookSender {
  public:
    // url: http:// or https://; anything else throws std::invalid_argument
    // (a start-up error). Starts the worker thread.
    WebhookSender(std::string url, std::chrono::milliseconds timeout, int retries);
    WebhookSender(std::string url, WebhookOptions options);
    WebhookSender(const WebhookSender &) = delete;
    WebhookSender &operator=(const WebhookSender &) = delete;
    // Stops the worker without waiting for a request in flight or a backoff;
    // what is still queued is logged as not delivered.
    ~WebhookSender();

    // Queues one POST. Never blocks on the network: false (and dropped()
    // counts it) when `capacity` alerts are already waiting.
    bool enqueue(nlohmann::json body);

    uint64_t delivered() const;       // answered 2xx
    uint64_t failed() const;          // retries used up without a 2xx (never for an unreachable receiver)
    uint64_t dropped() const;         // refused by enqueue(): the queue was full
    uint64_t failed_attempts() const; // attempts without a 2xx, retried or not
    size_t pending() const;           // queued or in flight

  private:
    struct State;
    std::unique_ptr<State> state_;
};

// This machine's host name: the default "node" of alert payloads.
std::string node_name();

// {"id", "user", "plan", "used", "limit", "percent", "period": {"start",
// "end"}, "node"}: bytes, the threshold that was crossed (percent of the
// limit), the period in RFC 3339. "id" is "<node>/<user>/<period
// start>/<percent>" with '%' and '/' in node and user percent-escaped.
nlohmann::json alert_payload(const std::string &user, const std::string &plan, uint64_t used_bytes,
                             uint64_t limit_bytes, int percent, int64_t period_start, int64_t period_end,
                             const std::string &node = node_name());

} // namespace vpnmeter
