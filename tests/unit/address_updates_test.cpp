#include <catch2/catch.hpp>

#include <deque>
#include <map>
#include <vector>

#include "store/address_updates.h"

using namespace vpnmeter;

namespace {

ClientKey key(int last) { return ClientKey::parse(3, "10.8.0." + std::to_string(last)); }
Traffic raw(uint64_t bytes) { return Traffic{{1, bytes}, {0, 0}}; }

// The whole as (address, raw bytes, owner, changed) rows, in iteration order.
struct Row {
    int last;
    uint64_t bytes;
    std::string owner;
    bool changed;
    bool operator==(const Row&) const = default;
};
std::vector<Row> rows(const AddressUpdates& updates)
{
    std::vector<Row> out;
    for (const auto& entry : updates)
        out.push_back({entry.key().addr[3], entry.raw().upload.bytes, std::string(updates.owner(entry)),
                       entry.owner_changed});
    return out;
}

} // namespace

TEST_CASE("address updates: the appended entries stay; merged owners take their places in key order",
          "[address_updates]")
{
    const std::deque<AddressUpdates::Viewed> read{{key(2), raw(20)}, {key(4), raw(40)}, {key(6), raw(60)}};
    AddressUpdates updates;
    const uint32_t s1 = updates.add_owner("s1");
    updates.append(read[0], s1);
    updates.append(read[1], 0);
    updates.append(read[2], s1);
    const auto appended = updates.appended();
    REQUIRE(appended.size() == 3);
    const AddressUpdates::Entry* const before = appended.data();

    // 4 goes to s2, 6 to nobody; 1 and 9 are new (raw values of their own).
    updates.merge({{key(1), {raw(10), "s2"}}, {key(4), {raw(999), "s2"}}, {key(6), {raw(999), ""}},
                   {key(9), {raw(90), "s3"}}});
    // A second merge changes a change and an appended entry.
    updates.merge({{key(2), {raw(999), ""}}, {key(9), {raw(999), "s4"}}});

    CHECK(updates.appended().data() == before); // the store may be writing them meanwhile
    CHECK(updates.appended().size() == 3);
    CHECK(updates.appended()[0].owner == s1); // as appended
    CHECK(rows(updates) == std::vector<Row>{{1, 10, "s2", true},
                                            {2, 20, "", true},
                                            {4, 40, "s2", true}, // an appended address keeps its raw value
                                            {6, 60, "", true},
                                            {9, 90, "s4", true}});
    CHECK(updates.size() == 5);
    CHECK(updates.changed().size() == 5);
    REQUIRE(updates.find(key(4)));
    CHECK(updates.owner(*updates.find(key(4))) == "s2");
    CHECK(updates.find(key(3)) == nullptr);
    CHECK(updates.checkpoints() == AddressCheckpoints::from_unsorted({{key(1), {raw(10), "s2"}},
                                                                      {key(2), {raw(20), ""}},
                                                                      {key(4), {raw(40), "s2"}},
                                                                      {key(6), {raw(60), ""}},
                                                                      {key(9), {raw(90), "s4"}}}));
}

TEST_CASE("address updates: without a merge the whole is what was appended, unchanged", "[address_updates]")
{
    const std::deque<AddressUpdates::Viewed> read{{key(2), raw(20)}, {key(4), raw(40)}};
    AddressUpdates updates;
    updates.append(read[0], updates.add_owner("s1"));
    updates.append(read[1], 0);
    CHECK(rows(updates) == std::vector<Row>{{2, 20, "s1", false}, {4, 40, "", false}});
    CHECK(updates.changed().empty());
    const AddressUpdates none;
    CHECK(none.begin() == none.end());
    CHECK(none.empty());
}
