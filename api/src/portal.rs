//! The portal: web pages for merchants and resellers, and, in embedded mode, the OpenID
//! Connect provider they sign in at.
//!
//! Server-rendered HTML and plain forms, no script: every page works with the browser's own
//! controls, the Content-Security-Policy forbids scripts outright, and there is no build step
//! for anyone to run. The pages hold no power of their own: each reads and changes things
//! through [`Api`], which the HTTP layer implements by running the very route, authorisation,
//! audit scope and rate limit a bearer call would run, as the signed-in person. So the portal
//! can do nothing its user could not do with `curl` and a token.
//!
//! Parts:
//! - [`provider`]: the embedded sign-in provider (`/.well-known/openid-configuration`,
//!   `/oauth/authorize` with its login page, `/oauth/token`, `/oauth/logout`): authorization
//!   code with PKCE (S256 only), passwords as keyd's officers' are kept, lockout.
//! - [`signin`]: the portal as that provider's client (`/portal/login`, `/portal/callback`,
//!   `/portal/logout`) and its session.
//! - [`pages`]: what signed-in people see and do.
//! - [`html`]: escaping and the page frame with the host's branding.
//!
//! Every browser-held value (cookies, codes) is stored only as its SHA-256
//! (`domain::websessions`). Cookies are `__Host-` prefixed, `Secure`, `HttpOnly` and
//! `SameSite=Lax`; every form that changes something carries the session's CSRF token and is
//! refused from another origin.

pub mod html;
pub mod pages;
pub mod provider;
pub mod signin;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use http_body_util::Full;
use hyper::HeaderMap;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::Value;

use crate::auth::Auth;
use crate::auth::jwt::Claims;
use crate::config::Config;
use crate::domain::model::Reseller;
use crate::error::ApiError;
use crate::keyd::Keyd;
use crate::request::Services;
use crate::store::db::Db;

/// The API as the portal uses it: a bearer call made in-process as the signed-in person.
pub trait Api: Sync {
    /// Runs `method path_and_query` with `body` as the holder of `claims` would over HTTP with
    /// the token they were taken from: the same route, authorisation, session check, audit
    /// entry and rate limit. The answer's JSON, or the error the wire would carry.
    fn call<'a>(
        &'a self,
        claims: &'a Claims,
        source: IpAddr,
        method: &'a str,
        path_and_query: &'a str,
        body: Option<Value>,
    ) -> Pin<Box<dyn Future<Output = Result<Value, ApiError>> + Send + 'a>>;
}

/// What the portal's parts need of the services.
#[derive(Debug, Clone, Copy)]
pub struct Portal<'a> {
    /// Records.
    pub db: &'a Db,
    /// The key service (password MACs).
    pub keyd: &'a Keyd,
    /// Token signing and verification.
    pub auth: &'a Auth,
    /// The configuration.
    pub config: &'a Config,
}

impl<'a> Portal<'a> {
    /// The portal's part of the services.
    pub fn of(s: &'a Services) -> Self {
        Self {
            db: &s.db,
            keyd: &s.keyd,
            auth: &s.auth,
            config: &s.config,
        }
    }
}

/// One browser request, read.
#[derive(Debug)]
pub struct WebRequest<'a> {
    /// `GET` or `POST` (others are refused before).
    pub method: &'a str,
    /// The path.
    pub path: &'a str,
    /// Decoded query pairs.
    pub query: Vec<(String, String)>,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// The body (forms).
    pub body: Bytes,
    /// The peer's address.
    pub source: IpAddr,
    /// Unix seconds at arrival.
    pub now: i64,
    /// Whether the connection is TLS (for the redirect addresses the portal builds).
    pub tls: bool,
}

impl WebRequest<'_> {
    /// A query value.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The host asked for, lower case, without a port (`Host`, or the authority of an
    /// absolute URI).
    pub fn host(&self) -> String {
        self.authority()
            .rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or_else(|| self.authority(), |(h, _)| h.to_owned())
            .to_ascii_lowercase()
    }

    /// `host[:port]` as the browser addressed it.
    pub fn authority(&self) -> String {
        self.headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// This server's origin as the browser sees it.
    pub fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }

    /// A cookie's value.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// The fields of a form body.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    /// Whether a state-changing request comes from a page of this origin: browsers send
    /// `Origin` on every form POST, so one that names another origin (or none at all) is
    /// refused, whatever cookies came with it.
    pub fn same_origin(&self) -> bool {
        self.headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|o| o == self.origin())
    }
}

