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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, VPNMETER_MAX_LINKS);
	__type(key, __u32);
	__type(value, struct vpnmeter_iface_counters);
} vpnmeter_ifaces SEC(".maps");

/* Written by the agent only; declared here so it is pinned with the rest. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VPNMETER_MAX_LINKS);
	__type(key, __u32);
	__type(value, struct vpnmeter_link);
} vpnmeter_links SEC(".maps");

/**
 * count() - add one packet of @len bytes to @c.
 */
static __always_inline void count(struct vpnmeter_count *c, __u32 len)
{
	c->packets += 1;
	c->bytes += len;
}

/**
 * lookup_or_insert() - find @key in the per-CPU @map, adding a zeroed entry
 * when missing.
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
