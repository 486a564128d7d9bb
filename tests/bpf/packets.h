// Crafting Ethernet frames for BPF_PROG_TEST_RUN.
//
// A tc test run expects an Ethernet frame: the kernel runs eth_type_trans()
// on it, so skb->protocol comes from the ethertype and the network header
// starts 14 bytes in; skb->len, what the programs count, is the whole frame.
#pragma once

#include <arpa/inet.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace vpnmeter::test {

using Frame = std::vector<uint8_t>;

inline constexpr size_t kEthHeader = 14;
inline constexpr size_t kIpv4Header = 20;
inline constexpr size_t kIpv6Header = 40;
inline constexpr size_t kUdpHeader = 8;
inline constexpr size_t kIpv4UdpMin = kEthHeader + kIpv4Header + kUdpHeader; // 42
inline constexpr size_t kIpv6UdpMin = kEthHeader + kIpv6Header + kUdpHeader; // 62

inline constexpr uint16_t kEthIpv4 = 0x0800;
inline constexpr uint16_t kEthArp = 0x0806;
inline constexpr uint16_t kEthIpv6 = 0x86DD;

namespace detail {

inline void put16(Frame& f, size_t at, uint16_t v)
{
    f.at(at) = static_cast<uint8_t>(v >> 8);
    f.at(at + 1) = static_cast<uint8_t>(v);
}

template <size_t N>
void put_bytes(Frame& f, size_t at, const std::array<uint8_t, N>& bytes)
{
    for (size_t i = 0; i < N; ++i) f.at(at + i) = bytes[i];
}

inline std::array<uint8_t, 4> ipv4(const std::string& text)
{
    std::array<uint8_t, 4> out{};
    if (inet_pton(AF_INET, text.c_str(), out.data()) != 1) throw std::invalid_argument("not IPv4: " + text);
    return out;
}

inline std::array<uint8_t, 16> ipv6(const std::string& text)
{
    std::array<uint8_t, 16> out{};
    if (inet_pton(AF_INET6, text.c_str(), out.data()) != 1) throw std::invalid_argument("not IPv6: " + text);
    return out;
}

// One's complement sum of 16-bit big-endian words.
inline uint32_t sum16(const uint8_t* p, size_t n, uint32_t acc = 0)
{
    for (size_t i = 0; i + 1 < n; i += 2) acc += static_cast<uint32_t>(p[i] << 8 | p[i + 1]);
    if (n % 2) acc += static_cast<uint32_t>(p[n - 1] << 8);
    return acc;
}

inline uint16_t fold(uint32_t acc)
{
    while (acc >> 16) acc = (acc & 0xffff) + (acc >> 16);
    return static_cast<uint16_t>(~acc);
}

// Ethernet header (locally administered MACs) and a recognisable filler.
inline Frame ethernet_frame(uint16_t ethertype, size_t frame_len)
{
    if (frame_len < kEthHeader) throw std::invalid_argument("frame shorter than an Ethernet header");
    Frame f(frame_len);
    for (size_t i = kEthHeader; i < frame_len; ++i) f[i] = static_cast<uint8_t>(0xa0 + i % 32);
    put_bytes<6>(f, 0, {0x02, 0x00, 0x00, 0x00, 0x00, 0x01});
    put_bytes<6>(f, 6, {0x02, 0x00, 0x00, 0x00, 0x00, 0x02});
    put16(f, 12, ethertype);
    return f;
}

} // namespace detail

// A frame of frame_len bytes with this ethertype and arbitrary content.
inline Frame ethernet(uint16_t ethertype, size_t frame_len) { return detail::ethernet_frame(ethertype, frame_len); }

