// Turns successive raw counter reads into deltas. Never resets a counter.
#pragma once

#include <map>
#include <optional>

#include "bpf_maps.h"
#include "counters.h"

namespace vpnmeter {

// Traffic counted between two reads. The clients' deltas are not kept in a
// table of their own: they are computed while walking the snapshot beside
// the values before it (for_each_moved). At 1,000,000 clients such a table
// added 56 MB at the peak of a cycle, beside the two snapshots.
struct Cycle {
    CounterSnapshot snapshot;                              // raw values now
    std::map<uint32_t, InterfaceTraffic> interfaces_moved; // only entries that moved
    const ClientTraffic* clients_before = nullptr;         // null: everything is new
};

// The cycle from `before` to `now`; it refers to `before`, which must
// outlive it (the collector keeps its last snapshot until accept()).
Cycle cycle_between(CounterSnapshot now, const CounterSnapshot& before);

// Calls f(entry, moved) for each client of the cycle that moved, in key
// order: `entry` is its key and raw value in cycle.snapshot.clients. An
// entry missing before counts from zero.
template <class F>
void for_each_moved(const Cycle& cycle, F&& f)
{
    static const ClientTraffic none;
    const ClientTraffic& before = cycle.clients_before ? *cycle.clients_before : none;
    auto old = before.begin();
    for (const auto& entry : cycle.snapshot.clients) {
        while (old != before.end() && old->first < entry.first) ++old;
        const bool known = old != before.end() && old->first == entry.first;
        const Traffic moved = known ? delta(entry.second, old->second) : entry.second;
        if (moved != Traffic{}) f(entry, moved);
    }
}

// The clients that moved, as a table: for tests and diagnostics.
ClientTraffic moved_clients(const Cycle& cycle);

class Collector {
public:
    // `baseline`: the raw values already accounted for (the last checkpoint).
    // Without one, everything in the maps is new.
    explicit Collector(CounterSource& source, std::optional<CounterSnapshot> baseline = std::nullopt);

    // Reads the counters; the cycle is what moved since the last accepted
    // one (and refers to it). Nothing changes until accept(): a cycle whose
    // commit failed is simply read again later, so its bytes are not lost.
    Result<Cycle> collect() const;
    void accept(Cycle&& cycle) { last_ = std::move(cycle.snapshot); }
    const CounterSnapshot& last() const { return last_; }

private:
    CounterSource& source_;
    CounterSnapshot last_;
};

} // namespace vpnmeter
