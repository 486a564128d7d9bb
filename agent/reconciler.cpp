#include "reconciler.h"

#include <algorithm>
#include <future>
#include <stdexcept>
#include <string_view>
#include <unordered_map>
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

// Whether walking a whole ordered table of `table` entries costs less than
// searching it (or sorting) for `items` of them.
bool walk_pays(size_t items, size_t table) { return items * 16 >= table; }

// From this many reported sessions on, plan() looks them up on a thread of
// its own (below, a thread costs more than it saves).
constexpr size_t kParallelReports = 4096;

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
    rebuild_order();
    users_touched_ = {}; // kept for accept()
    if (!checkpoint) return;
    for (const auto& [key, address] : checkpoint->addresses) {
        // An owner that is not an open session owns nothing.
        if (uint32_t slot = find_slot(address.owner); slot != kNone)
            owners_.append(key, Owner{slot, slots_[slot].generation}); // in key order
    }
}

uint32_t Reconciler::intern_user(const std::string& name)
{
    auto [it, inserted] = user_ids_.try_emplace(name, 0);
    if (inserted) {
        if (free_users_.empty()) {
            it->second = static_cast<uint32_t>(users_.size());
            users_.emplace_back();
        } else {
            it->second = free_users_.back();
            free_users_.pop_back();
        }
        users_[it->second] = {it->first, 0};
        users_touched_.push_back(it->second);
    }
    ++users_[it->second].sessions;
    return it->second;
}

uint32_t Reconciler::intern_interface(const std::string& name)
{
    auto known = std::find(interface_names_.begin(), interface_names_.end(), name);
    if (known != interface_names_.end()) return static_cast<uint32_t>(known - interface_names_.begin());
    interface_names_.push_back(name);
    return static_cast<uint32_t>(interface_names_.size() - 1);
}

void Reconciler::release_user(uint32_t user)
{
    if (--users_[user].sessions > 0) return;
    user_ids_.erase(user_ids_.find(users_[user].name));
    users_[user] = {};
    free_users_.push_back(user);
    users_touched_.push_back(user);
}

uint32_t Reconciler::add_active(const Session& session, uint32_t slot)
{
    ++sessions_version_;
    const bool at_slot = slot != kNone && slots_[slot].session && slots_[slot].session->id == session.id;
    if (!at_slot) slot = find_slot(session.id);
    if (slot != kNone) {
        Active& known = slots_[slot];
        Session& stored = *known.session;
        if (stored.addresses != session.addresses) known.addresses = parse_keys(session.addresses, 0);
        if (stored.user != session.user) {
            release_user(known.user);
            known.user = intern_user(session.user);
        }
        if (stored.instance != session.instance) {
            count_instance(stored.instance, -1);
            count_instance(session.instance, +1);
        }
        if (stored.interface != session.interface) known.interface = intern_interface(session.interface);
        stored = session;
        return kNone;
    }
    if (free_slots_.empty()) {
        slot = static_cast<uint32_t>(slots_.size());
        slots_.emplace_back();
    } else {
        slot = free_slots_.back();
        free_slots_.pop_back();
    }
    auto it = active_.emplace(session.id, session).first;
    Active& entry = slots_[slot];
    entry.session = &it->second;
    entry.user = intern_user(session.user);
    entry.interface = intern_interface(session.interface);
    entry.addresses = parse_keys(session.addresses, 0);
    by_id_.emplace(it->first, slot);
    count_instance(session.instance, +1);
    return slot;
}

void Reconciler::count_instance(const std::string& instance, int change)
{
    auto it = by_instance_.try_emplace(instance).first;
    it->second += static_cast<uint64_t>(change);
    if (it->second == 0) by_instance_.erase(it);
}

uint32_t Reconciler::remove_active(const std::string& id)
{
    ++sessions_version_;
    auto it = by_id_.find(id);
    if (it == by_id_.end()) return kNone;
    const uint32_t slot = it->second;
    Active& entry = slots_[slot];
    release_user(entry.user);
    count_instance(entry.session->instance, -1);
    entry.session = nullptr;
    entry.addresses.clear();
    ++entry.generation; // owners still naming the slot now name nobody
    free_slots_.push_back(slot);
    by_id_.erase(it);
    active_.erase(id);
    return slot;
}

