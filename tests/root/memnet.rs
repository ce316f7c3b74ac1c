//! `skb_drop` and `page_cache` against real packets and real files: UDP
//! datagrams to a closed loopback port and into a netfilter DROP rule, and
//! a file written, dropped from the cache and read back.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Completion, Failed, Trial};

use crate::agent::{sonde, Agent, Metrics};
use crate::kernel;
use crate::workload;

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("skb_drop_counts_udp_to_a_closed_port_as_no_socket", || no_socket_drops("tp_btf", true)),
        Trial::test("skb_drop_classic_tracepoint_ring_path_counts_the_same", || no_socket_drops("tracepoint", false)),
        Trial::test("skb_drop_default_config_counts_no_socket_drops", default_no_socket_drops),
        Trial::ignorable_test("skb_drop_counts_a_netfilter_drop_rule_in_a_netns", netfilter_drops),
        Trial::test("page_cache_counts_dirtied_and_missed_pages_of_a_file", || file_pages(true)),
        Trial::test("page_cache_ring_path_counts_the_same", || file_pages(false)),
        Trial::ignorable_test("page_cache_counts_accesses_with_a_function_hook", accesses),
        Trial::test("page_cache_without_function_hooks_lists_why_and_counts_the_rest", listing_without_function_hooks),
    ]
}

fn matrix(probe: &str, hook: &str) {
    println!("SONDE_MATRIX probe={probe} hook={hook} result=ok");
}

fn check(what: &str, got: f64, want: f64) -> Result<(), Failed> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got}, want {want}").into())
    }
}

fn within(what: &str, got: f64, low: f64, high: f64) -> Result<(), Failed> {
    if (low..=high).contains(&got) {
        Ok(())
    } else {
        Err(format!("{what}: got {got}, want {low}..={high}").into())
    }
}

/// A loopback UDP port nothing listens on (bound once, then released).
fn closed_udp_port() -> u16 {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback UDP port");
    socket.local_addr().expect("local address").port()
}

fn send_datagrams(port: u16, n: usize) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the sender");
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    for _ in 0..n {
        // an unconnected socket: the ICMP port unreachable that answers
        // each datagram is not reported to it, so every send succeeds
        socket.send_to(b"sonde", to).expect("send a datagram");
    }
}

/// The reason a datagram to a closed port is dropped for: NO_SOCKET where
/// the kernel names reasons (5.17 and later); before, every drop is
/// `unknown`.
fn no_socket_reason() -> &'static str {
    if kernel_names_drop_reasons() {
        "NO_SOCKET"
    } else {
        "unknown"
    }
}

/// N datagrams from a named thread to a closed loopback port: exactly N
/// NO_SOCKET drops under its name. Loopback delivers in the sender's own
/// softirq (run as the send re-enables bottom halves), so `comm` is the
/// sender, unless the kernel defers that softirq to its ksoftirqd thread:
/// before 6.3 whenever ksoftirqd is already running (a loaded machine, an
/// emulated one), always after a long softirq. Those drops carry
/// `ksoftirqd/CPU` and are counted with the sender's. For packets from a
/// NIC `comm` would be any interrupted task. Without drop reasons (before
/// 5.17) every kfree_skb in that softirq counts as `unknown`, so there only
/// a lower bound holds.
fn no_socket_drops(hook: &str, aggregate: bool) -> Result<(), Failed> {
    const N: usize = 23;
    let comm = workload::unique_comm("ud");
    let yaml =
        format!("probes:\n  skb_drop:\n    hook: {hook}\n    aggregate: {aggregate}\n    labels: [reason, comm]\n");
    let agent = Agent::start(&yaml, &[]);
    let port = closed_udp_port();
    let sender = comm.clone();
    workload::on_named_thread(&comm, move || send_datagrams(port, N));
    let reason = no_socket_reason();
    let of_the_sender = |m: &Metrics| -> f64 {
        let sent_by = |l: &str| l == sender || l.starts_with("ksoftirqd/");
        m.series("sonde_skb_drops_total")
            .iter()
            .filter(|(labels, _)| {
                labels.iter().any(|(k, v)| k == "reason" && v == reason)
                    && labels.iter().any(|(k, v)| k == "comm" && sent_by(v))
            })
            .map(|(_, value)| value)
            .sum()
    };
    let drops = agent.settle(N as f64, of_the_sender);
    let what = format!("sonde_skb_drops_total{{reason={reason}}} of the sender (and ksoftirqd for it)");
    if kernel_names_drop_reasons() {
        check(&what, drops, N as f64)?;
    } else if drops < N as f64 {
        return Err(format!("{what}: got {drops}, want at least {N}").into());
    }
    matrix("skb_drop", hook);
    Ok(())
}

