// A map kept as one sorted vector: the per-client tables of a cycle.
//
// At 100,000 clients a std::map costs a node allocation and a pointer chase
// per entry; the cycle's tables are built in key order (or sorted once) and
// then mostly read, scanned and merged, which a flat sorted vector does with
// a fraction of the memory and no allocator traffic. Inserting in the middle
// moves the tail: build large maps in order (append() or from_unsorted()),
// not by random operator[].
#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>
#include <initializer_list>
#include <iterator>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

namespace vpnmeter {

template <class Key, class Value, class Less = std::less<Key>>
class FlatMap {
public:
    using key_type = Key;
    using mapped_type = Value;
    using value_type = std::pair<Key, Value>;
    using iterator = typename std::vector<value_type>::iterator;
    using const_iterator = typename std::vector<value_type>::const_iterator;

    FlatMap() = default;
    FlatMap(std::initializer_list<value_type> entries) : FlatMap(from_unsorted(std::vector<value_type>(entries))) {}

    // Sorts `entries` by key; of equal keys the last one stays.
    static FlatMap from_unsorted(std::vector<value_type> entries)
    {
        std::stable_sort(entries.begin(), entries.end(), key_less);
        FlatMap out;
        out.entries_ = std::move(entries);
        auto last = std::unique(out.entries_.rbegin(), out.entries_.rend(), key_equal); // keeps the last
        out.entries_.erase(out.entries_.begin(), last.base());
        return out;
    }

    // `entries` already in key order, each key once (not checked).
    static FlatMap adopt_sorted(std::vector<value_type> entries)
    {
        FlatMap out;
        out.entries_ = std::move(entries);
        return out;
    }

    iterator begin() { return entries_.begin(); }
    iterator end() { return entries_.end(); }
    const_iterator begin() const { return entries_.begin(); }
    const_iterator end() const { return entries_.end(); }
    size_t size() const { return entries_.size(); }
    bool empty() const { return entries_.empty(); }
    void clear() { entries_.clear(); }
    void reserve(size_t n) { entries_.reserve(n); }

    iterator lower_bound(const Key& key) { return std::lower_bound(begin(), end(), key, entry_less); }
    const_iterator lower_bound(const Key& key) const { return std::lower_bound(begin(), end(), key, entry_less); }
    iterator find(const Key& key)
    {
        auto it = lower_bound(key);
        return it != end() && !Less{}(key, it->first) ? it : end();
    }
    const_iterator find(const Key& key) const
    {
        auto it = lower_bound(key);
        return it != end() && !Less{}(key, it->first) ? it : end();
    }
    size_t count(const Key& key) const { return find(key) != end() ? 1 : 0; }
    bool contains(const Key& key) const { return find(key) != end(); }
    const Value& at(const Key& key) const
    {
        auto it = find(key);
        if (it == end()) throw std::out_of_range("FlatMap::at: no such key");
        return it->second;
    }
    Value& at(const Key& key) { return const_cast<Value&>(std::as_const(*this).at(key)); }

    // Cheap when `key` sorts after every key already present.
    template <class... Args>
    std::pair<iterator, bool> try_emplace(const Key& key, Args&&... args)
    {
        if (entries_.empty() || Less{}(entries_.back().first, key)) {
            entries_.emplace_back(std::piecewise_construct, std::forward_as_tuple(key),
                                  std::forward_as_tuple(std::forward<Args>(args)...));
            return {std::prev(entries_.end()), true};
        }
        auto it = lower_bound(key);
        if (it != end() && !Less{}(key, it->first)) return {it, false};
        it = entries_.emplace(it, std::piecewise_construct, std::forward_as_tuple(key),
                              std::forward_as_tuple(std::forward<Args>(args)...));
        return {it, true};
    }
    std::pair<iterator, bool> emplace(const Key& key, Value value) { return try_emplace(key, std::move(value)); }
    template <class V>
    std::pair<iterator, bool> insert_or_assign(const Key& key, V&& value)
    {
        auto [it, inserted] = try_emplace(key);
        it->second = std::forward<V>(value);
        return {it, inserted};
    }
    Value& operator[](const Key& key) { return try_emplace(key).first->second; }

    // For a map built in key order: `key` must sort after every key present.
    void append(const Key& key, Value value) { entries_.emplace_back(key, std::move(value)); }

    size_t erase(const Key& key)
    {
        auto it = find(key);
        if (it == end()) return 0;
        entries_.erase(it);
        return 1;
    }
    iterator erase(const_iterator it) { return entries_.erase(it); }
    // Removes every entry `doomed` says so of, in one pass.
    template <class Pred>
    size_t erase_if(Pred doomed)
    {
        return std::erase_if(entries_, doomed);
    }

    // Assigns every (key, value) of `updates`, a range in key order, in one
    // merge pass: linear, where one insert after another would move the
    // tail each time.
    template <class Range>
    void merge(Range&& updates)
    {
        if (std::empty(updates)) return;
        if (assign_in_place(std::forward<Range>(updates))) return;
        std::vector<value_type> merged;
        merged.reserve(entries_.size() + std::size(updates));
        auto old = entries_.begin();
        for (auto&& [key, value] : updates) {
            for (; old != entries_.end() && Less{}(old->first, key); ++old) merged.push_back(std::move(*old));
            if (old != entries_.end() && !Less{}(key, old->first)) ++old;
            if constexpr (std::is_rvalue_reference_v<Range&&>) merged.emplace_back(key, std::move(value));
            else merged.emplace_back(key, value);
        }
        std::move(old, entries_.end(), std::back_inserter(merged));
        entries_ = std::move(merged);
    }

    bool operator==(const FlatMap& other) const { return entries_ == other.entries_; }

private:
    // merge() when every key of `updates` is present already (the common
    // case: known clients moved): no second copy of the table. False, with
    // nothing changed, if one is new.
    template <class Range>
    bool assign_in_place(Range&& updates)
    {
        auto at = entries_.begin();
        for (const auto& [key, value] : updates) {
            while (at != entries_.end() && Less{}(at->first, key)) ++at;
            if (at == entries_.end() || Less{}(key, at->first)) return false;
        }
        at = entries_.begin();
        for (auto&& [key, value] : updates) {
            while (Less{}(at->first, key)) ++at;
            if constexpr (std::is_rvalue_reference_v<Range&&>) at->second = std::move(value);
            else at->second = value;
        }
        return true;
    }

    static bool key_less(const value_type& a, const value_type& b) { return Less{}(a.first, b.first); }
    static bool key_equal(const value_type& a, const value_type& b)
    {
        return !Less{}(a.first, b.first) && !Less{}(b.first, a.first);
    }
    static bool entry_less(const value_type& entry, const Key& key) { return Less{}(entry.first, key); }

    std::vector<value_type> entries_;
};

} // namespace vpnmeter
