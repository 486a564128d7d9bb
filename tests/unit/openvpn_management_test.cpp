#include <catch2/catch.hpp>

#include <fstream>
#include <functional>
#include <random>
#include <sstream>

#include "openvpn/management.h"
#include "openvpn/status.h"
#include "test_support.h"

using namespace vpnmeter::openvpn;

namespace {

// Captured from OpenVPN 2.6.14 by tests/fixtures/openvpn/capture.py (what was
// sent is in *.timeline.log).
std::string fixture(const std::string& name) { return vpnmeter::testing::fixture("openvpn/" + name); }

// One line per message, for readable expectations and failure output.
std::string describe(const ManagementMessage& message)
{
    struct Describe {
        std::string operator()(const PasswordPrompt&) const { return "PROMPT"; }
        std::string operator()(const CommandResult& r) const
        {
            return (r.success ? "SUCCESS: " : "ERROR: ") + r.text;
        }
        std::string operator()(const CommandResponse& r) const
        {
            return "RESPONSE " + std::to_string(r.lines.size()) + " lines";
        }
        std::string operator()(const ClientEvent& e) const
        {
            static const char* names[] = {"CONNECT", "REAUTH", "ESTABLISHED", "DISCONNECT"};
            std::string s = names[static_cast<int>(e.kind)] + std::string(" ") + std::to_string(e.cid);
            if (e.kid)
                s += "," + std::to_string(*e.kid);
            auto cn = e.env.find("common_name");
            return s + " " + (cn == e.env.end() || cn->second.empty() ? "-" : cn->second);
        }
        std::string operator()(const ClientAddress& a) const
        {
            return "ADDRESS " + std::to_string(a.cid) + " " + a.address + (a.primary ? " primary" : "");
        }
        std::string operator()(const ClientBytes& b) const
        {
            return "BYTES " + std::to_string(b.cid) + " " + std::to_string(b.bytes_in) + " " +
                   std::to_string(b.bytes_out);
        }
        std::string operator()(const Notification& n) const { return ">" + n.type + ":" + n.text; }
        std::string operator()(const UnexpectedLine& u) const { return "UNEXPECTED " + u.text; }
        std::string operator()(const MalformedLine& m) const { return "MALFORMED " + m.text + " (" + m.error + ")"; }
    };
    return std::visit(Describe{}, message);
}

using Messages = std::vector<ManagementMessage>;
using Setup = std::function<void(ManagementParser&)>;

void drain(ManagementParser& parser, Messages& out)
{
    while (auto m = parser.next())
        out.push_back(std::move(*m));
}

// Feeds `bytes` in pieces of the sizes `piece` returns, taking messages after each.
Messages parse_in_pieces(std::string_view bytes, const std::function<size_t()>& piece, const Setup& setup = {})
{
    ManagementParser parser;
    if (setup)
        setup(parser);
    Messages out;
    while (!bytes.empty()) {
        const size_t n = std::min(bytes.size(), std::max<size_t>(1, piece()));
        parser.feed(bytes.substr(0, n));
        bytes.remove_prefix(n);
        drain(parser, out);
    }
    return out;
}

Messages parse_whole(std::string_view bytes, const Setup& setup = {})
{
    return parse_in_pieces(bytes, [&] { return bytes.size(); }, setup);
}

std::vector<std::string> summaries(const Messages& messages, bool with_bytes = false)
{
    std::vector<std::string> out;
    for (const auto& m : messages)
        if (with_bytes || !std::holds_alternative<ClientBytes>(m))
            out.push_back(describe(m));
    return out;
}

template <class T>
std::vector<T> all_of_type(const Messages& messages)
{
    std::vector<T> out;
    for (const auto& m : messages)
        if (auto* t = std::get_if<T>(&m))
            out.push_back(*t);
    return out;
}

const Setup status_commands = [](ManagementParser& p) {
    p.expect_single_line(); // bytecount 1
    for (int i = 0; i < 4; ++i)
        p.expect_multiline(); // status 1, 2, 3 and 4 (which fails)
    p.expect_single_line(); // bytecount 0
};

const std::string greeting = ">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info";

} // namespace

