//! The store's contract, its durability and group commit, and the move of a version-1
//! (generic records) database into the typed tables.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use rusqlite::Connection;
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use super::sqlite::{Answer, Job, MIGRATIONS, Writer, create_private};
use super::tables::{TABLES, Ty};
use super::*;

pub(super) fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("not an object"),
    }
}

/// A `Put` of a record given as JSON (no columns for a kind without a table).
pub(super) fn put(kind: &str, id: &str, body: Value, indexes: &[(&str, &str)]) -> Write {
    Write::Put {
        kind: kind.to_owned(),
        id: id.to_owned(),
        fields: tables::of(kind)
            .map(|st| tables::bind(st.table, &obj(body)).unwrap())
            .unwrap_or_default(),
        indexes: indexes
            .iter()
            .map(|(n, k)| ((*n).to_owned(), (*k).to_owned()))
            .collect(),
    }
}

/// A location of merchant `m` (a record with a list by merchant).
pub(super) fn location(id: &str, m: &str, name: &str) -> Write {
    put(
        "location",
        id,
        json!({"id": id, "merchant_id": m, "name": name, "address": {"city": "X"},
               "timezone": null, "created_at": 1, "updated_at": 2}),
        &[("locations", m)],
    )
}

pub(super) fn reseller(id: &str, ancestors: &[&str]) -> Write {
    let mut tree: Vec<(&str, &str)> = ancestors.iter().map(|a| ("reseller_tree", *a)).collect();
    tree.push(("reseller_tree", id));
    put(
        "reseller",
        id,
        json!({"id": id, "name": id, "parent_id": ancestors.last(), "ancestors": ancestors,
               "branding": null, "portal_hosts": [], "created_at": 1, "updated_at": 1}),
        &tree,
    )
}

pub(super) fn merchant(id: &str, resellers: &[&str]) -> Write {
    merchant_named(id, resellers, id)
}

pub(super) fn merchant_named(id: &str, resellers: &[&str], name: &str) -> Write {
    let tree: Vec<(&str, &str)> = resellers.iter().map(|r| ("merchant_tree", *r)).collect();
    put(
        "merchant",
        id,
        json!({"id": id, "reseller_id": resellers.last(), "resellers": resellers, "name": name,
               "mcc": "5812", "country": "DE", "currency": "EUR", "fee_template_id": null,
               "tip_info": {}, "tax_info": {}, "surcharge_info": {}, "merchant_key": "k",
               "terminal_parameters": null, "created_at": 1, "updated_at": 1,
               "acquirer_mid": id}),
        &tree,
    )
}

pub(super) fn user(id: &str, sub: &str) -> Write {
    put(
        "user",
        id,
        json!({"id": id, "email": "a@b", "name": null, "role": "platform_admin",
               "idp_subject": sub, "merchant_id": null, "reseller_id": null,
               "created_at": 1, "updated_at": 1}),
        &[("users", "")],
    )
}

pub(super) fn nonce(id: &str, at: i64) -> Write {
    put("nonce", id, json!({"id": id, "at": at, "key": id}), &[])
}

pub(super) fn del(kind: &str, id: &str) -> Write {
    Write::Delete {
        kind: kind.to_owned(),
        id: id.to_owned(),
    }
}

pub(super) fn claim(ns: &str, value: &str, owner: &str) -> Write {
    Write::Claim {
        ns: ns.to_owned(),
        value: value.to_owned(),
        owner: owner.to_owned(),
    }
}

pub(super) fn release(ns: &str, value: &str) -> Write {
    Write::Release {
        ns: ns.to_owned(),
        value: value.to_owned(),
    }
}

pub(super) fn expect(kind: &str, id: &str, version: Option<u64>) -> Write {
    Write::Expect {
        kind: kind.to_owned(),
        id: id.to_owned(),
        version,
    }
}

pub(super) fn conflict(what: &str) -> Result<(), StoreError> {
    Err(StoreError::Conflict(what.to_owned()))
}

pub(super) async fn get(store: &dyn Store, kind: &str, id: &str) -> Option<Stored> {
    store.get(kind, id).await.unwrap().map(Arc::unwrap_or_clone)
}

pub(super) async fn seq(store: &dyn Store, kind: &str, id: &str) -> u64 {
    get(store, kind, id).await.unwrap().seq
}

