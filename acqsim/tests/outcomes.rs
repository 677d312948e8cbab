//! The simulator's decisions over a real TCP socket: contract section 8's table mapped to DE 39
//! (12.6), the PIN check of 12.7, refunds, the echo test, and requests whose MAC fails.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

#[path = "support/link.rs"]
mod link;

use acqlink::{De, Mac, Mti};
use acqsim::cards::{PIN_BLOCKED_PAN, TEST_PIN};
use acqsim::client::Reply;
use acqsim::{Config, Delivery, PinCheck};
use link::*;

#[tokio::test]
async fn approval_echoes_the_fields_and_adds_38_and_39() {
    let (sim, mut client) = start().await;
    let request = purchase(1, "4242424242424242", 1500);
    client.send(&request).await.unwrap();
    let bytes = client.recv_frame(ANSWER).await.unwrap().unwrap();
    // The MAC is DE 64 here (no field above 64), the last 16 characters, and verifies.
    let protected = acqlink::MacProtected::decode(&bytes).unwrap();
    assert!(paycrypto::verify_retail_mac(
        &zak(),
        protected.mac_input(),
        &protected.mac().0
    ));
    let answer = protected.into_verified();
    assert_eq!(answer.mti(), Mti::FinancialResponse);
    assert_eq!(answer.mac_field(), 64);
    for de in [
        De::Pan,
        De::ProcessingCode,
        De::Amount,
        De::TransmissionDateTime,
        De::Stan,
        De::Rrn,
        De::TerminalId,
        De::CardAcceptorId,
        De::Currency,
    ] {
        assert_eq!(answer.get(de), request.get(de), "DE {}", de.number());
    }
    for de in [
        De::LocalTime,
        De::LocalDate,
        De::Expiry,
        De::PosEntryMode,
        De::PosConditionCode,
    ] {
        assert_eq!(answer.get(de), None, "DE {} is not echoed", de.number());
    }
    assert_eq!(code(&answer), "00");
    let auth = answer.get(De::AuthorizationId).unwrap();
    assert_eq!(auth.len(), 6);
    assert!(auth.bytes().all(|b| b.is_ascii_alphanumeric()));

    let journal = sim.journal();
    assert_eq!(journal.len(), 1);
    let e = &journal[0];
    assert_eq!(
        (e.mti, e.stan.as_deref()),
        (Mti::FinancialRequest, Some("000001"))
    );
    assert_eq!(e.response_code.as_deref(), Some("00"));
    assert_eq!(e.authorization_id.as_deref(), Some(auth));
    assert_eq!(
        (e.amount, e.delivery, e.pin),
        (Some(1500), Delivery::Answered, PinCheck::Absent)
    );
    assert_eq!(sim.counters().answered, 1);
    // Nothing the simulator shows holds the card number or a key.
    let shown = format!("{sim:?} {journal:?} {:?}", sim.counters());
    assert!(!shown.contains("4242424242424242"), "{shown}");
    assert!(!shown.contains("89ABCDEF"), "{shown}");
}

#[tokio::test]
async fn section_8_table_as_de_39() {
    let (_sim, mut client) = start().await;
    let cases = [
        ("4242424242424242", 1500, "00"),
        ("5555555555554444", 1500, "00"),
        ("378282246310005", 1500, "00"),
        ("6011111111111117", 1500, "00"), // any other Luhn-valid card
        ("4000000000000002", 1500, "05"),
        ("4000000000009995", 1500, "51"),
        ("4000000000000069", 1500, "54"),
        ("4242424242424242", 1591, "91"),
        ("378282246310005", 91, "91"),
        ("4242424242424242", 1590, "00"),
        // A card's own decline wins over the amount rule.
        ("4000000000000002", 1591, "05"),
        ("4000000000000069", 191, "54"),
        // Not a card number at all.
        ("4242424242424241", 1500, "14"),
    ];
    for (i, (pan, amount, want)) in cases.into_iter().enumerate() {
        let n = u32::try_from(i).unwrap() + 1;
        let answer = ask(&mut client, &purchase(n, pan, amount)).await;
        assert_eq!(code(&answer), want, "{pan} {amount}");
        assert_eq!(answer.get(De::Stan), Some(stan(n).to_string().as_str()));
        assert_eq!(
            answer.get(De::AuthorizationId).is_some(),
            want == "00",
            "DE 38 only on approvals"
        );
    }
}

