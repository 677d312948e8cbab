//! The API's data store: a small, generic, durable record store.
//!
//! Everything the API keeps (resellers, merchants, devices, users, charges...) is a JSON record
//! addressed by `(kind, id)`. The store does not look inside bodies: callers serialise, the store
//! keeps bytes. On top of records it offers exactly three things, because that is all the
//! endpoints need and every extra feature would have to be implemented twice:
//!
//! * **secondary indexes** `(name, key) -> records`, listed newest first with a `seq` cursor, for
//!   paginated listings ("merchants of reseller R");
//! * **unique claims** `(namespace, value) -> owner`, for values that must be unique across
//!   records (device serial numbers, portal host names);
//! * **atomic, durable batches** with optimistic preconditions ([`Write::Expect`]), so that a
//!   read-modify-write is safe without holding locks across awaits.
//!
//! The narrow surface is deliberate: [`MemoryStore`] (the twin used by unit tests) and
//! [`SqliteStore`] (production) implement the same semantics, and the contract tests at the end
//! of this file run one test body against both.
//!
//! # Batch semantics
//!
//! A batch passed to [`Store::commit`] behaves as if its writes ran one after the other, in
//! order, inside one transaction: a later write sees the effects of earlier ones (an `Expect`
//! after a `Put` of the same record sees the new body; a `Release` followed by a `Claim` of the
//! same value transfers it). If any `Expect` or `Claim` fails, nothing of the batch is applied.
//! Batches are serialised: one batch never sees half of another.

pub mod db;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::OpenOptions;
use std::future::Future;
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

/// A record as stored: its creation sequence number and its JSON body bytes.
///
/// `seq` is global and strictly increasing, assigned by the store when the record is first put
/// and kept when the record is replaced. It orders listings (newest first) and serves as the
/// pagination cursor, which is why it is the store's job and not the caller's: only the store
/// can hand out numbers that are unique and increasing across concurrent writers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Creation sequence number (see the type documentation).
    pub seq: u64,
    /// The record's body, as given to [`Write::Put`].
    pub body: Vec<u8>,
}

