#include "openvpn/text.h"

#include <array>
#include <charconv>
#include <ctime>

namespace vpnmeter::openvpn {

namespace {

template <class T>
std::optional<T> parse_number(std::string_view text)
{
    T value{};
    const char* end = text.data() + text.size();
    // from_chars accepts '-' for signed types only; a leading '+' never.
    auto [ptr, ec] = std::from_chars(text.data(), end, value);
    if (text.empty() || ec != std::errc{} || ptr != end)
        return std::nullopt;
    return value;
}

// A fixed-width unsigned field, e.g. "07" in "07:23:09".
std::optional<int> digits(std::string_view text, size_t at, size_t width)
{
    if (at + width > text.size())
        return std::nullopt;
    int value = 0;
    for (size_t i = at; i < at + width; ++i) {
        if (text[i] < '0' || text[i] > '9')
            return std::nullopt;
        value = value * 10 + (text[i] - '0');
    }
    return value;
}

// "HH:MM:SS" at `at` into tm.
bool clock(std::string_view text, size_t at, std::tm& tm)
{
    auto h = digits(text, at, 2), m = digits(text, at + 3, 2), s = digits(text, at + 6, 2);
    if (!h || !m || !s || text[at + 2] != ':' || text[at + 5] != ':')
        return false;
    tm.tm_hour = *h;
    tm.tm_min = *m;
    tm.tm_sec = *s;
    return true;
}

// "2026-11-23 07:23:09"
bool iso_time(std::string_view text, std::tm& tm)
{
    if (text.size() != 19 || text[4] != '-' || text[7] != '-' || text[10] != ' ')
        return false;
    auto y = digits(text, 0, 4), mo = digits(text, 5, 2), d = digits(text, 8, 2);
    if (!y || !mo || !d || !clock(text, 11, tm))
        return false;
    tm.tm_year = *y - 1900;
    tm.tm_mon = *mo - 1;
    tm.tm_mday = *d;
    return true;
}

// "Mon Nov 23 07:23:09 2026", the day space-padded ("Nov  3").
bool ctime_text(std::string_view text, std::tm& tm)
{
    static constexpr std::array<std::string_view, 12> months = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                                                "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    if (text.size() != 24 || text[3] != ' ' || text[7] != ' ' || text[10] != ' ' || text[19] != ' ')
        return false;
    size_t month = 0;
    while (month < months.size() && text.substr(4, 3) != months[month])
        ++month;
    std::string_view day = text.substr(8, 2);
    if (day[0] == ' ')
        day.remove_prefix(1);
    auto d = parse_number<int>(day);
    auto y = digits(text, 20, 4);
    if (month == months.size() || !d || !y || !clock(text, 11, tm))
        return false;
    tm.tm_year = *y - 1900;
    tm.tm_mon = static_cast<int>(month);
    tm.tm_mday = *d;
    return true;
}

} // namespace

std::vector<Line> split_lines(std::string_view text)
{
    std::vector<Line> lines;
    size_t number = 1;
    while (!text.empty()) {
        size_t end = text.find('\n');
        std::string_view line = text.substr(0, end);
        if (end != std::string_view::npos && !line.empty() && line.back() == '\r')
            line.remove_suffix(1);
        lines.push_back({line, number++});
        text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    }
    return lines;
}

std::vector<std::string_view> split_fields(std::string_view line, char separator)
{
    std::vector<std::string_view> fields;
    for (;;) {
        size_t end = line.find(separator);
        fields.push_back(line.substr(0, end));
        if (end == std::string_view::npos)
            return fields;
        line.remove_prefix(end + 1);
    }
}

std::optional<uint64_t> parse_u64(std::string_view text) { return parse_number<uint64_t>(text); }
std::optional<uint32_t> parse_u32(std::string_view text) { return parse_number<uint32_t>(text); }
std::optional<int64_t> parse_i64(std::string_view text) { return parse_number<int64_t>(text); }

std::optional<int64_t> parse_local_time(std::string_view text)
{
    std::tm tm{};
    if (!iso_time(text, tm) && !ctime_text(text, tm))
        return std::nullopt;
    if (tm.tm_mon < 0 || tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 ||
        tm.tm_min > 59 || tm.tm_sec > 60)
        return std::nullopt;
    const int mday = tm.tm_mday;
    tm.tm_isdst = -1; // let the zone rules decide, as OpenVPN's localtime() did
    const std::time_t t = std::mktime(&tm);
    // mktime normalises "Feb 31" into March: a day that moved did not exist.
    if (t == std::time_t(-1) || tm.tm_mday != mday)
        return std::nullopt;
    return static_cast<int64_t>(t);
}

std::string quoted(std::string_view text)
{
    constexpr size_t max = 60;
    std::string out = "\"";
    for (size_t i = 0; i < text.size() && i < max; ++i) {
        const unsigned char c = static_cast<unsigned char>(text[i]);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += static_cast<char>(c);
        } else if (c < 0x20 || c == 0x7f) {
            static constexpr char hex[] = "0123456789abcdef";
            out += c == '\t' ? std::string("\\t") : std::string("\\x") + hex[c >> 4] + hex[c & 15];
        } else {
            out += static_cast<char>(c);
        }
    }
    out += text.size() > max ? "\"..." : "\"";
    return out;
}

} // namespace vpnmeter::openvpn
