/* Shared by every sonde probe: config-driven filters, the event ring buffer,
 * the kernel-side count of events the ring had no room for, and the header
 * every record starts with. */
#pragma once

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#define TASK_COMM_LEN 16
#define MAX_COMM_FILTERS 8

/* Written by user space before load (.rodata), so the verifier sees them as
 * constants and dead branches cost nothing. */
const volatile __u32 filter_tgid = 0;      /* 0: any process */
const volatile __u32 ignore_tgid = 0;      /* the agent itself */
const volatile __u32 filter_comm_count = 0;
const volatile char filter_comms[MAX_COMM_FILTERS][TASK_COMM_LEN] = {};
/* Wake the reader each time another this many bytes wait in the ring; 0
 * lets the kernel wake it whenever it has caught up (about once per event
 * under load). The reader also drains the rings on a timer, so nothing
 * waits longer than one poll interval. */
const volatile __u64 wakeup_bytes = 0;
/* Whether records carry the task's comm: reading it costs on every event,
 * and only the comm label and comm filters need it. */
const volatile bool want_comm = false;

/* The start of every record: who produced it. User space keys series on
 * these (comm, pid) and resolves the cgroup id to cgroup, container and pod
 * labels. */
struct event_header {
	__u64 cgroup_id;
	__u32 tgid;
	__u32 reserved;
	char comm[TASK_COMM_LEN]; /* zero unless want_comm */
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024); /* resized from config before load */
} events SEC(".maps");

/* Slot LOST_RING: events the ring had no room for (received + lost ==
 * produced). Slot LOST_FOLDED: aggregated events that found the aggregation
 * table full and were counted in its overflow key instead. */
#define LOST_RING 0
#define LOST_FOLDED 1
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

static __always_inline void count_lost(__u32 slot)
{
	__u64 *count = bpf_map_lookup_elem(&lost, &slot);

	if (count)
		*count += 1; /* per-CPU slot: no atomics needed */
}

static __always_inline bool comm_equal(const char *a, const volatile char *b)
{
	for (int i = 0; i < TASK_COMM_LEN; i++) {
		if (a[i] != b[i])
			return false;
		if (a[i] == '\0')
			return true;
	}
	return true;
}

static __always_inline bool comm_wanted(const char comm[TASK_COMM_LEN])
{
	for (__u32 i = 0; i < MAX_COMM_FILTERS && i < filter_comm_count; i++) {
		if (comm_equal(comm, filter_comms[i]))
			return true;
	}
	return false;
}

/* Whether the current task passes the configured filters, for hooks that
 * decide before an event is started (e.g. at a syscall's entry). */
static __always_inline bool task_wanted(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	char comm[TASK_COMM_LEN];

	if (ignore_tgid && tgid == ignore_tgid)
		return false;
	if (filter_tgid && tgid != filter_tgid)
		return false;
	if (!filter_comm_count)
		return true;
	bpf_get_current_comm(comm, TASK_COMM_LEN);
	return comm_wanted(comm);
}

/* Cheaper variant for hooks that only need the pid filters. */
static __always_inline bool tgid_wanted(void)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (ignore_tgid && tgid == ignore_tgid)
		return false;
	return !filter_tgid || tgid == filter_tgid;
}

static __always_inline void *event_reserve(__u64 size)
{
	void *e = bpf_ringbuf_reserve(&events, size, 0);

	if (!e)
		count_lost(LOST_RING);
	return e;
}

/* A record's footprint in the ring: an 8-byte header, then the data
 * padded to 8 bytes. */
#define RECORD_BYTES(size) ((((size) + 7) & ~7ULL) + 8)

/* Submits with a wakeup only when this record takes the waiting bytes past
 * a multiple of wakeup_bytes: one wakeup per wakeup_bytes of data. The
 * kernel's default ("wake if the reader has caught up") would never fire
 * here, because earlier records were submitted without a wakeup; forcing
 * one for every record past the threshold would cost an interrupt each. A
 * crossing missed to a race between CPUs is caught at the next multiple. */
static __always_inline void event_submit(void *e, __u64 record_bytes)
{
	__u64 flags = 0;

	if (wakeup_bytes) {
		__u64 avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
		__u64 before = avail > record_bytes ? avail - record_bytes : 0;

		flags = avail / wakeup_bytes != before / wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	}
	bpf_ringbuf_submit(e, flags);
}

/* Filter the current task, reserve a record of `size` bytes and fill its
 * header: the one way every probe starts an event. NULL when the task is
 * filtered out or the ring is full (counted in `lost`). */
static __always_inline void *event_start(__u64 size)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	char comm[TASK_COMM_LEN] = {};
	struct event_header *h;

	if (ignore_tgid && tgid == ignore_tgid)
		return NULL;
	if (filter_tgid && tgid != filter_tgid)
		return NULL;
	if (want_comm || filter_comm_count) {
		bpf_get_current_comm(comm, TASK_COMM_LEN);
		if (filter_comm_count && !comm_wanted(comm))
			return NULL;
	}
	h = event_reserve(size);
	if (!h)
		return NULL;
	h->cgroup_id = bpf_get_current_cgroup_id();
	h->tgid = tgid;
	h->reserved = 0;
	__builtin_memcpy(h->comm, comm, TASK_COMM_LEN);
	return h;
}

