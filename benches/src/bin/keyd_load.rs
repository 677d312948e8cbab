//! keyd under load: key-set issuance, then charge verify-and-open of MSK envelopes over the
//! socket (pipelined), next to the in-process ceiling of the same operation. `--op
//! pin-translate` and `--op mac-verify` load the payment-HSM operations instead: each device's
//! format 4 PIN block translated to an acquirer's ZPK, or a 512-byte ISO 8583-sized message's
//! retail MAC verified under its ZAK; `--op cmac-verify` the same message's AES-CMAC under a
//! zone's AES-256 MAC key, `--op zone-mac-batch` frames of 32 such MACs (half of each).
//! `--op charge-card` sends a new POS charge the way the API does since issue 15, one
//! `ChargeOpenCard` (verify, open, card decrypt), and `--op charge-then-card` the two calls it
//! replaced (`ChargeOpen`, then `CardDecrypt`); both count charges, not calls.
//!
//! `cargo build --release -p keyd -p benches && target/release/keyd-load`
//! It starts its own keyd on a throw-away SoftHSM token (loopback only, bounded in time).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing,
    reason = "a benchmark driver reports and fails loudly"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use e2e::device::DeliveredKey;
use e2e::pos::hex_upper;
use keyd_proto::message as m;
use keyd_proto::{Client, Secret};
use std::collections::HashMap;

/// keyd load driver.
#[derive(Debug, Parser)]
struct Args {
    /// Devices to create (each with a key set); charges rotate over them.
    #[arg(long, default_value_t = 200)]
    devices: usize,
    /// Seconds of charge load.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Connections to keyd.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Plaintext bytes per envelope.
    #[arg(long, default_value_t = 1024)]
    envelope_bytes: usize,
    /// Requests in flight during issuance.
    #[arg(long, default_value_t = 8)]
    issue_in_flight: usize,
    /// Working-key placement in keyd: `memory` or `token`. With `token`, a bare cryptoki loop
    /// doing the same two calls on the same token is measured too.
    #[arg(long, default_value = "memory")]
    placement: String,
    /// keyd's `hsm.token_threads` (threads making PKCS#11 data calls in `token` placement);
    /// keyd's default when left out.
    #[arg(long)]
    token_threads: Option<usize>,
    /// Extra devices (each with a key set) issued before the run but never charged: the store's
    /// size, to see that lookups stay flat as it grows.
    #[arg(long, default_value_t = 0)]
    preload: usize,
    /// What to load: `charge` (HMAC verify + envelope open), `pin-translate` (format 4 under the
    /// device's TPK to format 0 under a ZPK), `mac-verify` (retail MAC under a ZAK),
    /// `cmac-verify` (AES-CMAC under a zone's AES-256 MAC key) or `zone-mac-batch`
    /// (`ZoneMacVerifyBatch` frames of 16 retail MACs and 16 AES-CMACs).
    #[arg(long, default_value = "charge")]
    op: String,
    /// With `--op charge`: drive the load with a pipelined loop of raw frames (one task per
    /// connection, requests encoded once, a window of `--in-flight` per connection refilled as
    /// answers arrive, one write per batch of answers read) instead of a task per request
    /// through `keyd_proto::Client`. keyd's work is the same; the driver's share of the two
    /// cores is smaller, so more of them are left to keyd.
    #[arg(long)]
    raw: bool,
    /// Run an LMK rotation during the load: the ceremony before it, then `keyd lmk-rewrap` (a
    /// separate process, as officers run it) while the load runs; reports how long it took.
    #[arg(long)]
    lmk_rewrap: bool,
    /// Internal: run the bare cryptoki loop (in a child process that sees the token).
    #[arg(long, hide = true)]
    bare_loop: Option<String>,
}

/// The components of the new LMK for `--lmk-rewrap` (test values).
const LMK_COMPONENTS: [&str; 2] = [
    "1111111111111111222222222222222233333333333333334444444444444444",
    "A5A5A5A5A5A5A5A55A5A5A5A5A5A5A5A0F0F0F0F0F0F0F0FF0F0F0F0F0F0F0F0",
];

