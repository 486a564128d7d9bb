// The HTTP API behind civetweb: the input is one raw request ("GET
// /v1/sessions?active=1 HTTP/1.1", headers, blank line, body), split here
// the way civetweb hands it over, then served exactly as the daemon serves
// it (http::serve: query parsing, the Authenticator, the router, the real
// handlers over a real LMDB store, PUT bodies through the real grant parser).
//
// Besides crashes, it checks the two promises the API makes about access:
//  - a 2xx under /v1/ or /session/ needs one of the configured tokens;
//  - a tenant's token (or none) never gets data of a user outside the
//    tenant: carol's session, carol's usage and the unattributed traffic
//    carry marker values that must not appear in any answer to a request
//    without an all-users token (unless the request itself holds them,
//    maybe percent-encoded, since errors quote what was sent).
#include <fnmatch.h>
#include <stdlib.h>
#include <strings.h>

#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "config.h"
#include "http/api.h"
#include "http/auth.h"
#include "quota/engine.h"
#include "quota/grant_request.h"
#include "store/store.h"

using namespace vpnmeter;

namespace {

// No token is a substring of another, so "the request holds token X" is a
// plain substring test.
constexpr const char* kAdmin = "adm1n-7f3a9c2e4b6d8f01";
constexpr const char* kReader = "read3r-5e7c9a1b3d5f7e92";
constexpr const char* kTenant = "tenant-acme-2b4d6f8a0c1e3579";
constexpr const char* kTenantReader = "tenant-ro-8a6c4e2f0b9d7153";
constexpr int64_t kNow = 1795414983; // 2026-11-23T06:23:03Z

// What only carol's data and the unattributed traffic hold.
constexpr const char* kMarkers[] = {"198.51.100.99:4999", "987654321987", "555444333222"};

std::string hash(const char* token) { return http::to_hex(http::sha256(token)); }

struct Fixture {
    std::string dir;
    Config config;
    std::optional<Store> store;
    std::shared_ptr<http::Router> router;
    std::unique_ptr<http::Authenticator> auth;
    std::map<std::string, Grant> grants; // read only: every input starts from the same state

    Fixture()
    {
        char name[] = "/tmp/vpnmeter-fuzz-api-XXXXXX";
        if (!mkdtemp(name)) std::abort();
        dir = name;

        config = parse_config(std::string("interfaces: [tun0]\n"
                                          "quotas:\n"
                                          "  plans:\n"
                                          "    small: { limit: 10GB, period: monthly, action: block }\n"
                                          "    week: { limit: 1GB, period: weekly, action: { throttle: 1Mbit } }\n"
                                          "  users:\n"
                                          "    bob: small\n"
                                          "http:\n"
                                          "  tokens:\n"
                                          "    - { name: admin, sha256: ") + hash(kAdmin) + ", scope: admin }\n"
                              "    - { name: reader, sha256: " + hash(kReader) + ", scope: read }\n"
                              "    - { name: acme, sha256: " + hash(kTenant) + ", scope: admin, tenant: [\"acme-*\", bob] }\n"
                              "    - { name: acme-ro, sha256: " + hash(kTenantReader) + ", scope: read, tenant: \"acme-*\" }\n",
                              "fuzz.yaml");

        StoreOptions options;
        options.path = dir + "/store";
        options.initial_map_size = 1 << 20;
        auto opened = Store::open(options);
        if (!opened) std::abort();
        store.emplace(std::move(opened).value());

        CycleCommit cycle;
        cycle.time = kNow;
        auto add = [&](const std::string& user, const std::string& real_address, uint64_t upload) {
            Session s;
            s.id = "udp1194:" + user + ":1";
            s.user = user;
            s.instance = "udp1194";
            s.interface = "tun0";
            s.addresses = {"10.8.0." + std::to_string(cycle.sessions.size() + 2)};
            s.real_address = real_address;
            s.start = kNow - 60;
            s.usage.upload.bytes = upload;
            cycle.sessions.push_back(s);
            cycle.user_usage[user].upload.bytes = upload;
        };
        add("acme-1", "10.99.0.10:40823", 1000);
        add("bob", "10.99.0.11:59703", 2000);
        add("carol", kMarkers[0], 987654321987);
        cycle.unattributed["tun0"].upload.bytes = 555444333222;
        if (!store->commit(cycle)) std::abort();

        Grant topped;
        topped.topup_bytes = 5000;
        grants["bob"] = topped;

        http::ApiContext ctx;
        ctx.store = &*store;
        ctx.ready = [] { return true; };
        ctx.get_quota = [this](const std::string& user) -> std::optional<std::string> {
            return quota_json(evaluate(config.quotas, user, grant_of(user), 0, 0, kNow)).dump();
        };
        ctx.put_quota = [this](const std::string& user, const std::string& body) {
            auto grant = apply_grant_request(config.quotas, user, grant_of(user).value_or(Grant{}), body, kNow);
            if (!grant) return http::error(400, grant.error().message());
            return http::json(200, quota_json(evaluate(config.quotas, user, grant.value(), 0, 0, kNow)).dump());
        };
        router = http::make_api(ctx);
        auth = std::make_unique<http::Authenticator>(config.http_tokens, router);
    }

    ~Fixture()
    {
        store.reset();
        std::error_code ignored;
        std::filesystem::remove_all(dir, ignored);
    }

