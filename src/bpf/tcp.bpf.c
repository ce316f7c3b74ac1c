// SPDX-License-Identifier: GPL-2.0
/* tcp: connects by outcome with their latency, accepts, retransmits, resets
 * sent and received, and the number of sockets in each state, from the
 * socket state tracepoint (stable since 4.16) and the tcp tracepoints.
 *
 * Most of these run in softirq context, where `current` is whatever task the
 * packet interrupted. So a socket's owner is the task that connected it,
 * recorded when the socket enters SYN_SENT (inside connect(), where
 * `current` is that task), and its later events carry the owner's header.
 * Events on sockets without a recorded owner (accepted ones, or a RST sent
 * for a port with no socket) carry an empty header: no comm, pid or cgroup,
 * and are left out when a pid or comm filter is set. */
#include "common.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

/* The kernel's TCP states (include/net/tcp_states.h), stable across
 * versions. */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10

/* What a record counts; user space maps each kind to its metrics. */
enum tcp_event_kind {
	TCP_EV_CONNECT = 1,    /* detail: 0 established, the socket error, or CONNECT_ABORTED */
	TCP_EV_ACCEPT = 2,     /* detail: 0 */
	TCP_EV_RETRANSMIT = 3, /* detail: the socket's state */
	TCP_EV_RESET = 4,      /* detail: enum tcp_reset_direction */
	TCP_EV_STATE = 5,      /* detail: the state whose count changes by `value` */
};

/* A connect that left SYN_SENT with no error: its owner closed it. */
#define CONNECT_ABORTED 0xffff

enum tcp_reset_direction {
	TCP_RESET_SENT = 1,
	TCP_RESET_RECEIVED = 2,
};

struct event {
	struct event_header hdr;
	/* connect latency in ns (TCP_EV_CONNECT), or the change of a state's
	 * socket count, +1 or -1 (TCP_EV_STATE) */
	__s64 value;
	__u32 kind; /* enum tcp_event_kind */
	__u32 detail;
	__u16 dport; /* remote port of a connect */
	__u16 lport; /* local port of an accepted connection */
};

const volatile struct event event_type = {};

/* Who connected a socket and when it sent its SYN: kept for the socket's
 * life, so that its outcome, retransmits and resets are the owner's. LRU so
 * that sockets freed without reaching CLOSE cannot fill it. */
struct owner {
	struct event_header hdr;
	__u64 syn_ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct owner);
} owners SEC(".maps");

/* Sockets counted in the per-state gauge, with the state they are counted
 * in. Only sockets born while sonde runs are counted: a socket that existed
 * before has no +1 to undo when it changes state. A plain hash, not LRU:
 * an evicted socket could never take its count back, so a socket that finds
 * the table full is not counted at all. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} counted SEC(".maps");

/* The records of tcp_retransmit_skb and tcp_send_reset: a shared template
 * (tcp_event_sk_skb) on older kernels, each its own event on newer ones.
 * All start with the segment and the socket; CO-RE picks the layout the
 * running kernel has. Read through a helper: the verifier refuses a ctx
 * load at an offset the compiler computed at run time. */
struct trace_event_raw_tcp_event_sk_skb___shared {
	const void *skaddr;
} __attribute__((preserve_access_index));

struct trace_event_raw_tcp_retransmit_skb___own {
	const void *skaddr;
} __attribute__((preserve_access_index));

struct trace_event_raw_tcp_send_reset___own {
	const void *skaddr;
} __attribute__((preserve_access_index));

/* Whether any filter asks for particular tasks: events without an owner
 * cannot pass one. */
static __always_inline bool task_filtered(void)
{
	return filter_tgid || filter_comm_count;
}

/* Reserves a record whose header is `hdr`, or an empty one. */
static __always_inline struct event *event_with(const struct event_header *hdr, __u32 kind, __u32 detail)
{
	struct event *e = event_reserve(sizeof(*e));

	if (!e)
		return NULL;
	if (hdr)
		e->hdr = *hdr;
	else
		__builtin_memset(&e->hdr, 0, sizeof(e->hdr));
	e->value = 0;
	e->kind = kind;
	e->detail = detail;
	e->dport = 0;
	e->lport = 0;
	return e;
}

/* As event_with, for events the filters apply to. */
static __always_inline struct event *event_for(const struct event_header *hdr, __u32 kind, __u32 detail)
{
	if (!hdr && task_filtered())
		return NULL;
	return event_with(hdr, kind, detail);
}

static __always_inline void emit(const struct event_header *hdr, __u32 kind, __u32 detail)
{
	struct event *e = event_for(hdr, kind, detail);

	if (e)
		submit_event(e);
}

static __always_inline const struct event_header *owner_of(const void *sk)
{
	__u64 key = (__u64)sk;
	struct owner *owner = bpf_map_lookup_elem(&owners, &key);

	return owner ? &owner->hdr : NULL;
}

