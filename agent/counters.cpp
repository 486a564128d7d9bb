#include "counters.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <cstring>
#include <stdexcept>

namespace vpnmeter {
namespace {

Count to_count(const vpnmeter_count& c) { return {c.packets, c.bytes}; }

Traffic to_traffic(const vpnmeter_count (&dir)[VPNMETER_DIRECTIONS])
{
    return {to_count(dir[VPNMETER_UPLOAD]), to_count(dir[VPNMETER_DOWNLOAD])};
}

bool went_down(const Count& now, const Count& before)
{
    return now.packets < before.packets || now.bytes < before.bytes;
}

bool went_down(const Traffic& now, const Traffic& before)
{
    return went_down(now.upload, before.upload) || went_down(now.download, before.download);
}

Traffic subtract(const Traffic& now, const Traffic& before)
{
    return {{now.upload.packets - before.upload.packets, now.upload.bytes - before.upload.bytes},
            {now.download.packets - before.download.packets, now.download.bytes - before.download.bytes}};
}

} // namespace

ClientKey ClientKey::from_bpf(const vpnmeter_client_key& key)
{
    ClientKey out;
    out.ifindex = key.ifindex;
    out.family = key.family;
    std::memcpy(out.addr.data(), key.addr, sizeof key.addr);
    return out;
}

vpnmeter_client_key ClientKey::to_bpf() const
{
    vpnmeter_client_key key;
    std::memset(&key, 0, sizeof key);
    key.ifindex = ifindex;
    key.family = family;
    std::memcpy(key.addr, addr.data(), sizeof key.addr);
    return key;
}

ClientKey ClientKey::parse(uint32_t ifindex, const std::string& address)
{
    ClientKey key;
    key.ifindex = ifindex;
    if (inet_pton(AF_INET, address.c_str(), key.addr.data()) == 1) key.family = AF_INET;
    else if (inet_pton(AF_INET6, address.c_str(), key.addr.data()) == 1) key.family = AF_INET6;
    else throw std::invalid_argument("not an IPv4 or IPv6 address: '" + address + "'");
    return key;
}

std::string ClientKey::address() const
{
    char text[INET6_ADDRSTRLEN] = {};
    if (family == AF_INET || family == AF_INET6) inet_ntop(family, addr.data(), text, sizeof text);
    else return "family-" + std::to_string(family);
    return text;
}

size_t ClientKeyHash::operator()(const ClientKey& key) const noexcept
{
    uint64_t words[2];
    std::memcpy(words, key.addr.data(), sizeof words);
    // Multiply-xorshift: every input bit reaches the high bits that pick a bucket.
    uint64_t h = (uint64_t{key.ifindex} << 8 | key.family) * 0x9e3779b97f4a7c15ULL;
    for (uint64_t word : words) {
        h ^= word;
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    return static_cast<size_t>(h);
}

Traffic sum_per_cpu(std::span<const vpnmeter_client_counters> per_cpu)
{
    Traffic sum;
    for (const auto& cpu : per_cpu) sum += to_traffic(cpu.dir);
    return sum;
}

InterfaceTraffic sum_per_cpu(std::span<const vpnmeter_iface_counters> per_cpu)
{
    InterfaceTraffic sum;
    for (const auto& cpu : per_cpu) {
        sum.total += to_traffic(cpu.total);
        sum.unattributed += to_traffic(cpu.unattributed);
        sum.dropped += to_traffic(cpu.dropped);
    }
    return sum;
}

Traffic delta(const Traffic& now, const Traffic& before)
{
    return went_down(now, before) ? now : subtract(now, before);
}

InterfaceTraffic delta(const InterfaceTraffic& now, const InterfaceTraffic& before)
{
    // total, unattributed and dropped reset together (same map entry).
    if (went_down(now.total, before.total) || went_down(now.unattributed, before.unattributed) ||
        went_down(now.dropped, before.dropped))
        return now;
    return {subtract(now.total, before.total), subtract(now.unattributed, before.unattributed),
            subtract(now.dropped, before.dropped)};
}

} // namespace vpnmeter
