//! The outbox of events (`Store::outbox`): its contract on every store, and the move of a
//! schema 6 SQLite database's outbox rows to the cursor.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use rusqlite::Connection;
use serde_json::json;

use super::sqlite::MIGRATIONS;
use super::tests::{ids, put};
use super::*;

/// The outbox: the events fan-out has not taken; a `Delete` in a commit takes one. SQLite
/// answers from a cursor (and writes no rows), PostgreSQL from the rows.
pub(super) async fn contract(store: &dyn Store) {
    for id in ["evt_1", "evt_2", "evt_3"] {
        store.commit(vec![event(id), outbox_row(id)]).await.unwrap();
    }
    let outbox = |limit| async move {
        let mut ids: Vec<String> = store
            .outbox(limit)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, s)| {
                assert_eq!(s.body["event_type"], "charge.approved");
                id
            })
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(outbox(10).await, ["evt_1", "evt_2", "evt_3"]);
    assert_eq!(outbox(2).await.len(), 2);
    store
        .commit(vec![Write::Delete {
            kind: OUTBOX.to_owned(),
            id: "evt_2".to_owned(),
        }])
        .await
        .unwrap();
    if store.shared() {
        assert_eq!(outbox(10).await, ["evt_1", "evt_3"]);
    } else {
        // Oldest first, so fan-out takes in order and the cursor passes what it took.
        assert_eq!(outbox(10).await, ["evt_3"]);
    }
    for id in ["evt_1", "evt_3"] {
        store
            .commit(vec![Write::Delete {
                kind: OUTBOX.to_owned(),
                id: id.to_owned(),
            }])
            .await
            .unwrap();
    }
    assert!(outbox(10).await.is_empty());
}

/// An event about charge `ch_1`, and its outbox row.
fn event(id: &str) -> Write {
    put(
        "event",
        id,
        json!({"id": id, "event_type": "charge.approved", "object_type": "charge",
               "object_id": "ch_1", "merchant_id": "m1", "data": {}, "created_at": 1}),
        &[],
    )
}

/// See [`event`].
fn outbox_row(id: &str) -> Write {
    put(
        OUTBOX,
        id,
        json!({"id": id, "event_type": "charge.approved", "object_id": "ch_1",
               "merchant_id": "m1", "created_at": 1}),
        &[],
    )
}

/// A database of schema 6 has outbox rows; schema 7 answers them first, then the events past
/// its cursor, which starts after every event there was (taken or not).
#[tokio::test]
async fn outbox_rows_from_before_the_cursor_are_taken_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT);",
        )
        .unwrap();
        for (version, sql) in (1_i64..).zip(MIGRATIONS.iter().take(6)) {
            conn.execute_batch(sql).unwrap();
            conn.execute(
                "INSERT INTO schema_migrations (version) VALUES (?1)",
                [version],
            )
            .unwrap();
        }
        // evt_a was taken by fan-out already (no row left); evt_b was not.
        for (seq, id) in [(1, "evt_a"), (2, "evt_b")] {
            conn.execute(
                "INSERT INTO events (id, seq, version, event_type, object_type, object_id, \
                 merchant_id, data, created_at) \
                 VALUES (?1, ?2, 1, 'charge.approved', 'charge', 'ch_1', 'm1', '{}', 1)",
                rusqlite::params![id, seq],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO event_outbox (id, seq, version, event_type, object_id, merchant_id, \
             created_at) VALUES ('evt_b', 3, 1, 'charge.approved', 'ch_1', 'm1', 1)",
            [],
        )
        .unwrap();
        conn.execute("UPDATE counter SET seq = 3", []).unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    // Schema 9 rebuilt the events table around seq: the rows and their order are as written.
    for (seq, id) in [(1, "evt_a"), (2, "evt_b")] {
        let got = store.get("event", id).await.unwrap().unwrap();
        assert_eq!(
            (got.seq, got.body["object_id"].as_str()),
            (seq, Some("ch_1"))
        );
    }
    assert_eq!(
        ids(&store, "object_events", "ch_1").await,
        ["evt_b", "evt_a"]
    );
    store
        .commit(vec![event("evt_c"), outbox_row("evt_c")])
        .await
        .unwrap();
    assert_eq!(
        ids(&store, "object_events", "ch_1").await,
        ["evt_c", "evt_b", "evt_a"]
    );
    let outbox = || async {
        store
            .outbox(10)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect::<Vec<_>>()
    };
    assert_eq!(outbox().await, ["evt_b"]);
    let take = |id: &str| Write::Delete {
        kind: OUTBOX.to_owned(),
        id: id.to_owned(),
    };
    store.commit(vec![take("evt_b")]).await.unwrap();
    assert_eq!(outbox().await, ["evt_c"]);
    store.commit(vec![take("evt_c")]).await.unwrap();
    assert!(outbox().await.is_empty());
    // The cursor is durable.
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert!(store.outbox(10).await.unwrap().is_empty());
}
