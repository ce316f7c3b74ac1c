//! The HTTP endpoint: `/metrics` (or the `--web.telemetry-path`),
//! `/healthz`, `/` and `/-/reload`, over plain HTTP or TLS.
//!
//! It knows nothing of the agent: what it serves comes through [`Endpoints`].
//! Every connection is accounted for, so clients that connect and then say
//! nothing, or keep many connections open, cannot use up the descriptors
//! that scrapes need: see [`Limits`]. TLS and basic authentication come
//! from the web config ([`crate::web`]), looked at again for each new
//! connection and each request. `/healthz` answers without authentication
//! (it tells only whether the probes have started), so that the kubelet's
//! probes need no password; a TLS client certificate, when the web config
//! requires one, is required of every connection, `/healthz`'s too.

use std::convert::Infallible;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, ALLOW, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, VARY,
    WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::web::{Credentials, WebConfig, WebSettings};

/// What the HTTP endpoint serves; implemented by the agent.
pub trait Endpoints: Send + Sync + 'static {
    /// The Prometheus text exposition. Blocking: called on a blocking thread.
    fn metrics(&self) -> Result<String, String>;
    /// Whether /healthz answers 200 (else 503).
    fn ready(&self) -> bool;
    /// Re-reads the config. Blocking. Ok(summary) → 200 with it; Err(message) → 400 with the message.
    fn reload(&self) -> Result<String, String>;
}

/// Limits of the endpoint; `Default` gives the documented values.
///
/// - `header_read_timeout` (default 10 s): a request head must arrive whole
///   within this long, counted from the accept on a new connection and from
///   the first byte of the next request on a kept-alive one. A client that
///   connects and sends nothing, or sends its headers too slowly, is
///   disconnected.
/// - `idle_timeout` (default 120 s): a kept-alive connection between
///   requests is closed after this long. It is twice the longest usual
///   scrape interval (15–60 s), so a scraper reuses its connection from one
///   scrape to the next instead of reconnecting each time.
/// - `max_connections` (default 256, at least 1): connections open at once.
///   A connection beyond it closes the one that has waited the longest
///   without a request in progress; when every connection is in the middle
///   of a request, the newcomer is closed instead. Running out of file
///   descriptors while accepting (EMFILE, ENFILE) likewise closes the
///   longest-waiting connection and retries. 256 stays well under the usual
///   limit of 1024 descriptors, leaving room for the probes' own.
///
/// A request being answered is never timed out nor closed to make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            max_connections: 256,
        }
    }
}

/// Where metrics are served unless `--web.telemetry-path` says otherwise.
pub const DEFAULT_TELEMETRY_PATH: &str = "/metrics";

/// What is served where, and the security it is served with.
pub struct Site {
    telemetry_path: String,
    index: String,
    web: WebConfig,
}

#[derive(Debug, thiserror::Error)]
#[error("telemetry path {path:?}: {why}")]
pub struct SiteError {
    path: String,
    why: &'static str,
}

impl Site {
    /// Serves metrics at `telemetry_path` (an absolute path other than the
    /// endpoint's own: `/`, `/healthz`, `/-/reload`).
    pub fn new(telemetry_path: &str, web: WebConfig) -> Result<Site, SiteError> {
        let refuse = |why| Err(SiteError { path: telemetry_path.to_string(), why });
        if !telemetry_path.starts_with('/') {
            return refuse("must start with /");
        }
        if telemetry_path.contains(['?', '#', '"', '<', '>']) || telemetry_path.chars().any(char::is_whitespace) {
            return refuse("must be a plain path, without a query, fragment, quotes, angle brackets or spaces");
        }
        if Route::of(telemetry_path, DEFAULT_TELEMETRY_PATH).is_some_and(|route| route != Route::Metrics) {
            return refuse("is one of the endpoint's own paths (/, /healthz, /-/reload)");
        }
        // Relative links keep working behind a proxy that serves sonde under a prefix.
        let relative = telemetry_path.strip_prefix('/').unwrap_or(telemetry_path);
        let index = format!(
            "<!doctype html>\n<html><head><title>sonde</title></head><body>\n\
             <h1>sonde</h1><p>eBPF probes exported as Prometheus metrics.</p>\n\
             <ul><li><a href=\"{relative}\">{telemetry_path}</a></li><li><a href=\"healthz\">/healthz</a></li>\
             <li>POST /-/reload re-reads the config</li></ul>\n</body></html>\n"
        );
        Ok(Site { telemetry_path: telemetry_path.to_string(), index, web })
    }
}

impl Default for Site {
    /// `/metrics`, plain HTTP, no authentication.
    fn default() -> Site {
        match Site::new(DEFAULT_TELEMETRY_PATH, WebConfig::none()) {
            Ok(site) => site,
            Err(err) => unreachable!("the default telemetry path is valid: {err}"),
        }
    }
}

