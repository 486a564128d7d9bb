/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Finding the client address of a packet at tc. */
#pragma once

#include "vmlinux.h"
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <vpnmeter/bpf_types.h>

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define AF_INET 2
#define AF_INET6 10

/**
 * client_key_of() - fill @key with the client's side of @skb.
 * @dir: VPNMETER_UPLOAD takes the source address, VPNMETER_DOWNLOAD the
 *       destination.
 *
 * The L3 protocol comes from skb->protocol and the address is loaded
 * relative to the network header, so one program serves devices without an
 * L2 header (tun) and Ethernet devices (veth) alike.
 *
 * Return: false when the packet is not IP or too short to hold the address.
 */
static __always_inline bool client_key_of(struct __sk_buff *skb, int dir,
					  struct vpnmeter_client_key *key)
{
	__u32 offset;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		offset = dir == VPNMETER_UPLOAD ? offsetof(struct iphdr, saddr)
						: offsetof(struct iphdr, daddr);
		if (bpf_skb_load_bytes_relative(skb, offset, key->addr, 4,
						BPF_HDR_START_NET))
			return false;
		key->family = AF_INET;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		offset = dir == VPNMETER_UPLOAD ? offsetof(struct ipv6hdr, saddr)
						: offsetof(struct ipv6hdr, daddr);
		if (bpf_skb_load_bytes_relative(skb, offset, key->addr, 16,
						BPF_HDR_START_NET))
			return false;
		key->family = AF_INET6;
	} else {
		return false;
	}
	key->ifindex = skb->ifindex;
	return true;
}
