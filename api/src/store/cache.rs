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
use std::sync::{Arc, Mutex, PoisonError};

use super::{Stored, Write};

/// Record kinds kept: read on every signed POS call, written rarely.
const KINDS: &[&str] = &["device", "merchant", "fee_template"];

/// Unique namespaces whose owners are kept.
const OWNERS: &[&str] = &["terminal_id"];

/// Entries kept at most for each kind or namespace (each has a map of its own, so a burst of
/// one kind cannot push out the others). A device or merchant held as a JSON map is a few
/// kilobytes, so each kind's map stays near ten megabytes and the three together near thirty
/// at most; beyond that an arbitrary entry makes room, which costs a miss later, never a
/// wrong answer.
const CAPACITY: usize = 4096;

/// A position in the cache's history: fills must happen in the epoch their read began in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Epoch(u64);

/// What the cache says to a read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Lookup<T> {
    /// The answer.
    Hit(T),
    /// Not there: read the file, then fill under this epoch.
    Miss(Epoch),
    /// Not a kind or namespace the cache keeps.
    NotKept,
}

/// Kept entries: by kind (or namespace), then by id (or value), so that a lookup borrows its
/// key instead of building one.
type Entries<V> = HashMap<&'static str, HashMap<String, V>>;

/// Records are shared with the readers that get them ([`super::Store::get`]): a hit is a
/// reference count, not a copy of the record's map.
#[derive(Debug, Default)]
struct Inner {
    epoch: u64,
    records: Entries<Arc<Stored>>,
    owners: Entries<String>,
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

    /// A record, or the epoch to fill it under once read.
    pub(super) fn record(&self, kind: &str, id: &str) -> Lookup<Arc<Stored>> {
        Self::look(kept(KINDS, kind), id, &self.lock(), |i| &i.records)
    }

    /// A unique value's owner, or the epoch to fill it under once read.
    pub(super) fn owner(&self, ns: &str, value: &str) -> Lookup<String> {
        Self::look(kept(OWNERS, ns), value, &self.lock(), |i| &i.owners)
    }

    fn look<V: Clone>(
        name: Option<&'static str>,
        key: &str,
        inner: &Inner,
        map: fn(&Inner) -> &Entries<V>,
    ) -> Lookup<V> {
        let Some(name) = name else {
            return Lookup::NotKept;
        };
        match map(inner).get(name).and_then(|m| m.get(key)) {
            Some(v) => Lookup::Hit(v.clone()),
            None => Lookup::Miss(Epoch(inner.epoch)),
        }
    }

    /// Keeps a record read in `epoch`, unless a commit has invalidated since.
    pub(super) fn fill_record(&self, epoch: Epoch, kind: &str, id: &str, stored: Arc<Stored>) {
        if let Some(kind) = kept(KINDS, kind) {
            self.fill(epoch, (kind, id), stored, |i| &mut i.records);
        }
    }

    /// Keeps an owner read in `epoch`, unless a commit has invalidated since.
    pub(super) fn fill_owner(&self, epoch: Epoch, ns: &str, value: &str, owner: &str) {
        if let Some(ns) = kept(OWNERS, ns) {
            self.fill(epoch, (ns, value), owner.to_owned(), |i| &mut i.owners);
        }
    }

