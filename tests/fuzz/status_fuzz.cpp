// OpenVPN's status file (v1, v2, v3), as parse_status reads it: the whole
// input is the file. It is written by the OpenVPN server, but holds what
// clients chose (common names, user names), and a reader can catch it half
// rewritten.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "openvpn/status.h"

extern "C" int LLVMFuzzerInitialize(int*, char***)
{
    setenv("TZ", "UTC", 1); // v1's clock texts are local time: same results on every machine
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    auto status = vpnmeter::openvpn::parse_status(text);
    if (!status) {
        if (status.error().message().empty()) std::abort(); // an error always says what was wrong
        return 0;
    }
    const int version = status.value().version;
    if (version < 1 || version > 3) std::abort();
    return 0;
}