void Reconciler::rebuild_order()
{
    order_.clear();
    order_.reserve(active_.size());
    for (const auto& [id, session] : active_) order_.push_back(by_id_.at(id));
}

// The kept entries stay in order and the new ones are merged in: at 100,000
// sessions a rebuild from active_ (a tree walk and a hash per session) took
// ~13 ms in every cycle that saw one come or go.
void Reconciler::update_order(std::vector<uint32_t> came, const std::vector<uint32_t>& went)
{
    if (walk_pays(came.size() + went.size(), order_.size())) return rebuild_order();
    // By slot first: a slot freed here may have been taken again by a new session.
    std::vector<uint8_t> gone(slots_.size(), 0);
    for (uint32_t slot : went) gone[slot] = 1;
    std::erase_if(order_, [&](uint32_t slot) { return gone[slot]; });
    auto by_id = [&](uint32_t a, uint32_t b) { return slots_[a].session->id < slots_[b].session->id; };
    std::sort(came.begin(), came.end(), by_id);
    std::vector<uint32_t> merged;
    merged.reserve(order_.size() + came.size());
    auto from = order_.begin();
    for (uint32_t slot : came) {
        auto at = std::lower_bound(from, order_.end(), slot, by_id);
        merged.insert(merged.end(), from, at);
        merged.push_back(slot);
        from = at;
    }
    merged.insert(merged.end(), from, order_.end());
    order_ = std::move(merged);
}

// A counting sort by the users' rank in name order: no name is compared.
const UserKeys& Reconciler::keys_by_user(const Interfaces& interfaces) const
{
    if (kept_keys_ && kept_keys_->sessions_version == sessions_version_ &&
        kept_keys_->devices == interfaces.ifindex_by_name)
        return kept_keys_->keys;
    const KeptUsers& by_name = kept_users();
    std::vector<uint32_t> rank(users_.size());
    for (uint32_t r = 0; r < by_name.ids.size(); ++r) rank[by_name.ids[r]] = r;
    // Where each interface is now (0: gone), and so each session's.
    std::vector<uint32_t> ifindex_of(interface_names_.size(), 0);
    for (size_t i = 0; i < interface_names_.size(); ++i)
        if (auto it = interfaces.ifindex_by_name.find(interface_names_[i]); it != interfaces.ifindex_by_name.end())
            ifindex_of[i] = it->second;
    std::vector<uint32_t> ifindex(slots_.size(), 0);
    std::vector<size_t> first(by_name.ids.size() + 1, 0); // by rank: where its keys start
    for (size_t slot = 0; slot < slots_.size(); ++slot) {
        const Active& entry = slots_[slot];
        if (!entry.session || entry.addresses.empty() || ifindex_of[entry.interface] == 0) continue;
        ifindex[slot] = ifindex_of[entry.interface];
        first[rank[entry.user] + 1] += entry.addresses.size();
    }
    for (size_t r = 1; r < first.size(); ++r) first[r] += first[r - 1];
    UserKeys out(first.back());
    for (size_t slot = 0; slot < slots_.size(); ++slot) {
        if (ifindex[slot] == 0) continue;
        const Active& entry = slots_[slot];
        for (ClientKey key : entry.addresses) {
            key.ifindex = ifindex[slot];
            out[first[rank[entry.user]]++] = {users_[entry.user].name, key};
        }
    }
    kept_keys_ = KeptKeys{sessions_version_, interfaces.ifindex_by_name, std::move(out)};
    return kept_keys_->keys;
}

const Reconciler::KeptUsers& Reconciler::kept_users() const
{
    if (!kept_users_ || kept_users_->sessions_version != sessions_version_) {
        KeptUsers kept{sessions_version_, {}, {}};
        kept.names.reserve(user_ids_.size());
        kept.ids.reserve(user_ids_.size());
        for (const auto& [name, user] : user_ids_) {
            kept.names.push_back(name);
            kept.ids.push_back(user);
        }
        kept_users_ = std::move(kept);
    }
    return *kept_users_;
}