/// The value of a form field.
pub fn field<'f>(form: &'f [(String, String)], name: &str) -> &'f str {
    form.iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// Whose portal a host is: the platform's own (`None`) or a reseller's. `Err` for a host that
/// is neither, which the portal does not serve.
///
/// # Errors
/// 404 for an unknown host; 503 when the store is down.
pub async fn host_owner(p: &Portal<'_>, host: &str) -> Result<Option<Reseller>, ApiError> {
    if p.config.platform.hosts.iter().any(|h| h == host) {
        return Ok(None);
    }
    match p.db.owner("portal_host", host).await? {
        Some(id) => Ok(Some(p.db.find(&id).await?)),
        None => Err(ApiError::not_found()),
    }
}

/// The portal's answers.
pub type WebResponse = Response<Full<Bytes>>;

/// What a page may load: its own stylesheet, images from its origin and logos over HTTPS,
/// forms posted to its own origin; no script, no frames, no plugins.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' https: data:; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The headers every portal answer carries. The referrer policy is `same-origin`, not
/// `no-referrer`: under `no-referrer` browsers send `Origin: null` with form posts, and the
/// origin check of every change needs the real one (other sites still learn nothing).
fn harden(response: &mut WebResponse) {
    let h = response.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// An HTML page.
pub fn page(status: StatusCode, body: String) -> WebResponse {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    harden(&mut r);
    r
}

/// A redirect after a form (303, so the browser follows with GET).
pub fn redirect(to: &str) -> WebResponse {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    harden(&mut r);
    r
}

/// JSON (the provider's discovery document and token answers).
pub fn json(status: StatusCode, body: &Value) -> WebResponse {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    harden(&mut r);
    r
}

/// A static asset with its content type, cacheable for a day.
fn asset(content_type: &'static str, body: &'static str) -> WebResponse {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    harden(&mut r);
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    r
}

/// Sets a `__Host-` cookie for `max_age` seconds (0 removes it).
pub fn set_cookie(response: &mut WebResponse, name: &str, value: &str, max_age: i64) {
    let cookie =
        format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}");
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Whether a path is the portal's or the provider's (the HTTP layer hands these over).
pub fn serves(path: &str) -> bool {
    path == "/portal"
        || path.starts_with("/portal/")
        || path.starts_with("/oauth/")
        || path == "/.well-known/openid-configuration"
}

/// Answers one browser request. Errors become pages here; nothing below answers itself.
pub async fn handle(p: &Portal<'_>, api: &impl Api, req: &WebRequest<'_>) -> WebResponse {
    let answer = route(p, api, req).await;
    answer.unwrap_or_else(|e| html::error_page(&e))
}

async fn route(
    p: &Portal<'_>,
    api: &impl Api,
    req: &WebRequest<'_>,
) -> Result<WebResponse, ApiError> {
    match (req.method, req.path) {
        ("GET", "/portal/assets/portal.css") => {
            return Ok(asset("text/css", include_str!("portal/portal.css")));
        }
        ("GET", "/.well-known/openid-configuration") => return provider::discovery(p, req),
        ("POST", "/oauth/token") => return provider::token(p, req).await,
        _ => {}
    }
    // Everything else is served at portal hosts only, in their branding.
    let host = req.host();
    let owner = host_owner(p, &host).await?;
    let brand = html::Brand::of(owner.as_ref());
    match (req.method, req.path) {
        ("GET", "/portal/theme.css") => {
            let mut r = page(StatusCode::OK, html::theme(&brand));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css"));
            Ok(r)
        }
        ("GET", "/oauth/authorize") => provider::authorize_page(p, req, &brand).await,
        ("POST", "/oauth/authorize") => provider::authorize_submit(p, req, &brand).await,
        ("GET" | "POST", "/oauth/logout") => provider::logout(p, req).await,
        ("GET", "/portal/login") => signin::login(p, req).await,
        ("GET", "/portal/callback") => signin::callback(p, api, req).await,
        ("POST", "/portal/logout") => signin::logout(p, req).await,
        ("GET" | "POST", _) if req.path == "/portal" || req.path.starts_with("/portal/") => {
            pages::serve(p, api, req, &brand).await
        }
        _ => Err(ApiError::not_found()),
    }
}
