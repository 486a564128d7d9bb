// Making sure the pin path lives on a bpf filesystem.
#pragma once

#include <string>

#include "result.h"

namespace vpnmeter {

bool on_bpffs(const std::string& path);

// Creates `pin_path` on a bpffs. When it is not on one (no bpffs mounted
// at /sys/fs/bpf, or inside `ip netns exec`, which remounts /sys), mounts a
// bpffs: at /sys/fs/bpf for paths below it, otherwise at pin_path itself.
Status ensure_bpffs_dir(const std::string& pin_path);

} // namespace vpnmeter
