//! Whole charges under load: signed, MSK-enveloped POS charges against a running API (which
//! delegates every crypto step to keyd on a SoftHSM token), over keep-alive HTTP on loopback.
//!
//! `cargo build --release -p keyd -p api -p benches && target/release/charge-load`
//!
//! It starts keyd and the API on throw-away state, registers and activates `--terminals`
//! terminals through the real lifecycle, then drives charges from `--connections` threads for
//! `--seconds`, flat out or at `--rate`. At the end it counts the merchant's charges through the
//! API and checks that every acknowledged charge is there (durability), and prints throughput
//! and latency percentiles.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    reason = "a benchmark driver reports and fails loudly"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use e2e::api::ApiProcess;
use e2e::pos::Terminal;
use serde_json::{Value, json};

/// Charge load driver.
#[derive(Debug, Parser)]
struct Args {
    /// Terminals to activate; connections take them round-robin.
    #[arg(long, default_value_t = 16)]
    terminals: usize,
    /// Client threads, each with one keep-alive connection.
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
}

fn sibling(name: &str) -> PathBuf {
    let bin = std::env::current_exe().unwrap().with_file_name(name);
    assert!(
        bin.exists(),
        "build {name} next to this driver: cargo build --release -p keyd -p api -p benches"
    );
    bin
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn new(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    /// Sends a request; returns the status and body.
    fn send(&mut self, request: &[u8]) -> (u16, Vec<u8>) {
        self.writer.write_all(request).unwrap();
        let mut status = 0;
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if status == 0 {
                status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            } else if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).unwrap();
        (status, body)
    }
}

/// A signed, enveloped `POST /pos/charge` as bytes on the wire.
fn charge_request(t: &Terminal, amount: u64) -> Vec<u8> {
    let inner = json!({
        "amount": {"value": amount.to_string(), "currency": "EUR"},
        "entry_mode": "contactless",
        "card": t.card_blob("4242424242424242").unwrap(),
    });
    let body = t.envelope(inner.to_string().as_bytes(), false).unwrap();
    let (tid, kid) = (t.terminal_id().unwrap(), t.mac_key_id().unwrap());
    let ts = e2e::pos::now_timestamp().unwrap();
    let nonce = e2e::pos::fresh_nonce().unwrap();
    let message =
        e2e::pos::charge_string_to_sign(tid, kid, &ts, &nonce, "POST", "/pos/charge", &body);
    let sig = e2e::pos::signature_header(t.mac_key().unwrap(), &message).unwrap();
    let mut req = format!(
        "POST /pos/charge HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Viopay-POS/1.4.0 (load)\r\n\
         X-Client-Type: pos\r\nX-Terminal-Id: {tid}\r\nX-Key-Id: {kid}\r\nX-Timestamp: {ts}\r\n\
         X-Nonce: {nonce}\r\nX-Signature: {sig}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    req
}

fn main() {
    let args = Args::parse();
    let mut keyd =
        e2e::KeydProcess::new(&sibling("keyd"), r#""data", "devices""#, &args.placement).unwrap();
    keyd.start().unwrap();
    let api = ApiProcess::start(
        &sibling("api"),
        keyd.socket(),
        "",
        &format!(
            "\n[processor]\nlatency_ms = {}\n",
            args.processor_latency_ms
        ),
    )
    .unwrap();
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
    let mut terminals = Vec::new();
    for i in 0..args.terminals {
        let device_id = format!("POS-{:08X}", 0x1000 + i);
        let d = call(
            "POST",
            &format!("/merchants/{mid}/devices"),
            Some(&json!({"device_id": device_id, "model": "A920", "serial": "S"})),
        );
        let key = &d["identity_key"];
        let mut t = Terminal::new(
            http,
            &device_id,
            key["key_id"].as_str().unwrap(),
            key["secret"].as_str().unwrap(),
            &e2e::hex(e2e::ZMK_HEX),
        )
        .unwrap()
        .with_version("1.4.0");
        let code = t.pairing_code().unwrap().json["pairing_code"].clone();
        let claim = call("POST", "/pos/claim", Some(&json!({"pairing_code": code})));
        t.set_terminal_id(claim["terminal_id"].as_str().unwrap());
        assert_eq!(t.attest().unwrap().status, 200);
        assert_eq!(t.keys().unwrap().status, 200);
        assert_eq!(t.activate().unwrap().0.status, 200);
        terminals.push(t);
    }
    println!(
        "charge-load: {} terminals activated in {:.1} s; {} connections, {} s, rate {}, processor latency {} ms, keyd placement {}",
        args.terminals,
        setup.elapsed().as_secs_f64(),
        args.connections,
        args.seconds,
        if args.rate == 0 {
            "flat out".to_owned()
        } else {
            format!("{}/s", args.rate)
        },
        args.processor_latency_ms,
        args.placement,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    let started = Instant::now();
    let per_thread_interval = (args.rate > 0)
        .then(|| Duration::from_secs_f64(args.connections as f64 / args.rate as f64));
    let threads: Vec<_> = (0..args.connections)
        .map(|i| {
            let t = terminals[i % terminals.len()].clone();
            let (stop, ok, failed, latencies) =
                (stop.clone(), ok.clone(), failed.clone(), latencies.clone());
            let port = api.port();
            std::thread::spawn(move || {
                let mut conn = Conn::new(port);
                let mut mine = Vec::with_capacity(100_000);
                let mut next = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(interval) = per_thread_interval {
                        let now = Instant::now();
                        if now < next {
                            std::thread::sleep(next - now);
                        }
                        next += interval;
                    }
                    n += 1;
                    let request = charge_request(&t, 1000 + (n % 89));
                    let sent = Instant::now();
                    let (status, body) = conn.send(&request);
                    let took = sent.elapsed();
                    if status == 200 && body.starts_with(b"{\"") {
                        ok.fetch_add(1, Ordering::Relaxed);
                        mine.push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
                    } else {
                        *failed.lock().unwrap().entry(status).or_default() += 1;
                    }
                }
                latencies.lock().unwrap().extend(mine);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(args.seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let acknowledged = ok.load(Ordering::Relaxed);
    let mut lat = latencies.lock().unwrap();
    let p = benches::percentiles(&mut lat);
    println!(
        "approved charges: {acknowledged} in {elapsed:.1} s = {:.0}/s; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        acknowledged as f64 / elapsed,
        p.p50 / 1000.0,
        p.p90 / 1000.0,
        p.p99 / 1000.0,
        p.p999 / 1000.0
    );
    let failures = failed.lock().unwrap();
    if !failures.is_empty() {
        println!("failed answers by status: {failures:?}");
    }
    // Durability: every acknowledged charge is stored (the API committed before answering).
    let mut stored = 0u64;
    let mut after: Option<String> = None;
    loop {
        let q = after
            .as_ref()
            .map_or(String::new(), |a| format!("&starting_after={a}"));
        let page = call(
            "GET",
            &format!("/charges?merchant_id={mid}&limit=100{q}"),
            None,
        );
        let data = page["data"].as_array().unwrap();
        stored += data.iter().filter(|c| c["status"] == "approved").count() as u64;
        if page["has_more"] != true {
            break;
        }
        after = page["next_cursor"].as_str().map(str::to_owned);
    }
    println!("stored approved charges: {stored} (acknowledged {acknowledged})");
    assert_eq!(stored, acknowledged, "an acknowledged charge is missing");
}
