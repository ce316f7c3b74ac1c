// SPDX-License-Identifier: GPL-2.0
/* exec: one event per successful execve(), after the new comm is set. */
#include "common.h"

struct event {
	char comm[TASK_COMM_LEN];
};

/* Makes the skeleton carry `struct event` for user space. */
const volatile struct event event_type = {};

SEC("tracepoint/sched/sched_process_exec")
int handle_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	char comm[TASK_COMM_LEN];
	struct event *e;

	if (!task_wanted(comm))
		return 0;
	e = reserve_event(struct event);
	if (!e)
		return 0;
	__builtin_memcpy(e->comm, comm, TASK_COMM_LEN);
	submit_event(e);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
