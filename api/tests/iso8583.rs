//! The `iso8583` processor end to end, against real parts: a terminal (`e2e::pos`, the
//! contract-only client) → the `api` binary → keyd (a real process on a throw-away SoftHSM
//! token holding the published test ZPK, PVK and ZAK) → `acqsim`, an acquirer host simulator
//! written from spec 12 that verifies every MAC and PIN itself, over TCP on an ephemeral port.
//! Section 8's outcomes, PINs, refunds, cancels, time-outs, bad MACs, and a reversal that
//! outlives the API process.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use acqlink::Mti;
use acqsim::{Delivery, Entry, Simulator};
use e2e::api::{Answer, Platform};
use e2e::pos::Terminal;
use serde_json::{Value, json};

const API: &str = env!("CARGO_BIN_EXE_api");

/// A runtime for the simulator's tasks while the test thread drives blocking HTTP.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The platform with its processor pointed at `sim` (time-out 1 s); `extra` lines go into
/// `[processor]`.
fn platform(sim: &Simulator, extra: &str) -> Platform {
    platform_at(
        "127.0.0.1",
        sim.addr().port(),
        &format!("timeout_ms = 1000\n{extra}"),
    )
}

/// The platform with its processor pointed at `host:port`, quick reversal repeats, and
/// `extra` lines in `[processor]`.
fn platform_at(host: &str, port: u16, extra: &str) -> Platform {
    Platform::start_with_processor(Path::new(API), "", &|zpk, _pvk, zak| {
        format!(
            "kind = \"iso8583\"\nhost = \"{host}\"\nport = {port}\nzak = \"{zak}\"\n\
             zpk = \"{zpk}\"\nreversal_retry_ms = 300\nreversal_retry_max_ms = 1000\n{extra}\n"
        )
    })
    .unwrap()
}

/// A merchant in EUR with one activated terminal: `(merchant id, terminal)`.
fn terminal(p: &Platform, device_id: &str) -> (String, Terminal) {
    p.activated_terminal(device_id).unwrap()
}

/// A charge body in EUR cents.
fn body(t: &Terminal, pan: &str, amount: u64, pin_block: Option<&str>) -> Value {
    let mut inner = json!({"amount": {"value": amount.to_string(), "currency": "EUR"},
                           "entry_mode": "chip", "card": t.card_blob(pan).unwrap()});
    if let Some(b) = pin_block {
        inner["pin_block"] = json!(b);
    }
    inner
}

/// A charge answered 200: the charge object.
fn charged(answer: (Answer, Option<Value>)) -> Value {
    let (a, v) = answer;
    assert_eq!(a.status, 200, "{}", a.json);
    v.unwrap()
}

