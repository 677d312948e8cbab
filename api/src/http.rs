//! The HTTP(S) server: connections, TLS, graceful shutdown, request ids, routing, and the one
//! place where errors become answers.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::error::{ApiError, Code};

/// What every request handler can reach.
#[derive(Debug)]
pub struct App {
    config: Config,
}

impl App {
    /// The application over its configuration.
    pub const fn new(config: Config) -> Self {
        Self { config }
    }
}

/// Builds the TLS acceptor from the configured PEM files (TLS 1.2 and 1.3, ring provider).
///
/// # Errors
/// A message naming the file or the problem.
pub fn tls_acceptor(config: &Config) -> Result<Option<TlsAcceptor>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let Some(files) = &config.tls else {
        return Ok(None);
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("tls.cert {}: {e}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("tls.key {}: {e}", files.key.display()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("tls: {e}"))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(server))))
}

/// Serves until `shutdown` completes, then lets requests in flight finish (up to 30 s).
pub async fn serve(
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    let header_timeout = Duration::from_secs(app.config.header_timeout_secs);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let app = Arc::clone(&app);
        let service = hyper::service::service_fn(move |req| handle(Arc::clone(&app), req));
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        match &tls {
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(header_timeout, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn).await;
                });
            }
            None => {
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        }
    }
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still running after 30 s; stopping anyway");
    }
}

/// Every request: its id, its route, and one mapping from errors to answers.
async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let request_id = request_id(&req);
    let answer = route(&app, &req).await;
    let mut response = match answer {
        Ok((status, body)) => json_response(status, &body),
        Err(e) => error_response(&e, &request_id),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    Ok(response)
}

/// The only place an [`ApiError`] becomes an HTTP answer.
fn error_response(error: &ApiError, request_id: &str) -> Response<Full<Bytes>> {
    let status =
        StatusCode::from_u16(error.code().status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, &error.body(request_id));
    if error.code() == Code::MethodNotAllowed {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
    }
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The caller's `X-Request-Id` when it is 1-64 characters of `[0-9A-Za-z._-]`, else a new one.
fn request_id(req: &Request<Incoming>) -> String {
    let given = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok());
    match given {
        Some(id) if valid_request_id(id) => id.to_owned(),
        _ => new_request_id(),
    }
}

fn valid_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn new_request_id() -> String {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut bytes = [0u8; 24];
    if getrandom::fill(&mut bytes).is_err() {
        return "req-unavailable".into();
    }
    let id: String = bytes
        .iter()
        .map(|b| char::from(*ALPHABET.get(usize::from(b % 62)).unwrap_or(&b'0')))
        .collect();
    format!("req_{id}")
}

type Answer = Result<(StatusCode, Value), ApiError>;

async fn route(app: &App, req: &Request<Incoming>) -> Answer {
    match req.uri().path() {
        "/health/live" => {
            only_get(req, || async {
                Ok((StatusCode::OK, json!({"status": "ok"})))
            })
            .await
        }
        "/health/ready" => only_get(req, || ready(app)).await,
        _ => Err(ApiError::new(Code::NotFound, "not found")),
    }
}

async fn only_get<F, Fut>(req: &Request<Incoming>, f: F) -> Answer
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Answer>,
{
    if req.method() == Method::GET || req.method() == Method::HEAD {
        f().await
    } else {
        Err(ApiError::new(
            Code::MethodNotAllowed,
            "method not allowed on this path",
        ))
    }
}

/// Ready when keyd answers a ping within two seconds.
async fn ready(app: &App) -> Answer {
    let keyd = async {
        let client = keyd_proto::Client::connect(&app.config.keyd_socket)
            .await
            .ok()?;
        client.call(&keyd_proto::message::Ping {}).await.ok()
    };
    match tokio::time::timeout(Duration::from_secs(2), keyd).await {
        Ok(Some(_)) => Ok((
            StatusCode::OK,
            json!({"status": "ready", "checks": {"keyd": "ok"}}),
        )),
        _ => Err(ApiError::new(Code::Unavailable, "key service unavailable")
            .with_details(json!({"checks": {"keyd": "down"}}))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(valid_request_id("abc-DEF_1.2"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id(&"a".repeat(65)));
        assert!(!valid_request_id("a b"));
        let a = new_request_id();
        assert!(valid_request_id(&a) && a.len() == 28);
        assert_ne!(a, new_request_id());
    }
}
