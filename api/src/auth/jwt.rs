//! JWT bearer tokens: verification against an issuer's JWKS, and the embedded issuer's key.
//!
//! The contract: `Authorization: Bearer <JWT>`; only RS256 and ES256 are accepted (never `none`,
//! never HS*, whatever the header says); the key is looked up by `kid` in the issuer's JWKS;
//! `iss` must match exactly, `aud` must contain the configured audience, `exp`/`nbf` are checked
//! with 60 s of leeway, and roles come from `realm_access.roles`.
//!
//! Two issuer modes share one [`Verifier`]:
//! - **embedded**: the API signs its own ES256 tokens with a [`Signer`] and publishes
//!   [`Signer::jwk`] at `GET /.well-known/jwks.json`; its verifier uses [`KeySource::Static`];
//! - **keycloak**: verify only, keys from [`KeySource::Remote`] (cached; refetched at most once
//!   per interval on an unknown `kid`; the old keys are kept while the issuer is unreachable).
//!
//! Order of checks: shape and size, header (`alg`, `kid`, no `crit`), key (by `kid`, and its type
//! must match `alg`), signature, and only then the claims. Nothing in the payload is trusted
//! before the signature is verified. All crypto is `ring`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use serde_json::{Value, json};
use tokio::sync::{Mutex, RwLock};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// Clock skew tolerated on `exp` and `nbf`, in seconds (contract: 60 s).
pub(crate) const LEEWAY_SECS: i64 = 60;
/// Longest token accepted; anything longer is refused before any decoding.
pub(crate) const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Minimum time between two JWKS fetch attempts triggered by unknown `kid`s.
pub(crate) const DEFAULT_REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// The whole JWKS fetch (connect, TLS, request, body) must finish within this.
pub(crate) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS body read from an issuer.
pub(crate) const MAX_JWKS_BODY: usize = 256 * 1024;
/// Largest key file [`Signer::load_or_create`] reads (a P-256 PKCS#8 is ~140 bytes).
pub(crate) const MAX_KEY_FILE: u64 = 16 * 1024;

/// Verified claims the API uses.
///
/// Only built by [`Verifier::verify`] after the signature, issuer, audience and validity window
/// were checked, so holding one means the caller is authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The subject (`sub`): the user or API client id; never empty.
    pub sub: String,
    /// The issuer (`iss`), equal to the verifier's configured issuer; tells which trust
    /// domain (people through keycloak, or API clients through the embedded issuer) it came from.
    pub iss: String,
    /// Expiry (`exp`) in Unix seconds, so callers can bound caches or sessions by it.
    pub exp: i64,
    /// Roles from `realm_access.roles` (empty when absent); authorisation is decided from these.
    pub roles: Vec<String>,
    /// The `email` claim when present (for audit display only, never for authorisation).
    pub email: Option<String>,
    /// The `name` claim when present (for audit display only, never for authorisation).
    pub name: Option<String>,
    /// The `nonce` of an ID token: which sign-in it answers (the portal checks it).
    pub nonce: Option<String>,
}

/// Why a token was refused.
///
/// Every variant answers the same 401/4010 on the wire so a caller learns nothing about which
/// check failed; the variant is for logs (never log the token itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    /// Not a compact JWS of the expected shape (parts, base64url, JSON, size, required
    /// members such as `kid`, `exp`, `sub`, or a `crit` header).
    Malformed,
    /// The header's `alg` is not RS256/ES256, or does not match the type of the key its `kid`
    /// names (the algorithm-confusion guard).
    Algorithm,
    /// The issuer's key set has no key with this `kid` (and a refetch was not allowed or did
    /// not bring it).
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// `exp` is more than the leeway in the past.
    Expired,
    /// `nbf` is more than the leeway in the future.
    NotYetValid,
    /// `iss` is missing or not exactly the configured issuer.
    Issuer,
    /// `aud` is missing or does not contain the configured audience.
    Audience,
    /// No key of the issuer has ever been fetched (the issuer is unreachable or misconfigured).
    KeysUnavailable,
}

impl JwtError {
    /// A short stable name for structured logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Algorithm => "algorithm",
            Self::UnknownKey => "unknown_key",
            Self::Signature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Issuer => "issuer",
            Self::Audience => "audience",
            Self::KeysUnavailable => "keys_unavailable",
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed token",
            Self::Algorithm => "algorithm not accepted",
            Self::UnknownKey => "unknown key id",
            Self::Signature => "bad signature",
            Self::Expired => "token expired",
            Self::NotYetValid => "token not yet valid",
            Self::Issuer => "wrong issuer",
            Self::Audience => "wrong audience",
            Self::KeysUnavailable => "issuer keys unavailable",
        })
    }
}

impl std::error::Error for JwtError {}

