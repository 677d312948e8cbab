//! The PostgreSQL store: the same typed tables as SQLite's (schema:
//! `api/migrations/postgres/`), for several API nodes on one database.
//!
//! # Client and pool
//!
//! `tokio-postgres` (the asynchronous client the other Rust PostgreSQL crates are built on)
//! with `deadpool-postgres`, a small pool of its connections with a per-connection statement
//! cache: three small crates over the client, where `sqlx` would bring its own runtime layer,
//! macros and drivers for databases we do not use. TLS is the workspace's rustls ([`tls`]).
//!
//! # Batches on several nodes
//!
//! Each [`Store::commit`] is one READ COMMITTED transaction, with the batch's writes run in
//! order (a later write sees earlier ones). Two batches on different nodes are kept from
//! interleaving by locks held to the end of their transactions (strict two-phase locking):
//!
//! * first, one statement takes a transaction-scoped advisory lock on every record the batch
//!   puts or expects and every unique value it claims or releases, sorted by key, so batches
//!   touching the same record or value run one after the other and never deadlock on these
//!   locks. This is what makes "absent" checkable: an `Expect` of no record, or the insert a
//!   `Put` may turn into, holds the lock on a row that does not exist yet;
//! * `Expect` reads the version with `SELECT … FOR UPDATE` (a row lock: a `Delete`, which takes
//!   no advisory lock, waits for it, or it for the `Delete`);
//! * `Put` is one `INSERT … ON CONFLICT DO UPDATE` (seq from the sequence `record_seq`, kept on
//!   replace; version counted), `Delete` a `DELETE`, both locking their rows;
//! * `Claim` reads the holder under the value's lock and inserts if free.
//!
//! Each statement of READ COMMITTED sees everything committed before it started, and every
//! statement touching a record or value runs after its lock is taken; so a batch sees the last
//! committed state of everything it touches, and two batches touching the same thing behave as
//! if run one after the other, like SQLite's single writer: of two nodes racing the same
//! `Expect` or `Claim`, exactly one succeeds and the other gets [`StoreError::Conflict`]. A
//! deadlock PostgreSQL breaks (row locks taken in opposite orders by two batches that share no
//! advisory lock) or a serialisation failure (a server configured SERIALIZABLE) rolls the batch
//! back, and it runs again from the start, a few times. Nothing is grouped across callers:
//! PostgreSQL already flushes the WAL of concurrent commits together, which is what SQLite's
//! writer thread groups for (see BENCHMARKS.md).
//!
//! A commit runs in a task of its own, so dropping its future does not cancel it halfway
//! (as with SQLite: the write happens or fails, unobserved). Reads run on a pooled connection
//! when awaited; they have no effects to lose.

mod batch;
mod sql;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use pgtls as tls;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use zeroize::Zeroizing;

use super::tables::{self, Ty};
use super::{Commit, Read, Rows, Store, StoreError, Stored, Write};
use sql::Statements;

/// Schema migrations, applied in order in one transaction at open; migration `i` (0-based) is
/// schema version `i + 1`. Append only: never edit an applied migration.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_typed_tables.sql"),
    include_str!("../../migrations/postgres/0002_acquirer_link.sql"),
    include_str!("../../migrations/postgres/0003_several_nodes.sql"),
    include_str!("../../migrations/postgres/0004_events.sql"),
    include_str!("../../migrations/postgres/0005_portal.sql"),
];

/// How often a batch that PostgreSQL rolled back for a deadlock or a serialisation failure is
/// run again before the caller gets `Unavailable`.
const ATTEMPTS: u32 = 4;

/// How long a caller waits for a pooled connection, and a new connection for the server.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// How to reach the server.
pub struct PgOptions {
    /// `postgres://user@host:port/db` (or libpq's `key=value` form); no password in it.
    pub url: String,
    /// The password, read from a file or the environment by the caller.
    pub password: Option<Zeroizing<String>>,
    /// TLS to the server.
    pub tls: PgTls,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Hold the database for this process alone (see [`PgStore::open`]).
    pub exclusive: bool,
}

impl fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("tls", &self.tls)
            .field("pool_size", &self.pool_size)
            .field("exclusive", &self.exclusive)
            .finish()
    }
}

/// TLS to the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTls {
    /// No TLS: only for loopback addresses and Unix sockets (checked at open).
    Disable,
    /// TLS, trusting only the CA certificates of this PEM file, with the server's name checked
    /// against its certificate (libpq's `verify-full`).
    VerifyFull {
        /// The CA file.
        ca_file: PathBuf,
    },
}

