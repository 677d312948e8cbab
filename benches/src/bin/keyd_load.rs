//! keyd under load: key-set issuance, then charge verify-and-open of MSK envelopes over the
//! socket (pipelined), next to the in-process ceiling of the same operation.
//!
//! `cargo build --release -p keyd -p benches && target/release/keyd-load`
//! It starts its own keyd on a throw-away SoftHSM token (loopback only, bounded in time).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    reason = "a benchmark driver reports and fails loudly"
)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeEncrypt, KeyIvInit};
use clap::Parser;
use hmac::{Hmac, KeyInit, Mac};
use keyd_proto::message as m;
use keyd_proto::{Client, Secret};
use sha2::Sha256;

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
}

struct Device {
    charge: m::ChargeOpen,
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

fn encrypt(key: &[u8], iv: &[u8; 16], plaintext: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; (plaintext.len() / 16 + 1) * 16];
    let n = cbc::Encryptor::<aes::Aes256>::new_from_slices(key, iv)
        .unwrap()
        .encrypt_padded_b2b::<Pkcs7>(plaintext, &mut out)
        .unwrap()
        .len();
    out.truncate(n);
    out
}

/// A charge request as the API would build it: the envelope JSON is the signed body.
fn charge(
    keys: &std::collections::HashMap<String, (String, Vec<u8>)>,
    bytes: usize,
) -> m::ChargeOpen {
    let plaintext = format!(
        r#"{{"amount":{{"value":"1500","currency":"EUR"}},"pad":"{}"}}"#,
        "x".repeat(bytes.saturating_sub(48))
    );
    let iv = [0x42u8; 16];
    let ciphertext = encrypt(&keys["msk"].1, &iv, plaintext.as_bytes());
    let body = format!(
        r#"{{"format":"TR31-DATA","ciphertext":"{}","initialization_vector":"{}","mode":"CBC","key_kcv":"000000"}}"#,
        ciphertext
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>(),
        "42".repeat(16)
    );
    let message = format!(
        "TID-000001\n{}\n1700000000\nabcdefabcdef\nPOST\n/pos/charge\n{body}",
        keys["mac"].0
    )
    .into_bytes();
    m::ChargeOpen {
        mac_key_id: keys["mac"].0.clone(),
        signature: hmac(&keys["mac"].1, &message),
        message,
        msk_key_id: keys["msk"].0.clone(),
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
    let mut keyd = e2e::KeydProcess::new(&keyd_binary(), r#""data", "devices""#, "").unwrap();
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
    for _ in 0..args.issue_in_flight {
        let client = client.clone();
        let next = Arc::clone(&next);
        let total = args.devices as u64;
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
                sets.push((device_id, set.key_set_id));
            }
        }));
    }
    let mut sets = Vec::new();
    for t in tasks {
        sets.extend(t.await.unwrap());
    }
    let issue = started.elapsed();
    #[allow(clippy::cast_precision_loss, reason = "a rate for display")]
    let rate = sets.len() as f64 / issue.as_secs_f64();
    println!(
        "issuance: {} devices (identity key + 6-key set each) in {:.2} s = {rate:.0} devices/s",
        sets.len(),
        issue.as_secs_f64()
    );

    // Deliver each set and unwrap it the way the device would, to sign and encrypt charges.
    let zmk = tr31::Kbpk::new(&e2e::hex(e2e::ZMK_HEX)).unwrap();
    let mut devices = Vec::new();
    for (device_id, key_set_id) in &sets {
        let export = client
            .call(&m::KeySetExport {
                device_id: device_id.clone(),
                key_set_id: key_set_id.clone(),
            })
            .await
            .unwrap();
        let mut keys = std::collections::HashMap::new();
        for k in &export.keys {
            let parent = match k.wrapped_under.as_str() {
                "zmk" => tr31::Kbpk::new(zmk.expose_secret()).unwrap(),
                other => tr31::Kbpk::new(
                    &keys
                        .get(other)
                        .map(|(_, v): &(String, Vec<u8>)| v.clone())
                        .unwrap(),
                )
                .unwrap(),
            };
            let opened = tr31::open(&k.key_block, &parent, tr31::Profile::Strict).unwrap();
            keys.insert(
                k.kind.clone(),
                (k.key_id.clone(), opened.key.expose_secret().to_vec()),
            );
        }
        devices.push(Device {
            charge: charge(&keys, args.envelope_bytes),
        });
    }
    let devices = Arc::new(devices);

    // Charge load over the socket.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for c in 0..args.connections {
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
                    let answer = conn.call(&d.charge).await.unwrap();
                    latencies.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
                    assert!(!answer.plaintext.expose().is_empty());
                }
                latencies
            }));
        }
    }
    let load_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await.unwrap());
    }
    let elapsed = load_started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss, reason = "a rate for display")]
    let ops = latencies.len() as f64 / elapsed;
    let p = benches::percentiles(&mut latencies);
    println!(
        "socket, memory placement: {} charge verify-and-open in {elapsed:.1} s = {ops:.0} ops/s; latency p50 {:.0} us, p90 {:.0} us, p99 {:.0} us, p99.9 {:.0} us",
        latencies.len(),
        p.p50,
        p.p90,
        p.p99,
        p.p999
    );
    drop(client);
    keyd.stop();

    // The in-process ceiling: the same operation on keyd's service, no socket, two threads.
    let ceiling = in_process_ceiling(args.envelope_bytes, args.seconds.min(5));
    println!("in-process ceiling (2 threads, no socket): {ceiling:.0} ops/s");
}

fn in_process_ceiling(envelope_bytes: usize, seconds: u64) -> f64 {
    let hsm = keyd::SoftwareHsm::new();
    keyd::Hsm::create_lmk(&hsm).unwrap();
    let service = Arc::new(
        keyd::Service::new(
            Arc::new(hsm),
            Arc::new(keyd::MemoryStore::new()),
            86_400,
            1000,
        )
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
    let zmk = tr31::Kbpk::new(&e2e::hex(e2e::ZMK_HEX)).unwrap();
    let mut keys = std::collections::HashMap::new();
    for k in &export.keys {
        let parent = match k.wrapped_under.as_str() {
            "zmk" => zmk.expose_secret().to_vec(),
            other => keys
                .get(other)
                .map(|(_, v): &(String, Vec<u8>)| v.clone())
                .unwrap(),
        };
        let opened = tr31::open(
            &k.key_block,
            &tr31::Kbpk::new(&parent).unwrap(),
            tr31::Profile::Strict,
        )
        .unwrap();
        keys.insert(
            k.kind.clone(),
            (k.key_id.clone(), opened.key.expose_secret().to_vec()),
        );
    }
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
                    service.charge_open(&request).unwrap();
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    #[allow(clippy::cast_precision_loss, reason = "a rate for display")]
    let rate = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    rate
}
