//! Replay protection: a nonce is good once per scope (device or terminal) for ten minutes.
//! Used nonces are kept in memory for the fast check and written to the store with the
//! request's own first write, so a restart does not reopen the window; at start the last ten
//! minutes are loaded back.
//!
//! The memory of one node does not see the nonces another node took. What does is the store:
//! each used nonce claims `{scope}:{nonce}` in the namespace `nonce` (a unique column), in
//! the same commit as the request's first write, so of two nodes taking the same nonce exactly
//! one commits and the other's request fails whole with 4013 before it has done anything a
//! commit did not record (for a charge: before the processor hears of it). The claim lasts
//! until the sweep deletes the row, a minute or so after the ten minutes: a nonce reused just
//! after its window may still be refused, never one reused inside it accepted. On SQLite one
//! process owns the file, so its window is the whole truth and the store skips the claim
//! (no unique index to keep: an insert at a random place per signed request).
//!
//! The window holds ten minutes of traffic (six million nonces at 10,000 charges a second), so
//! what it keeps per nonce is fixed and small: a 128-bit keyed digest of scope and nonce (two
//! SipHash-1-3 values under keys drawn at start, which no client knows and so cannot aim a
//! collision at) and the second it was used, 24 bytes an entry instead of a string of 30 to 80
//! bytes and its allocation.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;

use crate::domain::model::Nonce;
use crate::error::{ApiError, Code};
use crate::store::Write;
use crate::store::db::{self, Db};

/// How long a nonce stays used.
pub const NONCE_TTL: i64 = 600;

/// A used nonce in the window: the keyed digest of `scope:nonce`.
type Slot = (u64, u64);

/// The writes that make a nonce used in the store: the claim of its key, and its row.
pub type NonceWrites = [Write; 2];

/// The namespace of used nonces in the store (a conflict in it is 4013).
pub const NAMESPACE: &str = db::NONCES;

/// The used nonces.
#[derive(Debug, Default)]
pub struct Replay {
    seen: Mutex<HashMap<Slot, i64>>,
    /// The two keys of the digest (random per process: the window is rebuilt from the store
    /// at start, so digests never outlive their keys).
    keys: (std::hash::RandomState, std::hash::RandomState),
}

impl Replay {
    /// The slot of `parts` read as one string (`scope`, `:`, `nonce`; or the stored form).
    fn slot(&self, parts: &[&[u8]]) -> Slot {
        let digest = |state: &std::hash::RandomState| {
            let mut h = state.build_hasher();
            for part in parts {
                h.write(part);
            }
            h.finish()
        };
        (digest(&self.keys.0), digest(&self.keys.1))
    }

