// SPDX-License-Identifier: GPL-2.0
/* custom_tracepoint: the one program behind every probe defined in the
 * config on a tracepoint. User space reads the tracepoint's record layout
 * from tracefs and sets, before load, which fields to read (offset, size,
 * kind), which to filter on and where the record carries them; the
 * verifier sees all of it as constants, so unused fields and filters cost
 * nothing. A record is the common header and only the carried fields:
 * numbers as 8 bytes, strings as STRING_BYTES. */
#include "custom.h"

static __always_inline void read_field(void *ctx, __u32 i, struct values *v)
{
	__u32 kind = fields[i].kind;
	void *at = ctx + fields[i].offset;
	__u64 pointer = 0;
	__u32 loc = 0;
	long n = -1;

	if (kind == FIELD_NUMBER) {
		__u32 size = fields[i].size;

		v->numbers[i] = 0;
		if (size > 8)
			size = 8;
		bpf_probe_read_kernel(&v->numbers[i], size, at);
		return;
	}
	if (kind == FIELD_INLINE_STRING) {
		__u32 size = fields[i].size;

		if (size > STRING_BYTES)
			size = STRING_BYTES;
		n = bpf_probe_read_kernel_str(v->strings[i], size, at);
	} else if (kind == FIELD_DATA_LOC_STRING) {
		bpf_probe_read_kernel(&loc, sizeof(loc), at);
		n = bpf_probe_read_kernel_str(v->strings[i], STRING_BYTES, ctx + (loc & 0xffff));
	} else if (kind == FIELD_USER_STRING || kind == FIELD_KERNEL_STRING) {
		bpf_probe_read_kernel(&pointer, sizeof(pointer), at);
		if (kind == FIELD_USER_STRING)
			n = bpf_probe_read_user_str(v->strings[i], STRING_BYTES, (void *)pointer);
		else
			n = bpf_probe_read_kernel_str(v->strings[i], STRING_BYTES, (void *)pointer);
	}
	/* an unreadable string (a user page not present) reads as empty */
	if (n < 0)
		v->strings[i][0] = '\0';
}

SEC("tracepoint")
int custom_tracepoint(void *ctx)
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
		read_field(ctx, i, v);
		if (!field_wanted(i, v))
			return 0;
	}
	submit_fields(v);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
