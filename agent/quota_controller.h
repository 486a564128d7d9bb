// Quotas at run time: period usage and alerts committed with each cycle,
// the resulting state enforced in the kernel, grants from the API.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "alerts/webhook.h"
#include "enforcer.h"
#include "htb.h"
#include "http/server.h"
#include "quota/engine.h"
#include "reconciler.h"
#include "store/store.h"

namespace vpnmeter {

class QuotaController {
public:
    // `enforcer` may be null (no enforcement: states are still computed and
    // reported); `webhook` may be null (alerts are logged only). `slots`:
    // users the kernel can enforce at once (the datapath's; fewer in tests).
    QuotaController(QuotaConfig config, Store& store, Enforcer* enforcer, PinnedMaps* registry,
                    std::unique_ptr<WebhookSender> webhook, uint32_t slots = VPNMETER_MAX_USERS);

    // Period usage and grants as committed before the restart.
    Status load();

    // Before the commit: this cycle's period usage and newly crossed
    // thresholds go into the same transaction as the usage.
    void plan(CycleCommit& commit, int64_t now) const;
    // After the commit: remember it and send its alerts. Touches nothing
    // but this controller (the daemon runs it beside Reconciler::accept).
    void accept(const CycleCommit& commit, int64_t now);
    class Undo; // what accept_tentatively() changed, for undo()
    // accept() before the store has said the commit landed (as
    // Reconciler::accept_tentatively). Only without alerts, which are sent
    // once and cannot be taken back: nullopt then, and nothing changed.
    // undo() puts back what it did if the commit fails. Meanwhile the API
    // shows the cycle's usage a few milliseconds before it is durable.
    static bool undoable(const CycleCommit& planned);
    std::optional<Undo> accept_tentatively(const CycleCommit& planned, int64_t now);
    void undo(Undo&& undo);
    // Then bring the kernel's policies in line with the state of every user
    // in `keys` (the active sessions' addresses by user in name order:
    // Reconciler::keys_by_user, after its accept()).
    void enforce(const UserKeys& keys, int64_t now);

    // Users whose plan says disconnect and who are over: their sessions
    // should be ended by their identity source.
    std::vector<std::string> take_disconnects();

    // For the API (any thread).
    std::optional<nlohmann::json> quota(const std::string& user, int64_t now) const;
    // Every user with usage on record or a grant: quota_json plus this
    // period's upload_bytes and download_bytes, by user (GET /v1/quotas).
    std::map<std::string, nlohmann::json> quotas(int64_t now) const;
    http::Response put_quota(const std::string& user, const std::string& body, int64_t now);

    void reload(QuotaConfig config);
    uint64_t alerts_sent() const { return alerts_sent_; }

    // For /metrics (the cycle's thread): where each user with a plan stands,
    // among those with usage or a grant on record and `also` (e.g. the
    // connected ones); and webhook alerts given up on or refused.
    // Where `user` stands now (the cycle's thread, after accept()).
    QuotaState current_state(const std::string& user, int64_t now) const;
    // `also`: in any order, repeats allowed; views that outlive the call.
    std::vector<QuotaState> planned_states(std::vector<std::string_view> also, int64_t now) const;
    // The same users' gauges, by user in name order: what publishing needs,
    // without a copy of each state (names and period) every cycle.
    UserGauges gauges(std::vector<std::string_view> also, int64_t now) const;
    uint64_t webhook_failures() const;

private:
    // The parts of a user's state their kernel policies and budget are set from.
    struct Enforced {
        QuotaState::State state = QuotaState::State::ok;
        bool block = false, disconnect = false, limited = false;
        uint64_t download_bps = 0, upload_bps = 0;
        int64_t period_start = 0;
        std::optional<uint64_t> limit_bytes;
        bool operator==(const Enforced&) const = default;
    };
    static Enforced enforced_from(const QuotaState& state);
    // Everything kept about one user, found with one lookup, or a step of
    // a walk in name order (at 100,000 users a map by name per kind of
    // record cost more than the states themselves).
    struct UserQuota {
        std::optional<PeriodUsage> usage; // as committed: this period's or an earlier one's
        std::optional<Grant> grant;
        int64_t fired_period = 0; // the latest period with alerts fired,
        std::set<int> fired;      // and their thresholds
        std::optional<uint32_t> slot; // as held in slots_ (no search by name each cycle)
        // What the kernel's budget was last set from: it is only set again
        // when this changes, since the datapath spends it in between.
        std::optional<std::pair<int64_t, uint64_t>> budget_basis;
        // The state as last evaluated, kept until its holds_until or a
        // change of usage, grant or config (none: evaluate again), and the
        // usage it was evaluated with: plan() keeps the state of the usage
        // it plans, which is the record's once committed.
        mutable std::optional<QuotaState> state;
        mutable std::optional<PeriodUsage> state_of_usage;
        std::optional<Enforced> enforced; // as the last enforce() walk set the kernel
    };
    using Users = std::map<std::string, UserQuota, std::less<>>;

