//! Certificates made for one test (a CA, a server certificate for
//! 127.0.0.1 and localhost, client certificates), and an HTTPS client
//! with or without a client certificate.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

/// A directory with a CA (`ca.pem`), a server certificate signed by it
/// (`server.pem`, `server-key.pem`) and a client certificate signed by it
/// (`client.pem`, `client-key.pem`); removed when dropped.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sonde-test-{}-pki{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create pki dir");
        let pki = Pki { dir };

        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.distinguished_name.push(DnType::CommonName, "sonde test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        pki.write("ca.pem", &ca.pem());

        let leaf = |names: Vec<String>, purpose: ExtendedKeyUsagePurpose, file: &str| {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("params");
            params.distinguished_name.push(DnType::CommonName, file);
            params.extended_key_usages = vec![purpose];
            let cert = params.signed_by(&key, &ca, &ca_key).expect("sign");
            pki.write(&format!("{file}.pem"), &cert.pem());
            pki.write(&format!("{file}-key.pem"), &key.serialize_pem());
        };
        leaf(vec!["127.0.0.1".into(), "localhost".into()], ExtendedKeyUsagePurpose::ServerAuth, "server");
        leaf(vec!["scraper".into()], ExtendedKeyUsagePurpose::ClientAuth, "client");

        // A client certificate from a CA the server does not know.
        let stranger_key = KeyPair::generate().expect("key");
        let mut stranger = CertificateParams::new(vec!["stranger".to_string()]).expect("params");
        stranger.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let stranger = stranger.self_signed(&stranger_key).expect("self-signed");
        pki.write("stranger.pem", &stranger.pem());
        pki.write("stranger-key.pem", &stranger_key.serialize_pem());
        pki
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write pki file");
        path
    }

    /// A web config serving TLS with the server certificate, then `more`.
    pub fn web_config(&self, more: &str) -> String {
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n{more}",
            self.path("server.pem").display(),
            self.path("server-key.pem").display()
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTPS client trusting the test CA, presenting the client
/// certificate `client` (`"client"`, `"stranger"`) if given.
pub struct TlsClient {
    config: Arc<ClientConfig>,
}

impl TlsClient {
    pub fn new(pki: &Pki, client: Option<&str>) -> TlsClient {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(pki.path("ca.pem")).expect("read ca.pem") {
            roots.add(cert.expect("CA certificate")).expect("add CA");
        }
        let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let chain = CertificateDer::pem_file_iter(pki.path(&format!("{name}.pem")))
                    .expect("read client certificate")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client certificate");
                let key = PrivateKeyDer::from_pem_file(pki.path(&format!("{name}-key.pem"))).expect("client key");
                builder.with_client_auth_cert(chain, key).expect("client certificate and key")
            }
        };
        TlsClient { config: Arc::new(config) }
    }

    /// `GET path` over HTTPS to 127.0.0.1:port, with basic authentication
    /// `user:password` if given → (status, body).
    pub fn get(&self, port: u16, path: &str, auth: Option<(&str, &str)>) -> std::io::Result<(u16, String)> {
        let name = ServerName::try_from("127.0.0.1").expect("server name");
        let conn = rustls::ClientConnection::new(self.config.clone(), name).map_err(std::io::Error::other)?;
        let tcp = TcpStream::connect(("127.0.0.1", port))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        write!(tls, "{}", request_head(path, auth))?;
        let mut response = Vec::new();
        match tls.read_to_end(&mut response) {
            Ok(_) => {}
            // The agent closes without TLS's close_notify once it has
            // answered `Connection: close`; the answer is whole.
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof && !response.is_empty() => {}
            Err(err) => return Err(err),
        }
        Ok(parse_response(&response))
    }
}

/// A `GET` head asking to close the connection after the answer.
pub fn request_head(path: &str, auth: Option<(&str, &str)>) -> String {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some((user, password)) = auth {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        head.push_str(&format!("Authorization: Basic {encoded}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// `GET path` over plain HTTP → (status, body).
pub fn plain_get(port: u16, path: &str, auth: Option<(&str, &str)>) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(request_head(path, auth).as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(parse_response(&response))
}

fn parse_response(response: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(response);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}
