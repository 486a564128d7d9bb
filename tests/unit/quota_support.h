// Helpers for tests that drive a QuotaController.
#pragma once

#include <string>

#include "quota_controller.h"

namespace vpnmeter::testing {

// PUT .../quota as the random tests make one: a top-up of `topup_bytes`,
// or else an expiry at `expires`. Returns the HTTP status.
inline int put_topup_or_expiry(QuotaController& quotas, const std::string& user, bool topup, uint64_t topup_bytes,
                               int64_t expires, int64_t now)
{
    const std::string body = topup ? R"({"topup_bytes": )" + std::to_string(topup_bytes) + "}"
                                   : R"({"expires": )" + std::to_string(expires) + "}";
    return quotas.put_quota(user, body, now).status;
}

} // namespace vpnmeter::testing
