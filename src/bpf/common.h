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

/* Events the ring had no room for: received + lost == produced. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

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

	if (!e) {
		__u32 zero = 0;
		__u64 *count = bpf_map_lookup_elem(&lost, &zero);

		if (count)
			*count += 1; /* per-CPU slot: no atomics needed */
	}
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