const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Requests are a line and a few headers; this bounds the memory a
/// connection can make the agent hold (hyper's minimum is 8 KiB).
const MAX_BUFFER: usize = 16 * 1024;
/// How long accepting waits for an evicted connection to release its
/// descriptor before trying again.
const EVICTION_WAIT: Duration = Duration::from_millis(100);
/// The pause before accepting again after an error that closing
/// connections cannot cure, so that a persistent error does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves until `shutdown` turns true (or its sender is dropped), then
/// finishes the requests in progress and returns.
pub async fn serve(
    listener: TcpListener,
    endpoints: Arc<dyn Endpoints>,
    limits: Limits,
    site: Arc<Site>,
    mut shutdown: watch::Receiver<bool>,
) {
    let connections = Arc::new(Connections::new(limits.max_connections));
    let mut tasks = JoinSet::new();
    // Each connection watches its own copy; the loop's is borrowed below.
    let for_connections = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Refused by dropping it: the client sees the connection
                    // close, which it would also see at a full backlog.
                    let Some(registration) = connections.admit() else {
                        tracing::warn!(
                            max_connections = limits.max_connections,
                            "every HTTP connection is answering a request; closing a new one"
                        );
                        continue;
                    };
                    let conn = serve_connection(
                        stream,
                        registration,
                        endpoints.clone(),
                        limits,
                        site.clone(),
                        for_connections.clone(),
                    );
                    tasks.spawn(conn);
                }
                Err(err) => recover_from_accept_error(&err, &connections).await,
            },
            // Reaps finished connections so that the set stays bounded.
            Some(ended) = tasks.join_next() => {
                if let Err(err) = ended {
                    tracing::warn!(error = %err, "an HTTP connection task failed");
                }
            }
            _ = stop_requested(&mut shutdown) => break,
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

/// Resolves once `shutdown` is true, or once its sender is gone (the
/// agent is going away).
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    // A function of its own so that the guard `wait_for` returns is gone
    // before the callers' `select!` awaits anything else.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

async fn recover_from_accept_error(err: &std::io::Error, connections: &Connections) {
    match err.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => {
            // The pending connection stays queued in the kernel; a descriptor
            // freed by an idle connection lets the next accept take it.
            let closed = connections.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if connections.evict_longest_waiting() {
                tracing::debug!("out of file descriptors: closed the longest-idle HTTP connection");
                let _ = tokio::time::timeout(EVICTION_WAIT, closed).await;
            } else {
                tracing::warn!(error = %err, "out of file descriptors and no idle HTTP connection to close");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
        // The client gave up before the accept: nothing to wait for.
        Some(libc::ECONNABORTED | libc::EPROTO | libc::EPERM) => {}
        _ => {
            tracing::warn!(error = %err, "accepting an HTTP connection failed");
            tokio::time::sleep(ACCEPT_BACKOFF).await;
        }
    }
}

/// Runs one connection until it ends, times out, is evicted or the agent
/// shuts down; with TLS, after a handshake that must end within the header
/// timeout as the request head must.
async fn serve_connection(
    stream: TcpStream,
    registration: Registration,
    endpoints: Arc<dyn Endpoints>,
    limits: Limits,
    site: Arc<Site>,
    mut shutdown: watch::Receiver<bool>,
) {
    let state = registration.state.clone();
    let settings = site.web.current();
    match settings.tls() {
        None => serve_http(stream, state, endpoints, limits, site, shutdown).await,
        Some(acceptor) => {
            let handshake = acceptor.accept(stream);
            if let Some(stream) = until_ready(handshake, &state, &limits, &mut shutdown).await {
                serve_http(stream, state, endpoints, limits, site, shutdown).await;
            }
        }
    }
    drop(registration);
}

/// Runs the TLS handshake until it ends, or the connection's header
/// timeout passes, it is evicted or the agent shuts down.
async fn until_ready<S>(
    handshake: tokio_rustls::Accept<S>,
    state: &ConnectionState,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<tokio_rustls::server::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    tokio::pin!(handshake);
    loop {
        if state.is_evicted() {
            return None;
        }
        let deadline = state.deadline(limits);
        let changed = state.changed.notified();
        tokio::select! {
            done = handshake.as_mut() => match done {
                Ok(stream) => return Some(stream),
                Err(err) => {
                    tracing::debug!(error = %err, "TLS handshake failed");
                    return None;
                }
            },
            _ = sleep_until(deadline) => {
                if state.deadline(limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!("closing a connection: no TLS handshake within the header timeout");
                    return None;
                }
            }
            _ = changed => {}
            _ = stop_requested(shutdown) => return None,
        }
    }
}

/// Serves HTTP/1.1 on a connection (plain or after its TLS handshake).
async fn serve_http<S>(
    stream: S,
    state: Arc<ConnectionState>,
    endpoints: Arc<dyn Endpoints>,
    limits: Limits,
    site: Arc<Site>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let state = state.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            state.start_request();
            let endpoints = endpoints.clone();
            let site = site.clone();
            let state = state.clone();
            async move {
                let response = respond(&req, endpoints, &site).await;
                Ok::<_, Infallible>(response.map(|body| Tracked { inner: body, state }))
            }
        })
    };
    let io = TokioIo::new(Watched { stream, state: state.clone() });
    let http = hyper::server::conn::http1::Builder::new()
        // hyper's own header timeout restarts as soon as a kept-alive
        // connection falls idle, which would cut every connection after
        // 10 s between scrapes; the phases below time heads instead.
        .header_read_timeout(None)
        .max_buf_size(MAX_BUFFER)
        .serve_connection(io, service);
    tokio::pin!(http);
    // Once set, hyper closes the connection after the request in progress.
    let mut draining = false;
    loop {
        if state.is_evicted() && !draining {
            if !state.is_serving() {
                return;
            }
            // A request arrived as the connection was chosen: answer it.
            http.as_mut().graceful_shutdown();
            draining = true;
        }
        let deadline = state.deadline(&limits);
        let changed = state.changed.notified();
        tokio::select! {
            result = http.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "HTTP connection ended with an error");
                }
                return;
            }
            _ = sleep_until(deadline) => {
                if state.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!("closing an HTTP connection: no complete request within its timeout");
                    return;
                }
            }
            _ = changed => {}
            _ = stop_requested(&mut shutdown), if !draining => {
                // hyper waits for a first request on a new connection even
                // when told to shut down; only a request in progress is
                // worth waiting for.
                if !state.is_serving() {
                    return;
                }
                http.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Where a connection is in its request cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head, since the accept on a new connection,
    /// else since the head's first byte.
    ReadingHead { since: Instant },
    /// Answering a request, until hyper has taken the whole response.
    Serving,
    /// Kept alive between requests, since `since`.
    Idle { since: Instant },
}

