#include <catch2/catch.hpp>

#include <cstdlib>
#include <ctime>
#include <fstream>
#include <functional>
#include <sstream>

#include "openvpn/management.h"
#include "openvpn/status.h"
#include "test_support.h"
#include "openvpn/text.h"

using namespace vpnmeter::openvpn;

namespace {

// Captured from OpenVPN 2.6.14 by tests/fixtures/openvpn/capture.py (what was
// sent is in *.timeline.log).
std::string fixture(const std::string& name) { return vpnmeter::testing::fixture("openvpn/" + name); }

// The capture ran with TZ=Europe/Berlin. The same rules as a POSIX TZ
// string, so the test needs no tzdata.
class CaptureTimeZone {
public:
    CaptureTimeZone()
    {
        if (const char* tz = std::getenv("TZ"))
            saved_ = tz;
        setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3", 1);
        tzset();
    }
    ~CaptureTimeZone()
    {
        if (saved_)
            setenv("TZ", saved_->c_str(), 1);
        else
            unsetenv("TZ");
        tzset();
    }

private:
    std::optional<std::string> saved_;
};

std::string error_of(std::string_view text)
{
    auto status = parse_status(text);
    REQUIRE_FALSE(status.ok());
    return status.error().message();
}

Status parsed(std::string_view text)
{
    auto status = parse_status(text);
    if (!status.ok())
        FAIL(status.error().message());
    return status.value();
}

std::string replace_first(std::string text, std::string_view from, std::string_view to)
{
    const size_t at = text.find(from);
    REQUIRE(at != std::string::npos);
    return text.replace(at, from.size(), to);
}

std::vector<std::string> split(const std::string& text)
{
    std::vector<std::string> lines;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        lines.push_back(line);
    return lines;
}

// Applies `change` to every line (LF ends) and joins them again.
std::string map_lines(const std::string& text, const std::function<std::string(const std::string&)>& change)
{
    std::string out;
    for (const std::string& line : split(text))
        out += change(line) + "\n";
    return out;
}

} // namespace

TEST_CASE("status version 3 from OpenVPN 2.6", "[openvpn][status]")
{
    const Status s = parsed(fixture("status-v3.txt"));
    CHECK(s.version == 3);
    CHECK(s.updated == 1795414978);
    const std::vector<StatusClient> expected = {
        {.common_name = "alice",
         .username = "alice-user",
         .real_address = "10.99.0.10:55446",
         .virtual_address = "10.8.0.3",
         .virtual_ipv6 = "fd00:8::1001",
         .bytes_received = 1384753,
         .bytes_sent = 45604,
         .connected_since = 1795414975,
         .client_id = 1,
         .peer_id = 1,
         .cipher = "AES-256-GCM"},
        {.common_name = "carol",
         .username = "",
         .real_address = "10.99.0.12:60782",
         .virtual_address = "10.8.0.4",
         .virtual_ipv6 = "fd00:8::1002",
         .bytes_received = 234016,
         .bytes_sent = 6319,
         .connected_since = 1795414975,
         .client_id = 2,
         .peer_id = 2,
         .cipher = "AES-256-GCM"},
        {.common_name = "bob",
         .username = "",
         .real_address = "10.99.0.11:48964",
         .virtual_address = "10.8.0.2",
         .virtual_ipv6 = "fd00:8::1000",
         .bytes_received = 54542,
         .bytes_sent = 1278247,
         .connected_since = 1795414975,
         .client_id = 0,
         .peer_id = 0,
         .cipher = "AES-256-GCM"},
    };
    CHECK(s.clients == expected);
}

