// SPDX-License-Identifier: GPL-2.0
/* vfs_io: vfs_read()/vfs_write() calls and the bytes they moved, seen on
 * return. Two hook sets carry the same logic: kretprobes, and fexit for
 * kernels without kprobes; user space loads exactly one of them. */
#include "common.h"

enum vfs_op {
	VFS_OP_READ = 0,
	VFS_OP_WRITE = 1,
};

struct event {
	struct event_header hdr;
	__s64 ret; /* bytes moved, or -errno */
	__u32 op;  /* enum vfs_op */
};

const volatile struct event event_type = {};
const volatile enum vfs_op op_type = VFS_OP_READ;

static __always_inline int emit(enum vfs_op op, long ret)
{
	struct event *e;

	if (aggregate) {
		__u64 *cells = NULL;
		struct agg_key key;

		if (!task_wanted())
			return 0;
		cells = agg_direct_cells(op);
		if (!cells) {
			if (!agg_key_start(&key, op))
				return 0;
			cells = agg_cells_of(&key);
		}
		if (cells) {
			agg_add(cells, 0, 1);
			agg_add(cells, 1, ret > 0 ? ret : 0);
		}
		return 0;
	}
	e = start_event(struct event);
	if (!e)
		return 0;
	e->ret = ret;
	e->op = op;
	submit_event(e);
	return 0;
}

SEC("kretprobe/vfs_read")
int BPF_KRETPROBE(kretprobe_vfs_read, long ret)
{
	return emit(VFS_OP_READ, ret);
}

SEC("kretprobe/vfs_write")
int BPF_KRETPROBE(kretprobe_vfs_write, long ret)
{
	return emit(VFS_OP_WRITE, ret);
}

SEC("fexit/vfs_read")
int BPF_PROG(fexit_vfs_read, struct file *file, char *buf, size_t count, loff_t *pos, long ret)
{
	return emit(VFS_OP_READ, ret);
}

SEC("fexit/vfs_write")
int BPF_PROG(fexit_vfs_write, struct file *file, const char *buf, size_t count, loff_t *pos,
	     long ret)
{
	return emit(VFS_OP_WRITE, ret);
}

char LICENSE[] SEC("license") = "GPL";
