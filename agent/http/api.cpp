#include "http/api.h"

#include <algorithm>
#include <ctime>

#include <nlohmann/json.hpp>

#include "time_format.h"
#include "usage_report.h"

namespace vpnmeter::http {
namespace {

Response store_error(const Error& e) { return error(503, "store: " + e.message()); }

// User names come from certificates: not necessarily UTF-8.
Response json_body(const nlohmann::json& body)
{
    return json(200, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
}

// A misspelt parameter must not silently fall back to a default.
std::optional<Response> unknown_parameter(const Request& r, std::initializer_list<const char*> known)
{
    for (const auto& parameter : r.query) {
        const std::string& name = parameter.first; // not a structured binding: clang 14 can't capture one
        if (std::any_of(known.begin(), known.end(), [&](const char* k) { return name == k; })) continue;
        std::string list;
        for (const char* k : known) list += std::string(list.empty() ? "" : ", ") + k;
        return error(400, "unknown query parameter '" + name + "'" +
                              (list.empty() ? std::string(" (this resource takes none)") : " (expected " + list + ")"));
    }
    return std::nullopt;
}

// ?from=&to= as RFC 3339 / dates / unix seconds; defaults: all time until now.
std::optional<Response> time_range(const Request& r, int64_t& from, int64_t& to)
{
    from = 0;
    to = static_cast<int64_t>(std::time(nullptr)) + 1;
    try {
        if (auto it = r.query.find("from"); it != r.query.end()) from = parse_time(it->second);
        if (auto it = r.query.find("to"); it != r.query.end()) to = parse_time(it->second);
    } catch (const std::exception& e) {
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

std::optional<bool> flag_of(const Request& r, const std::string& name, std::optional<Response>& bad)
{
    auto it = r.query.find(name);
    if (it == r.query.end()) return false;
    if (it->second == "1" || it->second == "true" || it->second.empty()) return true; // "?active" alone
    if (it->second == "0" || it->second == "false") return false;
    bad = error(400, name + ": expected 1, 0, true or false, got '" + it->second + "'");
    return std::nullopt;
}

// A tenant's token asking about someone else's user gets the answer an
// unknown one would: nothing says whether that user exists.
Response not_visible(const std::string& user) { return error(404, "no such user: " + user); }

// For routes with {user}: outside the caller's tenant, 404 before the handler runs.
Handler for_user(const char* param, Handler handler)
{
    return [param, handler = std::move(handler)](const Request& r) {
        const std::string& user = r.params.at(param);
        return r.sees(user) ? handler(r) : not_visible(user);
    };
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
        if (auto bad = unknown_parameter(r, {"active", "user"})) return *bad;
        std::optional<Response> bad;
        const auto active = flag_of(r, "active", bad);
        if (!active) return *bad;
        std::optional<std::string> user;
        if (auto it = r.query.find("user"); it != r.query.end()) user = it->second;
        auto list = store->sessions(*active, user);
        if (!list) return store_error(list.error());
        std::vector<UnattributedUsage> spare;
        if (r.tenant) {
            // Unattributed traffic belongs to no tenant: a tenant sees none of it.
            std::erase_if(list.value(), [&](const Session& s) { return !r.sees(s.user); });
        } else {
            auto all = store->unattributed();
            if (!all) return store_error(all.error());
            spare = std::move(all.value());
        }
        return json_body(sessions_json(list.value(), spare));
    });

    // Another tenant's session is "no session", like a missing one.
    auto visible_session = [store](const Request& r) -> Result<std::optional<Session>> {
        auto session = store->session(r.params.at("id"));
        if (session && session.value() && !r.sees(session.value()->user)) return std::optional<Session>();
        return session;
    };

    router->add("GET", "/v1/sessions/{id}", [visible_session](const Request& r) {
        if (auto bad = unknown_parameter(r, {})) return *bad;
        auto session = visible_session(r);
        if (!session) return store_error(session.error());
        if (!session.value()) return error(404, "no session " + r.params.at("id"));
        return json_body(session_json(**session));
    });

    router->add("GET", "/v1/sessions/{id}/usage", [visible_session](const Request& r) {
        if (auto bad = unknown_parameter(r, {})) return *bad;
        auto session = visible_session(r);
        if (!session) return store_error(session.error());
        if (!session.value()) return error(404, "no session " + r.params.at("id"));
        const Session& s = **session;
        return json_body(nlohmann::json{{"id", s.id},
                                        {"user", s.user},
                                        {"upload_bytes", s.usage.upload.bytes},
                                        {"download_bytes", s.usage.download.bytes},
                                        {"upload_packets", s.usage.upload.packets},
                                        {"download_packets", s.usage.download.packets},
                                        {"source_upload_bytes", s.source_upload_bytes},
                                        {"source_download_bytes", s.source_download_bytes}});
    });

    router->add("GET", "/v1/users/{user}/usage", for_user("user", [store](const Request& r) {
        if (auto bad = unknown_parameter(r, {"from", "to", "granularity"})) return *bad;
        int64_t from = 0, to = 0;
        if (auto bad = time_range(r, from, to)) return *bad;
        std::optional<Response> bad;
        auto granularity = granularity_of(r, bad);
        if (!granularity) return *bad;
        auto buckets = store->usage(r.params.at("user"), from, to, *granularity);
        if (!buckets) return store_error(buckets.error());
        return json_body(usage_json(r.params.at("user"), buckets.value()));
    }));

    // For nodes migrating from a status-log poller: usage of a common name.
    router->add("GET", "/session/{id}/usage", for_user("id", [store](const Request& r) {
        if (auto bad = unknown_parameter(r, {})) return *bad;
        auto buckets = store->usage(r.params.at("id"), 0, static_cast<int64_t>(std::time(nullptr)) + 1,
                                    Granularity::Month);
        if (!buckets) return store_error(buckets.error());
        uint64_t used = 0;
        for (const auto& b : buckets.value()) used += b.traffic.upload.bytes + b.traffic.download.bytes;
        return json_body(nlohmann::json{{"dataUsedBytes", used}});
    }));

    if (ctx.get_quota) {
        router->add("GET", "/v1/users/{user}/quota", for_user("user", [get = ctx.get_quota](const Request& r) {
            if (auto bad = unknown_parameter(r, {})) return *bad;
            auto quota = get(r.params.at("user"));
            return quota ? json(200, *quota) : error(404, "no quota for " + r.params.at("user"));
        }));
    }
    if (ctx.put_quota) {
        router->add("PUT", "/v1/users/{user}/quota", for_user("user", [put = ctx.put_quota](const Request& r) {
            if (auto bad = unknown_parameter(r, {})) return *bad;
            return put(r.params.at("user"), r.body);
        }));
    }
    if (ctx.status) {
        router->add("GET", "/v1/status", [status = ctx.status](const Request& r) {
            if (auto bad = unknown_parameter(r, {})) return *bad;
            nlohmann::json body = status();
            if (r.tenant) body["quotas"] = nullptr; // counts over every tenant's users
            return json_body(body);
        });
    }
    if (ctx.quotas) {
        router->add("GET", "/v1/quotas", [quotas = ctx.quotas](const Request& r) {
            if (auto bad = unknown_parameter(r, {})) return *bad;
            auto users = nlohmann::json::array();
            for (auto& [user, quota] : quotas())
                if (r.sees(user)) users.push_back(std::move(quota));
            return json_body(nlohmann::json{{"users", users}});
        });
    }
    return router;
}

} // namespace vpnmeter::http
