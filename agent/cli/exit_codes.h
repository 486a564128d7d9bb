// vpnmeter's exit codes: the one place they are defined. Scripts rely on
// them, so a code keeps its meaning once released; new ones are appended.
#pragma once

namespace vpnmeter::exit_code {

constexpr int kOk = 0;
constexpr int kError = 1;         // anything else: data unreadable, unexpected answer
constexpr int kUsage = 2;         // bad arguments
constexpr int kUnreachable = 3;   // the agent's API could not be reached
constexpr int kNotFound = 4;      // unknown user or session
constexpr int kConfigInvalid = 5; // the configuration file is invalid (check-config, --config)
constexpr int kDenied = 6;        // the API refused: no token, a wrong one, or too little scope

// For --help and the docs.
constexpr const char* kHelp = "Exit codes: 0 ok, 1 error, 2 bad arguments, 3 agent unreachable, 4 not found "
                              "(user, session), 5 configuration invalid, 6 refused by the API (token or scope).";

// The code for an API answer that is not 200.
constexpr int of_http_status(long status)
{
    switch (status) {
    case 400: return kUsage;
    case 401:
    case 403: return kDenied;
    case 404: return kNotFound;
    default: return kError;
    }
}

} // namespace vpnmeter::exit_code
