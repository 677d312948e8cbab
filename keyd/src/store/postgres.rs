//! The PostgreSQL key store: several keyd nodes on one database (schema:
//! `keyd/migrations/postgres/`, in the PostgreSQL schema `keyd`).
//!
//! # Calling PostgreSQL from a synchronous trait
//!
//! [`KeyStore`] and [`AdminStore`] are synchronous, and keyd calls them from two kinds of
//! thread: the blocking pool (management operations) and, for the data path's cache misses,
//! the socket's tokio worker threads themselves. The synchronous `postgres` crate runs each
//! call with `block_on` on a runtime of its own, which panics on a thread that is already
//! inside a tokio runtime, so it cannot serve the second kind. The store therefore owns a
//! small tokio runtime (two threads, named `keyd-store-pg`) with a `deadpool-postgres` pool of
//! `tokio-postgres` connections (the crates the API's store uses; TLS through `pgtls`), and
//! each call is spawned onto it while the caller waits on a channel, as a call to the SQLite
//! store waits for its writer thread. No caller's runtime is ever entered or blocked on.
//!
//! # Several nodes writing at once
//!
//! Every multi-row operation is one READ COMMITTED transaction that first locks what it
//! decides on, so two nodes behave as if they ran one after the other:
//!
//! * a device's identity and key-set changes lock the device row (`SELECT … FOR UPDATE`);
//! * a key-state change locks the key's own record (device or imported key), which exists
//!   whether or not the key has a state row yet, then checks `from` against the state it reads
//!   under that lock: of two officers racing on two nodes, the second sees the first's state;
//! * a login (`begin_login`, `finish_login`) locks the officer's row, so parallel guesses on
//!   several nodes are all counted and cannot outrun the lockout;
//! * `take_approvals` takes a transaction-scoped advisory lock on (action, subject), so one
//!   pair of approvals is used up by exactly one action on one node;
//! * `purge_destroyed` takes due keys with `FOR UPDATE SKIP LOCKED`: each erasure is done, and
//!   reported for the audit log, by exactly one node;
//! * the state version is one row, moved in the same transaction as the change it announces,
//!   always as the last lock a transaction takes (so it adds no deadlock).
//!
//! A transaction PostgreSQL rolls back for a deadlock or a serialisation failure (`40P01`,
//! `40001`) runs again from the start, a few times. Every connection runs with server-side
//! `statement_timeout` and `idle_in_transaction_session_timeout`, so a node stuck halfway does
//! not hold its locks for long.
//!
//! # What erasure means here
//!
//! `purge_destroyed` overwrites a destroyed key's block with the empty string. PostgreSQL, unlike
//! SQLite's `secure_delete`, leaves the old row version in the table file until `VACUUM` reuses
//! its space, and in the WAL and its archives and in backups: the block (sealed under the LMK)
//! is unreachable through keyd at once but its bytes go only with those.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use deadpool_postgres::{Object, Pool};
use zeroize::Zeroizing;

use super::admin::{CHANGES_KEPT, change_from, contiguous};
use super::lmk::{LmkMove, LmkRecord, LmkStore, Reseal, Sealed, record_from};
use super::zmk::ZmkStore;
use super::{
    AdminStore, Approval, Change, DeviceRecord, ImportedRecord, KeyRecord, KeyState, KeyStore,
    ListQuery, Listed, LoginGate, OfficerRecord, ZoneRecord,
};
use crate::Error;
use crate::keys::KeyKind;

/// Schema migrations, applied in order in one transaction at open; migration `i` (0-based) is
/// schema version `i + 1`. Append only: never edit an applied migration.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/postgres/0001_key_store.sql"),
    include_str!("../../migrations/postgres/0002_lmk_rotation.sql"),
    include_str!("../../migrations/postgres/0003_zmk_rotation.sql"),
];

/// How often a transaction rolled back for a deadlock or a serialisation failure runs again.
const ATTEMPTS: u32 = 4;

/// How long a caller waits for a pooled connection, and a new connection for the server.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// The longest a caller waits for one store call, whatever happens on the network.
const CALL_TIMEOUT: Duration = Duration::from_secs(40);

/// Advisory lock (one 64-bit key: `keydmigr`) held while the schema is migrated, so nodes
/// starting together migrate once.
const MIGRATION_LOCK: i64 = 0x6B65_7964_6D69_6772;

/// Namespace of the two-key advisory locks on approvals (two 32-bit keys never conflict with
/// the one 64-bit keys the API uses).
const APPROVAL_LOCKS: i32 = 0x6B61_7070; // "kapp"

/// How to reach the server.
pub struct PgOptions {
    /// `postgres://user@host:port/db` (or libpq's `key=value` form); no password in it.
    pub url: String,
    /// The password, read from a file or the environment by the caller.
    pub password: Option<Zeroizing<String>>,
    /// TLS trusting only this CA (PEM), with the server's name checked; `None`: no TLS, allowed
    /// only for loopback hosts and Unix sockets.
    pub ca_file: Option<PathBuf>,
    /// Connections in the pool.
    pub pool_size: usize,
}

impl fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// The PostgreSQL key store (see the module docs).
pub struct PgKeyStore {
    pool: Pool,
    /// `host:port/db`, for Debug and logs (never a password: the URL holds none).
    target: String,
    handle: tokio::runtime::Handle,
    /// The store's own runtime; shut down in the background on drop, so dropping the store
    /// inside another runtime is allowed.
    runtime: Option<tokio::runtime::Runtime>,
}

