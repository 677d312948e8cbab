//! Striped async locks: one read-check-write sequence at a time per object (a device's key
//! set, a charge's refunds), without a lock per object.
//!
//! Rule: never wait for a stripe while holding another, except through [`Locks::lock_many`],
//! which takes each stripe once and in ascending order. Two different ids can share a stripe,
//! so a nested `lock` can wait on itself.

use std::hash::{BuildHasher, Hash};

/// 256 mutexes; an object's id picks one.
#[derive(Debug)]
pub struct Locks {
    stripes: Vec<tokio::sync::Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Locks {
    fn default() -> Self {
        Self {
            stripes: (0..256).map(|_| tokio::sync::Mutex::new(())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl Locks {
    fn stripe(&self, id: &(impl Hash + ?Sized)) -> usize {
        usize::try_from(self.hasher.hash_one(id) % 256).unwrap_or_default()
    }

    /// Waits for the stripe of `id`.
    pub async fn lock(&self, id: &(impl Hash + ?Sized)) -> tokio::sync::MutexGuard<'_, ()> {
        match self.stripes.get(self.stripe(id)) {
            Some(m) => m.lock().await,
            None => unreachable_stripe(&self.stripes).await,
        }
    }

    /// Waits for the stripes of many ids, each once and in ascending order, so two holders of
    /// several stripes cannot deadlock and ids sharing a stripe do not lock it twice.
    pub async fn lock_many<I: Hash>(&self, ids: &[I]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = ids.iter().map(|id| self.stripe(id)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for n in stripes {
            if let Some(m) = self.stripes.get(n) {
                guards.push(m.lock().await);
            }
        }
        guards
    }
}

async fn unreachable_stripe(stripes: &[tokio::sync::Mutex<()>]) -> tokio::sync::MutexGuard<'_, ()> {
    // n < 256 = stripes.len(); the first stripe is a safe answer if that ever changed.
    match stripes.first() {
        Some(m) => m.lock().await,
        None => std::future::pending().await,
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
        let guards = tokio::time::timeout(std::time::Duration::from_secs(5), locks.lock_many(&ids))
            .await
            .expect("lock_many deadlocked");
        assert!(guards.len() <= 256);
        drop(guards);
        let _one = tokio::time::timeout(std::time::Duration::from_secs(5), locks.lock("ch_1"))
            .await
            .expect("stripe not released");
    }
}
