//! `/metrics`, `/healthz` and a small index page.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the HTTP endpoint serves; implemented by the agent.
pub trait Endpoints: Send + Sync + 'static {
    /// The Prometheus text exposition. Blocking: called on a blocking thread.
    fn metrics(&self) -> Result<String, String>;
    /// Whether /healthz answers 200 (else 503).
    fn ready(&self) -> bool;
    /// Re-reads the config. Blocking.
    fn reload(&self) -> Result<String, String>;
}

/// Limits of the endpoint.
#[derive(Debug, Clone, Default)]
pub struct Limits {}

const INDEX: &str = "<!doctype html>\n<html><head><title>sonde</title></head><body>\n\
<h1>sonde</h1><p>eBPF probes exported as Prometheus metrics.</p>\n\
<ul><li><a href=\"metrics\">/metrics</a></li><li><a href=\"healthz\">/healthz</a></li></ul>\n\
</body></html>\n";

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    scraper: Arc<dyn Endpoints>,
    _limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "accepting a connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let scraper = scraper.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let scraper = scraper.clone();
                async move { Ok::<_, Infallible>(route(&req, &scraper).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "HTTP connection ended with an error");
                    }
                }
                _ = shutdown.changed() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

async fn route(req: &Request<Incoming>, scraper: &Arc<dyn Endpoints>) -> Response<Full<Bytes>> {
    if req.method() == Method::POST && req.uri().path() == "/-/reload" {
        let scraper = scraper.clone();
        return match tokio::task::spawn_blocking(move || scraper.reload()).await {
            Ok(Ok(m)) => text(StatusCode::OK, &format!("{m}\n")),
            Ok(Err(m)) => text(StatusCode::BAD_REQUEST, &format!("{m}\n")),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let scraper = scraper.clone();
            match tokio::task::spawn_blocking(move || scraper.metrics()).await {
                Ok(Ok(body)) => Response::builder()
                    .header(CONTENT_TYPE, prometheus::TEXT_FORMAT)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response\n")),
                Ok(Err(err)) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("encoding metrics failed: {err}\n")),
                Err(err) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("scrape task failed: {err}\n")),
            }
        }
        "/healthz" => {
            if scraper.ready() {
                text(StatusCode::OK, "ok\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting: probes are still being attached\n")
            }
        }
        "/" => Response::builder()
            .header(CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Full::new(Bytes::from_static(INDEX.as_bytes())))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response\n")),
        _ => text(StatusCode::NOT_FOUND, "not found; try /metrics\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