/// The PostgreSQL store: a pool of connections to one database (see the module docs).
pub struct PgStore {
    pool: Pool,
    /// `host:port/db`, for Debug and logs (never a password: the URL holds none).
    target: String,
    runtime: tokio::runtime::Handle,
    /// The session holding the process lock, when exclusive (closing it releases the lock).
    holder: Option<tokio_postgres::Client>,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .field("pool_size", &status.max_size)
            .field("connections", &status.size)
            .finish()
    }
}

/// Why a batch failed, before the retry decision.
enum Failure {
    /// A conflict to report (an `Expect`, a `Claim`, a constraint).
    Conflict(String),
    /// Rolled back by PostgreSQL for a deadlock or a serialisation failure: run it again.
    Retry,
    /// Anything else.
    Unavailable(String),
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Conflict(what) => Self::Conflict(what),
            Failure::Retry => Self::Unavailable(format!(
                "the batch was rolled back {ATTEMPTS} times (deadlock or serialisation failure)"
            )),
            Failure::Unavailable(msg) => Self::Unavailable(msg),
        }
    }
}

/// Classifies a client error. Messages keep the SQLSTATE and PostgreSQL's message line but
/// never its DETAIL (which quotes the values of a violated key), and data errors (class 22,
/// whose messages quote the input) and constraint violations (23) carry no text at all.
fn failure(context: &str, e: &tokio_postgres::Error) -> Failure {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        return match code {
            "40001" | "40P01" => Failure::Retry,
            // The data cannot be stored as given (a constraint, or text PostgreSQL cannot hold,
            // such as a NUL character): the request's fault, not the database's health.
            c if c.starts_with("23") || c.starts_with("22") => {
                Failure::Conflict("constraint".to_owned())
            }
            c => Failure::Unavailable(format!("{context}: SQLSTATE {c}: {}", db.message())),
        };
    }
    if e.is_closed() {
        return Failure::Unavailable(format!("{context}: connection to the database closed"));
    }
    // Connection, I/O, TLS and conversion errors: their text names no values.
    Failure::Unavailable(format!("{context}: {e}"))
}

fn unavailable(context: &str, e: &tokio_postgres::Error) -> StoreError {
    match failure(context, e) {
        Failure::Unavailable(msg) => StoreError::Unavailable(msg),
        _ => StoreError::Unavailable(format!("{context}: database error")),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => unavailable("connect", &e),
        PoolError::Timeout(_) => {
            StoreError::Unavailable("timed out waiting for a database connection".to_owned())
        }
        other => StoreError::Unavailable(format!("database pool: {other}")),
    }
}

fn unknown(kind: &str) -> StoreError {
    StoreError::Unavailable(format!("no table for record kind {kind}"))
}

impl PgStore {
    /// Connects, checks the server and migrates the schema (under an advisory lock, so nodes
    /// starting together migrate once), then keeps a pool of up to `pool_size` connections.
    ///
    /// Refused: a password in the URL, TLS off for a host that is not loopback or a socket, a
    /// database not in UTF-8, and a schema newer than this build knows (an older binary could
    /// misread or damage data written by a newer one).
    pub async fn open(options: &PgOptions) -> Result<Self, StoreError> {
        let ca_file = match &options.tls {
            PgTls::Disable => None,
            PgTls::VerifyFull { ca_file } => Some(ca_file.as_path()),
        };
        let (config, tls, target) = tls::settings(&tls::Target {
            url: &options.url,
            password: options.password.as_ref().map(|p| p.as_bytes()),
            ca_file,
            application: "viopay-api",
            session: "",
            connect_timeout: POOL_WAIT,
        })
        .map_err(StoreError::Unavailable)?;
        let holder = if options.exclusive {
            Some(hold_exclusively(&config, tls.clone()).await?)
        } else {
            None
        };
        let pool = tls::pool(config, tls, options.pool_size, POOL_WAIT)
            .map_err(StoreError::Unavailable)?;
        let mut client = pool.get().await.map_err(pool_error)?;
        let encoding = client
            .query_one("SHOW server_encoding", &[])
            .await
            .map_err(|e| unavailable("server_encoding", &e))?;
        let encoding: String = encoding
            .try_get(0)
            .map_err(|e| unavailable("server_encoding", &e))?;
        if encoding != "UTF8" {
            return Err(StoreError::Unavailable(format!(
                "the database's encoding is {encoding}; UTF8 is required"
            )));
        }
        migrate(&mut client, MIGRATIONS).await?;
        drop(client);
        tracing::info!(database = %target, "store opened (PostgreSQL)");
        Ok(Self {
            pool,
            target,
            runtime: tokio::runtime::Handle::current(),
            holder,
        })
    }
}

