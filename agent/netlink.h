// Owners for libnl objects.
#pragma once

#include <memory>

#include <netlink/cache.h>
#include <netlink/socket.h>

#include "result.h"

namespace vpnmeter {

struct NlSocketDeleter {
    void operator()(nl_sock* sock) const { nl_socket_free(sock); }
};
struct NlCacheDeleter {
    void operator()(nl_cache* cache) const { nl_cache_free(cache); }
};
using NlSocket = std::unique_ptr<nl_sock, NlSocketDeleter>;
using NlCache = std::unique_ptr<nl_cache, NlCacheDeleter>;

// A connected NETLINK_ROUTE socket.
Result<NlSocket> open_route_socket();

// libnl reports its own error codes (negative NLE_*), not errno.
Error nl_error(std::string context, int nl_err);

} // namespace vpnmeter
