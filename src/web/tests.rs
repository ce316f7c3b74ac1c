use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use super::file::{parse, Fault};
use super::*;

const DIR: &str = "/etc/sonde";

fn parsed(text: &str) -> WebFile {
    parse(text, Path::new(DIR)).unwrap_or_else(|fault| panic!("{text}: {fault:?}"))
}

fn fault(text: &str) -> Fault {
    match parse(text, Path::new(DIR)) {
        Ok(file) => panic!("accepted {text:?}: {file:?}"),
        Err(fault) => fault,
    }
}

/// Asserts `text` is refused at `line:column` with a message containing
/// each of `words`.
fn refused_at(text: &str, line: usize, column: usize, words: &[&str]) {
    let fault = fault(text);
    assert_eq!(fault.location, Some((line, column)), "{text:?}: {fault:?}");
    for word in words {
        assert!(fault.message.contains(word), "{text:?}: {:?} lacks {word:?}", fault.message);
    }
}

fn refused(text: &str, words: &[&str]) {
    let fault = fault(text);
    for word in words {
        assert!(fault.message.contains(word), "{text:?}: {:?} lacks {word:?}", fault.message);
    }
}

fn hash(password: &str) -> String {
    bcrypt::hash(password, 4).unwrap()
}

#[test]
fn the_example_in_the_docs_parses() {
    let doc = include_str!("../../docs/config.md");
    let blocks: Vec<&str> =
        doc.split("```yaml web-config\n").skip(1).map(|rest| rest.split("```").next().unwrap_or_default()).collect();
    assert_eq!(blocks.len(), 1, "docs/config.md has its web config example");
    let file = parsed(blocks[0]);
    let tls = file.tls.expect("the example has TLS");
    assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
    let hash = file.users.get("prometheus").expect("the example has a user");
    assert!(bcrypt::verify("change me", hash).unwrap(), "the example's hash is not of the password it names");
}

#[test]
fn an_empty_file_or_mapping_means_plain_http_without_authentication() {
    for text in ["", "# nothing yet\n", "{}", "---\n", "basic_auth_users:\n"] {
        assert_eq!(parsed(text), WebFile::default(), "{text:?}");
    }
}

#[test]
fn every_key_is_read_and_relative_paths_are_the_files_directory() {
    let alice = hash("pw");
    let text = format!(
        "tls_server_config:\n  cert_file: tls/cert.pem\n  key_file: /keys/key.pem\n  client_ca_file: ca.pem\n  \
         client_auth_type: RequireAndVerifyClientCert\n  min_version: TLS13\n  max_version: TLS13\n\
         basic_auth_users:\n  alice: {alice}\n"
    );
    let file = parsed(&text);
    let tls = file.tls.expect("tls");
    assert_eq!(tls.cert_file, PathBuf::from("/etc/sonde/tls/cert.pem"));
    assert_eq!(tls.key_file, PathBuf::from("/keys/key.pem"));
    assert_eq!(tls.client_ca_file, Some(PathBuf::from("/etc/sonde/ca.pem")));
    assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
    assert_eq!((tls.min_version, tls.max_version), (TlsVersion::TLS13, TlsVersion::TLS13));
    assert_eq!(file.users.get("alice"), Some(&alice));
}

#[test]
fn tls_defaults_are_no_client_certificate_and_tls_1_2_to_1_3() {
    let tls = parsed("tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n").tls.unwrap();
    assert_eq!(tls.client_auth, ClientAuth::NoClientCert);
    assert_eq!((tls.min_version, tls.max_version), (TlsVersion::TLS12, TlsVersion::TLS13));
    assert_eq!(tls.client_ca_file, None);
}

#[test]
fn every_client_auth_type_is_known_by_its_name() {
    for (name, want) in [
        ("NoClientCert", ClientAuth::NoClientCert),
        ("RequestClientCert", ClientAuth::RequestClientCert),
        ("RequireAnyClientCert", ClientAuth::RequireAnyClientCert),
        ("VerifyClientCertIfGiven", ClientAuth::VerifyClientCertIfGiven),
        ("RequireAndVerifyClientCert", ClientAuth::RequireAndVerifyClientCert),
    ] {
        let ca = if matches!(want, ClientAuth::NoClientCert) { "" } else { "  client_ca_file: ca.pem\n" };
        let text = format!("tls_server_config:\n  cert_file: c\n  key_file: k\n{ca}  client_auth_type: {name}\n");
        assert_eq!(parsed(&text).tls.unwrap().client_auth, want, "{name}");
    }
}

#[test]
fn mistakes_are_reported_at_their_line_and_column() {
    refused_at("tls_server_confg:\n  cert_file: c\n", 1, 1, &["unknown field `tls_server_confg`", "basic_auth_users"]);
    refused_at(
        "tls_server_config:\n  cert_file: c\n  key_file: k\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
        4,
        3,
        &["unknown field `cipher_suites`"],
    );
    refused_at(
        "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireClientCert\n",
        4,
        21,
        &["unknown variant `RequireClientCert`", "RequireAndVerifyClientCert"],
    );
    refused_at("tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS11\n", 4, 16, &["TLS11", "TLS12"]);
    refused_at("tls_server_config:\n  cert_file: c\n", 2, 3, &["missing field `key_file`"]);
    refused_at("basic_auth_users: [alice]\n", 1, 19, &["user names to bcrypt hashes"]);
}

