//! The key-service steps of the backoffice: registering a device (its identity key is made in
//! keyd), replacing its identity key, revoking its key sets; webhook endpoints' signing
//! secrets (made and used in keyd); and the peppered step of portal users' password
//! verifiers (the pepper stays in keyd). An identity or webhook secret passes through the API
//! once, on its way to the caller, in a buffer that is wiped afterwards.

use base64::Engine;
use keyd_proto::message::{
    DeviceCreate, IdentityKey, IdentityRotate, KeySetRevoke, PanFingerprint, PasswordMac,
    RequestFingerprint, WebhookSecretCreate, WebhookSign,
};
use keyd_proto::{Secret, Status};
use zeroize::Zeroizing;

use crate::error::{ApiError, Code};
use crate::keyd::Keyd;
use crate::keyd::KeydError;

/// A new identity key as shown to the caller once.
pub struct Identity {
    /// `idk-…`.
    pub key_id: String,
    /// Its check value (6 hex digits).
    pub kcv: String,
    secret: Zeroizing<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("key_id", &self.key_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Identity {
    fn from_keyd(k: &IdentityKey) -> Self {
        Self {
            key_id: k.key_id.clone(),
            kcv: hex::encode_upper(k.kcv),
            secret: Zeroizing::new(
                base64::engine::general_purpose::STANDARD.encode(k.secret.expose()),
            ),
        }
    }

    /// The secret, base64, for the one reply that shows it.
    pub fn secret(&self) -> &str {
        &self.secret
    }
}

fn keyd_error(e: KeydError, what: &str) -> ApiError {
    match e {
        KeydError::Refused(status) => ApiError::internal(&format!("keyd refused {what}: {status}")),
        KeydError::Unavailable => KeydError::unavailable(),
    }
}

/// Registers a device in keyd. An unknown zone is the caller's mistake (400 naming `zone`).
/// If keyd already knows the device (an earlier registration got as far as keyd and no
/// further), its identity key is replaced and any key sets revoked, so what the caller gets is
/// fresh and nothing from the half-done attempt stays usable.
///
/// # Errors
/// 400 for an unknown zone, 503 when keyd is down.
pub async fn register_device(
    keyd: &Keyd,
    device_id: &str,
    zone: &str,
) -> Result<Identity, ApiError> {
    let created = keyd
        .call(&DeviceCreate {
            device_id: device_id.into(),
            zone: zone.into(),
        })
        .await;
    match created {
        Ok(k) => Ok(Identity::from_keyd(&k)),
        Err(KeydError::Refused(Status::NOT_FOUND)) => Err(ApiError::field(
            "zone",
            "no such key-injection zone in the key service",
        )),
        Err(KeydError::Refused(Status::CONFLICT)) => {
            tracing::warn!(
                device_id,
                "device already known to keyd; issuing a fresh identity"
            );
            revoke_key_sets(keyd, device_id).await?;
            rotate_identity(keyd, device_id).await
        }
        Err(e) => Err(keyd_error(e, "device registration")),
    }
}

/// The keyed fingerprint of a PAN typed in the backoffice (the same value keyd gives for
/// terminal card data), as hex.
///
/// # Errors
/// 400 naming `card.number` if keyd refuses it, 429/`4290` when keyd's ration of PAN
/// fingerprints is spent (typed-in cards faster than any desk types them), 503 when keyd is
/// down.
pub async fn pan_fingerprint(keyd: &Keyd, pan: &str) -> Result<String, ApiError> {
    keyd.call(&PanFingerprint {
        pan: Secret::new(pan.as_bytes()),
    })
    .await
    .map(|f| hex::encode_upper(f.value))
    .map_err(|e| match e {
        KeydError::Refused(Status::POLICY) => ApiError::new(
            Code::RateLimited,
            "too many typed-in cards at once; try again shortly",
        ),
        KeydError::Refused(_) => ApiError::field("card.number", "not a card number"),
        KeydError::Unavailable => KeydError::unavailable(),
    })
}

/// keyd's keyed fingerprint of a request that may hold card data (see
/// [`RequestFingerprint`]): upper-case hex.
///
/// # Errors
/// 503 when keyd is down.
pub async fn request_fingerprint(keyd: &Keyd, data: &[u8]) -> Result<String, ApiError> {
    keyd.call(&RequestFingerprint {
        data: Secret::new(data),
    })
    .await
    .map(|f| hex::encode_upper(f.value))
    .map_err(|e| keyd_error(e, "request fingerprint"))
}

/// Replaces a device's identity key in keyd.
///
/// # Errors
/// 503 when keyd is down.
pub async fn rotate_identity(keyd: &Keyd, device_id: &str) -> Result<Identity, ApiError> {
    keyd.call(&IdentityRotate {
        device_id: device_id.into(),
    })
    .await
    .map(|k| Identity::from_keyd(&k))
    .map_err(|e| keyd_error(e, "identity rotation"))
}

/// Revokes every key set of a device (a device keyd never issued keys for has none to revoke).
///
/// # Errors
/// 503 when keyd is down.
pub async fn revoke_key_sets(keyd: &Keyd, device_id: &str) -> Result<(), ApiError> {
    match keyd
        .call(&KeySetRevoke {
            device_id: device_id.into(),
        })
        .await
    {
        Ok(_) | Err(KeydError::Refused(Status::NOT_FOUND)) => Ok(()),
        Err(e) => Err(keyd_error(e, "key-set revocation")),
    }
}

/// Makes a webhook endpoint's signing secret in keyd: the salt that names it (the API keeps it,
/// to have keyd sign with the secret later) and the secret itself (`whsec_…`), which keyd gives
/// out this once, for the one reply that shows it to the merchant.
///
/// # Errors
/// 500 if keyd refuses the endpoint id, 503 when keyd is down.
pub async fn webhook_secret(
    keyd: &Keyd,
    endpoint_id: &str,
) -> Result<([u8; 16], Zeroizing<String>), ApiError> {
    let made = keyd
        .call(&WebhookSecretCreate {
            endpoint_id: endpoint_id.into(),
        })
        .await
        .map_err(|e| keyd_error(e, "a webhook secret"))?;
    let secret = std::str::from_utf8(made.secret.expose())
        .map_err(|_| ApiError::internal(&"keyd's webhook secret is not text"))?;
    Ok((made.salt, Zeroizing::new(secret.to_owned())))
}

/// Signs a webhook delivery (`message` is `<t>.<raw body>`) with an endpoint's secrets named
/// by their salts (1 to 4: the current one, and any older one still honoured after a
/// rotation): one HMAC-SHA-256 per salt, in the same order, for the `v1=` entries of the
/// `Viopay-Signature` header.
///
/// # Errors
/// 500 if keyd refuses the request (an empty or too long message, no salt or more than
/// four, a malformed endpoint id) or answers another number of MACs, 503 when keyd is down.
pub async fn webhook_sign(
    keyd: &Keyd,
    endpoint_id: &str,
    salts: &[[u8; 16]],
    message: &[u8],
) -> Result<Vec<[u8; 32]>, ApiError> {
    let signed = keyd
        .call(&WebhookSign {
            endpoint_id: endpoint_id.into(),
            salts: salts.to_vec(),
            message: message.to_vec(),
        })
        .await
        .map_err(|e| keyd_error(e, "webhook signing"))?;
    if signed.macs.len() != salts.len() {
        return Err(ApiError::internal(
            &"keyd answered another number of webhook signatures than salts",
        ));
    }
    Ok(signed.macs)
}

/// A portal user's password verifier: `HMAC-SHA-256(keyd's password key, … user id …
/// PBKDF2-HMAC-SHA-256(password, salt, n))`, what the API stores for the password and compares
/// at sign-in. Without keyd it cannot be tested against guesses, but it still stands for the
/// password: it is wiped when dropped, never printed, and not `Clone`, so each copy is one the
/// code chose to make.
pub struct PasswordVerifier(Zeroizing<[u8; 32]>);

impl PasswordVerifier {
    /// Whether `other` (a stored verifier) is this one, in time that does not depend on where
    /// they differ, so a sign-in's timing tells nothing about the stored value. A length other
    /// than 32 is simply unequal.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.as_slice().ct_eq(other))
    }

    /// The verifier's bytes, to store them.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for PasswordVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordVerifier(<redacted>)")
    }
}

