//! The web config file's format: the `tls_server_config` and
//! `basic_auth_users` keys that Prometheus exporters share, parsed into
//! plain values (nothing read from the files it names yet).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// One parsed web config file. Both parts are optional: an empty file (or
/// `{}`) serves plain HTTP without authentication.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebFile {
    pub tls: Option<TlsFile>,
    /// User name → bcrypt hash; `None` or empty: no authentication.
    pub users: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFile {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
}

impl TlsFile {
    /// The files it names, to notice when one changes.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.cert_file.clone(), self.key_file.clone()];
        files.extend(self.client_ca_file.clone());
        files
    }
}

/// What the server asks of a client's certificate, in the exporters'
/// spelling (which is Go's `tls.ClientAuthType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ClientAuth {
    /// No certificate is asked for.
    NoClientCert,
    /// One is asked for; none, or any, is accepted unverified.
    RequestClientCert,
    /// One is required, and accepted unverified.
    RequireAnyClientCert,
    /// None is accepted; one that is sent must be signed by the client CA.
    VerifyClientCertIfGiven,
    /// One signed by the client CA is required.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    fn verifies(self) -> bool {
        matches!(self, ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert)
    }
}

/// The TLS versions sonde speaks; TLS 1.0 and 1.1 are not among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum TlsVersion {
    TLS12,
    TLS13,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default, deserialize_with = "users")]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    client_auth_type: Option<ClientAuth>,
    #[serde(default)]
    min_version: Option<TlsVersion>,
    #[serde(default)]
    max_version: Option<TlsVersion>,
}

/// A parse error: the message, and where in the text if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub location: Option<(usize, usize)>,
    pub message: String,
}

/// Parses the file's text. Relative paths in it are taken relative to
/// `dir`, the file's directory, so that the file and its certificates can
/// move together.
pub fn parse(text: &str, dir: &Path) -> Result<WebFile, Fault> {
    let raw: Option<RawFile> = serde_yaml::from_str(text).map_err(|err| {
        let location = err.location().map(|l| (l.line(), l.column()));
        let message = err.to_string();
        let message = match (location, message.rfind(" at line ")) {
            (Some(_), Some(at)) => message[..at].to_string(),
            _ => message,
        };
        Fault { location, message }
    })?;
    let Some(raw) = raw else { return Ok(WebFile::default()) };
    let tls = raw.tls_server_config.map(|tls| tls.resolve(dir)).transpose()?;
    Ok(WebFile { tls, users: raw.basic_auth_users })
}

fn unlocated(message: String) -> Fault {
    Fault { location: None, message }
}

impl RawTls {
    fn resolve(self, dir: &Path) -> Result<TlsFile, Fault> {
        let client_auth = self.client_auth_type.unwrap_or(ClientAuth::NoClientCert);
        match (&self.client_ca_file, client_auth) {
            (None, auth) if auth.verifies() => {
                return Err(unlocated(format!(
                    "tls_server_config: client_auth_type {auth:?} verifies client certificates against \
                     client_ca_file, which is not set"
                )))
            }
            (Some(_), ClientAuth::NoClientCert) => {
                return Err(unlocated(
                    "tls_server_config: client_ca_file is set but client_auth_type is NoClientCert (its \
                     default), so no client certificate would be checked; set client_auth_type to \
                     RequireAndVerifyClientCert or VerifyClientCertIfGiven"
                        .into(),
                ))
            }
            _ => {}
        }
        let min_version = self.min_version.unwrap_or(TlsVersion::TLS12);
        let max_version = self.max_version.unwrap_or(TlsVersion::TLS13);
        if min_version > max_version {
            return Err(unlocated(format!(
                "tls_server_config: min_version {min_version:?} is above max_version {max_version:?}"
            )));
        }
        for (key, path) in [("cert_file", &self.cert_file), ("key_file", &self.key_file)] {
            if path.as_os_str().is_empty() {
                return Err(unlocated(format!("tls_server_config: {key} is empty")));
            }
        }
        Ok(TlsFile {
            cert_file: dir.join(self.cert_file),
            key_file: dir.join(self.key_file),
            client_ca_file: self.client_ca_file.map(|p| dir.join(p)),
            client_auth,
            min_version,
            max_version,
        })
    }
}

/// `basic_auth_users`: user name → bcrypt hash. Each name and hash is
/// checked as it is read, so that a repeated user, a name no client can
/// send, or a value that is no bcrypt hash is reported at the entry.
fn users<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    struct Users;
    impl<'de> Visitor<'de> for Users {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a mapping of user names to bcrypt hashes")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(BTreeMap::new())
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut users = BTreeMap::new();
            while let Some(user) = map.next_key_seed(NewUser { users: &users })? {
                let BcryptHash(hash) = map.next_value()?;
                users.insert(user, hash);
            }
            Ok(users)
        }
    }
    d.deserialize_any(Users)
}

/// A user name not among `users` yet.
struct NewUser<'a> {
    users: &'a BTreeMap<String, String>,
}

impl<'de> DeserializeSeed<'de> for NewUser<'_> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

// Checked in the visitor, where serde_yaml still knows the value's place:
// an error returned after the value is read is reported at its mapping.
impl Visitor<'_> for NewUser<'_> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a user name")
    }

    fn visit_str<E: de::Error>(self, user: &str) -> Result<String, E> {
        if user.is_empty() || user.contains(':') {
            // Basic authentication sends `user:password`: a name with a
            // colon could never match.
            return Err(E::custom(format!("user name {user:?} must be non-empty and without ':'")));
        }
        if self.users.contains_key(user) {
            return Err(E::custom(format!("user {user:?} is listed twice")));
        }
        Ok(user.to_string())
    }
}

struct BcryptHash(String);

impl<'de> Deserialize<'de> for BcryptHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BcryptHash, D::Error> {
        d.deserialize_str(BcryptHashVisitor)
    }
}

struct BcryptHashVisitor;

impl Visitor<'_> for BcryptHashVisitor {
    type Value = BcryptHash;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a bcrypt hash")
    }

    fn visit_str<E: de::Error>(self, hash: &str) -> Result<BcryptHash, E> {
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err(E::custom(
                "not a bcrypt hash (like $2y$10$ followed by 53 characters; make one with \
                 `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)",
            ));
        }
        Ok(BcryptHash(hash.to_string()))
    }
}
