// SPDX-License-Identifier: GPL-2.0
/* process: one event per new process (fork, vfork, clone without
 * CLONE_THREAD), its header the parent's; and one per process exit with the
 * process's lifetime, its header the exiting process's. */
#include "common.h"
#include "group_exit.h"

enum process_event_kind {
	PROCESS_FORK = 0,
	PROCESS_EXIT = 1,
};

struct event {
	struct event_header hdr;
	__u64 lifetime_ns; /* PROCESS_EXIT only */
	__u32 kind;        /* enum process_event_kind */
};

const volatile struct event event_type = {};
const volatile enum process_event_kind kind_type = PROCESS_FORK;

/* The BTF-typed tracepoint hands over the child, which says whether the
 * clone made a thread (the child joins the parent's group) or a process;
 * the plain tracepoint gives only pids. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(handle_fork, struct task_struct *parent, struct task_struct *child)
{
	struct event *e;

	if (child->pid != child->tgid)
		return 0;
	e = start_event(struct event);
	if (!e)
		return 0;
	e->lifetime_ns = 0;
	e->kind = PROCESS_FORK;
	submit_event(e);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int handle_exit(void *ctx)
{
	/* (bpf_get_current_task_btf() would need 5.11; every read is CO-RE) */
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct event *e;

	if (!group_exit(ctx, task))
		return 0;
	e = start_event(struct event);
	if (!e)
		return 0;
	/* task_struct.start_time is CLOCK_MONOTONIC ns, as bpf_ktime_get_ns() */
	e->lifetime_ns = bpf_ktime_get_ns() - BPF_CORE_READ(task, group_leader, start_time);
	e->kind = PROCESS_EXIT;
	submit_event(e);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
