use super::*;
use crate::spec::{Buckets, Filter, HookChoice, HookKind};

fn catalog() -> Catalog {
    crate::probes::Registry::builtin().catalog()
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.yaml", &catalog())
}

fn probe<'a>(config: &'a Config, name: &str) -> &'a ProbeSettings {
    config.probes.iter().find(|p| p.spec.name == name).unwrap_or_else(|| panic!("probe `{name}` is configured"))
}

#[test]
fn embedded_default_enables_the_nearly_free_probes_with_defaults() {
    let config = Config::embedded_default(&catalog()).expect("the embedded default parses");
    assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
    assert_eq!(config.metric_prefix, "sonde");
    assert!(config.const_labels.is_empty());
    assert_eq!(config.series_limit, 10_000);
    assert_eq!(config.series_ttl, Some(DEFAULT_SERIES_TTL));
    assert!(!config.bpf_stats && !config.strict && !config.drop_capabilities);
    assert_eq!(config.cri_socket, None, "detected unless set");
    let rb = &config.ring_buffer;
    assert_eq!((rb.size_bytes, rb.wakeup_bytes, rb.poll_interval_ms), (None, None, 100));
    // Only probes whose hooks run per event, never on every system call
    // (docs/probes.md, docs/cost.md).
    let names: Vec<&str> = config.probes.iter().map(|p| p.name()).collect();
    assert_eq!(names, ["exec", "exit"]);
    for p in &config.probes {
        assert_eq!(p.labels, p.spec.default_labels, "{}", p.spec.name);
        assert_eq!(p.filter, Filter::default(), "{}", p.spec.name);
        assert_eq!(p.buckets, Buckets::Exp2, "{}", p.spec.name);
        assert_eq!(p.hook, HookChoice::Auto, "{}", p.spec.name);
    }
}

#[test]
fn example_config_parses_to_what_it_documents() {
    let config = Config::parse(include_str!("../../config.example.yaml"), "config.example.yaml", &catalog())
        .expect("the example parses");
    assert_eq!(config.listen.to_string(), "0.0.0.0:19477");
    assert_eq!(config.metric_prefix, "sonde");
    let labels: Vec<(&str, &str)> = config.const_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(labels, [("cluster", "prod-eu1"), ("rack", "07")]);
    let rb = &config.ring_buffer;
    assert_eq!((rb.size_bytes, rb.wakeup_bytes, rb.poll_interval_ms), (Some(4 << 20), Some(256 << 10), 100));
    assert_eq!(config.series_limit, 20_000);
    assert_eq!(config.series_ttl, Some(Duration::from_secs(1800)));
    assert!(!config.bpf_stats && !config.strict);
    assert_eq!(config.cri_socket.as_deref(), Some(std::path::Path::new("/run/containerd/containerd.sock")));

    let names: Vec<&str> = config.probes.iter().map(|p| p.name()).collect();
    assert_eq!(names, catalog().names(), "the example enables every probe");
    assert_eq!(probe(&config, "exec").labels, ["comm", "namespace", "pod", "container"]);
    assert_eq!(probe(&config, "exit").labels, ["comm", "code", "signal"]);
    let file_open = probe(&config, "file_open");
    assert_eq!(file_open.labels, ["comm", "result"]);
    assert_eq!(file_open.filter, Filter { comm: vec!["nginx".into(), "postgres".into()], pid: None });
    assert_eq!(file_open.buckets, Buckets::Explicit(vec![0.00001, 0.0001, 0.001, 0.01, 0.1, 1.0]));
    let syscalls = probe(&config, "syscalls");
    assert_eq!(syscalls.labels, ["syscall"]);
    assert_eq!(syscalls.filter, Filter { comm: vec!["postgres".into()], pid: None });
    assert_eq!(syscalls.buckets, Buckets::Exp2);
    let vfs_io = probe(&config, "vfs_io");
    assert_eq!(vfs_io.labels, ["comm", "op"]);
    assert_eq!(vfs_io.hook, HookChoice::Auto);
}

#[test]
fn examples_in_the_docs_parse() {
    let doc = include_str!("../../docs/config.md");
    let blocks: Vec<&str> =
        doc.split("```yaml\n").skip(1).map(|rest| rest.split("```").next().unwrap_or_default()).collect();
    assert!(blocks.len() >= 2, "docs/config.md has its examples");
    for block in blocks {
        if let Err(err) = Config::parse(block, "docs/config.md", &catalog()) {
            panic!("{err} in:\n{block}");
        }
    }
}

#[test]
fn settings_take_effect() {
    let config = parse(
        "listen: \"[::1]:9100\"\n\
         metric_prefix: node_ebpf\n\
         series_limit: 5\n\
         bpf_stats: true\n\
         strict: true\n\
         drop_capabilities: true\n\
         probes:\n  \
           syscalls:\n    \
             labels: [comm, syscall]\n    \
             filter: {pid: 4242, comm: [bash]}\n    \
             buckets: [1, 2.5]\n  \
           file_open:\n    \
             buckets: {linear: {start: 0.001, width: 0.002, count: 4}}\n  \
           exit:\n    \
             labels: []\n",
    )
    .expect("valid config");
    assert_eq!(config.listen.to_string(), "[::1]:9100");
    assert_eq!(config.metric_prefix, "node_ebpf");
    assert_eq!(config.series_limit, 5);
    assert!(config.bpf_stats && config.strict && config.drop_capabilities);
    let syscalls = probe(&config, "syscalls");
    assert_eq!(syscalls.labels, ["comm", "syscall"], "labels keep the order given");
    assert_eq!(syscalls.filter, Filter { comm: vec!["bash".into()], pid: Some(4242) });
    assert_eq!(syscalls.buckets, Buckets::Explicit(vec![1.0, 2.5]));
    assert_eq!(probe(&config, "file_open").buckets, Buckets::Linear { start: 0.001, width: 0.002, count: 4 });
    assert!(probe(&config, "exit").labels.is_empty());
    assert_eq!(config.probes[0].spec.name, "syscalls", "probes keep the order given");
}

