// The recorder's cumulative series: a std::map, whose nodes stay put
// (sessions keep pointers to their series), with its entries also listed in
// key order in a vector. Every cycle copies all of them for the next
// snapshot; walking the tree for that chased 100,000s of nodes one after
// another, most of what staging the metrics cost.
#pragma once

#include <algorithm>
#include <map>
#include <utility>
#include <vector>

#include "flat_map.h"

namespace vpnmeter {

template <class Key, class Value>
class SeriesMap {
public:
    using Map = std::map<Key, Value>;
    using iterator = typename Map::iterator;

    std::pair<iterator, bool> try_emplace(const Key& key)
    {
        auto added = map_.try_emplace(key);
        if (added.second && listed()) {
            auto at = std::lower_bound(order_.begin(), order_.end(), key, key_less);
            order_.insert(at, &*added.first);
        }
        return added;
    }
    Value& operator[](const Key& key) { return try_emplace(key).first->second; }
    void erase(iterator it)
    {
        if (listed()) {
            auto at = std::lower_bound(order_.begin(), order_.end(), it->first, key_less);
            order_.erase(at); // the entry's own: keys are unique
        }
        map_.erase(it);
    }
    void erase(const Key& key)
    {
        if (auto it = map_.find(key); it != map_.end()) erase(it);
    }
    size_t size() const { return map_.size(); }

    // Every entry, in key order.
    FlatMap<Key, Value> flat_copy() const
    {
        if (!listed_) {
            order_.clear();
            order_.reserve(map_.size());
            for (const auto& entry : map_) order_.push_back(&entry);
            listed_ = true;
        }
        changes_ = 0;
        FlatMap<Key, Value> out;
        out.reserve(order_.size());
        for (const auto* entry : order_) out.append(entry->first, entry->second);
        return out;
    }

private:
    using Entry = typename Map::value_type;
    static bool key_less(const Entry* entry, const Key& key) { return entry->first < key; }
    // Whether the list is kept up to date entry by entry. Past a few
    // changes between copies (the first cycle adds every series) it is
    // dropped instead, and the next copy lists them afresh in one walk.
    bool listed()
    {
        if (listed_ && ++changes_ > 64 + order_.size() / 64) listed_ = false;
        return listed_;
    }

    Map map_;
    mutable std::vector<const Entry*> order_; // the entries in key order, while listed_
    mutable bool listed_ = false;
    mutable size_t changes_ = 0; // since the list was made
};

} // namespace vpnmeter