// Ethernet + IPv4 + UDP, frame_len bytes in all (>= 42), valid checksums.
inline Frame ipv4_udp(const std::string& src, const std::string& dst, size_t frame_len)
{
    if (frame_len < kIpv4UdpMin) throw std::invalid_argument("IPv4/UDP frame needs at least 42 bytes");
    Frame f = detail::ethernet_frame(kEthIpv4, frame_len);
    const size_t ip = kEthHeader, udp = ip + kIpv4Header;
    const auto ip_len = static_cast<uint16_t>(frame_len - ip);
    const auto udp_len = static_cast<uint16_t>(frame_len - udp);
    f[ip] = 0x45; // version 4, IHL 5
    f[ip + 1] = 0;
    detail::put16(f, ip + 2, ip_len);
    detail::put16(f, ip + 4, 0x1234); // id
    detail::put16(f, ip + 6, 0x4000); // DF
    f[ip + 8] = 64;                    // TTL
    f[ip + 9] = 17;                    // UDP
    detail::put16(f, ip + 10, 0);
    detail::put_bytes(f, ip + 12, detail::ipv4(src));
    detail::put_bytes(f, ip + 16, detail::ipv4(dst));
    detail::put16(f, ip + 10, detail::fold(detail::sum16(&f[ip], kIpv4Header)));
    detail::put16(f, udp, 40000);
    detail::put16(f, udp + 2, 1194);
    detail::put16(f, udp + 4, udp_len);
    detail::put16(f, udp + 6, 0); // optional over IPv4
    return f;
}

// Ethernet + IPv6 + UDP, frame_len bytes in all (>= 62), valid UDP checksum.
inline Frame ipv6_udp(const std::string& src, const std::string& dst, size_t frame_len)
{
    if (frame_len < kIpv6UdpMin) throw std::invalid_argument("IPv6/UDP frame needs at least 62 bytes");
    Frame f = detail::ethernet_frame(kEthIpv6, frame_len);
    const size_t ip = kEthHeader, udp = ip + kIpv6Header;
    const auto udp_len = static_cast<uint16_t>(frame_len - udp);
    f[ip] = 0x60; // version 6
    f[ip + 1] = f[ip + 2] = f[ip + 3] = 0;
    detail::put16(f, ip + 4, udp_len); // payload length
    f[ip + 6] = 17;                    // next header: UDP
    f[ip + 7] = 64;                    // hop limit
    detail::put_bytes(f, ip + 8, detail::ipv6(src));
    detail::put_bytes(f, ip + 24, detail::ipv6(dst));
    detail::put16(f, udp, 40000);
    detail::put16(f, udp + 2, 1194);
    detail::put16(f, udp + 4, udp_len);
    detail::put16(f, udp + 6, 0);
    uint32_t acc = detail::sum16(&f[ip + 8], 32); // pseudo header: addresses,
    acc += udp_len + 17;                          // length, next header
    uint16_t sum = detail::fold(detail::sum16(&f[udp], udp_len, acc));
    detail::put16(f, udp + 6, sum ? sum : 0xffff);
    return f;
}

// An ARP request (ethertype 0x0806) padded to frame_len (>= 42): IP
// addresses inside, yet no IP packet.
inline Frame arp_request(const std::string& sender, const std::string& target, size_t frame_len = 60)
{
    if (frame_len < kEthHeader + 28) throw std::invalid_argument("ARP frame needs at least 42 bytes");
    Frame f = detail::ethernet_frame(kEthArp, frame_len);
    detail::put_bytes<6>(f, 0, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff});
    const size_t arp = kEthHeader;
    detail::put16(f, arp, 1);           // Ethernet
    detail::put16(f, arp + 2, kEthIpv4); // IPv4
    f[arp + 4] = 6;
    f[arp + 5] = 4;
    detail::put16(f, arp + 6, 1); // request
    detail::put_bytes<6>(f, arp + 8, {0x02, 0x00, 0x00, 0x00, 0x00, 0x02});
    detail::put_bytes(f, arp + 14, detail::ipv4(sender));
    detail::put_bytes<6>(f, arp + 18, {0, 0, 0, 0, 0, 0});
    detail::put_bytes(f, arp + 24, detail::ipv4(target));
    return f;
}

// The first len bytes of frame: what is left of a packet cut short.
inline Frame truncated(const Frame& frame, size_t len)
{
    if (len > frame.size()) throw std::invalid_argument("truncated() cannot lengthen a frame");
    return Frame(frame.begin(), frame.begin() + static_cast<std::ptrdiff_t>(len));
}

} // namespace vpnmeter::test
