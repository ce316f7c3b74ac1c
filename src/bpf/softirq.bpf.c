// SPDX-License-Identifier: GPL-2.0
/* softirq: time spent in each softirq handler, by kind (the softirq vector:
 * hi, timer, net_tx, net_rx, ...), from irq/softirq_entry to
 * irq/softirq_exit. Handlers run with softirqs off and do not nest on a
 * CPU, so the entry time is one slot per CPU. */
#include "common.h"

struct event {
	struct event_header hdr;
	__u64 duration_ns;
	__u32 vec;
};

const volatile struct event event_type = {};

struct entry {
	__u64 ts; /* 0: no handler running, or its task was filtered out */
	__u32 vec;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct entry);
} running SEC(".maps");

static __always_inline void softirq_entry(__u32 vec)
{
	__u32 zero = 0;
	struct entry *entry = bpf_map_lookup_elem(&running, &zero);

	if (!entry)
		return;
	/* the filters see the task the softirq interrupted (or ksoftirqd) */
	entry->ts = task_wanted() ? bpf_ktime_get_ns() : 0;
	entry->vec = vec;
}

static __always_inline void softirq_exit(__u32 vec)
{
	__u32 zero = 0;
	struct entry *entry = bpf_map_lookup_elem(&running, &zero);
	__u64 duration_ns;
	struct event *e;

	if (!entry || !entry->ts || entry->vec != vec)
		return;
	duration_ns = bpf_ktime_get_ns() - entry->ts;
	entry->ts = 0;
	if (aggregate) {
		/* the entry applied the filters */
		__u64 *cells = agg_direct_cells(vec);
		struct agg_key key;

		if (!cells) {
			if (!agg_key_start(&key, vec))
				return;
			cells = agg_cells_of(&key);
		}
		if (cells)
			agg_observe(cells, 0, duration_ns);
		return;
	}
	e = start_event(struct event);
	if (e) {
		e->duration_ns = duration_ns;
		e->vec = vec;
		submit_event(e);
	}
}

SEC("tp_btf/softirq_entry")
int BPF_PROG(handle_softirq_entry, unsigned int vec)
{
	softirq_entry(vec);
	return 0;
}

SEC("tp_btf/softirq_exit")
int BPF_PROG(handle_softirq_exit, unsigned int vec)
{
	softirq_exit(vec);
	return 0;
}

SEC("tracepoint/irq/softirq_entry")
int handle_softirq_entry_tp(struct trace_event_raw_softirq *ctx)
{
	softirq_entry(ctx->vec);
	return 0;
}

SEC("tracepoint/irq/softirq_exit")
int handle_softirq_exit_tp(struct trace_event_raw_softirq *ctx)
{
	softirq_exit(ctx->vec);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