TEST_CASE("status version 2 from OpenVPN 2.6", "[openvpn][status]")
{
    const Status s = parsed(fixture("status-v2.txt"));
    CHECK(s.version == 2);
    CHECK(s.updated == 1795414983);
    const std::vector<StatusClient> expected = {
        {.common_name = "alice",
         .username = "alice-user",
         .real_address = "10.99.0.10:40823",
         .virtual_address = "10.8.0.2",
         .virtual_ipv6 = "fd00:8::1000",
         .bytes_received = 1308624,
         .bytes_sent = 23897,
         .connected_since = 1795414981,
         .client_id = 0,
         .peer_id = 0,
         .cipher = "AES-256-GCM"},
        {.common_name = "carol",
         .username = "",
         .real_address = "10.99.0.12:40464",
         .virtual_address = "10.8.0.3",
         .virtual_ipv6 = "fd00:8::1001",
         .bytes_received = 246273,
         .bytes_sent = 11784,
         .connected_since = 1795414981,
         .client_id = 1,
         .peer_id = 1,
         .cipher = "AES-256-GCM"},
        {.common_name = "bob",
         .username = "",
         .real_address = "10.99.0.11:59703",
         .virtual_address = "10.8.0.4",
         .virtual_ipv6 = "fd00:8::1002",
         .bytes_received = 44258,
         .bytes_sent = 1155759,
         .connected_since = 1795414981,
         .client_id = 2,
         .peer_id = 2,
         .cipher = "AES-256-GCM"},
    };
    CHECK(s.clients == expected);
}

TEST_CASE("status version 1 from OpenVPN 2.6: local times, addresses from the routing table", "[openvpn][status]")
{
    CaptureTimeZone zone;
    const Status s = parsed(fixture("status-v1.txt"));
    CHECK(s.version == 1);
    CHECK(s.updated == 1795414989); // "2026-11-23 07:23:09" in Berlin
    const std::vector<StatusClient> expected = {
        {.common_name = "bob",
         .username = "",
         .real_address = "10.99.0.11:57087",
         .virtual_address = "10.8.0.4",
         .virtual_ipv6 = "fd00:8::1002",
         .bytes_received = 17438,
         .bytes_sent = 1098839,
         .connected_since = 1795414986,
         .client_id = std::nullopt,
         .peer_id = std::nullopt,
         .cipher = ""},
        {.common_name = "carol",
         .username = "",
         .real_address = "10.99.0.12:55087",
         .virtual_address = "10.8.0.2",
         .virtual_ipv6 = "fd00:8::1000",
         .bytes_received = 158047,
         .bytes_sent = 8888,
         .connected_since = 1795414986,
         .client_id = std::nullopt,
         .peer_id = std::nullopt,
         .cipher = ""},
        {.common_name = "alice",
         .username = "",
         .real_address = "10.99.0.10:38357",
         .virtual_address = "10.8.0.3",
         .virtual_ipv6 = "fd00:8::1001",
         .bytes_received = 1269157,
         .bytes_sent = 57572,
         .connected_since = 1795414986,
         .client_id = std::nullopt,
         .peer_id = std::nullopt,
         .cipher = ""},
    };
    CHECK(s.clients == expected);
}

TEST_CASE("status 1 and status 3 of the same moment agree (management fixture)", "[openvpn][status]")
{
    CaptureTimeZone zone;
    ManagementParser parser;
    parser.expect_single_line(); // bytecount 1
    for (int i = 0; i < 4; ++i)
        parser.expect_multiline(); // status 1, 2, 3, 4
    parser.feed(fixture("mgmt-status.txt"));
    std::vector<Status> statuses;
    while (auto m = parser.next())
        if (auto* r = std::get_if<CommandResponse>(&*m))
            statuses.push_back(parsed(r->text()));
    REQUIRE(statuses.size() == 3);
    CHECK(statuses[0].version == 1);
    CHECK(statuses[1].version == 2);
    CHECK(statuses[2].version == 3);
    CHECK(statuses[0].updated == 1795414990); // "Updated,2026-11-23 07:23:10"
    CHECK(statuses[2].updated == 1795414992);

    // v1 lacks ids, username and cipher, and the bytes moved in between;
    // the rest must match what v3 says with unix times and named columns.
    REQUIRE(statuses[0].clients.size() == statuses[2].clients.size());
    for (size_t i = 0; i < statuses[0].clients.size(); ++i) {
        const StatusClient& v1 = statuses[0].clients[i];
        const StatusClient& v3 = statuses[2].clients[i];
        CHECK(v1.common_name == v3.common_name);
        CHECK(v1.real_address == v3.real_address);
        CHECK(v1.virtual_address == v3.virtual_address);
        CHECK(v1.virtual_ipv6 == v3.virtual_ipv6);
        CHECK(v1.connected_since == v3.connected_since);
        CHECK(v1.connected_since == 1795414986);
    }
    CHECK(statuses[2].clients[2].username == "alice-user");
    CHECK(statuses[2].clients[2].client_id == 1u);
}

