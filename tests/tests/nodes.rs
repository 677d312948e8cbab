//! Two API nodes on one PostgreSQL database (issue 13): each promise of the contract that a
//! single node keeps in memory holds across nodes, with the two halves of each attack or race
//! sent to different nodes — a nonce, an `Idempotency-Key`, concurrent retries, refunds and
//! settlements racing, the pairing-code rate limit, the client-credential lockout, a disabled
//! device — and a `kill -9` of one node under load loses no acknowledged charge and leaves
//! nothing pending once the surviving node has taken over the housekeeping.
//!
//! Most tests give both API nodes one keyd (what they test is the API's coordination through
//! the store); `postgres_two_hosts_*` runs a keyd per host on one key store, as production
//! does. (Skipped with a message where PostgreSQL is not installed and `CI` is not set.)

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::print_stdout,
    reason = "tests fail loudly and print what they measure"
)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::api::{ApiProcess, Client, Database, Platform};
use e2e::pos::{Overrides, Terminal};
use serde_json::{Value, json};

const PAN: &str = "4242424242424242";

/// Node A (with keyd), node B beside it, the merchant, and the cluster kept alive; with two
/// hosts, node B's own keyd on the same key store.
struct Nodes {
    _cluster: pgcluster::Cluster,
    a: Platform,
    b: ApiProcess,
    keyd_b: Option<e2e::KeydProcess>,
    mid: String,
}

fn api_binary() -> PathBuf {
    let api_bin = PathBuf::from(env!("CARGO_BIN_EXE_pos-sim")).with_file_name("api");
    assert!(
        api_bin.exists(),
        "api is built with the workspace: cargo test --workspace"
    );
    api_bin
}

impl Nodes {
    /// Two API nodes on one database, one keyd.
    fn start(test: &str, processor: &str) -> Option<Self> {
        let cluster = pgcluster::Cluster::for_tests(test).unwrap()?;
        let database = Database::postgres(&cluster, "api").unwrap();
        let a = Platform::start_on(
            &api_binary(),
            &format!("\n[processor]\n{processor}\n{}", e2e::LOAD_LIMITS),
            &database,
        )
        .unwrap();
        let b = a.api.another_node().unwrap();
        Some(Self::with_merchant(cluster, a, b, None))
    }

    /// Two hosts, each an API node and a keyd node of its own: keyd's key store and the API's
    /// records in the same cluster, each keyd's token formed from the same LMK components.
    fn on_two_hosts(test: &str, processor: &str) -> Option<Self> {
        let cluster = pgcluster::Cluster::for_tests(test).unwrap()?;
        let database = Database::postgres(&cluster, "api").unwrap();
        cluster.create_database("keys").unwrap();
        let password = cluster.write_password_file().unwrap();
        let api_bin = api_binary();
        let keyd = |first: bool| {
            let mut k = e2e::KeydProcess::on_postgres(
                &api_bin.with_file_name("keyd"),
                r#""data", "devices""#,
                "memory",
                &cluster.url("keys"),
                &password,
            )
            .unwrap();
            if first {
                k.init_first_node().unwrap();
            } else {
                k.init_another_node().unwrap();
            }
            k.start().unwrap();
            k
        };
        let (keyd_a, keyd_b) = (keyd(true), keyd(false));
        let api = ApiProcess::start_on(
            &api_bin,
            keyd_a.socket(),
            &database,
            "",
            &format!("\n[processor]\n{processor}\n{}", e2e::LOAD_LIMITS),
        )
        .unwrap();
        let admin = api.token("ops", "platform_admin").unwrap();
        let a = Platform {
            keyd: keyd_a,
            http: api.client(),
            api,
            admin,
        };
        a.login_token(&a.admin).unwrap();
        let b = a.api.another_node_on(Some(keyd_b.socket())).unwrap();
        Some(Self::with_merchant(cluster, a, b, Some(keyd_b)))
    }

    fn with_merchant(
        cluster: pgcluster::Cluster,
        a: Platform,
        b: ApiProcess,
        keyd_b: Option<e2e::KeydProcess>,
    ) -> Self {
        let r = a
            .ok("POST", "/resellers", Some(&json!({"name": "R"})))
            .unwrap();
        let m = a
            .ok(
                "POST",
                "/merchants",
                Some(&json!({"reseller_id": r["id"], "name": "M",
                "mcc": "5812", "country": "DE", "currency": "EUR"})),
            )
            .unwrap();
        Self {
            _cluster: cluster,
            mid: m["id"].as_str().unwrap().to_owned(),
            a,
            b,
            keyd_b,
        }
    }