const std::vector<std::string_view>& Reconciler::users() const { return kept_users().names; }

// The kept users, current before an accept(), after it: those it added
// (users_touched_ that have sessions) merged in, those it dropped taken out
// (by id: one dropped may have been taken again by a new user, and its name
// is gone). At 100,000 users a new walk of user_ids_ took ~5 ms.
void Reconciler::update_kept_users()
{
    KeptUsers& kept = *kept_users_;
    if (walk_pays(users_touched_.size(), kept.ids.size())) {
        kept_users_.reset(); // made again at the next use
        return;
    }
    std::vector<uint8_t> touched(users_.size(), 0);
    for (uint32_t user : users_touched_) touched[user] = 1;
    size_t kept_count = 0;
    for (size_t i = 0; i < kept.ids.size(); ++i) {
        if (touched[kept.ids[i]]) continue;
        kept.names[kept_count] = kept.names[i];
        kept.ids[kept_count++] = kept.ids[i];
    }
    kept.names.resize(kept_count);
    kept.ids.resize(kept_count);
    std::vector<uint32_t> added;
    for (uint32_t user : users_touched_) {
        if (!touched[user] || users_[user].sessions == 0) continue;
        touched[user] = 0; // once
        added.push_back(user);
    }
    std::sort(added.begin(), added.end(), [&](uint32_t a, uint32_t b) { return users_[a].name < users_[b].name; });
    KeptUsers merged{sessions_version_, {}, {}};
    merged.names.reserve(kept.names.size() + added.size());
    merged.ids.reserve(kept.ids.size() + added.size());
    size_t from = 0;
    for (uint32_t user : added) {
        const auto at = static_cast<size_t>(
            std::lower_bound(kept.names.begin() + from, kept.names.end(), users_[user].name) - kept.names.begin());
        merged.names.insert(merged.names.end(), kept.names.begin() + from, kept.names.begin() + at);
        merged.ids.insert(merged.ids.end(), kept.ids.begin() + from, kept.ids.begin() + at);
        merged.names.push_back(users_[user].name);
        merged.ids.push_back(user);
        from = at;
    }
    merged.names.insert(merged.names.end(), kept.names.begin() + from, kept.names.end());
    merged.ids.insert(merged.ids.end(), kept.ids.begin() + from, kept.ids.end());
    kept = std::move(merged);
}

uint32_t Reconciler::find_slot(std::string_view id) const
{
    auto it = by_id_.find(id);
    return it != by_id_.end() ? it->second : kNone;
}

uint64_t Reconciler::owner_tag(uint32_t slot) const
{
    return (uint64_t(slots_[slot].generation) << 32 | slot) + 1; // never 0: no tag
}

uint32_t Reconciler::slot_of(const Owner& owner) const
{
    const Active& entry = slots_[owner.slot];
    return entry.session && entry.generation == owner.generation ? owner.slot : kNone;
}

