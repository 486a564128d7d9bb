#include <catch2/catch.hpp>

#include <ctime>

#include <nlohmann/json.hpp>

#include "config.h"
#include "http/api.h"
#include "http/auth.h"
#include "test_support.h"

using namespace vpnmeter;
using namespace vpnmeter::http;
using vpnmeter::testing::TempDir;
using vpnmeter::testing::config_error;

namespace {

constexpr const char* kAdmin = "admin-0123456789abcdef";
constexpr const char* kReader = "reader-0123456789abcdef";
constexpr const char* kAcme = "acme-0123456789abcdef";
constexpr const char* kAcmeReader = "acme-reader-0123456789";


std::string hex_of(const std::string& token) { return to_hex(sha256(token)); }

// interfaces + an http section with these token lines.
std::string with_tokens(const std::string& lines) { return "interfaces: [tun0]\nhttp:\n  tokens:\n" + lines; }

std::vector<ApiToken> test_tokens()
{
    return parse_config(with_tokens("    - { name: admin, sha256: " + hex_of(kAdmin) + ", scope: admin }\n"
                                    "    - { name: reader, sha256: " + hex_of(kReader) + ", scope: read }\n"
                                    "    - { name: acme, sha256: " + hex_of(kAcme) +
                                    ", scope: admin, tenant: [\"acme-*\", bob] }\n"
                                    "    - { name: acme-read, sha256: " + hex_of(kAcmeReader) +
                                    ", scope: read, tenant: \"acme-*\" }\n"),
                        "test.yaml")
        .http_tokens;
}

Request request(const std::string& method, const std::string& path, const char* token = nullptr,
                const std::string& body = "")
{
    Request r;
    r.method = method;
    r.path = path;
    r.body = body;
    if (token) r.authorization = std::string("Bearer ") + token;
    return r;
}

std::string error_of(const Response& r) { return nlohmann::json::parse(r.body).at("error"); }

std::string header(const Response& r, const std::string& name)
{
    for (const auto& [key, value] : r.headers)
        if (key == name) return value;
    return {};
}

Session session(const std::string& id, const std::string& user)
{
    Session s;
    s.id = id;
    s.user = user;
    s.instance = "udp1194";
    s.interface = "tun0";
    s.start = static_cast<int64_t>(std::time(nullptr)) - 60;
    s.usage.upload.bytes = 100;
    return s;
}

std::vector<std::string> users_in(const Response& r)
{
    std::vector<std::string> users;
    const auto body = nlohmann::json::parse(r.body);
    for (const auto& s : body.at("sessions")) users.push_back(s.at("user"));
    std::sort(users.begin(), users.end());
    return users;
}

// The real API over a real store holding sessions of four users, and
// quota callbacks that echo the user.
struct Api {
    TempDir dir;
    Store store;
    std::shared_ptr<Router> router;

    static Store open(const TempDir& dir)
    {
        StoreOptions options;
        options.path = dir.path() + "/store";
        options.initial_map_size = 1 << 20;
        auto store = Store::open(options);
        if (!store) FAIL("open store: " << store.error().message());
        return std::move(store).value();
    }

    Api() : dir("vpnmeter-auth"), store(open(dir))
    {
        CycleCommit cycle;
        cycle.time = static_cast<int64_t>(std::time(nullptr));
        for (const char* user : {"acme-1", "acme-2", "bob", "carol"}) {
            cycle.sessions.push_back(session(std::string("udp1194:") + user + ":1", user));
            cycle.user_usage[user].upload.bytes = 100;
        }
        cycle.unattributed["tun0"].upload.bytes = 7;
        if (auto status = store.commit(cycle); !status) FAIL("commit: " << status.error().message());

        ApiContext ctx;
        ctx.store = &store;
        ctx.ready = [] { return true; };
        ctx.get_quota = [](const std::string& user) -> std::optional<std::string> {
            return nlohmann::json{{"user", user}}.dump();
        };
        ctx.put_quota = [](const std::string& user, const std::string&) {
            return json(200, nlohmann::json{{"user", user}, {"changed", true}}.dump());
        };
        router = make_api(ctx);
    }
};

} // namespace