impl fmt::Debug for PgKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgKeyStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Drop for PgKeyStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Why a transaction failed, before the retry decision.
enum Fail {
    /// Rolled back for a deadlock or a serialisation failure: run it again.
    Retry(Error),
    /// Final.
    Keyd(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Self::Keyd(e)
    }
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Self {
        let retry = e
            .as_db_error()
            .is_some_and(|db| matches!(db.code().code(), "40001" | "40P01"));
        let e = pg_error(&e);
        if retry { Self::Retry(e) } else { Self::Keyd(e) }
    }
}

/// A client error as keyd's: the SQLSTATE and PostgreSQL's message line, never its DETAIL
/// (which quotes the values of a violated key); data errors (class 22, whose messages quote
/// the input) and constraint violations (23) carry no text at all.
fn pg_error(e: &tokio_postgres::Error) -> Error {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        if code.starts_with("22") || code.starts_with("23") {
            return Error::Store(format!("PostgreSQL refused the data (SQLSTATE {code})"));
        }
        return Error::Store(format!("PostgreSQL: SQLSTATE {code}: {}", db.message()));
    }
    if e.is_closed() {
        return Error::Store("the connection to PostgreSQL closed".into());
    }
    // Connection, I/O, TLS and conversion errors: their text names no values.
    Error::Store(format!("PostgreSQL: {e}"))
}

fn pool_error(e: deadpool_postgres::PoolError) -> Fail {
    use deadpool_postgres::PoolError;
    Fail::Keyd(match e {
        PoolError::Backend(e) => pg_error(&e),
        PoolError::Timeout(_) => {
            Error::Store("timed out waiting for a PostgreSQL connection".into())
        }
        other => Error::Store(format!("PostgreSQL pool: {other}")),
    })
}

/// Runs `attempt` again while PostgreSQL rolls it back for a deadlock or a serialisation
/// failure, at most [`ATTEMPTS`] times.
async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Fail>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(Fail::Retry(_)) if tries < ATTEMPTS => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(5 * u64::from(tries))).await;
            }
            Err(Fail::Retry(e) | Fail::Keyd(e)) => return Err(e),
        }
    }
}

async fn client(pool: &Pool) -> Result<Object, Fail> {
    pool.get().await.map_err(pool_error)
}

fn seconds(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn kcv(v: &[u8]) -> Result<[u8; 3], Fail> {
    v.try_into()
        .map_err(|_| Fail::Keyd(Error::Store("a stored check value is not 3 bytes".into())))
}

impl PgKeyStore {
    /// Connects, checks the server and migrates the schema (under an advisory lock, so nodes
    /// starting together migrate once), then keeps a pool of up to `pool_size` connections.
    ///
    /// Refused: a password in the URL, TLS off for a host that is not loopback or a socket, and
    /// a schema newer than this build knows.
    ///
    /// # Errors
    /// [`Error::Config`] for the URL and TLS settings, [`Error::Store`] for the server.
    pub fn open(options: &PgOptions) -> Result<Self, Error> {
        let (config, tls, target) = pgtls::settings(&pgtls::Target {
            url: &options.url,
            password: options.password.as_ref().map(|p| p.as_bytes()),
            ca_file: options.ca_file.as_deref(),
            application: "keyd",
            session: "-c search_path=keyd",
            connect_timeout: POOL_WAIT,
        })
        .map_err(Error::Config)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("keyd-store-pg")
            .enable_all()
            .build()?;
        let pool = pgtls::pool(config, tls, options.pool_size, POOL_WAIT).map_err(Error::Store)?;
        let store = Self {
            pool,
            target,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        };
        store.call(|pool| async move {
            let mut c = client(&pool).await.map_err(|f| match f {
                Fail::Retry(e) | Fail::Keyd(e) => e,
            })?;
            migrate(&mut c).await
        })?;
        tracing::info!(database = %store.target, "key store opened (PostgreSQL)");
        Ok(store)
    }

    /// Runs `op` on the store's runtime and waits for its answer on this thread (see the
    /// module docs: never enters the caller's runtime).
    fn call<T, F, Fut>(&self, op: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let fut = op(self.pool.clone());
        self.handle.spawn(async move {
            let answer = match tokio::time::timeout(CALL_TIMEOUT, fut).await {
                Ok(answer) => answer,
                Err(_) => Err(Error::Store("PostgreSQL did not answer in time".into())),
            };
            let _ = tx.send(answer);
        });
        rx.recv()
            .map_err(|_| Error::Store("the PostgreSQL store has stopped".into()))?
    }
}

async fn migrate(c: &mut Object) -> Result<(), Error> {
    let pg = |e: tokio_postgres::Error| pg_error(&e);
    let tx = c.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg)?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS keyd;
         CREATE TABLE IF NOT EXISTS keyd.schema_version (version INTEGER NOT NULL);",
    )
    .await
    .map_err(pg)?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM keyd.schema_version",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(pg)?;
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if current > known {
        return Err(Error::Store(format!(
            "the key store's schema is version {current}, newer than this keyd knows ({known})"
        )));
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        tx.batch_execute(sql).await.map_err(pg)?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO keyd.schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(pg)?;
        tracing::info!(version, "key store schema migrated");
    }
    tx.commit().await.map_err(pg)
}

const KEY_COLUMNS: &str = "key_id, device_id, key_set_id, kind, kcv, block, revoked, created_at";

fn key_from_row(r: &tokio_postgres::Row) -> Result<KeyRecord, Fail> {
    let kind: String = r.try_get(3)?;
    Ok(KeyRecord {
        key_id: r.try_get(0)?,
        device_id: r.try_get(1)?,
        key_set_id: r.try_get(2)?,
        kind: KeyKind::from_name(&kind)
            .ok_or_else(|| Fail::Keyd(Error::Store("a stored key has an unknown kind".into())))?,
        kcv: kcv(r.try_get(4)?)?,
        block: r.try_get(5)?,
        revoked: r.try_get(6)?,
        created_at: unsigned(r.try_get(7)?),
    })
}

