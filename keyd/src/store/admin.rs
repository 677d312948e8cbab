//! What security officers change in the store: the state of a key (disabled, destroyed after a
//! restore window), officer accounts, and dual-control approvals.
//!
//! A key's officer-set state lives beside its record, not in it: most keys never have one, the
//! device paths never write it, and every change bumps one version number that a running
//! `keyd serve` polls, so an officer's command in another process reaches its cache quickly.

use rusqlite::{Connection, OptionalExtension, params};

use super::{MemoryStore, SqliteStore, seconds};
use crate::Error;
use crate::keys::KeyKind;

/// The officer-set state of a stored key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Usable (subject to its device's own rules: revocation, rotation).
    Active,
    /// Refused everywhere until an officer enables it again.
    Disabled,
    /// Refused everywhere; its block is erased at `after` (Unix seconds) unless restored first.
    Destroying {
        /// When the block is erased.
        after: u64,
    },
    /// The block is erased: the key no longer exists anywhere. Final.
    Destroyed,
}

impl KeyState {
    /// The name shown to officers.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Destroying { .. } => "destroying",
            Self::Destroyed => "destroyed",
        }
    }

    pub(super) fn from_row(name: Option<&str>, after: Option<i64>) -> Self {
        match (name, after) {
            (Some("disabled"), _) => Self::Disabled,
            (Some("destroying"), Some(after)) => Self::Destroying {
                after: u64::try_from(after).unwrap_or(0),
            },
            (Some("destroyed"), _) => Self::Destroyed,
            // An unknown name is refused like a destroyed key: never silently usable.
            (Some(n), _) if n != "active" => Self::Destroyed,
            _ => Self::Active,
        }
    }

    fn after(self) -> Option<i64> {
        match self {
            Self::Destroying { after } => Some(seconds(after)),
            _ => None,
        }
    }

    /// Why a change from this state is refused.
    pub const fn refusal(self) -> &'static str {
        match self {
            Self::Active => "the key is active",
            Self::Disabled => "the key is disabled",
            Self::Destroying { .. } => "the key is being destroyed (restore it first)",
            Self::Destroyed => "the key is destroyed",
        }
    }
}

/// One key as officers see it: never its value (the block is kept only to read its clear
/// header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// `tmk-…`, `imp-…`, …
    pub key_id: String,
    /// The device id for device keys, the operator's label for imported keys.
    pub label: String,
    /// Its role, for device keys; `None` for imported keys.
    pub kind: Option<KeyKind>,
    /// Check value.
    pub kcv: [u8; 3],
    /// The TR-31 block under the LMK (empty once destroyed).
    pub block: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Replaced by a rotation or revoked with its device.
    pub revoked: bool,
    /// The officer-set state.
    pub state: KeyState,
}

/// Which keys to list: in key-id order after `after`, at most `limit`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListQuery<'a> {
    /// Only this device's keys (imported keys have no device).
    pub device: Option<&'a str>,
    /// Only keys in this state (by name).
    pub state: Option<&'a str>,
    /// Resume after this key id.
    pub after: &'a str,
    /// Page size.
    pub limit: usize,
    /// Only keys made before this time (Unix seconds): those past a crypto-period.
    pub created_before: Option<u64>,
}

/// An officer account. The credential is a salted, peppered PBKDF2 hash (see `officers`).
#[derive(Clone, PartialEq, Eq)]
pub struct OfficerRecord {
    /// Login name.
    pub name: String,
    /// Random salt.
    pub salt: [u8; 16],
    /// PBKDF2 iterations this hash was made with.
    pub iterations: u32,
    /// The credential hash.
    pub hash: [u8; 32],
    /// Failed logins since the last success or lockout.
    pub failures: u32,
    /// Refused until then (Unix seconds).
    pub locked_until: Option<u64>,
    /// Unix seconds.
    pub created_at: u64,
    /// Last successful login.
    pub last_login: Option<u64>,
}

impl std::fmt::Debug for OfficerRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfficerRecord")
            .field("name", &self.name)
            .field("failures", &self.failures)
            .field("locked_until", &self.locked_until)
            .finish_non_exhaustive()
    }
}

/// Whether a login may go on to check the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginGate {
    /// No officer of that name.
    Unknown,
    /// Locked until then (Unix seconds).
    Locked(u64),
    /// Counted; check the password.
    Allowed,
}

