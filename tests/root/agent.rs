//! Runs the real `sonde` binary and reads its `/metrics` over HTTP.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The agent binary: `SONDE_BIN` (a VM ships it elsewhere), else cargo's.
pub fn sonde_bin() -> PathBuf {
    std::env::var_os("SONDE_BIN").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sonde")))
}

/// A config file that is removed when dropped.
pub struct ConfigFile {
    pub path: PathBuf,
}

impl ConfigFile {
    pub fn new(yaml: &str) -> ConfigFile {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "sonde-test-{}-{}.yaml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let config = ConfigFile { path };
        config.write(yaml);
        config
    }

    /// Replaces the file's contents, as an operator editing it before a
    /// reload would.
    pub fn write(&self, yaml: &str) {
        std::fs::write(&self.path, yaml).expect("write config");
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Runs `sonde ARGS` to completion.
pub fn sonde(args: &[&str]) -> Output {
    Command::new(sonde_bin()).args(args).output().expect("run sonde")
}

pub struct Agent {
    child: Option<Child>,
    pub port: u16,
    config: ConfigFile,
}

/// The first line of every config an `Agent` runs on: its own port.
fn listen_line(port: u16) -> String {
    format!("listen: \"127.0.0.1:{port}\"\n")
}

impl Agent {
    /// Starts the agent on `probes_yaml` (the `probes:` mapping and any
    /// other top-level keys; `listen` is added) and waits until /healthz
    /// says every probe is attached or reported failed.
    pub fn start(yaml: &str, extra_args: &[&str]) -> Agent {
        Agent::spawn(yaml, extra_args).ready()
    }

    /// Like `start`, with the agent's RLIMIT_NOFILE (soft and hard) at
    /// `nofile`, as a service manager would set it.
    pub fn start_with_nofile(yaml: &str, extra_args: &[&str], nofile: u64) -> Agent {
        use std::os::unix::process::CommandExt;
        let mut command = Command::new(sonde_bin());
        let limit = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Agent::spawn_with(yaml, extra_args, command).ready()
    }

    /// Like `start`, running `command` (a `sonde` command prepared to run
    /// as another user, say) with the agent's arguments added.
    pub fn start_with(yaml: &str, extra_args: &[&str], command: Command) -> Agent {
        Agent::spawn_with(yaml, extra_args, command).ready()
    }

    /// Waits until /healthz says every probe is attached or reported failed.
    fn ready(self) -> Agent {
        let mut agent = self;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = agent.get("/healthz") {
                return agent;
            }
            if let Some(status) = agent.exit_status() {
                panic!("sonde exited during start-up: {status}");
            }
            assert!(Instant::now() < deadline, "sonde did not become ready within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the agent like `start`, without waiting for it to be ready.
    pub fn spawn(yaml: &str, extra_args: &[&str]) -> Agent {
        Agent::spawn_with(yaml, extra_args, Command::new(sonde_bin()))
    }

    fn spawn_with(yaml: &str, extra_args: &[&str], mut command: Command) -> Agent {
        let port = free_port();
        let config = ConfigFile::new(&format!("{}{yaml}", listen_line(port)));
        let child = command
            .arg("run")
            .arg("--config")
            .arg(&config.path)
            .args(extra_args)
            .env("SONDE_LOG_LEVEL", std::env::var("SONDE_LOG_LEVEL").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sonde");
        Agent { child: Some(child), port, config }
    }

    /// The config file the agent was started with (and re-reads on reload).
    pub fn config_path(&self) -> &Path {
        &self.config.path
    }

    /// Rewrites the agent's config file to `yaml` (the same form as for
    /// `start`), keeping its `listen` line, for the next reload.
    pub fn rewrite_config(&self, yaml: &str) {
        self.config.write(&format!("{}{yaml}", listen_line(self.port)));
    }

    /// The exit status if the agent has exited, without waiting.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child_mut().try_wait().expect("try_wait")
    }

    /// Waits up to `within` until the agent's main thread catches or blocks
    /// SIGTERM (`/proc/PID/status`), the earliest moment it can be expected
    /// to shut down cleanly on one.
    pub fn wait_sigterm_handled(&mut self, within: Duration) -> Result<(), String> {
        let status_path = format!("/proc/{}/status", self.pid());
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(format!("sonde exited ({status}) before handling SIGTERM"));
            }
            let status = std::fs::read_to_string(&status_path).unwrap_or_default();
            if signal_in_mask(&status, "SigCgt:", libc::SIGTERM) || signal_in_mask(&status, "SigBlk:", libc::SIGTERM) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("sonde neither caught nor blocked SIGTERM within {within:?}"));
            }
            std::thread::yield_now();
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("agent is running")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("agent is running")
    }

    /// `GET path` → (status, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        self.request("GET", path)
    }

    /// `POST path` with an empty body → (status, body).
    pub fn post(&self, path: &str) -> std::io::Result<(u16, String)> {
        self.request("POST", path)
    }

