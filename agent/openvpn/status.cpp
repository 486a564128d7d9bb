#include "openvpn/status.h"

#include <arpa/inet.h>

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "openvpn/text.h"

namespace vpnmeter::openvpn {

namespace {

using Fields = std::vector<std::string_view>;

Error line_error(size_t number, const std::string& what)
{
    return Error{"openvpn status line " + std::to_string(number) + ": " + what};
}

// Where each named column sits in a row of one record type.
class Columns {
public:
    // names[i] is the name of row field i; `line` is the HEADER's (0: built in).
    Columns(const Fields& names, size_t line) : line_(line), size_(names.size())
    {
        for (size_t i = 0; i < names.size(); ++i)
            index_.emplace(std::string(names[i]), i); // a repeated name keeps its first column
    }

    std::optional<size_t> find(std::string_view name) const
    {
        auto it = index_.find(name);
        return it == index_.end() ? std::nullopt : std::optional<size_t>(it->second);
    }
    size_t size() const { return size_; }
    size_t line() const { return line_; }

private:
    std::map<std::string, size_t, std::less<>> index_;
    size_t line_;
    size_t size_;
};

// The 2.6 layouts, for a v2/v3 file without HEADER lines.
const Fields default_client_columns = {"CLIENT_LIST",
                                       "Common Name",
                                       "Real Address",
                                       "Virtual Address",
                                       "Virtual IPv6 Address",
                                       "Bytes Received",
                                       "Bytes Sent",
                                       "Connected Since",
                                       "Connected Since (time_t)",
                                       "Username",
                                       "Client ID",
                                       "Peer ID",
                                       "Data Channel Cipher"};
const Fields default_route_columns = {"ROUTING_TABLE", "Virtual Address", "Common Name",
                                      "Real Address",  "Last Ref",        "Last Ref (time_t)"};

// Checks that a header names the columns rows cannot do without.
std::optional<Error> require_columns(const Columns& columns, std::initializer_list<std::string_view> names,
                                     std::string_view what)
{
    for (std::string_view name : names)
        if (!columns.find(name))
            return line_error(columns.line(), std::string(what) + ": no " + quoted(name) + " column");
    return std::nullopt;
}

// One row, its fields checked against the header they belong to.
class Row {
public:
    Row(const Fields& fields, const Columns& columns, size_t line) : fields_(fields), columns_(columns), line_(line)
    {
    }

    std::optional<Error> check_width(std::string_view what) const
    {
        if (fields_.size() == columns_.size())
            return std::nullopt;
        std::string where = columns_.line() ? "as in the header on line " + std::to_string(columns_.line())
                                            : "as in OpenVPN 2.6";
        return line_error(line_, std::string(what) + ": expected " + std::to_string(columns_.size()) +
                                     " fields " + where + ", got " + std::to_string(fields_.size()));
    }

    // The field under `name`, if the header has that column.
    std::optional<std::string_view> get(std::string_view name) const
    {
        auto i = columns_.find(name);
        return i ? std::optional(fields_[*i]) : std::nullopt;
    }
    std::string text(std::string_view name) const { return std::string(get(name).value_or("")); }

    Result<uint64_t> number(std::string_view name) const
    {
        std::string_view field = get(name).value_or("");
        if (auto v = parse_u64(field))
            return *v;
        return expected(name, "a number", field);
    }

    Error expected(std::string_view name, std::string_view what, std::string_view got) const
    {
        return line_error(line_, std::string(name) + ": expected " + std::string(what) + ", got " + quoted(got));
    }

