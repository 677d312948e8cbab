//! The key store: device records and their keys, each key a TR-31 block under the LMK.
//!
//! Nothing stored here is a clear key. [`SqliteStore`] is the durable store (WAL,
//! `synchronous=FULL`, every lookup by an indexed column); [`MemoryStore`] is its in-memory twin
//! for unit tests. Both obey the same trait and the same tests.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, params};

use crate::Error;
use crate::keys::KeyKind;

mod admin;
mod lmk;
mod postgres;
mod zmk;

pub use admin::{
    AdminStore, Approval, Change, KeyState, ListQuery, Listed, LoginGate, OfficerRecord,
};
pub use lmk::{LmkMove, LmkRecord, LmkState, LmkStore, Reseal, Sealed};
pub use postgres::{PgKeyStore, PgOptions};
pub use zmk::ZmkStore;

/// A device as keyd knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// `POS-` and 8 hex digits.
    pub device_id: String,
    /// The key-injection zone whose ZMK protects the device's TMK.
    pub zone: String,
    /// The current identity key.
    pub identity_key_id: String,
    /// The current key set.
    pub key_set_id: Option<String>,
    /// The key set before the current one, usable until `rotated_at` + the grace period.
    pub previous_key_set_id: Option<String>,
    /// When the current key set replaced the previous one (Unix seconds).
    pub rotated_at: Option<u64>,
    /// Unix seconds.
    pub created_at: u64,
}

/// A stored key: its metadata and its TR-31 block under the LMK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// `idk-…`, `tmk-…`, …
    pub key_id: String,
    /// Its device.
    pub device_id: String,
    /// Its key set (none for identity keys).
    pub key_set_id: Option<String>,
    /// Its role.
    pub kind: KeyKind,
    /// Its check value.
    pub kcv: [u8; 3],
    /// TR-31 version D block under the LMK, key context 1, key id bound in `LB`.
    pub block: String,
    /// Revoked keys never work again.
    pub revoked: bool,
    /// Unix seconds.
    pub created_at: u64,
}

/// A key imported from outside (not a device key): its TR-31 storage block keeps the header it
/// arrived with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedRecord {
    /// `imp-…`
    pub key_id: String,
    /// The operator's label.
    pub label: String,
    /// Check value.
    pub kcv: [u8; 3],
    /// TR-31 version D block under the LMK, key context 1, key id in `LB`.
    pub block: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// A zone's ZMK sealed under the LMK: how a zone formed on one keyd node reaches the token of
/// every other node on a shared store (loaded on first use; see `Service::zmk`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneRecord {
    /// The zone's name.
    pub zone: String,
    /// The ZMK's check value.
    pub kcv: [u8; 3],
    /// TR-31 version D block under the LMK, key context 1, the zone bound in `LB`.
    pub block: String,
    /// Unix seconds.
    pub created_at: u64,
}

