// `vpnmeter top`: the live view.
#pragma once

#include <string>

namespace vpnmeter {

struct TopOptions {
    std::string api;       // base URL of the agent's API
    std::string token;     // bearer token, if the API needs one
    double interval = 1.0; // seconds between frames (and between the two readings of --once/--json)
    bool once = false;     // one frame, plain text
    bool json = false;     // one JSON snapshot
    bool exact_bytes = false;
};

// Returns an exit code (cli/exit_codes.h).
int run_top(const TopOptions& options);

} // namespace vpnmeter