TEST_CASE("status: line ends, header order and added columns do not matter", "[openvpn][status]")
{
    const std::string v2 = fixture("status-v2.txt");
    const Status expected = parsed(v2);

    SECTION("CRLF") { CHECK(parsed(map_lines(v2, [](const std::string& l) { return l + "\r"; })) == expected); }
    SECTION("an END without a newline")
    {
        CHECK(parsed(v2.substr(0, v2.size() - 1)) == expected);
    }
    SECTION("a column added by a newer version")
    {
        const std::string wider = map_lines(v2, [](const std::string& line) {
            std::string l = line;
            if (l.starts_with("HEADER,CLIENT_LIST,"))
                return replace_first(l, "Real Address,", "Real Address,Tunnel MTU,");
            if (l.starts_with("CLIENT_LIST,")) {
                const size_t third = l.find(',', l.find(',', l.find(',') + 1) + 1);
                l.insert(third, ",1500");
            }
            return l;
        });
        CHECK(parsed(wider) == expected);
    }
    SECTION("columns in another order")
    {
        const std::string swapped = replace_first(v2, "Bytes Received,Bytes Sent", "Bytes Sent,Bytes Received");
        const Status s = parsed(swapped);
        CHECK(s.clients[0].bytes_sent == expected.clients[0].bytes_received);
        CHECK(s.clients[0].bytes_received == expected.clients[0].bytes_sent);
    }
    SECTION("no HEADER lines: the 2.6 layout")
    {
        std::string headless;
        for (const std::string& line : split(v2))
            if (!line.starts_with("HEADER,"))
                headless += line + "\n";
        CHECK(parsed(headless) == expected);
    }
    SECTION("record types of newer versions are skipped")
    {
        CHECK(parsed(replace_first(v2, "GLOBAL_STATS,", "HEADER,NEW_THING,A,B\nNEW_THING,1,2\nGLOBAL_STATS,")) ==
              expected);
    }
}

TEST_CASE("status v3: tabs allow commas in names", "[openvpn][status]")
{
    const Status s = parsed(replace_first(fixture("status-v3.txt"), "\tcarol\t", "\tcarol, jr.\t"));
    CHECK(s.clients[1].common_name == "carol, jr.");
}

TEST_CASE("status: UNDEF and empty ids are absent", "[openvpn][status]")
{
    std::string v3 = fixture("status-v3.txt");
    v3 = replace_first(v3, "alice-user\t1\t1\tAES-256-GCM", "UNDEF\t\tUNDEF\tAES-256-GCM");
    const Status s = parsed(v3);
    CHECK(s.clients[0].username.empty());
    CHECK_FALSE(s.clients[0].client_id.has_value());
    CHECK_FALSE(s.clients[0].peer_id.has_value());
}

TEST_CASE("status v1 of OpenVPN 2.5 and older: ctime dates, iroutes and cached routes", "[openvpn][status]")
{
    CaptureTimeZone zone;
    const Status s = parsed("OpenVPN CLIENT LIST\n"
                            "Updated,Mon Nov 23 07:23:09 2026\n"
                            "Common Name,Real Address,Bytes Received,Bytes Sent,Connected Since\n"
                            "alice,198.51.100.7:1194,100,200,Mon Nov  2 07:23:06 2026\n"
                            "ROUTING TABLE\n"
                            "Virtual Address,Common Name,Real Address,Last Ref\n"
                            "10.0.5.0/24,alice,198.51.100.7:1194,Mon Nov 23 07:23:07 2026\n"
                            "10.0.5.9C,alice,198.51.100.7:1194,Mon Nov 23 07:23:07 2026\n"
                            "10.8.0.6,alice,198.51.100.7:1194,Mon Nov 23 07:23:07 2026\n"
                            "fd00:8::1000,someone-gone,198.51.100.9:1194,Mon Nov 23 07:23:07 2026\n"
                            "GLOBAL STATS\n"
                            "END\n");
    CHECK(s.updated == 1795414989);
    REQUIRE(s.clients.size() == 1);
    CHECK(s.clients[0].connected_since == 1793600586); // Nov 2, CET
    CHECK(s.clients[0].virtual_address == "10.8.0.6");
    CHECK(s.clients[0].virtual_ipv6.empty());
}

