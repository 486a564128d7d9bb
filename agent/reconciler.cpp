#include "reconciler.h"

#include <algorithm>
#include <stdexcept>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include <spdlog/spdlog.h>

namespace vpnmeter {
namespace {

std::string interface_name(const Interfaces& interfaces, uint32_t ifindex)
{
    auto it = interfaces.name_by_ifindex.find(ifindex);
    return it != interfaces.name_by_ifindex.end() ? it->second : "if" + std::to_string(ifindex);
}

} // namespace

namespace {

std::vector<ClientKey> parse_keys(const std::vector<std::string>& addresses, uint32_t ifindex)
{
    std::vector<ClientKey> keys;
    for (const auto& address : addresses) {
        try {
            keys.push_back(ClientKey::parse(ifindex, address));
        } catch (const std::invalid_argument&) {
            // Not an address: nothing in the kernel can be keyed by it.
        }
    }
    return keys;
}

} // namespace

std::vector<ClientKey> session_keys(const Session& session, const Interfaces& interfaces)
{
    auto it = interfaces.ifindex_by_name.find(session.interface);
    if (it == interfaces.ifindex_by_name.end()) return {};
    return parse_keys(session.addresses, it->second);
}

std::string session_id(const std::string& instance, const std::string& client, int64_t connected_since)
{
    return instance + ":" + client + ":" + std::to_string(connected_since);
}

Reconciler::Reconciler(const std::optional<Checkpoint>& checkpoint, const std::vector<Session>& open_sessions)
{
    for (const auto& session : open_sessions)
        if (session.active()) add_active(session);
    if (checkpoint)
        for (const auto& [key, address] : checkpoint->addresses)
            if (!address.owner.empty()) owners_.emplace(key, address.owner);
}

void Reconciler::add_active(const Session& session)
{
    if (auto known = by_id_.find(session.id); known != by_id_.end()) {
        Session& stored = *known->second.session; // hashed: no walk down active_'s tree
        if (stored.addresses != session.addresses) known->second.addresses = parse_keys(session.addresses, 0);
        stored = session;
        return;
    }
    auto it = active_.emplace(session.id, session).first;
    Active entry;
    entry.session = &it->second;
    if (free_slots_.empty()) {
        entry.slot = slots_++;
    } else {
        entry.slot = free_slots_.back();
        free_slots_.pop_back();
    }
    entry.addresses = parse_keys(session.addresses, 0);
    by_id_.emplace(it->first, std::move(entry));
}

void Reconciler::remove_active(const std::string& id)
{
    auto it = by_id_.find(id);
    if (it == by_id_.end()) return;
    free_slots_.push_back(it->second.slot);
    by_id_.erase(it);
    active_.erase(id);
}

const Reconciler::Active* Reconciler::find_active(std::string_view id) const
{
    auto it = by_id_.find(id);
    return it != by_id_.end() ? &it->second : nullptr;
}

FlatMap<ClientKey, std::string> Reconciler::owners() const
{
    return FlatMap<ClientKey, std::string>::from_unsorted({owners_.begin(), owners_.end()});
}

namespace {

// The sessions one plan() changes, as copies in the commit: only these are
// copied, never the whole table (at 100,000 sessions a copy per cycle cost
// more than everything else the reconciler does).
class TouchedSessions {
public:
    TouchedSessions(std::vector<Session>& out, size_t capacity) : out_(out)
    {
        out_.reserve(capacity); // no reallocation: the index holds views of the ids
        index_.reserve(capacity);
    }
    Session* find(std::string_view id)
    {
        auto it = index_.find(id);
        return it != index_.end() ? &out_[it->second] : nullptr;
    }
    Session& add(const Session& session)
    {
        out_.push_back(session);
        index_.emplace(out_.back().id, out_.size() - 1);
        return out_.back();
    }

private:
    std::vector<Session>& out_;
    std::unordered_map<std::string_view, size_t> index_;
};

} // namespace

CycleCommit Reconciler::plan(const Cycle& counters, const ConnectedSessions& connected, const Interfaces& interfaces,
                             int64_t now) const
{
    CycleCommit out;
    out.time = now;
    size_t reported_count = 0;
    for (const auto& [instance, list] : connected) reported_count += list.size();
    TouchedSessions touched(out.sessions, active_.size() + reported_count);
    // The session `id` as this cycle has made it so far (null: no such session).
    auto session_of = [&](std::string_view id) -> Session* {
        if (Session* session = touched.find(id)) return session;
        const Active* known = find_active(id);
        return known ? &touched.add(*known->session) : nullptr;
    };
    std::unordered_map<std::string_view, Traffic> user_usage; // views of users in out.sessions (stable)
    user_usage.reserve(counters.delta.clients.size());

    // 1. Bytes first, under the ownership that held during the cycle.
    out.address_updates.reserve(counters.delta.clients.size());
    auto raw = counters.snapshot.clients.begin();
    for (const auto& [key, moved] : counters.delta.clients) { // both in key order
        while (raw != counters.snapshot.clients.end() && raw->first < key) ++raw;
        if (raw == counters.snapshot.clients.end() || raw->first != key)
            throw std::out_of_range("reconciler: a moved client is missing from the snapshot");
        auto owner = owners_.find(key);
        Session* session = owner != owners_.end() ? session_of(owner->second) : nullptr;
        if (session) {
            session->usage += moved;
            user_usage[session->user] += moved;
        } else {
            out.unattributed[interface_name(interfaces, key.ifindex)] += moved;
        }
        out.address_updates.append(key, {raw->second, session ? session->id : std::string()});
    }
    for (const auto& [ifindex, moved] : counters.delta.interfaces) {
        // Not IP, truncated, or the client map was full: never a session's.
        if (!moved.unattributed.empty()) out.unattributed[interface_name(interfaces, ifindex)] += moved.unattributed;
        out.interface_updates[ifindex] = counters.snapshot.interfaces.at(ifindex);
    }
    for (const auto& [ifindex, name] : interfaces.name_by_ifindex)
        if (counters.snapshot.interfaces.count(ifindex)) out.interface_names[ifindex] = name;

    // Ownership changes after step 1 (rare: sessions that start, end or
    // move), kept aside so the in-order updates above stay a flat append.
    std::map<ClientKey, AddressCheckpoint> owner_changes;
    // Whether session `id`, known before this plan, owns an address as of now.
    auto owns = [&](const ClientKey& key, std::string_view id) {
        if (auto it = owner_changes.find(key); it != owner_changes.end()) return it->second.owner == id;
        auto owner = owners_.find(key);
        return owner != owners_.end() && owner->second == id; // step 1 kept an active owner
    };
    // The checkpoint of an address as of now. The raw value is what the
    // kernel holds now (zero if it has no entry: e.g. the maps were
    // recreated), never a remembered one.
    auto set_owner = [&](const ClientKey& key, const std::string& owner) {
        AddressCheckpoint checkpoint;
        if (auto it = owner_changes.find(key); it != owner_changes.end()) checkpoint = it->second;
        else if (auto it = out.address_updates.find(key); it != out.address_updates.end()) checkpoint = it->second;
        else if (auto it = counters.snapshot.clients.find(key); it != counters.snapshot.clients.end())
            checkpoint.raw = it->second;
        checkpoint.owner = owner;
        owner_changes[key] = std::move(checkpoint);
    };

    // Each reported session looked up once: known ones are marked (by slot)
    // for step 2 and kept for step 3.
    std::vector<uint8_t> reported(slots_, 0);
    std::vector<std::pair<const Session*, const Active*>> reports; // (as reported, known or null)
    reports.reserve(reported_count);
    for (const auto& [instance, list] : connected) {
        for (const Session& session : list) {
            const Active* known = find_active(session.id);
            if (known && known->session->instance == instance) reported[known->slot] = 1;
            reports.emplace_back(&session, known);
        }
    }

    // 2. Sessions that ended: closed at the values just read.
    std::unordered_set<std::string_view> ended; // views of ids in active_
    for (const auto& [id, entry] : by_id_) {
        if (reported[entry.slot] || !connected.count(entry.session->instance))
            continue; // still there, or its source did not answer: unknown, not ended
        session_of(id)->end = now;
        ended.insert(id);
    }
    // Their addresses become nobody's: one pass for all of them, not one
    // per ended session (a VPN restart ends them all at once).
    if (!ended.empty()) {
        for (const auto& [key, owner] : owners_)
            if (ended.count(owner)) set_owner(key, "");
        for (auto& [key, checkpoint] : out.address_updates)
            if (ended.count(checkpoint.owner)) checkpoint.owner.clear();
    }

    // 3. New sessions start from the values just read; known ones get the
    //    source's latest outer counters.
    for (auto [reported_session, active] : reports) {
        const Session& reported = *reported_session;
        const Session* known = active ? active->session : touched.find(reported.id); // reported twice?
        if (!known) {
            Session session = reported;
            session.usage = {};
            session.end.reset();
            const std::vector<ClientKey> keys = session_keys(session, interfaces);
            if (keys.size() < session.addresses.size() && interfaces.ifindex_by_name.count(session.interface))
                spdlog::warn("session {}: some of its addresses {} are not IP addresses; ignored", session.id,
                             fmt::join(session.addresses, " "));
            for (const ClientKey& key : keys) set_owner(key, session.id);
            touched.add(session);
            continue;
        }
        // OpenVPN can list a client before it has its virtual address: the
        // session takes the address once it is reported (an empty list, as
        // in a half-written status file, takes nothing away).
        const bool readdressed = !reported.addresses.empty() && reported.addresses != known->addresses;
        if (known->source_upload_bytes != reported.source_upload_bytes ||
            known->source_download_bytes != reported.source_download_bytes ||
            known->real_address != reported.real_address || readdressed) {
            Session* session = session_of(reported.id);
            session->source_upload_bytes = reported.source_upload_bytes;
            session->source_download_bytes = reported.source_download_bytes;
            session->real_address = reported.real_address;
            if (readdressed) session->addresses = reported.addresses;
        }
        // New addresses, or the tun device was recreated under the same session? (Re-)key.
        auto ifindex = interfaces.ifindex_by_name.find(known->interface);
        if (ifindex == interfaces.ifindex_by_name.end()) continue;
        const bool cached = active && !readdressed;
        const std::vector<ClientKey> parsed =
            cached ? std::vector<ClientKey>() : parse_keys(readdressed ? reported.addresses : known->addresses, 0);
        for (ClientKey key : cached ? active->addresses : parsed) {
            key.ifindex = ifindex->second;
            if (!owns(key, known->id)) set_owner(key, known->id);
        }
    }

    out.address_updates.merge(std::move(owner_changes));
    std::vector<std::pair<std::string_view, Traffic>> by_user(user_usage.begin(), user_usage.end());
    std::sort(by_user.begin(), by_user.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    out.user_usage.reserve(by_user.size());
    for (const auto& [user, traffic] : by_user) out.user_usage.append(std::string(user), traffic);
    return out;
}

void Reconciler::accept(const CycleCommit& committed)
{
    for (const auto& session : committed.sessions) {
        if (session.active()) add_active(session);
        else remove_active(session.id);
    }
    for (const auto& key : committed.address_removals) owners_.erase(key);
    for (const auto& [key, checkpoint] : committed.address_updates) {
        if (checkpoint.owner.empty()) {
            owners_.erase(key);
            continue;
        }
        auto [it, inserted] = owners_.try_emplace(key, checkpoint.owner);
        if (!inserted && it->second != checkpoint.owner) it->second = checkpoint.owner;
    }
}

} // namespace vpnmeter