/// What keyd needs from its store.
pub trait KeyStore: AdminStore + LmkStore + ZmkStore + Send + Sync + 'static {
    /// A device, if known.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn device(&self, device_id: &str) -> Result<Option<DeviceRecord>, Error>;

    /// Records a new device and its identity key, atomically.
    ///
    /// # Errors
    /// [`Error::Conflict`] if the device exists; [`Error::Store`].
    fn create_device(&self, device: &DeviceRecord, identity: &KeyRecord) -> Result<(), Error>;

    /// Revokes the device's identity key and makes `identity` current, atomically.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Store`].
    fn replace_identity(&self, device_id: &str, identity: &KeyRecord) -> Result<(), Error>;

    /// Stores a new key set and makes it current; the current one becomes the previous one and
    /// the one before that is revoked. Atomic.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Store`].
    fn add_key_set(
        &self,
        device_id: &str,
        key_set_id: &str,
        keys: &[KeyRecord],
        now: u64,
    ) -> Result<(), Error>;

    /// Revokes the device's current identity key (the device keeps its record).
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Store`].
    fn revoke_identity(&self, device_id: &str) -> Result<(), Error>;

    /// Revokes every key set of the device.
    ///
    /// # Errors
    /// [`Error::NotFound`]; [`Error::Store`].
    fn revoke_key_sets(&self, device_id: &str) -> Result<(), Error>;

    /// A key by id.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn key(&self, key_id: &str) -> Result<Option<KeyRecord>, Error>;

    /// The keys of a key set.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn key_set(&self, key_set_id: &str) -> Result<Vec<KeyRecord>, Error>;

    /// Stores an imported key.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn insert_imported(&self, record: &ImportedRecord) -> Result<(), Error>;

    /// An imported key by id.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn imported(&self, key_id: &str) -> Result<Option<ImportedRecord>, Error>;

    /// Records a new zone's sealed ZMK and moves the state version (other nodes look for it).
    ///
    /// # Errors
    /// [`Error::Conflict`] if the zone exists (formed on another node meanwhile);
    /// [`Error::Store`].
    fn insert_zone(&self, zone: &ZoneRecord) -> Result<(), Error>;

    /// A zone's sealed ZMK, if the zone was formed through this store.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn zone(&self, zone: &str) -> Result<Option<ZoneRecord>, Error>;

    /// The names of the zones in the store, sorted.
    ///
    /// # Errors
    /// [`Error::Store`].
    fn zone_names(&self) -> Result<Vec<String>, Error>;
}

/// The in-memory twin.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    devices: HashMap<String, DeviceRecord>,
    keys: HashMap<String, KeyRecord>,
    imported: HashMap<String, ImportedRecord>,
    zones: HashMap<String, ZoneRecord>,
    states: HashMap<String, KeyState>,
    version: u64,
    /// The last [`admin::CHANGES_KEPT`] moves of `version` and what each was about.
    changes: std::collections::VecDeque<(u64, Change)>,
    officers: HashMap<String, OfficerRecord>,
    approvals: Vec<Approval>,
    lmks: Vec<LmkRecord>,
    secrets: std::collections::BTreeMap<String, String>,
    retiring: HashMap<String, ZoneRecord>,
    retired: Vec<(String, [u8; 3])>,
    device_zmk: HashMap<String, [u8; 3]>,
}

impl Tables {
    /// Moves the state version for `change`.
    fn bump(&mut self, change: Change) {
        self.version += 1;
        self.changes.push_back((self.version, change));
        while self.changes.len() > usize::try_from(admin::CHANGES_KEPT).unwrap_or(usize::MAX) {
            self.changes.pop_front();
        }
    }

    /// Marks the device's current identity key revoked.
    fn revoke_identity(&mut self, device_id: &str) -> Result<(), Error> {
        let id = &self
            .devices
            .get(device_id)
            .ok_or(Error::NotFound("device"))?
            .identity_key_id;
        if let Some(k) = self.keys.get_mut(id) {
            k.revoked = true;
        }
        Ok(())
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes a sealed LMK secret, as if the store had been rotated before keyd knew it.
    #[cfg(test)]
    pub(crate) fn forget_lmk_secret_for_tests(&self, name: &str) {
        self.tables().secrets.remove(name);
    }
}

impl KeyStore for MemoryStore {
    fn device(&self, device_id: &str) -> Result<Option<DeviceRecord>, Error> {
        Ok(self.tables().devices.get(device_id).cloned())
    }

    fn create_device(&self, device: &DeviceRecord, identity: &KeyRecord) -> Result<(), Error> {
        let mut t = self.tables();
        if t.devices.contains_key(&device.device_id) {
            return Err(Error::Conflict("the device exists already"));
        }
        t.devices.insert(device.device_id.clone(), device.clone());
        t.keys.insert(identity.key_id.clone(), identity.clone());
        Ok(())
    }

    fn replace_identity(&self, device_id: &str, identity: &KeyRecord) -> Result<(), Error> {
        let mut t = self.tables();
        t.revoke_identity(device_id)?;
        t.bump(Change::Device(device_id.to_owned()));
        t.keys.insert(identity.key_id.clone(), identity.clone());
        if let Some(d) = t.devices.get_mut(device_id) {
            d.identity_key_id = identity.key_id.clone();
        }
        Ok(())
    }

    fn add_key_set(
        &self,
        device_id: &str,
        key_set_id: &str,
        keys: &[KeyRecord],
        now: u64,
    ) -> Result<(), Error> {
        let mut t = self.tables();
        let device = t
            .devices
            .get(device_id)
            .ok_or(Error::NotFound("device"))?
            .clone();
        if let Some(old) = &device.previous_key_set_id {
            for k in t
                .keys
                .values_mut()
                .filter(|k| k.key_set_id.as_deref() == Some(old))
            {
                k.revoked = true;
            }
        }
        for k in keys {
            t.keys.insert(k.key_id.clone(), k.clone());
        }
        if device.key_set_id.is_some() {
            t.bump(Change::Device(device_id.to_owned()));
        }
        if let Some(d) = t.devices.get_mut(device_id) {
            d.previous_key_set_id = d.key_set_id.take();
            d.rotated_at = d.previous_key_set_id.as_ref().map(|_| now);
            d.key_set_id = Some(key_set_id.to_owned());
        }
        Ok(())
    }

    fn revoke_identity(&self, device_id: &str) -> Result<(), Error> {
        let mut t = self.tables();
        t.revoke_identity(device_id)?;
        t.bump(Change::Device(device_id.to_owned()));
        Ok(())
    }

    fn revoke_key_sets(&self, device_id: &str) -> Result<(), Error> {
        let mut t = self.tables();
        if !t.devices.contains_key(device_id) {
            return Err(Error::NotFound("device"));
        }
        for k in t
            .keys
            .values_mut()
            .filter(|k| k.device_id == device_id && k.key_set_id.is_some())
        {
            k.revoked = true;
        }
        if let Some(d) = t.devices.get_mut(device_id) {
            d.key_set_id = None;
            d.previous_key_set_id = None;
            d.rotated_at = None;
        }
        t.bump(Change::Device(device_id.to_owned()));
        Ok(())
    }

    fn key(&self, key_id: &str) -> Result<Option<KeyRecord>, Error> {
        Ok(self.tables().keys.get(key_id).cloned())
    }

    fn key_set(&self, key_set_id: &str) -> Result<Vec<KeyRecord>, Error> {
        let t = self.tables();
        let mut keys: Vec<KeyRecord> = t
            .keys
            .values()
            .filter(|k| k.key_set_id.as_deref() == Some(key_set_id))
            .cloned()
            .collect();
        keys.sort_by_key(|k| KeyKind::SET.iter().position(|s| *s == k.kind));
        Ok(keys)
    }

    fn insert_imported(&self, record: &ImportedRecord) -> Result<(), Error> {
        self.tables()
            .imported
            .insert(record.key_id.clone(), record.clone());
        Ok(())
    }

    fn imported(&self, key_id: &str) -> Result<Option<ImportedRecord>, Error> {
        Ok(self.tables().imported.get(key_id).cloned())
    }

    fn insert_zone(&self, zone: &ZoneRecord) -> Result<(), Error> {
        let mut t = self.tables();
        if t.zones.contains_key(&zone.zone) {
            return Err(Error::Conflict("the zone has a ZMK"));
        }
        t.zones.insert(zone.zone.clone(), zone.clone());
        t.bump(Change::All);
        Ok(())
    }

    fn zone(&self, zone: &str) -> Result<Option<ZoneRecord>, Error> {
        Ok(self.tables().zones.get(zone).cloned())
    }

    fn zone_names(&self) -> Result<Vec<String>, Error> {
        let mut names: Vec<String> = self.tables().zones.keys().cloned().collect();
        names.sort();
        Ok(names)
    }
}

/// The durable store.
///
/// Writes go to one writer thread that commits whatever is queued in one transaction (group
/// commit): each write still returns only after its data is on disk (`synchronous=FULL`), but
/// concurrent writers share the cost of the sync. Each write runs in its own savepoint, so one
/// failing write does not undo its neighbours. Reads use their own connection (WAL lets them run
/// beside the writer) and see only committed data.
pub struct SqliteStore {
    reader: Mutex<Connection>,
    writer: std::sync::mpsc::SyncSender<Job>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

type Write = Box<dyn FnOnce(&Connection) -> Result<(), Error> + Send>;
type Job = (Write, std::sync::mpsc::SyncSender<Result<(), Error>>);

/// Most writes committed together.
const GROUP_COMMIT_MAX: usize = 256;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    zone TEXT NOT NULL,
    identity_key_id TEXT NOT NULL,
    key_set_id TEXT,
    previous_key_set_id TEXT,
    rotated_at INTEGER,
    created_at INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices(device_id),
    key_set_id TEXT,
    kind TEXT NOT NULL,
    kcv BLOB NOT NULL,
    block TEXT NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS keys_by_set ON keys(key_set_id);
CREATE INDEX IF NOT EXISTS keys_by_device ON keys(device_id);
CREATE TABLE IF NOT EXISTS imported_keys (
    key_id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    kcv BLOB NOT NULL,
    block TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS zones (
    zone TEXT PRIMARY KEY,
    kcv BLOB NOT NULL,
    block TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
";

fn connect(path: &Path) -> Result<Connection, Error> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // An acknowledged key set must survive a crash or a power cut.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A destroyed key's block is overwritten in the file, not just unlinked from the tree.
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Creates the store file with mode 0600 if it does not exist yet. Done before SQLite opens it:
/// SQLite would create it with the umask's mode, and a chmod afterwards leaves a moment in which
/// another user can open it and keep the descriptor. SQLite gives its `-wal` and `-shm` files
/// the database file's mode.
fn create_private(path: &Path) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl SqliteStore {
    /// Opens (or creates) the store at `path`. The file is readable by its owner only.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn open(path: &Path) -> Result<Self, Error> {
        create_private(path)?;
        let mut writer_conn = connect(path)?;
        writer_conn.execute_batch(SCHEMA)?;
        writer_conn.execute_batch(admin::SCHEMA)?;
        writer_conn.execute_batch(lmk::SCHEMA)?;
        writer_conn.execute_batch(zmk::SCHEMA)?;
        let reader = connect(path)?;
        let (writer, jobs) = std::sync::mpsc::sync_channel::<Job>(4096);
        std::thread::Builder::new()
            .name("keyd-store-writer".into())
            .spawn(move || write_loop(&mut writer_conn, &jobs))?;
        Ok(Self {
            reader: Mutex::new(reader),
            writer,
        })
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `write` in the next group commit and waits until it is durable.
    fn write(
        &self,
        write: impl FnOnce(&Connection) -> Result<(), Error> + Send + 'static,
    ) -> Result<(), Error> {
        let (reply, done) = std::sync::mpsc::sync_channel(1);
        self.writer
            .send((Box::new(write), reply))
            .map_err(|_| Error::Store("the store writer has stopped".into()))?;
        done.recv()
            .map_err(|_| Error::Store("the store writer has stopped".into()))?
    }
}

impl SqliteStore {
    /// As [`SqliteStore::write`], for a write that also answers something (what it found,
    /// decided or changed inside its transaction).
    fn write_with<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.write(move |conn| {
            let _ = tx.send(write(conn)?);
            Ok(())
        })?;
        rx.recv()
            .map_err(|_| Error::Store("the store writer has stopped".into()))
    }
}

fn write_loop(conn: &mut Connection, jobs: &std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut results: Vec<Result<(), Error>> = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        let committed = (|| -> Result<(), Error> {
            // Immediate: another keyd process (an officer's command) may write too; taking the write
            // lock up front lets busy_timeout wait for it instead of failing a read-then-write.
            let mut tx =
                conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for (write, reply) in batch {
                replies.push(reply);
                let sp = tx.savepoint()?;
                match write(&sp) {
                    Ok(()) => {
                        sp.commit()?;
                        results.push(Ok(()));
                    }
                    Err(e) => {
                        drop(sp); // rolls back this write only
                        results.push(Err(e));
                    }
                }
            }
            tx.commit()?;
            Ok(())
        })();
        match committed {
            Ok(()) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                let why = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(Error::Store(why.clone())));
                }
            }
        }
    }
}

fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyRecord> {
    let kind: String = row.get(3)?;
    let kcv: Vec<u8> = row.get(4)?;
    Ok(KeyRecord {
        key_id: row.get(0)?,
        device_id: row.get(1)?,
        key_set_id: row.get(2)?,
        kind: KeyKind::from_name(&kind).ok_or(rusqlite::Error::InvalidQuery)?,
        kcv: kcv
            .as_slice()
            .try_into()
            .map_err(|_| rusqlite::Error::InvalidQuery)?,
        block: row.get(5)?,
        revoked: row.get(6)?,
        created_at: u64::try_from(row.get::<_, i64>(7)?).unwrap_or(0),
    })
}

const KEY_COLUMNS: &str = "key_id, device_id, key_set_id, kind, kcv, block, revoked, created_at";

fn insert_key(conn: &Connection, k: &KeyRecord) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT INTO keys (key_id, device_id, key_set_id, kind, kcv, block, revoked, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        k.key_id,
        k.device_id,
        k.key_set_id,
        k.kind.name(),
        k.kcv.as_slice(),
        k.block,
        k.revoked,
        i64::try_from(k.created_at).unwrap_or(i64::MAX)
    ])?;
    Ok(())
}

fn seconds(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl KeyStore for SqliteStore {
    fn device(&self, device_id: &str) -> Result<Option<DeviceRecord>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT device_id, zone, identity_key_id, key_set_id, previous_key_set_id, rotated_at, created_at
             FROM devices WHERE device_id = ?1",
        )?;
        Ok(stmt
            .query_row([device_id], |row| {
                Ok(DeviceRecord {
                    device_id: row.get(0)?,
                    zone: row.get(1)?,
                    identity_key_id: row.get(2)?,
                    key_set_id: row.get(3)?,
                    previous_key_set_id: row.get(4)?,
                    rotated_at: row
                        .get::<_, Option<i64>>(5)?
                        .and_then(|v| u64::try_from(v).ok()),
                    created_at: u64::try_from(row.get::<_, i64>(6)?).unwrap_or(0),
                })
            })
            .optional()?)
    }

    fn create_device(&self, device: &DeviceRecord, identity: &KeyRecord) -> Result<(), Error> {
        let (device, identity) = (device.clone(), identity.clone());
        self.write(move |conn| {
            let inserted = conn.execute(
                "INSERT OR IGNORE INTO devices (device_id, zone, identity_key_id, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![device.device_id, device.zone, device.identity_key_id, seconds(device.created_at)],
            )?;
            if inserted == 0 {
                return Err(Error::Conflict("the device exists already"));
            }
            insert_key(conn, &identity)
        })
    }

    fn replace_identity(&self, device_id: &str, identity: &KeyRecord) -> Result<(), Error> {
        let (device_id, identity) = (device_id.to_owned(), identity.clone());
        self.write(move |conn| {
            conn.execute(
                "UPDATE keys SET revoked = 1 WHERE key_id = (SELECT identity_key_id FROM devices WHERE device_id = ?1)",
                [&device_id],
            )?;
            let n = conn.execute(
                "UPDATE devices SET identity_key_id = ?2 WHERE device_id = ?1",
                params![device_id, identity.key_id],
            )?;
            if n == 0 {
                return Err(Error::NotFound("device"));
            }
            insert_key(conn, &identity)?;
            admin::bump_version(conn, &Change::Device(device_id))
        })
    }

    fn add_key_set(
        &self,
        device_id: &str,
        key_set_id: &str,
        keys: &[KeyRecord],
        now: u64,
    ) -> Result<(), Error> {
        let (device_id, key_set_id, keys) =
            (device_id.to_owned(), key_set_id.to_owned(), keys.to_vec());
        self.write(move |conn| {
            let rotation: bool = conn
                .query_row(
                    "SELECT key_set_id IS NOT NULL FROM devices WHERE device_id = ?1",
                    [&device_id],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(false);
            conn.execute(
                "UPDATE keys SET revoked = 1 WHERE key_set_id = (SELECT previous_key_set_id FROM devices WHERE device_id = ?1)",
                [&device_id],
            )?;
            let n = conn.execute(
                "UPDATE devices SET previous_key_set_id = key_set_id,
                     rotated_at = CASE WHEN key_set_id IS NULL THEN NULL ELSE ?3 END,
                     key_set_id = ?2
                 WHERE device_id = ?1",
                params![device_id, key_set_id, seconds(now)],
            )?;
            if n == 0 {
                return Err(Error::NotFound("device"));
            }
            keys.iter().try_for_each(|k| insert_key(conn, k))?;
            if rotation {
                // The cached keys of the old current set now expire, in every process.
                admin::bump_version(conn, &Change::Device(device_id))?;
            }
            Ok(())
        })
    }

    fn revoke_identity(&self, device_id: &str) -> Result<(), Error> {
        let device_id = device_id.to_owned();
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE keys SET revoked = 1 WHERE key_id = (SELECT identity_key_id FROM devices WHERE device_id = ?1)",
                [&device_id],
            )?;
            if n == 0 {
                return Err(Error::NotFound("device"));
            }
            admin::bump_version(conn, &Change::Device(device_id))
        })
    }

    fn revoke_key_sets(&self, device_id: &str) -> Result<(), Error> {
        let device_id = device_id.to_owned();
        self.write(move |conn| {
            let n = conn.execute(
                "UPDATE devices SET key_set_id = NULL, previous_key_set_id = NULL, rotated_at = NULL WHERE device_id = ?1",
                [&device_id],
            )?;
            if n == 0 {
                return Err(Error::NotFound("device"));
            }
            conn.execute("UPDATE keys SET revoked = 1 WHERE device_id = ?1 AND key_set_id IS NOT NULL", [&device_id])?;
            admin::bump_version(conn, &Change::Device(device_id))
        })
    }

    fn key(&self, key_id: &str) -> Result<Option<KeyRecord>, Error> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE key_id = ?1"))?;
        Ok(stmt.query_row([key_id], key_from_row).optional()?)
    }

    fn key_set(&self, key_set_id: &str) -> Result<Vec<KeyRecord>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {KEY_COLUMNS} FROM keys WHERE key_set_id = ?1"
        ))?;
        let mut keys = stmt
            .query_map([key_set_id], key_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        keys.sort_by_key(|k| KeyKind::SET.iter().position(|s| *s == k.kind));
        Ok(keys)
    }

    fn insert_imported(&self, record: &ImportedRecord) -> Result<(), Error> {
        let r = record.clone();
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO imported_keys (key_id, label, kcv, block, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![r.key_id, r.label, r.kcv.as_slice(), r.block, seconds(r.created_at)],
            )?;
            Ok(())
        })
    }

    fn imported(&self, key_id: &str) -> Result<Option<ImportedRecord>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached(
            "SELECT key_id, label, kcv, block, created_at FROM imported_keys WHERE key_id = ?1",
        )?;
        Ok(stmt
            .query_row([key_id], |row| {
                let kcv: Vec<u8> = row.get(2)?;
                Ok(ImportedRecord {
                    key_id: row.get(0)?,
                    label: row.get(1)?,
                    kcv: kcv
                        .as_slice()
                        .try_into()
                        .map_err(|_| rusqlite::Error::InvalidQuery)?,
                    block: row.get(3)?,
                    created_at: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
                })
            })
            .optional()?)
    }

    fn insert_zone(&self, zone: &ZoneRecord) -> Result<(), Error> {
        let z = zone.clone();
        self.write(move |conn| {
            let n = conn.execute(
                "INSERT OR IGNORE INTO zones (zone, kcv, block, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![z.zone, z.kcv.as_slice(), z.block, seconds(z.created_at)],
            )?;
            if n == 0 {
                return Err(Error::Conflict("the zone has a ZMK"));
            }
            admin::bump_version(conn, &Change::All)
        })
    }

    fn zone(&self, zone: &str) -> Result<Option<ZoneRecord>, Error> {
        let conn = self.reader();
        let mut stmt =
            conn.prepare_cached("SELECT zone, kcv, block, created_at FROM zones WHERE zone = ?1")?;
        Ok(stmt
            .query_row([zone], |row| {
                let kcv: Vec<u8> = row.get(1)?;
                Ok(ZoneRecord {
                    zone: row.get(0)?,
                    kcv: kcv
                        .as_slice()
                        .try_into()
                        .map_err(|_| rusqlite::Error::InvalidQuery)?,
                    block: row.get(2)?,
                    created_at: u64::try_from(row.get::<_, i64>(3)?).unwrap_or(0),
                })
            })
            .optional()?)
    }
    fn zone_names(&self) -> Result<Vec<String>, Error> {
        let conn = self.reader();
        let mut stmt = conn.prepare_cached("SELECT zone FROM zones ORDER BY zone")?;
        Ok(stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, set: Option<&str>, kind: KeyKind) -> KeyRecord {
        KeyRecord {
            key_id: id.into(),
            device_id: "POS-00000001".into(),
            key_set_id: set.map(Into::into),
            kind,
            kcv: [1, 2, 3],
            block: format!("block-of-{id}"),
            revoked: false,
            created_at: 10,
        }
    }

    fn exercise(store: &dyn KeyStore) {
        let device = DeviceRecord {
            device_id: "POS-00000001".into(),
            zone: "z1".into(),
            identity_key_id: "idk-1".into(),
            key_set_id: None,
            previous_key_set_id: None,
            rotated_at: None,
            created_at: 10,
        };
        store
            .create_device(&device, &key("idk-1", None, KeyKind::Identity))
            .unwrap();
        assert!(matches!(
            store.create_device(&device, &key("idk-x", None, KeyKind::Identity)),
            Err(Error::Conflict(_))
        ));
        assert_eq!(store.device("POS-00000001").unwrap().unwrap(), device);
        assert_eq!(store.device("POS-00000002").unwrap(), None);

        let v0 = store.state_version().unwrap();
        store
            .replace_identity("POS-00000001", &key("idk-2", None, KeyKind::Identity))
            .unwrap();
        assert!(store.key("idk-1").unwrap().unwrap().revoked);
        let v1 = store.state_version().unwrap();
        assert!(v1 > v0, "a replaced identity moves the state version");
        assert_eq!(
            store.changes_since(v0).unwrap(),
            Some((v1, vec![Change::Device("POS-00000001".into())])),
            "and says which device"
        );
        assert_eq!(
            store
                .device("POS-00000001")
                .unwrap()
                .unwrap()
                .identity_key_id,
            "idk-2"
        );
        assert!(matches!(
            store.replace_identity("POS-0000000F", &key("idk-3", None, KeyKind::Identity)),
            Err(Error::NotFound(_))
        ));

        let set = |n: &str| -> Vec<KeyRecord> {
            KeyKind::SET
                .iter()
                .map(|k| key(&format!("{}-{n}", k.name()), Some(n), *k))
                .collect()
        };
        store
            .add_key_set("POS-00000001", "ks-a", &set("ks-a"), 100)
            .unwrap();
        assert_eq!(
            store.state_version().unwrap(),
            v1,
            "a first key set changes no cached key"
        );
        let d = store.device("POS-00000001").unwrap().unwrap();
        assert_eq!(
            (
                d.key_set_id.as_deref(),
                d.previous_key_set_id.as_deref(),
                d.rotated_at
            ),
            (Some("ks-a"), None, None)
        );
        store
            .add_key_set("POS-00000001", "ks-b", &set("ks-b"), 200)
            .unwrap();
        let v2 = store.state_version().unwrap();
        assert!(v2 > v1, "a rotation moves the state version");
        let d = store.device("POS-00000001").unwrap().unwrap();
        assert_eq!(
            (
                d.key_set_id.as_deref(),
                d.previous_key_set_id.as_deref(),
                d.rotated_at
            ),
            (Some("ks-b"), Some("ks-a"), Some(200))
        );
        assert!(!store.key("mac-ks-a").unwrap().unwrap().revoked);
        store
            .add_key_set("POS-00000001", "ks-c", &set("ks-c"), 300)
            .unwrap();
        assert!(
            store.key("mac-ks-a").unwrap().unwrap().revoked,
            "two rotations back is revoked"
        );
        assert!(!store.key("mac-ks-b").unwrap().unwrap().revoked);
        let keys = store.key_set("ks-c").unwrap();
        assert_eq!(
            keys.iter().map(|k| k.kind).collect::<Vec<_>>(),
            KeyKind::SET
        );

        let imported = ImportedRecord {
            key_id: "imp-1".into(),
            label: "partner BDK".into(),
            kcv: [9, 9, 9],
            block: "b".into(),
            created_at: 5,
        };
        store.insert_imported(&imported).unwrap();
        assert_eq!(store.imported("imp-1").unwrap(), Some(imported));
        assert_eq!(store.imported("imp-2").unwrap(), None);
        let v3 = store.state_version().unwrap();
        store.revoke_key_sets("POS-00000001").unwrap();
        assert!(store.key("msk-ks-c").unwrap().unwrap().revoked);
        let v4 = store.state_version().unwrap();
        assert!(v4 > v3, "a revocation moves the state version");
        store.revoke_identity("POS-00000001").unwrap();
        assert!(store.key("idk-2").unwrap().unwrap().revoked);
        assert!(store.state_version().unwrap() > v4);
        store
            .replace_identity("POS-00000001", &key("idk-2b", None, KeyKind::Identity))
            .unwrap();

        let zone = ZoneRecord {
            zone: "z1".into(),
            kcv: [7, 7, 7],
            block: "zone-block".into(),
            created_at: 3,
        };
        let v5 = store.state_version().unwrap();
        store.insert_zone(&zone).unwrap();
        assert!(
            store.state_version().unwrap() > v5,
            "a new zone is announced"
        );
        assert!(matches!(store.insert_zone(&zone), Err(Error::Conflict(_))));
        assert_eq!(store.zone("z1").unwrap(), Some(zone));
        assert_eq!(store.zone_names().unwrap(), vec!["z1".to_owned()]);
        assert_eq!(store.zone("z2").unwrap(), None);
        assert!(matches!(
            store.revoke_identity("POS-0000000F"),
            Err(Error::NotFound(_))
        ));
        assert!(
            !store.key("idk-2b").unwrap().unwrap().revoked,
            "identity keys survive"
        );
        assert_eq!(
            store.device("POS-00000001").unwrap().unwrap().key_set_id,
            None
        );
    }

    #[test]
    fn memory_store() {
        let store = MemoryStore::new();
        exercise(&store);
        admin::exercise(&store);
        lmk::exercise(&store);
        zmk::exercise(&store);
    }

    #[test]
    fn concurrent_writes_share_commits_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SqliteStore::open(&dir.path().join("keys.db")).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = std::sync::Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..20 {
                        let id = format!("POS-{:08X}", t * 100 + i);
                        let device = DeviceRecord {
                            device_id: id.clone(),
                            zone: "z".into(),
                            identity_key_id: format!("idk-{id}"),
                            key_set_id: None,
                            previous_key_set_id: None,
                            rotated_at: None,
                            created_at: 1,
                        };
                        let identity = KeyRecord {
                            key_id: format!("idk-{id}"),
                            device_id: id.clone(),
                            ..key("x", None, KeyKind::Identity)
                        };
                        store.create_device(&device, &identity).unwrap();
                        // A failing write in the same batch leaves the others alone.
                        assert!(matches!(
                            store.create_device(&device, &identity),
                            Err(Error::Conflict(_))
                        ));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for t in 0..8 {
            for i in 0..20 {
                assert!(
                    store
                        .device(&format!("POS-{:08X}", t * 100 + i))
                        .unwrap()
                        .is_some()
                );
            }
        }
    }

    #[test]
    fn sqlite_store_and_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.db");
        let store = SqliteStore::open(&path).unwrap();
        // The write-ahead log holds key blocks too, and SQLite creates it (on the first write,
        // inside `open`) with the mode the database file had then: that must already be 0600,
        // whatever the umask (the common 022 would make it world-readable).
        {
            use std::os::unix::fs::PermissionsExt;
            for file in ["keys.db", "keys.db-wal", "keys.db-shm"] {
                let mode = std::fs::metadata(dir.path().join(file))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o077, 0, "{file} is {mode:o}");
            }
        }
        exercise(&store);
        admin::exercise(&store);
        lmk::exercise(&store);
        zmk::exercise(&store);
        drop(store);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Reopening finds everything.
        let again = SqliteStore::open(&path).unwrap();
        assert!(again.key("idk-2").unwrap().is_some());
    }

    /// A PostgreSQL key store on a throw-away cluster (`None`: PostgreSQL is not installed and
    /// the test is skipped, see `pgcluster`), with the cluster to keep alive.
    fn postgres(name: &str) -> Option<(pgcluster::Cluster, PgOptions)> {
        let cluster = pgcluster::Cluster::for_tests(name).unwrap()?;
        cluster.create_database("keys").unwrap();
        let options = PgOptions {
            url: cluster.url("keys"),
            password: Some(zeroize::Zeroizing::new(cluster.password().to_owned())),
            ca_file: None,
            pool_size: 4,
        };
        Some((cluster, options))
    }

    #[test]
    fn postgres_store() {
        let Some((_cluster, options)) = postgres("postgres_store") else {
            return;
        };
        let store = PgKeyStore::open(&options).unwrap();
        exercise(&store);
        admin::exercise(&store);
        lmk::exercise(&store);
        zmk::exercise(&store);
        drop(store);
        // Reopening (migrations already applied) finds everything.
        let again = PgKeyStore::open(&options).unwrap();
        assert!(again.key("idk-2").unwrap().is_some());
        assert_eq!(again.officers().unwrap().len(), 1);
    }

    #[test]
    fn postgres_store_refuses_a_password_in_the_url_and_tls_off_for_a_remote_host() {
        let options = |url: &str| PgOptions {
            url: url.into(),
            password: None,
            ca_file: None,
            pool_size: 1,
        };
        let err = PgKeyStore::open(&options("postgres://keyd:secret@127.0.0.1/keys"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds a password"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        let err = PgKeyStore::open(&options("postgres://keyd@db.example/keys"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TLS is off"), "{err}");
    }

    /// TLS to the server through `pgtls`: verify-full with the CA that signed the server's
    /// certificate connects; the leaf as its own CA, or a name the certificate does not hold,
    /// does not. (The certificates are the API's test set, `api/tests/data/README.md`.)
    #[test]
    fn postgres_store_over_tls_verifies_the_server() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../api/tests/data");
        let Some(cluster) = pgcluster::Cluster::for_tests_with_tls(
            "postgres_store_over_tls_verifies_the_server",
            &data.join("test-cert.pem"),
            &data.join("test-key.pem"),
        )
        .unwrap() else {
            return;
        };
        cluster.create_database("keys").unwrap();
        let options = |url: String, ca: &str| PgOptions {
            url,
            password: Some(zeroize::Zeroizing::new(cluster.password().to_owned())),
            ca_file: Some(data.join(ca)),
            pool_size: 1,
        };
        let store = PgKeyStore::open(&options(cluster.url("keys"), "ca-cert.pem")).unwrap();
        store.bump_state_version().unwrap();
        let ssl = cluster
            .psql(
                "keys",
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
                 WHERE s.ssl AND a.application_name = 'keyd'",
            )
            .unwrap();
        assert_ne!(ssl, "0", "the store's connections use TLS");
        let wrong = PgKeyStore::open(&options(cluster.url("keys"), "test-cert.pem"));
        assert!(matches!(wrong, Err(Error::Store(_))), "{wrong:?}");
        let url = format!(
            "postgres://{}@db.example.test:{}/keys?hostaddr=127.0.0.1",
            pgcluster::SUPERUSER,
            cluster.port()
        );
        let wrong = PgKeyStore::open(&options(url, "ca-cert.pem"));
        assert!(matches!(wrong, Err(Error::Store(_))), "{wrong:?}");
        let err = PgKeyStore::open(&options(cluster.url("keys"), "missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("database CA file"), "{err}");
    }

    #[test]
    fn postgres_two_nodes_racing_stay_consistent() {
        let Some((_cluster, options)) = postgres("postgres_two_nodes_racing_stay_consistent")
        else {
            return;
        };
        // Two stores on one database: two keyd nodes.
        let nodes = [
            std::sync::Arc::new(PgKeyStore::open(&options).unwrap()),
            std::sync::Arc::new(PgKeyStore::open(&options).unwrap()),
        ];
        let on_both = |f: &(dyn Fn(usize, &PgKeyStore) + Sync)| {
            std::thread::scope(|s| {
                for (i, node) in nodes.iter().enumerate() {
                    for _ in 0..4 {
                        s.spawn(move || f(i, node));
                    }
                }
            });
        };
        nodes[0]
            .insert_officer(&OfficerRecord {
                name: "alice".into(),
                salt: [1; 16],
                iterations: 1000,
                hash: [2; 32],
                failures: 0,
                locked_until: None,
                created_at: 1,
                last_login: None,
            })
            .unwrap();

        // Logins: 8 guesses at once on two nodes with 3 allowed: exactly 3 go on to the
        // password check, the rest find the account locked.
        let allowed = std::sync::atomic::AtomicUsize::new(0);
        on_both(&|_, node| {
            if node.begin_login("alice", 3, 999, 10).unwrap() == LoginGate::Allowed {
                allowed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        assert_eq!(allowed.into_inner(), 3, "the lockout counts across nodes");
        assert_eq!(
            nodes[1].begin_login("alice", 3, 999, 10).unwrap(),
            LoginGate::Locked(999)
        );

        // Approvals: a pair taken on both nodes at once allows exactly one action.
        for (i, officer) in ["alice", "bob"].iter().enumerate() {
            nodes[i]
                .add_approval(&Approval {
                    action: "destroy".into(),
                    subject: "k".into(),
                    officer: (*officer).into(),
                    at: 100,
                })
                .unwrap();
        }
        let granted = std::sync::atomic::AtomicUsize::new(0);
        on_both(&|_, node| {
            if node.take_approvals("destroy", "k", 50, 2).unwrap().len() >= 2 {
                granted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        assert_eq!(
            granted.into_inner(),
            1,
            "approvals are used up exactly once"
        );

        // Key states: from `active` to `disabled` on both nodes at once succeeds once; the
        // others see the state the winner left.
        let device = DeviceRecord {
            device_id: "POS-00000001".into(),
            zone: "z1".into(),
            identity_key_id: "idk-1".into(),
            key_set_id: None,
            previous_key_set_id: None,
            rotated_at: None,
            created_at: 10,
        };
        nodes[0]
            .create_device(&device, &key("idk-1", None, KeyKind::Identity))
            .unwrap();
        let v0 = nodes[1].state_version().unwrap();
        let changed = std::sync::atomic::AtomicUsize::new(0);
        on_both(&|i, node| {
            let to = if i == 0 {
                KeyState::Disabled
            } else {
                KeyState::Destroying { after: 5 }
            };
            match node.change_key_state("idk-1", &["active"], to) {
                Ok(()) => {
                    changed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Err(Error::Conflict(_)) => {}
                Err(e) => panic!("{e}"),
            }
        });
        assert_eq!(
            changed.into_inner(),
            1,
            "the `from` check holds across nodes"
        );
        assert_eq!(nodes[0].state_version().unwrap(), v0 + 1);

        // Devices: one create of a device id wins.
        let created = std::sync::atomic::AtomicUsize::new(0);
        on_both(&|_, node| {
            let device = DeviceRecord {
                device_id: "POS-00000002".into(),
                ..device.clone()
            };
            let identity = KeyRecord {
                device_id: "POS-00000002".into(),
                key_id: format!("idk-2-{:?}", std::thread::current().id()),
                ..key("x", None, KeyKind::Identity)
            };
            match node.create_device(&device, &identity) {
                Ok(()) => {
                    created.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                Err(Error::Conflict(_)) => {}
                Err(e) => panic!("{e}"),
            }
        });
        assert_eq!(created.into_inner(), 1);

        // Key sets: eight rotations racing on two nodes leave a consistent chain: current and
        // previous are two of them, every older one revoked, the version moved by each rotation.
        let set = |n: &str| -> Vec<KeyRecord> {
            KeyKind::SET
                .iter()
                .map(|k| key(&format!("{}-{n}", k.name()), Some(n), *k))
                .collect()
        };
        nodes[0]
            .add_key_set("POS-00000001", "ks-0", &set("ks-0"), 1)
            .unwrap();
        let v1 = nodes[0].state_version().unwrap();
        let counter = std::sync::atomic::AtomicUsize::new(1);
        on_both(&|_, node| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let id = format!("ks-{n}");
            node.add_key_set("POS-00000001", &id, &set(&id), 2).unwrap();
        });
        let d = nodes[1].device("POS-00000001").unwrap().unwrap();
        let (current, previous) = (d.key_set_id.unwrap(), d.previous_key_set_id.unwrap());
        for n in 0..9 {
            let id = format!("ks-{n}");
            let revoked = nodes[1].key(&format!("mac-{id}")).unwrap().unwrap().revoked;
            assert_eq!(revoked, id != current && id != previous, "{id}");
        }
        assert_eq!(nodes[1].state_version().unwrap(), v1 + 8);

        // Erasure: each due key is erased (and reported) by one node.
        let erased = Mutex::new(Vec::new());
        on_both(&|_, node| {
            erased
                .lock()
                .unwrap()
                .extend(node.purge_destroyed(10).unwrap());
        });
        let erased = erased.into_inner().unwrap();
        let destroyed = nodes[0].key_state("idk-1").unwrap() == KeyState::Destroyed;
        assert_eq!(erased.len(), usize::from(destroyed), "{erased:?}");
    }
}
