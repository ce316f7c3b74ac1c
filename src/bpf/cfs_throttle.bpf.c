// SPDX-License-Identifier: GPL-2.0
/* cfs_throttle: CFS bandwidth throttling (cgroup cpu.max, cpu.cfs_quota_us).
 * The kernel has no tracepoint for it: throttle_cfs_rq() (which says
 * whether it did throttle) and unthrottle_cfs_rq() are hooked with
 * fexit/fentry, or with kprobes. Both run for one CPU's run queue of a task
 * group, in whatever task's context the scheduler or the period timer
 * happens to run: the record's cgroup is the group's
 * (cfs_rq->tg->css.cgroup), never `current`'s, and comm and pid are not
 * set. */
#include "common.h"

enum throttle_kind {
	THROTTLED = 1,
	UNTHROTTLED = 2,
};

struct event {
	struct event_header hdr;
	__u64 duration_ns; /* UNTHROTTLED: how long the run queue was throttled */
	__u32 kind;
};

const volatile struct event event_type = {};

struct throttled {
	__u64 since;
	__u64 cgroup_id;
};

/* Run queues throttled since sonde started, by address, until unthrottled. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct throttled);
} throttled SEC(".maps");

/* kprobe: the run queue throttle_cfs_rq() was called for, for its return
 * probe. It runs with the run queue locked and interrupts off: one call at
 * a time per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} throttling SEC(".maps");

/* The cgroup v2 id of the group a run queue belongs to, as
 * bpf_get_current_cgroup_id() would give for a task in it. */
static __always_inline __u64 group_cgroup_id(struct cfs_rq *cfs_rq)
{
	return BPF_CORE_READ(cfs_rq, tg, css.cgroup, kn, id);
}

static __always_inline void send(__u64 cgroup_id, __u32 kind, __u64 duration_ns)
{
	struct event *e = event_reserve(sizeof(*e));

	if (!e)
		return;
	__builtin_memset(&e->hdr, 0, sizeof(e->hdr));
	e->hdr.cgroup_id = cgroup_id;
	e->duration_ns = duration_ns;
	e->kind = kind;
	submit_event(e);
}

static __always_inline void on_throttled(struct cfs_rq *cfs_rq)
{
	__u64 key = (__u64)cfs_rq;
	struct throttled t = { .since = bpf_ktime_get_ns(), .cgroup_id = group_cgroup_id(cfs_rq) };

	bpf_map_update_elem(&throttled, &key, &t, BPF_ANY);
	send(t.cgroup_id, THROTTLED, 0);
}

static __always_inline void on_unthrottle(struct cfs_rq *cfs_rq)
{
	__u64 key = (__u64)cfs_rq;
	struct throttled *t = bpf_map_lookup_elem(&throttled, &key);

	if (!t)
		return; /* throttled before sonde started */
	send(t->cgroup_id, UNTHROTTLED, bpf_ktime_get_ns() - t->since);
	bpf_map_delete_elem(&throttled, &key);
}

/* throttle_cfs_rq() returns false when bandwidth arrived in the meantime
 * and it did not throttle. A returned bool is defined in the low byte of
 * the return register only (x86-64 and arm64 alike): the rest is not
 * looked at. */
#define RETURNED_TRUE(reg) ((__u8)(reg) != 0)

SEC("fexit/throttle_cfs_rq")
int BPF_PROG(fexit_throttle_cfs_rq, struct cfs_rq *cfs_rq, __u64 ret)
{
	if (RETURNED_TRUE(ret))
		on_throttled(cfs_rq);
	return 0;
}

SEC("fentry/unthrottle_cfs_rq")
int BPF_PROG(fentry_unthrottle_cfs_rq, struct cfs_rq *cfs_rq)
{
	on_unthrottle(cfs_rq);
	return 0;
}

SEC("kprobe/throttle_cfs_rq")
int BPF_KPROBE(kprobe_throttle_cfs_rq, struct cfs_rq *cfs_rq)
{
	__u32 zero = 0;
	__u64 *slot = bpf_map_lookup_elem(&throttling, &zero);

	if (slot)
		*slot = (__u64)cfs_rq;
	return 0;
}

SEC("kretprobe/throttle_cfs_rq")
int BPF_KRETPROBE(kretprobe_throttle_cfs_rq, __u64 ret)
{
	__u32 zero = 0;
	__u64 *slot = bpf_map_lookup_elem(&throttling, &zero);

	if (slot && *slot && RETURNED_TRUE(ret))
		on_throttled((struct cfs_rq *)*slot);
	if (slot)
		*slot = 0;
	return 0;
}

SEC("kprobe/unthrottle_cfs_rq")
int BPF_KPROBE(kprobe_unthrottle_cfs_rq, struct cfs_rq *cfs_rq)
{
	on_unthrottle(cfs_rq);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
