// One configured Sing-Box server as the daemon drives it: its poller, its
// ledger (checkpoint and open sessions) and its quota actions.
#pragma once

#include <optional>
#include <vector>

#include "config.h"
#include "singbox/actions.h"
#include "singbox/ledger.h"
#include "singbox/poller.h"

namespace vpnmeter::singbox {

struct Server {
    Server(const SingboxInstance& config, std::optional<StatsCheckpoint> checkpoint, std::vector<Session> open)
        : poller(config), ledger(config.name, std::move(checkpoint), std::move(open)), actions(config)
    {
    }

    // What the newest reading not yet committed changes, if there is one.
    std::optional<LedgerChange> plan()
    {
        auto latest = poller.latest();
        if (!latest || latest->sequence == accounted_) return std::nullopt;
        planned_ = latest->sequence;
        return ledger.plan(latest->reading);
    }
    // The change from the last plan() was committed.
    void accept(const LedgerChange& change)
    {
        ledger.accept(change);
        accounted_ = planned_;
        if (change.restarted) ++restarts;
    }

    Poller poller;
    Ledger ledger;
    Actions actions;
    uint64_t restarts = 0; // server restarts seen

private:
    uint64_t accounted_ = 0; // the poller's sequence last committed
    uint64_t planned_ = 0;   // the one plan() last used
};

} // namespace vpnmeter::singbox