namespace Catch {
template <>
struct StringMaker<ManagementMessage> {
    static std::string convert(const ManagementMessage& m) { return describe(m); }
};
} // namespace Catch

TEST_CASE("management transcripts parse the same whole, a byte at a time and in random pieces",
          "[openvpn][management]")
{
    const std::vector<std::pair<std::string, Setup>> transcripts = {
        {"mgmt-status.txt", status_commands}, {"mgmt-notify.txt", {}},   {"mgmt-client-auth.txt", {}},
        {"mgmt-password.txt", {}},            {"mgmt-password-bad.txt", {}}, {"mgmt-second-client.txt", {}},
    };
    for (const auto& [name, setup] : transcripts) {
        INFO(name);
        const std::string bytes = fixture(name);
        const Messages whole = parse_whole(bytes, setup);
        REQUIRE_FALSE(whole.empty());
        for (const auto& m : whole) {
            CHECK_FALSE(std::holds_alternative<MalformedLine>(m));
            CHECK_FALSE(std::holds_alternative<UnexpectedLine>(m));
        }
        CHECK(parse_in_pieces(bytes, [] { return 1; }, setup) == whole);
        for (unsigned seed = 1; seed <= 20; ++seed) {
            std::mt19937 random(seed);
            std::uniform_int_distribution<size_t> size(1, seed % 2 ? 16 : 3000);
            INFO("seed " << seed);
            CHECK(parse_in_pieces(bytes, [&] { return size(random); }, setup) == whole);
        }
    }
}

TEST_CASE("without management-client-auth: ESTABLISHED and byte counts only", "[openvpn][management]")
{
    const Messages messages = parse_whole(fixture("mgmt-notify.txt"));
    CHECK(summaries(messages) == std::vector<std::string>{
                                     greeting,
                                     "SUCCESS: bytecount interval changed",
                                     "ESTABLISHED 0 alice",
                                     "ESTABLISHED 1 bob",
                                     "ESTABLISHED 2 carol",
                                     ">NOTIFY:info,remote-exit,EXIT", // bob leaves: nothing else
                                     "ESTABLISHED 3 bob",
                                     ">NOTIFY:info,remote-exit,EXIT", // server stops
                                     ">NOTIFY:info,remote-exit,EXIT",
                                 });

    const auto events = all_of_type<ClientEvent>(messages);
    const ClientEvent& alice = events.at(0);
    CHECK(alice.kind == ClientEventKind::established);
    CHECK(alice.cid == 0);
    CHECK_FALSE(alice.kid.has_value());
    CHECK(alice.env.size() == 60);
    CHECK(alice.env.at("common_name") == "alice");
    CHECK(alice.env.at("username") == "alice-user");
    CHECK(alice.env.at("ifconfig_pool_remote_ip") == "10.8.0.2");
    CHECK(alice.env.at("ifconfig_pool_remote_ip6") == "fd00:8::1000");
    CHECK(alice.env.at("trusted_ip") == "10.99.0.10");
    CHECK(alice.env.at("trusted_port") == "50445");
    CHECK(alice.env.at("time_unix") == "1795415004");
    CHECK(alice.env.at("time_ascii") == "2026-11-23 07:23:24");
    CHECK(events.at(1).env.at("username").empty());

    const auto bytes = all_of_type<ClientBytes>(messages);
    REQUIRE(bytes.size() == 88);
    CHECK(bytes.front() == ClientBytes{0, 2170, 2255});
    CHECK(bytes.back() == ClientBytes{0, 1181714, 68985});
}

