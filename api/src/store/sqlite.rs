//! The SQLite store: typed tables in one WAL file, one group-commit writer thread, a pool of
//! read connections.

use std::fmt;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::cache::{Lookup, ReadCache};
use super::tables::{self, Statements};
use super::{Commit, OUTBOX, Read, Rows, Store, StoreError, Stored, Write};

/// Schema migrations, applied in order, each in its own transaction; migration `i` (0-based)
/// is schema version `i + 1`. Append only: never edit an applied migration.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/sqlite/0001_generic_records.sql"),
    include_str!("../../migrations/sqlite/0002_typed_tables.sql"),
    include_str!("../../migrations/sqlite/0003_acquirer_link.sql"),
    include_str!("../../migrations/sqlite/0004_several_nodes.sql"),
    include_str!("../../migrations/sqlite/0005_events.sql"),
    include_str!("../../migrations/sqlite/0006_portal.sql"),
    include_str!("../../migrations/sqlite/0007_hot_path.sql"),
    include_str!("../../migrations/sqlite/0008_nonces_one_tree.sql"),
    include_str!("../../migrations/sqlite/0009_seq_as_rowid.sql"),
];

/// How many seqs the writer reserves each time it writes the `counter` row (see [`Writer`]).
pub(super) const SEQ_BLOCK: i64 = 4096;

/// Reader threads, each with its own read-only connection. Reads are short indexed lookups,
/// so a few threads keep up with many async callers; more would only add context switches.
const READERS: usize = 2;

/// The most reads one reader thread takes from the queue at a time: it then answers them
/// one after the other without going back to sleep in between (fewer wake-ups under load,
/// and a bounded wait for the reads behind them).
const READ_BATCH: usize = 8;

/// The most jobs one group commit takes. Bounds the latency a job waits behind others and the
/// size of one transaction.
const MAX_BATCH: usize = 512;

/// How long a connection waits on a lock held by another process (e.g. a backup tool) before
/// failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A read for a reader thread: runs a query on the thread's connection and sends the answer.
type ReadJob = Box<dyn FnOnce(&Connection) + Send>;

/// A commit request for the writer thread.
///
/// The writer is the one thread every commit waits for, so what can be done before or after it
/// is: each `Put`'s record comes bound to its columns (`db::put`) and is turned into SQLite
/// values by the caller ([`Job::new`]), and the job goes back with its answer, so the caller,
/// not the writer, frees what it allocated (freeing records took the writer about a fifth of
/// its time, BENCHMARKS.md).
#[derive(Debug)]
pub(super) struct Job {
    pub writes: Vec<Write>,
    /// Per write, a `Put`'s column values in [`Statements`]' `upsert` order (key, a slot for
    /// the seq the writer offers, then the fields, moved out of the `Put`); empty for other
    /// writes and for the outbox's `Put`s (nothing to write on SQLite).
    values: Vec<Vec<rusqlite::types::Value>>,
    reply: oneshot::Sender<Answer>,
}

/// A job's result, and what it carried, for its caller to free.
pub(super) type Answer = (Result<(), StoreError>, Spent);

/// What a job carried, handed back to its caller.
pub(super) struct Spent {
    _writes: Vec<Write>,
    _values: Vec<Vec<rusqlite::types::Value>>,
}

/// The index of the seq slot in a `Put`'s values.
const SEQ_SLOT: usize = 1;

impl Job {
    /// Moves each `Put`'s fields into SQLite values.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] for a record kind without a table, or fields that do not
    /// fit its columns (the writer would have refused the job the same way).
    pub(super) fn new(
        mut writes: Vec<Write>,
    ) -> Result<(Self, oneshot::Receiver<Answer>), StoreError> {
        let mut values = Vec::with_capacity(writes.len());
        for write in &mut writes {
            values.push(match write {
                Write::Put { kind, .. } if kind == OUTBOX => Vec::new(),
                Write::Put {
                    kind, id, fields, ..
                } => {
                    let st = tables::of(kind).ok_or_else(|| unknown(kind))?;
                    tables::fits(st.table, fields).map_err(StoreError::Unavailable)?;
                    let mut bound = Vec::with_capacity(fields.len() + 2);
                    bound.extend([id.clone().into(), rusqlite::types::Value::Null]);
                    bound.extend(std::mem::take(fields).into_iter().map(Into::into));
                    bound
                }
                _ => Vec::new(),
            });
        }
        let (reply, answer) = oneshot::channel();
        Ok((
            Self {
                writes,
                values,
                reply,
            },
            answer,
        ))
    }