#[tokio::test]
async fn processor_error_card_gets_a_bad_mac_and_time_out_card_no_answer() {
    let (sim, mut client) = start().await;
    client
        .send(&purchase(1, "4000000000000119", 1500))
        .await
        .unwrap();
    assert_eq!(client.recv(ANSWER).await.unwrap(), Some(Reply::BadMac));
    client
        .send(&purchase(2, "4000000000000259", 1500))
        .await
        .unwrap();
    silence(&mut client).await;
    let journal = sim.journal();
    assert_eq!(journal[0].delivery, Delivery::BadMac);
    assert_eq!(journal[0].response_code.as_deref(), Some("96"));
    assert_eq!(
        (journal[1].delivery, journal[1].response_code.as_deref()),
        (Delivery::Dropped, None)
    );
    // The link is still fine.
    assert_eq!(code(&ask(&mut client, &echo(3)).await), "00");
}

#[tokio::test]
async fn pin_1234_approves_and_anything_else_is_55() {
    let (sim, mut client) = start().await;
    let card = "4242424242424242";
    let cases = [
        (
            with_pin(purchase(1, card, 1500), TEST_PIN, card),
            "00",
            PinCheck::Correct,
        ),
        (
            with_pin(purchase(2, card, 1500), "4321", card),
            "55",
            PinCheck::Incorrect,
        ),
        (
            with_pin(purchase(3, card, 1500), "2234", card),
            "55",
            PinCheck::Incorrect,
        ),
        // A block bound to another card's PAN does not open for this one.
        (
            with_pin(purchase(4, card, 1500), TEST_PIN, "5555555555554444"),
            "55",
            PinCheck::Incorrect,
        ),
        // A card outside the table: no PVV to check against.
        (
            with_pin(
                purchase(5, "6011111111111117", 1500),
                TEST_PIN,
                "6011111111111117",
            ),
            "55",
            PinCheck::UnknownCard,
        ),
        // The right PIN on a declining card: the card's decline; the wrong PIN: 55 first.
        (
            with_pin(
                purchase(6, "4000000000009995", 1500),
                TEST_PIN,
                "4000000000009995",
            ),
            "51",
            PinCheck::Correct,
        ),
        (
            with_pin(
                purchase(7, "4000000000009995", 1500),
                "0000",
                "4000000000009995",
            ),
            "55",
            PinCheck::Incorrect,
        ),
        (
            with_pin(purchase(8, card, 1591), TEST_PIN, card),
            "91",
            PinCheck::Correct,
        ),
        // The card whose tries are exhausted: 75 with any PIN, approved without one.
        (
            with_pin(
                purchase(9, PIN_BLOCKED_PAN, 1500),
                TEST_PIN,
                PIN_BLOCKED_PAN,
            ),
            "75",
            PinCheck::Blocked,
        ),
        (purchase(10, PIN_BLOCKED_PAN, 1500), "00", PinCheck::Absent),
        (
            with_pin(
                purchase(11, "378282246310005", 1500),
                TEST_PIN,
                "378282246310005",
            ),
            "00",
            PinCheck::Correct,
        ),
    ];
    for (request, want, check) in &cases {
        let answer = ask(&mut client, request).await;
        let n = request.get(De::Stan).unwrap();
        assert_eq!(code(&answer), *want, "STAN {n}");
        assert_eq!(answer.get(De::PinBlock), None, "DE 52 is never echoed");
        let entry = sim
            .journal()
            .into_iter()
            .find(|e| e.stan.as_deref() == Some(n))
            .unwrap();
        assert_eq!(entry.pin, *check, "STAN {n}");
    }
    // Without a limit, wrong PINs never turn into 75 on a table card.
    for n in 20..25 {
        let answer = ask(
            &mut client,
            &with_pin(purchase(n, card, 1500), "9999", card),
        )
        .await;
        assert_eq!(code(&answer), "55");
    }
}

#[tokio::test]
async fn pin_try_limit_blocks_the_card_until_reset() {
    let config = Config {
        pin_try_limit: Some(3),
        ..Config::default()
    };
    let (sim, mut client) = start_with(config).await;
    let card = "5555555555554444";
    let wrong = |n| with_pin(purchase(n, card, 1500), "1111", card);
    let right = |n| with_pin(purchase(n, card, 1500), TEST_PIN, card);
    assert_eq!(code(&ask(&mut client, &wrong(1)).await), "55");
    // A correct PIN resets the count.
    assert_eq!(code(&ask(&mut client, &right(2)).await), "00");
    assert_eq!(code(&ask(&mut client, &wrong(3)).await), "55");
    assert_eq!(code(&ask(&mut client, &wrong(4)).await), "55");
    assert_eq!(code(&ask(&mut client, &wrong(5)).await), "75");
    assert_eq!(code(&ask(&mut client, &right(6)).await), "75");
    // Other cards are not affected, nor is this one without a PIN.
    let other = "4242424242424242";
    let answer = ask(
        &mut client,
        &with_pin(purchase(7, other, 1500), TEST_PIN, other),
    )
    .await;
    assert_eq!(code(&answer), "00");
    assert_eq!(
        code(&ask(&mut client, &purchase(8, card, 1500)).await),
        "00"
    );
    sim.reset_pin_tries();
    assert_eq!(code(&ask(&mut client, &right(9)).await), "00");
}

