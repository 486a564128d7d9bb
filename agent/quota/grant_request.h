// The body of PUT /v1/users/{user}/quota, applied to a user's grant. Pure:
// no locks, no store, so the API's one request-body parser can be tested
// and fuzzed on its own.
#pragma once

#include <cstdint>
#include <string>

#include "quota/engine.h"
#include "result.h"

namespace vpnmeter {

// {"plan": "small"} | {"limit_bytes": N} | {"topup_bytes": N} |
// {"expires": "2026-12-31T23:59:59Z"}, any combination, applied to `grant`.
// Checked whole first: on any bad field the Error (the 400's message) is
// returned and nothing is applied.
Result<Grant> apply_grant_request(const QuotaConfig& config, const std::string& user, Grant grant,
                                  const std::string& body, int64_t now);

} // namespace vpnmeter
