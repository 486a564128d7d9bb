#include "netlink.h"

#include <netlink/errno.h>
#include <netlink/netlink.h>

namespace vpnmeter {

Error nl_error(std::string context, int nl_err)
{
    return Error{std::move(context) + ": " + nl_geterror(nl_err)};
}

Result<NlSocket> open_route_socket()
{
    NlSocket sock(nl_socket_alloc());
    if (!sock) return Error{"allocate netlink socket", ENOMEM};
    if (int err = nl_connect(sock.get(), NETLINK_ROUTE); err < 0) return nl_error("connect rtnetlink", err);
    return sock;
}

} // namespace vpnmeter