void Reconciler::put_in_id_order(CycleCommit& out, const std::vector<uint32_t>& whole_at,
                                 const std::vector<uint32_t>& totals_at) const
{
    // Totals: known sessions only, in the kept order when many moved (the
    // usual), else sorted; those that became whole copies are dropped.
    std::vector<SessionTotals>& moved = out.session_totals;
    std::vector<SessionTotals> totals;
    totals.reserve(moved.size());
    if (walk_pays(moved.size(), order_.size())) {
        for (uint32_t slot : order_)
            if (totals_at[slot] != kNone && moved[totals_at[slot]].session) totals.push_back(moved[totals_at[slot]]);
    } else {
        std::copy_if(moved.begin(), moved.end(), std::back_inserter(totals), [](const auto& t) { return t.session; });
        std::sort(totals.begin(), totals.end(), [](const auto& a, const auto& b) { return a.session->id < b.session->id; });
    }
    moved = std::move(totals);

    // Whole sessions: the known ones in the kept order when many, else sorted; the new ones merged in.
    std::vector<Session>& sessions = out.sessions;
    auto by_id = [&](uint32_t a, uint32_t b) { return sessions[a].id < sessions[b].id; };
    std::vector<uint8_t> known(sessions.size(), 0);
    size_t known_count = 0;
    for (uint32_t index : whole_at) {
        if (index == kNone) continue;
        known[index] = 1;
        ++known_count;
    }
    std::vector<uint32_t> order;
    order.reserve(sessions.size());
    if (walk_pays(known_count, order_.size())) {
        for (uint32_t slot : order_)
            if (whole_at[slot] != kNone) order.push_back(whole_at[slot]);
    } else {
        for (uint32_t index : whole_at)
            if (index != kNone) order.push_back(index);
        std::sort(order.begin(), order.end(), by_id);
    }
    // New ones, never in the kept order, merged in.
    const auto known_end = static_cast<std::ptrdiff_t>(order.size());
    for (uint32_t index = 0; index < sessions.size(); ++index)
        if (!known[index]) order.push_back(index);
    std::sort(order.begin() + known_end, order.end(), by_id);
    std::inplace_merge(order.begin(), order.begin() + known_end, order.end(), by_id);
    std::vector<Session> sorted;
    sorted.reserve(sessions.size());
    for (uint32_t index : order) sorted.push_back(std::move(sessions[index]));
    sessions = std::move(sorted);
}

FlatMap<ClientKey, std::string> Reconciler::owners() const
{
    std::vector<std::pair<ClientKey, std::string>> owned;
    for (const auto& [key, owner] : owners_)
        if (uint32_t slot = slot_of(owner); slot != kNone) owned.emplace_back(key, slots_[slot].session->id);
    return FlatMap<ClientKey, std::string>::from_unsorted(std::move(owned));
}

CycleCommit Reconciler::plan(const Cycle& counters, const ConnectedSessions& connected, const Interfaces& interfaces,
                             int64_t now) const
{
    CycleCommit out;
    plan(counters, connected, interfaces, now, out, {});
    return out;
}

