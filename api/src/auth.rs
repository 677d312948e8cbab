//! Backoffice authentication: bearer tokens (contract section 3), the principal behind a token,
//! initiated sessions, and the tokens the API signs itself.
//!
//! Two issuers may be trusted at once. The embedded one (the API's own ES256 key) always signs
//! API-client tokens, and people's tokens too in embedded mode; in keycloak mode people's tokens
//! come from the realm. The unverified `iss` only picks which verifier runs; both run the same
//! checks, and nothing in a token is believed before its signature is.

pub mod authz;
pub mod jwt;

use serde_json::{Value, json};

use crate::auth::authz::{Principal, Scope};
use crate::auth::jwt::{Claims, KeySource, Signer, Verifier};
use crate::config::{AuthConfig, AuthMode};
use crate::domain::model::{ApiClient, Role, Session, User};
use crate::error::{ApiError, Code};
use crate::store::db::Db;

/// The verifiers and the embedded signer.
#[derive(Debug)]
pub struct Auth {
    signer: Signer,
    embedded: Verifier,
    keycloak: Option<Verifier>,
    issuer: String,
    audience: String,
    ttl: i64,
    /// Whether people's tokens may come from the embedded issuer (embedded mode only: in
    /// keycloak mode the embedded key signs API-client tokens and nothing else).
    people_from_embedded: bool,
}

fn unauthenticated() -> ApiError {
    ApiError::new(Code::Unauthenticated, "missing or invalid bearer token")
}

impl Auth {
    /// Loads (or creates) the signing key and builds the verifiers.
    ///
    /// # Errors
    /// A message naming the problem (key file, JWKS address).
    pub fn new(config: &AuthConfig) -> Result<Self, String> {
        let signer = Signer::load_or_create(&config.signing_key)?;
        Self::with_signer(config, signer)
    }

    /// Like [`Auth::new`] with a given key (tests).
    ///
    /// # Errors
    /// A message naming the problem.
    pub fn with_signer(config: &AuthConfig, signer: Signer) -> Result<Self, String> {
        let jwks = json!({ "keys": [signer.jwk()] });
        let embedded = Verifier::new(
            config.issuer.clone(),
            config.audience.clone(),
            KeySource::Static(jwks),
        )?;
        let keycloak = match (&config.mode, &config.keycloak) {
            (AuthMode::Keycloak, Some(k)) => Some(Verifier::new(
                k.issuer.clone(),
                k.audience.clone(),
                KeySource::Remote {
                    url: k.jwks_url.clone(),
                    ca_file: k.ca_file.clone(),
                },
            )?),
            _ => None,
        };
        Ok(Self {
            signer,
            embedded,
            keycloak,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            ttl: i64::try_from(config.token_ttl_secs).unwrap_or(3600),
            people_from_embedded: config.mode == AuthMode::Embedded,
        })
    }

    /// The embedded issuer's JWKS (`/.well-known/jwks.json`).
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.signer.jwk()] })
    }

    /// Lifetime of tokens the API signs, in seconds.
    pub const fn ttl(&self) -> i64 {
        self.ttl
    }

    /// Signs a token for `sub` with `roles`, valid from `now` for the configured lifetime.
    ///
    /// # Errors
    /// 500 if signing fails.
    pub fn mint(
        &self,
        sub: &str,
        roles: &[&str],
        now: i64,
        extra: Option<Value>,
    ) -> Result<(String, i64), ApiError> {
        self.mint_for(self.ttl, sub, roles, now, extra)
    }

    /// Like [`Auth::mint`] with a given lifetime in seconds.
    ///
    /// # Errors
    /// 500 if signing fails.
    pub fn mint_for(
        &self,
        ttl: i64,
        sub: &str,
        roles: &[&str],
        now: i64,
        extra: Option<Value>,
    ) -> Result<(String, i64), ApiError> {
        let exp = now + ttl;
        let mut claims = json!({
            "iss": self.issuer, "aud": self.audience, "sub": sub,
            "iat": now, "nbf": now, "exp": exp,
            "realm_access": { "roles": roles },
        });
        if let (Some(Value::Object(more)), Some(map)) = (extra, claims.as_object_mut()) {
            for (k, v) in more {
                map.entry(k).or_insert(v);
            }
        }
        let token = self
            .signer
            .sign(&claims)
            .map_err(|e| ApiError::internal(&e))?;
        Ok((token, exp))
    }

    /// An OpenID Connect ID token from the embedded issuer: who signed in (`sub`), for which
    /// client (`aud`), answering which sign-in (`nonce`), living as long as the access token.
    ///
    /// # Errors
    /// 500 if signing fails.
    pub fn id_token(
        &self,
        sub: &str,
        client_id: &str,
        nonce: Option<&str>,
        email: &str,
        now: i64,
    ) -> Result<String, ApiError> {
        let mut claims = json!({
            "iss": self.issuer, "aud": client_id, "sub": sub, "iat": now, "exp": now + self.ttl,
            "auth_time": now, "email": email,
        });
        if let (Some(n), Some(map)) = (nonce, claims.as_object_mut()) {
            map.insert("nonce".into(), Value::String(n.to_owned()));
        }
        self.signer
            .sign(&claims)
            .map_err(|e| ApiError::internal(&e))
    }

    /// The embedded issuer's name (`iss`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Verifies `Authorization: Bearer <token>`.
    ///
    /// # Errors
    /// 401/`4010` for every failure; the reason goes to the debug log only.
    pub async fn verify(&self, authorization: Option<&str>, now: i64) -> Result<Claims, ApiError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(unauthenticated)?;
        let issuer = jwt::peek_issuer(token).ok_or_else(unauthenticated)?;
        let verifier = match &self.keycloak {
            Some(k) if k.issuer() == issuer => k,
            _ => &self.embedded,
        };
        verifier.verify(token, now).await.map_err(|e| {
            tracing::debug!(reason = %e, "bearer token refused");
            unauthenticated()
        })
    }

    /// Whether the claims were made by the embedded issuer (API-client tokens must be).
    pub fn is_embedded(&self, claims: &Claims) -> bool {
        claims.iss == self.issuer
    }

    /// Whether the embedded issuer may sign people's tokens (embedded mode).
    pub const fn signs_people(&self) -> bool {
        self.people_from_embedded
    }
}

