//! In-process benchmarks of the two user-space costs that grow with load:
//!
//! - `encode/<n>`: rendering `/metrics` for a registry holding `n` counter
//!   series (the `exec` probe after `n` distinct programs ran);
//! - `event/<labels>`: the per-event hot path of the `syscalls` probe (the
//!   ring buffer callback: received counter, decode, series lookup, counter
//!   and histogram update) over a steady set of label sets.
//!
//! Run with `cargo bench --bench encode`; `bench/run.py` measures the
//! whole system (kernel programs, ring buffer, reader thread) on top.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use sonde::config::Config;
use sonde::decode::Header;
use sonde::enrich::Enricher;
use sonde::metrics::{Limits, Registry};
use sonde::probes::syscalls::Event;
use sonde::ring::Sink;
use sonde::sink::{EnricherSource, ProbeSink};

fn config(yaml: &str) -> Config {
    let catalog = sonde::probes::Registry::builtin().catalog();
    Config::parse(yaml, "<bench>", &catalog).expect("bench config is valid")
}

struct NoEnrichers;
impl EnricherSource for NoEnrichers {
    fn enricher_for(&self, label: &str) -> Result<(Arc<dyn Enricher>, usize), String> {
        Err(format!("no enricher for {label} in the benchmark"))
    }
}

/// The syscalls probe's sink on a fresh registry, as the agent builds it.
fn syscalls_sink(labels: &str, series: usize) -> (Registry, ProbeSink) {
    let config = config(&format!("probes:\n  syscalls:\n    labels: [{labels}]\n"));
    let registry = Registry::new("sonde", &config.const_labels).expect("registry");
    let settings = &config.probes[0];
    let decoder = sonde::probes::syscalls::decoder(settings);
    let limits = Limits { series, ttl: None };
    let (sink, _) = ProbeSink::new(settings, decoder, &registry, limits, &NoEnrichers).expect("sink");
    (registry, sink)
}

fn new_event(comm: &[u8], duration_ns: u64, nr: u32) -> Event {
    let mut event = Event { duration_ns, nr, ..Default::default() };
    for (dst, src) in event.hdr.comm.iter_mut().zip(comm) {
        *dst = *src as i8;
    }
    event
}

fn bytes(event: &Event) -> &[u8] {
    // SAFETY: the generated types are plain data whose padding is spelled
    // out as fields, so every byte is initialised.
    unsafe { plain::as_bytes(event) }
}

/// A registry with sonde's self-metrics plus the `exec` probe's counter
/// with `n` series (distinct comms), as on a node where `n` programs ran.
fn registry(n: usize) -> Registry {
    let config = config("probes:\n  exec: {}\n");
    let registry = Registry::new("sonde", &config.const_labels).expect("registry");
    let settings = &config.probes[0];
    let builtin = sonde::probes::Registry::builtin().get("exec").expect("exec probe");
    let limits = Limits { series: n + 1, ttl: None };
    let (mut sink, _) =
        ProbeSink::new(settings, (builtin.decoder)(settings), &registry, limits, &NoEnrichers).expect("sink");
    for i in 0..n {
        // an exec record is the header alone
        let mut header = Header::default();
        for (dst, src) in header.comm.iter_mut().zip(format!("s-{i:06}").bytes()) {
            *dst = src as i8;
        }
        // SAFETY: a plain C struct whose padding is spelled out as fields.
        sink.handle(unsafe { plain::as_bytes(&header) }).expect("decodes");
    }
    registry
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for n in [1_000usize, 10_000, 100_000] {
        let metrics = registry(n);
        let bytes = metrics.encode().expect("encode").len();
        eprintln!("encode/{n}: {bytes} bytes of text");
        if n >= 100_000 {
            // ~0.1 s per encode: the same iteration count in every sample
            group.sample_size(10).sampling_mode(SamplingMode::Flat).measurement_time(Duration::from_secs(4));
        } else {
            group.sample_size(30).measurement_time(Duration::from_secs(4));
        }
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &metrics, |b, m| {
            b.iter(|| black_box(m.encode().expect("encode")))
        });
    }
    group.finish();
}

fn event(c: &mut Criterion) {
    // 32 label sets seen over and over, as a busy host's syscall mix.
    const KEYS: u32 = 32;
    const BATCH: u64 = 4096;
    let mut group = c.benchmark_group("event");
    group.sample_size(30).measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(BATCH));
    for labels in ["syscall", "syscall, comm"] {
        let (registry, mut sink) = syscalls_sink(labels, 10_000);
        let nr = syscalls::Sysno::getppid.id() as u32;
        sink.handle(bytes(&new_event(b"bench", 1500, nr))).expect("the bench event decodes");
        let text = registry.encode().expect("encode");
        assert!(
            text.lines().any(|l| l.starts_with("sonde_syscalls_total{")
                && l.contains("syscall=\"getppid\"")
                && l.ends_with(" 1")),
            "the bench event did not land in sonde_syscalls_total{{syscall=\"getppid\"}}:\n{text}"
        );
        let received = std::cell::Cell::new(0u64);
        let events: Vec<Event> = (0..BATCH as u32)
            .map(|i| new_event(format!("worker-0{}", i % 4).as_bytes(), 200 + u64::from(i % 5000) * 37, i % KEYS))
            .collect();
        let id = labels.replace(", ", "+");
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                for e in &events {
                    // what the ring buffer callback in ring.rs does per record
                    received.set(received.get() + 1);
                    black_box(sink.handle(bytes(e))).expect("decodes");
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode, event);
criterion_main!(benches);
