//! A client of a container runtime's CRI socket (containerd, CRI-O): the gRPC API the kubelet uses
//! to run pods, reached without the Kubernetes API server or any credential beyond the socket.
//!
//! gRPC unary calls are plain HTTP/2 requests: a POST to `/<service>/<method>` whose body is one
//! message behind a 5-byte prefix (a compression flag and a big-endian length), answered with one
//! such message and a `grpc-status` trailer. That is all sonde needs, so it speaks it directly over
//! hyper's HTTP/2 client rather than through a generated gRPC stack; the messages are declared here
//! with only the fields sonde reads (protobuf skips the rest).

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The CRI's runtime service, version 1.
pub const RUNTIME_SERVICE: &str = "runtime.v1.RuntimeService";
/// The largest response read: a node's full container list is far smaller.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("cannot connect to the CRI socket {}: {source}", path.display())]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("HTTP/2 with the CRI socket failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("{what} took longer than {}ms", timeout.as_millis())]
    Timeout { what: String, timeout: Duration },
    #[error("{method}: the runtime answered HTTP {status}")]
    HttpStatus { method: String, status: u16 },
    #[error("{method}: gRPC status {code}: {message}")]
    Status { method: String, code: u32, message: String },
    #[error("{method}: reading the response failed: {why}")]
    Body { method: String, why: String },
    #[error("{method}: malformed response: {why}")]
    Frame { method: String, why: String },
    #[error("{method}: cannot decode the response: {source}")]
    Decode { method: String, source: prost::DecodeError },
}

/// An HTTP/2 connection to a CRI socket. Every call, and the connect itself, has a deadline.
pub struct CriConnection {
    sender: SendRequest<Full<Bytes>>,
    timeout: Duration,
}

impl CriConnection {
    /// Connects to the socket at `path`; the connection is driven by a task on the current tokio
    /// runtime and closes when this is dropped.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<CriConnection, CriError> {
        let handshake = async {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|source| CriError::Connect { path: path.to_path_buf(), source })?;
            let (sender, connection) =
                hyper::client::conn::http2::Builder::new(TokioExecutor::new()).handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "CRI connection closed");
                }
            });
            Ok(sender)
        };
        let what = || format!("connecting to the CRI socket {}", path.display());
        let sender = deadline(timeout, what, handshake).await?;
        Ok(CriConnection { sender, timeout })
    }

    /// One unary call of `method` of `service` (e.g. `runtime.v1.RuntimeService`, `ListContainers`).
    pub async fn call<Req, Resp>(&mut self, service: &str, method: &str, request: &Req) -> Result<Resp, CriError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let timeout = self.timeout;
        deadline(timeout, || format!("{method} on the CRI socket"), self.exchange(service, method, request)).await
    }

    async fn exchange<Req, Resp>(&mut self, service: &str, method: &str, request: &Req) -> Result<Resp, CriError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        self.sender.ready().await?;
        let http = hyper::Request::post(format!("http://localhost/{service}/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from(frame(request))))
            .map_err(|err| CriError::Frame { method: method.into(), why: err.to_string() })?;
        let response = self.sender.send_request(http).await?;
        let status = response.status();
        // A call that fails before any message may answer with the gRPC status in the headers alone.
        if let Some(failure) = grpc_failure(method, response.headers()) {
            return Err(failure);
        }
        if status != hyper::StatusCode::OK {
            return Err(CriError::HttpStatus { method: method.into(), status: status.as_u16() });
        }
        let collected = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|err| CriError::Body { method: method.into(), why: err.to_string() })?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        if let Some(failure) = grpc_failure(method, &trailers) {
            return Err(failure);
        }
        if !trailers.contains_key("grpc-status") {
            return Err(CriError::Frame { method: method.into(), why: "no grpc-status trailer".into() });
        }
        let body = collected.to_bytes();
        let message = unframe(&body).map_err(|why| CriError::Frame { method: method.into(), why })?;
        Resp::decode(message).map_err(|source| CriError::Decode { method: method.into(), source })
    }
}

async fn deadline<T>(
    timeout: Duration,
    what: impl FnOnce() -> String,
    work: impl std::future::Future<Output = Result<T, CriError>>,
) -> Result<T, CriError> {
    tokio::time::timeout(timeout, work).await.unwrap_or_else(|_| Err(CriError::Timeout { what: what(), timeout }))
}

/// The error a `grpc-status` other than 0 (OK) in `headers` stands for.
fn grpc_failure(method: &str, headers: &hyper::HeaderMap) -> Option<CriError> {
    let code = headers.get("grpc-status")?.to_str().ok()?.trim().parse::<u32>().ok()?;
    (code != 0).then(|| CriError::Status {
        method: method.into(),
        code,
        message: headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or("").to_string(),
    })
}