/// The request one device sends under load.
enum Request {
    Charge(m::ChargeOpen),
    ChargeCard(m::ChargeOpenCard),
    ChargeThenCard(m::ChargeOpen, m::CardDecrypt),
    Pin(m::PinTranslate),
    Mac(m::RetailMacVerify),
    Cmac(m::AesCmacVerify),
    ZoneBatch(m::ZoneMacVerifyBatch),
}

/// MACs per `--op zone-mac-batch` frame: half retail MACs, half AES-CMACs.
const ZONE_BATCH: usize = 32;

struct Device {
    request: Request,
}

/// Sends one request and checks its answer.
async fn send(conn: &Client, request: &Request) {
    match request {
        Request::Charge(r) => assert!(!conn.call(r).await.unwrap().plaintext.expose().is_empty()),
        Request::ChargeCard(r) => assert!(conn.call(r).await.unwrap().card_opened),
        Request::ChargeThenCard(open, card) => {
            assert!(!conn.call(open).await.unwrap().plaintext.expose().is_empty());
            assert!(!conn.call(card).await.unwrap().plaintext.expose().is_empty());
        }
        Request::Pin(r) => assert_eq!(conn.call(r).await.unwrap().pin_block.len(), 8),
        Request::Mac(r) => {
            conn.call(r).await.unwrap();
        }
        Request::Cmac(r) => {
            conn.call(r).await.unwrap();
        }
        Request::ZoneBatch(r) => {
            assert!(conn.call(r).await.unwrap().valid.iter().all(|v| *v));
        }
    }
}

/// A partner's TDES key imported as a TR-31 block under z1's ZMK; its key id.
async fn import(client: &Client, header: &str, key: &[u8]) -> String {
    let z1 = tr31::Kbpk::new(&e2e::hex(e2e::ZMK_HEX)).unwrap();
    let block = tr31::seal(
        &z1,
        &tr31::Header::parse(header, tr31::Profile::Strict).unwrap(),
        &tr31::Key::new(key).unwrap(),
        &tr31::SealOptions::default(),
        tr31::Padding::Random(&mut tr31::OsRandom),
    )
    .unwrap();
    client
        .call(&m::Tr31Import {
            zone: "z1".into(),
            key_block: block,
            label: "keyd-load".into(),
        })
        .await
        .unwrap()
        .key_id
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    e2e::device::hmac(key, msg).unwrap()
}

fn encrypt(key: &[u8], iv: &[u8; 16], plaintext: &[u8]) -> Vec<u8> {
    e2e::device::encrypt(key, iv, plaintext).unwrap()
}

/// A charge request as the API would build it: the envelope JSON is the signed body.
fn charge(keys: &HashMap<String, DeliveredKey>, bytes: usize) -> m::ChargeOpen {
    charge_of(keys, "", bytes)
}

/// The card of a charge under the device's TDK, and its IV.
fn card(keys: &HashMap<String, DeliveredKey>) -> (Vec<u8>, [u8; 16]) {
    let iv = [0x24u8; 16];
    let clear = br#"{"pan":"4242424242424242","exp_month":12,"exp_year":2030}"#;
    (encrypt(&keys["tdk"].key, &iv, clear), iv)
}

/// A new POS charge with its card, in one call or in the two it replaced.
fn charge_with_card(keys: &HashMap<String, DeliveredKey>, bytes: usize, one_call: bool) -> Request {
    let (data, iv) = card(keys);
    let member = format!(
        r#""card":{{"data":"{}","iv":"{}"}},"#,
        hex_upper(&data),
        hex_upper(&iv)
    );
    let open = charge_of(keys, &member, bytes);
    if one_call {
        Request::ChargeCard(m::ChargeOpenCard {
            mac_key_id: open.mac_key_id,
            message: open.message,
            signature: open.signature,
            msk_key_id: open.msk_key_id,
            iv: open.iv,
            ciphertext: open.ciphertext,
            gzip: false,
            tdk_key_id: keys["tdk"].key_id.clone(),
            tpk_key_id: String::new(),
            zpk_key_id: String::new(),
        })
    } else {
        Request::ChargeThenCard(
            open,
            m::CardDecrypt {
                tdk_key_id: keys["tdk"].key_id.clone(),
                iv,
                ciphertext: data,
            },
        )
    }
}

