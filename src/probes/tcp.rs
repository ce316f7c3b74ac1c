//! `tcp`: connects by outcome with their latency, accepts, retransmits,
//! resets sent and received, and the sockets in each TCP state now. Each
//! kind of event counts in its own metrics (see `Decoder::metrics`).

use std::ops::Range;
use std::sync::Arc;

use super::{keep, Builtin};
use crate::decode::{decode, DecodeError, Decoded, Decoder};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec, Unit};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/tcp.skel.rs"));
}
use skel::{types, TcpSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

pub const PROBE: Builtin = Builtin { spec, load, decoder };

/// The probe's own labels: `outcome` (connects), `dport` (connects),
/// `lport` (accepts), `kind` (retransmits), `direction` (resets), `state`
/// (the sockets gauge).
const EVENT_LABELS: [&str; 6] = ["outcome", "dport", "lport", "kind", "direction", "state"];

fn spec() -> ProbeSpec {
    let summary = "TCP connects by outcome with latency, accepts, retransmits, resets, and sockets per state.";
    ProbeSpec::new("tcp", summary, &EVENT_LABELS, &["outcome", "kind", "direction", "state"])
        .hook(HookSpec::new(
            HookKind::Tracepoint,
            &[
                ("handle_set_state", "sock/inet_sock_set_state"),
                ("handle_retransmit", "tcp/tcp_retransmit_skb"),
                ("handle_retransmit_synack", "tcp/tcp_retransmit_synack"),
                ("handle_send_reset", "tcp/tcp_send_reset"),
                ("handle_receive_reset", "tcp/tcp_receive_reset"),
            ],
        ))
        .metric(MetricSpec::counter(
            "tcp_connects_total",
            "Active TCP opens (connect()) that left SYN_SENT, by outcome: established, refused (RST), timeout, aborted, or the socket error.",
        ))
        .metric(MetricSpec::histogram(
            "tcp_connect_duration_seconds",
            Unit::Seconds,
            "Time from SYN sent to the connect's outcome.",
        ))
        .metric(MetricSpec::counter("tcp_accepts_total", "Passive TCP opens that reached ESTABLISHED."))
        .metric(MetricSpec::counter(
            "tcp_retransmits_total",
            "TCP segments retransmitted; `kind` is the socket's state (syn_recv: a listener's SYN-ACK).",
        ))
        .metric(MetricSpec::counter("tcp_resets_total", "TCP RST segments sent and received, by `direction`."))
        .metric(MetricSpec::gauge(
            "tcp_sockets",
            "TCP sockets in each state now, counting only sockets opened since sonde started.",
        ))
}

crate::loader::skeleton_loader!(TcpSkelBuilder);

/// Record kinds (`enum tcp_event_kind` in tcp.bpf.c), in the key's top byte.
const CONNECT: u64 = 1;
const ACCEPT: u64 = 2;
const RETRANSMIT: u64 = 3;
const RESET: u64 = 4;
const STATE: u64 = 5;

const KIND_SHIFT: u32 = 56;
const PORT_SHIFT: u32 = 16;

/// A connect that left SYN_SENT without an error: closed by its owner.
const CONNECT_ABORTED: i32 = 0xffff;

const RESET_SENT: u64 = 1;
const RESET_RECEIVED: u64 = 2;

/// Which of the probe's event labels are on.
#[derive(Default)]
struct Tcp {
    outcome: bool,
    dport: bool,
    lport: bool,
    kind: bool,
    direction: bool,
    state: bool,
}

fn decoder(settings: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(Tcp {
        outcome: settings.has_label("outcome"),
        dport: settings.has_label("dport"),
        lport: settings.has_label("lport"),
        kind: settings.has_label("kind"),
        direction: settings.has_label("direction"),
        state: settings.has_label("state"),
    })
}

/// A key: the record kind (never masked, so kinds never share a series),
/// then a port and a detail, each kept only when its label is on.
fn key(kind: u64, port: u64, detail: u64) -> u64 {
    kind << KIND_SHIFT | (port & 0xffff) << PORT_SHIFT | (detail & 0xffff)
}

fn kind_of(key: u64) -> u64 {
    key >> KIND_SHIFT
}

fn port_of(key: u64) -> u64 {
    (key >> PORT_SHIFT) & 0xffff
}

fn detail_of(key: u64) -> u64 {
    key & 0xffff
}

impl Decoder for Tcp {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let event: &types::event = decode(record)?;
        let kind = u64::from(event.kind);
        let detail = u64::from(event.detail);
        let (key, value) = match kind {
            CONNECT => {
                let port = keep(self.dport, u64::from(event.dport));
                (key(CONNECT, port, keep(self.outcome, detail)), event.value as u64)
            }
            ACCEPT => (key(ACCEPT, keep(self.lport, u64::from(event.lport)), 0), 0),
            RETRANSMIT => (key(RETRANSMIT, 0, keep(self.kind, detail)), 0),
            RESET => (key(RESET, 0, keep(self.direction, detail)), 0),
            // a signed delta, as the gauge's two's-complement cell adds it
            STATE => (key(STATE, 0, keep(self.state, detail)), event.value as u64),
            _ => (key(kind, 0, 0), 0),
        };
        let values = if kind == STATE { [value, 0, 0, 0] } else { [1, value, 0, 0] };
        Ok(Decoded { key, values })
    }

    fn metrics(&self, key: u64) -> Range<usize> {
        match kind_of(key) {
            CONNECT => 0..2,
            ACCEPT => 2..3,
            RETRANSMIT => 3..4,
            RESET => 4..5,
            STATE => 5..6,
            _ => 0..0,
        }
    }

    fn label(&self, label: &str, key: u64) -> String {
        let (kind, port, detail) = (kind_of(key), port_of(key), detail_of(key));
        match (label, kind) {
            ("outcome", CONNECT) => outcome_label(detail as i32),
            ("dport", CONNECT) if self.dport => port.to_string(),
            ("lport", ACCEPT) if self.lport => port.to_string(),
            ("kind", RETRANSMIT) | ("state", STATE) => state_label(detail as u32),
            ("direction", RESET) => direction_label(detail).to_string(),
            // a label of another kind of event: empty, which Prometheus
            // reads as no label at all
            _ => String::new(),
        }
    }
}

