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

use std::collections::HashMap;
use std::process::ExitCode;

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeEncrypt, KeyIvInit};
use hmac::{Hmac, KeyInit, Mac};
use keyd_proto::message as m;
use keyd_proto::{Client, ClientError};
use sha2::Sha256;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn hmac(key: &[u8], msg: &[u8]) -> Result<[u8; 32], Error> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)?;
    mac.update(msg);
    Ok(mac.finalize().into_bytes().into())
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
    let mut keys: HashMap<String, (String, Vec<u8>)> = HashMap::new();
    for k in &export.keys {
        let parent = match k.wrapped_under.as_str() {
            "zmk" => zmk.clone(),
            other => keys
                .get(other)
                .map(|(_, v)| v.clone())
                .ok_or("key set out of order")?,
        };
        let opened = tr31::open(
            &k.key_block,
            &tr31::Kbpk::new(&parent)?,
            tr31::Profile::Strict,
        )?;
        let key = opened.key.expose_secret();
        let kcv = if k.kind == "mac" {
            tr31::kcv::hmac_sha256(key)
        } else {
            tr31::kcv::for_algorithm(tr31::Algorithm::AES, key).unwrap_or_default()
        };
        let short = format!(
            "{}…{}",
            &k.key_block[..16],
            &k.key_block[k.key_block.len() - 8..]
        );
        println!(
            "   {} under {:<3}  {short}  KCV {} {}",
            k.kind,
            k.wrapped_under,
            hex(&k.kcv),
            if kcv == k.kcv {
                "(device computes the same)"
            } else {
                "(MISMATCH)"
            }
        );
        keys.insert(k.kind.clone(), (k.key_id.clone(), key.to_vec()));
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

    let (mac_id, mac_key) = keys.get("mac").ok_or("no mac key")?;
    let (msk_id, msk_key) = keys.get("msk").ok_or("no msk")?;
    let plaintext = br#"{"amount":{"value":"1500","currency":"EUR"},"entry_mode":"chip"}"#;
    let iv = [0x3Cu8; 16];
    let mut ciphertext = vec![0u8; plaintext.len() + 16];
    let n = cbc::Encryptor::<aes::Aes256>::new_from_slices(msk_key, &iv)?
        .encrypt_padded_b2b::<Pkcs7>(plaintext, &mut ciphertext)
        .map_err(|_| "padding")?
        .len();
    ciphertext.truncate(n);
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
