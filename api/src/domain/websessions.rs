//! What a browser holds a random value for: the sign-in provider's session, a one-time
//! authorization code, a sign-in in progress, a portal session.
//!
//! The value itself (32 random bytes, base64url) lives only in the browser (a cookie, or a
//! redirect's query for a code); the store keys the record by its SHA-256. So a copy of the
//! database, a log of its queries or a backup holds nothing a browser could present, and every
//! lookup is an exact match on a hash, which takes the same time whatever prefix matched.
//! Each record is bound to its purpose: a code is not a cookie, and a cookie of one kind opens
//! nothing of another.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{ApiError, Code};
use crate::store::db::{self, Db, Record};

/// What a record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// The sign-in provider's own session: signed in at the provider, not yet at any client.
    Idp,
    /// An authorization code, exchanged once for tokens.
    Code,
    /// A portal sign-in under way: what the callback must find again (state, PKCE verifier).
    Login,
    /// A portal session: whose it is and the token claims it was opened with.
    Portal,
}

/// A stored web session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebSession {
    /// Hex SHA-256 of the value the browser holds.
    pub id: String,
    /// What it opens.
    pub purpose: Purpose,
    /// Whose it is (empty for a sign-in under way).
    pub sub: String,
    /// Unix seconds; after this it opens nothing.
    pub expires_at: i64,
    /// By purpose (see the module that makes each).
    pub data: Map<String, Value>,
}

impl Record for WebSession {
    const KIND: &'static str = "web_session";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        vec![(
            "web_session_hour".into(),
            (self.expires_at / 3600).to_string(),
        )]
    }
}

/// Deletes what expired in the whole hours `from_hour` up to the last one that has passed
/// (housekeeping, hourly buckets); the first hour not yet done, so a failed pass resumes
/// there. A first pass looks back 30 days, for a store that was left alone that long.
pub async fn sweep(db: &Db, from_hour: i64, now: i64) -> i64 {
    let last = now / 3600 - 1;
    db.delete_buckets::<WebSession>("web_session_hour", from_hour.max(last - 30 * 24), last)
        .await
}

/// The key a presented value is stored under.
pub fn key_of(value: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        value.as_bytes(),
    ))
}

/// A fresh value to hand to the browser.
///
/// # Errors
/// 500 when the random source fails.
pub fn fresh_value() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| ApiError::internal(&"random source failed"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether a presented value could be one of ours (43 base64url characters): anything else
/// is turned away without a store read.
fn plausible(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Stores a new web session; the value to hand out.
///
/// # Errors
/// 503 when the store is down.
pub async fn open(
    db: &Db,
    purpose: Purpose,
    sub: &str,
    expires_at: i64,
    data: Map<String, Value>,
) -> Result<String, ApiError> {
    let value = fresh_value()?;
    let session = WebSession {
        id: key_of(&value),
        purpose,
        sub: sub.to_owned(),
        expires_at,
        data,
    };
    db.commit(
        vec![db::absent::<WebSession>(&session.id), db::put(&session)?],
        ApiError::new(Code::Conflict, "web session"),
    )
    .await?;
    Ok(value)
}

/// The live session of `purpose` a browser presented, if any.
///
/// # Errors
/// 503 when the store is down.
pub async fn find(
    db: &Db,
    purpose: Purpose,
    presented: &str,
    now: i64,
) -> Result<Option<WebSession>, ApiError> {
    Ok(lookup(db, presented)
        .await?
        .map(|(_, session, _)| session)
        .filter(|s| s.serves(purpose, now)))
}

/// Like [`find`], and deletes it: of two requests presenting the same value (a code replayed,
/// a callback loaded twice) exactly one gets it.
///
/// # Errors
/// 503 when the store is down.
pub async fn take(
    db: &Db,
    purpose: Purpose,
    presented: &str,
    now: i64,
) -> Result<Option<WebSession>, ApiError> {
    let Some((id, session, version)) = lookup(db, presented).await? else {
        return Ok(None);
    };
    let taken = db
        .commit(
            vec![
                db::expect::<WebSession>(&id, version),
                db::delete::<WebSession>(&id),
            ],
            ApiError::new(Code::Conflict, "taken"),
        )
        .await;
    match taken {
        // Spent even when it serves nothing here: a value presented for the wrong purpose
        // or too late is not offered a second try.
        Ok(()) => Ok(Some(session).filter(|s| s.serves(purpose, now))),
        Err(e) if e.code() == Code::Conflict => Ok(None),
        Err(e) => Err(e),
    }
}

/// What the store keeps for a value a browser presented: its id, the record and its
/// version. Nothing for a value that cannot be one of ours (no lookup then).
async fn lookup(db: &Db, presented: &str) -> Result<Option<(String, WebSession, u64)>, ApiError> {
    if !plausible(presented) {
        return Ok(None);
    }
    let id = key_of(presented);
    Ok(db
        .get_versioned::<WebSession>(&id)
        .await?
        .map(|(session, version)| (id, session, version)))
}

impl WebSession {
    /// Whether this value is good for `purpose` at `now`.
    fn serves(&self, purpose: Purpose, now: i64) -> bool {
        self.purpose == purpose && self.expires_at > now
    }
}

/// Ends a session a browser presented (sign-out); nothing when there is none.
///
/// # Errors
/// 503 when the store is down.
pub async fn close(db: &Db, presented: &str) -> Result<(), ApiError> {
    if !plausible(presented) {
        return Ok(());
    }
    db.commit(
        vec![db::delete::<WebSession>(&key_of(presented))],
        ApiError::new(Code::Conflict, "web session"),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn expired_sessions_are_swept_by_the_hour_and_live_ones_kept() {
        let db = Db::new(std::sync::Arc::new(
            crate::store::SqliteStore::temporary().unwrap(),
        ));
        let now = 100 * 3600 + 30;
        let old = open(&db, Purpose::Portal, "u", now - 7200, Map::new())
            .await
            .unwrap();
        let live = open(&db, Purpose::Portal, "u", now + 60, Map::new())
            .await
            .unwrap();
        assert_eq!(sweep(&db, 0, now).await, 100);
        assert!(db.get::<WebSession>(&key_of(&old)).await.unwrap().is_none());
        assert!(
            find(&db, Purpose::Portal, &live, now)
                .await
                .unwrap()
                .is_some()
        );
        // A value of one purpose opens nothing of another; a taken one is gone.
        assert!(find(&db, Purpose::Idp, &live, now).await.unwrap().is_none());
        assert!(
            take(&db, Purpose::Portal, &live, now)
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            take(&db, Purpose::Portal, &live, now)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn values_are_43_base64url_characters_and_keys_their_sha256() {
        let v = fresh_value().unwrap();
        assert!(plausible(&v), "{v}");
        assert_ne!(v, fresh_value().unwrap());
        assert_eq!(key_of(&v).len(), 64);
        assert!(!plausible("short"));
        assert!(!plausible(&format!("{}=", &v[..42])));
    }
}
