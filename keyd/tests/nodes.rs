//! Several keyd nodes on one PostgreSQL key store: two `keyd serve` processes, each on its own
//! SoftHSM token formed from the same LMK components, sharing one database. A zone formed on
//! one node works on the other, a key set issued through one is usable through the other, and
//! a disable, destruction, revocation or rotation made through one stops the key on the other
//! within the stated bound (`state_poll_ms`, 1 s by default), measured here.
//!
//! Needs PostgreSQL (`pgcluster`): skipped with a message when it is not installed, fails under
//! `CI`. Run with `-- --nocapture` to see the measured delays.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stdout,
    reason = "tests fail loudly and report what they measured"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use keyd_proto::message as m;
use keyd_proto::{Client, ClientError, Secret, Status};

use e2e::{KeydProcess, OFFICERS, ZMK_COMPONENTS, ZMK_HEX, device, hex};

/// Published test components for the LMK (never use them for real keys).
const LMK: [&str; 2] = e2e::LMK_COMPONENTS;

/// The bound the docs state for the default `state_poll_ms = 1000`: one poll interval, plus
/// the store read and the cache emptying, plus slack for a loaded test machine.
const BOUND: Duration = Duration::from_millis(2500);

fn kcv_hex(key: &[u8]) -> String {
    let v = tr31::kcv::cmac_aes(key).unwrap();
    format!("{:02X}{:02X}{:02X}", v[0], v[1], v[2])
}

/// A node: its own token, socket and audit log, the shared database in its config.
fn node(cluster: &pgcluster::Cluster, password_file: &Path) -> KeydProcess {
    let bin = Path::new(env!("CARGO_BIN_EXE_keyd"));
    KeydProcess::on_postgres(
        bin,
        r#""data", "devices""#,
        "memory",
        &cluster.url("keys"),
        password_file,
    )
    .unwrap()
}

