//! The platform under charge load while its processes die: a `kill -9` of the API (every charge
//! the client saw acknowledged is stored exactly once, nothing is left pending) and a restart of
//! keyd (charges fail with 503 while it is gone and resume when it is back, nothing lost). The
//! `postgres_*` tests do the same with the API on a throw-away PostgreSQL cluster, and restart
//! the database server itself under load (skipped with a message where PostgreSQL is not
//! installed and `CI` is not set).

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use e2e::api::{Database, Platform};
use serde_json::{Value, json};

/// The platform, the merchant's id and its activated terminals.
type World = (Platform, String, Vec<e2e::pos::Terminal>);

fn platform() -> World {
    platform_on(&Database::Sqlite)
}

/// A throw-away PostgreSQL cluster and the platform on it, or `None` when skipped.
fn postgres(test: &str) -> Option<(pgcluster::Cluster, World)> {
    let cluster = pgcluster::Cluster::for_tests(test).unwrap()?;
    let database = Database::postgres(&cluster, "api").unwrap();
    let platform = platform_on(&database);
    Some((cluster, platform))
}

fn platform_on(database: &Database) -> World {
    let api_bin = PathBuf::from(env!("CARGO_BIN_EXE_pos-sim")).with_file_name("api");
    assert!(
        api_bin.exists(),
        "api is built with the workspace: cargo test --workspace"
    );
    let p = Platform::start_on(&api_bin, e2e::LOAD_LIMITS, database).unwrap();
    let r = p
        .ok("POST", "/resellers", Some(&json!({"name": "R"})))
        .unwrap();
    let m = p
        .ok("POST", "/merchants", Some(&json!({"reseller_id": r["id"], "name": "M", "mcc": "5812", "country": "DE", "currency": "EUR"})))
        .unwrap();
    let mid = m["id"].as_str().unwrap().to_owned();
    let terminals =
        e2e::load::activate_terminals(p.http, &p.admin, &mid, &e2e::hex(e2e::ZMK_HEX), 0x7000, 4)
            .unwrap();
    (p, mid, terminals)
}

fn options(seconds: u64) -> e2e::load::Options {
    e2e::load::Options {
        connections: 8,
        duration: Duration::from_secs(seconds),
        rate: 0,
        progress: false,
        pan: "4242424242424242".into(),
        currency: "EUR".into(),
        collect: true,
        pin: None,
    }
}

/// Every stored charge of the merchant.
fn stored(p: &Platform, mid: &str) -> Vec<Value> {
    p.charges(mid).unwrap()
}

