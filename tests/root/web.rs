//! The endpoint's security, with the real agent and real sockets: TLS,
//! client certificates, basic authentication, a web config changed while
//! running, and a bad one at start.

use std::time::{Duration, Instant};

use libtest_mimic::{Failed, Trial};

use crate::agent::{sonde_bin, Agent, ConfigFile, Metrics};
use crate::pki::{plain_get, Pki, TlsClient};

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("web_tls_scrape_and_basic_auth", tls_and_basic_auth),
        Trial::test("web_client_certificate_required_and_verified", client_certificates),
        Trial::test("web_config_change_takes_effect_without_restart", change_without_restart),
        Trial::test("web_bad_config_at_start_exits_2_before_loading_probes", bad_config_at_start),
    ]
}

const PROBES: &str = "probes:\n  exec: {}\n";
const USER: &str = "prometheus";
const PASSWORD: &str = "correct horse";

fn expect(cond: bool, what: impl Into<String>) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(what.into().into())
    }
}

fn users() -> String {
    let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
    format!("basic_auth_users:\n  {USER}: {hash}\n")
}

/// Starts the agent with `--web.config.file web`, and waits until `healthy`
/// says it answers.
fn start(web: &ConfigFile, healthy: impl Fn(u16) -> bool) -> Result<Agent, Failed> {
    let web = web.path.to_str().expect("UTF-8 temp path");
    let mut agent = Agent::spawn(PROBES, &["--web.config.file", web]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !healthy(agent.port) {
        if let Some(status) = agent.exit_status() {
            return Err(format!("sonde exited during start-up: {status}").into());
        }
        expect(Instant::now() < deadline, "sonde did not become ready within 30 s")?;
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(agent)
}

fn expect_metrics(what: &str, answer: std::io::Result<(u16, String)>) -> Result<(), Failed> {
    let (status, body) = answer.map_err(|err| format!("{what}: {err}"))?;
    expect(status == 200, format!("{what}: status {status}: {body}"))?;
    let metrics = Metrics::try_parse(&body).map_err(|why| format!("{what}: {why}"))?;
    let up = metrics.value("sonde_probe_up", &[("probe", "exec")]);
    expect(up == 1.0, format!("{what}: sonde_probe_up{{probe=\"exec\"}} is {up}"))
}

fn expect_status(what: &str, answer: std::io::Result<(u16, String)>, want: u16) -> Result<(), Failed> {
    let (status, body) = answer.map_err(|err| format!("{what}: {err}"))?;
    expect(status == want, format!("{what}: status {status}, want {want}: {body}"))
}

/// TLS with basic auth: the right password scrapes, none or a wrong one is
/// refused with 401, /healthz answers without one, plain HTTP gets nothing.
fn tls_and_basic_auth() -> Result<(), Failed> {
    let pki = Pki::new();
    let web = ConfigFile::new(&pki.web_config(&users()));
    let client = TlsClient::new(&pki, None);
    let agent = start(&web, |port| matches!(client.get(port, "/healthz", None), Ok((200, _))))?;
    let port = agent.port;
    expect_metrics("right password", client.get(port, "/metrics", Some((USER, PASSWORD))))?;
    expect_status("no password", client.get(port, "/metrics", None), 401)?;
    expect_status("wrong password", client.get(port, "/metrics", Some((USER, "wrong"))), 401)?;
    expect_status("unknown user", client.get(port, "/metrics", Some(("nobody", PASSWORD))), 401)?;
    expect_status("/healthz", client.get(port, "/healthz", None), 200)?;
    // Remembered credentials answer as before.
    expect_metrics("right password again", client.get(port, "/metrics", Some((USER, PASSWORD))))?;
    let plain = plain_get(port, "/metrics", Some((USER, PASSWORD)));
    expect(!matches!(plain, Ok((200, _))), format!("plain HTTP on the TLS port was answered: {plain:?}"))
}

/// RequireAndVerifyClientCert: no certificate, or one from another CA, is
/// refused; one signed by the client CA scrapes.
fn client_certificates() -> Result<(), Failed> {
    let pki = Pki::new();
    let more =
        format!("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n", pki.path("ca.pem").display());
    let web = ConfigFile::new(&pki.web_config(&more));
    let with_cert = TlsClient::new(&pki, Some("client"));
    let agent = start(&web, |port| matches!(with_cert.get(port, "/healthz", None), Ok((200, _))))?;
    expect_metrics("a client certificate signed by the CA", with_cert.get(agent.port, "/metrics", None))?;
    for (what, client) in [
        ("no client certificate", TlsClient::new(&pki, None)),
        ("a stranger's", TlsClient::new(&pki, Some("stranger"))),
    ] {
        let answer = client.get(agent.port, "/metrics", None);
        expect(answer.is_err() || answer.as_ref().is_ok_and(|(s, _)| *s == 0), format!("{what}: answered {answer:?}"))?;
        let health = client.get(agent.port, "/healthz", None);
        expect(health.is_err(), format!("{what}: /healthz answered {health:?}"))?;
    }
    Ok(())
}

/// Plain HTTP at start; users added to the file take effect without a
/// restart; a bad version keeps them; TLS added takes effect on new
/// connections.
fn change_without_restart() -> Result<(), Failed> {
    let pki = Pki::new();
    let web = ConfigFile::new("{}\n");
    let agent = start(&web, |port| matches!(plain_get(port, "/healthz", None), Ok((200, _))))?;
    let port = agent.port;
    expect_metrics("plain, no users", plain_get(port, "/metrics", None))?;

    web.write(&users());
    expect_status("users added", plain_get(port, "/metrics", None), 401)?;
    expect_metrics("users added, right password", plain_get(port, "/metrics", Some((USER, PASSWORD))))?;

    web.write("basic_auth_users:\n  prometheus: not-a-hash\n");
    expect_status("bad version", plain_get(port, "/metrics", None), 401)?;
    expect_metrics("bad version, right password", plain_get(port, "/metrics", Some((USER, PASSWORD))))?;

    web.write(&pki.web_config(""));
    let client = TlsClient::new(&pki, None);
    expect_metrics("TLS added", client.get(port, "/metrics", None))?;
    let plain = plain_get(port, "/metrics", None);
    expect(!matches!(plain, Ok((200, _))), format!("plain HTTP answered after TLS was added: {plain:?}"))
}

/// A web config that does not parse: exit status 2, the file and line
/// named, no probe loaded.
fn bad_config_at_start() -> Result<(), Failed> {
    let web = ConfigFile::new("basic_auth_users:\n  prometheus: hunter2\n");
    let config = ConfigFile::new(PROBES);
    let output = std::process::Command::new(sonde_bin())
        .args(["run", "--config"])
        .arg(&config.path)
        .arg("--web.config.file")
        .arg(&web.path)
        .env("SONDE_LOG_LEVEL", "info")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    expect(output.status.code() == Some(2), format!("exit status {:?}: {stderr}", output.status))?;
    let named = format!("{}:2:15: basic_auth_users.prometheus: not a bcrypt hash", web.path.display());
    expect(stderr.contains(&named), format!("stderr does not say {named:?}: {stderr}"))?;
    expect(!stderr.contains("probe attached"), format!("a probe was loaded: {stderr}"))
}
