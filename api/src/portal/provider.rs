//! The embedded OpenID Connect provider (embedded mode): what a real provider offers a web
//! client, for the platform's own users.
//!
//! - `GET /.well-known/openid-configuration`: discovery.
//! - `GET /oauth/authorize`: the authorization endpoint. Without a provider session it shows
//!   the login page (in the host's branding); with one it answers at once.
//! - `POST /oauth/authorize`: the login form. A right password opens a provider session
//!   (`__Host-vp_idp`) and redirects to the client with a code.
//! - `POST /oauth/token`: a code (60 s, once) and its PKCE verifier for an access token and an
//!   ID token, both ES256 from the embedded key.
//! - `/oauth/logout`: ends the provider session.
//!
//! Only the authorization code flow with PKCE S256 is offered, to one public client (the
//! portal, `[portal] client_id`), whose redirect address must be `/portal/callback` at a
//! portal host: `https`, or `http` on a loopback host. Nothing is ever redirected to an
//! address that failed these checks: such requests get an error page.

use base64::Engine as _;
use hyper::StatusCode;
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq as _;

use super::html::{self, Brand, esc};
use super::{Portal, WebRequest, WebResponse, field, page, redirect, set_cookie};
use crate::domain::credentials::{self, Verdict};
use crate::domain::model::User;
use crate::domain::websessions::{self, Purpose};
use crate::error::{ApiError, Code};

/// The provider session's cookie.
pub const IDP_COOKIE: &str = "__Host-vp_idp";
/// The login form's CSRF cookie (double submit: the form carries the same value).
const FORM_COOKIE: &str = "__Host-vp_form";
/// How long a code may wait for its exchange.
const CODE_SECS: i64 = 60;
/// How long a provider session lasts.
const IDP_SECS: i64 = 8 * 3600;

fn bad(message: &str) -> ApiError {
    ApiError::new(Code::BodyInvalid, message.to_owned())
}