pub(super) async fn ids(store: &dyn Store, index: &str, key: &str) -> Vec<String> {
    store
        .list(index, key, None, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// The contract every implementation must meet.
pub(super) async fn contract(store: &dyn Store) {
    store.check().await.unwrap();

    // Put, get, replace: seq kept, version counted, fields as given.
    assert_eq!(get(store, "location", "l1").await, None);
    store
        .commit(vec![location("l1", "m1", "one")])
        .await
        .unwrap();
    let l1 = get(store, "location", "l1").await.unwrap();
    assert_eq!(l1.version, 1);
    assert_eq!(l1.body["name"], "one");
    assert_eq!(l1.body["address"], json!({"city": "X"}));
    assert_eq!(l1.body["timezone"], Value::Null);
    assert_eq!(
        get(store, "device", "l1").await,
        None,
        "kind is part of the address"
    );
    store
        .commit(vec![location("l1", "m1", "two")])
        .await
        .unwrap();
    let l1b = get(store, "location", "l1").await.unwrap();
    assert_eq!((l1b.seq, l1b.version), (l1.seq, 2), "replace keeps seq");
    assert_eq!(l1b.body["name"], "two");

    // Lists: newest first, cursor, limit, delete.
    store
        .commit(vec![
            location("l2", "m1", "a"),
            location("l3", "m2", "b"),
            location("l4", "m1", "c"),
        ])
        .await
        .unwrap();
    assert_eq!(ids(store, "locations", "m1").await, ["l4", "l2", "l1"]);
    let page = store
        .list(
            "locations",
            "m1",
            Some(seq(store, "location", "l4").await),
            1,
        )
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].0, "l2");
    store.commit(vec![del("location", "l2")]).await.unwrap();
    store.commit(vec![del("location", "l2")]).await.unwrap();
    assert_eq!(ids(store, "locations", "m1").await, ["l4", "l1"]);
    assert!(seq(store, "location", "l4").await > seq(store, "location", "l3").await);

    // Join rows: the tree lists.
    store
        .commit(vec![
            reseller("r1", &[]),
            reseller("r2", &["r1"]),
            merchant("mA", &["r1"]),
            merchant("mB", &["r1", "r2"]),
        ])
        .await
        .unwrap();
    assert_eq!(ids(store, "reseller_tree", "r1").await, ["r2", "r1"]);
    assert_eq!(ids(store, "reseller_children", "r1").await, ["r2"]);
    assert_eq!(ids(store, "reseller_children", "").await, ["r1"]);
    assert_eq!(ids(store, "merchant_tree", "r1").await, ["mB", "mA"]);
    assert_eq!(ids(store, "merchant_tree", "r2").await, ["mB"]);
    assert_eq!(ids(store, "merchants", "").await, ["mB", "mA"]);

    // Unique values: a table of their own, a column, and the generic claims.
    store
        .commit(vec![claim("portal_host", "a.example", "r1")])
        .await
        .unwrap();
    assert_eq!(
        store
            .commit(vec![claim("portal_host", "a.example", "r2")])
            .await,
        conflict("portal_host")
    );
    store
        .commit(vec![claim("portal_host", "a.example", "r1")])
        .await
        .unwrap();
    store
        .commit(vec![
            release("portal_host", "a.example"),
            claim("portal_host", "a.example", "r2"),
        ])
        .await
        .unwrap();
    assert_eq!(
        store
            .owner("portal_host", "a.example")
            .await
            .unwrap()
            .as_deref(),
        Some("r2")
    );
    store
        .commit(vec![claim("user_sub", "s1", "u1"), user("u1", "s1")])
        .await
        .unwrap();
    assert_eq!(
        store.owner("user_sub", "s1").await.unwrap().as_deref(),
        Some("u1")
    );
    assert_eq!(
        store
            .commit(vec![claim("user_sub", "s1", "u2"), user("u2", "s1")])
            .await,
        conflict("user_sub")
    );
    assert_eq!(
        store.commit(vec![user("u2", "s1")]).await,
        conflict("constraint"),
        "the UNIQUE column holds without a claim"
    );
    assert_eq!(get(store, "user", "u2").await, None);
    store
        .commit(vec![claim("migration", "x", "done")])
        .await
        .unwrap();
    assert_eq!(
        store.owner("migration", "x").await.unwrap().as_deref(),
        Some("done")
    );
    store.commit(vec![release("migration", "x")]).await.unwrap();
    assert_eq!(store.owner("migration", "x").await.unwrap(), None);

    // Expect: version or absence; a failure rolls back the whole batch.
    store
        .commit(vec![
            expect("location", "l1", Some(2)),
            location("l1", "m1", "3"),
        ])
        .await
        .unwrap();
    assert_eq!(
        store
            .commit(vec![
                location("l9", "m1", "x"),
                expect("location", "l1", Some(2))
            ])
            .await,
        conflict("expect:location")
    );
    assert_eq!(get(store, "location", "l9").await, None, "all or nothing");
    assert_eq!(
        store.commit(vec![expect("location", "l1", None)]).await,
        conflict("expect:location")
    );
    store
        .commit(vec![
            location("l9", "m1", "x"),
            expect("location", "l9", Some(1)),
        ])
        .await
        .unwrap();

    outbox_tests::contract(store).await;

    // Scan back by id; amounts, booleans and JSON round trip.
    store
        .commit(vec![
            nonce("0003:a", 3),
            nonce("0001:a", 1),
            nonce("0002:a", 2),
        ])
        .await
        .unwrap();
    let back: Vec<String> = store
        .scan_back("nonce", Some("0003:a"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(back, ["0002:a", "0001:a"]);
    // (The outbox is the store's own: tested above.)
    for (kind, body) in samples().into_iter().filter(|(kind, _)| *kind != OUTBOX) {
        let id = body[key_of(kind)].as_str().unwrap().to_owned();
        store
            .commit(vec![put(kind, &id, Value::Object(body.clone()), &[])])
            .await
            .unwrap();
        assert_eq!(get(store, kind, &id).await.unwrap().body, body, "{kind}");
    }
    assert!(
        !format!("{store:?}").contains("a.example"),
        "Debug shows no contents"
    );
}

fn key_of(kind: &str) -> &'static str {
    TABLES.iter().find(|t| t.kind == kind).unwrap().key
}

/// A body for every kind with every field set (`Text` "x-…", `Int` 7, `Bool` true, JSON, amounts)
/// and one with every nullable field null.
fn samples() -> Vec<(&'static str, Map<String, Value>)> {
    let mut out = Vec::new();
    for t in TABLES {
        let mut body = Map::new();
        body.insert(t.key.to_owned(), json!(format!("id-{}", t.kind)));
        for (name, ty) in t.cols {
            let v = match ty {
                Ty::Text => json!(format!("x-{name}")),
                Ty::Int => json!(7),
                Ty::Bool => json!(true),
                Ty::Json => json!({"k": [1, "a", {"n": null}], "s": "q\"uote"}),
                Ty::Money => json!({"value": 1234, "currency": "EUR"}),
            };
            body.insert((*name).to_owned(), v);
        }
        out.push((t.kind, body));
    }
    out
}

/// [`samples`] as schema version 2 had them: without the kinds and fields versions 3 to 6
/// added.
fn samples_v2() -> Vec<(&'static str, Map<String, Value>)> {
    samples()
        .into_iter()
        .filter(|(kind, _)| {
            ![
                "reversal",
                "lease",
                "event",
                "event_outbox",
                "webhook_endpoint",
                "webhook_delivery",
                "app_version",
                "audit_event",
                "audit_head",
                "credential",
                "web_session",
            ]
            .contains(kind)
        })
        .map(|(kind, mut body)| {
            body.remove("acquirer_mid");
            body.remove("processor_data");
            if kind == "nonce" {
                body.remove("key");
            }
            if kind == "boot" {
                body.remove("seen_at");
            }
            if kind == "device" {
                for field in ["last_seen_at", "app_version", "connectivity", "heartbeat"] {
                    body.remove(field);
                }
            }
            (kind, body)
        })
        .collect()
}

#[tokio::test]
async fn temporary_contract() {
    let store = SqliteStore::temporary().unwrap();
    contract(&store).await;
}

#[tokio::test]
async fn file_contract() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.db");
    let store = SqliteStore::open(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    contract(&store).await;
}

#[tokio::test]
async fn durable_across_reopen_and_migrations_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.db");
    let store = SqliteStore::open(&path).unwrap();
    store
        .commit(vec![location("l1", "m", "1"), claim("ns", "v", "l1")])
        .await
        .unwrap();
    // A commit whose future is dropped still happens, before later commits.
    drop(store.commit(vec![location("l2", "m", "2")]));
    store.commit(vec![location("l3", "n", "3")]).await.unwrap();
    let l1 = get(&store, "location", "l1").await.unwrap();
    assert!(format!("{store:?}").contains("api.db"));
    drop(store);

    for _ in 0..2 {
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(get(&store, "location", "l1").await, Some(l1.clone()));
        assert_eq!(ids(&store, "locations", "m").await, ["l2", "l1"]);
        assert_eq!(store.owner("ns", "v").await.unwrap().as_deref(), Some("l1"));
        store.check().await.unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    store.commit(vec![location("l4", "m", "4")]).await.unwrap();
    assert!(seq(&store, "location", "l4").await > seq(&store, "location", "l3").await);
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
    // Tasks i and i + 100 reserve the same device id for different merchants with a location
    // each: exactly one of each pair must win, and only the winner's location may be stored.
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let owner = format!("m{i}");
            let device = format!("dev{}", i % 100);
            let result = store
                .commit(vec![
                    location(&owner, "all", "x"),
                    claim("device_id", &device, &owner),
                ])
                .await;
            // A second wave that lands in whatever groups the first one left behind.
            let logged = store.commit(vec![location(&format!("e{i}"), "events", "e")]);
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
        let owner = store.owner("device_id", &format!("dev{i}")).await.unwrap();
        assert_eq!(owner, Some(format!("m{winner}")));
        assert!(
            get(&*store, "location", &format!("m{winner}"))
                .await
                .is_some()
        );
        assert_eq!(get(&*store, "location", &format!("m{loser}")).await, None);
    }
    let events = store.list("locations", "events", None, 1000).await.unwrap();
    assert_eq!(events.len(), 200);
    let winners = store.list("locations", "all", None, 1000).await.unwrap();
    assert_eq!(winners.len(), 100);
    let mut seqs: Vec<u64> = winners.iter().chain(&events).map(|(_, s)| s.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 300, "distinct seqs");
    // Losers' rolled-back puts took no seq: the 300 stored records use 300 consecutive seqs.
    assert_eq!(seqs.last().unwrap() - seqs.first().unwrap(), 299);
}

