#include "alerts/webhook.h"

#include <curl/curl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <climits>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>

#include "time_format.h"

namespace vpnmeter {
namespace {

struct EasyDeleter {
    void operator()(CURL *easy) const { curl_easy_cleanup(easy); }
};
struct MultiDeleter {
    void operator()(CURLM *multi) const { curl_multi_cleanup(multi); }
};
struct HeadersDeleter {
    void operator()(curl_slist *headers) const { curl_slist_free_all(headers); }
};

// curl_global_init is not safe to race with other libcurl use: once, before
// the first handle.
void initialise_curl()
{
    static std::once_flag once;
    std::call_once(once, [] {
        if (CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT); rc != CURLE_OK)
            throw std::runtime_error(std::string("webhook: initialise libcurl: ") + curl_easy_strerror(rc));
    });
}

size_t discard_response(char *, size_t size, size_t count, void *)
{
    return size * count;
}

bool starts_with_nocase(const std::string &text, std::string_view prefix)
{
    if (text.size() < prefix.size()) return false;
    for (size_t i = 0; i < prefix.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(text[i])) != prefix[i]) return false;
    return true;
}

// Keeps the id's '/'-separated parts unambiguous whatever a name holds.
std::string escape_id_part(std::string_view text)
{
    std::string out;
    for (char c : text) {
        if (c == '%')
            out += "%25";
        else if (c == '/')
            out += "%2F";
        else
            out += c;
    }
    return out;
}

struct Item {
    std::string id; // for the logs
    std::string body;
};

// Unreachable: no connection at all (refused, no route, name not found), so
// the receiver has seen nothing; Failed: it answered badly or not in time.
enum class Outcome { Delivered, Failed, Unreachable, Stopped };

bool unreachable(CURLcode code)
{
    return code == CURLE_COULDNT_CONNECT || code == CURLE_COULDNT_RESOLVE_HOST || code == CURLE_COULDNT_RESOLVE_PROXY;
}

} // namespace

struct WebhookSender::State {
    std::string url;
    WebhookOptions options;
    std::unique_ptr<CURLM, MultiDeleter> multi; // holds the connection cache: kept alive between posts
    std::unique_ptr<CURL, EasyDeleter> easy;
    std::unique_ptr<curl_slist, HeadersDeleter> headers;
    char error_text[CURL_ERROR_SIZE] = {};

    mutable std::mutex mutex;
    std::condition_variable wake;
    // The front is the item being sent; it leaves the queue when done. Only
    // the worker pops, so it may use the front unlocked (push_back keeps
    // references to the other elements valid).
    std::deque<Item> queue;
    std::atomic<bool> stopping = false; // set under `mutex`, read anywhere

    std::atomic<uint64_t> delivered = 0;
    std::atomic<uint64_t> failed = 0;
    std::atomic<uint64_t> dropped = 0;
    std::atomic<uint64_t> failed_attempts = 0;

    std::thread worker; // last: started once the rest is ready

    void run();
    bool send(const Item &item);
    // One POST. `problem` says what went wrong unless Delivered.
    Outcome post(const std::string &body, std::string &problem);
    std::chrono::milliseconds backoff(int attempt) const;
};

WebhookSender::WebhookSender(std::string url, std::chrono::milliseconds timeout, int retries)
    : WebhookSender(std::move(url), WebhookOptions{.timeout = timeout, .retries = retries})
{
}

