#include "http/server.h"

#include <civetweb.h>

#include <sstream>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

namespace vpnmeter::http {
namespace {

constexpr long long kMaxBody = 1 << 20;

std::vector<std::string> split_path(const std::string& path)
{
    std::vector<std::string> out;
    std::string segment;
    std::istringstream in(path);
    while (std::getline(in, segment, '/'))
        if (!segment.empty()) out.push_back(segment);
    return out;
}

std::string decode(const std::string& text)
{
    std::string out(text.size() + 1, '\0');
    const int n = mg_url_decode(text.c_str(), static_cast<int>(text.size()), out.data(),
                                static_cast<int>(out.size()), /*is_form_url_encoded=*/1);
    out.resize(n > 0 ? static_cast<size_t>(n) : 0);
    return out;
}

const char* reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 503: return "Service Unavailable";
    default: return status < 500 ? "Error" : "Internal Server Error";
    }
}

} // namespace

Response error(int status, const std::string& message)
{
    return {status, "application/json", nlohmann::json{{"error", message}}.dump()};
}

Response json(int status, const std::string& body) { return {status, "application/json", body}; }

std::map<std::string, std::string> parse_query(const std::string& query)
{
    std::map<std::string, std::string> out;
    std::string pair;
    std::istringstream in(query);
    while (std::getline(in, pair, '&')) {
        if (pair.empty()) continue;
        const size_t eq = pair.find('=');
        out[decode(pair.substr(0, eq))] = eq == std::string::npos ? "" : decode(pair.substr(eq + 1));
    }
    return out;
}

void Router::add(const std::string& method, const std::string& pattern, Handler handler)
{
    routes_.push_back({method, split_path(pattern), std::move(handler), pattern});
}

std::vector<std::pair<std::string, std::string>> Router::routes() const
{
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& route : routes_) out.emplace_back(route.method, route.pattern);
    return out;
}

Response Router::dispatch(Request request) const
{
    const std::vector<std::string> segments = split_path(request.path);
    bool path_known = false;
    for (const auto& route : routes_) {
        if (route.segments.size() != segments.size()) continue;
        std::map<std::string, std::string> params;
        bool match = true;
        for (size_t i = 0; i < segments.size() && match; ++i) {
            const std::string& want = route.segments[i];
            if (want.size() > 2 && want.front() == '{' && want.back() == '}') params[want.substr(1, want.size() - 2)] = segments[i];
            else match = want == segments[i];
        }
        if (!match) continue;
        path_known = true;
        if (route.method != request.method) continue;
        request.params = std::move(params);
        try {
            return route.handler(request);
        } catch (const std::exception& e) { // a bug must not take the agent down
            spdlog::error("http {} {}: {}", request.method, request.path, e.what());
            return error(500, "internal error");
        }
    }
    return path_known ? error(405, "method " + request.method + " not allowed on " + request.path)
                      : error(404, "no such resource: " + request.path);
}

Result<std::unique_ptr<Server>> Server::start(const std::string& listen, std::shared_ptr<const Router> router)
{
    std::unique_ptr<Server> server(new Server());
    server->router_ = std::move(router);
    std::string ports = listen;
    // civetweb wants "[::1]:9477" as "[::1]:9477" and IPv4 as "127.0.0.1:9477": same text.
    const char* options[] = {"listening_ports", ports.c_str(), "num_threads", "4",
                             "request_timeout_ms", "10000", nullptr};
    mg_callbacks callbacks{};
    mg_init_library(0);
    server->context_ = mg_start(&callbacks, nullptr, options);
    if (!server->context_)
        return Error{"http.listen " + listen + ": cannot listen there (address in use, or not an address of this host?)"};
    mg_set_request_handler(server->context_, "/", &Server::handle, server.get());
    return server;
}

Server::~Server()
{
    if (context_) mg_stop(context_);
}

int Server::handle(mg_connection* connection, void* self)
{
    auto* server = static_cast<Server*>(self);
    const mg_request_info* info = mg_get_request_info(connection);
    Request request;
    request.method = info->request_method ? info->request_method : "";
    request.path = info->local_uri ? info->local_uri : "/";
    if (info->query_string) request.query = parse_query(info->query_string);
    if (const char* auth = mg_get_header(connection, "Authorization")) request.authorization = auth;

    Response response;
    if (info->content_length > kMaxBody) {
        response = error(413, "request body over 1 MiB");
    } else {
        if (info->content_length > 0) {
            request.body.resize(static_cast<size_t>(info->content_length));
            const int got = mg_read(connection, request.body.data(), request.body.size());
            request.body.resize(got > 0 ? static_cast<size_t>(got) : 0);
        }
        response = server->router_->dispatch(std::move(request));
    }
    mg_printf(connection,
              "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nCache-Control: no-store\r\n"
              "Connection: close\r\n\r\n",
              response.status, reason(response.status), response.content_type.c_str(), response.body.size());
    mg_write(connection, response.body.data(), response.body.size());
    return response.status;
}

} // namespace vpnmeter::http