/// One write in a batch given to [`Store::commit`].
///
/// Writes take effect in order within the batch; the batch is applied entirely or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Insert or replace record `(kind, id)`.
    ///
    /// A NEW record gets the next seq and the given index entries `(index name, key)`.
    /// Replacing keeps the record's seq and its existing index entries (the `indexes` field is
    /// ignored on replace): index keys are things that define a record's place (its reseller,
    /// its merchant) and never change, and keeping the seq keeps cursors stable.
    Put {
        /// Record kind ("merchant", "device"...).
        kind: String,
        /// Record id, unique within its kind.
        id: String,
        /// The body (JSON bytes; the store does not parse it).
        body: Vec<u8>,
        /// Index entries `(index name, key)` for a new record.
        indexes: Vec<(String, String)>,
    },
    /// Remove the record and its index entries (no error if absent).
    Delete {
        /// Record kind.
        kind: String,
        /// Record id.
        id: String,
    },
    /// Claim a unique value in a namespace for an owner (e.g. ns "device_id" or "portal_host").
    ///
    /// Conflict if the value is held by a different owner; no-op if held by the same owner, so
    /// that retrying a request is harmless.
    Claim {
        /// The namespace in which the value must be unique.
        ns: String,
        /// The value (may be personal data: never logged).
        value: String,
        /// Who holds it (typically the id of the record that uses the value).
        owner: String,
    },
    /// Give up a unique value (no error if absent).
    Release {
        /// The namespace.
        ns: String,
        /// The value.
        value: String,
    },
    /// Precondition: the record `(kind, id)` must currently have exactly this body (or be
    /// absent when `body` is `None`).
    ///
    /// Lets callers do optimistic read-modify-write: read, compute, then commit the new body
    /// together with an `Expect` of the body they read. A mismatch is a
    /// [`StoreError::Conflict`] and the caller re-reads and retries (or reports the conflict).
    Expect {
        /// Record kind.
        kind: String,
        /// Record id.
        id: String,
        /// The exact body expected, or `None` for "must not exist".
        body: Option<Vec<u8>>,
    },
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A `Claim` on a value held by someone else, or a failed `Expect`.
    ///
    /// Carries the namespace (or `"expect:<kind>"`), never the value: values can be personal
    /// data and errors end up in logs.
    Conflict(String),
    /// The store cannot be read or written (I/O, corruption, writer thread gone).
    ///
    /// The message is for logs and holds no record contents.
    Unavailable(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Conflict(what) => write!(f, "store conflict on {what}"),
            Self::Unavailable(msg) => write!(f, "store unavailable: {msg}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// A pending durable commit.
///
/// The batch is queued when [`Store::commit`] is called; the future only reports the outcome.
/// Dropping it does not cancel the write (a write that may or may not have happened is worse
/// than one that happened unobserved, and the store cannot un-queue it atomically anyway).
pub type Commit = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// The store interface shared by [`MemoryStore`] and [`SqliteStore`].
///
/// Reads are synchronous because they are short indexed lookups; calling them from async code
/// is intended. Writes are asynchronous because durability (fsync) takes milliseconds and is
/// shared between concurrent callers (group commit).
pub trait Store: Send + Sync + fmt::Debug {
    /// The record `(kind, id)`, if present.
    fn get(&self, kind: &str, id: &str) -> Result<Option<Stored>, StoreError>;

    /// Who holds `value` in `ns`.
    fn owner(&self, ns: &str, value: &str) -> Result<Option<String>, StoreError>;

    /// Records in index `(index, key)`, newest first (descending seq), only those with
    /// `seq < before` when given, at most `limit`. Returns `(id, Stored)` pairs.
    ///
    /// Used for cursor pagination: the next page is asked with `before` = the seq of the last
    /// record of the previous page, which stays correct while records are added (they get
    /// larger seqs) or removed. One index may hold records of several kinds.
    fn list(
        &self,
        index: &str,
        key: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, StoreError>;

    /// Records of one kind by descending id, only ids `< before` when given, at most `limit`.
    ///
    /// With ids that start with their creation time this reads the newest records first, which
    /// is what crash recovery needs (the work a crash interrupted is the newest) without an
    /// index entry per record.
    fn scan_back(
        &self,
        kind: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, StoreError>;

    /// Applies all writes atomically and durably.
    ///
    /// All or nothing: every `Expect` and `Claim` is checked inside the same transaction before
    /// anything is applied. Durable: the returned future resolves `Ok` only after the data is on
    /// disk (fsync'd), so an acknowledged write survives kill -9.
    fn commit(&self, writes: Vec<Write>) -> Commit;

    /// Cheap liveness check for `/health/ready`.
    fn check(&self) -> Result<(), StoreError>;
}

// ---------------------------------------------------------------------------------------------
// In-memory twin
// ---------------------------------------------------------------------------------------------

/// One record of the memory store, with the index entries it was created with (so a delete
/// can remove them without scanning every index).
#[derive(Clone)]
struct MemRecord {
    seq: u64,
    body: Vec<u8>,
    indexes: Vec<(String, String)>,
}

/// The entries of one index key: seq -> (kind, id) of the record.
type IndexEntries = BTreeMap<u64, (String, String)>;

/// The state of the memory store. Nested maps so lookups can borrow `&str` keys.
#[derive(Default)]
struct MemState {
    /// kind -> id -> record.
    records: BTreeMap<String, BTreeMap<String, MemRecord>>,
    /// index name -> key -> seq -> (kind, id).
    idx: BTreeMap<String, BTreeMap<String, IndexEntries>>,
    /// ns -> value -> owner.
    uniq: BTreeMap<String, BTreeMap<String, String>>,
    /// Last seq handed out.
    seq: u64,
}

impl MemState {
    fn record(&self, kind: &str, id: &str) -> Option<&MemRecord> {
        self.records.get(kind).and_then(|m| m.get(id))
    }

    fn owner(&self, ns: &str, value: &str) -> Option<&str> {
        self.uniq
            .get(ns)
            .and_then(|m| m.get(value))
            .map(String::as_str)
    }

    /// Dry-runs a batch in order against an overlay of the state, without touching it, and
    /// reports the first failing `Expect` or `Claim`. Bodies and owners written earlier in the
    /// batch are visible to later checks, as in the SQLite store where the batch really runs
    /// inside one savepoint.
    fn check(&self, writes: &[Write]) -> Result<(), StoreError> {
        let mut records: HashMap<(&str, &str), Option<&[u8]>> = HashMap::new();
        let mut uniq: HashMap<(&str, &str), Option<&str>> = HashMap::new();
        for write in writes {
            match write {
                Write::Put { kind, id, body, .. } => {
                    records.insert((kind, id), Some(body));
                }
                Write::Delete { kind, id } => {
                    records.insert((kind, id), None);
                }
                Write::Claim { ns, value, owner } => {
                    let current = match uniq.get(&(ns.as_str(), value.as_str())) {
                        Some(current) => *current,
                        None => self.owner(ns, value),
                    };
                    match current {
                        Some(holder) if holder != owner => {
                            return Err(StoreError::Conflict(ns.clone()));
                        }
                        Some(_) => {}
                        None => {
                            uniq.insert((ns, value), Some(owner));
                        }
                    }
                }
                Write::Release { ns, value } => {
                    uniq.insert((ns, value), None);
                }
                Write::Expect { kind, id, body } => {
                    let current = match records.get(&(kind.as_str(), id.as_str())) {
                        Some(current) => *current,
                        None => self.record(kind, id).map(|r| r.body.as_slice()),
                    };
                    if current != body.as_deref() {
                        return Err(StoreError::Conflict(format!("expect:{kind}")));
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies a batch that [`MemState::check`] accepted. Cannot fail.
    fn apply(&mut self, writes: Vec<Write>) {
        for write in writes {
            match write {
                Write::Put {
                    kind,
                    id,
                    body,
                    indexes,
                } => self.put(kind, id, body, indexes),
                Write::Delete { kind, id } => self.delete(&kind, &id),
                Write::Claim { ns, value, owner } => {
                    let holders = self.uniq.entry(ns).or_default();
                    holders.entry(value).or_insert(owner);
                }
                Write::Release { ns, value } => {
                    if let Some(holders) = self.uniq.get_mut(&ns) {
                        holders.remove(&value);
                        if holders.is_empty() {
                            self.uniq.remove(&ns);
                        }
                    }
                }
                Write::Expect { .. } => {}
            }
        }
    }

    fn put(&mut self, kind: String, id: String, body: Vec<u8>, indexes: Vec<(String, String)>) {
        if let Some(existing) = self.records.get_mut(&kind).and_then(|m| m.get_mut(&id)) {
            existing.body = body;
            return;
        }
        self.seq = self.seq.saturating_add(1);
        let seq = self.seq;
        for (name, key) in &indexes {
            let entries = self
                .idx
                .entry(name.clone())
                .or_default()
                .entry(key.clone())
                .or_default();
            entries.insert(seq, (kind.clone(), id.clone()));
        }
        let record = MemRecord { seq, body, indexes };
        self.records.entry(kind).or_default().insert(id, record);
    }

    fn delete(&mut self, kind: &str, id: &str) {
        let Some(of_kind) = self.records.get_mut(kind) else {
            return;
        };
        let Some(record) = of_kind.remove(id) else {
            return;
        };
        if of_kind.is_empty() {
            self.records.remove(kind);
        }
        for (name, key) in &record.indexes {
            let Some(keys) = self.idx.get_mut(name) else {
                continue;
            };
            if let Some(entries) = keys.get_mut(key) {
                entries.remove(&record.seq);
                if entries.is_empty() {
                    keys.remove(key);
                }
            }
            if keys.is_empty() {
                self.idx.remove(name);
            }
        }
    }
}

/// The in-memory twin of [`SqliteStore`], for unit tests of the layers above the store.
///
/// Same semantics exactly (the contract tests run against both); nothing is durable. A batch is
/// first checked in full against the current state, then applied, all under one lock, which
/// gives the same all-or-nothing behaviour as the SQLite savepoints.
pub struct MemoryStore {
    state: Mutex<MemState>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            state: Mutex::new(MemState::default()),
        }
    }

    fn lock(&self) -> Result<MutexGuard<'_, MemState>, StoreError> {
        self.state
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".to_owned()))
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts only: the records may hold personal data and `Debug` output ends up in logs.
impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("MemoryStore");
        match self.state.try_lock() {
            Ok(state) => {
                let records: usize = state.records.values().map(BTreeMap::len).sum();
                d.field("records", &records).field("seq", &state.seq)
            }
            Err(_) => d.field("state", &"<locked>"),
        };
        d.finish()
    }
}

impl Store for MemoryStore {
    fn get(&self, kind: &str, id: &str) -> Result<Option<Stored>, StoreError> {
        let state = self.lock()?;
        Ok(state.record(kind, id).map(|r| Stored {
            seq: r.seq,
            body: r.body.clone(),
        }))
    }

    fn owner(&self, ns: &str, value: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lock()?.owner(ns, value).map(str::to_owned))
    }

    fn list(
        &self,
        index: &str,
        key: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, StoreError> {
        let state = self.lock()?;
        let Some(entries) = state.idx.get(index).and_then(|keys| keys.get(key)) else {
            return Ok(Vec::new());
        };
        let range = match before {
            Some(before) => entries.range(..before),
            None => entries.range(..),
        };
        Ok(range
            .rev()
            .filter_map(|(_, (kind, id))| {
                let r = state.record(kind, id)?;
                Some((
                    id.clone(),
                    Stored {
                        seq: r.seq,
                        body: r.body.clone(),
                    },
                ))
            })
            .take(limit)
            .collect())
    }

    fn scan_back(
        &self,
        kind: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, StoreError> {
        let state = self.lock()?;
        let Some(records) = state.records.get(kind) else {
            return Ok(Vec::new());
        };
        use std::ops::Bound;
        let upper = before.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(records
            .range::<str, _>((Bound::Unbounded, upper))
            .rev()
            .take(limit)
            .map(|(id, r)| {
                (
                    id.clone(),
                    Stored {
                        seq: r.seq,
                        body: r.body.clone(),
                    },
                )
            })
            .collect())
    }

    fn commit(&self, writes: Vec<Write>) -> Commit {
        let result = self.lock().and_then(|mut state| {
            state.check(&writes)?;
            state.apply(writes);
            Ok(())
        });
        Box::pin(std::future::ready(result))
    }

    fn check(&self) -> Result<(), StoreError> {
        self.lock().map(drop)
    }
}

// ---------------------------------------------------------------------------------------------
// SQLite
// ---------------------------------------------------------------------------------------------

/// Schema migrations, applied in order, each in its own transaction; migration `i` (0-based)
/// is schema version `i + 1`. Append only: never edit an applied migration.
///
/// Tables are `WITHOUT ROWID` because every access is by primary key prefix and the rows are
/// small (except bodies), so clustering on the key saves one B-tree lookup per read.
/// `idx` carries the record's kind so one index can list records of several kinds, and has a
/// secondary index on `(kind, id)` so deleting a record finds its index rows. `counter` holds
/// the last seq handed out; it is updated inside each job's savepoint, so a rolled-back job
/// does not leave the counter ahead of or behind the records.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE records (
        kind TEXT NOT NULL,
        id   TEXT NOT NULL,
        seq  INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (kind, id)
    ) WITHOUT ROWID;
    CREATE TABLE idx (
        name TEXT NOT NULL,
        key  TEXT NOT NULL,
        seq  INTEGER NOT NULL,
        kind TEXT NOT NULL,
        id   TEXT NOT NULL,
        PRIMARY KEY (name, key, seq)
    ) WITHOUT ROWID;
    CREATE INDEX idx_by_record ON idx (kind, id);
    CREATE TABLE uniq (
        ns    TEXT NOT NULL,
        value TEXT NOT NULL,
        owner TEXT NOT NULL,
        PRIMARY KEY (ns, value)
    ) WITHOUT ROWID;
    CREATE TABLE counter (
        id  INTEGER PRIMARY KEY CHECK (id = 0),
        seq INTEGER NOT NULL
    );
    INSERT INTO counter (id, seq) VALUES (0, 0);
"];

/// Read connections. Four covers a 2-core machine with headroom; reads are short.
const READERS: usize = 4;

/// The most jobs one group commit takes. Bounds the latency a job waits behind others and the
/// size of one transaction.
const MAX_BATCH: usize = 512;

/// How long a connection waits on a lock held by another process (e.g. a backup tool) before
/// failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A commit request for the writer thread.
#[derive(Debug)]
struct Job {
    writes: Vec<Write>,
    reply: oneshot::Sender<Result<(), StoreError>>,
}

/// The production store: one SQLite file in WAL mode.
///
/// * **Writes** go through one writer thread that owns the only write connection. It does
///   *group commit*: it takes every job already queued (up to 512), runs them in one
///   transaction, each inside its own savepoint (a job whose `Expect`/`Claim` fails is rolled
///   back alone), and commits once. With `synchronous=FULL` that is one fsync for the whole
///   group, so throughput grows with concurrency instead of being capped at one fsync per
///   request. Jobs are answered only after the COMMIT returned.
/// * **Reads** use a small pool of read-only connections; WAL lets them run beside the writer
///   and always see the last committed state.
///
/// Dropping the store closes the queue; the writer finishes the jobs already queued, closes
/// its connection and is joined, so the file is consistent when `drop` returns.
pub struct SqliteStore {
    path: PathBuf,
    /// Held for the store's life: one process per database file (see [`lock_exclusively`]).
    _lock: nix::fcntl::Flock<std::fs::File>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    queue: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
}

/// Maps a SQLite error to `Unavailable`. rusqlite messages name tables and columns, not values.
fn sql_error(context: &str, err: &rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("{context}: {err}"))
}

/// `(id, seq, body)` rows as `(id, Stored)` pairs.
fn stored_rows(rows: Vec<(String, i64, Vec<u8>)>) -> Result<Vec<(String, Stored)>, StoreError> {
    rows.into_iter()
        .map(|(id, seq, body)| {
            Ok((
                id,
                Stored {
                    seq: seq_from_sql(seq)?,
                    body,
                },
            ))
        })
        .collect()
}

/// Converts a stored seq (SQLite integers are signed) to the API's `u64`.
fn seq_from_sql(seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| StoreError::Unavailable("negative seq in database".to_owned()))
}

impl SqliteStore {
    /// Opens (creating if missing) the store at `path`, migrates its schema and starts the
    /// writer thread.
    ///
    /// A new file is created with mode 0600 (the records hold personal and account data; SQLite gives its `-wal` and `-shm` files the same mode). A file whose schema
    /// is newer than this build knows is refused rather than used, because an older binary
    /// could silently misread or damage data written by a newer one.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        create_private(path)?;
        let lock = lock_exclusively(path)?;
        let writer = open_writer(path)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            readers.push(Mutex::new(open_reader(path)?));
        }
        let (queue, jobs) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || writer_loop(writer, &jobs))
            .map_err(|e| StoreError::Unavailable(format!("cannot start writer thread: {e}")))?;
        tracing::debug!(path = %path.display(), "store opened");
        Ok(Self {
            path: path.to_owned(),
            _lock: lock,
            readers,
            next_reader: AtomicUsize::new(0),
            queue: Some(queue),
            writer: Some(writer),
        })
    }

    /// Runs `f` on a read connection: the first free one starting from a round-robin position,
    /// else waits for the one at that position.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let n = self.readers.len();
        let start = self
            .next_reader
            .fetch_add(1, Ordering::Relaxed)
            .checked_rem(n)
            .unwrap_or(0);
        let mut chosen = None;
        for reader in self.readers.iter().cycle().skip(start).take(n) {
            match reader.try_lock() {
                Ok(conn) => {
                    chosen = Some(conn);
                    break;
                }
                // A panic while reading cannot leave a connection half-written; reuse it.
                Err(TryLockError::Poisoned(poisoned)) => {
                    chosen = Some(poisoned.into_inner());
                    break;
                }
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let conn = match chosen {
            Some(conn) => conn,
            None => self
                .readers
                .get(start)
                .ok_or_else(|| StoreError::Unavailable("no read connection".to_owned()))?
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        };
        f(&conn).map_err(|e| sql_error("read", &e))
    }
}

/// Creates `path` with mode 0600 if it does not exist. Done before SQLite opens it because
/// SQLite would create it with the umask's default mode (often world-readable).
fn create_private(path: &Path) -> Result<(), StoreError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(format!(
            "cannot create database file: {e}"
        ))),
    }
}

