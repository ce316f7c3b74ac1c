//! `signals`: signals generated, by signal, sender (the header's comm),
//! target comm and what the kernel did with them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::{keep, Builtin};
use crate::decode::{decode, DecodeError, Decoded, Decoder};
use crate::labels::{comm_key, render_comm_key, OVERFLOW};
use crate::spec::{HookKind, HookSpec, MetricSpec, ProbeSettings, ProbeSpec};

mod skel {
    include!(concat!(env!("OUT_DIR"), "/signals.skel.rs"));
}
use skel::{types, SignalsSkelBuilder};

// SAFETY: the skeleton's C struct; any bytes are valid.
unsafe impl plain::Plain for types::event {}

pub const PROBE: Builtin = Builtin { spec, load, decoder };

fn spec() -> ProbeSpec {
    let summary = "Signals generated, by signal, sending and target process name, and result.";
    ProbeSpec::new("signals", summary, &["sig", "target_comm", "result"], &["sig"])
        .hook(HookSpec::new(HookKind::Tracepoint, &[("handle_signal_generate", "signal/signal_generate")]))
        .metric(MetricSpec::counter(
            "signals_generated_total",
            "Signals generated; `comm` is the sending task, `target_comm` the receiving one, `result` whether it \
             was delivered, ignored or already pending.",
        ))
}

crate::loader::skeleton_loader!(SignalsSkelBuilder);

/// Distinct target names one probe run keeps apart; later ones share the
/// `overflow` value, so that a fork bomb of random names cannot grow the
/// table without bound (series expiry does not reach it).
const MAX_TARGETS: usize = 4096;

/// Target comms numbered in order of first sight, so that a 16-byte name
/// fits the decoder's 64-bit key. Id 0 is "label off", the last is overflow.
#[derive(Default)]
struct Targets {
    ids: HashMap<u128, u32>,
    names: Vec<u128>,
}

const OVERFLOW_ID: u32 = u32::MAX;

impl Targets {
    fn id(&mut self, comm: u128) -> u32 {
        if let Some(&id) = self.ids.get(&comm) {
            return id;
        }
        if self.names.len() >= MAX_TARGETS {
            return OVERFLOW_ID;
        }
        self.names.push(comm);
        let id = self.names.len() as u32;
        self.ids.insert(comm, id);
        id
    }

    fn render(&self, id: u32) -> String {
        match id {
            0 => String::new(),
            OVERFLOW_ID => OVERFLOW.to_string(),
            id => self.names.get(id as usize - 1).map(|&c| render_comm_key(c)).unwrap_or_default(),
        }
    }
}

struct Signals {
    by_sig: bool,
    by_result: bool,
    /// Present only when `target_comm` is on.
    targets: Option<Mutex<Targets>>,
}

fn decoder(settings: &ProbeSettings) -> Arc<dyn Decoder> {
    Arc::new(Signals {
        by_sig: settings.has_label("sig"),
        by_result: settings.has_label("result"),
        targets: settings.has_label("target_comm").then(Mutex::default),
    })
}

/// Key layout: signal in bits 0-7, result in 8-15, target id in 16-47.
fn key(sig: u32, result: u32, target: u32) -> u64 {
    u64::from(sig & 0xff) | u64::from(result & 0xff) << 8 | u64::from(target) << 16
}

impl Decoder for Signals {
    fn decode(&self, record: &[u8]) -> Result<Decoded, DecodeError> {
        let event: &types::event = decode(record)?;
        let target = match &self.targets {
            Some(targets) => {
                let comm = comm_key(&event.target_comm.map(|c| c as u8));
                targets.lock().unwrap_or_else(PoisonError::into_inner).id(comm)
            }
            None => 0,
        };
        let key = key(
            keep(self.by_sig, u64::from(event.sig)) as u32,
            keep(self.by_result, u64::from(event.result)) as u32,
            target,
        );
        Ok(Decoded { key, values: [1, 0, 0, 0] })
    }

    fn label(&self, label: &str, key: u64) -> String {
        match label {
            "sig" => signal_name(key as u32 & 0xff),
            "result" => result_name(key as u32 >> 8 & 0xff),
            _ => match &self.targets {
                Some(targets) => targets.lock().unwrap_or_else(PoisonError::into_inner).render((key >> 16) as u32),
                None => String::new(),
            },
        }
    }
}

/// The signal's name (`SIGUSR1`), or `SIG<n>` for real-time signals, whose
/// names differ between C libraries.
pub fn signal_name(sig: u32) -> String {
    i32::try_from(sig)
        .ok()
        .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|| format!("SIG{sig}"))
}

/// What `__send_signal` did, as the kernel's `TRACE_SIGNAL_*` values say.
fn result_name(result: u32) -> String {
    match result {
        0 => "delivered".into(),
        1 => "ignored".into(),
        2 => "already_pending".into(),
        3 => "overflow_fail".into(),
        4 => "lose_info".into(),
        n => format!("result_{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_signals_and_results() {
        assert_eq!(signal_name(10), "SIGUSR1");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(11), "SIGSEGV");
        assert_eq!(signal_name(34), "SIG34");
        assert_eq!(result_name(0), "delivered");
        assert_eq!(result_name(2), "already_pending");
        assert_eq!(result_name(9), "result_9");
    }

    #[test]
    fn target_names_round_trip_and_fold_past_the_cap() {
        let mut targets = Targets::default();
        let a = targets.id(comm_key(b"worker\0\0\0\0\0\0\0\0\0\0"));
        let b = targets.id(comm_key(b"other\0\0\0\0\0\0\0\0\0\0\0"));
        assert_ne!(a, b);
        assert_eq!(targets.id(comm_key(b"worker\0\0\0\0\0\0\0\0\0\0")), a);
        assert_eq!(targets.render(a), "worker");
        assert_eq!(targets.render(0), "");
        for n in 0..MAX_TARGETS as u128 {
            targets.id(n + 1000);
        }
        assert_eq!(targets.id(comm_key(b"late\0\0\0\0\0\0\0\0\0\0\0\0")), OVERFLOW_ID);
        assert_eq!(targets.render(OVERFLOW_ID), "overflow");
    }

    #[test]
    fn key_parts_do_not_overlap() {
        let k = key(10, 2, 7);
        assert_eq!((k & 0xff, k >> 8 & 0xff, k >> 16), (10, 2, 7));
    }
}