/// The verifier of a portal user's password, from its PBKDF2-HMAC-SHA-256 stretch (32 bytes,
/// computed by the API under the user's salt and iteration count): keyd adds the pepper, a
/// key that never leaves it, bound to the user id so a verifier does not fit another user.
///
/// # Errors
/// 500 if keyd refuses the request (a malformed user id: 1-64 characters of
/// `[0-9A-Za-z_-]`) or answers a verifier that is not 32 bytes, 503 when keyd is down.
pub async fn password_mac(
    keyd: &Keyd,
    user_id: &str,
    stretched: &[u8; 32],
) -> Result<PasswordVerifier, ApiError> {
    let answer = keyd
        .call(&PasswordMac {
            context: user_id.into(),
            stretched: Secret::new(stretched),
        })
        .await
        .map_err(|e| keyd_error(e, "a password verifier"))?;
    let mac = answer.mac.expose();
    if mac.len() != 32 {
        return Err(ApiError::internal(
            &"keyd answered a password verifier that is not 32 bytes",
        ));
    }
    // Copied straight into the wiped buffer, with no copy on the way.
    let mut verifier = PasswordVerifier(Zeroizing::new([0; 32]));
    verifier.0.copy_from_slice(mac);
    Ok(verifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifier_compares_in_constant_time_and_never_prints() {
        let mut v = PasswordVerifier(Zeroizing::new([0; 32]));
        v.0.copy_from_slice(&[0xAB; 32]);
        assert!(v.ct_eq(&[0xAB; 32]));
        let mut other = [0xAB; 32];
        other[31] = 0xAC;
        assert!(!v.ct_eq(&other));
        assert!(!v.ct_eq(&[0xAB; 31]), "another length is unequal");
        assert!(!v.ct_eq(&[]));
        assert_eq!(v.as_bytes(), &[0xAB; 32]);
        assert_eq!(format!("{v:?}"), "PasswordVerifier(<redacted>)");
    }
}
