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
#include <linux/bpf.h> /* struct bpf_spin_lock */
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
 * (not IP, truncated, or the client map was full); dropped the ones the
 * enforcement dropped (never counted for the client). For every interface:
 * sum(clients) + unattributed + dropped == total.
 */
struct vpnmeter_iface_counters {
	struct vpnmeter_count total[VPNMETER_DIRECTIONS];
	struct vpnmeter_count unattributed[VPNMETER_DIRECTIONS];
	struct vpnmeter_count dropped[VPNMETER_DIRECTIONS];
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
/* We made the HTB root qdisc (handle VPNMETER_HTB_MAJOR:) for shaping: remove it on detach. */
#define VPNMETER_LINK_CREATED_HTB (1U << 4)

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

/* ------------------------------------------------------------------ enforcement
 *
 * Written by the agent (the quota engine decides, the Enforcer writes), read
 * by the datapath; see bpf/policy.bpf.h for what the kernel does with them.
 */

/* Users with a budget or a policer: capacity of vpnmeter_budgets and vpnmeter_policers. */
#define VPNMETER_MAX_USERS 65536
/* Handle major of the HTB root qdisc the agent creates for shaping ("vp"). */
#define VPNMETER_HTB_MAJOR 0x7670

/* Flags of struct vpnmeter_policy. */
#define VPNMETER_POLICY_BLOCK (1U << 0)           /* drop every packet, both directions */
#define VPNMETER_POLICY_BUDGET_UPLOAD (1U << 1)   /* upload draws on the user's budget */
#define VPNMETER_POLICY_BUDGET_DOWNLOAD (1U << 2) /* download draws on the user's budget */
#define VPNMETER_POLICY_SHAPED (1U << 3)          /* download: skb->priority = classid */
#define VPNMETER_POLICY_POLICED (1U << 4)         /* upload: the user's token bucket at rate_bps */
#define VPNMETER_POLICY_BUDGET (VPNMETER_POLICY_BUDGET_UPLOAD | VPNMETER_POLICY_BUDGET_DOWNLOAD)

/*
 * Value of vpnmeter_policy (hash, same key as vpnmeter_clients). A client
 * without an entry is only counted. user_slot indexes vpnmeter_budgets and
 * vpnmeter_policers: every address of one user shares its budget and bucket.
 */
struct vpnmeter_policy {
	__u32 flags;
	__u32 user_slot;   /* BUDGET_* and POLICED: < VPNMETER_MAX_USERS */
	__u32 classid;     /* SHAPED: HTB class, major << 16 | minor */
	__u32 reserved;    /* zero */
	__u64 rate_bps;    /* POLICED: upload rate, bits per second */
	__u64 burst_bytes; /* POLICED: bucket depth */
};

/* What happens once a budget is used up (vpnmeter_budget.exhausted_action). */
#define VPNMETER_EXHAUSTED_BLOCK 0    /* drop, reason quota */
#define VPNMETER_EXHAUSTED_THROTTLE 1 /* download into exhausted_classid, upload policed */

/*
 * Value of vpnmeter_budgets (array indexed by user slot). The datapath
 * subtracts every passing packet's bytes (atomically, shared by all CPUs and
 * all the user's addresses) in the directions its policy names; a packet
 * passes while remaining_bytes > 0 before it, so at most one packet per CPU
 * overshoots. At <= 0 the exhausted action applies at once.
 */
struct vpnmeter_budget {
	__s64 remaining_bytes;
	__u32 exhausted_action;       /* VPNMETER_EXHAUSTED_* */
	__u32 exhausted_classid;      /* THROTTLE: download class, 0 for none */
	__u64 exhausted_rate_bps;     /* THROTTLE: upload rate, 0 for no policing */
	__u64 exhausted_burst_bytes;  /* THROTTLE: bucket depth */
};

/*
 * Value of vpnmeter_policers (array indexed by user slot), the upload token
 * bucket, written by the datapath only (the agent zeroes it to reset). The
 * credit is kept as time: nanoseconds of transmission at the current rate,
 * so a packet costs bytes * 8e9 / rate and the refill is the time elapsed,
 * with no fractions lost at low rates. A packet passes while the credit is
 * positive and is charged in full (the credit may go negative: a debt the
 * next packets wait out). One bucket per user shared by all CPUs under the
 * lock: exact, where per-CPU buckets would pass up to (CPUs x rate) when a
 * user's flows spread over CPUs.
 */
struct vpnmeter_policer {
	struct bpf_spin_lock lock;
	__u32 reserved;
	__s64 credit_ns; /* <= the burst's worth; >= minus one packet's */
	__u64 last_ns;   /* bpf_ktime_get_ns() of the last packet; 0: never (full bucket) */
};

/* Why a packet was dropped: the first index of struct vpnmeter_client_drops. */
enum vpnmeter_drop_reason {
	VPNMETER_DROP_BLOCK = 0,   /* VPNMETER_POLICY_BLOCK */
	VPNMETER_DROP_QUOTA = 1,   /* budget used up, exhausted action block */
	VPNMETER_DROP_POLICER = 2, /* over the upload rate */
	VPNMETER_DROP_REASONS = 3,
};

/* Per-CPU value of vpnmeter_drops (hash, same key as vpnmeter_clients). */
struct vpnmeter_client_drops {
	struct vpnmeter_count reason[VPNMETER_DROP_REASONS][VPNMETER_DIRECTIONS];
};

/*
 * The one entry of vpnmeter_policy_state (array): active is non-zero while
 * any policy may exist, so that traffic pays for the policy lookup only
 * then. Set by the agent before it adds a policy.
 */
struct vpnmeter_policy_state {
	__u32 active;
	__u32 reserved;
};