/// One connection's state, shared by its reader, its service, its
/// response bodies and the registry.
struct ConnectionState {
    id: u64,
    phase: Mutex<Phase>,
    /// Chosen to make room: already out of the registry, to be closed.
    evicted: AtomicBool,
    /// Wakes the connection's task to recompute its deadline or see that it
    /// was evicted.
    changed: Notify,
}

impl ConnectionState {
    fn phase(&self) -> MutexGuard<'_, Phase> {
        // A Phase is valid whatever a panicking holder left behind.
        self.phase.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The first bytes of a request after an idle spell start its head timer.
    /// Bytes of a pipelined request read while another is served are not
    /// noticed, so that request's head is timed as idle; scrapers do not
    /// pipeline.
    fn received_bytes(&self) {
        let mut phase = self.phase();
        if let Phase::Idle { .. } = *phase {
            *phase = Phase::ReadingHead { since: Instant::now() };
            drop(phase);
            self.changed.notify_one();
        }
    }

    fn start_request(&self) {
        *self.phase() = Phase::Serving;
        self.changed.notify_one();
    }

    fn finish_request(&self) {
        let mut phase = self.phase();
        if *phase == Phase::Serving {
            *phase = Phase::Idle { since: Instant::now() };
            drop(phase);
            self.changed.notify_one();
        }
    }

    fn is_serving(&self) -> bool {
        *self.phase() == Phase::Serving
    }

    /// Since when the connection has waited for a request; `None` while it
    /// answers one.
    fn waiting_since(&self) -> Option<Instant> {
        match *self.phase() {
            Phase::ReadingHead { since } | Phase::Idle { since } => Some(since),
            Phase::Serving => None,
        }
    }

    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        match *self.phase() {
            Phase::ReadingHead { since } => Some(since + limits.header_read_timeout),
            Phase::Idle { since } => Some(since + limits.idle_timeout),
            Phase::Serving => None,
        }
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }
}

/// The open connections, at most `max` of them.
struct Connections {
    max: usize,
    open: Mutex<OpenConnections>,
    /// Signalled each time a connection has closed its socket.
    closed: Notify,
}

struct OpenConnections {
    next_id: u64,
    states: Vec<Arc<ConnectionState>>,
}

impl Connections {
    fn new(max: usize) -> Connections {
        Connections {
            max: max.max(1),
            open: Mutex::new(OpenConnections { next_id: 0, states: Vec::new() }),
            closed: Notify::new(),
        }
    }

    fn open(&self) -> MutexGuard<'_, OpenConnections> {
        // The list stays consistent whatever a panicking holder left behind.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection, first evicting the longest-waiting one
    /// when at the cap; `None` when every connection is serving a request.
    fn admit(self: &Arc<Self>) -> Option<Registration> {
        let mut open = self.open();
        if open.states.len() >= self.max {
            if !evict_longest_waiting(&mut open.states) {
                return None;
            }
            tracing::debug!(max_connections = self.max, "at the cap: closing the longest-idle HTTP connection");
        }
        let id = open.next_id;
        open.next_id += 1;
        let state = Arc::new(ConnectionState {
            id,
            phase: Mutex::new(Phase::ReadingHead { since: Instant::now() }),
            evicted: AtomicBool::new(false),
            changed: Notify::new(),
        });
        open.states.push(state.clone());
        Some(Registration { connections: self.clone(), state })
    }

    fn evict_longest_waiting(&self) -> bool {
        evict_longest_waiting(&mut self.open().states)
    }
}

/// Removes and evicts the connection that has waited the longest for a
/// request; false if every connection is serving one.
fn evict_longest_waiting(states: &mut Vec<Arc<ConnectionState>>) -> bool {
    let victim = states
        .iter()
        .enumerate()
        .filter_map(|(index, state)| state.waiting_since().map(|since| (since, index)))
        .min()
        .map(|(_, index)| index);
    match victim {
        Some(index) => {
            states.swap_remove(index).evict();
            true
        }
        None => false,
    }
}

