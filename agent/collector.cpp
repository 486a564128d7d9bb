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
