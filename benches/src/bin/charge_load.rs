//! Whole charges under load: signed, MSK-enveloped POS charges against a running API (which
//! delegates every crypto step to keyd on a SoftHSM token), over keep-alive HTTP on loopback.
//!
//! `cargo build --release -p keyd -p api -p benches && target/release/charge-load`
//! (`--database postgres`: the API on a throw-away PostgreSQL cluster on loopback, with
//! PostgreSQL's durable defaults, instead of a SQLite file).
//!
//! `--nodes 2` runs a second API node on the same PostgreSQL database and spreads the
//! connections over both; `--extra-devices 1000000` writes that many more devices into it
//! first, for the cost of a large store.
//!
//! With `--processor iso8583` the API's processor is the ISO 8583 acquirer link (spec 12),
//! pointed at an `acqsim` acquirer host started inside this driver on a loopback port (with
//! `--processor-latency-ms` as its answer latency), keyd holding the published test ZAK and ZPK
//! (`keyd simulator-keys`): each charge then also costs keyd a PAN seal, a MAC and a MAC check,
//! and the API a round trip over the link. With `--pin 1234` every charge carries a PIN (chip
//! entry, a format 4 block under the terminal's TPK), which keyd translates to the processor's
//! ZPK and the issuer (the embedded simulator through keyd's `PvvVerify`, or `acqsim`) checks.
//!
//! It starts keyd and the API on throw-away state, registers and activates `--terminals`
//! terminals through the real lifecycle, then drives charges over `--connections` connections for
//! `--seconds`, flat out or at `--rate`. At the end it counts the merchant's charges through the
//! API and checks that every acknowledged charge is there (durability), and prints throughput
//! and latency percentiles.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "a benchmark driver reports and fails loudly"
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use e2e::api::{ApiProcess, Database};
use serde_json::{Value, json};

/// The API's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A throw-away PostgreSQL cluster.
    Postgres,
}

/// Charge load driver.
#[derive(Debug, Parser)]
struct Args {
    /// Terminals to activate; connections take them round-robin.
    #[arg(long, default_value_t = 16)]
    terminals: u32,
    /// Keep-alive connections, each sending one charge at a time (all driven from one thread).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Target charges per second over all connections (0: as fast as answers come).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Simulated processor latency (ms).
    #[arg(long, default_value_t = 0)]
    processor_latency_ms: u64,
    /// keyd's working-key placement: memory or token.
    #[arg(long, default_value = "memory")]
    placement: String,
    /// The API's store: sqlite (a file, synchronous=FULL) or postgres (a throw-away cluster
    /// started with Debian's initdb/pg_ctl, fsync and synchronous_commit on, over TCP on
    /// loopback with its password).
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    database: Backend,
    /// Connections in the API's PostgreSQL pool.
    #[arg(long, default_value_t = 16)]
    pool_size: usize,
    /// The API's processor: `simulator` (embedded) or `iso8583` (an acquirer host simulator
    /// over the ISO 8583 link, in this process).
    #[arg(long, default_value = "simulator")]
    processor: String,
    /// Every charge carries this PIN (chip entry; a format 4 block under the terminal's TPK,
    /// which keyd translates to the processor's ZPK and the issuer checks by PVV: `1234`
    /// approves). Without it, charges are contactless and carry none.
    #[arg(long)]
    pin: Option<String>,
    /// API nodes on the one database (more than one needs `--database postgres`); the
    /// connections are spread over them round-robin, as a load balancer would.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// Devices (with terminal ids) written straight into the PostgreSQL store before the run,
    /// besides the activated terminals: the cost of a large store (`--database postgres`).
    #[arg(long, default_value_t = 0)]
    extra_devices: u64,
}

