//! `Idempotency-Key` (contract section 1): the first final answer to a request is kept for a
//! day and replayed to the same request; a different request under the key is refused, and so
//! is the same request while the first is still running.
//!
//! The record of the answer goes into the same commit as the write it answers (a charge, a
//! refund), so a crash cannot leave a charge without its answer or an answer without its charge.
//!
//! "Still running" is known in memory on one node. When several nodes share the store
//! ([`Idempotency::shared`]), a request also reserves its key in the store before it runs: a
//! row with status 0 and the request's hash, written only if the key has no row (or an
//! expired one), so of two retries sent to two nodes at once one runs and the other is told
//! it is in progress. The reservation is replaced by the kept answer in the answer's commit,
//! or deleted when the request ends without one; a node that dies leaves it to expire after
//! the time to live it was given (longer than any request runs), after which a retry runs
//! anew, as after a restart on one node.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ApiError, Code};
use crate::store::Write;
use crate::store::db::{self, Db, Record};

/// How long answers are kept.
pub const KEEP: i64 = 86_400;

/// The status of a reservation: a request running on some node, not an answer.
const RUNNING: u16 = 0;

/// A kept answer, or a reservation (status [`RUNNING`]). Id: hex SHA-256 of scope, method,
/// path and key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kept {
    /// Record id.
    pub id: String,
    /// Hex SHA-256 of the request (body, or decrypted plaintext for POS calls).
    pub request: String,
    /// HTTP status.
    pub status: u16,
    /// Success body, or the error's `{code, message, details}`.
    pub body: Value,
    /// Unix seconds.
    pub created_at: i64,
}

impl Record for Kept {
    const KIND: &'static str = "idempotency";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        by_hour(self.created_at)
    }
}

/// A kept answer's list entry: the hour it was kept in (the sweep's order).
fn by_hour(created_at: i64) -> Vec<(String, String)> {
    vec![("idempotency_hour".into(), (created_at / 3600).to_string())]
}

/// Requests in progress, by record id, with their request hashes.
#[derive(Debug, Default)]
pub struct Idempotency {
    running: Mutex<HashMap<String, String>>,
    /// With several nodes on the store: how long a reservation holds (seconds).
    shared: Option<i64>,
}

/// What to do with a request that carries a key.
#[derive(Debug)]
pub enum Begin<'a> {
    /// Run it; the guard marks it running until dropped.
    Run(Running<'a>),
    /// Answer this again.
    Replay(Kept),
}

/// A request in progress under a key.
#[derive(Debug)]
pub struct Running<'a> {
    table: &'a Idempotency,
    id: String,
    request: String,
    /// The reservation in a shared store, and its version: deleted on drop unless an answer
    /// was kept over it.
    reserved: Option<(Db, u64)>,
    /// An answer's write was handed out ([`Running::keep`]).
    kept: AtomicBool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.table.running.lock() {
            running.remove(&self.id);
        }
        let Some((db, version)) = self.reserved.take() else {
            return;
        };
        if self.kept.load(Ordering::Relaxed) {
            return;
        }
        let id = std::mem::take(&mut self.id);
        // In the background, and only the reservation this request wrote (its version): a
        // failure leaves it to expire.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let writes = vec![db::expect::<Kept>(&id, version), db::delete::<Kept>(&id)];
                let _ = db
                    .commit(writes, ApiError::new(Code::Conflict, "reservation"))
                    .await;
            });
        }
    }
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    hex::encode_upper(ctx.finish().as_ref())
}

/// `Idempotency-Key`: 1-255 printable ASCII characters.
pub fn valid_key(k: &str) -> bool {
    (1..=255).contains(&k.len()) && k.bytes().all(|c| (0x20..0x7f).contains(&c))
}

/// The request's `Idempotency-Key`, if it sent one.
///
/// A key that is present but unreadable (a byte outside printable ASCII, `é` or `\xff`) is an
/// error, never "no key": a retry that silently ran without its key would charge twice.
///
/// # Errors
/// 400/`4001` for a malformed key, or for more than one.
pub fn key_header(headers: &hyper::HeaderMap) -> Result<Option<&str>, ApiError> {
    let malformed = || {
        ApiError::new(
            Code::HeaderInvalid,
            "Idempotency-Key must be 1-255 printable ASCII characters",
        )
    };
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::new(
            Code::HeaderInvalid,
            "give one Idempotency-Key, not several",
        ));
    }
    match value.to_str() {
        Ok(k) if valid_key(k) => Ok(Some(k)),
        _ => Err(malformed()),
    }
}