/// Takes an exclusive lock on `<database>.lock`, or fails if another process holds it.
///
/// One API process per database is what SQLite's single writer and the crash recovery both
/// assume (recovery treats charges of an earlier start as orphaned); a second process on the
/// same file would void the first one's charges in flight, so it is refused at start. The
/// kernel drops the lock when the process ends, `kill -9` included.
fn lock_exclusively(path: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, StoreError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&name)
        .map_err(|e| StoreError::Unavailable(format!("cannot open the lock file: {e}")))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        StoreError::Unavailable(
            "another api process has this database open (one process per database)".into(),
        )
    })
}

/// Opens the write connection: WAL, `synchronous=FULL` (a COMMIT returns after the WAL is
/// fsync'd), busy timeout, then migrations.
fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let mut conn = Connection::open(path).map_err(|e| sql_error("open", &e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| sql_error("busy_timeout", &e))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(|e| sql_error("journal_mode", &e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "journal_mode is {mode}, WAL required"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| sql_error("synchronous", &e))?;
    migrate(&mut conn, MIGRATIONS)?;
    Ok(conn)
}

/// Opens a read-only connection (it cannot write even by mistake).
fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| sql_error("open reader", &e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| sql_error("busy_timeout", &e))?;
    Ok(conn)
}

/// Applies the migrations not yet recorded in `schema_migrations`, each in its own
/// `BEGIN IMMEDIATE` transaction (the check is repeated inside it, so two processes opening the
/// same file cannot both apply one). Refuses a file with a newer schema than `migrations`.
fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<(), StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TEXT
        )",
    )
    .map_err(|e| sql_error("schema_migrations", &e))?;
    let known = i64::try_from(migrations.len())
        .map_err(|_| StoreError::Unavailable("too many migrations".to_owned()))?;
    let current: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(|e| sql_error("schema version", &e))?;
    if current > known {
        return Err(StoreError::Unavailable(format!(
            "database schema version {current} is newer than this build supports ({known}); \
             refusing to open it (upgrade the binary)"
        )));
    }
    for (version, sql) in (1_i64..).zip(migrations) {
        // Dropping the transaction on an error rolls the migration back.
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| sql_error("begin migration", &e))?;
        let applied = apply_migration(&tx, version, sql)?;
        tx.commit().map_err(|e| sql_error("commit migration", &e))?;
        if applied {
            tracing::info!(version, "store schema migration applied");
        }
    }
    Ok(())
}

