// SPDX-License-Identifier: GPL-2.0
/* runqueue: how long a task waited in a run queue, from the moment it
 * became runnable (woken, newly created, or preempted while still
 * runnable) to the moment it was switched in.
 *
 * The queued time is kept in a hash map keyed by the task's pid (task-local
 * storage would be one pointer away, but needs 5.11). The series belongs
 * to the task that waited, not to `current`:
 *  - tp_btf: sched_switch hands over `next`, so its comm, tgid and cgroup
 *    are read from it at switch-in.
 *  - tracepoint: the tracepoint names `next` only by pid and comm, so the
 *    wait is noted at switch-in and counted at the task's next switch-out,
 *    when it is `current` and the usual helpers describe it. */
#include "common.h"

#define TASK_RUNNING 0
/* The tracepoint's prev_state: a preempted task is reported as
 * TASK_REPORT_MAX (0x100), a task that yielded as 0 (running); every
 * sleeping state has one of the low bits, TASK_REPORT_IDLE (0x80) among
 * them. */
#define TP_STATE_SLEEPING_BITS 0xff

struct event {
	struct event_header hdr;
	__u64 waited_ns;
};

const volatile struct event event_type = {};

struct queued {
	__u64 since;     /* 0: not queued */
	__u64 waited_ns; /* tracepoint: a wait not yet counted */
};

/* Tasks in a run queue, by pid. LRU: a task woken while already running
 * (which the wakeup tracepoints report too) and then put to sleep leaves an
 * entry that only its next wakeup overwrites; under pressure those are the
 * oldest and go first. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct queued);
} queued SEC(".maps");

/* Before 5.14 the task's state was `state`, a long. */
struct task_struct___pre514 {
	long state;
} __attribute__((preserve_access_index));

static __always_inline long task_state(struct task_struct *p)
{
	if (bpf_core_field_exists(p->__state))
		return BPF_CORE_READ(p, __state);
	return BPF_CORE_READ((struct task_struct___pre514 *)p, state);
}

static __always_inline void mark_queued(__u32 pid)
{
	struct queued q = { .since = bpf_ktime_get_ns() };

	bpf_map_update_elem(&queued, &pid, &q, BPF_ANY);
}

/* ---- tp_btf: everything from the task pointers -------------------------- */

/* The configured filters, applied to task `p` rather than `current`. */
static __always_inline bool task_passes(struct task_struct *p)
{
	__u32 tgid = BPF_CORE_READ(p, tgid);
	char comm[TASK_COMM_LEN] = {};

	if (ignore_tgid && tgid == ignore_tgid)
		return false;
	if (filter_tgid && tgid != filter_tgid)
		return false;
	if (!filter_comm_count)
		return true;
	BPF_CORE_READ_STR_INTO(&comm, p, comm);
	return comm_wanted(comm);
}

/* Counts a wait of task `p`, keyed by its comm, tgid and cgroup as the
 * labels need them. */
static __always_inline void count_wait_of(struct task_struct *p, __u64 waited_ns)
{
	struct event *e;

	if (aggregate) {
		/* no event labels: with no task label either, one direct slot */
		__u64 *cells = agg_direct_cells(0);
		struct agg_key key;

		if (!cells) {
			__builtin_memset(&key, 0, sizeof(key));
			if (want_comm)
				BPF_CORE_READ_STR_INTO(&key.comm, p, comm);
			if (want_cgroup)
				key.cgroup_id = BPF_CORE_READ(p, cgroups, dfl_cgrp, kn, id);
			if (want_pid)
				key.tgid = BPF_CORE_READ(p, tgid);
			cells = agg_cells_of(&key);
		}
		if (cells)
			agg_observe(cells, 0, waited_ns);
		return;
	}
	e = event_reserve(sizeof(*e));
	if (!e)
		return;
	__builtin_memset(&e->hdr, 0, sizeof(e->hdr));
	e->hdr.cgroup_id = BPF_CORE_READ(p, cgroups, dfl_cgrp, kn, id);
	e->hdr.tgid = BPF_CORE_READ(p, tgid);
	if (want_comm)
		BPF_CORE_READ_STR_INTO(&e->hdr.comm, p, comm);
	e->waited_ns = waited_ns;
	submit_event(e);
}

