// The address checkpoints one cycle writes.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
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
    void append(const Viewed& viewed, uint32_t owner) { entries_.push_back({&viewed, owner}); }
    // Sets the owner of each address in `changes` (in key order), noted as
    // changed: the entry's if there is one, else a new entry with the
    // change's raw value.
    void merge(const std::map<ClientKey, AddressCheckpoint>& changes);

    const Entry* find(const ClientKey& key) const;
    std::vector<Entry>::iterator begin() { return entries_.begin(); }
    std::vector<Entry>::iterator end() { return entries_.end(); }
    std::vector<Entry>::const_iterator begin() const { return entries_.begin(); }
    std::vector<Entry>::const_iterator end() const { return entries_.end(); }
    size_t size() const { return entries_.size(); }
    bool empty() const { return entries_.empty(); }

    // Copies, as the store reads them back.
    AddressCheckpoints checkpoints() const;

private:
    std::vector<Entry> entries_;
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