/// A charge answered 502/`5020`: its id.
fn failed(answer: &(Answer, Option<Value>)) -> String {
    let a = &answer.0;
    assert_eq!((a.status, a.code()), (502, "5020"), "{}", a.json);
    a.json["error"]["details"]["charge_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn outcome(c: &Value) -> (&str, &str, &Value) {
    (
        c["status"].as_str().unwrap(),
        c["iso_response_code"].as_str().unwrap(),
        &c["decline_code"],
    )
}

fn get_charge(p: &Platform, id: &str) -> Value {
    p.ok("GET", &format!("/charges/{id}"), None).unwrap()
}

/// The simulator's requests with this RRN, as `(MTI, what became of the answer)`.
fn trail(sim: &Simulator, rrn: &str) -> Vec<(Mti, Delivery)> {
    sim.entries_for_rrn(rrn)
        .iter()
        .map(|e: &Entry| (e.mti, e.delivery))
        .collect()
}

/// Polls `f` every 50 ms for up to `secs` seconds.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// The simulator's latest `0200`.
fn last_financial(sim: &Simulator) -> Entry {
    sim.journal()
        .into_iter()
        .rev()
        .find(|e| e.mti == Mti::FinancialRequest)
        .unwrap()
}

/// Nothing the card or PIN could be read from reaches the API's log.
fn log_is_clean(p: &Platform, secrets: &[&str]) {
    let log = std::fs::read_to_string(p.api.log_path()).unwrap();
    for s in secrets {
        assert!(!log.contains(s), "the API log holds {s}");
    }
}

#[test]
fn section_8_outcomes_pins_refunds_and_cancels_over_the_link() {
    let rt = runtime();
    let sim = rt.block_on(Simulator::start_default()).unwrap();
    let p = platform(&sim, "echo_interval_secs = 2");
    let (mid, mut t) = terminal(&p, "POS-0000C001");
    let tid_digits = t.terminal_id().unwrap()["TID-".len()..].to_owned();
    let visa = "4242424242424242";

    // An approval: the processor is iso8583, its reference the 0200's RRN (DE 37), its
    // authorization code the acquirer's DE 38; the acquirer saw amount + tip and DE 41.
    let mut inner = body(&t, visa, 1500, None);
    inner["tip"] = json!({"value": "200", "currency": "EUR"});
    inner["emv_data"] = json!("9f2608a1b2c3d4e5f60708");
    let c = charged(t.charge_with(&inner, None).unwrap());
    assert_eq!(outcome(&c), ("approved", "00", &Value::Null));
    let first_id = c["charge_id"].as_str().unwrap().to_owned();
    assert_eq!(c["processor"]["name"], "iso8583");
    let rrn = c["processor"]["reference"].as_str().unwrap().to_owned();
    assert_eq!(rrn.len(), 12, "{rrn}");
    let code = c["authorization_code"].as_str().unwrap();
    assert_eq!(code.len(), 6);
    let entries = sim.entries_for_rrn(&rrn);
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(
        (e.mti, e.delivery, e.amount),
        (Mti::FinancialRequest, Delivery::Answered, Some(1700))
    );
    assert_eq!(
        e.terminal_id.as_deref(),
        Some(format!("VP{tid_digits}").as_str())
    );
    assert_eq!(e.processing_code.as_deref(), Some("000000"));
    assert_eq!(e.authorization_id.as_deref(), Some(code));
    assert_eq!(
        e.stan.as_deref(),
        Some(&rrn[6..]),
        "the RRN ends with the STAN"
    );

    // Section 8's declines, each with its word.
    for (pan, amount, iso, word) in [
        ("4000000000000002", 1500, "05", "do_not_honor"),
        ("4000000000009995", 1500, "51", "insufficient_funds"),
        ("4000000000000069", 1500, "54", "expired_card"),
        (visa, 1591, "91", "issuer_unavailable"),
    ] {
        let c = charged(t.charge_with(&body(&t, pan, amount, None), None).unwrap());
        assert_eq!(
            outcome(&c),
            ("declined", iso, &json!(word)),
            "{pan} {amount}"
        );
        assert_eq!(c["authorization_code"], Value::Null);
    }

    // PINs: the terminal's format 4 block, translated by keyd to the ZPK, checked by the
    // acquirer against its PVV: 1234 approves, anything else is 55.
    let right = t.pin_block("1234", visa).unwrap();
    let c = charged(
        t.charge_with(&body(&t, visa, 1500, Some(&right)), None)
            .unwrap(),
    );
    assert_eq!(outcome(&c).0, "approved");
    let entry = sim.entries_for_rrn(c["processor"]["reference"].as_str().unwrap());
    assert_eq!(entry[0].pin, acqsim::PinCheck::Correct);
    let wrong = t.pin_block("4321", visa).unwrap();
    let c = charged(
        t.charge_with(&body(&t, visa, 1500, Some(&wrong)), None)
            .unwrap(),
    );
    assert_eq!(outcome(&c), ("declined", "55", &json!("incorrect_pin")));

    // EMV data longer than DE 55 carries is refused before anything is recorded.
    let before = p.charges(&mid).unwrap().len();
    let mut long = body(&t, visa, 1500, None);
    long["emv_data"] = json!("AB".repeat(256));
    let (a, _) = t.charge_with(&long, None).unwrap();
    assert_eq!((a.status, a.code()), (400, "4000"), "{}", a.json);
    assert_eq!(a.json["error"]["details"]["fields"][0]["field"], "emv_data");
    assert_eq!(p.charges(&mid).unwrap().len(), before);

    // A partial refund: a 0200 with DE 3 200000 for the refunded amount.
    let (a, refund) = t.refund(&first_id, Some((500, "EUR")), None).unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    let refund = refund.unwrap();
    assert_eq!(refund["charge_status"], "partially_refunded");
    let refund_entry = last_financial(&sim);
    assert_eq!(refund_entry.processing_code.as_deref(), Some("200000"));
    assert_eq!(refund_entry.amount, Some(500));
    assert_eq!(refund_entry.delivery, Delivery::Answered);
    // It carries the card's expiry (DE 14) as the purchase did, opened from the sealed card.
    assert_eq!(e.expiry.as_deref(), Some("3012"));
    assert_eq!(refund_entry.expiry.as_deref(), Some("3012"));

    // A cancel: 0400 naming the purchase; cancelled once the 0410 is in.
    let c = charged(t.charge(visa, 2500, "EUR", None).unwrap());
    let rrn2 = c["processor"]["reference"].as_str().unwrap().to_owned();
    let (a, cancelled) = t.cancel(c["charge_id"].as_str().unwrap()).unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(cancelled.unwrap()["status"], "cancelled");
    assert!(sim.is_reversed(&rrn2));
    assert_eq!(
        trail(&sim, &rrn2),
        [
            (Mti::FinancialRequest, Delivery::Answered),
            (Mti::ReversalRequest, Delivery::Answered)
        ]
    );
    let reversal = sim
        .reversals()
        .into_iter()
        .find(|r| r.rrn.as_deref() == Some(rrn2.as_str()))
        .unwrap();
    assert!(reversal.original_seen && reversal.original_mti == "0200");

    // A backoffice charge goes as terminal VP000000.
    let bo = p
        .ok(
            "POST",
            "/charges",
            Some(
                &json!({"merchant_id": mid, "amount": {"value": "1200", "currency": "EUR"},
                         "card": {"number": visa, "exp_month": 12, "exp_year": 2030,
                                  "cvc": "123"}}),
            ),
        )
        .unwrap();
    assert_eq!(bo["status"], "approved", "{bo}");
    let e = &sim.entries_for_rrn(bo["processor"]["reference"].as_str().unwrap())[0];
    assert_eq!(e.terminal_id.as_deref(), Some("VP000000"));

    // An idle link gets an echo test (every 2 s here).
    assert!(rt.block_on(sim.wait_until(Duration::from_secs(10), |s| {
        s.journal()
            .iter()
            .any(|e| e.mti == Mti::NetworkRequest && e.delivery == Delivery::Answered)
    })));
    assert_eq!(
        sim.counters().mac_failures,
        0,
        "every message the API sent verified"
    );
    log_is_clean(&p, &[visa, &right, &wrong]);
    card_data_is_stored_only_sealed(&p, &[visa, "4000000000000002", "4000000000009995"]);
}

/// What the API keeps for later acquirer messages (`processor_data` of charges, `original` of
/// pending reversals) holds the PAN and the expiry only inside keyd's sealed blob.
fn card_data_is_stored_only_sealed(p: &Platform, pans: &[&str]) {
    let db = rusqlite::Connection::open_with_flags(
        p.api.dir().join("api.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut kept: Vec<String> = Vec::new();
    for sql in [
        "SELECT processor_data FROM charges WHERE processor_data IS NOT NULL",
        "SELECT original FROM reversals",
    ] {
        let mut q = db.prepare(sql).unwrap();
        kept.extend(
            q.query_map([], |row| row.get::<_, String>(0))
                .unwrap()
                .map(Result::unwrap),
        );
    }
    assert!(kept.len() >= 9, "{} records", kept.len());
    for text in kept {
        let data: Value = serde_json::from_str(&text).unwrap();
        let fields = data.as_object().unwrap();
        let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "amount",
                "currency",
                "mid",
                "mti",
                "processing_code",
                "rrn",
                "sealed_pan",
                "stan",
                "terminal",
                "transmission"
            ],
            "no expiry beside the sealed card"
        );
        for (name, value) in fields {
            let value = value.to_string();
            if name == "sealed_pan" {
                let sealed = hex::decode(value.trim_matches('"')).unwrap();
                assert!(sealed.len() >= 80, "IV, ciphertext, tag");
                for clear in pans.iter().map(|p| p.as_bytes()).chain([&b"=3012"[..]]) {
                    assert!(!sealed.windows(clear.len()).any(|w| w == clear));
                }
            } else {
                assert!(pans.iter().all(|pan| !value.contains(pan)), "{name}");
            }
        }
    }
}

#[test]
fn time_outs_and_bad_macs_are_reversed_until_acknowledged_across_a_restart() {
    let rt = runtime();
    let sim = rt.block_on(Simulator::start_default()).unwrap();
    let mut p = platform(&sim, "echo_interval_secs = 3600");
    let (mid, mut t) = terminal(&p, "POS-0000C002");
    let visa = "4242424242424242";
    let reference = |id: &str| -> String {
        let c = get_charge(&p, id);
        c["processor"]["reference"].as_str().unwrap().to_owned()
    };

    // No 0210 (the 0200, the 0400 and the first 0401 go unanswered): the charge fails with
    // 502/5020, the reversal is sent at once and repeated until the acquirer answers one.
    sim.drop_next(3);
    let id = failed(&t.charge(visa, 1500, "EUR", None).unwrap());
    assert_eq!(get_charge(&p, &id)["status"], "failed");
    let rrn = reference(&id);
    assert!(
        eventually(10, || trail(&sim, &rrn).len() == 4),
        "{:?}",
        trail(&sim, &rrn)
    );
    assert_eq!(
        trail(&sim, &rrn),
        [
            (Mti::FinancialRequest, Delivery::Dropped),
            (Mti::ReversalRequest, Delivery::Dropped),
            (Mti::ReversalRepeat, Delivery::Dropped),
            (Mti::ReversalRepeat, Delivery::Answered),
        ]
    );
    assert!(sim.is_reversed(&rrn));
    // Acknowledged: no more repeats.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(trail(&sim, &rrn).len(), 4);

    // Section 8's time-out card (never answered) and processor-error card (answered with a
    // MAC that does not verify: no answer) fail the same way and are reversed.
    for pan in ["4000000000000259", "4000000000000119"] {
        let id = failed(&t.charge(pan, 1500, "EUR", None).unwrap());
        let rrn = reference(&id);
        assert!(eventually(5, || sim.is_reversed(&rrn)), "{pan}");
    }
    // A bad MAC on an answer that approves: treated as no answer all the same.
    sim.bad_mac_next(1);
    let id = failed(&t.charge(visa, 1500, "EUR", None).unwrap());
    let rrn = reference(&id);
    assert!(eventually(5, || sim.is_reversed(&rrn)));
    assert_eq!(
        trail(&sim, &rrn)[0],
        (Mti::FinancialRequest, Delivery::BadMac)
    );
    assert!(sim.counters().bad_mac >= 2);

    // A cancel whose 0410 does not come in time: 502, the charge stays approved; the
    // reversal goes on and its late 0410 cancels the charge.
    let c = charged(t.charge(visa, 3000, "EUR", None).unwrap());
    let id = c["charge_id"].as_str().unwrap().to_owned();
    // The 0400 and the first 0401 go unanswered; the cancel gives up after the time-out.
    sim.drop_next(2);
    let (a, _) = t.cancel(&id).unwrap();
    assert_eq!((a.status, a.code()), (502, "5020"), "{}", a.json);
    assert_eq!(get_charge(&p, &id)["status"], "approved");
    assert!(eventually(10, || get_charge(&p, &id)["status"] == "cancelled"));
    let rrn = reference(&id);
    assert_eq!(
        trail(&sim, &rrn)
            .iter()
            .map(|(m, _)| *m)
            .collect::<Vec<_>>(),
        [
            Mti::FinancialRequest,
            Mti::ReversalRequest,
            Mti::ReversalRepeat,
            Mti::ReversalRepeat
        ]
    );
    // Cancelling again answers the cancelled charge without another reversal.
    let (a, again) = t.cancel(&id).unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(again.unwrap()["status"], "cancelled");
    assert_eq!(trail(&sim, &rrn).len(), 4);

    // A reversal outlives the API: nothing is answered, the API is killed (SIGKILL) with the
    // reversal pending, the acquirer comes back, and the next start sends it again until the
    // 0410 arrives.
    sim.set_drop_fraction(1.0);
    let id = failed(&t.charge(visa, 4200, "EUR", None).unwrap());
    let rrn = reference(&id);
    assert!(
        eventually(5, || trail(&sim, &rrn).len() >= 3),
        "{:?}",
        trail(&sim, &rrn)
    );
    p.api.kill();
    let seen = trail(&sim, &rrn).len();
    sim.clear_faults();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        trail(&sim, &rrn).len(),
        seen,
        "nothing is sent while the API is down"
    );
    p.api.restart().unwrap();
    assert!(eventually(15, || trail(&sim, &rrn).last().is_some_and(
        |(m, d)| *m == Mti::ReversalRepeat && *d == Delivery::Answered
    )));
    let last = sim.entries_for_rrn(&rrn).pop().unwrap();
    let first = sim.entries_for_rrn(&rrn).remove(1);
    assert_ne!(
        last.connection, first.connection,
        "sent again on the new start's connection"
    );
    assert_eq!(last.stan, first.stan, "a repeat keeps the reversal's STAN");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        trail(&sim, &rrn).last().unwrap(),
        &(Mti::ReversalRepeat, Delivery::Answered),
        "acknowledged: no more repeats"
    );
    assert_eq!(get_charge(&p, &id)["status"], "failed");
    // The link works on after all that.
    let c = charged(t.charge(visa, 1500, "EUR", None).unwrap());
    assert_eq!(c["status"], "approved");
    assert_eq!(p.charges(&mid).unwrap().len(), 7);
    log_is_clean(&p, &[visa, "4000000000000259", "4000000000000119"]);
}