const OFFICER_COLUMNS: &str =
    "name, salt, iterations, hash, failures, locked_until, created_at, last_login";

fn bytes<const N: usize>(v: &[u8]) -> Result<[u8; N], Fail> {
    v.try_into().map_err(|_| {
        Fail::Keyd(Error::Store(
            "a stored credential has a wrong length".into(),
        ))
    })
}

fn officer_from_row(r: &tokio_postgres::Row) -> Result<OfficerRecord, Fail> {
    Ok(OfficerRecord {
        name: r.try_get(0)?,
        salt: bytes(r.try_get(1)?)?,
        iterations: u32::try_from(r.try_get::<_, i64>(2)?).unwrap_or(u32::MAX),
        hash: bytes(r.try_get(3)?)?,
        failures: u32::try_from(r.try_get::<_, i64>(4)?).unwrap_or(u32::MAX),
        locked_until: r.try_get::<_, Option<i64>>(5)?.map(unsigned),
        created_at: unsigned(r.try_get(6)?),
        last_login: r.try_get::<_, Option<i64>>(7)?.map(unsigned),
    })
}

async fn insert_key(tx: &deadpool_postgres::Transaction<'_>, k: &KeyRecord) -> Result<(), Fail> {
    let st = tx
        .prepare_cached(
            "INSERT INTO keys (key_id, device_id, key_set_id, kind, kcv, block, revoked, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .await?;
    tx.execute(
        &st,
        &[
            &k.key_id,
            &k.device_id,
            &k.key_set_id,
            &k.kind.name(),
            &k.kcv.as_slice(),
            &k.block,
            &k.revoked,
            &seconds(k.created_at),
        ],
    )
    .await?;
    Ok(())
}

/// Moves the state version for `change`; the last lock of the transaction that calls it (the
/// row lock on `state_version` also orders the versions: each commits after the one before).
async fn bump_version(
    tx: &deadpool_postgres::Transaction<'_>,
    change: &Change,
) -> Result<(), Fail> {
    let (device, key) = match change {
        Change::All => (None, None),
        Change::Device(d) => (Some(d.as_str()), None),
        Change::Key(k) => (None, Some(k.as_str())),
    };
    let st = tx
        .prepare_cached(
            "WITH v AS (UPDATE state_version SET value = value + 1 RETURNING value)
             INSERT INTO state_changes (version, device_id, key_id)
             SELECT value, $1, $2 FROM v RETURNING version",
        )
        .await?;
    let version: i64 = tx.query_one(&st, &[&device, &key]).await?.try_get(0)?;
    let st = tx
        .prepare_cached("DELETE FROM state_changes WHERE version <= $1")
        .await?;
    tx.execute(&st, &[&version.saturating_sub(seconds(CHANGES_KEPT))])
        .await?;
    Ok(())
}

async fn read_state(
    c: &(impl tokio_postgres::GenericClient + Sync),
    key_id: &str,
) -> Result<KeyState, Fail> {
    let row = c
        .query_opt(
            "SELECT state, destroy_after FROM key_states WHERE key_id = $1",
            &[&key_id],
        )
        .await?;
    Ok(match row {
        None => KeyState::Active,
        Some(r) => KeyState::from_row(Some(r.try_get::<_, &str>(0)?), r.try_get(1)?),
    })
}

impl KeyStore for PgKeyStore {
    fn device(&self, device_id: &str) -> Result<Option<DeviceRecord>, Error> {
        let device_id = device_id.to_owned();
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                let st = c
                    .prepare_cached(
                        "SELECT device_id, zone, identity_key_id, key_set_id, previous_key_set_id,
                                rotated_at, created_at
                         FROM devices WHERE device_id = $1",
                    )
                    .await?;
                let Some(r) = c.query_opt(&st, &[&device_id]).await? else {
                    return Ok(None);
                };
                Ok(Some(DeviceRecord {
                    device_id: r.try_get(0)?,
                    zone: r.try_get(1)?,
                    identity_key_id: r.try_get(2)?,
                    key_set_id: r.try_get(3)?,
                    previous_key_set_id: r.try_get(4)?,
                    rotated_at: r.try_get::<_, Option<i64>>(5)?.map(unsigned),
                    created_at: unsigned(r.try_get(6)?),
                }))
            })
            .await
        })
    }

    fn create_device(&self, device: &DeviceRecord, identity: &KeyRecord) -> Result<(), Error> {
        let (device, identity) = (device.clone(), identity.clone());
        self.call(|pool| async move {
            retrying(|| async {
                let mut c = client(&pool).await?;
                let tx = c.transaction().await?;
                let n = tx
                    .execute(
                        "INSERT INTO devices (device_id, zone, identity_key_id, created_at)
                         VALUES ($1, $2, $3, $4) ON CONFLICT (device_id) DO NOTHING",
                        &[
                            &device.device_id,
                            &device.zone,
                            &device.identity_key_id,
                            &seconds(device.created_at),
                        ],
                    )
                    .await?;
                if n == 0 {
                    return Err(Error::Conflict("the device exists already").into());
                }
                insert_key(&tx, &identity).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn replace_identity(&self, device_id: &str, identity: &KeyRecord) -> Result<(), Error> {
        let (device_id, identity) = (device_id.to_owned(), identity.clone());
        self.call(|pool| async move {
            retrying(|| async {
                let mut c = client(&pool).await?;
                let tx = c.transaction().await?;
                let row = tx
                    .query_opt(
                        "SELECT identity_key_id FROM devices WHERE device_id = $1 FOR UPDATE",
                        &[&device_id],
                    )
                    .await?
                    .ok_or(Error::NotFound("device"))?;
                let old: String = row.try_get(0)?;
                tx.execute("UPDATE keys SET revoked = true WHERE key_id = $1", &[&old])
                    .await?;
                tx.execute(
                    "UPDATE devices SET identity_key_id = $2 WHERE device_id = $1",
                    &[&device_id, &identity.key_id],
                )
                .await?;
                insert_key(&tx, &identity).await?;
                bump_version(&tx, &Change::Device(device_id.clone())).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
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
        self.call(|pool| async move {
            retrying(|| async {
                let mut c = client(&pool).await?;
                let tx = c.transaction().await?;
                let row = tx
                    .query_opt(
                        "SELECT key_set_id, previous_key_set_id FROM devices
                         WHERE device_id = $1 FOR UPDATE",
                        &[&device_id],
                    )
                    .await?
                    .ok_or(Error::NotFound("device"))?;
                let current: Option<String> = row.try_get(0)?;
                let previous: Option<String> = row.try_get(1)?;
                if let Some(previous) = &previous {
                    tx.execute(
                        "UPDATE keys SET revoked = true WHERE key_set_id = $1",
                        &[previous],
                    )
                    .await?;
                }
                let rotated_at = current.as_ref().map(|_| seconds(now));
                tx.execute(
                    "UPDATE devices SET previous_key_set_id = key_set_id, rotated_at = $3,
                         key_set_id = $2
                     WHERE device_id = $1",
                    &[&device_id, &key_set_id, &rotated_at],
                )
                .await?;
                for k in &keys {
                    insert_key(&tx, k).await?;
                }
                if current.is_some() {
                    // A rotation: the cached keys of the old current set now expire.
                    bump_version(&tx, &Change::Device(device_id.clone())).await?;
                }
                tx.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn revoke_identity(&self, device_id: &str) -> Result<(), Error> {
        let device_id = device_id.to_owned();
        self.call(|pool| async move {
            retrying(|| async {
                let mut c = client(&pool).await?;
                let tx = c.transaction().await?;
                let n = tx
                    .execute(
                        "UPDATE keys SET revoked = true
                         WHERE key_id = (SELECT identity_key_id FROM devices WHERE device_id = $1)",
                        &[&device_id],
                    )
                    .await?;
                if n == 0 {
                    return Err(Error::NotFound("device").into());
                }
                bump_version(&tx, &Change::Device(device_id.clone())).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn revoke_key_sets(&self, device_id: &str) -> Result<(), Error> {
        let device_id = device_id.to_owned();
        self.call(|pool| async move {
            retrying(|| async {
                let mut c = client(&pool).await?;
                let tx = c.transaction().await?;
                let n = tx
                    .execute(
                        "UPDATE devices SET key_set_id = NULL, previous_key_set_id = NULL,
                             rotated_at = NULL
                         WHERE device_id = $1",
                        &[&device_id],
                    )
                    .await?;
                if n == 0 {
                    return Err(Error::NotFound("device").into());
                }
                tx.execute(
                    "UPDATE keys SET revoked = true
                     WHERE device_id = $1 AND key_set_id IS NOT NULL",
                    &[&device_id],
                )
                .await?;
                bump_version(&tx, &Change::Device(device_id.clone())).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn key(&self, key_id: &str) -> Result<Option<KeyRecord>, Error> {
        let key_id = key_id.to_owned();
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                let st = c
                    .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE key_id = $1"))
                    .await?;
                c.query_opt(&st, &[&key_id])
                    .await?
                    .as_ref()
                    .map(key_from_row)
                    .transpose()
            })
            .await
        })
    }

    fn key_set(&self, key_set_id: &str) -> Result<Vec<KeyRecord>, Error> {
        let key_set_id = key_set_id.to_owned();
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                let st = c
                    .prepare_cached(&format!(
                        "SELECT {KEY_COLUMNS} FROM keys WHERE key_set_id = $1"
                    ))
                    .await?;
                let mut keys = c
                    .query(&st, &[&key_set_id])
                    .await?
                    .iter()
                    .map(key_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                keys.sort_by_key(|k| KeyKind::SET.iter().position(|s| *s == k.kind));
                Ok(keys)
            })
            .await
        })
    }

    fn insert_imported(&self, r: &ImportedRecord) -> Result<(), Error> {
        let r = r.clone();
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                let n = c
                    .execute(
                        "INSERT INTO imported_keys (key_id, label, kcv, block, created_at)
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (key_id) DO NOTHING",
                        &[
                            &r.key_id,
                            &r.label,
                            &r.kcv.as_slice(),
                            &r.block,
                            &seconds(r.created_at),
                        ],
                    )
                    .await?;
                if n == 0 {
                    return Err(Error::Conflict("a key of that id exists").into());
                }
                Ok(())
            })
            .await
        })
    }

    fn imported(&self, key_id: &str) -> Result<Option<ImportedRecord>, Error> {
        let key_id = key_id.to_owned();
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                let Some(r) = c
                    .query_opt(
                        "SELECT key_id, label, kcv, block, created_at FROM imported_keys
                         WHERE key_id = $1",
                        &[&key_id],
                    )
                    .await?
                else {
                    return Ok(None);
                };
                Ok(Some(ImportedRecord {
                    key_id: r.try_get(0)?,
                    label: r.try_get(1)?,
                    kcv: kcv(r.try_get(2)?)?,
                    block: r.try_get(3)?,
                    created_at: unsigned(r.try_get(4)?),
                }))
            })
            .await
        })
    }

    fn insert_zone(&self, z: &ZoneRecord) -> Result<(), Error> {
        let z = z.clone();
        self.call(|pool| async move {
            retrying(|| async {
                let mut c = client(&pool).await?;
                let tx = c.transaction().await?;
                let n = tx
                    .execute(
                        "INSERT INTO zones (zone, kcv, block, created_at) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (zone) DO NOTHING",
                        &[&z.zone, &z.kcv.as_slice(), &z.block, &seconds(z.created_at)],
                    )
                    .await?;
                if n == 0 {
                    return Err(Error::Conflict("the zone has a ZMK").into());
                }
                bump_version(&tx, &Change::All).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn zone(&self, zone: &str) -> Result<Option<ZoneRecord>, Error> {
        let zone = zone.to_owned();
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                let Some(r) = c
                    .query_opt(
                        "SELECT zone, kcv, block, created_at FROM zones WHERE zone = $1",
                        &[&zone],
                    )
                    .await?
                else {
                    return Ok(None);
                };
                Ok(Some(ZoneRecord {
                    zone: r.try_get(0)?,
                    kcv: kcv(r.try_get(1)?)?,
                    block: r.try_get(2)?,
                    created_at: unsigned(r.try_get(3)?),
                }))
            })
            .await
        })
    }

    fn zone_names(&self) -> Result<Vec<String>, Error> {
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                c.query("SELECT zone FROM zones ORDER BY zone COLLATE \"C\"", &[])
                    .await?
                    .iter()
                    .map(|r| Ok(r.try_get::<_, String>(0)?))
                    .collect()
            })
            .await
        })
    }
}

impl AdminStore for PgKeyStore {
    fn key_state(&self, key_id: &str) -> Result<KeyState, Error> {
        let key_id = key_id.to_owned();
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                let c: &tokio_postgres::Client = &c;
                read_state(c, &key_id).await
            })
            .await
        })
    }

    fn change_key_state(&self, key_id: &str, from: &[&str], to: KeyState) -> Result<(), Error> {
        let key_id = key_id.to_owned();
        let from: Vec<String> = from.iter().map(|s| (*s).to_owned()).collect();
        self.call(|pool| async move {
            retrying(|| async {
                let mut c = client(&pool).await?;
                let tx = c.transaction().await?;
                // The key's own record is the lock: it exists whether or not a state row does,
                // so two nodes changing one key's state run one after the other.
                let locked = tx
                    .query_opt(
                        "SELECT 1 FROM keys WHERE key_id = $1 FOR UPDATE",
                        &[&key_id],
                    )
                    .await?
                    .is_some()
                    || tx
                        .query_opt(
                            "SELECT 1 FROM imported_keys WHERE key_id = $1 FOR UPDATE",
                            &[&key_id],
                        )
                        .await?
                        .is_some();
                if !locked {
                    return Err(Error::NotFound("key").into());
                }
                let current = read_state(&*tx, &key_id).await?;
                if !from.iter().any(|f| f == current.name()) {
                    return Err(Error::Conflict(current.refusal()).into());
                }
                let after = match to {
                    KeyState::Destroying { after } => Some(seconds(after)),
                    _ => None,
                };
                tx.execute(
                    "INSERT INTO key_states (key_id, state, destroy_after) VALUES ($1, $2, $3)
                     ON CONFLICT (key_id) DO UPDATE SET state = $2, destroy_after = $3",
                    &[&key_id, &to.name(), &after],
                )
                .await?;
                bump_version(&tx, &Change::Key(key_id.clone())).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn list_keys(&self, q: &ListQuery<'_>) -> Result<Vec<Listed>, Error> {
        let after = q.after.to_owned();
        let device = q.device.map(str::to_owned);
        let state = q.state.map(str::to_owned);
        let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
        let before = q.created_before.map(seconds);
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                let rows = c
                    .query(
                        "SELECT u.key_id, u.label, u.kind, u.kcv, u.block, u.created_at, u.revoked,
                                s.state, s.destroy_after
                         FROM (SELECT key_id, device_id AS label, kind, kcv, block, created_at,
                                      revoked
                               FROM keys
                               WHERE key_id > $1 AND ($2::text IS NULL OR device_id = $2)
                               UNION ALL
                               SELECT key_id, label, NULL, kcv, block, created_at, false
                               FROM imported_keys WHERE key_id > $1 AND $2::text IS NULL) u
                         LEFT JOIN key_states s ON s.key_id = u.key_id
                         WHERE ($3::text IS NULL OR COALESCE(s.state, 'active') = $3)
                           AND ($5::bigint IS NULL OR u.created_at < $5)
                         ORDER BY u.key_id LIMIT $4",
                        &[&after, &device, &state, &limit, &before],
                    )
                    .await?;
                rows.iter()
                    .map(|r| {
                        let kind: Option<String> = r.try_get(2)?;
                        let state: Option<String> = r.try_get(7)?;
                        Ok(Listed {
                            key_id: r.try_get(0)?,
                            label: r.try_get(1)?,
                            kind: kind.as_deref().and_then(KeyKind::from_name),
                            kcv: kcv(r.try_get(3)?)?,
                            block: r.try_get(4)?,
                            created_at: unsigned(r.try_get(5)?),
                            revoked: r.try_get(6)?,
                            state: KeyState::from_row(state.as_deref(), r.try_get(8)?),
                        })
                    })
                    .collect()
            })
            .await
        })
    }

    fn purge_destroyed(&self, now: u64) -> Result<Vec<String>, Error> {
        self.call(|pool| async move {
            retrying(|| async {
                let mut c = client(&pool).await?;
                // Every node asks every poll: look first without a transaction, which nearly
                // always finds nothing due.
                let due = c
                    .prepare_cached(
                        "SELECT 1 FROM key_states
                         WHERE state = 'destroying' AND destroy_after <= $1 LIMIT 1",
                    )
                    .await?;
                if c.query_opt(&due, &[&seconds(now)]).await?.is_none() {
                    return Ok(Vec::new());
                }
                let tx = c.transaction().await?;
                // Each due key is taken by one node: the others skip the rows it holds.
                let mut ids: Vec<String> = tx
                    .query(
                        "SELECT key_id FROM key_states
                         WHERE state = 'destroying' AND destroy_after <= $1
                         FOR UPDATE SKIP LOCKED",
                        &[&seconds(now)],
                    )
                    .await?
                    .iter()
                    .map(|r| r.try_get::<_, String>(0))
                    .collect::<Result<_, _>>()?;
                ids.sort();
                for id in &ids {
                    tx.execute("UPDATE keys SET block = '' WHERE key_id = $1", &[id])
                        .await?;
                    tx.execute(
                        "UPDATE imported_keys SET block = '' WHERE key_id = $1",
                        &[id],
                    )
                    .await?;
                    tx.execute(
                        "UPDATE key_states SET state = 'destroyed', destroy_after = NULL
                         WHERE key_id = $1",
                        &[id],
                    )
                    .await?;
                }
                if !ids.is_empty() {
                    bump_version(&tx, &Change::All).await?;
                }
                tx.commit().await?;
                Ok(ids)
            })
            .await
        })
    }

    fn state_version(&self) -> Result<u64, Error> {
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                let st = c.prepare_cached("SELECT value FROM state_version").await?;
                let v: i64 = c.query_one(&st, &[]).await?.try_get(0)?;
                Ok(unsigned(v))
            })
            .await
        })
    }

    fn bump_state_version(&self) -> Result<(), Error> {
        self.call(|pool| async move {
            retrying(|| async {
                let mut c = client(&pool).await?;
                let tx = c.transaction().await?;
                bump_version(&tx, &Change::All).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn changes_since(&self, version: u64) -> Result<Option<(u64, Vec<Change>)>, Error> {
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                let st = c
                    .prepare_cached(
                        "SELECT version, device_id, key_id FROM state_changes WHERE version > $1
                         ORDER BY version",
                    )
                    .await?;
                let rows = c
                    .query(&st, &[&seconds(version)])
                    .await?
                    .iter()
                    .map(|r| {
                        Ok((
                            unsigned(r.try_get(0)?),
                            change_from(r.try_get(1)?, r.try_get(2)?),
                        ))
                    })
                    .collect::<Result<Vec<_>, Fail>>()?;
                Ok(contiguous(version, rows))
            })
            .await
        })
    }

    fn officer(&self, name: &str) -> Result<Option<OfficerRecord>, Error> {
        let name = name.to_owned();
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                c.query_opt(
                    &format!("SELECT {OFFICER_COLUMNS} FROM officers WHERE name = $1"),
                    &[&name],
                )
                .await?
                .as_ref()
                .map(officer_from_row)
                .transpose()
            })
            .await
        })
    }

    fn officers(&self) -> Result<Vec<OfficerRecord>, Error> {
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                c.query(
                    &format!("SELECT {OFFICER_COLUMNS} FROM officers ORDER BY name"),
                    &[],
                )
                .await?
                .iter()
                .map(officer_from_row)
                .collect()
            })
            .await
        })
    }

    fn insert_officer(&self, o: &OfficerRecord) -> Result<(), Error> {
        let o = o.clone();
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                let n = c
                    .execute(
                        "INSERT INTO officers (name, salt, iterations, hash, created_at)
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
                        &[
                            &o.name,
                            &o.salt.as_slice(),
                            &i64::from(o.iterations),
                            &o.hash.as_slice(),
                            &seconds(o.created_at),
                        ],
                    )
                    .await?;
                if n == 0 {
                    return Err(Error::Conflict("an officer of that name exists").into());
                }
                Ok(())
            })
            .await
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
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                let n = c
                    .execute(
                        "UPDATE officers SET salt = $2, iterations = $3, hash = $4 WHERE name = $1",
                        &[
                            &name,
                            &salt.as_slice(),
                            &i64::from(iterations),
                            &hash.as_slice(),
                        ],
                    )
                    .await?;
                if n == 0 {
                    return Err(Error::NotFound("officer").into());
                }
                Ok(())
            })
            .await
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
        self.call(|pool| async move {
            retrying(|| async {
                let mut c = client(&pool).await?;
                let tx = c.transaction().await?;
                // The officer's row is locked until commit: logins on every node queue here.
                let Some(row) = tx
                    .query_opt(
                        "SELECT failures, locked_until FROM officers WHERE name = $1 FOR UPDATE",
                        &[&name],
                    )
                    .await?
                else {
                    return Ok(LoginGate::Unknown);
                };
                let failures: i64 = row.try_get(0)?;
                let locked: Option<i64> = row.try_get(1)?;
                let gate = match locked {
                    Some(until) if until > seconds(now) => LoginGate::Locked(unsigned(until)),
                    _ if failures >= i64::from(max) => {
                        tx.execute(
                            "UPDATE officers SET failures = 0, locked_until = $2 WHERE name = $1",
                            &[&name, &seconds(lock_until)],
                        )
                        .await?;
                        LoginGate::Locked(lock_until)
                    }
                    _ => {
                        tx.execute(
                            "UPDATE officers SET failures = failures + 1, locked_until = NULL
                             WHERE name = $1",
                            &[&name],
                        )
                        .await?;
                        LoginGate::Allowed
                    }
                };
                tx.commit().await?;
                Ok(gate)
            })
            .await
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
        self.call(|pool| async move {
            retrying(|| async {
                let mut c = client(&pool).await?;
                let tx = c.transaction().await?;
                let Some(row) = tx
                    .query_opt(
                        "SELECT failures, locked_until FROM officers WHERE name = $1 FOR UPDATE",
                        &[&name],
                    )
                    .await?
                else {
                    return Ok(None);
                };
                let failures: i64 = row.try_get(0)?;
                let locked: Option<i64> = row.try_get(1)?;
                let answer = if success {
                    match locked {
                        Some(until) if until > seconds(now) => Some(unsigned(until)),
                        _ => {
                            tx.execute(
                                "UPDATE officers SET failures = 0, last_login = $2 WHERE name = $1",
                                &[&name, &seconds(now)],
                            )
                            .await?;
                            None
                        }
                    }
                } else if failures >= i64::from(max) {
                    tx.execute(
                        "UPDATE officers SET failures = 0, locked_until = $2 WHERE name = $1",
                        &[&name, &seconds(lock_until)],
                    )
                    .await?;
                    Some(lock_until)
                } else {
                    None
                };
                tx.commit().await?;
                Ok(answer)
            })
            .await
        })
    }

    fn add_approval(&self, a: &Approval) -> Result<(), Error> {
        let a = a.clone();
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                c.execute(
                    "INSERT INTO approvals (action, subject, officer, at) VALUES ($1, $2, $3, $4)",
                    &[&a.action, &a.subject, &a.officer, &seconds(a.at)],
                )
                .await?;
                Ok(())
            })
            .await
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
        self.call(|pool| async move {
            retrying(|| async {
                let mut c = client(&pool).await?;
                let tx = c.transaction().await?;
                // One (action, subject) at a time across every node: a pair of approvals is
                // counted and used up by one caller only.
                tx.execute(
                    "SELECT pg_advisory_xact_lock($1, hashtext($2 || chr(10) || $3))",
                    &[&APPROVAL_LOCKS, &action, &subject],
                )
                .await?;
                tx.execute(
                    "DELETE FROM approvals WHERE at < $1",
                    &[&seconds(not_before)],
                )
                .await?;
                let officers: Vec<String> = tx
                    .query(
                        "SELECT DISTINCT officer FROM approvals WHERE action = $1 AND subject = $2
                         ORDER BY officer",
                        &[&action, &subject],
                    )
                    .await?
                    .iter()
                    .map(|r| r.try_get::<_, String>(0))
                    .collect::<Result<_, _>>()?;
                if officers.len() >= needed {
                    tx.execute(
                        "DELETE FROM approvals WHERE action = $1 AND subject = $2",
                        &[&action, &subject],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(officers)
            })
            .await
        })
    }
}