/// A connection's place in [`Connections`], given up on drop.
struct Registration {
    connections: Arc<Connections>,
    state: Arc<ConnectionState>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let id = self.state.id;
        self.connections.open().states.retain(|state| state.id != id);
        self.connections.closed.notify_waiters();
    }
}

/// The connection (above TLS, if any), reporting received bytes to its
/// state.
struct Watched<S> {
    stream: S,
    state: Arc<ConnectionState>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.state.received_bytes();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A response body that ends its request when hyper drops it, which hyper
/// does once it has taken the whole body (at once for HEAD).
struct Tracked {
    inner: Full<Bytes>,
    state: Arc<ConnectionState>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.state.finish_request();
    }
}

/// The paths served and the methods each accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    Health,
    Index,
    Reload,
}

impl Route {
    fn of(path: &str, telemetry_path: &str) -> Option<Route> {
        if path == telemetry_path {
            return Some(Route::Metrics);
        }
        match path {
            "/healthz" => Some(Route::Health),
            "/" => Some(Route::Index),
            "/-/reload" => Some(Route::Reload),
            _ => None,
        }
    }

    /// The `Allow` header value.
    fn methods(self) -> &'static str {
        match self {
            Route::Metrics | Route::Health | Route::Index => "GET, HEAD",
            Route::Reload => "POST, PUT",
        }
    }

    fn allows(self, method: &Method) -> bool {
        match self {
            Route::Metrics | Route::Health | Route::Index => method == Method::GET || method == Method::HEAD,
            Route::Reload => method == Method::POST || method == Method::PUT,
        }
    }
}

async fn respond(req: &Request<Incoming>, endpoints: Arc<dyn Endpoints>, site: &Site) -> Response<Full<Bytes>> {
    let route = Route::of(req.uri().path(), &site.telemetry_path);
    if route != Some(Route::Health) && !authorized(site.web.current(), req.headers()).await {
        let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"sonde\""));
        return response;
    }
    let Some(route) = route else {
        return text(StatusCode::NOT_FOUND, &format!("not found; try {}\n", site.telemetry_path));
    };
    if !route.allows(req.method()) {
        let mut response =
            text(StatusCode::METHOD_NOT_ALLOWED, &format!("method not allowed; use {}\n", route.methods()));
        response.headers_mut().insert(ALLOW, HeaderValue::from_static(route.methods()));
        return response;
    }
    match route {
        Route::Metrics => metrics(endpoints, accepts_gzip(req.headers())).await,
        Route::Health if endpoints.ready() => text(StatusCode::OK, "ok\n"),
        Route::Health => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        Route::Index => {
            with_type(Response::new(Full::new(Bytes::from(site.index.clone()))), "text/html; charset=utf-8")
        }
        Route::Reload => match tokio::task::spawn_blocking(move || endpoints.reload()).await {
            Ok(Ok(summary)) => text(StatusCode::OK, &with_newline(summary)),
            Ok(Err(message)) => text(StatusCode::BAD_REQUEST, &with_newline(message)),
            Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("reload task failed: {err}\n")),
        },
    }
}

/// Whether the request may be answered: always without users to check,
/// else when its basic-authentication credentials match. Credentials seen
/// before are answered at once; new ones cost a bcrypt on a blocking
/// thread.
async fn authorized(settings: Arc<WebSettings>, headers: &HeaderMap) -> bool {
    let Some(auth) = settings.auth() else { return true };
    let Some(credentials) = headers.get(AUTHORIZATION).and_then(|v| Credentials::from_header(v.as_bytes())) else {
        return false;
    };
    if auth.known(&credentials) {
        return true;
    }
    let verified = tokio::task::spawn_blocking(move || settings.auth().is_some_and(|auth| auth.verify(&credentials)));
    verified.await.unwrap_or(false)
}

/// Renders, and compresses if asked, on a blocking thread: both take
/// milliseconds on a large exposition.
async fn metrics(endpoints: Arc<dyn Endpoints>, gzip: bool) -> Response<Full<Bytes>> {
    let rendered = tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, bool), String> {
        let body = endpoints.metrics()?;
        if !gzip {
            return Ok((body.into_bytes(), false));
        }
        match compress(body.as_bytes()) {
            Ok(compressed) => Ok((compressed, true)),
            Err(err) => {
                tracing::warn!(error = %err, "compressing /metrics failed; answering uncompressed");
                Ok((body.into_bytes(), false))
            }
        }
    })
    .await;
    let (body, gzipped) = match rendered {
        Ok(Ok(rendered)) => rendered,
        Ok(Err(err)) => return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding metrics failed: {err}\n")),
        Err(err) => return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("scrape task failed: {err}\n")),
    };
    let mut response = with_type(Response::new(Full::new(Bytes::from(body))), METRICS_CONTENT_TYPE);
    let headers = response.headers_mut();
    // Caches must tell the compressed and the plain answers apart.
    headers.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
    if gzipped {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

fn compress(body: &[u8]) -> std::io::Result<Vec<u8>> {
    // Text expositions shrink about tenfold even at the fastest level.
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 8), flate2::Compression::fast());
    encoder.write_all(body)?;
    encoder.finish()
}