/// Writes `n` activated-looking devices of a merchant of their own into the `api` database in
/// one statement per table (`generate_series`), then refreshes the planner's statistics.
fn bulk_devices(cluster: &pgcluster::Cluster, n: u64) {
    let started = Instant::now();
    let sql = format!(
        "INSERT INTO devices (device_id, version, merchant_id, model, serial, zone, status, \
           terminal_id, identity_key_id, identity_kcv, rotate_keys, auth_epoch, pairing_issued, \
           created_at, updated_at, activated_at) \
         SELECT 'POS-' || upper(lpad(to_hex(268435456 + g), 8, '0')), 1, 'm_bulk', 'bulk', \
           'BULK-' || g, 'z1', 'activated', 'BULK-' || g, 'idk-bulk-' || g, 'ABCD', false, 0, '[]', \
           0, 0, 0 FROM generate_series(1, {n}) AS g; \
         INSERT INTO device_ids (device_id, merchant_id) \
           SELECT 'POS-' || upper(lpad(to_hex(268435456 + g), 8, '0')), 'm_bulk' \
           FROM generate_series(1, {n}) AS g; \
         INSERT INTO terminal_ids (terminal_id, device_id) \
           SELECT 'BULK-' || g, 'POS-' || upper(lpad(to_hex(268435456 + g), 8, '0')) \
           FROM generate_series(1, {n}) AS g; \
         ANALYZE;"
    );
    cluster.psql("api", &sql).unwrap();
    println!(
        "charge-load: {n} more devices written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn sibling(name: &str) -> PathBuf {
    let bin = std::env::current_exe().unwrap().with_file_name(name);
    assert!(
        bin.exists(),
        "build {name} next to this driver: cargo build --release -p keyd -p api -p benches"
    );
    bin
}

/// The driver shares the two cores with the servers it measures: jemalloc, as the API uses,
/// keeps its allocations (a JSON body, an envelope and a request per charge) from taking
/// cycles the servers would use.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let args = Args::parse();
    let mut keyd =
        e2e::KeydProcess::new(&sibling("keyd"), r#""data", "devices""#, &args.placement).unwrap();
    keyd.start().unwrap();
    let cluster =
        (args.database == Backend::Postgres).then(|| pgcluster::Cluster::start_durable().unwrap());
    let database = match &cluster {
        None => Database::Sqlite,
        Some(cluster) => match Database::postgres(cluster, "api").unwrap() {
            Database::Postgres(lines) => {
                Database::Postgres(format!("{lines}pool_size = {}\n", args.pool_size))
            }
            Database::Sqlite => unreachable!(),
        },
    };
    // The acquirer host, when there is one, runs on this runtime's threads for the run.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (processor, acquirer) = match args.processor.as_str() {
        "simulator" => {
            let mut lines = format!("latency_ms = {}\n", args.processor_latency_ms);
            if args.pin.is_some() {
                let (zpk, pvk, _zak) = keyd.simulator_keys().unwrap();
                lines.push_str(&format!("pin_zpk = \"{zpk}\"\npin_pvk = \"{pvk}\"\n"));
            }
            (lines, None)
        }
        "iso8583" => {
            let sim = runtime
                .block_on(acqsim::Simulator::start_default())
                .unwrap();
            sim.set_latency(Duration::from_millis(args.processor_latency_ms));
            let (zpk, _pvk, zak) = keyd.simulator_keys().unwrap();
            (
                format!(
                    "kind = \"iso8583\"\nhost = \"127.0.0.1\"\nport = {}\nzak = \"{zak}\"\nzpk = \"{zpk}\"\n",
                    sim.addr().port()
                ),
                Some(sim),
            )
        }
        other => panic!("--processor is simulator or iso8583, not {other}"),
    };
    assert!(
        args.nodes >= 1 && (args.nodes == 1 || cluster.is_some()),
        "--nodes above 1 needs --database postgres"
    );
    let api = ApiProcess::start_on(
        &sibling("api"),
        keyd.socket(),
        &database,
        "",
        &format!("\n[processor]\n{processor}\n{}", e2e::LOAD_LIMITS),
    )
    .unwrap();
    let others: Vec<ApiProcess> = (1..args.nodes)
        .map(|_| api.another_node().unwrap())
        .collect();
    let http = api.client();
    let admin = api.token("load", "platform_admin").unwrap();
    let call = |method: &str, path: &str, body: Option<&Value>| -> Value {
        let a = http.call(method, path, Some(&admin), body).unwrap();
        assert!(a.status < 300, "{method} {path}: {} {}", a.status, a.json);
        a.json
    };
    call(
        "POST",
        "/session/initiate",
        Some(&json!({"host": "localhost"})),
    );
    let r = call("POST", "/resellers", Some(&json!({"name": "Load"})));
    let m = call(
        "POST",
        "/merchants",
        Some(
            &json!({"reseller_id": r["id"], "name": "Load", "mcc": "5812", "country": "DE", "currency": "EUR"}),
        ),
    );
    let mid = m["id"].as_str().unwrap().to_owned();
    let setup = Instant::now();
    let terminals = e2e::load::activate_terminals(
        http,
        &admin,
        &mid,
        &e2e::hex(e2e::ZMK_HEX),
        0x1000,
        args.terminals,
    )
    .unwrap();
    // After the activations: by then the API has migrated its schema for certain.
    if args.extra_devices > 0 {
        bulk_devices(
            cluster
                .as_ref()
                .expect("--extra-devices needs --database postgres"),
            args.extra_devices,
        );
    }
    println!(
        "charge-load: {} terminals activated in {:.1} s; {} connections, {} s, rate {}, processor {} latency {} ms, PIN {}, keyd placement {}, database {}, {} API node(s)",
        args.terminals,
        setup.elapsed().as_secs_f64(),
        args.connections,
        args.seconds,
        if args.rate == 0 {
            "flat out".to_owned()
        } else {
            format!("{}/s", args.rate)
        },
        args.processor,
        args.processor_latency_ms,
        if args.pin.is_some() { "yes" } else { "no" },
        args.placement,
        if cluster.is_some() {
            format!("postgres (pool {})", args.pool_size)
        } else {
            "sqlite".to_owned()
        },
        args.nodes,
    );
    let ports: Vec<u16> = std::iter::once(api.port())
        .chain(others.iter().map(ApiProcess::port))
        .collect();
    // What each process spends per charge: steadier than the rate on a shared machine.
    let mut processes: Vec<(String, u32)> = Vec::new();
    for (n, node) in std::iter::once(&api).chain(&others).enumerate() {
        if let Some(pid) = node.pid() {
            let name = if n == 0 {
                "API".to_owned()
            } else {
                format!("API node {}", n + 1)
            };
            processes.push((name, pid));
        }
    }
    processes.extend(keyd.pid().map(|pid| ("keyd".to_owned(), pid)));
    // The acquirer host simulator, when there is one, runs inside this process.
    let me = if acquirer.is_some() {
        "driver and acquirer host"
    } else {
        "driver"
    };
    processes.push((me.to_owned(), std::process::id()));
    let meter = benches::CpuMeter::start(processes);
    let report = e2e::load::run_on(
        &ports,
        &terminals,
        &e2e::load::Options {
            connections: args.connections,
            duration: Duration::from_secs(args.seconds),
            rate: args.rate,
            progress: false,
            pan: "4242424242424242".into(),
            currency: "EUR".into(),
            collect: false,
            pin: args.pin,
        },
    );
    print!("{}", report.summary());
    println!(
        "{}{}",
        meter.per_op(report.approved, "approved charge"),
        if cluster.is_some() {
            " (PostgreSQL's own processes not counted)"
        } else {
            ""
        }
    );
    // Durability: every acknowledged charge is stored (the API committed before answering).
    let stored = e2e::load::count_approved(http, &admin, &mid).unwrap();
    println!(
        "stored approved charges: {stored} (acknowledged {})",
        report.approved
    );
    assert_eq!(stored, report.approved, "an acknowledged charge is missing");
    if let Some(sim) = acquirer {
        let c = sim.counters();
        println!(
            "acquirer: {} requests, {} answered, {} MAC failures",
            c.received, c.answered, c.mac_failures
        );
        assert_eq!(c.mac_failures, 0, "a message the API sent did not verify");
    }
}
