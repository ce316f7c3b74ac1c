//! The scheduler probes against known workloads: `runqueue` (a named thread
//! that sleeps and wakes N times), `softirq` (loopback TCP round trips and
//! the kernel's timers) and `cfs_throttle` (a busy loop in a cgroup with a
//! CPU quota; kprobes or fentry only, so on the host it is proven to be
//! reported unsupported and the count is tested in the VMs).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use libtest_mimic::{Completion, Failed, Trial};

use crate::agent::{sonde, Agent};
use crate::kernel;
use crate::workload::{self, Cgroup, NamedBinary};

pub fn trials() -> Vec<Trial> {
    let mut trials = vec![
        Trial::test("runqueue_counts_the_wakeups_of_a_named_thread", || runqueue_wakeups("tp_btf", true)),
        Trial::test("runqueue_ring_mode_counts_the_wakeups_of_a_named_thread", || runqueue_wakeups("tp_btf", false)),
        Trial::test("runqueue_tracepoint_fallback_counts_the_wakeups_of_a_named_thread", || {
            runqueue_wakeups("tracepoint", true)
        }),
        Trial::test("runqueue_counts_a_wait_across_a_wakeup_while_running", || runqueue_woken_while_running("tp_btf")),
        Trial::test("runqueue_tracepoint_fallback_counts_a_wait_across_a_wakeup_while_running", || {
            runqueue_woken_while_running("tracepoint")
        }),
        Trial::test("softirq_times_net_rx_and_timer_handlers", || softirq_kinds("tp_btf", true)),
        Trial::test("softirq_tracepoint_ring_mode_times_net_rx_and_timer_handlers", || {
            softirq_kinds("tracepoint", false)
        }),
        Trial::ignorable_test("cfs_throttle_counts_throttles_of_a_cpu_limited_cgroup", cfs_throttle_counts),
    ];
    if kernel::best_function_hook().is_none() {
        trials.push(Trial::test("cfs_throttle_reported_unsupported", cfs_throttle_unsupported));
    }
    trials
}

fn matrix(probe: &str, hook: &str, result: &str) {
    println!("SONDE_MATRIX probe={probe} hook={hook} result={result}");
}

fn within(what: &str, got: f64, low: f64, high: f64) -> Result<(), Failed> {
    if (low..=high).contains(&got) {
        Ok(())
    } else {
        Err(format!("{what}: got {got}, want {low}..={high}").into())
    }
}

fn probe_up(agent: &Agent, probe: &str, hook: &str) -> Result<(), Failed> {
    let up = agent.scrape().value("sonde_probe_up", &[("probe", probe), ("hook", hook)]);
    within(&format!("sonde_probe_up{{probe={probe},hook={hook}}}"), up, 1.0, 1.0)
}

/// A thread with a name of its own sleeps 1 ms N times: each sleep ends in
/// a wakeup and a switch-in, so its comm's histogram counts at least N
/// waits. Not exactly N: the thread's creation (sched_wakeup_new) counts
/// too, and so does every preemption that left it runnable, which a busy
/// machine may add; at most a few per sleep, hence the upper bound of 2N.
/// Less only by switch-ins the kernel reports to no hook (see
/// `SwitchIns`), which are measured, not guessed.
fn runqueue_wakeups(hook: &str, aggregate: bool) -> Result<(), Failed> {
    const N: u32 = 50;
    let comm = workload::unique_comm("rq");
    // Filtered to the thread: in ring mode every other wait on the machine
    // would be a record too, and a slow machine's ring may then drop some
    // of the thread's (counted as lost, but not in its histogram).
    let agent = Agent::start(
        &format!(
            "probes:\n  runqueue:\n    labels: [comm]\n    hook: {hook}\n    aggregate: {aggregate}\n    \
             filter: {{comm: [{comm}]}}\n{}",
            SwitchIns::probe(&comm)
        ),
        &[],
    );
    probe_up(&agent, "runqueue", hook)?;
    let hidden = SwitchIns::hidden_while(&agent, &comm, || {
        for _ in 0..N {
            std::thread::sleep(Duration::from_millis(1));
        }
    })?;
    let labels = [("comm", comm.as_str())];
    let want = f64::from(N) - hidden;
    let waits = agent.settle(want, |m| m.value("sonde_runqueue_latency_seconds_count", &labels));
    let lost = agent.scrape().value("sonde_events_lost_total", &[("probe", "runqueue")]);
    within(
        &format!("sonde_runqueue_latency_seconds_count ({lost} lost, {hidden} switch-ins reported to no hook)"),
        waits,
        want,
        f64::from(2 * N),
    )?;
    // each wait is at least a scheduler pass and, on a machine with idle
    // time, far below a second
    let waited = agent.scrape().value("sonde_runqueue_latency_seconds_sum", &labels);
    within("sonde_runqueue_latency_seconds_sum", waited, 1e-9, waits)?;
    matrix("runqueue", hook, "ok");
    Ok(())
}