    /// Answers the caller, handing back what the job carried.
    fn answer(self, result: Result<(), StoreError>) {
        let spent = Spent {
            _writes: self.writes,
            _values: self.values,
        };
        // The caller may have dropped its future; the write stands regardless (and what it
        // carried is then freed here).
        let _ = self.reply.send((result, spent));
    }
}

impl fmt::Debug for Spent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spent").finish_non_exhaustive()
    }
}

/// The production store: one SQLite file in WAL mode.
///
/// * **Writes** go through one writer thread that owns the only write connection. It does
///   *group commit*: it takes every job already queued (up to 512), runs them in one
///   transaction (a job whose `Expect`/`Claim` fails is rolled back alone: see the writer's
///   `apply_batch`), and commits once. With `synchronous=FULL` that is one fsync for the
///   whole group, so throughput grows with concurrency instead of being capped at one fsync
///   per request. Jobs are answered only after the COMMIT returned.
/// * **Reads** are queued to a few reader threads, each owning a read-only connection; WAL lets
///   them run beside the writer and always see the last committed state. The async caller only
///   awaits the answer, so no SQLite call ever runs on an async worker thread.
///
/// Dropping the store closes both queues; the readers and the writer finish the jobs already
/// queued, close their connections and are joined, so the file is consistent when `drop`
/// returns.
pub struct SqliteStore {
    path: PathBuf,
    /// A temporary store's directory, removed on drop.
    temporary: Option<PathBuf>,
    /// Held for the store's life: one process per database file (see [`lock_exclusively`]).
    _lock: nix::fcntl::Flock<std::fs::File>,
    reads: Option<mpsc::Sender<ReadJob>>,
    readers: Vec<JoinHandle<()>>,
    queue: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    /// Hot records answered without a reader (emptied by the writer thread as it commits).
    cache: Arc<ReadCache>,
}

/// Maps a SQLite error to `Unavailable`. rusqlite messages name tables and columns, not values.
fn sql_error(context: &str, err: &rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("{context}: {err}"))
}

/// A row as read: `(id, seq, version, fields)`.
type Row = (String, i64, i64, Map<String, Value>);

/// Rows as `(id, Stored)` pairs.
fn stored_rows(rows: Vec<Row>) -> Result<Vec<(String, Stored)>, StoreError> {
    rows.into_iter()
        .map(|(id, seq, version, body)| {
            Ok((
                id,
                Stored {
                    seq: from_sql(seq)?,
                    version: from_sql(version)?,
                    body,
                },
            ))
        })
        .collect()
}

/// Converts a stored seq or version (SQLite integers are signed) to the API's `u64`.
fn from_sql(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Unavailable("negative seq in database".to_owned()))
}

fn unknown(kind: &str) -> StoreError {
    StoreError::Unavailable(format!("no table for record kind {kind}"))
}

