#include "quota/units.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <limits>
#include <stdexcept>
#include <string_view>

namespace vpnmeter {
namespace {

struct Unit {
    std::string_view name;
    uint64_t scale;
};

constexpr uint64_t kKilo = 1000;
constexpr uint64_t kKibi = 1024;

constexpr std::array kSizeUnits = {
    Unit{"B", 1},
    Unit{"kB", kKilo},
    Unit{"MB", kKilo * kKilo},
    Unit{"GB", kKilo * kKilo * kKilo},
    Unit{"TB", kKilo * kKilo * kKilo * kKilo},
    Unit{"KiB", kKibi},
    Unit{"MiB", kKibi * kKibi},
    Unit{"GiB", kKibi * kKibi * kKibi},
    Unit{"TiB", kKibi * kKibi * kKibi * kKibi},
};

constexpr std::array kRateUnits = {
    Unit{"bit", 1},
    Unit{"kbit", kKilo},
    Unit{"mbit", kKilo * kKilo},
    Unit{"gbit", kKilo * kKilo * kKilo},
};

bool iequals(std::string_view a, std::string_view b)
{
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

// A decimal number with its unit: "1.5" and "GiB" from "1.5GiB" (a space
// between them is allowed).
struct Quantity {
    uint64_t whole = 0;
    uint64_t fraction = 0;         // the digits after the point, as a number
    uint64_t fraction_divisor = 1; // 10^(number of those digits)
    std::string_view unit;
};

// False when `text` is not a number followed by a unit.
bool split_quantity(std::string_view text, Quantity& out)
{
    size_t i = 0;
    constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();
    const size_t whole_start = i;
    for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
        const uint64_t digit = static_cast<uint64_t>(text[i] - '0');
        if (out.whole > (kMax - digit) / 10) return false;
        out.whole = out.whole * 10 + digit;
    }
    bool digits = i > whole_start;
    if (i < text.size() && text[i] == '.') {
        ++i;
        const size_t fraction_start = i;
        for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
            if (i - fraction_start >= 18) return false; // more precision than any unit needs
            out.fraction = out.fraction * 10 + static_cast<uint64_t>(text[i] - '0');
            out.fraction_divisor *= 10;
        }
        if (i == fraction_start) return false;
        digits = true;
    }
    if (!digits) return false;
    if (i < text.size() && text[i] == ' ') ++i;
    out.unit = text.substr(i);
    return true;
}

// quantity * scale, exactly, as a whole number of `what`. Throws
// std::invalid_argument when it is not whole or does not fit.
uint64_t scale_exactly(const Quantity& q, uint64_t scale, const std::string& text, const char* what)
{
    const unsigned __int128 whole = static_cast<unsigned __int128>(q.whole) * scale;
    const unsigned __int128 fraction_scaled = static_cast<unsigned __int128>(q.fraction) * scale;
    if (fraction_scaled % q.fraction_divisor != 0)
        throw std::invalid_argument(std::string("expected a whole number of ") + what + ", got '" + text + "'");
    const unsigned __int128 total = whole + fraction_scaled / q.fraction_divisor;
    if (total > std::numeric_limits<uint64_t>::max()) throw std::invalid_argument("'" + text + "' is too large");
    return static_cast<uint64_t>(total);
}

} // namespace

uint64_t parse_size(const std::string& text)
{
    const std::string expected =
        "expected a size like 20MB, 1.5GB or 5GiB (units B, kB, MB, GB, TB, KiB, MiB, GiB, TiB)";
    Quantity q;
    if (!split_quantity(text, q)) throw std::invalid_argument(expected + ", got '" + text + "'");
    uint64_t scale = 0;
    if (q.unit.empty()) {
        scale = 1;
    } else {
        for (const Unit& unit : kSizeUnits)
            if (q.unit == unit.name) scale = unit.scale;
        if (scale == 0) {
            for (size_t power = 1; power < 5; ++power)
                if (iequals(q.unit, kSizeUnits[power].name)) {
                    // "Mb": megabytes or megabits? And "KB" is often 1024.
                    std::string number = text.substr(0, text.size() - q.unit.size());
                    if (!number.empty() && number.back() == ' ') number.pop_back();
                    const std::string decimal(kSizeUnits[power].name);
                    const std::string binary(kSizeUnits[power + 4].name);
                    throw std::invalid_argument("'" + text + "' is ambiguous: write " + number + decimal + " (10^" +
                                                std::to_string(3 * power) + " bytes) or " + number + binary + " (2^" +
                                                std::to_string(10 * power) + " bytes); speeds are in bits, like " +
                                                number + binary.substr(0, 1) + "bit");
                }
            throw std::invalid_argument(expected + ", got '" + text + "'");
        }
    }
    return scale_exactly(q, scale, text, "bytes");
}

uint64_t parse_rate(const std::string& text)
{
    const std::string expected = "expected a rate like 12Mbit or 500kbit (units bit, kbit, Mbit, Gbit)";
    Quantity q;
    if (!split_quantity(text, q)) throw std::invalid_argument(expected + ", got '" + text + "'");
    uint64_t scale = 0;
    for (const Unit& unit : kRateUnits)
        if (iequals(q.unit, unit.name)) scale = unit.scale;
    if (scale == 0) throw std::invalid_argument(expected + ", got '" + text + "'");
    const uint64_t bits = scale_exactly(q, scale, text, "bits per second");
    if (bits == 0)
        throw std::invalid_argument("a rate must be above 0 (leave it out to not limit), got '" + text + "'");
    return bits;
}

} // namespace vpnmeter
