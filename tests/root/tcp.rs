//! The `tcp` probe against real loopback connections: refused, established
//! and timed-out connects, accepts, resets and SYN retransmits, attributed
//! to the connecting thread's comm although the kernel decides most of them
//! in softirq context.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use libtest_mimic::{Completion, Failed, Trial};

use crate::agent::{Agent, Metrics};
use crate::workload;

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("tcp_refused_connects_and_their_resets", refused_connects),
        Trial::ignorable_test("tcp_rst_for_a_closed_port_counts_as_sent", resets_sent_without_a_socket),
        Trial::test("tcp_established_connects_and_accepts", established_connects),
        Trial::test("tcp_syn_timeouts_and_retransmits", syn_timeouts),
        Trial::test("tcp_socket_gauge_counts_new_sockets_only", socket_gauge),
    ]
}

fn check(what: &str, got: f64, want: f64) -> Result<(), Failed> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got}, want {want}").into())
    }
}

fn at_least(what: &str, got: f64, want: f64) -> Result<(), Failed> {
    if got >= want {
        Ok(())
    } else {
        Err(format!("{what}: got {got}, want at least {want}").into())
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A loopback port nothing listens on (bound once, then released).
fn closed_port() -> u16 {
    let listener = TcpListener::bind(loopback(0)).expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

fn agent(labels: &str) -> Agent {
    Agent::start(&format!("probes:\n  tcp:\n    labels: [{labels}]\n"), &[])
}

/// Each connect to a closed loopback port: the kernel answers the SYN with
/// a RST that the connecting socket receives, and the connect is refused.
fn refused_connects() -> Result<(), Failed> {
    const N: usize = 17;
    let comm = workload::unique_comm("tr");
    let port = closed_port();
    let agent = agent("comm, outcome, dport, direction");
    let refused = workload::on_named_thread(&comm, move || {
        (0..N)
            .filter(|_| TcpStream::connect(loopback(port)).is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused))
            .count()
    });
    check("connects refused by the kernel", refused as f64, N as f64)?;
    let port = port.to_string();
    let labels = [("comm", comm.as_str()), ("outcome", "refused"), ("dport", port.as_str())];
    let connects = agent.settle(N as f64, |m| m.value("sonde_tcp_connects_total", &labels));
    check("sonde_tcp_connects_total{outcome=refused}", connects, N as f64)?;
    let metrics = agent.scrape();
    check("connect latency count", metrics.value("sonde_tcp_connect_duration_seconds_count", &labels), N as f64)?;
    let received = [("comm", comm.as_str()), ("direction", "received")];
    check("sonde_tcp_resets_total{direction=received}", metrics.value("sonde_tcp_resets_total", &received), N as f64)?;
    check(
        "established by this comm",
        metrics.value("sonde_tcp_connects_total", &[("comm", &comm), ("outcome", "established")]),
        0.0,
    )
}

/// The RST answering a SYN to a closed port is sent for no socket, so owned
/// by nobody: other resets may add to that series, hence a lower bound.
/// Kernels before 6.10 trace only RSTs sent for a full socket.
fn resets_sent_without_a_socket() -> Result<Completion, Failed> {
    const N: usize = 19;
    if !kernel_at_least(6, 10) {
        return Ok(Completion::ignored_with("kernels before 6.10 do not trace a RST sent without a socket"));
    }
    let port = closed_port();
    let agent = agent("comm, direction");
    let sent = |m: &Metrics| m.value("sonde_tcp_resets_total", &[("direction", "sent"), ("comm", "")]);
    let before = sent(&agent.scrape());
    let refused = (0..N).filter(|_| TcpStream::connect(loopback(port)).is_err()).count();
    check("connects refused", refused as f64, N as f64)?;
    let got = agent.settle(before + N as f64, sent) - before;
    at_least("sonde_tcp_resets_total{direction=sent}", got, N as f64)?;
    Ok(Completion::Completed)
}

/// Whether the running kernel's release is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("read the kernel release");
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// Connects to a listener in the test: the kernel completes each handshake
/// (no accept() needed), an active open for the connecting thread and a
/// passive one on the listener's port.
fn established_connects() -> Result<(), Failed> {
    const N: usize = 13;
    let comm = workload::unique_comm("te");
    let listener = TcpListener::bind(loopback(0)).expect("bind a listener");
    let port = listener.local_addr().expect("local address").port();
    let agent = agent("comm, outcome, dport, lport");
    let streams = workload::on_named_thread(&comm, move || {
        (0..N).map(|_| TcpStream::connect(loopback(port)).expect("connect to the test's listener")).collect::<Vec<_>>()
    });
    let port = port.to_string();
    let labels = [("comm", comm.as_str()), ("outcome", "established"), ("dport", port.as_str())];
    let connects = agent.settle(N as f64, |m| m.value("sonde_tcp_connects_total", &labels));
    check("sonde_tcp_connects_total{outcome=established}", connects, N as f64)?;
    let accepts = agent.settle(N as f64, |m| m.value("sonde_tcp_accepts_total", &[("lport", port.as_str())]));
    check("sonde_tcp_accepts_total{lport}", accepts, N as f64)?;
    let metrics = agent.scrape();
    check("connect latency count", metrics.value("sonde_tcp_connect_duration_seconds_count", &labels), N as f64)?;
    drop(streams);
    Ok(())
}

/// A listener whose accept queue is full drops further SYNs, so connects
/// to it retransmit their SYN; with TCP_SYNCNT 1 each times out at about
/// 3 s, after one retransmit at 1 s (or two).
fn syn_timeouts() -> Result<(), Failed> {
    const N: usize = 3;
    let comm = workload::unique_comm("tt");
    let listener = TcpListener::bind(loopback(0)).expect("bind a listener");
    let port = listener.local_addr().expect("local address").port();
    // SAFETY: a valid listening socket; backlog 0 holds one connection.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0, "listen(0)");
    let _filler = TcpStream::connect(loopback(port)).expect("fill the accept queue");
    let agent = agent("comm, outcome, kind");
    let started = Instant::now();
    let errors = workload::on_named_thread(&comm, move || {
        let threads: Vec<_> = (0..N).map(|_| std::thread::spawn(move || connect_with_one_syn_retry(port))).collect();
        threads.into_iter().map(|t| t.join().expect("connect thread")).collect::<Vec<_>>()
    });
    let timed_out = errors.iter().filter(|e| **e == libc::ETIMEDOUT).count();
    check(&format!("connects timed out (errors {errors:?})"), timed_out as f64, N as f64)?;
    let labels = [("comm", comm.as_str()), ("outcome", "timeout")];
    let connects = agent.settle(N as f64, |m| m.value("sonde_tcp_connects_total", &labels));
    check("sonde_tcp_connects_total{outcome=timeout}", connects, N as f64)?;
    let metrics = agent.scrape();
    let retransmits = metrics.value("sonde_tcp_retransmits_total", &[("comm", &comm), ("kind", "syn_sent")]);
    // at least the one retransmit TCP_SYNCNT allows; kernels differ on
    // whether another goes out at the deadline (6.18 sends a second)
    at_least("sonde_tcp_retransmits_total{kind=syn_sent}", retransmits, N as f64)?;
    let seconds = metrics.value("sonde_tcp_connect_duration_seconds_sum", &labels);
    let longest = started.elapsed().as_secs_f64() * N as f64;
    if !(seconds >= 2.5 * N as f64 && seconds <= longest) {
        return Err(format!("connect latency sum {seconds} s for {N} connects of about 3 s each").into());
    }
    Ok(())
}

/// connect() to loopback `port` with one SYN retransmit at most; the errno.
fn connect_with_one_syn_retry(port: u16) -> i32 {
    // SAFETY: plain socket calls on a descriptor this function owns and
    // closes; the address is a valid sockaddr_in.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket");
        let one: libc::c_int = 1;
        let size = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        assert_eq!(
            libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, (&one as *const libc::c_int).cast(), size),
            0
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be() },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::connect(fd, (&addr as *const libc::sockaddr_in).cast(), len);
        let errno = if rc == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap_or(-1) };
        libc::close(fd);
        errno
    }
}

/// The gauge counts sockets opened while sonde runs: a connection opened
/// before it started and closed after never drives a state negative, and
/// connections held open show in `established`.
fn socket_gauge() -> Result<(), Failed> {
    const N: usize = 11;
    let listener = TcpListener::bind(loopback(0)).expect("bind a listener");
    let port = listener.local_addr().expect("local address").port();
    let before = TcpStream::connect(loopback(port)).expect("connect before the agent");
    let (before_accepted, _) = listener.accept().expect("accept");
    let agent = agent("state");
    let streams: Vec<TcpStream> = (0..N).map(|_| TcpStream::connect(loopback(port)).expect("connect")).collect();
    let established = |m: &Metrics| m.value("sonde_tcp_sockets", &[("state", "established")]);
    // both ends of each connection
    let held = agent.settle(2.0 * N as f64, established);
    at_least("sonde_tcp_sockets{state=established}", held, 2.0 * N as f64)?;
    drop((before, before_accepted, streams, listener));
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let metrics = agent.scrape();
        if let Some((labels, value)) = metrics.series("sonde_tcp_sockets").into_iter().find(|(_, v)| *v < 0.0) {
            return Err(format!("sonde_tcp_sockets{labels:?} = {value}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
