// SPDX-License-Identifier: GPL-2.0
/* exit: one event per process (thread group) exit, with its wait status. */
#include "common.h"
#include "group_exit.h"

struct event {
	struct event_header hdr;
	/* wait(2) status: exit code in bits 8-15, fatal signal in bits 0-6 */
	__u32 exit_code;
};

const volatile struct event event_type = {};

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
	e->exit_code = BPF_CORE_READ(task, exit_code);
	submit_event(e);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
