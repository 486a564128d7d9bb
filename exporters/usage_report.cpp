#include "usage_report.h"

#include "format.h"
#include "table.h"
#include "time_format.h"

namespace vpnmeter {
namespace {

Traffic total_of(const std::vector<UsageBucket>& buckets)
{
    Traffic total;
    for (const auto& bucket : buckets) total += bucket.traffic;
    return total;
}

} // namespace

nlohmann::json session_json(const Session& s)
{
    return {
        {"id", s.id},
        {"user", s.user},
        {"instance", s.instance},
        {"interface", s.interface},
        {"addresses", s.addresses},
        {"real_address", s.real_address},
        {"start", format_rfc3339(s.start)},
        {"end", s.end ? nlohmann::json(format_rfc3339(*s.end)) : nlohmann::json(nullptr)},
        {"status", s.active() ? "active" : "closed"},
        {"upload_bytes", s.usage.upload.bytes},
        {"download_bytes", s.usage.download.bytes},
        {"upload_packets", s.usage.upload.packets},
        {"download_packets", s.usage.download.packets},
        {"source_upload_bytes", s.source_upload_bytes},
        {"source_download_bytes", s.source_download_bytes},
    };
}

nlohmann::json sessions_json(const std::vector<Session>& sessions, const std::vector<UnattributedUsage>& unattributed)
{
    auto list = nlohmann::json::array();
    for (const auto& s : sessions) list.push_back(session_json(s));
    auto spare = nlohmann::json::array();
    for (const auto& u : unattributed)
        spare.push_back({{"interface", u.interface},
                         {"upload_bytes", u.traffic.upload.bytes},
                         {"download_bytes", u.traffic.download.bytes},
                         {"upload_packets", u.traffic.upload.packets},
                         {"download_packets", u.traffic.download.packets}});
    return {{"sessions", list}, {"unattributed", spare}};
}

std::string sessions_table(const std::vector<Session>& sessions, const std::vector<UnattributedUsage>& unattributed,
                           bool exact_bytes)
{
    auto bytes = [&](uint64_t n) { return exact_bytes ? std::to_string(n) : human_bytes(n); };
    Rows rows = {{"USER", "SESSION", "INTERFACE", "ADDRESSES", "START", "END", "UPLOAD", "DOWNLOAD"}};
    for (const auto& s : sessions) {
        std::string addresses;
        for (const auto& a : s.addresses) addresses += (addresses.empty() ? "" : " ") + a;
        rows.push_back({s.user, s.id, s.interface, addresses, format_rfc3339(s.start),
                        s.end ? format_rfc3339(*s.end) : "active", bytes(s.usage.upload.bytes),
                        bytes(s.usage.download.bytes)});
    }
    std::string out = sessions.empty() ? "no sessions\n" : render_table(rows);
    if (!unattributed.empty()) {
        Rows spare = {{"UNATTRIBUTED", "UPLOAD", "DOWNLOAD"}};
        for (const auto& u : unattributed)
            spare.push_back({u.interface, bytes(u.traffic.upload.bytes), bytes(u.traffic.download.bytes)});
        out += "\n" + render_table(spare);
    }
    return out;
}

std::string sessions_csv(const std::vector<Session>& sessions)
{
    Rows rows = {{"id", "user", "instance", "interface", "addresses", "real_address", "start", "end", "upload_bytes",
                  "download_bytes"}};
    for (const auto& s : sessions) {
        std::string addresses;
        for (const auto& a : s.addresses) addresses += (addresses.empty() ? "" : " ") + a;
        rows.push_back({s.id, s.user, s.instance, s.interface, addresses, s.real_address, format_rfc3339(s.start),
                        s.end ? format_rfc3339(*s.end) : "", std::to_string(s.usage.upload.bytes),
                        std::to_string(s.usage.download.bytes)});
    }
    return render_csv(rows);
}

nlohmann::json usage_json(const std::string& user, const std::vector<UsageBucket>& buckets)
{
    auto list = nlohmann::json::array();
    for (const auto& b : buckets)
        list.push_back({{"start", format_rfc3339(b.start)},
                        {"upload_bytes", b.traffic.upload.bytes},
                        {"download_bytes", b.traffic.download.bytes},
                        {"upload_packets", b.traffic.upload.packets},
                        {"download_packets", b.traffic.download.packets}});
    const Traffic total = total_of(buckets);
    return {{"user", user},
            {"buckets", list},
            {"upload_bytes", total.upload.bytes},
            {"download_bytes", total.download.bytes}};
}

std::string usage_table(const std::string& user, const std::vector<UsageBucket>& buckets, bool exact_bytes)
{
    auto bytes = [&](uint64_t n) { return exact_bytes ? std::to_string(n) : human_bytes(n); };
    Rows rows = {{"START", "UPLOAD", "DOWNLOAD", "TOTAL"}};
    for (const auto& b : buckets)
        rows.push_back({format_rfc3339(b.start), bytes(b.traffic.upload.bytes),
                        bytes(b.traffic.download.bytes),
                        bytes(b.traffic.upload.bytes + b.traffic.download.bytes)});
    const Traffic total = total_of(buckets);
    rows.push_back({"total " + user, bytes(total.upload.bytes), bytes(total.download.bytes),
                    bytes(total.upload.bytes + total.download.bytes)});
    return render_table(rows);
}

std::string usage_csv(const std::string& user, const std::vector<UsageBucket>& buckets)
{
    Rows rows = {{"user", "start", "upload_bytes", "download_bytes"}};
    for (const auto& b : buckets)
        rows.push_back({user, format_rfc3339(b.start), std::to_string(b.traffic.upload.bytes),
                        std::to_string(b.traffic.download.bytes)});
    return render_csv(rows);
}

} // namespace vpnmeter
