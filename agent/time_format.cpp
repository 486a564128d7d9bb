#include "time_format.h"

#include <cstdio>
#include <ctime>
#include <stdexcept>

namespace vpnmeter {

std::string format_rfc3339(int64_t unix_seconds)
{
    const time_t t = static_cast<time_t>(unix_seconds);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char text[32];
    std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return text;
}

int64_t parse_time(const std::string& text)
{
    const auto bad = [&] {
        return std::invalid_argument("expected a date like 2024-11-23, a time like 2024-11-23T07:00:00Z or "
                                     "2024-11-23T07:00:00+05:30, or unix seconds; got '" + text + "'");
    };
    if (!text.empty() && text.find_first_not_of("0123456789") == std::string::npos) return std::stoll(text);

    std::tm tm{};
    int consumed = 0;
    if (std::sscanf(text.c_str(), "%4d-%2d-%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &consumed) != 3) throw bad();
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    std::string rest = text.substr(consumed);
    long offset = 0;
    if (!rest.empty()) {
        int used = 0;
        if (std::sscanf(rest.c_str(), "T%2d:%2d:%2d%n", &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &used) != 3) throw bad();
        rest = rest.substr(used);
        if (rest == "Z" || rest == "z") {
            rest.clear();
        } else {
            int hours = 0, minutes = 0;
            char sign = 0;
            if (std::sscanf(rest.c_str(), "%c%2d:%2d%n", &sign, &hours, &minutes, &used) != 3 ||
                (sign != '+' && sign != '-') || static_cast<size_t>(used) != rest.size())
                throw bad();
            offset = (sign == '-' ? -1 : 1) * (hours * 3600L + minutes * 60L);
            rest.clear();
        }
    }
    if (!rest.empty() || tm.tm_mon < 0 || tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 ||
        tm.tm_min > 59 || tm.tm_sec > 60)
        throw bad();
    return static_cast<int64_t>(timegm(&tm)) - offset;
}

} // namespace vpnmeter
