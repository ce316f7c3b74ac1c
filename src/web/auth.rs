//! HTTP basic authentication against bcrypt hashes, with the credentials
//! that passed remembered: bcrypt costs tens of milliseconds of CPU by
//! design, too much to pay on every scrape.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, OnceLock, PoisonError};

use ring::digest;

/// Verified credentials remembered at most; past this the memory is
/// emptied and refills from the scrapers still in use. A handful of
/// scrapers is usual; the bound only stops the set from growing without
/// end.
pub const MAX_REMEMBERED: usize = 64;

/// The `user:password` pair of an `Authorization: Basic` header.
pub struct Credentials {
    pub user: String,
    pub password: Vec<u8>,
}

impl Credentials {
    /// From an `Authorization` header value; `None` when it is not basic
    /// authentication or not well formed.
    pub fn from_header(value: &[u8]) -> Option<Credentials> {
        let value = std::str::from_utf8(value).ok()?.trim();
        let (scheme, encoded) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = decode_base64(encoded.trim())?;
        let colon = decoded.iter().position(|&b| b == b':')?;
        let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
        Some(Credentials { user, password: decoded[colon + 1..].to_vec() })
    }
}

/// The users of a web config, and the credentials already verified.
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    verified: Mutex<HashSet<[u8; 32]>>,
    /// A hash of a made-up password at the users' cost, checked for unknown
    /// users so that a wrong user name takes as long as a wrong password
    /// and the answer's timing does not tell which users exist.
    decoy: OnceLock<String>,
}

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>) -> BasicAuth {
        BasicAuth { users, verified: Mutex::new(HashSet::new()), decoy: OnceLock::new() }
    }

    /// Whether these credentials passed before: answers at once, without
    /// bcrypt.
    pub fn known(&self, credentials: &Credentials) -> bool {
        let key = self.key(credentials);
        self.remembered().contains(&key)
    }

    /// Verifies the credentials with bcrypt (blocking: tens of
    /// milliseconds) and remembers them if they pass.
    pub fn verify(&self, credentials: &Credentials) -> bool {
        let (hash, user_exists) = match self.users.get(&credentials.user) {
            Some(hash) => (hash.as_str(), true),
            None => (self.decoy().as_str(), false),
        };
        let passed = bcrypt::verify(&credentials.password, hash).unwrap_or(false) && user_exists;
        if passed {
            let key = self.key(credentials);
            let mut remembered = self.remembered();
            if remembered.len() >= MAX_REMEMBERED {
                remembered.clear();
            }
            remembered.insert(key);
        }
        passed
    }

    fn decoy(&self) -> &String {
        self.decoy.get_or_init(|| {
            let cost =
                self.users.values().find_map(|h| h.parse::<bcrypt::HashParts>().ok()).map_or(10, |p| p.get_cost());
            bcrypt::hash(b"not a password of anyone", cost).unwrap_or_default()
        })
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashSet<[u8; 32]>> {
        // A set of digests is valid whatever a panicking holder left.
        self.verified.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A digest of user, password and the user's hash: the password itself
    /// is never kept, and a changed hash does not match what was verified
    /// against the old one.
    fn key(&self, credentials: &Credentials) -> [u8; 32] {
        let hash = self.users.get(&credentials.user).map_or("", String::as_str);
        let mut context = digest::Context::new(&digest::SHA256);
        for part in [credentials.user.as_bytes(), &credentials.password, hash.as_bytes()] {
            context.update(&(part.len() as u64).to_le_bytes());
            context.update(part);
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(context.finish().as_ref());
        key
    }
}

/// Standard base64 with padding (RFC 4648 §4), as basic authentication
/// uses; `None` on anything else.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.as_bytes();
    if bytes.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (index, chunk) in bytes.chunks(4).enumerate() {
        let last = index == bytes.len() / 4 - 1;
        let padding = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && !last) {
            return None;
        }
        let mut group = 0u32;
        for &c in &chunk[..4 - padding] {
            group = (group << 6) | sextet(c)?;
        }
        group <<= 6 * padding as u32;
        let decoded = [(group >> 16) as u8, (group >> 8) as u8, group as u8];
        out.extend_from_slice(&decoded[..3 - padding]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user_password: &str) -> Vec<u8> {
        format!("Basic {}", encode(user_password.as_bytes())).into_bytes()
    }

    /// The reverse of `decode_base64`, for tests only.
    fn encode(bytes: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let mut group = [0u8; 3];
            group[..chunk.len()].copy_from_slice(chunk);
            let n = (u32::from(group[0]) << 16) | (u32::from(group[1]) << 8) | u32::from(group[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    #[test]
    fn base64_decodes_every_padding_and_refuses_garbage() {
        for text in ["", "a", "ab", "abc", "user:pa:ss", "é:ü"] {
            assert_eq!(decode_base64(&encode(text.as_bytes())).as_deref(), Some(text.as_bytes()), "{text}");
        }
        for bad in ["YQ", "YQ=", "Y===", "YQ==YQ==", "Y!Q=", "YWJj\n"] {
            assert_eq!(decode_base64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn credentials_come_from_basic_headers_only() {
        let parsed = Credentials::from_header(&header("alice:s3:cret")).unwrap();
        assert_eq!((parsed.user.as_str(), parsed.password.as_slice()), ("alice", b"s3:cret".as_slice()));
        let lower = format!("basic {}", encode(b"bob:pw"));
        assert_eq!(Credentials::from_header(lower.as_bytes()).unwrap().user, "bob");
        assert!(Credentials::from_header(b"Bearer abc").is_none());
        assert!(Credentials::from_header(format!("Basic {}", encode(b"nocolon")).as_bytes()).is_none());
        assert!(Credentials::from_header(b"Basic !!!!").is_none());
    }

    #[test]
    fn verified_credentials_are_remembered_and_wrong_ones_are_not() {
        let hash = bcrypt::hash("right", 4).unwrap();
        let auth = BasicAuth::new(BTreeMap::from([("alice".to_string(), hash)]));
        let right = Credentials { user: "alice".into(), password: b"right".to_vec() };
        let wrong = Credentials { user: "alice".into(), password: b"wrong".to_vec() };
        let stranger = Credentials { user: "mallory".into(), password: b"right".to_vec() };
        assert!(!auth.known(&right));
        assert!(auth.verify(&right));
        assert!(auth.known(&right));
        assert!(!auth.verify(&wrong) && !auth.known(&wrong));
        assert!(!auth.verify(&stranger) && !auth.known(&stranger));
    }

    #[test]
    fn the_memory_is_bounded() {
        let hash = bcrypt::hash("pw", 4).unwrap();
        let auth = BasicAuth::new(BTreeMap::from([("alice".to_string(), hash)]));
        let right = Credentials { user: "alice".into(), password: b"pw".to_vec() };
        assert!(auth.verify(&right));
        for n in 0..MAX_REMEMBERED {
            auth.remembered().insert([n as u8; 32]);
        }
        assert!(auth.remembered().len() > MAX_REMEMBERED);
        assert!(auth.verify(&right));
        assert_eq!(auth.remembered().len(), 1);
    }
}
