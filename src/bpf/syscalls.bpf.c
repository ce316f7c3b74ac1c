// SPDX-License-Identifier: GPL-2.0
/* syscalls: every system call with its number and latency, entry and exit
 * paired by thread id on the raw_syscalls tracepoints. */
#include "common.h"

struct event {
	char comm[TASK_COMM_LEN];
	__u64 duration_ns;
	__u32 nr;
};

const volatile struct event event_type = {};

struct entry {
	__u64 ts;
	__u32 nr;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct entry);
} start SEC(".maps");

SEC("raw_tracepoint/sys_enter")
int handle_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	char comm[TASK_COMM_LEN];
	struct entry entry;

	if (filter_comm_count ? !task_wanted(comm) : !tgid_wanted())
		return 0;
	entry.ts = bpf_ktime_get_ns();
	entry.nr = (__u32)ctx->args[1];
	bpf_map_update_elem(&start, &tid, &entry, BPF_ANY);
	return 0;
}

SEC("raw_tracepoint/sys_exit")
int handle_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct entry *entry;
	struct event *e;

	entry = bpf_map_lookup_elem(&start, &tid);
	if (!entry)
		return 0;
	e = reserve_event(struct event);
	if (e) {
		bpf_get_current_comm(e->comm, TASK_COMM_LEN);
		e->duration_ns = bpf_ktime_get_ns() - entry->ts;
		e->nr = entry->nr;
		event_submit(e);
	}
	bpf_map_delete_elem(&start, &tid);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
