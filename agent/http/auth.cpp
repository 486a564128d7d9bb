#include "http/auth.h"

#include <arpa/inet.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <strings.h>

#include <stdexcept>

#include <spdlog/spdlog.h>

namespace vpnmeter::http {
namespace {

// "Bearer <token>" (the scheme in any case); nullopt for anything else.
std::optional<std::string> bearer_token(const std::string& header)
{
    constexpr std::string_view scheme = "bearer";
    const size_t start = header.find_first_not_of(" \t");
    if (start == std::string::npos || header.size() < start + scheme.size() + 1 ||
        strncasecmp(header.c_str() + start, scheme.data(), scheme.size()) != 0)
        return std::nullopt;
    const size_t token = header.find_first_not_of(" \t", start + scheme.size());
    if (token == start + scheme.size() || token == std::string::npos) return std::nullopt; // "Bearerx", "Bearer "
    const size_t end = header.find_last_not_of(" \t\r\n");
    return header.substr(token, end + 1 - token);
}

Response unauthorized(const std::string& message, bool token_sent)
{
    Response response = error(401, message);
    response.headers.emplace_back("WWW-Authenticate", token_sent ? R"(Bearer realm="vpnmeter", error="invalid_token")"
                                                                 : R"(Bearer realm="vpnmeter")");
    return response;
}

bool read_only(const std::string& method) { return method == "GET" || method == "HEAD"; }

} // namespace

std::array<uint8_t, 32> sha256(const std::string& text)
{
    std::array<uint8_t, 32> digest{};
    unsigned int size = 0;
    if (EVP_Digest(text.data(), text.size(), digest.data(), &size, EVP_sha256(), nullptr) != 1 ||
        size != digest.size())
        throw std::runtime_error("OpenSSL: SHA-256 failed");
    return digest;
}

std::string to_hex(const std::array<uint8_t, 32>& digest)
{
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (uint8_t byte : digest) out += {hex[byte >> 4], hex[byte & 15]};
    return out;
}

bool is_loopback_listen(const std::string& listen)
{
    const size_t colon = listen.rfind(':');
    std::string host = listen.substr(0, colon == std::string::npos ? 0 : colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    if (host == "localhost") return true;
    in_addr v4{};
    if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
    in6_addr v6{};
    if (inet_pton(AF_INET6, host.c_str(), &v6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&v6) || (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127);
    return false; // "", a host name, 0.0.0.0, [::]: reachable from elsewhere
}

Authenticator::Authenticator(std::vector<ApiToken> tokens, std::shared_ptr<const Router> router)
    : tokens_(std::make_shared<const std::vector<ApiToken>>(std::move(tokens))), router_(std::move(router))
{
}

void Authenticator::replace_tokens(std::vector<ApiToken> tokens)
{
    auto fresh = std::make_shared<const std::vector<ApiToken>>(std::move(tokens));
    std::lock_guard lock(mutex_);
    tokens_ = std::move(fresh);
}

std::shared_ptr<const std::vector<ApiToken>> Authenticator::tokens() const
{
    std::lock_guard lock(mutex_);
    return tokens_;
}

bool Authenticator::open() const { return tokens()->empty(); }

Response Authenticator::dispatch(Request request) const
{
    auto segments = path_segments(request.path);
    if (!segments) return error(400, segments.error().message());
    const bool guarded = !segments->empty() && (segments->front() == "v1" || segments->front() == "session");
    const auto tokens = this->tokens();
    if (!guarded || tokens->empty()) return router_->dispatch(std::move(request));

    const auto presented = bearer_token(request.authorization);
    if (!presented) return unauthorized("missing bearer token: send Authorization: Bearer <token>", false);
    // Every configured hash is compared, in constant time, so the answer's
    // timing says nothing about how close a guess was.
    const auto digest = sha256(*presented);
    const ApiToken* caller = nullptr;
    for (const ApiToken& token : *tokens)
        if (CRYPTO_memcmp(token.sha256.data(), digest.data(), digest.size()) == 0) caller = &token;
    if (!caller) {
        spdlog::debug("http {} {}: unknown token", request.method, request.path);
        return unauthorized("unknown token", true);
    }
    if (caller->scope == ApiToken::Scope::read && !read_only(request.method))
        return error(403, "token '" + caller->name + "' has scope read: " + request.method + " needs scope admin");

    request.tenant = caller->tenant;
    const std::string method = request.method, path = request.path;
    Response response = router_->dispatch(std::move(request));
    if (!read_only(method)) spdlog::info("http {} {} by token '{}': {}", method, path, caller->name, response.status);
    return response;
}

} // namespace vpnmeter::http