impl SqliteStore {
    /// Opens (creating if missing) the store at `path`, migrates its schema and starts the
    /// writer thread.
    ///
    /// A new file is created with mode 0600 (the records hold personal and account data; SQLite gives its `-wal` and `-shm` files the same mode). A file whose schema
    /// is newer than this build knows is refused rather than used, because an older binary
    /// could silently misread or damage data written by a newer one.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, "FULL", None)
    }

    /// A store on a fresh file in a new temporary directory, removed when the store is dropped
    /// (unit tests: the same SQL as production, without fsync).
    pub fn temporary() -> Result<Self, StoreError> {
        let mut name = [0_u8; 8];
        getrandom::fill(&mut name)
            .map_err(|e| StoreError::Unavailable(format!("random name: {e}")))?;
        let dir = std::env::temp_dir().join(format!("api-store-{}", hex::encode(name)));
        std::fs::create_dir(&dir)
            .map_err(|e| StoreError::Unavailable(format!("temporary directory: {e}")))?;
        Self::open_with(&dir.join("api.db"), "OFF", Some(dir.clone())).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })
    }

    fn open_with(
        path: &Path,
        synchronous: &str,
        temporary: Option<PathBuf>,
    ) -> Result<Self, StoreError> {
        create_private(path)?;
        let lock = lock_exclusively(path)?;
        let cache = Arc::new(ReadCache::default());
        let writer = Writer::open(path, synchronous, Arc::clone(&cache))?;
        let (reads, read_jobs) = mpsc::channel();
        let read_jobs = Arc::new(Mutex::new(read_jobs));
        let mut readers = Vec::with_capacity(READERS);
        for n in 0..READERS {
            let conn = open_reader(path)?;
            let jobs = Arc::clone(&read_jobs);
            readers.push(
                std::thread::Builder::new()
                    .name(format!("store-reader-{n}"))
                    .spawn(move || reader_loop(&conn, &jobs))
                    .map_err(|e| {
                        StoreError::Unavailable(format!("cannot start reader thread: {e}"))
                    })?,
            );
        }
        let (queue, jobs) = mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("store-writer".to_owned())
            .spawn(move || writer_loop(writer, &jobs))
            .map_err(|e| StoreError::Unavailable(format!("cannot start writer thread: {e}")))?;
        tracing::debug!(path = %path.display(), "store opened");
        Ok(Self {
            path: path.to_owned(),
            temporary,
            _lock: lock,
            reads: Some(reads),
            readers,
            queue: Some(queue),
            writer: Some(writer),
            cache,
        })
    }

    /// Queues `f` for a reader thread and returns the future of its answer.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Read<T> {
        let gone = || StoreError::Unavailable("store reader threads gone".to_owned());
        let (reply, answer) = oneshot::channel();
        let job: ReadJob = Box::new(move |conn| {
            // The caller may have stopped waiting; the answer is then simply dropped.
            let _ = reply.send(f(conn));
        });
        if self.reads.as_ref().is_none_or(|q| q.send(job).is_err()) {
            return Box::pin(std::future::ready(Err(gone())));
        }
        Box::pin(async move { answer.await.unwrap_or_else(|_| Err(gone())) })
    }
}

