// SPDX-License-Identifier: GPL-2.0
/* Not a probe: tells the cgroup enricher about every cgroup of the default
 * (v2) hierarchy as the kernel creates and removes it, so that a cgroup
 * that lives for milliseconds is named even though it is gone before any
 * walk of the cgroup2 tree could see it.
 *
 * A record carries the cgroup's id, its parent's id and its own directory
 * name rather than its path: user space appends the name to the parent's
 * path as it already knows it, so a learned path is spelled exactly as a
 * walk of the mounted tree would spell it (a bind-mounted subtree, a cgroup
 * namespace), and a name (at most NAME_MAX bytes) always fits. It also means
 * only the tracepoint's first argument is read: BTF tracepoints refuse
 * access to a `const char *` argument before 5.17, and the path argument is
 * one. Records come in creation order (mkdir holds cgroup_mutex, and the
 * tracepoint fires before the new directory can be looked up), so a
 * parent's record always precedes its children's. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>

#define CGROUP_NAME_LEN 256 /* NAME_MAX and its NUL */
#define CHANGE_MADE 1
#define CHANGE_REMOVED 2

struct cgroup_change {
	__u64 id;        /* cgrp->kn->id: what bpf_get_current_cgroup_id() returns */
	__u64 parent_id; /* 0 for a removal */
	__u32 kind;      /* CHANGE_MADE or CHANGE_REMOVED */
	__u32 name_len;  /* bytes of `name` before its NUL (0 for a removal) */
	char name[CGROUP_NAME_LEN];
};

/* Makes the skeleton carry `struct cgroup_change` for user space. */
const volatile struct cgroup_change change_type = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024); /* resized by user space before load */
} changes SEC(".maps");

/* Slot 0: records the ring had no room for; their cgroups are named by a
 * walk instead, if they still exist by then. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* The default hierarchy is the one whose /proc/<pid>/cgroup line starts
 * with 0: cgroup v2, the unified one on a v1/v2 hybrid. v1 hierarchies'
 * ids are not what bpf_get_current_cgroup_id() returns. */
static __always_inline bool on_default_hierarchy(struct cgroup *cgrp)
{
	return BPF_CORE_READ(cgrp, root, hierarchy_id) == 0;
}

static __always_inline struct cgroup_change *change_start(struct cgroup *cgrp, __u32 kind)
{
	struct cgroup_change *c;
	__u32 slot = 0;

	c = bpf_ringbuf_reserve(&changes, sizeof(*c), 0);
	if (!c) {
		__u64 *count = bpf_map_lookup_elem(&lost, &slot);

		if (count)
			*count += 1; /* per-CPU slot: no atomics needed */
		return NULL;
	}
	c->id = BPF_CORE_READ(cgrp, kn, id);
	c->kind = kind;
	c->parent_id = 0;
	c->name_len = 0;
	c->name[0] = '\0';
	return c;
}

SEC("tp_btf/cgroup_mkdir")
int BPF_PROG(cgroup_made, struct cgroup *cgrp)
{
	struct cgroup_change *c;
	const char *name;
	long copied;

	if (!on_default_hierarchy(cgrp))
		return 0;
	c = change_start(cgrp, CHANGE_MADE);
	if (!c)
		return 0;
	/* The parent's own css links to the parent cgroup; `self.parent` is
	 * spelled the same way from 5.10 to today, unlike kernfs_node's. */
	c->parent_id = BPF_CORE_READ(cgrp, self.parent, cgroup, kn, id);
	name = BPF_CORE_READ(cgrp, kn, name);
	copied = bpf_probe_read_kernel_str(c->name, sizeof(c->name), name);
	c->name_len = copied > 0 ? copied - 1 : 0;
	bpf_ringbuf_submit(c, 0);
	return 0;
}

SEC("tp_btf/cgroup_rmdir")
int BPF_PROG(cgroup_removed, struct cgroup *cgrp)
{
	struct cgroup_change *c;

	if (!on_default_hierarchy(cgrp))
		return 0;
	c = change_start(cgrp, CHANGE_REMOVED);
	if (c)
		bpf_ringbuf_submit(c, 0);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