impl LmkStore for PgKeyStore {
    fn lmks(&self) -> Result<Vec<LmkRecord>, Error> {
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                c.query(
                    "SELECT kcv, original, state, destroy_after, changed_at FROM lmks
                     ORDER BY changed_at, kcv",
                    &[],
                )
                .await?
                .iter()
                .map(|r| {
                    let state: String = r.try_get(2)?;
                    record_from(
                        r.try_get(0)?,
                        r.try_get(1)?,
                        &state,
                        r.try_get(3)?,
                        r.try_get(4)?,
                    )
                    .ok_or_else(|| Fail::Keyd(Error::Store("a stored LMK row is malformed".into())))
                })
                .collect()
            })
            .await
        })
    }

    fn move_lmks(&self, moves: &[LmkMove], now: u64) -> Result<(), Error> {
        let moves = moves.to_vec();
        self.call(|pool| async move {
            retrying(|| async {
                let mut c = client(&pool).await?;
                let tx = c.transaction().await?;
                for m in &moves {
                    let after = m.to.destroy_after_secs().map(seconds);
                    let n = match m.from {
                        None => {
                            tx.execute(
                                "INSERT INTO lmks (kcv, original, state, destroy_after, changed_at)
                                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kcv) DO NOTHING",
                                &[
                                    &m.kcv.as_slice(),
                                    &m.original,
                                    &m.to.name(),
                                    &after,
                                    &seconds(now),
                                ],
                            )
                            .await?
                        }
                        Some(from) => {
                            tx.execute(
                                "UPDATE lmks SET state = $2, destroy_after = $3, changed_at = $4
                                 WHERE kcv = $1 AND state = $5",
                                &[&m.kcv.as_slice(), &m.to.name(), &after, &seconds(now), &from],
                            )
                            .await?
                        }
                    };
                    if n == 0 {
                        return Err(Error::Conflict(
                            "the LMK is not in the state this step needs (moved by another officer or node)",
                        )
                        .into());
                    }
                }
                bump_version(&tx, &Change::All).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn sealed_blocks(
        &self,
        table: Sealed,
        after: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>, Error> {
        let (table, id) = table.table();
        let after = after.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                let sql = format!(
                    "SELECT {id}, block FROM {table} WHERE {id} COLLATE \"C\" > $1
                     ORDER BY {id} COLLATE \"C\" LIMIT $2"
                );
                c.query(&sql, &[&after, &limit])
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect()
            })
            .await
        })
    }

    fn reseal(&self, table: Sealed, blocks: &[Reseal]) -> Result<usize, Error> {
        let (table, id) = table.table();
        let blocks = blocks.to_vec();
        self.call(move |pool| async move {
            retrying(|| async {
                let mut c = client(&pool).await?;
                let tx = c.transaction().await?;
                let st = tx
                    .prepare_cached(&format!(
                        "UPDATE {table} SET block = $3 WHERE {id} = $1 AND block = $2"
                    ))
                    .await?;
                let mut n = 0u64;
                for (key, old, new) in &blocks {
                    n += tx.execute(&st, &[key, old, new]).await?;
                }
                tx.commit().await?;
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            })
            .await
        })
    }

    fn lmk_secret(&self, name: &str) -> Result<Option<String>, Error> {
        let name = name.to_owned();
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                Ok(
                    c.query_opt("SELECT block FROM lmk_secrets WHERE name = $1", &[&name])
                        .await?
                        .map(|r| r.try_get(0))
                        .transpose()?,
                )
            })
            .await
        })
    }

    fn insert_lmk_secret(&self, name: &str, block: &str) -> Result<(), Error> {
        let (name, block) = (name.to_owned(), block.to_owned());
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                c.execute(
                    "INSERT INTO lmk_secrets (name, block) VALUES ($1, $2)
                     ON CONFLICT (name) DO NOTHING",
                    &[&name, &block],
                )
                .await?;
                Ok(())
            })
            .await
        })
    }
}