/// A reader thread: takes up to [`READ_BATCH`] queued reads (waiting for the first), answers
/// them, and goes back for more until the store is dropped.
///
/// Whoever holds the queue's lock is the one thread waiting on it; the others wait for the
/// lock. A read that panics loses its answer (its caller sees `Unavailable`), not the thread.
fn reader_loop(conn: &Connection, jobs: &Mutex<mpsc::Receiver<ReadJob>>) {
    let mut batch: Vec<ReadJob> = Vec::with_capacity(READ_BATCH);
    loop {
        {
            let queue = jobs.lock().unwrap_or_else(PoisonError::into_inner);
            match queue.recv() {
                Ok(job) => batch.push(job),
                Err(mpsc::RecvError) => return,
            }
            while batch.len() < READ_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        for job in batch.drain(..) {
            if std::panic::catch_unwind(AssertUnwindSafe(|| job(conn))).is_err() {
                tracing::error!("a store read panicked");
            }
        }
    }
}

/// Creates `path` with mode 0600 if it does not exist. Done before SQLite opens it because
/// SQLite would create it with the umask's default mode (often world-readable).
pub(super) fn create_private(path: &Path) -> Result<(), StoreError> {
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
fn open_writer(path: &Path, synchronous: &str) -> Result<Connection, StoreError> {
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
    conn.pragma_update(None, "synchronous", synchronous)
        .map_err(|e| sql_error("synchronous", &e))?;
    migrate(&mut conn, MIGRATIONS)?;
    // After the migrations: they move rows between tables in an order foreign keys would stop.
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(|e| sql_error("foreign_keys", &e))?;
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

/// The only write connection, and the next creation sequence number.
///
/// The writer thread is the only one that writes (and one process per file, see
/// [`lock_exclusively`]), so it counts `seq` itself. The `counter` row holds the highest seq
/// handed out *or reserved*: a group commit that goes past the reservation moves it
/// [`SEQ_BLOCK`] further, inside the group's transaction, and the other group commits do not
/// write the counter at all (it cost each one a WAL page). A restart begins after the
/// reservation, so it never hands out a seq twice and seqs only grow; the price is a gap of at
/// most a block per restart, which nothing minds (seq is an order, never a count, and never
/// leaves the store). A job rolled back gives its seqs back.
pub(super) struct Writer {
    conn: Connection,
    next_seq: i64,
    /// The counter row as committed: every seq up to it may be handed out without writing it.
    reserved: i64,
    /// The readers' cache, emptied of what each group wrote before its writers are answered.
    cache: Arc<ReadCache>,
}

impl Writer {
    /// Opens the write connection (see [`open_writer`]) and reads the counter.
    pub(super) fn open(
        path: &Path,
        synchronous: &str,
        cache: Arc<ReadCache>,
    ) -> Result<Self, StoreError> {
        let conn = open_writer(path, synchronous)?;
        let last: i64 = conn
            .query_row("SELECT seq FROM counter WHERE id = 0", [], |r| r.get(0))
            .map_err(|e| sql_error("counter", &e))?;
        Ok(Self {
            conn,
            next_seq: last + 1,
            reserved: last,
            cache,
        })
    }

    /// Runs one group commit and answers every job of it.
    pub(super) fn run_batch(&mut self, mut batch: Vec<Job>) {
        let (first_seq, reserved) = (self.next_seq, self.reserved);
        let outcome = apply_batch(
            &mut self.conn,
            (&mut self.next_seq, &mut self.reserved),
            &mut batch,
        );
        // Committed or not, nothing a reader caches may outlive the writes (a failed group
        // wrote nothing; emptying is then merely a few misses).
        for job in &batch {
            self.cache.invalidate(&job.writes);
        }
        match outcome {
            Ok(results) => {
                for (job, result) in batch.into_iter().zip(results) {
                    job.answer(result);
                }
            }
            Err(err) => {
                // Nothing of the group was written: its seqs are free again, and the counter
                // row is as it was.
                self.next_seq = first_seq;
                self.reserved = reserved;
                tracing::error!(jobs = batch.len(), error = %err, "store group commit failed");
                for job in batch {
                    job.answer(Err(err.clone()));
                }
            }
        }
    }
}

/// The writer thread: waits for a job, drains what else is already queued, commits the group.
/// Ends when every sender is gone (the store was dropped) and the queue is empty.
fn writer_loop(mut writer: Writer, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        writer.run_batch(batch);
    }
    tracing::debug!("store writer stopped");
}

/// One transaction for the whole batch. Returns each job's result, or an error for the whole
/// batch when the transaction itself failed (then nothing was written).
///
/// Jobs almost always succeed, so the group is first run with no savepoints: a savepoint per
/// job cost the writer two statements parsed per job (rusqlite sends `SAVEPOINT` and `RELEASE`
/// as text) and a sub-journal of every page the job touched first. Only when a job fails is
/// that attempt rolled back and the group run again with a savepoint per job, so the failed job
/// is rolled back alone. A failing job thus costs its group one extra pass, never more.
fn apply_batch(
    conn: &mut Connection,
    (next_seq, reserved): (&mut i64, &mut i64),
    batch: &mut [Job],
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let first_seq = *next_seq;
    if let Some(results) = apply_group(conn, (next_seq, reserved), batch, Isolation::Together)? {
        return Ok(results);
    }
    *next_seq = first_seq;
    apply_group(conn, (next_seq, reserved), batch, Isolation::PerJob)?
        .ok_or_else(|| StoreError::Unavailable("group commit retry failed".to_owned()))
}

/// How [`apply_group`] keeps one job's failure from its neighbours.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// No savepoints: the first failing job abandons the whole attempt.
    Together,
    /// A savepoint per job: a failing job is rolled back alone.
    PerJob,
}

/// Runs the batch in one transaction and commits it. `Ok(None)`: a job failed under
/// [`Isolation::Together`] and the transaction was rolled back (the caller restores the seqs).
fn apply_group(
    conn: &mut Connection,
    (next_seq, reserved): (&mut i64, &mut i64),
    batch: &mut [Job],
    isolation: Isolation,
) -> Result<Option<Vec<Result<(), StoreError>>>, StoreError> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| sql_error("begin", &e))?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let result = if isolation == Isolation::Together {
            let result = apply_writes(&tx, next_seq, &job.writes, &mut job.values);
            // Unless SQLite rolled the transaction back itself, which the check below turns
            // into the group's error: a second pass would only meet the same fault.
            if result.is_err() && !tx.is_autocommit() {
                tx.rollback().map_err(|e| sql_error("rollback", &e))?;
                return Ok(None);
            }
            result
        } else {
            let job_seq = *next_seq;
            let mut sp = tx.savepoint().map_err(|e| sql_error("savepoint", &e))?;
            let result = apply_writes(&sp, next_seq, &job.writes, &mut job.values);
            if result.is_err() {
                sp.rollback()
                    .map_err(|e| sql_error("rollback to savepoint", &e))?;
                *next_seq = job_seq;
            }
            sp.commit()
                .map_err(|e| sql_error("release savepoint", &e))?;
            result
        };
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
    if *next_seq - 1 > *reserved {
        let reserve = *next_seq - 1 + SEQ_BLOCK;
        tx.prepare_cached("UPDATE counter SET seq = ?1 WHERE id = 0")
            .and_then(|mut st| st.execute([reserve]))
            .map_err(|e| sql_error("counter", &e))?;
        *reserved = reserve;
    }
    tx.commit().map_err(|e| sql_error("commit", &e))?;
    Ok(Some(results))
}

