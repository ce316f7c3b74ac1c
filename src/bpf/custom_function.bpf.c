// SPDX-License-Identifier: GPL-2.0
/* custom_function: the programs behind every probe defined in the config on
 * a kernel function, one per hook kind. User space reads the function's
 * prototype from the kernel's BTF and sets, before load, which arguments
 * to read (a field's `offset` is the argument's index), which to filter on
 * and where the record carries them (custom.h). fentry/fexit read the
 * trampoline's context, kprobes the registers; a kretprobe finds the
 * arguments where its entry kprobe left them, by thread id (no task
 * storage: it must load on 5.10). */
#include "custom.h"

/* Arguments a probe reads: the ones passed in registers everywhere. */
#define MAX_ARGS 6
/* Slots of an fexit context: up to 12 arguments, then the return value. */
#define MAX_CONTEXT_SLOTS 13

/* The return value's index in an fexit context (the argument count); a
 * field whose offset is this reads the return value. */
const volatile __u32 ret_index = 0;
/* Whether a kretprobe reads arguments, which its entry kprobe then saves. */
const volatile bool saves_args = false;

struct saved_args {
	__u64 args[MAX_ARGS];
};

/* Arguments of calls in progress, by thread: a thread runs one call of the
 * function at a time, unless it recurses; LRU, so that calls whose return
 * is never seen (a kretprobe's instances exhausted) age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct saved_args);
} in_flight SEC(".maps");

/* Context slot `i`, read at a constant offset: the verifier refuses a
 * context pointer moved by a computed amount, so each case is its own load
 * (barrier_var after each keeps clang from merging them into one load
 * from a computed address). */
static __always_inline __u64 context_slot(__u64 *ctx, __u32 i)
{
	__u64 v = 0;

	switch (i) {
	case 0: v = ctx[0]; barrier_var(v); break;
	case 1: v = ctx[1]; barrier_var(v); break;
	case 2: v = ctx[2]; barrier_var(v); break;
	case 3: v = ctx[3]; barrier_var(v); break;
	case 4: v = ctx[4]; barrier_var(v); break;
	case 5: v = ctx[5]; barrier_var(v); break;
	case 6: v = ctx[6]; barrier_var(v); break;
	case 7: v = ctx[7]; barrier_var(v); break;
	case 8: v = ctx[8]; barrier_var(v); break;
	case 9: v = ctx[9]; barrier_var(v); break;
	case 10: v = ctx[10]; barrier_var(v); break;
	case 11: v = ctx[11]; barrier_var(v); break;
	case 12: v = ctx[12]; barrier_var(v); break;
	}
	return v;
}

/* Register argument `i` at a kprobe, at a constant offset as above. */
static __always_inline __u64 register_arg(struct pt_regs *ctx, __u32 i)
{
	__u64 v = 0;

	switch (i) {
	case 0: v = PT_REGS_PARM1(ctx); barrier_var(v); break;
	case 1: v = PT_REGS_PARM2(ctx); barrier_var(v); break;
	case 2: v = PT_REGS_PARM3(ctx); barrier_var(v); break;
	case 3: v = PT_REGS_PARM4(ctx); barrier_var(v); break;
	case 4: v = PT_REGS_PARM5(ctx); barrier_var(v); break;
	case 5: v = PT_REGS_PARM6(ctx); barrier_var(v); break;
	}
	return v;
}

/* Turns the raw argument in v->numbers[i] into the field: a number cut to
 * its size (a register's upper bits are not the argument's), or the string
 * it points to. False when the field's filter drops the event. */
static __always_inline bool finish_field(__u32 i, struct values *v)
{
	__u32 kind = fields[i].kind;
	__u32 size = fields[i].size;
	void *pointer = (void *)v->numbers[i];
	long n = -1;

	if (kind == FIELD_NUMBER) {
		if (size < 8)
			v->numbers[i] &= (1ULL << (size * 8)) - 1;
		return field_wanted(i, v);
	}
	if (kind == FIELD_USER_STRING)
		n = bpf_probe_read_user_str(v->strings[i], STRING_BYTES, pointer);
	else
		n = bpf_probe_read_kernel_str(v->strings[i], STRING_BYTES, pointer);
	/* an unreadable string (a user page not present) reads as empty */
	if (n < 0)
		v->strings[i][0] = '\0';
	return field_wanted(i, v);
}

/* Reads every field from the trampoline's context and sends the record. */
static __always_inline int from_context(__u64 *ctx)
{
	struct values *v;

	if (!tgid_wanted())
		return 0;
	v = scratch_values();
	if (!v)
		return 0;
#pragma unroll
	for (__u32 i = 0; i < MAX_FIELDS; i++) {
		if (fields[i].kind == FIELD_NONE)
			continue;
		v->numbers[i] = context_slot(ctx, fields[i].offset);
		if (!finish_field(i, v))
			return 0;
	}
	submit_fields(v);
	return 0;
}

SEC("fentry")
int custom_fentry(__u64 *ctx)
{
	return from_context(ctx);
}

/* The return value follows the arguments in the context: a field of
 * offset ret_index reads it. */
SEC("fexit")
int custom_fexit(__u64 *ctx)
{
	return from_context(ctx);
}

SEC("kprobe")
int custom_kprobe(struct pt_regs *ctx)
{
	struct values *v;

	if (!tgid_wanted())
		return 0;
	v = scratch_values();
	if (!v)
		return 0;
#pragma unroll
	for (__u32 i = 0; i < MAX_FIELDS; i++) {
		if (fields[i].kind == FIELD_NONE)
			continue;
		v->numbers[i] = register_arg(ctx, fields[i].offset);
		if (!finish_field(i, v))
			return 0;
	}
	submit_fields(v);
	return 0;
}

/* Saves the arguments of a call a kretprobe reads, for its return. */
SEC("kprobe")
int custom_kretprobe_entry(struct pt_regs *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct saved_args saved = {};

	if (!task_wanted())
		return 0;
#pragma unroll
	for (__u32 i = 0; i < MAX_ARGS; i++)
		saved.args[i] = register_arg(ctx, i);
	bpf_map_update_elem(&in_flight, &tid, &saved, BPF_ANY);
	return 0;
}

SEC("kretprobe")
int custom_kretprobe(struct pt_regs *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct saved_args *saved = NULL;
	struct values *v;

	if (!tgid_wanted())
		return 0;
	if (saves_args) {
		saved = bpf_map_lookup_elem(&in_flight, &tid);
		/* entered before the probe attached, or pushed out of the LRU */
		if (!saved)
			return 0;
	}
	v = scratch_values();
	if (!v)
		goto done;
#pragma unroll
	for (__u32 i = 0; i < MAX_FIELDS; i++) {
		__u32 arg = fields[i].offset;
		__u64 raw = 0;

		if (fields[i].kind == FIELD_NONE)
			continue;
		/* barrier_var: two loads, not one from a select of the context
		 * and the map value (the verifier refuses a moved ctx) */
		if (arg == ret_index) {
			raw = PT_REGS_RC(ctx);
			barrier_var(raw);
		} else if (saved && arg < MAX_ARGS) {
			raw = saved->args[arg];
			barrier_var(raw);
		}
		v->numbers[i] = raw;
		if (!finish_field(i, v))
			goto done;
	}
	submit_fields(v);
done:
	if (saved)
		bpf_map_delete_elem(&in_flight, &tid);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
