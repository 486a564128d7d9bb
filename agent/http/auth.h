// Bearer tokens in front of the API: who may call /v1/... and /session/...,
// with what scope, and which users' data they see.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "config.h"
#include "http/server.h"

namespace vpnmeter::http {

// The SHA-256 of a token's text, as stored in http.tokens[].sha256.
std::array<uint8_t, 32> sha256(const std::string& text);
std::string to_hex(const std::array<uint8_t, 32>& digest);

// Whether "host:port" listens on loopback only (127.0.0.0/8, ::1, localhost).
bool is_loopback_listen(const std::string& listen);

// Wraps the router. Paths under /v1/ and /session/ need a token once any is
// configured; /healthz, /readyz and /metrics stay open. The caller's tenant
// reaches the handlers in Request::tenant.
class Authenticator {
public:
    Authenticator(std::vector<ApiToken> tokens, std::shared_ptr<const Router> router);

    Response dispatch(Request request) const;
    // SIGHUP: a revoked token stops working at once (any thread).
    void replace_tokens(std::vector<ApiToken> tokens);
    bool open() const;

private:
    std::shared_ptr<const std::vector<ApiToken>> tokens() const;

    mutable std::mutex mutex_;
    std::shared_ptr<const std::vector<ApiToken>> tokens_;
    std::shared_ptr<const Router> router_;
};

} // namespace vpnmeter::http
