// Quota actions for Sing-Box users, which have no addresses the kernel
// could police: what the operator configured under singbox[].enforce runs
// when a user's state changes (block, unblock, throttle, unthrottle).
#pragma once

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "alerts/webhook.h"
#include "config.h"
#include "singbox/users_file.h"

namespace vpnmeter::singbox {

// What the quota engine wants for one user now.
struct Wanted {
    enum class Mode { allow, block, throttle } mode = Mode::allow;
    uint64_t download_bps = 0; // throttle: the rates
    uint64_t upload_bps = 0;
    std::string state; // the quota state's name, for the command and webhook
    bool operator==(const Wanted&) const = default;
};

// Runs commands one at a time on a worker thread (argv, never a shell;
// killed after 30 s), so a slow reload never stalls counting.
class CommandRunner {
public:
    CommandRunner();
    ~CommandRunner(); // waits for the command in progress, drops the rest
    void run(std::vector<std::string> argv, std::map<std::string, std::string> env = {});
    uint64_t failures() const;

private:
    struct State;
    std::unique_ptr<State> state_;
};

class Actions {
public:
    // Reads which users the config file has blocked already.
    explicit Actions(const SingboxInstance& instance);

    // Brings every user in `wanted` in line; acts on changes only. Users
    // not in `wanted` are left as they are.
    void apply(const std::map<std::string, Wanted>& wanted);
    // Users this instance has blocked (to keep asking about them even after
    // the server forgot their counters).
    std::set<std::string> blocked() const;
    bool configured() const;

private:
    void notify(const std::string& user, const char* action, const Wanted& wanted);

    SingboxInstance instance_;
    std::unique_ptr<UsersFile> file_;
    std::unique_ptr<CommandRunner> runner_;
    std::unique_ptr<WebhookSender> webhook_;
    std::map<std::string, Wanted::Mode> applied_;
};

} // namespace vpnmeter::singbox
