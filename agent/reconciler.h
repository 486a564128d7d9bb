// Attributes counter deltas to sessions and users: the billing logic.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "collector.h"
#include "session.h"
#include "store/store.h"

namespace vpnmeter {

// The sessions an identity source reports as connected right now, for the
// instances whose source answered this cycle. An instance missing here
// (source down) keeps its sessions as they were: no answer is not a
// disconnect.
using ConnectedSessions = std::map<std::string, std::vector<Session>>;

// Devices as the reconciler needs them: name -> current ifindex (to key a
// session's addresses), ifindex -> name (to label unattributed bytes; may
// include devices that are gone).
struct Interfaces {
    std::map<std::string, uint32_t> ifindex_by_name;
    std::map<uint32_t, std::string> name_by_ifindex;
};

// Map keys with the user whose session holds them.
using UserKeys = std::vector<std::pair<std::string_view, ClientKey>>;

// Rules (docs/architecture.md, "Accounting rules"):
// - each address's delta goes to the session that held the address during
//   the cycle, else to its interface's unattributed bucket;
// - a session that ended is closed at the value read in the cycle that saw
//   it end; a new session on the address starts from that value;
// - sum over sessions + unattributed == the interface totals, to the byte.
class Reconciler {
    // An address's owner: a slot, valid while the slot's generation is the same.
    struct Owner {
        uint32_t slot = 0;
        uint32_t generation = 0;
    };

public:
    // Resumes ownership from the last checkpoint and the sessions still open
    // in the store.
    Reconciler(const std::optional<Checkpoint>& checkpoint, const std::vector<Session>& open_sessions);
    // Moves keep the sessions' nodes, which the hashed index points into; a copy would not.
    Reconciler(Reconciler&&) = default;
    Reconciler& operator=(Reconciler&&) = default;
    Reconciler(const Reconciler&) = delete;
    Reconciler& operator=(const Reconciler&) = delete;

    // One cycle: counters moved in `counters`, sessions connected now.
    // Returns what to commit; call accept() once it is committed. Its
    // session_totals point at this reconciler's records: valid until then.
    CycleCommit plan(const Cycle& counters, const ConnectedSessions& connected, const Interfaces& interfaces,
                     int64_t now) const;
    // The same into `out` (empty), calling `usage_final`, if given, once
    // out.time and out.user_usage are final (the bytes are attributed; the
    // sessions that end or start after that are closed and opened at the
    // values just read). From then on other threads may read those two
    // and write out.quota_usage and out.alerts_fired, and nothing else of
    // `out`, until this returns: the daemon plans the quotas and begins the
    // store's commit meanwhile.
    void plan(const Cycle& counters, const ConnectedSessions& connected, const Interfaces& interfaces, int64_t now,
              CycleCommit& out, const std::function<void()>& usage_final) const;
    void accept(const CycleCommit& committed);

    // What accept_tentatively() changed, for undo().
    class Undo {
        friend class Reconciler;
        bool whole = false; // sessions came or went: not put back piece by piece
        std::vector<std::pair<Session*, SessionTotals>> totals; // the session and its totals before
        FlatMap<ClientKey, Owner> owners;
        std::vector<uint32_t> owned_at;
    };
    // accept() before the store has said the commit landed, so that it is
    // done by then (the daemon's cycle takes it while the disk syncs). If
    // the commit fails, undo() puts back what it did when that can be done
    // piece by piece (undoable(): no session came or went, as in most
    // cycles); otherwise undo() returns false and
    // the reconciler is to be made again from the store, as on a restart
    // (what it holds is what the store's checkpoint and open sessions say).
    static bool undoable(const CycleCommit& planned);
    Undo accept_tentatively(const CycleCommit& planned);
    [[nodiscard]] bool undo(Undo&& undo);

