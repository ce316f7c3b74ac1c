//! Debian's Prometheus scraping sonde every second, over plain HTTP and
//! over TLS with basic authentication: the series of a known workload come
//! back from its query API with exact values, and `promtool check metrics`
//! finds nothing to say about sonde's exposition.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libtest_mimic::{Failed, Trial};

use crate::agent::{free_port, Agent, ConfigFile, Metrics};
use crate::pki::{plain_get, Pki, TlsClient};
use crate::workload::{unique_comm, NamedBinary};

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("prometheus_scrapes_exact_counts_over_http", over_http),
        Trial::test("prometheus_scrapes_exact_counts_over_tls_with_basic_auth", over_tls),
    ]
}

const PROBES: &str = "probes:\n  exec: {}\n";
const EXECS: usize = 7;
const USER: &str = "prometheus";
const PASSWORD: &str = "scrape me";

fn expect(cond: bool, what: impl Into<String>) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

fn over_http() -> Result<(), Failed> {
    let tools = Tools::fetch()?;
    let agent = Agent::start(PROBES, &[]);
    let (status, exposition) = plain_get(agent.port, "/metrics", None)?;
    expect(status == 200, format!("GET /metrics: {status}"))?;
    tools.promtool_check_metrics(&exposition)?;

    let scrape = format!("static_configs:\n      - targets: ['127.0.0.1:{}']\n", agent.port);
    let prometheus = Prometheus::start(&tools, &scrape)?;
    let comm = unique_comm("prom");
    NamedBinary::new(&comm).run(EXECS, &["exit", "0"]);
    let counted = agent.settle(EXECS as f64, |m| m.value("sonde_exec_total", &[("comm", &comm)]));
    expect(counted == EXECS as f64, format!("sonde counted {counted} execs of {comm}, want {EXECS}"))?;
    prometheus.expect_two_scrapes_of(&comm, EXECS as f64)
}