/// The merchant's charges once recovery has resolved every pending one (pending charges are
/// listed, so a charge whose request was lost is seen until it is resolved). On PostgreSQL a
/// new start resolves another start's charges only once they are older than the processor
/// deadline (10 s) and `recovery::OUTLIVE` (30 s), after the old start's housekeeping lease
/// expired: well within two minutes.
fn resolved(p: &Platform, mid: &str) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let charges = stored(p, mid);
        let pending = charges.iter().filter(|c| c["status"] == "pending").count();
        if pending == 0 {
            return charges;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{pending} charges still pending"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Every charge the client saw approved is stored once, approved; every other charge is
/// failed (its request was lost and recovery voided it).
fn check_outcomes(p: &Platform, charges: &[Value], report: &e2e::load::Report) {
    let ids: Vec<&str> = charges
        .iter()
        .map(|c| c["charge_id"].as_str().unwrap())
        .collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a charge is listed twice");
    for id in &report.acknowledged {
        assert!(
            unique.contains(id.as_str()),
            "acknowledged charge {id} is missing"
        );
        let c = p.ok("GET", &format!("/charges/{id}"), None).unwrap();
        assert_eq!(c["status"], "approved");
    }
    assert!(
        charges
            .iter()
            .all(|c| c["status"] == "approved" || c["status"] == "failed")
    );
    assert!(charges.len() >= report.acknowledged.len());
}

#[test]
fn kill_9_of_the_api_under_load_loses_no_acknowledged_charge() {
    kill_9_under_load(platform());
}

#[test]
fn postgres_kill_9_of_the_api_under_load_loses_no_acknowledged_charge() {
    let Some((_cluster, platform)) = postgres("postgres_kill_9_of_the_api_under_load") else {
        return;
    };
    kill_9_under_load(platform);
}

/// PostgreSQL restarted under charge load: while it is down the API answers 503 and keeps
/// serving, afterwards its pool reconnects; every acknowledged charge is stored and nothing
/// stays pending.
#[test]
fn postgres_a_database_restart_under_load_fails_cleanly_and_recovers() {
    let Some((mut cluster, (p, mid, terminals))) =
        postgres("postgres_a_database_restart_under_load")
    else {
        return;
    };
    let port = p.api.port();
    let mut probe = terminals[0].clone();
    let load = std::thread::spawn(move || e2e::load::run(port, &terminals, &options(4)));
    std::thread::sleep(Duration::from_millis(1000));
    cluster.stop().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    cluster.start_server().unwrap();
    let report = load.join().unwrap();
    assert!(
        report.acknowledged.len() > 5,
        "charges went through around the restart: {:?}",
        report.failed
    );
    assert!(
        !report.failed.is_empty(),
        "the database was away: some charges must have failed"
    );
    let (a, v) = probe.charge("4242424242424242", 1234, "EUR", None).unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(v.unwrap()["status"], "approved");
    let health = p.http.call("GET", "/health/ready", None, None).unwrap();
    assert_eq!(health.status, 200, "{}", health.json);
    check_outcomes(&p, &resolved(&p, &mid), &report);
}

fn kill_9_under_load((mut p, mid, terminals): World) {
    let port = p.api.port();
    let load = std::thread::spawn(move || e2e::load::run(port, &terminals, &options(3)));
    std::thread::sleep(Duration::from_millis(1500));
    p.api.kill();
    p.api.restart().unwrap();
    let report = load.join().unwrap();
    assert!(report.acknowledged.len() > 20, "{:?}", report.failed);
    assert_eq!(report.acknowledged.len() as u64, report.approved);
    // Anything in flight at the kill was either stored with its outcome or is failed by
    // recovery: nothing stays pending.
    check_outcomes(&p, &resolved(&p, &mid), &report);
}

/// Many `kill -9`s in a row under load, each restart itself killed soon after it came up, as
/// a crash loop would: every charge any of them left pending is resolved once one process
/// stays up, however many restarts left it.
#[test]
fn a_crash_loop_under_load_leaves_nothing_pending() {
    let (mut p, mid, terminals) = platform();
    let port = p.api.port();
    let load = std::thread::spawn(move || e2e::load::run(port, &terminals, &options(8)));
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..12 {
        p.api.kill();
        p.api.restart().unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    let report = load.join().unwrap();
    assert!(report.acknowledged.len() > 20, "{:?}", report.failed);
    check_outcomes(&p, &resolved(&p, &mid), &report);
}

#[test]
fn a_keyd_restart_under_load_fails_cleanly_and_recovers() {
    let (mut p, mid, terminals) = platform();
    let port = p.api.port();
    let mut probe = terminals[0].clone();
    let load = std::thread::spawn(move || e2e::load::run(port, &terminals, &options(3)));
    std::thread::sleep(Duration::from_millis(1000));
    p.keyd.stop();
    std::thread::sleep(Duration::from_millis(300));
    p.keyd.start().unwrap();
    let report = load.join().unwrap();
    assert!(
        report.acknowledged.len() > 5,
        "charges went through around the restart: {:?}",
        report.failed
    );
    // While keyd was away the API answered 503/5030 and kept serving; afterwards charges
    // go through again (the API reconnects by itself).
    let (a, v) = probe.charge("4242424242424242", 1234, "EUR", None).unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(v.unwrap()["status"], "approved");
    let ids: HashSet<String> = stored(&p, &mid)
        .iter()
        .filter(|c| c["status"] == "approved")
        .map(|c| c["charge_id"].as_str().unwrap().to_owned())
        .collect();
    for id in &report.acknowledged {
        assert!(ids.contains(id), "acknowledged charge {id} is missing");
    }
    assert!(
        !report.failed.is_empty(),
        "keyd was away: some charges must have failed"
    );
    assert!(
        report.failed.keys().all(|s| *s == 503 || *s == 0),
        "{:?}",
        report.failed
    );
}