    std::optional<Grant> grant_of(const std::string& user) const
    {
        auto it = grants.find(user);
        return it == grants.end() ? std::nullopt : std::optional(it->second);
    }
};

Fixture* fixture;

// civetweb's split of a request: request line, headers to the blank line,
// then the body. Nullopt where civetweb would refuse it before any handler.
struct RawRequest {
    http::Request request;
    std::string query;
};

std::optional<RawRequest> split_request(const std::string& text)
{
    size_t end = text.find('\n');
    if (end == std::string::npos) return std::nullopt;
    std::string line = text.substr(0, end);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t space = line.find(' ');
    if (space == std::string::npos || space == 0) return std::nullopt;
    const size_t target_end = line.find(' ', space + 1);
    RawRequest raw;
    raw.request.method = line.substr(0, space);
    std::string target = line.substr(space + 1, target_end == std::string::npos ? std::string::npos : target_end - space - 1);
    if (target.empty() || target.front() != '/') return std::nullopt;
    const size_t question = target.find('?');
    raw.request.path = target.substr(0, question);
    if (question != std::string::npos) raw.query = target.substr(question + 1);

    size_t at = end + 1;
    while (at < text.size()) {
        end = text.find('\n', at);
        std::string header = text.substr(at, end == std::string::npos ? std::string::npos : end - at);
        at = end == std::string::npos ? text.size() : end + 1;
        if (!header.empty() && header.back() == '\r') header.pop_back();
        if (header.empty()) break;
        const size_t colon = header.find(':');
        if (colon == std::string::npos) return std::nullopt;
        if (colon == 13 && strncasecmp(header.c_str(), "Authorization", 13) == 0) {
            const size_t value = header.find_first_not_of(' ', colon + 1);
            raw.request.authorization = value == std::string::npos ? "" : header.substr(value);
        }
    }
    raw.request.body = text.substr(std::min(at, text.size()));
    return raw;
}

bool holds(const std::string& text, const char* what) { return text.find(what) != std::string::npos; }

// The request's text and its percent-decoding: what an answer may quote.
std::string quotable(const std::string& text)
{
    std::string decoded;
    for (size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '%' && i + 2 < text.size() && isxdigit(static_cast<unsigned char>(text[i + 1])) &&
            isxdigit(static_cast<unsigned char>(text[i + 2]))) {
            decoded += static_cast<char>(std::stoi(text.substr(i + 1, 2), nullptr, 16));
            i += 2;
        } else {
            decoded += text[i] == '+' ? ' ' : text[i];
        }
    }
    return text + "\n" + decoded;
}

// Markers in the answer's values, read as JSON: in the raw text, the escape
// of a control byte ends in two hex digits, which can complete a marker.
void markers_in(const nlohmann::json& value, std::vector<const char*>& found)
{
    if (value.is_string()) {
        for (const char* marker : kMarkers)
            if (holds(value.get<std::string>(), marker)) found.push_back(marker);
    } else if (value.is_number_integer()) {
        const std::string number = value.dump();
        for (const char* marker : kMarkers)
            if (number == marker) found.push_back(marker);
    } else if (value.is_object()) {
        for (const auto& [key, item] : value.items()) {
            markers_in(key, found);
            markers_in(item, found);
        }
    } else if (value.is_array()) {
        for (const auto& item : value) markers_in(item, found);
    }
}

} // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***)
{
    setenv("TZ", "UTC", 1);
    spdlog::set_level(spdlog::level::off); // handlers log every admin write
    fixture = new Fixture();
    std::atexit([] { delete fixture; });
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    const std::string text(reinterpret_cast<const char*>(data), size);
    auto raw = split_request(text);
    if (!raw) return 0;
    const std::string path = raw->request.path;
    auto segments = http::path_segments(path);

    const http::Handler handler = [](const http::Request& r) { return fixture->auth->dispatch(r); };
    const http::Response response = http::serve(handler, std::move(raw->request), raw->query);

    if (response.status < 100 || response.status > 599) std::abort();
    if (response.content_type != "application/json") std::abort(); // the API answers JSON only
    const auto body = nlohmann::json::parse(response.body, nullptr, false);
    if (body.is_discarded()) std::abort();

    const bool any_token = holds(text, kAdmin) || holds(text, kReader) || holds(text, kTenant) || holds(text, kTenantReader);
    const bool guarded = segments && !segments->empty() && (segments->front() == "v1" || segments->front() == "session");
    if (guarded && response.status < 300 && !any_token) std::abort(); // served without a token

    const bool sees_all = holds(text, kAdmin) || holds(text, kReader);
    if (!sees_all) {
        std::vector<const char*> found;
        markers_in(body, found);
        const std::string sent = quotable(text);
        for (const char* marker : found)
            if (!holds(sent, marker)) std::abort(); // another tenant's data
        // A user named in the path is inside the tenant, or the answer is not a success.
        if (response.status < 300 && segments && segments->size() >= 2) {
            const auto& s = *segments;
            const std::string* user = s[0] == "v1" && s.size() >= 3 && s[1] == "users" ? &s[2]
                                      : s[0] == "session"                            ? &s[1]
                                                                                     : nullptr;
            const bool in_tenant = user && (fnmatch("acme-*", user->c_str(), 0) == 0 || *user == "bob");
            if (user && !in_tenant) std::abort();
        }
    }
    return 0;
}
