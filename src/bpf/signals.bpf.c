// SPDX-License-Identifier: GPL-2.0
/* signals: one event per signal generated, with the signal, the target's
 * comm and what became of it (delivered, ignored, already pending…). The
 * header is the generating task's. */
#include "common.h"

struct event {
	struct event_header hdr;
	char target_comm[TASK_COMM_LEN];
	__u32 sig;
	__u32 result; /* TRACE_SIGNAL_DELIVERED, _IGNORED, … */
};

const volatile struct event event_type = {};

/* The record has had these fields since before 5.10; vmlinux.h's types are
 * CO-RE relocated, so a moved field is still found. */
SEC("tracepoint/signal/signal_generate")
int handle_signal_generate(struct trace_event_raw_signal_generate *ctx)
{
	struct event *e = start_event(struct event);

	if (!e)
		return 0;
	/* a copy, not loads: the verifier refuses loads through a ctx pointer
	 * moved by a relocated offset */
	bpf_probe_read_kernel_str(e->target_comm, TASK_COMM_LEN, ctx->comm);
	e->sig = ctx->sig;
	e->result = ctx->result;
	submit_event(e);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
