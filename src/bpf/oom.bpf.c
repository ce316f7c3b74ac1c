// SPDX-License-Identifier: GPL-2.0
/* oom: one event per OOM kill, its header the victim's (comm, tgid, cgroup
 * id) rather than the task that ran into the limit.
 *
 * oom/mark_victim carries only the victim's pid before 6.8, and a pid
 * cannot be turned into a task in BPF on every kernel. But the OOM killer
 * sends the victim SIGKILL as the kernel (SEND_SIG_PRIV) just before it
 * marks it, and the BTF-typed signal_generate hands over the victim's task:
 * that hook notes the victim by pid, and mark_victim picks the note up. */
#include "common.h"

#define SIGKILL 9
#define SEND_SIG_PRIV ((struct kernel_siginfo *)1)

struct event {
	struct event_header hdr;
};

const volatile struct event event_type = {};

/* Tasks sent SIGKILL by the kernel, by pid, until marked as OOM victims.
 * Other kernel SIGKILLs leave notes nobody picks up: LRU, so they age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct event_header);
} killed SEC(".maps");

SEC("tp_btf/signal_generate")
int BPF_PROG(handle_signal_generate, int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
	     int result)
{
	struct event_header victim = {};
	__u32 pid;

	if (sig != SIGKILL || info != SEND_SIG_PRIV)
		return 0;
	pid = BPF_CORE_READ(task, pid);
	victim.tgid = BPF_CORE_READ(task, tgid);
	victim.cgroup_id = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	BPF_CORE_READ_STR_INTO(&victim.comm, task, comm);
	bpf_map_update_elem(&killed, &pid, &victim, BPF_ANY);
	return 0;
}

/* The configured filters, applied to the victim rather than the current
 * task. */
static __always_inline bool victim_wanted(const struct event_header *victim)
{
	if (ignore_tgid && victim->tgid == ignore_tgid)
		return false;
	if (filter_tgid && victim->tgid != filter_tgid)
		return false;
	return !filter_comm_count || comm_wanted(victim->comm);
}

SEC("tracepoint/oom/mark_victim")
int handle_mark_victim(struct trace_event_raw_mark_victim *ctx)
{
	__u32 pid = ctx->pid;
	struct event_header *victim = bpf_map_lookup_elem(&killed, &pid);
	struct event *e;

	if (!victim)
		return 0;
	if (victim_wanted(victim)) {
		e = event_reserve(sizeof(*e));
		if (e) {
			e->hdr = *victim;
			if (!want_comm)
				__builtin_memset(e->hdr.comm, 0, TASK_COMM_LEN);
			submit_event(e);
		}
	}
	bpf_map_delete_elem(&killed, &pid);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