/// The default config (reason only, counted in the kernel's array): the
/// NO_SOCKET total grows by at least N. Only a lower bound: any other
/// process on the host may send to a closed port meanwhile.
fn default_no_socket_drops() -> Result<(), Failed> {
    const N: usize = 31;
    let agent = Agent::start("probes:\n  skb_drop: {}\n", &[]);
    let reason = no_socket_reason();
    let no_socket = |m: &Metrics| m.value("sonde_skb_drops_total", &[("reason", reason)]);
    let before = no_socket(&agent.scrape());
    send_datagrams(closed_udp_port(), N);
    let after = agent.settle(before + N as f64, no_socket);
    if after < before + N as f64 {
        return Err(format!("{reason} drops grew by {}, want at least {N}", after - before).into());
    }
    let series = agent.scrape().series("sonde_skb_drops_total");
    let only_reason = series.iter().all(|(labels, _)| labels.len() == 1 && labels[0].0 == "reason");
    if !only_reason {
        return Err(format!("default labels are reason only: {series:?}").into());
    }
    Ok(())
}

/// A network namespace, deleted when dropped.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: &str) -> Result<Netns, String> {
        run("ip", &["netns", "add", name])?;
        let netns = Netns { name: name.to_string() };
        netns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(netns)
    }

    fn exec(&self, command: &[&str]) -> Result<(), String> {
        let mut args = vec!["netns", "exec", self.name.as_str()];
        args.extend_from_slice(command);
        run("ip", &args)
    }

    /// Moves the calling thread (only it) into the namespace.
    fn enter(&self) {
        let file = File::open(Path::new("/run/netns").join(&self.name)).expect("open the netns");
        // SAFETY: a namespace descriptor we own; affects this thread only.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// In a namespace of its own whose INPUT chain drops UDP to one port, a
/// named thread sends N datagrams there: exactly N NETFILTER_DROP drops
/// under its name. (A `tc netem loss` qdisc would test the QDISC path, but
/// needs sch_netem, which hosts without it cannot load: the VMs can.)
fn netfilter_drops() -> Result<Completion, Failed> {
    const N: usize = 17;
    const PORT: &str = "9";
    if !kernel_has_reason("NETFILTER_DROP") {
        return Ok(Completion::ignored_with("this kernel has no NETFILTER_DROP drop reason (before 6.0)"));
    }
    let comm = workload::unique_comm("nf");
    let netns = match Netns::create(&format!("sonde-{comm}")) {
        Ok(netns) => netns,
        Err(err) => return Ok(Completion::ignored_with(format!("INFRA: no network namespace here: {err}"))),
    };
    if let Err(err) = netns.exec(&["iptables", "-A", "INPUT", "-p", "udp", "--dport", PORT, "-j", "DROP"]) {
        return Ok(Completion::ignored_with(format!("INFRA: iptables cannot add a DROP rule here: {err}")));
    }
    let agent = Agent::start("probes:\n  skb_drop:\n    labels: [reason, comm]\n", &[]);
    let netns = std::sync::Arc::new(netns);
    let inside = netns.clone();
    workload::on_named_thread(&comm, move || {
        inside.enter();
        send_datagrams(PORT.parse().expect("port"), N);
    });
    let labels = [("reason", "NETFILTER_DROP"), ("comm", comm.as_str())];
    let drops = agent.settle(N as f64, |m| m.value("sonde_skb_drops_total", &labels));
    check("sonde_skb_drops_total{reason=NETFILTER_DROP} of the sender", drops, N as f64)?;
    Ok(Completion::Completed)
}

/// Whether kfree_skb says why (5.17 and later): its format has a reason.
fn kernel_names_drop_reasons() -> bool {
    kernel_has_reason("NO_SOCKET")
}

/// Whether the running kernel's drop reasons include `name`, from the
/// kernel's own description of the tracepoint.
fn kernel_has_reason(name: &str) -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"].iter().any(|root| {
        std::fs::read_to_string(Path::new(root).join("events/skb/kfree_skb/format"))
            .is_ok_and(|format| format.contains(&format!("\"{name}\"")))
    })
}

const PAGE: usize = 4096;

/// A file on a disk-backed filesystem (a page cache that is written back,
/// where tmpfs's never is), removed when dropped: /var/tmp on a host, the
/// ext4 disk the VM harness mounts in a guest (whose root is an initramfs).
struct ScratchFile(PathBuf);

/// Where the VM harness mounts its ext4 disk (tests/vm/run-in-vm.sh).
const VM_EXT4: &str = "/mnt/ext4";

