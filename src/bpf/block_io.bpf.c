// SPDX-License-Identifier: GPL-2.0
/* block_io: block requests from issue to the driver until completion, with
 * their latency and size, by disk and operation. The issue records the time
 * and what the request is (disk, op, size, and the issuing task) in a map;
 * the completion looks it up, counts it and forgets it. Two hook sets carry
 * the same logic: BTF raw tracepoints, keyed by the request pointer, and
 * classic tracepoints for kernels where tp_btf cannot attach, keyed by the
 * disk and start sector (the pointer is not in their records). User space
 * loads exactly one of them. */
#include "common.h"

enum block_op {
	BLOCK_OP_READ = 0,
	BLOCK_OP_WRITE = 1,
	BLOCK_OP_FLUSH = 2,
	BLOCK_OP_DISCARD = 3,
	BLOCK_OP_OTHER = 4,
};

/* The probe's part of a series key: the disk's dev_t above the op's byte.
 * User space decodes keys the kernel made, so it reads this layout from the
 * skeleton rather than from a copy. */
enum block_key_layout {
	KEY_DEV_SHIFT = 8,
};

struct event {
	struct event_header hdr;
	__u64 latency_ns;
	__u32 bytes;
	__u32 dev; /* the disk's dev_t as the kernel encodes it: major << 20 | minor */
	__u32 op;  /* enum block_op */
};

const volatile struct event event_type = {};
const volatile enum block_op op_type = BLOCK_OP_READ;
const volatile enum block_key_layout key_layout_type = KEY_DEV_SHIFT;

/* Which of the probe's two labels key series: a label that is off must not
 * split them. */
const volatile bool want_disk = true;
const volatile bool want_op = true;

/* Older kernels (5.10) pass block_rq_issue the request's queue before the
 * request. User space reads the tracepoint's arity from the kernel's BTF:
 * matching the prototype here would need clang 15 or later. */
const volatile bool issue_has_queue = false;

/* A request in flight: what the completion needs to count it. The task
 * fields are the issuer's, because the completion runs in interrupt
 * context on behalf of no one in particular. */
struct issue {
	__u64 ts;
	__u64 cgroup_id;
	__u32 tgid;
	__u32 dev;
	__u32 op;
	__u32 bytes;
	char comm[TASK_COMM_LEN];
};

/* LRU: a request that never completes where the probe sees it (an error
 * path, a detach between issue and completion) must not fill the map. The
 * size is well above the requests in flight on any one host. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* struct request * */
	__type(value, struct issue);
} by_request SEC(".maps");

struct sector_key {
	__u64 sector;
	__u32 dev;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct sector_key);
	__type(value, struct issue);
} by_sector SEC(".maps");

/* REQ_OP_* numbers, unchanged since Linux 4.10; the op is the low
 * REQ_OP_BITS (8) bits of cmd_flags. */
#define REQ_OP_BITS_MASK 0xff
#define KERNEL_REQ_OP_READ 0
#define KERNEL_REQ_OP_WRITE 1
#define KERNEL_REQ_OP_FLUSH 2
#define KERNEL_REQ_OP_DISCARD 3

static __always_inline __u32 op_of_flags(__u32 cmd_flags)
{
	switch (cmd_flags & REQ_OP_BITS_MASK) {
	case KERNEL_REQ_OP_READ:
		return BLOCK_OP_READ;
	case KERNEL_REQ_OP_WRITE:
		return BLOCK_OP_WRITE;
	case KERNEL_REQ_OP_FLUSH:
		return BLOCK_OP_FLUSH;
	case KERNEL_REQ_OP_DISCARD:
		return BLOCK_OP_DISCARD;
	default:
		return BLOCK_OP_OTHER;
	}
}

/* The tracepoints' rwbs text: an optional 'F' (preflush), then the op's
 * letter (W, R, D, F for a flush, N for none), then modifiers. */
static __always_inline __u32 op_of_rwbs(char first, char second)
{
	char op = first;

	if (first == 'F' && (second == 'W' || second == 'R' || second == 'D' || second == 'F' || second == 'N'))
		op = second;
	switch (op) {
	case 'R':
		return BLOCK_OP_READ;
	case 'W':
		return BLOCK_OP_WRITE;
	case 'F':
		return BLOCK_OP_FLUSH;
	case 'D':
		return BLOCK_OP_DISCARD;
	default:
		return BLOCK_OP_OTHER;
	}
}

/* Fills `in` for a request issued now by the current task; false when the
 * task is filtered out. */
static __always_inline bool issue_start(struct issue *in, __u32 dev, __u32 op, __u32 bytes)
{
	if (!task_wanted())
		return false;
	__builtin_memset(in, 0, sizeof(*in));
	in->ts = bpf_ktime_get_ns();
	in->dev = dev;
	in->op = op;
	in->bytes = bytes;
	if (want_cgroup)
		in->cgroup_id = bpf_get_current_cgroup_id();
	in->tgid = bpf_get_current_pid_tgid() >> 32;
	if (want_comm)
		bpf_get_current_comm(in->comm, TASK_COMM_LEN);
	return true;
}

static __always_inline __u64 event_part(const struct issue *in)
{
	__u64 dev = want_disk ? in->dev : 0;
	__u64 op = want_op ? in->op : 0;

	return dev << KEY_DEV_SHIFT | op;
}

