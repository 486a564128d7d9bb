// The CLI's way to the running agent: its HTTP API.
#pragma once

#include <string>

#include "result.h"

namespace vpnmeter {

struct ApiReply {
    long status = 0;
    std::string body;
};

// method GET or PUT; url like http://127.0.0.1:9477/v1/users/alice/quota.
// An Error only when the agent could not be reached at all.
Result<ApiReply> api_request(const std::string& method, const std::string& url, const std::string& body = {},
                             const std::string& token = {});

// "127.0.0.1:9477" -> "http://127.0.0.1:9477"
std::string api_base(const std::string& listen);
// Percent-encodes a user name for a path segment.
std::string url_segment(const std::string& text);

} // namespace vpnmeter
