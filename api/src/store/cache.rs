//! Reads the SQLite store answers from memory: the few records every signed POS request looks
//! up (the terminal's device, its merchant, the merchant's fee template) and the terminal id's
//! owner.
//!
//! The cache can never answer with data older than what the caller could have read from the
//! file, because the only process writing the file is this one (see
//! `sqlite::lock_exclusively`) and its writer thread empties the touched entries after each
//! COMMIT and before it answers the writers. A read that raced a commit could still bring back
//! the value from before it; so every fill carries the *epoch* it read under, and a fill whose
//! epoch an invalidation has moved on since is dropped. PostgreSQL stores, shared by several
//! nodes, have no such single writer and use no cache.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::{Stored, Write};

/// Record kinds kept: read on every signed POS call, written rarely.
const KINDS: &[&str] = &["device", "merchant", "fee_template"];

/// Unique namespaces whose owners are kept.
const OWNERS: &[&str] = &["terminal_id"];

/// Entries kept at most in each of the two maps. A device or merchant held as a JSON map is a
/// few kilobytes, so the records' map stays near ten megabytes at most; beyond it an arbitrary
/// entry makes room, which costs a miss later, never a wrong answer.
const CAPACITY: usize = 4096;

/// A position in the cache's history: fills must happen in the epoch their read began in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Epoch(u64);

#[derive(Debug, Default)]
struct Inner {
    epoch: u64,
    records: HashMap<(&'static str, String), Stored>,
    owners: HashMap<(&'static str, String), String>,
}

/// Makes room for one more entry in `map` by dropping an arbitrary one when it is full.
fn make_room<K: Clone + Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.len() >= CAPACITY
        && let Some(any) = map.keys().next().cloned()
    {
        map.remove(&any);
    }
}

/// The store's cache of hot records (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct ReadCache {
    inner: Mutex<Inner>,
}