    void remember_fired(const AlertRecord& alert);
    static const std::optional<Grant>& grant_in(const UserQuota* record); // none without a record
    // Where `user` (the key of `record`, or one without a record: null) stands at `now`.
    QuotaState evaluate_user(const std::string& user, const UserQuota* record, int64_t now) const;
    // ... with this usage on record (none: nothing yet).
    QuotaState evaluate_usage(const std::string& user, const std::optional<Grant>& grant,
                              const std::optional<PeriodUsage>& stored, int64_t now) const;
    // The record's kept state if it is of `usage` and still holds at `now`.
    static const QuotaState* kept_for(const UserQuota& record, const std::optional<PeriodUsage>& usage, int64_t now);
    QuotaState state_of(const std::string& user, int64_t now) const;
    // The record's kept state, evaluated again only when it may have changed.
    const QuotaState& kept_state(const std::string& user, const UserQuota& record, int64_t now) const;
    // Calls `visit(user, state)` for each user planned_states() lists, in name order.
    template <typename Visit>
    void each_planned_state(std::vector<std::string_view> also, int64_t now, Visit&& visit) const;
    void give_back_slot(const std::string& user, UserQuota* record);
    // What an enforce() walk gathers from the users it visits.
    struct Walk {
        std::vector<std::pair<ClientKey, PolicyEntry>> wanted; // the policies their keys should have
        std::vector<std::string> unslotted;                    // with a plan, but every slot taken: in name order
        bool failed = false;                                   // a kernel write failed
        int64_t holds_until = kForever; // the earliest a visited user's state changes with time alone
    };
    void enforce_user(Users::value_type& entry, std::span<const UserKeys::value_type> user_keys, int64_t now,
                      Walk& walk);
    // A user whose keys differ between the last walk and now: where they
    // are in each (an empty range: none).
    struct KeysChange {
        size_t before_begin = 0, before_end = 0; // in Walked::keys
        size_t now_begin = 0, now_end = 0;       // in the keys given now
    };
    static std::vector<KeysChange> keys_changes(const std::vector<std::pair<std::string, ClientKey>>& before,
                                                const UserKeys& now);
    bool enforce_changes(const UserKeys& keys, const std::vector<KeysChange>& changes, int64_t now);
    // Kernel writes, failures logged and noted in `walk`; put_policy: true when set.
    bool put_policy(const ClientKey& key, const PolicyEntry& policy, Walk& walk);
    std::map<ClientKey, PolicyEntry>::iterator drop_policy(std::map<ClientKey, PolicyEntry>::iterator held, Walk& walk);
    // Keeps who is left without a slot; false (and no walk kept) when the
    // next cycle must walk again.
    bool finish_walk(Walk& walk, size_t unslotted_before);
    void accept(const CycleCommit& commit, int64_t now, Undo* undo); // undo: record what changes
    Result<uint32_t> shaped_class(uint32_t ifindex, uint16_t minor, uint64_t rate_bps);

    mutable std::mutex mutex_; // the API's threads read what the cycle writes
    QuotaConfig config_;
    Store& store_;
    Enforcer* enforcer_;
    PinnedMaps* registry_;
    std::unique_ptr<WebhookSender> webhook_;
    Users users_; // never erased from
    // users_' entries in name order, for the walks every cycle makes: along
    // a vector whose next entries can be fetched ahead, not from tree node
    // to tree node (at 100,000 users that chase was most of plan(),
    // accept() and the gauges). Current while its size is the map's.
    mutable std::vector<const Users::value_type*> by_name_;
    const std::vector<const Users::value_type*>& users_by_name() const;
    size_t granted_ = 0; // users with a grant
    UserSlots slots_;
    std::map<ClientKey, PolicyEntry> policies_;
    std::map<uint32_t, HtbShaper> shapers_; // by ifindex
    std::set<std::string> disconnects_;
    // What the last enforce() walk was given, while everything it set
    // still holds: most cycles change nothing it depends on, and a walk over
    // every connected user cost ~25 ms a cycle at 100,000 (when only some
    // users' keys changed, only they are walked). Reset by a reload, a
    // grant, a user's state that changed what was set, a failed kernel
    // write or a disconnect asked for (none: walk all next time).
    struct Walked {
        std::vector<std::pair<std::string, ClientKey>> keys;
        int64_t at = 0;                 // its `now` (a clock that goes back walks again)
        int64_t holds_until = kForever; // the earliest a walked user's state changes with time alone
    };
    std::optional<Walked> walked_;

public:
    class Undo {
        friend class QuotaController;
        std::vector<std::pair<UserQuota*, std::optional<PeriodUsage>>> usage; // a record, its usage before
        std::optional<int64_t> holds_until;                                  // the enforce walk's, before
        std::optional<Walked> walked;                                        // the walk accept() dropped
    };

private:
    std::vector<std::string> unslotted_; // connected users with a plan left without a slot, in name order
    uint64_t alerts_sent_ = 0;
};

} // namespace vpnmeter
