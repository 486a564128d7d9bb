#include "clients_report.h"

#include <algorithm>
#include <vector>

#include "format.h"
#include "table.h"

namespace vpnmeter {
namespace {

std::string name_of(const InterfaceNames& names, uint32_t ifindex)
{
    auto it = names.find(ifindex);
    return it != names.end() ? it->second : "if" + std::to_string(ifindex);
}

} // namespace

nlohmann::json clients_json(const CounterSnapshot& snapshot, const InterfaceNames& names)
{
    auto interfaces = nlohmann::json::array();
    for (const auto& [ifindex, t] : snapshot.interfaces)
        interfaces.push_back({
            {"name", name_of(names, ifindex)},
            {"ifindex", ifindex},
            {"upload_bytes", t.total.upload.bytes},
            {"download_bytes", t.total.download.bytes},
            {"upload_packets", t.total.upload.packets},
            {"download_packets", t.total.download.packets},
            {"unattributed_upload_bytes", t.unattributed.upload.bytes},
            {"unattributed_download_bytes", t.unattributed.download.bytes},
            {"unattributed_upload_packets", t.unattributed.upload.packets},
            {"unattributed_download_packets", t.unattributed.download.packets},
            {"dropped_upload_bytes", t.dropped.upload.bytes},
            {"dropped_download_bytes", t.dropped.download.bytes},
            {"dropped_upload_packets", t.dropped.upload.packets},
            {"dropped_download_packets", t.dropped.download.packets},
        });
    auto clients = nlohmann::json::array();
    for (const auto& [key, t] : snapshot.clients)
        clients.push_back({
            {"interface", name_of(names, key.ifindex)},
            {"address", key.address()},
            {"upload_bytes", t.upload.bytes},
            {"download_bytes", t.download.bytes},
            {"upload_packets", t.upload.packets},
            {"download_packets", t.download.packets},
        });
    return {{"interfaces", interfaces}, {"clients", clients}};
}

std::string clients_table(const CounterSnapshot& snapshot, const InterfaceNames& names, bool exact)
{
    auto bytes = [&](uint64_t n) { return exact ? std::to_string(n) : human_bytes(n); };
    auto count = [&](uint64_t n) { return exact ? std::to_string(n) : human_count(n); };
    std::vector<std::vector<std::string>> ifaces = {
        {"INTERFACE", "UPLOAD", "DOWNLOAD", "UP PKTS", "DOWN PKTS", "UNATTRIBUTED UP", "UNATTRIBUTED DOWN"}};
    for (const auto& [ifindex, t] : snapshot.interfaces)
        ifaces.push_back({name_of(names, ifindex), bytes(t.total.upload.bytes),
                          bytes(t.total.download.bytes), count(t.total.upload.packets),
                          count(t.total.download.packets), bytes(t.unattributed.upload.bytes),
                          bytes(t.unattributed.download.bytes)});

    // Busiest clients first: that is what an operator looks for.
    std::vector<std::pair<ClientKey, Traffic>> sorted(snapshot.clients.begin(), snapshot.clients.end());
    std::stable_sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
        return a.second.upload.bytes + a.second.download.bytes > b.second.upload.bytes + b.second.download.bytes;
    });
    std::vector<std::vector<std::string>> clients = {
        {"CLIENT", "INTERFACE", "UPLOAD", "DOWNLOAD", "UP PKTS", "DOWN PKTS"}};
    for (const auto& [key, t] : sorted)
        clients.push_back({key.address(), name_of(names, key.ifindex), bytes(t.upload.bytes),
                           bytes(t.download.bytes), count(t.upload.packets),
                           count(t.download.packets)});
    std::string out = render_table(ifaces) + "\n";
    out += sorted.empty() ? "no clients seen yet\n" : render_table(clients);
    return out;
}

} // namespace vpnmeter
