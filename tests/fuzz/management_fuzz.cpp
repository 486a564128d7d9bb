// The management interface's byte stream, as ManagementParser reads it from
// the socket. Input: [chunk] [count] [kinds] then the bytes the server sent.
// `count` (0-7) replies are announced first, multi-line where that bit of
// `kinds` is set, as the source does for the commands it sends; the bytes
// are fed in pieces of 1-64 (`chunk`), draining messages after each piece.
// Every multi-line reply is also read as a status (what `status 3` gives).
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <variant>

#include "openvpn/management.h"
#include "openvpn/status.h"

using namespace vpnmeter::openvpn;

extern "C" int LLVMFuzzerInitialize(int*, char***)
{
    setenv("TZ", "UTC", 1);
    return 0;
}

namespace {

void drain(ManagementParser& parser)
{
    while (auto message = parser.next()) {
        if (const auto* response = std::get_if<CommandResponse>(&*message)) {
            (void)parse_status(response->text());
        } else if (const auto* malformed = std::get_if<MalformedLine>(&*message)) {
            if (malformed->error.empty()) std::abort(); // it must say why
        }
    }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size)
{
    if (size < 3) return 0;
    const size_t chunk = data[0] % 64 + 1;
    const unsigned count = data[1] % 8, kinds = data[2];
    const std::string_view stream(reinterpret_cast<const char*>(data) + 3, size - 3);

    ManagementParser parser;
    for (unsigned i = 0; i < count; ++i) {
        if (kinds >> i & 1) parser.expect_multiline();
        else parser.expect_single_line();
    }
    for (size_t at = 0; at < stream.size(); at += chunk) {
        parser.feed(stream.substr(at, chunk));
        drain(parser);
    }
    drain(parser);
    return 0;
}
