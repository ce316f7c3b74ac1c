// SPDX-License-Identifier: GPL-2.0
/* file_open: file opens with their result and latency, entry and exit
 * paired by thread id. Three hook sets carry the same logic, in order of
 * cost: fentry/fexit and kprobes on do_sys_openat2 (the kernel function
 * behind open, openat, openat2 and creat) run only when a file is opened;
 * the openat syscall tracepoints, the fallback, put every system call of
 * every task on the kernel's slower syscall path while attached. User space
 * loads exactly one set. */
#include "common.h"

struct event {
	struct event_header hdr;
	__u64 duration_ns;
	__s32 ret; /* fd, or -errno */
};

const volatile struct event event_type = {};

/* LRU so that a thread killed inside openat() cannot leak its entry. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} start SEC(".maps");

static __always_inline int open_enter(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 ts;

	if (!task_wanted())
		return 0;
	ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&start, &tid, &ts, BPF_ANY);
	return 0;
}

static __always_inline int open_exit(long ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct event *e;
	__u64 *ts;

	ts = bpf_map_lookup_elem(&start, &tid);
	if (!ts)
		return 0;
	e = start_event(struct event);
	if (e) {
		e->duration_ns = bpf_ktime_get_ns() - *ts;
		e->ret = (__s32)ret;
		submit_event(e);
	}
	bpf_map_delete_elem(&start, &tid);
	return 0;
}

SEC("fentry/do_sys_openat2")
int BPF_PROG(fentry_openat2)
{
	return open_enter();
}

SEC("fexit/do_sys_openat2")
int BPF_PROG(fexit_openat2, int dfd, const char *filename, struct open_how *how, long ret)
{
	return open_exit(ret);
}

SEC("kprobe/do_sys_openat2")
int BPF_KPROBE(kprobe_openat2)
{
	return open_enter();
}

SEC("kretprobe/do_sys_openat2")
int BPF_KRETPROBE(kretprobe_openat2, long ret)
{
	return open_exit(ret);
}

SEC("tracepoint/syscalls/sys_enter_openat")
int handle_openat_enter(struct trace_event_raw_sys_enter *ctx)
{
	return open_enter();
}

SEC("tracepoint/syscalls/sys_exit_openat")
int handle_openat_exit(struct trace_event_raw_sys_exit *ctx)
{
	return open_exit(ctx->ret);
}

char LICENSE[] SEC("license") = "GPL";