/// Whether the request's `Accept-Encoding` accepts gzip: a `gzip` (or
/// `x-gzip`) coding decides by its q-value, else a `*` does; without
/// either, only the identity coding is acceptable.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip: Option<u16> = None;
    let mut any: Option<u16> = None;
    let values = headers.get_all(ACCEPT_ENCODING).iter().filter_map(|value| value.to_str().ok());
    for item in values.flat_map(|value| value.split(',')) {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim();
        let slot = if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            &mut gzip
        } else if coding == "*" {
            &mut any
        } else {
            continue;
        };
        let weight = quality(parts);
        *slot = Some(slot.map_or(weight, |w| w.max(weight)));
    }
    gzip.or(any).is_some_and(|weight| weight > 0)
}

/// The q-value among a coding's parameters, in thousandths: 1000 when
/// absent, 0 when malformed (a coding the client garbled is not one to use).
fn quality<'a>(params: impl Iterator<Item = &'a str>) -> u16 {
    for param in params {
        let Some((name, value)) = param.split_once('=') else { continue };
        if name.trim().eq_ignore_ascii_case("q") {
            return parse_qvalue(value.trim()).unwrap_or(0);
        }
    }
    1000
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn parse_qvalue(value: &str) -> Option<u16> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths: u16 = format!("{fraction:0<3}").parse().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

fn with_newline(mut message: String) -> String {
    if !message.ends_with('\n') {
        message.push('\n');
    }
    message
}

fn with_type(mut response: Response<Full<Bytes>>, content_type: &'static str) -> Response<Full<Bytes>> {
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = with_type(Response::new(Full::new(Bytes::from(body.to_string()))), TEXT_CONTENT_TYPE);
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::task::JoinHandle;

    use super::*;

    struct Fake {
        exposition: String,
        ready: AtomicBool,
        reload: Result<String, String>,
        gate: Option<Gate>,
    }

    /// Holds /metrics until released, so that a request stays in progress.
    struct Gate {
        entered: Arc<Notify>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    impl Endpoints for Fake {
        fn metrics(&self) -> Result<String, String> {
            if let Some(gate) = &self.gate {
                gate.entered.notify_one();
                gate.release.lock().unwrap().recv().unwrap();
            }
            Ok(self.exposition.clone())
        }

        fn ready(&self) -> bool {
            self.ready.load(Ordering::Relaxed)
        }

        fn reload(&self) -> Result<String, String> {
            self.reload.clone()
        }
    }

    /// About 60 KiB: larger than a connection's buffer, and compressible.
    fn exposition() -> String {
        let mut text = String::from("# HELP sonde_test_total A test counter.\n# TYPE sonde_test_total counter\n");
        for i in 0..2000 {
            text.push_str(&format!("sonde_test_total{{probe=\"p{}\",n=\"{i}\"}} {}\n", i % 7, i * 31));
        }
        text
    }

    fn fake() -> Fake {
        Fake {
            exposition: exposition(),
            ready: AtomicBool::new(true),
            reload: Ok("reloaded: 3 probes".into()),
            gate: None,
        }
    }

    /// A fake whose /metrics waits; returns the signal that a request
    /// entered it and the sender that releases it.
    fn gated() -> (Fake, Arc<Notify>, mpsc::Sender<()>) {
        let entered = Arc::new(Notify::new());
        let (release, receiver) = mpsc::channel();
        let fake = Fake { gate: Some(Gate { entered: entered.clone(), release: Mutex::new(receiver) }), ..fake() };
        (fake, entered, release)
    }

    fn limits(header_ms: u64, idle_ms: u64, max_connections: usize) -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(header_ms),
            idle_timeout: Duration::from_millis(idle_ms),
            max_connections,
        }
    }

    struct Server {
        addr: SocketAddr,
        stop: watch::Sender<bool>,
        task: JoinHandle<()>,
    }

    async fn start(endpoints: Fake, limits: Limits) -> Server {
        start_site(endpoints, limits, Site::default()).await
    }

    async fn start_site(endpoints: Fake, limits: Limits, site: Site) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(serve(listener, Arc::new(endpoints), limits, Arc::new(site), shutdown));
        Server { addr, stop, task }
    }

    /// A web config file (removed when dropped) in a directory of its own,
    /// with a self-signed certificate beside it as cert.pem and key.pem.
    struct WebFile {
        dir: std::path::PathBuf,
    }

    impl WebFile {
        fn new(yaml: &str) -> WebFile {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("sonde-http-test-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
            std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
            std::fs::write(dir.join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
            std::fs::write(dir.join("web.yml"), yaml).unwrap();
            WebFile { dir }
        }

        fn site(&self, telemetry_path: &str) -> Site {
            Site::new(telemetry_path, WebConfig::load(&self.dir.join("web.yml")).unwrap()).unwrap()
        }
    }

    impl Drop for WebFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn a_telemetry_path_must_be_a_plain_path_of_its_own() {
        for good in ["/metrics", "/custom/metrics", "/m"] {
            assert!(Site::new(good, WebConfig::none()).is_ok(), "{good}");
        }
        for bad in ["metrics", "", "/", "/healthz", "/-/reload", "/a b", "/m?x=1", "/\"x"] {
            assert!(Site::new(bad, WebConfig::none()).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn metrics_are_served_at_the_telemetry_path_only() {
        let site = Site::new("/custom/metrics", WebConfig::none()).unwrap();
        let server = start_site(fake(), Limits::default(), site).await;
        let mut client = Client::connect(server.addr).await;
        let reply = client.request("GET", "/custom/metrics", &[]).await;
        assert_eq!((reply.status, reply.text()), (200, exposition().as_str()));
        let reply = client.request("GET", "/metrics", &[]).await;
        assert_eq!((reply.status, reply.text()), (404, "not found; try /custom/metrics\n"));
        assert!(client.request("GET", "/", &[]).await.text().contains("href=\"custom/metrics\""));
    }

    #[tokio::test]
    async fn basic_auth_guards_every_path_but_healthz() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let web = WebFile::new(&format!("basic_auth_users:\n  alice: {hash}\n"));
        let server = start_site(fake(), Limits::default(), web.site("/metrics")).await;
        let mut client = Client::connect(server.addr).await;
        // "alice:s3cret" and "alice:wrong"
        let right = "Authorization: Basic YWxpY2U6czNjcmV0";
        let wrong = "Authorization: Basic YWxpY2U6d3Jvbmc=";
        for (method, path) in [("GET", "/metrics"), ("GET", "/"), ("POST", "/-/reload"), ("GET", "/nope")] {
            for headers in [&[][..], &[wrong][..]] {
                let reply = client.request(method, path, headers).await;
                assert_eq!(reply.status, 401, "{method} {path} {headers:?}");
                assert_eq!(reply.header("www-authenticate"), Some("Basic realm=\"sonde\""));
            }
        }
        let reply = client.request("GET", "/metrics", &[right]).await;
        assert_eq!((reply.status, reply.text()), (200, exposition().as_str()));
        assert_eq!(client.request("POST", "/-/reload", &[right]).await.status, 200);
        assert_eq!(client.request("GET", "/healthz", &[]).await.status, 200);
    }

    #[tokio::test]
    async fn a_tls_connection_that_never_handshakes_is_closed_after_the_header_timeout() {
        let web = WebFile::new("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n");
        let server = start_site(fake(), limits(300, 60_000, 16), web.site("/metrics")).await;
        let mut silent = Client::connect(server.addr).await;
        let took = silent.closed_within(Duration::from_secs(3)).await.expect("closed");
        assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(2), "closed after {took:?}");
        // A client speaking plain HTTP to it fails the handshake at once.
        let mut plain = Client::connect(server.addr).await;
        plain.stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(1), plain.stream.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "a plain-HTTP client was kept waiting");
        assert!(!answer.starts_with(b"HTTP/"), "answered in plain HTTP over a TLS port");
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }

        fn text(&self) -> &str {
            std::str::from_utf8(&self.body).unwrap()
        }
    }

    /// A keep-alive HTTP/1.1 client over one connection.
    struct Client {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    impl Client {
        async fn connect(addr: SocketAddr) -> Client {
            Client { stream: TcpStream::connect(addr).await.unwrap(), buf: Vec::new() }
        }

        async fn request(&mut self, method: &str, path: &str, headers: &[&str]) -> Reply {
            let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
            for header in headers {
                head.push_str(header);
                head.push_str("\r\n");
            }
            if method == "POST" || method == "PUT" {
                head.push_str("Content-Length: 0\r\n");
            }
            head.push_str("\r\n");
            self.stream.write_all(head.as_bytes()).await.unwrap();
            self.read_reply(method == "HEAD").await
        }

        async fn fill(&mut self) {
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-reply");
            self.buf.extend_from_slice(&chunk[..n]);
        }

        async fn read_reply(&mut self, head_request: bool) -> Reply {
            let head_end = loop {
                if let Some(at) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                self.fill().await;
            };
            let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
            let mut lines = head.split("\r\n");
            let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
            let headers: Vec<(String, String)> = lines
                .filter_map(|line| line.split_once(':'))
                .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
                .collect();
            let length: usize = if head_request {
                0
            } else {
                headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length")).unwrap().1.parse().unwrap()
            };
            while self.buf.len() < head_end + length {
                self.fill().await;
            }
            let body = self.buf[head_end..head_end + length].to_vec();
            self.buf.drain(..head_end + length);
            Reply { status, headers, body }
        }

        /// How long until the server closed the connection, if it did
        /// within `within`.
        async fn closed_within(&mut self, within: Duration) -> Option<Duration> {
            let started = Instant::now();
            let mut chunk = [0u8; 64];
            match tokio::time::timeout(within, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => Some(started.elapsed()),
                Ok(Ok(n)) => panic!("unexpected {n} bytes instead of a close"),
                Err(_) => None,
            }
        }
    }

    fn gunzip(data: &[u8]) -> String {
        let mut text = String::new();
        flate2::read::GzDecoder::new(data).read_to_string(&mut text).unwrap();
        text
    }

    #[tokio::test]
    async fn routes_answer_with_their_status_and_405_lists_the_allowed_methods() {
        let server = start(fake(), Limits::default()).await;
        let mut client = Client::connect(server.addr).await;

        let reply = client.request("GET", "/metrics", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
        assert_eq!(reply.header("vary"), Some("Accept-Encoding"));
        assert_eq!(reply.header("content-encoding"), None);
        assert_eq!(reply.text(), exposition());

        let reply = client.request("GET", "/healthz", &[]).await;
        assert_eq!((reply.status, reply.text()), (200, "ok\n"));
        let reply = client.request("GET", "/", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("text/html; charset=utf-8"));
        assert!(reply.text().contains("href=\"metrics\""));
        let reply = client.request("GET", "/nope", &[]).await;
        assert_eq!(reply.status, 404);
        assert_eq!(reply.header("allow"), None);

        for (method, path, allow) in [
            ("DELETE", "/metrics", "GET, HEAD"),
            ("POST", "/metrics", "GET, HEAD"),
            ("PUT", "/healthz", "GET, HEAD"),
            ("OPTIONS", "/", "GET, HEAD"),
            ("GET", "/-/reload", "POST, PUT"),
            ("HEAD", "/-/reload", "POST, PUT"),
        ] {
            let reply = client.request(method, path, &[]).await;
            assert_eq!(reply.status, 405, "{method} {path}");
            assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
        }
        let reply = client.request("POST", "/nope", &[]).await;
        assert_eq!(reply.status, 404, "an unknown path is 404 whatever the method");
    }

    #[tokio::test]
    async fn healthz_is_503_until_ready() {
        let server = start(Fake { ready: AtomicBool::new(false), ..fake() }, Limits::default()).await;
        let reply = Client::connect(server.addr).await.request("GET", "/healthz", &[]).await;
        assert_eq!((reply.status, reply.text()), (503, "not ready\n"));
    }

    #[tokio::test]
    async fn head_answers_the_headers_of_get_without_a_body() {
        let server = start(fake(), Limits::default()).await;
        let mut client = Client::connect(server.addr).await;
        let reply = client.request("HEAD", "/metrics", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some(METRICS_CONTENT_TYPE));
        assert_eq!(reply.header("content-length"), Some(exposition().len().to_string().as_str()));
        assert!(reply.body.is_empty());
        let reply = client.request("HEAD", "/healthz", &[]).await;
        assert_eq!(reply.status, 200);
        // Had HEAD sent a body, this reply would not parse.
        let reply = client.request("GET", "/healthz", &[]).await;
        assert_eq!((reply.status, reply.text()), (200, "ok\n"));
    }

    #[tokio::test]
    async fn metrics_are_gzipped_when_the_client_accepts_gzip() {
        let server = start(fake(), Limits::default()).await;
        let mut client = Client::connect(server.addr).await;
        let reply = client.request("GET", "/metrics", &["Accept-Encoding: gzip"]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-encoding"), Some("gzip"));
        assert_eq!(reply.header("vary"), Some("Accept-Encoding"));
        assert_eq!(reply.header("content-type"), Some(METRICS_CONTENT_TYPE));
        assert!(reply.body.len() < exposition().len() / 4, "{} bytes compressed", reply.body.len());
        assert_eq!(gunzip(&reply.body), exposition());

        let reply = client.request("HEAD", "/metrics", &["Accept-Encoding: deflate, gzip;q=0.5"]).await;
        assert_eq!(reply.header("content-encoding"), Some("gzip"));
        assert!(reply.body.is_empty());
    }

    #[tokio::test]
    async fn gzip_with_q_zero_is_refused() {
        let server = start(fake(), Limits::default()).await;
        let mut client = Client::connect(server.addr).await;
        for refusal in ["gzip;q=0", "gzip; q=0.000, *", "br, *;q=0", "identity", "deflate"] {
            let reply = client.request("GET", "/metrics", &[&format!("Accept-Encoding: {refusal}")]).await;
            assert_eq!(reply.header("content-encoding"), None, "{refusal}");
            assert_eq!(reply.text(), exposition(), "{refusal}");
        }
    }

    #[test]
    fn accept_encoding_is_read_with_its_q_values() {
        let cases: &[(&[&str], bool)] = &[
            (&[], false),
            (&["gzip"], true),
            (&["GZIP"], true),
            (&["x-gzip"], true),
            (&["deflate, gzip"], true),
            (&["gzip;q=0"], false),
            (&["gzip;Q=0"], false),
            (&["gzip ; q=0.0"], false),
            (&["gzip;q=0.001"], true),
            (&["gzip;q=1.000"], true),
            (&["gzip;q=1.5"], false),
            (&["gzip;q=0.0001"], false),
            (&["gzip;q=high"], false),
            (&["*"], true),
            (&["*;q=0"], false),
            (&["gzip;q=0, *"], false),
            (&["gzip, *;q=0"], true),
            (&["identity;q=1, *;q=0"], false),
            (&["br", "gzip;q=0.8"], true),
            (&["gzip;q=0", "gzip"], true),
            (&["gzipped"], false),
        ];
        for (values, want) in cases {
            let mut headers = HeaderMap::new();
            for value in *values {
                headers.append(ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
            }
            assert_eq!(accepts_gzip(&headers), *want, "{values:?}");
        }
    }

    #[tokio::test]
    async fn reload_answers_the_summary_or_the_error() {
        let server = start(fake(), Limits::default()).await;
        let mut client = Client::connect(server.addr).await;
        for method in ["POST", "PUT"] {
            let reply = client.request(method, "/-/reload", &[]).await;
            assert_eq!((reply.status, reply.text()), (200, "reloaded: 3 probes\n"), "{method}");
        }
        let failing = Fake { reload: Err("config.yaml:3:1: unknown probe `nosuch`".into()), ..fake() };
        let server = start(failing, Limits::default()).await;
        let reply = Client::connect(server.addr).await.request("POST", "/-/reload", &[]).await;
        assert_eq!((reply.status, reply.text()), (400, "config.yaml:3:1: unknown probe `nosuch`\n"));
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
        let server = start(fake(), limits(300, 60_000, 16)).await;
        let mut client = Client::connect(server.addr).await;
        let took = client.closed_within(Duration::from_secs(3)).await.expect("closed");
        assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(2), "closed after {took:?}");
    }

    #[tokio::test]
    async fn a_head_sent_too_slowly_is_closed_after_the_header_timeout() {
        let server = start(fake(), limits(300, 60_000, 16)).await;
        let client = Client::connect(server.addr).await;
        let (mut reader, mut writer) = client.stream.into_split();
        let started = Instant::now();
        // A header line every 50 ms: bytes keep coming, the head never ends.
        let dripping = tokio::spawn(async move {
            writer.write_all(b"GET /metrics HTTP/1.1\r\n").await?;
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                writer.write_all(b"X-Slow: 1\r\n").await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        });
        let mut chunk = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(3), reader.read(&mut chunk)).await.expect("closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(2), "closed after {took:?}");
        assert!(dripping.await.unwrap().is_err(), "writing went on after the close");
    }

    #[tokio::test]
    async fn the_next_head_on_a_kept_alive_connection_is_timed_from_its_first_byte() {
        let server = start(fake(), limits(300, 60_000, 16)).await;
        let mut client = Client::connect(server.addr).await;
        assert_eq!(client.request("GET", "/healthz", &[]).await.status, 200);
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.stream.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        let took = client.closed_within(Duration::from_secs(3)).await.expect("closed");
        assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(2), "closed after {took:?}");
    }

    #[tokio::test]
    async fn a_kept_alive_connection_outlives_the_header_timeout_until_the_idle_timeout() {
        let server = start(fake(), limits(300, 1500, 16)).await;
        let mut client = Client::connect(server.addr).await;
        assert_eq!(client.request("GET", "/healthz", &[]).await.status, 200);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(client.request("GET", "/healthz", &[]).await.status, 200);
        let took = client.closed_within(Duration::from_secs(5)).await.expect("closed when idle");
        assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(3), "closed after {took:?}");
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_idle_connection_makes_room() {
        let server = start(fake(), limits(10_000, 60_000, 2)).await;
        let mut oldest = Client::connect(server.addr).await;
        assert_eq!(oldest.request("GET", "/healthz", &[]).await.status, 200);
        let mut older = Client::connect(server.addr).await;
        assert_eq!(older.request("GET", "/healthz", &[]).await.status, 200);

        let mut newest = Client::connect(server.addr).await;
        let reply = newest.request("GET", "/metrics", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), exposition());
        assert!(oldest.closed_within(Duration::from_secs(1)).await.is_some(), "the longest idle was not evicted");
        assert_eq!(older.request("GET", "/healthz", &[]).await.status, 200);
    }

    #[tokio::test]
    async fn at_the_cap_a_request_in_progress_is_not_evicted() {
        let (fake, entered, release) = gated();
        let server = start(fake, limits(10_000, 60_000, 1)).await;
        let mut busy = Client::connect(server.addr).await;
        busy.stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
        entered.notified().await;

        let mut refused = Client::connect(server.addr).await;
        assert!(refused.closed_within(Duration::from_secs(1)).await.is_some(), "a connection beyond the cap was kept");
        release.send(()).unwrap();
        let reply = busy.read_reply(false).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), exposition());
    }

    #[tokio::test]
    async fn shutdown_closes_waiting_connections_and_finishes_requests_in_progress() {
        let (fake, entered, release) = gated();
        let server = start(fake, Limits::default()).await;
        let mut busy = Client::connect(server.addr).await;
        busy.stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
        entered.notified().await;
        let mut silent = Client::connect(server.addr).await;
        let mut idle = Client::connect(server.addr).await;
        assert_eq!(idle.request("GET", "/healthz", &[]).await.status, 200);

        server.stop.send(true).unwrap();
        assert!(silent.closed_within(Duration::from_secs(1)).await.is_some(), "a silent connection was kept");
        assert!(idle.closed_within(Duration::from_secs(1)).await.is_some(), "an idle connection was kept");
        assert!(!server.task.is_finished(), "serve returned with a request in progress");
        release.send(()).unwrap();
        let reply = busy.read_reply(false).await;
        assert_eq!(reply.status, 200);
        assert!(busy.closed_within(Duration::from_secs(1)).await.is_some(), "kept alive after shutdown");
        tokio::time::timeout(Duration::from_secs(1), server.task).await.expect("serve returned").unwrap();
        assert!(TcpStream::connect(server.addr).await.is_err(), "still accepting after shutdown");
    }
}