/// The switch-ins of a named thread that the kernel reported to no hook.
///
/// A wait is counted at a switch-in of the thread, which `sched_switch`
/// reports. Some kernels leave switches out of their tracepoints: on the
/// VMs these tests run on, no switch away from a thread of the machine's
/// own PID 1 (its sandbox agent) reaches any hook (tracepoint, raw or BTF),
/// though the kernel counts them in the thread's schedstat; a wakeup whose
/// switch-in follows such a thread can be counted by no probe. The thread's
/// run count (the third field of its schedstat: how often it was switched
/// in) against a config-defined probe on `sched/sched_switch` for its name
/// measures them, both read while the thread is parked before and after
/// its work, so that no switch-in falls between the two readings; on every
/// other kernel the difference is 0.
struct SwitchIns;

impl SwitchIns {
    const METRIC: &'static str = "sonde_test_switch_ins_total";

    /// The config lines of the probe that counts the reported switch-ins.
    fn probe(comm: &str) -> String {
        format!(
            "  test_switch_ins:\n    tracepoint: sched/sched_switch\n    labels: []\n    \
             filter: {{fields: {{next_comm: [{comm}]}}}}\n"
        )
    }

    /// Runs `f` on a thread named `comm` and returns the switch-ins of that
    /// thread meanwhile that the kernel made and reported to no hook. Fails
    /// when the probe saw none (then it measures nothing) or when most were
    /// hidden (a kernel that hides most switches cannot run these tests).
    fn hidden_while(agent: &Agent, comm: &str, f: impl FnOnce() + Send + 'static) -> Result<f64, Failed> {
        use std::sync::mpsc::channel;
        let (tid_tx, tid_rx) = channel();
        let (go_tx, go_rx) = channel::<()>();
        let (done_tx, done_rx) = channel::<()>();
        let (exit_tx, exit_rx) = channel::<()>();
        let thread = std::thread::Builder::new()
            .name(comm.to_string())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                let _ = tid_tx.send(unsafe { libc::gettid() });
                let _ = go_rx.recv();
                f();
                let _ = done_tx.send(());
                let _ = exit_rx.recv();
            })
            .expect("spawn named thread");
        let tid = tid_rx.recv().map_err(|_| "the named thread ended early")?;
        let (runs0, seen0) = (Self::parked_run_count(tid)?, Self::stable(agent));
        go_tx.send(()).map_err(|_| "the named thread ended early")?;
        done_rx.recv().map_err(|_| "the named thread panicked")?;
        let runs = Self::parked_run_count(tid)? - runs0;
        let seen = agent.settle(seen0 + runs, |m| m.value(Self::METRIC, &[])) - seen0;
        let _ = exit_tx.send(());
        thread.join().map_err(|_| "the named thread panicked")?;
        let hidden = (runs - seen).max(0.0);
        println!("runqueue test: the thread was switched in {runs} times, {seen} reported by sched_switch");
        if seen == 0.0 || hidden > runs / 4.0 {
            return Err(format!(
                "the thread was switched in {runs} times and sched_switch reported {seen} of them: \
                 too few to count waits by"
            )
            .into());
        }
        Ok(hidden)
    }

    /// The reported count once the ring has delivered: two equal readings.
    fn stable(agent: &Agent) -> f64 {
        let mut last = agent.scrape().value(Self::METRIC, &[]);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = agent.scrape().value(Self::METRIC, &[]);
            if now == last {
                return now;
            }
            last = now;
        }
    }

    /// Thread `tid`'s run count, once it sleeps (parked on a channel): no
    /// switch-in of it can come between this reading and the probe's.
    fn parked_run_count(tid: libc::pid_t) -> Result<f64, Failed> {
        let task = format!("/proc/self/task/{tid}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("{task}/stat")).map_err(|e| format!("{task}/stat: {e}"))?;
            // the state follows the parenthesised comm
            let sleeping = stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('S'));
            if sleeping {
                let schedstat = std::fs::read_to_string(format!("{task}/schedstat"))
                    .map_err(|e| format!("{task}/schedstat: {e}"))?;
                let runs = schedstat.split_whitespace().nth(2).and_then(|n| n.parse::<f64>().ok());
                return runs.ok_or_else(|| format!("{task}/schedstat: no run count in {schedstat:?}").into());
            }
            if Instant::now() > deadline {
                return Err(format!("thread {tid} did not park: {stat}").into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Like `runqueue_wakeups`, with a sleep of 100 ns after each 1 ms one, at
/// a timer slack of 1 ns: its timer fires after nanosleep set the sleeping
/// state and before schedule(), so the kernel reports a wakeup of the thread
/// while it still runs, between the switch-in that ended the 1 ms sleep's
/// wait and the next switch-out (every such sleep, on the machines this was
/// measured on). The tracepoint hook counts that wait at the switch-out, so
/// the wakeup must not drop it. The short sleeps may also sleep and be woken
/// (a wait each), hence the upper bound of 3N.
fn runqueue_woken_while_running(hook: &str) -> Result<(), Failed> {
    const N: u32 = 50;
    let comm = workload::unique_comm("rq");
    let agent = Agent::start(
        &format!(
            "probes:\n  runqueue:\n    labels: [comm]\n    hook: {hook}\n    filter: {{comm: [{comm}]}}\n{}",
            SwitchIns::probe(&comm)
        ),
        &[],
    );
    probe_up(&agent, "runqueue", hook)?;
    let hidden = SwitchIns::hidden_while(&agent, &comm, || {
        // SAFETY: PR_SET_TIMERSLACK sets the calling thread's timer slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        for _ in 0..N {
            std::thread::sleep(Duration::from_millis(1));
            std::thread::sleep(Duration::from_nanos(100));
        }
    })?;
    let labels = [("comm", comm.as_str())];
    let want = f64::from(N) - hidden;
    let waits = agent.settle(want, |m| m.value("sonde_runqueue_latency_seconds_count", &labels));
    within(
        &format!("sonde_runqueue_latency_seconds_count ({hidden} switch-ins reported to no hook)"),
        waits,
        want,
        f64::from(3 * N),
    )
}

/// N request/reply round trips over loopback TCP: each request is sent
/// only after the previous reply was read, and a loopback packet is
/// received by the NET_RX softirq its sender raises, so the requests alone
/// take at least N net_rx runs (replies, ACKs and the scrapes add more).
/// Timer softirqs are the kernel's own (the timer wheel's expiries, e.g.
/// the per-CPU vmstat work every second): at least one comes within the
/// settle window on any running kernel.
fn softirq_kinds(hook: &str, aggregate: bool) -> Result<(), Failed> {
    const N: usize = 40;
    let agent = Agent::start(
        &format!("probes:\n  softirq:\n    labels: [kind]\n    hook: {hook}\n    aggregate: {aggregate}\n"),
        &[],
    );
    probe_up(&agent, "softirq", hook)?;
    let count = |kind: &'static str| {
        move |m: &crate::agent::Metrics| m.value("sonde_softirq_duration_seconds_count", &[("kind", kind)])
    };
    let before = agent.scrape();
    let (net_rx, timer) = (count("net_rx")(&before), count("timer")(&before));
    loopback_round_trips(N);
    let net_rx_after = agent.settle(net_rx + N as f64, count("net_rx"));
    within("net_rx handlers", net_rx_after - net_rx, N as f64, f64::MAX)?;
    let timer_after = agent.settle(timer + 1.0, count("timer"));
    within("timer handlers", timer_after - timer, 1.0, f64::MAX)?;
    let time = agent.scrape().value("sonde_softirq_duration_seconds_sum", &[("kind", "net_rx")]);
    within("net_rx time", time, 1e-9, f64::MAX)?;
    matrix("softirq", hook, "ok");
    Ok(())
}

/// A one-byte request and a one-byte reply, `n` times.
fn loopback_round_trips(n: usize) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let echo = std::thread::spawn(move || {
        let (mut peer, _) = listener.accept().expect("accept");
        let mut byte = [0u8; 1];
        while peer.read_exact(&mut byte).is_ok() {
            peer.write_all(&byte).expect("reply");
        }
    });
    let mut client = TcpStream::connect(addr).expect("connect");
    client.set_nodelay(true).expect("TCP_NODELAY");
    let mut byte = [7u8; 1];
    for _ in 0..n {
        client.write_all(&byte).expect("request");
        client.read_exact(&mut byte).expect("reply");
    }
    drop(client);
    echo.join().expect("echo thread");
}

