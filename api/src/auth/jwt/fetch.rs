//! Fetching a remote JWKS: one GET over hyper's connection API (TLS by rustls, trusting only
//! the configured CA), bounded in time and size. At most one fetch a minute, so a pooled
//! client would add nothing.

use super::jwk::{KeySet, parse_jwks};
use super::*;

/// A TLS client trusting only the CA certificates of `ca_file`, speaking HTTP/1.1.
pub(super) fn tls_connector(ca_file: &Path) -> Result<TlsConnector, String> {
    let mut config = Arc::unwrap_or_clone(pgtls::client_config(ca_file, "JWKS")?);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A remote JWKS endpoint and its fetch bookkeeping.
pub(super) struct Remote {
    /// As configured, for logs.
    pub(super) url: String,
    pub(super) target: crate::wire::url::Target,
    /// `None` for http, and for https without a CA file (then fetching fails).
    pub(super) tls: Option<TlsConnector>,
    /// When the last fetch was attempted (successful or not). Held during a fetch so
    /// concurrent refetches coalesce into one.
    pub(super) last_attempt: Mutex<Option<Instant>>,
}

impl Remote {
    /// Fetches and parses the JWKS; a set without any usable key counts as a failure so a
    /// broken answer never wipes the known keys.
    pub(super) async fn fetch(&self) -> Result<KeySet, String> {
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.get())
            .await
            .map_err(|_| format!("timed out after {} s", FETCH_TIMEOUT.as_secs()))??;
        let jwks: Value =
            serde_json::from_slice(&body).map_err(|e| format!("answer is not JSON: {e}"))?;
        let keys = parse_jwks(&jwks);
        if keys.is_empty() {
            return Err("no usable RS256/ES256 signing key in the JWKS".to_owned());
        }
        Ok(keys)
    }

    pub(super) async fn get(&self) -> Result<Bytes, String> {
        let target = &self.target;
        if target.https && self.tls.is_none() {
            return Err("https JWKS URL but no CA file is configured to verify it".to_owned());
        }
        let request = Request::builder()
            .method(Method::GET)
            .uri(target.path.as_str())
            .header(header::HOST, target.authority.as_str())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "viopay-api")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        send(target, self.tls.as_ref(), request).await
    }
}

/// Sends `request` to `target` on a fresh connection, over TLS with `tls` when the target is
/// https (the caller has checked that it has a connector then).
async fn send<B>(
    target: &crate::wire::url::Target,
    tls: Option<&TlsConnector>,
    request: Request<B>,
) -> Result<Bytes, String>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = crate::wire::outbound::connect(target, tls).await?;
    exchange(TokioIo::new(io), request).await
}

/// One HTTP/1.1 request on a fresh connection; 200 and a bounded body required.
pub(super) async fn exchange<T, B>(io: T, request: Request<B>) -> Result<Bytes, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut sender, mut connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let work = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        if response.status() != StatusCode::OK {
            return Err(format!("HTTP status {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BODY)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        Ok(body.to_bytes())
    };
    tokio::pin!(work);
    tokio::select! {
        result = &mut work => result,
        closed = &mut connection => {
            // The connection may finish once the whole answer is buffered; then read it.
            closed.map_err(|e| format!("HTTP: {e}"))?;
            work.await
        }
    }
}

/// `POST` of a form to an OpenID provider's token endpoint (the portal's code exchange in
/// keycloak mode), over TLS trusting only `ca_file` (plain HTTP only to loopback, as for
/// JWKS). The answer's body when it is 200; the provider's own error otherwise, for the log.
///
/// # Errors
/// A message for the log: connection, TLS, status, size or time.
pub async fn post_form(url: &str, ca_file: Option<&Path>, form: String) -> Result<Bytes, String> {
    let target = crate::wire::url::jwks_target(url)?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(target.path.as_str())
        .header(header::HOST, target.authority.as_str())
        .header(header::ACCEPT, "application/json")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::USER_AGENT, "viopay-api")
        .header(header::CONNECTION, "close")
        .body(http_body_util::Full::new(Bytes::from(form)))
        .map_err(|e| format!("request: {e}"))?;
    let tls = match (target.https, ca_file) {
        (false, _) => None,
        (true, Some(ca_file)) => Some(tls_connector(ca_file)?),
        (true, None) => return Err("https token URL but no CA file to verify it".to_owned()),
    };
    let work = send(&target, tls.as_ref(), request);
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .map_err(|_| format!("timed out after {} s", FETCH_TIMEOUT.as_secs()))?
}
