//! keyd as a real process on a real SoftHSM token, driven over its real socket.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use keyd_proto::message as m;
use keyd_proto::{Client, ClientError, Opcode, Secret, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use e2e::{KeydProcess, OFFICERS, ZMK_HEX, device, hex};

/// Both harness officers approving on the command line.
const APPROVERS: [&str; 4] = ["--approver", "alice", "--approver", "bob"];

/// Their passwords, in the order the approvals ask for them.
fn passwords() -> String {
    format!("{}\n{}\n", OFFICERS[0].1, OFFICERS[1].1)
}

fn keyd(groups: &str, placement: &str) -> KeydProcess {
    KeydProcess::new(
        std::path::Path::new(env!("CARGO_BIN_EXE_keyd")),
        groups,
        placement,
    )
    .unwrap()
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    device::hmac(key, msg).unwrap()
}

/// The device side: unwrap the delivered blocks from the ZMK down; every KCV must match.
fn unwrap_set(export: &m::KeySetExportResponse) -> std::collections::HashMap<String, Vec<u8>> {
    let keys = device::unwrap_key_set(export, &hex(ZMK_HEX)).unwrap();
    keys.into_iter()
        .map(|(kind, k)| {
            assert_eq!(k.kcv, k.sent_kcv, "{kind}");
            (kind, k.key)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_key_lifecycle_over_the_socket_on_softhsm_memory_placement() {
    lifecycle("memory", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_key_lifecycle_over_the_socket_on_softhsm_token_placement() {
    lifecycle("token", None).await;
}

/// The 200 pipelined charges below are dealt over two PKCS#11 threads, which answer out of
/// order and record into one audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_key_lifecycle_on_token_placement_with_two_pkcs11_threads() {
    lifecycle("token", Some(2)).await;
}

/// How many of keyd's threads are PKCS#11 data workers (`keyd-hsm-N`).
fn pkcs11_threads(keyd: &KeydProcess) -> usize {
    let tasks = format!("/proc/{}/task", keyd.pid().unwrap());
    std::fs::read_dir(tasks)
        .unwrap()
        .filter(|task| {
            let comm = std::fs::read_to_string(task.as_ref().unwrap().path().join("comm"));
            comm.is_ok_and(|c| c.starts_with("keyd-hsm-"))
        })
        .count()
}

async fn lifecycle(placement: &str, token_threads: Option<usize>) {
    let mut keyd = keyd(r#""data", "devices""#, placement);
    if let Some(threads) = token_threads {
        keyd.add_hsm_config(&format!("token_threads = {threads}"))
            .unwrap();
    }
    keyd.start().unwrap();
    // The PKCS#11 data threads keyd runs: none with keys in memory, one by default.
    let expected = match placement {
        "token" => token_threads.unwrap_or(1),
        _ => 0,
    };
    // (A thread names itself once running: give it a moment.)
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pkcs11_threads(&keyd) != expected && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(pkcs11_threads(&keyd), expected);
    let mode = std::fs::metadata(keyd.socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    let client = Client::connect(keyd.socket()).await.unwrap();

    let identity = client
        .call(&m::DeviceCreate {
            device_id: "POS-8F3A2C91".into(),
            zone: "z1".into(),
        })
        .await
        .unwrap();
    assert_eq!(identity.secret.expose().len(), 32);
    assert_eq!(
        identity.kcv,
        tr31::kcv::hmac_sha256(identity.secret.expose())
    );
    let dup = client
        .call(&m::DeviceCreate {
            device_id: "POS-8F3A2C91".into(),
            zone: "z1".into(),
        })
        .await;
    assert!(matches!(dup, Err(ClientError::Status(Status::CONFLICT))));
    let no_zone = client
        .call(&m::DeviceCreate {
            device_id: "POS-00000001".into(),
            zone: "z9".into(),
        })
        .await;
    assert!(matches!(
        no_zone,
        Err(ClientError::Status(Status::NOT_FOUND))
    ));

    let msg = b"POS-8F3A2C91\nidk\n1700000000\nnonce";
    let attest = m::AttestVerify {
        device_id: "POS-8F3A2C91".into(),
        key_id: identity.key_id.clone(),
        message: msg.to_vec(),
        signature: hmac(identity.secret.expose(), msg),
    };
    client.call(&attest).await.unwrap();
    let forged = m::AttestVerify {
        signature: [9; 32],
        ..attest
    };
    assert!(matches!(
        client.call(&forged).await,
        Err(ClientError::Status(Status::AUTH_FAILED))
    ));

    let set = client
        .call(&m::KeySetCreate {
            device_id: "POS-8F3A2C91".into(),
        })
        .await
        .unwrap();
    let export = client
        .call(&m::KeySetExport {
            device_id: "POS-8F3A2C91".into(),
            key_set_id: set.key_set_id.clone(),
        })
        .await
        .unwrap();
    let keys = unwrap_set(&export);
    let id = |kind: &str| {
        export
            .keys
            .iter()
            .find(|k| k.kind == kind)
            .unwrap()
            .key_id
            .clone()
    };

    // Many charges in flight on one connection, answered by request id.
    let mut calls = Vec::new();
    for i in 0..200u32 {
        let client = client.clone();
        let plaintext = format!(r#"{{"n":{i}}}"#);
        let iv = [u8::try_from(i % 256).unwrap(); 16];
        let ciphertext = device::encrypt(&keys["msk"], &iv, plaintext.as_bytes()).unwrap();
        let message = format!(
            "TID-000001\n{}\n1700000000\nnonce{i:08}\nPOST\n/pos/charge\n",
            id("mac")
        )
        .into_bytes();
        let req = m::ChargeOpen {
            mac_key_id: id("mac"),
            signature: hmac(&keys["mac"], &message),
            message,
            msk_key_id: id("msk"),
            iv,
            ciphertext,
        };
        calls.push(tokio::spawn(
            async move { (plaintext, client.call(&req).await) },
        ));
    }
    for call in calls {
        let (expected, got) = call.await.unwrap();
        assert_eq!(got.unwrap().plaintext.expose(), expected.as_bytes());
    }

    // Not allowed: admin operations for a peer with data and devices only.
    let refused = client
        .call(&m::ZmkImport {
            zone: "z2".into(),
            key: Secret::new(&[1; 32]),
        })
        .await;
    assert!(matches!(
        refused,
        Err(ClientError::Status(Status::FORBIDDEN))
    ));
    // Unknown opcode; malformed body.
    assert_eq!(
        client.call_raw(Opcode(0x7777), b"").await.unwrap().0,
        Status::UNSUPPORTED
    );
    assert_eq!(
        client
            .call_raw(<m::ChargeOpen as keyd_proto::Operation>::OPCODE, b"\x00")
            .await
            .unwrap()
            .0,
        Status::BAD_REQUEST
    );

    // A broken stream closes only its own connection.
    let mut raw = tokio::net::UnixStream::connect(keyd.socket())
        .await
        .unwrap();
    raw.write_all(b"XX garbage that is not a frame")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the broken connection is closed"
    );
    // An oversized frame is refused from its header alone.
    let mut raw = tokio::net::UnixStream::connect(keyd.socket())
        .await
        .unwrap();
    let mut header = b"KD\x01\x00\x02\x05\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01".to_vec();
    header.extend_from_slice(&u32::MAX.to_be_bytes());
    raw.write_all(&header).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink)).await;
    assert!(matches!(closed, Ok(Ok(0))));
    client.call(&m::Ping {}).await.unwrap();

    // Restart: the token and the store keep everything; the delivered keys still work.
    drop(client);
    keyd.stop();
    keyd.start().unwrap();
    let client = Client::connect(keyd.socket()).await.unwrap();
    let sealed = client
        .call(&m::EnvelopeSeal {
            msk_key_id: id("msk"),
            plaintext: Secret::new(b"after restart"),
        })
        .await
        .unwrap();
    let opened = client
        .call(&m::EnvelopeOpen {
            msk_key_id: id("msk"),
            iv: sealed.iv,
            ciphertext: sealed.ciphertext,
        })
        .await
        .unwrap();
    assert_eq!(opened.plaintext.expose(), b"after restart");
    let again = client
        .call(&m::KeySetExport {
            device_id: "POS-8F3A2C91".into(),
            key_set_id: set.key_set_id,
        })
        .await
        .unwrap();
    assert_eq!(unwrap_set(&again)["mac"], keys["mac"]);
    drop(client);
    keyd.stop();

    // Every charge has its record, once, in an intact chain.
    let out = keyd.command(&["audit-verify"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("chain intact"),
        "{stdout}"
    );
    let log = std::fs::read_to_string(keyd.hsm().dir().join("keys.audit.log")).unwrap();
    let charges = log
        .lines()
        .filter(|l| l.contains("\"op\":\"0x0205\"") && l.contains("\"status\":\"ok\""))
        .count();
    assert_eq!(charges, 200, "{log}");
}

#[test]
fn the_pin_file_must_be_private_and_the_token_must_exist() {
    let keyd = keyd(r#""data""#, "memory");
    let pin = keyd.hsm().dir().join("user.pin");
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = keyd.command(&["serve"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("readable by group or others"), "{err}");
    assert!(
        !err.contains(keyd.hsm().user_pin()),
        "the PIN never appears in output"
    );
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = keyd
        .run(
            &["init", "--officer", "carol", "--officer", "dave"],
            &["a long passphrase one", "a long passphrase two"],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("exists already"),
        "a second init is refused: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_import_export_and_translate_on_softhsm() {
    let mut keyd = keyd(r#""data", "devices", "admin""#, "memory");
    keyd.start().unwrap();
    let client = Client::connect(keyd.socket()).await.unwrap();
    let z1 = tr31::Kbpk::new(&hex(ZMK_HEX)).unwrap();
    let z2_key = [0x6B; 32];
    let form = m::ZmkImport {
        zone: "z2".into(),
        key: Secret::new(&z2_key),
    };
    // A whole clear ZMK over the socket defeats split knowledge: refused, approvals or not.
    keyd.approve("zmk-form", "z2").unwrap();
    assert!(matches!(
        client.call(&form).await,
        Err(ClientError::Status(Status::POLICY))
    ));
    // Officers form it from components while keyd serves; keyd finds the new zone by itself.
    let c1 = [0x11u8; 32];
    let c2: Vec<u8> = z2_key.iter().zip(c1).map(|(a, b)| a ^ b).collect();
    let hex_upper = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
    let mut args = vec!["zmk-import", "--zone", "z2"];
    args.extend(APPROVERS);
    let out = keyd
        .run(
            &args,
            &[
                OFFICERS[0].1,
                OFFICERS[1].1,
                &hex_upper(&c1),
                &hex_upper(&c2),
            ],
        )
        .unwrap();
    let kcv = tr31::kcv::cmac_aes(&z2_key).unwrap();
    assert!(
        out.contains(&format!("zone z2 ZMK KCV {}", hex_upper(&kcv[..3]))),
        "{out}"
    );
    let device_in_z2 = m::DeviceCreate {
        device_id: "POS-000000E2".into(),
        zone: "z2".into(),
    };
    let started = std::time::Instant::now();
    while client.call(&device_in_z2).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "serve never saw zone z2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let header = tr31::Header::parse("D0000B0AX01E0000", tr31::Profile::Strict).unwrap();
    let bdk = tr31::Key::new(&[0x42; 32]).unwrap();
    let block = tr31::seal(
        &z1,
        &header,
        &bdk,
        &tr31::SealOptions::default(),
        tr31::Padding::Random(&mut tr31::OsRandom),
    )
    .unwrap();

    let translate = m::Tr31Translate {
        from_zone: "z1".into(),
        to_zone: "z2".into(),
        key_block: block.clone(),
    };
    assert!(matches!(
        client.call(&translate).await,
        Err(ClientError::Status(Status::POLICY))
    ));
    // Approvals name the key (by its KCV) and the destination: approving another key, or
    // another zone, allows nothing here.
    let bdk_kcv = hex_upper(&tr31::kcv::cmac_aes(&[0x42; 32]).unwrap()[..3]);
    keyd.approve("export", "000000@z2").unwrap();
    keyd.approve("export", &format!("{bdk_kcv}@z1")).unwrap();
    assert!(matches!(
        client.call(&translate).await,
        Err(ClientError::Status(Status::POLICY))
    ));
    keyd.approve("export", &format!("{bdk_kcv}@z2")).unwrap();
    let moved = client.call(&translate).await.unwrap();
    assert!(
        matches!(
            client.call(&translate).await,
            Err(ClientError::Status(Status::POLICY))
        ),
        "one pair of approvals allows one export"
    );
    let z2 = tr31::Kbpk::new(&z2_key).unwrap();
    assert!(
        tr31::open(&moved.key_block, &z2, tr31::Profile::Strict)
            .unwrap()
            .key
            .ct_eq(&bdk)
    );

    let imported = client
        .call(&m::Tr31Import {
            zone: "z1".into(),
            key_block: block.clone(),
            label: "acquirer BDK".into(),
        })
        .await
        .unwrap();
    // A block that is junk, empty or breaks the rules is the caller's mistake (BAD_REQUEST);
    // one whose MAC fails is AUTH_FAILED; neither is keyd's INTERNAL.
    let import = |key_block: &str| m::Tr31Import {
        zone: "z1".into(),
        key_block: key_block.into(),
        label: "junk".into(),
    };
    fn status<T>(r: Result<T, ClientError>) -> Status {
        match r {
            Err(ClientError::Status(s)) => s,
            Err(e) => panic!("expected a refusal, got {e}"),
            Ok(_) => panic!("expected a refusal, got an answer"),
        }
    }
    for junk in ["", "junk", "D0112P0AE00E0000", &block[..block.len() - 2]] {
        assert_eq!(
            status(client.call(&import(junk)).await),
            Status::BAD_REQUEST,
            "{junk:?}"
        );
        let translate = m::Tr31Translate {
            from_zone: "z1".into(),
            to_zone: "z2".into(),
            key_block: junk.into(),
        };
        assert_eq!(status(client.call(&translate).await), Status::BAD_REQUEST);
    }
    let last = block.chars().last().unwrap();
    let flipped = format!(
        "{}{}",
        &block[..block.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    assert_eq!(
        status(client.call(&import(&flipped)).await),
        Status::AUTH_FAILED
    );

    keyd.approve("export", &format!("{}@z2", imported.key_id))
        .unwrap();
    let out = client
        .call(&m::Tr31Export {
            key_id: imported.key_id,
            zone: "z2".into(),
        })
        .await
        .unwrap();
    let back = tr31::open(&out.key_block, &z2, tr31::Profile::Strict).unwrap();
    assert!(back.key.ct_eq(&bdk));
    assert_eq!(back.header.key_version.as_str(), "01");

    let unknown = client
        .call(&m::Tr31Export {
            key_id: "imp-unknown".into(),
            zone: "z2".into(),
        })
        .await;
    assert!(matches!(
        unknown,
        Err(ClientError::Status(Status::NOT_FOUND))
    ));
}

#[test]
fn a_zmk_is_formed_from_components_and_bad_components_are_refused() {
    let keyd = keyd(r#""data""#, "memory");
    let run = |zone: &str, n: &str, input: &str| {
        let mut args = vec!["zmk-import", "--zone", zone, "--components", n];
        args.extend(APPROVERS);
        let input = format!("{}{input}", passwords());
        let mut child = keyd
            .command(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Refused commands may exit before reading their input; the exit status is the answer.
        match std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other.unwrap(),
        }
        child.wait_with_output().unwrap()
    };
    let a = "11".repeat(32);
    let b = "22".repeat(32);
    // Without approvals, and with one clear component, nothing is asked of the custodians.
    for (args, why) in [
        (vec!["--components", "2"], "approved so far by: no one"),
        (
            vec![
                "--components",
                "2",
                "--approver",
                "alice",
                "--approver",
                "alice",
            ],
            "distinct officers",
        ),
        (vec!["--components", "1"], "2 or 3 components"),
    ] {
        let mut all = vec!["zmk-import", "--zone", "z3"];
        all.extend(args);
        let err = keyd
            .run(&all, &[OFFICERS[0].1, &a, &b])
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{why}: {err}");
    }
    let err = keyd
        .run(
            &[
                "zmk-import",
                "--zone",
                "z3",
                "--approver",
                "alice",
                "--approver",
                "bob",
            ],
            &[OFFICERS[0].1, "not bob's password", &a, &b],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("officer bob: authentication failed"), "{err}");
    let out = run("z3", "2", &format!("{a}\n{b}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let kcv = |k: &[u8]| {
        let v = tr31::kcv::cmac_aes(k).unwrap();
        format!("{:02X}{:02X}{:02X}", v[0], v[1], v[2])
    };
    assert!(
        printed.contains(&format!("component 1 KCV {}", kcv(&[0x11; 32]))),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("component 2 KCV {}", kcv(&[0x22; 32]))),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("zone z3 ZMK KCV {}", kcv(&[0x33; 32]))),
        "{printed}"
    );
    for (input, why) in [
        (format!("{a}\n{a}\n"), "repeats"),
        (format!("{a}\n{}\n", "00".repeat(32)), "all zeros"),
        (format!("{a}\n{}\n", "22".repeat(31)), "64 hex digits"),
    ] {
        let out = run("z4", "2", &input);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{why}: {err}");
        assert!(
            !err.contains(&a) && !String::from_utf8_lossy(&out.stdout).contains(&a),
            "components never echo"
        );
    }
}

#[test]
fn a_failing_self_test_stops_keyd_before_it_serves() {
    let k = keyd(r#""data""#, "memory");
    for name in keyd::selftest::NAMES {
        let out = k
            .command(&["serve"])
            .env("KEYD_SELF_TEST_FAIL", name)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: keyd served");
        assert!(
            stderr.contains(&format!("self-test {name} failed")),
            "{name}: {stderr}"
        );
        assert!(!k.socket().exists(), "{name}: a socket was bound");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_is_on_a_hash_chain_that_catches_an_edit() {
    let mut keyd = keyd(r#""data", "devices""#, "memory");
    keyd.start().unwrap();
    let client = Client::connect(keyd.socket()).await.unwrap();
    let identity = client
        .call(&m::DeviceCreate {
            device_id: "POS-0000A0D1".into(),
            zone: "z1".into(),
        })
        .await
        .unwrap();
    let set = client
        .call(&m::KeySetCreate {
            device_id: "POS-0000A0D1".into(),
        })
        .await
        .unwrap();
    let mac_id = set
        .keys
        .iter()
        .find(|k| k.kind == "mac")
        .unwrap()
        .key_id
        .clone();
    let refused = client
        .call(&m::MacVerifyBatch {
            items: vec![m::MacItem {
                key_id: mac_id,
                message: b"x".to_vec(),
                signature: [0; 32],
            }],
        })
        .await
        .unwrap();
    assert_eq!(refused.valid, [false]);
    keyd.stop();

    let log_path = keyd.hsm().dir().join("keys.audit.log");
    let verify = |k: &KeydProcess| k.command(&["audit-verify"]).output().unwrap();
    let out = verify(&keyd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("chain intact"), "{stdout}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    // The ceremony (init, ZMK import with its KCV), the device, its key set, the verify.
    assert!(log.contains("\"op\":\"0x0300\""), "{log}");
    assert!(
        log.contains("\"op\":\"0x0301\",\"subject\":\"z1\",\"kcv\":\"8B9802\""),
        "{log}"
    );
    assert!(log.contains("\"subject\":\"POS-0000A0D1\""), "{log}");
    assert!(log.contains("\"op\":\"0x0202\""), "{log}");
    // Never key material: not the ZMK, not the identity secret (in any common encoding).
    let secret = identity.secret.expose();
    let secret_hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!log.to_lowercase().contains(&ZMK_HEX.to_lowercase()));
    assert!(!log.contains(&secret_hex) && !log.to_uppercase().contains(&secret_hex.to_uppercase()));
    assert!(!log.as_bytes().windows(32).any(|w| w == secret));

    // Someone edits one record: verify names it, and keyd will not start on that log.
    let mut lines: Vec<String> = log.lines().map(str::to_owned).collect();
    let target = lines.iter().position(|l| l.contains("0x0202")).unwrap();
    lines[target] = lines[target].replace("AUTH_FAILED", "OK");
    lines[target] = lines[target].replace("\"micros\":", "\"micros\":1");
    std::fs::write(&log_path, lines.join("\n") + "\n").unwrap();
    let out = verify(&keyd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("record {} is broken", target + 1)),
        "{stderr}"
    );
    let serve = keyd.command(&["serve"]).output().unwrap();
    assert!(!serve.status.success());
    assert!(String::from_utf8_lossy(&serve.stderr).contains("is broken"));
}

#[test]
fn keyd_refuses_a_key_store_everyone_can_read() {
    let k = keyd(r#""data""#, "memory");
    let store = k.hsm().dir().join("keys.db");
    let mode = std::fs::metadata(&store).unwrap().permissions().mode();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = k.command(&["serve"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("accessible to every user"));
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_generated_zmk_comes_out_as_custodian_forms_that_combine_to_it() {
    let k = keyd(r#""data""#, "memory");
    let mut args = vec!["zmk-generate", "--zone", "z2", "--components", "3"];
    args.extend(APPROVERS);
    let text = k.run(&args, &[OFFICERS[0].1, OFFICERS[1].1]).unwrap();
    assert_eq!(text.matches("ZMK COMPONENT FORM").count(), 3, "{text}");
    for n in 1..=3 {
        assert!(
            text.contains(&format!("Component:      {n} of 3")),
            "{text}"
        );
    }
    assert_eq!(text.matches("Custodian:").count(), 3);
    assert_eq!(text.matches("Witness:").count(), 3);
    // Read the values back the way custodians would type them, and combine them.
    let lines: Vec<&str> = text.lines().collect();
    let mut zmk = [0u8; 32];
    let mut component_kcvs = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(first) = line.strip_prefix("Value:") {
            let value: String = format!("{}{}", first, lines[i + 1])
                .split_whitespace()
                .collect();
            let part = hex(&value);
            assert_eq!(part.len(), 32);
            let kcv = tr31::kcv::cmac_aes(&part).unwrap();
            let printed = lines[i + 2].strip_prefix("Component KCV:  ").unwrap();
            assert_eq!(printed, device_hex(&kcv[..3]));
            component_kcvs.push(printed.to_owned());
            for (z, p) in zmk.iter_mut().zip(&part) {
                *z ^= p;
            }
        }
    }
    assert_eq!(component_kcvs.len(), 3);
    let kcv = device_hex(&tr31::kcv::cmac_aes(&zmk).unwrap()[..3]);
    assert!(text.contains(&format!("ZMK KCV:        {kcv}")), "{text}");
    assert!(text.contains(&format!("zone z2 ZMK KCV {kcv}")), "{text}");
    // The audit log has the ceremony, with the KCV and without the components.
    let log = std::fs::read_to_string(k.hsm().dir().join("keys.audit.log")).unwrap();
    assert!(
        log.contains(&format!(
            "alice+bob\",\"op\":\"0x0310\",\"subject\":\"z2\",\"kcv\":\"{kcv}\""
        )),
        "the ceremony names both officers: {log}"
    );
    for line in lines.iter().filter(|l| l.starts_with("Value:")) {
        let value = line.trim_start_matches("Value:").trim();
        assert!(!log.contains(value), "a component reached the log");
    }
    // A zone that has a ZMK is not overwritten.
    let mut args = vec!["zmk-generate", "--zone", "z2"];
    args.extend(APPROVERS);
    let err = k
        .run(&args, &[OFFICERS[0].1, OFFICERS[1].1])
        .unwrap_err()
        .to_string();
    assert!(err.contains("has a ZMK"), "{err}");
}

fn device_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_component_or_pin_reaches_any_output_at_the_most_verbose_level() {
    let k = keyd(r#""data", "devices", "admin""#, "memory");
    let pin = k.hsm().user_pin().to_owned();
    let mut outputs = String::new();
    // A ceremony with known components.
    let c1 = "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF";
    let c2 = "F0E1D2C3B4A5968778695A4B3C2D1E0FF0E1D2C3B4A5968778695A4B3C2D1E0F";
    let mut import = k
        .command(&[
            "--verbose",
            "zmk-import",
            "--zone",
            "z9",
            "--components",
            "2",
            "--approver",
            "alice",
            "--approver",
            "bob",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = import.stdin.take().unwrap();
        stdin
            .write_all(format!("{}{c1}\n{c2}\n", passwords()).as_bytes())
            .unwrap();
    }
    let out = import.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    outputs.push_str(&String::from_utf8_lossy(&out.stdout));
    outputs.push_str(&String::from_utf8_lossy(&out.stderr));
    // A verbose keyd serving a device, its keys and a refused charge.
    let log_file = k.hsm().dir().join("verbose.log");
    let mut serve = k
        .command(&["--verbose", "serve"])
        .stderr(std::fs::File::create(&log_file).unwrap())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The socket file exists from `bind`, a moment before `listen`: wait for a connection.
    let mut connected = None;
    for _ in 0..500 {
        if let Ok(c) = Client::connect(k.socket()).await {
            connected = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = connected.expect("keyd serves within 10 s");
    let identity = client
        .call(&m::DeviceCreate {
            device_id: "POS-0000C0DE".into(),
            zone: "z9".into(),
        })
        .await
        .unwrap();
    client
        .call(&m::KeySetCreate {
            device_id: "POS-0000C0DE".into(),
        })
        .await
        .unwrap();
    let bad = client
        .call(&m::ZmkImport {
            zone: "z9".into(),
            key: Secret::new(&hex(c1)),
        })
        .await;
    assert!(bad.is_err(), "a zone's ZMK is not replaced");
    drop(client);
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(serve.id().to_string())
        .status();
    let _ = serve.wait();
    outputs.push_str(&std::fs::read_to_string(&log_file).unwrap());
    outputs.push_str(&std::fs::read_to_string(k.hsm().dir().join("keys.audit.log")).unwrap());
    assert!(
        outputs.contains("DEBUG") || outputs.contains("INFO"),
        "{outputs}"
    );
    // Nothing secret, in any case or encoding we know of.
    let zmk: Vec<u8> = hex(c1).iter().zip(hex(c2)).map(|(a, b)| a ^ b).collect();
    let zmk_hex: String = zmk.iter().map(|b| format!("{b:02X}")).collect();
    let secret_hex: String = identity
        .secret
        .expose()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    let upper = outputs.to_uppercase();
    for (what, needle) in [
        ("component 1", c1.to_owned()),
        ("component 2", c2.to_owned()),
        ("ZMK", zmk_hex),
        ("identity secret", secret_hex),
        ("PIN", pin.to_uppercase()),
        ("alice's password", OFFICERS[0].1.to_uppercase()),
        ("bob's password", OFFICERS[1].1.to_uppercase()),
    ] {
        assert!(!upper.contains(&needle), "{what} appeared in keyd's output");
        assert!(
            !upper.contains(&needle[..16]),
            "part of the {what} appeared in keyd's output"
        );
    }
}

/// A partner's key as it would arrive: a version D block under zone z1's ZMK.
fn partner_block(header: &str, key: &[u8; 16]) -> String {
    let z1 = tr31::Kbpk::new(&hex(ZMK_HEX)).unwrap();
    tr31::seal(
        &z1,
        &tr31::Header::parse(header, tr31::Profile::Strict).unwrap(),
        &tr31::Key::new(key).unwrap(),
        &tr31::SealOptions::default(),
        tr31::Padding::Random(&mut tr31::OsRandom),
    )
    .unwrap()
}

async fn payment_hsm_operations(placement: &str) {
    let mut keyd = keyd(r#""data", "devices", "admin""#, placement);
    keyd.start().unwrap();
    let client = Client::connect(keyd.socket()).await.unwrap();
    client
        .call(&m::DeviceCreate {
            device_id: "POS-0000F1F1".into(),
            zone: "z1".into(),
        })
        .await
        .unwrap();
    let set = client
        .call(&m::KeySetCreate {
            device_id: "POS-0000F1F1".into(),
        })
        .await
        .unwrap();
    let export = client
        .call(&m::KeySetExport {
            device_id: "POS-0000F1F1".into(),
            key_set_id: set.key_set_id,
        })
        .await
        .unwrap();
    let tpk_id = export
        .keys
        .iter()
        .find(|k| k.kind == "tpk")
        .unwrap()
        .key_id
        .clone();
    let tpk = paycrypto::AesKey::new(&unwrap_set(&export)["tpk"]).unwrap();

    // The acquirer's keys arrive as TR-31 blocks and are imported with their headers.
    let (zpk, zak, pvk) = (
        *b"0123456789ABCDEF",
        *b"FEDCBA9876543210",
        *b"13579BDF02468ACE",
    );
    let import = |header: &'static str, key: [u8; 16], label: &'static str| {
        let client = &client;
        async move {
            client
                .call(&m::Tr31Import {
                    zone: "z1".into(),
                    key_block: partner_block(header, &key),
                    label: label.into(),
                })
                .await
                .unwrap()
                .key_id
        }
    };
    // The simulator's ZPK both enciphers (translation to it) and deciphers (PVV checks): `B`.
    let zpk_id = import("D0000P0TB00E0000", zpk, "acquirer ZPK").await;
    let zpk_encrypt_only = import("D0000P0TE00E0000", zpk, "encrypt-only ZPK").await;
    let zak_id = import("D0000M3TC00E0000", zak, "acquirer ZAK").await;
    let pvk_id = import("D0000V2TC00E0000", pvk, "issuer PVK").await;
    let zpk = paycrypto::TdesKey::new(&zpk).unwrap();

    // A terminal's format 4 block becomes the acquirer's format 0 block for the same PIN.
    let pan_text = "4761739001010119";
    let pan = paycrypto::Pan::new(pan_text).unwrap();
    let pin = paycrypto::Pin::new("1234").unwrap();
    let from_terminal = paycrypto::encipher_format4(&tpk, &pin, &pan, &[0x5A; 8]);
    let translate = |block: Vec<u8>, pan: &str, to: &str| m::PinTranslate {
        from_key_id: tpk_id.clone(),
        to_key_id: to.to_owned(),
        pan: Secret::new(pan.as_bytes()),
        pin_block: block,
    };
    let out = client
        .call(&translate(from_terminal.to_vec(), pan_text, &zpk_id))
        .await
        .unwrap();
    let block0: [u8; 8] = out.pin_block.as_slice().try_into().unwrap();
    assert!(paycrypto::decipher_format0(&zpk, &block0, &pan).unwrap() == pin);
    // A block bound to another card, a damaged block, a MAC key as PIN key: one refusal.
    for (block, pan, to) in [
        (from_terminal.to_vec(), "4761739001010127", zpk_id.as_str()),
        (vec![0u8; 16], pan_text, zpk_id.as_str()),
        (from_terminal[..8].to_vec(), pan_text, zpk_id.as_str()),
        (from_terminal.to_vec(), pan_text, zak_id.as_str()),
        (from_terminal.to_vec(), pan_text, "imp-unknown"),
    ] {
        assert!(
            matches!(
                client.call(&translate(block, pan, to)).await,
                Err(ClientError::Status(Status::AUTH_FAILED))
            ),
            "{to}"
        );
    }

    // The card decrypted and its PIN translated in one call, bound to the card's own PAN.
    let tdk_id = export
        .keys
        .iter()
        .find(|k| k.kind == "tdk")
        .unwrap()
        .key_id
        .clone();
    let card = format!(r#"{{"pan":"{pan_text}","exp_month":12,"exp_year":2030}}"#);
    let iv = [7u8; 16];
    let ciphertext = device::encrypt(&unwrap_set(&export)["tdk"], &iv, card.as_bytes()).unwrap();
    let open = |pin_block: Vec<u8>, to: &str| m::CardDecryptPin {
        tdk_key_id: tdk_id.clone(),
        iv,
        ciphertext: ciphertext.clone(),
        tpk_key_id: tpk_id.clone(),
        zpk_key_id: to.to_owned(),
        pin_block,
    };
    let both = client
        .call(&open(from_terminal.to_vec(), &zpk_id))
        .await
        .unwrap();
    assert_eq!(both.plaintext.expose(), card.as_bytes());
    let block: [u8; 8] = both.pin_block.as_slice().try_into().unwrap();
    assert!(paycrypto::decipher_format0(&zpk, &block, &pan).unwrap() == pin);
    let alone = client
        .call(&m::CardDecrypt {
            tdk_key_id: tdk_id.clone(),
            iv,
            ciphertext: ciphertext.clone(),
        })
        .await
        .unwrap();
    assert_eq!(both.pan_fingerprint, alone.pan_fingerprint);
    // A block for another card, a damaged one, a MAC key or an unknown key as PIN key: the
    // card still opens and the PIN block comes back empty, whatever the reason.
    let other_card = paycrypto::Pan::new("4761739001010127").unwrap();
    let for_another = paycrypto::encipher_format4(&tpk, &pin, &other_card, &[0x5A; 8]);
    for (block, to) in [
        (for_another.to_vec(), zpk_id.as_str()),
        (vec![0u8; 16], zpk_id.as_str()),
        (from_terminal[..8].to_vec(), zpk_id.as_str()),
        (from_terminal.to_vec(), zak_id.as_str()),
        (from_terminal.to_vec(), "imp-unknown"),
    ] {
        let answer = client.call(&open(block, to)).await.unwrap();
        assert!(answer.pin_block.is_empty(), "{to}");
        assert_eq!(answer.plaintext.expose(), card.as_bytes());
    }
    // Card data that does not open is refused as `CardDecrypt` refuses it.
    let mut not_a_tdk = open(from_terminal.to_vec(), &zpk_id);
    not_a_tdk.tdk_key_id = tpk_id.clone();
    assert!(matches!(
        client.call(&not_a_tdk).await,
        Err(ClientError::Status(Status::AUTH_FAILED))
    ));

    // The retail MAC under the ZAK, as the acquirer computes it; a ZPK does not MAC.
    let message = b"0200F23A40010AE0800000000000000000001".to_vec();
    let mac = client
        .call(&m::RetailMac {
            key_id: zak_id.clone(),
            message: message.clone(),
        })
        .await
        .unwrap()
        .mac;
    let zak = paycrypto::TdesKey::new(&zak).unwrap();
    assert_eq!(mac, paycrypto::retail_mac(&zak, &message));
    let verify = |mac: [u8; 8]| m::RetailMacVerify {
        key_id: zak_id.clone(),
        message: message.clone(),
        mac,
    };
    client.call(&verify(mac)).await.unwrap();
    let mut bad = mac;
    bad[7] ^= 1;
    assert!(matches!(
        client.call(&verify(bad)).await,
        Err(ClientError::Status(Status::AUTH_FAILED))
    ));
    assert!(matches!(
        client
            .call(&m::RetailMac {
                key_id: zpk_id.clone(),
                message: message.clone()
            })
            .await,
        Err(ClientError::Status(Status::AUTH_FAILED))
    ));

    // AES-CMAC under a zone's AES MAC key (`M6`, algorithm `A`): keyd's answer is the
    // published one (NIST SP 800-38B appendix D.1, example 2), verified whole and truncated.
    let cmac_key: [u8; 16] = hex("2B7E151628AED2A6ABF7158809CF4F3C").try_into().unwrap();
    let cmac_id = import("D0000M6AC00E0000", cmac_key, "zone CMAC key").await;
    let cmac_check_only = import("D0000M6AV00E0000", cmac_key, "verify-only CMAC key").await;
    let sp_message = hex("6BC1BEE22E409F96E93D7E117393172A");
    let cmac = client
        .call(&m::AesCmac {
            key_id: cmac_id.clone(),
            message: sp_message.clone(),
        })
        .await
        .unwrap()
        .mac;
    assert_eq!(cmac.to_vec(), hex("070A16B46B4D4144F79BDD9DD04A287C"));
    let cmac_verify = |key_id: &str, mac: &[u8]| m::AesCmacVerify {
        key_id: key_id.to_owned(),
        message: sp_message.clone(),
        mac: mac.to_vec(),
    };
    client.call(&cmac_verify(&cmac_id, &cmac)).await.unwrap();
    client
        .call(&cmac_verify(&cmac_check_only, &cmac[..8]))
        .await
        .unwrap();
    let mut bad_cmac = cmac;
    bad_cmac[0] ^= 1;
    // A wrong or too short MAC, a key that only verifies asked to generate, a TDES ZAK asked
    // for a CMAC: the one refusal.
    for refused in [
        client
            .call(&cmac_verify(&cmac_id, &bad_cmac))
            .await
            .map(drop),
        client
            .call(&cmac_verify(&cmac_id, &cmac[..7]))
            .await
            .map(drop),
        client.call(&cmac_verify(&zak_id, &cmac)).await.map(drop),
        client
            .call(&m::AesCmac {
                key_id: cmac_check_only.clone(),
                message: sp_message.clone(),
            })
            .await
            .map(drop),
        client
            .call(&m::AesCmac {
                key_id: zak_id.clone(),
                message: sp_message.clone(),
            })
            .await
            .map(drop),
    ] {
        assert!(matches!(
            refused,
            Err(ClientError::Status(Status::AUTH_FAILED))
        ));
    }
    // Zone MACs verified in a batch, each by what its key is: retail MACs under the ZAK and
    // CMACs under the AES key side by side; every failure is that item's `false`.
    let item = |key_id: &str, message: &[u8], mac: &[u8]| m::ZoneMacItem {
        key_id: key_id.to_owned(),
        message: message.to_vec(),
        mac: mac.to_vec(),
    };
    let batch = client
        .call(&m::ZoneMacVerifyBatch {
            items: vec![
                item(&zak_id, &message, &mac),
                item(&cmac_id, &sp_message, &cmac),
                item(&cmac_check_only, &sp_message, &cmac[..8]),
                item(&cmac_id, &sp_message, &bad_cmac),
                item(&zak_id, &message, &bad),
                item(&zak_id, &sp_message, &cmac[..8]),
                item(&zpk_id, &message, &mac),
                item("imp-unknown", &message, &mac),
            ],
        })
        .await
        .unwrap();
    assert_eq!(
        batch.valid,
        [true, true, true, false, false, false, false, false]
    );

    // The issuer's PVV of PIN 1234, and the PIN verified against it; PIN 9999 is not.
    let pvv = client
        .call(&m::PvvGenerate {
            pvk_key_id: pvk_id.clone(),
            zpk_key_id: zpk_id.clone(),
            pan: Secret::new(pan_text.as_bytes()),
            pin_block: block0,
            pvki: 1,
        })
        .await
        .unwrap()
        .pvv;
    let pvk = paycrypto::TdesKey::new(&pvk).unwrap();
    assert_eq!(pvv, paycrypto::pvv(&pvk, &pan, 1, &pin).unwrap());
    let check = |block: [u8; 8]| m::PvvVerify {
        pvk_key_id: pvk_id.clone(),
        zpk_key_id: zpk_id.clone(),
        pan: Secret::new(pan_text.as_bytes()),
        pin_block: block,
        pvki: 1,
        pvv,
    };
    client.call(&check(block0)).await.unwrap();
    // A ZPK whose header says "encipher only" cannot open the block for the check.
    let mut by_encrypt_only = check(block0);
    by_encrypt_only.zpk_key_id = zpk_encrypt_only;
    assert!(matches!(
        client.call(&by_encrypt_only).await,
        Err(ClientError::Status(Status::AUTH_FAILED))
    ));
    let wrong = paycrypto::encipher_format0(&zpk, &paycrypto::Pin::new("9999").unwrap(), &pan);
    assert!(matches!(
        client.call(&check(wrong)).await,
        Err(ClientError::Status(Status::AUTH_FAILED))
    ));

    // An officer disables the ZAK while keyd serves: the cached key stops working too.
    keyd.run(
        &["key-disable", &zak_id, "--officer", OFFICERS[0].0],
        &[OFFICERS[0].1],
    )
    .unwrap();
    let started = std::time::Instant::now();
    while client.call(&verify(mac)).await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the disabled ZAK still verifies"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Nothing of the card, the PIN or a key reaches the audit log.
    drop(client);
    keyd.stop();
    let log = std::fs::read_to_string(keyd.hsm().dir().join("keys.audit.log")).unwrap();
    assert!(
        log.contains("\"op\":\"0x020c\"") || log.contains("\"op\":\"0x020C\""),
        "{log}"
    );
    // (The PIN itself never travels in clear, so there is nothing of it to look for.)
    let key_hex = |k: &[u8]| k.iter().map(|b| format!("{b:02X}")).collect::<String>();
    for secret in [
        pan_text.to_owned(),
        key_hex(b"0123456789ABCDEF"),
        key_hex(b"FEDCBA9876543210"),
        key_hex(&block0),
    ] {
        assert!(!log.to_uppercase().contains(&secret), "{secret}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_hsm_operations_over_the_socket_on_softhsm_memory_placement() {
    payment_hsm_operations("memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_hsm_operations_over_the_socket_on_softhsm_token_placement() {
    payment_hsm_operations("token").await;
}