/// Applies migration `version` inside the open transaction unless already recorded; returns
/// whether it was applied.
fn apply_migration(conn: &Connection, version: i64, sql: &str) -> Result<bool, StoreError> {
    let done = conn
        .query_row(
            "SELECT 1 FROM schema_migrations WHERE version = ?1",
            [version],
            |_| Ok(()),
        )
        .optional()
        .map_err(|e| sql_error("schema version", &e))?
        .is_some();
    if done {
        return Ok(false);
    }
    conn.execute_batch(sql)
        .map_err(|e| sql_error(&format!("migration {version}"), &e))?;
    conn.execute(
        "INSERT INTO schema_migrations (version, applied_at)
         VALUES (?1, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
        [version],
    )
    .map_err(|e| sql_error("record migration", &e))?;
    Ok(true)
}

/// The writer thread: waits for a job, drains what else is already queued, commits the group.
/// Ends when every sender is gone (the store was dropped) and the queue is empty.
fn writer_loop(mut conn: Connection, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&mut conn, batch);
    }
    tracing::debug!("store writer stopped");
}

/// Runs one group commit and answers every job of it.
fn run_batch(conn: &mut Connection, batch: Vec<Job>) {
    match apply_batch(conn, &batch) {
        Ok(results) => {
            for (job, result) in batch.into_iter().zip(results) {
                // The caller may have dropped its future; the write stands regardless.
                let _ = job.reply.send(result);
            }
        }
        Err(err) => {
            tracing::error!(jobs = batch.len(), error = %err, "store group commit failed");
            for job in batch {
                let _ = job.reply.send(Err(err.clone()));
            }
        }
    }
}

/// One transaction for the whole batch, one savepoint per job. Returns each job's result, or
/// an error for the whole batch when the transaction itself failed (then nothing was written).
fn apply_batch(
    conn: &mut Connection,
    batch: &[Job],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_error("begin", &e))?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let mut sp = tx.savepoint().map_err(|e| sql_error("savepoint", &e))?;
        let result = apply_writes(&sp, &job.writes);
        if result.is_err() {
            sp.rollback()
                .map_err(|e| sql_error("rollback to savepoint", &e))?;
        }
        sp.commit()
            .map_err(|e| sql_error("release savepoint", &e))?;
        if tx.is_autocommit() {
            // SQLite rolled the whole transaction back (e.g. disk full): nothing of the batch
            // is left to commit.
            return Err(StoreError::Unavailable(
                "transaction aborted by SQLite".to_owned(),
            ));
        }
        if let Err(StoreError::Unavailable(msg)) = &result {
            tracing::warn!(error = %msg, "store job failed; rolled back alone");
        }
        results.push(result);
    }
    tx.commit().map_err(|e| sql_error("commit", &e))?;
    Ok(results)
}

