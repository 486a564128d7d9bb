// Webhook delivery against a real HTTP receiver on loopback.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "alerts/webhook.h"
#include "unique_fd.h"

using namespace vpnmeter;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// What the receiver does with a request once it has read it.
enum class Answer { Ok, ServerError, Close, Hang };

struct Request {
    std::string head; // request line and headers
    std::string body;
    Answer answer;
};

// A minimal HTTP/1.1 server on 127.0.0.1: one thread, one request per
// connection, answers as `script(index of the request)` says.
class Receiver {
  public:
    explicit Receiver(std::function<Answer(size_t)> script, uint16_t port = 0) : script_(std::move(script))
    {
        listener_.reset(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        REQUIRE(listener_.get() >= 0);
        const int one = 1;
        REQUIRE(setsockopt(listener_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        address.sin_port = htons(port);
        if (bind(listener_.get(), reinterpret_cast<sockaddr *>(&address), sizeof address) != 0)
            FAIL("bind 127.0.0.1:" << port << ": " << std::strerror(errno));
        REQUIRE(listen(listener_.get(), 64) == 0);
        socklen_t size = sizeof address;
        REQUIRE(getsockname(listener_.get(), reinterpret_cast<sockaddr *>(&address), &size) == 0);
        port_ = ntohs(address.sin_port);
        int fds[2];
        REQUIRE(pipe2(fds, O_CLOEXEC) == 0);
        stop_read_.reset(fds[0]);
        stop_write_.reset(fds[1]);
        thread_ = std::thread([this] { run(); });
    }
    Receiver(const Receiver &) = delete;
    Receiver &operator=(const Receiver &) = delete;
    ~Receiver()
    {
        const char byte = 's';
        (void)!write(stop_write_.get(), &byte, 1);
        thread_.join();
    }

    uint16_t port() const { return port_; }
    std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/hooks/vpnmeter"; }
    std::vector<Request> requests() const
    {
        std::lock_guard lock(mutex_);
        return requests_;
    }
    size_t count() const { return requests().size(); }

  private:
    void run()
    {
        std::vector<UniqueFd> hung; // held open, never answered, until the receiver stops
        for (;;) {
            pollfd fds[] = {{listener_.get(), POLLIN, 0}, {stop_read_.get(), POLLIN, 0}};
            if (poll(fds, 2, -1) < 0) continue;
            if (fds[1].revents) return;
            UniqueFd connection(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
            if (connection.get() < 0) continue;
            Request request;
            if (!read_request(connection.get(), request)) continue;
            size_t index = 0;
            {
                std::lock_guard lock(mutex_);
                index = requests_.size();
            }
            request.answer = script_(index);
            {
                std::lock_guard lock(mutex_);
                requests_.push_back(request);
            }
            switch (request.answer) {
            case Answer::Ok:
                respond(connection.get(), "200 OK");
                break;
            case Answer::ServerError:
                respond(connection.get(), "500 Internal Server Error");
                break;
            case Answer::Close:
                break;
            case Answer::Hang:
                hung.push_back(std::move(connection));
                break;
            }
        }
    }

    // Headers, then Content-Length bytes of body; false on EOF or a 5 s stall.
    bool read_request(int fd, Request &request)
    {
        std::string data;
        size_t body_at = std::string::npos, length = 0;
        for (;;) {
            if (body_at == std::string::npos && (body_at = data.find("\r\n\r\n")) != std::string::npos) {
                body_at += 4;
                request.head = data.substr(0, body_at);
                std::string lower = request.head;
                std::transform(lower.begin(), lower.end(), lower.begin(), ::tolower);
                if (auto at = lower.find("\r\ncontent-length:"); at != std::string::npos)
                    length = std::stoul(lower.substr(at + 17));
            }
            if (body_at != std::string::npos && data.size() >= body_at + length) {
                request.body = data.substr(body_at, length);
                return true;
            }
            pollfd pfd{fd, POLLIN, 0};
            if (poll(&pfd, 1, 5000) <= 0) return false;
            char buffer[4096];
            const ssize_t got = read(fd, buffer, sizeof buffer);
            if (got <= 0) return false;
            data.append(buffer, static_cast<size_t>(got));
        }
    }

    static void respond(int fd, const std::string &status)
    {
        const std::string response = "HTTP/1.1 " + status + "\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
        (void)!write(fd, response.data(), response.size());
    }

    std::function<Answer(size_t)> script_;
    UniqueFd listener_, stop_read_, stop_write_;
    uint16_t port_ = 0;
    mutable std::mutex mutex_;
    std::vector<Request> requests_;
    std::thread thread_;
};

Answer always_ok(size_t)
{
    return Answer::Ok;
}

// Polls `condition` until true or `limit` passes.
template <class Condition> bool eventually(Condition condition, std::chrono::milliseconds limit = 10s)
{
    const auto deadline = Clock::now() + limit;
    while (!condition()) {
        if (Clock::now() > deadline) return false;
        std::this_thread::sleep_for(5ms);
    }
    return true;
}

// Fast retries for tests.
WebhookOptions quick(std::chrono::milliseconds timeout = 2s, int retries = 10)
{
    WebhookOptions options;
    options.timeout = timeout;
    options.retries = retries;
    options.first_backoff = 20ms;
    options.max_backoff = 100ms;
    return options;
}

nlohmann::json alert(const std::string &user, int percent = 80)
{
    return alert_payload(user, "basic", 80'000'000'000, 100'000'000'000, percent, 1714521600, 1717200000, "vpn-1");
}

std::vector<std::string> ids(const std::vector<Request> &requests)
{
    std::vector<std::string> out;
    for (const auto &request : requests)
        out.push_back(nlohmann::json::parse(request.body).at("id"));
    return out;
}

} // namespace

TEST_CASE("alert payloads carry a stable id, the usage and the period in RFC 3339", "[webhook]")
{
    const auto payload = alert_payload("alice", "basic", 81'000, 100'000, 80, 1714521600, 1717200000, "vpn-1");
    CHECK(payload == nlohmann::json{
                         {"id", "vpn-1/alice/2024-05-01T00:00:00Z/80"},
                         {"user", "alice"},
                         {"plan", "basic"},
                         {"used", 81'000},
                         {"limit", 100'000},
                         {"percent", 80},
                         {"period", {{"start", "2024-05-01T00:00:00Z"}, {"end", "2024-06-01T00:00:00Z"}}},
                         {"node", "vpn-1"},
                     });
    // The id names the alert, not the attempt or the usage at the time.
    CHECK(alert_payload("alice", "basic", 99'000, 100'000, 80, 1714521600, 1717200000, "vpn-1")["id"] == payload["id"]);
    // Separators inside names cannot make two alerts share an id.
    CHECK(alert_payload("a/b", "p", 0, 1, 80, 0, 1, "n")["id"] == "n/a%2Fb/1970-01-01T00:00:00Z/80");
    CHECK(alert_payload("b", "p", 0, 1, 80, 0, 1, "n/a")["id"] == "n%2Fa/b/1970-01-01T00:00:00Z/80");
    CHECK(alert_payload("100%", "p", 0, 1, 80, 0, 1, "n")["id"] == "n/100%25/1970-01-01T00:00:00Z/80");
    // The node defaults to the host name.
    char host[256] = {};
    REQUIRE(gethostname(host, sizeof host - 1) == 0);
    CHECK(alert_payload("alice", "basic", 0, 1, 80, 0, 1)["node"] == std::string(host));
    CHECK(node_name() == std::string(host));
}

TEST_CASE("a 2xx answer delivers each alert once, in order, as JSON", "[webhook]")
{
    Receiver receiver(always_ok);
    WebhookSender sender(receiver.url(), quick());
    for (const char *user : {"alice", "bob", "carol"})
        REQUIRE(sender.enqueue(alert(user)));
    REQUIRE(eventually([&] { return sender.delivered() == 3; }));
    CHECK(sender.pending() == 0);
    CHECK(sender.failed() == 0);
    CHECK(sender.failed_attempts() == 0);
    CHECK(sender.dropped() == 0);

    const auto requests = receiver.requests();
    REQUIRE(requests.size() == 3);
    CHECK(ids(requests) == std::vector<std::string>{"vpn-1/alice/2024-05-01T00:00:00Z/80",
                                                    "vpn-1/bob/2024-05-01T00:00:00Z/80",
                                                    "vpn-1/carol/2024-05-01T00:00:00Z/80"});
    CHECK(nlohmann::json::parse(requests[0].body) == alert("alice"));
    CHECK_THAT(requests[0].head, Catch::StartsWith("POST /hooks/vpnmeter HTTP/1.1\r\n"));
    CHECK_THAT(requests[0].head, Catch::Contains("\r\nContent-Type: application/json\r\n"));
    CHECK_THAT(requests[0].head, Catch::Contains("\r\nUser-Agent: vpnmeter/"));
}

TEST_CASE("a receiver that is down, then up, gets the alert once", "[webhook]")
{
    uint16_t port = 0;
    {
        Receiver reserve(always_ok); // a free port, then nobody listening on it
        port = reserve.port();
    }
    WebhookSender sender("http://127.0.0.1:" + std::to_string(port) + "/hooks/vpnmeter", quick());
    REQUIRE(sender.enqueue(alert("alice")));
    REQUIRE(eventually([&] { return sender.failed_attempts() >= 3; })); // connection refused, retried
    CHECK(sender.delivered() == 0);
    CHECK(sender.pending() == 1);

    Receiver receiver(always_ok, port);
    REQUIRE(eventually([&] { return sender.delivered() == 1; }));
    std::this_thread::sleep_for(200ms); // nothing more arrives
    CHECK(receiver.count() == 1);
    CHECK(sender.failed() == 0);
    CHECK(sender.pending() == 0);
}

TEST_CASE("a receiver unreachable for longer than the retries still gets every alert, once, in order", "[webhook]")
{
    uint16_t port = 0;
    {
        Receiver reserve(always_ok);
        port = reserve.port();
    }
    WebhookSender sender("http://127.0.0.1:" + std::to_string(port) + "/hooks/vpnmeter", quick(2s, 1));
    REQUIRE(sender.enqueue(alert("alice")));
    REQUIRE(sender.enqueue(alert("bob")));
    REQUIRE(eventually([&] { return sender.failed_attempts() >= 6; })); // far past 1 retry
    CHECK(sender.failed() == 0);
    CHECK(sender.pending() == 2);

    Receiver receiver(always_ok, port);
    REQUIRE(eventually([&] { return sender.delivered() == 2; }));
    std::this_thread::sleep_for(200ms);
    CHECK(ids(receiver.requests()) == std::vector<std::string>{"vpn-1/alice/2024-05-01T00:00:00Z/80",
                                                               "vpn-1/bob/2024-05-01T00:00:00Z/80"});
    CHECK(sender.failed() == 0);
}

TEST_CASE("a 500 is retried and the alert delivered once", "[webhook]")
{
    Receiver receiver([](size_t index) { return index < 2 ? Answer::ServerError : Answer::Ok; });
    WebhookSender sender(receiver.url(), quick());
    REQUIRE(sender.enqueue(alert("alice")));
    REQUIRE(sender.enqueue(alert("bob"))); // waits behind alice's retries
    REQUIRE(eventually([&] { return sender.delivered() == 2; }));
    CHECK(sender.failed_attempts() == 2);
    CHECK(sender.failed() == 0);
    const auto requests = receiver.requests();
    CHECK(ids(requests) ==
          std::vector<std::string>{"vpn-1/alice/2024-05-01T00:00:00Z/80", "vpn-1/alice/2024-05-01T00:00:00Z/80",
                                   "vpn-1/alice/2024-05-01T00:00:00Z/80", "vpn-1/bob/2024-05-01T00:00:00Z/80"});
    CHECK(std::count_if(requests.begin(), requests.end(), [](const Request &r) { return r.answer == Answer::Ok; }) ==
          2);
}

TEST_CASE("an answer lost after the receiver got the alert means a duplicate with the same id", "[webhook]")
{
    // At least once: the receiver read the POST, the sender never saw an answer.
    Receiver receiver([](size_t index) { return index == 0 ? Answer::Close : Answer::Ok; });
    WebhookSender sender(receiver.url(), quick());
    REQUIRE(sender.enqueue(alert("alice")));
    REQUIRE(eventually([&] { return sender.delivered() == 1; }));
    CHECK(sender.failed_attempts() == 1);
    const auto requests = receiver.requests();
    REQUIRE(requests.size() == 2);
    CHECK(requests[0].body == requests[1].body);
}

TEST_CASE("a receiver that never answers times out, is retried, then counted failed", "[webhook]")
{
    Receiver receiver([](size_t) { return Answer::Hang; });
    WebhookSender sender(receiver.url(), quick(200ms, 2));
    const auto start = Clock::now();
    REQUIRE(sender.enqueue(alert("alice")));
    // Counted failed, then taken off the queue: wait for both.
    REQUIRE(eventually([&] { return sender.failed() == 1 && sender.pending() == 0; }));
    const auto took = Clock::now() - start;
    CHECK(took >= 3 * 200ms + 20ms + 40ms); // three timed-out attempts and two backoffs
    CHECK(took < 5s);
    CHECK(sender.failed_attempts() == 3);
    CHECK(sender.delivered() == 0);
    CHECK(sender.pending() == 0);
    CHECK(receiver.count() == 3);
}

TEST_CASE("retries used up against a 500 count the alert failed and move on", "[webhook]")
{
    Receiver receiver([](size_t index) { return index < 4 ? Answer::ServerError : Answer::Ok; });
    WebhookSender sender(receiver.url(), quick(2s, 3));
    REQUIRE(sender.enqueue(alert("alice")));
    REQUIRE(sender.enqueue(alert("bob")));
    REQUIRE(eventually([&] { return sender.delivered() == 1; }));
    CHECK(sender.failed() == 1);
    CHECK(sender.failed_attempts() == 4);
    CHECK(ids(receiver.requests()).back() == "vpn-1/bob/2024-05-01T00:00:00Z/80");
}

TEST_CASE("a full queue drops and counts; enqueue never waits for the receiver", "[webhook]")
{
    Receiver receiver([](size_t) { return Answer::Hang; });
    auto options = quick(30s, 5);
    options.capacity = 1000;
    std::optional<WebhookSender> sender(std::in_place, receiver.url(), options);
    REQUIRE(sender->enqueue(alert("first")));
    REQUIRE(eventually([&] { return receiver.count() == 1; })); // in flight, hung for 30 s

    auto slowest = Clock::duration::zero();
    const auto start = Clock::now();
    int accepted = 0;
    for (int i = 0; i < 1100; ++i) {
        const auto before = Clock::now();
        accepted += sender->enqueue(alert("user-" + std::to_string(i)));
        slowest = std::max(slowest, Clock::now() - before);
    }
    const auto total = Clock::now() - start;
    CHECK(accepted == 999); // the capacity counts the one in flight
    CHECK(sender->dropped() == 101);
    CHECK(sender->pending() == 1000);
    // Far below the 30 s the request in flight hangs for: nobody waited for it.
    CHECK(slowest < 500ms);
    CHECK(total < 2s);

    // Stopping does not wait for the hung request (30 s) either.
    const auto stopping = Clock::now();
    sender.reset();
    CHECK(Clock::now() - stopping < 2s);
}

TEST_CASE("stopping interrupts a backoff", "[webhook]")
{
    Receiver receiver([](size_t) { return Answer::ServerError; });
    auto options = quick(2s, 5);
    options.first_backoff = 30s;
    std::optional<WebhookSender> sender(std::in_place, receiver.url(), options);
    REQUIRE(sender->enqueue(alert("alice")));
    REQUIRE(eventually([&] { return sender->failed_attempts() == 1; }));
    const auto stopping = Clock::now();
    sender.reset();
    CHECK(Clock::now() - stopping < 2s);
    CHECK(receiver.count() == 1);
}

TEST_CASE("the backoff doubles up to its cap", "[webhook]")
{
    // Attempts at 0, +50, +100, +200, +200 ms: the gaps show the schedule.
    std::mutex mutex;
    std::vector<Clock::time_point> arrivals;
    Receiver receiver([&](size_t) {
        std::lock_guard lock(mutex);
        arrivals.push_back(Clock::now());
        return Answer::ServerError;
    });
    auto options = quick(2s, 4);
    options.first_backoff = 50ms;
    options.max_backoff = 200ms;
    WebhookSender sender(receiver.url(), options);
    REQUIRE(sender.enqueue(alert("alice")));
    REQUIRE(eventually([&] { return sender.failed() == 1; }));
    std::lock_guard lock(mutex);
    REQUIRE(arrivals.size() == 5);
    const std::vector<std::chrono::milliseconds> expected{50ms, 100ms, 200ms, 200ms};
    for (size_t i = 0; i < expected.size(); ++i) {
        const auto gap = std::chrono::duration_cast<std::chrono::milliseconds>(arrivals[i + 1] - arrivals[i]);
        INFO("gap " << i << ": " << gap.count() << " ms");
        CHECK(gap >= expected[i]);
        CHECK(gap < expected[i] + 500ms); // generous: a loaded machine is slow, never early
    }
}

TEST_CASE("webhook URLs must be http or https", "[webhook]")
{
    CHECK_THROWS_AS(WebhookSender("ftp://example.com/", 1s, 1), std::invalid_argument);
    CHECK_THROWS_AS(WebhookSender("file:///etc/passwd", 1s, 1), std::invalid_argument);
    CHECK_THROWS_AS(WebhookSender("", 1s, 1), std::invalid_argument);
    CHECK_NOTHROW(WebhookSender("HTTPS://example.com/hook", 1s, 1));
}
