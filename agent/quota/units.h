// Sizes and speeds as an operator writes them: "20MB", "1.5GiB", "12Mbit".
#pragma once

#include <cstdint>
#include <string>

namespace vpnmeter {

// Bytes: a number with B, kB/MB/GB/TB (powers of 10^3) or KiB/MiB/GiB/TiB
// (powers of 2^10), exactly as written; a bare number is bytes. Decimals are
// fine ("1.5GB") as long as they come to whole bytes. Spellings that could
// mean either ("mb", "Mb", "KB") are refused rather than guessed. Throws
// std::invalid_argument saying what was expected.
uint64_t parse_size(const std::string& text);

// Bits per second: a number with bit, kbit, Mbit or Gbit (steps of 10^3;
// the prefix in any case, as tc writes "mbit"). The unit is required: tc
// reads a bare number as bytes/s, so it is ambiguous. Throws
// std::invalid_argument; zero is refused (leave a rate out to not limit).
uint64_t parse_rate(const std::string& text);

} // namespace vpnmeter
