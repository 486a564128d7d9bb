#include "format.h"

#include <array>
#include <cstdio>

namespace vpnmeter {

std::string human_bytes(uint64_t bytes)
{
    static constexpr std::array units = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (bytes < 1024) return std::to_string(bytes) + " B";
    double value = static_cast<double>(bytes);
    size_t unit = 0;
    while (value >= 1024 && unit + 1 < units.size()) {
        value /= 1024;
        ++unit;
    }
    char text[32];
    std::snprintf(text, sizeof text, value < 10 ? "%.2f %s" : value < 100 ? "%.1f %s" : "%.0f %s", value, units[unit]);
    return text;
}

std::string human_count(uint64_t count)
{
    static constexpr std::array units = {"", "k", "M", "G", "T", "P", "E"};
    if (count < 1000) return std::to_string(count);
    double value = static_cast<double>(count);
    size_t unit = 0;
    while (value >= 1000 && unit + 1 < units.size()) {
        value /= 1000;
        ++unit;
    }
    char text[32];
    std::snprintf(text, sizeof text, value < 10 ? "%.2f%s" : value < 100 ? "%.1f%s" : "%.0f%s", value, units[unit]);
    return text;
}

std::string human_rate(double bits_per_second)
{
    static constexpr std::array units = {"bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"};
    if (!(bits_per_second > 0)) return "0 bit/s";
    if (bits_per_second < 1000) return std::to_string(static_cast<uint64_t>(bits_per_second + 0.5)) + " bit/s";
    double value = bits_per_second;
    size_t unit = 0;
    while (value >= 1000 && unit + 1 < units.size()) {
        value /= 1000;
        ++unit;
    }
    char text[32];
    std::snprintf(text, sizeof text, value < 10 ? "%.2f %s" : value < 100 ? "%.1f %s" : "%.0f %s", value, units[unit]);
    return text;
}

} // namespace vpnmeter
