//! Per-object locks: one read-check-write sequence at a time per object (a device's key set,
//! a charge's refunds), held across awaits such as a call to the processor.
//!
//! Inside a node, 256 striped async mutexes, without a lock per object. With several nodes on
//! one database ([`Locks::shared`]), a holder also takes the object's lease in the store
//! (`lock:<id>`, [`lease`]) after its stripe, so a refund on one node and a cancel of the same
//! charge on another run one after the other, as two requests on one node do. The stripe keeps
//! a node's own requests from polling the store against each other; the lease is what other
//! nodes see. A lease is given up when the guard drops, and expires on its own if the node
//! dies, after the time to live the node was built with (longer than a processor call).
//!
//! Rule: never wait for a lock while holding another, except through [`Locks::lock_many`],
//! which takes each stripe once and in ascending order, and every lease at once. Two different
//! ids can share a stripe, so a nested `lock` can wait on itself.

use std::hash::BuildHasher;
use std::time::Duration;

use crate::domain::lease::{self, Held};
use crate::error::{ApiError, Code};
use crate::store::db::Db;

/// How long a holder waits for an object another node holds before answering 409.
const WAIT: Duration = Duration::from_secs(10);

/// Striped mutexes, and the store's leases when nodes share it.
#[derive(Debug)]
pub struct Locks {
    stripes: Vec<tokio::sync::Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
    shared: Option<Shared>,
}

/// What a lock needs from the store when nodes share it.
#[derive(Debug)]
struct Shared {
    db: Db,
    /// This node's start id: the lease holder.
    holder: String,
    /// Seconds a lease lives without release.
    ttl: i64,
}

impl Default for Locks {
    fn default() -> Self {
        Self {
            stripes: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            shared: None,
        }
    }
}

/// A held lock: its stripes, and its leases (given up on drop).
#[derive(Debug)]
pub struct Guard<'a> {
    _stripes: Vec<tokio::sync::MutexGuard<'a, ()>>,
    leases: Vec<Held>,
    db: Option<&'a Db>,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let (Some(db), false) = (self.db, self.leases.is_empty()) else {
            return;
        };
        let (db, leases) = (db.clone(), std::mem::take(&mut self.leases));
        // Given up in the background: the caller's answer does not wait for it, and a release
        // that fails leaves a lease that expires on its own.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = lease::release(&db, &leases).await {
                    tracing::warn!(error = %e, "object leases not released; they will expire");
                }
            });
        }
    }
}

impl Locks {
    /// Locks that also hold leases in the store shared by several nodes: `holder` is this
    /// node's start id, `ttl` how long a lease outlives a holder that died (seconds).
    pub fn shared(db: Db, holder: String, ttl: i64) -> Self {
        Self {
            shared: Some(Shared { db, holder, ttl }),
            ..Self::default()
        }
    }

    fn stripe(&self, id: &str) -> usize {
        usize::try_from(self.hasher.hash_one(id) % 256).unwrap_or_default()
    }

    /// Waits for the lock of `id`.
    ///
    /// # Errors
    /// 409 when another node holds it for longer than a few seconds; 503 when the store is
    /// down.
    pub async fn lock(&self, id: &str) -> Result<Guard<'_>, ApiError> {
        self.lock_many(&[id]).await
    }

    /// Waits for the locks of many ids: each stripe once and in ascending order, so two holders
    /// of several stripes cannot deadlock and ids sharing a stripe do not lock it twice; then
    /// every lease in one commit, all or none, so two nodes cannot deadlock either.
    ///
    /// # Errors
    /// As [`Locks::lock`].
    pub async fn lock_many<S: AsRef<str>>(&self, ids: &[S]) -> Result<Guard<'_>, ApiError> {
        let mut stripes: Vec<usize> = ids.iter().map(|id| self.stripe(id.as_ref())).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for n in stripes {
            if let Some(m) = self.stripes.get(n) {
                guards.push(m.lock().await);
            }
        }
        let mut guard = Guard {
            _stripes: guards,
            leases: Vec::new(),
            db: None,
        };
        let Some(shared) = &self.shared else {
            return Ok(guard);
        };
        let mut names: Vec<String> = ids
            .iter()
            .map(|id| format!("lock:{}", id.as_ref()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            let now = crate::wire::time::now();
            if let Some(held) =
                lease::acquire(&shared.db, &names, &shared.holder, now, shared.ttl).await?
            {
                guard.leases = held;
                guard.db = Some(&shared.db);
                return Ok(guard);
            }
            if started.elapsed() > WAIT {
                return Err(ApiError::new(
                    Code::Conflict,
                    "another request is changing this; try again",
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn many_ids_on_shared_stripes_do_not_wait_on_themselves() {
        let locks = Locks::default();
        // 600 ids over 256 stripes: many share one; repeats too.
        let ids: Vec<String> = (0..600).map(|i| format!("ch_{}", i % 500)).collect();
        let guard = tokio::time::timeout(Duration::from_secs(5), locks.lock_many(&ids))
            .await
            .expect("lock_many deadlocked")
            .unwrap();
        assert!(guard._stripes.len() <= 256);
        drop(guard);
        let _one = tokio::time::timeout(Duration::from_secs(5), locks.lock("ch_1"))
            .await
            .expect("stripe not released")
            .unwrap();
    }

    #[tokio::test]
    async fn two_nodes_on_one_store_take_turns() {
        let db = Db::new(std::sync::Arc::new(
            crate::store::SqliteStore::temporary().unwrap(),
        ));
        let node1 = Locks::shared(db.clone(), "boot-1".into(), 30);
        let node2 = Locks::shared(db.clone(), "boot-2".into(), 30);
        let held = node1.lock("ch_1").await.unwrap();
        // Node 2 waits while node 1 holds it; other objects are free.
        let other = node2.lock("ch_2").await.unwrap();
        drop(other);
        let waiting = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let _g = node2.lock("ch_1").await.unwrap();
            started.elapsed()
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "node 2 did not wait for node 1");
        drop(held);
        let waited = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("release not seen")
            .unwrap();
        assert!(waited >= Duration::from_millis(300));
    }
}
