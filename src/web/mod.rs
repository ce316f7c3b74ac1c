//! The endpoint's security: the web config file (`--web.config.file`) in
//! the format Prometheus exporters share — TLS with optional client
//! certificates, and HTTP basic authentication against bcrypt hashes.
//!
//! The file, and the certificate files it names, are watched by their
//! metadata: each new connection and each request looks at them (a `stat`
//! apiece) and re-reads them only when one changed. A bad new version is
//! logged and the last good one stays in force; only a bad file at start is
//! fatal.

mod auth;
mod file;
mod tls;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub use auth::{BasicAuth, Credentials, MAX_REMEMBERED};
pub use file::{ClientAuth, TlsFile, TlsVersion, WebFile};
use tokio_rustls::TlsAcceptor;

/// The largest web config file read (64 KiB): the format has two keys.
pub const MAX_WEB_CONFIG_BYTES: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("{origin}: cannot read web config: {source}")]
    Read { origin: String, source: std::io::Error },
    #[error("{origin}: cannot read web config: it is not a regular file")]
    NotAFile { origin: String },
    #[error("{origin}: web config is over the limit of {MAX_WEB_CONFIG_BYTES} bytes; not parsed")]
    TooLarge { origin: String },
    #[error("{origin}: web config is empty; sonde keeps the last good one until it is written")]
    EmptyOnReread { origin: String },
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid { origin: String, line: usize, column: usize, message: String },
    #[error("{origin}: {message}")]
    Unlocated { origin: String, message: String },
    #[error("{origin}: tls_server_config.{key}: {message}")]
    Tls { origin: String, key: &'static str, message: String },
}

/// What the endpoint enforces, from one version of the web config.
#[derive(Default)]
pub struct WebSettings {
    tls: Option<TlsAcceptor>,
    auth: Option<BasicAuth>,
}

impl WebSettings {
    /// The TLS handshake to run on new connections; `None`: plain HTTP.
    pub fn tls(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref()
    }

    /// The users to authenticate; `None`: no authentication.
    pub fn auth(&self) -> Option<&BasicAuth> {
        self.auth.as_ref()
    }

    /// Parses `text` (the file at `path`) and reads the files it names.
    /// Returns the settings, or the error and the files the text names (to
    /// watch them, since fixing one of those fixes the config).
    fn build(text: &str, path: &Path) -> Result<(WebSettings, Vec<PathBuf>), (WebConfigError, Vec<PathBuf>)> {
        let origin = path.display().to_string();
        let dir = path.parent().unwrap_or(Path::new("."));
        let parsed = file::parse(text, dir).map_err(|fault| {
            let origin = origin.clone();
            let err = match fault.location {
                Some((line, column)) => WebConfigError::Invalid { origin, line, column, message: fault.message },
                None => WebConfigError::Unlocated { origin, message: fault.message },
            };
            (err, Vec::new())
        })?;
        let files = parsed.tls.as_ref().map(TlsFile::files).unwrap_or_default();
        let tls = match &parsed.tls {
            Some(settings) => Some(tls::server_config(settings).map_err(|fault| {
                (WebConfigError::Tls { origin: origin.clone(), key: fault.key, message: fault.message }, files.clone())
            })?),
            None => None,
        };
        let auth = (!parsed.users.is_empty()).then(|| BasicAuth::new(parsed.users));
        Ok((WebSettings { tls: tls.map(TlsAcceptor::from), auth }, files))
    }
}

/// What tells a file's versions apart without reading it. Kubernetes swaps
/// mounted secrets by a symlink, which `metadata` follows to a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: meta.dev(),
        ino: meta.ino(),
        size: meta.size(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
    })
}

/// The web config in force, re-read when its file or a file it names
/// changes.
pub struct WebConfig {
    /// None: no web config file; plain HTTP, no authentication.
    path: Option<PathBuf>,
    state: Mutex<State>,
}

