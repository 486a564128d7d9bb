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

std::vector<ClientKey> session_keys(const Session& session, const Interfaces& interfaces)
{
    std::vector<ClientKey> keys;
    auto it = interfaces.ifindex_by_name.find(session.interface);
    if (it == interfaces.ifindex_by_name.end()) return keys;
    for (const auto& address : session.addresses) {
        try {
            keys.push_back(ClientKey::parse(it->second, address));
        } catch (const std::invalid_argument&) {
            // Not an address: nothing in the kernel can be keyed by it.
        }
    }
    return keys;
}

std::string session_id(const std::string& instance, const std::string& client, int64_t connected_since)
{
    return instance + ":" + client + ":" + std::to_string(connected_since);
}

Reconciler::Reconciler(const std::optional<Checkpoint>& checkpoint, const std::vector<Session>& open_sessions)
{
    for (const auto& session : open_sessions)
        if (session.active()) active_[session.id] = session;
    for (auto& [id, session] : active_) by_id_.emplace(id, &session);
    if (checkpoint) addresses_ = checkpoint->addresses;
}

const Session* Reconciler::find_active(std::string_view id) const
{
    auto it = by_id_.find(id);
    return it != by_id_.end() ? it->second : nullptr;
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
        const Session* known = find_active(id);
        return known ? &touched.add(*known) : nullptr;
    };
    std::unordered_map<std::string_view, Traffic> user_usage; // views of users in out.sessions (stable)
    user_usage.reserve(counters.delta.clients.size());

    // 1. Bytes first, under the ownership that held during the cycle. The
    //    delta and the checkpoints are both in key order: one merge pass.
    out.address_updates.reserve(counters.delta.clients.size());
    auto known = addresses_.begin();
    auto raw = counters.snapshot.clients.begin();
    for (const auto& [key, moved] : counters.delta.clients) {
        while (known != addresses_.end() && known->first < key) ++known;
        while (raw != counters.snapshot.clients.end() && raw->first < key) ++raw;
        if (raw == counters.snapshot.clients.end() || raw->first != key)
            throw std::out_of_range("reconciler: a moved client is missing from the snapshot");
        const bool owned = known != addresses_.end() && known->first == key && !known->second.owner.empty();
        Session* session = owned ? session_of(known->second.owner) : nullptr;
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
    // The checkpoint of an address as of now (after step 1). The raw value
    // is what the kernel holds now (zero if it has no entry: e.g. the maps
    // were recreated), never a remembered one.
    auto current = [&](const ClientKey& key) -> AddressCheckpoint {
        if (auto it = owner_changes.find(key); it != owner_changes.end()) return it->second;
        if (auto it = out.address_updates.find(key); it != out.address_updates.end()) return it->second;
        auto raw = counters.snapshot.clients.find(key);
        auto known = addresses_.find(key);
        return {raw != counters.snapshot.clients.end() ? raw->second : Traffic{},
                known != addresses_.end() ? known->second.owner : ""};
    };
    auto set_owner = [&](const ClientKey& key, const std::string& owner) {
        AddressCheckpoint checkpoint = current(key);
        checkpoint.owner = owner;
        owner_changes[key] = std::move(checkpoint);
    };

    // 2. Sessions that ended: closed at the values just read. The reported
    //    ids are hashed: a scan of the list per session was quadratic (1.3 s
    //    per cycle at 10,000 sessions, bench/cycle_bench.cpp).
    std::unordered_map<std::string_view, std::unordered_set<std::string_view>> reported; // instance -> ids
    for (const auto& [instance, list] : connected) {
        auto& ids = reported[instance];
        ids.reserve(list.size());
        for (const auto& s : list) ids.insert(s.id);
    }
    std::unordered_set<std::string_view> ended; // views of ids in active_
    for (const auto& [id, session] : active_) {
        auto ids = reported.find(session.instance);
        if (ids == reported.end()) continue; // source did not answer: unknown, not ended
        if (ids->second.count(id)) continue;
        session_of(id)->end = now;
        ended.insert(id);
    }
    // Their addresses become nobody's: one pass for all of them, not one
    // per ended session (a VPN restart ends them all at once).
    if (!ended.empty()) {
        for (const auto& [key, checkpoint] : addresses_)
            if (ended.count(checkpoint.owner)) set_owner(key, "");
        for (auto& [key, checkpoint] : out.address_updates)
            if (ended.count(checkpoint.owner)) checkpoint.owner.clear();
        for (auto& [key, checkpoint] : owner_changes)
            if (ended.count(checkpoint.owner)) checkpoint.owner.clear();
    }

    // 3. New sessions start from the values just read; known ones get the
    //    source's latest outer counters.
    for (const auto& [instance, list] : connected) {
        for (const Session& reported : list) {
            const Session* known = touched.find(reported.id);
            if (!known) known = find_active(reported.id);
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
            if (known->source_upload_bytes != reported.source_upload_bytes ||
                known->source_download_bytes != reported.source_download_bytes ||
                known->real_address != reported.real_address) {
                Session* session = session_of(reported.id);
                session->source_upload_bytes = reported.source_upload_bytes;
                session->source_download_bytes = reported.source_download_bytes;
                session->real_address = reported.real_address;
            }
            // The tun device was recreated under the same session? Re-key.
            for (const ClientKey& key : session_keys(*known, interfaces))
                if (current(key).owner != known->id) set_owner(key, known->id);
        }
    }

    out.address_updates.merge(std::move(owner_changes));
    std::vector<std::pair<std::string_view, Traffic>> by_user(user_usage.begin(), user_usage.end());
    std::sort(by_user.begin(), by_user.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (const auto& [user, traffic] : by_user) out.user_usage.emplace_hint(out.user_usage.end(), user, traffic);
    return out;
}

void Reconciler::accept(const CycleCommit& committed)
{
    for (const auto& session : committed.sessions) {
        if (!session.active()) {
            by_id_.erase(session.id);
            active_.erase(session.id);
            continue;
        }
        auto [it, inserted] = active_.try_emplace(session.id, session);
        if (inserted) by_id_.emplace(it->first, &it->second);
        else it->second = session;
    }
    for (const auto& key : committed.address_removals) addresses_.erase(key);
    addresses_.merge(committed.address_updates);
}

} // namespace vpnmeter