/// A connect's outcome from the socket error it ended with (0: established).
pub fn outcome_label(errno: i32) -> String {
    match errno {
        0 => "established".to_string(),
        libc::ECONNREFUSED => "refused".to_string(),
        libc::ETIMEDOUT => "timeout".to_string(),
        CONNECT_ABORTED => "aborted".to_string(),
        other => match nix::errno::Errno::from_raw(other) {
            nix::errno::Errno::UnknownErrno => format!("errno_{other}"),
            errno => format!("{errno:?}").to_lowercase(),
        },
    }
}

/// A TCP state's name (include/net/tcp_states.h), lower case.
pub fn state_label(state: u32) -> String {
    const NAMES: [&str; 14] = [
        "",
        "established",
        "syn_sent",
        "syn_recv",
        "fin_wait1",
        "fin_wait2",
        "time_wait",
        "close",
        "close_wait",
        "last_ack",
        "listen",
        "closing",
        "new_syn_recv",
        "bound_inactive",
    ];
    match NAMES.get(state as usize) {
        Some(name) if !name.is_empty() => name.to_string(),
        _ => format!("state_{state}"),
    }
}

fn direction_label(direction: u64) -> &'static str {
    match direction {
        RESET_SENT => "sent",
        RESET_RECEIVED => "received",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An 8-aligned record, as the ring buffer hands them out.
    #[repr(C, align(8))]
    struct Record([u8; std::mem::size_of::<types::event>()]);

    fn record(kind: u64, detail: u32, value: i64, dport: u16, lport: u16) -> Record {
        let event = types::event { kind: kind as u32, detail, value, dport, lport, ..Default::default() };
        let mut out = Record([0; std::mem::size_of::<types::event>()]);
        // SAFETY: plain C struct of integers, copied byte for byte.
        let bytes = unsafe { plain::as_bytes(&event) };
        out.0.copy_from_slice(bytes);
        out
    }

    fn all_labels() -> Tcp {
        Tcp { outcome: true, dport: true, lport: true, kind: true, direction: true, state: true }
    }

    #[test]
    fn connects_count_and_time_by_outcome_and_port() {
        let tcp = all_labels();
        let d = tcp.decode(&record(CONNECT, libc::ECONNREFUSED as u32, 42_000, 8080, 0).0).expect("decodes");
        assert_eq!(d.values[..2], [1, 42_000]);
        assert_eq!(tcp.metrics(d.key), 0..2);
        assert_eq!(tcp.label("outcome", d.key), "refused");
        assert_eq!(tcp.label("dport", d.key), "8080");
        assert_eq!(tcp.label("kind", d.key), "", "not a retransmit");
    }

    #[test]
    fn labels_that_are_off_do_not_split_series() {
        let tcp = Tcp::default();
        let refused = tcp.decode(&record(CONNECT, libc::ECONNREFUSED as u32, 1, 80, 0).0).expect("decodes");
        let established = tcp.decode(&record(CONNECT, 0, 1, 443, 0).0).expect("decodes");
        assert_eq!(refused.key, established.key);
        // but kinds never share a series
        let accept = tcp.decode(&record(ACCEPT, 0, 0, 0, 443).0).expect("decodes");
        assert_ne!(accept.key, established.key);
        assert_eq!(tcp.metrics(accept.key), 2..3);
    }

    #[test]
    fn state_deltas_are_signed_gauge_values() {
        let tcp = all_labels();
        let down = tcp.decode(&record(STATE, 1, -1, 0, 0).0).expect("decodes");
        assert_eq!(down.values[0], u64::MAX, "-1 in two's complement");
        assert_eq!(tcp.metrics(down.key), 5..6);
        assert_eq!(tcp.label("state", down.key), "established");
    }

    #[test]
    fn retransmits_and_resets_name_their_kind() {
        let tcp = all_labels();
        let retransmit = tcp.decode(&record(RETRANSMIT, 2, 0, 0, 0).0).expect("decodes");
        assert_eq!((tcp.metrics(retransmit.key), tcp.label("kind", retransmit.key)), (3..4, "syn_sent".into()));
        let reset = tcp.decode(&record(RESET, RESET_RECEIVED as u32, 0, 0, 0).0).expect("decodes");
        assert_eq!((tcp.metrics(reset.key), tcp.label("direction", reset.key)), (4..5, "received".into()));
    }

    #[test]
    fn outcomes_and_states_read_as_words() {
        assert_eq!(outcome_label(0), "established");
        assert_eq!(outcome_label(libc::ETIMEDOUT), "timeout");
        assert_eq!(outcome_label(CONNECT_ABORTED), "aborted");
        assert_eq!(outcome_label(libc::EHOSTUNREACH), "ehostunreach");
        assert_eq!(outcome_label(4000), "errno_4000");
        assert_eq!(state_label(10), "listen");
        assert_eq!(state_label(99), "state_99");
    }

    /// Each kind's values fit a record, and together the kinds show every
    /// metric of the spec exactly once.
    #[test]
    fn kinds_split_the_metrics_between_them() {
        let tcp = all_labels();
        let mut shown = Vec::new();
        for kind in [CONNECT, ACCEPT, RETRANSMIT, RESET, STATE] {
            let range = tcp.metrics(key(kind, 0, 0));
            assert!(range.len() <= crate::decode::MAX_METRICS);
            shown.extend(range);
        }
        assert_eq!(shown, (0..spec().metrics.len()).collect::<Vec<_>>());
    }

    #[test]
    fn short_records_are_refused() {
        assert!(all_labels().decode(&[0u8; 8]).is_err());
    }
}