fn zone_row(r: &tokio_postgres::Row) -> Result<ZoneRecord, Fail> {
    Ok(ZoneRecord {
        zone: r.try_get(0)?,
        kcv: kcv(r.try_get(1)?)?,
        block: r.try_get(2)?,
        created_at: unsigned(r.try_get(3)?),
    })
}

impl ZmkStore for PgKeyStore {
    fn rotate_zmk(&self, new: &ZoneRecord) -> Result<(), Error> {
        let z = new.clone();
        self.call(|pool| async move {
            retrying(|| async {
                let mut c = client(&pool).await?;
                let tx = c.transaction().await?;
                // The zone's row first: two officers rotating one zone on two nodes queue here.
                if tx
                    .query_opt("SELECT 1 FROM zones WHERE zone = $1 FOR UPDATE", &[&z.zone])
                    .await?
                    .is_none()
                {
                    return Err(Error::NotFound("zone in the key store").into());
                }
                let under_way = tx
                    .query_opt(
                        "SELECT 1 FROM zone_retiring WHERE zone = $1 AND retired_at IS NULL",
                        &[&z.zone],
                    )
                    .await?;
                tx.execute(
                    "INSERT INTO zone_retiring (zone, kcv, block, created_at)
                     SELECT zone, kcv, block, created_at FROM zones WHERE zone = $1
                     ON CONFLICT (zone, kcv) DO UPDATE
                     SET block = excluded.block, created_at = excluded.created_at,
                         retired_at = NULL",
                    &[&z.zone],
                )
                .await?;
                if under_way.is_some() {
                    return Err(Error::Conflict(
                        "a rotation of the zone's ZMK is under way: retire its old ZMK first",
                    )
                    .into());
                }
                tx.execute(
                    "UPDATE zones SET kcv = $2, block = $3, created_at = $4 WHERE zone = $1",
                    &[&z.zone, &z.kcv.as_slice(), &z.block, &seconds(z.created_at)],
                )
                .await?;
                bump_version(&tx, &Change::All).await?;
                tx.commit().await?;
                Ok(())
            })
            .await
        })
    }

