/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Enforcement: per-address policy, per-user byte budgets, upload policers.
 *
 * The mechanism only: which address gets which policy, and how big a
 * user's budget is, is decided in userspace (agent/enforcer.*). Here a
 * packet of a client with a policy is dropped (TC_ACT_SHOT, counted per
 * client and reason in vpnmeter_drops, never as usage), steered into an HTB
 * class (download, skb->priority), or passed.
 *
 * A client without a policy pays one inlined array load while no policy
 * exists at all (vpnmeter_policy_state), and one hash lookup otherwise.
 */
#pragma once

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <vpnmeter/bpf_types.h>

#include "counters.bpf.h"

#define TC_ACT_UNSPEC (-1)
#define TC_ACT_SHOT 2
#define NSEC_PER_SEC 1000000000ULL
/* Bound on a bucket's depth, so that depth * 8e9 cannot overflow. */
#define POLICER_MAX_BURST (1ULL << 30)

/* max_entries of the two hashes is set by the loader (bpf.max_clients). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, VPNMETER_DEFAULT_MAX_CLIENTS);
	__type(key, struct vpnmeter_client_key);
	__type(value, struct vpnmeter_policy);
} vpnmeter_policy SEC(".maps");

/* Mappable: the agent adds to a budget with an atomic add of its own. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, VPNMETER_MAX_USERS);
	__type(key, __u32);
	__type(value, struct vpnmeter_budget);
} vpnmeter_budgets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VPNMETER_MAX_USERS);
	__type(key, __u32);
	__type(value, struct vpnmeter_policer);
} vpnmeter_policers SEC(".maps");

/* Entries appear on a client's first drop only: no preallocation. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, VPNMETER_DEFAULT_MAX_CLIENTS);
	__type(key, struct vpnmeter_client_key);
	__type(value, struct vpnmeter_client_drops);
} vpnmeter_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vpnmeter_policy_state);
} vpnmeter_policy_state SEC(".maps");

/**
 * drop() - count @packets/@bytes as dropped for @key, for @reason.
 *
 * The interface's dropped total is counted by the caller (meter()).
 *
 * Return: TC_ACT_SHOT.
 */
static __always_inline int drop(const struct vpnmeter_client_key *key,
				int reason, int dir, __u32 packets, __u32 bytes)
{
	const struct vpnmeter_client_drops zero = {};
	struct vpnmeter_client_drops *drops =
	    bpf_map_lookup_elem(&vpnmeter_drops, key);

	if (!drops) {
		bpf_map_update_elem(&vpnmeter_drops, key, &zero, BPF_NOEXIST);
		drops = bpf_map_lookup_elem(&vpnmeter_drops, key);
	}
	if (drops && reason >= 0 && reason < VPNMETER_DROP_REASONS)
		count(&drops->reason[reason][dir & 1], packets, bytes);
	return TC_ACT_SHOT;
}

/**
 * police() - take @bytes from the token bucket of user @slot.
 * @rate_bps:    the rate; 0 polices nothing.
 * @burst_bytes: the bucket's depth.
 *
 * The credit is time (see struct vpnmeter_policer): refilled by the time
 * elapsed since the last packet, capped at the depth. A packet passes while
 * the credit is positive and is charged in full, which may leave a debt
 * that later packets wait out: the long-run rate is exact, and a GSO packet
 * larger than the bucket (veth, GRO: up to 64 KiB whole) is slowed to the
 * rate instead of never passing. The clock is read before the lock: no
 * calls are allowed while it is held.
 *
 * Return: true when the packet conforms.
 */
static __always_inline bool police(__u32 slot, __u64 rate_bps,
				   __u64 burst_bytes, __u32 bytes)
{
	struct vpnmeter_policer *bucket;
	__u64 now, cost, depth;
	__s64 credit;
	bool conforms;

	if (!rate_bps)
		return true;
	bucket = bpf_map_lookup_elem(&vpnmeter_policers, &slot);
	if (!bucket)
		return true;
	if (burst_bytes > POLICER_MAX_BURST)
		burst_bytes = POLICER_MAX_BURST;
	cost = (__u64)bytes * 8 * NSEC_PER_SEC / rate_bps;
	depth = burst_bytes * 8 * NSEC_PER_SEC / rate_bps;
	now = bpf_ktime_get_ns();

	bpf_spin_lock(&bucket->lock);
	if (!bucket->last_ns)
		credit = depth; /* a new (or reset) bucket is full */
	else if (now > bucket->last_ns)
		credit = bucket->credit_ns + (__s64)(now - bucket->last_ns);
	else /* another CPU stored a later clock */
		credit = bucket->credit_ns;
	if (credit > (__s64)depth)
		credit = depth;
	conforms = credit > 0;
	if (conforms)
		credit -= cost;
	bucket->credit_ns = credit;
	if (now > bucket->last_ns)
		bucket->last_ns = now;
	bpf_spin_unlock(&bucket->lock);
	return conforms;
}

