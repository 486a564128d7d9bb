// `vpnmeter top`: per-user rates and quota bars from two readings of
// GET /v1/quotas.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace vpnmeter {

struct TopUser {
    std::string user;
    std::string plan;
    std::string state;                   // the API's: ok, warning, exceeded, blocked, throttled, expired
    uint64_t used_bytes = 0;             // what counts against the limit this period
    std::optional<uint64_t> limit_bytes; // none: unlimited
    uint64_t upload_bytes = 0;           // this period
    uint64_t download_bytes = 0;
    double upload_bps = 0; // between the two readings
    double download_bps = 0;
};

// green under 75% of the limit, yellow from 75% up to it, red at or past it
// or while blocked (also throttled, expired, exceeded); none: no limit and
// nothing enforced.
enum class QuotaLevel { none, green, yellow, red };
QuotaLevel level_of(const TopUser& user);
const char* to_string(QuotaLevel level);

// Users of `now` (a GET /v1/quotas body), rates from `before` taken
// `seconds` earlier (a user missing there, or whose period began since,
// shows 0). Busiest first, then most used, then by name.
std::vector<TopUser> top_users(const nlohmann::json& now, const nlohmann::json& before, double seconds);

// "[########------------]": `width` cells, the used share filled (capped at full).
std::string quota_bar(uint64_t used, uint64_t limit, size_t width = 20);

struct TopStyle {
    bool color = false;       // ANSI colours on the bars (a terminal, and NO_COLOR unset)
    bool exact_bytes = false; // integers instead of human units
};

// One screen: a summary line, then a table (no cursor movement).
std::string top_frame(const std::vector<TopUser>& users, int64_t now, const TopStyle& style);

// {"time", "interval_seconds", "users":[{user, plan, state, used_bytes, limit_bytes|null,
//   percent|null, level, upload_bytes, download_bytes, upload_bps, download_bps}]}
nlohmann::json top_json(const std::vector<TopUser>& users, int64_t now, double seconds);

} // namespace vpnmeter
