#include "http/server.h"

#include <civetweb.h>
#include <fnmatch.h>

#include <algorithm>
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

int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// Strict: "%zz" and a cut-off "%4" are errors, not passed through. Control
// characters are refused too: a user name is logged, and "%0A" in one would
// forge log lines. Bytes that are not UTF-8 are kept (certificates' names
// need not be UTF-8).
Result<std::string> percent_decode(const std::string& text, bool plus_is_space, const char* what)
{
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (c == '+' && plus_is_space) {
            out += ' ';
        } else if (c != '%') {
            out += c;
        } else {
            if (text.size() < i + 3 || hex_digit(text[i + 1]) < 0 || hex_digit(text[i + 2]) < 0)
                return Error{std::string(what) + ": bad percent-encoding '" + text.substr(i, 3) + "'"};
            const char decoded = static_cast<char>(hex_digit(text[i + 1]) << 4 | hex_digit(text[i + 2]));
            if (static_cast<unsigned char>(decoded) < 0x20 || decoded == 0x7f)
                return Error{std::string(what) + ": control character '" + text.substr(i, 3) + "' is not allowed"};
            out += decoded;
            i += 2;
        }
    }
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
    // Messages quote what the client sent: not necessarily UTF-8.
    return {status, "application/json",
            nlohmann::json{{"error", message}}.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
            {}};
}

Response json(int status, const std::string& body) { return {status, "application/json", body, {}}; }

bool Request::sees(const std::string& user) const
{
    if (!tenant) return true;
    // fnmatch sees a C string: "bob\0x" would pass as "bob" (found by the
    // API fuzz target). No name with a NUL is anyone's.
    if (user.find('\0') != std::string::npos) return false;
    return std::any_of(tenant->begin(), tenant->end(),
                       [&](const std::string& glob) { return fnmatch(glob.c_str(), user.c_str(), 0) == 0; });
}

Result<std::map<std::string, std::string>> parse_query(const std::string& query)
{
    std::map<std::string, std::string> out;
    std::string pair;
    std::istringstream in(query);
    while (std::getline(in, pair, '&')) {
        if (pair.empty()) continue;
        const size_t eq = pair.find('=');
        auto name = percent_decode(pair.substr(0, eq), true, "query");
        if (!name) return name.error();
        auto value = eq == std::string::npos ? Result<std::string>(std::string())
                                             : percent_decode(pair.substr(eq + 1), true, "query");
        if (!value) return value.error();
        if (out.count(name.value())) return Error{"query: '" + name.value() + "' is given twice"};
        out.emplace(std::move(name.value()), std::move(value.value()));
    }
    return out;
}

Result<std::vector<std::string>> path_segments(const std::string& path)
{
    std::vector<std::string> out;
    for (const std::string& raw : split_path(path)) {
        auto segment = percent_decode(raw, false, "path");
        if (!segment) return segment.error();
        out.push_back(std::move(segment.value()));
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
    auto decoded = path_segments(request.path);
    if (!decoded) return error(400, decoded.error().message());
    const std::vector<std::string>& segments = decoded.value();
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

Response serve(const Handler& handler, Request request, const std::string& query_string)
{
    auto query = parse_query(query_string);
    if (!query) return error(400, query.error().message());
    request.query = std::move(query.value());
    try {
        return handler(request);
    } catch (const std::exception& e) { // never through civetweb's C frames
        spdlog::error("http {} {}: {}", request.method, request.path, e.what());
        return error(500, "internal error");
    }
}

Result<std::unique_ptr<Server>> Server::start(const std::string& listen, std::shared_ptr<const Router> router)
{
    return start(listen, [router = std::move(router)](const Request& request) { return router->dispatch(request); });
}

Result<std::unique_ptr<Server>> Server::start(const std::string& listen, Handler handler)
{
    std::unique_ptr<Server> server(new Server());
    server->handler_ = std::move(handler);
    std::string ports = listen;
    // civetweb wants "[::1]:9477" as "[::1]:9477" and IPv4 as "127.0.0.1:9477": same text.
    // The path is decoded here, segment by segment (an encoded '/' in a user
    // name must not split it), and strictly (bad encoding is a 400).
    const char* options[] = {"listening_ports", ports.c_str(), "num_threads", "4",
                             "request_timeout_ms", "10000", "decode_url", "no",
                             "decode_query_string", "no", nullptr};
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

namespace {

// Reads the body whatever its framing (Content-Length or chunked); false
// when it is over the limit.
bool read_body(mg_connection* connection, std::string& body)
{
    char chunk[16384];
    for (;;) {
        const int got = mg_read(connection, chunk, sizeof chunk);
        if (got <= 0) return true;
        if (body.size() + static_cast<size_t>(got) > static_cast<size_t>(kMaxBody)) return false;
        body.append(chunk, static_cast<size_t>(got));
    }
}

} // namespace

int Server::handle(mg_connection* connection, void* self)
{
    auto* server = static_cast<Server*>(self);
    const mg_request_info* info = mg_get_request_info(connection);
    Request request;
    request.method = info->request_method ? info->request_method : "";
    request.path = info->local_uri ? info->local_uri : "/";
    if (const char* auth = mg_get_header(connection, "Authorization")) request.authorization = auth;

    Response response;
    if (info->content_length > kMaxBody || !read_body(connection, request.body))
        response = error(413, "request body over 1 MiB");
    else
        response = serve(server->handler_, std::move(request), info->query_string ? info->query_string : "");
    std::string head = "HTTP/1.1 " + std::to_string(response.status) + " " + reason(response.status) +
                       "\r\nContent-Type: " + response.content_type +
                       "\r\nContent-Length: " + std::to_string(response.body.size()) +
                       "\r\nCache-Control: no-store\r\nConnection: close\r\n";
    for (const auto& [name, value] : response.headers) head += name + ": " + value + "\r\n";
    head += "\r\n";
    mg_write(connection, head.data(), head.size());
    mg_write(connection, response.body.data(), response.body.size());
    return response.status;
}

} // namespace vpnmeter::http
