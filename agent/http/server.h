// The agent's one HTTP server (civetweb): /metrics, /healthz, /v1/... JSON.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "result.h"

struct mg_context;
struct mg_connection;

namespace vpnmeter::http {

struct Request {
    std::string method;
    std::string path; // as sent (percent-encoded), without the query
    std::map<std::string, std::string> query;  // decoded
    std::map<std::string, std::string> params; // decoded {name} segments of the route
    std::string authorization;                 // the Authorization header
    std::string body;
    // User-name globs of the caller's token (set by the Authenticator);
    // nullopt: the caller may see every user.
    std::optional<std::vector<std::string>> tenant;

    bool sees(const std::string& user) const;
};

struct Response {
    int status = 200;
    std::string content_type = "application/json";
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers; // beyond Content-Type and Content-Length
};

// {"error": message} with a status: the API's one error shape.
Response error(int status, const std::string& message);
Response json(int status, const std::string& body);

using Handler = std::function<Response(const Request&)>;

// Routes are "/v1/users/{user}/quota"-style patterns; a {name} segment
// matches one path segment and lands in Request::params.
class Router {
public:
    void add(const std::string& method, const std::string& pattern, Handler handler);
    // 400 for a path that is not valid percent-encoding.
    Response dispatch(Request request) const;
    // Every pattern, for the OpenAPI cross-check.
    std::vector<std::pair<std::string, std::string>> routes() const;

private:
    struct Route {
        std::string method;
        std::vector<std::string> segments;
        Handler handler;
        std::string pattern;
    };
    std::vector<Route> routes_;
};

class Server {
public:
    // "127.0.0.1:9477" or "[::1]:9477" or "0.0.0.0:9477". Fails with the
    // address and civetweb's reason (e.g. the port is in use).
    // Every request goes to `handler` (an Authenticator, or a Router).
    static Result<std::unique_ptr<Server>> start(const std::string& listen, Handler handler);
    static Result<std::unique_ptr<Server>> start(const std::string& listen, std::shared_ptr<const Router> router);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

private:
    Server() = default;
    static int handle(mg_connection* connection, void* self);
    mg_context* context_ = nullptr;
    Handler handler_;
};

// What the server does with a request civetweb has read (method, path,
// Authorization and body filled in): its query string parsed into
// request.query (a 400 if bad), then `handler`; an exception is a 500.
Response serve(const Handler& handler, Request request, const std::string& query_string);

// Splits "a=1&b=x%20y" into a map, percent-decoded ('+' is a space). An
// Error (for a 400) on bad percent-encoding, an encoded control character or
// a name given twice.
Result<std::map<std::string, std::string>> parse_query(const std::string& query);
// "/v1/users/al%20ice/quota" -> {"v1", "users", "al ice", "quota"}: split
// first, so an encoded '/' stays inside its segment. An Error (for a 400) on
// bad percent-encoding or an encoded control character (%00-%1F, %7F).
Result<std::vector<std::string>> path_segments(const std::string& path);

} // namespace vpnmeter::http
