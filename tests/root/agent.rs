//! Runs the real `sonde` binary and reads its `/metrics` over HTTP.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
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
        std::fs::write(&path, yaml).expect("write config");
        ConfigFile { path }
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
    _config: ConfigFile,
}

impl Agent {
    /// Starts the agent on `probes_yaml` (the `probes:` mapping and any
    /// other top-level keys; `listen` is added) and waits until /healthz
    /// says every probe is attached or reported failed.
    pub fn start(yaml: &str, extra_args: &[&str]) -> Agent {
        Agent::spawn(yaml, extra_args, Command::new(sonde_bin()))
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
        Agent::spawn(yaml, extra_args, command)
    }

    fn spawn(yaml: &str, extra_args: &[&str], mut command: Command) -> Agent {
        let port = free_port();
        let config = ConfigFile::new(&format!("listen: \"127.0.0.1:{port}\"\n{yaml}"));
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
        let mut agent = Agent { child: Some(child), port, _config: config };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = agent.get("/healthz") {
                return agent;
            }
            if let Some(status) = agent.child_mut().try_wait().expect("try_wait") {
                panic!("sonde exited during start-up: {status}");
            }
            assert!(Instant::now() < deadline, "sonde did not become ready within 30 s");
            std::thread::sleep(Duration::from_millis(50));
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
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
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

type Labels = Vec<(String, String)>;

/// A parsed Prometheus text exposition.
pub struct Metrics {
    samples: Vec<(String, Labels, f64)>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            let (series, value) = line.rsplit_once(' ').expect("sample line has a value");
            let value: f64 = value.parse().expect("sample value is a number");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                None => (series, Vec::new()),
            };
            samples.push((name.to_string(), labels, value));
        }
        Metrics { samples }
    }

    /// The value of the one series `name` whose labels include `labels`;
    /// 0 when there is none (a counter not yet created).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v)))
            .map(|(_, _, v)| *v)
            .collect();
        assert!(matching.len() <= 1, "{name} {labels:?} matches {} series", matching.len());
        matching.first().copied().unwrap_or(0.0)
    }

    /// Every series of `name`, as (labels, value).
    pub fn series(&self, name: &str) -> Vec<(Labels, f64)> {
        self.samples.iter().filter(|(n, _, _)| n == name).map(|(_, l, v)| (l.clone(), *v)).collect()
    }
}

fn parse_labels(s: &str) -> Labels {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').to_string(), value));
        rest = &after[end..];
    }
    out
}
