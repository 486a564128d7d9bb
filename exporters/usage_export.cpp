#include "usage_export.h"

#include <nlohmann/json.hpp>

#include "table.h"
#include "time_format.h"

namespace vpnmeter {

const char* to_string(Granularity granularity)
{
    switch (granularity) {
    case Granularity::Hour: return "hour";
    case Granularity::Month: return "month";
    default: return "day";
    }
}

Status export_usage(const Store& store, const std::vector<std::string>& users, const ExportRange& range,
                    ExportFormat format, std::ostream& out, const ExportProgress& progress)
{
    // User names come from certificates: not necessarily UTF-8.
    auto dump = [](const nlohmann::json& j) {
        return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    };
    if (format == ExportFormat::csv) {
        out << render_csv({{"user", "start", "upload_bytes", "download_bytes", "upload_packets", "download_packets"}});
    } else {
        out << "{\"from\":" << dump(format_rfc3339(range.from)) << ",\"to\":" << dump(format_rfc3339(range.to))
            << ",\"by\":\"" << to_string(range.granularity) << "\",\"rows\":[";
    }
    Traffic total;
    bool first = true;
    for (size_t i = 0; i < users.size(); ++i) {
        const std::string& user = users[i];
        auto buckets = store.usage(user, range.from, range.to, range.granularity);
        if (!buckets) return Error{"usage of " + user + ": " + buckets.error().message()};
        for (const auto& b : buckets.value()) {
            const Traffic& t = b.traffic;
            total += t;
            if (format == ExportFormat::csv) {
                out << render_csv(
                    {{user, format_rfc3339(b.start), std::to_string(t.upload.bytes), std::to_string(t.download.bytes),
                      std::to_string(t.upload.packets), std::to_string(t.download.packets)}});
            } else {
                out << (first ? "\n" : ",\n")
                    << dump({{"user", user},
                             {"start", format_rfc3339(b.start)},
                             {"upload_bytes", t.upload.bytes},
                             {"download_bytes", t.download.bytes},
                             {"upload_packets", t.upload.packets},
                             {"download_packets", t.download.packets}});
            }
            first = false;
        }
        if (!out) return Error{"writing the export failed"};
        if (progress) progress(i + 1, users.size());
    }
    if (format == ExportFormat::json)
        out << "\n],\"upload_bytes\":" << total.upload.bytes << ",\"download_bytes\":" << total.download.bytes << "}\n";
    out.flush();
    if (!out) return Error{"writing the export failed"};
    return ok();
}

} // namespace vpnmeter