/// A cgroup v2 child with the cpu controller and a quota of 10 ms per
/// 100 ms period.
fn cpu_limited_cgroup(name: &str) -> Result<Cgroup, Failed> {
    let mount = workload::cgroup2_mount().ok_or("cgroup2 is not mounted")?;
    let controllers = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
    if !controllers.split_whitespace().any(|c| c == "cpu") {
        return Err(format!("cgroup2 at {} has no cpu controller: {controllers:?}", mount.display()).into());
    }
    std::fs::write(mount.join("cgroup.subtree_control"), "+cpu").map_err(|e| format!("enable +cpu: {e}"))?;
    let cgroup = Cgroup::create(&mount, name);
    std::fs::write(cgroup.dir.join("cpu.max"), "10000 100000").map_err(|e| format!("write cpu.max: {e}"))?;
    Ok(cgroup)
}

/// The cgroup's `nr_throttled` (periods in which it was throttled).
fn nr_throttled(cgroup: &Cgroup) -> Result<f64, Failed> {
    let stat = std::fs::read_to_string(cgroup.dir.join("cpu.stat")).map_err(|e| format!("read cpu.stat: {e}"))?;
    stat.lines()
        .find_map(|l| l.strip_prefix("nr_throttled ")?.trim().parse().ok())
        .ok_or_else(|| format!("no nr_throttled in cpu.stat: {stat:?}").into())
}