#[tokio::test]
async fn refund_is_approved_without_the_card_number() {
    let (_sim, mut client) = start().await;
    let answer = ask(&mut client, &refund(1, 700)).await;
    assert_eq!(code(&answer), "00");
    assert_eq!(answer.get(De::ProcessingCode), Some("200000"));
    assert_eq!(answer.get(De::Pan), None);
    assert!(answer.get(De::AuthorizationId).is_some());
    // An unknown processing code is an invalid transaction.
    let mut odd = purchase(2, "4242424242424242", 100);
    odd.set(De::ProcessingCode, "010000").unwrap();
    assert_eq!(code(&ask(&mut client, &odd).await), "12");
}

#[tokio::test]
async fn echo_test_is_answered_with_its_mac_in_de_128() {
    let (sim, mut client) = start().await;
    client.send(&echo(42)).await.unwrap();
    let bytes = client.recv_frame(ANSWER).await.unwrap().unwrap();
    // Bit 1 (secondary bitmap) and bit 7 (DE 7): the primary bitmap starts `82`.
    assert!(bytes.starts_with(b"081082"), "secondary bitmap announced");
    let protected = acqlink::MacProtected::decode(&bytes).unwrap();
    assert!(paycrypto::verify_retail_mac(
        &zak(),
        protected.mac_input(),
        &protected.mac().0
    ));
    let answer = protected.into_verified();
    assert_eq!(answer.mac_field(), 128);
    assert_eq!(answer.get(De::Stan), Some("000042"));
    assert_eq!(answer.get(De::TransmissionDateTime), Some(WHEN));
    assert_eq!(answer.get(De::NetworkCode), Some("301"));
    assert_eq!(code(&answer), "00");
    assert_eq!(sim.journal()[0].mti, Mti::NetworkRequest);
}

#[tokio::test]
async fn a_request_whose_mac_fails_is_counted_and_never_answered() {
    let (sim, mut client) = start().await;
    let request = purchase(1, "4242424242424242", 1500);
    let good = paycrypto::retail_mac(&zak(), request.encode_for_mac().mac_input());
    let mut bad = good;
    bad[7] ^= 1;
    client.send_with_mac(&request, Mac(bad)).await.unwrap();
    silence(&mut client).await;
    // MACed under another key: the same.
    let other =
        acqsim::keys::key_from_hex(acqsim::keys::TEST_PVK_HEX, acqsim::keys::KeyName::Pvk).unwrap();
    let wrong_key = paycrypto::retail_mac(&other, request.encode_for_mac().mac_input());
    client
        .send_with_mac(&request, Mac(wrong_key))
        .await
        .unwrap();
    silence(&mut client).await;
    // No MAC at all, and bytes that are no message.
    client.send_raw(&request.encode()).await.unwrap();
    client.send_raw(b"0200nonsense").await.unwrap();
    silence(&mut client).await;
    let c = sim.counters();
    assert_eq!(
        (c.received, c.mac_failures, c.malformed, c.answered),
        (4, 2, 2, 0)
    );
    assert!(
        sim.journal().is_empty(),
        "nothing of an unverified request is recorded"
    );
    // The connection survives them.
    assert_eq!(code(&ask(&mut client, &request).await), "00");
    assert_eq!(sim.counters().answered, 1);
}

#[tokio::test]
async fn format_errors_and_requests_that_cannot_be_matched() {
    let (sim, mut client) = start().await;
    // A purchase without the card number: format error.
    let mut no_pan = purchase(1, "4242424242424242", 1500);
    no_pan.remove(De::Pan);
    assert_eq!(code(&ask(&mut client, &no_pan).await), "30");
    // Without DE 41 (or DE 11) no answer could be matched to its request (12.3): none is sent.
    let mut no_terminal = purchase(2, "4242424242424242", 1500);
    no_terminal.remove(De::TerminalId);
    client.send(&no_terminal).await.unwrap();
    let mut no_stan = purchase(3, "4242424242424242", 1500);
    no_stan.remove(De::Stan);
    client.send(&no_stan).await.unwrap();
    silence(&mut client).await;
    let journal = sim.journal();
    assert_eq!(journal.len(), 3);
    assert!(
        journal[1..]
            .iter()
            .all(|e| e.delivery == Delivery::Unanswerable)
    );
    // Found again by its RRN, as the platform's charge names it.
    let by_rrn = sim.entries_for_rrn(&rrn(1));
    assert_eq!(by_rrn.len(), 1);
    assert_eq!(by_rrn[0].response_code.as_deref(), Some("30"));
}
