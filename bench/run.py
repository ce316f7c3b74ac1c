#!/usr/bin/env python3
"""Whole-system benchmark of sonde's event path, side by side with bpftrace.

Run as root from anywhere in the repository:

    python3 bench/run.py                  # full run, prints markdown
    python3 bench/run.py --write          # ... and writes docs/benchmarks.md
    python3 bench/run.py --write-baseline # ... and writes bench/baseline.json
    python3 bench/run.py --quick          # CI: a 2 s sonde run per mode, checks only

What a full run measures (see docs/benchmarks.md for the method):

  throughput  A generator pinned to CPU 0 calls getppid(2) in a tight loop,
              alone (baseline), under two empty raw tracepoint programs
              (bare), under sonde's syscalls probe in each of its modes
              (one ring-buffer record per event; counts aggregated in the
              kernel and read at scrape), and under a bpftrace script doing
              the same work; agents and bpftrace on CPU 1.
  rss         sonde on its default config after 10000 distinct programs ran.
  startup     spawn to the first 200 from /healthz, 10 times.
  criterion   `cargo bench --bench encode` (encode and per-event hot path).

Only the Python standard library is used. Every process started is killed
on the way out, whatever happens.
"""

import argparse
import datetime
import functools
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
BASELINE = os.path.join(BENCH, "baseline.json")
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
SONDE = os.path.join(TARGET, "release", "sonde")
STATS_SYSCTL = "/proc/sys/kernel/bpf_stats_enabled"
CLK_TCK = os.sysconf("SC_CLK_TCK")

GEN_CPU = 0
AGENT_CPU = 1

# The targets from the benchmark issue; reported, never enforced.
TARGETS = {
    "agent_ns": 50.0,
    "kernel_over_bare_ns": 40.0,
    # In-kernel aggregation: total CPU per event as a share of bpftrace's, and
    # the kernel work added over the empty programs as a share of their cost.
    "inkernel_total_vs_bpftrace": 0.25,
    "inkernel_over_bare_share": 0.5,
    "encode_10k_ms": 1.0,
    "rss_mib": 30.0,
    "startup_ms": 150.0,
}

BPFTRACE_SCRIPT = """\
BEGIN { printf("ready\\n"); }
tracepoint:raw_syscalls:sys_enter /pid == %(pid)d/ { @start[tid] = nsecs; }
tracepoint:raw_syscalls:sys_exit /@start[tid]/ {
  @calls[args->id] = count();
  @lat[args->id] = hist(nsecs - @start[tid]);
  delete(@start[tid]);
}
"""


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# processes


class Procs:
    """Every process the harness starts, so that all of them end with it."""

    def __init__(self):
        self.procs = []

    def spawn(self, argv, **kw):
        kw.setdefault("stdin", subprocess.DEVNULL)
        p = subprocess.Popen(argv, **kw)
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, timeout=10.0):
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            except ProcessLookupError:
                pass
        for f in (p.stdin, p.stdout, p.stderr):
            if f:
                try:
                    f.close()
                except OSError:
                    pass
        if p in self.procs:
            self.procs.remove(p)
        return p.returncode

    def stop_all(self):
        for p in list(self.procs):
            if p.poll() is None:
                p.kill()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
            self.procs.remove(p)


def run(argv, **kw):
    log("$ " + " ".join(argv))
    return subprocess.run(argv, check=True, **kw)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ns(pid):
    """On-CPU time of a process: (precise ns from schedstat, utime+stime ns
    from /proc/PID/stat at clock-tick resolution)."""
    sched = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                sched += int(f.read().split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return sched, ticks * 1_000_000_000 // CLK_TCK


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def kib(status, key):
    return int(status[key].split()[0])


# --------------------------------------------------------------------------
# HTTP and the Prometheus text format

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def get(port, path, timeout=5.0):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.status, r.read()


def wait_healthy(port, proc, timeout=30.0, interval=0.002):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sonde exited with status {proc.returncode} before /healthz answered")
        try:
            status, _ = get(port, "/healthz", timeout=1.0)
            if status == 200:
                return time.monotonic()
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        time.sleep(interval)
    raise RuntimeError("sonde did not become healthy")


def parse_metrics(text):
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            continue
        labels = dict(LABEL.findall(m.group(2) or ""))
        samples.append((m.group(1), labels, float(m.group(3))))
    return samples


def scrape(port):
    _, body = get(port, "/metrics", timeout=30.0)
    return parse_metrics(body.decode())


def total(samples, name, **labels):
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in labels.items()))


def by_label(samples, name, label):
    out = {}
    for n, l, v in samples:
        if n == name:
            out[l.get(label, "")] = out.get(l.get(label, ""), 0.0) + v
    return out


# --------------------------------------------------------------------------
# BPF statistics, read with bpftool for programs sonde does not export


class StatsOn:
    """kernel.bpf_stats_enabled=1 for the duration, then as it was."""

    def __enter__(self):
        with open(STATS_SYSCTL) as f:
            self.before = f.read().strip()
        with open(STATS_SYSCTL, "w") as f:
            f.write("1")
        return self

    def __exit__(self, *exc):
        with open(STATS_SYSCTL, "w") as f:
            f.write(self.before)


def bpf_progs():
    out = subprocess.run(["bpftool", "-j", "prog", "show"], check=True, capture_output=True, text=True).stdout
    return {p["id"]: p for p in json.loads(out or "[]")}


# Program types that run on kernel events, as opposed to cgroup, socket or
# LSM programs that sit outside the measured path.
TRACING_TYPES = {"tracepoint", "raw_tracepoint", "raw_tracepoint_writable", "tracing", "kprobe", "perf_event"}


def foreign_tracing():
    """Tracing programs loaded by someone else (called while none of ours is)."""
    return sorted({p.get("name", str(i)) for i, p in bpf_progs().items() if p.get("type") in TRACING_TYPES})


def wait_quiet(timeout, grace=5.0):
    """Waits up to `timeout` s for other tracing programs to go away; returns
    those still loaded (empty when the machine is quiet). The kernel frees
    the programs of a measurement that just ended a little after its process
    exits, so the first `grace` seconds of waiting are silent."""
    start = time.monotonic()
    others = foreign_tracing()
    told = False
    while others and time.monotonic() - start < grace + timeout:
        if not told and time.monotonic() - start >= grace:
            log(f"other tracing BPF programs are loaded ({', '.join(others)}); waiting up to {timeout:g} s")
            told = True
        time.sleep(0.25)
        others = foreign_tracing()
    if others:
        log("  still loaded: the numbers of this measurement include their cost")
    return others


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def prog_totals(ids):
    progs = bpf_progs()
    runs = sum(progs[i].get("run_cnt", 0) for i in ids if i in progs)
    ns = sum(progs[i].get("run_time_ns", 0) for i in ids if i in progs)
    per = {progs[i].get("name", str(i)): (progs[i].get("run_cnt", 0), progs[i].get("run_time_ns", 0)) for i in ids}
    return runs, ns, per


# --------------------------------------------------------------------------
# the load generator


