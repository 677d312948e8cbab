//! `pos-sim` against a real platform: one terminal end to end with its secrets on standard
//! input, then a short load run.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::json;

fn pos_sim(port: u16, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pos-sim"))
        .args(["--api", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn one_terminal_then_a_short_load() {
    let api_bin = PathBuf::from(env!("CARGO_BIN_EXE_pos-sim")).with_file_name("api");
    assert!(
        api_bin.exists(),
        "api is built with the workspace: cargo test --workspace"
    );
    let p = e2e::api::Platform::start(&api_bin, "").unwrap();
    let r = p
        .ok("POST", "/resellers", Some(&json!({"name": "R"})))
        .unwrap();
    let m = p
        .ok("POST", "/merchants", Some(&json!({"reseller_id": r["id"], "name": "Sim", "mcc": "5812", "country": "DE", "currency": "EUR"})))
        .unwrap();
    let mid = m["id"].as_str().unwrap().to_owned();
    let d = p
        .ok(
            "POST",
            &format!("/merchants/{mid}/devices"),
            Some(&json!({"device_id": "POS-00005EED", "model": "A920", "serial": "S"})),
        )
        .unwrap();
    // The demo ZMK as two components, the way custodians hold it.
    let zmk = e2e::hex(e2e::ZMK_HEX);
    let first: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let second: Vec<u8> = zmk.iter().zip(&first).map(|(a, b)| a ^ b).collect();
    let stdin = format!(
        "{}\n{}\n{}\n",
        e2e::pos::hex_upper(&first),
        e2e::pos::hex_upper(&second),
        d["identity_key"]["secret"].as_str().unwrap()
    );
    let (ok, out) = pos_sim(
        p.api.port(),
        &[
            "--zmk-component",
            "-",
            "--zmk-component",
            "-",
            "run",
            "--device-id",
            "POS-00005EED",
            "--identity-key-id",
            d["identity_key"]["key_id"].as_str().unwrap(),
            "--identity-secret",
            "-",
            "--claim-token",
            &p.admin,
            "--charges",
            "2",
        ],
        &stdin,
    );
    assert!(ok, "{out}");
    assert!(out.contains("ZMK formed, KCV 8B9802"), "{out}");
    assert!(out.contains("activated at"), "{out}");
    assert!(
        out.contains("charge 2: ch_") && out.contains("approved 00"),
        "{out}"
    );
    // No secret is echoed.
    assert!(!out.contains(&e2e::pos::hex_upper(&first)));
    assert!(!out.contains(d["identity_key"]["secret"].as_str().unwrap()));

    let (ok, out) = pos_sim(
        p.api.port(),
        &[
            "--zmk-component",
            "-",
            "load",
            "--token",
            &p.admin,
            "--merchant",
            &mid,
            "--terminals",
            "2",
            "--connections",
            "2",
            "--seconds",
            "2",
        ],
        &format!("{}\n", e2e::ZMK_HEX),
    );
    assert!(ok, "{out}");
    assert!(out.contains("approved charges:"), "{out}");
    assert!(out.contains("p99.9"), "{out}");
    assert!(!out.contains("failed answers"), "{out}");
    // A bad component is refused before anything is sent.
    let (ok, out) = pos_sim(
        p.api.port(),
        &[
            "--zmk-component",
            "00",
            "load",
            "--token",
            "x",
            "--merchant",
            &mid,
        ],
        "",
    );
    assert!(!ok && out.contains("64 hex digits"), "{out}");
}