/// Takes the process lock on a session of its own, kept for the store's life, or fails if
/// another process holds it.
///
/// Until the API's own coordination across nodes exists (crash recovery treats the pending
/// charges of every other start as orphans and voids them; used nonces and idempotency
/// reservations are also held in the process), one API process per database is what the rest
/// of the API assumes, as SQLite's lock file enforces; this is the same guard for PostgreSQL.
/// The server releases a session lock when the session ends, `kill -9` of the process included.
async fn hold_exclusively(
    config: &tokio_postgres::Config,
    tls: tls::Rustls,
) -> Result<tokio_postgres::Client, StoreError> {
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|e| unavailable("connect", &e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %unavailable("process lock session", &e), "database process lock lost");
        }
    });
    let held: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&sql::PROCESS_LOCK])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| unavailable("process lock", &e))?;
    if !held {
        return Err(StoreError::Unavailable(
            "another api process has this database open (one process per database)".into(),
        ));
    }
    Ok(client)
}

/// Applies the migrations not yet recorded in `schema_migrations`, all in one transaction
/// that first takes the migration advisory lock: a second node opening at the same time waits,
/// then finds them applied. Refuses a database whose schema is newer than `migrations`.
pub(super) async fn migrate(
    client: &mut deadpool_postgres::Client,
    migrations: &[&str],
) -> Result<(), StoreError> {
    let e = |context: &'static str| move |e: tokio_postgres::Error| unavailable(context, &e);
    let tx = client.transaction().await.map_err(e("begin migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&sql::MIGRATION_LOCK])
        .await
        .map_err(e("migration lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version    BIGINT PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(e("schema_migrations"))?;
    let applied: Vec<i64> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .map_err(e("schema version"))?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(e("schema version"))?;
    let known = i64::try_from(migrations.len())
        .map_err(|_| StoreError::Unavailable("too many migrations".to_owned()))?;
    if let Some(current) = applied.iter().copied().max().filter(|v| *v > known) {
        return Err(StoreError::Unavailable(format!(
            "database schema version {current} is newer than this build supports ({known}); \
             refusing to open it (upgrade the binary)"
        )));
    }
    for (version, sql) in (1_i64..).zip(migrations) {
        if applied.contains(&version) {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|err| unavailable(&format!("migration {version}"), &err))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(e("record migration"))?;
        tracing::info!(version, "store schema migration applied (PostgreSQL)");
    }
    tx.commit().await.map_err(e("commit migration"))
}

/// The pooled connection, or `Unavailable`.
async fn connection(pool: &Pool) -> Result<deadpool_postgres::Client, StoreError> {
    pool.get().await.map_err(pool_error)
}

/// Runs a read; a connection the server closed (a restart, a failover) is tried once more on a
/// fresh one, since a read has no effects to repeat.
async fn query(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let mut tries = 0;
    loop {
        tries += 1;
        let client = connection(pool).await?;
        let result = match client.prepare_cached(sql).await {
            Ok(st) => client.query(&st, params).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(rows) => return Ok(rows),
            Err(e) if e.is_closed() && tries < 2 => {}
            Err(e) => return Err(unavailable("read", &e)),
        }
    }
}

/// A row read with [`Statements::select`] as `(id, Stored)`.
fn stored(st: &Statements, row: &tokio_postgres::Row) -> Result<(String, Stored), StoreError> {
    let bad = |e: tokio_postgres::Error| unavailable("read a row", &e);
    let id: String = row.try_get(0).map_err(bad)?;
    let seq: i64 = row.try_get(1).map_err(bad)?;
    let version: i64 = row.try_get(2).map_err(bad)?;
    let body = tables::body(st.table, &id, |i, ty| column(row, i, ty))?;
    let positive = |n: i64| {
        u64::try_from(n).map_err(|_| StoreError::Unavailable("negative seq in database".into()))
    };
    Ok((
        id,
        Stored {
            seq: positive(seq)?,
            version: positive(version)?,
            body,
        },
    ))
}

/// Column `i` as JSON, by its type.
fn column(row: &tokio_postgres::Row, i: usize, ty: Ty) -> Result<Value, StoreError> {
    let bad = |e: tokio_postgres::Error| unavailable("read a column", &e);
    Ok(match ty {
        Ty::Text => row
            .try_get::<_, Option<String>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::String),
        Ty::Int => row
            .try_get::<_, Option<i64>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::from),
        Ty::Bool => row
            .try_get::<_, Option<bool>>(i)
            .map_err(bad)?
            .map_or(Value::Null, Value::Bool),
        Ty::Json => match row.try_get::<_, Option<String>>(i).map_err(bad)? {
            None => Value::Null,
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                StoreError::Unavailable(format!("column {i}: stored JSON unreadable: {e}"))
            })?,
        },
        Ty::Money => {
            return Err(StoreError::Unavailable(
                "an amount is read as two columns".to_owned(),
            ));
        }
    })
}

