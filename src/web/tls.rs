//! The TLS server side of a web config: certificates read from their files
//! into a rustls configuration.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};

use super::file::{ClientAuth, TlsFile, TlsVersion};

/// Why a TLS setting could not be used: the key at fault and the message.
#[derive(Debug)]
pub struct TlsFault {
    pub key: &'static str,
    pub message: String,
}

fn fault(key: &'static str, path: &Path, what: impl std::fmt::Display) -> TlsFault {
    TlsFault { key, message: format!("{}: {what}", path.display()) }
}

/// Reads the certificates and key and builds the server's configuration.
pub fn server_config(tls: &TlsFile) -> Result<Arc<ServerConfig>, TlsFault> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&tls.cert_file, "cert_file")?;
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|err| fault("key_file", &tls.key_file, format!("no usable private key: {err}")))?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(TlsVersion::TLS12, &rustls::version::TLS12), (TlsVersion::TLS13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(version, _)| (tls.min_version..=tls.max_version).contains(version))
            .map(|(_, supported)| supported)
            .collect();
    let verifier = client_verifier(tls, &provider)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|err| TlsFault { key: "min_version", message: err.to_string() })?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|err| TlsFault {
            key: "key_file",
            message: format!(
                "{} and {} do not make a usable certificate and key: {err}",
                tls.cert_file.display(),
                tls.key_file.display()
            ),
        })?;
    // The endpoint speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn certificates(path: &Path, key: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsFault> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|err| fault(key, path, err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| fault(key, path, err))?;
    if chain.is_empty() {
        return Err(fault(key, path, "no PEM certificate in it"));
    }
    Ok(chain)
}

fn client_verifier(tls: &TlsFile, provider: &Arc<CryptoProvider>) -> Result<Arc<dyn ClientCertVerifier>, TlsFault> {
    let algorithms = provider.signature_verification_algorithms;
    let verifying = |optional: bool| -> Result<Arc<dyn ClientCertVerifier>, TlsFault> {
        // `file::parse` refuses the verifying modes without a CA.
        let Some(ca_file) = &tls.client_ca_file else {
            return Err(TlsFault { key: "client_ca_file", message: "not set".into() });
        };
        let mut roots = RootCertStore::empty();
        for cert in certificates(ca_file, "client_ca_file")? {
            roots.add(cert).map_err(|err| fault("client_ca_file", ca_file, err))?;
        }
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        let builder = if optional { builder.allow_unauthenticated() } else { builder };
        builder.build().map_err(|err| fault("client_ca_file", ca_file, err))
    };
    match tls.client_auth {
        ClientAuth::NoClientCert => Ok(WebPkiClientVerifier::no_client_auth()),
        ClientAuth::RequestClientCert => Ok(Arc::new(Unverified { mandatory: false, algorithms })),
        ClientAuth::RequireAnyClientCert => Ok(Arc::new(Unverified { mandatory: true, algorithms })),
        ClientAuth::VerifyClientCertIfGiven => verifying(true),
        ClientAuth::RequireAndVerifyClientCert => verifying(false),
    }
}

/// Asks for a client certificate and accepts any, for RequestClientCert
/// and RequireAnyClientCert: the client must still prove it holds the
/// certificate's key, but who signed the certificate is not checked.
#[derive(Debug)]
struct Unverified {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for Unverified {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
