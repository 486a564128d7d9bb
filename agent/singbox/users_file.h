// Blocking Sing-Box users by editing the server's JSON config: a blocked
// user's entry is taken out of every inbound's user list (sing-box:
// inbounds[].users[] by "name"; V2Ray/Xray: inbounds[].settings.clients[] by
// "email") and kept in a sidecar file, <config>.vpnmeter-blocked.json, from
// which it is put back when the user may connect again.
//
// Every write is atomic (a temporary file, fsync, rename): the server never
// reads half a file. The config's previous version is kept as <config>.bak.
// The sidecar is written before the config when blocking and after it when
// unblocking, so a crash in between leaves an entry in both places, never
// in neither; both operations skip what is already done.
#pragma once

#include <set>
#include <string>

#include "result.h"

namespace vpnmeter::singbox {

class UsersFile {
public:
    explicit UsersFile(std::string path) : path_(std::move(path)) {}

    // Users blocked now: in the sidecar and absent from the config.
    Result<std::set<std::string>> blocked() const;
    // false: the user is in no user list (nothing changed).
    Result<bool> block(const std::string& user) const;
    // false: the sidecar had nothing of the user's (nothing changed).
    Result<bool> unblock(const std::string& user) const;

    const std::string& path() const { return path_; }
    std::string sidecar_path() const { return path_ + ".vpnmeter-blocked.json"; }

private:
    std::string path_;
};

// Writes `content` to `path` through a temporary file in the same directory
// and rename(2), keeping the mode and owner of the file it replaces.
// `backup`: the replaced file is first copied to <path>.bak.
Status write_file_atomically(const std::string& path, const std::string& content, bool backup);

} // namespace vpnmeter::singbox
