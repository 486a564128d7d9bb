#include "address_updates.h"

#include <algorithm>

namespace vpnmeter {
namespace {

bool key_less(const AddressUpdates::Entry& entry, const ClientKey& key) { return entry.key() < key; }

} // namespace

AddressUpdates::AddressUpdates(std::initializer_list<std::pair<ClientKey, AddressCheckpoint>> entries)
{
    std::map<ClientKey, AddressCheckpoint> sorted(entries.begin(), entries.end());
    merge(sorted);
}

uint32_t AddressUpdates::add_owner(std::string_view owner, uint64_t tag)
{
    if (owner.empty()) return 0;
    owners_.push_back({static_cast<uint32_t>(owner_text_.size()), static_cast<uint32_t>(owner.size()), tag});
    owner_text_.append(owner);
    return static_cast<uint32_t>(owners_.size() - 1);
}

void AddressUpdates::merge(const std::map<ClientKey, AddressCheckpoint>& changes)
{
    if (changes.empty()) return;
    std::vector<Entry> merged;
    merged.reserve(changes_.size() + changes.size());
    auto earlier = changes_.begin(); // of an earlier merge
    for (const auto& [key, change] : changes) {
        while (earlier != changes_.end() && earlier->key() < key) merged.push_back(*earlier++);
        const uint32_t owner = add_owner(change.owner);
        const Viewed* at = nullptr;
        if (earlier != changes_.end() && earlier->key() == key) {
            at = (earlier++)->at;
        } else if (auto it = std::lower_bound(entries_.begin(), entries_.end(), key, key_less);
                   it != entries_.end() && it->key() == key) {
            at = it->at;
        } else {
            at = &owned_.emplace_back(key, change.raw);
            ++size_;
        }
        merged.push_back({at, owner, true});
    }
    merged.insert(merged.end(), earlier, changes_.end());
    changes_ = std::move(merged);
}

const AddressUpdates::Entry* AddressUpdates::find(const ClientKey& key) const
{
    for (const auto* in : {&changes_, &entries_}) {
        auto it = std::lower_bound(in->begin(), in->end(), key, key_less);
        if (it != in->end() && it->key() == key) return &*it;
    }
    return nullptr;
}

AddressUpdates::const_iterator& AddressUpdates::const_iterator::operator++()
{
    if (takes_change()) {
        if (entry_ != entries_end_ && entry_->key() == change_->key()) ++entry_; // replaced
        ++change_;
    } else {
        ++entry_;
    }
    return *this;
}

AddressUpdates::const_iterator AddressUpdates::begin() const
{
    const Entry* entries = entries_.data();
    const Entry* changes = changes_.data();
    return {entries, entries + entries_.size(), changes, changes + changes_.size()};
}

AddressUpdates::const_iterator AddressUpdates::end() const
{
    const Entry* entries_end = entries_.data() + entries_.size();
    const Entry* changes_end = changes_.data() + changes_.size();
    return {entries_end, entries_end, changes_end, changes_end};
}

AddressCheckpoints AddressUpdates::checkpoints() const
{
    std::vector<AddressCheckpoints::value_type> copies;
    copies.reserve(size_);
    for (const Entry& entry : *this)
        copies.emplace_back(entry.key(), AddressCheckpoint{entry.raw(), std::string(owner(entry))});
    return AddressCheckpoints::adopt_sorted(std::move(copies));
}

} // namespace vpnmeter
