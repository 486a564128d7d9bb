#include "http/api.h"

#include <ctime>

#include <nlohmann/json.hpp>

#include "time_format.h"
#include "usage_report.h"

namespace vpnmeter::http {
namespace {

Response store_error(const Error& e) { return error(503, "store: " + e.message()); }

// ?from=&to= as RFC 3339 / dates / unix seconds; defaults: all time until now.
std::optional<Response> time_range(const Request& r, int64_t& from, int64_t& to)
{
    from = 0;
    to = static_cast<int64_t>(std::time(nullptr)) + 1;
    try {
        if (auto it = r.query.find("from"); it != r.query.end()) from = parse_time(it->second);
        if (auto it = r.query.find("to"); it != r.query.end()) to = parse_time(it->second);
    } catch (const std::invalid_argument& e) {
        return error(400, std::string("from/to: ") + e.what());
    }
    if (to < from) return error(400, "to is before from");
    return std::nullopt;
}

std::optional<Granularity> granularity_of(const Request& r, std::optional<Response>& bad)
{
    auto it = r.query.find("granularity");
    const std::string g = it == r.query.end() ? "day" : it->second;
    if (g == "hour") return Granularity::Hour;
    if (g == "day") return Granularity::Day;
    if (g == "month") return Granularity::Month;
    bad = error(400, "granularity: expected hour, day or month, got '" + g + "'");
    return std::nullopt;
}

} // namespace

std::shared_ptr<Router> make_api(ApiContext ctx)
{
    auto router = std::make_shared<Router>();
    Store* store = ctx.store;

    router->add("GET", "/healthz", [](const Request&) { return json(200, R"({"status":"ok"})"); });
    router->add("GET", "/readyz", [ready = ctx.ready](const Request&) {
        return ready && ready() ? json(200, R"({"status":"ready"})") : error(503, "not ready: no cycle committed yet");
    });

    router->add("GET", "/v1/sessions", [store](const Request& r) {
        const bool active = r.query.count("active") && r.query.at("active") != "0" && r.query.at("active") != "false";
        std::optional<std::string> user;
        if (auto it = r.query.find("user"); it != r.query.end()) user = it->second;
        auto list = store->sessions(active, user);
        if (!list) return store_error(list.error());
        auto spare = store->unattributed();
        if (!spare) return store_error(spare.error());
        return json(200, sessions_json(list.value(), spare.value()).dump());
    });

    router->add("GET", "/v1/sessions/{id}", [store](const Request& r) {
        auto session = store->session(r.params.at("id"));
        if (!session) return store_error(session.error());
        if (!session.value()) return error(404, "no session " + r.params.at("id"));
        return json(200, session_json(**session).dump());
    });

    router->add("GET", "/v1/sessions/{id}/usage", [store](const Request& r) {
        auto session = store->session(r.params.at("id"));
        if (!session) return store_error(session.error());
        if (!session.value()) return error(404, "no session " + r.params.at("id"));
        const Session& s = **session;
        return json(200, nlohmann::json{{"id", s.id},
                                        {"user", s.user},
                                        {"upload_bytes", s.usage.upload.bytes},
                                        {"download_bytes", s.usage.download.bytes},
                                        {"upload_packets", s.usage.upload.packets},
                                        {"download_packets", s.usage.download.packets},
                                        {"source_upload_bytes", s.source_upload_bytes},
                                        {"source_download_bytes", s.source_download_bytes}}
                             .dump());
    });

    router->add("GET", "/v1/users/{user}/usage", [store](const Request& r) {
        int64_t from = 0, to = 0;
        if (auto bad = time_range(r, from, to)) return *bad;
        std::optional<Response> bad;
        auto granularity = granularity_of(r, bad);
        if (!granularity) return *bad;
        auto buckets = store->usage(r.params.at("user"), from, to, *granularity);
        if (!buckets) return store_error(buckets.error());
        return json(200, usage_json(r.params.at("user"), buckets.value()).dump());
    });

    // For nodes migrating from a status-log poller: usage of a common name.
    router->add("GET", "/session/{id}/usage", [store](const Request& r) {
        auto buckets = store->usage(r.params.at("id"), 0, static_cast<int64_t>(std::time(nullptr)) + 1,
                                    Granularity::Month);
        if (!buckets) return store_error(buckets.error());
        uint64_t used = 0;
        for (const auto& b : buckets.value()) used += b.traffic.upload.bytes + b.traffic.download.bytes;
        return json(200, nlohmann::json{{"dataUsedBytes", used}}.dump());
    });

    if (ctx.get_quota) {
        router->add("GET", "/v1/users/{user}/quota", [get = ctx.get_quota](const Request& r) {
            auto quota = get(r.params.at("user"));
            return quota ? json(200, *quota) : error(404, "no quota for " + r.params.at("user"));
        });
    }
    if (ctx.put_quota) {
        router->add("PUT", "/v1/users/{user}/quota",
                    [put = ctx.put_quota](const Request& r) { return put(r.params.at("user"), r.body); });
    }
    return router;
}

} // namespace vpnmeter::http
