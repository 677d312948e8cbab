//! LMK rotation with real processes on a real SoftHSM token: the rewrap killed with SIGKILL at
//! several points (the last one after its last batch, before the switch) and resumed, `keyd serve` answering data operations throughout, the switch,
//! the audit chain across it, and the old LMK's destruction; blocks under an LMK another process added opening at once.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keyd_proto::message as m;
use keyd_proto::{Client, ClientError, Status};

use e2e::{KeydProcess, OFFICERS, ZMK_HEX, device, hex};

/// The rotation's new LMK, as its two custodians' components.
const LMK_COMPONENTS: [&str; 2] = [
    "1111111111111111222222222222222233333333333333334444444444444444",
    "A5A5A5A5A5A5A5A55A5A5A5A5A5A5A5A0F0F0F0F0F0F0F0FF0F0F0F0F0F0F0F0",
];

/// What one device can be checked with: its identity key and secret, its key set and the MSK
/// and MAC key it unwrapped.
struct Device {
    id: String,
    identity: m::IdentityKey,
    key_set_id: String,
    msk_id: String,
    mac_id: String,
    msk: Vec<u8>,
    mac: Vec<u8>,
}

async fn make_device(client: &Client, n: usize) -> Device {
    let id = format!("POS-{n:08X}");
    let identity = client
        .call(&m::DeviceCreate {
            device_id: id.clone(),
            zone: "z1".into(),
        })
        .await
        .unwrap();
    let set = client
        .call(&m::KeySetCreate {
            device_id: id.clone(),
        })
        .await
        .unwrap();
    let export = client
        .call(&m::KeySetExport {
            device_id: id.clone(),
            key_set_id: set.key_set_id.clone(),
        })
        .await
        .unwrap();
    let keys = device::unwrap_key_set(&export, &hex(ZMK_HEX)).unwrap();
    let key_id = |kind: &str| {
        set.keys
            .iter()
            .find(|k| k.kind == kind)
            .unwrap()
            .key_id
            .clone()
    };
    Device {
        msk_id: key_id("msk"),
        mac_id: key_id("mac"),
        msk: keys["msk"].key.clone(),
        mac: keys["mac"].key.clone(),
        id,
        identity,
        key_set_id: set.key_set_id,
    }
}

/// A charge of `d` verified and opened, and its attestation verified: every device key the data
/// path loads from the store.
async fn use_device(client: &Client, d: &Device, n: usize) -> Result<(), ClientError> {
    let message = format!("{} attests {n}", d.id).into_bytes();
    client
        .call(&m::AttestVerify {
            device_id: d.id.clone(),
            key_id: d.identity.key_id.clone(),
            signature: device::hmac(d.identity.secret.expose(), &message).unwrap(),
            message,
        })
        .await?;
    let iv = [u8::try_from(n % 251).unwrap(); 16];
    let plaintext = format!("charge {n}").into_bytes();
    let ciphertext = device::encrypt(&d.msk, &iv, &plaintext).unwrap();
    let message = format!("charge {n} of {}", d.id).into_bytes();
    let opened = client
        .call(&m::ChargeOpen {
            mac_key_id: d.mac_id.clone(),
            signature: device::hmac(&d.mac, &message).unwrap(),
            message,
            msk_key_id: d.msk_id.clone(),
            iv,
            ciphertext,
        })
        .await?;
    assert_eq!(opened.plaintext.expose(), &plaintext[..]);
    Ok(())
}

/// Every device's keys still open, loaded from the store (the set delivered again from the
/// ZMK down with the same keys).
async fn check_all(client: &Client, devices: &[Device]) {
    for d in devices {
        let export = client
            .call(&m::KeySetExport {
                device_id: d.id.clone(),
                key_set_id: d.key_set_id.clone(),
            })
            .await
            .unwrap();
        let keys = device::unwrap_key_set(&export, &hex(ZMK_HEX)).unwrap();
        assert_eq!(keys["msk"].key, d.msk, "{}", d.id);
        assert_eq!(keys["mac"].key, d.mac, "{}", d.id);
        use_device(client, d, 0).await.unwrap();
    }
}

/// `keyd lmk-rewrap` stopped after `n` blocks, then killed with SIGKILL.
fn rewrap_killed_after(k: &KeydProcess, n: usize) {
    let mut child = k
        .command(&[
            "lmk-rewrap",
            "--officer",
            OFFICERS[0].0,
            "--batch",
            "7",
            "--test-pause-after",
            &n.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{}", OFFICERS[0].1).unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    for line in stderr.lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("paused after") {
            break;
        }
    }
    assert!(seen.contains("paused after"), "{seen}");
    child.kill().unwrap(); // SIGKILL: no destructor, no flush, no rollback of its own
    child.wait().unwrap();
}

