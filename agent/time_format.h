// Times on the command line and in JSON: RFC 3339.
#pragma once

#include <cstdint>
#include <string>

namespace vpnmeter {

// 1732345678 -> "2024-11-23T07:07:58Z"
std::string format_rfc3339(int64_t unix_seconds);

// "2024-11-23" (midnight UTC), "2024-11-23T07:07:58Z", "...+05:30", or a
// plain number of unix seconds. Throws std::invalid_argument naming what it
// expected.
int64_t parse_time(const std::string& text);

} // namespace vpnmeter