impl Idempotency {
    /// The table for several nodes on one store: requests also reserve their keys in the
    /// store, for `ttl` seconds at most.
    pub fn shared(ttl: i64) -> Self {
        Self {
            shared: Some(ttl),
            ..Self::default()
        }
    }

    /// Looks a keyed request up.
    #[allow(
        clippy::too_many_arguments,
        reason = "the key's parts are separate on purpose: scope, method, path, key"
    )]
    ///
    /// # Errors
    /// 409/`4093` while the same request runs; 422/`4220` for a different request.
    pub async fn begin<'a>(
        &'a self,
        db: &Db,
        scope: &str,
        method: &str,
        path: &str,
        key: &str,
        request: &[u8],
        now: i64,
    ) -> Result<Begin<'a>, ApiError> {
        let id = sha256_hex(&[
            scope.as_bytes(),
            method.as_bytes(),
            path.as_bytes(),
            key.as_bytes(),
        ]);
        let hash = sha256_hex(&[request]);
        let mismatch = || {
            ApiError::new(
                Code::IdempotencyMismatch,
                "Idempotency-Key reused with a different request",
            )
        };
        // Reserve the key first, then look for a kept answer: a request that finished just
        // before the reservation has written its answer by then (it keeps the answer before
        // it lets go of the key), so the read below sees it. Reading first and reserving after
        // would let such a request slip between the two and run a second time.
        {
            let mut running = self
                .running
                .lock()
                .map_err(|_| ApiError::internal(&"idempotency table"))?;
            if let Some(other) = running.get(&id) {
                return Err(if *other == hash {
                    ApiError::new(Code::InProgress, "the same request is still in progress")
                } else {
                    mismatch()
                });
            }
            running.insert(id.clone(), hash.clone());
        }
        let mut reserved = Running {
            table: self,
            id,
            request: hash,
            reserved: None,
            kept: AtomicBool::new(false),
        };
        // Twice at most: a reservation another node wrote between our read and our commit is
        // read back and answered like one found at once.
        for _ in 0..2 {
            let found = db.get_versioned::<Kept>(&reserved.id).await?;
            let expect = match found {
                Some((kept, _)) if kept.status != RUNNING && now - kept.created_at < KEEP => {
                    return if kept.request == reserved.request {
                        Ok(Begin::Replay(kept))
                    } else {
                        Err(mismatch())
                    };
                }
                Some((kept, _))
                    if kept.status == RUNNING
                        && self.shared.is_some_and(|ttl| now - kept.created_at < ttl) =>
                {
                    return Err(if kept.request == reserved.request {
                        ApiError::new(Code::InProgress, "the same request is still in progress")
                    } else {
                        mismatch()
                    });
                }
                Some((_, version)) => (db::expect::<Kept>(&reserved.id, version), version + 1),
                None => (db::absent::<Kept>(&reserved.id), 1),
            };
            if self.shared.is_none() {
                return Ok(Begin::Run(reserved));
            }
            let row = Kept {
                id: reserved.id.clone(),
                request: reserved.request.clone(),
                status: RUNNING,
                body: Value::Null,
                created_at: now,
            };
            let lost = ApiError::new(Code::Conflict, "reserved meanwhile");
            match db.commit(vec![expect.0, db::put(&row)?], lost).await {
                Ok(()) => {
                    reserved.reserved = Some((db.clone(), expect.1));
                    return Ok(Begin::Run(reserved));
                }
                Err(e) if e.code() == Code::Conflict => {}
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::new(
            Code::InProgress,
            "the same request is still in progress",
        ))
    }
}

impl Running<'_> {
    /// The write that keeps a final answer (success body or error).
    ///
    /// # Errors
    /// 500 if it cannot be serialised.
    pub fn keep<B: Serialize + ?Sized>(
        &self,
        status: u16,
        body: &B,
        now: i64,
    ) -> Result<Write, ApiError> {
        /// A [`Kept`] as it is written: the answer serialised into it straight from its type.
        #[derive(Serialize)]
        struct View<'a, B: ?Sized> {
            id: &'a str,
            request: &'a str,
            status: u16,
            body: &'a B,
            created_at: i64,
        }
        self.kept.store(true, Ordering::Relaxed);
        let view = View {
            id: &self.id,
            request: &self.request,
            status,
            body,
            created_at: now,
        };
        db::put_view::<Kept, _>(&self.id, by_hour(now), &view)
    }

    /// The write that keeps an error answer.
    ///
    /// # Errors
    /// 500 if it cannot be serialised.
    pub fn keep_error(&self, e: &ApiError, now: i64) -> Result<Write, ApiError> {
        self.keep(e.code().status(), &e.stored(), now)
    }
}

