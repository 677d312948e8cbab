//! The API's data store: typed tables behind a narrow trait.
//!
//! Everything the API keeps (resellers, merchants, devices, users, charges...) is a record
//! addressed by `(kind, id)`, stored in its own table with real columns (schema:
//! `api/migrations/sqlite/`, map from kinds to tables: [`tables`]). On top of records the store
//! offers exactly three things, because that is all the endpoints need:
//!
//! * **lists** `(index, key) -> records`, newest first with a `seq` cursor, for paginated
//!   listings ("merchants of reseller R"): each index is a plain SQL query over the columns
//!   (or a join table for the multi-valued ones) in [`tables::LISTS`];
//! * **unique values** `(namespace, value) -> owner` (portal hosts, device ids, terminal ids,
//!   idp subjects), each a table or a UNIQUE column of its own ([`tables::UNIQUES`]);
//! * **atomic, durable batches** with optimistic preconditions ([`Write::Expect`]: a record is
//!   still at the version read), so that a read-modify-write is safe without holding locks
//!   across awaits.
//!
//! [`SqliteStore`] is the embedded implementation (one process, one file); [`PgStore`] keeps
//! the same tables in PostgreSQL, with its own SQL from the same column lists, so that several
//! API nodes can share one database. Unit tests run SQLite on a temporary file
//! ([`SqliteStore::temporary`]) and the same contract on a throw-away PostgreSQL cluster.
//!
//! # Batch semantics
//!
//! A batch passed to [`Store::commit`] behaves as if its writes ran one after the other, in
//! order, inside one transaction: a later write sees the effects of earlier ones (an `Expect`
//! after a `Put` of the same record sees the new version; a `Release` followed by a `Claim` of
//! the same value transfers it). If any `Expect`, `Claim` or constraint fails, nothing of the
//! batch is applied. Batches are serialised: one batch never sees half of another.

pub mod audit;
mod cache;
pub mod db;
#[cfg(test)]
mod outbox_tests;
#[cfg(test)]
mod pg_tests;
mod postgres;
mod row;
#[cfg(test)]
mod seq_tests;
mod sqlite;
pub mod tables;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};

pub use postgres::{PgOptions, PgStore, PgTls};
pub use sqlite::SqliteStore;

/// A record as stored: its creation sequence number, its version and its fields.
///
/// `seq` is global and strictly increasing, assigned by the store when the record is first put
/// and kept when the record is replaced. It orders listings (newest first) and serves as the
/// pagination cursor, which is why it is the store's job and not the caller's: only the store
/// can hand out numbers that are unique and increasing across concurrent writers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Creation sequence number (see the type documentation).
    pub seq: u64,
    /// Writes to the record so far (1 when created): what [`Write::Expect`] checks.
    pub version: u64,
    /// The record's fields (its serde form), as given to [`Write::Put`].
    pub body: Map<String, Value>,
}

/// One write in a batch given to [`Store::commit`].
///
/// Writes take effect in order within the batch; the batch is applied entirely or not at all.
#[derive(Debug, Clone, PartialEq)]
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
        /// The record's fields bound to its table's columns, in [`tables::columns`] order
        /// after key, seq and version ([`db::put`] binds them from the record).
        fields: Vec<tables::Field>,
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
    /// Precondition: the record `(kind, id)` must currently be at this version (or be
    /// absent when `version` is `None`).
    ///
    /// Lets callers do optimistic read-modify-write: read, compute, then commit the new body
    /// together with an `Expect` of the version they read. A mismatch is a
    /// [`StoreError::Conflict`] and the caller re-reads and retries (or reports the conflict).
    Expect {
        /// Record kind.
        kind: String,
        /// Record id.
        id: String,
        /// The version expected, or `None` for "must not exist".
        version: Option<u64>,
    },
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A `Claim` on a value held by someone else, a failed `Expect`, or a write that breaks a
    /// constraint of the schema.
    ///
    /// Carries the namespace (or `"expect:<kind>"`, `"constraint"`), never the value: values can be personal
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

/// A pending read.
///
/// The query is queued when the method is called and runs on the store's own threads (SQLite)
/// or connection pool (PostgreSQL), never on the caller's async worker: a read that waits on
/// the disk, a lock or the network must not stall every other request that worker serves.
/// Dropping the future abandons the answer, not the query (reads have no effects).
pub type Read<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// Rows of a listing or scan: `(id, record)` pairs.
pub type Rows = Vec<(String, Stored)>;

/// The record kind (and list) of events not yet handed to webhook fan-out ([`Store::outbox`]).
pub const OUTBOX: &str = "event_outbox";

/// The store interface ([`SqliteStore`], [`PgStore`]).
///
/// Every operation is asynchronous and takes owned copies of its arguments, so that the work
/// happens off the caller's thread: writes because durability (fsync) takes milliseconds and is
/// shared between concurrent callers (group commit), reads because even an indexed lookup can
/// wait on the disk or on a lock held by another process.
pub trait Store: Send + Sync + fmt::Debug {
    /// The record `(kind, id)`, if present. Shared, so that a store answering from memory
    /// hands out its copy instead of a deep clone of the record's map; callers decode from it
    /// by reference.
    fn get(&self, kind: &str, id: &str) -> Read<Option<Arc<Stored>>>;

    /// Who holds `value` in `ns`.
    fn owner(&self, ns: &str, value: &str) -> Read<Option<String>>;

    /// Records in index `(index, key)`, newest first (descending seq), only those with
    /// `seq < before` when given, at most `limit`. Returns `(id, Stored)` pairs.
    ///
    /// Used for cursor pagination: the next page is asked with `before` = the seq of the last
    /// record of the previous page, which stays correct while records are added (they get
    /// larger seqs) or removed. One index may hold records of several kinds.
    fn list(&self, index: &str, key: &str, before: Option<u64>, limit: usize) -> Read<Rows>;

    /// Records of one kind by descending id, only ids `< before` when given, at most `limit`.
    ///
    /// With ids that start with their creation time this reads the newest records first, which
    /// is what crash recovery needs (the work a crash interrupted is the newest) without an
    /// index entry per record.
    fn scan_back(&self, kind: &str, before: Option<&str>, limit: usize) -> Read<Rows>;

    /// The events webhook fan-out has not taken yet, oldest first, at most `limit`, as
    /// `event_outbox` records; a `Delete` of one in a commit marks its event taken.
    ///
    /// By default these are rows each event's commit writes beside it, correct whatever order
    /// commits land in. SQLite keeps a cursor instead (see its implementation).
    fn outbox(&self, limit: usize) -> Read<Rows> {
        self.list(OUTBOX, "", None, limit)
    }

    /// Applies all writes atomically and durably.
    ///
    /// All or nothing: every `Expect` and `Claim` is checked inside the same transaction before
    /// anything is applied. Durable: the returned future resolves `Ok` only after the data is on
    /// disk (fsync'd), so an acknowledged write survives kill -9.
    fn commit(&self, writes: Vec<Write>) -> Commit;

    /// Cheap liveness check for `/health/ready`: the writer is running and a read answers.
    fn check(&self) -> Read<()>;

    /// Whether other processes may write this store at the same time (several API nodes on
    /// one PostgreSQL database). A store that is not shared is this process's alone, as an
    /// SQLite file is under its lock, so what the process keeps in memory (requests in
    /// progress, the charges it is making) is all there is to know; a shared one makes the
    /// API coordinate through the store instead (leases, reservations: see `domain::lease`).
    fn shared(&self) -> bool {
        false
    }
}