#[test]
fn a_settlement_leaves_a_charge_whose_cancel_awaits_its_0410() {
    let rt = runtime();
    let sim = rt.block_on(Simulator::start_default()).unwrap();
    let p = platform(&sim, "echo_interval_secs = 3600");
    let (mid, mut t) = terminal(&p, "POS-0000C004");
    let visa = "4242424242424242";
    let settle = format!("/merchants/{mid}/settlements");
    let kept = charged(t.charge(visa, 1000, "EUR", None).unwrap());
    let cancelling = charged(t.charge(visa, 2500, "EUR", None).unwrap());
    let id = cancelling["charge_id"].as_str().unwrap().to_owned();

    // The acquirer answers nothing: the cancel gives up with 502 and the charge stays
    // approved while its reversal is repeated.
    sim.set_drop_fraction(1.0);
    let (a, _) = t.cancel(&id).unwrap();
    assert_eq!((a.status, a.code()), (502, "5020"), "{}", a.json);
    assert_eq!(get_charge(&p, &id)["status"], "approved");

    // The batch settles the other charge and leaves this one.
    let batch = p.ok("POST", &settle, None).unwrap();
    assert_eq!(batch["count"], 1, "{batch}");
    assert_eq!(batch["total"]["value"], "1000", "{batch}");
    let c = get_charge(&p, &id);
    assert_eq!(
        (c["status"].as_str(), &c["settled_at"]),
        (Some("approved"), &Value::Null)
    );
    assert_eq!(
        get_charge(&p, kept["charge_id"].as_str().unwrap())["status"],
        "settled"
    );

    // The acquirer comes back: the repeated reversal is acknowledged, the charge is
    // cancelled, and the next batch has nothing to settle.
    sim.clear_faults();
    assert!(eventually(10, || get_charge(&p, &id)["status"] == "cancelled"));
    assert!(sim.is_reversed(c["processor"]["reference"].as_str().unwrap()));
    let batch = p.ok("POST", &settle, None).unwrap();
    assert_eq!(batch["count"], 0, "{batch}");
    assert_eq!(get_charge(&p, &id)["settled_at"], Value::Null);
    log_is_clean(&p, &[visa]);
}