fn lmk_rows(k: &KeydProcess) -> Vec<serde_json::Value> {
    k.run(&["lmks", "--json"], &[])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lmk_rotation_survives_kill_9_during_the_rewrap_while_keyd_serves() {
    let mut k = KeydProcess::new(
        std::path::Path::new(env!("CARGO_BIN_EXE_keyd")),
        r#""data", "devices""#,
        "memory",
    )
    .unwrap();
    let serve_log = k.hsm().dir().join("serve.log");
    k.start_with(None, Some(&serve_log)).unwrap();
    let client = Arc::new(Client::connect(k.socket()).await.unwrap());
    let mut devices = Vec::new();
    for n in 1..=24 {
        devices.push(make_device(&client, n).await);
    }
    let devices = Arc::new(devices);
    let generated = k
        .run(
            &[
                "key-generate",
                "--header",
                "D0000P0TB00E0000",
                "--label",
                "partner ZPK",
                "--officer",
                OFFICERS[0].0,
                "--json",
            ],
            &[OFFICERS[0].1],
        )
        .unwrap();
    let generated: serde_json::Value =
        serde_json::from_str(generated.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    let zpk = generated["key_id"].as_str().unwrap().to_owned();
    let pan = || keyd_proto::Secret::new(b"4242424242424242");
    let fingerprint = client
        .call(&m::PanFingerprint { pan: pan() })
        .await
        .unwrap()
        .value;
    let sealed_pan = client
        .call(&m::PanSeal { pan: pan() })
        .await
        .unwrap()
        .sealed;
    // A copy of one key's block as a backup from before the rotation would hold it.
    let store = rusqlite::Connection::open(k.store()).unwrap();
    let victim = &devices[0].identity.key_id;
    let old_block: String = store
        .query_row("SELECT block FROM keys WHERE key_id = ?1", [victim], |r| {
            r.get(0)
        })
        .unwrap();
    let old_kcv = k.run(&["zones"], &[]).unwrap();
    let old_kcv = old_kcv
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("LMK KCV ")
        .to_owned();

    // Charges keep being verified and opened all through the rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (client, devices, stop, ok, failed) = (
            Arc::clone(&client),
            Arc::clone(&devices),
            Arc::clone(&stop),
            Arc::clone(&ok),
            Arc::clone(&failed),
        );
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                n += 1;
                let d = &devices[n % devices.len()];
                match use_device(&client, d, n).await {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 5 {
                            eprintln!("data operation failed during the rotation: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        0
                    }
                };
            }
        })
    };

    // The ceremony: two officers, two custodians.
    let [(a, a_password), (b, b_password)] = OFFICERS;
    let out = k.lmk_rotate(LMK_COMPONENTS).unwrap();
    let new_kcv = out
        .lines()
        .find_map(|l| l.strip_prefix("new LMK KCV "))
        .unwrap()
        .to_owned();
    assert_ne!(new_kcv, old_kcv);
    let rows = lmk_rows(&k);
    assert!(
        rows.iter()
            .any(|r| r["kcv"] == new_kcv.as_str() && r["state"] == "pending")
    );

    // Killed at four points of the rewrap, the last one after its last batch (before the pass
    // that finds nothing left and the switch); after each, every key opens.
    let total: i64 = store
        .query_row(
            "SELECT (SELECT count(*) FROM keys WHERE block <> '')
                  + (SELECT count(*) FROM imported_keys WHERE block <> '')
                  + (SELECT count(*) FROM zones WHERE block <> '')
                  + (SELECT count(*) FROM lmk_secrets WHERE block <> '')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let moved_so_far = || -> i64 {
        store
            .query_row(
                "SELECT (SELECT count(*) FROM keys WHERE block LIKE ?1)
                      + (SELECT count(*) FROM imported_keys WHERE block LIKE ?1)
                      + (SELECT count(*) FROM zones WHERE block LIKE ?1)
                      + (SELECT count(*) FROM lmk_secrets WHERE block LIKE ?1)",
                [format!("%KP0C01{new_kcv}%")],
                |r| r.get(0),
            )
            .unwrap()
    };
    for target in [5, 40, 110, total] {
        // Each run counts the blocks it moves itself.
        let n = target - moved_so_far();
        rewrap_killed_after(&k, usize::try_from(n).unwrap());
        check_all(&client, &devices).await;
        let moved = moved_so_far();
        assert!(
            moved >= target,
            "{moved} blocks moved after a stop at {target}"
        );
    }
    assert_eq!(
        moved_so_far(),
        total,
        "every block moved, and no switch yet:"
    );
    assert!(rows_in_state(&k, "next"), "the rewrap began");
    // Resumed to the end.
    let out = k
        .run(&["lmk-rewrap", "--officer", a], &[a_password])
        .unwrap();
    assert!(out.contains(&format!("LMK KCV {new_kcv}")), "{out}");
    let rows = lmk_rows(&k);
    assert!(
        rows.iter()
            .any(|r| r["kcv"] == new_kcv.as_str() && r["state"] == "current")
    );
    assert!(
        rows.iter()
            .any(|r| r["kcv"] == old_kcv.as_str() && r["state"] == "retired")
    );
    let left: i64 = store
        .query_row(
            "SELECT count(*) FROM keys WHERE block <> '' AND block NOT LIKE ?1",
            [format!("%KP0C01{new_kcv}%")],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(left, 0, "every device key is under the new LMK");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Release);
    load.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("data operations during the rotation: {ok} answered, {failed} failed");
    if failed > 0 {
        eprintln!("{}", std::fs::read_to_string(&serve_log).unwrap());
    }
    assert!(ok > 50, "{ok}");
    assert_eq!(failed, 0);

    // Everything opens after the switch: device keys, a partner's key, the PAN keys.
    check_all(&client, &devices).await;
    k.approve("export", &format!("{zpk}@z1")).unwrap();
    k.run(&["tr31-export", "--key", &zpk, "--zone", "z1"], &[])
        .unwrap();
    assert_eq!(
        client
            .call(&m::PanFingerprint { pan: pan() })
            .await
            .unwrap()
            .value,
        fingerprint
    );
    let opened = client
        .call(&m::PanOpen {
            sealed: sealed_pan.clone(),
        })
        .await
        .unwrap();
    assert_eq!(opened.pan.expose(), b"4242424242424242");

    // The old LMK, destroyed by the officers: the block a backup kept no longer opens.
    let err = k
        .run(
            &["lmk-destroy", "--kcv", &old_kcv, "--approver", a],
            &[a_password],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("approved so far by: alice"), "{err}");
    k.run(
        &["lmk-destroy", "--kcv", &old_kcv, "--approver", b],
        &[b_password],
    )
    .unwrap();
    assert!(lmk_rows(&k).iter().any(|r| r["kcv"] == old_kcv.as_str()
        && r["state"] == "destroyed"
        && r["in_this_token"] == false));
    check_all(&client, &devices).await;
    store
        .execute(
            "UPDATE keys SET block = ?2 WHERE key_id = ?1",
            [victim.as_str(), old_block.as_str()],
        )
        .unwrap();
    drop(client);
    k.stop();
    k.start().unwrap();
    let client = Client::connect(k.socket()).await.unwrap();
    let err = use_device(&client, &devices[0], 1).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Status(Status::UNAVAILABLE | Status::AUTH_FAILED)
        ),
        "{err}"
    );
    use_device(&client, &devices[1], 1).await.unwrap();

    // One audit chain across the rotation, with both KCVs on it.
    drop(client);
    k.stop();
    let log = std::fs::read_to_string(k.hsm().dir().join("keys.audit.log")).unwrap();
    assert!(
        log.contains(&format!(
            "\"op\":\"0x0340\",\"subject\":\"lmk\",\"kcv\":\"{new_kcv}\""
        )),
        "{log}"
    );
    assert!(log.contains(&format!(
        "\"subject\":\"from-{old_kcv}\",\"kcv\":\"{new_kcv}\""
    )));
    assert!(log.contains(&format!(
        "\"op\":\"0x0343\",\"subject\":\"lmk\",\"kcv\":\"{old_kcv}\""
    )));
    let verified = k.run(&["audit-verify"], &[]).unwrap();
    assert!(verified.contains("chain intact"), "{verified}");
}

