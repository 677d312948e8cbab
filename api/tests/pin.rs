//! Online PIN over real HTTP (spec 12.2 and 12.7): a terminal's format 4 block under its TPK,
//! translated by keyd to the simulator's ZPK and checked against the card's PVV by keyd, with
//! the embedded simulator acting as issuer. The terminal is the contract-only client
//! (`e2e::pos`), which makes its PIN blocks with `paycrypto`; keyd is a real process on a
//! throw-away SoftHSM token holding the published test keys (`keyd simulator-keys`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::path::Path;

use e2e::api::{Answer, Platform};
use e2e::pos::Terminal;
use serde_json::{Value, json};

const API: &str = env!("CARGO_BIN_EXE_api");

/// A merchant in EUR with one activated terminal: `(merchant id, terminal)`.
fn terminal(p: &Platform, device_id: &str) -> (String, Terminal) {
    p.activated_terminal(device_id).unwrap()
}

/// A charge body: `amount` in EUR cents, the card, and a PIN block when given.
fn charge(t: &Terminal, pan: &str, amount: u64, mode: &str, pin_block: Option<&str>) -> Value {
    let mut inner = json!({"amount": {"value": amount.to_string(), "currency": "EUR"},
                           "entry_mode": mode, "card": t.card_blob(pan).unwrap()});
    if let Some(b) = pin_block {
        inner["pin_block"] = json!(b);
    }
    inner
}

/// The outcome of a charge that was answered 200: `(status, iso_response_code, decline_code)`.
fn outcome(answer: (Answer, Option<Value>)) -> (String, String, Value) {
    let (a, v) = answer;
    assert_eq!(a.status, 200, "{}", a.json);
    let v = v.unwrap();
    (
        v["status"].as_str().unwrap().to_owned(),
        v["iso_response_code"].as_str().unwrap().to_owned(),
        v["decline_code"].clone(),
    )
}

/// A refusal on the `pin_block` field (400/`4000`).
fn refused_on_pin_block(answer: &(Answer, Option<Value>)) {
    let a = &answer.0;
    assert_eq!((a.status, a.code()), (400, "4000"), "{}", a.json);
    assert_eq!(
        a.json["error"]["details"]["fields"][0]["field"], "pin_block",
        "{}",
        a.json
    );
}

fn count(p: &Platform, mid: &str) -> usize {
    p.charges(mid).unwrap().len()
}