TEST_CASE("with management-client-auth: CONNECT, REAUTH, ADDRESS and DISCONNECT too", "[openvpn][management]")
{
    const Messages messages = parse_whole(fixture("mgmt-client-auth.txt"));
    const std::string ok = "SUCCESS: client-auth command succeeded";
    CHECK(summaries(messages) == std::vector<std::string>{
                                     greeting,
                                     "SUCCESS: bytecount interval changed",
                                     "CONNECT 0,1 alice",
                                     ok,
                                     "ADDRESS 0 10.8.0.2 primary",
                                     "ADDRESS 0 fd00:8::1000 primary",
                                     "ESTABLISHED 0 alice",
                                     "CONNECT 1,1 bob",
                                     ok,
                                     "ADDRESS 1 10.8.0.3 primary",
                                     "ADDRESS 1 fd00:8::1001 primary",
                                     "ESTABLISHED 1 bob",
                                     "CONNECT 2,1 carol",
                                     "SUCCESS: client-deny command succeeded",
                                     "CONNECT 3,1 carol", // carol retries
                                     ok,
                                     "DISCONNECT 2 -", // the refused attempt, with an empty env
                                     "ADDRESS 3 10.8.0.4 primary",
                                     "ADDRESS 3 fd00:8::1002 primary",
                                     "ESTABLISHED 3 carol",
                                     "REAUTH 0,3 alice", // reneg-sec 15
                                     ok,
                                     "REAUTH 1,3 bob",
                                     ok,
                                     "REAUTH 3,3 carol",
                                     ok,
                                     ">NOTIFY:info,remote-exit,EXIT", // bob exits...
                                     "DISCONNECT 1 bob",              // ...and is gone ~5 s later
                                     "REAUTH 0,4 alice",
                                     ok,
                                     "CONNECT 4,1 bob",
                                     ok,
                                     "REAUTH 3,4 carol",
                                     ok,
                                     "ADDRESS 4 10.8.0.3 primary",
                                     "ADDRESS 4 fd00:8::1001 primary",
                                     "ESTABLISHED 4 bob",
                                     "REAUTH 0,5 alice",
                                     ok,
                                     "REAUTH 4,3 bob",
                                     ok,
                                     "DISCONNECT 3 carol", // SIGKILLed: after the ping timeout
                                     "REAUTH 0,6 alice",
                                     ok,
                                     ">NOTIFY:info,remote-exit,EXIT", // server stops
                                     ">NOTIFY:info,remote-exit,EXIT",
                                     "DISCONNECT 4 bob",
                                     "DISCONNECT 0 alice",
                                 });

    const auto events = all_of_type<ClientEvent>(messages);
    const ClientEvent& connect = events.at(0);
    CHECK(connect.kind == ClientEventKind::connect);
    CHECK(connect.kid == 1u);
    CHECK(connect.env.size() == 48);
    CHECK(connect.env.at("username") == "alice-user");
    CHECK(connect.env.at("password") == "alice-pass"); // in clear: never log env whole
    CHECK(connect.env.at("untrusted_ip") == "10.99.0.10");
    CHECK(connect.env.count("ifconfig_pool_remote_ip") == 0); // not assigned yet

    auto disconnect = [&](uint64_t cid) {
        for (const auto& e : events)
            if (e.kind == ClientEventKind::disconnect && e.cid == cid)
                return e;
        FAIL("no DISCONNECT for " << cid);
        return ClientEvent{};
    };
    CHECK(disconnect(2).env.empty());
    const ClientEvent bob = disconnect(1);
    CHECK(bob.env.size() == 62);
    CHECK(bob.env.at("bytes_received") == "27306");
    CHECK(bob.env.at("bytes_sent") == "1118190");
    CHECK(bob.env.at("time_duration") == "28");
    CHECK(bob.env.at("time_unix") == "1795415064");
    CHECK(bob.env.at("ifconfig_pool_remote_ip") == "10.8.0.3");

    const auto bytes = all_of_type<ClientBytes>(messages);
    REQUIRE(bytes.size() == 106);
    CHECK(bytes.front() == ClientBytes{0, 2169, 2252});
    CHECK(bytes.back() == ClientBytes{0, 1026210, 45248});
}

