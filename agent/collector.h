// Turns successive raw counter reads into deltas. Never resets a counter.
#pragma once

#include <map>
#include <optional>

#include "bpf_maps.h"
#include "counters.h"

namespace vpnmeter {

// Traffic counted between two reads.
struct CounterDelta {
    ClientTraffic clients;                           // only entries that moved
    std::map<uint32_t, InterfaceTraffic> interfaces; // only entries that moved
};

struct Cycle {
    CounterSnapshot snapshot; // raw values now
    CounterDelta delta;       // since the previous cycle (or the baseline)
};

class Collector {
public:
    // `baseline`: the raw values already accounted for (the last checkpoint).
    // Without one, everything in the maps is new.
    explicit Collector(CounterSource& source, std::optional<CounterSnapshot> baseline = std::nullopt);

    // Reads the counters and computes what moved since the last accepted
    // cycle. Nothing changes until accept(): a cycle whose commit failed is
    // simply read again later, so its bytes are not lost.
    Result<Cycle> collect() const;
    void accept(Cycle&& cycle) { last_ = std::move(cycle.snapshot); }
    const CounterSnapshot& last() const { return last_; }

private:
    CounterSource& source_;
    CounterSnapshot last_;
};

// The pure part of collect(): what moved from `before` to `now`. An entry
// missing from `before` counts from zero.
CounterDelta compute_delta(const CounterSnapshot& now, const CounterSnapshot& before);

} // namespace vpnmeter