/// A message as a gRPC body: uncompressed flag, big-endian length, the encoded message.
fn frame(message: &impl prost::Message) -> Vec<u8> {
    let len = message.encoded_len();
    let mut out = Vec::with_capacity(5 + len);
    out.push(0);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    message.encode_raw(&mut out);
    out
}

/// The one message of a unary response body.
fn unframe(body: &[u8]) -> Result<&[u8], String> {
    let [flag, a, b, c, d, rest @ ..] = body else {
        return Err(format!("a body of {} bytes holds no message", body.len()));
    };
    if *flag != 0 {
        return Err("the message is compressed, which was not asked for".into());
    }
    let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    if rest.len() != len {
        return Err(format!("the message says {len} bytes, the body has {}", rest.len()));
    }
    Ok(rest)
}

// The read side of the CRI messages (runtime.v1), with only the fields sonde uses; field numbers are
// the API's.

/// No filter: every container.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListContainersResponse {
    #[prost(message, repeated, tag = "1")]
    pub containers: Vec<Container>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Container {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub pod_sandbox_id: String,
    #[prost(message, optional, tag = "3")]
    pub metadata: Option<ContainerMetadata>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStatusRequest {
    #[prost(string, tag = "1")]
    pub container_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStatusResponse {
    #[prost(message, optional, tag = "1")]
    pub status: Option<ContainerStatus>,
}

/// `state`: 0 created, 1 running, 2 exited, 3 unknown.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ContainerStatus {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<ContainerMetadata>,
    #[prost(int32, tag = "3")]
    pub state: i32,
}

/// No filter: every pod sandbox.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodSandboxRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodSandboxResponse {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<PodSandbox>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub namespace: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandbox {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<PodSandboxMetadata>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn frames_round_trip() {
        let request = ContainerStatusRequest { container_id: "abc".into() };
        let framed = frame(&request);
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 5]);
        let back = ContainerStatusRequest::decode(unframe(&framed).unwrap()).unwrap();
        assert_eq!(back, request);
        let empty = frame(&ListPodSandboxRequest {});
        assert_eq!(empty, [0, 0, 0, 0, 0]);
        assert_eq!(unframe(&empty).unwrap(), b"");
    }

    #[test]
    fn malformed_frames_are_refused() {
        assert!(unframe(b"").is_err());
        assert!(unframe(&[0, 0, 0, 0]).is_err());
        assert!(unframe(&[1, 0, 0, 0, 1, 7]).is_err(), "compressed");
        assert!(unframe(&[0, 0, 0, 0, 2, 7]).is_err(), "short");
        assert!(unframe(&[0, 0, 0, 0, 1, 7, 8]).is_err(), "long");
    }

    #[test]
    fn grpc_status_other_than_ok_is_an_error() {
        let mut headers = hyper::HeaderMap::new();
        assert!(grpc_failure("M", &headers).is_none());
        headers.insert("grpc-status", "0".parse().unwrap());
        assert!(grpc_failure("M", &headers).is_none());
        headers.insert("grpc-status", "5".parse().unwrap());
        headers.insert("grpc-message", "not found".parse().unwrap());
        let err = grpc_failure("ContainerStatus", &headers).unwrap();
        assert_eq!(err.to_string(), "ContainerStatus: gRPC status 5: not found");
    }

    /// Decodes what a runtime sends, fields sonde does not declare included: an encoding of a
    /// Container with its image (4) and state (6) fields, written out byte by byte.
    #[test]
    fn unknown_fields_are_skipped() {
        let mut bytes = vec![0x0a, 3, b'c', b'i', b'd', 0x12, 2, b'p', b'1'];
        bytes.extend_from_slice(&[0x1a, 5, 0x0a, 3, b'a', b'p', b'p']);
        bytes.extend_from_slice(&[0x22, 3, 0x0a, 1, b'x', 0x30, 1]);
        let container = Container::decode(&bytes[..]).unwrap();
        assert_eq!(container.id, "cid");
        assert_eq!(container.pod_sandbox_id, "p1");
        assert_eq!(container.metadata.unwrap().name, "app");
    }

    /// A real HTTP/2 server on a unix socket, answering as a CRI runtime does: a message and a
    /// grpc-status trailer, or a failure in the headers alone.
    #[test]
    fn unary_calls_over_a_unix_socket() {
        let server = fake::Server::start("unary");
        server.set(&[("p1", "web", "shop")], &[("c1", "p1", "app")]);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let mut connection = CriConnection::connect(&server.socket, Duration::from_secs(2)).await.unwrap();
            let listed: ListContainersResponse =
                connection.call(RUNTIME_SERVICE, "ListContainers", &ListContainersRequest {}).await.unwrap();
            assert_eq!(listed.containers.len(), 1);
            assert_eq!(listed.containers[0].metadata.as_ref().unwrap().name, "app");
            let missing = connection
                .call::<_, ContainerStatusResponse>(
                    RUNTIME_SERVICE,
                    "ContainerStatus",
                    &ContainerStatusRequest { container_id: "gone".into() },
                )
                .await;
            assert!(matches!(missing, Err(CriError::Status { code: 5, .. })), "{missing:?}");
            let started = std::time::Instant::now();
            let mut short = CriConnection::connect(&server.socket, Duration::from_millis(200)).await.unwrap();
            let timed_out =
                short.call::<_, ListPodSandboxResponse>(RUNTIME_SERVICE, "Slow", &ListPodSandboxRequest {}).await;
            assert!(matches!(timed_out, Err(CriError::Timeout { .. })), "{timed_out:?}");
            assert!(started.elapsed() < Duration::from_secs(2));
        });
        let absent = runtime.block_on(CriConnection::connect(&server.dir.join("absent.sock"), Duration::from_secs(1)));
        assert!(matches!(absent, Err(CriError::Connect { .. })));
    }
}

