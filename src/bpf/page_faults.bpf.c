// SPDX-License-Identifier: GPL-2.0
/* page_faults: page faults taken in user mode, by the faulting task, major
 * or minor as the kernel accounts them. Three hook sets; user space loads
 * exactly one:
 *  - fexit on handle_mm_fault(), which sees the fault's flags and result;
 *  - kprobe + kretprobe on it, paired through a map keyed by thread;
 *  - the x86 tracepoint exceptions/page_fault_user, which fires at the
 *    exception's entry and cannot tell major from minor ("unknown"). */
#include "common.h"

enum fault_kind {
	FAULT_MINOR = 0,
	FAULT_MAJOR = 1,
	FAULT_UNKNOWN = 2,
};

struct event {
	struct event_header hdr;
	__u32 kind; /* enum fault_kind */
};

const volatile struct event event_type = {};
const volatile enum fault_kind kind_type = FAULT_MINOR;

/* Flag and result bits of handle_mm_fault(), unchanged since Linux 5.1
 * (enum fault_flag, enum vm_fault_reason). */
#define FAULT_FLAG_TRIED_BIT 0x20
#define FAULT_FLAG_USER_BIT 0x40
#define VM_FAULT_MAJOR_BIT 0x4
#define VM_FAULT_RETRY_BIT 0x400
/* VM_FAULT_ERROR: OOM, SIGBUS, HWPOISON, HWPOISON_LARGE, SIGSEGV, FALLBACK */
#define VM_FAULT_ERROR_BITS (0x1 | 0x2 | 0x10 | 0x20 | 0x40 | 0x800)

static __always_inline void count_fault(enum fault_kind kind)
{
	struct event *e;

	if (aggregate) {
		__u64 *cells;
		struct agg_key key;

		if (!task_wanted())
			return;
		cells = agg_direct_cells(kind);
		if (!cells) {
			if (!agg_key_start(&key, kind))
				return;
			cells = agg_cells_of(&key);
		}
		if (cells)
			agg_add(cells, 0, 1);
		return;
	}
	e = start_event(struct event);
	if (!e)
		return;
	e->kind = kind;
	submit_event(e);
}

/* Counts a finished handle_mm_fault() the way the kernel's own per-task
 * counters do (mm_account_fault()): a fault that failed or is to be retried
 * is not one, and a retried fault is major. Faults the kernel takes on user
 * memory for itself (copy_from_user, get_user_pages) lack FAULT_FLAG_USER. */
static __always_inline int fault_done(unsigned int flags, unsigned int ret)
{
	if (!(flags & FAULT_FLAG_USER_BIT))
		return 0;
	if (ret & (VM_FAULT_ERROR_BITS | VM_FAULT_RETRY_BIT))
		return 0;
	if ((ret & VM_FAULT_MAJOR_BIT) || (flags & FAULT_FLAG_TRIED_BIT))
		count_fault(FAULT_MAJOR);
	else
		count_fault(FAULT_MINOR);
	return 0;
}

SEC("fexit/handle_mm_fault")
int BPF_PROG(fexit_mm_fault, struct vm_area_struct *vma, unsigned long address, unsigned int flags,
	     struct pt_regs *regs, unsigned int ret)
{
	return fault_done(flags, ret);
}

/* The flags of each thread's fault in progress, for the kretprobe. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid */
	__type(value, __u32);
} fault_flags SEC(".maps");

SEC("kprobe/handle_mm_fault")
int BPF_KPROBE(kprobe_mm_fault, struct vm_area_struct *vma, unsigned long address, unsigned int flags)
{
	__u64 id = bpf_get_current_pid_tgid();

	if (!(flags & FAULT_FLAG_USER_BIT) || !tgid_wanted())
		return 0;
	bpf_map_update_elem(&fault_flags, &id, &flags, BPF_ANY);
	return 0;
}

SEC("kretprobe/handle_mm_fault")
int BPF_KRETPROBE(kretprobe_mm_fault, unsigned int ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 *flags = bpf_map_lookup_elem(&fault_flags, &id);
	__u32 seen;

	if (!flags)
		return 0;
	seen = *flags;
	bpf_map_delete_elem(&fault_flags, &id);
	return fault_done(seen, ret);
}

SEC("tracepoint/exceptions/page_fault_user")
int tp_page_fault_user(void *ctx)
{
	count_fault(FAULT_UNKNOWN);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
