// OpenVPN's management interface protocol, parsed incrementally from the
// bytes of the connection. Pure: the caller owns the socket.
//
// What OpenVPN 2.6 sends a server's management client (captured in
// tests/fixtures/openvpn, see its README):
//  - always: `>CLIENT:ESTABLISHED,cid` + ENV block when a client is up, and
//    with `bytecount N` a `>BYTECOUNT_CLI:cid,in,out` per client every N s;
//  - only with --management-client-auth: `>CLIENT:CONNECT,cid,kid` and
//    `>CLIENT:REAUTH,cid,kid` + ENV (each must be answered with client-auth
//    or client-deny), `>CLIENT:ADDRESS,cid,addr,1` and
//    `>CLIENT:DISCONNECT,cid` + ENV. Without it, a disconnect is not
//    announced at all.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace vpnmeter::openvpn {

// "ENTER PASSWORD:" (no line end) when the interface has a password file.
// Answer with the password and a newline; a wrong one gets the prompt again,
// the third wrong one a closed connection.
struct PasswordPrompt {
    bool operator==(const PasswordPrompt&) const = default;
};

// "SUCCESS: pid=1234" -> {true, "pid=1234"}; "ERROR: unknown command" -> {false, ...}.
struct CommandResult {
    bool success = false;
    std::string text;
    bool operator==(const CommandResult&) const = default;
};

// The lines of a multi-line reply (`status 3`, `version`, ...), END excluded.
struct CommandResponse {
    std::vector<std::string> lines;
    // The reply as text with LF line ends and its END line, as a status file
    // would have it: parse_status(response.text()).
    std::string text() const;
    bool operator==(const CommandResponse&) const = default;
};

enum class ClientEventKind { connect, reauth, established, disconnect };

// >CLIENT:CONNECT|REAUTH|ESTABLISHED|DISCONNECT,cid[,kid] and the
// >CLIENT:ENV,name=value lines up to >CLIENT:ENV,END that follow it.
// Under --management-client-auth the env holds the client's `password` in
// clear text: never log it whole.
struct ClientEvent {
    ClientEventKind kind = ClientEventKind::established;
    uint64_t cid = 0;
    std::optional<uint32_t> kid;
    std::map<std::string, std::string> env; // a repeated name keeps its last value
    bool operator==(const ClientEvent&) const = default;
};

// >CLIENT:ADDRESS,cid,10.8.0.2,1 (client-auth mode only).
struct ClientAddress {
    uint64_t cid = 0;
    std::string address;
    bool primary = false;
    bool operator==(const ClientAddress&) const = default;
};

// >BYTECOUNT_CLI:cid,bytes_in,bytes_out: the server's totals for the client's
// tunnel packets (outer): in = received from the client.
struct ClientBytes {
    uint64_t cid = 0;
    uint64_t bytes_in = 0;
    uint64_t bytes_out = 0;
    bool operator==(const ClientBytes&) const = default;
};

// Any other real-time message: ">INFO:..." -> {"INFO", "..."}; also HOLD,
// LOG, STATE, NOTIFY, FATAL and >CLIENT: kinds not listed above.
struct Notification {
    std::string type;
    std::string text;
    bool operator==(const Notification&) const = default;
};

// A reply line no command was waiting for (see expect_multiline()).
struct UnexpectedLine {
    std::string text;
    bool operator==(const UnexpectedLine&) const = default;
};

// A line that looks like a known message but is not one, and why.
struct MalformedLine {
    std::string text;
    std::string error;
    bool operator==(const MalformedLine&) const = default;
};

using ManagementMessage = std::variant<PasswordPrompt, CommandResult, CommandResponse, ClientEvent, ClientAddress,
                                       ClientBytes, Notification, UnexpectedLine, MalformedLine>;

// Feed it what the socket gives, in any pieces; take messages with next().
// Real-time notifications may arrive anywhere, also between the lines of a
// reply: they come out as soon as their line is complete, the reply once its
// END arrives. Never throws; bad input comes out as MalformedLine.
class ManagementParser {
public:
    void feed(std::string_view bytes);
    // The next complete message, or nullopt until more bytes are fed.
    std::optional<ManagementMessage> next();

    // Call once per command sent, in order, so replies are told apart:
    // multi-line replies end with END, and only the caller knows which
    // command is answered. A multi-line command that fails answers with one
    // ERROR: line instead, which is recognised. Single-line commands need
    // this only when commands are pipelined after a multi-line one.
    void expect_single_line();
    void expect_multiline();

    // A line longer than this (without a newline) is dropped as malformed.
    static constexpr size_t max_line = 1 << 20;

private:
    enum class Reply { single_line, multi_line };

    std::optional<ManagementMessage> on_line(std::string_view line);
    std::optional<ManagementMessage> on_reply_line(std::string_view line);
    std::optional<ManagementMessage> on_notification(std::string_view line);
    std::optional<ManagementMessage> on_client(std::string_view line, std::string_view body);
    void compact();

    std::string buffer_;
    size_t pos_ = 0;              // start of the first unread line in buffer_
    bool skipping_ = false;       // inside an over-long line, until its newline
    std::deque<Reply> expected_;  // replies still to come, oldest first
    std::optional<CommandResponse> response_; // multi-line reply being collected
    std::optional<ClientEvent> client_;       // >CLIENT event waiting for ENV,END
    bool skip_env_ = false;                   // ENV lines of an event not reported as one
};

} // namespace vpnmeter::openvpn
