/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The one header shared by the BPF datapath and the C++ agent.
 *
 * Every struct here is a map key or value, so its layout is ABI between
 * the kernel side and userspace (and between daemon versions, because the
 * maps are pinned and outlive the process): fixed-width types, explicit
 * padding, sizes checked with static_assert on the C++ side.
 */
#pragma once

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define VPNMETER_DEFAULT_MAX_CLIENTS 65536
/*
 * Interfaces known to one agent (the attach registry), and the ifindex range
 * whose totals live in the per-CPU array (one inlined lookup per packet);
 * larger ifindexes use the vpnmeter_ifaces_more hash.
 */
#define VPNMETER_MAX_LINKS 4096
#define VPNMETER_IFNAMSIZ 16

/* Directions are named from the client's side. */
enum vpnmeter_direction {
	VPNMETER_UPLOAD = 0,   /* from the client: tc ingress of a server's tun */
	VPNMETER_DOWNLOAD = 1, /* to the client: tc egress */
	VPNMETER_DIRECTIONS = 2,
};

/* Key of vpnmeter_clients: one client address on one interface. */
struct vpnmeter_client_key {
	__u32 ifindex;
	__u8 family;   /* AF_INET (2) or AF_INET6 (10) */
	__u8 pad[3];   /* always zero: padding is part of the hash */
	__u8 addr[16]; /* IPv4 in the first 4 bytes, the rest zero */
};

struct vpnmeter_count {
	__u64 packets;
	__u64 bytes;
};

/* Per-CPU value of vpnmeter_clients. */
struct vpnmeter_client_counters {
	struct vpnmeter_count dir[VPNMETER_DIRECTIONS];
};

/*
 * Per-CPU value of vpnmeter_ifaces (array indexed by ifindex) and
 * vpnmeter_ifaces_more (hash keyed by ifindex >= VPNMETER_MAX_LINKS). total counts every
 * packet the program saw; unattributed the ones that went to no client
 * (not IP, truncated, or the client map was full). For every interface:
 * sum(clients) + unattributed == total.
 */
struct vpnmeter_iface_counters {
	struct vpnmeter_count total[VPNMETER_DIRECTIONS];
	struct vpnmeter_count unattributed[VPNMETER_DIRECTIONS];
};

/* Flags of struct vpnmeter_link. */
#define VPNMETER_LINK_CREATED_CLSACT (1U << 0) /* we made the qdisc: remove it on detach */
#define VPNMETER_LINK_INGRESS (1U << 1)
#define VPNMETER_LINK_EGRESS (1U << 2)
/*
 * The device has no TSO: the kernel cuts GSO packets into segments after
 * tc egress, and the device counts each segment with its own headers. The
 * datapath then counts what the device will: every segment, every header.
 */
#define VPNMETER_LINK_SEGMENTS (1U << 3)

/*
 * Value of vpnmeter_links, keyed by ifindex; written by the agent only.
 * The attach registry lives in bpffs beside the counters so that
 * `vpnmeterd --detach` (another process, maybe after a crash) knows what
 * this agent attached and created, and so reports can name an interface
 * that has since disappeared.
 */
struct vpnmeter_link {
	char name[VPNMETER_IFNAMSIZ];
	__u32 flags;
	__u32 reserved;
};
