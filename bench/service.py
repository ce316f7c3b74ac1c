#!/usr/bin/env python3
"""What sonde costs the services beside it: nginx under wrk, and find(1).

Run as root from anywhere in the repository:

    python3 bench/service.py                     # 5 rounds of 10 s, prints markdown
    python3 bench/service.py --write             # ... and writes docs/cost.md
    python3 bench/service.py --rounds 1 --seconds 3 --only syscalls
    python3 bench/service.py --configs agg=my.yaml   # one more case

Cases: `none` (no agent), each built-in probe alone, `default` (sonde with
no --config: its embedded default), `all` (every probe that attaches here),
and any NAME=FILE given with --configs. A probe that `sonde check --attach`
cannot attach here is reported as unsupported instead of measured.

Each round runs every case once, in an order rotated by one each round,
with a fresh agent per run:

  nginx   nginx (1 worker, CPU 0) serves a 1.4 KB file to wrk (CPU 1);
          1 s of warm-up, then the measured run: req/s, p99 latency and
          the agent's CPU (utime+stime).
  bpf     the same run again with `sonde --bpf-stats`, for the kernel time
          per program run (bpf_stats slows every run, so req/s is taken
          from the first run only).
  find    find over a tree (CPU 0), several times: seconds per run.

The agent is not pinned: it competes for the CPUs as on a real node.
Losses are taken against the `none` run of the same round, then the
median over rounds.

Only the Python standard library is used. Every process started is killed
on the way out, whatever happens.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as harness  # noqa: E402  (bench/run.py: process, HTTP and metrics helpers)

ROOT = harness.ROOT
DOC = os.path.join(ROOT, "docs", "cost.md")
TARGET = harness.TARGET

NGINX_CPU = 0
WRK_CPU = 1
WRK_THREADS = 1
WRK_CONNECTIONS = 16
WARMUP_S = 1
FILE_BYTES = 1400
FIND_TREE = "/usr"
# Below this much CPU (% of one) used by the rest of the machine, it is quiet.
QUIET_CPU_PCT = 10
QUIET_SAMPLE_S = 5

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    sendfile on;
    keepalive_timeout 65;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
    }}
}}
"""


class BenchError(Exception):
    """The benchmark itself cannot go on (nginx does not start, a tool is missing)."""


class CaseFailed(Exception):
    """One case failed; the others still run."""


def log(msg):
    harness.log(msg)


# --------------------------------------------------------------------------
# set-up