#[test]
fn the_simulator_approves_pin_1234_and_declines_every_other_pin() {
    let p = Platform::start_with_issuer(Path::new(API), "", "timeout_ms = 300").unwrap();
    let (mid, mut t) = terminal(&p, "POS-0000B001");
    let visa = "4242424242424242";

    // The right PIN on a card that approves; chip and swipe both carry PINs.
    let right = t.pin_block("1234", visa).unwrap();
    let approved = t
        .charge_with(&charge(&t, visa, 1500, "chip", Some(&right)), None)
        .unwrap();
    assert_eq!(
        outcome(approved),
        ("approved".into(), "00".into(), Value::Null)
    );
    // The PIN was translated in the one round trip that verified the charge, opened its
    // envelope and decrypted its card (`ChargeOpenCard`, 0x0217), not in a call of its own
    // (`PinTranslate`, 0x020C) nor with a separate card decrypt (`CardDecryptPin`, 0x0213;
    // `CardDecrypt`, 0x0206) after a separate open (`ChargeOpen`, 0x0205): keyd's audit log,
    // which records every request before its answer leaves, has the one and none of the others.
    let audit = std::fs::read_to_string(p.keyd.hsm().dir().join("keys.audit.log")).unwrap();
    assert!(audit.contains(r#""op":"0x0217""#), "{audit}");
    for other in ["0x020c", "0x0213", "0x0206", "0x0205"] {
        assert!(
            !audit.contains(&format!(r#""op":"{other}""#)),
            "{other}: {audit}"
        );
    }
    let again = t.pin_block("1234", visa).unwrap();
    assert_ne!(right, again, "format 4 blocks carry a fresh random fill");
    let swiped = t
        .charge_with(&charge(&t, visa, 1500, "swipe", Some(&again)), None)
        .unwrap();
    assert_eq!(outcome(swiped).0, "approved");

    // Wrong PINs, of any length, decline 55 incorrect_pin.
    for pin in ["4321", "1235", "0000", "9999123", "432112341234"] {
        let block = t.pin_block(pin, visa).unwrap();
        let declined = t
            .charge_with(&charge(&t, visa, 1500, "chip", Some(&block)), None)
            .unwrap();
        assert_eq!(
            outcome(declined),
            ("declined".into(), "55".into(), json!("incorrect_pin")),
            "PIN of {} digits",
            pin.len()
        );
    }

    // The Visa PVV reads the PIN's first four digits only, so a longer PIN that starts with
    // 1234 verifies too, as it would at an issuer using the same method.
    let longer = t.pin_block("12345", visa).unwrap();
    let same_pvv = t
        .charge_with(&charge(&t, visa, 1500, "chip", Some(&longer)), None)
        .unwrap();
    assert_eq!(outcome(same_pvv).0, "approved");

    // A card the issuer holds no PVV for: 55 even with 1234 (without a PIN it approves).
    let discover = "6011111111111117";
    let block = t.pin_block("1234", discover).unwrap();
    let unknown = t
        .charge_with(&charge(&t, discover, 1500, "chip", Some(&block)), None)
        .unwrap();
    assert_eq!(outcome(unknown).1, "55");
    let (a, _) = t.charge(discover, 1500, "EUR", None).unwrap();
    assert_eq!(a.status, 200);

    // The card whose PIN tries are used up: 75 pin_tries_exceeded.
    let blocked = "4000000000000754";
    let block = t.pin_block("1234", blocked).unwrap();
    let tries = t
        .charge_with(&charge(&t, blocked, 1500, "chip", Some(&block)), None)
        .unwrap();
    assert_eq!(
        outcome(tries),
        ("declined".into(), "75".into(), json!("pin_tries_exceeded"))
    );

    // The right PIN does not lift the card's own decline, nor the amount rule.
    let dnh = "4000000000000002";
    let block = t.pin_block("1234", dnh).unwrap();
    let declined = t
        .charge_with(&charge(&t, dnh, 1500, "chip", Some(&block)), None)
        .unwrap();
    assert_eq!(
        outcome(declined),
        ("declined".into(), "05".into(), json!("do_not_honor"))
    );
    let block = t.pin_block("1234", visa).unwrap();
    let amount_rule = t
        .charge_with(&charge(&t, visa, 1591, "chip", Some(&block)), None)
        .unwrap();
    assert_eq!(outcome(amount_rule).1, "91");

    // Contactless carries a PIN only above the contactless limit (50.00).
    let block = t.pin_block("1234", visa).unwrap();
    let above = t
        .charge_with(&charge(&t, visa, 5001, "contactless", Some(&block)), None)
        .unwrap();
    assert_eq!(outcome(above).0, "approved");
    let before = count(&p, &mid);

    // Refusals: nothing is recorded for any of them.
    let block = t.pin_block("1234", visa).unwrap();
    refused_on_pin_block(
        &t.charge_with(&charge(&t, visa, 5000, "contactless", Some(&block)), None)
            .unwrap(),
    );
    refused_on_pin_block(
        &t.charge_with(&charge(&t, visa, 1500, "manual", Some(&block)), None)
            .unwrap(),
    );
    // Bound to another card, garbage, not hex, the wrong length: one answer for all.
    let elsewhere = t.pin_block("1234", "5555555555554444").unwrap();
    let mut texts = vec![
        (elsewhere, "is not a PIN block for this card"),
        (
            "00112233445566778899AABBCCDDEEFF".to_owned(),
            "is not a PIN block for this card",
        ),
    ];
    texts.push(("Z".repeat(32), "32 hex digits"));
    texts.push((block[..16].to_owned(), "32 hex digits"));
    let mut messages = Vec::new();
    for (text, expected) in &texts {
        let answer = t
            .charge_with(&charge(&t, visa, 1500, "chip", Some(text)), None)
            .unwrap();
        refused_on_pin_block(&answer);
        let message = answer.0.json["error"]["details"]["fields"][0]["reason"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(expected), "{message}");
        messages.push(message);
    }
    assert_eq!(
        messages[0], messages[1],
        "one message for every block that does not open"
    );
    // The backoffice takes no PIN (its card is typed in: manual entry).
    let bo = p
        .call(
            "POST",
            "/charges",
            Some(
                &json!({"merchant_id": mid, "amount": {"value": "1500", "currency": "EUR"},
                     "card": {"number": visa, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
                     "pin_block": block}),
            ),
        )
        .unwrap();
    assert_eq!((bo.status, bo.code()), (400, "4000"), "{}", bo.json);
    assert_eq!(
        count(&p, &mid),
        before,
        "a refused PIN charge is not recorded"
    );

    // No PIN, no PIN check: the simulator's table as before.
    let (a, v) = t.charge(visa, 1500, "EUR", None).unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(v.unwrap()["status"], "approved");
}

#[test]
fn without_issuer_keys_a_pin_is_refused_before_anything_is_recorded() {
    let p = Platform::start(Path::new(API), "").unwrap();
    let (mid, mut t) = terminal(&p, "POS-0000B002");
    let visa = "4242424242424242";
    let block = t.pin_block("1234", visa).unwrap();
    let answer = t
        .charge_with(&charge(&t, visa, 1500, "chip", Some(&block)), None)
        .unwrap();
    refused_on_pin_block(&answer);
    assert!(
        answer.0.json["error"]["details"]["fields"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("takes no PIN"),
        "{}",
        answer.0.json
    );
    assert_eq!(count(&p, &mid), 0);
}