#[test]
fn users_are_checked_at_their_entry() {
    let good = hash("pw");
    refused_at(
        &format!("basic_auth_users:\n  alice: {good}\n  bob: hunter2\n"),
        3,
        8,
        &["basic_auth_users.bob: not a bcrypt hash"],
    );
    refused_at(&format!("basic_auth_users:\n  \"a:b\": {good}\n"), 2, 3, &["without ':'"]);
    refused_at(&format!("basic_auth_users:\n  alice: {good}\n  alice: {good}\n"), 3, 3, &["\"alice\" is listed twice"]);
}

#[test]
fn tls_settings_that_contradict_each_other_are_refused() {
    refused(
        "tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequireAndVerifyClientCert\n",
        &["client_ca_file, which is not set"],
    );
    refused("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_ca_file: ca\n", &["NoClientCert"]);
    refused(
        "tls_server_config:\n  cert_file: c\n  key_file: k\n  min_version: TLS13\n  max_version: TLS12\n",
        &["min_version TLS13 is above max_version TLS12"],
    );
    refused("tls_server_config:\n  cert_file: \"\"\n  key_file: k\n", &["cert_file is empty"]);
}

/// A directory of its own for one test's files, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sonde-web-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A self-signed certificate and its key, as cert.pem and key.pem.
    fn certificate(&self) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        self.write("cert.pem", &cert.cert.pem());
        self.write("key.pem", &cert.key_pair.serialize_pem());
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const TLS: &str = "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n";

#[test]
fn a_valid_file_loads_its_certificate_and_users() {
    let dir = Dir::new();
    dir.certificate();
    let path = dir.write("web.yml", &format!("{TLS}basic_auth_users:\n  alice: {}\n", hash("pw")));
    let web = WebConfig::load(&path).unwrap();
    let settings = web.current();
    assert!(settings.tls().is_some());
    let auth = settings.auth().expect("users");
    assert!(auth.verify(&Credentials { user: "alice".into(), password: b"pw".to_vec() }));
}

#[test]
fn errors_at_start_name_the_file_and_what_is_wrong() {
    let dir = Dir::new();
    let missing = dir.0.join("nope.yml");
    let err = WebConfig::load(&missing).err().expect("refused").to_string();
    assert!(err.starts_with(&format!("{}: cannot read web config", missing.display())), "{err}");

    let path = dir.write("web.yml", TLS);
    let err = WebConfig::load(&path).err().expect("refused").to_string();
    let cert = dir.0.join("cert.pem");
    assert!(err.starts_with(&format!("{}: tls_server_config.cert_file: {}", path.display(), cert.display())), "{err}");

    dir.certificate();
    dir.write("key.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    let err = WebConfig::load(&path).err().expect("refused").to_string();
    assert!(err.contains("tls_server_config.key_file") && err.contains("no usable private key"), "{err}");

    let path = dir.write("bad.yml", "basic_auth_users:\n  alice: plain\n");
    let err = WebConfig::load(&path).err().expect("refused").to_string();
    assert!(err.starts_with(&format!("{}:2:10: basic_auth_users.alice: not a bcrypt hash", path.display())), "{err}");
}

#[test]
fn a_changed_file_takes_effect_and_a_bad_one_keeps_the_last_good() {
    let dir = Dir::new();
    dir.certificate();
    let path = dir.write("web.yml", "{}\n");
    let web = WebConfig::load(&path).unwrap();
    assert!(web.current().tls().is_none() && web.current().auth().is_none());

    dir.write("web.yml", &format!("basic_auth_users:\n  alice: {}\n", hash("pw")));
    assert!(web.current().auth().is_some(), "users added");

    for bad in [
        "basic_auth_users:\n  alice: plain\n",
        "",
        "tls_server_config:\n  cert_file: missing.pem\n  key_file: key.pem\n",
    ] {
        dir.write("web.yml", bad);
        let settings = web.current();
        assert!(settings.auth().is_some() && settings.tls().is_none(), "{bad:?} replaced the last good config");
    }

    // The bad version names a missing certificate: providing it fixes it.
    std::fs::copy(dir.0.join("cert.pem"), dir.0.join("missing.pem")).unwrap();
    let settings = web.current();
    assert!(settings.tls().is_some() && settings.auth().is_none(), "fixing the named file did not take effect");
}

#[test]
fn an_unchanged_file_keeps_its_settings_and_their_memory() {
    let dir = Dir::new();
    let path = dir.write("web.yml", &format!("basic_auth_users:\n  alice: {}\n", hash("pw")));
    let web = WebConfig::load(&path).unwrap();
    let first = web.current();
    assert!(Arc::ptr_eq(&first, &web.current()), "an unchanged file was re-read");
}
