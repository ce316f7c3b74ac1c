// SPDX-License-Identifier: GPL-2.0
/* fs_latency: how long ext4's and xfs's read, write, open and fsync file
 * operations take, timed from entry to return of the filesystem's own
 * function (below the VFS, so only those filesystems' files count).
 *
 * Two hook sets carry the same logic: fentry/fexit, and kprobe/kretprobe
 * for kernels without fentry; user space loads exactly one, and of it only
 * the programs whose function exists (xfs is often a module that is not
 * loaded). Program names are <fs>_<op>_<hook>: fe fentry, fx fexit, kp
 * kprobe, kr kretprobe.
 *
 * Entry and return are paired in a hash keyed by thread id, not in
 * task-local storage, which Linux 5.10 lacks. */
#include "common.h"

enum fs_kind {
	FS_EXT4 = 0,
	FS_XFS = 1,
};

enum fs_op {
	FS_OP_READ = 0,
	FS_OP_WRITE = 1,
	FS_OP_OPEN = 2,
	FS_OP_FSYNC = 3,
};

/* The probe's part of a key: fs * FS_OPS + op, so that every (fs, op)
 * indexes the direct aggregation array. */
#define FS_OPS 4

struct event {
	struct event_header hdr;
	__u64 duration_ns;
	__u32 fs; /* enum fs_kind */
	__u32 op; /* enum fs_op */
};

const volatile struct event event_type = {};
const volatile enum fs_kind fs_kind_type = FS_EXT4;
const volatile enum fs_op fs_op_type = FS_OP_READ;

/* Whether the fs and op labels are on: a label that is off must not
 * split the kernel's counts. */
const volatile bool want_fs = true;
const volatile bool want_op = true;

/* Entry time per thread in one of the hooked functions. LRU: a thread
 * whose return was never seen (a kretprobe that ran out of instances)
 * leaves an entry that must not fill the map for good. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} starts SEC(".maps");

static __always_inline int op_start(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 now;

	if (!task_wanted())
		return 0;
	now = bpf_ktime_get_ns();
	bpf_map_update_elem(&starts, &tid, &now, BPF_ANY);
	return 0;
}

static __always_inline void observe(__u64 key, __u64 duration_ns)
{
	/* op_start applied the filters: only wanted threads have a start */
	__u64 *cells = agg_direct_cells(key);
	struct agg_key agg;

	if (!cells) {
		if (!agg_key_start(&agg, key))
			return;
		cells = agg_cells_of(&agg);
	}
	if (cells)
		agg_observe(cells, 0, duration_ns);
}

static __always_inline int op_done(enum fs_kind fs, enum fs_op op)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *start = bpf_map_lookup_elem(&starts, &tid);
	__u64 duration_ns;
	struct event *e;

	if (!start)
		return 0;
	duration_ns = bpf_ktime_get_ns() - *start;
	bpf_map_delete_elem(&starts, &tid);
	if (!want_fs)
		fs = FS_EXT4;
	if (!want_op)
		op = FS_OP_READ;
	if (aggregate) {
		observe((__u64)fs * FS_OPS + op, duration_ns);
		return 0;
	}
	e = start_event(struct event);
	if (!e)
		return 0;
	e->duration_ns = duration_ns;
	e->fs = fs;
	e->op = op;
	submit_event(e);
	return 0;
}

/* The four programs that time `func` as (fs, op). */
#define FS_HOOKS(name, func, fs, op)                                                                         \
	SEC("fentry/" #func)                                                                                 \
	int name##_fe(void *ctx)                                                                             \
	{                                                                                                    \
		return op_start();                                                                           \
	}                                                                                                    \
	SEC("fexit/" #func)                                                                                  \
	int name##_fx(void *ctx)                                                                             \
	{                                                                                                    \
		return op_done(fs, op);                                                                      \
	}                                                                                                    \
	SEC("kprobe/" #func)                                                                                 \
	int name##_kp(struct pt_regs *ctx)                                                                   \
	{                                                                                                    \
		return op_start();                                                                           \
	}                                                                                                    \
	SEC("kretprobe/" #func)                                                                              \
	int name##_kr(struct pt_regs *ctx)                                                                   \
	{                                                                                                    \
		return op_done(fs, op);                                                                      \
	}

FS_HOOKS(ext4_read, ext4_file_read_iter, FS_EXT4, FS_OP_READ)
FS_HOOKS(ext4_write, ext4_file_write_iter, FS_EXT4, FS_OP_WRITE)
FS_HOOKS(ext4_open, ext4_file_open, FS_EXT4, FS_OP_OPEN)
FS_HOOKS(ext4_fsync, ext4_sync_file, FS_EXT4, FS_OP_FSYNC)
FS_HOOKS(xfs_read, xfs_file_read_iter, FS_XFS, FS_OP_READ)
FS_HOOKS(xfs_write, xfs_file_write_iter, FS_XFS, FS_OP_WRITE)
FS_HOOKS(xfs_open, xfs_file_open, FS_XFS, FS_OP_OPEN)
FS_HOOKS(xfs_fsync, xfs_file_fsync, FS_XFS, FS_OP_FSYNC)

char LICENSE[] SEC("license") = "GPL";