void Reconciler::plan(const Cycle& counters, const ConnectedSessions& connected, const Interfaces& interfaces,
                      int64_t now, CycleCommit& out, const std::function<void()>& usage_final) const
{
    out.time = now;
    size_t reported_count = 0;
    for (const auto& [instance, list] : connected) reported_count += list.size();
    // What this plan changes of a known session (by slot): its totals only
    // (an entry of out.session_totals, no copy of the session), or, once
    // more than those changes, a copy of the whole session in out.sessions.
    // No reallocation: references into out.sessions stay valid while it grows.
    out.sessions.reserve(active_.size() + reported_count);
    out.session_totals.reserve(active_.size());
    std::vector<uint32_t> totals_at(slots_.size(), kNone); // slot -> index in out.session_totals
    std::vector<uint32_t> whole_at(slots_.size(), kNone);  // slot -> index in out.sessions
    auto totals = [&](uint32_t slot) -> SessionTotals& { // while it has no whole copy
        uint32_t& at = totals_at[slot];
        if (at == kNone) {
            at = static_cast<uint32_t>(out.session_totals.size());
            out.session_totals.push_back(totals_of(*slots_[slot].session));
        }
        return out.session_totals[at];
    };
    auto whole = [&](uint32_t slot) -> Session& {
        uint32_t& at = whole_at[slot];
        if (at == kNone) {
            at = static_cast<uint32_t>(out.sessions.size());
            if (totals_at[slot] == kNone) {
                out.sessions.push_back(*slots_[slot].session);
            } else { // its new totals move along; the entry is dropped at the end
                SessionTotals& moved = out.session_totals[totals_at[slot]];
                out.sessions.push_back(with_totals(moved));
                moved.session = nullptr;
            }
        }
        return out.sessions[at];
    };
    auto set_source = [&](uint32_t slot, const Session& reported) {
        auto set = [&](auto& into) {
            into.source_upload_bytes = reported.source_upload_bytes;
            into.source_download_bytes = reported.source_download_bytes;
        };
        if (whole_at[slot] != kNone) set(whole(slot));
        else set(totals(slot));
    };
    auto owner_slot = [&](const ClientKey& key) {
        auto it = owners_.find(key);
        return it != owners_.end() ? slot_of(it->second) : kNone;
    };

    // Each reported session looked up once: known ones are marked (by slot)
    // for step 2 and kept for step 3. Nothing step 1 touches: at 100,000
    // sessions it runs on a thread of its own meanwhile (~7 ms each).
    struct Reports {
        std::vector<uint8_t> reported;                           // by slot
        std::vector<std::pair<const Session*, uint32_t>> found; // (as reported, slot if known)
    };
    auto find_reports = [&] {
        Reports out{std::vector<uint8_t>(slots_.size(), 0), {}};
        std::vector<uint8_t>& reported = out.reported;
        std::vector<std::pair<const Session*, uint32_t>>& reports = out.found;
        reports.reserve(reported_count);
        for (const auto& [instance, list] : connected) {
            std::vector<uint32_t>& hints = report_hints_[instance]; // position in the last list -> slot
            std::vector<uint32_t> slots(list.size(), kNone);
            listed_at_.resize(slots_.size(), kNone);
            // Sessions that came or went shift the ones after them: a session
            // found by its id says by how much, for those that follow.
            std::ptrdiff_t shift = 0;
            for (size_t i = 0; i < list.size(); ++i) {
                const Session& session = list[i];
                const std::ptrdiff_t was = static_cast<std::ptrdiff_t>(i) - shift;
                uint32_t slot = was >= 0 && static_cast<size_t>(was) < hints.size() ? hints[was] : kNone;
                if (slot >= slots_.size() || !slots_[slot].session || slots_[slot].session->id != session.id) {
                    slot = find_slot(session.id);
                    if (slot != kNone && listed_at_[slot] != kNone)
                        shift = static_cast<std::ptrdiff_t>(i) - static_cast<std::ptrdiff_t>(listed_at_[slot]);
                }
                slots[i] = slot;
                if (slot != kNone && slots_[slot].session->instance == instance) reported[slot] = 1;
                reports.emplace_back(&session, slot);
            }
            for (size_t i = 0; i < slots.size(); ++i)
                if (slots[i] != kNone) listed_at_[slots[i]] = static_cast<uint32_t>(i);
            hints = std::move(slots);
        }
        return out;
    };
    std::future<Reports> reports_found;
    if (reported_count >= kParallelReports) reports_found = std::async(std::launch::async, find_reports);

    // 1. Bytes first, under the ownership that held during the cycle.
    std::vector<Traffic> user_moved(users_.size());
    std::vector<uint8_t> user_seen(users_.size(), 0);
    std::vector<uint32_t> users_seen;
    std::map<uint32_t, Traffic> unattributed; // by ifindex; named once at the end
    std::vector<uint32_t> owner_index(slots_.size(), kNone); // slot -> its owner index in out.address_updates
    out.address_updates.reserve(counters.snapshot.clients.size()); // sized for all moving: the peak
    auto owner = owners_.begin();
    for_each_moved(counters, [&](const ClientTraffic::value_type& raw, const Traffic& moved) { // in key order
        const ClientKey& key = raw.first;
        while (owner != owners_.end() && owner->first < key) ++owner;
        const uint32_t slot = owner != owners_.end() && owner->first == key ? slot_of(owner->second) : kNone;
        if (slot == kNone) {
            unattributed[key.ifindex] += moved;
            out.address_updates.append(raw, 0);
            return;
        }
        totals(slot).usage += moved; // step 1 comes first: no whole copies yet
        const uint32_t user = slots_[slot].user;
        if (!user_seen[user]) {
            user_seen[user] = 1;
            users_seen.push_back(user);
        }
        user_moved[user] += moved;
        if (owner_index[slot] == kNone)
            owner_index[slot] = out.address_updates.add_owner(slots_[slot].session->id, owner_tag(slot));
        out.address_updates.append(raw, owner_index[slot]);
    });
    for (const auto& [ifindex, moved] : counters.interfaces_moved) {
        // Not IP, truncated, or the client map was full: never a session's.
        if (!moved.unattributed.empty()) unattributed[ifindex] += moved.unattributed;
        out.interface_updates[ifindex] = counters.snapshot.interfaces.at(ifindex);
    }
    for (const auto& [ifindex, traffic] : unattributed) out.unattributed[interface_name(interfaces, ifindex)] += traffic;
    for (const auto& [ifindex, name] : interfaces.name_by_ifindex)
        if (counters.snapshot.interfaces.count(ifindex)) out.interface_names[ifindex] = name;
    // The users' increments are final now: sessions that end or start below
    // are closed and opened at the values just read. In byte order (the
    // commit's): a walk of all users when many moved, else a sort of the
    // few that did.
    out.user_usage.reserve(users_seen.size());
    if (!walk_pays(users_seen.size(), user_ids_.size())) {
        std::sort(users_seen.begin(), users_seen.end(),
                  [&](uint32_t a, uint32_t b) { return users_[a].name < users_[b].name; });
        for (uint32_t user : users_seen) out.user_usage.append(std::string(users_[user].name), user_moved[user]);
    } else {
        const KeptUsers& kept = kept_users(); // in name order, without walking the tree of them
        for (size_t i = 0; i < kept.ids.size(); ++i)
            if (user_seen[kept.ids[i]]) out.user_usage.append(std::string(kept.names[i]), user_moved[kept.ids[i]]);
    }
    if (usage_final) usage_final();

    // Ownership changes after step 1 (rare: sessions that start, end or
    // move), kept aside so the in-order updates above stay a flat append.
    std::map<ClientKey, AddressCheckpoint> owner_changes;
    // Whether the session in `slot` (id `id`) owns an address as of now.
    auto owns = [&](const ClientKey& key, uint32_t slot, std::string_view id) {
        if (auto it = owner_changes.find(key); it != owner_changes.end()) return it->second.owner == id;
        if (slot == kNone) return false;
        // Where accept() last put one of its addresses first: a search
        // each cost ~8 ms a cycle at 100,000 sessions.
        if (slot < owned_at_.size()) {
            const uint32_t at = owned_at_[slot];
            if (at < owners_.size() && owners_.begin()[at].first == key)
                return slot_of(owners_.begin()[at].second) == slot;
        }
        return owner_slot(key) == slot; // step 1 kept an active owner
    };
    // The checkpoint of an address as of now. The raw value is what the
    // kernel holds now (zero if it has no entry: e.g. the maps were
    // recreated), never a remembered one.
    auto set_owner = [&](const ClientKey& key, const std::string& owner) {
        AddressCheckpoint checkpoint;
        if (auto it = owner_changes.find(key); it != owner_changes.end()) checkpoint = it->second;
        else if (const auto* update = out.address_updates.find(key)) checkpoint.raw = update->raw();
        else if (auto it = counters.snapshot.clients.find(key); it != counters.snapshot.clients.end())
            checkpoint.raw = it->second;
        checkpoint.owner = owner;
        owner_changes[key] = std::move(checkpoint);
    };

    const Reports found = reports_found.valid() ? reports_found.get() : find_reports();
    const std::vector<uint8_t>& reported = found.reported;
    const auto& reports = found.found;

    // 2. Sessions that ended: closed at the values just read.
    std::vector<uint8_t> ended(slots_.size(), 0);
    bool any_ended = false;
    for (uint32_t slot = 0; slot < slots_.size(); ++slot) {
        const Session* session = slots_[slot].session;
        if (!session || reported[slot] || !connected.count(session->instance))
            continue; // still there, or its source did not answer: unknown, not ended
        whole(slot).end = now;
        ended[slot] = 1;
        any_ended = true;
    }
    // Their addresses become nobody's: one pass for all of them, not one
    // per ended session (a VPN restart ends them all at once). Step 1's
    // entries of those addresses are among them: merged in their place.
    if (any_ended) {
        for (const auto& [key, owner] : owners_)
            if (uint32_t slot = slot_of(owner); slot != kNone && ended[slot]) set_owner(key, "");
    }

    // 3. New sessions start from the values just read; known ones get the
    //    source's latest outer counters.
    std::unordered_map<std::string_view, size_t> started; // id -> index in out.sessions
    for (auto [reported_session, slot] : reports) {
        const Session& reported = *reported_session;
        const Session* known = slot != kNone ? slots_[slot].session : nullptr;
        Session* repeated = nullptr; // a new session reported twice
        if (!known) {
            if (auto it = started.find(reported.id); it != started.end()) known = repeated = &out.sessions[it->second];
        }
        if (!known) {
            Session session = reported;
            session.usage = {};
            session.end.reset();
            const std::vector<ClientKey> keys = session_keys(session, interfaces);
            if (keys.size() < session.addresses.size() && interfaces.ifindex_by_name.count(session.interface))
                spdlog::warn("session {}: some of its addresses {} are not IP addresses; ignored", session.id,
                             fmt::join(session.addresses, " "));
            for (const ClientKey& key : keys) set_owner(key, session.id);
            out.sessions.push_back(std::move(session));
            started.emplace(out.sessions.back().id, out.sessions.size() - 1);
            continue;
        }
        // OpenVPN can list a client before it has its virtual address: the
        // session takes the address once it is reported (an empty list, as
        // in a half-written status file, takes nothing away).
        const bool readdressed = !reported.addresses.empty() && reported.addresses != known->addresses;
        const bool roamed = known->real_address != reported.real_address;
        if (repeated || readdressed || roamed) {
            Session& session = repeated ? *repeated : whole(slot);
            session.source_upload_bytes = reported.source_upload_bytes;
            session.source_download_bytes = reported.source_download_bytes;
            session.real_address = reported.real_address;
            if (readdressed) session.addresses = reported.addresses;
        } else if (known->source_upload_bytes != reported.source_upload_bytes ||
                   known->source_download_bytes != reported.source_download_bytes) {
            set_source(slot, reported);
        }
        // New addresses, or the tun device was recreated under the same session? (Re-)key.
        auto ifindex = interfaces.ifindex_by_name.find(known->interface);
        if (ifindex == interfaces.ifindex_by_name.end()) continue;
        const bool cached = slot != kNone && !readdressed;
        const std::vector<ClientKey> parsed =
            cached ? std::vector<ClientKey>() : parse_keys(readdressed ? reported.addresses : known->addresses, 0);
        for (ClientKey key : cached ? slots_[slot].addresses : parsed) {
            key.ifindex = ifindex->second;
            if (!owns(key, slot, known->id)) set_owner(key, known->id);
        }
    }

    out.address_updates.merge(owner_changes);
    put_in_id_order(out, whole_at, totals_at); // the store writes them in key order
}