#[test]
fn empty_and_null_settings_mean_defaults() {
    let config = parse("const_labels: ~\nring_buffer:\nprobes:\n  exec: ~\n  exit:\n    filter: ~\n  syscalls: {}\n")
        .expect("valid config");
    assert!(config.const_labels.is_empty());
    assert_eq!(config.ring_buffer.size_bytes, None);
    for p in &config.probes {
        assert_eq!(p.labels, p.spec.default_labels);
        assert_eq!(p.filter, Filter::default());
    }
}

#[test]
fn vfs_io_accepts_each_of_its_hooks() {
    for (text, want) in [
        ("auto", HookChoice::Auto),
        ("kprobe", HookChoice::Only(HookKind::Kprobe)),
        ("fentry", HookChoice::Only(HookKind::Fentry)),
    ] {
        let config = parse(&format!("probes:\n  vfs_io:\n    hook: {text}\n")).expect("a hook of vfs_io");
        assert_eq!(probe(&config, "vfs_io").hook, want, "hook: {text}");
    }
}

#[test]
fn const_label_values_are_scalars_kept_as_written() {
    let config = parse("const_labels:\n  a: 3\n  b: 1.10\n  c: true\n  d: \"x y\"\n  e: 0x1f\nprobes:\n  exec:\n")
        .expect("valid");
    let values: Vec<&str> = config.const_labels.values().map(String::as_str).collect();
    assert_eq!(values, ["3", "1.10", "true", "x y", "0x1f"]);
}

#[test]
fn ring_buffer_sizes() {
    use super::RingSize;
    let ring = |body: &str| parse(&format!("ring_buffer:\n{body}probes:\n  exec:\n")).map(|c| c.ring_buffer);
    // automatic: per-CPU room times CPUs, a power of two from 16 KiB to
    // 64 MiB; the default wakeup is 64 KiB, at most a quarter of the ring
    let auto = ring("  poll_interval_ms: 100\n").expect("automatic sizes");
    assert_eq!(auto.for_probe(512 << 10, 2), RingSize { size_bytes: 1 << 20, wakeup_bytes: 64 << 10 });
    assert_eq!(auto.for_probe(16 << 10, 2), RingSize { size_bytes: 32 << 10, wakeup_bytes: 8 << 10 });
    assert_eq!(auto.for_probe(16 << 10, 1), RingSize { size_bytes: 16 << 10, wakeup_bytes: 4 << 10 });
    assert_eq!(auto.for_probe(128 << 10, 3), RingSize { size_bytes: 512 << 10, wakeup_bytes: 64 << 10 });
    assert_eq!(auto.for_probe(512 << 10, 1024), RingSize { size_bytes: 64 << 20, wakeup_bytes: 64 << 10 });
    // a size given applies to every probe
    let small = ring("  size_bytes: 4096\n").expect("one page");
    assert_eq!(small.for_probe(512 << 10, 64), RingSize { size_bytes: 4096, wakeup_bytes: 1024 });
    // wakeup_bytes is checked against size_bytes in either order
    let big = ring("  wakeup_bytes: 2000000\n  size_bytes: 4194304\n").expect("wakeup below size");
    assert_eq!(big.for_probe(1, 1), RingSize { size_bytes: 4 << 20, wakeup_bytes: 2_000_000 });
    // with automatic sizes an explicit wakeup is capped at a quarter ring
    let wakeup = ring("  wakeup_bytes: 2000000\n").expect("automatic size, explicit wakeup");
    assert_eq!(wakeup.for_probe(16 << 10, 2), RingSize { size_bytes: 32 << 10, wakeup_bytes: 8 << 10 });
    let zero = ring("  wakeup_bytes: 0\n  poll_interval_ms: 10\n").expect("wake per event");
    assert_eq!((zero.for_probe(16 << 10, 2).wakeup_bytes, zero.poll_interval_ms), (0, 10));
}

/// A config that must be refused, where, and words the message must hold.
struct Bad {
    yaml: &'static str,
    line: usize,
    column: usize,
    mentions: &'static [&'static str],
}