/// The SQLite store answers merchants and terminal owners from memory: each writer, once its
/// commit returns, reads back what it wrote, however reads of the same records race it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_reads_never_lag_a_returned_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("api.db")).unwrap());
    store
        .commit(vec![reseller("r1", &[]), merchant("m1", &["r1"])])
        .await
        .unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Readers keep the cache filling with whatever they see.
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        readers.push(tokio::spawn(async move {
            let mut seen = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = store.get("merchant", "m1").await.unwrap();
                let _ = store.owner("terminal_id", "T1").await.unwrap();
                seen += 1;
                // Cache hits are ready at once: let the writer's task run.
                tokio::task::yield_now().await;
            }
            seen
        }));
    }
    for round in 1..=200_u64 {
        let owner = format!("d{round}");
        store
            .commit(vec![
                merchant_named("m1", &["r1"], &format!("round {round}")),
                release("terminal_id", "T1"),
                claim("terminal_id", "T1", &owner),
            ])
            .await
            .unwrap();
        let got = store.get("merchant", "m1").await.unwrap().unwrap();
        assert_eq!(got.body["name"], json!(format!("round {round}")));
        assert_eq!(got.version, round + 1);
        assert_eq!(store.owner("terminal_id", "T1").await.unwrap(), Some(owner));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    // A delete is seen at once too.
    store.commit(vec![del("merchant", "m1")]).await.unwrap();
    assert_eq!(store.get("merchant", "m1").await.unwrap(), None);
}