    fn request(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Ok((status, body))
    }

    pub fn scrape(&self) -> Metrics {
        let (status, body) = self.get("/metrics").expect("GET /metrics");
        assert_eq!(status, 200, "GET /metrics: {body}");
        Metrics::parse(&body)
    }

    /// Waits until `read` on a scrape reaches `want` (events arrive in
    /// batches), then scrapes again after two poll intervals to catch any
    /// excess, and returns that final value.
    pub fn settle(&self, want: f64, read: impl Fn(&Metrics) -> f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(15);
        while read(&self.scrape()) < want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        read(&self.scrape())
    }

    /// Scrapes every 50 ms until `holds` on a scrape, up to `within`;
    /// returns that scrape, or says `what` did not happen.
    pub fn wait_for(&self, what: &str, within: Duration, holds: impl Fn(&Metrics) -> bool) -> Result<Metrics, String> {
        let deadline = Instant::now() + within;
        loop {
            let metrics = self.scrape();
            if holds(&metrics) {
                return Ok(metrics);
            }
            if Instant::now() > deadline {
                return Err(format!("{what}: not within {within:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "kill({signal})");
    }

    /// SIGTERM, then waits up to `within` for the exit status.
    pub fn terminate(mut self, within: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("agent is running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return (status, started.elapsed());
            }
            if started.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!("sonde did not exit within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether the `/proc/PID/status` line starting with `field` (a hex
/// signal mask) has `signal` in it.
fn signal_in_mask(status: &str, field: &str, signal: i32) -> bool {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

pub type Labels = Vec<(String, String)>;

/// A parsed Prometheus text exposition.
pub struct Metrics {
    samples: Vec<(String, Labels, f64)>,
}

impl Metrics {
    /// Parses a scrape; panics with the offending line on anything an
    /// exposition must not contain, a repeated series above all.
    pub fn parse(text: &str) -> Metrics {
        Metrics::try_parse(text).unwrap_or_else(|why| panic!("/metrics: {why}"))
    }

    /// Parses a scrape, refusing malformed lines and any series (name and
    /// label set, in any order) that appears twice.
    pub fn try_parse(text: &str) -> Result<Metrics, String> {
        let mut samples = Vec::new();
        let mut seen = HashSet::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let (name, labels, value) = parse_sample(line).map_err(|why| format!("{why} in line {line:?}"))?;
            let mut identity = labels.clone();
            identity.sort();
            if !seen.insert((name.clone(), identity)) {
                return Err(format!("duplicate series {line:?}"));
            }
            samples.push((name, labels, value));
        }
        Ok(Metrics { samples })
    }

    /// The value of the one series `name` whose labels include `labels`;
    /// 0 when there is none (a counter not yet created).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The value of the one series `name` whose labels include `labels`,
    /// if there is one.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
            .map(|(_, _, v)| *v)
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?} matches {} series", matching.len());
        matching.first().copied()
    }

    /// Every series of `name`, as (labels, value).
    pub fn series(&self, name: &str) -> Vec<(Labels, f64)> {
        self.samples.iter().filter(|(n, _, _)| n == name).map(|(_, l, v)| (l.clone(), *v)).collect()
    }
}

/// `name{labels} value [timestamp]` or `name value [timestamp]`.
fn parse_sample(line: &str) -> Result<(String, Labels, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let (name, mut rest) = line.split_at(name_end);
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = Vec::new();
    if let Some(inside) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inside)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value: f64 = value.parse().map_err(|_| format!("bad value {value:?}"))?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().map_err(|_| format!("bad timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok((name.to_string(), labels, value))
}

/// `key="value",...}` (a trailing comma allowed) → the labels, with values
/// unescaped, and the text after the `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels: Labels = Vec::new();
    loop {
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (key, after) = s.split_once("=\"").ok_or("label without =\"")?;
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {key:?}"));
        }
        if labels.iter().any(|(k, _)| k == key) {
            return Err(format!("label {key:?} twice"));
        }
        let (value, after) = unescape_label_value(after)?;
        labels.push((key.to_string(), value));
        s = match after.strip_prefix(',') {
            Some(next) => next,
            None if after.starts_with('}') => after,
            None => return Err(format!("expected , or }} after label {key:?}")),
        };
    }
}

/// A label value up to its closing quote, with `\\`, `\"` and `\n`
/// unescaped (the only escapes the text format has), and the text after the
/// quote.
fn unescape_label_value(s: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &s[i + 1..])),
            '\\' => match chars.next().map(|(_, e)| e) {
                Some('\\') => value.push('\\'),
                Some('"') => value.push('"'),
                Some('n') => value.push('\n'),
                other => return Err(format!("bad escape \\{other:?} in a label value")),
            },
            c => value.push(c),
        }
    }
    Err("unterminated label value".into())
}
