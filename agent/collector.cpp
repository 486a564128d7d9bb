#include "collector.h"

namespace vpnmeter {
namespace {

template <class Key, class Value>
void diff_into(const std::map<Key, Value>& now, const std::map<Key, Value>& before, std::map<Key, Value>& out)
{
    for (const auto& [key, value] : now) {
        auto it = before.find(key);
        Value moved = it == before.end() ? value : delta(value, it->second);
        if (moved != Value{}) out.emplace(key, moved);
    }
}

// Both in key order: one merge pass, and `out` is built in order too.
void diff_into(const ClientTraffic& now, const ClientTraffic& before, ClientTraffic& out)
{
    auto old = before.begin();
    for (const auto& [key, value] : now) {
        while (old != before.end() && old->first < key) ++old;
        const bool known = old != before.end() && old->first == key;
        const Traffic moved = known ? delta(value, old->second) : value;
        if (moved != Traffic{}) out.append(key, moved);
    }
}

} // namespace

CounterDelta compute_delta(const CounterSnapshot& now, const CounterSnapshot& before)
{
    CounterDelta out;
    diff_into(now.clients, before.clients, out.clients);
    diff_into(now.interfaces, before.interfaces, out.interfaces);
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
    Cycle cycle{std::move(now.value()), {}};
    cycle.delta = compute_delta(cycle.snapshot, last_);
    return cycle;
}

} // namespace vpnmeter