/// What one move of the state version was about: which cached keys it may have made stale,
/// so a node empties only that part of its working-key cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Anything (a new zone, an erasure, an announcement): the whole cache.
    All,
    /// A device's keys (a revocation, an identity or key-set rotation).
    Device(String),
    /// One key (an officer's state change).
    Key(String),
}

/// How many changes the store keeps: a node further behind than that empties its whole cache.
pub(super) const CHANGES_KEPT: u64 = 10_000;

/// One officer's approval of one action on one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// `zmk-form`, `export`, `destroy`, `officer-add`.
    pub action: String,
    /// The zone, key or officer the action names.
    pub subject: String,
    /// Who approved.
    pub officer: String,
    /// When (Unix seconds).
    pub at: u64,
}

/// What officers change in the store.
pub trait AdminStore {
    /// A key's officer-set state.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn key_state(&self, key_id: &str) -> Result<KeyState, Error>;

    /// Moves a key (device or imported) to `to` if it is now in one of the states named in
    /// `from`; destroying erases nothing yet (see [`AdminStore::purge_destroyed`]).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown key, [`Error::Conflict`] for a key in another state,
    /// [`Error::Store`].
    fn change_key_state(&self, key_id: &str, from: &[&str], to: KeyState) -> Result<(), Error>;

    /// Keys, in key-id order.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn list_keys(&self, query: &ListQuery<'_>) -> Result<Vec<Listed>, Error>;

    /// Erases the blocks of keys whose restore window ended by `now`; returns their ids.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn purge_destroyed(&self, now: u64) -> Result<Vec<String>, Error>;

    /// A number that changes whenever a key's officer-set state changes.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn state_version(&self) -> Result<u64, Error>;

    /// Moves the state version without a key-state change (a new zone in the token).
    ///
    /// # Errors
    /// [`Error::Store`].
    fn bump_state_version(&self) -> Result<(), Error>;

    /// The changes after state version `version`, in order, with the version the last one
    /// made; `None` when the store no longer holds all of them (the node was too far behind,
    /// or the version went back, as after a restore): then everything may have changed.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn changes_since(&self, version: u64) -> Result<Option<(u64, Vec<Change>)>, Error>;

    /// An officer by name.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn officer(&self, name: &str) -> Result<Option<OfficerRecord>, Error>;

    /// Every officer, by name.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn officers(&self) -> Result<Vec<OfficerRecord>, Error>;

    /// Enrols an officer.
    ///
    /// # Errors
    /// [`Error::Conflict`] if the name is taken; [`Error::Store`].
    fn insert_officer(&self, officer: &OfficerRecord) -> Result<(), Error>;

    /// Replaces an officer's credential.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Store`].
    fn set_credential(
        &self,
        name: &str,
        salt: [u8; 16],
        iterations: u32,
        hash: [u8; 32],
    ) -> Result<(), Error>;