/// [`charge`] with `members` (a JSON fragment ending in a comma) in the plaintext.
fn charge_of(keys: &HashMap<String, DeliveredKey>, members: &str, bytes: usize) -> m::ChargeOpen {
    let plaintext = format!(
        r#"{{"amount":{{"value":"1500","currency":"EUR"}},{members}"pad":"{}"}}"#,
        "x".repeat(bytes.saturating_sub(48 + members.len()))
    );
    let iv = [0x42u8; 16];
    let ciphertext = encrypt(&keys["msk"].key, &iv, plaintext.as_bytes());
    let body = format!(
        r#"{{"format":"TR31-DATA","ciphertext":"{}","initialization_vector":"{}","mode":"CBC","key_kcv":"000000"}}"#,
        hex_upper(&ciphertext),
        "42".repeat(16)
    );
    let message = format!(
        "TID-000001\n{}\n1700000000\nabcdefabcdef\nPOST\n/pos/charge\n{body}",
        keys["mac"].key_id
    )
    .into_bytes();
    m::ChargeOpen {
        mac_key_id: keys["mac"].key_id.clone(),
        signature: hmac(&keys["mac"].key, &message),
        message,
        msk_key_id: keys["msk"].key_id.clone(),
        iv,
        ciphertext,
    }
}

