//! What an LMK rotation keeps in the store: the LMKs and their states, the blocks sealed under
//! them (paged, and re-sealed by compare-and-swap), and the secrets keyd used to derive from
//! the first LMK, sealed so they outlive it.
//!
//! A store that never saw a rotation has no LMK rows: its blocks are all under the LMK `init`
//! made (the original one; its blocks carry no `KP`). A rotation's blocks name their LMK by
//! check value in the TR-31 `KP` optional block (X9.143: check value of the KBPK), under the
//! block's MAC, so each block says which LMK opens it and a half-done rewrap needs no other
//! bookkeeping.

use rusqlite::{OptionalExtension, params};

use super::{MemoryStore, SqliteStore};
use crate::Error;

/// Where an LMK is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LmkState {
    /// Seals new blocks; every block is (or, during a rewrap, is becoming) under it.
    Current,
    /// Formed on at least one node (a rotation's ceremony), not used yet: the other nodes
    /// form it from the same components meanwhile.
    Pending,
    /// The rewrap has begun: new blocks are sealed under it and old ones move to it.
    Next,
    /// Replaced: no block is under it, it stays in the tokens until `destroy_after` (Unix
    /// seconds) so a store backup from before the rotation can still be opened.
    Retired {
        /// The end of the restore window.
        destroy_after: u64,
    },
    /// Gone from the tokens.
    Destroyed,
}

impl LmkState {
    /// Name in the store and in listings.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Pending => "pending",
            Self::Next => "next",
            Self::Retired { .. } => "retired",
            Self::Destroyed => "destroyed",
        }
    }

    fn from_row(name: &str, destroy_after: Option<i64>) -> Option<Self> {
        Some(match name {
            "current" => Self::Current,
            "pending" => Self::Pending,
            "next" => Self::Next,
            "retired" => Self::Retired {
                destroy_after: destroy_after.and_then(|v| u64::try_from(v).ok())?,
            },
            "destroyed" => Self::Destroyed,
            _ => return None,
        })
    }

    pub(super) const fn destroy_after_secs(self) -> Option<u64> {
        match self {
            Self::Retired { destroy_after } => Some(destroy_after),
            _ => None,
        }
    }
}

/// One LMK as the store knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LmkRecord {
    /// Its check value (AES-CMAC of a zero block, first three bytes), which is also what
    /// blocks sealed under it carry in `KP`.
    pub kcv: [u8; 3],
    /// The LMK `init` made: its blocks carry no `KP`.
    pub original: bool,
    /// Where it is in its life.
    pub state: LmkState,
    /// When it last changed state (Unix seconds).
    pub changed_at: u64,
}

/// A change of one LMK's state, applied only if the LMK is in state `from` (`None`: the LMK
/// must not be in the store yet).
#[derive(Debug, Clone, Copy)]
pub struct LmkMove {
    /// The LMK.
    pub kcv: [u8; 3],
    /// The original LMK (recorded when its row is made).
    pub original: bool,
    /// The state it must be in.
    pub from: Option<&'static str>,
    /// The state it goes to.
    pub to: LmkState,
}

/// A table whose rows hold blocks sealed under the LMK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealed {
    /// Device keys.
    Keys,
    /// Partners' keys.
    Imported,
    /// Zones' ZMKs.
    Zones,
    /// The secrets derived from the original LMK (see [`LmkStore::lmk_secret`]).
    Secrets,
    /// Zones' old ZMKs while a ZMK rotation is under way.
    RetiringZmks,
}

impl Sealed {
    /// Every table, in the order a rewrap visits them.
    pub const ALL: [Self; 5] = [
        Self::Secrets,
        Self::Zones,
        Self::RetiringZmks,
        Self::Imported,
        Self::Keys,
    ];

    /// Table and id column.
    pub(super) const fn table(self) -> (&'static str, &'static str) {
        match self {
            Self::Keys => ("keys", "key_id"),
            Self::Imported => ("imported_keys", "key_id"),
            Self::Zones => ("zones", "zone"),
            Self::Secrets => ("lmk_secrets", "name"),
            Self::RetiringZmks => ("zone_retiring", "zone"),
        }
    }

    /// For messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Keys => "device keys",
            Self::Imported => "imported keys",
            Self::Zones => "zones",
            Self::Secrets => "LMK secrets",
            Self::RetiringZmks => "retiring ZMKs",
        }
    }
}

