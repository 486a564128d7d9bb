// Numbers for humans.
#pragma once

#include <cstdint>
#include <string>

namespace vpnmeter {

// 1536 -> "1.5 KiB"; exact below 1 KiB ("512 B").
std::string human_bytes(uint64_t bytes);
// 1234567 -> "1.23M"
std::string human_count(uint64_t count);

} // namespace vpnmeter
