// SPDX-License-Identifier: GPL-2.0
/* syscalls: every system call with its number and latency, entry and exit
 * paired on the BTF raw tracepoints through a hash keyed by thread id. */
#include "common.h"

struct event {
	struct event_header hdr;
	__u64 duration_ns;
	__u32 nr;
};

const volatile struct event event_type = {};

struct entry {
	__u64 ts; /* 0: no syscall in flight */
	__u32 nr;
};

/* Entries by thread id. Task-local storage would be one pointer away from
 * the task, but tracing programs only have it from 5.12, and on 7.2 it
 * stays empty from the syscall tracepoints (the programs run, no entry is
 * ever found): a hash works on every kernel. An entry stays while its
 * thread lives (exit marks it idle rather than deleting it); LRU, so that
 * the entries of threads that ended inside a system call (exit_group never
 * returns) are reused. A thread blocked in a system call while this many
 * others entered one can be evicted: that call is not counted. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct entry);
} start SEC(".maps");

static const struct entry idle_entry = {};

/* The current thread's entry; with `create`, made if missing. */
static __always_inline struct entry *current_entry(bool create)
{
	struct entry *entry;
	__u32 tid;

	tid = (__u32)bpf_get_current_pid_tgid();
	entry = bpf_map_lookup_elem(&start, &tid);
	if (entry || !create)
		return entry;
	bpf_map_update_elem(&start, &tid, &idle_entry, BPF_NOEXIST);
	return bpf_map_lookup_elem(&start, &tid);
}

SEC("tp_btf/sys_enter")
int BPF_PROG(handle_sys_enter, struct pt_regs *regs, long id)
{
	struct entry *entry;

	if (!task_wanted())
		return 0;
	entry = current_entry(true);
	if (!entry)
		return 0;
	entry->ts = bpf_ktime_get_ns();
	entry->nr = (__u32)id;
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(handle_sys_exit, struct pt_regs *regs, long ret)
{
	struct entry *entry;
	struct event *e;
	__u64 duration_ns;

	/* Other processes never have an entry; with a pid filter, skip the
	 * lookup for them. */
	if (filter_tgid && !tgid_wanted())
		return 0;
	entry = current_entry(false);
	if (!entry || !entry->ts)
		return 0;
	duration_ns = bpf_ktime_get_ns() - entry->ts;
	entry->ts = 0;
	if (aggregate) {
		/* sys_enter applied the filters: only wanted tasks have an entry */
		__u64 *cells = agg_direct_cells(entry->nr);
		struct agg_key key;

		if (!cells) {
			if (!agg_key_start(&key, entry->nr))
				return 0;
			cells = agg_cells_of(&key);
		}
		if (cells) {
			agg_add(cells, 0, 1);
			agg_observe(cells, 1, duration_ns);
		}
		return 0;
	}
	e = start_event(struct event);
	if (e) {
		e->duration_ns = duration_ns;
		e->nr = entry->nr;
		submit_event(e);
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
