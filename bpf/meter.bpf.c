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

static __always_inline int meter(struct __sk_buff *skb, int dir)
{
	const struct vpnmeter_iface_counters iface_zero = {};
	const struct vpnmeter_client_counters client_zero = {};
	struct vpnmeter_client_key key = {};
	struct vpnmeter_iface_counters *iface;
	struct vpnmeter_client_counters *client = NULL;
	__u32 ifindex = skb->ifindex;
	__u32 len = skb->len;

	if (client_key_of(skb, dir, &key))
		client = lookup_or_insert(&vpnmeter_clients, &key, &client_zero);
	if (client)
		count(&client->dir[dir], len);

	iface = lookup_or_insert(&vpnmeter_ifaces, &ifindex, &iface_zero);
	if (iface) {
		count(&iface->total[dir], len);
		if (!client)
			count(&iface->unattributed[dir], len);
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
