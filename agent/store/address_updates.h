// The address checkpoints one cycle writes.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "counters.h"

namespace vpnmeter {

// The raw counter value last accounted for at one client address, and the
// session that owned the address then (empty: nobody, so unattributed).
struct AddressCheckpoint {
    Traffic raw;
    std::string owner;
    bool operator==(const AddressCheckpoint&) const = default;
};

using AddressCheckpoints = FlatMap<ClientKey, AddressCheckpoint>; // by address, in key order

// A cycle's address checkpoints, in key order. An entry views its key and
// raw value in the cycle's counter snapshot, which must outlive it, instead
// of copying them, and names its owner by index: at 1,000,000 moved clients
// copies with an owner string each took 88 MB at the cycle's peak; views
// take 16 bytes an entry. The few entries with no snapshot entry behind them
// (an owner set on an address the kernel has not seen) are kept here.
//
// Built in two steps, as the reconciler plans: the addresses that moved are
// appended under their owners as last committed, then the owners that
// changed are merged. The appended entries never change after that, so the
// store writes their raw values while the plan goes on (appended()); the
// merged changes are kept apart and take their entries' places when the
// whole is iterated.
class AddressUpdates {
public:
    using Viewed = std::pair<ClientKey, Traffic>; // a ClientTraffic entry
    struct Entry {
        const Viewed* at = nullptr;
        uint32_t owner = 0; // in owners(); 0: nobody
        // Set by merge(): the owner differs from the one last committed (or
        // may). The store rewrites an owner only then.
        bool owner_changed = false;
        const ClientKey& key() const { return at->first; }
        const Traffic& raw() const { return at->second; }
    };

    AddressUpdates() = default;
    // Owned copies, any order: for tests and callers without a snapshot.
    AddressUpdates(std::initializer_list<std::pair<ClientKey, AddressCheckpoint>> entries);
    // Views point into owned_ (a deque: stable), so a copy would point into the original's.
    AddressUpdates(AddressUpdates&&) = default;
    AddressUpdates& operator=(AddressUpdates&&) = default;
    AddressUpdates(const AddressUpdates&) = delete;
    AddressUpdates& operator=(const AddressUpdates&) = delete;

    // Keeps an owner id once for all the addresses it owns; "" is 0.
    // `tag`: the caller's own note about the owner (the reconciler's slot
    // and generation), opaque here; 0 when it has none.
    uint32_t add_owner(std::string_view owner, uint64_t tag = 0);
    std::string_view owner(const Entry& entry) const
    {
        const Owner& o = owners_[entry.owner];
        return std::string_view(owner_text_).substr(o.at, o.size);
    }
    uint64_t owner_tag(const Entry& entry) const { return owners_[entry.owner].tag; }

    void reserve(size_t entries)
    {
        entries_.reserve(entries);
        owners_.reserve(entries + 1); // about a session an entry
    }
    // `viewed` after every key appended so far; it must outlive this.
    // `owner`: the one last committed (an owner that changed is merged).
    // Not after a merge().
    void append(const Viewed& viewed, uint32_t owner)
    {
        entries_.push_back({&viewed, owner});
        ++size_;
    }
    // Sets the owner of each address in `changes` (in key order), noted as
    // changed: in place of its entry if there is one, else a new entry with
    // the change's raw value.
    void merge(const std::map<ClientKey, AddressCheckpoint>& changes);

    // The entries appended, as appended: merge() leaves them as they are.
    std::span<const Entry> appended() const { return entries_; }
    // The entries merge() made, in key order.
    std::span<const Entry> changed() const { return changes_; }

    // The whole, in key order: the appended entries, a changed one in place
    // of the appended one with its key.
    class const_iterator {
    public:
        using value_type = Entry;
        using difference_type = std::ptrdiff_t;
        const Entry& operator*() const { return takes_change() ? *change_ : *entry_; }
        const Entry* operator->() const { return &**this; }
        const_iterator& operator++();
        const_iterator operator++(int)
        {
            auto before = *this;
            ++*this;
            return before;
        }
        bool operator==(const const_iterator& other) const
        {
            return entry_ == other.entry_ && change_ == other.change_;
        }

    private:
        friend class AddressUpdates;
        const_iterator(const Entry* entry, const Entry* entries_end, const Entry* change, const Entry* changes_end)
            : entry_(entry), entries_end_(entries_end), change_(change), changes_end_(changes_end)
        {
        }
        bool takes_change() const
        {
            return change_ != changes_end_ && (entry_ == entries_end_ || !(entry_->key() < change_->key()));
        }
        const Entry *entry_, *entries_end_, *change_, *changes_end_;
    };
    const_iterator begin() const;
    const_iterator end() const;
    size_t size() const { return size_; }
    bool empty() const { return size_ == 0; }
    const Entry* find(const ClientKey& key) const;

    // Copies, as the store reads them back.
    AddressCheckpoints checkpoints() const;

private:
    std::vector<Entry> entries_; // appended, in key order
    std::vector<Entry> changes_; // merged, in key order
    size_t size_ = 0;            // of the whole
    // The owners' ids, one after another in one buffer (a string each cost
    // an allocation per session per cycle): owners_[i] is id i's place.
    std::string owner_text_;
    struct Owner {
        uint32_t at = 0, size = 0;
        uint64_t tag = 0;
    };
    std::vector<Owner> owners_{Owner{}};
    std::deque<Viewed> owned_;
};

} // namespace vpnmeter