/**
 * enforce_policy() - apply @policy, @key's, to this packet.
 * @packets_dir: packets << 1 | direction.
 *
 * Order: block; the budget's state picks the class and rate (exhausted:
 * drop, or the throttle's class and rate); the policer (upload); then the
 * packet, now known to pass, is taken from the budget. So dropped packets
 * never use budget. The check and the atomic subtraction are two steps:
 * CPUs racing on the last bytes may each pass one packet (the overshoot).
 *
 * Out of line: only packets of clients with a policy get here.
 *
 * Return: TC_ACT_UNSPEC (pass, maybe with skb->priority set) or TC_ACT_SHOT.
 */
static __noinline int enforce_policy(struct __sk_buff *skb,
				     const struct vpnmeter_client_key *key,
				     const struct vpnmeter_policy *policy,
				     __u32 packets_dir, __u32 bytes)
{
	/* Five arguments at most: packets and direction share one. */
	__u32 packets = packets_dir >> 1;
	int dir = packets_dir & 1;
	struct vpnmeter_budget *budget = NULL;
	__u32 flags, slot, classid;
	__u64 rate, burst;

	flags = policy->flags;
	if (flags & VPNMETER_POLICY_BLOCK)
		return drop(key, VPNMETER_DROP_BLOCK, dir, packets, bytes);
	slot = policy->user_slot;
	classid = flags & VPNMETER_POLICY_SHAPED ? policy->classid : 0;
	rate = flags & VPNMETER_POLICY_POLICED ? policy->rate_bps : 0;
	burst = policy->burst_bytes;

	if (flags & (dir == VPNMETER_UPLOAD ? VPNMETER_POLICY_BUDGET_UPLOAD
					    : VPNMETER_POLICY_BUDGET_DOWNLOAD))
		budget = bpf_map_lookup_elem(&vpnmeter_budgets, &slot);
	if (budget && *(volatile __s64 *)&budget->remaining_bytes <= 0) {
		if (budget->exhausted_action != VPNMETER_EXHAUSTED_THROTTLE)
			return drop(key, VPNMETER_DROP_QUOTA, dir, packets,
				    bytes);
		/* 0 keeps the policy's own class or rate. */
		if (budget->exhausted_classid)
			classid = budget->exhausted_classid;
		if (budget->exhausted_rate_bps) {
			rate = budget->exhausted_rate_bps;
			burst = budget->exhausted_burst_bytes;
		}
		budget = NULL; /* used up: nothing left to take */
	}

	if (dir == VPNMETER_UPLOAD && !police(slot, rate, burst, bytes))
		return drop(key, VPNMETER_DROP_POLICER, dir, packets, bytes);
	if (budget)
		__sync_fetch_and_add(&budget->remaining_bytes, -(__s64)bytes);
	if (dir == VPNMETER_DOWNLOAD && classid)
		skb->priority = classid;
	return TC_ACT_UNSPEC;
}

/**
 * enforce() - the verdict on a packet of client @key, of the size the
 * device counts (@packets, @bytes).
 *
 * While no policy exists anywhere, an inlined array load and a branch;
 * otherwise a hash lookup, and a call for clients with a policy.
 *
 * Return: TC_ACT_UNSPEC (pass) or TC_ACT_SHOT (dropped and counted as such
 * for the client; the caller counts it on the interface, not as usage).
 */
static __always_inline int enforce(struct __sk_buff *skb, int dir,
				   const struct vpnmeter_client_key *key,
				   __u32 packets, __u32 bytes)
{
	struct vpnmeter_policy_state *state;
	struct vpnmeter_policy *policy;
	__u32 zero = 0;

	state = bpf_map_lookup_elem(&vpnmeter_policy_state, &zero);
	if (!state || !state->active)
		return TC_ACT_UNSPEC;
	/* Inline: a client without a policy pays the lookup, not a call. */
	policy = bpf_map_lookup_elem(&vpnmeter_policy, key);
	if (!policy)
		return TC_ACT_UNSPEC;
	return enforce_policy(skb, key, policy, packets << 1 | (dir & 1),
			      bytes);
}