fn over_tls() -> Result<(), Failed> {
    let tools = Tools::fetch()?;
    let pki = Pki::new();
    let hash = bcrypt::hash(PASSWORD, 10)?;
    let web = ConfigFile::new(&pki.web_config(&format!("basic_auth_users:\n  {USER}: {hash}\n")));
    let client = TlsClient::new(&pki, None);
    let web_path = web.path.to_str().ok_or("temp path is not UTF-8")?;
    let mut agent = Agent::spawn(PROBES, &["--web.config.file", web_path]);
    let auth = Some((USER, PASSWORD));
    let scrape_sonde = |port| -> Result<Metrics, Failed> {
        let (status, body) = client.get(port, "/metrics", auth)?;
        expect(status == 200, format!("GET /metrics over TLS: {status}: {body}"))?;
        Ok(Metrics::try_parse(&body)?)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(client.get(agent.port, "/healthz", None), Ok((200, _))) {
        if let Some(status) = agent.exit_status() {
            return Err(format!("sonde exited during start-up: {status}").into());
        }
        expect(Instant::now() < deadline, "sonde did not become ready within 30 s")?;
        std::thread::sleep(Duration::from_millis(50));
    }

    let scrape = format!(
        "scheme: https\n    tls_config:\n      ca_file: {}\n    basic_auth:\n      username: {USER}\n      \
         password: '{PASSWORD}'\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
        pki.path("ca.pem").display(),
        agent.port
    );
    let prometheus = Prometheus::start(&tools, &scrape)?;
    let comm = unique_comm("promtls");
    NamedBinary::new(&comm).run(EXECS, &["exit", "0"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let counted = scrape_sonde(agent.port)?.value("sonde_exec_total", &[("comm", &comm)]);
        if counted >= EXECS as f64 {
            expect(counted == EXECS as f64, format!("sonde counted {counted} execs of {comm}, want {EXECS}"))?;
            break;
        }
        expect(Instant::now() < deadline, format!("sonde counted {counted} execs of {comm}, want {EXECS}"))?;
        std::thread::sleep(Duration::from_millis(50));
    }
    prometheus.expect_two_scrapes_of(&comm, EXECS as f64)
}

/// Debian's prometheus package, unpacked (not installed: installing it
/// would start a server) into a cache directory kept between runs.
struct Tools {
    bin: PathBuf,
}

impl Tools {
    fn fetch() -> Result<Tools, Failed> {
        let root = crate::packages::unpacked(&["prometheus"])?;
        Ok(Tools { bin: root.join("usr/bin") })
    }

    /// `promtool check metrics` on an exposition: it must exit 0 and say
    /// nothing (it lists every lint it finds).
    fn promtool_check_metrics(&self, exposition: &str) -> Result<(), Failed> {
        let mut child = Command::new(self.bin.join("promtool"))
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().ok_or("promtool's stdin")?.write_all(exposition.as_bytes())?;
        let output = child.wait_with_output()?;
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        expect(output.status.success() && said.trim().is_empty(), format!("promtool check metrics: {said}"))
    }
}

/// A Prometheus server on a port of its own, scraping one job `sonde`
/// every second; killed and its data removed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    /// `scrape` is the job's settings after `job_name`, indented four spaces.
    fn start(tools: &Tools, scrape: &str) -> Result<Prometheus, Failed> {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sonde-test-{}-prometheus{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: sonde\n    {scrape}"
        );
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let port = free_port();
        let child = Command::new(tools.bin.join("prometheus"))
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log"))?)
            .spawn()
            .map_err(|e| format!("INFRA: starting prometheus: {e}"))?;
        let mut prometheus = Prometheus { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(plain_get(port, "/-/ready", None), Ok((200, _))) {
            if let Some(status) = prometheus.child.try_wait()? {
                return Err(format!("prometheus exited ({status}): {}", prometheus.log()).into());
            }
            expect(Instant::now() < deadline, format!("prometheus not ready within 30 s: {}", prometheus.log()))?;
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(prometheus)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/query?query=QUERY` → the `data.result` array.
    fn query(&self, query: &str) -> Result<Vec<serde_json::Value>, Failed> {
        let (status, body) = plain_get(self.port, &format!("/api/v1/query?query={}", percent_encode(query)), None)?;
        expect(status == 200, format!("query {query}: status {status}: {body}"))?;
        let answer: serde_json::Value = serde_json::from_str(&body)?;
        let result = answer["data"]["result"].as_array().ok_or_else(|| format!("query {query}: {body}"))?;
        Ok(result.clone())
    }

    /// Waits until Prometheus holds at least two samples of
    /// `sonde_exec_total{comm}` scraped from now on, and checks that each is
    /// exactly `want` and that the target is up.
    fn expect_two_scrapes_of(&self, comm: &str, want: f64) -> Result<(), Failed> {
        let since = unix_now();
        let selector = format!("sonde_exec_total{{job=\"sonde\",comm=\"{comm}\"}}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let samples = self.samples_since(&format!("{selector}[1m]"), since)?;
            if samples.len() >= 2 {
                let wrong: Vec<&f64> = samples.iter().filter(|v| **v != want).collect();
                expect(wrong.is_empty(), format!("Prometheus stored {selector} = {samples:?}, want {want} each"))?;
                break;
            }
            if Instant::now() > deadline {
                let targets = plain_get(self.port, "/api/v1/targets", None).map(|(_, b)| b).unwrap_or_default();
                return Err(format!(
                    "Prometheus holds {} sample(s) of {selector} after 30 s; targets: {targets}; log: {}",
                    samples.len(),
                    self.log()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let up = self.query("up{job=\"sonde\"}")?;
        let value = up.first().and_then(|series| series["value"][1].as_str()).unwrap_or("none");
        expect(up.len() == 1 && value == "1", format!("up{{job=\"sonde\"}}: {up:?}"))
    }

    /// The values of a range query's one series, from samples taken after
    /// `since` (Unix seconds).
    fn samples_since(&self, range: &str, since: f64) -> Result<Vec<f64>, Failed> {
        let result = self.query(range)?;
        expect(result.len() <= 1, format!("{range} matches {} series: {result:?}", result.len()))?;
        let Some(series) = result.first() else { return Ok(Vec::new()) };
        let values = series["values"].as_array().ok_or_else(|| format!("{range}: {series}"))?;
        let mut samples = Vec::new();
        for pair in values {
            let time = pair[0].as_f64().ok_or_else(|| format!("{range}: sample {pair}"))?;
            let value: f64 = pair[1].as_str().and_then(|v| v.parse().ok()).ok_or_else(|| format!("{range}: {pair}"))?;
            if time > since {
                samples.push(value);
            }
        }
        Ok(samples)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Percent-encodes all but the unreserved characters of RFC 3986.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
