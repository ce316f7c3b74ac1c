// SPDX-License-Identifier: GPL-2.0
/* exec: one event per successful execve(), after the new comm is set. */
#include "common.h"

struct event {
	struct event_header hdr;
};

/* Makes the skeleton carry `struct event` for user space. */
const volatile struct event event_type = {};

SEC("tracepoint/sched/sched_process_exec")
int handle_exec(void *ctx)
{
	struct event *e = start_event(struct event);

	if (e)
		submit_event(e);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