/// Runs one job's writes in order on the open savepoint.
fn apply_writes(conn: &Connection, writes: &[Write]) -> Result<(), StoreError> {
    for write in writes {
        apply_write(conn, write).map_err(|e| match e {
            WriteError::Conflict(what) => StoreError::Conflict(what),
            WriteError::Sql(e) => sql_error("write", &e),
        })?;
    }
    Ok(())
}

/// A write's failure before mapping, so SQL errors can use `?`.
enum WriteError {
    Conflict(String),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for WriteError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

fn apply_write(conn: &Connection, write: &Write) -> Result<(), WriteError> {
    match write {
        Write::Put {
            kind,
            id,
            body,
            indexes,
        } => {
            let existing: Option<i64> = conn
                .prepare_cached("SELECT seq FROM records WHERE kind = ?1 AND id = ?2")?
                .query_row(params![kind, id], |r| r.get(0))
                .optional()?;
            if existing.is_some() {
                conn.prepare_cached("UPDATE records SET body = ?3 WHERE kind = ?1 AND id = ?2")?
                    .execute(params![kind, id, body])?;
                return Ok(());
            }
            let seq: i64 = conn
                .prepare_cached("UPDATE counter SET seq = seq + 1 WHERE id = 0 RETURNING seq")?
                .query_row([], |r| r.get(0))?;
            conn.prepare_cached(
                "INSERT INTO records (kind, id, seq, body) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![kind, id, seq, body])?;
            let mut insert = conn.prepare_cached(
                "INSERT OR IGNORE INTO idx (name, key, seq, kind, id) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (name, key) in indexes {
                insert.execute(params![name, key, seq, kind, id])?;
            }
        }
        Write::Delete { kind, id } => {
            conn.prepare_cached("DELETE FROM records WHERE kind = ?1 AND id = ?2")?
                .execute(params![kind, id])?;
            conn.prepare_cached("DELETE FROM idx WHERE kind = ?1 AND id = ?2")?
                .execute(params![kind, id])?;
        }
        Write::Claim { ns, value, owner } => {
            let holder: Option<String> = conn
                .prepare_cached("SELECT owner FROM uniq WHERE ns = ?1 AND value = ?2")?
                .query_row(params![ns, value], |r| r.get(0))
                .optional()?;
            match holder {
                Some(holder) if holder != *owner => return Err(WriteError::Conflict(ns.clone())),
                Some(_) => {}
                None => {
                    conn.prepare_cached("INSERT INTO uniq (ns, value, owner) VALUES (?1, ?2, ?3)")?
                        .execute(params![ns, value, owner])?;
                }
            }
        }
        Write::Release { ns, value } => {
            conn.prepare_cached("DELETE FROM uniq WHERE ns = ?1 AND value = ?2")?
                .execute(params![ns, value])?;
        }
        Write::Expect { kind, id, body } => {
            let current: Option<Vec<u8>> = conn
                .prepare_cached("SELECT body FROM records WHERE kind = ?1 AND id = ?2")?
                .query_row(params![kind, id], |r| r.get(0))
                .optional()?;
            if current.as_deref() != body.as_deref() {
                return Err(WriteError::Conflict(format!("expect:{kind}")));
            }
        }
    }
    Ok(())
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("readers", &self.readers.len())
            .field(
                "writer_running",
                &self.writer.as_ref().is_some_and(|w| !w.is_finished()),
            )
            .finish()
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Readers first, so the writer's connection is the last one and its close checkpoints
        // the WAL into the main file.
        self.readers.clear();
        drop(self.queue.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("store writer thread panicked");
        }
    }
}

impl Store for SqliteStore {
    fn get(&self, kind: &str, id: &str) -> Result<Option<Stored>, StoreError> {
        let row: Option<(i64, Vec<u8>)> = self.read(|conn| {
            conn.prepare_cached("SELECT seq, body FROM records WHERE kind = ?1 AND id = ?2")?
                .query_row(params![kind, id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })?;
        row.map(|(seq, body)| {
            Ok(Stored {
                seq: seq_from_sql(seq)?,
                body,
            })
        })
        .transpose()
    }

    fn owner(&self, ns: &str, value: &str) -> Result<Option<String>, StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT owner FROM uniq WHERE ns = ?1 AND value = ?2")?
                .query_row(params![ns, value], |r| r.get(0))
                .optional()
        })
    }