    /// Inserts under the lock if the epoch has not moved, dropping an arbitrary entry when the
    /// map is full.
    fn fill<V>(
        &self,
        epoch: Epoch,
        (name, key): (&'static str, &str),
        value: V,
        map: fn(&mut Inner) -> &mut Entries<V>,
    ) {
        let mut inner = self.lock();
        if inner.epoch != epoch.0 {
            return;
        }
        let entries = map(&mut inner).entry(name).or_default();
        if entries.len() >= CAPACITY
            && !entries.contains_key(key)
            && let Some(any) = entries.keys().next().cloned()
        {
            entries.remove(&any);
        }
        entries.insert(key.to_owned(), value);
    }

    /// Forgets what `writes` may have changed; called by the writer after they committed (or
    /// failed), before anyone is told. Writes touching nothing kept leave the epoch alone, so
    /// the charges' own commits do not stop the fills of the reads beside them.
    pub(super) fn invalidate(&self, writes: &[Write]) {
        let mut inner = self.lock();
        let mut touched = false;
        for w in writes {
            match w {
                Write::Put { kind, id, .. } | Write::Delete { kind, id } => {
                    if let Some(kind) = kept(KINDS, kind) {
                        if let Some(m) = inner.records.get_mut(kind) {
                            m.remove(id);
                        }
                        touched = true;
                    }
                }
                Write::Claim { ns, value, .. } | Write::Release { ns, value } => {
                    if let Some(ns) = kept(OWNERS, ns) {
                        if let Some(m) = inner.owners.get_mut(ns) {
                            m.remove(value);
                        }
                        touched = true;
                    }
                }
                Write::Expect { .. } => {}
            }
        }
        if touched {
            inner.epoch += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use serde_json::{Map, json};

    use super::*;

    fn stored(name: &str) -> Arc<Stored> {
        let mut body = Map::new();
        body.insert("name".into(), json!(name));
        Arc::new(Stored {
            seq: 1,
            version: 1,
            body,
        })
    }

    /// The epoch of a read that missed.
    fn missed<T: std::fmt::Debug>(lookup: Lookup<T>) -> Epoch {
        match lookup {
            Lookup::Miss(epoch) => epoch,
            other => panic!("not a miss: {other:?}"),
        }
    }

    fn put(kind: &str, id: &str) -> Write {
        Write::Put {
            kind: kind.into(),
            id: id.into(),
            fields: Vec::new(),
            indexes: Vec::new(),
        }
    }

    #[test]
    fn a_fill_from_before_a_commit_is_dropped() {
        let cache = ReadCache::default();
        let before = missed(cache.record("device", "d1"));
        // The device is written while the read is under way.
        cache.invalidate(&[put("device", "d1")]);
        cache.fill_record(before, "device", "d1", stored("old"));
        // A read begun after the commit fills.
        let after = missed(cache.record("device", "d1"));
        cache.fill_record(after, "device", "d1", stored("new"));
        assert_eq!(cache.record("device", "d1"), Lookup::Hit(stored("new")));
        // The next write of it empties it again; others stay.
        cache.fill_record(after, "merchant", "m1", stored("m"));
        cache.invalidate(&[put("device", "d1")]);
        missed(cache.record("device", "d1"));
        assert_eq!(cache.record("merchant", "m1"), Lookup::Hit(stored("m")));
    }

    #[test]
    fn only_hot_kinds_and_owners_are_kept_and_other_writes_do_not_disturb() {
        let cache = ReadCache::default();
        assert_eq!(cache.record("charge", "c1"), Lookup::NotKept);
        assert_eq!(cache.owner("device_id", "SN-1"), Lookup::NotKept);
        let epoch = missed(cache.owner("terminal_id", "T1"));
        cache.invalidate(&[put("charge", "c1"), put("nonce", "n1")]);
        cache.fill_owner(epoch, "terminal_id", "T1", "d1");
        assert_eq!(
            cache.owner("terminal_id", "T1"),
            Lookup::Hit("d1".to_owned())
        );
        cache.invalidate(&[Write::Release {
            ns: "terminal_id".into(),
            value: "T1".into(),
        }]);
        missed(cache.owner("terminal_id", "T1"));
    }

    #[test]
    fn a_full_cache_drops_one_entry_for_each_new_one() {
        let cache = ReadCache::default();
        let epoch = missed(cache.record("device", "d0"));
        for i in 0..CAPACITY + 10 {
            cache.fill_record(epoch, "device", &format!("d{i}"), stored("x"));
        }
        // Another kind has a map of its own.
        cache.fill_record(epoch, "merchant", "m1", stored("m"));
        let inner = cache.lock();
        let devices = &inner.records["device"];
        assert_eq!(devices.len(), CAPACITY);
        // The newest is always kept.
        assert!(devices.contains_key(&format!("d{}", CAPACITY + 9)));
        assert_eq!(inner.records["merchant"].len(), 1);
    }
}
