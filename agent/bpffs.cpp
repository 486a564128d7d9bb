#include "bpffs.h"

#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include <filesystem>
#include <linux/magic.h>

namespace vpnmeter {
namespace {

constexpr const char* kDefaultBpffs = "/sys/fs/bpf";

// statfs of the path, or of its nearest existing ancestor.
bool nearest_on_bpffs(std::filesystem::path path)
{
    struct statfs fs{};
    while (statfs(path.c_str(), &fs) != 0) {
        if (errno != ENOENT || !path.has_parent_path() || path == path.parent_path()) return false;
        path = path.parent_path();
    }
    return fs.f_type == BPF_FS_MAGIC;
}

Status mount_bpffs(const std::string& target)
{
    std::error_code ec;
    std::filesystem::create_directories(target, ec);
    if (ec) return Error{"create mount point " + target + " for a bpffs", ec.value()};
    if (mount("bpf", target.c_str(), "bpf", 0, "mode=0700") != 0)
        return os_error("bpf.pin_path " + target +
                        " is not on a bpf filesystem and mounting one there failed (try `mount -t bpf bpf " +
                        target + "` as root)");
    return ok();
}

} // namespace

bool on_bpffs(const std::string& path) { return nearest_on_bpffs(path); }

Status ensure_bpffs_dir(const std::string& pin_path)
{
    if (!nearest_on_bpffs(pin_path)) {
        const std::string root = kDefaultBpffs;
        const bool below_default = pin_path.rfind(root + "/", 0) == 0;
        auto mounted = mount_bpffs(below_default ? root : pin_path);
        if (!mounted) return mounted;
    }
    std::error_code ec;
    std::filesystem::create_directories(pin_path, ec);
    if (ec) return Error{"create pin directory " + pin_path, ec.value()};
    return ok();
}

} // namespace vpnmeter
