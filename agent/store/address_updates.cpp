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
    merged.reserve(entries_.size() + changes.size());
    auto entry = entries_.begin();
    for (const auto& [key, change] : changes) {
        while (entry != entries_.end() && entry->key() < key) merged.push_back(*entry++);
        const uint32_t owner = add_owner(change.owner);
        if (entry != entries_.end() && entry->key() == key) {
            merged.push_back({entry->at, owner, true});
            ++entry;
        } else {
            merged.push_back({&owned_.emplace_back(key, change.raw), owner, true});
        }
    }
    merged.insert(merged.end(), entry, entries_.end());
    entries_ = std::move(merged);
}

const AddressUpdates::Entry* AddressUpdates::find(const ClientKey& key) const
{
    auto it = std::lower_bound(entries_.begin(), entries_.end(), key, key_less);
    return it != entries_.end() && it->key() == key ? &*it : nullptr;
}

AddressCheckpoints AddressUpdates::checkpoints() const
{
    std::vector<AddressCheckpoints::value_type> copies;
    copies.reserve(entries_.size());
    for (const Entry& entry : entries_)
        copies.emplace_back(entry.key(), AddressCheckpoint{entry.raw(), std::string(owner(entry))});
    return AddressCheckpoints::adopt_sorted(std::move(copies));
}

} // namespace vpnmeter
