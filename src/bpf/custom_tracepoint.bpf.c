// SPDX-License-Identifier: GPL-2.0
/* custom_tracepoint: the one program behind every probe defined in the
 * config on a tracepoint. User space reads the tracepoint's record layout
 * from tracefs and sets, before load, which fields to read (offset, size,
 * kind), which to filter on and where the record carries them; the
 * verifier sees all of it as constants, so unused fields and filters cost
 * nothing. A record is the common header and only the carried fields:
 * numbers as 8 bytes, strings as STRING_BYTES. */
#include "common.h"

#define MAX_FIELDS 4
#define STRING_BYTES 64
#define MAX_NUMBER_VALUES 8
#define MAX_STRING_VALUES 4

enum field_kind {
	FIELD_NONE = 0,
	FIELD_NUMBER = 1,
	FIELD_INLINE_STRING = 2,
	FIELD_DATA_LOC_STRING = 3,
	FIELD_USER_STRING = 4,
	FIELD_KERNEL_STRING = 5,
};

struct field {
	__u16 kind;
	__u16 offset; /* in the tracepoint's record */
	__u16 size;   /* of a number, or of an inline char array */
	__u16 record_offset; /* in our record; 0: not carried */
	__u32 filter_count;  /* values the filter keeps; 0: no filter */
	__u32 reserved;
	__u64 numbers[MAX_NUMBER_VALUES];
	/* chars, declared as words so that the skeleton's Rust type stays
	 * within the array sizes Rust derives Default for */
	__u64 strings[MAX_STRING_VALUES][STRING_BYTES / 8];
};

const volatile struct field fields[MAX_FIELDS] = {};
/* Bytes of a record: the header plus the carried fields. */
const volatile __u32 record_bytes = sizeof(struct event_header);

/* The first bytes of the largest record, so that the skeleton carries the
 * header type; the real size is record_bytes. */
struct event {
	struct event_header hdr;
};

const volatile struct event event_type = {};

/* What the fields read this event: too large for the stack with four
 * strings, so one per-CPU slot. */
struct values {
	__u64 numbers[MAX_FIELDS];
	char strings[MAX_FIELDS][STRING_BYTES];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__uint(value_size, sizeof(struct values)); /* no BTF type: its char arrays are too long for the skeleton's Rust types */
} scratch SEC(".maps");

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

static __always_inline bool string_equal(const char *a, const volatile char *b)
{
	for (int i = 0; i < STRING_BYTES; i++) {
		if (a[i] != b[i])
			return false;
		if (a[i] == '\0')
			return true;
	}
	return false;
}

static __always_inline bool field_wanted(__u32 i, struct values *v)
{
	__u32 count = fields[i].filter_count;

	if (!count)
		return true;
	if (fields[i].kind == FIELD_NUMBER) {
		for (__u32 j = 0; j < MAX_NUMBER_VALUES && j < count; j++) {
			if (v->numbers[i] == fields[i].numbers[j])
				return true;
		}
		return false;
	}
	for (__u32 j = 0; j < MAX_STRING_VALUES && j < count; j++) {
		if (string_equal(v->strings[i], (const volatile char *)fields[i].strings[j]))
			return true;
	}
	return false;
}

static __always_inline void carry_field(void *record, __u32 i, struct values *v)
{
	__u32 at = fields[i].record_offset;

	if (!at)
		return;
	if (fields[i].kind == FIELD_NUMBER)
		*(__u64 *)(record + at) = v->numbers[i];
	else
		__builtin_memcpy(record + at, v->strings[i], STRING_BYTES);
}

SEC("tracepoint")
int custom_tracepoint(void *ctx)
{
	__u32 zero = 0;
	struct values *v;
	void *record;

	if (!tgid_wanted())
		return 0;
	v = bpf_map_lookup_elem(&scratch, &zero);
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
	record = event_start(record_bytes);
	if (!record)
		return 0;
#pragma unroll
	for (__u32 i = 0; i < MAX_FIELDS; i++)
		carry_field(record, i, v);
	event_submit(record, RECORD_BYTES(record_bytes));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
