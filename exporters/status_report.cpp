#include "status_report.h"

#include <sstream>

#include "format.h"
#include "table.h"
#include "time_format.h"

namespace vpnmeter {
namespace {

nlohmann::json optional_json(const auto& value) { return value ? nlohmann::json(*value) : nlohmann::json(nullptr); }

// "2026-11-23T09:00:00Z (12s ago)"; "never" for null.
std::string when(const nlohmann::json& unix_seconds, int64_t now)
{
    if (!unix_seconds.is_number()) return "never";
    const int64_t t = unix_seconds.get<int64_t>();
    return format_rfc3339(t) + " (" + human_duration(now - t) + " ago)";
}

} // namespace

std::string human_duration(int64_t seconds)
{
    if (seconds < 0) seconds = 0;
    char text[32];
    if (seconds < 60)
        std::snprintf(text, sizeof text, "%llds", static_cast<long long>(seconds));
    else if (seconds < 3600)
        std::snprintf(text, sizeof text, "%lldm %02llds", static_cast<long long>(seconds / 60),
                      static_cast<long long>(seconds % 60));
    else if (seconds < 86400)
        std::snprintf(text, sizeof text, "%lldh %02lldm", static_cast<long long>(seconds / 3600),
                      static_cast<long long>(seconds % 3600 / 60));
    else
        std::snprintf(text, sizeof text, "%lldd %lldh", static_cast<long long>(seconds / 86400),
                      static_cast<long long>(seconds % 86400 / 3600));
    return text;
}

nlohmann::json status_json(const AgentStatus& s, int64_t now)
{
    auto interfaces = nlohmann::json::array();
    for (const auto& i : s.interfaces)
        interfaces.push_back({{"name", i.name}, {"ifindex", i.ifindex}, {"attached", i.attached}});
    auto sources = nlohmann::json::array();
    for (const auto& source : s.sources)
        sources.push_back({{"kind", source.kind},
                           {"instance", source.instance},
                           {"state", source.up ? "up" : "down"},
                           {"last_refresh", optional_json(source.last_refresh)},
                           {"error", optional_json(source.error)}});
    nlohmann::json quotas = nullptr;
    if (s.users_blocked && s.users_throttled)
        quotas = {{"users_blocked", *s.users_blocked}, {"users_throttled", *s.users_throttled}};
    return {
        {"agent",
         {{"version", s.version},
          {"pid", s.pid},
          {"started", s.started},
          {"uptime_seconds", std::max<int64_t>(0, now - s.started)},
          {"config_path", s.config_path},
          {"pin_path", s.pin_path}}},
        {"interfaces", interfaces},
        {"sources", sources},
        {"store",
         {{"path", s.store_path}, {"size_bytes", s.store_size_bytes}, {"last_commit", optional_json(s.last_commit)}}},
        {"quotas", quotas}};
}

std::string status_text(const nlohmann::json& status, int64_t now, bool exact_bytes)
{
    std::ostringstream out;
    const auto& agent = status.at("agent");
    out << "agent    vpnmeterd " << agent.value("version", "?") << ", pid " << agent.value("pid", int64_t{0}) << ", up "
        << human_duration(agent.value("uptime_seconds", int64_t{0})) << "\n"
        << "config   " << agent.value("config_path", "") << "\n"
        << "pins     " << agent.value("pin_path", "") << "\n";
    const auto& store = status.at("store");
    const uint64_t size = store.value("size_bytes", uint64_t{0});
    out << "store    " << store.value("path", "") << ", "
        << (exact_bytes ? std::to_string(size) + " bytes" : human_bytes(size)) << ", last commit "
        << when(store.at("last_commit"), now) << "\n";
    if (const auto& quotas = status.at("quotas"); quotas.is_object())
        out << "quotas   " << quotas.value("users_blocked", uint64_t{0}) << " users blocked, "
            << quotas.value("users_throttled", uint64_t{0}) << " throttled\n";

    Rows interfaces = {{"INTERFACE", "IFINDEX", "ATTACHED"}};
    for (const auto& i : status.at("interfaces"))
        interfaces.push_back(
            {i.value("name", ""), std::to_string(i.value("ifindex", 0u)), i.value("attached", false) ? "yes" : "NO"});
    out << "\n" << (interfaces.size() > 1 ? render_table(interfaces) : "no interface matches `interfaces` yet\n");

    Rows sources = {{"SOURCE", "KIND", "STATE", "LAST REFRESH", "ERROR"}};
    for (const auto& s : status.at("sources"))
        sources.push_back({s.value("instance", ""), s.value("kind", ""), s.value("state", ""),
                           when(s.at("last_refresh"), now),
                           s.at("error").is_string() ? s["error"].get<std::string>() : "-"});
    out << "\n" << (sources.size() > 1 ? render_table(sources) : "no identity sources configured\n");
    return out.str();
}

} // namespace vpnmeter