pub(crate) fn b64e(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Strict base64url: no padding, no whitespace, no non-canonical trailing bits.
pub(crate) fn b64d(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Splits an uncompressed P-256 point `0x04 || x || y` into `(x, y)`.
pub(crate) fn split_point(point: &[u8]) -> Option<(&[u8], &[u8])> {
    match point.split_first() {
        Some((4, xy)) if xy.len() == 64 => xy.split_at_checked(32),
        _ => None,
    }
}

/// RFC 7638 thumbprint of an EC P-256 key: SHA-256 over the required members in
/// lexicographic order, no whitespace, base64url.
pub(crate) fn ec_thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    b64e(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
}

pub mod fetch;
mod jwk;
mod signer;
mod verify;

pub use signer::Signer;
pub use verify::{KeySource, Verifier, peek_issuer};

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::jwk::*;
    use super::verify::*;
    use super::*;

    const NOW: i64 = 1_750_000_000;
    const ISS: &str = "https://api.viopay.test";
    const AUD: &str = "viopay-api";

    /// RS256 test vector made offline with python `cryptography` (RSA 2048, e = 65537).
    const RSA_JWKS: &str = r#"{"keys":[{"kty":"RSA","kid":"rsa-test-1","use":"sig","alg":"RS256","n":"sGVxj1SxSI7kFn3JSFmfVb-5jmdeSFmCaZs_HMf9HvQjctoCOD6pPbBc7e0zAcGLuVP3drvAEqJO4vBOEcKDetU31JMxNYq0L-DbbFdw6F7MGbyJ0AhGWhrr_2FlysIZ_bjQ4zGfUBSMcuaLMuBj5zfoV7y8gGdHMUkUSzMeK5itcQ9M8ZSOyIhItmiKLmSTrSCNisoPTD_Xg_uyVEpV5kxJIRy3VO29_xkDzum0wmzsd72ML48A2j--BVrMfoPqQjFOKzqnoMYy2-MK4n35Ruc-4Ohf5ibKvl_DlGWbkV4Sx5KACaOK9Xf9NoQdBWeejdPv8yFp05HSQcvsHm_-Ww","e":"AQAB"}]}"#;
    const RSA_ISS: &str = "https://idp.example.test/realms/viopay";
    /// Header `{"alg":"RS256","typ":"JWT","kid":"rsa-test-1"}`; claims with `exp` 4102444800,
    /// `aud` `["viopay-api","account"]`, roles, email and name.
    const RSA_TOKEN: &str = concat!(
        "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS10ZXN0LTEifQ.",
        "eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlLnRlc3QvcmVhbG1zL3Zpb3BheSIsImF1ZCI6WyJ2aW9wYXkt",
        "YXBpIiwiYWNjb3VudCJdLCJzdWIiOiIzZjZjMWE3ZS11c2VyIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3",
        "MDAwMDAwMDAsIm5iZiI6MTcwMDAwMDAwMCwicmVhbG1fYWNjZXNzIjp7InJvbGVzIjpbImJhY2tvZmZpY2Ut",
        "YWRtaW4iLCJvZmZsaW5lX2FjY2VzcyJdfSwiZW1haWwiOiJhZGFAZXhhbXBsZS50ZXN0IiwibmFtZSI6IkFk",
        "YSBMb3ZlbGFjZSJ9.",
        "N4d3upftsy7WP6T13_CEcRQ6C9xDeFltw4f7ZIRu8hA_nLYYAAWjPiH7HMx6lhZ--V_AXbUl4BdanHN1GdBt",
        "rW5YXWWDUP5RZESsAyZbfp_1YrlS7Br7VUMh7h2feUcN68twIB6DUaBG7ACZCpvLTo30VBg4YhB6r0qMCu-K",
        "fH6_Qk2bne8zvKVeDeaP61Yvdu19vMFkbhCms3pFAtJNLprXpTdr8IciZs1UZHQ31_udrl532GgB78hkLURU",
        "4hSFFcp7ehjWKYSyI-IYt3zwdIBMtNf-3y37qwc4SUqqESSLYoc7apbcm9ON9VtQcgRivcmN1dECYZocyBMt",
        "cIuapA",
    );

    /// A fixed P-256 PKCS#8 key (python `cryptography`) and its public coordinates and
    /// RFC 7638 thumbprint computed independently there.
    const EC_PKCS8_B64: &str = concat!(
        "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgzOAVYoki6WZaJFuUOyzAv/I8YFd6H2+FVT9t",
        "gW3uZVihRANCAASGNV1eja6zRRv/dG6v4c8fUYVIReuXx4YYWmVbid/sAsZ87UwsiTlRNmMYljR4+chKrim7",
        "WDePN2YsgAF8ESJX",
    );
    const EC_X: &str = "hjVdXo2us0Ub_3Rur-HPH1GFSEXrl8eGGFplW4nf7AI";
    const EC_Y: &str = "xnztTCyJOVE2YxiWNHj5yEquKbtYN483ZiyAAXwRIlc";
    const EC_KID: &str = "IKAJxhN69nIqas8gpMzqe9y5FS8MzLd45g4tG8CFuFA";

    /// Test CA and a `localhost`/127.0.0.1 server certificate under it (openssl, 100 years).
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBkzCCATmgAwIBAgIUbMR0LKJdddN4YlYjsaNCa9QlR+AwCgYIKoZIzj0EAwIw
FjEUMBIGA1UEAwwLand0IHRlc3QgQ0EwIBcNMjYxMTI3MDY1MzEyWhgPMjEyNjEx
MDMwNjUzMTJaMBYxFDASBgNVBAMMC2p3dCB0ZXN0IENBMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAEQYTeiEr0NGqy+VF/nv4voEeWozd9yusWMY0l2LKLyua1uOc2
2LlvvA+aKp4FVJMBVUSjChD3Xx/eqRLwUOdbB6NjMGEwHQYDVR0OBBYEFFinTU5d
hhGwYJ38ypthNYvweKN4MB8GA1UdIwQYMBaAFFinTU5dhhGwYJ38ypthNYvweKN4
MA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEGMAoGCCqGSM49BAMCA0gA
MEUCIDUGdz3C/v1jW16ULB3EplLgC3wbPiQLtock3PYnqpCTAiEAs21wXm2VEC+n
F4ZNUXdTUmjWsjr9Q7Kfzr9HVAjf6qg=
-----END CERTIFICATE-----
";
    const LEAF_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBwjCCAWegAwIBAgIUQADTaH6Gn54tTMitgdL5b0bBzfYwCgYIKoZIzj0EAwIw
FjEUMBIGA1UEAwwLand0IHRlc3QgQ0EwIBcNMjYxMTI3MDY1MzEyWhgPMjEyNjEx
MDMwNjUzMTJaMBQxEjAQBgNVBAMMCWxvY2FsaG9zdDBZMBMGByqGSM49AgEGCCqG
SM49AwEHA0IABMm/mf00C16a114pRuwn53l2boPPRAU2JMolN8l5uQfiNgt77OLD
OH3DSXnNFpn1MjmdtdhKz0zJiDcydtLV8BCjgZIwgY8wGgYDVR0RBBMwEYIJbG9j
YWxob3N0hwR/AAABMAwGA1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQDAgeAMBMGA1Ud
JQQMMAoGCCsGAQUFBwMBMB0GA1UdDgQWBBSfQXVn17UgZxIBOXiAAu+udXcmbzAf
BgNVHSMEGDAWgBRYp01OXYYRsGCd/MqbYTWL8HijeDAKBggqhkjOPQQDAgNJADBG
AiEA7u2StkPPrw6IUA8WA1ZtLxr3ely28Xl1qcshj3oBx5sCIQDYj0NPnW2Wi+20
5XDwJgriMpKMVZKdqOzdXhw8onTp6g==
-----END CERTIFICATE-----
";
    const LEAF_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgn7cnyQMWsKK2FuiH
mEw1Od0nYMMmLOkgSI5CwqP6EVehRANCAATJv5n9NAtemtdeKUbsJ+d5dm6Dz0QF
NiTKJTfJebkH4jYLe+ziwzh9w0l5zRaZ9TI5nbXYSs9MyYg3MnbS1fAQ
-----END PRIVATE KEY-----
";

    #[allow(clippy::unwrap_used)]
    fn signer() -> Signer {
        Signer::generate().unwrap().0
    }

    fn good_claims() -> Value {
        json!({
            "iss": ISS, "aud": AUD, "sub": "client-7", "exp": NOW + 300, "nbf": NOW - 5,
            "iat": NOW - 5, "realm_access": {"roles": ["pos", "charges"]},
        })
    }

    fn jwks_of(signers: &[&Signer]) -> Value {
        json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()})
    }

    #[allow(clippy::unwrap_used)]
    fn static_verifier(signer: &Signer) -> Verifier {
        Verifier::new(
            ISS.into(),
            AUD.into(),
            KeySource::Static(jwks_of(&[signer])),
        )
        .unwrap()
    }

    #[allow(clippy::unwrap_used)]
    fn rsa_verifier() -> Verifier {
        let jwks = serde_json::from_str(RSA_JWKS).unwrap();
        Verifier::new(RSA_ISS.into(), AUD.into(), KeySource::Static(jwks)).unwrap()
    }

    fn enc(value: &Value) -> String {
        b64e(value.to_string().as_bytes())
    }

    /// A token with any header and payload, signed by `signer`'s ES256 key.
    #[allow(clippy::unwrap_used)]
    fn sign_raw(signer: &Signer, header: &Value, payload: &Value) -> String {
        let input = format!("{}.{}", enc(header), enc(payload));
        let signature = signer.key.sign(&signer.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", b64e(signature.as_ref()))
    }

    fn es_header(signer: &Signer) -> Value {
        json!({"alg": "ES256", "typ": "JWT", "kid": signer.kid()})
    }

    /// Flips one bit of one decoded part (0 header, 1 payload, 2 signature).
    #[allow(clippy::unwrap_used, clippy::indexing_slicing)]
    fn flip_bit(token: &str, part: usize, byte: usize) -> String {
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut bytes = b64d(&parts[part]).unwrap();
        bytes[byte] ^= 0x01;
        parts[part] = b64e(&bytes);
        parts.join(".")
    }

    #[tokio::test]
    async fn signer_round_trip() {
        let signer = signer();
        let token = signer.sign(&good_claims()).unwrap();
        let claims = static_verifier(&signer).verify(&token, NOW).await.unwrap();
        assert_eq!(
            claims,
            Claims {
                sub: "client-7".into(),
                iss: ISS.into(),
                exp: NOW + 300,
                roles: vec!["pos".into(), "charges".into()],
                email: None,
                name: None,
                nonce: None,
            }
        );
        assert_eq!(peek_issuer(&token).as_deref(), Some(ISS));
        let header: Value =
            serde_json::from_slice(&b64d(token.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(
            header,
            json!({"alg": "ES256", "typ": "JWT", "kid": signer.kid()})
        );
        let signature = b64d(token.rsplit('.').next().unwrap()).unwrap();
        assert_eq!(signature.len(), 64, "raw r||s");
        assert_eq!(
            signer.sign(&json!(["not", "an", "object"])),
            Err(JwtError::Malformed)
        );
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        let der = base64::engine::general_purpose::STANDARD
            .decode(EC_PKCS8_B64)
            .unwrap();
        let signer = Signer::from_pkcs8(&der).unwrap();
        let hand_built = format!(r#"{{"crv":"P-256","kty":"EC","x":"{EC_X}","y":"{EC_Y}"}}"#);
        let digest = ring::digest::digest(&ring::digest::SHA256, hand_built.as_bytes());
        assert_eq!(b64e(digest.as_ref()), EC_KID);
        assert_eq!(signer.kid(), EC_KID);
        assert_eq!(
            signer.jwk(),
            json!({
                "kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "use": "sig", "alg": "ES256",
                "kid": EC_KID,
            })
        );
        // Stable: the same key gives the same kid; Debug shows the kid and nothing else.
        assert_eq!(Signer::from_pkcs8(&der).unwrap().kid(), EC_KID);
        assert_eq!(
            format!("{signer:?}"),
            format!("Signer {{ kid: {EC_KID:?}, .. }}")
        );
        assert!(Signer::from_pkcs8(b"not a key").is_err());
    }

    #[tokio::test]
    async fn refuses_alg_none_and_hs256() {
        let signer = signer();
        let verifier = static_verifier(&signer);
        let payload = enc(&good_claims());
        for alg in ["none", "None", "HS256", "HS512", "RS512", "ES384", "PS256"] {
            let header = enc(&json!({"alg": alg, "kid": signer.kid()}));
            assert_eq!(
                verifier.verify(&format!("{header}.{payload}."), NOW).await,
                Err(JwtError::Malformed),
                "{alg} with an empty signature"
            );
            assert_eq!(
                verifier
                    .verify(&format!("{header}.{payload}.c2ln"), NOW)
                    .await,
                Err(JwtError::Algorithm),
                "{alg}"
            );
        }
        // HS256 keyed with the public JWK (the classic confusion attack): a valid MAC is no help.
        let header = enc(&json!({"alg": "HS256", "typ": "JWT", "kid": signer.kid()}));
        let input = format!("{header}.{payload}");
        let secret =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, signer.jwk().to_string().as_bytes());
        let mac = ring::hmac::sign(&secret, input.as_bytes());
        let token = format!("{input}.{}", b64e(mac.as_ref()));
        assert_eq!(verifier.verify(&token, NOW).await, Err(JwtError::Algorithm));
        let no_alg = format!("{}.{payload}.c2ln", enc(&json!({"kid": signer.kid()})));
        assert_eq!(
            verifier.verify(&no_alg, NOW).await,
            Err(JwtError::Algorithm)
        );
    }

    #[tokio::test]
    async fn refuses_a_key_of_the_wrong_type_for_alg() {
        let signer = signer();
        // RS256 header naming the EC key.
        let header = enc(&json!({"alg": "RS256", "typ": "JWT", "kid": signer.kid()}));
        let token = format!("{header}.{}.{}", enc(&good_claims()), b64e(&[7; 256]));
        assert_eq!(
            static_verifier(&signer).verify(&token, NOW).await,
            Err(JwtError::Algorithm)
        );
        // ES256 header naming the RSA key.
        let claims = json!({"iss": RSA_ISS, "aud": AUD, "sub": "x", "exp": NOW + 60});
        let token = sign_raw(
            &signer,
            &json!({"alg": "ES256", "kid": "rsa-test-1"}),
            &claims,
        );
        assert_eq!(
            rsa_verifier().verify(&token, NOW).await,
            Err(JwtError::Algorithm)
        );
    }

    #[tokio::test]
    async fn refuses_unknown_kid_and_tampering() {
        let signer = signer();
        let other = signer_other();
        let verifier = static_verifier(&signer);
        let foreign = other.sign(&good_claims()).unwrap();
        assert_eq!(
            verifier.verify(&foreign, NOW).await,
            Err(JwtError::UnknownKey)
        );
        // The other key's signature under our kid.
        let stolen_kid = sign_raw(&other, &es_header(&signer), &good_claims());
        assert_eq!(
            verifier.verify(&stolen_kid, NOW).await,
            Err(JwtError::Signature)
        );

        let token = signer.sign(&good_claims()).unwrap();
        let mut pieces = token.split('.');
        let (header, _, signature) = (
            pieces.next().unwrap(),
            pieces.next().unwrap(),
            pieces.next().unwrap(),
        );
        let mut elevated = good_claims();
        elevated["realm_access"]["roles"] = json!(["admin"]);
        let tampered = format!("{header}.{}.{signature}", enc(&elevated));
        assert_eq!(
            verifier.verify(&tampered, NOW).await,
            Err(JwtError::Signature)
        );
        for byte in [0, 31, 32, 63] {
            let bad = flip_bit(&token, 2, byte);
            assert_eq!(
                verifier.verify(&bad, NOW).await,
                Err(JwtError::Signature),
                "{byte}"
            );
        }
        let short = format!(
            "{header}.{}.{}",
            token.split('.').nth(1).unwrap(),
            b64e(&[1; 63])
        );
        assert_eq!(verifier.verify(&short, NOW).await, Err(JwtError::Signature));
        assert!(verifier.verify(&token, NOW).await.is_ok());
    }

    #[allow(clippy::unwrap_used)]
    fn signer_other() -> Signer {
        Signer::generate().unwrap().0
    }

    #[tokio::test]
    async fn checks_issuer_and_audience() {
        let signer = signer();
        let verifier = static_verifier(&signer);
        let with = |name: &str, value: Value| {
            let mut claims = good_claims();
            claims[name] = value;
            signer.sign(&claims).unwrap()
        };
        let without = |name: &str| {
            let mut claims = good_claims();
            claims.as_object_mut().unwrap().remove(name);
            signer.sign(&claims).unwrap()
        };
        for iss in [
            json!("https://api.viopay.test/"),
            json!("https://API.viopay.test"),
            json!(1),
        ] {
            assert_eq!(
                verifier.verify(&with("iss", iss), NOW).await,
                Err(JwtError::Issuer)
            );
        }
        assert_eq!(
            verifier.verify(&without("iss"), NOW).await,
            Err(JwtError::Issuer)
        );
        for aud in [
            json!("account"),
            json!(["account", "other"]),
            json!([]),
            json!({"a": AUD}),
        ] {
            assert_eq!(
                verifier.verify(&with("aud", aud), NOW).await,
                Err(JwtError::Audience)
            );
        }
        assert_eq!(
            verifier.verify(&without("aud"), NOW).await,
            Err(JwtError::Audience)
        );
        let listed = with("aud", json!(["account", AUD]));
        assert!(verifier.verify(&listed, NOW).await.is_ok());
    }

    #[tokio::test]
    async fn checks_validity_window_with_leeway() {
        let signer = signer();
        let verifier = static_verifier(&signer);
        let with = |name: &str, value: Value| {
            let mut claims = good_claims();
            claims[name] = value;
            signer.sign(&claims).unwrap()
        };
        assert!(
            verifier
                .verify(&with("exp", json!(NOW - 59)), NOW)
                .await
                .is_ok()
        );
        assert!(
            verifier
                .verify(&with("exp", json!(NOW - 60)), NOW)
                .await
                .is_ok()
        );
        assert_eq!(
            verifier.verify(&with("exp", json!(NOW - 61)), NOW).await,
            Err(JwtError::Expired)
        );
        assert_eq!(
            verifier
                .verify(&with("exp", json!("4102444800")), NOW)
                .await,
            Err(JwtError::Malformed)
        );
        assert_eq!(
            verifier.verify(&with("exp", json!(1.5e9)), NOW).await,
            Err(JwtError::Malformed)
        );
        let mut claims = good_claims();
        claims.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            verifier.verify(&signer.sign(&claims).unwrap(), NOW).await,
            Err(JwtError::Malformed)
        );
        assert!(
            verifier
                .verify(&with("nbf", json!(NOW + 59)), NOW)
                .await
                .is_ok()
        );
        assert!(
            verifier
                .verify(&with("nbf", json!(NOW + 60)), NOW)
                .await
                .is_ok()
        );
        assert_eq!(
            verifier.verify(&with("nbf", json!(NOW + 61)), NOW).await,
            Err(JwtError::NotYetValid)
        );
        let mut claims = good_claims();
        claims.as_object_mut().unwrap().remove("nbf");
        assert!(
            verifier
                .verify(&signer.sign(&claims).unwrap(), NOW)
                .await
                .is_ok()
        );
        // Extreme values do not overflow.
        assert!(
            verifier
                .verify(&with("exp", json!(i64::MAX)), i64::MAX)
                .await
                .is_ok()
        );
        assert_eq!(
            verifier.verify(&with("exp", json!(i64::MIN)), NOW).await,
            Err(JwtError::Expired)
        );
    }

    #[tokio::test]
    async fn requires_sub_and_reads_roles() {
        let signer = signer();
        let verifier = static_verifier(&signer);
        let with = |name: &str, value: Value| {
            let mut claims = good_claims();
            claims[name] = value;
            signer.sign(&claims).unwrap()
        };
        let mut claims = good_claims();
        claims.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            verifier.verify(&signer.sign(&claims).unwrap(), NOW).await,
            Err(JwtError::Malformed)
        );
        for sub in [json!(""), json!(42), json!(null)] {
            assert_eq!(
                verifier.verify(&with("sub", sub), NOW).await,
                Err(JwtError::Malformed)
            );
        }
        let mut claims = good_claims();
        claims.as_object_mut().unwrap().remove("realm_access");
        claims["email"] = json!("ops@viopay.test");
        claims["name"] = json!("Ops");
        let verified = verifier
            .verify(&signer.sign(&claims).unwrap(), NOW)
            .await
            .unwrap();
        assert!(verified.roles.is_empty());
        assert_eq!(verified.email.as_deref(), Some("ops@viopay.test"));
        assert_eq!(verified.name.as_deref(), Some("Ops"));
        let empty = verifier
            .verify(&with("realm_access", json!({})), NOW)
            .await
            .unwrap();
        assert!(empty.roles.is_empty());
        for bad in [
            json!({"roles": "admin"}),
            json!({"roles": ["a", 1]}),
            json!(["admin"]),
        ] {
            assert_eq!(
                verifier.verify(&with("realm_access", bad), NOW).await,
                Err(JwtError::Malformed)
            );
        }
    }

    #[tokio::test]
    async fn refuses_bad_shapes() {
        let signer = signer();
        let verifier = static_verifier(&signer);
        let token = signer.sign(&good_claims()).unwrap();
        let bad = [
            format!("{token}.{}", token.rsplit('.').next().unwrap()),
            format!("{token}."),
            token.rsplit_once('.').unwrap().0.to_owned(),
            String::new(),
            "..".to_owned(),
            token.replacen('.', "..", 1),
            format!("{token}="),
            token.replacen('-', "+", 1).replacen('_', "/", 1),
            format!(" {token}"),
            format!(
                "{}.{}",
                enc(&json!({"alg": "ES256"})),
                token.split_once('.').unwrap().1
            ),
            format!("e30.{}", token.split_once('.').unwrap().1),
            format!("bm90IGpzb24.{}", token.split_once('.').unwrap().1),
        ];
        for (i, candidate) in bad.iter().enumerate() {
            if *candidate == token {
                continue;
            }
            let got = verifier.verify(candidate, NOW).await;
            assert!(
                matches!(got, Err(JwtError::Malformed | JwtError::Algorithm)),
                "case {i}: {got:?}"
            );
            if i < 9 {
                assert_eq!(peek_issuer(candidate), None, "case {i}");
            }
        }
        // `crit` is refused even with a valid signature.
        let mut header = es_header(&signer);
        header["crit"] = json!(["exp"]);
        let crit = sign_raw(&signer, &header, &good_claims());
        assert_eq!(verifier.verify(&crit, NOW).await, Err(JwtError::Malformed));
        // A missing kid, with a valid signature.
        let no_kid = sign_raw(&signer, &json!({"alg": "ES256"}), &good_claims());
        assert_eq!(
            verifier.verify(&no_kid, NOW).await,
            Err(JwtError::Malformed)
        );
        // Oversize, with a valid signature.
        let mut claims = good_claims();
        claims["pad"] = json!("x".repeat(MAX_TOKEN_LEN));
        let huge = sign_raw(&signer, &es_header(&signer), &claims);
        assert_eq!(verifier.verify(&huge, NOW).await, Err(JwtError::Malformed));
        assert_eq!(signer.sign(&claims), Err(JwtError::Malformed));
        assert_eq!(peek_issuer(&huge), None);
        // The payload must be a JSON object.
        let array = sign_raw(&signer, &es_header(&signer), &json!([1]));
        assert_eq!(verifier.verify(&array, NOW).await, Err(JwtError::Malformed));
    }

    #[tokio::test]
    async fn rs256_test_vector() {
        let verifier = rsa_verifier();
        let claims = verifier.verify(RSA_TOKEN, NOW).await.unwrap();
        assert_eq!(
            claims,
            Claims {
                sub: "3f6c1a7e-user".into(),
                iss: RSA_ISS.into(),
                exp: 4_102_444_800,
                roles: vec!["backoffice-admin".into(), "offline_access".into()],
                email: Some("ada@example.test".into()),
                name: Some("Ada Lovelace".into()),
                nonce: None,
            }
        );
        assert_eq!(peek_issuer(RSA_TOKEN).as_deref(), Some(RSA_ISS));
        for (part, byte) in [(2, 0), (2, 128), (2, 255), (1, 40), (0, 22)] {
            let bad = flip_bit(RSA_TOKEN, part, byte);
            assert_eq!(
                verifier.verify(&bad, NOW).await,
                Err(JwtError::Signature),
                "part {part} byte {byte}"
            );
        }
        // Past its exp (+ leeway) it is refused.
        assert_eq!(
            verifier.verify(RSA_TOKEN, 4_102_444_861).await,
            Err(JwtError::Expired)
        );
        // Another audience refuses it.
        let jwks = serde_json::from_str(RSA_JWKS).unwrap();
        let other = Verifier::new(RSA_ISS.into(), "other".into(), KeySource::Static(jwks)).unwrap();
        assert_eq!(other.verify(RSA_TOKEN, NOW).await, Err(JwtError::Audience));
    }

    #[tokio::test]
    async fn jwks_parsing_skips_unusable_keys() {
        let rsa: Value = serde_json::from_str(RSA_JWKS).unwrap();
        let rsa_key = rsa["keys"][0].clone();
        let signer = signer();
        let ec_key = signer.jwk();
        let patched = |base: &Value, name: &str, value: Value| {
            let mut key = base.clone();
            key[name] = value;
            key
        };
        let short_n = b64e(&[0xff; 255]);
        let long_x = b64e(&[1; 33]);
        let skipped = [
            patched(&rsa_key, "use", json!("enc")),
            patched(&rsa_key, "alg", json!("RS512")),
            patched(&rsa_key, "n", json!(short_n)),
            patched(&rsa_key, "kid", json!(7)),
            patched(&rsa_key, "kty", json!("oct")),
            patched(&ec_key, "crv", json!("P-384")),
            patched(&ec_key, "alg", json!("RS256")),
            patched(&ec_key, "x", json!(long_x)),
            patched(&ec_key, "y", json!("!!")),
            json!("not an object"),
        ];
        for (i, key) in skipped.iter().enumerate() {
            assert!(parse_jwks(&json!({"keys": [key]})).is_empty(), "case {i}");
        }
        assert!(
            Verifier::new(
                ISS.into(),
                AUD.into(),
                KeySource::Static(json!({"keys": skipped}))
            )
            .is_err()
        );
        assert!(Verifier::new(ISS.into(), AUD.into(), KeySource::Static(json!({}))).is_err());
        // A modulus with a leading zero byte is the same key; no alg/use is fine too.
        let mut n = vec![0];
        n.extend(b64d(rsa_key["n"].as_str().unwrap()).unwrap());
        let mut padded = patched(&rsa_key, "n", json!(b64e(&n)));
        padded.as_object_mut().unwrap().remove("alg");
        padded.as_object_mut().unwrap().remove("use");
        let keys = json!({"keys": [skipped[1], padded, ec_key]});
        assert_eq!(parse_jwks(&keys).len(), 2);
        let verifier = Verifier::new(RSA_ISS.into(), AUD.into(), KeySource::Static(keys)).unwrap();
        assert!(verifier.verify(RSA_TOKEN, NOW).await.is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn load_or_create_keeps_the_key_private_and_stable() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.p8");
        let created = Signer::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = Signer::load_or_create(&path).unwrap();
        assert_eq!(created.kid(), loaded.kid());

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let error = Signer::load_or_create(&path).unwrap_err();
        assert!(error.contains("group/others"), "{error}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert!(Signer::load_or_create(&path).is_err());

        // PEM is accepted too.
        let der = base64::engine::general_purpose::STANDARD
            .decode(EC_PKCS8_B64)
            .unwrap();
        let pem =
            format!("-----BEGIN PRIVATE KEY-----\n{EC_PKCS8_B64}\n-----END PRIVATE KEY-----\n");
        let pem_path = dir.path().join("signing.pem");
        std::fs::write(&pem_path, pem).unwrap();
        std::fs::set_permissions(&pem_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Signer::load_or_create(&pem_path).unwrap().kid(), EC_KID);
        let der_path = dir.path().join("signing.der");
        std::fs::write(&der_path, der).unwrap();
        std::fs::set_permissions(&der_path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(Signer::load_or_create(&der_path).unwrap().kid(), EC_KID);

        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"junk").unwrap();
        std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Signer::load_or_create(&junk).is_err());
        assert!(Signer::load_or_create(dir.path()).is_err());
        assert!(Signer::load_or_create(&dir.path().join("missing/dir/key")).is_err());
    }

    #[test]
    fn processes_creating_the_key_at_once_all_get_the_same_whole_key() {
        // The server and `api token` may both find no key at start; each must end with the one
        // key that won, never read a half-written file.
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("signing.p8");
            let kids: Vec<String> = std::thread::scope(|s| {
                let racers: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| Signer::load_or_create(&path).map(|k| k.kid().to_owned())))
                    .collect();
                racers
                    .into_iter()
                    .map(|r| r.join().unwrap().unwrap())
                    .collect()
            });
            assert!(kids.iter().all(|k| *k == kids[0]), "{kids:?}");
            assert_eq!(Signer::load_or_create(&path).unwrap().kid(), kids[0]);
            // No temporary file is left behind.
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
    }

    /// A tiny JWKS server: answers every request with the current status and body and counts
    /// requests.
    struct JwksServer {
        addr: SocketAddr,
        answer: Arc<std::sync::Mutex<(u16, String)>>,
        hits: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl JwksServer {
        #[allow(clippy::unwrap_used)]
        fn set(&self, status: u16, body: String) {
            *self.answer.lock().unwrap() = (status, body);
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        fn url(&self, host: &str, scheme: &str) -> String {
            format!("{scheme}://{host}:{}/realms/test/certs", self.addr.port())
        }
    }

    #[allow(clippy::unwrap_used)]
    async fn serve_jwks(body: Value, tls: Option<tokio_rustls::TlsAcceptor>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(std::sync::Mutex::new((200, body.to_string())));
        let hits = Arc::new(AtomicUsize::new(0));
        let (answer2, hits2) = (Arc::clone(&answer), Arc::clone(&hits));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (answer, hits, tls) = (Arc::clone(&answer2), Arc::clone(&hits2), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                respond(stream, &answer, &hits).await;
                            }
                        }
                        None => respond(stream, &answer, &hits).await,
                    }
                });
            }
        });
        JwksServer {
            addr,
            answer,
            hits,
            task,
        }
    }

    #[allow(clippy::unwrap_used)]
    async fn respond<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        answer: &std::sync::Mutex<(u16, String)>,
        hits: &AtomicUsize,
    ) {
        let mut request = Vec::new();
        let mut buf = [0; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        assert!(request.starts_with(b"GET /realms/test/certs HTTP/1.1\r\n"));
        hits.fetch_add(1, Ordering::SeqCst);
        let (status, body) = answer.lock().unwrap().clone();
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    #[allow(clippy::unwrap_used)]
    fn remote_verifier(url: String, ca_file: Option<PathBuf>) -> Verifier {
        Verifier::new(ISS.into(), AUD.into(), KeySource::Remote { url, ca_file }).unwrap()
    }

    /// A token under a kid nobody has; refused before any signature check.
    fn spray_token(i: usize) -> String {
        let header = enc(&json!({"alg": "ES256", "kid": format!("spray-{i}")}));
        format!("{header}.{}.{}", enc(&good_claims()), b64e(&[1; 64]))
    }

    #[tokio::test]
    async fn remote_rotation_refetches_at_most_once_per_interval() {
        let (a, b) = (signer(), signer_other());
        let server = serve_jwks(jwks_of(&[&a]), None).await;
        let interval = Duration::from_millis(1000);
        let verifier =
            remote_verifier(server.url("127.0.0.1", "http"), None).with_refetch_interval(interval);
        let (token_a, token_b) = (
            a.sign(&good_claims()).unwrap(),
            b.sign(&good_claims()).unwrap(),
        );
        assert!(verifier.verify(&token_a, NOW).await.is_ok());
        assert!(verifier.verify(&token_a, NOW).await.is_ok());
        assert_eq!(server.hits(), 1, "cached after the first fetch");

        // The issuer rotates to b: not refetched before the interval, then picked up.
        server.set(200, jwks_of(&[&b]).to_string());
        assert_eq!(
            verifier.verify(&token_b, NOW).await,
            Err(JwtError::UnknownKey)
        );
        assert_eq!(server.hits(), 1);
        tokio::time::sleep(interval + Duration::from_millis(50)).await;
        assert!(verifier.verify(&token_b, NOW).await.is_ok());
        assert_eq!(server.hits(), 2);
        // A successful fetch replaced the set: a is gone.
        assert_eq!(
            verifier.verify(&token_a, NOW).await,
            Err(JwtError::UnknownKey)
        );
        assert_eq!(server.hits(), 2);

        // A broken answer does not wipe the keys.
        tokio::time::sleep(interval + Duration::from_millis(50)).await;
        server.set(200, json!({"keys": []}).to_string());
        assert_eq!(
            verifier.verify(&spray_token(0), NOW).await,
            Err(JwtError::UnknownKey)
        );
        assert_eq!(server.hits(), 3);
        assert!(verifier.verify(&token_b, NOW).await.is_ok());
        server.task.abort();
    }

    #[tokio::test]
    async fn remote_keeps_keys_while_the_issuer_is_down() {
        let a = signer();
        let mut server = serve_jwks(jwks_of(&[&a]), None).await;
        let interval = Duration::from_millis(200);
        let verifier =
            remote_verifier(server.url("127.0.0.1", "http"), None).with_refetch_interval(interval);
        let token = a.sign(&good_claims()).unwrap();
        assert!(verifier.verify(&token, NOW).await.is_ok());
        server.task.abort();
        let _ = (&mut server.task).await;
        tokio::time::sleep(interval + Duration::from_millis(50)).await;
        // The unknown kid makes it try (and fail); the cached key still verifies.
        assert_eq!(
            verifier.verify(&spray_token(1), NOW).await,
            Err(JwtError::UnknownKey)
        );
        assert!(verifier.verify(&token, NOW).await.is_ok());
        assert_eq!(server.hits(), 1);

        // Never fetched and unreachable: keys unavailable.
        let down = remote_verifier(server.url("127.0.0.1", "http"), None);
        assert_eq!(
            down.verify(&token, NOW).await,
            Err(JwtError::KeysUnavailable)
        );
        // And it does not retry before the interval.
        assert_eq!(
            down.verify(&token, NOW).await,
            Err(JwtError::KeysUnavailable)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kid_spray_and_concurrent_first_use_coalesce() {
        let a = signer();
        let server = serve_jwks(jwks_of(&[&a]), None).await;
        let verifier = Arc::new(remote_verifier(server.url("127.0.0.1", "http"), None));
        let token = Arc::new(a.sign(&good_claims()).unwrap());
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (verifier, token) = (Arc::clone(&verifier), Arc::clone(&token));
            tasks.push(tokio::spawn(
                async move { verifier.verify(&token, NOW).await },
            ));
        }
        for task in tasks {
            assert!(task.await.unwrap().is_ok());
        }
        assert_eq!(
            server.hits(),
            1,
            "concurrent first verifications share one fetch"
        );

        let mut tasks = Vec::new();
        for i in 0..200 {
            let verifier = Arc::clone(&verifier);
            tasks.push(tokio::spawn(async move {
                verifier.verify(&spray_token(i), NOW).await
            }));
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), Err(JwtError::UnknownKey));
        }
        assert_eq!(
            server.hits(),
            1,
            "a kid spray does not reach the issuer within a minute"
        );
        assert!(verifier.verify(&token, NOW).await.is_ok());
        server.task.abort();
    }

    #[tokio::test]
    async fn remote_requires_200_and_a_bounded_body() {
        let a = signer();
        let token = a.sign(&good_claims()).unwrap();
        let server = serve_jwks(jwks_of(&[&a]), None).await;
        server.set(500, jwks_of(&[&a]).to_string());
        let verifier = remote_verifier(server.url("127.0.0.1", "http"), None)
            .with_refetch_interval(Duration::ZERO);
        assert_eq!(
            verifier.verify(&token, NOW).await,
            Err(JwtError::KeysUnavailable)
        );
        let mut big = jwks_of(&[&a]);
        big["pad"] = json!("x".repeat(MAX_JWKS_BODY));
        server.set(200, big.to_string());
        assert_eq!(
            verifier.verify(&token, NOW).await,
            Err(JwtError::KeysUnavailable)
        );
        server.set(200, "not json".into());
        assert_eq!(
            verifier.verify(&token, NOW).await,
            Err(JwtError::KeysUnavailable)
        );
        server.set(200, jwks_of(&[&a]).to_string());
        assert!(verifier.verify(&token, NOW).await.is_ok());
        assert_eq!(server.hits(), 4);
        server.task.abort();
    }

    #[tokio::test]
    async fn remote_over_https_trusts_only_the_configured_ca() {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let certs = vec![CertificateDer::from_pem_slice(LEAF_PEM.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(LEAF_KEY_PEM.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let a = signer();
        let token = a.sign(&good_claims()).unwrap();
        let server = serve_jwks(jwks_of(&[&a]), Some(acceptor)).await;

        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, CA_PEM).unwrap();
        for host in ["localhost", "127.0.0.1"] {
            let verifier = remote_verifier(server.url(host, "https"), Some(ca.clone()));
            assert!(verifier.verify(&token, NOW).await.is_ok(), "{host}");
        }
        assert_eq!(server.hits(), 2);
        // No CA configured: no fetch at all.
        let verifier = remote_verifier(server.url("localhost", "https"), None);
        assert_eq!(
            verifier.verify(&token, NOW).await,
            Err(JwtError::KeysUnavailable)
        );
        // A CA that did not issue the server certificate: the handshake fails.
        let wrong = dir.path().join("wrong.pem");
        std::fs::write(&wrong, LEAF_PEM).unwrap();
        let verifier = remote_verifier(server.url("localhost", "https"), Some(wrong));
        assert_eq!(
            verifier.verify(&token, NOW).await,
            Err(JwtError::KeysUnavailable)
        );
        // Plain http against the TLS port fails too.
        let verifier = remote_verifier(server.url("localhost", "http"), None);
        assert_eq!(
            verifier.verify(&token, NOW).await,
            Err(JwtError::KeysUnavailable)
        );
        assert_eq!(server.hits(), 2);
        // An unreadable CA file is a configuration error.
        let missing = KeySource::Remote {
            url: server.url("localhost", "https"),
            ca_file: Some(dir.path().join("missing.pem")),
        };
        assert!(Verifier::new(ISS.into(), AUD.into(), missing).is_err());
        server.task.abort();
    }

    #[test]
    fn plain_http_jwks_only_on_loopback() {
        let remote = |url: &str| KeySource::Remote {
            url: url.into(),
            ca_file: None,
        };
        for url in [
            "http://sso.example.test/realms/v/protocol/openid-connect/certs",
            "http://10.1.2.3:8080/certs",
            "http://[2001:db8::1]/certs",
        ] {
            let e = Verifier::new(ISS.into(), AUD.into(), remote(url)).unwrap_err();
            assert!(e.contains("loopback"), "{url}: {e}");
        }
        for url in [
            "http://127.0.0.1:8080/certs",
            "http://localhost/certs",
            "http://[::1]:9000/certs",
            "https://sso.example.test/certs",
        ] {
            assert!(
                Verifier::new(ISS.into(), AUD.into(), remote(url)).is_ok(),
                "{url}"
            );
        }
    }
}
