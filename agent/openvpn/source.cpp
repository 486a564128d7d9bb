#include "openvpn/source.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <fstream>
#include <map>
#include <sstream>

#include <spdlog/spdlog.h>

#include "openvpn/management.h"
#include "reconciler.h"
#include "unique_fd.h"

namespace vpnmeter {
namespace {

using namespace std::chrono_literals;

std::optional<std::vector<Session>> sessions_of(const OpenVpnInstance& instance, const openvpn::Status& status)
{
    std::vector<Session> out;
    for (const auto& client : status.clients) out.push_back(to_session(instance, client));
    return out;
}

int64_t unix_now() { return static_cast<int64_t>(std::time(nullptr)); }

SourceStatus status_of(const std::string& instance, bool up, std::optional<int64_t> last_refresh,
                       const std::string& problem)
{
    return SourceStatus{"openvpn", instance, up, last_refresh,
                        problem.empty() ? std::nullopt : std::optional<std::string>(problem)};
}

// Logs a source's trouble once per distinct message, and its recovery once:
// a server that is down for an hour must not fill the journal.
class Reporter {
public:
    explicit Reporter(std::string name) : name_(std::move(name)) {}
    void trouble(const std::string& message)
    {
        if (message == last_) return;
        spdlog::warn("{}: {}", name_, message);
        last_ = message;
    }
    void fine(const std::string& message)
    {
        if (last_.empty() && said_fine_) return;
        spdlog::info("{}: {}", name_, message);
        last_.clear();
        said_fine_ = true;
    }
    // The trouble last reported and not yet over; empty when fine.
    const std::string& problem() const { return last_; }

private:
    std::string name_;
    std::string last_;
    bool said_fine_ = false;
};

// The management interface: `status 3` each cycle, and a cycle at once when
// OpenVPN announces a client (>CLIENT:ESTABLISHED), so an address that
// changes hands is split at the moment it does. OpenVPN does not announce
// disconnects unless it delegates authentication to the management client
// (--management-client-auth), which an accounting agent must not take over:
// they show up in the next `status 3`.
class ManagementSource : public IdentitySource {
public:
    explicit ManagementSource(OpenVpnInstance instance)
        : instance_(std::move(instance)), report_("openvpn " + instance_.name + " (management " +
                                                  instance_.management + ")")
    {
    }

    const std::string& instance() const override { return instance_.name; }
    int fd() const override { return fd_.get(); }
    short events() const override { return state_ == State::connecting || !out_.empty() ? POLLOUT : POLLIN; }

    void tick(SteadyClock::time_point now) override
    {
        if (state_ == State::down && now >= retry_at_) connect(now);
        if (state_ == State::greeting && now >= greet_deadline_)
            report_.trouble("connected, but OpenVPN has not greeted: another management client is probably "
                            "connected (OpenVPN serves one at a time); waiting for it to leave");
    }

    void request_refresh(SteadyClock::time_point) override
    {
        refreshed_ = state_ != State::ready; // nothing to wait for from a source that is down
        want_status_ = state_ == State::ready;
        send_status_if_due();
    }
    bool refreshed() const override { return refreshed_; }
    std::optional<std::vector<Session>> sessions() const override { return sessions_; }
    bool take_client_event() override { return std::exchange(client_event_, false); }

    SourceStatus status() const override
    {
        return status_of(instance_.name, state_ == State::ready && sessions_.has_value(), last_refresh_,
                         report_.problem());
    }

    // client-kill by client id (from the last `status 3`): works whether the
    // user is the common name or the username.
    void disconnect(const std::string& user) override
    {
        if (state_ != State::ready) return;
        auto it = cids_by_user_.find(user);
        if (it == cids_by_user_.end()) return;
        for (uint64_t cid : it->second) {
            spdlog::info("openvpn {}: disconnecting {} (client {}): quota action", instance_.name, user, cid);
            parser_.expect_single_line();
            send("client-kill " + std::to_string(cid));
        }
    }

    void on_ready(short revents, SteadyClock::time_point now) override
    {
        if (state_ == State::connecting) {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &err, &len);
            if (err) return fail(std::strerror(err), now);
            state_ = State::greeting;
            greet_deadline_ = now + 3s;
            return;
        }
        if (revents & POLLOUT) flush(now);
        if (revents & (POLLIN | POLLHUP | POLLERR)) receive(now);
    }

private:
    enum class State { down, connecting, greeting, ready };

    void connect(SteadyClock::time_point now)
    {
        sockaddr_storage address{};
        socklen_t length = 0;
        if (auto error = resolve(address, length); !error.empty()) return fail(error, now);
        fd_.reset(socket(address.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        if (!fd_.valid()) return fail(std::string("socket: ") + std::strerror(errno), now);
        if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&address), length) != 0 && errno != EINPROGRESS)
            return fail(std::strerror(errno), now);
        state_ = State::connecting;
        parser_ = {};
        out_.clear();
    }