impl ScratchFile {
    fn new(tag: &str) -> ScratchFile {
        let vm_disk = std::fs::read_to_string("/proc/mounts")
            .is_ok_and(|mounts| mounts.lines().any(|l| l.split(' ').nth(1) == Some(VM_EXT4)));
        let dir = if vm_disk { VM_EXT4 } else { "/var/tmp" };
        ScratchFile(Path::new(dir).join(format!("sonde-page-cache-{tag}")))
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `pages` pages, syncs them and drops them from the page cache.
fn write_and_evict(path: &Path, pages: usize) {
    let mut file = File::create(path).expect("create the scratch file");
    file.write_all(&vec![0x5a; pages * PAGE]).expect("write");
    file.sync_all().expect("fsync");
    evict(&file);
}

fn evict(file: &File) {
    // SAFETY: advice on a descriptor we own.
    let err = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(err, 0, "posix_fadvise(DONTNEED)");
}

/// Reads the whole file, one page per read call.
fn read_pages(path: &Path, pages: usize) {
    let mut file = File::open(path).expect("open the scratch file");
    let mut buf = vec![0u8; PAGE];
    for _ in 0..pages {
        file.read_exact(&mut buf).expect("read a page");
    }
}

fn counter(agent: &Agent, metric: &str, comm: &str, want: f64) -> f64 {
    agent.settle(want, |m| m.value(metric, &[("comm", comm)]))
}

/// A named thread writes N pages (large folios or not: counted in pages),
/// then, once they are synced and dropped from the cache, reads them back.
/// Dirtied and missed pages are each at least N; at most N plus a few
/// pages of metadata the filesystem may dirty or read in the same thread.
fn file_pages(aggregate: bool) -> Result<(), Failed> {
    const N: usize = 1024;
    const SLACK: f64 = 64.0;
    let writer = workload::unique_comm("pw");
    let reader = workload::unique_comm("pr");
    let file = ScratchFile::new(&writer);
    let agent = Agent::start(&format!("probes:\n  page_cache:\n    aggregate: {aggregate}\n    labels: [comm]\n"), &[]);
    let path = file.0.clone();
    workload::on_named_thread(&writer, move || write_and_evict(&path, N));
    let path = file.0.clone();
    workload::on_named_thread(&reader, move || read_pages(&path, N));
    let n = N as f64;
    let dirtied = counter(&agent, "sonde_page_cache_dirtied_total", &writer, n);
    within("pages the writer dirtied", dirtied, n, n + SLACK)?;
    let missed = counter(&agent, "sonde_page_cache_misses_total", &reader, n);
    within("pages added for the reader", missed, n, n + SLACK)?;
    let metrics = agent.scrape();
    let function_hook = kernel::expects_fentry() || kernel::has_kprobes();
    if !function_hook && !metrics.series("sonde_page_cache_accesses_total").is_empty() {
        return Err("accesses have series although no hook that sees them attached".into());
    }
    matrix(
        "page_cache",
        if kernel::expects_fentry() {
            "fentry"
        } else if function_hook {
            "kprobe"
        } else {
            "tracepoint"
        },
    );
    Ok(())
}

/// Reading N cached pages, one page per call, marks each folio accessed
/// at least once (a large folio counts all its pages): at least N.
fn accesses() -> Result<Completion, Failed> {
    const N: usize = 256;
    if !kernel::expects_fentry() && !kernel::has_kprobes() {
        return Ok(Completion::ignored_with(
            "accesses need fentry or kprobes, which this kernel lacks (run in the VMs)",
        ));
    }
    let comm = workload::unique_comm("pa");
    let file = ScratchFile::new(&comm);
    std::fs::write(&file.0, vec![0x5a; N * PAGE]).expect("write the scratch file");
    let agent = Agent::start("probes:\n  page_cache:\n    labels: [comm]\n", &[]);
    let path = file.0.clone();
    workload::on_named_thread(&comm, move || read_pages(&path, N));
    let accessed = counter(&agent, "sonde_page_cache_accesses_total", &comm, N as f64);
    if accessed < N as f64 {
        return Err(format!("pages accessed by the reader: got {accessed}, want at least {N}").into());
    }
    Ok(Completion::Completed)
}

/// Where neither fentry nor kprobes work, `sonde probes` says page_cache
/// runs on its tracepoints, why each function hook was skipped, and loads
/// only the tracepoint programs.
fn listing_without_function_hooks() -> Result<(), Failed> {
    if kernel::expects_fentry() || kernel::has_kprobes() {
        // the function hooks work here: the listing test covers the hook
        let out = sonde(&["probes"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let want = if kernel::expects_fentry() { "via fentry" } else { "via kprobe" };
        return if stdout.contains(&format!("  kernel   supported, {want}")) {
            Ok(())
        } else {
            Err(format!("page_cache not {want}:\n{stdout}").into())
        };
    }
    let out = sonde(&["probes"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let block: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("page_cache: "))
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .collect();
    let has = |prefix: &str| block.iter().any(|l| l.starts_with(prefix));
    let programs: Vec<&str> =
        block.iter().filter_map(|l| l.strip_prefix("  program  ")).filter_map(|l| l.split(':').next()).collect();
    let ok = has("  kernel   supported, via tracepoint")
        && has("  skipped  fentry: ")
        && has("  skipped  kprobe: no kprobe PMU")
        && programs.len() == 2
        && programs.contains(&"pc_added")
        && programs.iter().any(|p| p.starts_with("pc_dirty_"));
    if ok {
        Ok(())
    } else {
        Err(format!("page_cache listing: {block:#?}").into())
    }
}