def ensure_tools():
    missing = [pkg for pkg, binary in (("nginx", "nginx"), ("wrk", "wrk")) if not shutil.which(binary)]
    if not missing:
        return
    log(f"installing {', '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        harness.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], stdout=sys.stderr, env=env)
    except subprocess.CalledProcessError as err:
        raise BenchError(f"apt-get could not install {', '.join(missing)}: {err}") from err


def build_sonde():
    try:
        harness.run(["cargo", "build", "--release"], cwd=ROOT, stdout=sys.stderr)
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        raise BenchError(f"cargo build --release failed: {err}") from err
    return os.path.join(TARGET, "release", "sonde")


def version_line(argv, pattern=r"(.*)"):
    """What a tool says of its version (nginx -v writes to stderr, wrk -v
    exits 1): the first group of `pattern` in its first line."""
    out = subprocess.run(argv, capture_output=True, text=True)
    text = (out.stdout + out.stderr).strip()
    m = re.search(pattern, text.splitlines()[0]) if text else None
    return m.group(1).strip() if m else "unknown"


def machine(sonde):
    return {
        "nproc": os.cpu_count(),
        "cpu": harness.cpu_model(),
        "kernel": platform.release(),
        "nginx": version_line(["nginx", "-v"], r"(nginx/\S+)"),
        "wrk": version_line(["wrk", "-v"], r"^(.*?)\s*(?:Copyright|$)"),
        "sonde": version_line([sonde, "--version"]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_at_start": harness.loadavg(),
    }


def builtin_probes(sonde):
    """Probe names as `sonde probes` lists them: `name: summary` at column 0."""
    out = subprocess.run([sonde, "probes"], capture_output=True, text=True, timeout=120)
    names = re.findall(r"^([a-z_][a-z0-9_]*): ", out.stdout, re.M)
    if not names:
        raise BenchError(f"`sonde probes` listed no probe: {out.stderr.strip()}")
    return names


def check_attach(sonde, tmp, probe):
    """None when the probe loads and attaches here, else the reason given by
    `sonde check --attach`."""
    path = os.path.join(tmp, f"check-{probe}.yaml")
    with open(path, "w") as f:
        f.write(f"probes:\n  {probe}: {{}}\n")
    out = subprocess.run([sonde, "check", "--attach", "--config", path], capture_output=True, text=True, timeout=120)
    if out.returncode == 0:
        return None
    m = re.search(rf"^{probe}\s+FAILED\s+(.*)$", out.stdout, re.M)
    return m.group(1).strip() if m else (out.stdout + out.stderr).strip() or f"exit status {out.returncode}"


# --------------------------------------------------------------------------
# cases


class Case:
    """One way of running (or not running) the agent beside the service."""

    def __init__(self, name, probes=None, config_file=None, embedded=False, unsupported=None, expect=None):
        self.name = name
        self.probes = probes or []  # a config listing these probes is generated
        self.config_file = config_file  # a config given with --configs
        self.embedded = embedded  # sonde's embedded default config
        self.unsupported = unsupported  # why it cannot run here
        # Probes that must be up for a run to count.
        self.expect = self.probes if expect is None else expect

    @property
    def has_agent(self):
        return bool(self.probes or self.config_file or self.embedded)

    def describe(self):
        if self.unsupported:
            return "unsupported here"
        if self.embedded:
            return "no --config (embedded default)"
        if self.config_file:
            return f"--config {self.config_file}"
        if self.probes:
            return "probes: " + ", ".join(self.probes)
        return "no agent"


def generated_config(probes, port):
    return f'listen: "127.0.0.1:{port}"\nprobes:\n' + "".join(f"  {p}: {{}}\n" for p in probes)


def default_probes(sonde):
    """The probes of sonde's embedded default config, as `sonde check` lists
    them: `<embedded default config>: ok (2 probe(s): exec, exit)`."""
    out = subprocess.run([sonde, "check"], capture_output=True, text=True)
    m = re.search(r"probe\(s\): ([^)]*)\)", out.stdout)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"`sonde check` did not list the default probes: {out.stdout}{out.stderr}")
    return [p.strip() for p in m.group(1).split(",")]


def make_cases(sonde, tmp, extra):
    probes = builtin_probes(sonde)
    cases = [Case("none")]
    attached = []
    for probe in probes:
        reason = check_attach(sonde, tmp, probe)
        if reason:
            log(f"  {probe}: unsupported here ({reason})")
            cases.append(Case(probe, unsupported=reason))
        else:
            log(f"  {probe}: attaches")
            attached.append(probe)
            cases.append(Case(probe, probes=[probe]))
    cases.append(Case("default", embedded=True, expect=[p for p in default_probes(sonde) if p in attached]))
    cases.append(Case("all", probes=attached) if attached else Case("all", unsupported="no probe attaches here"))
    for name, path in extra:
        cases.append(Case(name, config_file=os.path.abspath(path)))
    return cases


def parse_configs(values):
    out = []
    for v in values or []:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            sys.exit(f"--configs wants NAME=FILE, got {v!r}")
        if not os.path.isfile(path):
            sys.exit(f"--configs {name}: no such file {path}")
        out.append((name, path))
    return out


def select(cases, only):
    """Cases named in --only, in their usual order; `none` always stays, as
    every loss is taken against it."""
    if not only:
        return cases
    wanted = {n.strip() for n in only.split(",") if n.strip()}
    unknown = wanted - {c.name for c in cases}
    if unknown:
        sys.exit(f"--only: no case named {', '.join(sorted(unknown))} (cases: {', '.join(c.name for c in cases)})")
    return [c for c in cases if c.name in wanted or c.name == "none"]


# --------------------------------------------------------------------------
# processes


class Nginx:
    """nginx in its own process group, so that its worker ends with it."""

    def __init__(self, procs, tmp):
        self.procs = procs
        self.tmp = tmp
        self.port = harness.free_port()
        www = os.path.join(tmp, "www")
        os.makedirs(www)
        # The worker runs as an unprivileged user: it must reach the file.
        os.chmod(tmp, 0o755)
        os.chmod(www, 0o755)
        path = os.path.join(www, "file")
        with open(path, "wb") as f:
            f.write(os.urandom(FILE_BYTES // 2).hex().encode())
        os.chmod(path, 0o644)
        self.conf = os.path.join(tmp, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF.format(tmp=tmp, port=self.port))
        self.url = f"http://127.0.0.1:{self.port}/file"
        self.p = None

    def start(self):
        errlog = os.path.join(self.tmp, "nginx-error.log")
        with open(os.path.join(self.tmp, "nginx-stderr.log"), "wb") as stderr:
            self.p = self.procs.spawn(
                ["taskset", "-c", str(NGINX_CPU), "nginx", "-e", errlog, "-p", self.tmp, "-c", self.conf],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                status, body = harness.get(self.port, "/file", timeout=1.0)
                if status == 200 and len(body) == FILE_BYTES:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise BenchError(f"nginx did not serve {self.url} within 10 s; see {errlog}")

    def check_alive(self):
        if self.p.poll() is not None:
            tail = " | ".join(
                t for t in (read_tail(os.path.join(self.tmp, n)) for n in ("nginx-stderr.log", "nginx-error.log")) if t
            )
            raise BenchError(f"nginx exited with status {self.p.returncode}: {tail}")

    def stop(self):
        if self.p is None:
            return
        pgid = self.p.pid
        self.procs.stop(self.p, signal.SIGTERM, timeout=10)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p = None


def read_tail(path, lines=5):
    try:
        with open(path, errors="replace") as f:
            return " | ".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return ""


class Agent:
    """A fresh sonde for one run of one case."""

    def __init__(self, ctx, case, bpf_stats):
        self.ctx = ctx
        self.port = harness.free_port()
        argv = [ctx.sonde, "run", "--log-format", "json"]
        if case.probes:
            path = os.path.join(ctx.tmp, f"case-{case.name}.yaml")
            with open(path, "w") as f:
                f.write(generated_config(case.probes, self.port))
            argv += ["--config", path]
        else:
            if case.config_file:
                argv += ["--config", case.config_file]
            argv += ["--listen", f"127.0.0.1:{self.port}"]
        if bpf_stats:
            argv.append("--bpf-stats")
        ctx.agent_runs += 1
        self.log_path = os.path.join(ctx.tmp, f"sonde-{case.name}-{ctx.agent_runs}.log")
        with open(self.log_path, "wb") as errlog:
            self.p = ctx.procs.spawn(argv, stderr=errlog)
        try:
            harness.wait_healthy(self.port, self.p)
            samples = harness.scrape(self.port)
        except (RuntimeError, OSError) as err:
            self.stop()
            raise CaseFailed(f"{err}: {read_tail(self.log_path)}") from err
        self.up = sorted(l["probe"] for n, l, v in samples if n == "sonde_probe_up" and v == 1)
        down = sorted(set(case.expect) - set(self.up))
        if down:
            self.stop()
            raise CaseFailed(f"probe(s) not up: {', '.join(down)}: {read_tail(self.log_path)}")

    def cpu_ns(self):
        """The agent's CPU time so far: (run time of its threads from
        schedstat, utime+stime from /proc/PID/stat), in ns."""
        return harness.cpu_ns(self.p.pid)

    def stop(self):
        if self.p.poll() is not None:
            code = self.p.returncode
            self.ctx.procs.stop(self.p)
            raise CaseFailed(f"sonde exited early with status {code}: {read_tail(self.log_path)}")
        self.ctx.procs.stop(self.p)


def cpu_pct(before, after, seconds):
    """Agent CPU over a window in % of one CPU: schedstat's and utime+stime's."""
    return tuple(100 * (b - a) / 1e9 / seconds for a, b in zip(before, after))


# --------------------------------------------------------------------------
# workloads

UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def wrk(ctx, seconds):
    argv = [
        "taskset", "-c", str(WRK_CPU), "wrk",
        f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency", ctx.nginx.url,
    ]  # fmt: skip
    ctx.nginx.check_alive()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired as err:
        raise CaseFailed(f"wrk did not finish within {seconds + 30} s") from err
    ctx.nginx.check_alive()
    return parse_wrk(out.stdout, out.stderr, out.returncode)


def parse_wrk(text, err, code):
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\b", text, re.M)
    done = re.search(r"^\s+(\d+) requests in ([\d.]+)(us|ms|s|m),", text, re.M)
    if code != 0 or not (rps and p99 and done):
        raise CaseFailed(f"wrk failed (status {code}): {(err or text).strip()[-300:]}")
    res = {
        "requests_per_s": float(rps.group(1)),
        "p99_ms": float(p99.group(1)) * UNIT_MS[p99.group(2)],
        "requests": int(done.group(1)),
        "duration_s": float(done.group(2)) * UNIT_MS[done.group(3)] / 1e3,
    }
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if bad:
        raise CaseFailed(f"nginx answered {bad.group(1)} requests with an error status")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if sock:
        res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups())))
    return res


def find_once(tree):
    t0 = time.perf_counter()
    try:
        out = subprocess.run(
            ["taskset", "-c", str(NGINX_CPU), "find", tree, "-xdev", "-printf", "%s %p\\n"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=600,
        )
    except subprocess.TimeoutExpired as err:
        raise CaseFailed(f"find over {tree} took more than 600 s") from err
    elapsed = time.perf_counter() - t0
    if out.returncode != 0:
        raise CaseFailed(f"find failed (status {out.returncode}): {out.stderr.decode(errors='replace')[-300:]}")
    return elapsed


def prog_ids_of(pid):
    """IDs of the BPF programs a process holds (fdinfo of its program and
    link fds), to tell its programs from everyone else's."""
    ids = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fdinfo")
    except OSError:
        return ids
    for fd in fds:
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                m = re.search(r"^prog_id:\s+(\d+)", f.read(), re.M)
        except OSError:
            continue
        if m:
            ids.add(int(m.group(1)))
    return ids


def foreign_tracing(agent):
    """Names of the tracing programs loaded by anyone but this run's agent;
    None when bpftool is missing."""
    if not shutil.which("bpftool"):
        return None
    mine = prog_ids_of(agent.p.pid) if agent else set()
    progs = harness.bpf_progs()
    return sorted(
        {p.get("name", str(i)) for i, p in progs.items() if p.get("type") in harness.TRACING_TYPES and i not in mine}
    )


def cpu_ticks_by_pid():
    """utime+stime and parent of every process now."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        except (OSError, ValueError, IndexError):
            continue
    return out


def others_ticks():
    """CPU ticks of every process that is not this harness or one of its
    descendants (nginx, wrk, find, the agent)."""
    snap = cpu_ticks_by_pid()
    children = {}
    for pid, (ppid, _) in snap.items():
        children.setdefault(ppid, []).append(pid)
    ours, stack = {os.getpid()}, [os.getpid()]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in ours:
                ours.add(child)
                stack.append(child)
    return {pid: ticks for pid, (_, ticks) in snap.items() if pid not in ours}


class OtherWork:
    """How much CPU the rest of the machine used over a window, in % of one
    CPU: other people's builds and tests, kernel threads. Counts processes
    alive at the end of the window, so it is a lower bound."""

    def __init__(self):
        self.t0 = time.monotonic()
        self.start = others_ticks()

    def cpu_pct(self):
        end = others_ticks()
        ticks = sum(max(0, t - self.start.get(pid, 0)) for pid, t in end.items())
        return 100 * ticks / harness.CLK_TCK / (time.monotonic() - self.t0)


def wait_quiet(ctx):
    """Before a round: waits up to --quiet-wait s for the rest of the
    machine to go idle. Other tracing programs are only reported (in the
    notes): a long-lived one would hold every round for nothing."""
    if ctx.args.quiet_wait <= 0:
        return
    deadline = time.monotonic() + ctx.args.quiet_wait
    told = False
    while True:
        window = OtherWork()
        time.sleep(QUIET_SAMPLE_S)
        busy = window.cpu_pct()
        if busy < QUIET_CPU_PCT:
            return
        what = f"others use {busy:.0f} % of a CPU"
        if time.monotonic() >= deadline:
            log(f"  not quiet after {ctx.args.quiet_wait:g} s ({what}); measuring anyway")
            return
        if not told:
            log(f"  waiting up to {ctx.args.quiet_wait:g} s for a quiet machine ({what})")
            told = True
        time.sleep(1)


# --------------------------------------------------------------------------
# one run of one case


def stats_on_globally():
    with open(harness.STATS_SYSCTL) as f:
        return f.read().strip() == "1"


def run_nginx(ctx, case):
    """req/s, p99 and the agent's CPU, without BPF stats."""
    agent = Agent(ctx, case, bpf_stats=False) if case.has_agent else None
    try:
        wrk(ctx, WARMUP_S)
        stats_before = stats_on_globally()
        cpu0 = agent.cpu_ns() if agent else None
        others = OtherWork()
        res = wrk(ctx, ctx.seconds)
        res["others_cpu_pct"] = others.cpu_pct()
        cpu1 = agent.cpu_ns() if agent else None
        res["foreign_tracing"] = foreign_tracing(agent)
        res["bpf_stats_were_on"] = stats_before or stats_on_globally()
        res["loadavg"] = harness.loadavg()
        if agent:
            res["agent_cpu_pct"], res["agent_cpu_pct_ticks"] = cpu_pct(cpu0, cpu1, res["duration_s"])
            res["probes_up"] = agent.up
    finally:
        if agent:
            agent.stop()
    return res


def bpf_delta(before, after, seconds):
    """Per probe: program runs and kernel time between two scrapes."""
    out = {}
    probes = {l.get("probe") for n, l, _ in after if n == "sonde_bpf_prog_runs_total"}
    for probe in sorted(p for p in probes if p):
        runs = harness.total(after, "sonde_bpf_prog_runs_total", probe=probe) - harness.total(
            before, "sonde_bpf_prog_runs_total", probe=probe
        )
        secs = harness.total(after, "sonde_bpf_prog_run_seconds_total", probe=probe) - harness.total(
            before, "sonde_bpf_prog_run_seconds_total", probe=probe
        )
        out[probe] = {
            "runs": int(runs),
            "ns": secs * 1e9,
            "ns_per_run": secs * 1e9 / runs if runs else None,
            "runs_per_s": runs / seconds,
        }
    return out


def run_bpf(ctx, case):
    """The same load with --bpf-stats: kernel time per program run."""
    agent = Agent(ctx, case, bpf_stats=True)
    try:
        wrk(ctx, WARMUP_S)
        before = harness.scrape(agent.port)
        res = wrk(ctx, ctx.seconds)
        after = harness.scrape(agent.port)
        res["probes"] = bpf_delta(before, after, res["duration_s"])
    except OSError as err:
        raise CaseFailed(f"scraping /metrics failed: {err}") from err
    finally:
        agent.stop()
    if not res["probes"]:
        raise CaseFailed("no sonde_bpf_prog_runs_total in /metrics: BPF stats did not turn on")
    return res


def run_find(ctx, case):
    """Seconds per find run (the mean of --find-runs runs after one warm-up)."""
    agent = Agent(ctx, case, bpf_stats=False) if case.has_agent else None
    try:
        find_once(ctx.args.find_tree)
        cpu0 = agent.cpu_ns() if agent else None
        others = OtherWork()
        t0 = time.perf_counter()
        times = [find_once(ctx.args.find_tree) for _ in range(ctx.args.find_runs)]
        wall = time.perf_counter() - t0
        cpu1 = agent.cpu_ns() if agent else None
        res = {
            "runs_s": times,
            "s_per_run": sum(times) / len(times),
            "others_cpu_pct": others.cpu_pct(),
            "foreign_tracing": foreign_tracing(agent),
            "loadavg": harness.loadavg(),
        }
        if agent:
            res["agent_cpu_pct"], res["agent_cpu_pct_ticks"] = cpu_pct(cpu0, cpu1, wall)
    finally:
        if agent:
            agent.stop()
    return res


def attempt(step, ctx, case):
    """One step of one case; its failure is recorded, and the run goes on
    unless the benchmark itself broke (BenchError)."""
    try:
        return step(ctx, case)
    except CaseFailed as err:
        reason = str(err)
    except (OSError, ValueError, KeyError, AttributeError, TypeError, ZeroDivisionError) as err:
        reason = f"{type(err).__name__}: {err}"
    log(f"    {case.name}: FAILED: {reason}")
    return {"error": reason}


def one_round(ctx, cases, index):
    # Rotating the order spreads slow drifts of the machine over every case.
    shift = index % len(cases)
    order = cases[shift:] + cases[:shift]
    rnd = {"order": [c.name for c in order], "nginx": {}, "bpf": {}, "find": {}}
    for case in order:
        r = rnd["nginx"][case.name] = attempt(run_nginx, ctx, case)
        if "error" not in r:
            extra = f", agent CPU {r['agent_cpu_pct']:.1f} %" if "agent_cpu_pct" in r else ""
            log(f"    nginx {case.name}: {r['requests_per_s']:,.0f} req/s, p99 {r['p99_ms']:.2f} ms{extra}")
    for case in order:
        if case.has_agent:
            r = rnd["bpf"][case.name] = attempt(run_bpf, ctx, case)
            if "error" not in r:
                parts = (
                    f"{p} {v['ns_per_run']:.0f} ns × {v['runs_per_s']:,.0f}/s"
                    for p, v in r["probes"].items()
                    if v["ns_per_run"] is not None
                )
                log(f"    bpf {case.name}: " + "; ".join(parts))
    for case in order:
        r = rnd["find"][case.name] = attempt(run_find, ctx, case)
        if "error" not in r:
            log(f"    find {case.name}: {r['s_per_run']:.3f} s/run")
    return rnd


# --------------------------------------------------------------------------
# summary


def ok(rnd, step, name):
    r = rnd[step].get(name)
    return r if r and "error" not in r else None


def paired(rounds, step, name, key, fn):
    """fn(case value, `none` value) of each round where both ran."""
    out = []
    for rnd in rounds:
        c, n = ok(rnd, step, name), ok(rnd, step, "none")
        if c and n:
            out.append(fn(c[key], n[key]))
    return out


def median_of(rounds, step, name, key):
    vals = [r[key] for r in (ok(rnd, step, name) for rnd in rounds) if r and r.get(key) is not None]
    return statistics.median(vals) if vals else None


def value_range(rounds, step, name, key):
    return spread([r[key] for r in (ok(rnd, step, name) for rnd in rounds) if r])


def spread(vals):
    return (min(vals), max(vals)) if vals else None


def errors(rounds, step, name):
    return sorted({rnd[step][name]["error"] for rnd in rounds if "error" in rnd[step].get(name, {})})


def summarize(rounds, cases):
    s = {}
    for case in cases:
        if case.unsupported:
            continue
        loss = paired(rounds, "nginx", case.name, "requests_per_s", lambda c, n: 100 * (1 - c / n))
        p99 = paired(rounds, "nginx", case.name, "p99_ms", lambda c, n: 100 * (c / n - 1))
        slower = paired(rounds, "find", case.name, "s_per_run", lambda c, n: 100 * (c / n - 1))
        s[case.name] = {
            "requests_per_s": median_of(rounds, "nginx", case.name, "requests_per_s"),
            "p99_ms": median_of(rounds, "nginx", case.name, "p99_ms"),
            "loss_pct": statistics.median(loss) if loss else None,
            "loss_spread": spread(loss),
            "p99_added_pct": statistics.median(p99) if p99 else None,
            "agent_cpu_pct": median_of(rounds, "nginx", case.name, "agent_cpu_pct"),
            "others_cpu_pct": median_of(rounds, "nginx", case.name, "others_cpu_pct"),
            "nginx_rounds": len([1 for rnd in rounds if ok(rnd, "nginx", case.name)]),
            "requests_per_s_range": value_range(rounds, "nginx", case.name, "requests_per_s"),
            "nginx_errors": errors(rounds, "nginx", case.name),
            "bpf": summarize_bpf(rounds, case.name),
            "bpf_errors": errors(rounds, "bpf", case.name),
            "find_s": median_of(rounds, "find", case.name, "s_per_run"),
            "find_slower_pct": statistics.median(slower) if slower else None,
            "find_spread": spread(slower),
            "find_agent_cpu_pct": median_of(rounds, "find", case.name, "agent_cpu_pct"),
            "find_others_cpu_pct": median_of(rounds, "find", case.name, "others_cpu_pct"),
            "find_rounds": len([1 for rnd in rounds if ok(rnd, "find", case.name)]),
            "find_s_range": value_range(rounds, "find", case.name, "s_per_run"),
            "find_errors": errors(rounds, "find", case.name),
        }
    return s


def summarize_bpf(rounds, name):
    """Per probe, medians over rounds; and the whole case: runs/s summed,
    ns/run weighted by runs, and the share of one CPU spent in BPF."""
    runs = [r for r in (ok(rnd, "bpf", name) for rnd in rounds) if r]
    if not runs:
        return None
    probes = sorted({p for r in runs for p in r["probes"]})
    out = {"probes": {}}
    for p in probes:
        vals = [r["probes"][p] for r in runs if p in r["probes"]]
        ns_run = [v["ns_per_run"] for v in vals if v["ns_per_run"] is not None]
        cpu = [100 * r["probes"][p]["ns"] / 1e9 / r["duration_s"] for r in runs if p in r["probes"]]
        out["probes"][p] = {
            "ns_per_run": statistics.median(ns_run) if ns_run else None,
            "runs_per_s": statistics.median(v["runs_per_s"] for v in vals),
            "cpu_pct": statistics.median(cpu),
        }
    per_round = []
    for r in runs:
        n = sum(v["runs"] for v in r["probes"].values())
        ns = sum(v["ns"] for v in r["probes"].values())
        per_round.append((ns / n if n else None, n / r["duration_s"], 100 * ns / 1e9 / r["duration_s"]))
    ns_run = [x[0] for x in per_round if x[0] is not None]
    out["ns_per_run"] = statistics.median(ns_run) if ns_run else None
    out["runs_per_s"] = statistics.median(x[1] for x in per_round)
    out["cpu_pct"] = statistics.median(x[2] for x in per_round)
    out["requests_per_s"] = statistics.median(r["requests_per_s"] for r in runs)
    return out


# --------------------------------------------------------------------------
# reporting


def fmt(v, digits=1):
    if v is None:
        return "n/a"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:,.{digits}f}"


def fmt_spread(sp, digits=1):
    return "n/a" if sp is None else f"{sp[0]:+.{digits}f} – {sp[1]:+.{digits}f}"


def fmt_signed(v, digits=1):
    return "n/a" if v is None else f"{v:+.{digits}f}"


def failed_note(row, key):
    return f" ({len(row[key])} failure(s))" if row[key] else ""


def nginx_table(cases, s):
    lines = [
        "| case | req/s | p99 ms | loss % (median) | loss % (min – max) | p99 added % | agent CPU % "
        "| BPF ns/run | BPF runs/s | BPF CPU % | others' CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        if case.unsupported:
            lines.append(f"| `{case.name}` | unsupported here | | | | | | | | | |")
            continue
        row = s[case.name]
        if row["nginx_rounds"] == 0:
            lines.append(f"| `{case.name}` | failed | | | | | | | | | |")
            continue
        bpf = row["bpf"] or {}
        base = case.name == "none"
        cells = [
            f"`{case.name}`" + failed_note(row, "nginx_errors"),
            fmt(row["requests_per_s"], 0),
            fmt(row["p99_ms"], 2),
            "" if base else fmt_signed(row["loss_pct"]),
            "" if base else fmt_spread(row["loss_spread"]),
            "" if base else fmt_signed(row["p99_added_pct"]),
            "" if base else fmt(row["agent_cpu_pct"], 2),
            fmt(bpf.get("ns_per_run"), 0) if case.has_agent else "",
            fmt(bpf.get("runs_per_s"), 0) if case.has_agent else "",
            fmt(bpf.get("cpu_pct"), 2) if case.has_agent else "",
            fmt(row["others_cpu_pct"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def probe_table(cases, s):
    lines = [
        "| case | probe | BPF ns/run | runs/s | BPF CPU % | req/s with bpf_stats |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for case in cases:
        if case.unsupported or not case.has_agent:
            continue
        row = s[case.name]
        bpf = row["bpf"]
        if not bpf:
            reason = "; ".join(row["bpf_errors"]) or "no run"
            lines.append(f"| `{case.name}` | failed: {reason[:120]} | | | | |")
            continue
        for probe, v in bpf["probes"].items():
            lines.append(
                f"| `{case.name}` | {probe} | {fmt(v['ns_per_run'], 0)} | {fmt(v['runs_per_s'], 0)} "
                f"| {fmt(v['cpu_pct'], 2)} | {fmt(bpf['requests_per_s'], 0)} |"
            )
    return lines


def benchmarks_section(ctx, cases, s, command):
    """What docs/benchmarks.md shows of this run: each probe's loss on
    nginx and its kernel time per event; docs/cost.md has the rest."""
    m = ctx.machine
    return [
        "## Each probe on a real service",
        "",
        f"nginx (1 worker) serving a {FILE_BYTES} B file to wrk, each built-in probe alone on its "
        "default labels, then sonde's default config and every probe at once; loss is paired with "
        f"a run without an agent in the same round, median of {ctx.args.rounds} round(s) of "
        f"{ctx.args.seconds} s. Kernel {m['kernel']}, {m['date']}. The whole run (find, p99, "
        "raw numbers, method) is in [cost.md](cost.md); reproduce with:",
        "",
        "```sh",
        command,
        "```",
        "",
        *nginx_table(cases, s),
        "",
        "Kernel time per program run under the same load (`--bpf-stats`):",
        "",
        *probe_table(cases, s),
    ]


def find_table(cases, s):
    lines = [
        "| case | s per run | slower % (median) | slower % (min – max) | agent CPU % | others' CPU % |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        if case.unsupported:
            lines.append(f"| `{case.name}` | unsupported here | | | | |")
            continue
        row = s[case.name]
        if row["find_rounds"] == 0:
            lines.append(f"| `{case.name}` | failed | | | | |")
            continue
        base = case.name == "none"
        cells = [
            f"`{case.name}`" + failed_note(row, "find_errors"),
            fmt(row["find_s"], 3),
            "" if base else fmt_signed(row["find_slower_pct"]),
            "" if base else fmt_spread(row["find_spread"]),
            "" if base else fmt(row["find_agent_cpu_pct"], 2),
            fmt(row["find_others_cpu_pct"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def noise_floor(s, key, what, unit, digits):
    """How far `none` alone moved between rounds: losses inside that band
    are not told apart from zero."""
    row = s.get("none")
    if not row or not row[key]:
        return []
    lo, hi = row[key]
    mid = (lo + hi) / 2
    return [
        f"Noise floor: with no agent, {what} ranged from {lo:,.{digits}f} to {hi:,.{digits}f} {unit} over the rounds "
        f"(±{100 * (hi - lo) / 2 / mid:.0f} % around the middle); "
        "a loss within that band is not told apart from zero.",
        "",
    ]


def notes(cases, s, rounds):
    out = []
    for case in cases:
        if case.unsupported:
            out.append(f"- `{case.name}`: unsupported here: `sonde check --attach` says: {case.unsupported}")
            continue
        row = s[case.name]
        for key, what in (("nginx_errors", "nginx run"), ("bpf_errors", "bpf_stats run"), ("find_errors", "find run")):
            for e in row[key]:
                out.append(f"- `{case.name}` {what} failed: {e}")
    foreign = sorted(
        {
            p
            for rnd in rounds
            for step in ("nginx", "find")
            for r in rnd[step].values()
            for p in (r.get("foreign_tracing") or [])
        }
    )
    if foreign:
        out.append(
            "- tracing BPF programs of another process were loaded during some runs (their cost is in "
            f"every case of those rounds, `none` included): {', '.join(foreign)}"
        )
    if any(r.get("bpf_stats_were_on") for rnd in rounds for r in rnd["nginx"].values()):
        out.append("- kernel.bpf_stats_enabled was on during some runs without --bpf-stats (someone else turned it on)")
    return out


def case_list(cases):
    return [f"| `{c.name}` | {c.describe()} |" for c in cases]


def method(ctx):
    a = ctx.args
    return f"""\
## Method

**Service.** nginx with a private config in a temporary directory
(`daemon off`, `worker_processes 1`, keep-alive on with nginx's defaults,
`sendfile on`, access log off, error log in the temporary directory),
listening on 127.0.0.1, serves one {FILE_BYTES}-byte static file. nginx is
pinned to CPU {NGINX_CPU} and `wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{a.seconds}s --latency`
to CPU {WRK_CPU}, so both CPUs are busy. **The agent is not pinned**: it
competes for the CPUs as it would on a real node, and whatever it takes
from nginx or wrk shows as lost requests.

**Rounds.** {a.rounds} rounds; each round runs every case once, the order
rotated by one case per round, so that a slow drift of the machine does not
fall on one case. Each run starts a fresh agent, waits for `GET /healthz`
to answer 200, runs wrk for {WARMUP_S} s of warm-up, then the measured
{a.seconds} s, then stops the agent with SIGTERM. nginx runs for the whole
benchmark. Timings on these VMs vary by about ±15 % from one run to the
next, so every loss is a paired ratio: the case's req/s against the `none`
run of the same round (`loss % = 100 × (1 − case / none)`), then the
median over rounds, with the smallest and largest round beside it. A
negative loss is a round where the case was faster than `none`: noise.
req/s and p99 are medians over rounds; *p99 added %* is the paired ratio of
the p99 latencies.

**Other work.** The machine may be shared. Before each round the script
waits up to {a.quiet_wait:g} s for the rest of the machine to use less than
{QUIET_CPU_PCT} % of a CPU over {QUIET_SAMPLE_S} s; tracing BPF programs of other
processes are listed in the notes when there were any.
*others' CPU %* is the utime + stime of every process that is neither the
harness nor one of its descendants (nginx, wrk, find, the agent) over the
measured run, in % of one CPU, median over rounds. It misses processes that
ended within the run, so it is a lower bound; where it is high, nginx and
find lost CPU to someone else, and the row is to be read with care.

**Agent CPU.** The run time of the agent's threads
(`/proc/PID/task/*/schedstat`, in ns) over the measured wrk run, as a
percentage of one CPU. utime + stime from `/proc/PID/stat` counts the same
time in clock ticks of {1000 // harness.CLK_TCK} ms, steps of
{100 / harness.CLK_TCK / a.seconds:.3f} % over a {a.seconds} s run, too
coarse for an agent that aggregates in the kernel; it is in the raw numbers
as `agent_cpu_pct_ticks`. Neither includes the BPF programs, which run in
the context of the traced processes (nginx, wrk and everything else on the
node).

**BPF cost.** `kernel.bpf_stats_enabled` adds two clock reads to every
program run, so req/s and agent CPU come from runs *without* it, and the
BPF numbers from a second run of each case in each round, the same
workload with `sonde --bpf-stats`: the deltas of
`sonde_bpf_prog_run_seconds_total` and `sonde_bpf_prog_runs_total` between
a scrape just before and just after the measured wrk run. *BPF ns/run* is
kernel time per program run (a probe on a syscall's entry and exit runs
twice per call), *runs/s* counts every process on the node, and *BPF CPU %*
is their product as a share of one CPU. Per-case figures sum the probes;
ns/run is then weighted by runs. The BPF ns include bpf_stats' own clock
reads. When req/s moves between runs by more than a probe costs (see the
noise floor under the table), BPF CPU % is the steadier measure of that
cost: it is counted by the kernel, not inferred from a throughput.

**Second workload.** `find {a.find_tree} -xdev -printf '%s %p\\n' > /dev/null`
pinned to CPU {NGINX_CPU}: a stat, and for directories an open and
getdents, per entry. Each run of a case starts a fresh agent, does one
warm-up find (the tree is then in the page cache), then {a.find_runs} timed
finds; *s per run* is their mean, and *slower %* the paired ratio against
`none` of the same round, median over rounds. CPU {WRK_CPU} is idle here, so
the agent's own CPU barely competes with find: what slows find is mostly the
BPF programs on its own system calls.
"""


def render_doc(ctx, cases, s, rounds, command, run_seconds):
    m = ctx.machine
    note_lines = notes(cases, s, rounds)
    lines = [
        "# What sonde costs a service",
        "",
        "An agent that runs on every node is judged first by what it costs the",
        "services beside it. This measures it on a real server: nginx serving a",
        "small static file under wrk, and a syscall-heavy batch job (find), each",
        "with no agent and with sonde in several configurations. Everything below",
        "was produced by one run of `bench/service.py` and is regenerated by it.",
        "",
        "Reproduce (as root, from the repository root; nginx and wrk are installed",
        "with apt-get when missing):",
        "",
        "```sh",
        command,
        "```",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPUs (nproc) | {m['nproc']} |",
        f"| CPU | {m['cpu']} |",
        f"| kernel | {m['kernel']} |",
        f"| nginx | {m['nginx']} |",
        f"| wrk | {m['wrk']} |",
        f"| sonde | {m['sonde']} |",
        f"| date | {m['date']} |",
        f"| load average at start | {m['loadavg_at_start']} |",
        f"| run time | {run_seconds:.0f} s |",
        "",
        "## Cases",
        "",
        "| case | agent |",
        "|---|---|",
        *case_list(cases),
        "",
        "Each probe runs with its default labels and no filter: it sees every",
        "process on the node. Every generated config also sets",
        '`listen: "127.0.0.1:<free port>"`; the others get `--listen`.',
        "",
        "## nginx",
        "",
        f"Medians of {ctx.args.rounds} round(s) of {ctx.args.seconds} s; "
        "loss is paired with the `none` run of the same round.",
        "",
        *nginx_table(cases, s),
        "",
        *noise_floor(s, "requests_per_s_range", "req/s", "req/s", 0),
        "BPF programs per probe (runs with `--bpf-stats`, same load):",
        "",
        *probe_table(cases, s),
        "",
        "## find",
        "",
        f"Medians of {ctx.args.rounds} rounds of {ctx.args.find_runs} run(s) of find over `{ctx.args.find_tree}`; "
        "slower % is paired with the `none` run of the same round.",
        "",
        *find_table(cases, s),
        "",
        *noise_floor(s, "find_s_range", "a find run", "s", 3),
    ]
    if note_lines:
        lines += ["## Notes", "", *note_lines, ""]
    lines += [
        method(ctx),
        "## Raw numbers",
        "",
        "<details><summary>Every run of every round</summary>",
        "",
        "```json",
        json.dumps({"machine": m, "rounds": rounds}, indent=1, sort_keys=True),
        "```",
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------


class Ctx:
    pass


def end_on_signal(signum, _frame):
    # Turns SIGTERM/SIGHUP into an exception, so that the finally blocks
    # stop nginx and the agent.
    raise SystemExit(128 + signum)


def benchmark(ctx):
    log("probes that attach here:")
    all_cases = make_cases(ctx.sonde, ctx.tmp, parse_configs(ctx.args.configs))
    cases = select(all_cases, ctx.args.only)
    ctx.nginx = Nginx(ctx.procs, ctx.tmp)
    ctx.nginx.start()
    log(f"nginx serves {ctx.nginx.url} (CPU {NGINX_CPU}); wrk on CPU {WRK_CPU}")
    runnable = [c for c in cases if not c.unsupported]
    rounds = []
    for i in range(ctx.args.rounds):
        wait_quiet(ctx)
        log(f"round {i + 1}/{ctx.args.rounds} (load {harness.loadavg()})")
        rounds.append(one_round(ctx, runnable, i))
    if not any(ok(rnd, "nginx", "none") for rnd in rounds):
        raise BenchError("wrk never ran against nginx without an agent: nothing to compare with")
    return cases, rounds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of every case (default 5)")
    ap.add_argument("--seconds", type=int, default=10, help="measured wrk run, in seconds (default 10)")
    ap.add_argument("--write", action="store_true", help="write docs/cost.md")
    ap.add_argument("--sonde", help="this sonde binary instead of building target/release/sonde")
    ap.add_argument(
        "--configs", nargs="+", metavar="NAME=FILE", help="more cases: sonde with --config FILE, named NAME"
    )
    ap.add_argument("--only", metavar="NAME,...", help="run only these cases (and `none`, the reference)")
    ap.add_argument("--find-runs", type=int, default=3, help="timed find runs per case and round (default 3)")
    ap.add_argument("--find-tree", default=FIND_TREE, help=f"the tree find walks (default {FIND_TREE})")
    ap.add_argument(
        "--quiet-wait",
        type=float,
        default=120.0,
        help="before each round, wait up to this many seconds for the rest of the machine to go idle (default 120)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/service.py needs root (BPF, nginx, apt-get)")
    if args.rounds < 1 or args.seconds < 1 or args.find_runs < 1:
        sys.exit("--rounds, --seconds and --find-runs must be at least 1")
    if (os.cpu_count() or 1) < 2:
        sys.exit("bench/service.py needs 2 CPUs: nginx and wrk each get one")
    command = "python3 bench/service.py " + " ".join(a for a in sys.argv[1:] if a != "--write")
    signal.signal(signal.SIGTERM, end_on_signal)
    signal.signal(signal.SIGHUP, end_on_signal)

    ctx = Ctx()
    ctx.args = args
    ctx.seconds = args.seconds
    ctx.procs = harness.Procs()
    ctx.agent_runs = 0
    ctx.nginx = None
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="sonde-service-") as tmp:
            ctx.tmp = tmp
            try:
                ensure_tools()
                ctx.sonde = os.path.abspath(args.sonde) if args.sonde else build_sonde()
                if not os.access(ctx.sonde, os.X_OK):
                    raise BenchError(f"{ctx.sonde} is not an executable")
                ctx.machine = machine(ctx.sonde)
                cases, rounds = benchmark(ctx)
            finally:
                if ctx.nginx:
                    ctx.nginx.stop()
                ctx.procs.stop_all()
    except BenchError as err:
        print(f"bench/service.py: {err}", file=sys.stderr)
        return 1
    run_seconds = time.monotonic() - started
    s = summarize(rounds, cases)
    out = [
        "## nginx",
        "",
        *nginx_table(cases, s),
        "",
        *noise_floor(s, "requests_per_s_range", "req/s", "req/s", 0),
        *probe_table(cases, s),
        "",
        "## find",
        "",
        *find_table(cases, s),
        "",
        *noise_floor(s, "find_s_range", "a find run", "s", 3),
    ]
    note_lines = notes(cases, s, rounds)
    if note_lines:
        out += ["", *note_lines]
    print("\n".join(out))
    log(f"run took {run_seconds:.0f} s")
    if args.write:
        with open(DOC, "w") as f:
            f.write(render_doc(ctx, cases, s, rounds, command.strip(), run_seconds))
        log(f"wrote {DOC}")
        harness.splice_service_section(benchmarks_section(ctx, cases, s, command.strip()))
        log(f"wrote its section of {harness.DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