const fn bad(yaml: &'static str, line: usize, column: usize, mentions: &'static [&'static str]) -> Bad {
    Bad { yaml, line, column, mentions }
}

#[rustfmt::skip]
const BAD: &[Bad] = &[
    // top level
    bad("probes:\n  exec:\nlistn: 0.0.0.0:1\n", 3, 1,
        &["unknown top-level key `listn`", "listen, metric_prefix"]),
    bad("listen: 0.0.0.0:1\nlisten: 0.0.0.0:2\nprobes:\n  exec:\n", 2, 1, &["duplicate key `listen`"]),
    bad("- exec\n", 1, 1, &["sequence", "a config mapping"]),
    bad("listen: nope\nprobes:\n  exec:\n", 1, 9, &["invalid listen address `nope`", "IP:PORT"]),
    bad("listen: 0.0.0.0\nprobes:\n  exec:\n", 1, 9, &["`0.0.0.0`"]),
    bad("listen: 19477\nprobes:\n  exec:\n", 1, 9, &["found 19477"]),
    bad("metric_prefix: 9bad\nprobes:\n  exec:\n", 1, 16, &["metric_prefix `9bad`", "[a-zA-Z_:]"]),
    bad("metric_prefix: my-agent\nprobes:\n  exec:\n", 1, 16, &["`my-agent`"]),
    bad("series_limit: 0\nprobes:\n  exec:\n", 1, 15, &["series_limit", "0 is out of range"]),
    bad("cri_socket: run/crio.sock\nprobes:\n  exec:\n", 1, 13, &["invalid cri_socket", "absolute path"]),
    bad("cri_socket: 7\nprobes:\n  exec:\n", 1, 13, &["invalid cri_socket 7"]),
    bad("cri_socket: \"/a\\0b\"\nprobes:\n  exec:\n", 1, 13, &["invalid cri_socket"]),
    bad(
        concat!("cri_socket: /", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "\nprobes:\n  exec:\n"),
        1,
        13,
        &["over the limit of 107"],
    ),
    bad("probes:\n  exec:\n    labels: [pod, pod]\n", 3, 19, &["label `pod` is listed twice"]),
    bad("const_labels:\n  namespace: x\nprobes:\n  exec:\n", 2, 3, &["label `namespace` is set by sonde itself"]),
    bad("series_ttl: 10\nprobes:\n  exec:\n", 1, 13, &["series_ttl", "expected a duration such as 1h"]),
    bad("series_ttl: 5x\nprobes:\n  exec:\n", 1, 13, &["invalid duration `5x`"]),
    bad("series_ttl: 50ms\nprobes:\n  exec:\n", 1, 13, &["too short: at least 100ms"]),
    bad("series_ttl: 99999999999999d\nprobes:\n  exec:\n", 1, 13, &["invalid duration"]),
    bad("strict: yes\nprobes:\n  exec:\n", 1, 9, &["strict", "\"yes\"", "boolean"]),
    bad("bpf_stats: 1\nprobes:\n  exec:\n", 1, 12, &["bpf_stats", "boolean"]),
    bad("drop_capabilities: on\nprobes:\n  exec:\n", 1, 20, &["drop_capabilities", "\"on\"", "boolean"]),
    // probes: missing, empty, unknown, twice
    bad("listen: 0.0.0.0:1\n", 1, 1, &["no probes configured", "`probes` key is missing", "exec, exit"]),
    bad("", 1, 1, &["no probes configured"]),
    bad("listen: 0.0.0.0:1\nprobes:\n", 2, 8, &["probes: no probes configured", "exec, exit"]),
    bad("listen: 0.0.0.0:1\nprobes: {}\n", 2, 9, &["probes: no probes configured"]),
    bad("listen: 0.0.0.0:1\nprobes: ~\n", 2, 9, &["probes: no probes configured"]),
    bad("probes: [exec]\n", 1, 9, &["sequence", "mapping from probe name"]),
    bad("probes:\n  exec:\n  execve:\n", 3, 3,
        &["unknown probe `execve`", "known probes: block_io, cfs_throttle, exec, exit, file_open, fs_latency, oom, page_cache, page_faults, process, runqueue, signals, skb_drop, softirq, syscalls, tcp, vfs_io"]),
    bad("probes:\n  exec:\n  exit:\n  exec: {}\n", 4, 3, &["probe `exec` is configured twice"]),
    // per-probe settings
    bad("probes:\n  exec:\n    buckets: exp2\n", 3, 5,
        &["unknown setting `buckets` for probe `exec`", "expected one of: labels, filter"]),
    bad("probes:\n  exec:\n    hook: kprobe\n", 3, 5, &["unknown setting `hook` for probe `exec`"]),
    bad("probes:\n  syscalls:\n    hook: auto\n", 3, 5,
        &["unknown setting `hook` for probe `syscalls`", "labels, filter, buckets"]),
    bad("probes:\n  vfs_io:\n    buckets: exp2\n", 3, 5, &["unknown setting `buckets` for probe `vfs_io`"]),
    bad("probes:\n  exec:\n    labels: [comm]\n    labels: []\n", 4, 5, &["duplicate setting `labels`"]),
    bad("probes:\n  exec: [comm]\n", 2, 9, &["sequence", "settings for probe `exec`"]),
    // labels
    bad("probes:\n  exec:\n    labels: [comm, ppid]\n", 3, 20,
        &["labels[1]", "probe `exec` has no label `ppid`", "it can carry: comm, pid, cgroup"]),
    bad("probes:\n  syscalls:\n    labels:\n      - syscall\n      - op\n", 5, 9,
        &["probe `syscalls` has no label `op`", "comm, pid, cgroup, container_id, container, pod, namespace, service, syscall"]),
    bad("probes:\n  exit:\n    labels: [code, signal, code]\n", 3, 28, &["label `code` is listed twice"]),
    bad("probes:\n  exec:\n    labels: comm\n", 3, 13, &["string \"comm\"", "a list of labels"]),
    // filter
    bad("probes:\n  exec:\n    filter:\n      comm: [bash, systemd-journald]\n", 4, 20,
        &["comm[1]", "`systemd-journald`", "1 to 15 bytes"]),
    bad("probes:\n  exec:\n    filter:\n      comm: [a, b, c, d, e, f, g, h, i]\n", 4, 38,
        &["comm[8]", "at most 8 comm filters"]),
    bad("probes:\n  exec:\n    filter:\n      comm: [\"\"]\n", 4, 14, &["comm ``", "1 to 15 bytes"]),
    bad("probes:\n  exec:\n    filter:\n      comm: [sh, sh]\n", 4, 13, &["comm `sh` is listed twice"]),
    bad("probes:\n  exec:\n    filter:\n      comm: bash\n", 4, 13, &["\"bash\"", "process names"]),
    bad("probes:\n  exec:\n    filter:\n      pid: 0\n", 4, 12, &["filter.pid", "0 is out of range", "1..="]),
    bad("probes:\n  exec:\n    filter:\n      pid: -3\n", 4, 12, &["-3 is out of range"]),
    bad("probes:\n  exec:\n    filter:\n      pid: 4294967296\n", 4, 12, &["4294967296 is out of range"]),
    bad("probes:\n  exec:\n    filter:\n      uid: 0\n", 4, 7,
        &["unknown filter key `uid`", "expected one of: comm, pid"]),
    // buckets
    bad("probes:\n  syscalls:\n    buckets: [0.001, 0.01, 0.005]\n", 3, 28,
        &["buckets[2]", "bounds must increase", "0.005 follows 0.01"]),
    bad("probes:\n  file_open:\n    buckets: [1, 1]\n", 3, 18, &["bounds must increase: 1 follows 1"]),
    bad("probes:\n  file_open:\n    buckets: [0]\n", 3, 15, &["bucket bound 0", "positive"]),
    bad("probes:\n  file_open:\n    buckets: []\n", 3, 14, &["at least one upper bound"]),
    bad("probes:\n  file_open:\n    buckets: linear\n", 3, 14, &["`linear`", "`exp2`"]),
    bad("probes:\n  file_open:\n    buckets: [1ms]\n", 3, 15, &["`1ms`", "number of seconds"]),
    bad("probes:\n  file_open:\n    buckets: {linear: {start: 0, width: 0, count: 3}}\n", 3, 41, &["width 0 must be positive"]),
    bad("probes:\n  file_open:\n    buckets: {linear: {start: 0, width: 1, count: 65}}\n", 3, 51, &["65 is out of range: expected 1..=64"]),
    bad("probes:\n  file_open:\n    buckets: {linear: {start: 1, width: 1}}\n", 3, 23, &["need `start`, `width` and `count`"]),
    bad("probes:\n  file_open:\n    buckets: {linear: {start: 1, width: 1, count: 2}, exp2: 1}\n", 3, 55,
        &["unknown buckets key `exp2`; expected one of: linear"]),
    // hook
    bad("probes:\n  vfs_io:\n    hook: bogus\n", 3, 11,
        &["unknown hook `bogus` for probe `vfs_io`", "expected one of: auto, fentry, kprobe"]),
    bad("probes:\n  vfs_io:\n    hook: tracepoint\n", 3, 11, &["unknown hook `tracepoint`"]),
    // ring_buffer
    bad("ring_buffer:\n  size_bytes: 5000\nprobes:\n  exec:\n", 2, 15,
        &["ring_buffer.size_bytes", "5000 is not a power of two"]),
    bad("ring_buffer:\n  size_bytes: 2048\nprobes:\n  exec:\n", 2, 15, &["2048 is not a power of two from 4096"]),
    bad("ring_buffer:\n  size_bytes: 1MiB\nprobes:\n  exec:\n", 2, 15, &["`1MiB`"]),
    bad("ring_buffer:\n  size_bytes: 8192\n  wakeup_bytes: 8192\nprobes:\n  exec:\n", 3, 17,
        &["ring_buffer.wakeup_bytes", "8192 must be smaller than size_bytes (8192)"]),
    bad("ring_buffer:\n  wakeup_bytes: 65536\n  size_bytes: 65536\nprobes:\n  exec:\n", 3, 15,
        &["ring_buffer.size_bytes", "65536 must be larger than wakeup_bytes (65536)"]),
    // only the default size to compare with: reported at the mapping
    bad("ring_buffer:\n  poll_interval_ms: 0\nprobes:\n  exec:\n", 2, 21, &["poll_interval_ms", "0 is out of range"]),
    bad("ring_buffer:\n  size: 4096\nprobes:\n  exec:\n", 2, 3,
        &["unknown ring_buffer key `size`", "size_bytes, wakeup_bytes, poll_interval_ms"]),
    // const_labels
    bad("const_labels:\n  env: prod\n  comm: x\nprobes:\n  exec:\n", 3, 3,
        &["label `comm` is set by sonde itself"]),
    bad("const_labels:\n  probe: x\nprobes:\n  exec:\n", 2, 3, &["label `probe` is set by sonde itself"]),
    bad("const_labels:\n  team-name: x\nprobes:\n  exec:\n", 2, 3, &["invalid label name `team-name`"]),
    bad("const_labels:\n  __name__: x\nprobes:\n  exec:\n", 2, 3, &["invalid label name `__name__`", "__"]),
    bad("const_labels:\n  env: a\n  env: b\nprobes:\n  exec:\n", 3, 3, &["label `env` is listed twice"]),
    bad("const_labels:\n  env: [a, b]\nprobes:\n  exec:\n", 2, 8,
        &["const_labels.env", "sequence", "a label value"]),
    bad("const_labels:\n  env: {a: b}\nprobes:\n  exec:\n", 2, 8, &["const_labels.env", "map", "a label value"]),
    bad("const_labels:\n  env:\nprobes:\n  exec:\n", 2, 7, &["const_labels.env", "needs a value"]),
    bad("const_labels:\n  env: ~\nprobes:\n  exec:\n", 2, 8, &["const_labels.env", "needs a value, not `~`"]),
    bad("const_labels:\n  env: \"\"\nprobes:\n  exec:\n", 2, 8, &["needs a value"]),
    bad("const_labels: [env]\nprobes:\n  exec:\n", 1, 15, &["const_labels", "sequence"]),
    // not YAML at all
    bad("probes:\n  exec: {\n", 3, 1, &["did not find expected node content"]),
    bad("probes:\n\texec:\n", 2, 1, &["cannot start any token"]),
];

#[test]
fn bad_configs_are_refused_at_the_fault() {
    let mut failures = Vec::new();
    for case in BAD {
        let got = match parse(case.yaml) {
            Ok(_) => {
                failures.push(format!("accepted:\n{}", case.yaml));
                continue;
            }
            Err(err) => err,
        };
        let ConfigError::Invalid { origin, line, column, message } = &got else {
            failures.push(format!("no location in `{got}` for:\n{}", case.yaml));
            continue;
        };
        let missing: Vec<&str> = case.mentions.iter().copied().filter(|m| !message.contains(m)).collect();
        if origin != "test.yaml" || (*line, *column) != (case.line, case.column) || !missing.is_empty() {
            failures.push(format!(
                "want {}:{}, mentioning {:?}; got `{got}` (missing {missing:?}) for:\n{}",
                case.line, case.column, case.mentions, case.yaml
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n\n{}", failures.len(), BAD.len(), failures.join("\n\n"));
}

#[test]
fn series_ttl_takes_durations_and_zero() {
    for (text, want) in [
        ("0", None),
        ("0s", None),
        ("500ms", Some(Duration::from_millis(500))),
        ("90s", Some(Duration::from_secs(90))),
        ("2h", Some(Duration::from_secs(7200))),
        ("1d", Some(Duration::from_secs(86400))),
    ] {
        let config = parse(&format!("series_ttl: {text}\nprobes:\n  exec:\n")).expect(text);
        assert_eq!(config.series_ttl, want, "{text}");
    }
}

#[test]
fn container_labels_and_cri_socket_are_accepted() {
    let yaml = "cri_socket: /run/k3s/containerd/containerd.sock\nprobes:\n  exec:\n    labels: [comm, container_id, container, pod, namespace, service]\n";
    let config = parse(yaml).expect("container labels on exec");
    assert_eq!(config.cri_socket.as_deref(), Some(std::path::Path::new("/run/k3s/containerd/containerd.sock")));
    assert_eq!(config.probes[0].labels, ["comm", "container_id", "container", "pod", "namespace", "service"]);
    for probe in ["exit", "file_open", "syscalls", "vfs_io"] {
        parse(&format!("probes:\n  {probe}:\n    labels: [pod, namespace]\n")).expect(probe);
    }
}

#[test]
fn errors_read_file_line_column_message() {
    let err = parse("probes:\n  exec:\n    labels: [ppid]\n").expect_err("`ppid` is no label of exec");
    assert_eq!(
        err.to_string(),
        "test.yaml:3:14: probes.exec.labels[0]: probe `exec` has no label `ppid`; it can carry: comm, pid, cgroup, \
         container_id, container, pod, namespace, service"
    );
    let err = parse("probes:\n  vfs_io:\n    hook: bogus\n").expect_err("no such hook");
    assert_eq!(
        err.to_string(),
        "test.yaml:3:11: probes.vfs_io.hook: unknown hook `bogus` for probe `vfs_io`; expected one of: auto, fentry, kprobe"
    );
}

#[test]
fn unreadable_file_names_the_path() {
    let err = Config::load(Path::new("/nonexistent/sonde.yaml"), &catalog()).expect_err("no such file");
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().starts_with("/nonexistent/sonde.yaml: cannot read config: "), "{err}");
}

#[test]
fn listen_port_0_lets_the_kernel_choose() {
    let config = parse("listen: \"127.0.0.1:0\"\nprobes:\n  exec:\n").expect("port 0 is allowed");
    assert_eq!(config.listen.port(), 0);
}

/// Hostile or unusual text, refused where it goes wrong.
#[rustfmt::skip]
const HOSTILE: &[Bad] = &[
    // one document only, refused at the second
    bad("probes:\n  exec:\n---\nprobes:\n  exit:\n", 3, 1, &["a second YAML document starts here"]),
    bad("---\nprobes:\n  exec:\n---\n", 4, 1, &["a second YAML document"]),
    bad("probes:\n  exec:\n...\nlisten: 0.0.0.0:1\n", 4, 1, &["content after the end of the YAML document (`...`)"]),
    bad("probes:\n  exec:\n...\n%YAML 1.1\n---\n", 4, 1, &["a second YAML document"]),
    // text after the top-level value, which serde_yaml calls a second
    // document without saying where
    bad("{probes: {exec: }}\n}\n", 2, 1, &["did not find expected <document start>"]),
    // ring memory: one ring, and all of them
    bad("ring_buffer:\n  size_bytes: 536870912\nprobes:\n  exec:\n", 2, 15,
        &["536870912 is not a power of two from 4096 (one page) to 268435456 (256 MiB)"]),
    bad("ring_buffer:\n  size_bytes: 1073741824\nprobes:\n  exec:\n", 2, 15, &["to 268435456 (256 MiB)"]),
    bad("ring_buffer:\n  wakeup_bytes: 268435456\nprobes:\n  exec:\n", 2, 17, &["expected 0..=268435455"]),
    bad("probes:\n  exec:\n  exit:\n  file_open:\n  syscalls:\n  vfs_io:\nring_buffer:\n  size_bytes: 268435456\n", 8, 15,
        &["ring_buffer.size_bytes", "268435456 bytes for each of the 5 configured probes is 1342177280 bytes of ring memory",
          "1073741824-byte (1 GiB) total", "use at most 134217728"]),
    // size_bytes before probes: still reported at size_bytes
    bad("ring_buffer:\n  size_bytes: 268435456\n  wakeup_bytes: 65536\nprobes:\n  exec:\n  exit:\n  file_open:\n  syscalls:\n  vfs_io:\n",
        2, 15, &["ring_buffer.size_bytes", "for each of the 5 configured probes", "use at most 134217728"]),
    // a comment ends at a lone CR, as the parser sees it
    bad("probes:\n  exec: # \r    labels: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
        3, 42, &["nested more than 32 deep"]),
    // brackets in quoted scalars and comments are text
    bad("probes:\n  exec:\n    labels: [\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"] # [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n", 3, 14,
        &["probe `exec` has no label `[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[`"]),
    // the YAML parser takes this `]` for the empty key and nests on
    bad("probes:\n  exec:\n    labels: [? ]\n", 3, 14, &["`?` with no key right before `]`"]),
    // user text is quoted with control characters escaped
    bad("listen: \"\\e[2Jnope\\r\"\nprobes:\n  exec:\n", 1, 9, &["invalid listen address `\\u{1b}[2Jnope\\r`"]),
];

#[test]
fn hostile_configs_are_refused_at_the_fault() {
    let cases: Vec<(String, usize, usize, &[&str])> =
        HOSTILE.iter().map(|c| (c.yaml.to_string(), c.line, c.column, c.mentions)).collect();
    assert_refused_at(&cases);
}

/// Each text is refused at its line and column, with a message that says so.
fn assert_refused_at(cases: &[(String, usize, usize, &[&str])]) {
    let mut failures = Vec::new();
    for (yaml, want_line, want_column, mentions) in cases {
        let shown: String = yaml.chars().take(200).collect();
        let err = match parse(yaml) {
            Ok(_) => {
                failures.push(format!("accepted:\n{shown}"));
                continue;
            }
            Err(err) => err,
        };
        let ConfigError::Invalid { line, column, message, .. } = &err else {
            failures.push(format!("no location in `{err}` for:\n{shown}"));
            continue;
        };
        let missing: Vec<&str> = mentions.iter().copied().filter(|m| !message.contains(m)).collect();
        if (*line, *column) != (*want_line, *want_column) || !missing.is_empty() {
            failures.push(format!(
                "want {want_line}:{want_column}, mentioning {mentions:?}; got `{err}` (missing {missing:?}) for:\n{shown}"
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

#[test]
fn a_byte_order_mark_is_no_part_of_the_config() {
    let config = parse("\u{feff}---\nlisten: \"127.0.0.1:9\"\nprobes:\n  exec:\n").expect("a BOM is skipped");
    assert_eq!(config.listen.to_string(), "127.0.0.1:9");
    // nor of its columns
    let err = parse("\u{feff}nosuch: 1\nprobes:\n  exec:\n").expect_err("unknown key");
    assert!(err.to_string().starts_with("test.yaml:1:1: unknown top-level key `nosuch`"), "{err}");
}

/// Nesting deep enough to cost the parser minutes is refused where it
/// crosses MAX_CONFIG_DEPTH, before the parser runs.
#[test]
fn deep_nesting_is_refused_fast_where_it_crosses_the_limit() {
    let indented: String = (0..100_000).map(|i| format!("{}k{i}:\n", " ".repeat(i % 2000))).collect();
    let indented = &indented[..indented.len().min(MAX_CONFIG_BYTES as usize)];
    let cases: Vec<(String, usize, usize, &[&str])> = vec![
        // `[` 100,000 deep: the 33rd is one too many
        ("[".repeat(100_000), 1, 33, &["nested more than 32 deep", "MAX_CONFIG_DEPTH"]),
        ("{a: ".repeat(100_000), 1, 129, &["nested more than 32 deep"]),
        // 3 levels of mappings, then flow from column 13
        (format!("probes:\n  exec:\n    labels: {}", "[".repeat(1 << 20)), 3, 42, &["nested more than 32 deep"]),
        // block mappings by indentation: the key at column 33
        (indented.to_string(), 33, 33, &["nested more than 32 deep"]),
        // block sequences on one line
        ("- ".repeat(100_000), 1, 65, &["nested more than 32 deep"]),
        // the comm list is the 5th level; its entries' lists from the 6th
        (
            format!("probes:\n  exec:\n    filter:\n      comm:\n      - {}", "- ".repeat(50)),
            5,
            63,
            &["more than 32 deep"],
        ),
    ];
    let started = std::time::Instant::now();
    assert_refused_at(&cases);
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
}

/// Text of 900 KB (under the size cap) in every place a message quotes
/// user text: the message stays one short line that says how long it was.
#[test]
fn long_values_are_quoted_short() {
    let long = "a".repeat(900_000);
    let places = [
        format!("? {long}\n: 1\nprobes:\n  exec:\n"),
        format!("probes:\n  ? {long}\n  : {{}}\n"),
        format!("probes:\n  exec:\n    ? {long}\n    : x\n"),
        format!("probes:\n  exec:\n    labels: [{long}]\n"),
        format!("probes:\n  exec:\n    filter:\n      comm: [{long}]\n"),
        format!("probes:\n  syscalls:\n    buckets: {long}\n"),
        format!("probes:\n  syscalls:\n    buckets: [{long}]\n"),
        format!("probes:\n  vfs_io:\n    hook: {long}\n"),
        format!("listen: {long}\nprobes:\n  exec:\n"),
        format!("metric_prefix: {long}\nprobes:\n  exec:\n"),
        format!("const_labels:\n  ? {long}\n  : x\nprobes:\n  exec:\n"),
        format!("const_labels:\n  env: {long}\nprobes:\n  exec:\n"),
        format!("series_limit: {long}\nprobes:\n  exec:\n"),
        format!("strict: {long}\nprobes:\n  exec:\n"),
        format!("probes:\n  exec:\n    labels: {long}\n"),
    ];
    for yaml in &places {
        let err = parse(yaml).expect_err("refused").to_string();
        let head = &yaml[..yaml.find("aaa").unwrap_or(0)];
        // (the longest: an unknown probe's, which lists the built-in probes)
        assert!(err.len() < 400, "{} bytes of message for {head:?}…: {}", err.len(), &err[..400.min(err.len())]);
        assert!(
            err.contains(&format!("aaaaa…` ({} bytes)", long.len())) || err.contains("aaaaa…\" (900000 bytes)"),
            "for {head:?}…: {err}"
        );
    }
}

#[test]
fn quoted_text_is_cut_and_escaped() {
    use super::scalar::quoted;
    assert_eq!(quoted("exec").to_string(), "`exec`");
    assert_eq!(quoted("it's \"x\" \\").to_string(), "`it's \"x\" \\`");
    assert_eq!(quoted("a\nb\u{1b}[0m\u{202e}").to_string(), "`a\\nb\\u{1b}[0m\\u{202e}`");
    let fits = "é".repeat(MAX_QUOTED_CHARS);
    assert_eq!(quoted(&fits).to_string(), format!("`{fits}`"));
    let long = format!("{fits}x");
    assert_eq!(quoted(&long).to_string(), format!("`{fits}…` ({} bytes)", long.len()));
    // an escape is never cut in half
    let escapes = format!("{}\n", "a".repeat(MAX_QUOTED_CHARS - 1));
    assert_eq!(
        quoted(&escapes).to_string(),
        format!("`{}…` ({} bytes)", "a".repeat(MAX_QUOTED_CHARS - 1), escapes.len())
    );
}

#[test]
fn serde_yaml_strings_in_messages_are_cut() {
    let short = "invalid type: string \"yes\", expected a boolean";
    assert_eq!(super::shorten_serde_strings(short), short);
    // the length is the value's, escapes counted as what they stand for
    let long = format!("invalid type: string \"\\u{{1b}}\\\"é{}\", expected x", "b".repeat(200));
    let want =
        format!("invalid type: string \"\\u{{1b}}\\\"é{}…\" (204 bytes), expected x", "b".repeat(MAX_QUOTED_CHARS - 3));
    assert_eq!(super::shorten_serde_strings(&long), want);
    // no closing quote: left as it is
    let open = format!("string \"{}", "c".repeat(100));
    assert_eq!(super::shorten_serde_strings(&open), open);
}

#[test]
fn caps_on_buckets_and_constant_labels() {
    let bounds = |n: usize| (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
    let labels = |n: usize| (0..n).map(|i| format!("  l{i}: v\n")).collect::<String>();
    let ok = [
        format!("probes:\n  syscalls:\n    buckets: [{}]\n", bounds(MAX_BUCKET_BOUNDS)),
        format!("const_labels:\n{}probes:\n  exec:\n", labels(MAX_CONST_LABELS)),
        format!(
            "const_labels:\n  {}: {}\nprobes:\n  exec:\n",
            "n".repeat(MAX_LABEL_NAME_BYTES),
            "v".repeat(MAX_LABEL_VALUE_BYTES)
        ),
        format!("metric_prefix: {}\nprobes:\n  exec:\n", "p".repeat(MAX_METRIC_PREFIX_BYTES)),
        "ring_buffer:\n  size_bytes: 268435456\nprobes:\n  exec:\n  exit:\n  file_open:\n  syscalls:\n".to_string(),
    ];
    for yaml in &ok {
        if let Err(err) = parse(yaml) {
            panic!("at the cap, refused: {err}");
        }
    }
    // column of the 65th bound: after "    buckets: [" and 64 bounds with ", "
    let bound_65 = 15 + bounds(MAX_BUCKET_BOUNDS).len() + 2;
    let cases: Vec<(String, usize, usize, &[&str])> = vec![
        (
            format!("probes:\n  syscalls:\n    buckets: [{}]\n", bounds(100)),
            3,
            bound_65,
            &["buckets[64]", "at most 64 bucket bounds"],
        ),
        (format!("const_labels:\n{}probes:\n  exec:\n", labels(40)), 34, 3, &["at most 32 constant labels"]),
        (
            format!("const_labels:\n  {}: v\nprobes:\n  exec:\n", "n".repeat(129)),
            2,
            3,
            &["label name `nnnn", "is 129 bytes, over the limit of 128"],
        ),
        (
            format!("const_labels:\n  env: {}\nprobes:\n  exec:\n", "v".repeat(1025)),
            2,
            8,
            &["label value `vvvv", "is 1025 bytes, over the limit of 1024"],
        ),
        (
            format!("metric_prefix: {}\nprobes:\n  exec:\n", "p".repeat(65)),
            1,
            16,
            &["is 65 bytes, over the limit of 64"],
        ),
    ];
    assert_refused_at(&cases);
}

/// A directory of test files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("sonde-config-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).expect("create temp dir");
        TempDir(path)
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).expect("write test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
    // SAFETY: c_path is a valid NUL-terminated string for the call's duration.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}: {}", path.display(), std::io::Error::last_os_error());
}

/// Runs `f` on another thread, failing the test rather than hanging if it
/// blocks.
fn within_seconds<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(5)).expect("returns at once, without blocking")
}

#[test]
fn load_refuses_what_is_not_a_regular_file() {
    let dir = TempDir::new("kinds");
    let fifo = dir.0.join("fifo.yaml");
    mkfifo(&fifo);
    let cases = [
        (fifo.clone(), "it is a FIFO (named pipe), not a regular file"),
        (dir.0.clone(), "it is a directory, not a regular file"),
        (PathBuf::from("/dev/null"), "it is a character device, not a regular file"),
    ];
    for (path, want) in cases {
        let err = within_seconds(move || Config::load(&path, &catalog()).map(|_| ()).map_err(|e| e.to_string()))
            .expect_err("not a regular file");
        assert!(err.ends_with(want), "{err}");
    }
    // a FIFO swapped in after the kind was checked: the open does not wait
    // for a writer, and the open file is checked again
    let err = within_seconds(move || super::open_nonblocking(&fifo).map(|_| ()).map_err(|e| e.to_string()))
        .expect_err("a FIFO");
    assert!(err.contains("FIFO"), "{err}");
    // a symlink to a regular file is followed
    let target = dir.file("real.yaml", b"probes:\n  exec:\n");
    let link = dir.0.join("link.yaml");
    std::os::unix::fs::symlink(&target, &link).expect("symlink");
    Config::load(&link, &catalog()).expect("a symlink to a config");
}

#[test]
fn load_refuses_a_file_over_the_size_cap_without_reading_it() {
    let dir = TempDir::new("size");
    // sparse: 50 MB long, nothing written
    let big = dir.0.join("big.yaml");
    std::fs::File::create(&big).and_then(|f| f.set_len(50_000_000)).expect("sparse file");
    let err = Config::load(&big, &catalog()).expect_err("too big");
    assert!(matches!(err, ConfigError::TooLarge { size: 50_000_000, .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{}: config is 50000000 bytes, over the limit of 1048576 bytes (1 MiB); not parsed", big.display())
    );
    // one byte over
    let over = dir.file("over.yaml", &vec![b'#'; MAX_CONFIG_BYTES as usize + 1]);
    assert!(matches!(Config::load(&over, &catalog()), Err(ConfigError::TooLarge { size: 1_048_577, .. })));
    // at the cap: read and parsed
    let mut at_cap = b"probes:\n  exec:\n".to_vec();
    at_cap.resize(MAX_CONFIG_BYTES as usize, b'\n');
    Config::load(&dir.file("at-cap.yaml", &at_cap), &catalog()).expect("a config of exactly the cap");
}

#[test]
fn load_reads_bytes_a_bom_and_reports_bad_utf8_where_it_is() {
    let dir = TempDir::new("utf8");
    let bom = dir.file("bom.yaml", b"\xEF\xBB\xBFlisten: \"127.0.0.1:9\"\r\nprobes:\r\n  exec:\r\n");
    assert_eq!(Config::load(&bom, &catalog()).expect("BOM and CRLF").listen.to_string(), "127.0.0.1:9");
    let cases: [(&str, &[u8], &str); 4] = [
        ("latin1.yaml", b"probes:\n  exec:\n    filter:\n      comm: [caf\xE9]\n", ":4:17: invalid UTF-8: byte 0xE9"),
        ("bom-bad.yaml", b"\xEF\xBB\xBFa\xFF: 1\n", ":1:2: invalid UTF-8: byte 0xFF"),
        ("truncated.yaml", b"probes:\n  \xC3", ":2:3: invalid UTF-8: the file ends in the middle of a character"),
        ("utf16.yaml", b"\xFF\xFEp\0r\0", ":1:1: invalid UTF-8: the file is UTF-16"),
    ];
    for (name, bytes, want) in cases {
        let path = dir.file(name, bytes);
        let err = Config::load(&path, &catalog()).expect_err("not UTF-8").to_string();
        assert!(err.starts_with(&format!("{}{want}", path.display())), "{err}");
    }
}
