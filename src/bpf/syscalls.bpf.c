// SPDX-License-Identifier: GPL-2.0
/* syscalls: every system call with its number and latency, entry and exit
 * paired through task-local storage on the BTF raw tracepoints. */
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

/* Task-local storage: one pointer away from the task, where a hash map
 * would cost a lookup at entry and a lookup and delete at exit. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct entry);
} start SEC(".maps");

SEC("tp_btf/sys_enter")
int BPF_PROG(handle_sys_enter, struct pt_regs *regs, long id)
{
	struct entry *entry;

	if (!task_wanted())
		return 0;
	entry = bpf_task_storage_get(&start, bpf_get_current_task_btf(), 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
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
	 * storage lookup for them. */
	if (filter_tgid && !tgid_wanted())
		return 0;
	entry = bpf_task_storage_get(&start, bpf_get_current_task_btf(), 0, 0);
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
