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
        metrics.counter_family("bench_series_total", "Series for the encode benchmark.", &["key"]).expect("family");
    for i in 0..n {
        family.child(&[format!("series-{i:06}")]).add(i as u64);
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

use sonde::probes::syscalls::{Event, EventHead};

fn new_event(comm: &[u8], duration_ns: u64, nr: u32) -> Event {
    let mut event = Event { head: EventHead { duration_ns, nr, ..Default::default() }, ..Default::default() };
    for (dst, src) in event.comm.iter_mut().zip(comm) {
        *dst = *src as i8;
    }
    event
}

/// The record the probe sends: the head alone unless the comm label is on.
fn bytes(event: &Event, with_comm: bool) -> &[u8] {
    // SAFETY: the generated types are plain data whose padding is spelled
    // out as fields, so every byte is initialised.
    unsafe {
        if with_comm {
            plain::as_bytes(event)
        } else {
            plain::as_bytes(&event.head)
        }
    }
}

/// The syscalls probe's sink on a fresh registry, as the agent builds it.
fn syscalls_sink(labels: &str) -> (Metrics, Box<dyn EventSink>) {
    let config = config(&format!("probes:\n  syscalls:\n    labels: [{labels}]\n"));
    let metrics = Metrics::new(&config).expect("metrics");
    let probe = sonde::probes::probe("syscalls").expect("syscalls probe");
    let mut sink = (probe.sink)(&config.probes[0], &metrics).expect("sink");
    let nr = syscalls::Sysno::getppid.id() as u32;
    let getppid = new_event(b"bench", 1500, nr);
    sink.handle(bytes(&getppid, labels.contains("comm"))).expect("the bench event decodes");
    let text = metrics.encode().expect("encode");
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
        let received = metrics.agent.events_received.child(&["syscalls".to_string()]);
        let events: Vec<Event> = (0..BATCH as u32)
            .map(|i| new_event(format!("worker-0{}", i % 4).as_bytes(), 200 + u64::from(i % 5000) * 37, i % KEYS))
            .collect();
        let id = labels.replace(", ", "+");
        let with_comm = labels.contains("comm");
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                for e in &events {
                    // what the ring buffer callback in events.rs does per record
                    received.add(1);
                    black_box(sink.handle(bytes(e, with_comm))).expect("decodes");
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, encode, event);
criterion_main!(benches);
