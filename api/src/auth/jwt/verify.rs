//! Verifying a token: shape and size, header, key by `kid`, signature, then the claims.

use super::fetch::{Remote, tls_connector};
use super::jwk::{KeySet, PublicKey, parse_jwks};
use super::*;

/// Where a verifier gets its keys.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Keys known in-process (the embedded issuer: built from [`Signer::jwk`]), as a JWKS
    /// `{"keys":[...]}`. Never refetched.
    Static(Value),
    /// A remote JWKS over `http://` or `https://` (keycloak's `.../protocol/openid-connect/certs`).
    Remote {
        /// The JWKS URL. `https` needs `ca_file`; without it every fetch fails with a log line
        /// (there is no built-in root store, on purpose: the issuer's CA is configured).
        url: String,
        /// PEM file of the CA certificate(s) trusted for the `https` JWKS endpoint.
        ca_file: Option<PathBuf>,
    },
}

/// The algorithms a token may claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Alg {
    Rs256,
    Es256,
}

/// A token split and decoded, nothing trusted yet.
pub(super) struct Parts<'a> {
    pub(super) signing_input: &'a str,
    pub(super) header: Vec<u8>,
    pub(super) payload: Vec<u8>,
    pub(super) signature: Vec<u8>,
}

/// Exactly three non-empty strict-base64url parts within the size limit.
pub(super) fn split_token(token: &str) -> Result<Parts<'_>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed);
    }
    let mut pieces = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (pieces.next(), pieces.next(), pieces.next(), pieces.next())
    else {
        return Err(JwtError::Malformed);
    };
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(JwtError::Malformed);
    }
    let signing_input = token
        .get(..header.len() + 1 + payload.len())
        .ok_or(JwtError::Malformed)?;
    let decode = |part: &str| b64d(part).ok_or(JwtError::Malformed);
    Ok(Parts {
        signing_input,
        header: decode(header)?,
        payload: decode(payload)?,
        signature: decode(signature)?,
    })
}

/// `alg` (RS256/ES256 only) and `kid` from the header; `crit` is refused since no extension is
/// understood.
pub(super) fn parse_header(bytes: &[u8]) -> Result<(Alg, String), JwtError> {
    let header = crate::wire::json::parse(bytes).map_err(|_| JwtError::Malformed)?;
    let header = header.as_object().ok_or(JwtError::Malformed)?;
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("RS256") => Alg::Rs256,
        Some("ES256") => Alg::Es256,
        _ => return Err(JwtError::Algorithm),
    };
    if header.contains_key("crit") {
        return Err(JwtError::Malformed);
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or(JwtError::Malformed)?;
    Ok((alg, kid.to_owned()))
}

/// Verifies the signature with the key, refusing a key of the wrong type for `alg`.
pub(super) fn check_signature(
    alg: Alg,
    key: &PublicKey,
    message: &[u8],
    signature: &[u8],
) -> Result<(), JwtError> {
    let verified = match (alg, key) {
        (Alg::Es256, PublicKey::Es256(point)) => {
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).verify(message, signature)
        }
        (Alg::Rs256, PublicKey::Rs256 { n, e }) => {
            RsaPublicKeyComponents { n, e }.verify(&RSA_PKCS1_2048_8192_SHA256, message, signature)
        }
        _ => return Err(JwtError::Algorithm),
    };
    verified.map_err(|_| JwtError::Signature)
}

/// An integer NumericDate claim: `None` when absent, `Malformed` when not an integer.
pub(super) fn numeric_date(
    claims: &serde_json::Map<String, Value>,
    name: &str,
) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => value.as_i64().map(Some).ok_or(JwtError::Malformed),
    }
}

/// One issuer's verifier: exact `iss`, required `aud`, 60 s leeway, RS256/ES256 only.
///
/// Shared behind an `Arc` by all request handlers; `verify` only takes a read lock on the key
/// set except when an unknown `kid` may trigger a (rate-limited, coalesced) refetch.
pub struct Verifier {
    pub(super) issuer: String,
    pub(super) audience: String,
    pub(super) keys: RwLock<KeySet>,
    pub(super) remote: Option<Remote>,
    pub(super) refetch_interval: Duration,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("jwks_url", &self.remote.as_ref().map(|r| r.url.as_str()))
            .field("refetch_interval", &self.refetch_interval)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for `issuer` (compared exactly with `iss`) accepting tokens whose `aud`
    /// contains `audience`. A remote source is not contacted here: the first `verify` fetches.
    ///
    /// # Errors
    /// Empty issuer or audience, a static JWKS without usable key, a bad URL, or an unreadable
    /// CA file.
    pub fn new(issuer: String, audience: String, source: KeySource) -> Result<Self, String> {
        if issuer.is_empty() || audience.is_empty() {
            return Err("JWT issuer and audience must not be empty".to_owned());
        }
        let (keys, remote) = match source {
            KeySource::Static(jwks) => {
                let keys = parse_jwks(&jwks);
                if keys.is_empty() {
                    return Err("static JWKS has no usable RS256/ES256 signing key".to_owned());
                }
                (keys, None)
            }
            KeySource::Remote { url, ca_file } => {
                let target = crate::wire::url::jwks_target(&url)?;
                let tls = match (&ca_file, target.https) {
                    (Some(file), true) => Some(tls_connector(file)?),
                    (None, true) => {
                        tracing::warn!(
                            url = %url,
                            "https JWKS URL without a CA file: fetching its keys will fail"
                        );
                        None
                    }
                    (_, false) => None,
                };
                let remote = Remote {
                    url,
                    target,
                    tls,
                    last_attempt: Mutex::new(None),
                };
                (KeySet::new(), Some(remote))
            }
        };
        Ok(Self {
            issuer,
            audience,
            keys: RwLock::new(keys),
            remote,
            refetch_interval: DEFAULT_REFETCH_INTERVAL,
        })
    }