/// Whether an answer is final in the contract's sense (kept): a 2xx, a business 4xx, a 502.
/// Authentication, header and envelope errors are not: a retry runs anew.
pub fn is_final(e: &ApiError) -> bool {
    !matches!(
        e.code(),
        Code::HeaderInvalid
            | Code::UriTooLong
            | Code::UnsupportedMediaType
            | Code::HeadersTooLarge
            | Code::BodyUnreadable
            | Code::AppVersion
            | Code::EnvelopeInvalid
            | Code::KcvMismatch
            | Code::Unauthenticated
            | Code::SignatureInvalid
            | Code::TimestampWindow
            | Code::NonceReused
            | Code::AttestationInvalid
            | Code::NoSession
            | Code::ClientCredentials
            | Code::ClientLocked
            | Code::InProgress
            | Code::IdempotencyMismatch
            | Code::RateLimited
            | Code::Internal
            | Code::Unavailable
    )
}

/// Deletes answers older than a day (hour buckets), from `from_hour` on; returns the next
/// bucket to look at.
pub async fn sweep(db: &Db, from_hour: i64, now: i64) -> i64 {
    let last = (now - KEEP) / 3600 - 1;
    db.delete_buckets::<Kept>("idempotency_hour", from_hour.max(last - 48), last)
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn same_request_replays_other_request_conflicts() {
        let db = Db::new(Arc::new(SqliteStore::temporary().unwrap()));
        let t = Idempotency::default();
        let Begin::Run(first) = t
            .begin(&db, "T1", "POST", "/pos/charge", "k1", b"a", 100)
            .await
            .unwrap()
        else {
            panic!("fresh key replayed")
        };
        // While it runs: same request 4093, another 4220.
        let e = t
            .begin(&db, "T1", "POST", "/pos/charge", "k1", b"a", 100)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InProgress);
        let e = t
            .begin(&db, "T1", "POST", "/pos/charge", "k1", b"b", 100)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::IdempotencyMismatch);
        // Another scope or path is another key.
        assert!(matches!(
            t.begin(&db, "T2", "POST", "/pos/charge", "k1", b"a", 100)
                .await
                .unwrap(),
            Begin::Run(_)
        ));
        let write = first
            .keep(200, &serde_json::json!({"charge_id": "ch_1"}), 100)
            .unwrap();
        db.commit(vec![write], ApiError::new(Code::Conflict, "x"))
            .await
            .unwrap();
        drop(first);
        match t
            .begin(&db, "T1", "POST", "/pos/charge", "k1", b"a", 200)
            .await
            .unwrap()
        {
            Begin::Replay(k) => assert_eq!(
                (k.status, k.body["charge_id"].as_str()),
                (200, Some("ch_1"))
            ),
            Begin::Run(_) => panic!("kept answer not replayed"),
        }
        let e = t
            .begin(&db, "T1", "POST", "/pos/charge", "k1", b"b", 200)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::IdempotencyMismatch);
        // A day later the key is free again.
        assert!(matches!(
            t.begin(&db, "T1", "POST", "/pos/charge", "k1", b"b", 100 + KEEP)
                .await
                .unwrap(),
            Begin::Run(_)
        ));
        assert!(valid_key("order-42") && !valid_key("") && !valid_key("a\u{7f}"));
    }

    #[test]
    fn a_key_that_is_there_is_never_ignored() {
        use hyper::header::HeaderValue;
        let with = |values: &[&[u8]]| {
            let mut h = hyper::HeaderMap::new();
            for v in values {
                h.append("idempotency-key", HeaderValue::from_bytes(v).unwrap());
            }
            h
        };
        assert_eq!(key_header(&with(&[])).unwrap(), None);
        assert_eq!(key_header(&with(&[b"order-42"])).unwrap(), Some("order-42"));
        for bad in [&b"caf\xc3\xa9"[..], b"\xff", b"a\tb", &[b'k'; 256]] {
            let e = key_header(&with(&[bad])).unwrap_err();
            assert_eq!(e.code(), Code::HeaderInvalid, "{bad:?}");
        }
        let e = key_header(&with(&[b"a", b"b"])).unwrap_err();
        assert_eq!(e.code(), Code::HeaderInvalid);
    }
}