TEST_CASE("local times follow the zone's daylight saving rules", "[openvpn][status]")
{
    CaptureTimeZone zone;
    CHECK(parse_local_time("2026-07-01 12:00:00") == 1782900000); // CEST: 10:00 UTC
    CHECK(parse_local_time("Wed Jul  1 12:00:00 2026") == 1782900000);
    CHECK(parse_local_time("2026-02-30 12:00:00") == std::nullopt);
    CHECK(parse_local_time("2026-07-01T12:00:00") == std::nullopt);
    CHECK(parse_local_time("2026-07-01 24:00:00") == std::nullopt);
    CHECK(parse_local_time("Wed Jux  1 12:00:00 2026") == std::nullopt);
}

TEST_CASE("status: empty and cut-short files are reported as such", "[openvpn][status]")
{
    CaptureTimeZone zone;
    CHECK(error_of("") == "openvpn status: empty (file being rewritten?)");
    CHECK(error_of("\n \n") == "openvpn status: empty (file being rewritten?)");

    for (const char* name : {"status-v1.txt", "status-v2.txt", "status-v3.txt"}) {
        const std::string text = fixture(name);
        // Every prefix short of "...END" fails; cut at a line end, it says why.
        for (size_t n = 1; n + 1 < text.size(); ++n) {
            auto status = parse_status(std::string_view(text).substr(0, n));
            INFO(name << " cut after " << n << " bytes");
            REQUIRE_FALSE(status.ok());
            if (text[n - 1] == '\n' || n < 6)
                CHECK_THAT(status.error().message(), Catch::Contains("truncated after line"));
        }
    }
    CHECK(error_of(fixture("status-v2.txt").substr(0, 200)) ==
          "openvpn status: truncated after line 3: no END line (file being rewritten?)");
}

TEST_CASE("status: the old tail after a rewritten file is noticed", "[openvpn][status]")
{
    const std::string v2 = fixture("status-v2.txt");
    // OpenVPN truncates the file only after writing the new content.
    CHECK(error_of(v2 + "ROUTING_TABLE,10.8.0.2,alice,10.99.0.10:40823,2026-11-23 07:23:01,1795414981\n"
                        "GLOBAL_STATS,dco_enabled,0\nEND\n") ==
          "openvpn status line 17: content after END on line 16 (file being rewritten?)");
    // The new head cut mid-line, glued to an old tail.
    const std::string old = fixture("status-v3.txt");
    std::string spliced = v2.substr(0, v2.find("CLIENT_LIST,carol") + 20) + old.substr(old.find("CLIENT_LIST\tbob"));
    CHECK(error_of(spliced) == "openvpn status line 5: CLIENT_LIST: expected 13 fields as in the header on line 3, "
                               "got 3");
    // Any splice of two captures: never a crash.
    for (size_t at = 0; at < v2.size(); at += 7) {
        auto status = parse_status(v2.substr(0, at) + old.substr(std::min(at, old.size())));
        (void)status;
    }
}