    size_t line() const { return line_; }

private:
    const Fields& fields_;
    const Columns& columns_;
    size_t line_;
};

// "UNDEF" (and an empty field) means there is none.
bool undefined(std::string_view field) { return field.empty() || field == "UNDEF"; }

Result<StatusClient> client_from(const Row& row)
{
    StatusClient c;
    c.common_name = row.text("Common Name");
    c.real_address = row.text("Real Address");
    c.virtual_address = row.text("Virtual Address");
    c.virtual_ipv6 = row.text("Virtual IPv6 Address");
    if (auto u = row.get("Username"); u && !undefined(*u))
        c.username = std::string(*u);
    c.cipher = row.text("Data Channel Cipher");

    auto received = row.number("Bytes Received");
    if (!received)
        return received.error();
    auto sent = row.number("Bytes Sent");
    if (!sent)
        return sent.error();
    c.bytes_received = *received;
    c.bytes_sent = *sent;

    if (auto t = row.get("Connected Since (time_t)")) {
        auto v = parse_i64(*t);
        if (!v)
            return row.expected("Connected Since (time_t)", "unix seconds", *t);
        c.connected_since = *v;
    } else {
        std::string_view text = row.get("Connected Since").value_or("");
        auto v = parse_local_time(text);
        if (!v)
            return row.expected("Connected Since", "a time like \"2026-11-23 07:23:06\"", text);
        c.connected_since = *v;
    }

    if (auto id = row.get("Client ID"); id && !undefined(*id)) {
        auto v = parse_u64(*id);
        if (!v)
            return row.expected("Client ID", "a number", *id);
        c.client_id = *v;
    }
    if (auto id = row.get("Peer ID"); id && !undefined(*id)) {
        auto v = parse_u32(*id);
        if (!v)
            return row.expected("Peer ID", "a number", *id);
        c.peer_id = *v;
    }
    return c;
}

struct Route {
    std::string virtual_address, common_name, real_address;
};

Route route_from(const Row& row)
{
    return {row.text("Virtual Address"), row.text("Common Name"), row.text("Real Address")};
}

// Gives clients without a virtual address the host routes OpenVPN keeps for
// them. Subnets ("/24": iroutes), cached routes ("C" suffix) and MAC
// addresses (tap) are not a client's own address and are skipped.
void fill_addresses(std::vector<StatusClient>& clients, const std::vector<Route>& routes)
{
    std::map<std::pair<std::string_view, std::string_view>, StatusClient*> by_peer;
    for (StatusClient& c : clients)
        by_peer.emplace(std::pair<std::string_view, std::string_view>(c.common_name, c.real_address), &c);
    for (const Route& r : routes) {
        auto it = by_peer.find({r.common_name, r.real_address});
        if (it == by_peer.end())
            continue;
        unsigned char buf[16];
        const std::string& a = r.virtual_address;
        if (inet_pton(AF_INET, a.c_str(), buf) == 1 && it->second->virtual_address.empty())
            it->second->virtual_address = a;
        else if (inet_pton(AF_INET6, a.c_str(), buf) == 1 && it->second->virtual_ipv6.empty())
            it->second->virtual_ipv6 = a;
    }
}

// A rewrite in progress can leave old rows after new ones: a client twice.
std::optional<Error> check_unique(const std::vector<StatusClient>& clients, const std::vector<size_t>& lines)
{
    std::set<uint64_t> ids;
    std::set<std::pair<std::string_view, std::string_view>> peers;
    for (size_t i = 0; i < clients.size(); ++i) {
        const StatusClient& c = clients[i];
        bool fresh = c.client_id ? ids.insert(*c.client_id).second
                                 : peers.emplace(c.common_name, c.real_address).second;
        if (!fresh)
            return line_error(lines[i], "client " + quoted(c.common_name) + " " + c.real_address +
                                            " listed twice (file being rewritten?)");
    }
    return std::nullopt;
}

bool blank(std::string_view line) { return line.find_first_not_of(" \t\r") == std::string_view::npos; }

// The last non-blank line must be END: anything else is a file cut short.
// Call with at least one non-blank line.
std::optional<Error> check_complete(const std::vector<Line>& lines)
{
    auto last = std::find_if(lines.rbegin(), lines.rend(), [](const Line& l) { return !blank(l.text); });
    if (last->text == "END")
        return std::nullopt;
    return Error{"openvpn status: truncated after line " + std::to_string(last->number) +
                 ": no END line (file being rewritten?)"};
}

std::optional<Error> check_nothing_after(const std::vector<Line>& lines, size_t end_index)
{
    for (size_t i = end_index + 1; i < lines.size(); ++i)
        if (!blank(lines[i].text))
            return line_error(lines[i].number, "content after END on line " +
                                                   std::to_string(lines[end_index].number) +
                                                   " (file being rewritten?)");
    return std::nullopt;
}

Result<Status> parse_v1(const std::vector<Line>& lines)
{
    Status status{1, 0, {}};
    size_t i = 1;
    auto expect_line = [&](std::string_view what) {
        return line_error(lines[i].number, "expected " + std::string(what) + ", got " + quoted(lines[i].text));
    };

    // check_complete() saw END, so the walk below meets it before running out.
    std::string_view updated = lines[i].text;
    if (!updated.starts_with("Updated,"))
        return expect_line("\"Updated,<time>\"");
    auto t = parse_local_time(updated.substr(8));
    if (!t)
        return expect_line("\"Updated,<time>\" with a time like \"2026-11-23 07:23:09\"");
    status.updated = *t;
    ++i;

    if (!lines[i].text.starts_with("Common Name,"))
        return expect_line("the client list header \"Common Name,...\"");
    const Columns client_columns(split_fields(lines[i].text, ','), lines[i].number);
    if (auto e = require_columns(client_columns,
                                 {"Common Name", "Real Address", "Bytes Received", "Bytes Sent", "Connected Since"},
                                 "client list header"))
        return *e;
    ++i;

    std::vector<size_t> client_lines;
    for (; lines[i].text != "ROUTING TABLE"; ++i) {
        if (lines[i].text == "END" || lines[i].text == "GLOBAL STATS")
            return expect_line("a client or \"ROUTING TABLE\"");
        const Fields fields = split_fields(lines[i].text, ',');
        const Row row(fields, client_columns, lines[i].number);
        if (auto e = row.check_width("client"))
            return *e;
        auto client = client_from(row);
        if (!client)
            return client.error();
        status.clients.push_back(std::move(*client));
        client_lines.push_back(lines[i].number);
    }
    ++i;

    if (!lines[i].text.starts_with("Virtual Address,"))
        return expect_line("the routing table header \"Virtual Address,...\"");
    const Columns route_columns(split_fields(lines[i].text, ','), lines[i].number);
    if (auto e = require_columns(route_columns, {"Virtual Address", "Common Name", "Real Address"},
                                 "routing table header"))
        return *e;
    ++i;

    std::vector<Route> routes;
    for (; lines[i].text != "GLOBAL STATS"; ++i) {
        if (lines[i].text == "END")
            return expect_line("a route or \"GLOBAL STATS\"");
        const Fields fields = split_fields(lines[i].text, ',');
        const Row row(fields, route_columns, lines[i].number);
        if (auto e = row.check_width("route"))
            return *e;
        routes.push_back(route_from(row));
    }
    while (lines[i].text != "END") // global stats: nothing we need
        ++i;

    if (auto e = check_nothing_after(lines, i))
        return *e;
    if (auto e = check_unique(status.clients, client_lines))
        return *e;
    fill_addresses(status.clients, routes);
    return status;
}

// v2/v3 records in the order OpenVPN writes them; a record out of order
// means old and new content are mixed.
int record_rank(std::string_view type)
{
    if (type == "TITLE")
        return 0;
    if (type == "TIME")
        return 1;
    if (type == "CLIENT_LIST")
        return 2;
    if (type == "ROUTING_TABLE")
        return 3;
    if (type == "GLOBAL_STATS")
        return 4;
    return -1; // unknown to this version: skipped wherever it is
}

bool record_type(std::string_view text)
{
    return !text.empty() && text.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789") == std::string_view::npos;
}

Result<Status> parse_v2(const std::vector<Line>& lines, char sep)
{
    Status status{sep == ',' ? 2 : 3, 0, {}};
    const std::string version = "version " + std::to_string(status.version);
    std::optional<Columns> client_columns, route_columns;
    std::vector<Route> routes;
    std::vector<size_t> client_lines;
    bool have_time = false;
    int last_rank = 0;

    for (size_t i = 1; i < lines.size(); ++i) {
        const Line& line = lines[i];
        if (line.text == "END") {
            if (auto e = check_nothing_after(lines, i))
                return *e;
            if (!have_time)
                return line_error(line.number, "expected a TIME line before END");
            if (auto e = check_unique(status.clients, client_lines))
                return *e;
            fill_addresses(status.clients, routes);
            return status;
        }
        const Fields fields = split_fields(line.text, sep);
        std::string_view type = fields[0];
        if (!record_type(type))
            return line_error(line.number, "expected a " + version + " record (\"CLIENT_LIST" +
                                               std::string(1, sep) + "...\"), got " + quoted(line.text));
        // A HEADER ranks as the records it describes.
        const int rank = record_rank(type == "HEADER" && fields.size() > 1 ? fields[1] : type);
        if (rank >= 0) {
            if (rank < last_rank)
                return line_error(line.number, std::string(type) + " out of order (file being rewritten?)");
            last_rank = rank;
        }

        if (type == "TITLE") {
            return line_error(line.number, "a second TITLE (file being rewritten?)");
        } else if (type == "TIME") {
            if (have_time)
                return line_error(line.number, "a second TIME (file being rewritten?)");
            // TIME<sep>2026-11-23 07:23:03<sep>1795414983; older ones lack the time_t.
            std::optional<int64_t> t = fields.size() >= 3 ? parse_i64(fields[2])
                                       : fields.size() == 2 ? parse_local_time(fields[1])
                                                            : std::nullopt;
            if (!t)
                return line_error(line.number, "expected TIME with a time and unix seconds, got " + quoted(line.text));
            status.updated = *t;
            have_time = true;
        } else if (type == "HEADER") {
            if (fields.size() < 3)
                return line_error(line.number, "expected HEADER with a record type and column names");
            const Fields names(fields.begin() + 1, fields.end());
            if (fields[1] == "CLIENT_LIST") {
                if (client_columns)
                    return line_error(line.number, "a second CLIENT_LIST header (file being rewritten?)");
                client_columns.emplace(names, line.number);
                if (auto e = require_columns(*client_columns,
                                             {"Common Name", "Real Address", "Bytes Received", "Bytes Sent"},
                                             "CLIENT_LIST header"))
                    return *e;
                if (!client_columns->find("Connected Since (time_t)") && !client_columns->find("Connected Since"))
                    return line_error(line.number, "CLIENT_LIST header: no \"Connected Since\" column");
            } else if (fields[1] == "ROUTING_TABLE") {
                if (route_columns)
                    return line_error(line.number, "a second ROUTING_TABLE header (file being rewritten?)");
                route_columns.emplace(names, line.number);
                if (auto e = require_columns(*route_columns, {"Virtual Address", "Common Name", "Real Address"},
                                             "ROUTING_TABLE header"))
                    return *e;
            }
        } else if (type == "CLIENT_LIST") {
            if (!client_columns)
                client_columns.emplace(default_client_columns, 0);
            const Row row(fields, *client_columns, line.number);
            if (auto e = row.check_width("CLIENT_LIST"))
                return *e;
            auto client = client_from(row);
            if (!client)
                return client.error();
            status.clients.push_back(std::move(*client));
            client_lines.push_back(line.number);
        } else if (type == "ROUTING_TABLE") {
            if (!route_columns)
                route_columns.emplace(default_route_columns, 0);
            const Row row(fields, *route_columns, line.number);
            if (auto e = row.check_width("ROUTING_TABLE"))
                return *e;
            routes.push_back(route_from(row));
        }
        // GLOBAL_STATS and record types of newer versions: nothing we need.
    }
    // check_complete() saw END as the last line: the loop returns there.
    return Error{"openvpn status: no END line"};
}

} // namespace

Result<Status> parse_status(std::string_view text)
{
    constexpr std::string_view v1_title = "OpenVPN CLIENT LIST";
    const std::vector<Line> lines = split_lines(text);
    if (std::all_of(lines.begin(), lines.end(), [](const Line& l) { return blank(l.text); }))
        return Error{"openvpn status: empty (file being rewritten?)"};
    const std::string_view first = lines[0].text;
    const bool v1 = first == v1_title;
    const bool v2 = first.starts_with("TITLE,");
    const bool v3 = first.starts_with("TITLE\t");
    // A first line cut short is a truncated file, not a foreign one.
    const bool cut = lines.size() == 1 && (v1_title.starts_with(first) || std::string_view("TITLE").starts_with(first));
    if (!v1 && !v2 && !v3 && !cut)
        return line_error(1, "expected \"OpenVPN CLIENT LIST\" (version 1) or a TITLE line (version 2, 3), got " +
                                 quoted(first));
    if (auto e = check_complete(lines))
        return *e;
    return v1 ? parse_v1(lines) : parse_v2(lines, v2 ? ',' : '\t');
}

} // namespace vpnmeter::openvpn
