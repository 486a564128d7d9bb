// The JSON API's routes over the store (and, later, quota state).
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "http/server.h"
#include "store/store.h"

namespace vpnmeter::http {

// What the API needs from the running daemon. Handlers run on the HTTP
// server's threads: everything here must be safe to call from them.
struct ApiContext {
    Store* store = nullptr;                 // reads are MVCC snapshots
    std::function<bool()> ready;            // attached and committing cycles
    // Quota of a user as JSON; nullopt: no such user/plan (404).
    std::function<std::optional<std::string>(const std::string& user)> get_quota;
    // Applies a PUT body; returns {status, body}.
    std::function<Response(const std::string& user, const std::string& body)> put_quota;
    // GET /v1/status: the agent, its interfaces, sources and store as JSON.
    std::function<nlohmann::json()> status;
    // GET /v1/quotas: every user with usage or a grant, by name (see QuotaController::quotas).
    std::function<std::map<std::string, nlohmann::json>()> quotas;
};

std::shared_ptr<Router> make_api(ApiContext context);

} // namespace vpnmeter::http