    /// Starts a login, atomically and before the password is checked, so parallel attempts
    /// cannot outrun the lockout: refused while locked; the attempt is counted as a failure
    /// until [`AdminStore::finish_login`] says otherwise; an account that has used up `max`
    /// attempts is locked until `lock_until`.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn begin_login(
        &self,
        name: &str,
        max: u32,
        lock_until: u64,
        now: u64,
    ) -> Result<LoginGate, Error>;

    /// Ends a login begun with [`AdminStore::begin_login`]. A success clears the failures
    /// unless the account was locked meanwhile; a failure locks the account if it has used up
    /// `max` attempts. Returns the end of a lock that applies (the login then fails).
    ///
    /// # Errors
    /// [`Error::Store`].
    fn finish_login(
        &self,
        name: &str,
        success: bool,
        max: u32,
        lock_until: u64,
        now: u64,
    ) -> Result<Option<u64>, Error>;

    /// Records an approval.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn add_approval(&self, approval: &Approval) -> Result<(), Error>;

    /// The distinct officers who approved `action` on `subject` at or after `not_before`. When
    /// there are at least `needed`, those approvals are used up (deleted) in the same atomic
    /// step, so one pair of approvals allows one action. Approvals older than `not_before` are
    /// deleted in passing.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn take_approvals(
        &self,
        action: &str,
        subject: &str,
        not_before: u64,
        needed: usize,
    ) -> Result<Vec<String>, Error>;
}

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS key_states (
    key_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    destroy_after INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS state_changes (
    version INTEGER PRIMARY KEY,
    device_id TEXT,
    key_id TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS officers (
    name TEXT PRIMARY KEY,
    salt BLOB NOT NULL,
    iterations INTEGER NOT NULL,
    hash BLOB NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until INTEGER,
    created_at INTEGER NOT NULL,
    last_login INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS approvals (
    id INTEGER PRIMARY KEY,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    officer TEXT NOT NULL,
    at INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS approvals_by_subject ON approvals(action, subject);
";

pub(super) fn bump_version(conn: &Connection, change: &Change) -> Result<(), Error> {
    let version: i64 = conn.query_row(
        "INSERT INTO meta (name, value) VALUES ('state_version', 1)
         ON CONFLICT(name) DO UPDATE SET value = value + 1
         RETURNING value",
        [],
        |r| r.get(0),
    )?;
    let (device, key) = match change {
        Change::All => (None, None),
        Change::Device(d) => (Some(d.as_str()), None),
        Change::Key(k) => (None, Some(k.as_str())),
    };
    conn.prepare_cached(
        "INSERT OR REPLACE INTO state_changes (version, device_id, key_id) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![version, device, key])?;
    conn.prepare_cached("DELETE FROM state_changes WHERE version <= ?1")?
        .execute([version.saturating_sub(seconds(CHANGES_KEPT))])?;
    Ok(())
}

/// The changes after `version` if they are all there (see [`AdminStore::changes_since`]).
pub(super) fn contiguous(
    version: u64,
    rows: impl IntoIterator<Item = (u64, Change)>,
) -> Option<(u64, Vec<Change>)> {
    let mut last = version;
    let mut changes = Vec::new();
    for (v, change) in rows {
        if v != last.checked_add(1)? {
            return None;
        }
        last = v;
        changes.push(change);
    }
    Some((last, changes))
}

pub(super) fn change_from(device: Option<String>, key: Option<String>) -> Change {
    match (device, key) {
        (Some(d), _) => Change::Device(d),
        (None, Some(k)) => Change::Key(k),
        (None, None) => Change::All,
    }
}

fn bytes<const N: usize>(v: &[u8]) -> rusqlite::Result<[u8; N]> {
    v.try_into().map_err(|_| rusqlite::Error::InvalidQuery)
}

fn officer_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<OfficerRecord> {
    let opt = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    Ok(OfficerRecord {
        name: row.get(0)?,
        salt: bytes(&row.get::<_, Vec<u8>>(1)?)?,
        iterations: row.get(2)?,
        hash: bytes(&row.get::<_, Vec<u8>>(3)?)?,
        failures: row.get(4)?,
        locked_until: opt(row.get(5)?),
        created_at: u64::try_from(row.get::<_, i64>(6)?).unwrap_or(0),
        last_login: opt(row.get(7)?),
    })
}

const OFFICER_COLUMNS: &str =
    "name, salt, iterations, hash, failures, locked_until, created_at, last_login";

/// A key's officer-set state as `conn` sees it (no row: active).
fn read_state(conn: &Connection, key_id: &str) -> Result<KeyState, Error> {
    let row = conn
        .prepare_cached("SELECT state, destroy_after FROM key_states WHERE key_id = ?1")?
        .query_row([key_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
        })
        .optional()?;
    Ok(row.map_or(KeyState::Active, |(s, a)| KeyState::from_row(Some(&s), a)))
}

/// Keys whose restore window has ended by `now`.
fn due_for_erasure(conn: &Connection, now: u64) -> Result<Vec<String>, Error> {
    Ok(conn
        .prepare_cached(
            "SELECT key_id FROM key_states WHERE state = 'destroying' AND destroy_after <= ?1",
        )?
        .query_map([seconds(now)], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?)
}

impl AdminStore for SqliteStore {
    fn key_state(&self, key_id: &str) -> Result<KeyState, Error> {
        read_state(&self.reader(), key_id)
    }

    fn change_key_state(&self, key_id: &str, from: &[&str], to: KeyState) -> Result<(), Error> {
        let key_id = key_id.to_owned();
        let from: Vec<String> = from.iter().map(|s| (*s).to_owned()).collect();
        self.write(move |conn| {
            let exists: bool = conn.query_row(
                "SELECT EXISTS(SELECT 1 FROM keys WHERE key_id = ?1)
                     OR EXISTS(SELECT 1 FROM imported_keys WHERE key_id = ?1)",
                [&key_id],
                |r| r.get(0),
            )?;
            if !exists {
                return Err(Error::NotFound("key"));
            }
            let current = read_state(conn, &key_id)?;
            if !from.iter().any(|f| f == current.name()) {
                return Err(Error::Conflict(current.refusal()));
            }
            conn.execute(
                "INSERT INTO key_states (key_id, state, destroy_after) VALUES (?1, ?2, ?3)
                 ON CONFLICT(key_id) DO UPDATE SET state = ?2, destroy_after = ?3",
                params![key_id, to.name(), to.after()],
            )?;
            bump_version(conn, &Change::Key(key_id))
        })
    }

    fn list_keys(&self, q: &ListQuery<'_>) -> Result<Vec<Listed>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT u.key_id, u.label, u.kind, u.kcv, u.block, u.created_at, u.revoked,
                    s.state, s.destroy_after
             FROM (SELECT key_id, device_id AS label, kind, kcv, block, created_at, revoked
                   FROM keys WHERE key_id > ?1 AND (?2 IS NULL OR device_id = ?2)
                   UNION ALL
                   SELECT key_id, label, NULL, kcv, block, created_at, 0
                   FROM imported_keys WHERE key_id > ?1 AND ?2 IS NULL) u
             LEFT JOIN key_states s ON s.key_id = u.key_id
             WHERE (?3 IS NULL OR COALESCE(s.state, 'active') = ?3)
               AND (?5 IS NULL OR u.created_at < ?5)
             ORDER BY u.key_id LIMIT ?4",
        )?;
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let before = q
            .created_before
            .map(|t| i64::try_from(t).unwrap_or(i64::MAX));
        let rows = stmt.query_map(params![q.after, q.device, q.state, limit, before], |r| {
            let kind: Option<String> = r.get(2)?;
            let state: Option<String> = r.get(7)?;
            Ok(Listed {
                key_id: r.get(0)?,
                label: r.get(1)?,
                kind: kind.as_deref().and_then(KeyKind::from_name),
                kcv: bytes(&r.get::<_, Vec<u8>>(3)?)?,
                block: r.get(4)?,
                created_at: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                revoked: r.get(6)?,
                state: KeyState::from_row(state.as_deref(), r.get(8)?),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn purge_destroyed(&self, now: u64) -> Result<Vec<String>, Error> {
        // Serve asks every second: look first without the writer (and the database's write
        // lock), which nearly always finds nothing due.
        if due_for_erasure(&self.reader(), now)?.is_empty() {
            return Ok(Vec::new());
        }
        let ids = self.write_with(move |conn| {
            let ids = due_for_erasure(conn, now)?;
            for id in &ids {
                // secure_delete is on: the old block's bytes are overwritten in the file.
                conn.execute("UPDATE keys SET block = '' WHERE key_id = ?1", [id])?;
                conn.execute(
                    "UPDATE imported_keys SET block = '' WHERE key_id = ?1",
                    [id],
                )?;
                conn.execute(
                    "UPDATE key_states SET state = 'destroyed', destroy_after = NULL
                     WHERE key_id = ?1",
                    [id],
                )?;
            }
            if !ids.is_empty() {
                bump_version(conn, &Change::All)?;
            }
            Ok(ids)
        })?;
        if !ids.is_empty() {
            // Old pages may still sit in the write-ahead log; fold it into the file now.
            let conn = self.reader();
            let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
        }
        Ok(ids)
    }

    fn state_version(&self) -> Result<u64, Error> {
        let conn = self.reader();
        let v: Option<i64> = conn
            .prepare_cached("SELECT value FROM meta WHERE name = 'state_version'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        Ok(v.and_then(|v| u64::try_from(v).ok()).unwrap_or(0))
    }

    fn bump_state_version(&self) -> Result<(), Error> {
        self.write(|conn| bump_version(conn, &Change::All))
    }

    fn changes_since(&self, version: u64) -> Result<Option<(u64, Vec<Change>)>, Error> {
        let conn = self.reader();
        let rows = conn
            .prepare_cached(
                "SELECT version, device_id, key_id FROM state_changes WHERE version > ?1
                 ORDER BY version",
            )?
            .query_map([seconds(version)], |r| {
                Ok((
                    u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    change_from(r.get(1)?, r.get(2)?),
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(contiguous(version, rows))
    }

    fn officer(&self, name: &str) -> Result<Option<OfficerRecord>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {OFFICER_COLUMNS} FROM officers WHERE name = ?1"
        ))?;
        Ok(stmt.query_row([name], officer_from_row).optional()?)
    }

    fn officers(&self) -> Result<Vec<OfficerRecord>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {OFFICER_COLUMNS} FROM officers ORDER BY name"
        ))?;
        Ok(stmt
            .query_map([], officer_from_row)?
            .collect::<Result<Vec<_>, _>>()?)
    }

    fn insert_officer(&self, o: &OfficerRecord) -> Result<(), Error> {
        let o = o.clone();
        self.write(move |conn| {
            let n = conn.execute(
                "INSERT OR IGNORE INTO officers (name, salt, iterations, hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    o.name,
                    o.salt.as_slice(),
                    o.iterations,
                    o.hash.as_slice(),
                    seconds(o.created_at)
                ],
            )?;
            if n == 0 {
                return Err(Error::Conflict("an officer of that name exists"));
            }
            Ok(())
        })
    }

    fn set_credential(
        &self,
        name: &str,
        salt: [u8; 16],
        iterations: u32,
        hash: [u8; 32],
    ) -> Result<(), Error> {
        let name = name.to_owned();
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE officers SET salt = ?2, iterations = ?3, hash = ?4 WHERE name = ?1",
                params![name, salt.as_slice(), iterations, hash.as_slice()],
            )?;
            if n == 0 {
                return Err(Error::NotFound("officer"));
            }
            Ok(())
        })
    }

    fn begin_login(
        &self,
        name: &str,
        max: u32,
        lock_until: u64,
        now: u64,
    ) -> Result<LoginGate, Error> {
        let name = name.to_owned();
        self.write_with(move |conn| {
            let row: Option<(u32, Option<i64>)> = conn
                .query_row(
                    "SELECT failures, locked_until FROM officers WHERE name = ?1",
                    [&name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let gate = match row {
                None => LoginGate::Unknown,
                Some((_, Some(until))) if until > seconds(now) => {
                    LoginGate::Locked(u64::try_from(until).unwrap_or(u64::MAX))
                }
                Some((failures, _)) if failures >= max => {
                    conn.execute(
                        "UPDATE officers SET failures = 0, locked_until = ?2 WHERE name = ?1",
                        params![name, seconds(lock_until)],
                    )?;
                    LoginGate::Locked(lock_until)
                }
                Some(_) => {
                    conn.execute(
                        "UPDATE officers SET failures = failures + 1, locked_until = NULL
                         WHERE name = ?1",
                        [&name],
                    )?;
                    LoginGate::Allowed
                }
            };
            Ok(gate)
        })
    }

    fn finish_login(
        &self,
        name: &str,
        success: bool,
        max: u32,
        lock_until: u64,
        now: u64,
    ) -> Result<Option<u64>, Error> {
        let name = name.to_owned();
        self.write_with(move |conn| {
            let locked = if success {
                let n = conn.execute(
                    "UPDATE officers SET failures = 0, last_login = ?2
                     WHERE name = ?1 AND (locked_until IS NULL OR locked_until <= ?2)",
                    params![name, seconds(now)],
                )?;
                if n == 0 {
                    conn.query_row(
                        "SELECT locked_until FROM officers WHERE name = ?1",
                        [&name],
                        |r| r.get::<_, Option<i64>>(0),
                    )
                    .optional()?
                    .flatten()
                    .and_then(|u| u64::try_from(u).ok())
                } else {
                    None
                }
            } else {
                let n = conn.execute(
                    "UPDATE officers SET failures = 0, locked_until = ?2
                     WHERE name = ?1 AND failures >= ?3",
                    params![name, seconds(lock_until), max],
                )?;
                (n > 0).then_some(lock_until)
            };
            Ok(locked)
        })
    }

    fn add_approval(&self, a: &Approval) -> Result<(), Error> {
        let a = a.clone();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO approvals (action, subject, officer, at) VALUES (?1, ?2, ?3, ?4)",
                params![a.action, a.subject, a.officer, seconds(a.at)],
            )?;
            Ok(())
        })
    }

    fn take_approvals(
        &self,
        action: &str,
        subject: &str,
        not_before: u64,
        needed: usize,
    ) -> Result<Vec<String>, Error> {
        let (action, subject) = (action.to_owned(), subject.to_owned());
        self.write_with(move |conn| {
            conn.execute("DELETE FROM approvals WHERE at < ?1", [seconds(not_before)])?;
            let officers = conn
                .prepare_cached(
                    "SELECT DISTINCT officer FROM approvals WHERE action = ?1 AND subject = ?2
                     ORDER BY officer",
                )?
                .query_map([&action, &subject], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            if officers.len() >= needed {
                conn.execute(
                    "DELETE FROM approvals WHERE action = ?1 AND subject = ?2",
                    [&action, &subject],
                )?;
            }
            Ok(officers)
        })
    }
}

impl AdminStore for MemoryStore {
    fn key_state(&self, key_id: &str) -> Result<KeyState, Error> {
        Ok(self
            .tables()
            .states
            .get(key_id)
            .copied()
            .unwrap_or(KeyState::Active))
    }

    fn change_key_state(&self, key_id: &str, from: &[&str], to: KeyState) -> Result<(), Error> {
        let mut t = self.tables();
        if !t.keys.contains_key(key_id) && !t.imported.contains_key(key_id) {
            return Err(Error::NotFound("key"));
        }
        let current = t.states.get(key_id).copied().unwrap_or(KeyState::Active);
        if !from.contains(&current.name()) {
            return Err(Error::Conflict(current.refusal()));
        }
        t.states.insert(key_id.to_owned(), to);
        t.bump(Change::Key(key_id.to_owned()));
        Ok(())
    }

    fn list_keys(&self, q: &ListQuery<'_>) -> Result<Vec<Listed>, Error> {
        let t = self.tables();
        let state = |id: &str| t.states.get(id).copied().unwrap_or(KeyState::Active);
        let device_keys = t
            .keys
            .values()
            .filter(|k| q.device.is_none_or(|d| d == k.device_id))
            .map(|k| Listed {
                key_id: k.key_id.clone(),
                label: k.device_id.clone(),
                kind: Some(k.kind),
                kcv: k.kcv,
                block: k.block.clone(),
                created_at: k.created_at,
                revoked: k.revoked,
                state: state(&k.key_id),
            });
        let imported = t
            .imported
            .values()
            .filter(|_| q.device.is_none())
            .map(|k| Listed {
                key_id: k.key_id.clone(),
                label: k.label.clone(),
                kind: None,
                kcv: k.kcv,
                block: k.block.clone(),
                created_at: k.created_at,
                revoked: false,
                state: state(&k.key_id),
            });
        let mut all: Vec<Listed> = device_keys
            .chain(imported)
            .filter(|l| l.key_id.as_str() > q.after)
            .filter(|l| q.state.is_none_or(|s| s == l.state.name()))
            .filter(|l| q.created_before.is_none_or(|t| l.created_at < t))
            .collect();
        all.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        all.truncate(q.limit);
        Ok(all)
    }

    fn purge_destroyed(&self, now: u64) -> Result<Vec<String>, Error> {
        let mut t = self.tables();
        let mut ids: Vec<String> = t
            .states
            .iter()
            .filter(|(_, s)| matches!(s, KeyState::Destroying { after } if *after <= now))
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        for id in &ids {
            if let Some(k) = t.keys.get_mut(id) {
                k.block.clear();
            }
            if let Some(k) = t.imported.get_mut(id) {
                k.block.clear();
            }
            t.states.insert(id.clone(), KeyState::Destroyed);
        }
        if !ids.is_empty() {
            t.bump(Change::All);
        }
        Ok(ids)
    }

    fn state_version(&self) -> Result<u64, Error> {
        Ok(self.tables().version)
    }

    fn bump_state_version(&self) -> Result<(), Error> {
        self.tables().bump(Change::All);
        Ok(())
    }

    fn changes_since(&self, version: u64) -> Result<Option<(u64, Vec<Change>)>, Error> {
        let t = self.tables();
        Ok(contiguous(
            version,
            t.changes
                .iter()
                .filter(|(v, _)| *v > version)
                .map(|(v, c)| (*v, c.clone())),
        ))
    }

    fn officer(&self, name: &str) -> Result<Option<OfficerRecord>, Error> {
        Ok(self.tables().officers.get(name).cloned())
    }

    fn officers(&self) -> Result<Vec<OfficerRecord>, Error> {
        let mut all: Vec<OfficerRecord> = self.tables().officers.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    fn insert_officer(&self, officer: &OfficerRecord) -> Result<(), Error> {
        let mut t = self.tables();
        if t.officers.contains_key(&officer.name) {
            return Err(Error::Conflict("an officer of that name exists"));
        }
        t.officers.insert(officer.name.clone(), officer.clone());
        Ok(())
    }

    fn set_credential(
        &self,
        name: &str,
        salt: [u8; 16],
        iterations: u32,
        hash: [u8; 32],
    ) -> Result<(), Error> {
        let mut t = self.tables();
        let o = t.officers.get_mut(name).ok_or(Error::NotFound("officer"))?;
        o.salt = salt;
        o.iterations = iterations;
        o.hash = hash;
        Ok(())
    }

    fn begin_login(
        &self,
        name: &str,
        max: u32,
        lock_until: u64,
        now: u64,
    ) -> Result<LoginGate, Error> {
        let mut t = self.tables();
        let Some(o) = t.officers.get_mut(name) else {
            return Ok(LoginGate::Unknown);
        };
        if let Some(until) = o.locked_until.filter(|u| *u > now) {
            return Ok(LoginGate::Locked(until));
        }
        if o.failures >= max {
            o.failures = 0;
            o.locked_until = Some(lock_until);
            return Ok(LoginGate::Locked(lock_until));
        }
        o.failures += 1;
        o.locked_until = None;
        Ok(LoginGate::Allowed)
    }

    fn finish_login(
        &self,
        name: &str,
        success: bool,
        max: u32,
        lock_until: u64,
        now: u64,
    ) -> Result<Option<u64>, Error> {
        let mut t = self.tables();
        let Some(o) = t.officers.get_mut(name) else {
            return Ok(None);
        };
        if success {
            if let Some(until) = o.locked_until.filter(|u| *u > now) {
                return Ok(Some(until));
            }
            o.failures = 0;
            o.last_login = Some(now);
            return Ok(None);
        }
        if o.failures >= max {
            o.failures = 0;
            o.locked_until = Some(lock_until);
            return Ok(Some(lock_until));
        }
        Ok(None)
    }

    fn add_approval(&self, approval: &Approval) -> Result<(), Error> {
        self.tables().approvals.push(approval.clone());
        Ok(())
    }

    fn take_approvals(
        &self,
        action: &str,
        subject: &str,
        not_before: u64,
        needed: usize,
    ) -> Result<Vec<String>, Error> {
        let mut t = self.tables();
        t.approvals.retain(|a| a.at >= not_before);
        let mut officers: Vec<String> = t
            .approvals
            .iter()
            .filter(|a| a.action == action && a.subject == subject)
            .map(|a| a.officer.clone())
            .collect();
        officers.sort();
        officers.dedup();
        if officers.len() >= needed {
            t.approvals
                .retain(|a| !(a.action == action && a.subject == subject));
        }
        Ok(officers)
    }
}

#[cfg(test)]
#[test]
fn a_gap_in_the_changes_means_anything_changed() {
    let c = |v: u64| (v, Change::All);
    assert_eq!(
        contiguous(4, [c(5), c(6)]),
        Some((6, vec![Change::All, Change::All]))
    );
    assert_eq!(contiguous(4, [c(6), c(7)]), None, "5 was dropped");
    assert_eq!(contiguous(4, []), Some((4, Vec::new())));
}

#[cfg(test)]
pub(super) fn exercise(store: &dyn super::KeyStore) {
    // Run after `super::tests::exercise`: device POS-00000001 with idk-2 and three key sets,
    // imported key imp-1.
    let page = |state: Option<&str>| {
        store
            .list_keys(&ListQuery {
                state,
                limit: 100,
                ..ListQuery::default()
            })
            .unwrap()
    };
    let all = page(None);
    assert!(all.windows(2).all(|w| w[0].key_id < w[1].key_id));
    assert!(all.iter().any(|l| l.key_id == "imp-1" && l.kind.is_none()));
    assert!(all.iter().all(|l| l.state == KeyState::Active));
    let by_device = store
        .list_keys(&ListQuery {
            device: Some("POS-00000001"),
            limit: 3,
            after: "idk-1",
            ..ListQuery::default()
        })
        .unwrap();
    assert_eq!(by_device.len(), 3);
    assert!(
        by_device
            .iter()
            .all(|l| l.key_id.as_str() > "idk-1" && l.kind.is_some())
    );

    let v0 = store.state_version().unwrap();
    store
        .change_key_state("tmk-ks-c", &["active"], KeyState::Disabled)
        .unwrap();
    assert_eq!(store.key_state("tmk-ks-c").unwrap(), KeyState::Disabled);
    let v1 = store.state_version().unwrap();
    assert!(v1 > v0);
    assert_eq!(
        store.changes_since(v0).unwrap(),
        Some((v1, vec![Change::Key("tmk-ks-c".into())]))
    );
    assert_eq!(store.changes_since(v1).unwrap(), Some((v1, Vec::new())));
    store.bump_state_version().unwrap();
    assert_eq!(
        store.changes_since(v1).unwrap(),
        Some((v1 + 1, vec![Change::All]))
    );
    assert!(matches!(
        store.change_key_state("tmk-ks-c", &["active"], KeyState::Disabled),
        Err(Error::Conflict("the key is disabled"))
    ));
    assert!(matches!(
        store.change_key_state("nope-1", &["active"], KeyState::Disabled),
        Err(Error::NotFound(_))
    ));
    assert_eq!(page(Some("disabled")).len(), 1);
    store
        .change_key_state(
            "imp-1",
            &["active", "disabled"],
            KeyState::Destroying { after: 50 },
        )
        .unwrap();
    assert_eq!(store.purge_destroyed(49).unwrap(), Vec::<String>::new());
    assert_eq!(store.purge_destroyed(50).unwrap(), vec!["imp-1".to_owned()]);
    assert_eq!(store.key_state("imp-1").unwrap(), KeyState::Destroyed);
    assert_eq!(store.imported("imp-1").unwrap().unwrap().block, "");
    assert!(matches!(
        store.change_key_state("imp-1", &["destroying"], KeyState::Disabled),
        Err(Error::Conflict("the key is destroyed"))
    ));

    let officer = OfficerRecord {
        name: "alice".into(),
        salt: [1; 16],
        iterations: 1000,
        hash: [2; 32],
        failures: 0,
        locked_until: None,
        created_at: 1,
        last_login: None,
    };
    store.insert_officer(&officer).unwrap();
    assert!(matches!(
        store.insert_officer(&officer),
        Err(Error::Conflict(_))
    ));
    let begin = |now| store.begin_login("alice", 3, 99, now).unwrap();
    assert_eq!(
        store.begin_login("nobody", 3, 99, 10).unwrap(),
        LoginGate::Unknown
    );
    // Three attempts begun at once (parallel logins) are all counted before any finishes.
    for _ in 0..3 {
        assert_eq!(begin(10), LoginGate::Allowed);
    }
    assert_eq!(begin(10), LoginGate::Locked(99), "a fourth is refused");
    assert_eq!(begin(10), LoginGate::Locked(99));
    assert_eq!(
        store.finish_login("alice", true, 3, 99, 10).unwrap(),
        Some(99),
        "a right password does not end a lock set meanwhile"
    );
    // After the lock: two failures, then a success clears them.
    assert_eq!(begin(100), LoginGate::Allowed);
    assert_eq!(
        store.finish_login("alice", false, 3, 199, 100).unwrap(),
        None
    );
    assert_eq!(begin(100), LoginGate::Allowed);
    assert_eq!(
        store.finish_login("alice", false, 3, 199, 100).unwrap(),
        None
    );
    assert_eq!(begin(100), LoginGate::Allowed);
    assert_eq!(
        store.finish_login("alice", false, 3, 199, 100).unwrap(),
        Some(199),
        "the third failure locks"
    );
    let locked = store.officer("alice").unwrap().unwrap();
    assert_eq!((locked.failures, locked.locked_until), (0, Some(199)));
    assert_eq!(begin(200), LoginGate::Allowed);
    assert_eq!(
        store.finish_login("alice", true, 3, 299, 200).unwrap(),
        None
    );
    let ok = store.officer("alice").unwrap().unwrap();
    assert_eq!((ok.failures, ok.last_login), (0, Some(200)));
    assert_eq!(store.officers().unwrap().len(), 1);

    let approve = |officer: &str, at: u64| {
        store
            .add_approval(&Approval {
                action: "destroy".into(),
                subject: "tmk-1".into(),
                officer: officer.into(),
                at,
            })
            .unwrap();
    };
    approve("alice", 100);
    approve("alice", 101);
    assert_eq!(
        store.take_approvals("destroy", "tmk-1", 90, 2).unwrap(),
        vec!["alice".to_owned()],
        "one officer twice is one approval"
    );
    approve("bob", 102);
    assert_eq!(
        store.take_approvals("destroy", "tmk-2", 90, 2).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        store.take_approvals("destroy", "tmk-1", 101, 2).unwrap(),
        vec!["alice".to_owned(), "bob".to_owned()]
    );
    assert!(
        store
            .take_approvals("destroy", "tmk-1", 0, 2)
            .unwrap()
            .is_empty(),
        "approvals are used up"
    );
    approve("alice", 100);
    approve("bob", 200);
    assert_eq!(
        store.take_approvals("destroy", "tmk-1", 150, 2).unwrap(),
        vec!["bob".to_owned()],
        "an approval older than the window does not count"
    );
}