    fn a(&self) -> Client {
        self.a.http
    }

    fn b(&self) -> Client {
        self.b.client()
    }

    /// A call as the platform admin on node B (the session was initiated on node A).
    fn on_b(&self, method: &str, path: &str, body: Option<&Value>) -> e2e::api::Answer {
        self.b()
            .call(method, path, Some(&self.a.admin), body)
            .unwrap()
    }

    /// A registered device and its terminal, talking to node A.
    fn device(&self, n: u32) -> Terminal {
        let device_id = format!("POS-{n:08X}");
        let d = self
            .a
            .ok(
                "POST",
                &format!("/merchants/{}/devices", self.mid),
                Some(&json!({"device_id": device_id, "model": "sim", "serial": format!("SN-{n}")})),
            )
            .unwrap();
        let key = &d["identity_key"];
        Terminal::new(
            self.a(),
            &device_id,
            key["key_id"].as_str().unwrap(),
            key["secret"].as_str().unwrap(),
            &e2e::hex(e2e::ZMK_HEX),
        )
        .unwrap()
    }

    /// A terminal taken through its whole lifecycle with each step on the other node than
    /// the one before: pairing code on B, claim on A, attestation on B, keys on A,
    /// activation on B.
    fn activated(&self, n: u32) -> Terminal {
        let mut t = self.device(n);
        t.set_client(self.b());
        let code = t.pairing_code().unwrap();
        assert_eq!(code.status, 200, "{}", code.json);
        let claim = self
            .a
            .ok(
                "POST",
                "/pos/claim",
                Some(&json!({"pairing_code": code.json["pairing_code"]})),
            )
            .unwrap();
        t.set_terminal_id(claim["terminal_id"].as_str().unwrap());
        assert_eq!(t.attest().unwrap().status, 200);
        t.set_client(self.a());
        assert_eq!(t.keys().unwrap().status, 200);
        t.set_client(self.b());
        assert_eq!(t.activate().unwrap().0.status, 200);
        t
    }

    fn charges(&self) -> Vec<Value> {
        self.a.charges(&self.mid).unwrap()
    }
}

fn charge_inner(t: &Terminal, amount: u64, reference: &str) -> Value {
    json!({
        "amount": {"value": amount.to_string(), "currency": "EUR"},
        "entry_mode": "chip",
        "card": t.card_blob(PAN).unwrap(),
        "reference": reference,
    })
}

