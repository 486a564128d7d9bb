#include "cli/top.h"

#include <poll.h>
#include <signal.h>
#include <termios.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <thread>

#include <nlohmann/json.hpp>

#include "cli/api_client.h"
#include "cli/exit_codes.h"
#include "top_view.h"

namespace vpnmeter {
namespace {

volatile sig_atomic_t g_stop = 0;
void on_stop_signal(int) { g_stop = 1; }

int64_t unix_now() { return static_cast<int64_t>(std::time(nullptr)); }

// One reading of GET /v1/quotas, or the exit code and message of why not.
struct Reading {
    nlohmann::json body;
    int code = exit_code::kOk;
    std::string error;
};

int report(const Reading& failed)
{
    std::fprintf(stderr, "vpnmeter top: %s\n", failed.error.c_str());
    return failed.code;
}

Reading read_quotas(const TopOptions& o)
{
    auto reply = api_request("GET", o.api + "/v1/quotas", {}, o.token);
    if (!reply) return {nullptr, exit_code::kUnreachable, reply.error().message()};
    if (reply->status != 200)
        return {nullptr, exit_code::of_http_status(reply->status),
                "the agent answered " + std::to_string(reply->status) + ": " + reply->body +
                    (reply->status == 404 ? " (an agent older than GET /v1/quotas?)" : "")};
    try {
        return {nlohmann::json::parse(reply->body), exit_code::kOk, {}};
    } catch (const std::exception& e) {
        return {nullptr, exit_code::kError, std::string("unreadable answer from the agent: ") + e.what()};
    }
}

// Raw keys without echo, the alternate screen and a hidden cursor while
// it lives; everything put back when it goes (q, Ctrl-C, SIGTERM, an error).
class Screen {
public:
    Screen()
    {
        keys_ = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved_) == 0;
        if (keys_) {
            termios raw = saved_;
            raw.c_lflag &= ~static_cast<tcflag_t>(ICANON | ECHO);
            raw.c_cc[VMIN] = 0;
            raw.c_cc[VTIME] = 0;
            tcsetattr(STDIN_FILENO, TCSANOW, &raw);
        }
        std::fputs("\x1b[?1049h\x1b[?25l", stdout);
        std::fflush(stdout);
    }
    ~Screen()
    {
        std::fputs("\x1b[?25h\x1b[?1049l", stdout);
        std::fflush(stdout);
        if (keys_) tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
    }
    Screen(const Screen&) = delete;
    Screen& operator=(const Screen&) = delete;

    void draw(const std::string& frame)
    {
        std::fputs("\x1b[H\x1b[2J", stdout);
        std::fputs(frame.c_str(), stdout);
        std::fputs("\nq: quit\n", stdout);
        std::fflush(stdout);
    }

    // Waits up to `seconds`; false when q was pressed or a signal came.
    bool wait(double seconds)
    {
        const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
        while (!g_stop) {
            const auto left =
                std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
            if (left.count() <= 0) return true;
            pollfd fd{STDIN_FILENO, POLLIN, 0};
            if (poll(&fd, keys_ ? 1 : 0, static_cast<int>(left.count())) > 0 && (fd.revents & POLLIN)) {
                char key = 0;
                if (read(STDIN_FILENO, &key, 1) == 1 && (key == 'q' || key == 'Q' || key == 3)) return false;
            }
        }
        return false;
    }

private:
    bool keys_ = false;
    termios saved_{};
};

} // namespace

int run_top(const TopOptions& o)
{
    if (!(o.interval >= 0.1 && o.interval <= 3600)) {
        std::fprintf(stderr, "vpnmeter top: --interval: expected 0.1 to 3600 seconds\n");
        return exit_code::kUsage;
    }
    TopStyle style;
    style.exact_bytes = o.exact_bytes;
    style.color = !o.once && isatty(STDOUT_FILENO) && !std::getenv("NO_COLOR");

    Reading before = read_quotas(o);
    if (before.code) return report(before);
    auto last = std::chrono::steady_clock::now();

    if (o.once || o.json) {
        // Rates need a second reading.
        std::this_thread::sleep_for(std::chrono::duration<double>(o.interval));
        Reading now = read_quotas(o);
        if (now.code) return report(now);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - last).count();
        const auto users = top_users(now.body, before.body, seconds);
        if (o.json)
            std::cout
                << top_json(users, unix_now(), seconds).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                << '\n';
        else
            std::cout << top_frame(users, unix_now(), style);
        return exit_code::kOk;
    }

    struct sigaction action {};
    action.sa_handler = on_stop_signal; // no SA_RESTART: poll returns at once
    for (int sig : {SIGINT, SIGTERM, SIGHUP})
        sigaction(sig, &action, nullptr);
    Reading failed;
    {
        Screen screen;
        screen.draw(top_frame(top_users(before.body, nullptr, 0), unix_now(), style));
        while (screen.wait(o.interval)) {
            Reading now = read_quotas(o);
            if (now.code) {
                failed = std::move(now); // said once the terminal is back
                break;
            }
            const auto at = std::chrono::steady_clock::now();
            const double seconds = std::chrono::duration<double>(at - last).count();
            screen.draw(top_frame(top_users(now.body, before.body, seconds), unix_now(), style));
            before = std::move(now);
            last = at;
        }
    }
    return failed.code ? report(failed) : exit_code::kOk;
}

} // namespace vpnmeter
