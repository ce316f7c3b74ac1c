//! `sonde probes`: the built-in probes, and those a config defines, as data
//! — hooks, metrics, labels — and, when sonde may load programs, what this
//! kernel makes of each: the
//! hook it would use, why every other alternative was skipped, and what the
//! verifier and the JIT did with the programs loaded. Collected first,
//! then written as text or JSON, so that nothing else is interleaved.

use serde::Serialize;

use crate::agent::{self, Outcome};
use crate::bpf_stats::{JitSetting, ProgramFacts};
use crate::loader::{explain_attempts, LoadContext};
use crate::probes::Registry;
use crate::spec::{MetricKind, ProbeSettings};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listing {
    /// net.core.bpf_jit_enable, in words.
    pub jit: &'static str,
    pub probes: Vec<ProbeListing>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeListing {
    pub name: String,
    pub summary: String,
    /// Built into sonde, or defined in the config.
    pub origin: Origin,
    pub status: Support,
    /// The hook this kernel would use.
    pub hook: Option<&'static str>,
    pub hooks: Vec<HookListing>,
    pub metrics: Vec<MetricListing>,
    pub labels: Vec<LabelListing>,
    /// The programs of the hook in use, as loaded.
    pub programs: Vec<ProgramListing>,
    /// Kernel functions the hook in use could not hook here, whose
    /// (optional) programs were left out.
    pub absent: Vec<AbsentListing>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AbsentListing {
    pub function: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    BuiltIn,
    Config,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Support {
    Supported,
    Unsupported,
    /// sonde may not load programs, so the kernel was not asked.
    Untested,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HookListing {
    pub kind: &'static str,
    pub targets: Vec<String>,
    pub cost: &'static str,
    pub status: HookStatus,
    /// Why it is not used, when it is not.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookStatus {
    Used,
    /// Tried, and it failed to load or attach.
    Failed,
    /// An earlier alternative works, so this one was not loaded.
    NotTried,
    Untested,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricListing {
    pub name: String,
    pub kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelListing {
    pub name: String,
    pub default: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProgramListing {
    pub name: String,
    /// None when the kernel would not say (`error` tells why).
    pub facts: Option<ProgramFacts>,
    pub error: Option<String>,
}

/// Lists every probe of `registry`, then the probes `configured` defines
/// (config-defined ones); a probe `configured` names is listed as configured
/// (its labels, its forced hook), every other with its defaults. With `ctx`,
/// loads each to learn what this kernel supports, and detaches it again.
pub fn collect(
    registry: &Registry,
    metric_prefix: &str,
    configured: &[ProbeSettings],
    ctx: Option<&LoadContext>,
) -> Listing {
    let as_configured = |name: &str| configured.iter().find(|s| s.name() == name);
    let builtin = registry.specs().map(|spec| {
        let settings = as_configured(&spec.name).cloned().unwrap_or_else(|| ProbeSettings::defaults(spec.clone()));
        probe_listing(registry, &settings, Origin::BuiltIn, metric_prefix, ctx)
    });
    let defined = configured
        .iter()
        .filter(|s| s.spec.custom.is_some())
        .map(|settings| probe_listing(registry, settings, Origin::Config, metric_prefix, ctx));
    Listing { jit: JitSetting::read().describe(), probes: builtin.chain(defined).collect() }
}

fn probe_listing(
    registry: &Registry,
    settings: &ProbeSettings,
    origin: Origin,
    metric_prefix: &str,
    ctx: Option<&LoadContext>,
) -> ProbeListing {
    let spec = &settings.spec;
    let mut listing = ProbeListing {
        name: spec.name.clone(),
        summary: spec.summary.clone(),
        origin,
        status: Support::Untested,
        hook: None,
        hooks: spec
            .hooks
            .iter()
            .map(|h| HookListing {
                kind: h.kind.name(),
                targets: h.programs.iter().map(|p| p.target.clone()).collect(),
                cost: h.cost().describe(),
                status: HookStatus::Untested,
                reason: None,
            })
            .collect(),
        metrics: spec
            .metrics
            .iter()
            .map(|m| MetricListing {
                name: format!("{metric_prefix}_{}", m.name),
                kind: match m.kind {
                    MetricKind::Counter => "counter",
                    MetricKind::Histogram => "histogram",
                    MetricKind::Gauge => "gauge",
                },
            })
            .collect(),
        labels: spec
            .labels
            .iter()
            .map(|l| LabelListing { name: l.name.clone(), default: spec.default_labels.contains(&l.name) })
            .collect(),
        programs: Vec::new(),
        absent: Vec::new(),
    };
    if let Some(ctx) = ctx {
        let (failed, loaded) = match agent::load_one(registry, settings, ctx) {
            Outcome::Attached(loaded) => (explain_attempts(spec, &loaded.skipped), Some(loaded)),
            Outcome::Failed(failure) => (failure.reasons(spec), None),
        };
        let used = loaded.as_ref().map(|l| l.hook.name());
        for hook in &mut listing.hooks {
            let reason = failed.iter().find(|(kind, _)| kind.name() == hook.kind).map(|(_, why)| why.clone());
            hook.status = match (&reason, used == Some(hook.kind)) {
                (Some(_), _) => HookStatus::Failed,
                (None, true) => HookStatus::Used,
                (None, false) => HookStatus::NotTried,
            };
            hook.reason = reason;
        }
        listing.hook = used;
        listing.status = Support::Unsupported;
        if let Some(loaded) = loaded {
            listing.status = Support::Supported;
            listing.programs = loaded
                .programs
                .iter()
                .map(|p| match p.facts() {
                    Ok(facts) => ProgramListing { name: p.name.clone(), facts: Some(facts), error: None },
                    Err(err) => ProgramListing { name: p.name.clone(), facts: None, error: Some(err.to_string()) },
                })
                .collect();
            listing.absent = loaded
                .absent
                .iter()
                .map(|a| AbsentListing { function: a.function.clone(), reason: a.reason.clone() })
                .collect();
        }
    }
    listing
}

/// The listing as text for a terminal: one block per probe.
pub fn render_text(listing: &Listing) -> String {
    let mut out = format!("JIT: {}\n\n", listing.jit);
    for probe in &listing.probes {
        render_probe(&mut out, probe);
        out.push('\n');
    }
    out
}

fn render_probe(out: &mut String, probe: &ProbeListing) {
    use std::fmt::Write;
    // writing to a String cannot fail
    let _ = writeln!(out, "{}: {}", probe.name, probe.summary);
    for hook in &probe.hooks {
        let _ = writeln!(out, "  hook     {:<15} {}", hook.kind, hook.targets.join(", "));
        let _ = writeln!(out, "           cost: {}", hook.cost);
    }
    for metric in &probe.metrics {
        let _ = writeln!(out, "  metric   {} ({})", metric.name, metric.kind);
    }
    let labels: Vec<String> =
        probe.labels.iter().map(|l| if l.default { format!("{}*", l.name) } else { l.name.clone() }).collect();
    let _ = writeln!(out, "  labels   {} (* = on by default)", labels.join(", "));
    let verdict = match (probe.status, probe.hook) {
        (Support::Supported, Some(hook)) => format!("supported, via {hook}"),
        (Support::Supported | Support::Unsupported, _) => "unsupported: no hook loads and attaches here".into(),
        (Support::Untested, _) => "unknown: run as root to test this kernel".into(),
    };
    let _ = writeln!(out, "  kernel   {verdict}");
    for hook in &probe.hooks {
        let why = match (hook.status, &hook.reason, probe.hook) {
            (HookStatus::Failed, Some(reason), _) => reason.clone(),
            (HookStatus::NotTried, _, Some(used)) => format!("not tried: {used} comes first and works"),
            _ => continue,
        };
        let _ = writeln!(out, "  skipped  {}: {why}", hook.kind);
    }
    for program in &probe.programs {
        let _ = writeln!(out, "  program  {}: {}", program.name, describe_program(program));
    }
    for absent in &probe.absent {
        let _ = writeln!(out, "  absent   {}: not hooked ({})", absent.function, absent.reason);
    }
}

fn describe_program(program: &ProgramListing) -> String {
    let Some(facts) = program.facts else {
        return format!("the kernel would not describe it ({})", program.error.as_deref().unwrap_or("no reason given"));
    };
    let verified = match facts.verified_insns {
        Some(n) => format!("{n} instructions verified"),
        None => "instructions verified n/a (the kernel reports them from 5.16)".to_string(),
    };
    let jited = if facts.jited() { format!("{} bytes JITed", facts.jited_bytes) } else { "not JITed".to_string() };
    format!("{verified}, {} bytes translated, {jited}", facts.xlated_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(kind: &'static str, status: HookStatus, reason: Option<&str>) -> HookListing {
        HookListing {
            kind,
            targets: vec![format!("{kind}_target")],
            cost: "per event",
            status,
            reason: reason.map(str::to_string),
        }
    }

    fn probe(status: Support, used: Option<&'static str>, hooks: Vec<HookListing>) -> ProbeListing {
        ProbeListing {
            name: "demo".into(),
            summary: "A demo probe.".into(),
            origin: Origin::BuiltIn,
            status,
            hook: used,
            hooks,
            metrics: vec![MetricListing { name: "sonde_demo_total".into(), kind: "counter" }],
            labels: vec![
                LabelListing { name: "comm".into(), default: true },
                LabelListing { name: "pid".into(), default: false },
            ],
            programs: Vec::new(),
            absent: Vec::new(),
        }
    }

    fn render(probe: ProbeListing) -> String {
        render_text(&Listing { jit: "on", probes: vec![probe] })
    }

    #[test]
    fn a_supported_probe_names_its_hook_the_skipped_ones_and_its_programs() {
        let mut demo = probe(
            Support::Supported,
            Some("kprobe"),
            vec![
                hook("fentry", HookStatus::Failed, Some("no kernel BTF")),
                hook("kprobe", HookStatus::Used, None),
                hook("tracepoint", HookStatus::NotTried, None),
            ],
        );
        demo.programs = vec![
            ProgramListing {
                name: "prog_a".into(),
                facts: Some(ProgramFacts { verified_insns: Some(812), xlated_bytes: 6496, jited_bytes: 3921 }),
                error: None,
            },
            ProgramListing {
                name: "prog_b".into(),
                facts: Some(ProgramFacts { verified_insns: None, xlated_bytes: 80, jited_bytes: 0 }),
                error: None,
            },
        ];
        let want = "\
JIT: on

demo: A demo probe.
  hook     fentry          fentry_target
           cost: per event
  hook     kprobe          kprobe_target
           cost: per event
  hook     tracepoint      tracepoint_target
           cost: per event
  metric   sonde_demo_total (counter)
  labels   comm*, pid (* = on by default)
  kernel   supported, via kprobe
  skipped  fentry: no kernel BTF
  skipped  tracepoint: not tried: kprobe comes first and works
  program  prog_a: 812 instructions verified, 6496 bytes translated, 3921 bytes JITed
  program  prog_b: instructions verified n/a (the kernel reports them from 5.16), 80 bytes translated, not JITed

";
        assert_eq!(render(demo), want);
    }

    #[test]
    fn absent_kernel_functions_are_listed_after_the_programs() {
        let mut demo = probe(Support::Supported, Some("fentry"), vec![hook("fentry", HookStatus::Used, None)]);
        demo.programs =
            vec![ProgramListing { name: "p".into(), facts: None, error: Some("Bad file descriptor".into()) }];
        demo.absent = vec![AbsentListing { function: "xfs_file_open".into(), reason: "not in /proc/kallsyms".into() }];
        let text = render(demo);
        assert!(
            text.ends_with("  program  p: the kernel would not describe it (Bad file descriptor)\n  absent   xfs_file_open: not hooked (not in /proc/kallsyms)\n\n"),
            "{text}"
        );
    }

    #[test]
    fn an_unsupported_probe_gives_every_hook_a_reason() {
        let demo = probe(
            Support::Unsupported,
            None,
            vec![
                hook("fentry", HookStatus::Failed, Some("refused (EPERM)")),
                hook("kprobe", HookStatus::Failed, Some("no kprobe PMU")),
            ],
        );
        let text = render(demo);
        assert!(text.contains("  kernel   unsupported: no hook loads and attaches here\n"), "{text}");
        assert!(text.contains("  skipped  fentry: refused (EPERM)\n  skipped  kprobe: no kprobe PMU\n"), "{text}");
        assert!(!text.contains("  program  "), "{text}");
    }

    #[test]
    fn an_untested_probe_says_how_to_test_it() {
        let text = render(probe(Support::Untested, None, vec![hook("tracepoint", HookStatus::Untested, None)]));
        assert!(text.contains("  kernel   unknown: run as root to test this kernel\n"), "{text}");
        assert!(!text.contains("skipped"), "{text}");
    }

    #[test]
    fn a_program_the_kernel_would_not_describe_says_why() {
        let mut demo = probe(Support::Supported, Some("tracepoint"), vec![hook("tracepoint", HookStatus::Used, None)]);
        demo.programs =
            vec![ProgramListing { name: "p".into(), facts: None, error: Some("Bad file descriptor".into()) }];
        assert!(render(demo).contains("  program  p: the kernel would not describe it (Bad file descriptor)\n"));
    }

    #[test]
    fn json_names_statuses_in_snake_case() {
        let demo = probe(Support::Supported, Some("tp_btf"), vec![hook("tp_btf", HookStatus::NotTried, None)]);
        let json = serde_json::to_value(Listing { jit: "on", probes: vec![demo] }).expect("serialises");
        assert_eq!(json["probes"][0]["status"], "supported");
        assert_eq!(json["probes"][0]["hooks"][0]["status"], "not_tried");
        assert_eq!(json["probes"][0]["hook"], "tp_btf");
    }
}
