// Numbers for humans.
#pragma once

#include <cstdint>
#include <string>

namespace vpnmeter {

// 1536 -> "1.5 KiB"; exact below 1 KiB ("512 B").
std::string human_bytes(uint64_t bytes);
// 1234567 -> "1.23M"
std::string human_count(uint64_t count);
// Bits per second, SI: 12000000 -> "12.0 Mbit/s"; exact below 1 kbit/s ("800 bit/s").
std::string human_rate(double bits_per_second);

} // namespace vpnmeter
