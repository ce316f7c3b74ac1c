//! `exit`: processes that ended, by name and how: exit code or fatal signal.

use std::sync::Arc;

use super::{keep, Builtin};
use crate::decode::{decode, DecodeError, Decoded, Decoder};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/exit.skel.rs"));
}
use skel::{types, ExitSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

pub const PROBE: Builtin = Builtin { spec, load, decoder };

fn spec() -> ProbeSpec {
    let labels = ["comm", "code", "signal"];
    ProbeSpec::new("exit", "Processes that exited, by name and exit code or fatal signal.", &labels[1..], &labels)
        .hook(HookSpec::new(HookKind::Tracepoint, &[("handle_exit", "sched/sched_process_exit")]))
        .metric(MetricSpec::counter(
            "exit_total",
            "Process exits; `code` is the exit status when the process exited, `signal` the signal that killed it.",
        ))
}

crate::loader::skeleton_loader!(ExitSkelBuilder);

struct Exit {
    /// Whether `code` or `signal` is on: only then does the status split series.
    by_status: bool,
}

fn decoder(settings: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(Exit { by_status: settings.has_label("code") || settings.has_label("signal") })
}

impl Decoder for Exit {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let event: &types::event = decode(record)?;
        // Only the bits the labels show: exit status and signal number.
        Ok(Decoded { key: keep(self.by_status, u64::from(event.exit_code & 0xff7f)), values: [1, 0, 0, 0] })
    }

    fn label(&self, label: &str, key: u64) -> String {
        let (code, signal) = status_labels(key as u32);
        if label == "code" {
            code
        } else {
            signal
        }
    }
}

/// How a wait(2) status reads as labels: (`code`, `signal`).
pub fn status_labels(status: u32) -> (String, String) {
    let signal = status & 0x7f;
    if signal == 0 {
        (((status >> 8) & 0xff).to_string(), String::new())
    } else {
        (String::new(), super::signals::signal_name(signal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_status_to_labels() {
        assert_eq!(status_labels(0), ("0".into(), "".into()));
        assert_eq!(status_labels(3 << 8), ("3".into(), "".into()));
        assert_eq!(status_labels(9), ("".into(), "SIGKILL".into()));
        assert_eq!(status_labels(11 | 0x80), ("".into(), "SIGSEGV".into()));
    }
}