    fn list(
        &self,
        index: &str,
        key: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, StoreError> {
        // Seqs are positive i64s, so clamping the bounds loses nothing.
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(String, i64, Vec<u8>)> = self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT i.id, r.seq, r.body
                 FROM idx i JOIN records r ON r.kind = i.kind AND r.id = i.id
                 WHERE i.name = ?1 AND i.key = ?2 AND i.seq < ?3
                 ORDER BY i.seq DESC
                 LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![index, key, before, limit], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect()
        })?;
        stored_rows(rows)
    }

    fn scan_back(
        &self,
        kind: &str,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Stored)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Ids are text; "\u{10FFFF}" sorts after any id, standing for "no upper bound".
        let before = before.unwrap_or("\u{10FFFF}");
        let rows: Vec<(String, i64, Vec<u8>)> = self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, seq, body FROM records
                 WHERE kind = ?1 AND id < ?2
                 ORDER BY id DESC
                 LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![kind, before, limit], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            rows.collect()
        })?;
        stored_rows(rows)
    }

    fn commit(&self, writes: Vec<Write>) -> Commit {
        let gone = || StoreError::Unavailable("store writer thread gone".to_owned());
        let (reply, answer) = oneshot::channel();
        let sent = self
            .queue
            .as_ref()
            .is_some_and(|q| q.send(Job { writes, reply }).is_ok());
        if !sent {
            return Box::pin(std::future::ready(Err(gone())));
        }
        Box::pin(async move { answer.await.unwrap_or_else(|_| Err(gone())) })
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.writer.as_ref().is_none_or(JoinHandle::is_finished) {
            return Err(StoreError::Unavailable(
                "store writer thread gone".to_owned(),
            ));
        }
        self.read(|conn| {
            conn.prepare_cached("SELECT 1")?
                .query_row([], |r| r.get::<_, i64>(0))
        })
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    use super::*;

    fn put(kind: &str, id: &str, body: &str, indexes: &[(&str, &str)]) -> Write {
        Write::Put {
            kind: kind.to_owned(),
            id: id.to_owned(),
            body: body.as_bytes().to_vec(),
            indexes: indexes
                .iter()
                .map(|(n, k)| ((*n).to_owned(), (*k).to_owned()))
                .collect(),
        }
    }

    fn del(kind: &str, id: &str) -> Write {
        Write::Delete {
            kind: kind.to_owned(),
            id: id.to_owned(),
        }
    }

    fn claim(ns: &str, value: &str, owner: &str) -> Write {
        Write::Claim {
            ns: ns.to_owned(),
            value: value.to_owned(),
            owner: owner.to_owned(),
        }
    }

    fn release(ns: &str, value: &str) -> Write {
        Write::Release {
            ns: ns.to_owned(),
            value: value.to_owned(),
        }
    }

    fn expect(kind: &str, id: &str, body: Option<&str>) -> Write {
        Write::Expect {
            kind: kind.to_owned(),
            id: id.to_owned(),
            body: body.map(|b| b.as_bytes().to_vec()),
        }
    }

    fn conflict(what: &str) -> Result<(), StoreError> {
        Err(StoreError::Conflict(what.to_owned()))
    }

    #[allow(clippy::unwrap_used)]
    fn get(store: &dyn Store, kind: &str, id: &str) -> Option<Stored> {
        store.get(kind, id).unwrap()
    }

    #[allow(clippy::unwrap_used)]
    fn seq(store: &dyn Store, kind: &str, id: &str) -> u64 {
        get(store, kind, id).unwrap().seq
    }

    #[allow(clippy::unwrap_used)]
    fn ids(store: &dyn Store, index: &str, key: &str) -> Vec<String> {
        store
            .list(index, key, None, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    /// The contract both implementations must meet.
    #[allow(clippy::unwrap_used, clippy::indexing_slicing)]
    async fn contract(store: &dyn Store) {
        store.check().unwrap();

        // Put, get, replace.
        assert_eq!(get(store, "merchant", "m1"), None);
        store
            .commit(vec![put("merchant", "m1", "v1", &[("reseller", "r1")])])
            .await
            .unwrap();
        let m1 = get(store, "merchant", "m1").unwrap();
        assert_eq!(m1.body, b"v1");
        assert_eq!(
            get(store, "device", "m1"),
            None,
            "kind is part of the address"
        );
        store
            .commit(vec![put("merchant", "m1", "v2", &[("other", "x")])])
            .await
            .unwrap();
        let m1b = get(store, "merchant", "m1").unwrap();
        assert_eq!(
            m1b,
            Stored {
                seq: m1.seq,
                body: b"v2".to_vec()
            },
            "replace keeps seq"
        );
        assert!(
            ids(store, "other", "x").is_empty(),
            "indexes ignored on replace"
        );
        assert_eq!(
            store.list("reseller", "r1", None, 10).unwrap(),
            vec![("m1".to_owned(), m1b)]
        );

        // Two kinds under one index; seq strictly increasing, also within a batch.
        let d1_indexes = [("reseller", "r1"), ("merchant", "m1")];
        store
            .commit(vec![put("device", "d1", "dev1", &d1_indexes)])
            .await
            .unwrap();
        store
            .commit(vec![
                put("merchant", "m2", "m2", &[("reseller", "r1")]),
                put("merchant", "m3", "m3", &[("reseller", "r2")]),
            ])
            .await
            .unwrap();
        let seqs: Vec<u64> = [("merchant", "m1"), ("device", "d1"), ("merchant", "m2")]
            .iter()
            .chain(&[("merchant", "m3")])
            .map(|(k, i)| seq(store, k, i))
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(ids(store, "reseller", "r1"), ["m2", "d1", "m1"]);
        assert_eq!(ids(store, "reseller", "r2"), ["m3"]);
        let listed = store.list("reseller", "r1", None, 10).unwrap();
        assert_eq!(
            listed[1].1,
            get(store, "device", "d1").unwrap(),
            "list returns the body"
        );

        // Pagination: newest first, `before` cursor, `limit`.
        for n in 0..7 {
            let id = format!("c{n}");
            store
                .commit(vec![put("charge", &id, &id, &[("merchant", "m1")])])
                .await
                .unwrap();
        }
        let expected = ["c6", "c5", "c4", "c3", "c2", "c1", "c0", "d1"];
        assert_eq!(ids(store, "merchant", "m1"), expected);
        let (mut before, mut all, mut pages) = (None, Vec::new(), Vec::new());
        loop {
            let page = store.list("merchant", "m1", before, 3).unwrap();
            let Some((_, last)) = page.last() else { break };
            before = Some(last.seq);
            pages.push(page.len());
            all.extend(page.into_iter().map(|(id, _)| id));
        }
        assert_eq!(all, expected);
        assert_eq!(pages, [3, 3, 2]);
        let c3 = seq(store, "charge", "c3");
        assert_eq!(
            store
                .list("merchant", "m1", Some(c3), 2)
                .unwrap()
                .iter()
                .map(|(i, _)| i.as_str())
                .collect::<Vec<_>>(),
            ["c2", "c1"]
        );
        assert!(store.list("merchant", "m1", None, 0).unwrap().is_empty());
        assert!(
            store
                .list("merchant", "m1", Some(0), 10)
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .list("reseller", "r1", Some(m1.seq), 10)
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .list("merchant", "nobody", None, 10)
                .unwrap()
                .is_empty()
        );
        assert!(store.list("nothing", "m1", None, 10).unwrap().is_empty());
        assert_eq!(
            ids(store, "merchant", "m1").len(),
            8,
            "before = u64::MAX is fine"
        );
        assert_eq!(
            store
                .list("merchant", "m1", Some(u64::MAX), 100)
                .unwrap()
                .len(),
            8
        );

        // Delete removes the record and its index entries; absent is fine.
        store.commit(vec![del("merchant", "m2")]).await.unwrap();
        assert_eq!(get(store, "merchant", "m2"), None);
        assert_eq!(ids(store, "reseller", "r1"), ["d1", "m1"]);
        store
            .commit(vec![del("merchant", "m2"), del("ghost", "g")])
            .await
            .unwrap();
        store.commit(vec![del("device", "d1")]).await.unwrap();
        assert_eq!(ids(store, "reseller", "r1"), ["m1"]);
        assert_eq!(ids(store, "merchant", "m1")[..2], ["c6", "c5"]);
        assert_eq!(ids(store, "merchant", "m1").len(), 7);
        // A seq is never reused, not even the newest one after its record was deleted.
        store
            .commit(vec![put("tmp", "t1", "t", &[])])
            .await
            .unwrap();
        let t1 = seq(store, "tmp", "t1");
        store.commit(vec![del("tmp", "t1")]).await.unwrap();
        store
            .commit(vec![put("tmp", "t2", "t", &[])])
            .await
            .unwrap();
        assert!(seq(store, "tmp", "t2") > t1);
        // Re-creating a deleted record makes a new record: new seq, new indexes.
        store
            .commit(vec![put("merchant", "m2", "m2b", &[("reseller", "r3")])])
            .await
            .unwrap();
        assert!(seq(store, "merchant", "m2") > seq(store, "charge", "c6"));
        assert_eq!(ids(store, "reseller", "r3"), ["m2"]);
        assert_eq!(ids(store, "reseller", "r1"), ["m1"]);

        // Claims.
        store
            .commit(vec![claim("device_id", "SN-1", "d1")])
            .await
            .unwrap();
        assert_eq!(
            store.owner("device_id", "SN-1").unwrap().as_deref(),
            Some("d1")
        );
        store
            .commit(vec![claim("device_id", "SN-1", "d1")])
            .await
            .unwrap();
        let last = seq(store, "merchant", "m2");
        let taken = store
            .commit(vec![
                put("device", "d2", "dev2", &[("reseller", "r1")]),
                claim("device_id", "SN-1", "d2"),
            ])
            .await;
        assert_eq!(taken, conflict("device_id"));
        assert!(
            !taken.unwrap_err().to_string().contains("SN-1"),
            "no value in errors"
        );
        assert_eq!(get(store, "device", "d2"), None, "whole batch not applied");
        assert_eq!(ids(store, "reseller", "r1"), ["m1"]);
        assert_eq!(
            store.owner("device_id", "SN-1").unwrap().as_deref(),
            Some("d1")
        );
        assert_eq!(store.owner("device_id", "SN-2").unwrap(), None);
        assert_eq!(
            store.owner("portal_host", "SN-1").unwrap(),
            None,
            "namespaces are apart"
        );
        store
            .commit(vec![release("device_id", "SN-1")])
            .await
            .unwrap();
        assert_eq!(store.owner("device_id", "SN-1").unwrap(), None);
        store
            .commit(vec![release("device_id", "SN-1")])
            .await
            .unwrap();
        store
            .commit(vec![
                claim("device_id", "SN-1", "d2"),
                put("device", "d2", "dev2", &[]),
            ])
            .await
            .unwrap();
        assert_eq!(
            store.owner("device_id", "SN-1").unwrap().as_deref(),
            Some("d2")
        );
        assert_eq!(
            seq(store, "device", "d2"),
            last + 1,
            "a failed batch takes no seq"
        );
        // Writes apply in order inside a batch: release then claim transfers.
        store
            .commit(vec![
                release("device_id", "SN-1"),
                claim("device_id", "SN-1", "d3"),
            ])
            .await
            .unwrap();
        assert_eq!(
            store.owner("device_id", "SN-1").unwrap().as_deref(),
            Some("d3")
        );
        let twice = vec![
            claim("device_id", "SN-9", "a"),
            claim("device_id", "SN-9", "b"),
        ];
        assert_eq!(store.commit(twice).await, conflict("device_id"));
        assert_eq!(store.owner("device_id", "SN-9").unwrap(), None);
        store
            .commit(vec![claim("portal_host", "SN-1", "x")])
            .await
            .unwrap();

        // Expect.
        store
            .commit(vec![
                expect("merchant", "m1", Some("v2")),
                put("merchant", "m1", "v3", &[]),
            ])
            .await
            .unwrap();
        assert_eq!(get(store, "merchant", "m1").unwrap().body, b"v3");
        let stale = store
            .commit(vec![
                put("merchant", "m1", "v4", &[]),
                expect("merchant", "m0", Some("v2")),
            ])
            .await;
        assert_eq!(stale, conflict("expect:merchant"));
        let stale = store
            .commit(vec![
                expect("merchant", "m1", Some("v2")),
                put("merchant", "m1", "v4", &[]),
            ])
            .await;
        assert_eq!(stale, conflict("expect:merchant"));
        assert_eq!(get(store, "merchant", "m1").unwrap().body, b"v3");
        store
            .commit(vec![
                expect("merchant", "m9", None),
                put("merchant", "m9", "new", &[]),
            ])
            .await
            .unwrap();
        let exists = vec![
            expect("merchant", "m9", None),
            put("merchant", "m9", "other", &[]),
        ];
        assert_eq!(store.commit(exists).await, conflict("expect:merchant"));
        assert_eq!(get(store, "merchant", "m9").unwrap().body, b"new");
        let absent = vec![expect("merchant", "nope", Some("x"))];
        assert_eq!(store.commit(absent).await, conflict("expect:merchant"));
        // Expect sees earlier writes of its batch.
        store
            .commit(vec![
                put("merchant", "m1", "v5", &[]),
                expect("merchant", "m1", Some("v5")),
            ])
            .await
            .unwrap();
        store
            .commit(vec![del("merchant", "m9"), expect("merchant", "m9", None)])
            .await
            .unwrap();
        assert_eq!(get(store, "merchant", "m9"), None);

        store.commit(Vec::new()).await.unwrap();
        store.check().unwrap();

        // Scanning a kind backwards by id.
        store
            .commit(vec![
                put("scanned", "ch_001", "a", &[]),
                put("scanned", "ch_003", "c", &[]),
                put("scanned", "ch_002", "b", &[]),
                put("refund", "re_009", "z", &[]),
            ])
            .await
            .unwrap();
        let back = |before: Option<&str>, limit| -> Vec<String> {
            store
                .scan_back("scanned", before, limit)
                .unwrap()
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        assert_eq!(back(None, 10), ["ch_003", "ch_002", "ch_001"]);
        assert_eq!(back(None, 2), ["ch_003", "ch_002"]);
        assert_eq!(back(Some("ch_002"), 10), ["ch_001"]);
        assert!(back(Some("ch_001"), 10).is_empty());
        assert!(store.scan_back("nothing", None, 5).unwrap().is_empty());
        assert!(
            !format!("{store:?}").contains("v5"),
            "Debug shows no record contents"
        );
    }

    #[tokio::test]
    async fn memory_contract() {
        contract(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn sqlite_contract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.db");
        let store = SqliteStore::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        contract(&store).await;
    }

    #[tokio::test]
    async fn sqlite_durable_across_reopen_and_migrations_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.db");
        let store = SqliteStore::open(&path).unwrap();
        store
            .commit(vec![
                put("merchant", "m1", "v1", &[("r", "1")]),
                claim("ns", "v", "m1"),
            ])
            .await
            .unwrap();
        // A commit whose future is dropped still happens, before later commits.
        drop(store.commit(vec![put("merchant", "m2", "v2", &[("r", "1")])]));
        store
            .commit(vec![put("merchant", "m3", "v3", &[])])
            .await
            .unwrap();
        let seq1 = seq(&store, "merchant", "m1");
        assert!(format!("{store:?}").contains("api.db"));
        drop(store);

        for _ in 0..2 {
            let store = SqliteStore::open(&path).unwrap();
            assert_eq!(
                get(&store, "merchant", "m1"),
                Some(Stored {
                    seq: seq1,
                    body: b"v1".into()
                })
            );
            assert_eq!(ids(&store, "r", "1"), ["m2", "m1"]);
            assert_eq!(store.owner("ns", "v").unwrap().as_deref(), Some("m1"));
            store.check().unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        store
            .commit(vec![put("merchant", "m4", "v4", &[])])
            .await
            .unwrap();
        assert!(seq(&store, "merchant", "m4") > seq(&store, "merchant", "m3"));
        drop(store);

        let conn = Connection::open(&path).unwrap();
        let versions: Vec<i64> = conn
            .prepare("SELECT version FROM schema_migrations ORDER BY version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let expected: Vec<i64> = (1..=i64::try_from(MIGRATIONS.len()).unwrap()).collect();
        assert_eq!(versions, expected);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.db");
        drop(SqliteStore::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        let future = i64::try_from(MIGRATIONS.len() + 1).unwrap();
        conn.execute(
            "INSERT INTO schema_migrations (version) VALUES (?1)",
            [future],
        )
        .unwrap();
        drop(conn);
        match SqliteStore::open(&path) {
            Err(StoreError::Unavailable(msg)) => assert!(msg.contains("newer"), "{msg}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn wrong_path_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("api.db");
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::Unavailable(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn group_commit_under_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("api.db")).unwrap());
        // Tasks i and i + 100 claim the same serial number for different devices: exactly one
        // of each pair must win, and only the winner's device may be stored.
        let mut tasks = Vec::new();
        for i in 0..200 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let device = format!("d{i}");
                let serial = format!("sn{}", i % 100);
                let result = store
                    .commit(vec![
                        put("device", &device, &device, &[("all", "devices")]),
                        claim("device_id", &serial, &device),
                    ])
                    .await;
                // A second wave that lands in whatever groups the first one left behind.
                let event = format!("e{i}");
                let logged = store.commit(vec![put("event", &event, "{}", &[("all", "events")])]);
                (result, logged.await)
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            let (result, logged) = task.await.unwrap();
            logged.unwrap();
            results.push(result);
        }
        for i in 0..100 {
            let (a, b) = (&results[i], &results[i + 100]);
            let winner = match (a, b) {
                (Ok(()), Err(StoreError::Conflict(ns))) if ns == "device_id" => i,
                (Err(StoreError::Conflict(ns)), Ok(())) if ns == "device_id" => i + 100,
                other => panic!("pair {i}: {other:?}"),
            };
            let loser = if winner == i { i + 100 } else { i };
            let owner = store.owner("device_id", &format!("sn{i}")).unwrap();
            assert_eq!(owner, Some(format!("d{winner}")));
            assert!(get(&*store, "device", &format!("d{winner}")).is_some());
            assert_eq!(get(&*store, "device", &format!("d{loser}")), None);
        }
        let events = store.list("all", "events", None, 1000).unwrap();
        assert_eq!(events.len(), 200);
        let devices = store.list("all", "devices", None, 1000).unwrap();
        assert_eq!(devices.len(), 100);
        let mut seqs: Vec<u64> = devices.iter().chain(&events).map(|(_, s)| s.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        assert_eq!(seqs.len(), 300, "distinct seqs");
        // Losers' rolled-back puts took no seq: the 300 stored records use 300 consecutive seqs.
        assert_eq!(seqs.last().unwrap() - seqs.first().unwrap(), 299);
    }

    #[test]
    fn conflicting_job_in_a_group_does_not_roll_back_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.db");
        create_private(&path).unwrap();
        let mut conn = open_writer(&path).unwrap();
        let job = |writes| {
            let (reply, answer) = oneshot::channel();
            (Job { writes, reply }, answer)
        };

        let (held, mut held_answer) = job(vec![claim("device_id", "SN-1", "x")]);
        run_batch(&mut conn, vec![held]);
        assert_eq!(held_answer.try_recv().unwrap(), Ok(()));

        // One group: A succeeds, B conflicts on its claim, C fails its Expect, D succeeds and
        // sees A's write.
        let (a, mut a_answer) = job(vec![
            put("device", "a", "A", &[("all", "d")]),
            claim("device_id", "SN-2", "a"),
        ]);
        let (b, mut b_answer) = job(vec![
            put("device", "b", "B", &[("all", "d")]),
            claim("device_id", "SN-1", "b"),
        ]);
        let (c, mut c_answer) = job(vec![
            put("device", "c", "C", &[("all", "d")]),
            expect("device", "a", None),
        ]);
        let (d, mut d_answer) = job(vec![
            expect("device", "a", Some("A")),
            put("device", "d", "D", &[("all", "d")]),
            release("device_id", "SN-1"),
        ]);
        run_batch(&mut conn, vec![a, b, c, d]);
        assert_eq!(a_answer.try_recv().unwrap(), Ok(()));
        assert_eq!(b_answer.try_recv().unwrap(), conflict("device_id"));
        assert_eq!(c_answer.try_recv().unwrap(), conflict("expect:device"));
        assert_eq!(d_answer.try_recv().unwrap(), Ok(()));
        drop(conn);

        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(ids(&store, "all", "d"), ["d", "a"]);
        assert_eq!(get(&store, "device", "b"), None);
        assert_eq!(get(&store, "device", "c"), None);
        assert_eq!(seq(&store, "device", "d"), seq(&store, "device", "a") + 1);
        assert_eq!(
            store.owner("device_id", "SN-2").unwrap().as_deref(),
            Some("a")
        );
        assert_eq!(store.owner("device_id", "SN-1").unwrap(), None);
    }
}