/// A job with a `Put` whose fields do not fit its table (too few values, an unknown kind) is
/// refused before it reaches the writer: nothing of it is written, its other writes included,
/// and the store goes on. (A record whose fields cannot be bound at all never becomes a write:
/// `db::put` refuses it.)
#[tokio::test]
async fn a_put_that_does_not_fit_its_table_fails_its_commit_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("api.db")).unwrap();
    let short = Write::Put {
        kind: "fee_template".into(),
        id: "f1".into(),
        fields: vec![tables::Field::Text("r".into())],
        indexes: Vec::new(),
    };
    let unknown = put("no_such_kind", "x", json!({"id": "x"}), &[]);
    for bad in [short, unknown] {
        let err = store
            .commit(vec![location("l1", "m", "L"), bad])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    }
    assert_eq!(get(&store, "location", "l1").await, None);
    assert_eq!(get(&store, "fee_template", "f1").await, None);
    store.commit(vec![location("l2", "m", "L")]).await.unwrap();
    assert!(get(&store, "location", "l2").await.is_some());
}

#[tokio::test]
async fn conflicting_job_in_a_group_does_not_roll_back_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.db");
    create_private(&path).unwrap();
    let mut writer = Writer::open(&path, "FULL", Arc::default()).unwrap();
    let job = |writes| Job::new(writes).unwrap();
    let ok = |answer: &mut oneshot::Receiver<Answer>| answer.try_recv().unwrap().0;

    let (held, mut held_answer) = job(vec![claim("device_id", "SN-1", "x")]);
    writer.run_batch(vec![held]);
    assert_eq!(ok(&mut held_answer), Ok(()));

    // One group: A succeeds, B conflicts on its claim, C fails its Expect, D succeeds and
    // sees A's write.
    let (a, mut a_answer) = job(vec![
        location("a", "d", "A"),
        claim("device_id", "SN-2", "a"),
    ]);
    let (b, mut b_answer) = job(vec![
        location("b", "d", "B"),
        claim("device_id", "SN-1", "b"),
    ]);
    let (c, mut c_answer) = job(vec![location("c", "d", "C"), expect("location", "a", None)]);
    let (d, mut d_answer) = job(vec![
        expect("location", "a", Some(1)),
        location("d", "d", "D"),
        release("device_id", "SN-1"),
    ]);
    writer.run_batch(vec![a, b, c, d]);
    assert_eq!(ok(&mut a_answer), Ok(()));
    assert_eq!(ok(&mut b_answer), conflict("device_id"));
    assert_eq!(ok(&mut c_answer), conflict("expect:location"));
    assert_eq!(ok(&mut d_answer), Ok(()));
    drop(writer);

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(ids(&store, "locations", "d").await, ["d", "a"]);
    assert_eq!(get(&store, "location", "b").await, None);
    assert_eq!(get(&store, "location", "c").await, None);
    assert_eq!(
        seq(&store, "location", "d").await,
        seq(&store, "location", "a").await + 1
    );
    assert_eq!(
        store.owner("device_id", "SN-2").await.unwrap().as_deref(),
        Some("a")
    );
    assert_eq!(store.owner("device_id", "SN-1").await.unwrap(), None);
}

