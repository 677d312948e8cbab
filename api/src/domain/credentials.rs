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

/// How repeated failures lock whoever holds a secret: after `after` failures in a row, for
/// `secs` seconds. Portal passwords and API clients' secrets each have one.
#[derive(Debug, Clone, Copy)]
pub struct Lockout {
    /// Failures in a row that lock.
    pub after: u32,
    /// How long the lock lasts (seconds).
    pub secs: i64,
}

impl Lockout {
    /// Counts one checked attempt on the holder's counters: a success clears the count; the
    /// `after`-th failure in a row locks until `now + secs` and starts the count again.
    pub fn count(self, good: bool, failures: &mut u32, locked_until: &mut i64, now: i64) {
        if good {
            *failures = 0;
            return;
        }
        *failures = failures.saturating_add(1);
        if *failures >= self.after {
            *failures = 0;
            *locked_until = now + self.secs;
        }
    }
}

/// Portal sign-ins: five failed in a row lock the credential for 15 minutes.
pub const SIGN_IN_LOCKOUT: Lockout = Lockout {
    after: 5,
    secs: 15 * 60,
};
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

/// Checks a sign-in, counting failures and locking as [`SIGN_IN_LOCKOUT`] says.
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
            SIGN_IN_LOCKOUT.count(good, &mut c.failures, &mut c.locked_until, now);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_after_th_failure_in_a_row_locks_and_a_success_clears_the_count() {
        let rule = Lockout { after: 3, secs: 60 };
        let (mut failures, mut until) = (0, 0);
        for _ in 0..2 {
            rule.count(false, &mut failures, &mut until, 100);
        }
        assert_eq!((failures, until), (2, 0));
        rule.count(true, &mut failures, &mut until, 100);
        assert_eq!(
            (failures, until),
            (0, 0),
            "a success starts the count again"
        );
        for _ in 0..3 {
            rule.count(false, &mut failures, &mut until, 200);
        }
        assert_eq!(
            (failures, until),
            (0, 260),
            "locked, and counting from zero"
        );
    }
}
