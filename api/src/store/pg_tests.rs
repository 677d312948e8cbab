//! The store contract on a real PostgreSQL (a throw-away cluster of the `pgcluster` crate),
//! and what only several nodes can do to it: two stores on one database racing the same
//! `Expect` and `Claim`, opening (and migrating) at the same time, losing the server.
//!
//! Every test here is named `postgres_*`. Without PostgreSQL installed they print that they
//! are skipped, unless `CI` is set, where they fail (`scripts/test-all` installs it).
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::sync::Arc;

use pgcluster::Cluster;
use serde_json::json;
use zeroize::Zeroizing;

use super::tests::{
    claim, conflict, contract, expect, get, ids, location, put, release, seq, user,
};
use super::*;

/// A cluster with database `api`, or `None` when the test is skipped.
fn cluster(test: &str) -> Option<Cluster> {
    let cluster = Cluster::for_tests(test).unwrap()?;
    cluster.create_database("api").unwrap();
    Some(cluster)
}

fn options(cluster: &Cluster, db: &str) -> PgOptions {
    PgOptions {
        url: cluster.url(db),
        password: Some(Zeroizing::new(cluster.password().to_owned())),
        tls: PgTls::Disable,
        pool_size: 4,
        exclusive: false,
    }
}

async fn open(cluster: &Cluster) -> PgStore {
    PgStore::open(&options(cluster, "api")).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_contract() {
    let Some(cluster) = cluster("postgres_contract") else {
        return;
    };
    let store = open(&cluster).await;
    contract(&store).await;
    let shown = format!("{store:?}");
    assert!(
        shown.contains("127.0.0.1") && !shown.contains(cluster.password()),
        "{shown}"
    );
    // Text PostgreSQL cannot hold is the data's fault: a conflict, and nothing is written.
    assert_eq!(
        store.commit(vec![location("nul", "m1", "a\u{0}b")]).await,
        conflict("constraint")
    );
    assert_eq!(get(&store, "location", "nul").await, None);
}

/// Two nodes' stores on one database racing the same preconditions: exactly one of each race
/// wins, the losers' batches leave nothing, and seqs from both stay distinct and increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_stores_race() {
    let Some(cluster) = cluster("postgres_two_stores_race") else {
        return;
    };
    let stores = [
        Arc::new(open(&cluster).await),
        Arc::new(open(&cluster).await),
    ];
    stores[0]
        .commit(vec![location("shared", "m", "v1")])
        .await
        .unwrap();

    // Round r: 8 writers (alternating stores) race on (a) the same Expect of "shared" at its
    // current version, (b) creating "new-r" that must be absent, (c) the same device id, (d)
    // the same user subject (a UNIQUE column, checked by its claim).
    for round in 0..5 {
        let version = get(&*stores[0], "location", "shared")
            .await
            .unwrap()
            .version;
        let mut tasks = Vec::new();
        for w in 0..8 {
            let store = Arc::clone(&stores[w % 2]);
            let fresh = format!("new-{round}");
            tasks.push(tokio::spawn(async move {
                let tag = format!("r{round}w{w}");
                let a = store
                    .commit(vec![
                        expect("location", "shared", Some(version)),
                        location("shared", "m", &tag),
                        location(&format!("a-{tag}"), "a", "x"),
                    ])
                    .await;
                let b = store
                    .commit(vec![
                        expect("location", &fresh, None),
                        location(&fresh, "m", &tag),
                    ])
                    .await;
                let c = store
                    .commit(vec![
                        location(&format!("c-{tag}"), "c", "x"),
                        claim("device_id", &format!("dev-{round}"), &tag),
                    ])
                    .await;
                let d = store
                    .commit(vec![
                        claim("user_sub", &format!("sub-{round}"), &tag),
                        user(&tag, &format!("sub-{round}")),
                    ])
                    .await;
                (tag, [a, b, c, d])
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        for (race, what) in [(0, "expect:location"), (1, "expect:location")]
            .into_iter()
            .chain([(2, "device_id"), (3, "user_sub")])
        {
            let winners: Vec<&String> = results
                .iter()
                .filter(|(_, r)| r[race].is_ok())
                .map(|(tag, _)| tag)
                .collect();
            assert_eq!(winners.len(), 1, "round {round} race {race}: {results:?}");
            for (_, r) in &results {
                if let Err(e) = &r[race] {
                    assert_eq!(*e, StoreError::Conflict(what.to_owned()), "race {race}");
                }
            }
            let winner = winners[0].clone();
            match race {
                0 => {
                    let shared = get(&*stores[1], "location", "shared").await.unwrap();
                    assert_eq!(shared.version, version + 1);
                    assert_eq!(shared.body["name"], json!(winner));
                }
                1 => {
                    let fresh = get(&*stores[1], "location", &format!("new-{round}")).await;
                    assert_eq!(fresh.unwrap().body["name"], json!(winner));
                }
                2 => {
                    let owner = stores[1].owner("device_id", &format!("dev-{round}")).await;
                    assert_eq!(owner.unwrap(), Some(winner.clone()));
                }
                _ => {
                    let owner = stores[0].owner("user_sub", &format!("sub-{round}")).await;
                    assert_eq!(owner.unwrap(), Some(winner.clone()));
                }
            }
        }
        // A failed batch leaves nothing: only the winners' side records exist.
        for (tag, r) in &results {
            let a = get(&*stores[0], "location", &format!("a-{tag}")).await;
            assert_eq!(a.is_some(), r[0].is_ok(), "{tag}");
            let c = get(&*stores[1], "location", &format!("c-{tag}")).await;
            assert_eq!(c.is_some(), r[2].is_ok(), "{tag}");
        }
    }
    // Seqs from both stores: distinct, and later records have larger ones.
    let all: Vec<u64> = stores[0]
        .list("locations", "c", None, 1000)
        .await
        .unwrap()
        .iter()
        .map(|(_, s)| s.seq)
        .collect();
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0] > w[1]), "{all:?}");
    stores[1]
        .commit(vec![location("last", "m", "x")])
        .await
        .unwrap();
    assert!(seq(&*stores[0], "location", "last").await > all[0]);
    // A Release and a Claim in one batch hand a value over; the old holder is gone.
    stores[0]
        .commit(vec![
            release("device_id", "dev-0"),
            claim("device_id", "dev-0", "z"),
        ])
        .await
        .unwrap();
    assert_eq!(
        stores[1]
            .owner("device_id", "dev-0")
            .await
            .unwrap()
            .as_deref(),
        Some("z")
    );
}

/// Nodes starting together migrate once; opening again changes nothing; a database from a
/// newer build is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrations_run_once_and_newer_schema_is_refused() {
    let Some(cluster) = cluster("postgres_migrations_run_once_and_newer_schema_is_refused") else {
        return;
    };
    let opts = options(&cluster, "api");
    let (a, b, c) = tokio::join!(
        PgStore::open(&opts),
        PgStore::open(&opts),
        PgStore::open(&opts)
    );
    let (a, _b, _c) = (a.unwrap(), b.unwrap(), c.unwrap());
    a.commit(vec![location("l1", "m", "1")]).await.unwrap();
    drop(a);
    let again = PgStore::open(&opts).await.unwrap();
    assert_eq!(ids(&again, "locations", "m").await, ["l1"]);
    // One process per database when exclusive: a second is refused while the first runs.
    let exclusive = PgOptions {
        exclusive: true,
        ..options(&cluster, "api")
    };
    let first = PgStore::open(&exclusive).await.unwrap();
    match PgStore::open(&exclusive).await {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("another api process"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    drop(first);
    let mut reopened = None;
    for _ in 0..50 {
        if let Ok(store) = PgStore::open(&exclusive).await {
            reopened = Some(store);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(reopened.is_some(), "the lock is released with its session");
    let versions = cluster
        .psql(
            "api",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations",
        )
        .unwrap();
    let expected: Vec<String> = (1..=MIGRATIONS_PG).map(|v| v.to_string()).collect();
    assert_eq!(versions, expected.join(","));

    cluster
        .psql(
            "api",
            &format!(
                "INSERT INTO schema_migrations (version) VALUES ({})",
                MIGRATIONS_PG + 1
            ),
        )
        .unwrap();
    match PgStore::open(&opts).await {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("newer"), "{msg}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A schema of its own, named in the URL's options: the tables are made there, not in `public`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_from_the_url() {
    let Some(cluster) = cluster("postgres_schema_from_the_url") else {
        return;
    };
    cluster.psql("api", "CREATE SCHEMA viopay").unwrap();
    let opts = PgOptions {
        url: format!("{}?options=-c%20search_path%3Dviopay", cluster.url("api")),
        ..options(&cluster, "api")
    };
    let store = PgStore::open(&opts).await.unwrap();
    store.commit(vec![location("l1", "m", "1")]).await.unwrap();
    let schema = cluster
        .psql(
            "api",
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'locations'",
        )
        .unwrap();
    assert_eq!(schema, "viopay");
}

const MIGRATIONS_PG: usize = postgres::MIGRATIONS.len();

/// Losing the server: every operation is `Unavailable` with no values in its message, and the
/// pool reconnects once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_server_lost_and_back() {
    let Some(mut cluster) = cluster("postgres_server_lost_and_back") else {
        return;
    };
    let store = open(&cluster).await;
    store
        .commit(vec![location("l1", "m", "secret-name")])
        .await
        .unwrap();
    cluster.stop().unwrap();
    let errors = [
        store.get("location", "l1").await.err(),
        store.check().await.err(),
        store
            .commit(vec![put(
                "location",
                "l2",
                json!({"id": "l2", "merchant_id": "m", "name": "secret-value",
                       "address": {}, "created_at": 1, "updated_at": 1}),
                &[("locations", "m")],
            )])
            .await
            .err(),
    ];
    for e in errors {
        match e {
            Some(StoreError::Unavailable(msg)) => {
                assert!(!msg.contains("secret"), "{msg}");
                assert!(!msg.contains(cluster.password()), "{msg}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    cluster.start_server().unwrap();
    store.check().await.unwrap();
    assert_eq!(
        get(&store, "location", "l1").await.unwrap().body["name"],
        "secret-name"
    );
    assert_eq!(get(&store, "location", "l2").await, None);
}

/// TLS to the server: verify-full with the CA that signed the server's certificate connects (by
/// IP address and by name); another CA, or a name the certificate does not hold, does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_verify_full() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let Some(cluster) = Cluster::for_tests_with_tls(
        "postgres_tls_verify_full",
        &data.join("test-cert.pem"),
        &data.join("test-key.pem"),
    )
    .unwrap() else {
        return;
    };
    cluster.create_database("api").unwrap();
    let tls = |ca: &str| PgTls::VerifyFull {
        ca_file: data.join(ca),
    };
    let with = |url: String, tls: PgTls| PgOptions {
        url,
        tls,
        ..options(&cluster, "api")
    };
    let port = cluster.port();
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("postgres://{}@{host}:{port}/api", pgcluster::SUPERUSER);
        let store = PgStore::open(&with(url, tls("ca-cert.pem"))).await.unwrap();
        store.commit(vec![location("l1", "m", host)]).await.unwrap();
        let ssl = cluster
            .psql("api", "SELECT count(*) FROM pg_stat_ssl WHERE ssl")
            .unwrap();
        assert_ne!(ssl, "0", "{host}: the store's connections use TLS");
    }
    // The leaf is no CA of itself: the chain does not verify.
    let wrong = PgStore::open(&with(cluster.url("api"), tls("test-cert.pem"))).await;
    assert!(
        matches!(wrong, Err(StoreError::Unavailable(_))),
        "{wrong:?}"
    );
    // The right server, under a name its certificate does not hold.
    let url = format!(
        "postgres://{}@db.example.test:{port}/api?hostaddr=127.0.0.1",
        pgcluster::SUPERUSER
    );
    let wrong = PgStore::open(&with(url, tls("ca-cert.pem"))).await;
    assert!(
        matches!(wrong, Err(StoreError::Unavailable(_))),
        "{wrong:?}"
    );
}

/// What is refused before connecting: a password in the URL, TLS off towards another host.
#[tokio::test]
async fn postgres_options_refused() {
    let open = |url: &str, tls: PgTls| {
        let options = PgOptions {
            url: url.to_owned(),
            password: None,
            tls,
            pool_size: 1,
            exclusive: false,
        };
        async move { PgStore::open(&options).await }
    };
    let e = open("postgres://u:hunter2@127.0.0.1:1/db", PgTls::Disable)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Unavailable(m) if m.contains("password") && !m.contains("hunter2")),
        "{e:?}"
    );
    let e = open("postgres://u@db.example.com/db", PgTls::Disable)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, StoreError::Unavailable(m) if m.contains("loopback")),
        "{e:?}"
    );
    let e = open(
        "postgres://u@db.example.com/db",
        PgTls::VerifyFull {
            ca_file: "/nonexistent/ca.pem".into(),
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, StoreError::Unavailable(m) if m.contains("CA file")),
        "{e:?}"
    );
    // A closed loopback port: refused at open, as Unavailable.
    let e = open("postgres://u@127.0.0.1:1/db", PgTls::Disable)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
}
