#include "format.h"

#include <array>
#include <cstdio>
#include <span>

namespace vpnmeter {

namespace {

// Three significant digits in the largest unit that keeps the value at least
// 1: "1.50 MiB", "12.3k", "100 Mbit/s".
std::string scaled(double value, double base, std::span<const char* const> units, const char* separator)
{
    size_t unit = 0;
    while (value >= base && unit + 1 < units.size()) {
        value /= base;
        ++unit;
    }
    char text[48];
    std::snprintf(text, sizeof text, value < 10 ? "%.2f%s%s" : value < 100 ? "%.1f%s%s" : "%.0f%s%s", value, separator,
                  units[unit]);
    return text;
}

} // namespace

std::string human_bytes(uint64_t bytes)
{
    static constexpr std::array<const char*, 7> units = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    if (bytes < 1024) return std::to_string(bytes) + " B";
    return scaled(static_cast<double>(bytes), 1024, units, " ");
}

std::string human_count(uint64_t count)
{
    static constexpr std::array<const char*, 7> units = {"", "k", "M", "G", "T", "P", "E"};
    if (count < 1000) return std::to_string(count);
    return scaled(static_cast<double>(count), 1000, units, "");
}

std::string human_rate(double bits_per_second)
{
    static constexpr std::array<const char*, 5> units = {"bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"};
    if (!(bits_per_second > 0)) return "0 bit/s";
    if (bits_per_second < 1000) return std::to_string(static_cast<uint64_t>(bits_per_second + 0.5)) + " bit/s";
    return scaled(bits_per_second, 1000, units, " ");
}

} // namespace vpnmeter