/// A process pinned to one CPU spins for 1 s of wall time in a cgroup whose
/// quota is 10 ms per 100 ms period: it is throttled in about 9 periods.
/// With one CPU, each throttled period is one throttling of one run queue,
/// which the kernel counts in `nr_throttled` when the period timer ends it;
/// the process can only exit while it runs, so every throttling has ended
/// (and been counted by both) before it does. The bound is ±1 of
/// nr_throttled: a period timer running late counts the periods it missed
/// (its overrun) into nr_throttled for one throttling.
fn cfs_throttle_counts() -> Result<Completion, Failed> {
    let Some(hook) = kernel::best_function_hook() else {
        return Ok(Completion::ignored_with(
            "this kernel has neither kprobes nor fentry: cfs_throttle is reported unsupported here \
             (cfs_throttle_reported_unsupported); the count is tested in the VMs",
        ));
    };
    let comm = workload::unique_comm("thr");
    let cgroup = cpu_limited_cgroup(&format!("sonde-test-{comm}"))?;
    let agent = Agent::start("probes:\n  cfs_throttle:\n    labels: [cgroup]\n", &[]);
    probe_up(&agent, "cfs_throttle", hook)?;
    let binary = NamedBinary::new(&comm);
    let started = Instant::now();
    let status = cgroup.run(&binary, 1, &["spin", "1000"])[0];
    let lived = started.elapsed().as_secs_f64();
    if status.code() != Some(0) {
        return Err(format!("the spinning workload ended with {status}").into());
    }
    let periods = nr_throttled(&cgroup)?;
    if periods < 1.0 {
        return Err("the kernel throttled the cgroup in no period: the workload did not use up its quota".into());
    }
    let path = cgroup.path();
    let labels = [("cgroup", path.as_str())];
    let throttles = agent.settle(periods, |m| m.value("sonde_cfs_throttles_total", &labels));
    within("sonde_cfs_throttles_total vs nr_throttled", throttles, (periods - 1.0).max(1.0), periods + 1.0)?;
    let ended = agent.scrape().value("sonde_cfs_throttled_seconds_count", &labels);
    within("sonde_cfs_throttled_seconds_count (every throttling ended)", ended, throttles, throttles)?;
    // one CPU throttled at a time: the time throttled fits in the
    // process's life (its start-up in the cgroup included, slow under
    // emulation), plus one period for the timer's lateness
    let seconds = agent.scrape().value("sonde_cfs_throttled_seconds_sum", &labels);
    within("sonde_cfs_throttled_seconds_sum", seconds, 1e-9, lived + 0.1)?;
    println!("cfs_throttle: {throttles} throttlings, nr_throttled {periods}, {seconds:.3} s throttled in {lived:.3} s");
    matrix("cfs_throttle", hook, "ok");
    Ok(Completion::Completed)
}

/// Without kprobes and fentry, cfs_throttle is down with each hook's
/// reason, and the other probes run.
fn cfs_throttle_unsupported() -> Result<(), Failed> {
    let agent = Agent::start("probes:\n  cfs_throttle: {}\n  exec: {}\n", &[]);
    let down = agent.scrape().value("sonde_probe_up", &[("probe", "cfs_throttle"), ("hook", "none")]);
    within("sonde_probe_up{probe=cfs_throttle,hook=none}", down, 0.0, 0.0)?;
    probe_up(&agent, "exec", "tracepoint")?;
    let out = sonde(&["probes"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let block: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("cfs_throttle: "))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .collect();
    let says = |prefix: &str| block.iter().any(|l| l.starts_with(prefix));
    if !says("  kernel   unsupported") || !says("  skipped  fentry: ") || !says("  skipped  kprobe: ") {
        return Err(format!("cfs_throttle's listing does not say why it is unsupported: {block:#?}").into());
    }
    matrix("cfs_throttle", "none", "unsupported");
    Ok(())
}
