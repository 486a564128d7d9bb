#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <string>

#include <nlohmann/json.hpp>

#include "session.h"
#include "store/encoding.h"
#include "store_support.h"

using namespace vpnmeter;
using namespace vpnmeter::testing;
using namespace std::string_literals;

namespace {

Session sample_session()
{
    Session s;
    s.id = "udp:17:1700000000";
    s.user = "al\0ice \xe2\x9c\x93"s;
    s.instance = "udp";
    s.interface = "tun0";
    s.addresses = {"10.8.0.6", "fd00::6", ""};
    s.real_address = "[2001:db8::1]:51820";
    s.start = -5;
    s.usage = {{1, 2}, {3, 1ull << 62}};
    s.source_upload_bytes = 7;
    s.source_download_bytes = ~0ull;
    return s;
}

// A session record as schema 1 stores hold it (CBOR).
std::string session_record_v1(const Session& s)
{
    auto count = [](const Count& c) { return nlohmann::json{{"packets", c.packets}, {"bytes", c.bytes}}; };
    const nlohmann::json v1 = {
        {"v", 1},
        {"id", s.id},
        {"user", s.user},
        {"instance", s.instance},
        {"interface", s.interface},
        {"addresses", s.addresses},
        {"real_address", s.real_address},
        {"start", s.start},
        {"end", s.end ? nlohmann::json(*s.end) : nlohmann::json(nullptr)},
        {"usage", {{"upload", count(s.usage.upload)}, {"download", count(s.usage.download)}}},
        {"source_upload_bytes", s.source_upload_bytes},
        {"source_download_bytes", s.source_download_bytes},
    };
    const auto cbor = nlohmann::json::to_cbor(v1);
    return std::string(cbor.begin(), cbor.end());
}

} // namespace

TEST_CASE("session records round-trip in the binary format, open and closed", "[store][encoding]")
{
    Session s = sample_session();
    CHECK(encoding::encode(s)[0] == 2); // the format's version
    CHECK(encoding::decode_session(encoding::encode(s)).value() == s);
    s.end = 1'700'000'999;
    CHECK(encoding::decode_session(encoding::encode(s)).value() == s);
    s.end = 0; // closed at 0 is not open
    CHECK(encoding::decode_session(encoding::encode(s)).value() == s);
    CHECK(encoding::decode_session(encoding::encode(Session{})).value() == Session{});
}

TEST_CASE("truncated or padded session records are errors, not crashes", "[store][encoding]")
{
    const std::string good = encoding::encode(sample_session());
    for (size_t size = 1; size < good.size(); ++size) {
        INFO("first " << size << " bytes");
        CHECK_FALSE(encoding::decode_session(good.substr(0, size)));
    }
    auto padded = encoding::decode_session(good + "x");
    REQUIRE_FALSE(padded);
    CHECK(padded.error().message() == "session record has 1 extra bytes");
    std::string huge_count = good;
    huge_count[1 + 1 + 8 + 8 + 32 + 16] = '\xff'; // the address count
    CHECK_FALSE(encoding::decode_session(huge_count));
}

TEST_CASE("session records of schema 1 (CBOR) still read", "[store][encoding]")
{
    Session s = sample_session();
    CHECK(encoding::decode_session(session_record_v1(s)).value() == s);
    s.end = 1'700'000'999;
    CHECK(encoding::decode_session(session_record_v1(s)).value() == s);
}

TEST_CASE("a schema 1 store is migrated: its session records rewritten in the binary format", "[store][encoding]")
{
    TempDir dir;
    auto options = options_in(dir);
    REQUIRE(mkdir(options.path.c_str(), 0700) == 0);
    Session open = sample_session();
    Session closed = sample_session();
    closed.id = "udp:18:1700000000";
    closed.end = 1'700'000'500;
    put_raw(options.path, "meta", "schema_version", encoding::encode_u32(1));
    put_raw(options.path, "sessions", open.id, session_record_v1(open));
    put_raw(options.path, "sessions", closed.id, session_record_v1(closed));

    { // The CLI of this release leaves the migration to the daemon and says so.
        auto read_only = options;
        read_only.read_only = true;
        auto reader = Store::open(read_only);
        REQUIRE_FALSE(reader);
        CHECK_THAT(reader.error().message(), Catch::Contains("has schema version 1; start this release's vpnmeterd "
                                                             "once to upgrade it"));
    }
    {
        Store store = open_store(options);
        CHECK(store.schema_version() == 7);
        CHECK(must(store.sessions()) == std::vector<Session>{open, closed});
    }
    // On disk they are binary records now (version byte 2), the open one
    // apart from the closed ones (schema 3), and a reopen reads them as they are.
    CHECK(get_raw(options.path, "sessions_active", open.id).at(0) == 2);
    CHECK(get_raw(options.path, "sessions", closed.id).at(0) == 2);
    CHECK(get_raw(options.path, "sessions", open.id).empty());
    Store store = open_store(options);
    CHECK(store.schema_version() == 7);
    CHECK(must(store.session(closed.id)) == closed);
    CHECK(must(store.session(open.id)) == open);
}
