#!/usr/bin/env python3
"""Profiles where sonde's CPU goes per event.

Runs the getppid generator (bench/loadgen.c) on CPU 0 for SECONDS with sonde's
`syscalls` probe filtered to it, sonde pinned to CPU 1, and reports sonde's
utime/stime per event received; with --perf it also records sonde with
`perf record -g` (apt: linux-perf) and prints the top symbols, and with
--kernel it records CPU 0 system-wide (the generator's syscalls and the BPF
programs they run) instead.

    python3 bench/profile.py [--seconds 8] [--perf | --kernel] [--sonde target/release/sonde]

Run as root after `cargo build --release`.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def scrape(port):
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in body.splitlines():
        if line.startswith('sonde_events_received_total{probe="syscalls"}'):
            return int(float(line.split()[-1]))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--sonde", default=os.path.join(ROOT, "target/release/sonde"))
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--perf", action="store_true", help="perf record the agent")
    mode.add_argument("--kernel", action="store_true", help="perf record CPU 0 (generator + BPF programs)")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="sonde-profile-")
    loadgen = os.path.join(tmp, "loadgen")
    subprocess.run(["gcc", "-O2", "-o", loadgen, os.path.join(ROOT, "bench/loadgen.c")], check=True)
    gen = subprocess.Popen([loadgen, "getppid", str(args.seconds), "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    procs = [gen]
    try:
        assert gen.stdout.readline().strip() == b"ready"
        port = 19000 + os.getpid() % 1000
        config = os.path.join(tmp, "sonde.yaml")
        with open(config, "w") as f:
            f.write(f'listen: "127.0.0.1:{port}"\nprobes:\n  syscalls:\n    labels: [syscall]\n    filter: {{pid: {gen.pid}}}\n')
        sonde = subprocess.Popen(["taskset", "-c", "1", args.sonde, "run", "--config", config, "--log-level", "warn"])
        procs.append(sonde)
        for _ in range(300):
            try:
                scrape(port)
                break
            except OSError:
                time.sleep(0.01)
        perf = None
        data = os.path.join(tmp, "perf.data")
        if args.perf or args.kernel:
            target = ["-C", "0"] if args.kernel else ["-p", str(sonde.pid)]
            perf = subprocess.Popen(["perf", "record", "-g", "-o", data, *target, "--", "sleep", str(args.seconds - 1)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(perf)
        r0, (u0, s0) = scrape(port), cpu_ticks(sonde.pid)
        gen.stdin.write(b"g")
        gen.stdin.flush()
        result = gen.stdout.readline().decode().strip()
        time.sleep(0.3)
        r1, (u1, s1) = scrape(port), cpu_ticks(sonde.pid)
        events = max(r1 - r0, 1)
        print(f"generator: {result}")
        print(f"events received: {events:,}")
        print(f"sonde utime {(u1 - u0) * TICK_NS / events:.1f} ns/event, stime {(s1 - s0) * TICK_NS / events:.1f} ns/event, "
              f"total {((u1 - u0) + (s1 - s0)) * TICK_NS / events:.1f} ns/event")
        if perf:
            perf.wait()
            report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "dso,sym", "--stdio"],
                                    capture_output=True, text=True).stdout
            lines = [l for l in report.splitlines() if "%" in l and not l.lstrip().startswith(("#", "|", "-"))]
            print("\n".join(lines[:25]))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
        subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    sys.exit(main())
