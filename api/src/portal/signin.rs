//! The portal as an OpenID Connect client: sign-in (authorization code with PKCE), its
//! callback, the portal session, sign-out.
//!
//! A sign-in under way is a stored record behind the `__Host-vp_login` cookie holding the
//! `state`, `nonce` and PKCE verifier, so none of them travels anywhere but to where it is
//! checked. The callback takes that record (once), exchanges the code, verifies the access
//! token exactly as a bearer call's and the ID token against the client id and the nonce,
//! initiates the backoffice session through the API (`POST /session/initiate`, as any client
//! does), and opens the portal session: a record behind `__Host-vp_portal` holding the
//! verified claims and a CSRF token. The tokens themselves are dropped: the portal session
//! needs none, and what is not kept cannot leak.

use std::path::Path;

use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq as _;

use super::{Api, Portal, WebRequest, WebResponse, field, provider, redirect, set_cookie};
use crate::auth::jwt::{Claims, KeySource, Verifier};
use crate::domain::websessions::{self, Purpose, WebSession};
use crate::error::{ApiError, Code};

/// The portal session's cookie.
pub const PORTAL_COOKIE: &str = "__Host-vp_portal";
/// A sign-in under way.
const LOGIN_COOKIE: &str = "__Host-vp_login";
/// How long a sign-in may take.
const LOGIN_SECS: i64 = 600;

/// A signed-in person, from their portal session.
#[derive(Debug, Clone)]
pub struct Visitor {
    /// The claims of the token the session was opened with (verified then).
    pub claims: Claims,
    /// The form token every change must carry.
    pub csrf: String,
    /// The tenant: `merchant_id` of merchant users.
    pub merchant_id: Option<String>,
    /// The tenant: `reseller_id` of reseller users (or the host's reseller).
    pub reseller_id: Option<String>,
}

impl Visitor {
    fn from_session(s: &WebSession) -> Option<Self> {
        let text = |k: &str| s.data.get(k).and_then(Value::as_str).map(str::to_owned);
        let roles = s
            .data
            .get("roles")?
            .as_array()?
            .iter()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect();
        Some(Self {
            claims: Claims {
                sub: s.sub.clone(),
                iss: text("iss")?,
                exp: s.data.get("exp")?.as_i64()?,
                roles,
                email: text("email"),
                name: None,
                nonce: None,
            },
            csrf: text("csrf")?,
            merchant_id: text("merchant_id"),
            reseller_id: text("reseller_id"),
        })
    }

    /// The name the header shows.
    pub fn shown(&self) -> &str {
        self.claims.email.as_deref().unwrap_or(&self.claims.sub)
    }

    /// Whether a form carries this session's CSRF token (and came from this origin).
    pub fn sent(&self, req: &WebRequest<'_>, form: &[(String, String)]) -> bool {
        req.same_origin() && bool::from(field(form, "csrf").as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// The visitor behind the request's portal cookie, if their session is live.
///
/// # Errors
/// 503 when the store is down.
pub async fn visitor(p: &Portal<'_>, req: &WebRequest<'_>) -> Result<Option<Visitor>, ApiError> {
    let Some(cookie) = req.cookie(PORTAL_COOKIE) else {
        return Ok(None);
    };
    Ok(websessions::find(p.db, Purpose::Portal, cookie, req.now)
        .await?
        .as_ref()
        .and_then(Visitor::from_session))
}

/// `GET /portal/login`: off to the provider.
///
/// # Errors
/// 503 when the store is down.
pub async fn login(p: &Portal<'_>, req: &WebRequest<'_>) -> Result<WebResponse, ApiError> {
    if visitor(p, req).await?.is_some() {
        return Ok(redirect("/portal/"));
    }
    let authorize = match realm(p)? {
        None => format!("{}/oauth/authorize", req.origin()),
        Some(r) => r.authorization.to_owned(),
    };
    let (state, nonce, verifier) = (
        websessions::fresh_value()?,
        websessions::fresh_value()?,
        websessions::fresh_value()?,
    );
    let origin = req.origin();
    let redirect_uri = format!("{origin}/portal/callback");
    let mut data = Map::new();
    for (k, v) in [
        ("state", &state),
        ("nonce", &nonce),
        ("verifier", &verifier),
        ("redirect_uri", &redirect_uri),
    ] {
        data.insert(k.into(), Value::String(v.clone()));
    }
    let pending = websessions::open(p.db, Purpose::Login, "", req.now + LOGIN_SECS, data).await?;
    let challenge = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            verifier.as_bytes(),
        ))
    };
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("response_type", "code")
        .append_pair("client_id", &p.config.portal.client_id)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("scope", "openid email")
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    let mut r = redirect(&format!("{authorize}?{query}"));
    set_cookie(&mut r, LOGIN_COOKIE, &pending, LOGIN_SECS);
    Ok(r)
}

