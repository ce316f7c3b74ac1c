//! In-process benchmarks of the two user-space costs that grow with load:
//!
//! - `encode/<n>`: rendering `/metrics` for a registry holding `n` series;
//! - `event/<labels>`: the per-event hot path of the `syscalls` probe (the
//!   ring buffer callback: received counter, decode, series lookup, counter
//!   and histogram update) over a steady set of label sets.
//!
//! Run with `cargo bench --bench encode`; `bench/run.py` measures the
//! whole system (kernel programs, ring buffer, reader thread) on top.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use sonde::config::Config;
use sonde::events::EventSink;
use sonde::metrics::Metrics;

fn config(yaml: &str) -> Config {
    Config::parse(yaml, "<bench>").expect("bench config is valid")
}

/// A registry with sonde's self-metrics plus one counter family of `n` series.
fn registry(n: usize) -> Metrics {
    let metrics = Metrics::new(&config("probes:\n  exec: {}\n")).expect("metrics");
    let family =
        metrics.counter_vec("bench_series_total", "Series for the encode benchmark.", &["key"]).expect("family");
    for i in 0..n {
        family.with_label_values(&[&format!("series-{i:06}")]).inc_by(i as u64);
    }
    metrics
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

/// The `syscalls` probe's ring buffer record (`struct event` in
/// `src/bpf/syscalls.bpf.c`). The probe's own type is private to it; the
/// sanity check in `syscalls_sink` fails if this copy drifts from it.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Event {
    comm: [u8; 16],
    duration_ns: u64,
    nr: u32,
    _pad: u32,
}

impl Event {
    fn bytes(&self) -> &[u8] {
        // SAFETY: repr(C) plain data with explicit padding, no uninit bytes.
        unsafe { std::slice::from_raw_parts((self as *const Event).cast::<u8>(), std::mem::size_of::<Event>()) }
    }
}

/// The syscalls probe's sink on a fresh registry, as the agent builds it.
fn syscalls_sink(labels: &str) -> (Metrics, Box<dyn EventSink>) {
    let config = config(&format!("probes:\n  syscalls:\n    labels: [{labels}]\n"));
    let metrics = Metrics::new(&config).expect("metrics");
    let probe = sonde::probes::probe("syscalls").expect("syscalls probe");
    let mut sink = (probe.sink)(&config.probes[0], &metrics).expect("sink");
    let nr = syscalls::Sysno::getppid.id() as u32;
    let getppid = Event { comm: *b"bench\0\0\0\0\0\0\0\0\0\0\0", duration_ns: 1500, nr, _pad: 0 };
    sink.handle(getppid.bytes()).expect("the bench event decodes");
    let text = String::from_utf8(metrics.encode().expect("encode")).expect("utf-8");
    assert!(
        text.lines()
            .any(|l| l.starts_with("sonde_syscalls_total{") && l.contains("syscall=\"getppid\"") && l.ends_with(" 1")),
        "the bench event did not land in sonde_syscalls_total{{syscall=\"getppid\"}}:\n{text}"
    );
    (metrics, sink)
}

fn event(c: &mut Criterion) {
    // 32 label sets seen over and over, as a busy host's syscall mix.
    const KEYS: u32 = 32;
    const BATCH: u64 = 4096;
    let mut group = c.benchmark_group("event");
    group.sample_size(30).measurement_time(Duration::from_secs(4));
    group.throughput(Throughput::Elements(BATCH));
    for labels in ["syscall", "syscall, comm"] {
        let (metrics, mut sink) = syscalls_sink(labels);
        let received = metrics.agent.events_received.with_label_values(&["syscalls"]);
        let events: Vec<Event> = (0..BATCH as u32)
            .map(|i| {
                let mut comm = *b"worker-00\0\0\0\0\0\0\0";
                comm[7] = b'0' + (i % 4) as u8;
                Event { comm, duration_ns: 200 + u64::from(i % 5000) * 37, nr: i % KEYS, _pad: 0 }
            })
            .collect();
        let id = labels.replace(", ", "+");
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                for e in &events {
                    // what the ring buffer callback in events.rs does per record
                    received.inc();
                    black_box(sink.handle(e.bytes())).expect("decodes");
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode, event);
criterion_main!(benches);