static __always_inline void btf_wakeup(struct task_struct *p)
{
	if (task_passes(p))
		mark_queued(BPF_CORE_READ(p, pid));
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(handle_wakeup, struct task_struct *p)
{
	btf_wakeup(p);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(handle_wakeup_new, struct task_struct *p)
{
	btf_wakeup(p);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(handle_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u32 pid = BPF_CORE_READ(next, pid);
	struct queued *q;

	/* A preempted task stays in the run queue, whatever its state says
	 * (it may have been on its way to sleep). */
	if ((preempt || task_state(prev) == TASK_RUNNING) && BPF_CORE_READ(prev, pid) && task_passes(prev))
		mark_queued(BPF_CORE_READ(prev, pid));
	if (!pid)
		return 0; /* the idle task */
	q = bpf_map_lookup_elem(&queued, &pid);
	if (!q)
		return 0;
	if (q->since)
		count_wait_of(next, bpf_ktime_get_ns() - q->since);
	bpf_map_delete_elem(&queued, &pid);
	return 0;
}

/* ---- tracepoint: switch-in notes the wait, switch-out counts it --------- */

/* Marks task `pid` queued, keeping a wait noted at its switch-in and not
 * yet counted: the wakeup tracepoints also report a task woken while it
 * still runs (between setting a sleeping state and calling schedule(), as a
 * futex or nanosleep wait does), after its switch-in noted a wait and before
 * its switch-out counts it; replacing the whole entry would lose that wait.
 * The lookup and update race with no switch of the task: the kernel reports
 * the wakeup of a task in a run queue under that run queue's lock, which
 * its switches hold too. */
static __always_inline void tp_mark_queued(__u32 pid)
{
	struct queued q = { .since = bpf_ktime_get_ns() };
	struct queued *old = bpf_map_lookup_elem(&queued, &pid);

	if (old)
		q.waited_ns = old->waited_ns;
	bpf_map_update_elem(&queued, &pid, &q, BPF_ANY);
}

static __always_inline void tp_wakeup(__u32 pid, const char comm_in_ctx[TASK_COMM_LEN])
{
	char comm[TASK_COMM_LEN];

	if (filter_comm_count) {
		/* copied by a helper: the verifier refuses loads through a
		 * context pointer moved to the field, which an inline copy is */
		bpf_probe_read_kernel(comm, TASK_COMM_LEN, comm_in_ctx);
		if (!comm_wanted(comm))
			return;
	}
	tp_mark_queued(pid);
}

SEC("tracepoint/sched/sched_wakeup")
int handle_wakeup_tp(struct trace_event_raw_sched_wakeup_template *ctx)
{
	tp_wakeup(ctx->pid, ctx->comm);
	return 0;
}

SEC("tracepoint/sched/sched_wakeup_new")
int handle_wakeup_new_tp(struct trace_event_raw_sched_wakeup_template *ctx)
{
	tp_wakeup(ctx->pid, ctx->comm);
	return 0;
}

/* Counts a wait of `current` (filters and key from the usual helpers). */
static __always_inline void count_wait_of_current(__u64 waited_ns)
{
	struct event *e;

	if (aggregate) {
		__u64 *cells = NULL;
		struct agg_key key;

		if (task_wanted())
			cells = agg_direct_cells(0);
		if (!cells) {
			if (!agg_key_start(&key, 0))
				return;
			cells = agg_cells_of(&key);
		}
		if (cells)
			agg_observe(cells, 0, waited_ns);
		return;
	}
	e = start_event(struct event);
	if (e) {
		e->waited_ns = waited_ns;
		submit_event(e);
	}
}

SEC("tracepoint/sched/sched_switch")
int handle_switch_tp(struct trace_event_raw_sched_switch *ctx)
{
	__u32 prev = ctx->prev_pid, next = ctx->next_pid;
	struct queued *q;
	__u64 now;

	if (prev) {
		/* `current` is still prev here */
		q = bpf_map_lookup_elem(&queued, &prev);
		if (q && q->waited_ns) {
			count_wait_of_current(q->waited_ns);
			q->waited_ns = 0;
		}
		if (!(ctx->prev_state & TP_STATE_SLEEPING_BITS))
			mark_queued(prev);
		else if (q)
			bpf_map_delete_elem(&queued, &prev);
	}
	if (!next)
		return 0;
	q = bpf_map_lookup_elem(&queued, &next);
	if (q && q->since) {
		now = bpf_ktime_get_ns();
		q->waited_ns = now - q->since;
		q->since = 0;
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
