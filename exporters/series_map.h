// The recorder's cumulative series: a std::map, whose nodes stay put
// (sessions keep pointers to their series), with its entries also listed in
// key order in a vector. Every cycle copies all of them for the next
// snapshot; walking the tree for that chased 100,000s of nodes one after
// another.
#pragma once

#include <algorithm>
#include <cstddef>
#include <map>
#include <memory>
#include <utility>
#include <vector>

namespace vpnmeter {

template <class Key, class Value>
class SeriesMap;

// A SeriesMap's entries at one moment, in key order: what a snapshot shows.
// Its keys are shared with the copies before and after it for as long as
// no series comes or goes, so a cycle copies the values alone (copying
// 100,000 label sets was most of what staging the metrics cost).
template <class Key, class Value>
class SeriesCopy {
public:
    SeriesCopy() : keys_(std::make_shared<const std::vector<Key>>()) {}

    size_t size() const { return values_.size(); }
    bool empty() const { return values_.empty(); }

    class const_iterator {
    public:
        std::pair<const Key&, const Value&> operator*() const { return {(*copy_->keys_)[at_], copy_->values_[at_]}; }
        const_iterator& operator++()
        {
            ++at_;
            return *this;
        }
        bool operator==(const const_iterator& other) const { return at_ == other.at_; }

    private:
        friend class SeriesCopy;
        const_iterator(const SeriesCopy* copy, size_t at) : copy_(copy), at_(at) {}
        const SeriesCopy* copy_;
        size_t at_;
    };
    const_iterator begin() const { return {this, 0}; }
    const_iterator end() const { return {this, values_.size()}; }

    // Inserts in key order (a snapshot made by hand): slow, for tests.
    Value& operator[](const Key& key)
    {
        auto at = std::lower_bound(keys_->begin(), keys_->end(), key);
        const auto index = static_cast<size_t>(at - keys_->begin());
        if (at == keys_->end() || *at != key) {
            auto keys = std::make_shared<std::vector<Key>>(*keys_);
            keys->insert(keys->begin() + static_cast<std::ptrdiff_t>(index), key);
            keys_ = std::move(keys);
            values_.insert(values_.begin() + static_cast<std::ptrdiff_t>(index), Value{});
        }
        return values_[index];
    }

private:
    friend class SeriesMap<Key, Value>;
    std::shared_ptr<const std::vector<Key>> keys_;
    std::vector<Value> values_; // values_[i] is the value of (*keys_)[i]
};

template <class Key, class Value>
class SeriesMap {
public:
    using Map = std::map<Key, Value>;
    using iterator = typename Map::iterator;

    std::pair<iterator, bool> try_emplace(const Key& key)
    {
        auto added = map_.try_emplace(key);
        if (added.second) {
            keys_.reset();
            if (listed()) {
                auto at = std::lower_bound(order_.begin(), order_.end(), key, key_less);
                order_.insert(at, &*added.first);
            }
        }
        return added;
    }
    Value& operator[](const Key& key) { return try_emplace(key).first->second; }
    void erase(iterator it)
    {
        keys_.reset();
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
    SeriesCopy<Key, Value> copy() const
    {
        if (!listed_) {
            order_.clear();
            order_.reserve(map_.size());
            for (const auto& entry : map_) order_.push_back(&entry);
            listed_ = true;
        }
        changes_ = 0;
        if (!keys_) {
            auto keys = std::make_shared<std::vector<Key>>();
            keys->reserve(order_.size());
            for (const auto* entry : order_) keys->push_back(entry->first);
            keys_ = std::move(keys);
        }
        SeriesCopy<Key, Value> out;
        out.keys_ = keys_;
        out.values_.reserve(order_.size());
        for (size_t i = 0; i < order_.size(); ++i) {
            if (i + 16 < order_.size()) __builtin_prefetch(&order_[i + 16]->second); // map nodes lie scattered
            out.values_.push_back(order_[i]->second);
        }
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
    // The keys as the last copy() listed them; reset when a series comes or goes.
    mutable std::shared_ptr<const std::vector<Key>> keys_;
};

} // namespace vpnmeter
