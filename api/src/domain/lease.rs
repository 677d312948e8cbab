//! Named leases in the store: how several API nodes on one database take turns.
//!
//! A lease is a row `(name, holder, expires_at)`. It is taken when absent, expired, or already
//! the taker's, by a commit that expects the version just read, so of two nodes taking it at
//! once exactly one commits; it is renewed the same way and given up by deleting the row at
//! the version its holder wrote. A holder that dies simply stops renewing, and the lease is
//! free again when it expires: nothing waits on a node that is gone for longer than the
//! lease's time to live.
//!
//! Expiry is judged by the clock of the node that reads the row, so nodes' clocks are assumed
//! to agree to within a few seconds (NTP); the times to live are tens of seconds. A lease never
//! carries correctness alone: what it guards is also written with optimistic preconditions
//! (a charge's version, a pending status), so two holders at once — a clock far off, a holder
//! paused past its expiry — cost duplicated work, not wrong data.

use serde::{Deserialize, Serialize};

use crate::error::{ApiError, Code};
use crate::store::db::{self, Db, Record};

/// A lease as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lease {
    /// What it is for: `recovery`, `lock:<charge id>`...
    pub name: String,
    /// Who holds it: a node's start id, with a suffix for each holding inside the node.
    pub holder: String,
    /// Unix seconds after which anyone may take it.
    pub expires_at: i64,
}

impl Record for Lease {
    const KIND: &'static str = "lease";
    fn id(&self) -> &str {
        &self.name
    }
    fn indexes(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// A background task's claim to lead a kind of work (`housekeeping`, `webhooks`) among the
/// nodes of one store: the lease `name`, taken or renewed at each [`Leadership::renew`].
///
/// A store of one node is never shared, so its only node leads without touching the store. A
/// store that cannot be read counts as not leading: the work waits for the store, and the
/// other nodes cannot tell this one apart from a dead one anyway.
#[derive(Debug)]
pub struct Leadership {
    name: &'static str,
    ttl: i64,
    leading: bool,
}

impl Leadership {
    /// Not leading until the first [`Leadership::renew`]; the lease lasts `ttl` seconds
    /// unless renewed.
    #[must_use]
    pub const fn new(name: &'static str, ttl: i64) -> Self {
        Self {
            name,
            ttl,
            leading: false,
        }
    }

    /// Takes or renews the lease for `holder`: whether this node leads now. A change is
    /// logged, so operators see which node took over and when.
    pub async fn renew(&mut self, db: &Db, holder: &str, now: i64) -> bool {
        let lead = !db.store().shared()
            || match acquire(db, &[self.name], holder, now, self.ttl).await {
                Ok(held) => held.is_some(),
                Err(e) => {
                    tracing::warn!(error = %e, "{} lease not read", self.name);
                    false
                }
            };
        if lead != self.leading {
            tracing::info!(leading = lead, "{} lease", self.name);
            self.leading = lead;
        }
        lead
    }

    /// What the last [`Leadership::renew`] found.
    #[must_use]
    pub const fn leading(&self) -> bool {
        self.leading
    }
}

/// A lease this node holds: what releasing it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The lease's name.
    pub name: String,
    /// The version this node wrote.
    pub version: u64,
}

/// Takes (or renews) the leases `names` for `holder` until `now + ttl`, all or none.
///
/// Returns `None` when any of them is held by someone else and not expired (nothing is
/// written then), or when another node changed one of them between the read and the commit.
///
/// # Errors
/// 503 when the store is down.
pub async fn acquire(
    db: &Db,
    names: &[&str],
    holder: &str,
    now: i64,
    ttl: i64,
) -> Result<Option<Vec<Held>>, ApiError> {
    let mut writes = Vec::with_capacity(names.len() * 2);
    let mut held = Vec::with_capacity(names.len());
    for name in names {
        let version = match db.get_versioned::<Lease>(name).await? {
            Some((lease, _)) if lease.holder != holder && lease.expires_at > now => {
                return Ok(None);
            }
            Some((_, version)) => {
                writes.push(db::expect::<Lease>(name, version));
                version + 1
            }
            None => {
                writes.push(db::absent::<Lease>(name));
                1
            }
        };
        writes.push(db::put(&Lease {
            name: (*name).to_owned(),
            holder: holder.to_owned(),
            expires_at: now + ttl,
        })?);
        held.push(Held {
            name: (*name).to_owned(),
            version,
        });
    }
    match db.commit(writes, lost()).await {
        Ok(()) => Ok(Some(held)),
        Err(e) if e.code() == Code::Conflict => Ok(None),
        Err(e) => Err(e),
    }
}

/// Gives up leases this node holds. One taken over by another node after it expired (its
/// version moved) is left to its new holder.
///
/// # Errors
/// 503 when the store is down (the leases then expire on their own).
pub async fn release(db: &Db, held: &[Held]) -> Result<(), ApiError> {
    for h in held {
        // One at a time: a lease taken over by another node must not keep the others alive.
        let writes = vec![
            db::expect::<Lease>(&h.name, h.version),
            db::delete::<Lease>(&h.name),
        ];
        match db.commit(writes, lost()).await {
            Ok(()) => {}
            Err(e) if e.code() == Code::Conflict => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn lost() -> ApiError {
    ApiError::new(Code::Conflict, "lease taken by another node")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::SqliteStore;

    #[tokio::test]
    async fn one_holder_at_a_time_until_release_or_expiry() {
        let db = Db::new(Arc::new(SqliteStore::temporary().unwrap()));
        let _first = acquire(&db, &["recovery"], "node-a", 100, 30)
            .await
            .unwrap()
            .expect("free lease not taken");
        // Held: another node is refused until it expires; the holder renews it.
        assert!(
            acquire(&db, &["recovery"], "node-b", 129, 30)
                .await
                .unwrap()
                .is_none()
        );
        let a = acquire(&db, &["recovery"], "node-a", 120, 30)
            .await
            .unwrap()
            .expect("holder could not renew");
        assert!(
            acquire(&db, &["recovery"], "node-b", 149, 30)
                .await
                .unwrap()
                .is_none()
        );
        // Expired: taken over; the old holder's release then leaves it alone.
        let b = acquire(&db, &["recovery"], "node-b", 151, 30)
            .await
            .unwrap()
            .expect("expired lease not taken over");
        release(&db, &a).await.unwrap();
        assert_eq!(
            db.get::<Lease>("recovery").await.unwrap().unwrap().holder,
            "node-b"
        );
        // Released: free at once.
        release(&db, &b).await.unwrap();
        assert!(db.get::<Lease>("recovery").await.unwrap().is_none());
        // All or none: one held lease keeps the others untaken.
        acquire(&db, &["lock:x"], "node-a", 200, 30)
            .await
            .unwrap()
            .unwrap();
        assert!(
            acquire(&db, &["lock:w", "lock:x"], "node-b", 200, 30)
                .await
                .unwrap()
                .is_none()
        );
        assert!(db.get::<Lease>("lock:w").await.unwrap().is_none());
    }
}