#[test]
fn postgres_two_api_nodes_keep_the_contract_across_nodes() {
    // The simulator answers after 300 ms, so that requests sent to both nodes at once overlap.
    let Some(mut nodes) = Nodes::start(
        "postgres_two_api_nodes_keep_the_contract",
        "latency_ms = 300",
    ) else {
        return;
    };
    let mut t = nodes.activated(0x0B00_0001);

    // Charges alternately on A and B.
    for (i, node) in [nodes.a(), nodes.b(), nodes.a(), nodes.b()]
        .into_iter()
        .enumerate()
    {
        t.set_client(node);
        let (a, v) = t.charge(PAN, 1000 + i as u64, "EUR", None).unwrap();
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(v.unwrap()["status"], "approved");
    }

    // A nonce used on A is refused on B (4013), also after B restarts.
    let nonce = "nodesnonce000000000001";
    let body = t
        .envelope(
            &serde_json::to_vec(&charge_inner(&t, 500, "nonce-1")).unwrap(),
            false,
        )
        .unwrap();
    let with_nonce = Overrides {
        nonce: Some(nonce.to_owned()),
        ..Overrides::default()
    };
    t.set_client(nodes.a());
    let first = t
        .signed_request("POST", "/pos/charge", &body, &with_nonce)
        .unwrap();
    assert_eq!(first.status, 200, "{}", first.json);
    t.set_client(nodes.b());
    let again = t
        .signed_request("POST", "/pos/charge", &body, &with_nonce)
        .unwrap();
    assert_eq!(
        (again.status, again.code()),
        (401, "4013"),
        "{}",
        again.json
    );
    nodes.b.restart().unwrap();
    let after_restart = t
        .signed_request("POST", "/pos/charge", &body, &with_nonce)
        .unwrap();
    assert_eq!(
        (after_restart.status, after_restart.code()),
        (401, "4013"),
        "{}",
        after_restart.json
    );
    // Sent to both nodes at once, exactly one of them takes it.
    let other = Overrides {
        nonce: Some("nodesnonce000000000002".to_owned()),
        ..Overrides::default()
    };
    let statuses = both_at_once(&t, &nodes, |t| {
        t.signed_request("POST", "/pos/charge", &body, &other)
            .unwrap()
    });
    let mut got: Vec<(u16, String)> = statuses
        .iter()
        .map(|a| (a.status, a.code().to_owned()))
        .collect();
    got.sort();
    assert_eq!(got[0].0, 200, "{got:?}");
    assert_eq!((got[1].0, got[1].1.as_str()), (401, "4013"), "{got:?}");

    // An Idempotency-Key answered on A is replayed on B.
    t.set_client(nodes.a());
    let inner = charge_inner(&t, 700, "idem-1");
    let (a1, v1) = t.charge_with(&inner, Some("nodes-key-1")).unwrap();
    assert_eq!(a1.status, 200, "{}", a1.json);
    t.set_client(nodes.b());
    let (a2, v2) = t.charge_with(&inner, Some("nodes-key-1")).unwrap();
    assert_eq!(a2.status, 200, "{}", a2.json);
    assert_eq!(v1.unwrap()["charge_id"], v2.unwrap()["charge_id"]);

    // Concurrent retries on A and B make one charge: the other answer is the same charge
    // or "in progress".
    let inner = charge_inner(&t, 800, "idem-race");
    let answers = both_at_once(&t, &nodes, |t| {
        t.charge_with(&inner, Some("nodes-key-2")).unwrap()
    });
    let ids: HashSet<String> = answers
        .iter()
        .filter(|(a, _)| a.status == 200)
        .map(|(_, v)| {
            v.as_ref().unwrap()["charge_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    for (a, _) in &answers {
        assert!(
            a.status == 200 || (a.status == 409 && a.code() == "4093"),
            "{} {}",
            a.status,
            a.json
        );
    }
    let made = nodes
        .charges()
        .iter()
        .filter(|c| c["reference"] == "idem-race")
        .count();
    assert_eq!(
        made, 1,
        "concurrent retries on two nodes made {made} charges"
    );

    // Two full refunds racing on A and B: one refund, never more than the charge.
    t.set_client(nodes.a());
    let (a, v) = t.charge(PAN, 2500, "EUR", Some("refund-race")).unwrap();
    assert_eq!(a.status, 200);
    let charge_id = v.unwrap()["charge_id"].as_str().unwrap().to_owned();
    let refunds = both_at_once(&t, &nodes, |t| {
        t.refund_with(&charge_id, &json!({"reason": "duplicate"}), None)
            .unwrap()
            .0
    });
    let ok = refunds.iter().filter(|a| a.status == 200).count();
    assert_eq!(ok, 1, "{refunds:?}");
    for a in &refunds {
        assert!(
            a.status == 200 || matches!(a.code(), "4221" | "4094" | "4090"),
            "{} {}",
            a.status,
            a.json
        );
    }
    let stored = nodes
        .a
        .ok("GET", &format!("/charges/{charge_id}"), None)
        .unwrap();
    assert_eq!(stored["status"], "refunded");
    assert_eq!(stored["amount_refunded"]["value"], "2500");

    // Two settlements racing on A and B: every charge settled once.
    let path = format!("/merchants/{}/settlements", nodes.mid);
    let (sa, sb) = std::thread::scope(|s| {
        let a = s.spawn(|| nodes.a.call("POST", &path, Some(&json!({}))).unwrap());
        let b = s.spawn(|| nodes.on_b("POST", &path, Some(&json!({}))));
        (a.join().unwrap(), b.join().unwrap())
    });
    let counted: u64 = [&sa, &sb]
        .iter()
        .filter(|a| a.status == 201)
        .map(|a| a.json["count"].as_u64().unwrap())
        .sum();
    let settled = nodes
        .charges()
        .iter()
        .filter(|c| !c["settled_at"].is_null())
        .count() as u64;
    assert!(settled > 0);
    assert_eq!(counted, settled, "{} / {}", sa.json, sb.json);

    // The same device registered on A and B at once: one is made, the other refused.
    let devices = format!("/merchants/{}/devices", nodes.mid);
    let body = json!({"device_id": "POS-0B0000FF", "model": "sim", "serial": "SN-RACE"});
    let (ra, rb) = std::thread::scope(|s| {
        let a = s.spawn(|| nodes.a.call("POST", &devices, Some(&body)).unwrap());
        let b = s.spawn(|| nodes.on_b("POST", &devices, Some(&body)));
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut statuses = [ra.status, rb.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409], "{} / {}", ra.json, rb.json);

    // The pairing-code rate limit counts codes asked of either node.
    let mut fresh = nodes.device(0x0B00_0002);
    for i in 0..10 {
        fresh.set_client(if i % 2 == 0 { nodes.a() } else { nodes.b() });
        let a = fresh.pairing_code().unwrap();
        assert_eq!(a.status, 200, "code {i}: {}", a.json);
    }
    fresh.set_client(nodes.a());
    let limited = fresh.pairing_code().unwrap();
    assert_eq!(
        (limited.status, limited.code()),
        (429, "4290"),
        "{}",
        limited.json
    );

    // The client-credential lockout counts failures on either node.
    let client = nodes
        .a
        .ok(
            "POST",
            &format!("/merchants/{}/api-clients", nodes.mid),
            Some(&json!({})),
        )
        .unwrap();
    let (id, secret) = (
        client["client_id"].as_str().unwrap(),
        client["client_secret"].as_str().unwrap(),
    );
    for i in 0..10 {
        let node = if i % 2 == 0 { nodes.a() } else { nodes.b() };
        let a = node
            .call(
                "POST",
                "/client/session",
                None,
                Some(&json!({"client_id": id, "client_secret": "wrong"})),
            )
            .unwrap();
        assert_eq!(a.status, 401, "{}", a.json);
    }
    let good = nodes
        .b()
        .call(
            "POST",
            "/client/session",
            None,
            Some(&json!({"client_id": id, "client_secret": secret})),
        )
        .unwrap();
    assert_eq!(
        (good.status, good.code()),
        (401, "4017"),
        "ten failures across nodes did not lock the client: {}",
        good.json
    );

    // A device disabled through A is refused by B at once (nodes keep no device cache).
    let disable = format!("/merchants/{}/devices/{}/disable", nodes.mid, t.device_id());
    nodes.a.ok("POST", &disable, Some(&json!({}))).unwrap();
    t.set_client(nodes.b());
    let refused = t.charge(PAN, 100, "EUR", None).unwrap().0;
    assert!(
        refused.status == 401 || refused.status == 403 || refused.status == 409,
        "{} {}",
        refused.status,
        refused.json
    );
}

/// Runs `call` on a copy of the terminal pointed at each node, both at once.
fn both_at_once<T: Send>(
    t: &Terminal,
    nodes: &Nodes,
    call: impl Fn(&mut Terminal) -> T + Sync,
) -> Vec<T> {
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let handles: Vec<_> = [nodes.a(), nodes.b()]
            .into_iter()
            .map(|node| {
                let mut t = t.clone();
                t.set_client(node);
                let (barrier, call) = (&barrier, &call);
                s.spawn(move || {
                    barrier.wait();
                    call(&mut t)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// `kill -9` of one node under charge load on both: every charge either node acknowledged is
/// stored exactly once and approved, the surviving node keeps serving, and the charges the
/// dead node left pending are voided and failed by the survivor once they are older than the
/// processor deadline and the margin (`recovery::OUTLIVE`), after it takes over the
/// housekeeping lease.
#[test]
fn postgres_kill_9_of_one_api_node_under_load_loses_nothing() {
    let Some(nodes) = Nodes::start("postgres_kill_9_of_one_api_node", "timeout_ms = 1000") else {
        return;
    };
    kill_host_a_under_load(nodes, 0x0C00_0000);
}

/// The whole platform on two hosts — two API nodes, two keyd nodes (two SoftHSM tokens formed
/// from the same LMK components) and one PostgreSQL: terminals go through their lifecycle
/// across hosts (each step on the other host than the one before, so keys made by one keyd
/// are used through the other), charge alternately, and then host A (its API node and its keyd
/// node) is killed with `kill -9` under charge load on both: host B keeps serving, every
/// acknowledged charge is stored once, nothing stays pending.
#[test]
fn postgres_two_hosts_lose_one_under_load_and_lose_nothing() {
    let Some(nodes) = Nodes::on_two_hosts("postgres_two_hosts_lose_one", "timeout_ms = 1000")
    else {
        return;
    };
    let mut t = nodes.activated(0x0D00_0001);
    for (i, node) in [nodes.a(), nodes.b(), nodes.a(), nodes.b()]
        .into_iter()
        .enumerate()
    {
        t.set_client(node);
        let (a, v) = t.charge(PAN, 1500 + i as u64, "EUR", None).unwrap();
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(v.unwrap()["status"], "approved");
    }
    kill_host_a_under_load(nodes, 0x0D10_0000);
}

fn kill_host_a_under_load(mut nodes: Nodes, first_device: u32) {
    let terminals: Vec<Terminal> = (0..4).map(|i| nodes.activated(first_device + i)).collect();
    let (on_a, on_b) = terminals.split_at(2);
    let (on_a, on_b) = (on_a.to_vec(), on_b.to_vec());
    let (port_a, port_b) = (nodes.a.api.port(), nodes.b.port());
    let options = |seconds| e2e::load::Options {
        connections: 4,
        duration: Duration::from_secs(seconds),
        rate: 0,
        progress: false,
        pan: PAN.into(),
        currency: "EUR".into(),
        collect: true,
        pin: None,
    };
    let load_a = std::thread::spawn(move || e2e::load::run(port_a, &on_a, &options(3)));
    let load_b = std::thread::spawn(move || e2e::load::run(port_b, &on_b, &options(4)));
    std::thread::sleep(Duration::from_millis(1500));
    nodes.a.api.kill();
    if nodes.keyd_b.is_some() {
        // Host A entirely: its keyd too (SIGKILL).
        nodes.a.keyd.kill();
    }
    let (report_a, report_b) = (load_a.join().unwrap(), load_b.join().unwrap());
    assert!(report_a.acknowledged.len() > 5, "{:?}", report_a.failed);
    assert!(report_b.acknowledged.len() > 20, "{:?}", report_b.failed);
    // The survivor kept serving after the kill.
    let mut probe = terminals[3].clone();
    probe.set_client(nodes.b());
    let (a, v) = probe.charge(PAN, 4321, "EUR", None).unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(v.unwrap()["status"], "approved");

    // Nothing stays pending: node B resolves what node A left.
    let started = Instant::now();
    let charges = loop {
        let charges = e2e::api::merchant_charges(nodes.b(), &nodes.a.admin, &nodes.mid).unwrap();
        let pending = charges.iter().filter(|c| c["status"] == "pending").count();
        if pending == 0 {
            break charges;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{pending} charges still pending"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    println!(
        "pending charges of the killed node resolved by the survivor after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Node A took the housekeeping lease at its start, before B existed; B takes it over once
    // it expires (15 s after A's last renewal, and B's next round).
    let took_over = || {
        std::fs::read_to_string(nodes.b.log_path())
            .unwrap()
            .lines()
            // B logs the lease only when it changes hands: its first line is taking it.
            .any(|l| l.contains("housekeeping lease"))
    };
    let waiting = Instant::now();
    while !took_over() {
        assert!(
            waiting.elapsed() < Duration::from_secs(40),
            "node B never took over the housekeeping lease"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let ids: Vec<&str> = charges
        .iter()
        .map(|c| c["charge_id"].as_str().unwrap())
        .collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a charge is listed twice");
    for id in report_a.acknowledged.iter().chain(&report_b.acknowledged) {
        assert!(
            unique.contains(id.as_str()),
            "acknowledged charge {id} is missing"
        );
        let c = nodes.on_b("GET", &format!("/charges/{id}"), None);
        assert_eq!(c.json["status"], "approved", "{id}");
    }
    assert!(
        charges
            .iter()
            .all(|c| c["status"] == "approved" || c["status"] == "failed")
    );
}