void Reconciler::accept(const CycleCommit& committed)
{
    accept(committed, nullptr);
}

bool Reconciler::undoable(const CycleCommit& planned)
{
    return planned.sessions.empty();
}

Reconciler::Undo Reconciler::accept_tentatively(const CycleCommit& planned)
{
    Undo undo;
    if (!undoable(planned)) {
        undo.whole = true;
        accept(planned, nullptr);
        return undo;
    }
    undo.totals.reserve(planned.session_totals.size());
    accept(planned, &undo);
    return undo;
}

bool Reconciler::undo(Undo&& undo)
{
    if (undo.whole) return false;
    for (const auto& [session, before] : undo.totals) {
        session->usage = before.usage;
        session->source_upload_bytes = before.source_upload_bytes;
        session->source_download_bytes = before.source_download_bytes;
    }
    owners_ = std::move(undo.owners);
    owned_at_ = std::move(undo.owned_at);
    return true;
}

void Reconciler::accept(const CycleCommit& committed, Undo* undo)
{
    const uint64_t version_before = sessions_version_;
    users_touched_.clear();
    // Totals first (the usual: only they moved), before any session comes
    // or goes. They point at our records, in id order as order_ keeps them:
    // one walk along both finds each without a hash or a string compare (a
    // record the walk misses is looked up by id).
    for (size_t at = 0; const SessionTotals& moved : committed.session_totals) {
        const size_t from = at;
        while (at < order_.size() && slots_[order_[at]].session != moved.session) ++at;
        uint32_t slot = kNone;
        if (at < order_.size()) {
            slot = order_[at++];
        } else { // not ours
            at = from;
            slot = find_slot(moved.session->id);
            if (slot == kNone) continue;
        }
        Session& kept = *slots_[slot].session;
        if (undo) undo->totals.emplace_back(&kept, totals_of(kept));
        kept.usage = moved.usage;
        kept.source_upload_bytes = moved.source_upload_bytes;
        kept.source_download_bytes = moved.source_download_bytes;
    }
    // The whole sessions' slots, found before anything changes. Ours come
    // in id order too: when many, a walk finds them as well.
    std::vector<uint32_t> found(committed.sessions.size(), kNone);
    if (walk_pays(committed.sessions.size(), order_.size())) {
        size_t at = 0;
        for (size_t i = 0; i < committed.sessions.size(); ++i) {
            const std::string& id = committed.sessions[i].id;
            while (at < order_.size() && slots_[order_[at]].session->id < id) ++at;
            if (at < order_.size() && slots_[order_[at]].session->id == id) found[i] = order_[at];
        }
    }
    std::vector<uint32_t> came, went; // slots
    for (size_t i = 0; i < committed.sessions.size(); ++i) {
        const Session& session = committed.sessions[i];
        const uint32_t slot = session.active() ? add_active(session, found[i]) : remove_active(session.id);
        if (slot != kNone) (session.active() ? came : went).push_back(slot);
    }
    if (!came.empty() || !went.empty()) update_order(std::move(came), went);
    if (kept_users_ && kept_users_->sessions_version == version_before && sessions_version_ != version_before)
        update_kept_users();
    // The owners after the commit: one merge of the kept ones with its
    // updates (both in key order), dropping those whose session is gone.
    std::vector<std::pair<ClientKey, Owner>> merged;
    merged.reserve(owners_.size() + committed.address_updates.size());
    auto kept = owners_.begin();
    std::vector<uint32_t> owned_at_before;
    if (undo) owned_at_before = std::move(owned_at_);
    owned_at_.assign(slots_.size(), kNone);
    auto keep = [&](const std::pair<ClientKey, Owner>& entry) {
        const uint32_t slot = slot_of(entry.second);
        if (slot == kNone) return;
        owned_at_[slot] = static_cast<uint32_t>(merged.size());
        merged.push_back(entry);
    };
    auto keep_until = [&](const ClientKey& key) {
        for (; kept != owners_.end() && kept->first < key; ++kept) keep(*kept);
    };
    for (const auto& update : committed.address_updates) {
        const ClientKey& key = update.key();
        keep_until(key);
        uint32_t slot = kNone;
        if (kept != owners_.end() && kept->first == key) slot = slot_of((kept++)->second);
        const std::string_view owner_id = committed.address_updates.owner(update);
        if (owner_id.empty()) continue; // nobody's
        // The same owner as before: plan() tagged it with the slot and its
        // generation, which are still its own if it neither came nor went.
        const bool same = slot != kNone && committed.address_updates.owner_tag(update) == owner_tag(slot);
        if (!same && (slot == kNone || slots_[slot].session->id != owner_id)) slot = find_slot(owner_id); // a new owner
        if (slot != kNone) keep({key, Owner{slot, slots_[slot].generation}}); // else not an open session
    }
    for (; kept != owners_.end(); ++kept) keep(*kept);
    if (undo) {
        undo->owners = std::move(owners_);
        undo->owned_at = std::move(owned_at_before);
    }
    owners_ = FlatMap<ClientKey, Owner>::adopt_sorted(std::move(merged));
}

} // namespace vpnmeter
