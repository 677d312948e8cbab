//! The HTTP(S) server: connections, TLS, graceful shutdown, request ids, routing, and the one
//! place where errors become answers.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::auth;
use crate::config::Config;
use crate::error::{ApiError, Code};
use crate::http::routes::{Access, Op, Route};
use crate::request::Call;
use crate::request::Services;
use metrics::Metrics;

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

mod answers;
pub mod conn;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod routes;
pub mod schemas;
mod web;

/// What the server works with: the handlers' services and its own request metrics.
#[derive(Debug)]
pub struct Served {
    /// What handlers use.
    pub services: Arc<Services>,
    /// Request counters and latencies.
    pub metrics: Metrics,
    /// Rate limits' buckets.
    pub limiter: ratelimit::Limiter,
}

impl std::ops::Deref for Served {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.services
    }
}

/// Serves until `shutdown` completes, then lets requests in flight finish (up to 30 s).
pub async fn serve(
    services: Arc<Services>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let app = Arc::new(Served {
        limiter: ratelimit::Limiter::new(services.config.rate_limits.clone()),
        services,
        metrics: Metrics::new(),
    });
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    let header_timeout = Duration::from_secs(app.config.header_timeout_secs);
    let limits = conn::Limits::new(
        conn::fit_to_fd_limit(app.config.max_connections),
        app.config.max_connections_per_client,
    );
    let mut backoff = conn::AcceptBackoff::default();
    loop {
        // A place first, then accept: beyond the cap, connections wait in the listen queue
        // instead of taking descriptors.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = limits.place() => match permit {
                Some(p) => p,
                None => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    let pause = backoff.failed(&e, Instant::now());
                    drop(permit);
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        backoff.succeeded();
        let Some(admitted) = limits.admit(peer.ip(), permit) else {
            refuse_crowding_client(stream, tls.is_some());
            continue;
        };
        let app = Arc::clone(&app);
        let source = peer.ip();
        let service = hyper::service::service_fn(move |req| handle(Arc::clone(&app), source, req));
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        match &tls {
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let _admitted = admitted;
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(header_timeout, acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let io = TokioIo::new(answers::Answers::new(stream));
                    let _ = watcher.watch(builder.serve_connection(io, service)).await;
                });
            }
            None => {
                let io = TokioIo::new(answers::Answers::new(stream));
                let conn = graceful.watch(builder.serve_connection(io, service));
                tokio::spawn(async move {
                    let _admitted = admitted;
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

/// A client already holding its share of connections: on plain HTTP it reads why (429 with
/// the contract's body); on TLS the connection is closed, since a handshake is the very cost
/// the cap saves.
fn refuse_crowding_client(stream: tokio::net::TcpStream, tls: bool) {
    if tls {
        return;
    }
    let answer = answers::closing_answer(
        &ApiError::new(
            Code::RateLimited,
            "too many connections from this client address",
        )
        .with_retry_after(1),
        "Too Many Requests",
    );
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        let mut stream = stream;
        // Answer, then read what the client sent until it closes (for a second at most):
        // closing with unread bytes would reset the connection and lose the answer.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            use tokio::io::AsyncReadExt as _;
            stream.write_all(&answer).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 4096];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<(), std::io::Error>(())
        })
        .await;
    });
}