fn kept(list: &[&'static str], name: &str) -> Option<&'static str> {
    list.iter().copied().find(|k| *k == name)
}

impl ReadCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The epoch a read starts in, or `None` when the kind is not kept.
    pub(super) fn record_epoch(&self, kind: &str) -> Option<Epoch> {
        kept(KINDS, kind).map(|_| Epoch(self.lock().epoch))
    }

    /// The epoch an owner lookup starts in, or `None` when the namespace is not kept.
    pub(super) fn owner_epoch(&self, ns: &str) -> Option<Epoch> {
        kept(OWNERS, ns).map(|_| Epoch(self.lock().epoch))
    }

    /// A kept record, if present.
    pub(super) fn record(&self, kind: &str, id: &str) -> Option<Stored> {
        let kind = kept(KINDS, kind)?;
        self.lock().records.get(&(kind, id.to_owned())).cloned()
    }

    /// A kept owner, if present.
    pub(super) fn owner(&self, ns: &str, value: &str) -> Option<String> {
        let ns = kept(OWNERS, ns)?;
        self.lock().owners.get(&(ns, value.to_owned())).cloned()
    }

    /// Keeps a record read in `epoch`, unless a commit has invalidated since.
    pub(super) fn fill_record(&self, epoch: Epoch, kind: &str, id: &str, stored: &Stored) {
        let Some(kind) = kept(KINDS, kind) else {
            return;
        };
        let mut inner = self.lock();
        if inner.epoch == epoch.0 {
            make_room(&mut inner.records);
            inner.records.insert((kind, id.to_owned()), stored.clone());
        }
    }

    /// Keeps an owner read in `epoch`, unless a commit has invalidated since.
    pub(super) fn fill_owner(&self, epoch: Epoch, ns: &str, value: &str, owner: &str) {
        let Some(ns) = kept(OWNERS, ns) else {
            return;
        };
        let mut inner = self.lock();
        if inner.epoch == epoch.0 {
            make_room(&mut inner.owners);
            inner
                .owners
                .insert((ns, value.to_owned()), owner.to_owned());
        }
    }

    /// Forgets what `writes` may have changed; called by the writer after they committed (or
    /// failed), before anyone is told. Writes touching nothing kept leave the epoch alone, so
    /// the charges' own commits do not stop the fills of the reads beside them.
    pub(super) fn invalidate(&self, writes: &[Write]) {
        let touched = |w: &Write| match w {
            Write::Put { kind, .. } | Write::Delete { kind, .. } => kept(KINDS, kind).is_some(),
            Write::Claim { ns, .. } | Write::Release { ns, .. } => kept(OWNERS, ns).is_some(),
            Write::Expect { .. } => false,
        };
        if !writes.iter().any(touched) {
            return;
        }
        let mut inner = self.lock();
        inner.epoch += 1;
        for w in writes {
            match w {
                Write::Put { kind, id, .. } | Write::Delete { kind, id } => {
                    if let Some(kind) = kept(KINDS, kind) {
                        inner.records.remove(&(kind, id.clone()));
                    }
                }
                Write::Claim { ns, value, .. } | Write::Release { ns, value } => {
                    if let Some(ns) = kept(OWNERS, ns) {
                        inner.owners.remove(&(ns, value.clone()));
                    }
                }
                Write::Expect { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use serde_json::{Map, json};

    use super::*;

    fn stored(name: &str) -> Stored {
        let mut body = Map::new();
        body.insert("name".into(), json!(name));
        Stored {
            seq: 1,
            version: 1,
            body,
        }
    }

    fn put(kind: &str, id: &str) -> Write {
        Write::Put {
            kind: kind.into(),
            id: id.into(),
            body: Map::new(),
            indexes: Vec::new(),
        }
    }

    #[test]
    fn a_fill_from_before_a_commit_is_dropped() {
        let cache = ReadCache::default();
        let before = cache.record_epoch("device").unwrap();
        // The device is written while the read is under way.
        cache.invalidate(&[put("device", "d1")]);
        cache.fill_record(before, "device", "d1", &stored("old"));
        assert_eq!(cache.record("device", "d1"), None);
        // A read begun after the commit fills.
        let after = cache.record_epoch("device").unwrap();
        cache.fill_record(after, "device", "d1", &stored("new"));
        assert_eq!(cache.record("device", "d1"), Some(stored("new")));
        // The next write of it empties it again; others stay.
        cache.fill_record(after, "merchant", "m1", &stored("m"));
        cache.invalidate(&[put("device", "d1")]);
        assert_eq!(cache.record("device", "d1"), None);
        assert_eq!(cache.record("merchant", "m1"), Some(stored("m")));
    }

    #[test]
    fn only_hot_kinds_and_owners_are_kept_and_other_writes_do_not_disturb() {
        let cache = ReadCache::default();
        assert_eq!(cache.record_epoch("charge"), None);
        assert_eq!(cache.owner_epoch("device_id"), None);
        let epoch = cache.owner_epoch("terminal_id").unwrap();
        cache.invalidate(&[put("charge", "c1"), put("nonce", "n1")]);
        cache.fill_owner(epoch, "terminal_id", "T1", "d1");
        assert_eq!(cache.owner("terminal_id", "T1").as_deref(), Some("d1"));
        cache.invalidate(&[Write::Release {
            ns: "terminal_id".into(),
            value: "T1".into(),
        }]);
        assert_eq!(cache.owner("terminal_id", "T1"), None);
    }

    #[test]
    fn a_full_cache_drops_one_entry_for_each_new_one() {
        let cache = ReadCache::default();
        let epoch = cache.record_epoch("device").unwrap();
        for i in 0..CAPACITY + 10 {
            cache.fill_record(epoch, "device", &format!("d{i}"), &stored("x"));
        }
        let inner = cache.lock();
        assert_eq!(inner.records.len(), CAPACITY);
        // The newest is always kept.
        let newest = format!("d{}", CAPACITY + 9);
        assert!(inner.records.contains_key(&("device", newest)));
    }
}
