//! PostgreSQL's statements, built once from the shared column lists of [`tables`]: the same
//! tables and lists as SQLite's, with `$N` placeholders, an upsert for `Put` and row locks for
//! `Expect`.

use std::collections::HashMap;
use std::sync::LazyLock;

use crate::store::tables::{self, Table, Ty};

/// A table's statements (`$1` is always the key).
#[derive(Debug)]
pub(super) struct Statements {
    /// The table.
    pub table: &'static Table,
    /// The types of the field columns, in order (amounts as two).
    pub types: Vec<Ty>,
    /// `SELECT key, seq, version, columns… FROM table` (completed with WHERE / ORDER BY).
    pub select: String,
    /// `… WHERE key = $1`.
    pub get: String,
    /// `… WHERE key < $1 ORDER BY key DESC LIMIT $2`.
    pub scan_back: String,
    /// `SELECT version … WHERE key = $1 FOR UPDATE`: an `Expect` locks the row it checks, so
    /// no other transaction changes it before this one commits.
    pub lock_version: String,
    /// `INSERT … ON CONFLICT (key) DO UPDATE SET columns…, version = version + 1
    /// RETURNING version`: a new row takes `seq` from the sequence (the column's default) and
    /// version 1; an existing one keeps its seq and counts one more write. Atomic in
    /// PostgreSQL even against a concurrent insert of the same key.
    pub upsert: String,
    /// `DELETE … WHERE key = $1`.
    pub delete: String,
}

fn statements(t: &'static Table) -> Statements {
    let cols = tables::column_names(t);
    let (name, key) = (t.name, t.key);
    let select = format!(
        "SELECT {key}, seq, version, {} FROM {name}",
        cols.join(", ")
    );
    let placeholders: Vec<String> = (2..cols.len() + 2).map(|i| format!("${i}")).collect();
    let sets: Vec<String> = cols.iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect();
    Statements {
        table: t,
        types: tables::columns(t).into_iter().map(|(_, ty)| ty).collect(),
        get: format!("{select} WHERE {key} = $1"),
        scan_back: format!("{select} WHERE {key} < $1 ORDER BY {key} DESC LIMIT $2"),
        lock_version: format!("SELECT version FROM {name} WHERE {key} = $1 FOR UPDATE"),
        upsert: format!(
            "INSERT INTO {name} ({key}, version, {}) VALUES ($1, 1, {}) \
             ON CONFLICT ({key}) DO UPDATE SET {}, version = {name}.version + 1 \
             RETURNING version",
            cols.join(", "),
            placeholders.join(", "),
            sets.join(", ")
        ),
        delete: format!("DELETE FROM {name} WHERE {key} = $1"),
        select,
    }
}

static STATEMENTS: LazyLock<HashMap<&'static str, Statements>> = LazyLock::new(|| {
    tables::TABLES
        .iter()
        .map(|t| (t.kind, statements(t)))
        .collect()
});

/// The statements of a kind, or `None` for a kind the schema does not know.
pub(super) fn of(kind: &str) -> Option<&'static Statements> {
    STATEMENTS.get(kind)
}

/// The list queries of an index: `(statements of the kind, SELECT with $1 = key, $2 = seq
/// bound, $3 = limit)`.
pub(super) fn lists(index: &str) -> Vec<(&'static Statements, String)> {
    tables::list_queries(index, of, |st| &st.select, tables::numbered)
}

/// Takes the batch's advisory locks (`$1`: their keys, sorted), each held to the end of the
/// transaction. `unnest` yields the keys in array order, so every batch locks in the same
/// order and two batches never deadlock on these locks.
pub(super) const LOCK_KEYS: &str = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k";

/// The advisory lock migrations run under (a bigint key; the batches' keys are hashes in the
/// same space, and a collision would only make a batch wait for a migration).
pub(super) const MIGRATION_LOCK: i64 = 0x7669_6f70_6179_0001;

/// The session advisory lock an exclusive store holds for its life.
pub(super) const PROCESS_LOCK: i64 = 0x7669_6f70_6179_0002;

/// The key of the advisory lock on a record or a unique value: the first 8 bytes of SHA-256
/// over `(what, name, id)`. A hash that is the same in every build (Rust's own hasher may change
/// between compiler versions, and two api nodes built apart must agree); a collision between
/// two keys only makes two unrelated batches wait for each other.
pub(super) fn lock_key(what: &str, name: &str, id: &str) -> i64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [what, name, id] {
        ctx.update(part.as_bytes());
        ctx.update(&[0]);
    }
    let digest = ctx.finish();
    let mut first = [0_u8; 8];
    for (b, d) in first.iter_mut().zip(digest.as_ref()) {
        *b = *d;
    }
    i64::from_be_bytes(first)
}
