//! The agent's HTTP endpoint under pressure: many idle connections under
//! the usual descriptor limit, running out of descriptors, gzip, 405.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

use crate::agent::{Agent, Metrics};

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("http_idle_connections_leave_metrics_answering", idle_connections),
        Trial::test("http_out_of_descriptors_closes_idle_connections", out_of_descriptors),
        Trial::test("http_gzip_scrape_and_405_with_allow", gzip_and_405),
    ]
}

const PROBES: &str = "probes:\n  exec: {}\n";
/// More idle connections than the usual descriptor limit allows.
const IDLE_CONNECTIONS: usize = 1100;

fn expect(cond: bool, what: impl Into<String>) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

/// 1,100 connections that never send a byte, against an agent limited to
/// 1024 descriptors: /metrics still answers, and the agent closes every one
/// of them within the header timeout, leaking no descriptor.
fn idle_connections() -> Result<(), Failed> {
    raise_own_nofile(IDLE_CONNECTIONS as u64 + 256)?;
    let agent = Agent::start_with_nofile(PROBES, &[], 1024);
    let descriptors_before = descriptors(agent.pid())?;
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        idle.push(TcpStream::connect(("127.0.0.1", agent.port))?);
    }
    // More connections than the listen backlog holds: under emulation the
    // agent accepts slower than they arrive, and a scrape queued behind a
    // full backlog waits out the kernel's SYN-ACK retransmission back-off
    // (1, 2, 4, 8 s), which says nothing about the agent. Scrape once the
    // agent has taken every queued connection.
    accept_queue_drained(agent.port, Duration::from_secs(60))?;
    let all_open = Instant::now();
    expect_usual_metrics(&agent.scrape())?;

    // The newest connections fit under the cap: the header timeout, not
    // eviction, is what must close them.
    let newest = &idle[IDLE_CONNECTIONS - 50..];
    for stream in newest {
        expect(!is_closed_now(stream)?, "a connection within the cap was closed before its header timeout")?;
    }
    let header_timeout = sonde::http::Limits::default().header_read_timeout;
    let deadline = all_open + header_timeout + Duration::from_secs(3);
    for (index, stream) in idle.iter().enumerate() {
        expect(closed_by(stream, deadline)?, format!("idle connection {index} still open after the header timeout"))?;
    }
    expect_usual_metrics(&agent.scrape())?;
    let descriptors_after = descriptors(agent.pid())?;
    expect(
        descriptors_after <= descriptors_before + 2,
        format!("{descriptors_after} descriptors open after the idle connections closed, {descriptors_before} before"),
    )
}

/// An agent with far fewer descriptors than connections: accepting runs
/// into EMFILE, closes idle connections to make room, and /metrics answers.
fn out_of_descriptors() -> Result<(), Failed> {
    const NOFILE: u64 = 64;
    raise_own_nofile(512)?;
    let agent = Agent::start_with_nofile(PROBES, &[], NOFILE);
    let idle: Vec<TcpStream> =
        (0..300).map(|_| TcpStream::connect(("127.0.0.1", agent.port))).collect::<Result<_, _>>()?;
    let started = Instant::now();
    expect_usual_metrics(&agent.scrape())?;
    expect(started.elapsed() < Duration::from_secs(5), format!("the scrape took {:?}", started.elapsed()))?;
    let open = descriptors(agent.pid())?;
    expect(open <= NOFILE as usize, format!("{open} descriptors open under a limit of {NOFILE}"))?;
    let closed = idle.iter().map(is_closed_now).collect::<Result<Vec<bool>, _>>()?;
    let closed = closed.into_iter().filter(|&c| c).count();
    expect(closed >= 300 - NOFILE as usize, format!("only {closed} of 300 idle connections were closed to make room"))
}