WebhookSender::WebhookSender(std::string url, WebhookOptions options) : state_(std::make_unique<State>())
{
    if (!starts_with_nocase(url, "http://") && !starts_with_nocase(url, "https://"))
        throw std::invalid_argument("webhook URL '" + url + "' is not http:// or https://");
    if (options.retries < 0) throw std::invalid_argument("webhook retries must not be negative");
    if (options.capacity == 0) throw std::invalid_argument("webhook queue capacity must be at least 1");
    initialise_curl();

    State &s = *state_;
    s.url = std::move(url);
    s.options = options;
    s.multi.reset(curl_multi_init());
    s.easy.reset(curl_easy_init());
    s.headers.reset(curl_slist_append(nullptr, "Content-Type: application/json"));
    // "Expect:": no 100-continue round trip before a larger body.
    const bool headers = s.headers && curl_slist_append(s.headers.get(), "Expect:");
    if (!s.multi || !s.easy || !headers) throw std::runtime_error("webhook: libcurl: out of memory");

    CURL *easy = s.easy.get();
    const auto timeout_ms = static_cast<long>(std::min<int64_t>(options.timeout.count(), LONG_MAX));
    bool set = curl_easy_setopt(easy, CURLOPT_URL, s.url.c_str()) == CURLE_OK;
    set = set && curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK;
    set = set && curl_easy_setopt(easy, CURLOPT_HTTPHEADER, s.headers.get()) == CURLE_OK;
    set = set && curl_easy_setopt(easy, CURLOPT_USERAGENT, "vpnmeter/" VPNMETER_VERSION) == CURLE_OK;
    set = set && curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, timeout_ms) == CURLE_OK;
    set = set && curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms) == CURLE_OK;
    set = set && curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L) == CURLE_OK; // a worker thread: no SIGALRM
    set = set && curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, discard_response) == CURLE_OK;
    set = set && curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, s.error_text) == CURLE_OK;
    if (!set) throw std::runtime_error("webhook: libcurl refused the options for '" + s.url + "'");

    s.worker = std::thread([&s] { s.run(); });
}

WebhookSender::~WebhookSender()
{
    State &s = *state_;
    {
        std::lock_guard lock(s.mutex);
        s.stopping = true;
    }
    s.wake.notify_all();
    curl_multi_wakeup(s.multi.get()); // out of a request in flight
    s.worker.join();

    if (s.queue.empty()) return;
    constexpr size_t kNamed = 10;
    std::string ids;
    for (size_t i = 0; i < s.queue.size() && i < kNamed; ++i)
        ids += (i ? ", " : "") + s.queue[i].id;
    if (s.queue.size() > kNamed) ids += " and " + std::to_string(s.queue.size() - kNamed) + " more";
    spdlog::warn("webhook {}: stopping: {} alert(s) not delivered: {}", s.url, s.queue.size(), ids);
}

bool WebhookSender::enqueue(nlohmann::json body)
{
    State &s = *state_;
    Item item;
    if (auto id = body.find("id"); body.is_object() && id != body.end() && id->is_string()) item.id = *id;
    // Names are bytes from the VPN: invalid UTF-8 becomes U+FFFD, not an exception.
    item.body = body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    {
        std::lock_guard lock(s.mutex);
        if (s.queue.size() < s.options.capacity) {
            s.queue.push_back(std::move(item));
            s.wake.notify_one();
            return true;
        }
    }
    const uint64_t dropped = ++s.dropped;
    if (dropped == 1 || dropped % 1000 == 0)
        spdlog::warn("webhook {}: {} alerts waiting, dropping {} ({} dropped so far)", s.url, s.options.capacity,
                     item.id, dropped);
    return false;
}

void WebhookSender::State::run()
{
    for (;;) {
        const Item *item = nullptr;
        {
            std::unique_lock lock(mutex);
            wake.wait(lock, [&] { return stopping || !queue.empty(); });
            if (stopping) return;
            item = &queue.front();
        }
        const bool finished = send(*item);
        std::lock_guard lock(mutex);
        if (finished) queue.pop_front(); // else stopping: it stays queued, logged as not delivered
        if (stopping) return;
    }
}

