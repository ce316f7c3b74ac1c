/* SPDX-License-Identifier: GPL-2.0 */
/* What the generic programs of config-defined probes share: the `.rodata`
 * description of the fields to read (set by user space before load, so the
 * verifier sees constants), the per-CPU room the values are read into, the
 * field filters and the record. Tracepoint fields are read from the
 * tracepoint's record (custom_tracepoint.bpf.c); function arguments from
 * registers or the trampoline's context (custom_function.bpf.c). A record
 * is the common header and only the carried fields: numbers as 8 bytes,
 * strings as STRING_BYTES. */
#ifndef SONDE_CUSTOM_H
#define SONDE_CUSTOM_H

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
	__u16 offset; /* in the tracepoint's record; a function's argument index */
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

static __always_inline struct values *scratch_values(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&scratch, &zero);
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

/* Sends the fields read (and kept by every filter) as one record. */
static __always_inline void submit_fields(struct values *v)
{
	void *record = event_start(record_bytes);

	if (!record)
		return;
#pragma unroll
	for (__u32 i = 0; i < MAX_FIELDS; i++)
		carry_field(record, i, v);
	event_submit(record, RECORD_BYTES(record_bytes));
}

#endif
