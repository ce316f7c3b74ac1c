/* Telling a process's exit from a thread's at sched/sched_process_exit,
 * exactly once per process, on every kernel: shared by the probes that
 * count processes there. Include after common.h. */
#pragma once

/* Process exits already reported, for kernels whose tracepoint does not say
 * which thread ends the group: keyed by tgid and the group leader's start
 * time, which no later process shares. */
struct exit_key {
	__u64 leader_start_ns;
	__u32 tgid;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct exit_key);
	__type(value, __u8);
} reported SEC(".maps");

/* The tracepoint's record since 6.16, which says whether the exiting thread
 * ended its group. Declared here (CO-RE matches it by name without the
 * ___ suffix) because older kernels' headers use a shared template. */
struct trace_event_raw_sched_process_exit___group_dead {
	bool group_dead;
} __attribute__((preserve_access_index));

/* Whether this thread's exit is its process's exit, exactly once. */
static __always_inline bool group_exit(void *ctx, struct task_struct *task)
{
	struct trace_event_raw_sched_process_exit___group_dead *record = ctx;
	struct exit_key key = {};
	__u8 one = 1;

	if (bpf_core_field_exists(record->group_dead))
		return record->group_dead;
	/* Before that, signal->live reaches zero when the last thread starts
	 * exiting; but threads dying together can all see zero by the time
	 * they reach the tracepoint, so the first to claim the process wins. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return false;
	key.tgid = BPF_CORE_READ(task, tgid);
	key.leader_start_ns = BPF_CORE_READ(task, group_leader, start_time);
	return bpf_map_update_elem(&reported, &key, &one, BPF_NOEXIST) == 0;
}