    fn slot_of(&self, scope: &str, nonce: &str) -> Slot {
        self.slot(&[scope.as_bytes(), b":", nonce.as_bytes()])
    }
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
        let replay = Self::default();
        let mut seen = HashMap::new();
        db.walk_back::<Nonce>(|n| {
            if now - n.at > NONCE_TTL {
                return Ok(false);
            }
            seen.insert(replay.slot(&[n.key.as_bytes()]), n.at);
            Ok(true)
        })
        .await?;
        *replay
            .seen
            .lock()
            .map_err(|_| ApiError::internal(&"nonce map"))? = seen;
        Ok(replay)
    }

    /// Whether a nonce is still unused (no side effect: a request that fails an earlier
    /// check must not burn it).
    pub fn unused(&self, scope: &str, nonce: &str, now: i64) -> bool {
        let slot = self.slot_of(scope, nonce);
        self.seen
            .lock()
            .map(|seen| seen.get(&slot).is_none_or(|at| now - at > NONCE_TTL))
            .unwrap_or(false)
    }

    /// Marks a nonce used: 401/`4013` if it already was (a concurrent request won). Returns the
    /// writes that make it durable and unique in the store, to be committed with the request's
    /// own first writes (their commit fails with 4013 if another node took it first).
    ///
    /// # Errors
    /// 4013; 500 if no random id can be drawn.
    pub fn take(&self, scope: &str, nonce: &str, now: i64) -> Result<NonceWrites, ApiError> {
        let slot = self.slot_of(scope, nonce);
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| ApiError::internal(&"nonce map"))?;
        if seen.get(&slot).is_some_and(|at| now - at <= NONCE_TTL) {
            return Err(ApiError::new(Code::NonceReused, "nonce already used"));
        }
        seen.insert(slot, now);
        drop(seen);
        let key = format!("{scope}:{nonce}");
        // Stored under a time-first id, so that it is appended, not scattered (see
        // `ids::time_ordered`): the second, then the microsecond within it. A second holds
        // thousands of nonces under load; ordered only by the second, each landed on a page of
        // its own in the id index, a quarter of the pages a group commit wrote (BENCHMARKS.md).
        let micros = micros_within(now);
        let id = format!("{now:012}:{micros:06}{}", crate::wire::ids::id_alnum(10)?);
        Ok([
            db::claim(NAMESPACE, &key, &id),
            db::put(&Nonce { id, at: now, key })?,
        ])
    }

    /// Forgets in memory what is older than ten minutes (every node, every minute).
    pub fn forget(&self, now: i64) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.retain(|_, at| now - *at <= NONCE_TTL);
        }
    }

    /// Deletes from the store what is older than ten minutes (one node, every minute).
    pub async fn sweep(&self, db: &Db, now: i64) {
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

/// The microsecond within second `now` at which a nonce is stored: the clock's, while it is
/// still in that second. A request whose second is over by now (a slow keyd call across the
/// boundary) sorts after every nonce of its second, and a clock behind `now` before them, so
/// ids stay in order however the two readings of the clock fall.
fn micros_within(now: i64) -> u32 {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    match i64::try_from(clock.as_secs()).map_or(std::cmp::Ordering::Greater, |s| s.cmp(&now)) {
        std::cmp::Ordering::Equal => clock.subsec_micros(),
        std::cmp::Ordering::Greater => 999_999,
        std::cmp::Ordering::Less => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_ids_sort_by_second_then_microsecond() {
        assert_eq!(
            micros_within(1000),
            999_999,
            "a second long over sorts last"
        );
        assert_eq!(
            micros_within(i64::MAX),
            0,
            "a second still ahead sorts first"
        );
        let now = crate::wire::time::now();
        assert!(micros_within(now) <= 999_999);
        // Ids taken one after the other in one second come out in order.
        let r = Replay::default();
        let ids: Vec<String> = (0..50)
            .filter_map(|i| {
                let [_, put] = r.take("T1", &format!("nonce-{i:04}-abcdef"), now).ok()?;
                match put {
                    Write::Put { id, .. } => Some(id),
                    _ => None,
                }
            })
            .collect();
        assert_eq!(ids.len(), 50);
        assert!(
            ids.iter()
                .all(|id| id.len() == 29 && id.starts_with(&format!("{now:012}:")))
        );
        // Time parts never go back (the random tails of one microsecond may come in any
        // order); if the clock leaves `now`'s second during the loop, the rest sort last.
        let times: Vec<&str> = ids.iter().filter_map(|id| id.get(..19)).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    }

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
        // Scope and nonce are one string to the digest, as they are in the stored id: the
        // stored form finds the same slot.
        assert_eq!(
            r.slot_of("T1", "abcdefghijkl"),
            r.slot(&[b"T1:abcdefghijkl"])
        );
        assert_ne!(
            r.slot_of("T1", "abcdefghijkl"),
            r.slot_of("T1a", "bcdefghijkl")
        );
        assert!(
            valid_nonce("a1b2c3d4e5f6") && !valid_nonce("short") && !valid_nonce("a-b-c-d-e-f-g")
        );
    }
    #[tokio::test]
    async fn a_restart_reloads_the_window_from_the_store() {
        let db = Db::new(std::sync::Arc::new(
            crate::store::SqliteStore::temporary().unwrap(),
        ));
        let before = Replay::default();
        let writes = before.take("TID-000001", "nonce0000001", 1000).unwrap();
        db.commit(writes.into(), ApiError::new(Code::Conflict, "x"))
            .await
            .unwrap();
        // Another process (new digest keys) finds it used; an old one has left the window.
        let after = Replay::load(&db, 1200).await.unwrap();
        assert!(!after.unused("TID-000001", "nonce0000001", 1200));
        assert_eq!(
            after
                .take("TID-000001", "nonce0000001", 1200)
                .unwrap_err()
                .code(),
            Code::NonceReused
        );
        assert!(after.unused("TID-000002", "nonce0000001", 1200));
        let much_later = Replay::load(&db, 1000 + NONCE_TTL + 1).await.unwrap();
        assert!(much_later.unused("TID-000001", "nonce0000001", 1000 + NONCE_TTL + 1));
    }
}
