//! What the platform does today, end to end on a throw-away SoftHSM token: keyd creates its
//! LMK in the token and loads a zone's ZMK, registers a device, issues and delivers its key set
//! as TR-31 blocks (which this program unwraps the way a terminal would, from the ZMK down),
//! verifies an attestation, and verifies-and-opens a signed, encrypted charge.
//!
//! `cargo build --release -p keyd -p e2e && target/release/platform-demo`

#![allow(
    clippy::print_stdout,
    clippy::indexing_slicing,
    reason = "a demo talks to the person running it and fails loudly"
)]

use std::process::ExitCode;

use keyd_proto::message as m;
use keyd_proto::{Client, ClientError};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn hmac(key: &[u8], msg: &[u8]) -> Result<[u8; 32], Error> {
    e2e::device::hmac(key, msg)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("platform-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Error> {
    let keyd_bin = std::env::current_exe()?.with_file_name("keyd");
    if !keyd_bin.exists() {
        return Err("build keyd next to this program: cargo build --release -p keyd -p e2e".into());
    }
    println!("== keyd on a fresh SoftHSM token");
    let mut keyd = e2e::KeydProcess::new(&keyd_bin, r#""data", "devices""#, "memory")?;
    keyd.start()?;
    let zmk = e2e::hex(e2e::ZMK_HEX);
    let zmk_kcv = tr31::kcv::cmac_aes(&zmk)?;
    println!("   LMK generated inside the token (never leaves it)");
    println!(
        "   zone z1: ZMK loaded from the published demo value, KCV {}",
        hex(&zmk_kcv[..3])
    );
    let client = Client::connect(keyd.socket()).await?;

    let device_id = "POS-8F3A2C91".to_owned();
    let identity = client
        .call(&m::DeviceCreate {
            device_id: device_id.clone(),
            zone: "z1".into(),
        })
        .await?;
    println!(
        "== device {device_id} registered: identity key {} (KCV {}), secret handed out once",
        identity.key_id,
        hex(&identity.kcv)
    );

    let set = client
        .call(&m::KeySetCreate {
            device_id: device_id.clone(),
        })
        .await?;
    let export = client
        .call(&m::KeySetExport {
            device_id: device_id.clone(),
            key_set_id: set.key_set_id.clone(),
        })
        .await?;
    println!(
        "== key set {} delivered as TR-31 version D blocks; the device unwraps them from the ZMK down:",
        set.key_set_id
    );
    let keys = e2e::device::unwrap_key_set(&export, &zmk)?;
    for k in &export.keys {
        let delivered = keys.get(&k.kind).ok_or("a delivered key is missing")?;
        let short = format!(
            "{}…{}",
            &k.key_block[..16],
            &k.key_block[k.key_block.len() - 8..]
        );
        let agreed = if delivered.kcv == k.kcv {
            "(device computes the same)"
        } else {
            "(MISMATCH)"
        };
        println!(
            "   {} under {:<3}  {short}  KCV {} {agreed}",
            k.kind,
            k.wrapped_under,
            hex(&k.kcv)
        );
    }

    let attest = format!("{device_id}\n{}\n1764237600\nn0nce0000001", identity.key_id);
    client
        .call(&m::AttestVerify {
            device_id: device_id.clone(),
            key_id: identity.key_id.clone(),
            message: attest.clone().into_bytes(),
            signature: hmac(identity.secret.expose(), attest.as_bytes())?,
        })
        .await?;
    println!("== attestation signed with the identity secret: verified by keyd");

    let mac = keys.get("mac").ok_or("no mac key")?;
    let msk = keys.get("msk").ok_or("no msk")?;
    let (mac_id, mac_key, msk_id, msk_key) = (&mac.key_id, &mac.key, &msk.key_id, &msk.key);
    let plaintext = br#"{"amount":{"value":"1500","currency":"EUR"},"entry_mode":"chip"}"#;
    let iv = [0x3Cu8; 16];
    let ciphertext = e2e::device::encrypt(msk_key, &iv, plaintext)?;
    let body = format!(
        r#"{{"format":"TR31-DATA","ciphertext":"{}","initialization_vector":"{}","mode":"CBC"}}"#,
        hex(&ciphertext),
        hex(&iv)
    );
    let message =
        format!("TID-004812\n{mac_id}\n1764237600\nn0nce0000002\nPOST\n/pos/charge\n{body}");
    let charge = m::ChargeOpen {
        mac_key_id: mac_id.clone(),
        message: message.clone().into_bytes(),
        signature: hmac(mac_key, message.as_bytes())?,
        msk_key_id: msk_id.clone(),
        iv,
        ciphertext: ciphertext.clone(),
    };
    let opened = client.call(&charge).await?;
    println!(
        "== charge signed with the MAC key, encrypted with the MSK: keyd verified, then opened:"
    );
    println!("   {}", String::from_utf8_lossy(opened.plaintext.expose()));
    // Edit one character of the signed body (the first ciphertext digit) after signing.
    let mut edited = message.into_bytes();
    let at = edited.len() - body.len() + r#"{"format":"TR31-DATA","ciphertext":""#.len();
    edited[at] = if edited[at] == b'0' { b'1' } else { b'0' };
    let tampered = m::ChargeOpen {
        message: edited,
        ..charge
    };
    match client.call(&tampered).await {
        Err(ClientError::Status(status)) => {
            println!("== the same charge with its body edited after signing: refused ({status})")
        }
        other => return Err(format!("a tampered charge was not refused: {other:?}").into()),
    }
    keyd.stop();
    println!("demo finished");
    Ok(())
}