/// Whether the embedded provider is on (embedded mode); in keycloak mode people sign in at
/// the realm and these endpoints do not exist.
fn enabled(p: &Portal<'_>) -> Result<(), ApiError> {
    if p.auth.signs_people() {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

/// `GET /.well-known/openid-configuration`.
///
/// # Errors
/// 404 in keycloak mode.
pub fn discovery(p: &Portal<'_>, req: &WebRequest<'_>) -> Result<WebResponse, ApiError> {
    enabled(p)?;
    let origin = req.origin();
    Ok(super::json(
        StatusCode::OK,
        &json!({
            "issuer": p.auth.issuer(),
            "authorization_endpoint": format!("{origin}/oauth/authorize"),
            "token_endpoint": format!("{origin}/oauth/token"),
            "jwks_uri": format!("{origin}/.well-known/jwks.json"),
            "end_session_endpoint": format!("{origin}/oauth/logout"),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "code_challenge_methods_supported": ["S256"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "scopes_supported": ["openid", "email"],
            "token_endpoint_auth_methods_supported": ["none"],
        }),
    ))
}

/// Whether `uri` may receive codes: `/portal/callback` (or, for sign-out, any `/portal/`
/// page) at a portal host, over `https`, or `http` on loopback.
pub async fn allowed_return(p: &Portal<'_>, uri: &str, callback: bool) -> bool {
    let Ok(parsed) = uri.parse::<hyper::Uri>() else {
        return false;
    };
    let (Some(scheme), Some(host)) = (parsed.scheme_str(), parsed.host()) else {
        return false;
    };
    let host = host.to_ascii_lowercase();
    // `localhost` and the names under it are loopback (RFC 6761), as browsers treat them.
    let loopback = host == "localhost"
        || host.ends_with(".localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let path_ok = if callback {
        parsed.path() == "/portal/callback" && parsed.query().is_none()
    } else {
        parsed.path().starts_with("/portal/")
    };
    (scheme == "https" || (scheme == "http" && loopback))
        && path_ok
        && !uri.contains('#')
        && super::host_owner(p, &host).await.is_ok()
}

/// What a client asks for at the authorization endpoint, checked.
#[derive(Debug)]
struct Ask {
    redirect_uri: String,
    state: String,
    nonce: Option<String>,
    challenge: String,
}

fn printable(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// The PKCE alphabet (RFC 7636: unreserved characters), for challenges and verifiers.
fn pkce_text(s: &str) -> bool {
    (43..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

async fn ask(p: &Portal<'_>, get: impl Fn(&str) -> String) -> Result<Ask, ApiError> {
    if get("client_id") != p.config.portal.client_id {
        return Err(bad("unknown client_id"));
    }
    let redirect_uri = get("redirect_uri");
    if !allowed_return(p, &redirect_uri, true).await {
        return Err(bad("redirect_uri is not this client's"));
    }
    if get("response_type") != "code" {
        return Err(bad("response_type must be code"));
    }
    if !get("scope").split(' ').any(|s| s == "openid") {
        return Err(bad("scope must include openid"));
    }
    if get("code_challenge_method") != "S256" || !pkce_text(&get("code_challenge")) {
        return Err(bad("a PKCE code_challenge with method S256 is required"));
    }
    let state = get("state");
    if !printable(&state, 512) {
        return Err(bad("state is required (printable, at most 512 characters)"));
    }
    let nonce = Some(get("nonce")).filter(|n| !n.is_empty());
    if nonce.as_deref().is_some_and(|n| !printable(n, 512)) {
        return Err(bad("nonce: printable, at most 512 characters"));
    }
    Ok(Ask {
        redirect_uri,
        state,
        nonce,
        challenge: get("code_challenge"),
    })
}

/// The login page, with the request's parameters carried in hidden fields.
fn login_page(
    brand: &Brand,
    form_token: &str,
    params: &[(String, String)],
    email: &str,
    problem: Option<&str>,
    status: StatusCode,
) -> WebResponse {
    let mut hidden = String::new();
    for name in [
        "client_id",
        "redirect_uri",
        "response_type",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
    ] {
        hidden.push_str(&format!(
            r#"<input type="hidden" name="{name}" value="{}">"#,
            esc(field(params, name))
        ));
    }
    let problem = problem.map_or_else(String::new, |m| {
        format!(r#"<p class="error" role="alert">{}</p>"#, esc(m))
    });
    let body = format!(
        r#"{problem}<form class="login" method="post" action="/oauth/authorize">
<input type="hidden" name="form_token" value="{token}">{hidden}
{email}{password}
<button type="submit">Sign in</button></form>"#,
        token = esc(form_token),
        email = html::input("email", "E-mail address", "email", email, true)
            .replace("<input ", r#"<input autocomplete="username" autofocus "#),
        password = html::input("password", "Password", "password", "", true)
            .replace("<input ", r#"<input autocomplete="current-password" "#),
    );
    let mut r = page(
        status,
        html::frame(
            brand,
            &format!("Sign in to {}", brand.name),
            None,
            None,
            &body,
        ),
    );
    set_cookie(&mut r, FORM_COOKIE, form_token, 3600);
    r
}

/// `GET /oauth/authorize`.
///
/// # Errors
/// 400 for a request that is not the portal's; 404 in keycloak mode.
pub async fn authorize_page(
    p: &Portal<'_>,
    req: &WebRequest<'_>,
    brand: &Brand,
) -> Result<WebResponse, ApiError> {
    enabled(p)?;
    let get = |n: &str| req.query(n).unwrap_or_default().to_owned();
    let asked = ask(p, get).await?;
    // Already signed in at the provider: straight back with a code.
    if let Some(cookie) = req.cookie(IDP_COOKIE)
        && let Some(s) = websessions::find(p.db, Purpose::Idp, cookie, req.now).await?
        && let Some(user_id) = s.data.get("user_id").and_then(Value::as_str)
        && let Some(user) = p.db.get::<User>(user_id).await?
    {
        return answer_with_code(p, &asked, &user, req.now, None).await;
    }
    let token = websessions::fresh_value()?;
    Ok(login_page(
        brand,
        &token,
        &req.query,
        "",
        None,
        StatusCode::OK,
    ))
}

/// `POST /oauth/authorize`: the login form.
///
/// # Errors
/// 400 for a form that is not the login page's; 404 in keycloak mode.
pub async fn authorize_submit(
    p: &Portal<'_>,
    req: &WebRequest<'_>,
    brand: &Brand,
) -> Result<WebResponse, ApiError> {
    enabled(p)?;
    let form = req.form();
    let token = field(&form, "form_token");
    let expected = req.cookie(FORM_COOKIE).unwrap_or_default();
    if !req.same_origin()
        || token.is_empty()
        || !bool::from(token.as_bytes().ct_eq(expected.as_bytes()))
    {
        return Err(ApiError::new(
            Code::Forbidden,
            "the sign-in form expired or came from elsewhere: open the page again",
        ));
    }
    let asked = ask(p, |n| field(&form, n).to_owned()).await?;
    let email = field(&form, "email");
    let password = zeroize::Zeroizing::new(field(&form, "password").to_owned());
    let iterations = p.config.portal.kdf_iterations;
    let verdict = credentials::verify(p.db, p.keyd, email, &password, iterations, req.now).await?;
    let fresh = websessions::fresh_value()?;
    let again = |problem: &str, status: StatusCode| {
        login_page(brand, &fresh, &form, email, Some(problem), status)
    };
    let user_id = match verdict {
        Verdict::Accepted(id) => id,
        Verdict::Refused => {
            tracing::info!("portal sign-in refused");
            return Ok(again(
                "The e-mail address or the password is wrong.",
                StatusCode::UNAUTHORIZED,
            ));
        }
        Verdict::Locked => {
            tracing::info!("portal sign-in refused: locked");
            return Ok(again(
                "Too many failed attempts: sign-in is locked for a while. Try again later.",
                StatusCode::TOO_MANY_REQUESTS,
            ));
        }
    };
    let Some(user) = p.db.get::<User>(&user_id).await? else {
        return Ok(again(
            "The e-mail address or the password is wrong.",
            StatusCode::UNAUTHORIZED,
        ));
    };
    let mut session = Map::new();
    session.insert("user_id".into(), Value::String(user.id.clone()));
    let idp = websessions::open(
        p.db,
        Purpose::Idp,
        &user.idp_subject,
        req.now + IDP_SECS,
        session,
    )
    .await?;
    answer_with_code(p, &asked, &user, req.now, Some(&idp)).await
}

/// A code for `user`, sent back to the client (and the provider session's cookie, when one was
/// just opened).
async fn answer_with_code(
    p: &Portal<'_>,
    asked: &Ask,
    user: &User,
    now: i64,
    idp_cookie: Option<&str>,
) -> Result<WebResponse, ApiError> {
    let mut data = Map::new();
    data.insert("user_id".into(), Value::String(user.id.clone()));
    data.insert(
        "redirect_uri".into(),
        Value::String(asked.redirect_uri.clone()),
    );
    data.insert("challenge".into(), Value::String(asked.challenge.clone()));
    if let Some(n) = &asked.nonce {
        data.insert("nonce".into(), Value::String(n.clone()));
    }
    let code = websessions::open(
        p.db,
        Purpose::Code,
        &user.idp_subject,
        now + CODE_SECS,
        data,
    )
    .await?;
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("code", &code)
        .append_pair("state", &asked.state)
        .finish();
    let mut r = redirect(&format!("{}?{query}", asked.redirect_uri));
    if let Some(cookie) = idp_cookie {
        set_cookie(&mut r, IDP_COOKIE, cookie, IDP_SECS);
    }
    set_cookie(&mut r, FORM_COOKIE, "", 0);
    Ok(r)
}

/// Tokens for a code.
#[derive(Debug)]
pub struct Tokens {
    /// The bearer token for the API.
    pub access_token: String,
    /// The ID token (for the client: who signed in, and the nonce).
    pub id_token: String,
    /// Seconds the access token lives.
    pub expires_in: i64,
}

/// Why a code was not exchanged (RFC 6749 section 5.2 error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not an authorization-code request of this client.
    InvalidRequest,
    /// Unknown, used or expired code; wrong redirect address or verifier.
    InvalidGrant,
    /// Only `authorization_code` is offered.
    UnsupportedGrantType,
}

impl TokenError {
    const fn code(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidGrant => "invalid_grant",
            Self::UnsupportedGrantType => "unsupported_grant_type",
        }
    }
}

/// The exchange itself, shared by `POST /oauth/token` and the portal's own callback.
///
/// # Errors
/// [`TokenError`] for the client; `Ok(Err)` keeps store failures apart (503).
pub async fn exchange(
    p: &Portal<'_>,
    form: &[(String, String)],
    now: i64,
) -> Result<Result<Tokens, TokenError>, ApiError> {
    if field(form, "grant_type") != "authorization_code" {
        return Ok(Err(TokenError::UnsupportedGrantType));
    }
    if field(form, "client_id") != p.config.portal.client_id {
        return Ok(Err(TokenError::InvalidRequest));
    }
    let verifier = field(form, "code_verifier");
    if !pkce_text(verifier) {
        return Ok(Err(TokenError::InvalidRequest));
    }
    let Some(code) = websessions::take(p.db, Purpose::Code, field(form, "code"), now).await? else {
        return Ok(Err(TokenError::InvalidGrant));
    };
    let data = |k: &str| code.data.get(k).and_then(Value::as_str).unwrap_or_default();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    if data("redirect_uri") != field(form, "redirect_uri")
        || !bool::from(challenge.as_bytes().ct_eq(data("challenge").as_bytes()))
    {
        return Ok(Err(TokenError::InvalidGrant));
    }
    // The user may have gone, or changed, since signing in: tokens say what is true now.
    let Some(user) = p.db.get::<User>(data("user_id")).await? else {
        return Ok(Err(TokenError::InvalidGrant));
    };
    let extra = json!({"email": user.email});
    let (access_token, exp) =
        p.auth
            .mint(&user.idp_subject, &[user.role.as_str()], now, Some(extra))?;
    let nonce = Some(data("nonce")).filter(|n| !n.is_empty());
    let id_token = p.auth.id_token(
        &user.idp_subject,
        &p.config.portal.client_id,
        nonce,
        &user.email,
        now,
    )?;
    Ok(Ok(Tokens {
        access_token,
        id_token,
        expires_in: exp - now,
    }))
}

/// `POST /oauth/token`.
///
/// # Errors
/// 404 in keycloak mode; 503 when the store is down.
pub async fn token(p: &Portal<'_>, req: &WebRequest<'_>) -> Result<WebResponse, ApiError> {
    enabled(p)?;
    let form = req.form();
    Ok(match exchange(p, &form, req.now).await? {
        Ok(t) => super::json(
            StatusCode::OK,
            &json!({
                "access_token": t.access_token, "token_type": "Bearer",
                "expires_in": t.expires_in, "id_token": t.id_token, "scope": "openid email",
            }),
        ),
        Err(e) => super::json(StatusCode::BAD_REQUEST, &json!({"error": e.code()})),
    })
}

/// `/oauth/logout`: ends the provider session; back to a portal page when asked to (and
/// allowed), else a page that says so.
///
/// # Errors
/// 404 in keycloak mode; 503 when the store is down.
pub async fn logout(p: &Portal<'_>, req: &WebRequest<'_>) -> Result<WebResponse, ApiError> {
    enabled(p)?;
    if let Some(cookie) = req.cookie(IDP_COOKIE) {
        websessions::close(p.db, cookie).await?;
    }
    let back = req.query("post_logout_redirect_uri").unwrap_or_default();
    let mut r = if allowed_return(p, back, false).await {
        redirect(back)
    } else {
        page(
            StatusCode::OK,
            html::frame(
                &Brand::of(None),
                "Signed out",
                None,
                None,
                r#"<p><a href="/portal/">Sign in again</a></p>"#,
            ),
        )
    };
    set_cookie(&mut r, IDP_COOKIE, "", 0);
    Ok(r)
}
