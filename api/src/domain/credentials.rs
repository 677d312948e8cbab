//! Platform users' passwords, for the embedded sign-in (the portal's identity provider).
//!
//! Kept the way keyd keeps its officers' credentials: the API stretches the password with
//! PBKDF2-HMAC-SHA-256 under a random salt (CPU work, no key involved), then keyd MACs the
//! result with a key only keyd holds (`PasswordMac`). The store holds the salt, the iteration
//! count and that MAC: a stolen copy cannot be tried offline without keyd, and keyd never sees
//! a password.
//!
//! Sign-in is by e-mail address, unique among users with a password (the `login` claim), and
//! locks after repeated failures so that guessing through the login page is slow too.

use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, Code};
use crate::keyd::Keyd;
use crate::store::Write;
use crate::store::db::{self, Db, Record};

/// Failed sign-ins in a row that lock a credential.
pub const LOCK_AFTER: u32 = 5;
/// How long such a lock lasts (seconds).
pub const LOCK_SECS: i64 = 15 * 60;
/// Password length bounds, in characters. Long passphrases are welcome; the upper bound only
/// keeps one request's stretching bounded.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 12..=128;

/// A user's password verifier as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credential {
    /// The user it belongs to (the record id).
    pub user_id: String,
    /// The e-mail address signed in with, lower case; held as the `login` claim.
    pub login: String,
    /// Hex of the 16-byte PBKDF2 salt.
    pub salt: String,
    /// PBKDF2 iterations it was made with (a change of the configured count applies to
    /// passwords set afterwards).
    pub iterations: u32,
    /// Hex of keyd's MAC over the stretched password.
    pub verifier: String,
    /// Failed sign-ins since the last success.
    pub failures: u32,
    /// Unix seconds until which sign-in is refused.
    pub locked_until: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

impl Record for Credential {
    const KIND: &'static str = "credential";
    fn id(&self) -> &str {
        &self.user_id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// The claim namespace of sign-in names.
pub const LOGIN: &str = "login";

/// What a sign-in name looks like in the claim: trimmed, lower case.
pub fn login_name(email: &str) -> String {
    email.trim().to_ascii_lowercase()
}

/// PBKDF2-HMAC-SHA-256 of the password, on a blocking thread (hundreds of milliseconds at
/// production counts: it must not hold up the runtime's workers).
async fn stretch(password: &str, salt: [u8; 16], iterations: u32) -> Result<[u8; 32], ApiError> {
    let password = zeroize::Zeroizing::new(password.as_bytes().to_vec());
    let rounds =
        NonZeroU32::new(iterations).ok_or_else(|| ApiError::internal(&"zero PBKDF2 iterations"))?;
    tokio::task::spawn_blocking(move || {
        let mut out = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            rounds,
            &salt,
            &password,
            &mut out,
        );
        out
    })
    .await
    .map_err(|e| ApiError::internal(&e))
}

/// The writes that give `user_id` the password (replacing any earlier one, and lifting a
/// lock): the credential and, when the sign-in name is new to it, the `login` claim. A name
/// another user signs in with is a conflict at commit.
///
/// # Errors
/// 503 when keyd is unreachable; 500 when the random source fails.
pub async fn set(
    keyd: &Keyd,
    previous: Option<&Credential>,
    user_id: &str,
    email: &str,
    password: &str,
    iterations: u32,
    now: i64,
) -> Result<Vec<Write>, ApiError> {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| ApiError::internal(&"random source failed"))?;
    let mut stretched = zeroize::Zeroizing::new(stretch(password, salt, iterations).await?);
    let verifier = crate::keyd::ops::password_mac(keyd, user_id, &stretched).await?;
    zeroize::Zeroize::zeroize(&mut *stretched);
    let login = login_name(email);
    let credential = Credential {
        user_id: user_id.to_owned(),
        login: login.clone(),
        salt: hex::encode(salt),
        iterations,
        verifier: hex::encode(verifier.as_bytes()),
        failures: 0,
        locked_until: 0,
        updated_at: now,
    };
    let mut writes = Vec::new();
    match previous {
        Some(p) if p.login == login => {}
        Some(p) => {
            writes.push(db::release(LOGIN, &p.login));
            writes.push(db::claim(LOGIN, &login, user_id));
        }
        None => writes.push(db::claim(LOGIN, &login, user_id)),
    }
    writes.push(db::put(&credential)?);
    Ok(writes)
}

/// The writes that remove a user's password (with the user, or when it is taken away).
pub fn remove(credential: &Credential) -> Vec<Write> {
    vec![
        db::release(LOGIN, &credential.login),
        db::delete::<Credential>(&credential.user_id),
    ]
}

/// How a sign-in went.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The password is the user's: their id.
    Accepted(String),
    /// Unknown name or wrong password: the same answer for both.
    Refused,
    /// Too many failures: refused without a look at the password until the lock ends.
    Locked,
}

/// Checks a sign-in, counting failures and locking after [`LOCK_AFTER`] in a row.
///
/// An unknown name costs the same stretching as a known one, so the time taken does not tell
/// which names exist.
///
/// # Errors
/// 503 when the store or keyd is unreachable.
pub async fn verify(
    db: &Db,
    keyd: &Keyd,
    email: &str,
    password: &str,
    iterations: u32,
    now: i64,
) -> Result<Verdict, ApiError> {
    let found = match db.owner(LOGIN, &login_name(email)).await? {
        Some(user_id) => db.get::<Credential>(&user_id).await?,
        None => None,
    };
    let Some(credential) = found else {
        stretch(password, [0; 16], iterations).await?;
        return Ok(Verdict::Refused);
    };
    if credential.locked_until > now {
        return Ok(Verdict::Locked);
    }
    let salt: [u8; 16] = hex::decode(&credential.salt)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| ApiError::internal(&"stored salt"))?;
    let stretched = zeroize::Zeroizing::new(stretch(password, salt, credential.iterations).await?);
    let mac = crate::keyd::ops::password_mac(keyd, &credential.user_id, &stretched).await?;
    let want = hex::decode(&credential.verifier).unwrap_or_default();
    let good = mac.ct_eq(&want);
    if good && credential.failures == 0 {
        return Ok(Verdict::Accepted(credential.user_id));
    }
    let updated = db
        .update::<Credential>(&credential.user_id, |c| {
            if good {
                c.failures = 0;
            } else {
                c.failures = c.failures.saturating_add(1);
                if c.failures >= LOCK_AFTER {
                    c.failures = 0;
                    c.locked_until = now + LOCK_SECS;
                }
            }
            Ok(Vec::new())
        })
        .await;
    match updated {
        Ok(_) if good => Ok(Verdict::Accepted(credential.user_id)),
        Ok(c) if c.locked_until > now => Ok(Verdict::Locked),
        Ok(_) => Ok(Verdict::Refused),
        // The password was removed meanwhile.
        Err(e) if e.code() == Code::NotFound => Ok(Verdict::Refused),
        Err(e) => Err(e),
    }
}