/// The principal behind verified claims: API clients by their record, platform admins by role,
/// everyone else by the platform's own user record (never by tenant claims in the token).
///
/// # Errors
/// 401/`4010` for a deleted API client; 403/`4030` when no user record backs the token or the
/// token does not carry the record's role.
pub async fn principal(auth: &Auth, db: &Db, claims: &Claims) -> Result<Principal, ApiError> {
    let has = |role: Role| claims.roles.iter().any(|r| r == role.as_str());
    if crate::wire::ids::is_client_id(&claims.sub) && auth.is_embedded(claims) {
        let client: ApiClient = db.get(&claims.sub).await?.ok_or_else(unauthenticated)?;
        if !has(Role::MerchantAdmin) {
            return Err(ApiError::forbidden());
        }
        return Ok(Principal {
            sub: claims.sub.clone(),
            role: Role::MerchantAdmin,
            scope: Scope::Merchant(client.merchant_id),
            user_id: None,
            email: None,
            roles: claims.roles.clone(),
            token_exp: claims.exp,
        });
    }
    if auth.is_embedded(claims) && !auth.signs_people() {
        // Keycloak mode: a person's token from the embedded key is not a token we issued.
        return Err(unauthenticated());
    }
    if has(Role::PlatformAdmin) {
        return Ok(Principal {
            sub: claims.sub.clone(),
            role: Role::PlatformAdmin,
            scope: Scope::Platform,
            user_id: None,
            email: claims.email.clone(),
            roles: claims.roles.clone(),
            token_exp: claims.exp,
        });
    }
    let user: User = match db.owner("user_sub", &claims.sub).await? {
        Some(id) => db.get(&id).await?,
        None => None,
    }
    .ok_or_else(|| {
        ApiError::new(
            Code::Forbidden,
            "no platform user is linked to this token's subject",
        )
    })?;
    // The token must carry the record's role (or a higher one): a user whose role was taken
    // away in the identity provider loses it here too.
    if !claims
        .roles
        .iter()
        .filter_map(|r| Role::parse(r))
        .any(|r| r >= user.role)
    {
        return Err(ApiError::forbidden());
    }
    let scope = match (&user.merchant_id, &user.reseller_id) {
        (Some(m), _) => Scope::Merchant(m.clone()),
        (None, Some(r)) => Scope::Reseller(r.clone()),
        (None, None) => return Err(ApiError::forbidden()),
    };
    Ok(Principal {
        sub: claims.sub.clone(),
        role: user.role,
        scope,
        user_id: Some(user.id),
        email: Some(user.email),
        roles: claims.roles.clone(),
        token_exp: claims.exp,
    })
}

/// Every bearer call but `/session/initiate` needs a live session for the token's subject.
///
/// # Errors
/// 401/`4015`.
pub async fn require_session(db: &Db, p: &Principal, now: i64) -> Result<Session, ApiError> {
    match db.get::<Session>(&p.sub).await? {
        Some(s) if s.expires_at >= now => Ok(s),
        _ => Err(ApiError::new(
            Code::NoSession,
            "session not initiated: POST /session/initiate first",
        )),
    }
}
