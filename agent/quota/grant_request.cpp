#include "quota/grant_request.h"

#include <nlohmann/json.hpp>

#include "time_format.h"

namespace vpnmeter {

Result<Grant> apply_grant_request(const QuotaConfig& config, const std::string& user, Grant grant,
                                  const std::string& body, int64_t now)
{
    nlohmann::json request;
    try {
        request = nlohmann::json::parse(body);
    } catch (const nlohmann::json::exception& e) { // parse_error, or out_of_range for 1e400
        // Without nlohmann's "[json.exception.parse_error.101] " prefix.
        const std::string what = e.what();
        const size_t tag = what.find("] ");
        return Error{"body is not JSON: " + (tag == std::string::npos ? what : what.substr(tag + 2))};
    }
    if (!request.is_object()) return Error{std::string("body: expected a JSON object, got ") + request.type_name()};
    auto wrong_type = [](const std::string& key, const nlohmann::json& value, const char* expected) {
        std::string shown = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
        if (shown.size() > 40) shown = shown.substr(0, 40) + "...";
        return Error{key + ": expected " + expected + ", got " + value.type_name() + " " + shown};
    };
    for (const auto& [key, value] : request.items()) {
        if (key == "plan") {
            if (!value.is_string()) return wrong_type(key, value, "a plan name");
            const std::string name = value.get<std::string>();
            if (name != kUnlimitedPlan && !config.find_plan(name))
                return Error{"plan: no plan named '" + name + "' in the configuration"};
            grant.plan = name;
        } else if (key == "limit_bytes") {
            if (value.is_null()) grant.limit_bytes.reset();
            else if (!value.is_number_unsigned())
                return wrong_type(key, value, "a number of bytes (0 to 2^64-1) or null");
            else grant.limit_bytes = value.get<uint64_t>();
        } else if (key == "topup_bytes") {
            if (!value.is_number_unsigned()) return wrong_type(key, value, "a number of bytes (0 to 2^64-1)");
            grant = add_topup(grant, value.get<uint64_t>(), period_of(config, user, grant, now));
        } else if (key == "expires") {
            if (value.is_null()) {
                grant.expires.reset();
            } else if (value.is_number_integer() &&
                       !(value.is_number_unsigned() && value.get<uint64_t>() > INT64_MAX)) {
                grant.expires = value.get<int64_t>();
            } else if (value.is_string()) {
                try {
                    grant.expires = parse_time(value.get<std::string>());
                } catch (const std::exception& e) {
                    return Error{std::string("expires: ") + e.what()};
                }
            } else {
                return wrong_type(key, value, "an RFC 3339 time, a date, unix seconds or null");
            }
        } else {
            return Error{"unknown field '" + key + "' (expected plan, limit_bytes, topup_bytes, expires)"};
        }
    }
    return grant;
}

} // namespace vpnmeter