impl Store for PgStore {
    fn get(&self, kind: &str, id: &str) -> Read<Option<Arc<Stored>>> {
        let Some(st) = sql::of(kind) else {
            return Box::pin(std::future::ready(Err(unknown(kind))));
        };
        let (pool, id) = (self.pool.clone(), id.to_owned());
        Box::pin(async move {
            let rows = query(&pool, &st.get, &[&id]).await?;
            rows.first()
                .map(|r| stored(st, r).map(|(_, s)| Arc::new(s)))
                .transpose()
        })
    }

    fn owner(&self, ns: &str, value: &str) -> Read<Option<String>> {
        let (pool, ns, value) = (self.pool.clone(), ns.to_owned(), value.to_owned());
        Box::pin(async move {
            let rows = match tables::unique(&ns) {
                Some(u) => query(&pool, &tables::numbered(u.owner), &[&value]).await?,
                None => {
                    let sql = tables::numbered(tables::CLAIM_OWNER);
                    query(&pool, &sql, &[&ns, &value]).await?
                }
            };
            batch::first_text(&rows).map_err(StoreError::from)
        })
    }

    fn list(&self, index: &str, key: &str, before: Option<u64>, limit: usize) -> Read<Rows> {
        // Seqs are positive i64s, so clamping the bounds loses nothing.
        let before = before.map_or(i64::MAX, |b| i64::try_from(b).unwrap_or(i64::MAX));
        let n = i64::try_from(limit).unwrap_or(i64::MAX);
        let lists = sql::lists(index);
        if lists.is_empty() {
            return Box::pin(std::future::ready(Err(StoreError::Unavailable(format!(
                "no list {index}"
            )))));
        }
        let (pool, key) = (self.pool.clone(), key.to_owned());
        Box::pin(async move {
            let mut out = Vec::new();
            for (st, sql) in &lists {
                for row in query(&pool, sql, &[&key, &before, &n]).await? {
                    out.push(stored(st, &row)?);
                }
            }
            if lists.len() > 1 {
                // Several kinds in one list: merge by seq, newest first.
                out.sort_by_key(|(_, s)| std::cmp::Reverse(s.seq));
                out.truncate(limit);
            }
            Ok(out)
        })
    }

    fn scan_back(&self, kind: &str, before: Option<&str>, limit: usize) -> Read<Rows> {
        let Some(st) = sql::of(kind) else {
            return Box::pin(std::future::ready(Err(unknown(kind))));
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Keys compare bytewise (COLLATE "C"); U+10FFFF sorts after any id.
        let before = before.unwrap_or("\u{10FFFF}").to_owned();
        let pool = self.pool.clone();
        Box::pin(async move {
            query(&pool, &st.scan_back, &[&before, &limit])
                .await?
                .iter()
                .map(|r| stored(st, r))
                .collect()
        })
    }

    fn commit(&self, writes: Vec<Write>) -> Commit {
        let task = self.runtime.spawn(batch::commit(self.pool.clone(), writes));
        Box::pin(async move {
            task.await.unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "store commit task ended".to_owned(),
                ))
            })
        })
    }

    fn check(&self) -> Read<()> {
        let pool = self.pool.clone();
        Box::pin(async move { query(&pool, "SELECT 1", &[]).await.map(drop) })
    }

    fn shared(&self) -> bool {
        self.holder.is_none()
    }
}
