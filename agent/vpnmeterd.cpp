// vpnmeterd: the metering daemon.
#include <pthread.h>

#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "config.h"
#include "daemon.h"
#include "datapath.h"
#include "http/auth.h"
#include "systemd_notify.h"

using namespace vpnmeter;

namespace {

constexpr const char* kDefaultConfig = "/etc/vpnmeter/vpnmeter.yaml";

Config load_or_exit(const std::string& path)
{
    try {
        return load_config(path);
    } catch (const ConfigError& e) {
        std::fprintf(stderr, "vpnmeterd: %s\n", e.what());
        std::exit(2);
    }
}

// The first line of stdin, without its line ending: what a client sends
// after "Authorization: Bearer ".
int print_token_hash()
{
    std::string token;
    std::getline(std::cin, token);
    while (!token.empty() && (token.back() == '\r' || token.back() == ' ' || token.back() == '\t')) token.pop_back();
    if (token.empty() || token.find_first_of(" \t") != std::string::npos) {
        std::fprintf(stderr, "vpnmeterd --hash-token: expected one token without spaces on stdin\n");
        return 2;
    }
    if (token.size() < 16)
        std::fprintf(stderr, "vpnmeterd --hash-token: warning: a %zu-character token is easy to guess; "
                             "use e.g. `openssl rand -hex 32`\n", token.size());
    std::printf("sha256: \"%s\"\n", http::to_hex(http::sha256(token)).c_str());
    return 0;
}

} // namespace

int main(int argc, char** argv)
{
    CLI::App app{"vpnmeterd: per-client traffic accounting for VPN nodes.\n"
                 "Counts bytes and packets per client address in the kernel (eBPF on tc) on the\n"
                 "configured interfaces. Programs and pinned maps outlive the daemon, so counting\n"
                 "continues while it restarts.",
                 "vpnmeterd"};
    std::string config_path = kDefaultConfig;
    std::string pin_path;
    bool detach = false;
    bool hash_token = false;
    std::string log_level;
    app.add_option("-c,--config", config_path, "YAML configuration file")->capture_default_str();
    app.add_flag("--detach", detach,
                 "remove the tc programs this agent attached and the maps it pinned, then exit "
                 "(counters are lost); run it in the network namespace the agent ran in");
    std::string check_path;
    auto* check_option = app.add_option("--check-config", check_path,
                                        "validate the configuration file (this one, else --config) and exit")
                             ->expected(0, 1)
                             ->type_name("[FILE]");
    app.add_flag("--hash-token", hash_token,
                 "read an API token from stdin and print the `sha256:` line for http.tokens (the file then "
                 "holds no secret), e.g. `openssl rand -hex 32 | tee token | vpnmeterd --hash-token`");
    app.add_option("--pin-path", pin_path, "override bpf.pin_path (with --detach: works without a config file)");
    app.add_option("--log-level", log_level, "trace, debug, info, warn or error (overrides log.level)");
    app.set_version_flag("--version", std::string("vpnmeterd ") + VPNMETER_VERSION);
    CLI11_PARSE(app, argc, argv);

    if (hash_token) return print_token_hash();

    if (check_option->count() > 0) {
        Config config = load_or_exit(check_path.empty() ? config_path : check_path);
        std::printf("%s: OK (%zu interface patterns, collect every %lld ms, max %u clients)\n", config.source.c_str(),
                    config.interfaces.size(), static_cast<long long>(config.collect_interval.count()),
                    config.max_clients);
        return 0;
    }

    if (detach) {
        if (pin_path.empty()) pin_path = load_or_exit(config_path).pin_path;
        auto summary = detach_all(pin_path);
        if (!summary) {
            if (summary.error().code == ENOENT) {
                std::printf("nothing pinned at %s; nothing to detach\n", pin_path.c_str());
                return 0;
            }
            std::fprintf(stderr, "vpnmeterd --detach: %s\n", summary.error().message().c_str());
            return 1;
        }
        std::fputs(summary->c_str(), stdout);
        return 0;
    }

    Config config = load_or_exit(config_path);
    if (!pin_path.empty()) config.pin_path = pin_path;
    if (!log_level.empty()) config.log_level = log_level;
    spdlog::set_level(spdlog::level::from_str(config.log_level));
    spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
    route_libbpf_logs(spdlog::get_level() <= spdlog::level::debug);
    for (const auto& section : config.unsupported_sections)
        spdlog::warn("{}: section `{}` is not supported by this version and is ignored", config.source, section);

    const sigset_t signals = daemon_signals();
    pthread_sigmask(SIG_BLOCK, &signals, nullptr); // before any thread exists
    const std::string ready_status = "counting on " + config.pin_path + "; store " + config.storage_path +
                                     (config.http_listen.empty() ? "" : "; API on " + config.http_listen);
    auto daemon = Daemon::start(std::move(config));
    if (!daemon) {
        spdlog::critical("{}", daemon.error().message());
        return 1;
    }
    systemd::notify_ready(ready_status);
    auto status = daemon.value()->run();
    if (!status) {
        spdlog::critical("{}", status.error().message());
        return 1;
    }
    return 0;
}
