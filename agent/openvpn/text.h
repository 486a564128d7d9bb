// Text helpers shared by the OpenVPN parsers: pure, no exceptions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace vpnmeter::openvpn {

// One line of input without its line end, and its 1-based number for errors.
struct Line {
    std::string_view text;
    size_t number = 0;
};

// Splits at '\n' and drops one '\r' before it: files use LF, the management
// interface CRLF. A last line without '\n' is kept (it may be cut short).
std::vector<Line> split_lines(std::string_view text);

// Splits at every separator; "a,,b" has an empty middle field.
std::vector<std::string_view> split_fields(std::string_view line, char separator);

// Whole-field decimal numbers: no sign, spaces or trailing garbage.
std::optional<uint64_t> parse_u64(std::string_view text);
std::optional<uint32_t> parse_u32(std::string_view text);
std::optional<int64_t> parse_i64(std::string_view text);

// OpenVPN's clock text, read in the local time zone (TZ), because that is
// how OpenVPN wrote it and the text carries no zone: "2026-11-23 07:23:09"
// (2.6) or ctime's "Mon Nov 23 07:23:09 2026" (2.5 and older). A time in a
// DST fold is ambiguous; mktime picks one.
std::optional<int64_t> parse_local_time(std::string_view text);

// `text` in quotes for an error message: control bytes escaped, long text cut.
std::string quoted(std::string_view text);

} // namespace vpnmeter::openvpn