static __always_inline void count_aggregated(const struct issue *in, __u64 latency_ns)
{
	struct agg_key key;
	__u64 *cells;

	__builtin_memset(&key, 0, sizeof(key));
	if (want_cgroup)
		key.cgroup_id = in->cgroup_id;
	if (want_pid)
		key.tgid = in->tgid;
	if (want_comm)
		__builtin_memcpy(key.comm, in->comm, TASK_COMM_LEN);
	key.event = want_event ? event_part(in) : 0;
	cells = agg_cells_of(&key);
	if (!cells)
		return;
	agg_add(cells, 0, in->bytes);
	agg_observe(cells, 1, latency_ns);
}

/* Counts a completed request, as its issuer. */
static __always_inline void count_completed(const struct issue *in)
{
	__u64 latency_ns = bpf_ktime_get_ns() - in->ts;
	struct event *e;

	if (aggregate) {
		count_aggregated(in, latency_ns);
		return;
	}
	/* the filters ran at issue: reserve directly and write the issuer */
	e = event_reserve(sizeof(*e));
	if (!e)
		return;
	e->hdr.cgroup_id = in->cgroup_id;
	e->hdr.tgid = in->tgid;
	e->hdr.reserved = 0;
	__builtin_memcpy(e->hdr.comm, in->comm, TASK_COMM_LEN);
	e->latency_ns = latency_ns;
	e->bytes = in->bytes;
	e->dev = in->dev;
	e->op = in->op;
	submit_event(e);
}

/* ---- tp_btf: keyed by the request ------------------------------------- */

/* Older kernels (5.10) name the disk in the request; newer ones only in
 * its queue. */
struct request___with_rq_disk {
	struct gendisk *rq_disk;
} __attribute__((preserve_access_index));

static __always_inline __u32 request_dev(struct request *rq)
{
	struct gendisk *disk;

	if (bpf_core_field_exists(((struct request___with_rq_disk *)rq)->rq_disk))
		disk = BPF_CORE_READ((struct request___with_rq_disk *)rq, rq_disk);
	else
		disk = BPF_CORE_READ(rq, q, disk);
	if (!disk)
		return 0;
	return (__u32)BPF_CORE_READ(disk, major) << 20 | (__u32)BPF_CORE_READ(disk, first_minor);
}

SEC("tp_btf/block_rq_issue")
int handle_rq_issue(__u64 *ctx)
{
	struct request *rq;
	struct issue in;
	__u64 id;

	/* Two loads, not one at a computed offset (the barrier keeps the
	 * compiler from merging them): the verifier refuses a modified context
	 * pointer, and skips the branch this kernel does not take, whose
	 * argument does not exist here (the flag is a constant once loaded). */
	if (issue_has_queue) {
		rq = (struct request *)ctx[1];
		barrier_var(rq);
	} else {
		rq = (struct request *)ctx[0];
	}
	if (!issue_start(&in, request_dev(rq), op_of_flags(BPF_CORE_READ(rq, cmd_flags)),
			 BPF_CORE_READ(rq, __data_len)))
		return 0;
	id = (__u64)rq;
	bpf_map_update_elem(&by_request, &id, &in, BPF_ANY);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(handle_rq_complete, struct request *rq, int error, unsigned int nr_bytes)
{
	__u64 id = (__u64)rq;
	struct issue *in;

	/* A driver may complete a request in parts: only the last part (all
	 * that is left) ends it. */
	if (nr_bytes < BPF_CORE_READ(rq, __data_len))
		return 0;
	in = bpf_map_lookup_elem(&by_request, &id);
	if (!in)
		return 0;
	count_completed(in);
	bpf_map_delete_elem(&by_request, &id);
	return 0;
}

/* ---- tracepoints: keyed by disk and sector ---------------------------- */

/* Older kernels (5.10) give the completion an event class of its own. */
struct trace_event_raw_block_rq_complete___own_class {
	dev_t dev;
	sector_t sector;
} __attribute__((preserve_access_index));

/* Read with CO-RE reads rather than plain loads: the fields' offsets
 * differ between kernels, and the verifier refuses a relocated offset
 * added to the context pointer. */
SEC("tracepoint/block/block_rq_issue")
int tp_rq_issue(struct trace_event_raw_block_rq *ctx)
{
	struct sector_key key = {};
	struct issue in;
	char rwbs[2] = {};

	key.sector = BPF_CORE_READ(ctx, sector);
	key.dev = BPF_CORE_READ(ctx, dev);
	bpf_core_read(rwbs, sizeof(rwbs), &ctx->rwbs);
	if (!issue_start(&in, key.dev, op_of_rwbs(rwbs[0], rwbs[1]), BPF_CORE_READ(ctx, bytes)))
		return 0;
	bpf_map_update_elem(&by_sector, &key, &in, BPF_ANY);
	return 0;
}

SEC("tracepoint/block/block_rq_complete")
int tp_rq_complete(void *ctx)
{
	struct sector_key key = {};
	struct issue *in;

	if (bpf_core_type_exists(struct trace_event_raw_block_rq_completion)) {
		struct trace_event_raw_block_rq_completion *c = ctx;

		key.sector = BPF_CORE_READ(c, sector);
		key.dev = BPF_CORE_READ(c, dev);
	} else {
		struct trace_event_raw_block_rq_complete___own_class *c = ctx;

		key.sector = BPF_CORE_READ(c, sector);
		key.dev = BPF_CORE_READ(c, dev);
	}
	in = bpf_map_lookup_elem(&by_sector, &key);
	if (!in)
		return 0;
	count_completed(in);
	bpf_map_delete_elem(&by_sector, &key);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
