#include "collector.h"

namespace vpnmeter {

Cycle cycle_between(CounterSnapshot now, const CounterSnapshot& before)
{
    Cycle cycle{std::move(now), {}, &before.clients};
    for (const auto& [ifindex, value] : cycle.snapshot.interfaces) {
        auto it = before.interfaces.find(ifindex);
        const InterfaceTraffic moved = it == before.interfaces.end() ? value : delta(value, it->second);
        if (moved != InterfaceTraffic{}) cycle.interfaces_moved.emplace(ifindex, moved);
    }
    return cycle;
}

ClientTraffic moved_clients(const Cycle& cycle)
{
    ClientTraffic out;
    for_each_moved(cycle, [&](const auto& entry, const Traffic& moved) { out.append(entry.first, moved); });
    return out;
}

Collector::Collector(CounterSource& source, std::optional<CounterSnapshot> baseline)
    : source_(source), last_(baseline.value_or(CounterSnapshot{}))
{
}

Result<Cycle> Collector::collect() const
{
    auto now = source_.read();
    if (!now) return now.error();
    return cycle_between(std::move(now.value()), last_);
}

} // namespace vpnmeter