    std::string resolve(sockaddr_storage& address, socklen_t& length) const
    {
        const std::string& target = instance_.management;
        if (target.front() == '/') {
            auto* un = reinterpret_cast<sockaddr_un*>(&address);
            if (target.size() >= sizeof un->sun_path) return "socket path too long";
            un->sun_family = AF_UNIX;
            std::memcpy(un->sun_path, target.c_str(), target.size() + 1);
            length = sizeof(sockaddr_un);
            return {};
        }
        const size_t colon = target.rfind(':');
        std::string host = target.substr(0, colon);
        if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
        addrinfo hints{};
        hints.ai_socktype = SOCK_STREAM;
        addrinfo* found = nullptr;
        if (int err = getaddrinfo(host.c_str(), target.substr(colon + 1).c_str(), &hints, &found); err)
            return std::string("resolve: ") + gai_strerror(err);
        std::memcpy(&address, found->ai_addr, found->ai_addrlen);
        length = found->ai_addrlen;
        freeaddrinfo(found);
        return {};
    }

    void fail(const std::string& why, SteadyClock::time_point now)
    {
        report_.trouble(why + "; retrying (sessions are kept as they were meanwhile)");
        fd_.reset();
        state_ = State::down;
        sessions_.reset();
        refreshed_ = true;
        status_pending_ = false;
        retry_at_ = now + backoff_;
        backoff_ = std::min<std::chrono::seconds>(backoff_ * 2, 30s);
    }

    void send(const std::string& command)
    {
        out_ += command + "\n";
        flush(SteadyClock::now());
    }

    void flush(SteadyClock::time_point now)
    {
        while (!out_.empty()) {
            ssize_t sent = ::send(fd_.get(), out_.data(), out_.size(), MSG_NOSIGNAL);
            if (sent < 0) {
                if (errno == EAGAIN || errno == EINTR) return;
                return fail(std::string("send: ") + std::strerror(errno), now);
            }
            out_.erase(0, static_cast<size_t>(sent));
        }
    }

    void send_status_if_due()
    {
        if (!want_status_ || status_pending_ || state_ != State::ready) return;
        parser_.expect_multiline();
        send("status 3");
        status_pending_ = true;
        want_status_ = false;
    }

    void receive(SteadyClock::time_point now)
    {
        char buffer[16384];
        for (;;) {
            ssize_t got = recv(fd_.get(), buffer, sizeof buffer, 0);
            if (got > 0) {
                parser_.feed(std::string_view(buffer, static_cast<size_t>(got)));
                continue;
            }
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) break;
            handle_messages(now);
            return fail(got == 0 ? "OpenVPN closed the connection" : std::strerror(errno), now);
        }
        handle_messages(now);
    }

    void handle_messages(SteadyClock::time_point now)
    {
        while (auto message = parser_.next()) {
            if (std::holds_alternative<openvpn::PasswordPrompt>(*message)) {
                if (!answer_password(now)) return;
            } else if (auto* note = std::get_if<openvpn::Notification>(&*message)) {
                if (note->type == "INFO" && state_ == State::greeting) on_greeted();
            } else if (std::holds_alternative<openvpn::ClientEvent>(*message) ||
                       std::holds_alternative<openvpn::ClientAddress>(*message)) {
                client_event_ = true;
            } else if (auto* response = std::get_if<openvpn::CommandResponse>(&*message)) {
                on_status(response->text());
            } else if (auto* result = std::get_if<openvpn::CommandResult>(&*message)) {
                if (!result->success) {
                    status_pending_ = false;
                    refreshed_ = true;
                    report_.trouble("OpenVPN answered: ERROR: " + result->text);
                }
            } else if (auto* bad = std::get_if<openvpn::MalformedLine>(&*message)) {
                spdlog::debug("openvpn {}: {}: {}", instance_.name, bad->error, bad->text);
            }
        }
    }

    bool answer_password(SteadyClock::time_point now)
    {
        if (instance_.management_password_file.empty()) {
            fail("OpenVPN asks for a management password; set management_password_file", now);
            return false;
        }
        std::ifstream file(instance_.management_password_file);
        std::string password;
        if (!std::getline(file, password)) {
            fail("cannot read management_password_file " + instance_.management_password_file, now);
            return false;
        }
        if (++password_attempts_ > 1) {
            fail("OpenVPN rejected the management password from " + instance_.management_password_file, now);
            return false;
        }
        send(password);
        return true;
    }

    void on_greeted()
    {
        state_ = State::ready;
        backoff_ = 1s;
        password_attempts_ = 0;
        report_.fine("connected");
        want_status_ = true; // learn who is connected right away
        client_event_ = true;
        send_status_if_due();
    }

    void on_status(const std::string& text)
    {
        status_pending_ = false;
        auto status = openvpn::parse_status(text);
        if (!status) {
            report_.trouble("unreadable `status 3` reply: " + status.error().message());
            refreshed_ = true;
            return;
        }
        sessions_ = sessions_of(instance_, status.value());
        last_refresh_ = unix_now();
        cids_by_user_.clear();
        for (size_t i = 0; i < sessions_->size(); ++i)
            if (auto cid = status->clients[i].client_id) cids_by_user_[(*sessions_)[i].user].push_back(*cid);
        refreshed_ = true;
        send_status_if_due();
    }

    OpenVpnInstance instance_;
    Reporter report_;
    UniqueFd fd_;
    State state_ = State::down;
    openvpn::ManagementParser parser_;
    std::string out_;
    SteadyClock::time_point retry_at_{};
    SteadyClock::time_point greet_deadline_{};
    std::chrono::seconds backoff_ = 1s;
    int password_attempts_ = 0;
    bool want_status_ = false;
    bool status_pending_ = false;
    bool refreshed_ = true;
    bool client_event_ = false;
    std::optional<std::vector<Session>> sessions_;
    std::optional<int64_t> last_refresh_; // unix seconds
    std::map<std::string, std::vector<uint64_t>> cids_by_user_;
};

