// OpenVPN as an identity source: the management interface, or a status file.
#pragma once

#include <memory>

#include "config.h"
#include "identity_source.h"
#include "openvpn/status.h"

namespace vpnmeter {

// Management interface when configured, else the status file.
std::unique_ptr<IdentitySource> make_openvpn_source(const OpenVpnInstance& instance);

// A CLIENT_LIST row as a session of `instance`.
Session to_session(const OpenVpnInstance& instance, const openvpn::StatusClient& client);

} // namespace vpnmeter
