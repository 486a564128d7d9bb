/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Reading a packet at tc: the client address, and the size on the device. */
#pragma once

#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <vpnmeter/bpf_types.h>

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
/* More than any L2 header we meter (Ethernet, VLAN tags) in front of IP. */
#define MAX_L2_LEN 64

extern void *bpf_cast_to_kern_ctx(void *ctx) __ksym;

/**
 * network_offset() - bytes from skb->data to the IP header.
 *
 * At tc, skb->data is the MAC header in both directions: 0 on tun (no L2
 * header), 14 on Ethernet. Read from the kernel's sk_buff, so one program
 * serves both kinds of device.
 *
 * Return: the offset, or -1 when it is implausible (header not set).
 */
static __always_inline int network_offset(struct __sk_buff *ctx)
{
	struct sk_buff *skb = bpf_cast_to_kern_ctx(ctx);
	int offset = (int)skb->network_header - (int)skb->mac_header;

	return offset >= 0 && offset <= MAX_L2_LEN ? offset : -1;
}

/**
 * load_address() - copy @len bytes at @offset past the IP header into @to.
 *
 * Straight from the packet when the bytes are in its linear part (the
 * common case, no helper call); otherwise through the helper, which reads
 * from the kernel's network header whatever skb->data is, and fails cleanly
 * (-EFAULT) when the bytes are not in the linear part.
 * @to must be 8-aligned.
 */
static __always_inline bool load_address(struct __sk_buff *skb, int l3, __u32 offset,
					 void *to, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (l3 >= 0) {
		__u8 *at = data + l3 + offset;

		/*
		 * Word loads, not a byte-wise memcpy: the verifier allows
		 * unaligned packet loads where the CPU does them (x86,
		 * arm64). @to must be 8-aligned (it is checked on the stack).
		 */
		if (len == 4 && (void *)(at + 4) <= data_end) {
			*(__u32 *)to = *(__u32 *)at;
			return true;
		}
		if (len == 16 && (void *)(at + 16) <= data_end) {
			((__u64 *)to)[0] = ((__u64 *)at)[0];
			((__u64 *)to)[1] = ((__u64 *)at)[1];
			return true;
		}
	}
	return !bpf_skb_load_bytes_relative(skb, offset, to, len, BPF_HDR_START_NET);
}

/**
 * load_byte() - the byte at @offset past the IP header, as load_address().
 */
static __always_inline bool load_byte(struct __sk_buff *skb, int l3, __u32 offset, __u8 *to)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (l3 >= 0 && offset <= 255) {
		__u8 *at = data + l3 + offset;

		if ((void *)(at + 1) <= data_end) {
			*to = *at;
			return true;
		}
	}
	return !bpf_skb_load_bytes_relative(skb, offset, to, 1, BPF_HDR_START_NET);
}

/**
 * client_key_of() - fill @key with the client's side of @skb.
 * @dir: VPNMETER_UPLOAD takes the source address, VPNMETER_DOWNLOAD the
 *       destination.
 * @l3:  network_offset(), or -1 to use the helper only.
 *
 * The L3 protocol comes from skb->protocol, never from an Ethernet header,
 * since tun devices have none.
 *
 * Return: false when the packet is not IP or too short to hold the address.
 */
static __always_inline bool client_key_of(struct __sk_buff *skb, int dir, int l3, __u32 ifindex,
					  struct vpnmeter_client_key *key)
{
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (!load_address(skb, l3,
				  dir == VPNMETER_UPLOAD ? offsetof(struct iphdr, saddr)
							 : offsetof(struct iphdr, daddr),
				  key->addr, 4))
			return false;
		key->family = AF_INET;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (!load_address(skb, l3,
				  dir == VPNMETER_UPLOAD ? offsetof(struct ipv6hdr, saddr)
							 : offsetof(struct ipv6hdr, daddr),
				  key->addr, 16))
			return false;
		key->family = AF_INET6;
	} else {
		return false;
	}
	key->ifindex = ifindex;
	return true;
}

/**
 * segment_headers() - bytes of headers each extra GSO segment will carry:
 * the L2 header, the IP header and the TCP or UDP header, as the kernel's
 * own qdisc_pkt_len_init() reckons it.
 *
 * Return: the header length, or 0 when the packet cannot be read.
 */
static __always_inline __u32 segment_headers(struct __sk_buff *skb, int l3)
{
	__u32 l3_len, l4_len = 0;
	__u8 proto, byte;

	if (l3 < 0)
		return 0;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		if (!load_byte(skb, l3, 0, &byte) ||
		    !load_byte(skb, l3, offsetof(struct iphdr, protocol), &proto))
			return 0;
		l3_len = (byte & 0x0f) * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		if (!load_byte(skb, l3, offsetof(struct ipv6hdr, nexthdr), &proto))
			return 0;
		l3_len = sizeof(struct ipv6hdr);
	} else {
		return 0;
	}
	if (proto == IPPROTO_TCP) {
		/* data offset: the high nibble of byte 12, in 32-bit words */
		if (!load_byte(skb, l3, l3_len + 12, &byte))
			return 0;
		l4_len = (byte >> 4) * 4;
	} else if (proto == IPPROTO_UDP) {
		l4_len = sizeof(struct udphdr);
	}
	return l3 + l3_len + l4_len;
}