fn keyd_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.with_file_name("keyd");
    assert!(
        bin.exists(),
        "build keyd next to this driver: cargo build --release -p keyd -p benches"
    );
    bin
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let args = Args::parse();
    if let Some(label) = &args.bare_loop {
        bare_cryptoki_loop(label, args.envelope_bytes, args.seconds);
        return;
    }
    assert!(
        matches!(
            args.op.as_str(),
            "charge"
                | "charge-card"
                | "charge-then-card"
                | "pin-translate"
                | "mac-verify"
                | "cmac-verify"
                | "zone-mac-batch"
        ),
        "--op is charge, charge-card, charge-then-card, pin-translate, mac-verify, cmac-verify or zone-mac-batch"
    );
    let mut keyd = e2e::KeydProcess::new(
        &keyd_binary(),
        r#""data", "devices", "admin""#,
        &args.placement,
    )
    .unwrap();
    if let Some(threads) = args.token_threads {
        keyd.add_hsm_config(&format!("token_threads = {threads}"))
            .unwrap();
    }
    keyd.start().unwrap();
    let client = Client::connect(keyd.socket()).await.unwrap();
    println!(
        "keyd-load: {} devices, {} connections x {} in flight, {}-byte envelopes, {} s",
        args.devices, args.connections, args.in_flight, args.envelope_bytes, args.seconds
    );

    // Issuance: device + identity key + key set, `issue_in_flight` at a time.
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    let total = (args.devices + args.preload) as u64;
    for _ in 0..args.issue_in_flight {
        let client = client.clone();
        let next = Arc::clone(&next);
        let active = args.devices as u64;
        tasks.push(tokio::spawn(async move {
            let mut sets = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break sets;
                }
                let device_id = format!("POS-{n:08X}");
                client
                    .call(&m::DeviceCreate {
                        device_id: device_id.clone(),
                        zone: "z1".into(),
                    })
                    .await
                    .unwrap();
                let set = client
                    .call(&m::KeySetCreate {
                        device_id: device_id.clone(),
                    })
                    .await
                    .unwrap();
                if n < active {
                    sets.push((device_id, set.key_set_id));
                }
            }
        }));
    }
    let mut sets = Vec::new();
    for t in tasks {
        sets.extend(t.await.unwrap());
    }
    let issue = started.elapsed();
    #[allow(clippy::cast_precision_loss, reason = "a rate for display")]
    let rate = total as f64 / issue.as_secs_f64();
    println!(
        "issuance: {total} devices (identity key + 6-key set each; {} charged, {} only stored) in {:.2} s = {rate:.0} devices/s",
        sets.len(),
        args.preload,
        issue.as_secs_f64()
    );

    // The acquirer's keys for the payment-HSM operations.
    let zpk_id = import(&client, "D0000P0TE00E0000", b"0123456789ABCDEF").await;
    let zak_id = import(&client, "D0000M3TC00E0000", b"FEDCBA9876543210").await;
    let zak = paycrypto::TdesKey::new(b"FEDCBA9876543210").unwrap();
    let cmac_bytes = [0x3C; 32];
    let cmac_id = import(&client, "D0000M6AC00E0000", &cmac_bytes).await;
    let cmac_key = paycrypto::AesKey::new(&cmac_bytes).unwrap();

    // Deliver each set and unwrap it the way the device would, to sign and encrypt charges.
    let mut devices = Vec::new();
    for (device_id, key_set_id) in &sets {
        let export = client
            .call(&m::KeySetExport {
                device_id: device_id.clone(),
                key_set_id: key_set_id.clone(),
            })
            .await
            .unwrap();
        let keys = e2e::device::unwrap_key_set(&export, &e2e::hex(e2e::ZMK_HEX)).unwrap();
        let request = match args.op.as_str() {
            "pin-translate" => {
                let delivered = keys.get("tpk").expect("a TPK in every key set");
                let tpk = paycrypto::AesKey::new(&delivered.key).unwrap();
                let pan = "4761739001010119";
                let block = paycrypto::encipher_format4(
                    &tpk,
                    &paycrypto::Pin::new("1234").unwrap(),
                    &paycrypto::Pan::new(pan).unwrap(),
                    &[0x5A; 8],
                );
                Request::Pin(m::PinTranslate {
                    from_key_id: delivered.key_id.clone(),
                    to_key_id: zpk_id.clone(),
                    pan: Secret::new(pan.as_bytes()),
                    pin_block: block.to_vec(),
                })
            }
            "mac-verify" => {
                let message = format!("0200{device_id}").repeat(32).into_bytes();
                Request::Mac(m::RetailMacVerify {
                    key_id: zak_id.clone(),
                    mac: paycrypto::retail_mac(&zak, &message),
                    message,
                })
            }
            "cmac-verify" => {
                let message = format!("0200{device_id}").repeat(32).into_bytes();
                Request::Cmac(m::AesCmacVerify {
                    key_id: cmac_id.clone(),
                    mac: paycrypto::aes_cmac(&cmac_key, &message).to_vec(),
                    message,
                })
            }
            "zone-mac-batch" => {
                let items = (0..ZONE_BATCH)
                    .map(|i| {
                        let message = format!("0200{device_id}{i:02}").repeat(32).into_bytes();
                        if i % 2 == 0 {
                            m::ZoneMacItem {
                                key_id: zak_id.clone(),
                                mac: paycrypto::retail_mac(&zak, &message).to_vec(),
                                message,
                            }
                        } else {
                            m::ZoneMacItem {
                                key_id: cmac_id.clone(),
                                mac: paycrypto::aes_cmac(&cmac_key, &message)[..8].to_vec(),
                                message,
                            }
                        }
                    })
                    .collect();
                Request::ZoneBatch(m::ZoneMacVerifyBatch { items })
            }
            "charge-card" => charge_with_card(&keys, args.envelope_bytes, true),
            "charge-then-card" => charge_with_card(&keys, args.envelope_bytes, false),
            _ => Request::Charge(charge(&keys, args.envelope_bytes)),
        };
        devices.push(Device { request });
    }
    let devices = Arc::new(devices);

    if args.lmk_rewrap {
        keyd.lmk_rotate(LMK_COMPONENTS).unwrap();
    }

    // Charge load over the socket.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    if args.raw {
        assert_eq!(args.op, "charge", "--raw drives --op charge only");
        let frames: Arc<Vec<Vec<u8>>> = Arc::new(
            devices
                .iter()
                .map(|d| match &d.request {
                    Request::Charge(r) => keyd_proto::Message::to_vec(r),
                    _ => unreachable!("--raw drives charges"),
                })
                .collect(),
        );
        for c in 0..args.connections {
            let stream = tokio::net::UnixStream::connect(keyd.socket())
                .await
                .unwrap();
            let (frames, stop) = (Arc::clone(&frames), Arc::clone(&stop));
            let window = args.in_flight;
            workers.push(tokio::spawn(raw_charges(stream, frames, window, c, stop)));
        }
    }
    let client_connections = if args.raw { 0 } else { args.connections };
    for c in 0..client_connections {
        let conn = Client::connect(keyd.socket()).await.unwrap();
        for w in 0..args.in_flight {
            let conn = conn.clone();
            let devices = Arc::clone(&devices);
            let stop = Arc::clone(&stop);
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                let mut i = c * 7919 + w;
                while !stop.load(Ordering::Relaxed) {
                    let Some(d) = devices.get(i % devices.len()) else {
                        break;
                    };
                    i += 1;
                    let t = Instant::now();
                    send(&conn, &d.request).await;
                    latencies.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                }
                latencies
            }));
        }
    }
    let load_started = Instant::now();
    let mut processes = vec![("driver", std::process::id())];
    processes.extend(keyd.pid().map(|pid| ("keyd", pid)));
    let meter = benches::CpuMeter::start(processes);
    // The rewrap starts a second into the load and runs beside it.
    let rewrap = args.lmk_rewrap.then(|| {
        let mut command = keyd.command(&["lmk-rewrap", "--officer", e2e::OFFICERS[0].0]);
        tokio::task::spawn_blocking(move || {
            use std::io::Write as _;
            std::thread::sleep(Duration::from_secs(1));
            let started = Instant::now();
            let mut child = command
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            writeln!(child.stdin.take().unwrap(), "{}", e2e::OFFICERS[0].1).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let said = String::from_utf8_lossy(&out.stderr);
            let moved = said
                .lines()
                .find_map(|l| l.strip_prefix("keyd: ")?.split_once(" blocks moved"))
                .map(|(n, _)| n)
                .unwrap_or("?")
                .to_owned();
            (started.elapsed(), moved)
        })
    });
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    if let Some(rewrap) = rewrap {
        let (took, moved) = rewrap.await.unwrap();
        println!(
            "LMK rewrap beside the load: {moved} blocks moved and switched in {:.2} s",
            took.as_secs_f64()
        );
    }
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap());
    }
    let elapsed = load_started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss, reason = "a rate for display")]
    let ops = latencies.len() as f64 / elapsed;
    let per_frame = if args.op == "zone-mac-batch" {
        ZONE_BATCH
    } else {
        1
    };
    #[allow(clippy::cast_precision_loss, reason = "a rate for display")]
    let verified = ops * per_frame as f64;
    let p = benches::percentiles(&mut latencies);
    println!(
        "socket, {} placement: {} {} in {elapsed:.1} s = {ops:.0} ops/s ({verified:.0} MACs/s where a frame carries several); latency p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, p99.9 {:.0} us",
        args.placement,
        latencies.len(),
        match args.op.as_str() {
            "pin-translate" => "PIN translations (format 4 to 0)",
            "mac-verify" => "retail MAC verifications",
            "cmac-verify" => "AES-CMAC verifications",
            "zone-mac-batch" => "zone MAC batches (16 retail MACs + 16 AES-CMACs each)",
            _ => "charge verify-and-open",
        },
        p.p50,
        p.p90,
        p.p99,
        p.p999
    );
    println!(
        "{}{}",
        meter.per_op(
            u64::try_from(latencies.len()).unwrap_or(u64::MAX),
            "operation"
        ),
        if args.lmk_rewrap {
            " (keyd's includes the rewrap)"
        } else {
            ""
        }
    );
    drop(client);
    keyd.stop();

    if args.op != "charge" {
        return;
    }
    if args.placement == "token" {
        // SoftHSM reads its configuration when the module is initialised, so the loop runs in a
        // child process started with the token's environment.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--bare-loop",
                "keyd-e2e",
                "--seconds",
                &args.seconds.min(5).to_string(),
            ])
            .args(["--envelope-bytes", &args.envelope_bytes.to_string()])
            .envs(keyd.hsm().env())
            .env("KEYD_LOAD_PIN", keyd.hsm().user_pin())
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
    }

    // The in-process ceiling: the same operation on keyd's service, no socket, two threads.
    let (ceiling, cpu_per_op) = in_process_ceiling(args.envelope_bytes, args.seconds.min(5));
    println!(
        "in-process ceiling (2 threads, no socket): {ceiling:.0} ops/s, {cpu_per_op:.2} us of CPU per operation; the socket's rate is {:.1} % of it",
        100.0 * ops / ceiling.max(1e-9)
    );
}