/// A block to replace: (id, the block it must still hold, the new block).
pub type Reseal = (String, String, String);

/// The store's part of an LMK rotation (every [`super::KeyStore`] has it).
pub trait LmkStore {
    /// The LMKs, by when they last changed (none: never rotated).
    ///
    /// # Errors
    /// [`Error::Store`].
    fn lmks(&self) -> Result<Vec<LmkRecord>, Error>;

    /// Applies the moves atomically, each only from its `from` state, and moves the state
    /// version (every node reloads its LMK states).
    ///
    /// # Errors
    /// [`Error::Conflict`] if an LMK is not in its `from` state (another officer or node moved
    /// it); [`Error::Store`].
    fn move_lmks(&self, moves: &[LmkMove], now: u64) -> Result<(), Error>;

    /// Up to `limit` (id, block) pairs of `table` in id order after `after`: a rewrap's page.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn sealed_blocks(
        &self,
        table: Sealed,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>, Error>;

    /// Replaces blocks of `table`, each only if its row still holds the old block (a key
    /// erased meanwhile stays erased), in one transaction; returns how many were replaced.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn reseal(&self, table: Sealed, blocks: &[Reseal]) -> Result<usize, Error>;

    /// A secret keyd derived from the original LMK (its name is the derivation's label), kept
    /// sealed under the LMK since the first rotation.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn lmk_secret(&self, name: &str) -> Result<Option<String>, Error>;

    /// Keeps a sealed secret; the first one stored under a name stays.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn insert_lmk_secret(&self, name: &str, block: &str) -> Result<(), Error>;
}

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS lmks (
    kcv BLOB PRIMARY KEY,
    original INTEGER NOT NULL,
    state TEXT NOT NULL,
    destroy_after INTEGER,
    changed_at INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS lmk_secrets (
    name TEXT PRIMARY KEY,
    block TEXT NOT NULL
) STRICT;
";

fn seconds(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn record_from(
    kcv: &[u8],
    original: bool,
    state: &str,
    destroy_after: Option<i64>,
    changed_at: i64,
) -> Option<LmkRecord> {
    Some(LmkRecord {
        kcv: kcv.try_into().ok()?,
        original,
        state: LmkState::from_row(state, destroy_after)?,
        changed_at: u64::try_from(changed_at).unwrap_or(0),
    })
}

impl LmkStore for SqliteStore {
    fn lmks(&self) -> Result<Vec<LmkRecord>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT kcv, original, state, destroy_after, changed_at FROM lmks ORDER BY changed_at, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            let kcv: Vec<u8> = r.get(0)?;
            let state: String = r.get(2)?;
            record_from(&kcv, r.get(1)?, &state, r.get(3)?, r.get(4)?)
                .ok_or(rusqlite::Error::InvalidQuery)
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn move_lmks(&self, moves: &[LmkMove], now: u64) -> Result<(), Error> {
        let moves = moves.to_vec();
        self.write(move |conn| {
            for m in &moves {
                let n = match m.from {
                    None => conn.execute(
                        "INSERT OR IGNORE INTO lmks (kcv, original, state, destroy_after, changed_at)
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![
                            m.kcv.as_slice(),
                            m.original,
                            m.to.name(),
                            m.to.destroy_after_secs().map(seconds),
                            seconds(now)
                        ],
                    )?,
                    Some(from) => conn.execute(
                        "UPDATE lmks SET state = ?2, destroy_after = ?3, changed_at = ?4
                         WHERE kcv = ?1 AND state = ?5",
                        params![
                            m.kcv.as_slice(),
                            m.to.name(),
                            m.to.destroy_after_secs().map(seconds),
                            seconds(now),
                            from
                        ],
                    )?,
                };
                if n == 0 {
                    return Err(Error::Conflict(
                        "the LMK is not in the state this step needs (moved by another officer or node)",
                    ));
                }
            }
            super::admin::bump_version(conn, &super::Change::All)
        })
    }

    fn sealed_blocks(
        &self,
        table: Sealed,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>, Error> {
        let (table, id) = table.table();
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {id}, block FROM {table} WHERE {id} > ?1 ORDER BY {id} LIMIT ?2"
        ))?;
        let rows = stmt.query_map(
            params![after, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn reseal(&self, table: Sealed, blocks: &[Reseal]) -> Result<usize, Error> {
        let (table, id) = table.table();
        let blocks = blocks.to_vec();
        self.write_with(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "UPDATE {table} SET block = ?3 WHERE {id} = ?1 AND block = ?2"
            ))?;
            let mut n = 0;
            for (key, old, new) in &blocks {
                n += stmt.execute(params![key, old, new])?;
            }
            Ok(n)
        })
    }

    fn lmk_secret(&self, name: &str) -> Result<Option<String>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT block FROM lmk_secrets WHERE name = ?1")?;
        Ok(stmt.query_row([name], |r| r.get(0)).optional()?)
    }

    fn insert_lmk_secret(&self, name: &str, block: &str) -> Result<(), Error> {
        let (name, block) = (name.to_owned(), block.to_owned());
        self.write(move |conn| {
            conn.execute(
                "INSERT OR IGNORE INTO lmk_secrets (name, block) VALUES (?1, ?2)",
                params![name, block],
            )?;
            Ok(())
        })
    }
}

