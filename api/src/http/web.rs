//! The HTTP side of the portal: browser requests handed to [`crate::portal`], and the
//! in-process API calls the portal makes as the signed-in person.
//!
//! An in-process call runs what a bearer call runs after its token is verified: the principal
//! from the platform's records (so a user removed or demoted a moment ago is refused now), the
//! session check, the per-principal rate limit, the audit scope of a change, and the same
//! handler through [`super::dispatch`]. Only bearer routes can be reached this way.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{HeaderMap, Response, StatusCode};
use serde_json::Value;

use super::ratelimit::Scope;
use super::routes::Access;
use super::{Reply, Served, audit_context, dispatch, limit, routes};
use crate::auth;
use crate::auth::jwt::Claims;
use crate::error::{ApiError, Code};
use crate::portal::{self, Portal, WebRequest};
use crate::request::Call;

/// Largest form a browser may post (sign-in, a branding form).
const FORM_MAX: usize = 64 * 1024;
/// How long a form may take to arrive.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// The portal's API: calls as the signed-in person, in this process.
struct InProcess<'a> {
    app: &'a Served,
    request_id: &'a str,
}

impl portal::Api for InProcess<'_> {
    fn call<'a>(
        &'a self,
        claims: &'a Claims,
        source: IpAddr,
        method: &'a str,
        path_and_query: &'a str,
        body: Option<Value>,
    ) -> Pin<Box<dyn Future<Output = Result<Value, ApiError>> + Send + 'a>> {
        Box::pin(call_as(
            self.app,
            claims,
            source,
            method,
            path_and_query,
            body,
            self.request_id,
        ))
    }
}

async fn call_as(
    app: &Served,
    claims: &Claims,
    source: IpAddr,
    method: &str,
    path_and_query: &str,
    body: Option<Value>,
    request_id: &str,
) -> Result<Value, ApiError> {
    let (path, query) = path_and_query
        .split_once('?')
        .map_or((path_and_query, None), |(p, q)| (p, Some(q)));
    let (route, params) = routes::find(method, path)?;
    if !matches!(route.access, Access::Bearer | Access::BearerNoSession) {
        return Err(ApiError::not_found());
    }
    let now = crate::wire::time::now();
    let body = body.map_or_else(Bytes::new, |v| Bytes::from(v.to_string()));
    let run = async {
        let principal = auth::principal(&app.auth, &app.db, claims).await?;
        if route.access == Access::Bearer {
            auth::require_session(&app.db, &principal, now).await?;
        }
        crate::store::audit::caller(&principal.sub, principal.role.as_str());
        limit(app, Scope::Principal, &principal.sub, &mut None)?;
        let headers = HeaderMap::new();
        let call = Call {
            params,
            query: crate::request::parse_query(query),
            headers: &headers,
            body,
            now,
            principal: Some(principal),
        };
        match dispatch(app, route.op, &call).await? {
            Reply::Json(_, value) => Ok(value),
            Reply::Text(..) => Err(ApiError::not_found()),
        }
    };
    if route.method == "GET" {
        return run.await;
    }
    let context = audit_context(route, path, request_id, source);
    crate::store::audit::scope(context, run).await
}

/// A browser request for the portal or the sign-in provider.
pub(super) async fn serve(
    app: &Served,
    source: IpAddr,
    parts: &hyper::http::request::Parts,
    body: Incoming,
    request_id: &str,
) -> Response<Full<Bytes>> {
    let method = match parts.method.as_str() {
        "GET" | "HEAD" => "GET",
        "POST" => "POST",
        _ => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
            return r;
        }
    };
    let path = parts.uri.path();
    // Password and code guesses are limited like client credentials: per address.
    let scope = if method == "POST" && matches!(path, "/oauth/authorize" | "/oauth/token") {
        Scope::Credentials
    } else {
        Scope::Address
    };
    if let Err(e) = limit(app, scope, &source.to_string(), &mut None) {
        return portal::html::error_page(&e);
    }
    let body = match read_form(parts, body).await {
        Ok(b) => b,
        Err(e) => return portal::html::error_page(&e),
    };
    let req = WebRequest {
        method,
        path,
        query: crate::request::parse_query(parts.uri.query()),
        headers: &parts.headers,
        body,
        source,
        now: crate::wire::time::now(),
        tls: app.config.tls.is_some() && !app.config.plain_http,
    };
    let api = InProcess { app, request_id };
    portal::handle(&Portal::of(&app.services), &api, &req).await
}

async fn read_form(parts: &hyper::http::request::Parts, body: Incoming) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::new(Code::BodyUnreadable, "form too large");
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > FORM_MAX) {
        return Err(too_large());
    }
    match tokio::time::timeout(FORM_TIMEOUT, Limited::new(body, FORM_MAX).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) | Err(_) => Err(ApiError::new(
            Code::BodyUnreadable,
            "the form could not be read in time",
        )),
    }
}