// The status file OpenVPN rewrites every few seconds (`status FILE N`). It is
// read again when it changed; a half-written file is skipped, keeping the
// previous list, and read again next cycle.
class StatusFileSource : public IdentitySource {
public:
    explicit StatusFileSource(OpenVpnInstance instance)
        : instance_(std::move(instance)), report_("openvpn " + instance_.name + " (status file " +
                                                  instance_.status_file + ")")
    {
    }

    const std::string& instance() const override { return instance_.name; }
    int fd() const override { return -1; }
    short events() const override { return 0; }
    void on_ready(short, SteadyClock::time_point) override {}
    void tick(SteadyClock::time_point) override {}
    bool refreshed() const override { return true; }
    std::optional<std::vector<Session>> sessions() const override { return sessions_; }
    bool take_client_event() override { return false; }
    SourceStatus status() const override
    {
        return status_of(instance_.name, sessions_.has_value(), last_refresh_, report_.problem());
    }

    void request_refresh(SteadyClock::time_point) override
    {
        struct stat st{};
        if (stat(instance_.status_file.c_str(), &st) != 0) {
            report_.trouble(std::string(std::strerror(errno)) + "; is OpenVPN running with `status` set?");
            sessions_.reset();
            return;
        }
        const auto version = std::make_tuple(st.st_mtim.tv_sec, st.st_mtim.tv_nsec, st.st_size, st.st_ino);
        if (sessions_ && version == seen_) {
            last_refresh_ = unix_now(); // read before and unchanged: still current
            return;
        }
        std::ifstream file(instance_.status_file);
        std::stringstream text;
        text << file.rdbuf();
        auto status = openvpn::parse_status(text.str());
        if (!status) {
            // Most likely caught mid-rewrite: keep what we had, read again next cycle.
            spdlog::debug("{}: {}", instance_.status_file, status.error().message());
            return;
        }
        seen_ = version;
        sessions_ = sessions_of(instance_, status.value());
        last_refresh_ = unix_now();
        report_.fine("reading sessions");
    }

private:
    OpenVpnInstance instance_;
    Reporter report_;
    std::tuple<time_t, long, off_t, ino_t> seen_{};
    std::optional<std::vector<Session>> sessions_;
    std::optional<int64_t> last_refresh_; // unix seconds
};

} // namespace

Session to_session(const OpenVpnInstance& instance, const openvpn::StatusClient& client)
{
    Session s;
    // The client id is unique per server process; the start time tells two
    // server processes apart. Without one (status v1), the real address does.
    const std::string who =
        client.client_id ? std::to_string(*client.client_id) : client.common_name + "@" + client.real_address;
    s.id = session_id(instance.name, who, client.connected_since);
    s.user = instance.user_from == OpenVpnInstance::UserFrom::Username && !client.username.empty()
                 ? client.username
                 : client.common_name;
    s.instance = instance.name;
    s.interface = instance.interface;
    for (const auto* address : {&client.virtual_address, &client.virtual_ipv6})
        if (!address->empty()) s.addresses.push_back(*address);
    s.real_address = client.real_address;
    s.start = client.connected_since;
    s.source_upload_bytes = client.bytes_received;
    s.source_download_bytes = client.bytes_sent;
    return s;
}

std::unique_ptr<IdentitySource> make_openvpn_source(const OpenVpnInstance& instance)
{
    if (!instance.management.empty()) return std::make_unique<ManagementSource>(instance);
    return std::make_unique<StatusFileSource>(instance);
}

} // namespace vpnmeter
