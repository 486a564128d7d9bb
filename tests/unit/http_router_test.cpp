#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include "http/server.h"

using namespace vpnmeter::http;

TEST_CASE("routes match segments and capture parameters", "[http]")
{
    Router router;
    router.add("GET", "/v1/users/{user}/quota", [](const Request& r) { return json(200, r.params.at("user")); });
    router.add("PUT", "/v1/users/{user}/quota", [](const Request& r) { return json(201, r.body); });
    router.add("GET", "/healthz", [](const Request&) { return json(200, "ok"); });

    Request get{"GET", "/v1/users/alice/quota", {}, {}, "", ""};
    CHECK(router.dispatch(get).body == "alice");
    Request put{"PUT", "/v1/users/bob/quota", {}, {}, "", "{}"};
    CHECK(router.dispatch(put).status == 201);
    CHECK(router.dispatch({"GET", "/healthz/", {}, {}, "", ""}).body == "ok"); // trailing slash

    const Response missing = router.dispatch({"GET", "/v1/nothing", {}, {}, "", ""});
    CHECK(missing.status == 404);
    CHECK(nlohmann::json::parse(missing.body)["error"] == "no such resource: /v1/nothing");
    const Response wrong = router.dispatch({"DELETE", "/v1/users/alice/quota", {}, {}, "", ""});
    CHECK(wrong.status == 405);
}

TEST_CASE("a handler that throws answers 500, it does not crash", "[http]")
{
    Router router;
    router.add("GET", "/boom", [](const Request&) -> Response { throw std::runtime_error("bug"); });
    const Response r = router.dispatch({"GET", "/boom", {}, {}, "", ""});
    CHECK(r.status == 500);
    CHECK(nlohmann::json::parse(r.body)["error"] == "internal error");
}

TEST_CASE("query strings are split and decoded", "[http]")
{
    const auto q = parse_query("active=1&user=al%20ice&from=2024-11-01T00%3A00%3A00Z&flag");
    CHECK(q.at("active") == "1");
    CHECK(q.at("user") == "al ice");
    CHECK(q.at("from") == "2024-11-01T00:00:00Z");
    CHECK(q.at("flag").empty());
}