#[test]
fn a_charge_in_flight_when_the_api_dies_is_reversed_by_the_next_start() {
    let rt = runtime();
    let sim = rt.block_on(Simulator::start_default()).unwrap();
    let mut p = platform_at(
        "127.0.0.1",
        sim.addr().port(),
        "timeout_ms = 5000\necho_interval_secs = 3600",
    );
    let (mid, mut t) = terminal(&p, "POS-0000C003");
    // The acquirer decides at once but answers late; the API dies while it waits, leaving
    // the charge pending with what its reversal needs.
    sim.set_latency(Duration::from_secs(30));
    let request = std::thread::spawn(move || {
        let _ = t.charge("4242424242424242", 1500, "EUR", None);
    });
    assert!(rt.block_on(sim.wait_until(Duration::from_secs(10), |s| {
        s.journal().iter().any(|e| e.mti == Mti::FinancialRequest)
    })));
    p.api.kill();
    request.join().unwrap();
    let purchase = last_financial(&sim);
    assert_eq!(
        purchase.response_code.as_deref(),
        Some("00"),
        "the acquirer approved it"
    );
    let rrn = purchase.rrn.unwrap();
    assert!(!sim.is_reversed(&rrn));
    sim.set_latency(Duration::ZERO);
    p.api.restart().unwrap();
    // Recovery voids the lost charge: a reversal from what was stored with it, then failed.
    assert!(eventually(15, || sim.is_reversed(&rrn)));
    let charges = p.charges(&mid).unwrap();
    assert_eq!(charges.len(), 1);
    assert!(eventually(10, || get_charge(
        &p,
        charges[0]["charge_id"].as_str().unwrap()
    )["status"]
        == "failed"));
    assert_eq!(charges[0]["processor"]["reference"], rrn.as_str());
}

/// A TLS front for the simulator, as an acquirer's endpoint would be: the test leaf
/// certificate for `localhost` (signed by `tests/data/ca-cert.pem`), plain TCP behind it.
async fn tls_front(behind: std::net::SocketAddr) -> std::net::SocketAddr {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let certs = CertificateDer::pem_file_iter(data.join("test-cert.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(data.join("test-key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(behind).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

#[test]
fn the_link_runs_over_tls_to_a_host_that_is_not_trusted_in_clear() {
    let rt = runtime();
    let sim = rt.block_on(Simulator::start_default()).unwrap();
    let front = rt.block_on(tls_front(sim.addr()));
    let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ca-cert.pem");
    let p = platform_at(
        "localhost",
        front.port(),
        &format!("timeout_ms = 2000\nca_file = \"{}\"", ca.display()),
    );
    let (_, mut t) = terminal(&p, "POS-0000C004");
    let c = charged(t.charge("4242424242424242", 1500, "EUR", None).unwrap());
    assert_eq!(c["status"], "approved");
    let rrn = c["processor"]["reference"].as_str().unwrap();
    assert_eq!(
        trail(&sim, rrn),
        [(Mti::FinancialRequest, Delivery::Answered)]
    );
}
