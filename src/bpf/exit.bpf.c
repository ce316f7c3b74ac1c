// SPDX-License-Identifier: GPL-2.0
/* exit: one event per process (thread group) exit, with its wait status. */
#include "common.h"

struct event {
	char comm[TASK_COMM_LEN];
	/* wait(2) status: exit code in bits 8-15, fatal signal in bits 0-6 */
	__u32 exit_code;
};

const volatile struct event event_type = {};

SEC("tracepoint/sched/sched_process_exit")
int handle_exit(void *ctx)
{
	struct task_struct *task = bpf_get_current_task_btf();
	char comm[TASK_COMM_LEN];
	struct event *e;

	/* signal->live drops to zero on the group's last thread, before this
	 * tracepoint fires; earlier threads are not process exits. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	if (!task_wanted(comm))
		return 0;
	e = reserve_event(struct event);
	if (!e)
		return 0;
	__builtin_memcpy(e->comm, comm, TASK_COMM_LEN);
	e->exit_code = BPF_CORE_READ(task, exit_code);
	submit_event(e);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
