// SPDX-License-Identifier: GPL-2.0
/* page_cache: pages of the page cache accessed, added (misses) and dirtied,
 * so that the hit ratio is 1 - added / accessed. Additions and dirtyings
 * come from tracepoints every kernel has; accesses only from a function
 * hook (fentry or kprobe on folio_mark_accessed, mark_page_accessed before
 * folios), so the tracepoint-only hook set counts no accesses.
 *
 * Each event counts pages: a large folio (ext4 and xfs make them for big
 * reads and writes) is all of its pages, so the three counters share one
 * unit and the ratio holds whatever the folio sizes. */
#include "common.h"

enum page_cache_kind {
	PAGE_CACHE_ACCESS = 0,
	PAGE_CACHE_MISS = 1,
	PAGE_CACHE_DIRTY = 2,
};

struct event {
	struct event_header hdr;
	__u64 pages;
	__u32 kind; /* enum page_cache_kind */
	__u32 reserved;
};

const volatile struct event event_type = {};
const volatile enum page_cache_kind kind_type = PAGE_CACHE_ACCESS;

/* struct folio from 6.1 until the order moved into _flags_1 (6.6). */
struct folio___order_byte {
	unsigned char _folio_order;
} __attribute__((preserve_access_index));

/* How many pages a folio spans. The flags are the first word of every
 * struct page and folio whatever their type; only a head page (PG_head,
 * whose bit number depends on the kernel's config) is a large folio. */
static __always_inline __u64 folio_pages(struct folio *folio)
{
	__u32 head_bit = bpf_core_enum_value(enum pageflags, PG_head);
	unsigned long flags = 0;
	__u64 order = 0;

	bpf_probe_read_kernel(&flags, sizeof(flags), folio);
	if (!(flags & (1UL << (head_bit & 63))))
		return 1;
	if (bpf_core_field_exists(folio->_flags_1))
		order = BPF_CORE_READ(folio, _flags_1) & 0xff;
	else if (bpf_core_field_exists(((struct folio___order_byte *)folio)->_folio_order))
		order = BPF_CORE_READ((struct folio___order_byte *)folio, _folio_order);
	return 1ULL << (order & 31);
}

/* The kind is the key's event part whatever the labels: it picks the
 * metric (user space shows each key only its kind's counter), so unlike
 * common.h's helpers this never masks it. */
static __always_inline __u64 *kind_cells(__u32 kind)
{
	struct agg_key key;
	__u32 index = kind;

	if (kind < agg_direct_keys)
		return bpf_map_lookup_elem(&agg_direct, &index);
	if (!agg_key_start(&key, kind))
		return NULL;
	key.event = kind;
	return agg_cells_of(&key);
}

static __always_inline int count_pages(enum page_cache_kind kind, __u64 pages)
{
	struct event *e;

	if (aggregate) {
		__u64 *cells;

		if (!task_wanted())
			return 0;
		cells = kind_cells(kind);
		if (cells)
			agg_add(cells, kind, pages);
		return 0;
	}
	e = start_event(struct event);
	if (!e)
		return 0;
	e->pages = pages;
	e->kind = kind;
	e->reserved = 0;
	submit_event(e);
	return 0;
}

/* Accesses: folio_mark_accessed (5.16+; mark_page_accessed calls it there)
 * or, before folios, mark_page_accessed. User space loads the one the
 * kernel has. */
SEC("fentry/folio_mark_accessed")
int BPF_PROG(pc_fentry_folio, struct folio *folio)
{
	return count_pages(PAGE_CACHE_ACCESS, folio_pages(folio));
}

SEC("fentry/mark_page_accessed")
int BPF_PROG(pc_fentry_page, struct page *page)
{
	return count_pages(PAGE_CACHE_ACCESS, 1);
}

SEC("kprobe/folio_mark_accessed")
int BPF_KPROBE(pc_kprobe_folio, struct folio *folio)
{
	return count_pages(PAGE_CACHE_ACCESS, folio_pages(folio));
}

SEC("kprobe/mark_page_accessed")
int BPF_KPROBE(pc_kprobe_page, struct page *page)
{
	return count_pages(PAGE_CACHE_ACCESS, 1);
}

/* Misses: a folio added to a file's page cache, whose order the tracepoint
 * reports where folios can be large (6.x); before, one page. */
SEC("tracepoint/filemap/mm_filemap_add_to_page_cache")
int pc_added(struct trace_event_raw_mm_filemap_op_page_cache *args)
{
	__u64 order = 0;

	if (bpf_core_field_exists(args->order))
		order = BPF_CORE_READ(args, order);
	return count_pages(PAGE_CACHE_MISS, 1ULL << (order & 31));
}

/* Dirtied: a clean folio of a file that is written back becomes dirty
 * (folio_account_dirtied; account_page_dirtied before 5.17). */
SEC("tp_btf/writeback_dirty_folio")
int BPF_PROG(pc_dirty_folio, struct folio *folio, struct address_space *mapping)
{
	return count_pages(PAGE_CACHE_DIRTY, folio_pages(folio));
}

SEC("tp_btf/writeback_dirty_page")
int BPF_PROG(pc_dirty_page, struct page *page, struct address_space *mapping)
{
	return count_pages(PAGE_CACHE_DIRTY, 1);
}

char LICENSE[] SEC("license") = "GPL";
