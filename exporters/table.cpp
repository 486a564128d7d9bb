#include "table.h"

#include <algorithm>
#include <sstream>

namespace vpnmeter {

std::string render_table(const Rows& rows)
{
    std::vector<size_t> width;
    for (const auto& row : rows)
        for (size_t i = 0; i < row.size(); ++i) {
            if (width.size() <= i) width.push_back(0);
            width[i] = std::max(width[i], row[i].size());
        }
    std::ostringstream out;
    for (const auto& row : rows) {
        for (size_t i = 0; i < row.size(); ++i) {
            const std::string pad(width[i] - row[i].size(), ' ');
            out << (i == 0 ? row[i] + (i + 1 < row.size() ? pad : "") : "  " + pad + row[i]);
        }
        out << '\n';
    }
    return out.str();
}

std::string render_csv(const Rows& rows)
{
    std::ostringstream out;
    for (const auto& row : rows) {
        for (size_t i = 0; i < row.size(); ++i) {
            const std::string& field = row[i];
            if (i) out << ',';
            if (field.find_first_of(",\"\n\r") == std::string::npos) {
                out << field;
                continue;
            }
            out << '"';
            for (char c : field) out << (c == '"' ? "\"\"" : std::string(1, c));
            out << '"';
        }
        out << "\r\n";
    }
    return out.str();
}

} // namespace vpnmeter