TEST_CASE("status replies between byte counts, and a status command that fails", "[openvpn][management]")
{
    const Messages messages = parse_whole(fixture("mgmt-status.txt"), status_commands);
    CHECK(summaries(messages, true) == std::vector<std::string>{
                                           greeting,
                                           "SUCCESS: bytecount interval changed",
                                           "BYTES 0 158087 8888",
                                           "BYTES 2 17478 1098951",
                                           "BYTES 1 1269197 57684",
                                           "BYTES 0 158087 9000",
                                           "RESPONSE 16 lines",
                                           "BYTES 0 158159 9000",
                                           "RESPONSE 15 lines",
                                           "BYTES 0 158159 9040",
                                           "BYTES 1 1269309 57684",
                                           "BYTES 2 17550 1098991",
                                           "RESPONSE 15 lines",
                                           "ERROR: bad status format version number",
                                           "SUCCESS: bytecount interval changed",
                                       });
    const auto responses = all_of_type<CommandResponse>(messages);
    CHECK(responses[0].lines.front() == "OpenVPN CLIENT LIST");
    CHECK(responses[2].lines.back() == "GLOBAL_STATS\tdco_enabled\t0");
    auto v3 = parse_status(responses[2].text());
    REQUIRE(v3.ok());
    CHECK(v3->version == 3);
    CHECK(v3->clients.size() == 3);
}

TEST_CASE("password prompts have no line end", "[openvpn][management]")
{
    CHECK(summaries(parse_whole(fixture("mgmt-password.txt"))) ==
          std::vector<std::string>{"PROMPT", "SUCCESS: password is correct", greeting, "SUCCESS: pid=23672"});
    // A wrong password: the prompt again, three times, then the connection closes.
    CHECK(summaries(parse_whole(fixture("mgmt-password-bad.txt"))) ==
          std::vector<std::string>{"PROMPT", "PROMPT", "PROMPT"});

    ManagementParser parser;
    parser.feed("ENTER PASS");
    CHECK_FALSE(parser.next().has_value());
    parser.feed("WORD:");
    CHECK(parser.next() == ManagementMessage{PasswordPrompt{}});
    CHECK_FALSE(parser.next().has_value());
}

TEST_CASE("a second management client waits, greeted only once the first has gone", "[openvpn][management]")
{
    CHECK(summaries(parse_whole(fixture("mgmt-second-client.txt"))) ==
          std::vector<std::string>{greeting, "SUCCESS: pid=21997", "SUCCESS: pid=21997"});
}

TEST_CASE("notifications inside a multi-line reply come out at once, the reply at END", "[openvpn][management]")
{
    const Messages clean = parse_whole(fixture("mgmt-status.txt"), status_commands);
    const CommandResponse v3 = all_of_type<CommandResponse>(clean).at(2);

    // Inserted after reply line 1, 4, 7, ...: every kind, a whole ENV block too.
    const std::vector<std::string> interleaved = {
        ">BYTECOUNT_CLI:2,17590,1098991\r\n",
        ">LOG:1795414992,I,MULTI: primary virtual IP for bob/10.99.0.11:57087: 10.8.0.4\r\n",
        ">CLIENT:ESTABLISHED,7\r\n>CLIENT:ENV,common_name=dave\r\n>CLIENT:ENV,END\r\n",
        ">CLIENT:ADDRESS,7,10.8.0.9,1\r\n",
        ">BYTECOUNT_CLI:2,17590,1098991\r\n",
    };
    std::string stream;
    for (size_t i = 0; i < v3.lines.size(); ++i) {
        stream += v3.lines[i] + "\r\n";
        if (i % 3 == 1)
            stream += interleaved.at(i / 3);
    }
    stream += "END\r\n";
    const Setup multiline = [](ManagementParser& p) { p.expect_multiline(); };

    const Messages whole = parse_whole(stream, multiline);
    CHECK(summaries(whole, true) == std::vector<std::string>{
                                        "BYTES 2 17590 1098991",
                                        ">LOG:1795414992,I,MULTI: primary virtual IP for bob/10.99.0.11:57087: 10.8.0.4",
                                        "ESTABLISHED 7 dave",
                                        "ADDRESS 7 10.8.0.9 primary",
                                        "BYTES 2 17590 1098991",
                                        "RESPONSE 15 lines",
                                    });
    CHECK(std::get<CommandResponse>(whole.back()) == v3);
    CHECK(parse_in_pieces(stream, [] { return 1; }, multiline) == whole);

    // LF-only line ends read the same.
    std::string lf = stream;
    std::erase(lf, '\r');
    CHECK(parse_whole(lf, multiline) == whole);
}