TEST_CASE("tokens are hashed with SHA-256", "[http][auth]")
{
    CHECK(to_hex(sha256("abc")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(to_hex(sha256("")) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST_CASE("http.tokens parse: hashes, scopes and tenants", "[http][auth][config]")
{
    const auto tokens = test_tokens();
    REQUIRE(tokens.size() == 4);
    CHECK(tokens[0].name == "admin");
    CHECK(tokens[0].scope == ApiToken::Scope::admin);
    CHECK(tokens[0].sha256 == sha256(kAdmin));
    CHECK_FALSE(tokens[0].tenant);
    CHECK(tokens[1].scope == ApiToken::Scope::read);
    CHECK(tokens[2].tenant == std::vector<std::string>{"acme-*", "bob"});
    CHECK(tokens[3].tenant == std::vector<std::string>{"acme-*"}); // a single glob as a scalar

    // Upper-case hex is the same hash.
    std::string upper = hex_of(kAdmin);
    std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
    CHECK(parse_config(with_tokens("    - { name: a, sha256: " + upper + ", scope: read }\n"), "test.yaml")
              .http_tokens[0]
              .sha256 == sha256(kAdmin));
    CHECK(parse_config("interfaces: [tun0]\n", "test.yaml").http_tokens.empty());
}

TEST_CASE("http.tokens errors are located and say what was expected", "[http][auth][config]")
{
    const std::string hash = hex_of(kAdmin);
    CHECK(config_error(with_tokens("    - { name: a, sha256: abc, scope: read }\n")) ==
          "test.yaml:4:26: http.tokens[0].sha256: expected the 64 hex digits of the token's SHA-256 (from "
          "`vpnmeterd --hash-token`), got 'abc' (3 characters)");
    CHECK(config_error(with_tokens("    - { name: a, sha256: " + std::string(63, 'a') + "g, scope: read }\n"))
              .find("http.tokens[0].sha256: expected the 64 hex digits") != std::string::npos);
    CHECK(config_error(with_tokens("    - { name: a, sha256: " + hash + ", scope: write }\n")) ==
          "test.yaml:4:99: http.tokens[0].scope: expected read or admin, got 'write'");
    CHECK(config_error(with_tokens("    - { name: a, sha256: " + hash + ", scope: read }\n"
                                   "    - { name: a, sha256: " + hex_of(kReader) + ", scope: read }\n")) ==
          "test.yaml:5:15: http.tokens[1].name: 'a' is used twice");
    CHECK(config_error(with_tokens("    - { name: a, sha256: " + hash + ", scope: read }\n"
                                   "    - { name: b, sha256: " + hash + ", scope: admin }\n")) ==
          "test.yaml:5:26: http.tokens[1].sha256: the same token as 'a': each needs its own");
    CHECK(config_error(with_tokens("    - { name: a, sha256: " + hash + " }\n")) ==
          "test.yaml:4:7: http.tokens[0].scope: missing");
    CHECK(config_error(with_tokens("    - { name: a, token: s3cret, scope: read }\n")) ==
          "test.yaml:4:25: http.tokens[0].token: tokens are not written in the file: put the output of "
          "`vpnmeterd --hash-token` in `sha256`");
    CHECK(config_error(with_tokens("    - { name: a, sha256: " + hash + ", scope: read, tenants: [x] }\n")) ==
          "test.yaml:4:105: http.tokens[0].tenants: unknown key (expected one of: name, sha256, scope, tenant)");
    CHECK(config_error(with_tokens("    - { name: a, sha256: " + hash + ", scope: read, tenant: [] }\n")) ==
          "test.yaml:4:113: http.tokens[0].tenant: expected at least one user name or glob (leave `tenant` out "
          "for all users)");
    CHECK(config_error(with_tokens("    - { name: \"a b\", sha256: " + hash + ", scope: read }\n")) ==
          "test.yaml:4:15: http.tokens[0].name: expected a non-empty name without spaces");
    CHECK(config_error("interfaces: [tun0]\nhttp: { tokens: { a: b } }\n")
              .find("test.yaml:2:17: http.tokens: expected a list like") == 0);
}

TEST_CASE("loopback listen addresses", "[http][auth]")
{
    for (const char* listen :
         {"127.0.0.1:9477", "127.1.2.3:80", "[::1]:9477", "localhost:9477", "[::ffff:127.0.0.1]:1"})
        CHECK(is_loopback_listen(listen));
    for (const char* listen : {"0.0.0.0:9477", "[::]:9477", "10.0.0.1:9477", "node.example:9477", ":9477"})
        CHECK_FALSE(is_loopback_listen(listen));
}

TEST_CASE("without tokens the API is open", "[http][auth]")
{
    Api api;
    const Authenticator auth({}, api.router);
    CHECK(auth.open());
    const Response r = auth.dispatch(request("GET", "/v1/sessions"));
    CHECK(r.status == 200);
    CHECK(users_in(r) == std::vector<std::string>{"acme-1", "acme-2", "bob", "carol"});
    CHECK(nlohmann::json::parse(r.body).at("unattributed").size() == 1);
    CHECK(auth.dispatch(request("PUT", "/v1/users/bob/quota", nullptr, "{}")).status == 200);
}

TEST_CASE("a missing or unknown token is a 401 with WWW-Authenticate", "[http][auth]")
{
    Api api;
    const Authenticator auth(test_tokens(), api.router);
    CHECK_FALSE(auth.open());

    for (const char* path :
         {"/v1/sessions", "/v1/users/bob/quota", "/session/bob/usage", "/v1/nothing", "/%761/sessions"}) {
        INFO(path);
        const Response missing = auth.dispatch(request("GET", path));
        CHECK(missing.status == 401);
        CHECK(missing.body == R"({"error":"missing bearer token: send Authorization: Bearer <token>"})");
        CHECK(header(missing, "WWW-Authenticate") == R"(Bearer realm="vpnmeter")");
    }
    const Response wrong = auth.dispatch(request("GET", "/v1/sessions", "not-a-token"));
    CHECK(wrong.status == 401);
    CHECK(wrong.body == R"({"error":"unknown token"})");
    CHECK(header(wrong, "WWW-Authenticate") == R"(Bearer realm="vpnmeter", error="invalid_token")");

    Request basic = request("GET", "/v1/sessions");
    basic.authorization = "Basic YWRtaW46YWRtaW4=";
    CHECK(auth.dispatch(basic).status == 401);
    Request empty = request("GET", "/v1/sessions");
    empty.authorization = "Bearer ";
    CHECK(error_of(auth.dispatch(empty)) == "missing bearer token: send Authorization: Bearer <token>");
    Request spaced = request("GET", "/v1/sessions");
    spaced.authorization = std::string("bearer   ") + kReader + "  ";
    CHECK(auth.dispatch(spaced).status == 200);

    // With a good token, an unknown path is the router's 404.
    CHECK(auth.dispatch(request("GET", "/v1/nothing", kReader)).status == 404);
}

TEST_CASE("health and metrics stay open when tokens are set", "[http][auth]")
{
    Api api;
    const Authenticator auth(test_tokens(), api.router);
    CHECK(auth.dispatch(request("GET", "/healthz")).status == 200);
    CHECK(auth.dispatch(request("GET", "/readyz")).status == 200);
    // Not routed in this test: the router's 404, not a 401.
    CHECK(error_of(auth.dispatch(request("GET", "/metrics"))) == "no such resource: /metrics");
}

TEST_CASE("read tokens may GET, admin tokens may also PUT", "[http][auth]")
{
    Api api;
    const Authenticator auth(test_tokens(), api.router);
    CHECK(auth.dispatch(request("GET", "/v1/users/carol/quota", kReader)).status == 200);
    const Response denied = auth.dispatch(request("PUT", "/v1/users/carol/quota", kReader, "{}"));
    CHECK(denied.status == 403);
    CHECK(denied.body == R"({"error":"token 'reader' has scope read: PUT needs scope admin"})");
    CHECK(auth.dispatch(request("PUT", "/v1/users/carol/quota", kAdmin, "{}")).status == 200);
    CHECK(auth.dispatch(request("DELETE", "/v1/users/carol/quota", kAdmin)).status == 405);
}

TEST_CASE("a tenant's token sees only its users", "[http][auth]")
{
    Api api;
    const Authenticator auth(test_tokens(), api.router);

    const Response all = auth.dispatch(request("GET", "/v1/sessions", kAcme));
    CHECK(all.status == 200);
    CHECK(users_in(all) == std::vector<std::string>{"acme-1", "acme-2", "bob"});
    CHECK(nlohmann::json::parse(all.body).at("unattributed").empty());
    CHECK(users_in(auth.dispatch(request("GET", "/v1/sessions", kAcmeReader))) ==
          std::vector<std::string>{"acme-1", "acme-2"});
    Request filtered = request("GET", "/v1/sessions", kAcme);
    filtered.query["user"] = "carol";
    CHECK(users_in(auth.dispatch(filtered)).empty());

    // Another tenant's session answers like one that does not exist.
    const Response theirs = auth.dispatch(request("GET", "/v1/sessions/udp1194:carol:1", kAcme));
    const Response nobody = auth.dispatch(request("GET", "/v1/sessions/udp1194:nobody:1", kAcme));
    CHECK(theirs.status == 404);
    CHECK(theirs.body == R"({"error":"no session udp1194:carol:1"})");
    CHECK(nobody.body == R"({"error":"no session udp1194:nobody:1"})");
    CHECK(auth.dispatch(request("GET", "/v1/sessions/udp1194:carol:1/usage", kAcme)).status == 404);
    CHECK(auth.dispatch(request("GET", "/v1/sessions/udp1194:acme-1:1", kAcme)).status == 200);
    CHECK(auth.dispatch(request("GET", "/v1/sessions/udp1194:carol:1", kAdmin)).status == 200);

    for (const char* path : {"/v1/users/carol/usage", "/v1/users/carol/quota", "/session/carol/usage"}) {
        INFO(path);
        const Response r = auth.dispatch(request("GET", path, kAcme));
        CHECK(r.status == 404);
        CHECK(r.body == R"({"error":"no such user: carol"})");
    }
    CHECK(auth.dispatch(request("PUT", "/v1/users/carol/quota", kAcme, "{}")).body ==
          R"({"error":"no such user: carol"})");
    CHECK(auth.dispatch(request("PUT", "/v1/users/bob/quota", kAcme, "{}")).status == 200);
    CHECK(auth.dispatch(request("GET", "/v1/users/acme-9/usage", kAcme)).status == 200); // matches, no data yet
    CHECK(auth.dispatch(request("GET", "/v1/users/bob/usage", kAcmeReader)).status == 404);
    // An encoded name is matched decoded.
    CHECK(auth.dispatch(request("GET", "/v1/users/acme-%31/usage", kAcmeReader)).status == 200);
    CHECK(auth.dispatch(request("GET", "/v1/users/%63arol/usage", kAcme)).status == 404);
}

TEST_CASE("handlers get the caller's tenant in the request", "[http][auth]")
{
    auto router = std::make_shared<Router>();
    router->add("GET", "/v1/whoami", [](const Request& r) {
        return json(200, r.tenant ? nlohmann::json(*r.tenant).dump() : "all");
    });
    const Authenticator auth(test_tokens(), router);
    CHECK(auth.dispatch(request("GET", "/v1/whoami", kAdmin)).body == "all");
    CHECK(auth.dispatch(request("GET", "/v1/whoami", kAcme)).body == R"(["acme-*","bob"])");
    Request forged = request("GET", "/v1/whoami", kAcme);
    forged.tenant = std::nullopt; // whatever came in, the token decides
    CHECK(auth.dispatch(forged).body == R"(["acme-*","bob"])");
}

TEST_CASE("tokens replaced on reload take effect at once", "[http][auth]")
{
    Api api;
    Authenticator auth(test_tokens(), api.router);
    CHECK(auth.dispatch(request("GET", "/v1/sessions", kReader)).status == 200);
    auto fewer = test_tokens();
    fewer.erase(fewer.begin() + 1); // reader revoked
    auth.replace_tokens(fewer);
    CHECK(auth.dispatch(request("GET", "/v1/sessions", kReader)).status == 401);
    CHECK(auth.dispatch(request("GET", "/v1/sessions", kAdmin)).status == 200);
}

TEST_CASE("bad query values and parameters are 400 with the reason", "[http][api]")
{
    Api api;
    auto get = [&](const std::string& path, std::map<std::string, std::string> query) {
        Request r = request("GET", path);
        r.query = std::move(query);
        return api.router->dispatch(r);
    };
    CHECK(error_of(get("/v1/sessions", {{"active", "maybe"}})) == "active: expected 1, 0, true or false, got 'maybe'");
    CHECK(get("/v1/sessions", {{"active", "true"}}).status == 200);
    CHECK(error_of(get("/v1/sessions", {{"activ", "1"}})) ==
          "unknown query parameter 'activ' (expected active, user)");
    CHECK(error_of(get("/v1/users/bob/usage", {{"granularity", "week"}})) ==
          "granularity: expected hour, day or month, got 'week'");
    CHECK(get("/v1/users/bob/usage", {{"from", "yesterday"}}).status == 400);
    CHECK(error_of(get("/v1/users/bob/usage", {{"from", "2024-02-01"}, {"to", "2024-01-01"}})) == "to is before from");
    CHECK(error_of(get("/v1/users/bob/quota", {{"x", "1"}})) ==
          "unknown query parameter 'x' (this resource takes none)");
}

TEST_CASE("a tenant never sees a name with a NUL in it (fuzz finding)", "[http][auth][security]")
{
    http::Request request;
    request.tenant = std::vector<std::string>{"bob"};
    CHECK(request.sees("bob"));
    CHECK_FALSE(request.sees(std::string("bob\0\0x", 6)));
    CHECK_FALSE(request.sees("alice"));
    request.tenant.reset();
    CHECK(request.sees(std::string("bob\0x", 5))); // no tenant: every user, as before
}
