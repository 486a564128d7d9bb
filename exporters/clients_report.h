// The `vpnmeter clients` report: live counters per interface and client.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "counters.h"

namespace vpnmeter {

// ifindex -> interface name, for every ifindex the snapshot mentions.
using InterfaceNames = std::map<uint32_t, std::string>;

// {"interfaces":[{name, upload_bytes, ...}], "clients":[{interface, address, ...}]}
nlohmann::json clients_json(const CounterSnapshot& snapshot, const InterfaceNames& names);
// The same as aligned text tables with human units.
// exact: integers instead of human units (--bytes).
std::string clients_table(const CounterSnapshot& snapshot, const InterfaceNames& names, bool exact = false);

} // namespace vpnmeter
