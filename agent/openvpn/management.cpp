#include "openvpn/management.h"

#include <utility>

#include "openvpn/text.h"

namespace vpnmeter::openvpn {

namespace {

// Sent without a line end: it waits for the password on the same line.
constexpr std::string_view password_prompt = "ENTER PASSWORD:";

MalformedLine malformed(std::string_view line, std::string error)
{
    return MalformedLine{std::string(line.substr(0, 200)), std::move(error)};
}

std::optional<ClientEventKind> event_kind(std::string_view name)
{
    if (name == "CONNECT")
        return ClientEventKind::connect;
    if (name == "REAUTH")
        return ClientEventKind::reauth;
    if (name == "ESTABLISHED")
        return ClientEventKind::established;
    if (name == "DISCONNECT")
        return ClientEventKind::disconnect;
    return std::nullopt;
}

std::string event_name(ClientEventKind kind)
{
    switch (kind) {
    case ClientEventKind::connect:
        return "CONNECT";
    case ClientEventKind::reauth:
        return "REAUTH";
    case ClientEventKind::established:
        return "ESTABLISHED";
    case ClientEventKind::disconnect:
        return "DISCONNECT";
    }
    return "?";
}

} // namespace

std::string CommandResponse::text() const
{
    std::string out;
    for (const std::string& line : lines) {
        out += line;
        out += '\n';
    }
    out += "END\n";
    return out;
}

void ManagementParser::feed(std::string_view bytes)
{
    compact();
    buffer_.append(bytes);
}

void ManagementParser::expect_single_line() { expected_.push_back(Reply::single_line); }
void ManagementParser::expect_multiline() { expected_.push_back(Reply::multi_line); }

// Drops consumed bytes once they are at least half the buffer: amortised
// O(1) per byte, also when fed a byte at a time.
void ManagementParser::compact()
{
    if (pos_ > 0 && pos_ * 2 >= buffer_.size()) {
        buffer_.erase(0, pos_);
        pos_ = 0;
    }
}

std::optional<ManagementMessage> ManagementParser::next()
{
    for (;;) {
        const std::string_view rest = std::string_view(buffer_).substr(pos_);
        const size_t newline = rest.find('\n');
        if (skipping_) {
            pos_ = newline == std::string_view::npos ? buffer_.size() : pos_ + newline + 1;
            if (newline == std::string_view::npos)
                return std::nullopt;
            skipping_ = false;
            continue;
        }
        // Checked before looking for a line end: the reply to the password
        // follows the prompt on the same line ("ENTER PASSWORD:SUCCESS: ...").
        if (rest.starts_with(password_prompt)) {
            pos_ += password_prompt.size();
            return PasswordPrompt{};
        }
        // The same verdict whether the line came whole or a byte at a time.
        const size_t length = newline == std::string_view::npos ? rest.size() : newline;
        if (length > max_line) {
            skipping_ = true;
            return malformed(rest.substr(0, 80), "line longer than " + std::to_string(max_line) + " bytes, dropped");
        }
        if (newline == std::string_view::npos)
            return std::nullopt;

        std::string_view line = rest.substr(0, newline);
        pos_ += newline + 1;
        if (line.ends_with('\r'))
            line.remove_suffix(1);
        if (auto message = on_line(line))
            return message;
    }
}

std::optional<ManagementMessage> ManagementParser::on_line(std::string_view line)
{
    // '>' starts a real-time notification wherever it appears, also inside a
    // reply: no reply line (status rows, help text) starts with it.
    if (line.starts_with('>'))
        return on_notification(line);
    return on_reply_line(line);
}

std::optional<ManagementMessage> ManagementParser::on_reply_line(std::string_view line)
{
    if (response_) {
        if (line != "END") {
            response_->lines.emplace_back(line);
            return std::nullopt;
        }
        expected_.pop_front();
        CommandResponse done = std::move(*response_);
        response_.reset();
        return done;
    }

    const bool success = line.starts_with("SUCCESS:");
    if (success || line.starts_with("ERROR:")) {
        if (!expected_.empty())
            expected_.pop_front();
        std::string_view text = line.substr(success ? 8 : 6);
        if (text.starts_with(' '))
            text.remove_prefix(1);
        return CommandResult{success, std::string(text)};
    }

    if (!expected_.empty() && expected_.front() == Reply::multi_line) {
        if (line == "END") {
            expected_.pop_front();
            return CommandResponse{};
        }
        response_.emplace();
        response_->lines.emplace_back(line);
        return std::nullopt;
    }
    if (line.empty())
        return std::nullopt;
    return UnexpectedLine{std::string(line)};
}

std::optional<ManagementMessage> ManagementParser::on_notification(std::string_view line)
{
    const std::string_view body = line.substr(1);
    const size_t colon = body.find(':');
    if (colon == 0 || colon == std::string_view::npos)
        return malformed(line, "expected \">TYPE:text\"");
    const std::string_view type = body.substr(0, colon);
    const std::string_view text = body.substr(colon + 1);

    if (type == "CLIENT")
        return on_client(line, text);
    if (type == "BYTECOUNT_CLI") {
        const auto f = split_fields(text, ',');
        std::optional<uint64_t> cid, in, out;
        if (f.size() == 3) {
            cid = parse_u64(f[0]);
            in = parse_u64(f[1]);
            out = parse_u64(f[2]);
        }
        if (!cid || !in || !out)
            return malformed(line, "expected \">BYTECOUNT_CLI:cid,bytes_in,bytes_out\"");
        return ClientBytes{*cid, *in, *out};
    }
    return Notification{std::string(type), std::string(text)};
}

std::optional<ManagementMessage> ManagementParser::on_client(std::string_view line, std::string_view body)
{
    const size_t comma = body.find(',');
    const std::string_view kind = body.substr(0, comma);
    const std::string_view args = comma == std::string_view::npos ? std::string_view() : body.substr(comma + 1);

    if (kind == "ENV") {
        if (comma == std::string_view::npos)
            return malformed(line, "expected \">CLIENT:ENV,name=value\"");
        if (!client_) {
            // The block of an event we could not read: report it once.
            const bool first = !skip_env_;
            skip_env_ = args != "END";
            if (first)
                return malformed(line, "CLIENT:ENV outside a CLIENT event");
            return std::nullopt;
        }
        if (args == "END") {
            ClientEvent done = std::move(*client_);
            client_.reset();
            return done;
        }
        const size_t eq = args.find('=');
        client_->env[std::string(args.substr(0, eq))] =
            eq == std::string_view::npos ? std::string() : std::string(args.substr(eq + 1));
        return std::nullopt;
    }

    if (kind == "ADDRESS") {
        const auto f = split_fields(args, ',');
        const std::optional<uint64_t> cid = f.size() == 3 ? parse_u64(f[0]) : std::nullopt;
        if (!cid || f[1].empty() || (f[2] != "0" && f[2] != "1"))
            return malformed(line, "expected \">CLIENT:ADDRESS,cid,address,primary\"");
        return ClientAddress{*cid, std::string(f[1]), f[2] == "1"};
    }

    const std::optional<ClientEventKind> event = event_kind(kind);
    if (!event) { // CR_RESPONSE and kinds of newer versions
        skip_env_ = true;
        return Notification{"CLIENT", std::string(body)};
    }
    const bool needs_kid = *event == ClientEventKind::connect || *event == ClientEventKind::reauth;
    const auto f = split_fields(args, ',');
    const std::optional<uint64_t> cid = comma == std::string_view::npos ? std::nullopt : parse_u64(f[0]);
    const std::optional<uint32_t> kid = f.size() == 2 ? parse_u32(f[1]) : std::nullopt;
    if (!cid || f.size() > 2 || (f.size() == 2 && !kid) || (needs_kid && !kid)) {
        skip_env_ = true;
        client_.reset();
        return malformed(line, "expected \">CLIENT:" + std::string(kind) + (needs_kid ? ",cid,kid\"" : ",cid\""));
    }

    std::optional<ManagementMessage> unfinished;
    if (client_) {
        std::string header = ">CLIENT:" + event_name(client_->kind) + "," + std::to_string(client_->cid);
        if (client_->kid)
            header += "," + std::to_string(*client_->kid);
        unfinished = malformed(header, "no CLIENT:ENV,END before the next CLIENT event");
    }
    client_ = ClientEvent{*event, *cid, kid, {}};
    skip_env_ = false;
    return unfinished;
}

} // namespace vpnmeter::openvpn