// Until delivered or out of retries (true), or stopping (false). Only
// attempts the receiver saw use up retries: while it cannot be reached at
// all the alert stays at the head of the queue, retried at the backoff's
// pace for as long as the agent runs.
bool WebhookSender::State::send(const Item &item)
{
    int answered_badly = 0;
    for (int attempt = 1;; ++attempt) {
        std::string problem;
        const Outcome outcome = post(item.body, problem);
        if (outcome == Outcome::Stopped) return false;
        if (outcome == Outcome::Delivered) {
            ++delivered;
            spdlog::debug("webhook {}: delivered {} (attempt {})", url, item.id, attempt);
            return true;
        }
        ++failed_attempts;
        if (outcome == Outcome::Failed && ++answered_badly > options.retries) {
            ++failed;
            spdlog::error("webhook {}: giving up on {} after {} attempts: {}", url, item.id, attempt, problem);
            return true;
        }
        const auto wait = backoff(attempt);
        if (outcome == Outcome::Unreachable)
            spdlog::warn("webhook {}: {} not delivered ({}); kept queued while the receiver is unreachable, attempt "
                         "{} in {} ms",
                         url, item.id, problem, attempt + 1, wait.count());
        else
            spdlog::warn("webhook {}: {} not delivered ({}); attempt {} of {} in {} ms", url, item.id, problem,
                         answered_badly + 1, options.retries + 1, wait.count());
        std::unique_lock lock(mutex);
        if (wake.wait_for(lock, wait, [&] { return stopping.load(); })) return false;
    }
}

std::chrono::milliseconds WebhookSender::State::backoff(int attempt) const
{
    auto wait = options.first_backoff;
    for (int i = 1; i < attempt && wait < options.max_backoff; ++i)
        wait *= 2;
    return std::min(wait, options.max_backoff);
}

Outcome WebhookSender::State::post(const std::string &body, std::string &problem)
{
    CURL *handle = easy.get();
    error_text[0] = '\0';
    curl_easy_setopt(handle, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
    curl_easy_setopt(handle, CURLOPT_POSTFIELDS, body.c_str());
    if (CURLMcode rc = curl_multi_add_handle(multi.get(), handle); rc != CURLM_OK) {
        problem = curl_multi_strerror(rc);
        return Outcome::Failed;
    }
    std::optional<CURLcode> result;
    while (!result && !stopping) {
        int running = 0;
        CURLMcode rc = curl_multi_perform(multi.get(), &running);
        int left = 0;
        while (CURLMsg *message = curl_multi_info_read(multi.get(), &left)) {
            if (message->msg == CURLMSG_DONE) result = message->data.result;
        }
        if (rc == CURLM_OK && !result) rc = curl_multi_poll(multi.get(), nullptr, 0, 1000, nullptr);
        if (rc != CURLM_OK) {
            problem = curl_multi_strerror(rc);
            break;
        }
    }
    curl_multi_remove_handle(multi.get(), handle);
    if (!result) return stopping ? Outcome::Stopped : Outcome::Failed;
    if (*result != CURLE_OK) {
        problem = error_text[0] ? error_text : curl_easy_strerror(*result);
        return unreachable(*result) ? Outcome::Unreachable : Outcome::Failed;
    }
    long status = 0;
    curl_easy_getinfo(handle, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 200 && status < 300) return Outcome::Delivered;
    problem = "HTTP status " + std::to_string(status);
    return Outcome::Failed;
}

uint64_t WebhookSender::delivered() const
{
    return state_->delivered;
}

uint64_t WebhookSender::failed() const
{
    return state_->failed;
}

uint64_t WebhookSender::dropped() const
{
    return state_->dropped;
}

uint64_t WebhookSender::failed_attempts() const
{
    return state_->failed_attempts;
}

size_t WebhookSender::pending() const
{
    std::lock_guard lock(state_->mutex);
    return state_->queue.size();
}

std::string node_name()
{
    char name[HOST_NAME_MAX + 1] = {};
    if (gethostname(name, sizeof name - 1) != 0 || !name[0]) return "unknown";
    return name;
}

nlohmann::json alert_payload(const std::string &user, const std::string &plan, uint64_t used_bytes,
                             uint64_t limit_bytes, int percent, int64_t period_start, int64_t period_end,
                             const std::string &node)
{
    const std::string start = format_rfc3339(period_start);
    return {
        {"id", escape_id_part(node) + "/" + escape_id_part(user) + "/" + start + "/" + std::to_string(percent)},
        {"user", user},
        {"plan", plan},
        {"used", used_bytes},
        {"limit", limit_bytes},
        {"percent", percent},
        {"period", {{"start", start}, {"end", format_rfc3339(period_end)}}},
        {"node", node},
    };
}

} // namespace vpnmeter