fn rows_in_state(k: &KeydProcess, state: &str) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        if lmk_rows(k).iter().any(|r| r["state"] == state) {
            return true;
        }
    }
    false
}

/// A new ZMK for zone `z1`, as its two custodians' components.
const NEW_ZMK_COMPONENTS: [&str; 2] = [
    "0F1E2D3C4B5A69788796A5B4C3D2E1F00F1E2D3C4B5A69788796A5B4C3D2E1F0",
    "55AA55AA55AA55AA33CC33CC33CC33CC0FF00FF00FF00FF0A5A5A5A5A5A5A5A5",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zones_zmk_rotates_from_the_command_line_while_keyd_serves() {
    let mut k = KeydProcess::new(
        std::path::Path::new(env!("CARGO_BIN_EXE_keyd")),
        r#""data", "devices""#,
        "token",
    )
    .unwrap();
    k.start().unwrap();
    let client = Client::connect(k.socket()).await.unwrap();
    let mut devices = Vec::new();
    for n in 0x100..0x103 {
        devices.push(make_device(&client, n).await);
    }
    let new_zmk: Vec<u8> = hex(NEW_ZMK_COMPONENTS[0])
        .iter()
        .zip(hex(NEW_ZMK_COMPONENTS[1]))
        .map(|(a, b)| a ^ b)
        .collect();
    let new_kcv = keyd::kcv_hex(keyd::aes_kcv(&new_zmk));
    let old_kcv = keyd::kcv_hex(keyd::aes_kcv(&hex(ZMK_HEX)));
    let [(a, a_password), (b, b_password)] = OFFICERS;
    let out = k
        .run(
            &[
                "zmk-rotate",
                "--zone",
                "z1",
                "--components",
                "2",
                "--approver",
                a,
                "--approver",
                b,
            ],
            &[
                a_password,
                b_password,
                NEW_ZMK_COMPONENTS[0],
                NEW_ZMK_COMPONENTS[1],
            ],
        )
        .unwrap();
    assert!(
        out.contains(&format!("zone z1 new ZMK KCV {new_kcv}")),
        "{out}"
    );
    let pending = k.run(&["zmk-devices", "--zone", "z1"], &[]).unwrap();
    assert_eq!(pending.lines().count(), 3, "{pending}");
    let zones = k.run(&["zones"], &[]).unwrap();
    assert!(
        zones.contains(&format!("{new_kcv} (rotating from {old_kcv})")),
        "{zones}"
    );

    // The running keyd delivers under the new ZMK within about a second; charges go on.
    let fetch = |d: &Device| m::KeySetExport {
        device_id: d.id.clone(),
        key_set_id: d.key_set_id.clone(),
    };
    let started = Instant::now();
    loop {
        let export = client.call(&fetch(&devices[0])).await.unwrap();
        if let Ok(keys) = device::unwrap_key_set(&export, &new_zmk) {
            assert_eq!(
                keys["msk"].key, devices[0].msk,
                "the same keys, under the new ZMK"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "never the new ZMK"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    use_device(&client, &devices[1], 1).await.unwrap();
    let pending = k.run(&["zmk-devices", "--zone", "z1"], &[]).unwrap();
    assert_eq!(pending.lines().count(), 2, "{pending}");

    // The officers end it before the last devices fetched: they get the new ZMK anyway.
    k.approve("zmk-retire", "z1").unwrap();
    k.run(&["zmk-retire", "--zone", "z1"], &[]).unwrap();
    let zones = k.run(&["zones"], &[]).unwrap();
    assert!(!zones.contains("rotating"), "{zones}");
    let export = client.call(&fetch(&devices[2])).await.unwrap();
    assert!(device::unwrap_key_set(&export, &new_zmk).is_ok());
    assert!(device::unwrap_key_set(&export, &hex(ZMK_HEX)).is_err());

    drop(client);
    k.stop();
    let log = std::fs::read_to_string(k.hsm().dir().join("keys.audit.log")).unwrap();
    assert!(
        log.contains(&format!(
            "\"op\":\"0x0344\",\"subject\":\"z1\",\"kcv\":\"{new_kcv}\""
        )),
        "{log}"
    );
    assert!(log.contains(&format!(
        "\"op\":\"0x0345\",\"subject\":\"z1\",\"kcv\":\"{old_kcv}\""
    )));
    let verified = k.run(&["audit-verify"], &[]).unwrap();
    assert!(verified.contains("chain intact"), "{verified}");
}

/// An officer's `lmk-rotate` and `lmk-rewrap` run as processes of their own: the new LMK
/// enters the token behind `keyd serve`'s back. Blocks resealed under it must open in `serve`
/// at once, not only after its next look at the store's state (set to a minute here): another
/// node serving during a rewrap depends on it. A one-key cache makes every export open its
/// blocks from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_under_an_lmk_added_by_another_process_open_at_once() {
    let mut k = KeydProcess::new(
        std::path::Path::new(env!("CARGO_BIN_EXE_keyd")),
        r#""data", "devices""#,
        "memory",
    )
    .unwrap();
    k.prepend_config("state_poll_ms = 60000\ncache_capacity = 1\n")
        .unwrap();
    k.start().unwrap();
    let client = Client::connect(k.socket()).await.unwrap();
    let devices = [make_device(&client, 7).await, make_device(&client, 8).await];
    k.lmk_rotate(LMK_COMPONENTS).unwrap();
    let (a, a_password) = OFFICERS[0];
    let out = k
        .run(&["lmk-rewrap", "--officer", a], &[a_password])
        .unwrap();
    assert!(out.contains("LMK KCV"), "{out}");
    // Exporting a key set opens its stored blocks, every one now under the new LMK.
    for device in &devices {
        let export = client
            .call(&m::KeySetExport {
                device_id: device.id.clone(),
                key_set_id: device.key_set_id.clone(),
            })
            .await
            .unwrap();
        let keys = device::unwrap_key_set(&export, &hex(ZMK_HEX)).unwrap();
        assert_eq!(keys["msk"].key, device.msk);
        assert_eq!(keys["mac"].key, device.mac);
    }
}
