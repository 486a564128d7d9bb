#include "top_view.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <sstream>

#include "format.h"
#include "table.h"
#include "time_format.h"

namespace vpnmeter {
namespace {

std::optional<double> percent_of(const TopUser& u)
{
    if (!u.limit_bytes) return std::nullopt;
    if (*u.limit_bytes == 0) return u.used_bytes ? 100.0 : 0.0;
    return 100.0 * static_cast<double>(u.used_bytes) / static_cast<double>(*u.limit_bytes);
}

const char* ansi_of(QuotaLevel level)
{
    switch (level) {
    case QuotaLevel::green: return "\x1b[32m";
    case QuotaLevel::yellow: return "\x1b[33m";
    case QuotaLevel::red: return "\x1b[31m";
    default: return "";
    }
}

} // namespace

QuotaLevel level_of(const TopUser& u)
{
    if (u.state == "blocked" || u.state == "expired" || u.state == "throttled" || u.state == "exceeded")
        return QuotaLevel::red;
    const auto percent = percent_of(u);
    if (!percent) return QuotaLevel::none;
    if (*u.limit_bytes == 0 || u.used_bytes >= *u.limit_bytes) return QuotaLevel::red;
    // 4 * used >= 3 * limit, exactly: no rounding at the 75% edge.
    if (static_cast<unsigned __int128>(u.used_bytes) * 4 >= static_cast<unsigned __int128>(*u.limit_bytes) * 3)
        return QuotaLevel::yellow;
    return QuotaLevel::green;
}

const char* to_string(QuotaLevel level)
{
    switch (level) {
    case QuotaLevel::green: return "green";
    case QuotaLevel::yellow: return "yellow";
    case QuotaLevel::red: return "red";
    default: return "none";
    }
}

std::vector<TopUser> top_users(const nlohmann::json& now, const nlohmann::json& before, double seconds)
{
    std::map<std::string, std::pair<uint64_t, uint64_t>> previous; // user -> (upload, download)
    if (before.is_object() && before.contains("users"))
        for (const auto& u : before.at("users"))
            previous[u.value("user", "")] = {u.value("upload_bytes", uint64_t{0}),
                                             u.value("download_bytes", uint64_t{0})};
    std::vector<TopUser> out;
    for (const auto& u : now.at("users")) {
        TopUser row;
        row.user = u.value("user", "");
        row.plan = u.value("plan", "");
        row.state = u.value("state", "");
        row.used_bytes = u.value("used_bytes", uint64_t{0});
        if (u.contains("limit_bytes") && u["limit_bytes"].is_number())
            row.limit_bytes = u["limit_bytes"].get<uint64_t>();
        row.upload_bytes = u.value("upload_bytes", uint64_t{0});
        row.download_bytes = u.value("download_bytes", uint64_t{0});
        if (auto it = previous.find(row.user); it != previous.end() && seconds > 0) {
            // Smaller than before: a new period began; no rate to tell.
            if (row.upload_bytes >= it->second.first)
                row.upload_bps = static_cast<double>(row.upload_bytes - it->second.first) * 8 / seconds;
            if (row.download_bytes >= it->second.second)
                row.download_bps = static_cast<double>(row.download_bytes - it->second.second) * 8 / seconds;
        }
        out.push_back(std::move(row));
    }
    std::sort(out.begin(), out.end(), [](const TopUser& a, const TopUser& b) {
        const double ra = a.upload_bps + a.download_bps, rb = b.upload_bps + b.download_bps;
        if (ra != rb) return ra > rb;
        if (a.used_bytes != b.used_bytes) return a.used_bytes > b.used_bytes;
        return a.user < b.user;
    });
    return out;
}

std::string quota_bar(uint64_t used, uint64_t limit, size_t width)
{
    size_t filled = width;
    if (limit > 0 && used < limit) filled = static_cast<size_t>(static_cast<unsigned __int128>(used) * width / limit);
    return "[" + std::string(filled, '#') + std::string(width - filled, '-') + "]";
}

std::string top_frame(const std::vector<TopUser>& users, int64_t now, const TopStyle& style)
{
    auto bytes = [&](uint64_t n) { return style.exact_bytes ? std::to_string(n) : human_bytes(n); };
    size_t blocked = 0, throttled = 0;
    Rows rows = {{"USER", "PLAN", "STATE", "DOWNLOAD", "UPLOAD", "USED", "LIMIT", "%", "QUOTA"}};
    std::vector<QuotaLevel> levels;
    for (const auto& u : users) {
        blocked += u.state == "blocked" || u.state == "expired";
        throttled += u.state == "throttled";
        const auto percent = percent_of(u);
        char share[16] = "-";
        if (percent) std::snprintf(share, sizeof share, "%.0f%%", std::floor(*percent));
        rows.push_back({u.user, u.plan, u.state, human_rate(u.download_bps), human_rate(u.upload_bps),
                        bytes(u.used_bytes), u.limit_bytes ? bytes(*u.limit_bytes) : "unlimited", share,
                        u.limit_bytes ? quota_bar(u.used_bytes, *u.limit_bytes) : ""});
        levels.push_back(level_of(u));
    }
    std::ostringstream out;
    out << "vpnmeter top  " << format_rfc3339(now) << "  " << users.size() << " users, " << blocked << " blocked, "
        << throttled << " throttled\n\n";
    if (users.empty()) {
        out << "no users with usage this period\n";
        return out.str();
    }
    std::istringstream table(render_table(rows));
    std::string line;
    for (size_t i = 0; std::getline(table, line); ++i) {
        // The bar is the last column, right-aligned: the line ends with it.
        const size_t n = i == 0 ? 0 : i - 1;
        if (i > 0 && style.color && levels[n] != QuotaLevel::none && !rows[i].back().empty()) {
            const size_t at = line.size() - rows[i].back().size();
            line = line.substr(0, at) + ansi_of(levels[n]) + line.substr(at) + "\x1b[0m";
        }
        out << line << '\n';
    }
    return out.str();
}

nlohmann::json top_json(const std::vector<TopUser>& users, int64_t now, double seconds)
{
    auto list = nlohmann::json::array();
    for (const auto& u : users) {
        const auto percent = percent_of(u);
        list.push_back({{"user", u.user},
                        {"plan", u.plan},
                        {"state", u.state},
                        {"used_bytes", u.used_bytes},
                        {"limit_bytes", u.limit_bytes ? nlohmann::json(*u.limit_bytes) : nlohmann::json(nullptr)},
                        {"percent", percent ? nlohmann::json(std::round(*percent * 10) / 10) : nlohmann::json(nullptr)},
                        {"level", to_string(level_of(u))},
                        {"upload_bytes", u.upload_bytes},
                        {"download_bytes", u.download_bytes},
                        {"upload_bps", static_cast<uint64_t>(std::llround(u.upload_bps))},
                        {"download_bps", static_cast<uint64_t>(std::llround(u.download_bps))}});
    }
    return {{"time", now}, {"interval_seconds", seconds}, {"users", list}};
}

} // namespace vpnmeter