/* Inside connect(): the current task is the socket's owner. */
static __always_inline void record_owner(__u64 sk)
{
	struct owner owner = {};

	if (!task_wanted())
		return;
	owner.hdr.tgid = bpf_get_current_pid_tgid() >> 32;
	owner.hdr.cgroup_id = bpf_get_current_cgroup_id();
	if (want_comm)
		bpf_get_current_comm(owner.hdr.comm, TASK_COMM_LEN);
	owner.syn_ns = bpf_ktime_get_ns();
	bpf_map_update_elem(&owners, &sk, &owner, BPF_ANY);
}

/* A socket left SYN_SENT: established, or failed with its error. */
static __always_inline void connect_done(__u64 sk, int newstate, __u16 dport)
{
	struct owner *owner = bpf_map_lookup_elem(&owners, &sk);
	struct event *e;
	__u32 outcome = 0;

	if (!owner)
		return;
	if (newstate != TCP_ESTABLISHED) {
		outcome = BPF_CORE_READ((struct sock *)sk, sk_err);
		if (!outcome)
			outcome = CONNECT_ABORTED;
	}
	e = event_for(&owner->hdr, TCP_EV_CONNECT, outcome);
	if (!e)
		return;
	e->value = bpf_ktime_get_ns() - owner->syn_ns;
	e->dport = dport;
	submit_event(e);
}

/* The gauge is host-wide: filters do not apply, and the empty header keeps
 * a state's +1 and -1 in one series. */
static __always_inline void state_delta(__u32 state, __s64 delta)
{
	struct event *e = event_with(NULL, TCP_EV_STATE, state);

	if (!e)
		return;
	e->value = delta;
	submit_event(e);
}

/* Moves a socket's count from its counted state to `newstate`. A socket is
 * born counted when it leaves CLOSE, or when a listener clones it. */
static __always_inline void count_state(__u64 sk, int oldstate, int newstate)
{
	__u32 *counted_state = bpf_map_lookup_elem(&counted, &sk);
	__u32 state = newstate;
	bool born = oldstate == TCP_CLOSE || (oldstate == TCP_LISTEN && newstate == TCP_SYN_RECV);

	if (counted_state)
		state_delta(*counted_state, -1);
	else if (!born)
		return;
	if (newstate == TCP_CLOSE) {
		bpf_map_delete_elem(&counted, &sk);
		return;
	}
	if (bpf_map_update_elem(&counted, &sk, &state, BPF_ANY) == 0)
		state_delta(state, 1);
}

SEC("tracepoint/sock/inet_sock_set_state")
int handle_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	__u64 sk = (__u64)ctx->skaddr;
	int oldstate = ctx->oldstate;
	int newstate = ctx->newstate;

	if (ctx->protocol != IPPROTO_TCP)
		return 0;
	count_state(sk, oldstate, newstate);
	if (newstate == TCP_SYN_SENT) {
		record_owner(sk);
	} else if (oldstate == TCP_SYN_SENT) {
		connect_done(sk, newstate, ctx->dport);
	} else if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		struct event *e = event_for(NULL, TCP_EV_ACCEPT, 0);

		if (e) {
			e->lport = ctx->sport;
			submit_event(e);
		}
	}
	if (newstate == TCP_CLOSE)
		bpf_map_delete_elem(&owners, &sk);
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int handle_retransmit(void *ctx)
{
	const void *sk;

	if (bpf_core_type_exists(struct trace_event_raw_tcp_retransmit_skb___own))
		sk = BPF_CORE_READ((struct trace_event_raw_tcp_retransmit_skb___own *)ctx, skaddr);
	else
		sk = BPF_CORE_READ((struct trace_event_raw_tcp_event_sk_skb___shared *)ctx, skaddr);
	emit(owner_of(sk), TCP_EV_RETRANSMIT, BPF_CORE_READ((struct sock *)sk, __sk_common.skc_state));
	return 0;
}

/* A listener's SYN-ACK, sent again: a handshake the client has not
 * finished. */
SEC("tracepoint/tcp/tcp_retransmit_synack")
int handle_retransmit_synack(void *ctx)
{
	emit(NULL, TCP_EV_RETRANSMIT, TCP_SYN_RECV);
	return 0;
}

/* The socket is NULL for a RST answering a segment no socket wanted (a
 * connect to a closed port). */
SEC("tracepoint/tcp/tcp_send_reset")
int handle_send_reset(void *ctx)
{
	const void *sk;

	if (bpf_core_type_exists(struct trace_event_raw_tcp_send_reset___own))
		sk = BPF_CORE_READ((struct trace_event_raw_tcp_send_reset___own *)ctx, skaddr);
	else
		sk = BPF_CORE_READ((struct trace_event_raw_tcp_event_sk_skb___shared *)ctx, skaddr);
	emit(sk ? owner_of(sk) : NULL, TCP_EV_RESET, TCP_RESET_SENT);
	return 0;
}

SEC("tracepoint/tcp/tcp_receive_reset")
int handle_receive_reset(struct trace_event_raw_tcp_event_sk *ctx)
{
	emit(owner_of(ctx->skaddr), TCP_EV_RESET, TCP_RESET_RECEIVED);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