/// Runs one job's writes in order, in the open transaction or savepoint.
fn apply_writes(
    conn: &Connection,
    next_seq: &mut i64,
    writes: &[Write],
    values: &mut [Vec<rusqlite::types::Value>],
) -> Result<(), StoreError> {
    for (write, values) in writes.iter().zip(values) {
        apply_write(conn, next_seq, write, values).map_err(|e| match e {
            WriteError::Conflict(what) => StoreError::Conflict(what),
            WriteError::Sql(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                // A UNIQUE or foreign key of the schema: the data conflicts (the message, which
                // may name a value, stays out of the error).
                StoreError::Conflict("constraint".to_owned())
            }
            WriteError::Sql(e) => sql_error("write", &e),
            WriteError::Other(e) => e,
        })?;
    }
    Ok(())
}

/// A write's failure before mapping, so SQL errors can use `?`.
enum WriteError {
    Conflict(String),
    Sql(rusqlite::Error),
    Other(StoreError),
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        Self::Other(e)
    }
}

impl From<rusqlite::Error> for WriteError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

/// Runs one write. A `Put` is one statement: an insert that becomes an update when the key is
/// taken, offering the next seq, which only a new row keeps; `values` are its columns, bound
/// by [`Job::new`].
fn apply_write(
    conn: &Connection,
    next_seq: &mut i64,
    write: &Write,
    values: &mut [rusqlite::types::Value],
) -> Result<(), WriteError> {
    match write {
        // The outbox is the events after the cursor (`Store::outbox` below): nothing to write.
        Write::Put { kind, .. } if kind == OUTBOX => {}
        Write::Put {
            kind, id, indexes, ..
        } => {
            let st = tables::of(kind).ok_or_else(|| unknown(kind))?;
            let offered = *next_seq;
            *values
                .get_mut(SEQ_SLOT)
                .ok_or_else(|| StoreError::Unavailable(format!("{kind} {id}: not bound")))? =
                offered.into();
            let seq: i64 = conn
                .prepare_cached(&st.upsert)?
                .query_row(rusqlite::params_from_iter(&*values), |r| r.get(0))?;
            if seq != offered {
                // An update: the row keeps its seq and its index entries.
                return Ok(());
            }
            *next_seq += 1;
            for (name, key) in indexes {
                if let Some((_, sql)) = tables::JOIN_ROWS.iter().find(|(n, _)| n == name) {
                    conn.prepare_cached(sql)?.execute(params![key, id])?;
                }
            }
        }
        // Fan-out took the event: the cursor passes it (a row from before the cursor goes).
        Write::Delete { kind, id } if kind == OUTBOX => {
            conn.prepare_cached(OUTBOX_ROW_DELETE)?.execute([id])?;
            conn.prepare_cached(OUTBOX_CURSOR_PASS)?.execute([id])?;
        }
        Write::Delete { kind, id } => {
            let st = tables::of(kind).ok_or_else(|| unknown(kind))?;
            // Join rows go with the record (ON DELETE CASCADE).
            conn.prepare_cached(&st.delete)?.execute([id])?;
        }
        // A nonce's claim is settled before its request writes anything: the process that
        // owns this file checked it against its window under one lock (`domain::replay`), and
        // no other process can write here. There is no index to check it against either
        // (`0007_hot_path.sql`).
        Write::Claim { ns, .. } if ns == super::db::NONCES => {}
        Write::Claim { ns, value, owner } => {
            let unique = tables::unique(ns);
            let holder: Option<String> = match unique {
                Some(u) => conn
                    .prepare_cached(u.owner)?
                    .query_row([value], |r| r.get(0)),
                None => conn
                    .prepare_cached(tables::CLAIM_OWNER)?
                    .query_row(params![ns, value], |r| r.get(0)),
            }
            .optional()?;
            match holder {
                Some(holder) if holder != *owner => return Err(WriteError::Conflict(ns.clone())),
                Some(_) => {}
                None => match unique {
                    Some(u) => {
                        if let Some(sql) = u.insert {
                            conn.prepare_cached(sql)?.execute(params![value, owner])?;
                        }
                    }
                    None => {
                        conn.prepare_cached(tables::CLAIM_INSERT)?
                            .execute(params![ns, value, owner])?;
                    }
                },
            }
        }
        Write::Release { ns, value } => match tables::unique(ns) {
            Some(u) => {
                if let Some(sql) = u.delete {
                    conn.prepare_cached(sql)?.execute([value])?;
                }
            }
            None => {
                conn.prepare_cached(tables::CLAIM_DELETE)?
                    .execute(params![ns, value])?;
            }
        },
        Write::Expect { kind, id, version } => {
            let st = tables::of(kind).ok_or_else(|| unknown(kind))?;
            let current: Option<i64> = conn
                .prepare_cached(&st.version)?
                .query_row([id], |r| r.get(1))
                .optional()?;
            let current = current.map(from_sql).transpose()?;
            if current != *version {
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
        drop(self.reads.take());
        for reader in self.readers.drain(..) {
            if reader.join().is_err() {
                tracing::error!("store reader thread panicked");
            }
        }
        drop(self.queue.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("store writer thread panicked");
        }
        if let Some(dir) = self.temporary.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Reads rows of one table.
fn query(
    conn: &Connection,
    st: &Statements,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<Row>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, |r| tables::row(st.table, r))?;
    rows.collect()
}

/// Outbox rows written before the cursor existed (schema 7), oldest first.
const OUTBOX_ROWS: &str = "SELECT id, seq, version, event_type, object_id, merchant_id, \
     created_at FROM event_outbox ORDER BY seq LIMIT ?1";
/// The events after the cursor, oldest first, read as outbox records (same columns).
const OUTBOX_AFTER_CURSOR: &str = "SELECT id, seq, version, event_type, object_id, \
     merchant_id, created_at FROM events \
     WHERE seq > (SELECT seq FROM event_cursor WHERE id = 0) ORDER BY seq LIMIT ?1";
/// See [`OUTBOX_ROWS`].
const OUTBOX_ROW_DELETE: &str = "DELETE FROM event_outbox WHERE id = ?1";
/// Moves the cursor up to event `?1` (never back: fan-out may take older rows after newer).
const OUTBOX_CURSOR_PASS: &str = "UPDATE event_cursor \
     SET seq = max(seq, COALESCE((SELECT seq FROM events WHERE id = ?1), 0)) WHERE id = 0";

impl Store for SqliteStore {
    /// A cursor over the events, not a row per event: this store's writer thread numbers rows
    /// in commit order (see `0007_hot_path.sql`), so the events past the cursor are exactly
    /// those fan-out has not taken, and an event costs its commit no second row and fan-out
    /// no delete. Rows left from before the cursor are answered first.
    fn outbox(&self, limit: usize) -> Read<Rows> {
        let Some(st) = tables::of(OUTBOX) else {
            return Box::pin(std::future::ready(Err(unknown(OUTBOX))));
        };
        let n = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut rows = query(conn, st, OUTBOX_ROWS, [n]).map_err(|e| sql_error("read", &e))?;
            if rows.is_empty() {
                rows =
                    query(conn, st, OUTBOX_AFTER_CURSOR, [n]).map_err(|e| sql_error("read", &e))?;
            }
            stored_rows(rows)
        })
    }

    fn get(&self, kind: &str, id: &str) -> Read<Option<Arc<Stored>>> {
        let Some(st) = tables::of(kind) else {
            return Box::pin(std::future::ready(Err(unknown(kind))));
        };
        let epoch = match self.cache.record(kind, id) {
            Lookup::Hit(hit) => return Box::pin(std::future::ready(Ok(Some(hit)))),
            Lookup::Miss(epoch) => Some(epoch),
            Lookup::NotKept => None,
        };
        let cache = Arc::clone(&self.cache);
        let id = id.to_owned();
        self.read(move |conn| {
            let rows = query(conn, st, &st.get, [&id]).map_err(|e| sql_error("read", &e))?;
            let found = stored_rows(rows)?.pop().map(|(_, s)| Arc::new(s));
            if let (Some(epoch), Some(stored)) = (epoch, &found) {
                cache.fill_record(epoch, st.table.kind, &id, Arc::clone(stored));
            }
            Ok(found)
        })
    }

    fn owner(&self, ns: &str, value: &str) -> Read<Option<String>> {
        let epoch = match self.cache.owner(ns, value) {
            Lookup::Hit(hit) => return Box::pin(std::future::ready(Ok(Some(hit)))),
            Lookup::Miss(epoch) => Some(epoch),
            Lookup::NotKept => None,
        };
        let cache = Arc::clone(&self.cache);
        let (ns, value) = (ns.to_owned(), value.to_owned());
        self.read(move |conn| {
            let found: rusqlite::Result<Option<String>> = match tables::unique(&ns) {
                Some(u) => conn
                    .prepare_cached(u.owner)
                    .and_then(|mut st| st.query_row([&value], |r| r.get(0)).optional()),
                None => conn
                    .prepare_cached(tables::CLAIM_OWNER)
                    .and_then(|mut st| st.query_row(params![ns, value], |r| r.get(0)).optional()),
            };
            let found = found.map_err(|e| sql_error("read", &e))?;
            if let (Some(epoch), Some(owner)) = (epoch, &found) {
                cache.fill_owner(epoch, &ns, &value, owner);
            }
            Ok(found)
        })
    }

    fn list(&self, index: &str, key: &str, before: Option<u64>, limit: usize) -> Read<Rows> {
        // Seqs are positive i64s, so clamping the bounds loses nothing.
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let n = i64::try_from(limit).unwrap_or(i64::MAX);
        let lists = tables::lists(index);
        if lists.is_empty() {
            return Box::pin(std::future::ready(Err(StoreError::Unavailable(format!(
                "no list {index}"
            )))));
        }
        let key = key.to_owned();
        self.read(move |conn| {
            let mut rows = Vec::new();
            for (st, sql) in &lists {
                rows.extend(
                    query(conn, st, sql, params![key, before, n])
                        .map_err(|e| sql_error("read", &e))?,
                );
            }
            if lists.len() > 1 {
                // Several kinds in one list: merge by seq, newest first.
                rows.sort_by_key(|r| std::cmp::Reverse(r.1));
                rows.truncate(limit);
            }
            stored_rows(rows)
        })
    }

    fn scan_back(&self, kind: &str, before: Option<&str>, limit: usize) -> Read<Rows> {
        let Some(st) = tables::of(kind) else {
            return Box::pin(std::future::ready(Err(unknown(kind))));
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Ids are text; "\u{10FFFF}" sorts after any id, standing for "no upper bound".
        let before = before.unwrap_or("\u{10FFFF}").to_owned();
        self.read(move |conn| {
            let rows = query(conn, st, &st.scan_back, params![before, limit])
                .map_err(|e| sql_error("read", &e))?;
            stored_rows(rows)
        })
    }

    fn commit(&self, writes: Vec<Write>) -> Commit {
        let gone = || StoreError::Unavailable("store writer thread gone".to_owned());
        let (job, answer) = match Job::new(writes) {
            Ok(job) => job,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        let sent = self.queue.as_ref().is_some_and(|q| q.send(job).is_ok());
        if !sent {
            return Box::pin(std::future::ready(Err(gone())));
        }
        // What the job carried is freed here, on the caller's thread, after the answer.
        Box::pin(async move {
            answer
                .await
                .map_or_else(|_| Err(gone()), |(result, _)| result)
        })
    }

    fn check(&self) -> Read<()> {
        if self.writer.as_ref().is_none_or(JoinHandle::is_finished) {
            return Box::pin(std::future::ready(Err(StoreError::Unavailable(
                "store writer thread gone".to_owned(),
            ))));
        }
        self.read(|conn| {
            conn.prepare_cached("SELECT 1")
                .and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0)))
                .map(drop)
                .map_err(|e| sql_error("read", &e))
        })
    }
}