/// Calls `attempt` every 5 ms until it is refused with `AUTH_FAILED` or `POLICY`; returns how
/// long that took.
async fn refused_after<F, Fut>(what: &str, attempt: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), ClientError>>,
{
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(()) => {}
            Err(ClientError::Status(Status::AUTH_FAILED | Status::POLICY)) => break,
            Err(e) => panic!("{what}: {e}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: node 1 still uses the key after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    println!(
        "{what}: refused by node 1 {} ms after node 2 made it",
        took.as_millis()
    );
    assert!(took < BOUND, "{what}: {took:?} is past the bound {BOUND:?}");
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_keyd_nodes_share_one_store() {
    let Some(cluster) =
        pgcluster::Cluster::for_tests("postgres_two_keyd_nodes_share_one_store").unwrap()
    else {
        return;
    };
    cluster.create_database("keys").unwrap();
    let password_file = cluster.write_password_file().unwrap();
    let mut one = node(&cluster, &password_file);
    let mut two = node(&cluster, &password_file);
    let [(a, a_password), (b, b_password)] = OFFICERS;

    // Node 1's token: the LMK from its components, the officers, zone z1.
    one.init_first_node().unwrap();
    // Node 2's token: the same LMK components; the officers and the zone come with the store.
    let err = two
        .run(&["init", "--lmk-components", "2"], &[LMK[0], LMK[0]])
        .unwrap_err()
        .to_string();
    assert!(err.contains("repeats"), "{err}");
    two.init_another_node().unwrap();
    one.start().unwrap();
    two.start().unwrap();
    let c1 = Client::connect(one.socket()).await.unwrap();
    let c2 = Client::connect(two.socket()).await.unwrap();

    // A device and its key set issued through node 1, delivered through node 2 (which loads
    // zone z1's ZMK from the store into its own token), and usable through both.
    let identity = c1
        .call(&m::DeviceCreate {
            device_id: "POS-0000A001".into(),
            zone: "z1".into(),
        })
        .await
        .unwrap();
    let set = c1
        .call(&m::KeySetCreate {
            device_id: "POS-0000A001".into(),
        })
        .await
        .unwrap();
    let export = c2
        .call(&m::KeySetExport {
            device_id: "POS-0000A001".into(),
            key_set_id: set.key_set_id.clone(),
        })
        .await
        .unwrap();
    let delivered = device::unwrap_key_set(&export, &hex(ZMK_HEX)).unwrap();
    for (kind, k) in &delivered {
        assert_eq!(k.kcv, k.sent_kcv, "{kind}");
    }
    let msk = set
        .keys
        .iter()
        .find(|k| k.kind == "msk")
        .unwrap()
        .key_id
        .clone();
    let sealed = c2
        .call(&m::EnvelopeSeal {
            msk_key_id: msk.clone(),
            plaintext: Secret::new(b"sealed on node 2"),
        })
        .await
        .unwrap();
    let opened = c1
        .call(&m::EnvelopeOpen {
            msk_key_id: msk.clone(),
            iv: sealed.iv,
            ciphertext: sealed.ciphertext.clone(),
        })
        .await
        .unwrap();
    assert_eq!(opened.plaintext.expose(), b"sealed on node 2");
    // Zone z2 formed through node 2: node 1 cannot form it again with another ZMK (the
    // store holds its sealed ZMK), and a device of z2 made on node 1 gets its key set there.
    let zmk_import = |k: &KeydProcess, zone: &str, components: [&str; 2]| {
        k.run(
            &[
                "zmk-import",
                "--zone",
                zone,
                "--components",
                "2",
                "--approver",
                a,
                "--approver",
                b,
            ],
            &[a_password, b_password, components[0], components[1]],
        )
    };
    zmk_import(&two, "z2", ZMK_COMPONENTS).unwrap();
    let err = zmk_import(&one, "z2", [ZMK_COMPONENTS[0], LMK[1]])
        .unwrap_err()
        .to_string();
    assert!(err.contains("another ZMK in the key store"), "{err}");
    c1.call(&m::DeviceCreate {
        device_id: "POS-0000A0F2".into(),
        zone: "z2".into(),
    })
    .await
    .unwrap();
    let set_z2 = c1
        .call(&m::KeySetCreate {
            device_id: "POS-0000A0F2".into(),
        })
        .await
        .unwrap();
    let export_z2 = c1
        .call(&m::KeySetExport {
            device_id: "POS-0000A0F2".into(),
            key_set_id: set_z2.key_set_id,
        })
        .await
        .unwrap();
    device::unwrap_key_set(&export_z2, &hex(ZMK_HEX)).unwrap();

    let attest = |identity: &m::IdentityKey, device_id: &str| {
        let message = b"attest".to_vec();
        m::AttestVerify {
            device_id: device_id.into(),
            key_id: identity.key_id.clone(),
            signature: device::hmac(identity.secret.expose(), &message).unwrap(),
            message,
        }
    };

    // Disabled through node 2 (an officer's command there): node 1 had the key cached.
    let check = attest(&identity, "POS-0000A001");
    c1.call(&check).await.unwrap();
    two.run(
        &["key-disable", &identity.key_id, "--officer", a],
        &[a_password],
    )
    .unwrap();
    let disabled = refused_after("disable", || async { c1.call(&check).await.map(drop) }).await;

    // A key set revoked through node 2's socket: node 1 had its MSK cached.
    let seal = m::EnvelopeSeal {
        msk_key_id: msk.clone(),
        plaintext: Secret::new(b"x"),
    };
    c1.call(&seal).await.unwrap();
    c2.call(&m::KeySetRevoke {
        device_id: "POS-0000A001".into(),
    })
    .await
    .unwrap();
    let revoked = refused_after("key-set revocation", || async {
        c1.call(&seal).await.map(drop)
    })
    .await;

    // A second device: its identity rotated through node 2, its MSK destroyed through node 2
    // with approvals given on node 1 (approvals live in the shared store).
    let identity2 = c1
        .call(&m::DeviceCreate {
            device_id: "POS-0000A002".into(),
            zone: "z1".into(),
        })
        .await
        .unwrap();
    let check2 = attest(&identity2, "POS-0000A002");
    c1.call(&check2).await.unwrap();
    c2.call(&m::IdentityRotate {
        device_id: "POS-0000A002".into(),
    })
    .await
    .unwrap();
    let rotated = refused_after("identity rotation", || async {
        c1.call(&check2).await.map(drop)
    })
    .await;
    let set2 = c1
        .call(&m::KeySetCreate {
            device_id: "POS-0000A002".into(),
        })
        .await
        .unwrap();
    let msk2 = set2
        .keys
        .iter()
        .find(|k| k.kind == "msk")
        .unwrap()
        .key_id
        .clone();
    let seal2 = m::EnvelopeSeal {
        msk_key_id: msk2.clone(),
        plaintext: Secret::new(b"y"),
    };
    c1.call(&seal2).await.unwrap();
    one.approve("destroy", &msk2).unwrap();
    two.run(&["key-destroy", &msk2], &[]).unwrap();
    let destroyed =
        refused_after("destruction", || async { c1.call(&seal2).await.map(drop) }).await;
    println!(
        "cache invalidation across nodes (state_poll_ms = 1000): disable {} ms, revocation {} ms, \
         rotation {} ms, destruction {} ms",
        disabled.as_millis(),
        revoked.as_millis(),
        rotated.as_millis(),
        destroyed.as_millis()
    );

    // A zone formed through node 2 is listed by node 1's officers, with its KCV computed in
    // node 1's token.
    zmk_import(&two, "z3", [ZMK_COMPONENTS[0], LMK[1]]).unwrap();
    let zones = one.run(&["zones"], &[]).unwrap();
    let z1 = zones.lines().find(|l| l.starts_with("z1 ")).unwrap();
    assert!(z1.ends_with(&kcv_hex(&hex(ZMK_HEX))), "{zones}");
    assert!(zones.lines().any(|l| l.starts_with("z3 ")), "{zones}");

    // Each node's own audit log verifies, and holds its own side of the story.
    drop((c1, c2));
    one.stop();
    two.stop();
    for (name, k) in [("node 1", &one), ("node 2", &two)] {
        let out = k.run(&["audit-verify"], &[]).unwrap();
        assert!(out.contains("records"), "{name}: {out}");
    }
    let log2 = std::fs::read_to_string(two.hsm().dir().join("keys.audit.log")).unwrap();
    assert!(log2.contains(&msk2), "node 2 recorded the destruction");
}

/// The new LMK of the rotation test, as its custodians' components (test values).
const NEW_LMK: [&str; 2] = [
    "1111111111111111222222222222222233333333333333334444444444444444",
    "A5A5A5A5A5A5A5A55A5A5A5A5A5A5A5A0F0F0F0F0F0F0F0FF0F0F0F0F0F0F0F0",
];

/// An LMK rotation on two nodes sharing one PostgreSQL store: the officers form the new LMK
/// on each node from the same components, the rewrap runs on one while both serve, and a node
/// whose token lacks the new LMK says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_lmk_rotation_on_two_keyd_nodes() {
    let Some(cluster) =
        pgcluster::Cluster::for_tests("postgres_an_lmk_rotation_on_two_keyd_nodes").unwrap()
    else {
        return;
    };
    cluster.create_database("keys").unwrap();
    let password_file = cluster.write_password_file().unwrap();
    let mut one = node(&cluster, &password_file);
    let mut two = node(&cluster, &password_file);
    let [(a, a_password), (b, b_password)] = OFFICERS;
    one.init_first_node().unwrap();
    two.init_another_node().unwrap();
    // Each node's log kept, and shown when a delivery fails: the client only sees a status.
    let logs = [
        one.hsm().dir().join("serve.log"),
        two.hsm().dir().join("serve.log"),
    ];
    one.verbose();
    two.verbose();
    one.start_with(None, Some(&logs[0])).unwrap();
    two.start_with(None, Some(&logs[1])).unwrap();
    let show = |what: &str, e: &ClientError| -> String {
        let tail = |p: &Path| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().rev().take(15).collect();
            lines.into_iter().rev().collect::<Vec<_>>().join("\n")
        };
        format!(
            "{what}: {e}\n--- node 1 ---\n{}\n--- node 2 ---\n{}",
            tail(&logs[0]),
            tail(&logs[1])
        )
    };
    let c1 = Client::connect(one.socket()).await.unwrap();
    let c2 = Client::connect(two.socket()).await.unwrap();
    let mut sets = Vec::new();
    for n in 0..20 {
        let device_id = format!("POS-0000B{n:03X}");
        c1.call(&m::DeviceCreate {
            device_id: device_id.clone(),
            zone: "z1".into(),
        })
        .await
        .unwrap();
        let set = c1
            .call(&m::KeySetCreate {
                device_id: device_id.clone(),
            })
            .await
            .unwrap();
        sets.push((device_id, set.key_set_id));
    }
    let deliver = |c: &Client, (device_id, key_set_id): &(String, String)| {
        let req = m::KeySetExport {
            device_id: device_id.clone(),
            key_set_id: key_set_id.clone(),
        };
        let c = c.clone();
        async move {
            let export = c.call(&req).await?;
            device::unwrap_key_set(&export, &hex(ZMK_HEX)).unwrap();
            Ok::<(), ClientError>(())
        }
    };

    // The ceremony on node 1, then on node 2 with the same components (another LMK is
    // refused and nothing is kept).
    let rotate = |k: &KeydProcess, parts: [&str; 2]| k.lmk_rotate(parts);
    let err = one
        .run(
            &["lmk-rotate", "--approver", a, "--approver", b],
            &[a_password, b_password],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--components"),
        "a generated LMK with several nodes: {err}"
    );
    let out = rotate(&one, NEW_LMK).unwrap();
    let new_kcv = out
        .lines()
        .find_map(|l| l.strip_prefix("new LMK KCV "))
        .unwrap()
        .to_owned();
    let err = two
        .run(&["lmk-rewrap", "--officer", a], &[a_password])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&new_kcv),
        "node 2 names the LMK it lacks: {err}"
    );
    let err = rotate(&two, [NEW_LMK[0], LMK[1]]).unwrap_err().to_string();
    assert!(err.contains("another LMK"), "{err}");
    let out = rotate(&two, NEW_LMK).unwrap();
    assert!(out.contains(&new_kcv), "{out}");

    // The rewrap on node 1 while both nodes serve.
    let rewrap = {
        let mut child = one
            .command(&["lmk-rewrap", "--officer", a, "--batch", "10"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(
            &mut child.stdin.take().unwrap(),
            format!("{a_password}\n").as_bytes(),
        )
        .unwrap();
        child
    };
    let mut served = 0;
    let rewrap = tokio::task::spawn_blocking(move || rewrap.wait_with_output().unwrap());
    while !rewrap.is_finished() {
        for set in &sets {
            if let Err(e) = deliver(&c1, set).await {
                panic!("{}", show("node 1 during the rewrap", &e));
            }
            if let Err(e) = deliver(&c2, set).await {
                panic!("{}", show("node 2 during the rewrap", &e));
            }
            served += 2;
        }
    }
    let out = rewrap.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("key-set deliveries answered on both nodes during the rewrap: {served}");
    tokio::time::sleep(BOUND).await;
    for set in &sets {
        deliver(&c1, set).await.unwrap();
        deliver(&c2, set).await.unwrap();
    }
    // New keys made on node 2 after the switch are under the new LMK, and open on node 1.
    c2.call(&m::DeviceCreate {
        device_id: "POS-0000BFFF".into(),
        zone: "z1".into(),
    })
    .await
    .unwrap();
    let set = c2
        .call(&m::KeySetCreate {
            device_id: "POS-0000BFFF".into(),
        })
        .await
        .unwrap();
    deliver(&c1, &("POS-0000BFFF".to_owned(), set.key_set_id))
        .await
        .unwrap();
    for k in [&one, &two] {
        let zones = k.run(&["zones"], &[]).unwrap();
        assert!(zones.starts_with(&format!("LMK KCV {new_kcv}")), "{zones}");
    }

    // A third node formed from the old LMK's components only: it does not start, and says
    // which LMK it lacks.
    let three = node(&cluster, &password_file);
    three
        .run(&["init", "--lmk-components", "2"], &[LMK[0], LMK[1]])
        .unwrap_err();
    let err = three.run(&["zones"], &[]).unwrap_err().to_string();
    assert!(err.contains(&new_kcv), "{err}");
    drop((c1, c2));
    one.stop();
    two.stop();
}

/// A TDES zone formed on one node is a TDES zone on the other: the sealed copy in the shared
/// store records the algorithm, the other node's token gets a TDES object from it, and both
/// give the same legacy KCV and exchange version B blocks under it. Devices stay out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_tdes_zone_formed_on_one_node_works_on_the_other() {
    let Some(cluster) =
        pgcluster::Cluster::for_tests("postgres_a_tdes_zone_formed_on_one_node_works_on_the_other")
            .unwrap()
    else {
        return;
    };
    cluster.create_database("keys").unwrap();
    let password_file = cluster.write_password_file().unwrap();
    let mut one = node(&cluster, &password_file);
    let two = node(&cluster, &password_file);
    let [(a, a_password), (b, b_password)] = OFFICERS;
    one.init_first_node().unwrap();
    two.init_another_node().unwrap();
    let components = [
        "0123456789ABCDEFFEDCBA9876543210",
        "A1B3C2D5E5F70719293B4A5D6D7F8F91",
    ];
    let zmk: Vec<u8> = hex(components[0])
        .iter()
        .zip(hex(components[1]))
        .map(|(x, y)| x ^ y)
        .collect();
    let legacy = tr31::kcv::legacy(&zmk).unwrap();
    let legacy = format!("{:02X}{:02X}{:02X}", legacy[0], legacy[1], legacy[2]);
    let out = one
        .run(
            &[
                "zmk-import",
                "--zone",
                "acq",
                "--algorithm",
                "tdes",
                "--approver",
                a,
                "--approver",
                b,
            ],
            &[a_password, b_password, components[0], components[1]],
        )
        .unwrap();
    assert!(out.contains(&format!("zone acq ZMK KCV {legacy}")), "{out}");

    // Node 2 never formed the zone: its first use loads it from the store, as TDES.
    let block = tr31::seal(
        &tr31::Kbpk::new(&zmk).unwrap(),
        &tr31::Header::parse("B0000V2TC00E0000", tr31::Profile::Strict).unwrap(),
        &tr31::Key::new(&hex("7CA1F2D3E4B5A6978869504132231405")).unwrap(),
        &tr31::SealOptions::default(),
        tr31::Padding::Random(&mut tr31::OsRandom),
    )
    .unwrap();
    let out = two
        .run(
            &[
                "tr31-import",
                "--zone",
                "acq",
                "--label",
                "acquirer pvk",
                "--officer",
                a,
                "--json",
                &block,
            ],
            &[a_password],
        )
        .unwrap();
    let imported: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let pvk = imported["key_id"].as_str().unwrap().to_owned();
    for n in [&one, &two] {
        let zones = n.run(&["zones", "--json"], &[]).unwrap();
        assert!(
            zones.contains(&format!(
                r#"{{"zone":"acq","algorithm":"tdes","kcv":"{legacy}"}}"#
            )),
            "{zones}"
        );
    }
    let out = two
        .run(
            &[
                "tr31-export",
                "--key",
                &pvk,
                "--zone",
                "acq",
                "--approver",
                a,
                "--approver",
                b,
                "--json",
            ],
            &[a_password, b_password],
        )
        .unwrap();
    let sent: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let sent = sent["key_block"].as_str().unwrap();
    assert!(sent.starts_with('B'), "{sent}");
    assert!(tr31::open(sent, &tr31::Kbpk::new(&zmk).unwrap(), tr31::Profile::Strict).is_ok());
    // Forming it again on node 2 as an AES zone is refused (the store has a TDES ZMK).
    let err = two
        .run(
            &[
                "zmk-import",
                "--zone",
                "acq",
                "--approver",
                a,
                "--approver",
                b,
            ],
            &[a_password, b_password, ZMK_COMPONENTS[0], ZMK_COMPONENTS[1]],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("ZMK"), "{err}");

    // No device joins the TDES zone.
    one.start().unwrap();
    let c1 = Client::connect(one.socket()).await.unwrap();
    let refused = c1
        .call(&m::DeviceCreate {
            device_id: "POS-0000C001".into(),
            zone: "acq".into(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ClientError::Status(Status::POLICY)),
        "{refused:?}"
    );
}