struct State {
    settings: Arc<WebSettings>,
    /// The files last looked at (the config first) and their stamps then.
    watched: Vec<(PathBuf, Option<Stamp>)>,
}

impl WebConfig {
    /// Plain HTTP without authentication.
    pub fn none() -> WebConfig {
        WebConfig { path: None, state: Mutex::new(State { settings: Arc::default(), watched: Vec::new() }) }
    }

    /// Reads the web config at `path`, with every file it names; an error
    /// names the file and, where it can, the line and column.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let config_stamp = stamp(path);
        let text = read(path, false)?;
        let (settings, files) = WebSettings::build(&text, path).map_err(|(err, _)| err)?;
        let watched = watch_list(path, config_stamp, &files);
        Ok(WebConfig {
            path: Some(path.to_path_buf()),
            state: Mutex::new(State { settings: Arc::new(settings), watched }),
        })
    }

    /// The settings in force, re-read first if a watched file changed.
    pub fn current(&self) -> Arc<WebSettings> {
        let mut state = self.state();
        if let Some(path) = &self.path {
            if state.watched.iter().any(|(file, seen)| stamp(file) != *seen) {
                reread(path, &mut state);
            }
        }
        state.settings.clone()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Settings and stamps are each valid whatever a panicking holder left.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn reread(path: &Path, state: &mut State) {
    let config_stamp = stamp(path);
    let built = read(path, true).map_err(|err| (err, Vec::new())).and_then(|text| WebSettings::build(&text, path));
    match built {
        Ok((settings, files)) => {
            tracing::info!(file = %path.display(), "web config re-read: the new one is in force");
            state.settings = Arc::new(settings);
            state.watched = watch_list(path, config_stamp, &files);
        }
        Err((err, files)) => {
            tracing::error!("{err}; the last good web config stays in force");
            // Watch the files of the bad version too (fixing a certificate
            // fixes it), and the good version's, which stay in use.
            let mut watched = watch_list(path, config_stamp, &files);
            for (file, seen) in &state.watched {
                if !watched.iter().any(|(f, _)| f == file) {
                    watched.push((file.clone(), stamp(file).or(*seen)));
                }
            }
            state.watched = watched;
        }
    }
}

fn watch_list(path: &Path, config_stamp: Option<Stamp>, files: &[PathBuf]) -> Vec<(PathBuf, Option<Stamp>)> {
    let mut watched = vec![(path.to_path_buf(), config_stamp)];
    watched.extend(files.iter().map(|file| (file.clone(), stamp(file))));
    watched
}

/// Reads the file as text. On a re-read, an empty file is taken for one
/// being written (truncated, not yet filled) rather than for a wish to turn
/// TLS and authentication off: that takes `{}`.
fn read(path: &Path, reread: bool) -> Result<String, WebConfigError> {
    let origin = || path.display().to_string();
    let read_error = |source| WebConfigError::Read { origin: origin(), source };
    // Checked before opening too: opening a FIFO would wait for a writer.
    if !std::fs::metadata(path).map_err(read_error)?.is_file() {
        return Err(WebConfigError::NotAFile { origin: origin() });
    }
    let file = std::fs::File::open(path).map_err(read_error)?;
    if !file.metadata().map_err(read_error)?.is_file() {
        return Err(WebConfigError::NotAFile { origin: origin() });
    }
    let mut bytes = Vec::new();
    file.take(MAX_WEB_CONFIG_BYTES + 1).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.len() as u64 > MAX_WEB_CONFIG_BYTES {
        return Err(WebConfigError::TooLarge { origin: origin() });
    }
    if reread && bytes.is_empty() {
        return Err(WebConfigError::EmptyOnReread { origin: origin() });
    }
    String::from_utf8(bytes)
        .map_err(|_| WebConfigError::Unlocated { origin: origin(), message: "not UTF-8 text".into() })
}

#[cfg(test)]
mod tests;
