#include <catch2/catch.hpp>

#include <map>
#include <random>
#include <string>

#include "flat_map.h"

using namespace vpnmeter;

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