TEST_CASE("replies are matched to the commands announced", "[openvpn][management]")
{
    SECTION("unannounced reply lines are unexpected, END included")
    {
        CHECK(summaries(parse_whole("TITLE,x\r\nEND\r\nSUCCESS: ok\r\n")) ==
              std::vector<std::string>{"UNEXPECTED TITLE,x", "UNEXPECTED END", "SUCCESS: ok"});
    }
    SECTION("pipelined commands")
    {
        const Messages m = parse_whole("SUCCESS: bytecount interval changed\r\nTITLE\tx\r\nEND\r\nERROR: no\r\n",
                                       [](ManagementParser& p) {
                                           p.expect_single_line();
                                           p.expect_multiline();
                                           p.expect_single_line();
                                       });
        CHECK(summaries(m) == std::vector<std::string>{"SUCCESS: bytecount interval changed", "RESPONSE 1 lines",
                                                       "ERROR: no"});
        CHECK(std::get<CommandResponse>(m[1]).text() == "TITLE\tx\nEND\n");
    }
    SECTION("a multi-line command that fails answers one line; the next reply is the next command's")
    {
        const Messages m = parse_whole("ERROR: bad status format version number\r\nOpenVPN Version: 2.6\r\nEND\r\n",
                                       [](ManagementParser& p) {
                                           p.expect_multiline();
                                           p.expect_multiline();
                                       });
        CHECK(summaries(m) ==
              std::vector<std::string>{"ERROR: bad status format version number", "RESPONSE 1 lines"});
    }
    SECTION("an empty multi-line reply")
    {
        CHECK(summaries(parse_whole("END\r\n", [](ManagementParser& p) { p.expect_multiline(); })) ==
              std::vector<std::string>{"RESPONSE 0 lines"});
    }
}

TEST_CASE("other notifications are passed on by type", "[openvpn][management]")
{
    const Messages m = parse_whole(">HOLD:Waiting for hold release:0\r\n"
                                   ">LOG:1795414992,W,something\r\n"
                                   ">STATE:1795414992,CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,\r\n"
                                   ">FATAL:it broke\r\n"
                                   ">PASSWORD:Need 'Auth' username/password\r\n"
                                   ">CLIENT:CR_RESPONSE,3,1,c2VjcmV0\r\n"
                                   ">BYTECOUNT:100,200\r\n");
    CHECK(m == Messages{
                   Notification{"HOLD", "Waiting for hold release:0"},
                   Notification{"LOG", "1795414992,W,something"},
                   Notification{"STATE", "1795414992,CONNECTED,SUCCESS,10.8.0.2,10.99.0.1,1194,,"},
                   Notification{"FATAL", "it broke"},
                   Notification{"PASSWORD", "Need 'Auth' username/password"},
                   Notification{"CLIENT", "CR_RESPONSE,3,1,c2VjcmV0"},
                   Notification{"BYTECOUNT", "100,200"},
               });
}

TEST_CASE("client env values keep '=' and may be empty", "[openvpn][management]")
{
    const Messages m = parse_whole(">CLIENT:DISCONNECT,5\r\n"
                                   ">CLIENT:ENV,X509_0_emailAddress=a=b@example.org\r\n"
                                   ">CLIENT:ENV,username=\r\n"
                                   ">CLIENT:ENV,flag\r\n"
                                   ">CLIENT:ENV,END\r\n");
    REQUIRE(m.size() == 1);
    const auto& e = std::get<ClientEvent>(m[0]);
    CHECK(e.kind == ClientEventKind::disconnect);
    CHECK(e.cid == 5);
    CHECK(e.env == std::map<std::string, std::string>{
                       {"X509_0_emailAddress", "a=b@example.org"}, {"username", ""}, {"flag", ""}});
}

