#include <catch2/catch.hpp>

#include <deque>

#include "collector.h"

using namespace vpnmeter;

namespace {

// Hands out prepared snapshots, one per read.
class FakeSource : public CounterSource {
public:
    std::deque<Result<CounterSnapshot>> reads;
    Result<CounterSnapshot> read() override
    {
        auto next = std::move(reads.front());
        reads.pop_front();
        return next;
    }
};

const ClientKey alice = ClientKey::parse(5, "10.8.0.2");
const ClientKey bob = ClientKey::parse(5, "fd00:8::1000");

} // namespace

TEST_CASE("the collector reports what moved since the last read", "[collector]")
{
    FakeSource source;
    CounterSnapshot first;
    first.clients[alice] = {{1, 100}, {2, 300}};
    first.interfaces[5] = {{{1, 100}, {2, 300}}, {}};
    CounterSnapshot second = first;
    second.clients[alice].upload = {3, 400};
    second.clients[bob] = {{0, 0}, {1, 80}};
    second.interfaces[5].total = {{3, 400}, {3, 380}};
    source.reads.push_back(first);
    source.reads.push_back(second);
    source.reads.push_back(second);

    Collector collector(source);
    auto c1 = collector.collect();
    REQUIRE(c1);
    CHECK(moved_clients(*c1).at(alice) == first.clients[alice]); // no baseline: all is new
    collector.accept(std::move(c1.value()));

    auto c2 = collector.collect();
    REQUIRE(c2);
    CHECK(moved_clients(*c2).size() == 2);
    CHECK(moved_clients(*c2).at(alice) == Traffic{{2, 300}, {0, 0}});
    CHECK(moved_clients(*c2).at(bob) == Traffic{{0, 0}, {1, 80}});
    CHECK(c2->interfaces_moved.at(5).total == Traffic{{2, 300}, {1, 80}});

    collector.accept(std::move(c2.value()));
    auto c3 = collector.collect();
    REQUIRE(c3);
    CHECK(moved_clients(*c3).empty()); // nothing moved, nothing reported
    CHECK(c3->interfaces_moved.empty());
}

TEST_CASE("a baseline from a checkpoint is not counted again", "[collector]")
{
    FakeSource source;
    CounterSnapshot checkpoint;
    checkpoint.clients[alice] = {{10, 1000}, {10, 1000}};
    CounterSnapshot now = checkpoint;
    now.clients[alice].download = {11, 1500};
    source.reads.push_back(now);

    Collector collector(source, checkpoint);
    auto cycle = collector.collect();
    REQUIRE(cycle);
    CHECK(moved_clients(*cycle).at(alice) == Traffic{{0, 0}, {1, 500}});
}

TEST_CASE("a failed read changes nothing", "[collector]")
{
    FakeSource source;
    CounterSnapshot first;
    first.clients[alice] = {{1, 100}, {0, 0}};
    CounterSnapshot later = first;
    later.clients[alice].upload = {2, 250};
    source.reads.push_back(first);
    source.reads.push_back(Error{"read vpnmeter_clients", EIO});
    source.reads.push_back(later);

    Collector collector(source);
    auto c1 = collector.collect();
    REQUIRE(c1);
    collector.accept(std::move(c1.value()));
    auto failed = collector.collect();
    REQUIRE_FALSE(failed);
    CHECK(failed.error().message() == "read vpnmeter_clients: Input/output error");
    auto cycle = collector.collect();
    REQUIRE(cycle);
    CHECK(moved_clients(*cycle).at(alice) == Traffic{{1, 150}, {0, 0}}); // nothing lost over the failure
}

TEST_CASE("a cycle that is not accepted is counted again, not lost", "[collector]")
{
    FakeSource source;
    CounterSnapshot first;
    first.clients[alice] = {{1, 100}, {0, 0}};
    CounterSnapshot later = first;
    later.clients[alice].upload = {3, 300};
    source.reads.push_back(first);
    source.reads.push_back(later);

    Collector collector(source);
    auto unaccepted = collector.collect(); // e.g. the store commit failed
    REQUIRE(unaccepted);
    auto retried = collector.collect();
    REQUIRE(retried);
    CHECK(moved_clients(*retried).at(alice) == Traffic{{3, 300}, {0, 0}});
}
