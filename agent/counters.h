// Counter values as userspace sees them: per-CPU values summed, keyed by client.
#pragma once

#include <array>
#include <bit>
#include <compare>
#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <string>

#include <vpnmeter/bpf_types.h>

#include "flat_map.h"

namespace vpnmeter {

struct Count {
    uint64_t packets = 0;
    uint64_t bytes = 0;
    auto operator<=>(const Count&) const = default;
    Count& operator+=(const Count& other)
    {
        packets += other.packets;
        bytes += other.bytes;
        return *this;
    }
};

// Both directions, named from the client's side.
struct Traffic {
    Count upload;
    Count download;
    auto operator<=>(const Traffic&) const = default;
    Traffic& operator+=(const Traffic& other)
    {
        upload += other.upload;
        download += other.download;
        return *this;
    }
    // Sing-Box's counters have bytes only: either kind makes it non-empty.
    bool empty() const
    {
        return upload.packets == 0 && download.packets == 0 && upload.bytes == 0 && download.bytes == 0;
    }
};

struct InterfaceTraffic {
    InterfaceTraffic() = default;
    // dropped came later: {total, unattributed} still reads as it did.
    InterfaceTraffic(const Traffic& total, const Traffic& unattributed, const Traffic& dropped = {})
        : total(total), unattributed(unattributed), dropped(dropped)
    {
    }

    Traffic total;
    Traffic unattributed;
    Traffic dropped; // by enforcement; never a client's usage
    auto operator<=>(const InterfaceTraffic&) const = default;
};

// A client address on an interface: the key of vpnmeter_clients.
struct ClientKey {
    uint32_t ifindex = 0;
    uint8_t family = 0; // AF_INET or AF_INET6
    std::array<uint8_t, 16> addr{};

    // Ordered by ifindex, family, then the address bytes, compared as two
    // big-endian words (the same order as byte by byte, without a memcmp
    // call per comparison: every cycle sorts and merges 100,000s of keys).
    std::strong_ordering operator<=>(const ClientKey& other) const
    {
        if (auto c = ifindex <=> other.ifindex; c != 0) return c;
        if (auto c = family <=> other.family; c != 0) return c;
        if (auto c = addr_word(0) <=> other.addr_word(0); c != 0) return c;
        return addr_word(1) <=> other.addr_word(1);
    }
    bool operator==(const ClientKey&) const = default;

    static ClientKey from_bpf(const vpnmeter_client_key& key);
    vpnmeter_client_key to_bpf() const; // zeroed padding included
    // Parses "10.8.0.2" or "fd00::2". Throws std::invalid_argument.
    static ClientKey parse(uint32_t ifindex, const std::string& address);
    // IPv4 dotted quad or IPv6 in RFC 5952 form.
    std::string address() const;

private:
    uint64_t addr_word(int i) const
    {
        uint64_t word;
        std::memcpy(&word, addr.data() + 8 * i, sizeof word);
        if constexpr (std::endian::native == std::endian::little) word = __builtin_bswap64(word);
        return word;
    }
};

// Sums one entry's per-CPU values (the kernel keeps one copy per possible CPU).
Traffic sum_per_cpu(std::span<const vpnmeter_client_counters> per_cpu);
InterfaceTraffic sum_per_cpu(std::span<const vpnmeter_iface_counters> per_cpu);

// For hash tables keyed by client address.
struct ClientKeyHash {
    size_t operator()(const ClientKey& key) const noexcept;
};

// Per-client values in key order (flat: 100,000s of entries every cycle).
using ClientTraffic = FlatMap<ClientKey, Traffic>;

// Everything read from the maps at one moment. Raw, monotonic values.
struct CounterSnapshot {
    ClientTraffic clients;
    std::map<uint32_t, InterfaceTraffic> interfaces;
};

// What was counted since `before`. Counters only grow, so an entry with any
// field smaller than before was reset (map recreated, reboot): all of `now`
// is new traffic, never a negative delta.
Traffic delta(const Traffic& now, const Traffic& before);
InterfaceTraffic delta(const InterfaceTraffic& now, const InterfaceTraffic& before);

} // namespace vpnmeter

// The map layouts are ABI with the kernel side and with pinned maps left by
// earlier daemon versions: a size change must be deliberate.
static_assert(sizeof(vpnmeter_client_key) == 24);
static_assert(sizeof(vpnmeter_client_counters) == 32);
static_assert(sizeof(vpnmeter_iface_counters) == 96);
static_assert(sizeof(vpnmeter_link) == 24);
static_assert(sizeof(vpnmeter_policy) == 32);
static_assert(sizeof(vpnmeter_budget) == 32);
static_assert(sizeof(vpnmeter_policer) == 24);
static_assert(sizeof(vpnmeter_client_drops) == 96);
static_assert(sizeof(vpnmeter_policy_state) == 8);