class Generator:
    def __init__(self, procs, binary, seconds):
        self.procs = procs
        self.p = procs.spawn(
            [binary, "getppid", str(seconds), str(GEN_CPU)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        line = self.p.stdout.readline().decode().strip()
        if line != "ready":
            raise RuntimeError(f"load generator did not start: {line!r}")
        self.pid = self.p.pid

    def go(self):
        """Runs the loop; returns (calls, elapsed ns). The process waits for
        `finish` afterwards, so its exit is not in the measured window."""
        self.p.stdin.write(b"g")
        self.p.stdin.flush()
        line = self.p.stdout.readline().decode().strip()
        m = re.fullmatch(r"calls=(\d+) elapsed_ns=(\d+)", line)
        if not m:
            raise RuntimeError(f"unexpected load generator output: {line!r}")
        return int(m.group(1)), int(m.group(2))

    def finish(self):
        self.procs.stop(self.p)


def gen_result(calls, elapsed):
    rate = calls / (elapsed / 1e9)
    return {"calls": calls, "elapsed_ns": elapsed, "calls_per_s": rate, "ns_per_call": elapsed / calls}


def run_baseline(ctx):
    gen = Generator(ctx.procs, ctx.loadgen, ctx.seconds)
    try:
        return gen_result(*gen.go())
    finally:
        gen.finish()


def run_bare(ctx):
    """Two empty programs on the same raw tracepoints as the syscalls probe."""
    with StatsOn():
        gen = Generator(ctx.procs, ctx.loadgen, ctx.seconds)
        bare = None
        try:
            bare = ctx.procs.spawn(
                ["taskset", "-c", str(AGENT_CPU), ctx.bare], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            line = bare.stdout.readline().decode().strip()
            m = re.fullmatch(r"ids=(\d+),(\d+)", line)
            if not m:
                raise RuntimeError(f"bare raw tracepoint loader failed: {line!r}")
            ids = [int(m.group(1)), int(m.group(2))]
            runs0, ns0, _ = prog_totals(ids)
            res = gen_result(*gen.go())
            runs1, ns1, _ = prog_totals(ids)
        finally:
            gen.finish()
            if bare:
                ctx.procs.stop(bare)
    runs, ns = runs1 - runs0, ns1 - ns0
    # Each system call runs both programs once.
    res.update({"prog_runs": runs, "prog_ns": ns, "ns_per_syscall": 2 * ns / runs if runs else float("nan")})
    return res


# sonde's modes: the syscalls probe's two (`aggregate` setting) and a
# config-defined probe; each with its case name in the results, the heading of
# its column, the probe it loads, the counter that counts the generator's
# calls and the label that says which system call it was.
MODES = {
    "ring": {
        "aggregate": False,
        "case": "sonde_ring",
        "title": "sonde `syscalls`, ring buffer",
        "probe": "syscalls",
        "counter": "sonde_syscalls_total",
        "label": "syscall",
    },
    "kernel": {
        "aggregate": True,
        "case": "sonde_kernel",
        "title": "sonde `syscalls`, in-kernel",
        "probe": "syscalls",
        "counter": "sonde_syscalls_total",
        "label": "syscall",
    },
    # The same question asked of a config-defined probe (docs/custom-probes.md):
    # the generic tracepoint program on raw_syscalls/sys_enter, by number.
    "config": {
        "aggregate": False,
        "case": "sonde_config",
        "title": "config-defined probe, ring buffer",
        "probe": "syscall_entries",
        "counter": "sonde_syscall_entries_total",
        "label": "id",
    },
}
# A config-defined probe's total CPU per event against the built-in probe's
# on the same delivery path (one ring buffer record per event).
CONFIG_VS_BUILTIN = 1.5


def sonde_config(path, port, pid, args, mode):
    ring = ""
    if args.ring_bytes or args.wakeup_bytes is not None:
        ring = "ring_buffer:\n"
        if args.ring_bytes:
            ring += f"  size_bytes: {args.ring_bytes}\n"
        if args.wakeup_bytes is not None:
            ring += f"  wakeup_bytes: {args.wakeup_bytes}\n"
    text = (
        f'listen: "127.0.0.1:{port}"\n'
        "bpf_stats: true\n"
        f"{ring}"
        "probes:\n"
    )
    if mode == "config":
        text += (
            "  syscall_entries:\n"
            "    tracepoint: raw_syscalls/sys_enter\n"
            "    labels: [id]\n"
            "    filter:\n"
            f"      pid: {pid}\n"
        )
    else:
        text += (
            "  syscalls:\n"
            "    labels: [syscall]\n"
            f"    aggregate: {'true' if MODES[mode]['aggregate'] else 'false'}\n"
            "    filter:\n"
            f"      pid: {pid}\n"
        )
    with open(path, "w") as f:
        f.write(text)
    return text


def run_sonde(ctx, mode):
    """sonde's syscalls probe on the generator, or a config-defined probe
    asking the same. In-kernel, the events are counted in the kernel and read
    at each scrape; on the ring buffer each is a record that the agent reads
    and counts."""
    m = MODES[mode]
    aggregate, probe, counter, label = m["aggregate"], m["probe"], m["counter"], m["label"]
    # The config-defined probe labels by number, the built-in one by name.
    getppid = str(getppid_nr()) if mode == "config" else "getppid"
    gen = Generator(ctx.procs, ctx.loadgen, ctx.seconds)
    agent = None
    try:
        port = free_port()
        cfg = os.path.join(ctx.tmp, f"sonde-throughput-{mode}.yaml")
        ctx.sonde_config_text[mode] = sonde_config(cfg, port, gen.pid, ctx.args, mode)
        errlog = open(os.path.join(ctx.tmp, f"sonde-throughput-{mode}.log"), "wb")
        agent = ctx.procs.spawn(
            ["taskset", "-c", str(AGENT_CPU), SONDE, "run", "--config", cfg, "--log-format", "json"], stderr=errlog
        )
        errlog.close()
        wait_healthy(port, agent)
        before = scrape(port)
        if total(before, "sonde_probe_up", probe=probe) != 1:
            raise RuntimeError(f"the {probe} probe did not attach; see " + errlog.name)
        cpu0 = cpu_ns(agent.pid)
        res = gen_result(*gen.go())
        # Let the reader drain the ring (it polls every poll_interval_ms).
        time.sleep(ctx.drain_s)
        if aggregate:
            # The agent's work for in-kernel counts is done when a scrape reads
            # them, so that scrape is inside the measured CPU time.
            after = scrape(port)
            cpu1 = cpu_ns(agent.pid)
        else:
            cpu1 = cpu_ns(agent.pid)
            after = scrape(port)
        time.sleep(ctx.drain_s)
        again = scrape(port)
    finally:
        gen.finish()
        if agent:
            ctx.procs.stop(agent)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    received = int(delta("sonde_events_received_total", probe=probe))
    lost = int(delta("sonde_events_lost_total", probe=probe))
    by_syscall = {
        k: int(v - by_label(before, counter, label).get(k, 0)) for k, v in by_label(after, counter, label).items()
    }
    by_syscall = {k: v for k, v in by_syscall.items() if v}
    kernel_ns = delta("sonde_bpf_prog_run_seconds_total", probe=probe) * 1e9
    runs = {
        p: int(v - by_label(before, "sonde_bpf_prog_runs_total", "program").get(p, 0))
        for p, v in by_label(after, "sonde_bpf_prog_runs_total", "program").items()
    }
    prog_ns = {
        p: round((v - by_label(before, "sonde_bpf_prog_run_seconds_total", "program").get(p, 0)) * 1e9)
        for p, v in by_label(after, "sonde_bpf_prog_run_seconds_total", "program").items()
    }
    # The generator's window holds its getppid calls and the one write of
    # its result line; nothing else (see bench/loadgen.c). The read it then
    # blocks in has entered too: a probe that counts entries counts it, one
    # that counts completed calls does not (nor the read it was blocked in
    # when the agent attached, whose entry it never saw).
    produced = res["calls"] + (2 if mode == "config" else 1)
    sched, ticks = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    agent_ns = sched if sched > 0 else ticks
    if aggregate:
        # No ring records: the kernel's counts are the events, every syscall
        # label of the series together.
        counted = sum(by_syscall.values())
        settled = total(again, counter) == total(after, counter)
        # The agent does no work per event; its CPU is spread over all of them.
        per_event_base = produced
    else:
        counted = received
        settled = total(again, "sonde_events_received_total", probe=probe) + total(
            again, "sonde_events_lost_total", probe=probe
        ) == total(after, "sonde_events_received_total", probe=probe) + total(
            after, "sonde_events_lost_total", probe=probe
        )
        per_event_base = received
    res.update(
        {
            "mode": mode,
            "produced": produced,
            "received": received,
            "counted": counted,
            "lost": lost,
            "unaccounted": produced - counted - lost,
            "getppid_counted": by_syscall.get(getppid, 0),
            "other_syscalls_counted": {k: v for k, v in by_syscall.items() if k != getppid},
            "drained": settled,
            "kernel_ns": kernel_ns,
            "prog_runs": runs,
            "prog_ns": prog_ns,
            "kernel_ns_per_event": kernel_ns / produced,
            "agent_cpu_ns": agent_ns,
            "agent_cpu_ns_ticks": ticks,
            "agent_ns_per_event": agent_ns / per_event_base if per_event_base else float("nan"),
            "agent_ns_per_event_ticks": ticks / per_event_base if per_event_base else float("nan"),
        }
    )
    res["total_ns_per_event"] = res["kernel_ns_per_event"] + agent_ns / produced
    return res


def run_bpftrace(ctx):
    with StatsOn():
        gen = Generator(ctx.procs, ctx.loadgen, ctx.seconds)
        bt = None
        out_path = os.path.join(ctx.tmp, "bpftrace.out")
        try:
            known = set(bpf_progs())
            out = open(out_path, "wb")
            bt = ctx.procs.spawn(
                ["taskset", "-c", str(AGENT_CPU), "bpftrace", "-B", "line", "-e", BPFTRACE_SCRIPT % {"pid": gen.pid}],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            out.close()
            deadline = time.monotonic() + 60
            while b"ready" not in open(out_path, "rb").read():
                if bt.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("bpftrace did not start:\n" + open(out_path).read())
                time.sleep(0.02)
            progs = bpf_progs()
            ids = [
                i
                for i, p in progs.items()
                if i not in known
                and p.get("type") == "tracepoint"
                and (not p.get("pids") or any(x.get("pid") == bt.pid for x in p["pids"]))
            ]
            if len(ids) != 2:
                raise RuntimeError(f"expected bpftrace's 2 tracepoint programs, found {ids}")
            runs0, ns0, _ = prog_totals(ids)
            cpu0 = cpu_ns(bt.pid)
            res = gen_result(*gen.go())
            cpu1 = cpu_ns(bt.pid)
            runs1, ns1, _ = prog_totals(ids)
        finally:
            gen.finish()
            if bt:
                ctx.procs.stop(bt, signal.SIGINT, timeout=30)
    text = open(out_path, errors="replace").read()
    m = re.search(r"^@calls\[%d\]: (\d+)" % ctx.getppid_nr, text, re.M)
    produced = res["calls"] + 1
    sched, ticks = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    user = sched if sched > 0 else ticks
    kernel_ns = ns1 - ns0
    res.update(
        {
            "produced": produced,
            "getppid_counted": int(m.group(1)) if m else None,
            "prog_runs": runs1 - runs0,
            "kernel_ns": kernel_ns,
            "kernel_ns_per_event": kernel_ns / produced,
            "user_cpu_ns": user,
            "user_cpu_ns_ticks": ticks,
            "user_ns_per_event": user / produced,
        }
    )
    res["total_ns_per_event"] = res["kernel_ns_per_event"] + res["user_ns_per_event"]
    return res


# --------------------------------------------------------------------------
# memory, startup, criterion


def run_rss(ctx, count=10_000):
    """Two agents watch the same 10 000 programs start: one on the default
    config (every probe), one with only the `exec` probe (10 000 series)."""
    spawn_dir = os.path.join(ctx.tmp, "progs")
    os.makedirs(spawn_dir, exist_ok=True)
    for i in range(count):
        os.symlink("/bin/true", os.path.join(spawn_dir, f"x{i:05d}"))
    exec_only = os.path.join(ctx.tmp, "sonde-exec-only.yaml")
    with open(exec_only, "w") as f:
        f.write("probes:\n  exec: {}\n")
    agents = {}
    try:
        for name, extra in (("default", []), ("exec_only", ["--config", exec_only])):
            port = free_port()
            errlog = open(os.path.join(ctx.tmp, f"sonde-rss-{name}.log"), "wb")
            p = ctx.procs.spawn(
                ["taskset", "-c", str(AGENT_CPU), SONDE, "run", "--listen", f"127.0.0.1:{port}", *extra], stderr=errlog
            )
            errlog.close()
            agents[name] = (p, port)
        for p, port in agents.values():
            wait_healthy(port, p)
        time.sleep(1.0)
        idle = {name: proc_status(p.pid) for name, (p, _) in agents.items()}
        t0 = time.monotonic()
        out = run(
            ["taskset", "-c", str(GEN_CPU), ctx.loadgen, "spawn", spawn_dir], capture_output=True, text=True
        ).stdout
        spawn_s = time.monotonic() - t0
        time.sleep(2.0)
        settled = {name: proc_status(p.pid) for name, (p, _) in agents.items()}
        scrapes = {}
        for name, (p, port) in agents.items():
            timings, body = [], b""
            for _ in range(ctx.args.scrapes):
                t = time.perf_counter()
                _, body = get(port, "/metrics", timeout=30)
                timings.append((time.perf_counter() - t) * 1e3)
            scrapes[name] = (timings, body)
        time.sleep(0.5)
        scraped = {name: proc_status(p.pid) for name, (p, _) in agents.items()}
    finally:
        for p, _ in agents.values():
            ctx.procs.stop(p)
    res = {"spawned": int(out.strip().split("=")[1]), "spawn_s": spawn_s}
    for name in agents:
        timings, body = scrapes[name]
        samples = parse_metrics(body.decode())
        exec_series = [l for n, l, _ in samples if n == "sonde_exec_total"]
        res[name] = {
            "probes_up": sorted(l["probe"] for n, l, v in samples if n == "sonde_probe_up" and v == 1),
            "exec_series": len(exec_series),
            "exec_series_bench": sum(1 for l in exec_series if re.fullmatch(r"x\d{5}", l.get("comm", ""))),
            "series_total": len(samples),
            "metrics_bytes": len(body),
            "scrape_ms": timings,
            "scrape_ms_median": statistics.median(timings),
            "rss_idle_kib": kib(idle[name], "VmRSS"),
            "rss_settled_kib": kib(settled[name], "VmRSS"),
            "hwm_settled_kib": kib(settled[name], "VmHWM"),
            "rss_scraped_kib": kib(scraped[name], "VmRSS"),
            "hwm_scraped_kib": kib(scraped[name], "VmHWM"),
        }
    return res


def label_sets(samples):
    """Series as label sets: a histogram counts once (by its _count line)."""
    return sum(1 for n, _, _ in samples if not (n.endswith("_bucket") or n.endswith("_sum")))


def run_rss_default(ctx, count=3_000):
    """The RSS target as stated: every default probe on and about 10 000
    label sets. `count` programs each add an exec, an exit and a file_open
    label set, which with the system's own series comes to about 10k."""
    spawn_dir = os.path.join(ctx.tmp, "progs-default")
    os.makedirs(spawn_dir, exist_ok=True)
    for i in range(count):
        os.symlink("/bin/true", os.path.join(spawn_dir, f"d{i:05d}"))
    port = free_port()
    errlog = open(os.path.join(ctx.tmp, "sonde-rss-default10k.log"), "wb")
    p = ctx.procs.spawn(["taskset", "-c", str(AGENT_CPU), SONDE, "run", "--listen", f"127.0.0.1:{port}"], stderr=errlog)
    errlog.close()
    try:
        wait_healthy(port, p)
        run(["taskset", "-c", str(GEN_CPU), ctx.loadgen, "spawn", spawn_dir], capture_output=True, text=True)
        time.sleep(2.0)
        for _ in range(ctx.args.scrapes):
            _, body = get(port, "/metrics", timeout=30)
        time.sleep(0.5)
        status = proc_status(p.pid)
    finally:
        ctx.procs.stop(p)
    samples = parse_metrics(body.decode())
    return {
        "spawned": count,
        "scrapes": ctx.args.scrapes,
        "label_sets": label_sets(samples),
        "series_total": len(samples),
        "rss_kib": kib(status, "VmRSS"),
        "hwm_kib": kib(status, "VmHWM"),
    }


def run_startup(ctx, runs):
    wall, own = [], []
    for i in range(runs):
        port = free_port()
        log_path = os.path.join(ctx.tmp, f"sonde-startup-{i}.log")
        errlog = open(log_path, "wb")
        t0 = time.monotonic()
        agent = ctx.procs.spawn([SONDE, "run", "--listen", f"127.0.0.1:{port}", "--log-format", "json"], stderr=errlog)
        errlog.close()
        try:
            t1 = wait_healthy(port, agent, interval=0.001)
        finally:
            ctx.procs.stop(agent)
        wall.append((t1 - t0) * 1e3)
        for line in open(log_path, errors="replace"):
            try:
                fields = json.loads(line).get("fields", {})
            except ValueError:
                continue
            if fields.get("message") == "ready" and "startup_ms" in fields:
                own.append(fields["startup_ms"])
    return {
        "wall_ms": wall,
        "wall_ms_median": statistics.median(wall),
        "startup_ms": own,
        "startup_ms_median": statistics.median(own) if own else None,
    }


def run_criterion(ctx):
    run(["cargo", "bench", "--bench", "encode", "--", "--noplot"], cwd=ROOT, stdout=sys.stderr)
    out = {}
    for group, ids in (("encode", ["1000", "10000", "100000"]), ("event", ["syscall", "syscall+comm"])):
        for bench_id in ids:
            path = os.path.join(TARGET, "criterion", group, bench_id, "new", "estimates.json")
            with open(path) as f:
                est = json.load(f)
            out[f"{group}/{bench_id}"] = est["median"]["point_estimate"]  # ns per iteration
    # The event benchmarks feed 4096 events per iteration.
    return {
        "encode_ms": {k.split("/")[1]: v / 1e6 for k, v in out.items() if k.startswith("encode/")},
        "event_ns": {k.split("/")[1]: v / 4096 for k, v in out.items() if k.startswith("event/")},
    }


# --------------------------------------------------------------------------
# reporting


def med(rounds, key):
    vals = [r[key] for r in rounds if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")


def fmt(v, digits=1):
    if v is None:
        return "n/a"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.{digits}f}"


def verdict(ok):
    return "pass" if ok else "MISS"


def ctx_scrapes(rss):
    return len(rss["default"]["scrape_ms"])


def cpu_model():
    """The CPU's model name from /proc/cpuinfo, or "unknown"."""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def machine():
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "bpftrace": subprocess.run(["bpftrace", "--version"], capture_output=True, text=True).stdout.strip()
        if shutil.which("bpftrace")
        else None,
        "rustc": subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
        if shutil.which("rustc")
        else None,
    }


def summarize(res):
    """Medians over the rounds, and each ratio taken within a round."""
    rounds = res["rounds"]

    def ratio_med(f):
        return statistics.median(f(r) for r in rounds)

    def added(r, case):
        return r[case]["ns_per_call"] - r["baseline"]["ns_per_call"]

    s = {
        "base_rate": med([r["baseline"] for r in rounds], "calls_per_s"),
        "bare_rate": med([r["bare"] for r in rounds], "calls_per_s"),
        "bare_slow": ratio_med(lambda r: r["bare"]["calls_per_s"] / r["baseline"]["calls_per_s"]),
        "bare_added": ratio_med(lambda r: added(r, "bare")),
        "bare_ns": med([r["bare"] for r in rounds], "ns_per_syscall"),
        "bpftrace": tracer_summary(rounds, "bpftrace", "user_ns_per_event"),
    }
    for mode in MODES.values():
        case = mode["case"]
        c = tracer_summary(rounds, case, "agent_ns_per_event")
        c["user_ticks"] = med([r[case] for r in rounds], "agent_ns_per_event_ticks")
        c["total_ratio"] = ratio_med(lambda r: r[case]["total_ns_per_event"] / r["bpftrace"]["total_ns_per_event"])
        c["kernel_ratio"] = ratio_med(lambda r: r[case]["kernel_ns_per_event"] / r["bpftrace"]["kernel_ns_per_event"])
        c["added_ratio"] = ratio_med(lambda r: added(r, case) / added(r, "bpftrace"))
        c["over_bare"] = ratio_med(lambda r: r[case]["kernel_ns_per_event"] - r["bare"]["ns_per_syscall"])
        c["over_bare_share"] = ratio_med(
            lambda r: (r[case]["kernel_ns_per_event"] - r["bare"]["ns_per_syscall"]) / r["bare"]["ns_per_syscall"]
        )
        for key in ("produced", "counted", "lost", "unaccounted"):
            c[key] = [r[case][key] for r in rounds]
        c["lost_share"] = ratio_med(lambda r: r[case]["lost"] / r[case]["produced"])
        s[case] = c
    for builtin in ("sonde_ring", "sonde_kernel"):
        s["sonde_config"][f"total_vs_{builtin}"] = ratio_med(
            lambda r: r["sonde_config"]["total_ns_per_event"] / r[builtin]["total_ns_per_event"]
        )
        s["sonde_config"][f"kernel_vs_{builtin}"] = ratio_med(
            lambda r: r["sonde_config"]["kernel_ns_per_event"] / r[builtin]["kernel_ns_per_event"]
        )
    return s


def tracer_summary(rounds, case, user_key):
    """What every traced case reports: its speed, the time it adds to each
    system call, and its CPU per event in the kernel and in user space."""
    runs = [r[case] for r in rounds]
    return {
        "rate": med(runs, "calls_per_s"),
        "slow": statistics.median(r[case]["calls_per_s"] / r["baseline"]["calls_per_s"] for r in rounds),
        "added": statistics.median(r[case]["ns_per_call"] - r["baseline"]["ns_per_call"] for r in rounds),
        "kernel": med(runs, "kernel_ns_per_event"),
        "user": med(runs, user_key),
        "total": med(runs, "total_ns_per_event"),
        "inline": statistics.median(
            r[case]["ns_per_call"] - r["baseline"]["ns_per_call"] + r[case][user_key] for r in rounds
        ),
    }


def throughput_tables(res, s):
    rounds = res["rounds"]
    n = len(rounds)
    ring, bt = s["sonde_ring"], s["bpftrace"]
    traced = [s[m["case"]] for m in MODES.values()] + [bt]

    def row(label, base, bare, f, bold=False):
        cells = [f(c) for c in traced]
        if bold:
            cells = [f"**{c}**" if c else c for c in cells]
        return f"| {label} | {base} | {bare} | " + " | ".join(cells) + " |"

    lines = [
        f"Medians of {n} round(s) of {res['seconds']:g} s; ratios are taken within each round, then the median.",
        "",
        "| | no tracing | empty raw_tp programs | " + " | ".join(m["title"] for m in MODES.values()) + " | bpftrace |",
        "|---|---:|---:|" + "---:|" * (len(MODES) + 1),
        row("generator getppid calls/s", fmt(s["base_rate"], 0), fmt(s["bare_rate"], 0), lambda c: fmt(c["rate"], 0)),
        row("generator speed vs no tracing", "1.00", f"{s['bare_slow']:.2f}", lambda c: f"{c['slow']:.2f}"),
        row("ns added to each system call", "0", fmt(s["bare_added"]), lambda c: fmt(c["added"])),
        row("kernel ns/event (BPF run time)", "", fmt(s["bare_ns"]), lambda c: fmt(c["kernel"])),
        row(
            "kernel ns/event over the empty programs (× their cost)",
            "",
            "",
            lambda c: f"{fmt(c['over_bare'])} ({c['over_bare_share']:.2f}×)" if c is not bt else "",
        ),
        row("events lost", "", "", lambda c: f"{c['lost_share']:.1%}" if c is not bt else ""),
        row(
            "user-space CPU ns/event (ring buffer: per event received)",
            "",
            "",
            lambda c: fmt(c["user"]),
        ),
        row(
            "**total CPU ns/event** (kernel + user, per event produced)",
            "",
            "",
            lambda c: fmt(c["total"]),
            bold=True,
        ),
        row("ns added per call + user ns/event", "", "", lambda c: fmt(c["inline"])),
        "",
    ]
    for mode in MODES.values():
        c = s[mode["case"]]
        lines += [
            f"{mode['title']} ÷ bpftrace, total CPU per event: **{c['total_ratio']:.2f}**; "
            f"kernel time per event: {c['kernel_ratio']:.2f}; "
            f"time added to each system call: {c['added_ratio']:.2f}.",
            "",
        ]
    c = s["sonde_config"]
    lines += [
        "The config-defined probe counts each call once, at entry, by number; the built-in `syscalls` "
        "probe also times each call (a second program at exit and an entry-time map), so it does more "
        f"per event. Config-defined ÷ built-in, total CPU per event: {c['total_vs_sonde_ring']:.2f} "
        f"against the ring buffer mode, {c['total_vs_sonde_kernel']:.2f} against the in-kernel mode; "
        f"kernel time per event: {c['kernel_vs_sonde_ring']:.2f} and {c['kernel_vs_sonde_kernel']:.2f}.",
        "",
    ]
    if sum(ring["lost"]):
        lines += [
            "While the ring buffer loses events, sonde's user-space share of the total covers only the",
            "events it received; the per-event-received figure above is what each one costs.",
            "",
        ]
    lines += [
        "Events of the generator's window, per round. *Counted*: ring buffer records received",
        "(ring buffer, config-defined); `sonde_syscalls_total` summed over every `syscall` (in-kernel);",
        "nothing for bpftrace, whose count is its `@calls[getppid]`.",
        "",
        "| round | case | produced (getppid + 1 write; + 1 read entered, config-defined) | counted | lost | unaccounted "
        "| getppid counted | other syscalls counted | settled at the first scrape |",
        "|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    noisy = sorted(
        {p for r in rounds for m in r.values() if isinstance(m, dict) for p in m.get("other_bpf_programs", [])}
    )
    if noisy:
        lines[0:0] = [
            "**Other tracing BPF programs were loaded during some measurements** "
            f"({', '.join(noisy)}): those measurements include their cost; "
            "see `other_bpf_programs` in the raw numbers.",
            "",
        ]
    for i, r in enumerate(rounds, 1):
        for mode in MODES.values():
            a = r[mode["case"]]
            other = ", ".join(f"{k} {v}" for k, v in sorted(a["other_syscalls_counted"].items())) or "none"
            lines.append(
                f"| {i} | {mode['title']} | {fmt(a['produced'])} | {fmt(a['counted'])} | {fmt(a['lost'])} "
                f"| {fmt(a['unaccounted'])} | {fmt(a['getppid_counted'])} | {other} "
                f"| {'yes' if a['drained'] else 'NO'} |"
            )
        b = r["bpftrace"]
        lines.append(f"| {i} | bpftrace | {fmt(b['produced'])} | | | | {fmt(b['getppid_counted'])} | | |")
    return lines


def targets_table(res, s):
    ring, kern, bt = s["sonde_ring"], s["sonde_kernel"], s["bpftrace"]
    rows = ["| target | measured | |", "|---|---:|---|"]
    rows.append(
        f"| agent CPU ≤ {TARGETS['agent_ns']:g} ns/event (ring buffer) | {fmt(ring['user'])} ns "
        f"| {verdict(ring['user'] <= TARGETS['agent_ns'])} |"
    )
    rows.append(
        f"| kernel ≤ {TARGETS['kernel_over_bare_ns']:g} ns/event over empty raw_tp programs (ring buffer) "
        f"| {fmt(ring['over_bare'])} ns ({fmt(ring['kernel'])} − {fmt(s['bare_ns'])}) "
        f"| {verdict(ring['over_bare'] <= TARGETS['kernel_over_bare_ns'])} |"
    )
    unacc = sum(abs(u) for u in ring["unaccounted"])
    rows.append(
        f"| zero unaccounted events, ring buffer (received + lost = produced) | {unacc} "
        f"(lost {sum(ring['lost'])}) | {verdict(unacc == 0)} |"
    )
    rows.append(f"| (no target) events lost, ring buffer full | {ring['lost_share']:.1%} of those produced | |")
    rows.append(
        f"| total CPU/event ≤ bpftrace's (ring buffer) | {ring['total_ratio']:.2f}× "
        f"({fmt(ring['total'])} vs {fmt(bt['total'])} ns) | {verdict(ring['total_ratio'] <= 1.0)} |"
    )
    limit = TARGETS["inkernel_total_vs_bpftrace"]
    rows.append(
        f"| `syscalls` total CPU per event ≤ {limit:g}× bpftrace's (in-kernel) | {kern['total_ratio']:.2f}× "
        f"({fmt(kern['total'])} vs {fmt(bt['total'])} ns) | {verdict(kern['total_ratio'] <= limit)} |"
    )
    limit = TARGETS["inkernel_over_bare_share"]
    rows.append(
        f"| kernel work per event over the bare hook ≤ {limit:g}× the bare hook's own cost (in-kernel) "
        f"| {kern['over_bare_share']:.2f}× (({fmt(kern['kernel'])} − {fmt(s['bare_ns'])}) "
        f"÷ {fmt(s['bare_ns'])} ns) "
        f"| {verdict(kern['over_bare_share'] <= limit)} |"
    )
    unacc = sum(abs(u) for u in kern["unaccounted"])
    rows.append(
        f"| zero unaccounted events, in-kernel (`syscalls_total` over every syscall + lost = produced) | {unacc} "
        f"(lost {sum(kern['lost'])}) | {verdict(unacc == 0)} |"
    )
    cfg = s["sonde_config"]
    rows.append(
        f"| config-defined probe's total CPU per event ≤ {CONFIG_VS_BUILTIN:g}× the built-in `syscalls` "
        f"probe's (both ring buffer) | {cfg['total_vs_sonde_ring']:.2f}× ({fmt(cfg['total'])} vs "
        f"{fmt(ring['total'])} ns) | {verdict(cfg['total_vs_sonde_ring'] <= CONFIG_VS_BUILTIN)} |"
    )
    unacc = sum(abs(u) for u in cfg["unaccounted"])
    rows.append(
        f"| zero unaccounted events, config-defined probe | {unacc} (lost {sum(cfg['lost'])}) "
        f"| {verdict(unacc == 0)} |"
    )
    crit = res.get("criterion")
    if crit:
        enc = crit["encode_ms"]["10000"]
        rows.append(
            f"| encode 10k series ≤ {TARGETS['encode_10k_ms']:g} ms (criterion) | {enc:.2f} ms "
            f"| {verdict(enc <= TARGETS['encode_10k_ms'])} |"
        )
    rss = res.get("rss")
    small = res.get("rss_default")
    if small:
        mib = small["hwm_kib"] / 1024
        rows.append(
            f"| RSS ≤ {TARGETS['rss_mib']:g} MiB, default config (every probe), {fmt(small['label_sets'])} label sets "
            f"({fmt(small['series_total'])} lines) after {fmt(small['spawned'])} programs ran and "
            f"{small['scrapes']} scrapes | {small['rss_kib'] / 1024:.1f} MiB steady, {mib:.1f} MiB peak "
            f"(VmHWM) | {verdict(mib <= TARGETS['rss_mib'])} |"
        )
    if rss:
        for name, what in (("default", "default config (every probe)"), ("exec_only", "`exec` probe only")):
            r = rss[name]
            mib = r["hwm_scraped_kib"] / 1024
            rows.append(
                f"| RSS ≤ {TARGETS['rss_mib']:g} MiB after 10k programs ran, {what}, "
                f"{fmt(r['series_total'])} series | {mib:.1f} MiB peak (VmHWM), "
                f"{r['rss_settled_kib'] / 1024:.1f} MiB before any scrape | {verdict(mib <= TARGETS['rss_mib'])} |"
            )
        r = rss["exec_only"]
        rows.append(
            f"| (same target, measured end to end) GET /metrics of {fmt(r['series_total'])} series "
            f"| {r['scrape_ms_median']:.2f} ms | {verdict(r['scrape_ms_median'] <= TARGETS['encode_10k_ms'])} |"
        )
    st = res.get("startup")
    if st:
        rows.append(
            f"| startup ≤ {TARGETS['startup_ms']:g} ms (spawn to /healthz 200) | {st['wall_ms_median']:.1f} ms "
            f"| {verdict(st['wall_ms_median'] <= TARGETS['startup_ms'])} |"
        )
    return rows


def other_tables(res):
    lines = []
    crit = res.get("criterion")
    if crit:
        e, v = crit["encode_ms"], crit["event_ns"]
        lines += [
            "### In-process (criterion, `cargo bench --bench encode`)",
            "",
            "| benchmark | median |",
            "|---|---:|",
            f"| `/metrics` encode, 1k counter series | {e['1000']:.3f} ms |",
            f"| `/metrics` encode, 10k counter series | {e['10000']:.3f} ms |",
            f"| `/metrics` encode, 100k counter series | {e['100000']:.3f} ms |",
            f"| `syscalls` event, labels `[syscall]` | {v['syscall']:.1f} ns/event |",
            f"| `syscalls` event, labels `[syscall, comm]` | {v['syscall+comm']:.1f} ns/event |",
            "",
        ]
    rss = res.get("rss")
    if rss:
        d, e = rss["default"], rss["exec_only"]

        def row(label, f):
            return f"| {label} | {f(d)} | {f(e)} |"

        def mib(k):
            return lambda r: f"{r[k] / 1024:.1f} MiB"

        lines += [
            f"### Memory: after {fmt(rss['spawned'])} distinct programs ran "
            f"(symlinks to /bin/true, {rss['spawn_s']:.1f} s)",
            "",
            "| | default config | `exec` probe only |",
            "|---|---:|---:|",
            row("probes attached", lambda r: ", ".join(r["probes_up"])),
            row("`sonde_exec_total` series (from the run)", lambda r: f"{fmt(r['exec_series'])} "
                f"({fmt(r['exec_series_bench'])})"),
            row("series on /metrics, all metrics", lambda r: fmt(r["series_total"])),
            row("/metrics size", lambda r: f"{r['metrics_bytes'] / 1e6:.2f} MB"),
            row(f"GET /metrics, median of {ctx_scrapes(rss)}", lambda r: f"{r['scrape_ms_median']:.2f} ms"),
            row("VmRSS idle, before the programs ran", mib("rss_idle_kib")),
            row("VmRSS after, before any scrape", mib("rss_settled_kib")),
            row("VmRSS after the scrapes", mib("rss_scraped_kib")),
            row("VmHWM (peak) after the scrapes", mib("hwm_scraped_kib")),
            "",
        ]
    st = res.get("startup")
    if st:
        own = st["startup_ms_median"]
        lines += [
            f"### Startup: default config, {len(st['wall_ms'])} runs",
            "",
            "| | median | all runs |",
            "|---|---:|---|",
            f"| spawn to first /healthz 200 | {st['wall_ms_median']:.1f} ms "
            f"| {', '.join(f'{x:.0f}' for x in st['wall_ms'])} |",
            f"| `startup_ms` of the `ready` log line | {fmt(own, 0) if own is not None else 'n/a'} ms "
            f"| {', '.join(str(x) for x in st['startup_ms'])} |",
            "",
        ]
    return lines


METHOD = """\
## Method

**Event path.** A load generator (`bench/loadgen.c`), pinned to CPU 0, calls
`getppid(2)` in a tight loop for a fixed time and reports the exact number of
calls and the elapsed time. Each round runs it five times:

1. with nothing attached: the baseline rate;
2. under two empty BPF programs (`return 0`) on the raw tracepoints
   `sys_enter` and `sys_exit` (`bench/bare_rawtp.c`): the floor any probe on
   these hooks pays;
3. under `sonde run` with only the `syscalls` probe, `labels: [syscall]`,
   `filter: {pid: <generator>}` and `bpf_stats: true`, pinned to CPU 1,
   with `aggregate: false`: one ring buffer record per event, read and
   counted by the agent;
4. the same with `aggregate: true`: per-CPU counts in a BPF hash map keyed
   like the series, which the agent reads at each scrape;
5. under bpftrace, pinned to CPU 1, doing the same work in its own way:
   on `raw_syscalls:sys_enter` of the generator it stores the time per
   thread; on `sys_exit` it counts per syscall number, adds the latency to a
   per-syscall `hist()` and deletes the entry.

*Events produced* is the generator's own count of calls plus one: between
the go byte and its last read the generator makes only its `getppid` calls
and the single `write` of its result (the read that received the go byte
was entered before the probe attached, so its return is not an event; the
clock is read through the vDSO). sonde's counters must match it: with the
ring buffer, `sonde_events_received_total + sonde_events_lost_total` =
produced; in the kernel, where no record is sent, `sonde_syscalls_total`
summed over every `syscall` plus `sonde_events_lost_total` (which stays 0)
= produced. With nothing lost, `sonde_syscalls_total{syscall="getppid"}` =
calls and `{syscall="write"}` = 1. The final scrape comes after the reader
has had several poll intervals to drain the ring; a second scrape later
checks that nothing more arrived.

*Kernel ns/event* is BPF program run time (the kernel's BPF statistics:
`sonde_bpf_prog_run_seconds_total` for sonde, `run_time_ns` from
`bpftool prog show` for bpftrace and the empty programs) summed over the
probe's programs and divided by the events produced. It includes runs for
other processes' system calls, which the programs filter out. It does not
include the cost of the hook itself (see *ns added to each system call*);
for bpftrace that includes filling the `raw_syscalls` tracepoint record,
which raw tracepoints do not do. For the empty programs it is per system
call (one run of each).

*User-space CPU ns/event* is the agent's on-CPU time over the generator's
window (the sum of `/proc/PID/task/*/schedstat`, cross-checked against
utime+stime from `/proc/PID/stat`), divided by the events received with the
ring buffer. In the kernel mode the agent does nothing per event: its time
runs to the end of the scrape that reads the counts, and is divided by the
events produced. bpftrace aggregates in the kernel too, so its user-space
time is close to zero.

*ns added to each system call* is the generator's time per call minus the
baseline's: everything tracing costs on the traced CPU, hooks included. The
last row adds the user-space CPU to it, a second view of the total.

**Memory.** Two agents run side by side, one on the embedded default
config and one with only the `exec` probe; 10 000 uniquely named symlinks
to `/bin/true` are each executed once, so `sonde_exec_total` gets 10 000
`comm` series in both. VmRSS and VmHWM from `/proc/PID/status`, before any
scrape and after the timed scrapes of `/metrics`. In the default config the
other probes see the same 10 000 programs, so the registry holds far more
than 10 000 series: `exit_total` by `comm`, and `file_open` by `comm` and
`result`, whose histogram is 27 series per label set. `series_limit`
(10 000 per probe) folds what comes past it into the overflow series.

**Startup.** `sonde run` on the default config, from spawn to the first
`200` from `/healthz` (polled every millisecond), and the agent's own
`startup_ms` from its `ready` log line.
"""


# docs/benchmarks.md also carries what bench/service.py measured, between
# these markers: each script rewrites only its own part of the file.
SERVICE_BEGIN = "<!-- begin: bench/service.py -->"
SERVICE_END = "<!-- end: bench/service.py -->"


def service_section(path=None):
    """The lines bench/service.py last wrote into docs/benchmarks.md, with
    their markers; a pointer to the script when it has not written any."""
    try:
        with open(path or DOC) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    start, end = text.find(SERVICE_BEGIN), text.find(SERVICE_END)
    if 0 <= start < end:
        return text[start : end + len(SERVICE_END)].split("\n")
    return [
        SERVICE_BEGIN,
        "## Each probe on a real service",
        "",
        "Not measured yet: `python3 bench/service.py --write` fills this section.",
        SERVICE_END,
    ]


def splice_service_section(lines, path=None):
    """Replaces bench/service.py's section of docs/benchmarks.md with
    `lines` (appended before the raw numbers when there is none yet)."""
    path = path or DOC
    with open(path) as f:
        text = f.read()
    block = "\n".join([SERVICE_BEGIN, *lines, SERVICE_END])
    start, end = text.find(SERVICE_BEGIN), text.find(SERVICE_END)
    if 0 <= start < end:
        text = text[:start] + block + text[end + len(SERVICE_END) :]
    else:
        at = text.find("\n## Raw numbers")
        at = len(text) if at < 0 else at + 1
        text = text[:at] + block + "\n\n" + text[at:]
    with open(path, "w") as f:
        f.write(text)


def render_doc(res, s, command):
    m = res["machine"]
    sonde_config_text = res["sonde_config"]["kernel"]
    lines = [
        "# Benchmarks",
        "",
        "How much sonde costs per event, in the kernel and in the agent, next to",
        "bpftrace doing the same work, and against its targets. Everything below",
        "was produced by one run of `bench/run.py` and is regenerated by it.",
        "",
        "Reproduce (as root, from the repository root):",
        "",
        "```sh",
        command,
        "```",
        "",
        "`python3 bench/run.py --quick` is the CI form: a 2 s sonde run in each mode that",
        "fails only on unaccounted events in any or a ring buffer agent cost above 5×",
        "`bench/baseline.json`.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPUs (nproc) | {m['nproc']} |",
        f"| CPU | {m['cpu']} |",
        f"| kernel | {m['kernel']} |",
        f"| date | {m['date']} |",
        f"| bpftrace | {m['bpftrace']} |",
        f"| rustc | {m['rustc']} |",
        "",
        "## Targets",
        "",
        *targets_table(res, s),
        "",
        "## Event path: sonde and bpftrace side by side",
        "",
        *throughput_tables(res, s),
        "",
        "sonde's config for the in-kernel case; the ring buffer case differs only by",
        "`aggregate: false` (the port and pid vary"
        + ("" if "ring_buffer" in sonde_config_text else "; `ring_buffer` is sonde's default: rings sized from the CPU count (1 MiB for syscalls on 2 CPUs), "
           "wakeup at 64 KiB, drained every 100 ms")
        + "):",
        "",
        "```yaml",
        sonde_config_text.rstrip(),
        "```",
        "",
        "The config-defined probe's:",
        "",
        "```yaml",
        res["sonde_config"]["config"].rstrip(),
        "```",
        "",
        "bpftrace's script:",
        "",
        "```",
        (BPFTRACE_SCRIPT % {"pid": 0}).replace("pid == 0", "pid == <generator>").rstrip(),
        "```",
        "",
        "## Agent",
        "",
        *other_tables(res),
        *service_section(),
        "",
        METHOD,
        "## Raw numbers",
        "",
        "```json",
        json.dumps(res, indent=1, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------


class Ctx:
    pass


def build(ctx, criterion):
    if not ctx.args.no_build:
        run(["cargo", "build", "--release"], cwd=ROOT, stdout=sys.stderr)
        if criterion:
            run(["cargo", "bench", "--bench", "encode", "--no-run"], cwd=ROOT, stdout=sys.stderr)
    if not os.path.exists(SONDE):
        sys.exit(f"{SONDE} is missing: build it (cargo build --release) or drop --no-build")
    ctx.loadgen = os.path.join(ctx.tmp, "loadgen")
    ctx.bare = os.path.join(ctx.tmp, "bare_rawtp")
    run(["gcc", "-O2", "-Wall", "-Wextra", "-o", ctx.loadgen, os.path.join(BENCH, "loadgen.c")])
    run(["gcc", "-O2", "-Wall", "-Wextra", "-o", ctx.bare, os.path.join(BENCH, "bare_rawtp.c")])


def ensure_bpftrace():
    if shutil.which("bpftrace"):
        return
    log("bpftrace is missing; installing it with apt-get")
    run(["apt-get", "install", "-y", "bpftrace"], stdout=sys.stderr)


def getppid_nr():
    # x86_64: 110, arm64: 173
    return {"x86_64": 110, "aarch64": 173}.get(platform.machine(), -1)


def quick(ctx):
    ctx.seconds = 2.0
    runs, noisy = {}, set()
    for name, mode in MODES.items():
        noisy.update(wait_quiet(ctx.args.quiet_wait))
        runs[name] = run_sonde(ctx, name)
    if noisy:
        print(f"note: other tracing BPF programs were loaded: {', '.join(sorted(noisy))}")
    limit = None
    if os.path.exists(BASELINE):
        with open(BASELINE) as f:
            limit = 5 * json.load(f)["agent_ns_per_event"]
    ring = runs["ring"]

    def row(label, f):
        print(f"| {label} | " + " | ".join(f(runs[name]) for name in MODES) + " |")

    print("| | " + " | ".join(m["title"] for m in MODES.values()) + " |")
    print("|---|" + "---:|" * len(MODES))
    row("generator getppid calls/s", lambda r: fmt(r["calls_per_s"], 0))
    row("produced (getppid + 1 write; + 1 read entered, config-defined)", lambda r: fmt(r["produced"]))
    row("counted (ring: received; in-kernel: `syscalls_total`)", lambda r: fmt(r["counted"]))
    row("lost", lambda r: f"{fmt(r['lost'])} ({r['lost'] / r['produced']:.1%})")
    row("unaccounted", lambda r: fmt(r["unaccounted"]))
    row("agent CPU ns/event (ring: per event received)", lambda r: fmt(r["agent_ns_per_event"]))
    row("kernel ns/event", lambda r: fmt(r["kernel_ns_per_event"]))
    row("total CPU ns/event", lambda r: fmt(r["total_ns_per_event"]))
    print(f"| agent CPU limit (5× bench/baseline.json) | {fmt(limit) if limit else 'no baseline'} |" + " |" * (len(MODES) - 1))
    failed = []
    for name, r in runs.items():
        if r["unaccounted"] != 0:
            failed.append(
                f"{MODES[name]['title']}: {r['unaccounted']} events unaccounted for (counted + lost != produced)"
            )
    if limit and ring["agent_ns_per_event"] > limit:
        failed.append(f"ring buffer: agent CPU {ring['agent_ns_per_event']:.1f} ns/event is over {limit:.1f}")
    for f in failed:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failed else 0


def full(ctx):
    ensure_bpftrace()
    res = {"seconds": ctx.seconds, "machine": machine(), "rounds": []}
    if not ctx.args.no_criterion:
        res["criterion"] = run_criterion(ctx)
    for i in range(ctx.args.rounds):
        log(f"round {i + 1}/{ctx.args.rounds}")
        rnd = {}
        steps = (
            ("baseline", run_baseline),
            ("bare", run_bare),
            *((m["case"], functools.partial(run_sonde, mode=name)) for name, m in MODES.items()),
            ("bpftrace", run_bpftrace),
        )
        for name, fn in steps:
            others = wait_quiet(ctx.args.quiet_wait)
            load = loadavg()
            rnd[name] = fn(ctx)
            rnd[name]["loadavg"] = load
            if others:
                rnd[name]["other_bpf_programs"] = others
            log(f"  {name}: {rnd[name]['calls_per_s']:,.0f} calls/s (load {load})")
        res["rounds"].append(rnd)
    res["sonde_config"] = {
        name: re.sub(r"pid: \d+", "pid: <generator>", re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", text))
        for name, text in ctx.sonde_config_text.items()
    }
    log("memory")
    res["rss_default"] = run_rss_default(ctx)
    res["rss"] = run_rss(ctx)
    log("startup")
    res["startup"] = run_startup(ctx, ctx.args.startup_runs)
    s = summarize(res)
    res["summary"] = s
    return res, s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI mode: a 2 s sonde run per mode, exit 1 on regressions")
    ap.add_argument("--write", action="store_true", help="write docs/benchmarks.md")
    ap.add_argument("--write-baseline", action="store_true", help="write bench/baseline.json from this run")
    ap.add_argument("--no-build", action="store_true", help="use the existing target/release/sonde")
    ap.add_argument("--no-criterion", action="store_true", help="skip cargo bench")
    ap.add_argument("--seconds", type=float, default=5.0, help="generator run time per measurement (default 5)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the five generator runs (default 3)")
    ap.add_argument("--startup-runs", type=int, default=10)
    ap.add_argument("--scrapes", type=int, default=20, help="timed GET /metrics in the memory step")
    ap.add_argument("--sonde", help="benchmark this sonde binary instead of target/release/sonde (implies --no-build)")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each measurement, wait up to this many seconds for other tracing BPF programs to go (default 30)",
    )
    ap.add_argument("--ring-bytes", type=int, help="ring_buffer.size_bytes for sonde (default: sonde's)")
    ap.add_argument("--wakeup-bytes", type=int, help="ring_buffer.wakeup_bytes for sonde (default: sonde's)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/run.py needs root (BPF, bpf_stats, bpftrace)")
    if args.quick and (args.write or args.write_baseline):
        sys.exit("--quick does not write anything")
    command = "python3 bench/run.py " + " ".join(a for a in sys.argv[1:] if a not in ("--write", "--write-baseline"))
    global GEN_CPU, AGENT_CPU, SONDE
    if args.sonde:
        SONDE = os.path.abspath(args.sonde)
        args.no_build = True
    if (os.cpu_count() or 1) < 2:
        log("only one CPU: the generator and the agent share it")
        GEN_CPU = AGENT_CPU = 0
    # The harness itself stays off the generator's CPU.
    os.sched_setaffinity(0, {AGENT_CPU})

    ctx = Ctx()
    ctx.args = args
    ctx.procs = Procs()
    ctx.seconds = args.seconds
    ctx.getppid_nr = getppid_nr()
    ctx.drain_s = 0.5
    ctx.sonde_config_text = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sonde-bench-") as tmp:
        ctx.tmp = tmp
        try:
            build(ctx, criterion=not args.quick and not args.no_criterion)
            if args.quick:
                return quick(ctx)
            res, s = full(ctx)
        finally:
            ctx.procs.stop_all()
    res["run_seconds"] = round(time.monotonic() - started, 1)
    out = [
        "## Targets",
        "",
        *targets_table(res, s),
        "",
        "## Event path",
        "",
        *throughput_tables(res, s),
        "",
        *other_tables(res),
    ]
    print("\n".join(out))
    log(f"full run took {res['run_seconds']} s")
    if args.write:
        # rendered before the file is opened for writing: it keeps
        # bench/service.py's section of the file it replaces
        doc = render_doc(res, s, command.strip())
        with open(DOC, "w") as f:
            f.write(doc)
        log(f"wrote {DOC}")
    if args.write_baseline:
        with open(BASELINE, "w") as f:
            json.dump(
                {
                    # The quick check's limit is on the ring buffer mode.
                    "agent_ns_per_event": s["sonde_ring"]["user"],
                    "kernel_ns_per_event": s["sonde_ring"]["kernel"],
                    "machine": res["machine"],
                    "command": command.strip(),
                },
                f,
                indent=1,
                sort_keys=True,
            )
            f.write("\n")
        log(f"wrote {BASELINE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