/// The external provider's endpoints (keycloak mode).
struct Realm<'a> {
    issuer: &'a str,
    jwks_url: &'a str,
    ca_file: Option<&'a Path>,
    authorization: &'a str,
    token: &'a str,
}

/// `None` in embedded mode (the API is the provider); the realm's endpoints in keycloak mode.
///
/// # Errors
/// 409 when keycloak mode lacks the endpoints the portal signs in with.
fn realm<'a>(p: &Portal<'a>) -> Result<Option<Realm<'a>>, ApiError> {
    if p.auth.signs_people() {
        return Ok(None);
    }
    let k = p.config.auth.keycloak.as_ref();
    match k.and_then(|k| Some((k, k.authorization_url.as_deref()?, k.token_url.as_deref()?))) {
        Some((k, authorization, token)) => Ok(Some(Realm {
            issuer: &k.issuer,
            jwks_url: &k.jwks_url,
            ca_file: k.ca_file.as_deref(),
            authorization,
            token,
        })),
        None => Err(ApiError::new(
            Code::Conflict,
            "the portal's sign-in needs [auth.keycloak] authorization_url and token_url",
        )),
    }
}

fn refused(message: &str) -> ApiError {
    ApiError::new(Code::Unauthenticated, message.to_owned())
}

/// `GET /portal/callback`: the provider's answer.
///
/// # Errors
/// 401 for a sign-in this browser did not start, a refused or replayed code, or tokens that
/// do not verify; 403 when the person is not a platform user.
pub async fn callback(
    p: &Portal<'_>,
    api: &impl Api,
    req: &WebRequest<'_>,
) -> Result<WebResponse, ApiError> {
    let pending = match req.cookie(LOGIN_COOKIE) {
        Some(c) => websessions::take(p.db, Purpose::Login, c, req.now).await?,
        None => None,
    };
    let Some(pending) = pending else {
        return Err(refused(
            "this sign-in was not started here or took too long: sign in again",
        ));
    };
    let data = |k: &str| {
        pending
            .data
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let state = req.query("state").unwrap_or_default();
    if !bool::from(state.as_bytes().ct_eq(data("state").as_bytes())) {
        return Err(refused("the sign-in answer does not match: sign in again"));
    }
    if req.query("error").is_some() {
        return Err(refused("the identity provider refused the sign-in"));
    }
    let form: Vec<(String, String)> = [
        ("grant_type", "authorization_code".to_owned()),
        ("code", req.query("code").unwrap_or_default().to_owned()),
        ("redirect_uri", data("redirect_uri")),
        ("client_id", p.config.portal.client_id.clone()),
        ("code_verifier", data("verifier")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let (tokens, id_verifier) = match realm(p)? {
        None => {
            let Ok(tokens) = provider::exchange(p, &form, req.now).await? else {
                return Err(refused("the sign-in code was refused: sign in again"));
            };
            let verifier = Verifier::new(
                p.auth.issuer().to_owned(),
                p.config.portal.client_id.clone(),
                KeySource::Static(p.auth.jwks()),
            );
            (tokens, verifier)
        }
        Some(r) => {
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&form)
                .finish();
            let answer = crate::auth::jwt::fetch::post_form(r.token, r.ca_file, body)
                .await
                .map_err(|e| {
                    tracing::warn!(reason = %e, "the realm's token endpoint refused or failed");
                    refused("the identity provider did not accept the sign-in: sign in again")
                })?;
            let json: Value = serde_json::from_slice(&answer).unwrap_or_default();
            let token = |k: &str| json.get(k).and_then(Value::as_str).map(str::to_owned);
            let (Some(access_token), Some(id_token)) = (token("access_token"), token("id_token"))
            else {
                return Err(refused("the identity provider answered no tokens"));
            };
            let tokens = provider::Tokens {
                access_token,
                id_token,
                expires_in: 0,
            };
            // The realm's keys, fetched for this sign-in (sign-ins are rare; bearer calls
            // keep their own cached verifier).
            let verifier = Verifier::new(
                r.issuer.to_owned(),
                p.config.portal.client_id.clone(),
                KeySource::Remote {
                    url: r.jwks_url.to_owned(),
                    ca_file: r.ca_file.map(Path::to_path_buf),
                },
            );
            (tokens, verifier)
        }
    };
    // The access token is checked as every bearer call's is; the ID token against this
    // client and this sign-in's nonce.
    let claims = p
        .auth
        .verify(Some(&format!("Bearer {}", tokens.access_token)), req.now)
        .await?;
    let id = id_verifier
        .map_err(|e| ApiError::internal(&e))?
        .verify(&tokens.id_token, req.now)
        .await
        .map_err(|_| refused("the ID token did not verify"))?;
    let nonce = data("nonce");
    if id.sub != claims.sub
        || !id
            .nonce
            .as_deref()
            .is_some_and(|n| bool::from(n.as_bytes().ct_eq(nonce.as_bytes())))
    {
        return Err(refused("the ID token does not answer this sign-in"));
    }
    // The backoffice session, initiated as any client initiates it.
    let initiated = api
        .call(
            &claims,
            req.source,
            "POST",
            "/session/initiate",
            Some(json!({"host": req.host()})),
        )
        .await?;
    let mut session = Map::new();
    session.insert("iss".into(), Value::String(claims.iss.clone()));
    session.insert("exp".into(), Value::from(claims.exp));
    session.insert("roles".into(), json!(claims.roles));
    if let Some(e) = &claims.email {
        session.insert("email".into(), Value::String(e.clone()));
    }
    session.insert("csrf".into(), Value::String(websessions::fresh_value()?));
    for k in ["merchant_id", "reseller_id"] {
        if let Some(v) = initiated.get(k).filter(|v| v.is_string()) {
            session.insert(k.into(), v.clone());
        }
    }
    let secs = i64::try_from(p.config.portal.session_secs).unwrap_or(3600);
    let expires = claims.exp.min(req.now + secs);
    let cookie = websessions::open(p.db, Purpose::Portal, &claims.sub, expires, session).await?;
    tracing::info!(subject = %claims.sub, "portal session opened");
    let mut r = redirect("/portal/");
    set_cookie(&mut r, PORTAL_COOKIE, &cookie, expires - req.now);
    set_cookie(&mut r, LOGIN_COOKIE, "", 0);
    Ok(r)
}

/// `POST /portal/logout`: ends the portal session and the provider's.
///
/// # Errors
/// 403 without the session's CSRF token; 503 when the store is down.
pub async fn logout(p: &Portal<'_>, req: &WebRequest<'_>) -> Result<WebResponse, ApiError> {
    if let Some(v) = visitor(p, req).await? {
        if !v.sent(req, &req.form()) {
            return Err(ApiError::new(
                Code::Forbidden,
                "the form expired: reload the page",
            ));
        }
        if let Some(cookie) = req.cookie(PORTAL_COOKIE) {
            websessions::close(p.db, cookie).await?;
        }
    }
    if realm(p)?.is_some() {
        // The realm's own session is the realm's to end.
        let mut r = super::page(
            hyper::StatusCode::OK,
            super::html::frame(
                &super::html::Brand::of(None),
                "Signed out",
                None,
                None,
                r#"<p><a href="/portal/">Sign in again</a></p>"#,
            ),
        );
        set_cookie(&mut r, PORTAL_COOKIE, "", 0);
        return Ok(r);
    }
    let back = format!("{}/portal/", req.origin());
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("post_logout_redirect_uri", &back)
        .finish();
    let mut r = redirect(&format!("/oauth/logout?{query}"));
    set_cookie(&mut r, PORTAL_COOKIE, "", 0);
    Ok(r)
}
