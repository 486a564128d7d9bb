// Plain text tables and CSV for the CLI's reports.
#pragma once

#include <string>
#include <vector>

namespace vpnmeter {

using Rows = std::vector<std::vector<std::string>>;

// Columns padded to width: the first left-aligned, the rest right-aligned.
std::string render_table(const Rows& rows);
// RFC 4180: fields with commas, quotes or newlines are quoted.
std::string render_csv(const Rows& rows);

} // namespace vpnmeter
