#include "singbox/users_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "unique_fd.h"

namespace vpnmeter::singbox {

using Json = nlohmann::ordered_json; // keeps the operator's key order

namespace {

// Where user lists live in one inbound, and the key naming the user.
struct UserList {
    const char* path; // as recorded in the sidecar
    const char* name_key;
};
constexpr UserList kLists[] = {{"users", "name"}, {"settings.clients", "email"}};

Json* list_in(Json& inbound, std::string_view path)
{
    Json* at = &inbound;
    for (size_t start = 0;;) {
        const size_t dot = path.find('.', start);
        const std::string part(path.substr(start, dot - start));
        if (!at->is_object() || !at->contains(part)) return nullptr;
        at = &(*at)[part];
        if (dot == std::string_view::npos) break;
        start = dot + 1;
    }
    return at->is_array() ? at : nullptr;
}

Result<std::string> read_text(const std::string& path)
{
    std::ifstream in(path);
    if (!in) return os_error("read " + path);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

Result<Json> read_json(const std::string& path, bool missing_is_empty)
{
    auto text = read_text(path);
    if (!text) {
        if (missing_is_empty && text.error().code == ENOENT) return Json::object();
        return text.error();
    }
    Json json = Json::parse(*text, nullptr, false, true);
    if (json.is_discarded() || !json.is_object()) return Error{path + ": not a JSON object"};
    return json;
}

// The inbound's tag, or its index when it has none.
Json inbound_id(const Json& inbound, size_t index)
{
    if (inbound.is_object() && inbound.contains("tag") && inbound["tag"].is_string()) return inbound["tag"];
    return index;
}

bool has_user(const Json& list, const char* name_key, const std::string& user)
{
    for (const auto& entry : list)
        if (entry.is_object() && entry.value(name_key, std::string()) == user) return true;
    return false;
}

} // namespace

Status write_file_atomically(const std::string& path, const std::string& content, bool backup)
{
    struct stat old {};
    const bool exists = ::stat(path.c_str(), &old) == 0;
    if (backup && exists) {
        auto text = read_text(path);
        if (!text) return text.error();
        if (auto saved = write_file_atomically(path + ".bak", *text, false); !saved) return saved;
    }
    const std::string tmp = path + ".vpnmeter-tmp";
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, exists ? old.st_mode & 07777 : 0600));
    if (!fd.valid()) return os_error("create " + tmp);
    if (exists && (::fchmod(fd.get(), old.st_mode & 07777) != 0 || ::fchown(fd.get(), old.st_uid, old.st_gid) != 0))
        return os_error("keep the mode and owner of " + path);
    for (size_t done = 0; done < content.size();) {
        const ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return os_error("write " + tmp);
        done += static_cast<size_t>(n);
    }
    if (::fsync(fd.get()) != 0) return os_error("fsync " + tmp);
    if (::rename(tmp.c_str(), path.c_str()) != 0) return os_error("rename " + tmp + " to " + path);
    const std::string dir = path.substr(0, std::max<size_t>(path.rfind('/'), 1));
    if (UniqueFd dirfd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)); dirfd.valid()) ::fsync(dirfd.get());
    return ok();
}

Result<std::set<std::string>> UsersFile::blocked() const
{
    auto config = read_json(path_, false);
    if (!config) return config.error();
    auto sidecar = read_json(sidecar_path(), true);
    if (!sidecar) return sidecar.error();
    std::set<std::string> present;
    for (auto& inbound : (*config)["inbounds"].is_array() ? (*config)["inbounds"] : Json::array())
        for (const auto& list : kLists)
            if (Json* users = list_in(inbound, list.path))
                for (const auto& entry : *users)
                    if (entry.is_object() && entry.contains(list.name_key) && entry[list.name_key].is_string())
                        present.insert(entry[list.name_key].get<std::string>());
    std::set<std::string> blocked;
    for (const auto& removed : sidecar->value("removed", Json::array()))
        if (removed.contains("user") && removed["user"].is_string() &&
            !present.contains(removed["user"].get<std::string>()))
            blocked.insert(removed["user"].get<std::string>());
    return blocked;
}

Result<bool> UsersFile::block(const std::string& user) const
{
    auto config = read_json(path_, false);
    if (!config) return config.error();
    auto sidecar = read_json(sidecar_path(), true);
    if (!sidecar) return sidecar.error();
    Json& removed = (*sidecar)["removed"];
    if (!removed.is_array()) removed = Json::array();

    bool found = false;
    Json& inbounds = (*config)["inbounds"];
    if (!inbounds.is_array()) return Error{path_ + ": no \"inbounds\" list"};
    for (size_t i = 0; i < inbounds.size(); ++i) {
        for (const auto& list : kLists) {
            Json* users = list_in(inbounds[i], list.path);
            if (!users) continue;
            for (size_t j = 0; j < users->size();) {
                const Json& entry = (*users)[j];
                if (!entry.is_object() || entry.value(list.name_key, std::string()) != user) {
                    ++j;
                    continue;
                }
                // Replace an older copy rather than keeping two.
                for (auto it = removed.begin(); it != removed.end();)
                    it = (*it)["user"] == user && (*it)["inbound"] == inbound_id(inbounds[i], i) && (*it)["list"] == list.path
                             ? removed.erase(it)
                             : it + 1;
                removed.push_back(Json{{"user", user}, {"inbound", inbound_id(inbounds[i], i)}, {"list", list.path},
                                       {"entry", entry}});
                users->erase(j);
                found = true;
            }
        }
    }
    if (!found) return false;
    if (auto saved = write_file_atomically(sidecar_path(), sidecar->dump(2) + "\n", false); !saved) return saved.error();
    if (auto saved = write_file_atomically(path_, config->dump(2) + "\n", true); !saved) return saved.error();
    return true;
}

Result<bool> UsersFile::unblock(const std::string& user) const
{
    auto sidecar = read_json(sidecar_path(), true);
    if (!sidecar) return sidecar.error();
    Json& removed = (*sidecar)["removed"];
    if (!removed.is_array() || removed.empty()) return false;
    auto config = read_json(path_, false);
    if (!config) return config.error();
    Json& inbounds = (*config)["inbounds"];
    if (!inbounds.is_array()) return Error{path_ + ": no \"inbounds\" list"};

    bool mine = false, config_changed = false;
    for (auto it = removed.begin(); it != removed.end();) {
        if ((*it)["user"] != user) {
            ++it;
            continue;
        }
        mine = true;
        const std::string list_path = it->value("list", std::string());
        const auto* list = std::find_if(std::begin(kLists), std::end(kLists),
                                        [&](const UserList& l) { return list_path == l.path; });
        for (size_t i = 0; i < inbounds.size() && list != std::end(kLists); ++i) {
            if (inbound_id(inbounds[i], i) != (*it)["inbound"]) continue;
            Json* users = list_in(inbounds[i], list->path);
            if (users && !has_user(*users, list->name_key, user)) {
                users->push_back((*it)["entry"]);
                config_changed = true;
            }
            break;
        }
        it = removed.erase(it); // an inbound that is gone takes the entry with it
    }
    if (!mine) return false;
    if (config_changed)
        if (auto saved = write_file_atomically(path_, config->dump(2) + "\n", true); !saved) return saved.error();
    if (auto saved = write_file_atomically(sidecar_path(), sidecar->dump(2) + "\n", false); !saved) return saved.error();
    return true;
}

} // namespace vpnmeter::singbox
