// `vpnmeter sessions` and `vpnmeter usage`: reports from the store.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "session.h"
#include "store/store.h"

namespace vpnmeter {

// {"sessions":[{id, user, instance, interface, addresses, real_address, start,
//   end|null, upload_bytes, download_bytes, ...}], "unattributed":[{interface, ...}]}
nlohmann::json session_json(const Session& session);
nlohmann::json sessions_json(const std::vector<Session>& sessions, const std::vector<UnattributedUsage>& unattributed);
// exact_bytes: integers instead of human units (--bytes).
std::string sessions_table(const std::vector<Session>& sessions, const std::vector<UnattributedUsage>& unattributed,
                           bool exact_bytes = false);
std::string sessions_csv(const std::vector<Session>& sessions);

// {"user", "buckets":[{start, upload_bytes, download_bytes, ...}], "upload_bytes", "download_bytes"}
nlohmann::json usage_json(const std::string& user, const std::vector<UsageBucket>& buckets);
std::string usage_table(const std::string& user, const std::vector<UsageBucket>& buckets, bool exact_bytes = false);
std::string usage_csv(const std::string& user, const std::vector<UsageBucket>& buckets);

} // namespace vpnmeter
