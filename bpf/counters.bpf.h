/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Per-CPU byte and packet counters: the maps and how they are bumped. */
#pragma once

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <vpnmeter/bpf_types.h>

/* max_entries is set by the loader from the config (bpf.max_clients). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, VPNMETER_DEFAULT_MAX_CLIENTS);
	__type(key, struct vpnmeter_client_key);
	__type(value, struct vpnmeter_client_counters);
} vpnmeter_clients SEC(".maps");

/* Interface totals by ifindex: an array lookup is inlined by the verifier. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VPNMETER_MAX_LINKS);
	__type(key, __u32);
	__type(value, struct vpnmeter_iface_counters);
} vpnmeter_ifaces SEC(".maps");

/* ... and for the rare ifindex past the array. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, VPNMETER_MAX_LINKS);
	__type(key, __u32);
	__type(value, struct vpnmeter_iface_counters);
} vpnmeter_ifaces_more SEC(".maps");

/* Written by the agent only (read here for per-device flags). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VPNMETER_MAX_LINKS);
	__type(key, __u32);
	__type(value, struct vpnmeter_link);
} vpnmeter_links SEC(".maps");

/**
 * count() - add @packets packets of @bytes bytes in all to @c.
 */
static __always_inline void count(struct vpnmeter_count *c, __u32 packets, __u32 bytes)
{
	c->packets += packets;
	c->bytes += bytes;
}

/**
 * lookup_or_insert() - find @key in the per-CPU hash @map, adding a zeroed
 * entry when missing.
 *
 * BPF_NOEXIST lets two CPUs race to insert: the loser sees -EEXIST and
 * simply looks the winner's entry up.
 *
 * Return: this CPU's value, or NULL when the map is full.
 */
static __always_inline void *lookup_or_insert(void *map, const void *key,
					      const void *zero)
{
	void *value = bpf_map_lookup_elem(map, key);

	if (value)
		return value;
	bpf_map_update_elem(map, key, zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(map, key);
}

/* A client seen for the first time: out of line, off the common path. */
static __noinline struct vpnmeter_client_counters *
client_insert(const struct vpnmeter_client_key *key)
{
	const struct vpnmeter_client_counters zero = {};

	bpf_map_update_elem(&vpnmeter_clients, key, &zero, BPF_NOEXIST);
	return bpf_map_lookup_elem(&vpnmeter_clients, key);
}

/**
 * client_counters() - this CPU's counters of client @key, added when missing.
 *
 * Return: NULL when the map is full.
 */
static __always_inline struct vpnmeter_client_counters *
client_counters(const struct vpnmeter_client_key *key)
{
	struct vpnmeter_client_counters *value = bpf_map_lookup_elem(&vpnmeter_clients, key);

	return value ? value : client_insert(key);
}

/*
 * The rare ifindex >= VPNMETER_MAX_LINKS, out of line. Inlined here, clang
 * merges its last bpf_map_lookup_elem() with the array's into one call whose
 * map is a register: the verifier then cannot inline the array lookup, and
 * every packet pays the helper plus an indirect (retpolined) call, ~20 ns.
 */
static __noinline struct vpnmeter_iface_counters *iface_counters_more(__u32 ifindex)
{
	const struct vpnmeter_iface_counters zero = {};

	return lookup_or_insert(&vpnmeter_ifaces_more, &ifindex, &zero);
}

/**
 * iface_counters() - this CPU's totals of interface @ifindex.
 *
 * For ifindex < VPNMETER_MAX_LINKS, an array lookup that the verifier
 * inlines (a few instructions, no call): it does so only where the map is a
 * known constant at the call site.
 */
static __always_inline struct vpnmeter_iface_counters *iface_counters(__u32 ifindex)
{
	if (ifindex < VPNMETER_MAX_LINKS)
		return bpf_map_lookup_elem(&vpnmeter_ifaces, &ifindex);
	return iface_counters_more(ifindex);
}