impl LmkStore for MemoryStore {
    fn lmks(&self) -> Result<Vec<LmkRecord>, Error> {
        Ok(self.tables().lmks.clone())
    }

    fn move_lmks(&self, moves: &[LmkMove], now: u64) -> Result<(), Error> {
        let mut t = self.tables();
        let mut lmks = t.lmks.clone();
        for m in moves {
            let found = lmks.iter().position(|l| l.kcv == m.kcv);
            match (m.from, found) {
                (None, None) => lmks.push(LmkRecord {
                    kcv: m.kcv,
                    original: m.original,
                    state: m.to,
                    changed_at: now,
                }),
                (Some(from), Some(i)) if lmks.get(i).is_some_and(|l| l.state.name() == from) => {
                    let mut l = lmks.remove(i);
                    l.state = m.to;
                    l.changed_at = now;
                    lmks.push(l);
                }
                _ => {
                    return Err(Error::Conflict(
                        "the LMK is not in the state this step needs (moved by another officer or node)",
                    ));
                }
            }
        }
        t.lmks = lmks;
        t.bump(super::Change::All);
        Ok(())
    }

    fn sealed_blocks(
        &self,
        table: Sealed,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>, Error> {
        let t = self.tables();
        let mut rows: Vec<(String, String)> = match table {
            Sealed::Keys => t
                .keys
                .values()
                .map(|k| (k.key_id.clone(), k.block.clone()))
                .collect(),
            Sealed::Imported => t
                .imported
                .values()
                .map(|k| (k.key_id.clone(), k.block.clone()))
                .collect(),
            Sealed::Zones => t
                .zones
                .values()
                .map(|z| (z.zone.clone(), z.block.clone()))
                .collect(),
            Sealed::Secrets => t
                .secrets
                .iter()
                .map(|(n, b)| (n.clone(), b.clone()))
                .collect(),
            Sealed::RetiringZmks => t
                .retiring
                .values()
                .map(|z| (z.zone.clone(), z.block.clone()))
                .collect(),
        };
        rows.retain(|(id, _)| id.as_str() > after);
        rows.sort();
        rows.truncate(limit);
        Ok(rows)
    }

    fn reseal(&self, table: Sealed, blocks: &[Reseal]) -> Result<usize, Error> {
        let mut t = self.tables();
        let mut n = 0;
        for (id, old, new) in blocks {
            let slot = match table {
                Sealed::Keys => t.keys.get_mut(id).map(|k| &mut k.block),
                Sealed::Imported => t.imported.get_mut(id).map(|k| &mut k.block),
                Sealed::Zones => t.zones.get_mut(id).map(|z| &mut z.block),
                Sealed::Secrets => t.secrets.get_mut(id),
                Sealed::RetiringZmks => t.retiring.get_mut(id).map(|z| &mut z.block),
            };
            if let Some(block) = slot.filter(|b| *b == old) {
                block.clone_from(new);
                n += 1;
            }
        }
        Ok(n)
    }

    fn lmk_secret(&self, name: &str) -> Result<Option<String>, Error> {
        Ok(self.tables().secrets.get(name).cloned())
    }

    fn insert_lmk_secret(&self, name: &str, block: &str) -> Result<(), Error> {
        self.tables()
            .secrets
            .entry(name.to_owned())
            .or_insert_with(|| block.to_owned());
        Ok(())
    }
}

/// The trait's tests, run on every store.
#[cfg(test)]
pub(super) fn exercise(store: &dyn super::KeyStore) {
    assert_eq!(store.lmks().unwrap(), vec![]);
    let v0 = store.state_version().unwrap();
    let (a, b) = ([1, 1, 1], [2, 2, 2]);
    store
        .move_lmks(
            &[
                LmkMove {
                    kcv: a,
                    original: true,
                    from: None,
                    to: LmkState::Current,
                },
                LmkMove {
                    kcv: b,
                    original: false,
                    from: None,
                    to: LmkState::Pending,
                },
            ],
            100,
        )
        .unwrap();
    assert!(store.state_version().unwrap() > v0, "every node reloads");
    let lmks = store.lmks().unwrap();
    assert_eq!(lmks.len(), 2);
    assert!(
        lmks.iter()
            .any(|l| l.kcv == a && l.original && l.state == LmkState::Current)
    );
    // A second ceremony racing the first: the pending LMK exists, the move fails whole.
    let again = store.move_lmks(
        &[LmkMove {
            kcv: b,
            original: false,
            from: None,
            to: LmkState::Pending,
        }],
        101,
    );
    assert!(matches!(again, Err(Error::Conflict(_))), "{again:?}");
    let half = store.move_lmks(
        &[
            LmkMove {
                kcv: b,
                original: false,
                from: Some("pending"),
                to: LmkState::Next,
            },
            LmkMove {
                kcv: a,
                original: true,
                from: Some("next"),
                to: LmkState::Current,
            },
        ],
        102,
    );
    assert!(matches!(half, Err(Error::Conflict(_))));
    assert!(
        store
            .lmks()
            .unwrap()
            .iter()
            .any(|l| l.kcv == b && l.state == LmkState::Pending),
        "a failed move changes nothing"
    );
    store
        .move_lmks(
            &[
                LmkMove {
                    kcv: a,
                    original: true,
                    from: Some("current"),
                    to: LmkState::Retired { destroy_after: 500 },
                },
                LmkMove {
                    kcv: b,
                    original: false,
                    from: Some("pending"),
                    to: LmkState::Current,
                },
            ],
            103,
        )
        .unwrap();
    let lmks = store.lmks().unwrap();
    assert!(lmks.contains(&LmkRecord {
        kcv: a,
        original: true,
        state: LmkState::Retired { destroy_after: 500 },
        changed_at: 103
    }));

    // Secrets: the first one stays.
    assert_eq!(store.lmk_secret("s").unwrap(), None);
    store.insert_lmk_secret("s", "one").unwrap();
    store.insert_lmk_secret("s", "two").unwrap();
    assert_eq!(store.lmk_secret("s").unwrap().as_deref(), Some("one"));

    // Pages and compare-and-swap.
    store
        .insert_imported(&super::ImportedRecord {
            key_id: "imp-b".into(),
            label: "l".into(),
            kcv: [0; 3],
            block: "old-b".into(),
            created_at: 1,
        })
        .unwrap();
    store
        .insert_imported(&super::ImportedRecord {
            key_id: "imp-a".into(),
            label: "l".into(),
            kcv: [0; 3],
            block: "old-a".into(),
            created_at: 1,
        })
        .unwrap();
    let page = store.sealed_blocks(Sealed::Imported, "imp-1", 1).unwrap();
    assert_eq!(page, vec![("imp-a".to_owned(), "old-a".to_owned())]);
    let page = store.sealed_blocks(Sealed::Imported, "imp-a", 10).unwrap();
    assert_eq!(page, vec![("imp-b".to_owned(), "old-b".to_owned())]);
    let n = store
        .reseal(
            Sealed::Imported,
            &[
                ("imp-a".into(), "old-a".into(), "new-a".into()),
                ("imp-b".into(), "changed".into(), "new-b".into()),
            ],
        )
        .unwrap();
    assert_eq!(n, 1, "a block changed meanwhile is left alone");
    assert_eq!(store.imported("imp-a").unwrap().unwrap().block, "new-a");
    assert_eq!(store.imported("imp-b").unwrap().unwrap().block, "old-b");
    let secrets = store.sealed_blocks(Sealed::Secrets, "", 10).unwrap();
    assert_eq!(secrets, vec![("s".to_owned(), "one".to_owned())]);
    assert_eq!(
        store
            .reseal(Sealed::Secrets, &[("s".into(), "one".into(), "uno".into())])
            .unwrap(),
        1
    );
    assert_eq!(store.lmk_secret("s").unwrap().as_deref(), Some("uno"));
}
