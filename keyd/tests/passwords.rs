//! `PasswordMac` with a real `keyd serve` on a real SoftHSM token: the verifier of a stretched
//! password stays the same across restarts and across an LMK rotation carried through to the
//! original LMK's destruction (the stored verifiers of the API's portal users depend on it),
//! depends on the user, refuses malformed requests, and is audited under the user id and never
//! with the stretched value or the verifier.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::num::NonZeroU32;

use keyd_proto::message as m;
use keyd_proto::{Client, ClientError, Secret, Status};

use e2e::{KeydProcess, OFFICERS};

/// A user id as the API makes them (a UUID).
const USER: &str = "0b6f5a3e-8c1d-4f2a-9e7b-3c5d1a2b4e6f";
const OTHER_USER: &str = "7d2e9c41-5b3a-4e8f-a1c6-0f9e8d7c6b5a";

/// The rotation's new LMK, as its two custodians' components.
const LMK_COMPONENTS: [&str; 2] = [
    "0F0E0D0C0B0A09080706050403020100F0E1D2C3B4A5968778695A4B3C2D1E0F",
    "3C3C3C3C3C3C3C3CC3C3C3C3C3C3C3C3A5A55A5AA5A55A5A0FF00FF00FF00FF0",
];

/// The API's part: PBKDF2-HMAC-SHA-256 of the password under the user's salt (by `ring`, not
/// by keyd's code).
fn stretch(password: &str, salt: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(1000).unwrap(),
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

async fn mac(client: &Client, context: &str, stretched: &[u8]) -> Result<Vec<u8>, ClientError> {
    let answer = client
        .call(&m::PasswordMac {
            context: context.into(),
            stretched: Secret::new(stretched),
        })
        .await?;
    Ok(answer.mac.expose().to_vec())
}

fn refused(answer: Result<Vec<u8>, ClientError>) -> Status {
    match answer {
        Err(ClientError::Status(status)) => status,
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_mac_holds_across_restarts_and_an_lmk_rotation_and_is_audited_by_user() {
    let mut k = KeydProcess::new(
        std::path::Path::new(env!("CARGO_BIN_EXE_keyd")),
        r#""data""#,
        "memory",
    )
    .unwrap();
    k.start().unwrap();
    let client = Client::connect(k.socket()).await.unwrap();
    let stretched = stretch("correct horse battery staple", b"salt of the user");
    let verifier = mac(&client, USER, &stretched).await.unwrap();
    assert_eq!(verifier.len(), 32);
    assert_eq!(mac(&client, USER, &stretched).await.unwrap(), verifier);
    // Another user with the same stretched value, or another password: another verifier.
    let others = [
        mac(&client, OTHER_USER, &stretched).await.unwrap(),
        mac(
            &client,
            USER,
            &stretch("correct horse battery stapler", b"salt of the user"),
        )
        .await
        .unwrap(),
    ];
    assert!(others.iter().all(|o| *o != verifier));
    assert_ne!(others[0], others[1]);

    // Malformed requests: the webhook operations' bad request.
    for context in ["", "usr 1", "usr/1", "usr\u{0}1", &"u".repeat(65)] {
        assert_eq!(
            refused(mac(&client, context, &stretched).await),
            Status::BAD_REQUEST,
            "{context:?}"
        );
    }
    for len in [0, 31, 33] {
        assert_eq!(
            refused(mac(&client, USER, &vec![7; len]).await),
            Status::BAD_REQUEST,
            "{len} bytes"
        );
    }
    assert_eq!(mac(&client, USER, &stretched).await.unwrap(), verifier);

    // A restart.
    drop(client);
    k.stop();
    k.start().unwrap();
    let client = Client::connect(k.socket()).await.unwrap();
    assert_eq!(mac(&client, USER, &stretched).await.unwrap(), verifier);

    // An LMK rotation, run by the officers while keyd serves.
    let [(a, a_password), (b, b_password)] = OFFICERS;
    let out = k.lmk_rotate(LMK_COMPONENTS).unwrap();
    let new_kcv = out
        .lines()
        .find_map(|l| l.strip_prefix("new LMK KCV "))
        .unwrap()
        .to_owned();
    let out = k
        .run(&["lmk-rewrap", "--officer", a], &[a_password])
        .unwrap();
    assert!(out.contains(&format!("LMK KCV {new_kcv}")), "{out}");
    assert_eq!(mac(&client, USER, &stretched).await.unwrap(), verifier);
    let store = rusqlite::Connection::open(k.store()).unwrap();
    let sealed: String = store
        .query_row(
            "SELECT block FROM lmk_secrets WHERE name = 'keyd portal password key'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        sealed.contains(&format!("KP0C01{new_kcv}")),
        "the password key is sealed under the new LMK: {sealed}"
    );
    drop(client);
    k.stop();
    k.start().unwrap();
    let client = Client::connect(k.socket()).await.unwrap();
    assert_eq!(mac(&client, USER, &stretched).await.unwrap(), verifier);

    // The original LMK destroyed: the sealed copy is the only source of the key now.
    let old_kcv = k
        .run(&["lmks", "--json"], &[])
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["state"] == "retired")
        .unwrap()["kcv"]
        .as_str()
        .unwrap()
        .to_owned();
    // Dual control: the first officer's approval is kept, the second one's destroys it.
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
    let rows = k.run(&["lmks", "--json"], &[]).unwrap();
    assert!(
        rows.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .any(|r| r["kcv"] == old_kcv.as_str() && r["state"] == "destroyed"),
        "{rows}"
    );
    drop(client);
    k.stop();
    k.start().unwrap();
    let client = Client::connect(k.socket()).await.unwrap();
    assert_eq!(mac(&client, USER, &stretched).await.unwrap(), verifier);
    assert_eq!(
        mac(&client, OTHER_USER, &stretched).await.unwrap(),
        others[0]
    );

    // The audit log names the user, never the stretched value or the verifier.
    drop(client);
    k.stop();
    let log = std::fs::read_to_string(k.hsm().dir().join("keys.audit.log")).unwrap();
    let ours: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(",\"op\":\"0x021a\","))
        .collect();
    assert!(ours.len() >= 14, "{} records of 0x021a", ours.len());
    assert!(
        ours.iter()
            .filter(|l| l.contains(&format!(",\"subject\":\"{USER}\",\"status\":\"ok\",")))
            .count()
            >= 7,
        "{log}"
    );
    assert!(log.contains(&format!(
        ",\"op\":\"0x021a\",\"subject\":\"{OTHER_USER}\",\"status\":\"ok\","
    )));
    // A refusal is recorded under the user it named too.
    assert!(log.contains(&format!(
        ",\"op\":\"0x021a\",\"subject\":\"{USER}\",\"status\":\"bad request\","
    )));
    for secret in [&verifier[..], &others[0], &others[1], &stretched[..]] {
        for text in [hex::encode(secret), hex::encode_upper(secret)] {
            assert!(!log.contains(&text), "{text} is in the audit log");
            assert!(
                !log.contains(&text[..16]),
                "part of {text} is in the audit log"
            );
        }
    }
    let verified = k.run(&["audit-verify"], &[]).unwrap();
    assert!(verified.contains("chain intact"), "{verified}");
}