/// Every request: its id, its route, its body, its caller, and one mapping from errors to
/// answers.
async fn handle(
    app: Arc<Served>,
    source: std::net::IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = Instant::now();
    let request_id = request_id(&req);
    let method = method_label(req.method());
    let (parts, body) = req.into_parts();
    if crate::portal::serves(parts.uri.path()) {
        let mut response = web::serve(&app, source, &parts, body, &request_id).await;
        if method == "HEAD" {
            *response.body_mut() = Full::new(Bytes::new());
        }
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-request-id", value);
        }
        let status = response.status().as_u16();
        app.metrics
            .record("portal", method, status, started.elapsed());
        return Ok(response);
    }
    let found = routes::find(parts.method.as_str(), parts.uri.path());
    let route_label = found.as_ref().map_or("unmatched", |(r, _)| r.path);
    let mut quota = None;
    let answer = match found {
        Ok((route, params)) => {
            let asked = Asked {
                request_id: &request_id,
                source,
            };
            run(&app, route, params, &parts, body, asked, &mut quota).await
        }
        Err(e) => Err(e),
    };
    let mut response = match answer {
        Ok(reply) => reply.into_response(),
        Err(e) => error_response(&e, &request_id),
    };
    if let Some(q) = quota
        && response.status().is_success()
    {
        quota_headers(&mut response, q.limit, q.remaining, q.reset);
    }
    if method == "HEAD" {
        // hyper sends no body to a HEAD request; the declared length must say so too, or the
        // connection's answer stream (see `answers`) would wait for bytes that never come.
        *response.body_mut() = Full::new(Bytes::new());
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let status = response.status().as_u16();
    let took = started.elapsed();
    app.metrics.record(route_label, method, status, took);
    // The route pattern, never the raw path or a body: nothing here can carry a secret.
    if status >= 500 {
        tracing::warn!(request_id = %request_id, method, route = route_label, status, micros = took.as_micros(), "request failed");
    } else {
        tracing::debug!(request_id = %request_id, method, route = route_label, status, micros = took.as_micros(), "request");
    }
    Ok(response)
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// A successful answer.
#[derive(Debug)]
pub enum Reply {
    /// JSON with the route's status.
    Json(StatusCode, Value),
    /// Text with a content type (metrics).
    Text(&'static str, String),
}

impl Reply {
    fn into_response(self) -> Response<Full<Bytes>> {
        match self {
            Self::Json(status, body) => json_response(status, &body),
            Self::Text(content_type, body) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                response
            }
        }
    }
}

/// How long a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The request's body: declared in JSON (or undeclared), within the route's limit, arrived in
/// time.
async fn read_body(
    app: &Served,
    route: &Route,
    parts: &hyper::http::request::Parts,
    body: Incoming,
) -> Result<Bytes, ApiError> {
    // POS bodies are envelopes of at most 32 KiB of plaintext: 64 KiB is plenty.
    let limit = if route.path.starts_with("/pos/") && route.access == Access::Pos {
        app.config.max_body_bytes.min(64 * 1024)
    } else {
        app.config.max_body_bytes
    };
    let too_large = || ApiError::new(Code::BodyUnreadable, "body too large");
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let has_body =
        declared.is_some_and(|n| n > 0) || parts.headers.contains_key(header::TRANSFER_ENCODING);
    if has_body && !json_content_type(parts.headers.get(header::CONTENT_TYPE)) {
        return Err(ApiError::new(
            Code::UnsupportedMediaType,
            "request bodies are JSON: send Content-Type: application/json",
        ));
    }
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // A client that sends its headers and then trickles the body does not hold the
    // connection for ever.
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(ApiError::new(
            Code::BodyUnreadable,
            "the body could not be read (malformed chunks or an aborted upload)",
        )),
        Err(_) => Err(ApiError::new(
            Code::BodyUnreadable,
            "the body did not arrive in time",
        )),
    }
}