/// A database written by the generic store (schema version 1) opens with every record, list
/// entry and unique value in the typed tables.
#[tokio::test]
async fn version_1_database_moves_into_typed_tables() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT);
             INSERT INTO schema_migrations (version) VALUES (1);",
        )
        .unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        let mut seq = 0_i64;
        let mut insert = |kind: &str, id: &str, body: &Value, idx: &[(&str, &str)]| {
            seq += 1;
            conn.execute(
                "INSERT INTO records (kind, id, seq, body) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![kind, id, seq, serde_json::to_vec(body).unwrap()],
            )
            .unwrap();
            for (name, key) in idx {
                conn.execute(
                    "INSERT INTO idx (name, key, seq, kind, id) VALUES (?1, ?2, ?3, ?4, ?5)",
                    rusqlite::params![name, key, seq, kind, id],
                )
                .unwrap();
            }
            conn.execute("UPDATE counter SET seq = ?1", [seq]).unwrap();
        };
        // Every kind with every field set, then realistic records with lists and nulls.
        for (kind, body) in samples_v2() {
            let id = body[key_of(kind)].as_str().unwrap().to_owned();
            insert(kind, &id, &Value::Object(body), &[]);
        }
        for w in [
            reseller("r1", &[]),
            reseller("r2", &["r1"]),
            merchant("m1", &["r1", "r2"]),
            location("l1", "m1", "shop"),
            user("u1", "sub-1"),
            put(
                "idempotency",
                "k1",
                json!({"id": "k1", "request": "h", "status": 201, "body": "text answer",
                       "created_at": 7200}),
                &[("idempotency_hour", "2")],
            ),
            // Written before `auth_epoch` and the key-set fields existed (serde defaults).
            put(
                "device",
                "d1",
                json!({"device_id": "d1", "merchant_id": "m1", "model": "P", "serial": "S",
                       "label": null, "location_id": null, "zone": "z", "status": "inactive",
                       "terminal_id": null, "identity_key_id": "i", "identity_kcv": "K",
                       "rotate_keys": false, "terminal_parameters": null,
                       "created_at": 1, "updated_at": 1, "activated_at": null}),
                &[("devices", "m1")],
            ),
        ] {
            let Write::Put {
                kind,
                id,
                fields,
                indexes,
            } = w
            else {
                unreachable!()
            };
            let idx: Vec<(&str, &str)> = indexes
                .iter()
                .map(|(n, k)| (n.as_str(), k.as_str()))
                .collect();
            // Its JSON as version 1 kept it: the fields it has (a null one was absent).
            let mut body =
                tables::fields_body(tables::of(&kind).unwrap().table, &id, &fields).unwrap();
            body.retain(|_, v| !v.is_null());
            insert(&kind, &id, &Value::Object(body), &idx);
        }
        for (ns, value, owner) in [
            ("portal_host", "p.example", "r1"),
            ("device_id", "d1", "m1"),
            ("terminal_id", "TID-000001", "d1"),
            ("user_sub", "sub-1", "u1"),
            ("migration", "pending-charges-before-checkpoints", "done"),
        ] {
            conn.execute(
                "INSERT INTO uniq (ns, value, owner) VALUES (?1, ?2, ?3)",
                [ns, value, owner],
            )
            .unwrap();
        }
    }

    let store = SqliteStore::open(&path).unwrap();
    for (i, (kind, mut body)) in samples_v2().into_iter().enumerate() {
        let id = body[key_of(kind)].as_str().unwrap().to_owned();
        let got = get(&store, kind, &id).await.unwrap();
        // Version 3's to 5's columns, as their migrations fill them.
        match kind {
            "merchant" => {
                body.insert("acquirer_mid".into(), json!(format!("9{:014}", got.seq)));
            }
            "charge" => {
                body.insert("processor_data".into(), Value::Null);
            }
            // The key from the id after its time; the last checkpoint as seen.
            "nonce" => {
                body.insert("key".into(), json!(id.get(13..).unwrap_or_default()));
            }
            "boot" => {
                body.insert("seen_at".into(), body["checkpoint"].clone());
            }
            // Version 5's heartbeat columns: nothing heard yet.
            "device" => {
                for field in ["last_seen_at", "app_version", "connectivity", "heartbeat"] {
                    body.insert(field.into(), Value::Null);
                }
            }
            _ => {}
        }
        assert_eq!(got.body, body, "{kind}");
        assert_eq!((got.seq, got.version), (u64::try_from(i).unwrap() + 1, 1));
    }
    assert_eq!(ids(&store, "reseller_tree", "r1").await, ["r2", "r1"]);
    assert_eq!(ids(&store, "reseller_children", "r1").await, ["r2"]);
    assert_eq!(ids(&store, "merchant_tree", "r2").await, ["m1"]);
    assert_eq!(ids(&store, "locations", "m1").await, ["l1"]);
    assert_eq!(ids(&store, "devices", "m1").await, ["d1"]);
    assert_eq!(ids(&store, "users", "").await, ["u1"]);
    assert_eq!(ids(&store, "idempotency_hour", "2").await, ["k1"]);
    let kept = get(&store, "idempotency", "k1").await.unwrap().body;
    assert_eq!(kept["body"], "text answer");
    let device = get(&store, "device", "d1").await.unwrap().body;
    assert_eq!(device["auth_epoch"], 0);
    assert_eq!(device["pairing_issued"], json!([]));
    assert_eq!(device["rotate_keys"], false);
    for (ns, value, owner) in [
        ("portal_host", "p.example", "r1"),
        ("device_id", "d1", "m1"),
        ("terminal_id", "TID-000001", "d1"),
        ("user_sub", "sub-1", "u1"),
        ("migration", "pending-charges-before-checkpoints", "done"),
    ] {
        assert_eq!(
            store.owner(ns, value).await.unwrap().as_deref(),
            Some(owner),
            "{ns}"
        );
    }
    // New records continue the sequence after the moved ones.
    store
        .commit(vec![location("l2", "m1", "new")])
        .await
        .unwrap();
    assert_eq!(ids(&store, "locations", "m1").await, ["l2", "l1"]);
    drop(store);
    let conn = Connection::open(&path).unwrap();
    let old: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_schema WHERE name IN ('records', 'idx', 'uniq')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(old, 0, "the generic tables are gone");
}
