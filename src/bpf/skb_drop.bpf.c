// SPDX-License-Identifier: GPL-2.0
/* skb_drop: packets the kernel dropped, by drop reason, from the skb/kfree_skb
 * tracepoint. Since 5.17 the tracepoint says why (enum skb_drop_reason);
 * before that it has no reason and every drop counts under reason 0, which
 * user space names "unknown". Two hook sets carry the same logic: the BTF
 * raw tracepoint (cheaper) and the classic tracepoint. */
#include "common.h"

struct event {
	struct event_header hdr;
	__u32 reason;
	__u32 reserved;
};

const volatile struct event event_type = {};

/* SKB_CONSUMED is newer than some vmlinux.h this is compiled against (the
 * arm64 one): a local flavour of the enum names it, and CO-RE matches it to
 * the running kernel's enum by name without the ___sonde suffix. */
enum skb_drop_reason___sonde {
	SKB_CONSUMED___sonde = 1,
};

/* Kernels that name consumed (not dropped) frees send them to consume_skb
 * rather than kfree_skb; should one reach kfree_skb anyway, it is no drop. */
static __always_inline bool consumed(__u32 reason)
{
	if (!bpf_core_enum_value_exists(enum skb_drop_reason___sonde, SKB_CONSUMED___sonde))
		return false;
	return reason == bpf_core_enum_value(enum skb_drop_reason___sonde, SKB_CONSUMED___sonde);
}

static __always_inline int count_drop(__u32 reason)
{
	struct event *e;

	if (consumed(reason))
		return 0;
	if (aggregate) {
		__u64 *cells;
		struct agg_key key;

		if (!task_wanted())
			return 0;
		cells = agg_direct_cells(reason);
		if (!cells) {
			if (!agg_key_start(&key, reason))
				return 0;
			cells = agg_cells_of(&key);
		}
		if (cells)
			agg_add(cells, 0, 1);
		return 0;
	}
	e = start_event(struct event);
	if (!e)
		return 0;
	e->reason = reason;
	e->reserved = 0;
	submit_event(e);
	return 0;
}

/* The reason is the tracepoint's third argument where the kernel has drop
 * reasons (they came with the argument); the branch is removed at load on
 * older kernels, so the verifier never sees the read past their two. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(skb_drop_btf, struct sk_buff *skb, void *location)
{
	__u32 reason = 0;

	if (bpf_core_type_exists(enum skb_drop_reason))
		reason = (__u32)ctx[2];
	return count_drop(reason);
}

SEC("tracepoint/skb/kfree_skb")
int skb_drop_tp(struct trace_event_raw_kfree_skb *args)
{
	__u32 reason = 0;

	if (bpf_core_field_exists(args->reason))
		reason = BPF_CORE_READ(args, reason);
	return count_drop(reason);
}

char LICENSE[] SEC("license") = "GPL";
