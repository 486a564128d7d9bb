// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tc programs that count bytes and packets per client address and per
 * interface. They never drop or alter a packet: the verdict is
 * TC_ACT_UNSPEC, which hands the packet to the next tc filter (or, with
 * none, lets it pass), so vpnmeter coexists with other clsact users.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "counters.bpf.h"
#include "parse.bpf.h"

#define TC_ACT_UNSPEC (-1)

/*
 * What the device will count for this packet. A GSO packet on a device
 * without TSO is cut into segments after tc, each with its own headers, and
 * the device counts the segments: so do we, or the sums would not match.
 */
static __always_inline void device_size(struct __sk_buff *skb, int l3, __u32 *packets,
					__u32 *bytes)
{
	__u32 ifindex = skb->ifindex, segs = skb->gso_segs;
	struct vpnmeter_link *link;

	*packets = 1;
	*bytes = skb->len;
	if (segs <= 1)
		return;
	link = bpf_map_lookup_elem(&vpnmeter_links, &ifindex);
	if (!link || !(link->flags & VPNMETER_LINK_SEGMENTS))
		return;
	*packets = segs;
	*bytes += (segs - 1) * segment_headers(skb, l3);
}

static __always_inline int meter(struct __sk_buff *skb, int dir)
{
	const struct vpnmeter_client_counters client_zero = {};
	struct vpnmeter_client_key key = {};
	struct vpnmeter_iface_counters *iface;
	struct vpnmeter_client_counters *client = NULL;
	int l3 = network_offset(skb);
	__u32 packets, bytes;

	device_size(skb, l3, &packets, &bytes);
	if (client_key_of(skb, dir, l3, &key))
		client = lookup_or_insert(&vpnmeter_clients, &key, &client_zero);
	if (client)
		count(&client->dir[dir], packets, bytes);

	iface = iface_counters(skb->ifindex);
	if (iface) {
		count(&iface->total[dir], packets, bytes);
		if (!client)
			count(&iface->unattributed[dir], packets, bytes);
	}
	return TC_ACT_UNSPEC;
}

SEC("tc")
int meter_ingress(struct __sk_buff *skb)
{
	return meter(skb, VPNMETER_UPLOAD);
}

SEC("tc")
int meter_egress(struct __sk_buff *skb)
{
	return meter(skb, VPNMETER_DOWNLOAD);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