TEST_CASE("status: malformed lines name the line and what was expected", "[openvpn][status]")
{
    CaptureTimeZone zone;
    const std::string v1 = fixture("status-v1.txt");
    const std::string v2 = fixture("status-v2.txt");

    CHECK(error_of("hello\nEND\n") == "openvpn status line 1: expected \"OpenVPN CLIENT LIST\" (version 1) or a "
                                      "TITLE line (version 2, 3), got \"hello\"");
    CHECK(error_of(replace_first(v2, ",AES-256-GCM\nCLIENT_LIST,bob", "\nCLIENT_LIST,bob")) ==
          "openvpn status line 5: CLIENT_LIST: expected 13 fields as in the header on line 3, got 12");
    CHECK(error_of(replace_first(v2, "1308624", "1308x24")) ==
          "openvpn status line 4: Bytes Received: expected a number, got \"1308x24\"");
    CHECK(error_of(replace_first(v2, "23897", "-23897")) ==
          "openvpn status line 4: Bytes Sent: expected a number, got \"-23897\"");
    CHECK(error_of(replace_first(v2, "1308624", "99999999999999999999")) ==
          "openvpn status line 4: Bytes Received: expected a number, got \"99999999999999999999\"");
    CHECK(error_of(replace_first(v2, "07:23:01,1795414981", "07:23:01,soon")) ==
          "openvpn status line 4: Connected Since (time_t): expected unix seconds, got \"soon\"");
    CHECK(error_of(replace_first(v2, "alice-user,0,0", "alice-user,zero,0")) ==
          "openvpn status line 4: Client ID: expected a number, got \"zero\"");
    CHECK(error_of(replace_first(v2, "Bytes Sent,", "Bytes Out,")) ==
          "openvpn status line 3: CLIENT_LIST header: no \"Bytes Sent\" column");
    CHECK(error_of(replace_first(v2, "TIME,2026-11-23 07:23:03,1795414983\n", "")) ==
          "openvpn status line 15: expected a TIME line before END");
    CHECK(error_of(replace_first(v2, "TIME,2026-11-23 07:23:03,1795414983", "TIME,now,later")) ==
          "openvpn status line 2: expected TIME with a time and unix seconds, got \"TIME,now,later\"");
    CHECK(error_of(replace_first(v2, "HEADER,CLIENT_LIST", "TIME,x,1\nHEADER,CLIENT_LIST")) ==
          "openvpn status line 3: a second TIME (file being rewritten?)");
    CHECK(error_of(replace_first(v2, "GLOBAL_STATS,Max", "TIME,x,1\nGLOBAL_STATS,Max")) ==
          "openvpn status line 14: TIME out of order (file being rewritten?)");
    CHECK(error_of(replace_first(v2, "GLOBAL_STATS,Max", "CLIENT_LIST,dave,1.2.3.4:5,,,1,2,x,1,UNDEF,9,9,x\n"
                                                         "GLOBAL_STATS,Max")) ==
          "openvpn status line 14: CLIENT_LIST out of order (file being rewritten?)");
    CHECK(error_of(replace_first(v2, "HEADER,ROUTING", "0.11:57087,10.8.0.4\nHEADER,ROUTING")) ==
          "openvpn status line 7: expected a version 2 record (\"CLIENT_LIST,...\"), got \"0.11:57087,10.8.0.4\"");
    const std::string alice_row = v2.substr(v2.find("CLIENT_LIST,alice"), v2.find("\nCLIENT_LIST,carol") -
                                                                               v2.find("CLIENT_LIST,alice") + 1);
    CHECK(error_of(replace_first(v2, "CLIENT_LIST,carol", alice_row + "CLIENT_LIST,carol")) ==
          "openvpn status line 5: client \"alice\" 10.99.0.10:40823 listed twice (file being rewritten?)");

    CHECK(error_of(replace_first(v1, "Updated,2026-11-23 07:23:09", "Updated,yesterday")) ==
          "openvpn status line 2: expected \"Updated,<time>\" with a time like \"2026-11-23 07:23:09\", got "
          "\"Updated,yesterday\"");
    CHECK(error_of(replace_first(v1, "07:23:06", "07:73:06")) ==
          "openvpn status line 4: Connected Since: expected a time like \"2026-11-23 07:23:06\", got "
          "\"2026-11-23 07:73:06\"");
    CHECK(error_of(replace_first(v1, "17438", "17k")) ==
          "openvpn status line 4: Bytes Received: expected a number, got \"17k\"");
    CHECK(error_of(replace_first(v1, ",8888,", ",")) ==
          "openvpn status line 5: client: expected 5 fields as in the header on line 3, got 4");
    CHECK(error_of(replace_first(v1, "ROUTING TABLE\n", "")) ==
          "openvpn status line 7: client: expected 5 fields as in the header on line 3, got 4");
    CHECK(error_of(replace_first(v1, "GLOBAL STATS\nMax bcast/mcast queue length,0\n", "")) ==
          "openvpn status line 15: expected a route or \"GLOBAL STATS\", got \"END\"");
    CHECK(error_of(replace_first(v1, "Common Name,Real Address", "Name,Real Address")) ==
          "openvpn status line 3: expected the client list header \"Common Name,...\", got \"Name,Real "
          "Address,Bytes Received,Bytes Sent,Connected Since\"");
    CHECK(error_of(replace_first(v1, "Virtual Address,Common Name,Real Address,Last Ref",
                                 "Virtual Address,Name,Real Address,Last Ref")) ==
          "openvpn status line 8: routing table header: no \"Common Name\" column");
    CHECK(error_of("OpenVPN CLIENT LIST\nEND\n") ==
          "openvpn status line 2: expected \"Updated,<time>\", got \"END\"");
}
