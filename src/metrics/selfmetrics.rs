//! What sonde reports about itself.

use std::collections::{BTreeMap, HashMap};

use prometheus::{Gauge, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::MetricsError;
use crate::bpf_stats::ProgramFacts;

pub struct SelfMetrics {
    pub probe_up: IntGaugeVec,
    pub probe_errors: IntCounterVec,
    pub events_received: IntCounterVec,
    pub events_lost: IntCounterVec,
    pub decode_errors: IntCounterVec,
    pub series_dropped: IntCounterVec,
    pub series_expired: IntCounterVec,
    pub prog_run_count: IntCounterVec,
    pub prog_run_seconds: prometheus::CounterVec,
    pub program_info: IntGaugeVec,
    pub verified_instructions: IntGaugeVec,
    pub xlated_bytes: IntGaugeVec,
    pub jited_bytes: IntGaugeVec,
    pub reload_successful: IntGauge,
    pub reload_success_time: Gauge,
}

/// Label names of sonde's own metrics, which constant labels may not use.
pub const SELF_LABELS: &[&str] = &["probe", "hook", "stage", "metric", "version", "libbpf", "program", "jited"];

impl SelfMetrics {
    /// Registers every self-metric; returns them and their full names.
    pub fn register(
        registry: &Registry,
        prefix: &str,
        const_labels: &BTreeMap<String, String>,
    ) -> Result<(SelfMetrics, Vec<String>), MetricsError> {
        let hashed: HashMap<String, String> = const_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut names = Vec::new();
        let mut opts = |name: &str, help: &str| {
            names.push(format!("{prefix}_{name}"));
            Opts::new(name, help).namespace(prefix).const_labels(hashed.clone())
        };
        macro_rules! register {
            ($metric:expr) => {{
                let m = $metric;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let agent = SelfMetrics {
            probe_up: register!(IntGaugeVec::new(
                opts("probe_up", "1 if the probe is attached, with the hook it uses; 0 if it failed."),
                &["probe", "hook"],
            )?),
            probe_errors: register!(IntCounterVec::new(
                opts("probe_errors_total", "Probe load and attach failures, by stage."),
                &["probe", "stage"],
            )?),
            events_received: register!(IntCounterVec::new(
                opts("events_received_total", "Events read from the probe's ring buffer."),
                &["probe"],
            )?),
            events_lost: register!(IntCounterVec::new(
                opts("events_lost_total", "Events the probe produced but its ring buffer had no room for."),
                &["probe"],
            )?),
            decode_errors: register!(IntCounterVec::new(
                opts("decode_errors_total", "Events that could not be decoded."),
                &["probe"],
            )?),
            series_dropped: register!(IntCounterVec::new(
                opts("series_dropped_total", "Label sets folded into the overflow series by the series limit."),
                &["metric"],
            )?),
            series_expired: register!(IntCounterVec::new(
                opts("series_expired_total", "Series removed after series_ttl without an update."),
                &["metric"],
            )?),
            prog_run_count: register!(IntCounterVec::new(
                opts("bpf_prog_runs_total", "Times the kernel ran the program (needs BPF stats on)."),
                &["probe", "program"],
            )?),
            prog_run_seconds: register!(prometheus::CounterVec::new(
                opts("bpf_prog_run_seconds_total", "Kernel time spent running the program (needs BPF stats on)."),
                &["probe", "program"],
            )?),
            program_info: register!(IntGaugeVec::new(
                opts(
                    "probe_program_info",
                    "1 for each BPF program of an attached probe: its hook and whether it is JITed."
                ),
                &["probe", "program", "hook", "jited"],
            )?),
            verified_instructions: register!(IntGaugeVec::new(
                opts(
                    "probe_verified_instructions",
                    "Instructions the verifier processed to accept the program (Linux 5.16 and later).",
                ),
                &["probe", "program"],
            )?),
            xlated_bytes: register!(IntGaugeVec::new(
                opts("probe_xlated_bytes", "Size of the program as the kernel translated it, in BPF instructions."),
                &["probe", "program"],
            )?),
            jited_bytes: register!(IntGaugeVec::new(
                opts("probe_jited_bytes", "Size of the program's JITed machine code (0: it runs in the interpreter)."),
                &["probe", "program"],
            )?),
            reload_successful: register!(IntGauge::with_opts(opts(
                "config_last_reload_successful",
                "1 if the last configuration reload succeeded (or none was asked for), else 0.",
            ))?),
            reload_success_time: register!(Gauge::with_opts(opts(
                "config_last_reload_success_timestamp_seconds",
                "When the configuration was last loaded successfully (start-up or reload), in Unix seconds.",
            ))?),
        };
        let build_info = register!(IntGaugeVec::new(
            opts("build_info", "sonde's version and the libbpf it was built with."),
            &["version", "libbpf"],
        )?);
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), &super::libbpf_version()]).set(1);
        agent.reload_successful.set(1);
        Ok((agent, names))
    }

    /// Records what the verifier and the JIT made of an attached probe's
    /// programs; a program the kernel would not describe gets no series.
    pub fn record_programs(&self, probe: &str, hook: &str, programs: &[(String, std::io::Result<ProgramFacts>)]) {
        for (program, facts) in programs {
            let Ok(facts) = facts else { continue };
            let jited = if facts.jited() { "true" } else { "false" };
            self.program_info.with_label_values(&[probe, program, hook, jited]).set(1);
            if let Some(verified) = facts.verified_insns {
                self.verified_instructions.with_label_values(&[probe, program]).set(i64::from(verified));
            }
            self.xlated_bytes.with_label_values(&[probe, program]).set(i64::from(facts.xlated_bytes));
            self.jited_bytes.with_label_values(&[probe, program]).set(i64::from(facts.jited_bytes));
        }
    }

    /// Drops every series of a probe removed by reload: `programs` are its
    /// BPF programs, `metrics` its metrics' full names.
    pub fn forget_probe(&self, probe: &str, programs: &[String], metrics: &[String]) {
        // Removing a label set that does not exist is not an error here.
        for hook in HOOK_LABELS {
            let _ = self.probe_up.remove_label_values(&[probe, hook]);
        }
        for stage in ["open", "load", "attach"] {
            let _ = self.probe_errors.remove_label_values(&[probe, stage]);
        }
        for vec in [&self.events_received, &self.events_lost, &self.decode_errors] {
            let _ = vec.remove_label_values(&[probe]);
        }
        for program in programs {
            for vec in [&self.verified_instructions, &self.xlated_bytes, &self.jited_bytes] {
                let _ = vec.remove_label_values(&[probe, program]);
            }
            for (hook, jited) in HOOK_LABELS.iter().flat_map(|h| [(h, "true"), (h, "false")]) {
                let _ = self.program_info.remove_label_values(&[probe, program, hook, jited]);
            }
            let _ = self.prog_run_count.remove_label_values(&[probe, program]);
            let _ = self.prog_run_seconds.remove_label_values(&[probe, program]);
        }
        for name in metrics {
            let _ = self.series_dropped.remove_label_values(&[name]);
            let _ = self.series_expired.remove_label_values(&[name]);
        }
    }
}

/// Values of `probe_up`'s `hook` label.
const HOOK_LABELS: &[&str] = &["tracepoint", "tp_btf", "kprobe", "fentry", "none"];
