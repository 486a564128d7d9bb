#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "http/server.h"

using namespace vpnmeter::http;

namespace {

Request request(const std::string& method, const std::string& path, const std::string& body = "")
{
    Request r;
    r.method = method;
    r.path = path;
    r.body = body;
    return r;
}

std::string error_of(const Response& r) { return nlohmann::json::parse(r.body).at("error"); }

} // namespace

TEST_CASE("routes match segments and capture parameters", "[http]")
{
    Router router;
    router.add("GET", "/v1/users/{user}/quota", [](const Request& r) { return json(200, r.params.at("user")); });
    router.add("PUT", "/v1/users/{user}/quota", [](const Request& r) { return json(201, r.body); });
    router.add("GET", "/healthz", [](const Request&) { return json(200, "ok"); });

    CHECK(router.dispatch(request("GET", "/v1/users/alice/quota")).body == "alice");
    CHECK(router.dispatch(request("PUT", "/v1/users/bob/quota", "{}")).status == 201);
    CHECK(router.dispatch(request("GET", "/healthz/")).body == "ok"); // trailing slash

    const Response missing = router.dispatch(request("GET", "/v1/nothing"));
    CHECK(missing.status == 404);
    CHECK(error_of(missing) == "no such resource: /v1/nothing");
    const Response wrong = router.dispatch(request("DELETE", "/v1/users/alice/quota"));
    CHECK(wrong.status == 405);
}

TEST_CASE("path segments are percent-decoded after splitting", "[http]")
{
    Router router;
    router.add("GET", "/v1/users/{user}/quota", [](const Request& r) { return json(200, r.params.at("user")); });

    CHECK(router.dispatch(request("GET", "/v1/users/al%20ice/quota")).body == "al ice");
    CHECK(router.dispatch(request("GET", "/v1/users/J%C3%BCrgen/quota")).body == "J\xc3\xbcrgen");
    CHECK(router.dispatch(request("GET", "/v1/users/a%2Fb/quota")).body == "a/b"); // one segment
    CHECK(router.dispatch(request("GET", "/v1/users/a+b/quota")).body == "a+b");   // '+' is a plus in a path
    CHECK(router.dispatch(request("GET", "/v1/users/%61lice/quota")).body == "alice");

    for (const char* bad : {"/v1/users/al%zzice/quota", "/v1/users/alice%4/quota", "/v1/users/alice%/quota"}) {
        const Response r = router.dispatch(request("GET", bad));
        CHECK(r.status == 400);
        CHECK(error_of(r).rfind("path: bad percent-encoding '%", 0) == 0);
    }
    const Response nul = router.dispatch(request("GET", "/v1/users/a%00b/quota"));
    CHECK(nul.status == 400);
    CHECK(error_of(nul) == "path: control character '%00' is not allowed");
    CHECK(error_of(router.dispatch(request("GET", "/v1/users/a%0Afake%20log%20line/quota"))) ==
          "path: control character '%0A' is not allowed");
}

TEST_CASE("errors quoting bytes that are not UTF-8 are still JSON", "[http]")
{
    Router router;
    const Response r = router.dispatch(request("GET", "/v1/%FF%FE"));
    CHECK(r.status == 404);
    CHECK(error_of(r) == "no such resource: /v1/%FF%FE");
    CHECK(nlohmann::json::parse(error(400, "bad \xff byte").body).at("error") == "bad \xef\xbf\xbd byte");
}

TEST_CASE("a handler that throws answers 500, it does not crash", "[http]")
{
    Router router;
    router.add("GET", "/boom", [](const Request&) -> Response { throw std::runtime_error("bug"); });
    const Response r = router.dispatch(request("GET", "/boom"));
    CHECK(r.status == 500);
    CHECK(error_of(r) == "internal error");
}

TEST_CASE("query strings are split and decoded", "[http]")
{
    auto q = parse_query("active=1&user=al%20ice&from=2024-11-01T00%3A00%3A00Z&flag&name=a+b");
    REQUIRE(q);
    CHECK(q->at("active") == "1");
    CHECK(q->at("user") == "al ice");
    CHECK(q->at("from") == "2024-11-01T00:00:00Z");
    CHECK(q->at("flag").empty());
    CHECK(q->at("name") == "a b");

    CHECK(parse_query("user=al%zz").error().message() == "query: bad percent-encoding '%zz'");
    CHECK(parse_query("user=al%2").error().message() == "query: bad percent-encoding '%2'");
    CHECK(parse_query("user=a&user=b").error().message() == "query: 'user' is given twice");
    CHECK(parse_query("user=a%0d").error().message() == "query: control character '%0d' is not allowed");
}