    const std::map<std::string, Session>& active() const { return active_; }
    // Every active session's addresses on its interface as it is now, by
    // user in name order (views of the user names: valid until the next
    // accept()). The same keys as session_keys() gives for each session.
    // Kept until a session comes, goes or changes, or the devices change:
    // a cycle that moved only bytes finds them ready.
    const UserKeys& keys_by_user(const Interfaces& interfaces) const;
    // The users with an active session, in name order (views, valid until
    // the next accept()); kept like keys_by_user().
    const std::vector<std::string_view>& users() const;
    // How many sessions are active, by instance (those with none are absent).
    const std::map<std::string, uint64_t>& sessions_by_instance() const { return by_instance_; }
    // The session owning each address that has one (the others are
    // nobody's), in key order: a copy, for tests and diagnostics.
    FlatMap<ClientKey, std::string> owners() const;

private:
    static constexpr uint32_t kNone = UINT32_MAX;
    // An active session with what plan() needs at hand: a dense slot (the
    // per-cycle marks and the address owners are by slot, not by id), its
    // addresses parsed once and its user interned.
    struct Active {
        Session* session = nullptr;       // in active_; null: a free slot
        uint32_t generation = 0;          // bumped when the slot is freed
        uint32_t user = 0;                // in users_
        uint32_t interface = 0;           // in interface_names_
        std::vector<ClientKey> addresses; // parsed once; ifindex 0 (the interface's is set at use)
    };
    struct User {
        std::string_view name; // a key of user_ids_
        uint32_t sessions = 0;
    };
    uint32_t find_slot(std::string_view id) const;
    uint32_t slot_of(const Owner& owner) const; // kNone once the session is gone
    uint64_t owner_tag(uint32_t slot) const;    // the slot and its generation, for AddressUpdates
    // `slot`: where it probably is (checked), kNone: look it up. Returns the
    // slot it took for a new one, kNone for one it knew.
    uint32_t add_active(const Session& session, uint32_t slot = kNone);
    uint32_t remove_active(const std::string& id); // the slot it freed, kNone: it was not active
    void rebuild_order();
    // order_ after the sessions in these slots came and went.
    void update_order(std::vector<uint32_t> came, const std::vector<uint32_t>& went);
    void accept(const CycleCommit& committed, Undo* undo); // undo: record what changes (totals and owners only)
    // Orders a plan's whole sessions and totals by id (dropping totals that
    // became whole copies); by slot: the index in out.sessions, in out.session_totals.
    void put_in_id_order(CycleCommit& out, const std::vector<uint32_t>& whole_at,
                         const std::vector<uint32_t>& totals_at) const;
    uint32_t intern_user(const std::string& name);
    uint32_t intern_interface(const std::string& name);
    void count_instance(const std::string& instance, int change);
    void release_user(uint32_t user);

    std::map<std::string, Session> active_;                // by session id
    std::unordered_map<std::string_view, uint32_t> by_id_; // id (a key of active_) -> slot
    std::vector<Active> slots_;
    std::vector<uint32_t> free_slots_;
    std::vector<uint32_t> order_; // active slots in id order (the store's), rebuilt when sessions come or go
    // By instance, the slot each position of its last reported list held:
    // sources list the same sessions in the same order cycle after cycle,
    // and checking a hint's id costs less than hashing it (at 100,000
    // sessions ~20 ms a cycle). Checked at every use: a stale one is only slower.
    mutable std::map<std::string, std::vector<uint32_t>, std::less<>> report_hints_;
    mutable std::vector<uint32_t> listed_at_; // by slot: its position in its instance's last list
    // The users of the active sessions, in byte order (commit order).
    std::map<std::string, uint32_t, std::less<>> user_ids_;
    std::vector<User> users_;
    std::vector<uint32_t> free_users_;
    // The sessions' interfaces by name (a few; never dropped): keys_by_user()
    // finds each one's ifindex once, not each session's (~5 ms at 100,000).
    std::vector<std::string> interface_names_;
    uint64_t sessions_version_ = 0; // bumped when a session comes, goes or changes
    struct KeptKeys {
        uint64_t sessions_version = 0;
        std::map<std::string, uint32_t> devices; // Interfaces::ifindex_by_name they were keyed with
        UserKeys keys;
    };
    mutable std::optional<KeptKeys> kept_keys_;
    // The users in name order (views of user_ids_' keys, and their ids),
    // kept until sessions_version_ changes.
    struct KeptUsers {
        uint64_t sessions_version = 0;
        std::vector<std::string_view> names;
        std::vector<uint32_t> ids;
    };
    const KeptUsers& kept_users() const;
    mutable std::optional<KeptUsers> kept_users_;
    std::vector<uint32_t> users_touched_; // by the accept() under way: users added or dropped
    void update_kept_users();
    std::map<std::string, uint64_t> by_instance_;
    // Owners only (the raw values are the collector's: at 1,000,000 clients
    // a second copy of them cost 88 MB), in key order: a cycle's moved
    // addresses, also in key order, find their owners in one walk.
    FlatMap<ClientKey, Owner> owners_;
    // By slot: where in owners_ accept() put one of its addresses (checked
    // at use: a stale one only means a search).
    std::vector<uint32_t> owned_at_;
};

// The map keys of a session's addresses on its interface as it is now
// (none while the interface is gone; text that is no address is skipped).
std::vector<ClientKey> session_keys(const Session& session, const Interfaces& interfaces);

// Session id: stable across agent restarts.
std::string session_id(const std::string& instance, const std::string& client, int64_t connected_since);

} // namespace vpnmeter
