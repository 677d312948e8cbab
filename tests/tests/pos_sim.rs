//! `pos-sim` against a real platform: one terminal end to end with its secrets on standard
//! input, then a short load run; one terminal through every outcome of the processor
//! simulator; and a load run during which the API is restarted, after which every charge
//! pos-sim saw approved is stored once and nothing is left pending.

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
    // `load` drives two terminals flat out: far above a real terminal's rate limit.
    let p = e2e::api::Platform::start(&api_bin, e2e::LOAD_LIMITS).unwrap();
    let (mid, key_id, secret) = merchant_and_device(&p, "POS-00005EED");
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
        secret
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
            &key_id,
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
    assert!(!out.contains(&secret));

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

/// A merchant with one registered device; returns the merchant id, the device's identity key
/// id and its secret.
fn merchant_and_device(p: &e2e::api::Platform, device_id: &str) -> (String, String, String) {
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
            Some(&json!({"device_id": device_id, "model": "A920", "serial": "S"})),
        )
        .unwrap();
    (
        mid,
        d["identity_key"]["key_id"].as_str().unwrap().to_owned(),
        d["identity_key"]["secret"].as_str().unwrap().to_owned(),
    )
}

fn api_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pos-sim")).with_file_name("api")
}

#[test]
fn every_outcome_of_the_processor_simulator_through_pos_sim() {
    // A short processor time-out, so the time-out card costs a third of a second.
    let p = e2e::api::Platform::start(&api_bin(), "\n[processor]\ntimeout_ms = 300").unwrap();
    let (mid, key_id, secret) = merchant_and_device(&p, "POS-0000ACE5");
    let cards = [
        ("4242424242424242:1500", "approved 00"),
        ("4000000000000002:1000", "declined 05 do_not_honor"),
        ("4000000000009995:1000", "declined 51 insufficient_funds"),
        ("4000000000000069:1000", "declined 54 expired_card"),
        ("5555555555554444:1591", "declined 91 issuer_unavailable"),
        ("4000000000000119:1000", "502 5020"),
        ("4000000000000259:1000", "502 5020"),
    ];
    let mut args = vec![
        "--zmk-component",
        e2e::ZMK_COMPONENTS[0],
        "--zmk-component",
        e2e::ZMK_COMPONENTS[1],
        "run",
        "--device-id",
        "POS-0000ACE5",
        "--identity-key-id",
        &key_id,
        "--identity-secret",
        "-",
        "--claim-token",
        &p.admin,
    ];
    for (card, _) in &cards {
        args.extend(["--card", card]);
    }
    let (ok, out) = pos_sim(p.api.port(), &args, &format!("{secret}\n"));
    assert!(ok, "{out}");
    for (i, (card, outcome)) in (1..).zip(&cards) {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("charge {i}:")))
            .unwrap_or_else(|| panic!("no charge {i} ({card}): {out}"));
        assert!(line.contains(outcome), "{card}: {line}");
    }
    // The declines and failures are stored as such, with the approval, for the merchant.
    let listed = p
        .ok(
            "GET",
            &format!("/charges?merchant_id={mid}&limit=100"),
            None,
        )
        .unwrap();
    let statuses: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.iter().filter(|s| **s == "approved").count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == "declined").count(), 4);
    assert_eq!(statuses.iter().filter(|s| **s == "failed").count(), 2);
    // A malformed card is refused by pos-sim itself.
    let (ok, out) = pos_sim(
        p.api.port(),
        &[
            "--zmk-component",
            e2e::ZMK_HEX,
            "run",
            "--device-id",
            "POS-0000ACE5",
            "--identity-key-id",
            &key_id,
            "--identity-secret",
            "x",
            "--card",
            "4242",
        ],
        "",
    );
    assert!(!ok && out.contains("PAN:AMOUNT"), "{out}");
}

#[test]
fn pos_sim_enters_a_pin_and_the_simulator_checks_it_as_issuer() {
    let p = e2e::api::Platform::start_with_issuer(&api_bin(), "", "").unwrap();
    let (_, key_id, secret) = merchant_and_device(&p, "POS-0000A1B2");
    let mut runs = Vec::new();
    for pin in ["1234", "9876"] {
        let args = [
            "--zmk-component",
            e2e::ZMK_COMPONENTS[0],
            "--zmk-component",
            e2e::ZMK_COMPONENTS[1],
            "run",
            "--device-id",
            "POS-0000A1B2",
            "--identity-key-id",
            &key_id,
            "--identity-secret",
            "-",
            "--claim-token",
            &p.admin,
            "--card",
            "4242424242424242:1500",
            "--pin",
            pin,
        ];
        let (ok, out) = pos_sim(p.api.port(), &args, &format!("{secret}\n"));
        assert!(ok, "{out}");
        assert!(!out.contains(pin), "the PIN is never printed: {out}");
        runs.push(out);
    }
    let charge = |out: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with("charge 1:"))
            .unwrap_or_else(|| panic!("no charge: {out}"))
            .to_owned()
    };
    assert!(charge(&runs[0]).contains("approved 00"), "{}", runs[0]);
    assert!(
        charge(&runs[1]).contains("declined 55 incorrect_pin"),
        "{}",
        runs[1]
    );
}

#[test]
fn an_api_restart_in_the_middle_of_a_pos_sim_load_loses_nothing() {
    let mut p = e2e::api::Platform::start(&api_bin(), "").unwrap();
    let (mid, _, _) = merchant_and_device(&p, "POS-00000001");
    let sim = Command::new(env!("CARGO_BIN_EXE_pos-sim"))
        .args(["--api", &format!("127.0.0.1:{}", p.api.port())])
        .args(["--zmk-component", e2e::ZMK_COMPONENTS[0]])
        .args(["--zmk-component", e2e::ZMK_COMPONENTS[1]])
        .args(["load", "--token", &p.admin, "--merchant", &mid])
        .args(["--terminals", "2", "--connections", "4", "--seconds", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until charges are flowing, then restart the API as an operator would.
    let count = |p: &e2e::api::Platform| {
        p.ok(
            "GET",
            &format!("/charges?merchant_id={mid}&limit=100"),
            None,
        )
        .map(|page| page["data"].as_array().map_or(0, Vec::len))
        .unwrap_or(0)
    };
    let started = std::time::Instant::now();
    while count(&p) < 20 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no charges"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    p.api.terminate();
    std::thread::sleep(std::time::Duration::from_millis(300));
    p.api.restart().unwrap();
    let out = sim.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let approved: usize = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("approved charges:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.replace(',', "").parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    // Every charge pos-sim saw approved is stored, once; nothing is left pending.
    let stored = p.charges(&mid).unwrap();
    let ids: std::collections::HashSet<&str> = stored
        .iter()
        .map(|c| c["charge_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), stored.len(), "a charge is listed twice");
    let stored_approved = stored.iter().filter(|c| c["status"] == "approved").count();
    assert!(
        stored_approved >= approved && approved > 20,
        "pos-sim saw {approved} approved, {stored_approved} stored: {text}"
    );
    assert!(
        stored
            .iter()
            .all(|c| c["status"] == "approved" || c["status"] == "failed"),
        "nothing pending after the restart"
    );
}