/// One connection of `--raw` charge load: says hello, then keeps `window` requests in flight
/// (request id = window slot), checks each answer (status OK, a response that decodes, a
/// plaintext), and sends the requests that replace a read's answers in one write. Returns each
/// answered request's latency in nanoseconds.
async fn raw_charges(
    mut stream: tokio::net::UnixStream,
    frames: Arc<Vec<Vec<u8>>>,
    window: usize,
    connection: usize,
    stop: Arc<AtomicBool>,
) -> Vec<u64> {
    use keyd_proto::frame::{self, Kind, MAX_BODY};
    use keyd_proto::{Message as _, Operation, Status};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut out = Vec::with_capacity(64 * 1024);
    let hello = m::Hello {
        client_version: keyd_proto::PROTOCOL_VERSION,
    };
    frame::encode(
        Kind::Request,
        m::Hello::OPCODE,
        Status::OK,
        u64::MAX,
        &hello.to_vec(),
        &mut out,
    );
    stream.write_all(&out).await.unwrap();
    out.clear();
    let mut buf = Vec::with_capacity(256 * 1024);
    let mut next = connection * 7919;
    let mut sent_at = vec![Instant::now(); window];
    let mut enqueue = |slot: usize, out: &mut Vec<u8>, sent_at: &mut [Instant]| {
        let body = &frames[next % frames.len()];
        next += 1;
        frame::encode(
            Kind::Request,
            m::ChargeOpen::OPCODE,
            Status::OK,
            slot as u64,
            body,
            out,
        );
        sent_at[slot] = Instant::now();
    };
    for slot in 0..window {
        enqueue(slot, &mut out, &mut sent_at);
    }
    let mut latencies = Vec::with_capacity(1 << 20);
    let mut outstanding = window;
    let mut stopping = false;
    while outstanding > 0 {
        if !out.is_empty() {
            stream.write_all(&out).await.unwrap();
            out.clear();
        }
        if buf.capacity() - buf.len() < 64 * 1024 {
            buf.reserve(64 * 1024);
        }
        assert!(stream.read_buf(&mut buf).await.unwrap() > 0, "keyd closed");
        stopping = stopping || stop.load(Ordering::Relaxed);
        let mut used = 0;
        while let Some((f, len)) = frame::decode(&buf[used..], MAX_BODY).unwrap() {
            used += len;
            assert_eq!(f.header.status, Status::OK);
            if f.header.opcode == m::Hello::OPCODE {
                continue;
            }
            let opened = <m::ChargeOpen as Operation>::Response::decode(f.body).unwrap();
            assert!(!opened.plaintext.expose().is_empty());
            let slot = usize::try_from(f.header.request_id).unwrap();
            let took = sent_at[slot].elapsed();
            latencies.push(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
            if stopping {
                outstanding -= 1;
            } else {
                enqueue(slot, &mut out, &mut sent_at);
            }
        }
        buf.drain(..used);
    }
    latencies
}

/// The in-process rate, and the CPU this process spent per operation meanwhile (keyd is stopped
/// by then, so the two loop threads are nearly all of it): read, not derived from the rate, so
/// that time the host gives to others does not pass for a slower loop.
fn in_process_ceiling(envelope_bytes: usize, seconds: u64) -> (f64, f64) {
    let hsm = keyd::SoftwareHsm::new();
    keyd::Hsm::create_lmk(&hsm).unwrap();
    let service = Arc::new(
        keyd::Service::new(
            Arc::new(hsm),
            Arc::new(keyd::MemoryStore::new()),
            keyd::Placement::Memory,
            86_400,
            1000,
        )
        .unwrap()
        .with_policy(keyd::officers::Policy::for_tests())
        .unwrap(),
    );
    service
        .zmk_import(&m::ZmkImport {
            zone: "z1".into(),
            key: Secret::new(&e2e::hex(e2e::ZMK_HEX)),
        })
        .unwrap();
    service
        .device_create(&m::DeviceCreate {
            device_id: "POS-00000001".into(),
            zone: "z1".into(),
        })
        .unwrap();
    let set = service
        .key_set_create(&m::KeySetCreate {
            device_id: "POS-00000001".into(),
        })
        .unwrap();
    let export = service
        .key_set_export(&m::KeySetExport {
            device_id: "POS-00000001".into(),
            key_set_id: set.key_set_id,
        })
        .unwrap();
    let keys = e2e::device::unwrap_key_set(&export, &e2e::hex(e2e::ZMK_HEX)).unwrap();
    let request = Arc::new(charge(&keys, envelope_bytes));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (service, request, stop, count) = (
                Arc::clone(&service),
                Arc::clone(&request),
                Arc::clone(&stop),
                Arc::clone(&count),
            );
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    service.charge_open(&request.view()).unwrap();
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let started = Instant::now();
    let cpu_before = benches::cpu_time(std::process::id()).unwrap_or_default();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let cpu = benches::cpu_time(std::process::id())
        .unwrap_or_default()
        .saturating_sub(cpu_before);
    #[allow(clippy::cast_precision_loss, reason = "a rate for display")]
    let done = count.load(Ordering::Relaxed).max(1) as f64;
    (
        done / started.elapsed().as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / done,
    )
}

/// The same two calls keyd makes per charge in `token` placement (HMAC-SHA-256 verify, then
/// AES-256-CBC-PAD decrypt), straight on cryptoki, no socket, no keyd: first on one thread, then
/// on two, each thread with a session of its own. The two-thread figure says how far SoftHSM
/// itself lets calls of one process run side by side on this machine.
fn bare_cryptoki_loop(label: &str, envelope_bytes: usize, seconds: u64) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    use cryptoki::session::UserType;
    use cryptoki::types::AuthPin;

    let module = e2e::softhsm_module().unwrap();
    let pkcs11 = Pkcs11::new(module).unwrap();
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = pkcs11
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| {
            pkcs11
                .get_token_info(*s)
                .map(|i| i.label() == label)
                .unwrap_or(false)
        })
        .unwrap();
    // Session objects belong to the application, so keys made on this session serve the
    // others; it stays open (and logged in) until the loops end.
    let anchor = pkcs11.open_rw_session(slot).unwrap();
    let pin = std::env::var("KEYD_LOAD_PIN").unwrap();
    anchor
        .login(UserType::User, Some(&AuthPin::from(pin)))
        .unwrap();
    let secret = |key_type, uses: [Attribute; 2]| {
        let mut t = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(key_type),
            Attribute::Token(false),
            Attribute::Private(false),
            Attribute::Sensitive(true),
            Attribute::Value(vec![0x11; 32]),
        ];
        t.extend(uses);
        anchor.create_object(&t).unwrap()
    };
    let mac = secret(
        KeyType::GENERIC_SECRET,
        [Attribute::Sign(true), Attribute::Verify(true)],
    );
    let msk = secret(
        KeyType::AES,
        [Attribute::Encrypt(true), Attribute::Decrypt(true)],
    );
    let same = |id: &str| DeliveredKey {
        key_id: id.to_owned(),
        key: vec![0x11; 32],
        kcv: [0; 3],
        sent_kcv: [0; 3],
    };
    let keys = HashMap::from([
        ("mac".to_owned(), same("mac")),
        ("msk".to_owned(), same("msk")),
    ]);
    let request = charge(&keys, envelope_bytes);
    for threads in [1usize, 2] {
        let started = Instant::now();
        let n: u64 = std::thread::scope(|scope| {
            let loops: Vec<_> = (0..threads)
                .map(|_| {
                    let session = pkcs11.open_rw_session(slot).unwrap();
                    let request = &request;
                    scope.spawn(move || {
                        let mut n = 0u64;
                        while started.elapsed() < Duration::from_secs(seconds) {
                            session
                                .verify(
                                    &Mechanism::Sha256Hmac,
                                    mac,
                                    &request.message,
                                    &request.signature,
                                )
                                .unwrap();
                            let plain = session
                                .decrypt(
                                    &Mechanism::AesCbcPad(request.iv),
                                    msk,
                                    &request.ciphertext,
                                )
                                .unwrap();
                            assert!(!plain.is_empty());
                            n += 1;
                        }
                        n
                    })
                })
                .collect();
            loops.into_iter().map(|l| l.join().unwrap()).sum()
        });
        #[allow(clippy::cast_precision_loss, reason = "a rate for display")]
        let rate = n as f64 / started.elapsed().as_secs_f64();
        println!(
            "bare cryptoki loop ({threads} thread{}, same token, HMAC verify + AES-CBC-PAD decrypt): {rate:.0} ops/s",
            if threads == 1 { "" } else { "s" }
        );
    }
}
