//! Creation order (`seq`) on SQLite: the writer's reservation in the `counter` row.
#![allow(clippy::unwrap_used)]

use rusqlite::Connection;

use super::sqlite::SEQ_BLOCK;
use super::tests::{get, ids, location, seq};
use super::*;

/// The `counter` row as committed, read beside the store.
fn counter_row(path: &std::path::Path) -> i64 {
    let conn = Connection::open(path).unwrap();
    conn.query_row("SELECT seq FROM counter WHERE id = 0", [], |r| r.get(0))
        .unwrap()
}

/// A store on a new file at `path` with one location written: the store, that location's seq
/// and the counter row after it.
async fn started(path: &std::path::Path) -> (SqliteStore, i64, i64) {
    let store = SqliteStore::open(path).unwrap();
    store.commit(vec![location("l0", "m", "0")]).await.unwrap();
    let first = i64::try_from(seq(&store, "location", "l0").await).unwrap();
    (store, first, counter_row(path))
}

/// `n` locations of merchant `m`, named `{tag}0` onwards.
fn locations(tag: &str, n: i64) -> Vec<Write> {
    (0..n)
        .map(|i| location(&format!("{tag}{i}"), "m", "x"))
        .collect()
}

#[tokio::test]
async fn the_counter_is_written_once_a_block_and_a_restart_never_reuses_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.db");
    let (store, first, reserved) = started(&path).await;
    assert_eq!(reserved, first + SEQ_BLOCK);
    // Commits inside the reservation leave the row alone.
    for i in 1..4 {
        let id = format!("l{i}");
        store.commit(vec![location(&id, "m", "x")]).await.unwrap();
    }
    assert_eq!(counter_row(&path), reserved);
    // One job past the reservation moves it, in the same commit.
    store.commit(locations("b", SEQ_BLOCK)).await.unwrap();
    let last =
        i64::try_from(seq(&store, "location", &format!("b{}", SEQ_BLOCK - 1)).await).unwrap();
    assert!(last > reserved);
    let reserved = counter_row(&path);
    assert_eq!(reserved, last + SEQ_BLOCK);
    drop(store);
    // After a restart, seqs begin past everything the last run could have handed out.
    let store = SqliteStore::open(&path).unwrap();
    store
        .commit(vec![location("after", "m", "x")])
        .await
        .unwrap();
    let after = i64::try_from(seq(&store, "location", "after").await).unwrap();
    assert_eq!(after, reserved + 1);
    assert_eq!(
        ids(&store, "locations", "m")
            .await
            .first()
            .map(String::as_str),
        Some("after")
    );
}

/// A group commit that passed the reservation and then failed leaves the counter row as it
/// was, and the writer goes on from that row, not from the reservation it did not commit: the
/// row stays at or above every seq handed out, so a restart cannot hand one out twice.
#[tokio::test]
async fn a_failed_commit_past_the_reservation_takes_the_reservation_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.db");
    let (store, first, reserved) = started(&path).await;
    // Any write of the counter row now makes COMMIT fail (a deferred foreign key the
    // trigger breaks), after every statement of the group has run.
    let side = Connection::open(&path).unwrap();
    side.execute_batch(
        "CREATE TABLE t_parent (id INTEGER PRIMARY KEY);
         CREATE TABLE t_child (p INTEGER REFERENCES t_parent (id) DEFERRABLE INITIALLY DEFERRED);
         CREATE TRIGGER t_fail AFTER UPDATE ON counter BEGIN INSERT INTO t_child VALUES (42); END;",
    )
    .unwrap();
    // One more than a block: whatever the seqs so far, it passes the reservation.
    assert!(store.commit(locations("a", SEQ_BLOCK + 1)).await.is_err());
    assert_eq!(counter_row(&path), reserved);
    assert!(get(&store, "location", "a0").await.is_none());
    side.execute_batch("DROP TRIGGER t_fail").unwrap();
    // The failed group's seqs are free again.
    store.commit(vec![location("l1", "m", "1")]).await.unwrap();
    assert_eq!(
        seq(&store, "location", "l1").await,
        u64::try_from(first + 1).unwrap()
    );
    // Past the reservation once more: this time the row moves with the seqs.
    store.commit(locations("b", SEQ_BLOCK + 1)).await.unwrap();
    let last = seq(&store, "location", &format!("b{SEQ_BLOCK}")).await;
    assert!(counter_row(&path) >= i64::try_from(last).unwrap());
}