fn gzip_and_405() -> Result<(), Failed> {
    let agent = Agent::start(PROBES, &[]);
    let (head, body) = exchange(agent.port, "GET /metrics HTTP/1.1\r\nHost: test\r\nAccept-Encoding: gzip\r\n")?;
    expect(head.starts_with("HTTP/1.1 200 "), format!("gzip scrape: {head}"))?;
    expect(header(&head, "content-encoding") == Some("gzip"), format!("gzip scrape: {head}"))?;
    expect(header(&head, "vary") == Some("Accept-Encoding"), format!("gzip scrape: {head}"))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(body.as_slice()).read_to_string(&mut text)?;
    expect_usual_metrics(&Metrics::parse(&text))?;

    for (request, allow) in
        [("DELETE /metrics", "GET, HEAD"), ("POST /healthz", "GET, HEAD"), ("GET /-/reload", "POST, PUT")]
    {
        let (head, _) = exchange(agent.port, &format!("{request} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n"))?;
        expect(head.starts_with("HTTP/1.1 405 "), format!("{request}: {head}"))?;
        expect(header(&head, "allow") == Some(allow), format!("{request}: {head}"))?;
    }
    Ok(())
}

fn expect_usual_metrics(metrics: &Metrics) -> Result<(), Failed> {
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    expect(metrics.value("sonde_build_info", &version) == 1.0, "sonde_build_info is missing")?;
    expect(metrics.value("sonde_probe_up", &[("probe", "exec")]) == 1.0, "sonde_probe_up{probe=\"exec\"} is not 1")
}

/// One request (`head` without its final blank line) on its own
/// connection → (response head, raw body).
fn exchange(port: u16, head: &str) -> std::io::Result<(String, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "{head}Connection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").map_or(response.len(), |at| at + 4);
    let body = response.split_off(split);
    Ok((String::from_utf8_lossy(&response).into_owned(), body))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Whether the peer has closed `stream`, without waiting.
fn is_closed_now(stream: &TcpStream) -> std::io::Result<bool> {
    stream.set_nonblocking(true)?;
    let closed = read_closed(stream);
    stream.set_nonblocking(false)?;
    closed
}

/// Whether the peer closes `stream` by `deadline`.
fn closed_by(stream: &TcpStream, deadline: Instant) -> std::io::Result<bool> {
    let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else {
        return is_closed_now(stream);
    };
    stream.set_read_timeout(Some(left))?;
    read_closed(stream)
}

fn read_closed(mut stream: &TcpStream) -> std::io::Result<bool> {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => Ok(true),
        Ok(_) => Err(std::io::Error::other("the agent sent bytes on a connection that asked nothing")),
        Err(err) if err.kind() == ErrorKind::ConnectionReset => Ok(true),
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Lets this process hold `want` descriptors (root may raise the hard
/// limit too).
fn raise_own_nofile(want: u64) -> Result<(), Failed> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    expect(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0, "getrlimit(RLIMIT_NOFILE)")?;
    if limit.rlim_cur >= want {
        return Ok(());
    }
    limit.rlim_cur = want;
    limit.rlim_max = limit.rlim_max.max(want);
    // SAFETY: setrlimit reads the struct we pass.
    let raised = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } == 0;
    expect(raised, format!("raising this test's RLIMIT_NOFILE to {want}: {}", std::io::Error::last_os_error()))
}

/// Waits until the listening socket on 127.0.0.1:`port` has no
/// connection left in its accept queue (a listener's `rx_queue` in
/// /proc/net/tcp, `ss`'s Recv-Q) nor any handshake waiting to enter it
/// (SYN_RECV request sockets, whose final ACK a full queue dropped).
fn accept_queue_drained(port: u16, within: Duration) -> Result<(), Failed> {
    let deadline = Instant::now() + within;
    let local = format!("0100007F:{port:04X}");
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp")?;
        let mut listening = false;
        let mut waiting = 0u64;
        for line in table.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.get(1) != Some(&local.as_str()) {
                continue;
            }
            match fields.get(3) {
                Some(&"0A") => {
                    listening = true;
                    let queued = fields.get(4).and_then(|q| q.split_once(':'));
                    waiting += queued.and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok()).unwrap_or(0);
                }
                Some(&"03") => waiting += 1,
                _ => {}
            }
        }
        if !listening {
            return Err(format!("no listening socket on 127.0.0.1:{port} in /proc/net/tcp").into());
        }
        if waiting == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(
                format!("{waiting} connections still waiting to be accepted by the agent after {within:?}").into()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn descriptors(pid: i32) -> std::io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}
