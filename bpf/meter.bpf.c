// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * tc programs that count bytes and packets per client address and per
 * interface. They neither drop nor alter a packet of a client without a
 * policy: the verdict is TC_ACT_UNSPEC, which hands the packet to the next
 * tc filter (or, with none, lets it pass), so vpnmeter coexists with other
 * clsact users. Clients with a policy: see policy.bpf.h.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#include "counters.bpf.h"
#include "parse.bpf.h"
#include "policy.bpf.h"

#define TC_ACT_UNSPEC (-1)

/*
 * What the device will count for a GSO packet (gso_segs > 1 only, out of
 * line: the common path never pays for it). On a device without TSO the
 * packet is cut into segments after tc, each with its own headers, and the
 * device counts the segments: so do we, or the sums would not match.
 *
 * Return: the bytes to add to skb->len; *packets is set to the segments.
 */
static __noinline __u32 gso_extra_bytes(struct __sk_buff *skb, int l3, __u32 *packets)
{
	__u32 ifindex = skb->ifindex, segs = skb->gso_segs;
	struct vpnmeter_link *link;

	link = bpf_map_lookup_elem(&vpnmeter_links, &ifindex);
	if (!link || !(link->flags & VPNMETER_LINK_SEGMENTS))
		return 0;
	*packets = segs;
	return (segs - 1) * segment_headers(skb, l3);
}

/*
 * The common path (IPv4/IPv6 with the address in the linear part, gso_segs
 * <= 1, a known client, ifindex < VPNMETER_MAX_LINKS) makes exactly one
 * out-of-line call: the client hash lookup. Every call costs 20-30 ns on a
 * kernel with retpolines and SRSO "Safe RET" (docs/benchmarks.md), so the
 * rare paths are __noinline subprograms, and the interface array lookup must
 * stay one the verifier inlines (see iface_counters()).
 */
static __always_inline int meter(struct __sk_buff *skb, int dir)
{
	struct vpnmeter_client_key key __attribute__((aligned(8))) = {};
	struct vpnmeter_client_counters *client = NULL;
	struct vpnmeter_iface_counters *iface;
	__u32 ifindex = skb->ifindex, packets = 1, bytes = skb->len;
	int l3 = network_offset(skb);
	int verdict = TC_ACT_UNSPEC;

	if (skb->gso_segs > 1)
		bytes += gso_extra_bytes(skb, l3, &packets);
	if (client_key_of(skb, dir, l3, ifindex, &key) &&
	    (verdict = enforce(skb, dir, &key, packets, bytes)) == TC_ACT_UNSPEC)
		client = client_counters(&key);
	if (client)
		count(&client->dir[dir], packets, bytes);

	iface = iface_counters(ifindex);
	if (iface) {
		count(&iface->total[dir], packets, bytes);
		if (verdict == TC_ACT_SHOT)
			count(&iface->dropped[dir], packets, bytes);
		else if (!client)
			count(&iface->unattributed[dir], packets, bytes);
	}
	return verdict;
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
