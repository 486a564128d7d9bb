#include "singbox/actions.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstring>
#include <ctime>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

extern char** environ;

namespace vpnmeter::singbox {

namespace {

constexpr auto kCommandTimeout = std::chrono::seconds(30);

std::string joined(const std::vector<std::string>& argv)
{
    std::string out;
    for (const auto& arg : argv) out += (out.empty() ? "" : " ") + arg;
    return out;
}

// Runs one command to completion (or kills it at the timeout); true on exit 0.
bool run_command(const std::vector<std::string>& argv, const std::map<std::string, std::string>& extra_env)
{
    std::vector<char*> args;
    for (const auto& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) env_strings.emplace_back(*e);
    for (const auto& [key, value] : extra_env) env_strings.push_back(key + "=" + value);
    std::vector<char*> env;
    for (auto& e : env_strings) env.push_back(e.data());
    env.push_back(nullptr);

    // The daemon blocks its signals for its signalfd; the child must not
    // inherit that mask.
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, args[0], nullptr, &attr, args.data(), env.data());
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
        spdlog::error("singbox: cannot run {}: {}", joined(argv), std::strerror(rc));
        return false;
    }
    const auto deadline = std::chrono::steady_clock::now() + kCommandTimeout;
    int status = 0;
    while (::waitpid(pid, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            spdlog::error("singbox: {} took longer than {} s and was killed", joined(argv), kCommandTimeout.count());
            return false;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return true;
    spdlog::error("singbox: {} failed ({} {})", joined(argv), WIFEXITED(status) ? "exit status" : "signal",
                  WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    return false;
}

} // namespace

struct CommandRunner::State {
    struct Job {
        std::vector<std::string> argv;
        std::map<std::string, std::string> env;
    };
    std::mutex mutex;
    std::condition_variable wake;
    std::deque<Job> jobs;
    bool stopping = false;
    uint64_t failures = 0;
    std::thread worker;

    void loop()
    {
        std::unique_lock lock(mutex);
        while (true) {
            wake.wait(lock, [this] { return stopping || !jobs.empty(); });
            if (stopping) return;
            Job job = std::move(jobs.front());
            jobs.pop_front();
            lock.unlock();
            const bool ok = run_command(job.argv, job.env);
            if (ok) spdlog::info("singbox: ran {}", joined(job.argv));
            lock.lock();
            if (!ok) ++failures;
        }
    }
};

CommandRunner::CommandRunner() : state_(std::make_unique<State>())
{
    state_->worker = std::thread([s = state_.get()] { s->loop(); });
}

CommandRunner::~CommandRunner()
{
    {
        std::lock_guard lock(state_->mutex);
        state_->stopping = true;
        for (const auto& job : state_->jobs) spdlog::warn("singbox: not run (stopping): {}", joined(job.argv));
    }
    state_->wake.notify_all();
    state_->worker.join();
}

void CommandRunner::run(std::vector<std::string> argv, std::map<std::string, std::string> env)
{
    {
        std::lock_guard lock(state_->mutex);
        state_->jobs.push_back({std::move(argv), std::move(env)});
    }
    state_->wake.notify_one();
}

uint64_t CommandRunner::failures() const
{
    std::lock_guard lock(state_->mutex);
    return state_->failures;
}

Actions::Actions(const SingboxInstance& instance) : instance_(instance)
{
    if (!instance_.config_file.empty()) {
        file_ = std::make_unique<UsersFile>(instance_.config_file);
        if (auto blocked = file_->blocked()) {
            for (const auto& user : *blocked) applied_[user] = Wanted::Mode::block;
        } else {
            spdlog::error("singbox {}: {}", instance_.name, blocked.error().message());
        }
    }
    if (!instance_.reload_command.empty() || !instance_.command.empty()) runner_ = std::make_unique<CommandRunner>();
    if (!instance_.webhook.empty()) webhook_ = std::make_unique<WebhookSender>(instance_.webhook, WebhookOptions{});
}

bool Actions::configured() const { return file_ || runner_ || webhook_; }

std::set<std::string> Actions::blocked() const
{
    std::set<std::string> users;
    for (const auto& [user, mode] : applied_)
        if (mode == Wanted::Mode::block) users.insert(user);
    return users;
}

void Actions::apply(const std::map<std::string, Wanted>& wanted)
{
    bool file_changed = false;
    for (const auto& [user, want] : wanted) {
        const auto was = applied_.contains(user) ? applied_[user] : Wanted::Mode::allow;
        if (want.mode == was) continue;
        if (file_ && (want.mode == Wanted::Mode::block || was == Wanted::Mode::block)) {
            auto changed = want.mode == Wanted::Mode::block ? file_->block(user) : file_->unblock(user);
            if (!changed) {
                // Not applied: tried again next cycle.
                spdlog::error("singbox {}: {} {}: {}", instance_.name,
                              want.mode == Wanted::Mode::block ? "block" : "unblock", user, changed.error().message());
                continue;
            }
            if (!*changed && want.mode == Wanted::Mode::block)
                spdlog::warn("singbox {}: {} is in no user list of {}: nothing to take out", instance_.name, user,
                             file_->path());
            file_changed = file_changed || *changed;
        }
        if (was == Wanted::Mode::block) notify(user, "unblock", want);
        if (was == Wanted::Mode::throttle) notify(user, "unthrottle", want);
        if (want.mode == Wanted::Mode::block) notify(user, "block", want);
        if (want.mode == Wanted::Mode::throttle) notify(user, "throttle", want);
        spdlog::info("singbox {}: {} is now {}", instance_.name, user, want.state);
        if (want.mode == Wanted::Mode::allow) applied_.erase(user);
        else applied_[user] = want.mode;
    }
    if (file_changed && !instance_.reload_command.empty()) runner_->run(instance_.reload_command);
}

void Actions::notify(const std::string& user, const char* action, const Wanted& wanted)
{
    if (!instance_.command.empty()) {
        auto argv = instance_.command;
        argv.insert(argv.end(), {action, user, instance_.name});
        runner_->run(std::move(argv), {{"VPNMETER_QUOTA_STATE", wanted.state},
                                       {"VPNMETER_DOWNLOAD_BPS", std::to_string(wanted.download_bps)},
                                       {"VPNMETER_UPLOAD_BPS", std::to_string(wanted.upload_bps)}});
    }
    if (webhook_) {
        const auto now = static_cast<int64_t>(std::time(nullptr));
        webhook_->enqueue({{"id", node_name() + "/" + instance_.name + "/" + user + "/" + action + "/" + std::to_string(now)},
                           {"user", user},
                           {"instance", instance_.name},
                           {"action", action},
                           {"state", wanted.state},
                           {"download_bps", wanted.download_bps},
                           {"upload_bps", wanted.upload_bps},
                           {"node", node_name()},
                           {"time", now}});
    }
}

} // namespace vpnmeter::singbox
