//! Replay protection: a nonce is good once per scope (device or terminal) for ten minutes.
//! Used nonces are kept in memory for the fast check and written to the store with the
//! request's own write, so a restart does not reopen the window; at start the last ten
//! minutes are loaded back.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::domain::model::Nonce;
use crate::error::{ApiError, Code};
use crate::store::Write;
use crate::store::db::{self, Db};

/// How long a nonce stays used.
pub const NONCE_TTL: i64 = 600;

/// The used nonces.
#[derive(Debug, Default)]
pub struct Replay {
    seen: Mutex<HashMap<String, i64>>,
}

/// `^[A-Za-z0-9]{12,64}$`.
pub fn valid_nonce(n: &str) -> bool {
    (12..=64).contains(&n.len()) && n.bytes().all(|c| c.is_ascii_alphanumeric())
}

impl Replay {
    /// Loads the nonces used in the last ten minutes.
    ///
    /// # Errors
    /// 503 if the store cannot be read.
    pub async fn load(db: &Db, now: i64) -> Result<Self, ApiError> {
        // Ids start with the time of use: walk back from the newest until ten minutes ago.
        let mut seen = HashMap::new();
        db.walk_back::<Nonce>(|n| {
            if now - n.at > NONCE_TTL {
                return Ok(false);
            }
            let key = n.id.split_once(':').map(|(_, k)| k).unwrap_or_default();
            seen.insert(key.to_owned(), n.at);
            Ok(true)
        })
        .await?;
        let replay = Self {
            seen: Mutex::new(seen),
        };
        Ok(replay)
    }

    /// Whether a nonce is still unused (no side effect: a request that fails an earlier
    /// check must not burn it).
    pub fn unused(&self, scope: &str, nonce: &str, now: i64) -> bool {
        let key = format!("{scope}:{nonce}");
        self.seen
            .lock()
            .map(|seen| seen.get(&key).is_none_or(|at| now - at > NONCE_TTL))
            .unwrap_or(false)
    }

    /// Marks a nonce used: 401/`4013` if it already was (a concurrent request won). Returns the
    /// write that makes it durable, to be committed with the request's own writes.
    ///
    /// # Errors
    /// 4013.
    pub fn take(&self, scope: &str, nonce: &str, now: i64) -> Result<Write, ApiError> {
        let key = format!("{scope}:{nonce}");
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| ApiError::internal(&"nonce map"))?;
        if seen.get(&key).is_some_and(|at| now - at <= NONCE_TTL) {
            return Err(ApiError::new(Code::NonceReused, "nonce already used"));
        }
        seen.insert(key.clone(), now);
        // Stored under a time-first id: appended, not scattered (see `ids::time_ordered`).
        db::put(&Nonce {
            id: format!("{now:012}:{key}"),
            at: now,
        })
    }

    /// Forgets what is older than ten minutes, in memory and in the store (every minute).
    pub async fn sweep(&self, db: &Db, now: i64) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.retain(|_, at| now - *at <= NONCE_TTL);
        }
        let cutoff = format!("{:012}", now - NONCE_TTL - 1);
        loop {
            let Ok(old) = db.scan_back::<Nonce>(Some(&cutoff), 1000).await else {
                return;
            };
            if old.is_empty() {
                return;
            }
            let writes = old.iter().map(|n| db::delete::<Nonce>(&n.id)).collect();
            if db
                .commit(writes, ApiError::new(Code::Conflict, "sweep"))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_good_once_per_scope() {
        let r = Replay::default();
        assert!(r.unused("T1", "abcdefghijkl", 1000));
        r.take("T1", "abcdefghijkl", 1000).unwrap();
        assert!(!r.unused("T1", "abcdefghijkl", 1300));
        assert_eq!(
            r.take("T1", "abcdefghijkl", 1300).unwrap_err().code(),
            Code::NonceReused
        );
        assert!(r.unused("T2", "abcdefghijkl", 1300));
        assert!(r.unused("T1", "abcdefghijkl", 1601));
        assert!(
            valid_nonce("a1b2c3d4e5f6") && !valid_nonce("short") && !valid_nonce("a-b-c-d-e-f-g")
        );
    }
}
