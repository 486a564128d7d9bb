#include "reconciler.h"

#include <set>
#include <string_view>
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
    if (checkpoint) addresses_ = checkpoint->addresses;
}

CycleCommit Reconciler::plan(const Cycle& counters, const ConnectedSessions& connected, const Interfaces& interfaces,
                             int64_t now) const
{
    CycleCommit out;
    out.time = now;
    std::map<std::string, Session> sessions = active_; // what this cycle makes of them
    std::set<std::string> touched;

    // 1. Bytes first, under the ownership that held during the cycle.
    for (const auto& [key, moved] : counters.delta.clients) {
        auto checkpoint = addresses_.find(key);
        const std::string owner = checkpoint != addresses_.end() ? checkpoint->second.owner : std::string();
        auto session = owner.empty() ? sessions.end() : sessions.find(owner);
        if (session != sessions.end()) {
            session->second.usage += moved;
            out.user_usage[session->second.user] += moved;
            touched.insert(owner);
        } else {
            out.unattributed[interface_name(interfaces, key.ifindex)] += moved;
        }
        out.address_updates[key] = {counters.snapshot.clients.at(key), session != sessions.end() ? owner : ""};
    }
    for (const auto& [ifindex, moved] : counters.delta.interfaces) {
        // Not IP, truncated, or the client map was full: never a session's.
        if (!moved.unattributed.empty()) out.unattributed[interface_name(interfaces, ifindex)] += moved.unattributed;
        out.interface_updates[ifindex] = counters.snapshot.interfaces.at(ifindex);
    }
    for (const auto& [ifindex, name] : interfaces.name_by_ifindex)
        if (counters.snapshot.interfaces.count(ifindex)) out.interface_names[ifindex] = name;

    // The checkpoint of an address as of now (after step 1). The raw value
    // is what the kernel holds now (zero if it has no entry: e.g. the maps
    // were recreated), never a remembered one.
    auto current = [&](const ClientKey& key) -> AddressCheckpoint {
        if (auto it = out.address_updates.find(key); it != out.address_updates.end()) return it->second;
        auto raw = counters.snapshot.clients.find(key);
        auto known = addresses_.find(key);
        return {raw != counters.snapshot.clients.end() ? raw->second : Traffic{},
                known != addresses_.end() ? known->second.owner : ""};
    };
    auto set_owner = [&](const ClientKey& key, const std::string& owner) {
        AddressCheckpoint checkpoint = current(key);
        checkpoint.owner = owner;
        out.address_updates[key] = checkpoint;
    };

    // 2. Sessions that ended: closed at the values just read. The reported
    //    ids as a set: a scan of the list per session was quadratic (1.3 s
    //    per cycle at 10,000 sessions, bench/cycle_bench.cpp).
    std::set<std::pair<std::string_view, std::string_view>> reported; // (instance, session id)
    for (const auto& [instance, list] : connected)
        for (const auto& s : list) reported.emplace(instance, s.id);
    std::set<std::string> ended;
    for (auto& [id, session] : sessions) {
        if (!connected.count(session.instance)) continue; // source did not answer: unknown, not ended
        if (reported.count({session.instance, id})) continue;
        session.end = now;
        touched.insert(id);
        ended.insert(id);
    }
    // Their addresses become nobody's: one pass for all of them, not one
    // per ended session (a VPN restart ends them all at once).
    if (!ended.empty()) {
        for (const auto& [key, checkpoint] : addresses_)
            if (ended.count(checkpoint.owner)) set_owner(key, "");
        for (auto& [key, checkpoint] : out.address_updates)
            if (ended.count(checkpoint.owner)) checkpoint.owner.clear();
    }

    // 3. New sessions start from the values just read; known ones get the
    //    source's latest outer counters.
    for (const auto& [instance, list] : connected) {
        for (const Session& reported : list) {
            auto it = sessions.find(reported.id);
            if (it == sessions.end()) {
                Session session = reported;
                session.usage = {};
                session.end.reset();
                const std::vector<ClientKey> keys = session_keys(session, interfaces);
                if (keys.size() < session.addresses.size() && interfaces.ifindex_by_name.count(session.interface))
                    spdlog::warn("session {}: some of its addresses {} are not IP addresses; ignored", session.id,
                                 fmt::join(session.addresses, " "));
                for (const ClientKey& key : keys) set_owner(key, session.id);
                sessions[session.id] = session;
                touched.insert(session.id);
                continue;
            }
            Session& session = it->second;
            if (session.source_upload_bytes != reported.source_upload_bytes ||
                session.source_download_bytes != reported.source_download_bytes ||
                session.real_address != reported.real_address) {
                session.source_upload_bytes = reported.source_upload_bytes;
                session.source_download_bytes = reported.source_download_bytes;
                session.real_address = reported.real_address;
                touched.insert(session.id);
            }
            // The tun device was recreated under the same session? Re-key.
            for (const ClientKey& key : session_keys(session, interfaces))
                if (current(key).owner != session.id) set_owner(key, session.id);
        }
    }

    for (const auto& id : touched) out.sessions.push_back(sessions.at(id));
    return out;
}

void Reconciler::accept(const CycleCommit& committed)
{
    for (const auto& session : committed.sessions) {
        if (session.active()) active_[session.id] = session;
        else active_.erase(session.id);
    }
    for (const auto& [key, checkpoint] : committed.address_updates) addresses_[key] = checkpoint;
    for (const auto& key : committed.address_removals) addresses_.erase(key);
}

} // namespace vpnmeter