/// A CRI runtime for tests: an HTTP/2 server on a unix socket in a directory of its own, on a thread
/// of its own, answering `ListPodSandbox` and `ListContainers` from what the test set, `Slow` after
/// 5 s, and anything else with gRPC status 5 (not found).
#[cfg(test)]
pub(crate) mod fake {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use http_body_util::{Either, Full};
    use hyper::body::Bytes;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use super::*;

    #[derive(Default)]
    pub(crate) struct State {
        pods: Mutex<ListPodSandboxResponse>,
        containers: Mutex<ListContainersResponse>,
        /// ListContainers calls answered.
        pub lists: AtomicUsize,
    }

    pub(crate) struct Server {
        pub dir: PathBuf,
        pub socket: PathBuf,
        pub state: Arc<State>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Server {
        pub fn start(tag: &str) -> Server {
            let dir = std::env::temp_dir().join(format!("sonde-fake-cri-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let socket = dir.join("cri.sock");
            let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
            listener.set_nonblocking(true).unwrap();
            let state = Arc::new(State::default());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let served = state.clone();
            let thread = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                    let accept = async {
                        loop {
                            let Ok((stream, _)) = listener.accept().await else { return };
                            tokio::spawn(serve(stream, served.clone()));
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = stopped => {}
                    }
                });
            });
            Server { dir, socket, state, stop: Some(stop), thread: Some(thread) }
        }

        /// What the runtime lists: (pod id, name, namespace) and (container id, pod id, name).
        pub fn set(&self, pods: &[(&str, &str, &str)], containers: &[(&str, &str, &str)]) {
            *self.state.pods.lock().unwrap() = ListPodSandboxResponse {
                items: pods
                    .iter()
                    .map(|(id, name, namespace)| PodSandbox {
                        id: id.to_string(),
                        metadata: Some(PodSandboxMetadata { name: name.to_string(), namespace: namespace.to_string() }),
                    })
                    .collect(),
            };
            *self.state.containers.lock().unwrap() = ListContainersResponse {
                containers: containers
                    .iter()
                    .map(|(id, pod, name)| Container {
                        id: id.to_string(),
                        pod_sandbox_id: pod.to_string(),
                        metadata: Some(ContainerMetadata { name: name.to_string() }),
                    })
                    .collect(),
            };
        }

        pub fn lists(&self) -> usize {
            self.state.lists.load(Ordering::SeqCst)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(thread) = self.thread.take() {
                let _ = thread.join();
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn serve(stream: tokio::net::UnixStream, state: Arc<State>) {
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let state = state.clone();
            async move {
                let method = request.uri().path().rsplit('/').next().unwrap_or("").to_string();
                let message = match method.as_str() {
                    "ListPodSandbox" => Some(frame(&*state.pods.lock().unwrap())),
                    "ListContainers" => {
                        state.lists.fetch_add(1, Ordering::SeqCst);
                        Some(frame(&*state.containers.lock().unwrap()))
                    }
                    "Slow" => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        None
                    }
                    _ => None,
                };
                let response = match message {
                    Some(message) => hyper::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(Either::Left(UnaryBody::new(message))),
                    None => hyper::Response::builder()
                        .header("content-type", "application/grpc")
                        .header("grpc-status", "5")
                        .header("grpc-message", "not found")
                        .body(Either::Right(Full::new(Bytes::new()))),
                };
                Ok::<_, std::convert::Infallible>(response.unwrap())
            }
        });
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), service)
            .await;
    }

    /// The body of a successful unary response: the message, then the OK trailer.
    struct UnaryBody(std::collections::VecDeque<hyper::body::Frame<Bytes>>);

    impl UnaryBody {
        fn new(message: Vec<u8>) -> UnaryBody {
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            UnaryBody([hyper::body::Frame::data(Bytes::from(message)), hyper::body::Frame::trailers(trailers)].into())
        }
    }

    impl hyper::body::Body for UnaryBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(Ok))
        }
    }
}