/// Whether a body's declared type is JSON: `application/json` or `application/…+json`, with
/// at most a UTF-8 charset. A body that declares no type is read as JSON (the contract says
/// bodies are JSON); one that declares another type is refused rather than guessed at.
fn json_content_type(value: Option<&HeaderValue>) -> bool {
    let Some(value) = value else {
        return true;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let mut params = text.split(';');
    let essence = params
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json") && sub.len() > 5);
    json && params.all(|p| match p.split_once('=') {
        Some((name, v)) if name.trim().eq_ignore_ascii_case("charset") => {
            v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        _ => true,
    })
}

/// Where a request came from, for the audit trail.
#[derive(Debug, Clone, Copy)]
struct Asked<'a> {
    request_id: &'a str,
    source: std::net::IpAddr,
}

/// Authenticates the caller, reads the body (within the limit), runs the handler: a Bearer
/// call that may change something inside its audit scope (`store::audit`), so that its first
/// change is written with its audit entry.
async fn run(
    app: &Served,
    route: &'static Route,
    params: Vec<&str>,
    parts: &hyper::http::request::Parts,
    body: Incoming,
    asked: Asked<'_>,
    quota: &mut Option<ratelimit::Quota>,
) -> Result<Reply, ApiError> {
    let mutation =
        route.method != "GET" && matches!(route.access, Access::Bearer | Access::BearerNoSession);
    let Some(context) =
        mutation.then(|| audit_context(route, parts.uri.path(), asked.request_id, asked.source))
    else {
        return run_inner(app, route, params, parts, body, asked, quota).await;
    };
    // The caller is known only inside; the scope's context is completed there.
    let inner = run_inner(app, route, params, parts, body, asked, quota);
    crate::store::audit::scope(context, inner).await
}

/// One rate limit for this request; the tightest quota let through is kept for the headers.
fn limit(
    app: &Served,
    scope: ratelimit::Scope,
    who: &str,
    quota: &mut Option<ratelimit::Quota>,
) -> Result<(), ApiError> {
    let nodes = app.live_nodes.load(std::sync::atomic::Ordering::Relaxed);
    if let Some(q) = app.limiter.check(scope, who, nodes, Instant::now())?
        && quota.is_none_or(|old| q.remaining < old.remaining)
    {
        *quota = Some(q);
    }
    Ok(())
}

/// The limits that apply before anything is verified: terminals by their own id, other
/// callers by address (health checks are never limited: load balancers poll them).
fn limit_caller(
    app: &Served,
    route: &Route,
    parts: &hyper::http::request::Parts,
    source: std::net::IpAddr,
    quota: &mut Option<ratelimit::Quota>,
) -> Result<(), ApiError> {
    use ratelimit::Scope;
    match route.op {
        Op::HealthLive | Op::HealthReady => Ok(()),
        Op::ClientSession | Op::AuthToken => {
            limit(app, Scope::Credentials, &source.to_string(), quota)
        }
        _ if route.access == Access::Pos => {
            let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
            let who = match (header("x-terminal-id"), header("x-device-id")) {
                (Some(t), _) => format!("t:{t}"),
                (None, Some(d)) => format!("d:{d}"),
                (None, None) => format!("a:{source}"),
            };
            limit(app, Scope::Terminal, &who, quota)
        }
        _ => limit(app, Scope::Address, &source.to_string(), quota),
    }
}

fn audit_context(
    route: &Route,
    path: &str,
    request_id: &str,
    source: std::net::IpAddr,
) -> crate::store::audit::Context {
    crate::store::audit::Context {
        subject: String::new(),
        role: String::new(),
        action: format!("{:?}", route.op),
        method: route.method.to_owned(),
        path: path.to_owned(),
        request_id: request_id.to_owned(),
        source: source.to_string(),
        at: crate::wire::time::now(),
        entry_id: crate::wire::ids::time_ordered("au_").unwrap_or_default(),
    }
}

async fn run_inner(
    app: &Served,
    route: &'static Route,
    params: Vec<&str>,
    parts: &hyper::http::request::Parts,
    body: Incoming,
    asked: Asked<'_>,
    quota: &mut Option<ratelimit::Quota>,
) -> Result<Reply, ApiError> {
    let now = crate::wire::time::now();
    limit_caller(app, route, parts, asked.source, quota)?;
    // A bearer call is judged on its headers: a caller without a valid token is turned away
    // before it can make the server wait for, or hold, a megabyte of body.
    let principal = match route.access {
        Access::Public | Access::Pos => None,
        Access::Bearer | Access::BearerNoSession => {
            let authorization = parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let claims = app.auth.verify(authorization, now).await?;
            let principal = auth::principal(&app.auth, &app.db, &claims).await?;
            if route.access == Access::Bearer {
                auth::require_session(&app.db, &principal, now).await?;
            }
            crate::store::audit::caller(&principal.sub, principal.role.as_str());
            limit(app, ratelimit::Scope::Principal, &principal.sub, quota)?;
            Some(principal)
        }
    };
    let body = match read_body(app, route, parts, body).await {
        Ok(b) => b,
        Err(e) => {
            // On terminal calls the POS headers are judged first, whatever the body.
            if route.access == Access::Pos {
                let stub = Call {
                    params: Vec::new(),
                    query: Vec::new(),
                    headers: &parts.headers,
                    body: Bytes::new(),
                    now,
                    principal: None,
                };
                crate::pos::pos_headers(
                    &crate::pos::Terminals::of(&app.services),
                    &stub,
                    route.op != Op::PosBootstrap,
                )?;
            }
            return Err(e);
        }
    };
    // An action that takes no body ignores an empty one or any JSON, but not bytes that are
    // not JSON: those are a client's mistake worth telling (400/`4002`). Terminal calls judge
    // their body in their own order.
    if !body.is_empty() && route.access != Access::Pos && schemas::bodiless(route.op) {
        crate::wire::json::parse(&body)
            .map_err(|e| ApiError::new(Code::BodyUnreadable, e.to_string()))?;
    }
    let call = Call {
        params,
        query: crate::request::parse_query(parts.uri.query()),
        headers: &parts.headers,
        body,
        now,
        principal,
    };
    let status = StatusCode::from_u16(route.status).unwrap_or(StatusCode::OK);
    let with_status = |reply: Reply| match reply {
        Reply::Json(_, body) => Reply::Json(status, body),
        text @ Reply::Text(..) => text,
    };
    // Backoffice creations under an Idempotency-Key (the charge calls keep theirs atomically
    // with the charge, in the engine).
    let keyed = route.access == Access::Bearer
        && route.method == "POST"
        && !matches!(
            route.op,
            Op::ChargeCreate | Op::ChargeRefund | Op::ChargeCancel
        );
    let key = if keyed {
        crate::domain::idem::key_header(call.headers)?
    } else {
        None
    };
    let (Some(key), Some(p)) = (key, &call.principal) else {
        return dispatch(app, route.op, &call).await.map(with_status);
    };
    let path = parts.uri.path();
    let running = match app
        .idempotency
        .begin(&app.db, &p.sub, "POST", path, key, &call.body, now)
        .await?
    {
        crate::domain::idem::Begin::Replay(kept) if kept.status < 300 => {
            let status = StatusCode::from_u16(kept.status).unwrap_or(StatusCode::OK);
            return Ok(Reply::Json(status, kept.body));
        }
        crate::domain::idem::Begin::Replay(kept) => return Err(ApiError::from_stored(&kept.body)),
        crate::domain::idem::Begin::Run(running) => running,
    };
    let answer = dispatch(app, route.op, &call).await.map(with_status);
    let keep = match &answer {
        Ok(Reply::Json(status, body)) => {
            Some(running.keep(status.as_u16(), &withhold_secrets(body), now)?)
        }
        Err(e) if crate::domain::idem::is_final(e) => Some(running.keep_error(e, now)?),
        _ => None,
    };
    if let Some(w) = keep {
        app.db
            .commit(vec![w], ApiError::new(Code::Conflict, "idempotency record"))
            .await?;
    }
    answer
}

/// A kept answer never holds a secret shown once (a device's identity secret, an API client's
/// secret): a replay shows the object with the secret withheld.
fn withhold_secrets(body: &Value) -> Value {
    match body {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    if k == "secret" || k == "client_secret" {
                        (
                            k.clone(),
                            Value::String("<shown once; withheld on replay>".into()),
                        )
                    } else {
                        (k.clone(), withhold_secrets(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(withhold_secrets).collect()),
        other => other.clone(),
    }
}

/// Route table entry → handler.
async fn dispatch(app: &Served, op: Op, call: &Call<'_>) -> Result<Reply, ApiError> {
    use crate::backoffice as b;
    use crate::backoffice::Owner::{Merchant, Reseller};
    let bo = &crate::backoffice::Backoffice::of(&app.services);
    let terminals = &crate::pos::Terminals::of(&app.services);
    let json = |v: Value| Reply::Json(StatusCode::OK, v);
    let value = match op {
        Op::HealthLive => json!({"status": "ok"}),
        Op::HealthReady => ready(app).await?,
        Op::Metrics => {
            if !app.config.metrics {
                return Err(ApiError::not_found());
            }
            return Ok(Reply::Text(
                "text/plain; version=0.0.4",
                app.metrics.render(),
            ));
        }
        Op::OpenApi => openapi::document(),
        Op::Jwks => app.auth.jwks(),
        Op::SessionInitiate => b::sessions::session_initiate(bo, call).await?,
        Op::ClientSession | Op::AuthToken => b::sessions::client_session(bo, call).await?,
        Op::ResellerCreate => b::resellers::reseller_create(bo, call).await?,
        Op::ResellerList => b::resellers::reseller_list(bo, call).await?,
        Op::ResellerGet => b::resellers::reseller_get(bo, call).await?,
        Op::ResellerPatch => b::resellers::reseller_patch(bo, call).await?,
        Op::ResellerDelete => b::resellers::reseller_delete(bo, call).await?,
        Op::ResellerHierarchy => b::resellers::reseller_hierarchy(bo, call).await?,
        Op::FeeTemplateCreate => b::fee_templates::fee_template_create(bo, call).await?,
        Op::FeeTemplateList => b::fee_templates::fee_template_list(bo, call).await?,
        Op::FeeTemplateGet => b::fee_templates::fee_template_get(bo, call).await?,
        Op::FeeTemplatePatch => b::fee_templates::fee_template_patch(bo, call).await?,
        Op::FeeTemplateDelete => b::fee_templates::fee_template_delete(bo, call).await?,
        Op::BrandingGet => b::branding::branding_get(bo, call).await?,
        Op::BrandingPut => b::branding::branding_put(bo, call).await?,
        Op::DomainsGet => b::branding::domains_get(bo, call).await?,
        Op::DomainsPut => b::branding::domains_put(bo, call).await?,
        Op::ResellerUserCreate => b::users::user_create(bo, call, Reseller).await?,
        Op::ResellerUserList => b::users::user_list(bo, call, Reseller).await?,
        Op::ResellerUserGet => b::users::user_get(bo, call, Reseller).await?,
        Op::ResellerUserPatch => b::users::user_patch(bo, call, Reseller).await?,
        Op::ResellerUserPassword => b::users::user_password(bo, call, Reseller).await?,
        Op::ResellerUserDelete => b::users::user_delete(bo, call, Reseller).await?,
        Op::MerchantCreate => b::merchants::merchant_create(bo, call).await?,
        Op::MerchantList => b::merchants::merchant_list(bo, call).await?,
        Op::MerchantGet => b::merchants::merchant_get(bo, call).await?,
        Op::MerchantPatch => b::merchants::merchant_patch(bo, call).await?,
        Op::MerchantParameters => b::merchants::merchant_parameters(bo, call).await?,
        Op::LocationCreate => b::locations::location_create(bo, call).await?,
        Op::LocationList => b::locations::location_list(bo, call).await?,
        Op::LocationGet => b::locations::location_get(bo, call).await?,
        Op::LocationPatch => b::locations::location_patch(bo, call).await?,
        Op::LocationDelete => b::locations::location_delete(bo, call).await?,
        Op::DeviceCreate => b::devices::device_create(bo, call).await?,
        Op::DeviceList => b::devices::device_list(bo, call).await?,
        Op::DeviceGet => b::devices::device_get(bo, call).await?,
        Op::DevicePatch => b::devices::device_patch(bo, call).await?,
        Op::DeviceDisable => b::devices::device_disable(bo, call).await?,
        Op::DeviceEnable => b::devices::device_enable(bo, call).await?,
        Op::DeviceIdentityKey => b::devices::device_identity_key(bo, call).await?,
        Op::DeviceRotateKeys => b::devices::device_rotate_keys(bo, call).await?,
        Op::DeviceParameters => b::devices::device_parameters(bo, call).await?,
        Op::UserCreate => b::users::user_create(bo, call, Merchant).await?,
        Op::UserList => b::users::user_list(bo, call, Merchant).await?,
        Op::UserGet => b::users::user_get(bo, call, Merchant).await?,
        Op::UserPatch => b::users::user_patch(bo, call, Merchant).await?,
        Op::UserPassword => b::users::user_password(bo, call, Merchant).await?,
        Op::UserDelete => b::users::user_delete(bo, call, Merchant).await?,
        Op::ApiClientCreate => b::api_clients::api_client_create(bo, call).await?,
        Op::ApiClientList => b::api_clients::api_client_list(bo, call).await?,
        Op::ApiClientDelete => b::api_clients::api_client_delete(bo, call).await?,
        Op::PosBootstrap => crate::pos::bootstrap(terminals, call).await?,
        Op::PosPairingCode => crate::pos::pairing_code(terminals, call).await?,
        Op::PosStatus => crate::pos::status(terminals, call).await?,
        Op::PosClaim => crate::pos::claim(terminals, call).await?,
        Op::PosAttest => crate::pos::attest(terminals, call).await?,
        Op::PosKeys => crate::pos::keys(terminals, call).await?,
        Op::PosConfig => crate::pos::config(terminals, call).await?,
        Op::PosTerminalParameters => crate::pos::terminal_parameters(terminals, call).await?,
        Op::PosActivate => crate::pos::activate(terminals, call).await?,
        Op::PosCharge => crate::pos::charges::create(terminals, call).await?,
        Op::PosRefund => crate::pos::charges::refund(terminals, call).await?,
        Op::PosCancel => crate::pos::charges::cancel(terminals, call, "cancel").await?,
        Op::PosReverse => crate::pos::charges::cancel(terminals, call, "reverse").await?,
        Op::ChargeCreate => b::charges::create_backoffice(bo, call).await?,
        Op::ChargeList => b::charges::list_backoffice(bo, call).await?,
        Op::ChargeGet => b::charges::get_backoffice(bo, call).await?,
        Op::ChargeRefund => b::charges::refund_backoffice(bo, call).await?,
        Op::ChargeCancel => b::charges::cancel_backoffice(bo, call).await?,
        Op::SettlementCreate => b::charges::settle(bo, call).await?,
        Op::SettlementList => b::charges::settlements(bo, call).await?,
        Op::TransactionList => b::charges::transactions(bo, call).await?,
        Op::TransactionGet => b::charges::transaction(bo, call).await?,
        Op::EventList => b::events::event_list(bo, call).await?,
        Op::AuditList => b::audit::audit_list(bo, call).await?,
        Op::AuditVerify => b::audit::audit_verify(bo, call).await?,
        Op::AppVersionPut => b::app_versions::app_version_put(bo, call).await?,
        Op::AppVersionList => b::app_versions::app_version_list(bo, call).await?,
        Op::PosHeartbeat => crate::pos::heartbeats::heartbeat(terminals, call).await?,
        Op::PosUpdateCheck => crate::pos::heartbeats::update_check(terminals, call).await?,
        Op::EventGet => b::events::event_get(bo, call).await?,
        Op::MerchantWebhookCreate => b::webhooks::endpoint_create(bo, call, Merchant).await?,
        Op::MerchantWebhookList => b::webhooks::endpoint_list(bo, call, Merchant).await?,
        Op::MerchantWebhookGet => b::webhooks::endpoint_get(bo, call, Merchant).await?,
        Op::MerchantWebhookPatch => b::webhooks::endpoint_patch(bo, call, Merchant).await?,
        Op::MerchantWebhookDelete => b::webhooks::endpoint_delete(bo, call, Merchant).await?,
        Op::MerchantWebhookRotate => {
            b::webhooks::endpoint_rotate_secret(bo, call, Merchant).await?
        }
        Op::MerchantWebhookDeliveries => b::webhooks::delivery_list(bo, call, Merchant).await?,
        Op::MerchantWebhookResend => b::webhooks::delivery_resend(bo, call, Merchant).await?,
        Op::ResellerWebhookCreate => b::webhooks::endpoint_create(bo, call, Reseller).await?,
        Op::ResellerWebhookList => b::webhooks::endpoint_list(bo, call, Reseller).await?,
        Op::ResellerWebhookGet => b::webhooks::endpoint_get(bo, call, Reseller).await?,
        Op::ResellerWebhookPatch => b::webhooks::endpoint_patch(bo, call, Reseller).await?,
        Op::ResellerWebhookDelete => b::webhooks::endpoint_delete(bo, call, Reseller).await?,
        Op::ResellerWebhookRotate => {
            b::webhooks::endpoint_rotate_secret(bo, call, Reseller).await?
        }
        Op::ResellerWebhookDeliveries => b::webhooks::delivery_list(bo, call, Reseller).await?,
        Op::ResellerWebhookResend => b::webhooks::delivery_resend(bo, call, Reseller).await?,
    };
    Ok(json(value))
}

/// The only place an [`ApiError`] becomes an HTTP answer.
fn error_response(error: &ApiError, request_id: &str) -> Response<Full<Bytes>> {
    let status =
        StatusCode::from_u16(error.code().status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json_response(status, &error.body(request_id));
    if let Some(value) = error.allow().and_then(|a| HeaderValue::from_str(a).ok()) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    if let Some(secs) = error.retry_after() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if let Some((limit, remaining, reset)) = error.quota() {
        quota_headers(&mut response, limit, remaining, reset);
    }
    response
}

/// The `RateLimit-*` headers (IETF httpapi rate-limit headers, the three-field form).
fn quota_headers(response: &mut Response<Full<Bytes>>, limit: u32, remaining: u32, reset: u32) {
    let h = response.headers_mut();
    h.insert("ratelimit-limit", HeaderValue::from(limit));
    h.insert("ratelimit-remaining", HeaderValue::from(remaining));
    h.insert("ratelimit-reset", HeaderValue::from(reset));
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    // One allocation of about a sealed charge answer's size: `to_string` grew its buffer from
    // nothing through formatting, one `realloc` per doubling (a few percent of the workers' CPU
    // at load). Writing a `Value` (string keys only) into memory cannot fail; were it to, the
    // answer would be the empty object rather than half a document.
    let mut text = Vec::with_capacity(2048);
    if serde_json::to_writer(&mut text, body).is_err() {
        text = b"{}".to_vec();
    }
    let mut response = Response::new(Full::new(Bytes::from(text)));
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
    crate::wire::ids::id_alnum(24)
        .map_or_else(|_| "req-unavailable".into(), |id| format!("req_{id}"))
}

/// Ready when the store answers and keyd answers a ping within two seconds.
async fn ready(app: &Served) -> Result<Value, ApiError> {
    let storage = app.db.store().check().await.is_ok();
    let keyd = tokio::time::timeout(
        Duration::from_secs(2),
        app.keyd.call(&keyd_proto::message::Ping {}),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let word = |ok: bool| if ok { "ok" } else { "down" };
    let checks = json!({"storage": word(storage), "keyd": word(keyd)});
    if storage && keyd {
        Ok(json!({"status": "ready", "checks": checks}))
    } else {
        let down = match (storage, keyd) {
            (false, false) => "storage and key service unavailable",
            (false, true) => "storage unavailable",
            _ => "key service unavailable",
        };
        Err(ApiError::new(Code::Unavailable, down).with_details(json!({"checks": checks})))
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

    #[test]
    fn json_content_types() {
        let ok = |v: &str| json_content_type(Some(&HeaderValue::from_str(v).unwrap()));
        assert!(json_content_type(None));
        for v in [
            "application/json",
            "Application/JSON; charset=UTF-8",
            "application/json;charset=\"utf-8\"",
            "application/merge-patch+json",
        ] {
            assert!(ok(v), "{v}");
        }
        for v in [
            "application/x-www-form-urlencoded",
            "text/plain",
            "application/json; charset=latin1",
            "application/+json",
            "application/jsonp",
            "multipart/form-data; boundary=x",
        ] {
            assert!(!ok(v), "{v}");
        }
    }
}