TEST_CASE("malformed notifications are reported once and do not derail the stream", "[openvpn][management]")
{
    const Messages m = parse_whole(">CLIENT:CONNECT,x,1\r\n"
                                   ">CLIENT:ENV,common_name=alice\r\n"
                                   ">CLIENT:ENV,END\r\n"
                                   ">CLIENT:ENV,common_name=orphan\r\n"
                                   ">CLIENT:ENV,more=1\r\n"
                                   ">CLIENT:ENV,END\r\n"
                                   ">CLIENT:CONNECT,4\r\n"
                                   ">CLIENT:ESTABLISHED,4,1,9\r\n"
                                   ">CLIENT:ADDRESS,1,10.8.0.2,2\r\n"
                                   ">CLIENT:ADDRESS,1,,1\r\n"
                                   ">BYTECOUNT_CLI:1,2\r\n"
                                   ">BYTECOUNT_CLI:1,2,-3\r\n"
                                   ">no colon\r\n"
                                   ">:empty type\r\n"
                                   ">CLIENT:ENV\r\n"
                                   ">CLIENT:ESTABLISHED,8\r\n"
                                   ">CLIENT:ENV,common_name=bob\r\n"
                                   ">CLIENT:DISCONNECT,9\r\n"
                                   ">CLIENT:ENV,END\r\n"
                                   "SUCCESS: still in step\r\n");
    CHECK(summaries(m) == std::vector<std::string>{
                              "MALFORMED >CLIENT:CONNECT,x,1 (expected \">CLIENT:CONNECT,cid,kid\")",
                              "MALFORMED >CLIENT:ENV,common_name=orphan (CLIENT:ENV outside a CLIENT event)",
                              "MALFORMED >CLIENT:CONNECT,4 (expected \">CLIENT:CONNECT,cid,kid\")",
                              "MALFORMED >CLIENT:ESTABLISHED,4,1,9 (expected \">CLIENT:ESTABLISHED,cid\")",
                              "MALFORMED >CLIENT:ADDRESS,1,10.8.0.2,2 (expected \">CLIENT:ADDRESS,cid,address,primary\")",
                              "MALFORMED >CLIENT:ADDRESS,1,,1 (expected \">CLIENT:ADDRESS,cid,address,primary\")",
                              "MALFORMED >BYTECOUNT_CLI:1,2 (expected \">BYTECOUNT_CLI:cid,bytes_in,bytes_out\")",
                              "MALFORMED >BYTECOUNT_CLI:1,2,-3 (expected \">BYTECOUNT_CLI:cid,bytes_in,bytes_out\")",
                              "MALFORMED >no colon (expected \">TYPE:text\")",
                              "MALFORMED >:empty type (expected \">TYPE:text\")",
                              "MALFORMED >CLIENT:ENV (expected \">CLIENT:ENV,name=value\")",
                              "MALFORMED >CLIENT:ESTABLISHED,8 (no CLIENT:ENV,END before the next CLIENT event)",
                              "DISCONNECT 9 -",
                              "SUCCESS: still in step",
                          });
}

TEST_CASE("an endless line is dropped the same way however it arrives", "[openvpn][management]")
{
    std::string stream(ManagementParser::max_line + 100, 'x');
    stream += "\r\nSUCCESS: after\r\n";
    const Messages whole = parse_whole(stream);
    CHECK(summaries(whole) ==
          std::vector<std::string>{"MALFORMED " + std::string(80, 'x') + " (line longer than 1048576 bytes, dropped)",
                                   "SUCCESS: after"});
    CHECK(parse_in_pieces(stream, [] { return 4096; }) == whole);
    CHECK(parse_in_pieces(stream, [] { return 7; }) == whole);
}
