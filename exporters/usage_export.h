// `vpnmeter export`: every user's usage per bucket, streamed as CSV or JSON.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "result.h"
#include "store/store.h"

namespace vpnmeter {

enum class ExportFormat { csv, json };

struct ExportRange {
    int64_t from = 0; // unix seconds; buckets overlapping [from, to) are reported whole
    int64_t to = 0;
    Granularity granularity = Granularity::Day;
};

// After each user: (users done, users in all).
using ExportProgress = std::function<void(size_t done, size_t total)>;

// Writes one row per (user, bucket) with traffic, users in the order given,
// buckets oldest first. Each user is read on its own (a short read
// transaction each, so a long export never holds the daemon's store back)
// and written out before the next is read: memory stays at one user's buckets.
// CSV: user,start,upload_bytes,download_bytes,upload_packets,download_packets
// JSON: {"from","to","by","rows":[{user,start,upload_bytes,...}],"upload_bytes","download_bytes"}
Status export_usage(const Store& store, const std::vector<std::string>& users, const ExportRange& range,
                    ExportFormat format, std::ostream& out, const ExportProgress& progress = {});

const char* to_string(Granularity granularity); // "hour", "day", "month"

} // namespace vpnmeter