    fn retiring_zmk(&self, zone: &str) -> Result<Option<ZoneRecord>, Error> {
        let zone = zone.to_owned();
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                c.query_opt(
                    "SELECT zone, kcv, block, created_at FROM zone_retiring
                     WHERE zone = $1 AND retired_at IS NULL",
                    &[&zone],
                )
                .await?
                .as_ref()
                .map(zone_row)
                .transpose()
            })
            .await
        })
    }

    fn retire_zmk(&self, zone: &str) -> Result<bool, Error> {
        let zone = zone.to_owned();
        self.call(|pool| async move {
            retrying(|| async {
                let mut c = client(&pool).await?;
                let tx = c.transaction().await?;
                let n = tx
                    .execute(
                        "UPDATE zone_retiring SET block = '', retired_at = $2
                         WHERE zone = $1 AND retired_at IS NULL",
                        &[&zone, &seconds(crate::unix_now())],
                    )
                    .await?;
                if n > 0 {
                    bump_version(&tx, &Change::All).await?;
                }
                tx.commit().await?;
                Ok(n > 0)
            })
            .await
        })
    }

    fn retired_zmks(&self, zone: &str) -> Result<Vec<[u8; 3]>, Error> {
        let zone = zone.to_owned();
        self.call(|pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                c.query(
                    "SELECT kcv FROM zone_retiring WHERE zone = $1 AND retired_at IS NOT NULL",
                    &[&zone],
                )
                .await?
                .iter()
                .map(|r| kcv(r.try_get(0)?))
                .collect()
            })
            .await
        })
    }

    fn delivered_under(&self, device_id: &str, kcv: [u8; 3]) -> Result<(), Error> {
        let device_id = device_id.to_owned();
        self.call(move |pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                c.execute(
                    "INSERT INTO device_zmk (device_id, kcv) VALUES ($1, $2)
                     ON CONFLICT (device_id) DO UPDATE SET kcv = excluded.kcv",
                    &[&device_id, &kcv.as_slice()],
                )
                .await?;
                Ok(())
            })
            .await
        })
    }

    fn devices_not_under(
        &self,
        zone: &str,
        kcv: [u8; 3],
        after: &str,
        limit: usize,
    ) -> Result<Vec<String>, Error> {
        let (zone, after) = (zone.to_owned(), after.to_owned());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |pool| async move {
            retrying(|| async {
                let c = client(&pool).await?;
                c.query(
                    "SELECT d.device_id FROM devices d LEFT JOIN device_zmk z USING (device_id)
                     WHERE d.zone = $1 AND d.device_id > $3
                       AND (z.kcv IS NULL OR z.kcv <> $2)
                     ORDER BY d.device_id LIMIT $4",
                    &[&zone, &kcv.as_slice(), &after, &limit],
                )
                .await?
                .iter()
                .map(|r| Ok(r.try_get(0)?))
                .collect()
            })
            .await
        })
    }
}