    /// Changes the minimum time between two fetch attempts caused by unknown `kid`s (60 s by
    /// default, which the contract requires in production; tests shorten it).
    #[must_use]
    pub const fn with_refetch_interval(mut self, interval: Duration) -> Self {
        self.refetch_interval = interval;
        self
    }

    /// The issuer this verifier trusts (to route a token by [`peek_issuer`]).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience a token must contain.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Verifies a compact JWS and returns its claims. `now` in Unix seconds (passed in for
    /// tests).
    ///
    /// # Errors
    /// The first failed check, as a [`JwtError`] for logs.
    pub async fn verify(&self, token: &str, now: i64) -> Result<Claims, JwtError> {
        let parts = split_token(token)?;
        let (alg, kid) = parse_header(&parts.header)?;
        let key = self.key_for(&kid).await?;
        check_signature(alg, &key, parts.signing_input.as_bytes(), &parts.signature)?;
        self.check_claims(&parts.payload, now)
    }

    /// The key for `kid`, fetching the remote JWKS when never fetched or, on an unknown `kid`,
    /// when the last attempt is at least the refetch interval old.
    pub(super) async fn key_for(&self, kid: &str) -> Result<Arc<PublicKey>, JwtError> {
        if let Some(key) = self.keys.read().await.get(kid) {
            return Ok(Arc::clone(key));
        }
        let Some(remote) = &self.remote else {
            return Err(JwtError::UnknownKey);
        };
        let mut last_attempt = remote.last_attempt.lock().await;
        // Another request may have fetched while this one waited for the lock.
        if let Some(key) = self.keys.read().await.get(kid) {
            return Ok(Arc::clone(key));
        }
        if last_attempt.is_none_or(|at| at.elapsed() >= self.refetch_interval) {
            *last_attempt = Some(Instant::now());
            match remote.fetch().await {
                Ok(keys) => {
                    tracing::info!(url = %remote.url, keys = keys.len(), "fetched the issuer's JWKS");
                    *self.keys.write().await = keys;
                }
                Err(error) => tracing::warn!(
                    url = %remote.url,
                    %error,
                    "JWKS fetch failed; keeping the keys already known"
                ),
            }
        }
        drop(last_attempt);
        let keys = self.keys.read().await;
        match keys.get(kid) {
            Some(key) => Ok(Arc::clone(key)),
            None if keys.is_empty() => Err(JwtError::KeysUnavailable),
            None => Err(JwtError::UnknownKey),
        }
    }

    /// The claim checks, on a payload whose signature has been verified.
    pub(super) fn check_claims(&self, payload: &[u8], now: i64) -> Result<Claims, JwtError> {
        let claims = crate::wire::json::parse(payload).map_err(|_| JwtError::Malformed)?;
        let claims = claims.as_object().ok_or(JwtError::Malformed)?;
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(JwtError::Issuer);
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == self.audience,
            Some(Value::Array(list)) => list
                .iter()
                .any(|aud| aud.as_str() == Some(self.audience.as_str())),
            _ => false,
        };
        if !audience_ok {
            return Err(JwtError::Audience);
        }
        let exp = numeric_date(claims, "exp")?.ok_or(JwtError::Malformed)?;
        if now > exp.saturating_add(LEEWAY_SECS) {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = numeric_date(claims, "nbf")?
            && now.saturating_add(LEEWAY_SECS) < nbf
        {
            return Err(JwtError::NotYetValid);
        }
        let sub = match claims.get("sub").and_then(Value::as_str) {
            Some(sub) if !sub.is_empty() => sub.to_owned(),
            _ => return Err(JwtError::Malformed),
        };
        let roles = match claims.get("realm_access") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(realm)) => match realm.get("roles") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(list)) => list
                    .iter()
                    .map(|role| role.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or(JwtError::Malformed)?,
                Some(_) => return Err(JwtError::Malformed),
            },
            Some(_) => return Err(JwtError::Malformed),
        };
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_owned);
        Ok(Claims {
            sub,
            iss: self.issuer.clone(),
            exp,
            roles,
            email: text("email"),
            name: text("name"),
            nonce: text("nonce"),
        })
    }
}

/// Reads the unverified `iss` claim of a token so the caller can pick the verifier (the API
/// may trust two issuers: keycloak for people and the embedded one for API clients). Returns
/// `None` if malformed.
///
/// The answer is only a routing hint: the chosen verifier still checks `iss` after the signature.
pub fn peek_issuer(token: &str) -> Option<String> {
    let parts = split_token(token).ok()?;
    let claims = crate::wire::json::parse(&parts.payload).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}
