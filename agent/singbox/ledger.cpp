#include "singbox/ledger.h"

#include <algorithm>

#include "reconciler.h"

namespace vpnmeter::singbox {

std::optional<UserCounter> parse_counter(std::string_view name)
{
    constexpr std::string_view prefix = "user>>>", middle = ">>>traffic>>>";
    if (!name.starts_with(prefix)) return std::nullopt;
    name.remove_prefix(prefix.size());
    const auto split = name.rfind(middle);
    if (split == std::string_view::npos || split == 0) return std::nullopt;
    const std::string_view user = name.substr(0, split), direction = name.substr(split + middle.size());
    if (direction == "uplink") return UserCounter{std::string(user), Direction::uplink};
    if (direction == "downlink") return UserCounter{std::string(user), Direction::downlink};
    return std::nullopt;
}

Ledger::Ledger(std::string instance, std::optional<StatsCheckpoint> checkpoint, std::vector<Session> open_sessions)
    : instance_(std::move(instance)), checkpoint_(std::move(checkpoint))
{
    for (auto& session : open_sessions)
        if (session.active() && session.instance == instance_) open_[session.user] = std::move(session);
}

// A server that kept running since the checkpoint has an uptime of at least
// the checkpoint's plus the time that passed (2 s of slack for whole
// seconds on both clocks). Two runs that both end within their first
// seconds cannot be told apart this way. Any user counter below its checkpoint also means
// a restart: a reader that resets counters resets them all at once, and
// then every value counts from zero too.
bool Ledger::restarted_since_checkpoint(const StatsReading& reading) const
{
    if (!checkpoint_) return false;
    if (reading.uptime && checkpoint_->uptime && checkpoint_->time) {
        const auto elapsed = static_cast<uint64_t>(std::max<int64_t>(0, reading.time - checkpoint_->time));
        if (*reading.uptime < *checkpoint_->uptime || *reading.uptime + 2 < *checkpoint_->uptime + elapsed)
            return true;
    }
    for (const auto& [name, value] : reading.counters) {
        const auto before = checkpoint_->counters.find(name);
        if (before != checkpoint_->counters.end() && parse_counter(name) &&
            (value < 0 || static_cast<uint64_t>(value) < before->second))
            return true;
    }
    return false;
}

LedgerChange Ledger::plan(const StatsReading& reading) const
{
    LedgerChange change;
    change.instance = instance_;
    change.baseline = !checkpoint_;
    change.checkpoint.uptime = reading.uptime;
    change.checkpoint.time = reading.time;
    change.restarted = restarted_since_checkpoint(reading);

    // Per user: this reading's raw values and what they add.
    struct Seen {
        Traffic delta;
        uint64_t raw_up = 0, raw_down = 0;
    };
    std::map<std::string, Seen> seen;
    for (const auto& [name, value] : reading.counters) {
        const auto counter = parse_counter(name);
        if (!counter) continue;
        const uint64_t raw = value > 0 ? static_cast<uint64_t>(value) : 0; // int64 on the wire
        change.checkpoint.counters[name] = raw;
        uint64_t delta = 0;
        if (checkpoint_) {
            const auto before = checkpoint_->counters.find(name);
            // Restarted (which any counter below its checkpoint means), or
            // new: all of it counted since zero.
            if (change.restarted || before == checkpoint_->counters.end())
                delta = raw;
            else
                delta = raw - before->second;
        }
        Seen& user = seen[counter->user];
        if (counter->direction == Direction::uplink) {
            user.delta.upload.bytes += delta;
            user.raw_up = raw;
        } else {
            user.delta.download.bytes += delta;
            user.raw_down = raw;
        }
    }

    // Sessions: a restart ends every open one; so does a user's counters
    // disappearing from the server.
    for (const auto& [user, session] : open_) {
        if (!change.restarted && seen.contains(user)) continue;
        Session closed = session;
        closed.end = reading.time;
        change.sessions.push_back(std::move(closed));
    }
    for (const auto& [user, counted] : seen) {
        if (counted.delta.upload.bytes || counted.delta.download.bytes) change.usage[user] = counted.delta;
        const auto open = open_.find(user);
        Session session;
        if (open != open_.end() && !change.restarted) {
            session = open->second;
        } else {
            int64_t start = reading.time;
            // Ids must differ from the session a restart just closed.
            if (open != open_.end()) start = std::max(start, open->second.start + 1);
            session.id = session_id(instance_, user, start);
            session.user = user;
            session.instance = instance_;
            session.start = start;
        }
        const bool moved = counted.delta.upload.bytes || counted.delta.download.bytes;
        const bool is_new = open == open_.end() || change.restarted;
        session.usage += counted.delta;
        const bool source_moved =
            session.source_upload_bytes != counted.raw_up || session.source_download_bytes != counted.raw_down;
        session.source_upload_bytes = counted.raw_up;
        session.source_download_bytes = counted.raw_down;
        if (moved || is_new || source_moved) change.sessions.push_back(std::move(session));
    }
    return change;
}

void Ledger::accept(const LedgerChange& committed)
{
    checkpoint_ = committed.checkpoint;
    for (const auto& session : committed.sessions) {
        if (session.active()) {
            open_[session.user] = session;
        } else if (auto open = open_.find(session.user); open != open_.end() && open->second.id == session.id) {
            open_.erase(open);
        }
    }
}

} // namespace vpnmeter::singbox
