#include <catch2/catch.hpp>

#include <map>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "flat_map.h"
#include "session.h"
#include "store/encoding.h"

using namespace vpnmeter;
using namespace std::string_literals;

TEST_CASE("a flat map behaves like std::map under random operations", "[flat_map]")
{
    std::mt19937 random(7);
    FlatMap<int, int> flat;
    std::map<int, int> reference;
    for (int step = 0; step < 5000; ++step) {
        const int key = static_cast<int>(random() % 300);
        switch (random() % 5) {
        case 0: flat[key] += step; reference[key] += step; break;
        case 1: CHECK(flat.erase(key) == reference.erase(key)); break;
        case 2: CHECK(flat.try_emplace(key, step).second == reference.try_emplace(key, step).second); break;
        case 3: flat.insert_or_assign(key, -step); reference.insert_or_assign(key, -step); break;
        case 4: CHECK(flat.count(key) == reference.count(key)); break;
        }
    }
    REQUIRE(flat.size() == reference.size());
    CHECK(std::equal(flat.begin(), flat.end(), reference.begin(),
                     [](const auto& a, const auto& b) { return a.first == b.first && a.second == b.second; }));
    for (const auto& [key, value] : reference) CHECK(flat.at(key) == value);
    CHECK_THROWS_AS(flat.at(1000), std::out_of_range);
}

TEST_CASE("a flat map built from unsorted entries keeps the last of equal keys", "[flat_map]")
{
    auto map = FlatMap<int, std::string>::from_unsorted({{3, "c"}, {1, "a"}, {3, "C"}, {2, "b"}, {1, "A"}});
    CHECK(map == FlatMap<int, std::string>{{1, "A"}, {2, "b"}, {3, "C"}});
}

TEST_CASE("merge assigns a sorted range in one pass, new keys and existing ones", "[flat_map]")
{
    FlatMap<int, std::string> map{{1, "a"}, {3, "c"}, {5, "e"}};
    map.merge(std::map<int, std::string>{{0, "z"}, {3, "C"}, {4, "d"}, {9, "i"}});
    CHECK(map == FlatMap<int, std::string>{{0, "z"}, {1, "a"}, {3, "C"}, {4, "d"}, {5, "e"}, {9, "i"}});
    const FlatMap<int, std::string> updates{{1, "A"}};
    map.merge(updates); // copied, not moved from
    CHECK(updates.at(1) == "A");
    CHECK(map.at(1) == "A");
    map.merge(FlatMap<int, std::string>{});
    CHECK(map.size() == 6);
}

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

TEST_CASE("session records written by vpnmeter 0.1 (CBOR) still read", "[store][encoding]")
{
    Session s = sample_session();
    s.end = 1'700'000'999;
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
        {"end", *s.end},
        {"usage", {{"upload", count(s.usage.upload)}, {"download", count(s.usage.download)}}},
        {"source_upload_bytes", s.source_upload_bytes},
        {"source_download_bytes", s.source_download_bytes},
    };
    const auto cbor = nlohmann::json::to_cbor(v1);
    CHECK(encoding::decode_session(std::string(cbor.begin(), cbor.end())).value() == s);
}