/* A record type must start with `struct event_header hdr`. */
#define start_event(type) ((type *)event_start(sizeof(type)))
#define submit_event(e) event_submit((e), RECORD_BYTES(sizeof(*(e))))

/* ---- In-kernel aggregation ----------------------------------------------
 * For probes whose rate makes a ring record per event too costly: each
 * event adds to per-CPU cells keyed like user space's series keys, and user
 * space reads and merges them at scrape time. A key's cells are laid out as
 * user space lays out a series: one cell per counter, and per histogram its
 * buckets (+Inf last) then its sum. */

#define AGG_MAX_BOUNDS 64
#define AGG_MAX_CELLS (4 + 2 * (AGG_MAX_BOUNDS + 2))

/* Set by user space: whether events are aggregated here rather than sent,
 * which header fields key them, and the cells' layout. */
const volatile bool aggregate = false;
const volatile bool want_pid = false;
const volatile bool want_cgroup = false;
/* Whether one of the probe's own labels is on: if not, the probe's part of
 * the key is 0, so that labels that are off do not split series. */
const volatile bool want_event = true;
const volatile __u32 agg_cells = 1;
const volatile __u32 hist_bound_count = 0;
const volatile __u64 hist_bounds[AGG_MAX_BOUNDS] = {};

struct agg_key {
	__u64 cgroup_id;
	__u64 event; /* the probe's part, as its user-space decoder makes it */
	__u32 tgid;
	__u32 overflow; /* 1 only in the key user space creates for a full table */
	char comm[TASK_COMM_LEN];
};

const volatile struct agg_key agg_key_type = {};

/* Value size (agg_cells * 8) and entries (the series limit, plus the
 * overflow key) are set by user space before load. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1);
	__type(key, struct agg_key);
	__uint(value_size, 8);
} aggregates SEC(".maps");

/* Events keyed by nothing but a small number (say, the syscall number when
 * no comm, pid or cgroup label is on) skip the hash: their cells are
 * entry `event` of this per-CPU array, sized (agg_direct_keys entries of
 * agg_cells cells) by user space, which sets agg_direct_keys to 0 when
 * task labels key the series. */
const volatile __u32 agg_direct_keys = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__uint(value_size, 8);
} agg_direct SEC(".maps");

/* The cells of a directly indexed event, or NULL when events are not
 * directly indexed (or this one is out of the array's range). The caller
 * has applied the filters. */
static __always_inline __u64 *agg_direct_cells(__u64 event)
{
	__u32 index;

	if (!want_event)
		event = 0;
	index = event;
	if (event >= agg_direct_keys)
		return NULL;
	return bpf_map_lookup_elem(&agg_direct, &index);
}

/* What a new key's cells start from. */
static const __u64 agg_zero[AGG_MAX_CELLS] = {};

/* Fills the key's common part for the current task, as the configured
 * labels need it; false when the task is filtered out. */
static __always_inline bool agg_key_start(struct agg_key *key, __u64 event)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;

	if (ignore_tgid && tgid == ignore_tgid)
		return false;
	if (filter_tgid && tgid != filter_tgid)
		return false;
	__builtin_memset(key, 0, sizeof(*key));
	if (want_comm || filter_comm_count) {
		bpf_get_current_comm(key->comm, TASK_COMM_LEN);
		if (filter_comm_count && !comm_wanted(key->comm))
			return false;
		if (!want_comm)
			__builtin_memset(key->comm, 0, TASK_COMM_LEN);
	}
	if (want_cgroup)
		key->cgroup_id = bpf_get_current_cgroup_id();
	if (want_pid)
		key->tgid = tgid;
	key->event = want_event ? event : 0;
	return true;
}

/* The key's cells on this CPU, created on first use; when the table is
 * full, the overflow key's (counted in LOST_FOLDED). */
static __always_inline __u64 *agg_cells_of(struct agg_key *key)
{
	__u64 *cells = bpf_map_lookup_elem(&aggregates, key);

	if (cells)
		return cells;
	bpf_map_update_elem(&aggregates, key, (void *)agg_zero, BPF_NOEXIST);
	cells = bpf_map_lookup_elem(&aggregates, key);
	if (cells)
		return cells;
	__builtin_memset(key, 0, sizeof(*key));
	key->overflow = 1;
	count_lost(LOST_FOLDED);
	return bpf_map_lookup_elem(&aggregates, key);
}

static __always_inline void agg_add(__u64 *cells, __u32 at, __u64 n)
{
	if (at < agg_cells && at < AGG_MAX_CELLS)
		cells[at] += n; /* per-CPU cells: no atomics needed */
}

/* The first bucket whose bound is at least v (hist_bound_count: +Inf). */
static __always_inline __u32 agg_bucket(__u64 v)
{
	__u32 lo = 0, hi = hist_bound_count;

	for (int i = 0; i < 8 && lo < hi; i++) {
		__u32 mid = (lo + hi) / 2;

		if (mid >= AGG_MAX_BOUNDS)
			break;
		if (hist_bounds[mid] < v)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Observes v in the histogram whose first cell is `at`. */
static __always_inline void agg_observe(__u64 *cells, __u32 at, __u64 v)
{
	agg_add(cells, at + agg_bucket(v), 1);
	agg_add(cells, at + hist_bound_count + 1, v);
}
