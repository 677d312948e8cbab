//! A terminal's whole life over real HTTP, with a client written from the contract alone
//! (`e2e::pos`): bootstrap → pairing → claim → attest → keys (unwrapped from the ZMK) → config →
//! terminal parameters → activate → charges of every simulator outcome → refunds → cancels →
//! settlement, and the attacks that must fail with the right code and change nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::ops::{Deref, DerefMut};
use std::path::Path;

use e2e::api::Answer;
use e2e::pos::{Overrides, Terminal};
use serde_json::{Value, json};

/// The shared harness, with calls that fail loudly and the merchant and terminal set-up these
/// tests repeat.
struct Platform(e2e::api::Platform);

impl Deref for Platform {
    type Target = e2e::api::Platform;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Platform {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

fn platform() -> Platform {
    // A short processor time-out, so the time-out card answers quickly.
    let auth = "\n[processor]\ntimeout_ms = 300\n";
    Platform(e2e::api::Platform::start(Path::new(env!("CARGO_BIN_EXE_api")), auth).unwrap())
}

impl Platform {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        self.0.call(method, path, body).unwrap()
    }

    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.0.ok(method, path, body).unwrap()
    }

    /// A merchant (EUR, 1.5 % + 0.20 fee), a location, and `n` registered terminals.
    fn merchant(&self, name: &str) -> (String, String) {
        let r = self.ok(
            "POST",
            "/resellers",
            Some(&json!({"name": format!("R-{name}")})),
        );
        let rid = r["id"].as_str().unwrap();
        let t = self.ok(
            "POST",
            &format!("/resellers/{rid}/fee-templates"),
            Some(&json!({"name": "std", "percent_bps": 150, "fixed": {"value": "20", "currency": "EUR"}})),
        );
        let m = self.ok(
            "POST",
            "/merchants",
            Some(
                &json!({"reseller_id": rid, "name": name, "mcc": "5812", "country": "DE",
                         "currency": "EUR", "fee_template_id": t["id"]}),
            ),
        );
        let mid = m["id"].as_str().unwrap().to_owned();
        let l = self.ok(
            "POST",
            &format!("/merchants/{mid}/locations"),
            Some(&json!({"name": "Front", "address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}})),
        );
        (mid, l["id"].as_str().unwrap().to_owned())
    }

    fn register(&self, mid: &str, device_id: &str, location: Option<&str>) -> Terminal {
        let d = self.ok(
            "POST",
            &format!("/merchants/{mid}/devices"),
            Some(&json!({"device_id": device_id, "model": "A920", "serial": "SN", "location_id": location})),
        );
        let key = &d["identity_key"];
        Terminal::new(
            self.http,
            device_id,
            key["key_id"].as_str().unwrap(),
            key["secret"].as_str().unwrap(),
            &e2e::hex(e2e::ZMK_HEX),
        )
        .unwrap()
        .with_version("1.4.0")
    }

    /// Pairing, claim, attest, keys, activate.
    fn activate(&self, t: &mut Terminal) {
        assert_eq!(t.bootstrap().unwrap().status, 200);
        let code = t.pairing_code().unwrap();
        assert_eq!(code.status, 200, "{}", code.json);
        let claim = self.call(
            "POST",
            "/pos/claim",
            Some(&json!({"pairing_code": code.json["pairing_code"], "device_id": t.device_id()})),
        );
        assert_eq!(claim.status, 200, "{}", claim.json);
        t.set_terminal_id(claim.json["terminal_id"].as_str().unwrap());
        assert_eq!(t.attest().unwrap().status, 200);
        let keys = t.keys().unwrap();
        assert_eq!(keys.status, 200, "{}", keys.json);
        let (a, v) = t.activate().unwrap();
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(v.unwrap()["status"], "activated");
    }
}

#[test]
fn a_terminal_from_registration_to_settlement() {
    let p = platform();
    let (mid, lid) = p.merchant("Cafe");
    let mut t = p.register(&mid, "POS-8F3A2C91", Some(&lid));

    // Activation calls before claim.
    let a = t.bootstrap().unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    assert!(a.json["server_time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(a.json["min_supported_version"], "1.0.0");
    let s = t.status().unwrap();
    assert_eq!(
        s.json,
        json!({"device_status": "inactive", "is_claimed": false, "pairing_code_status": "none"})
    );
    // POS headers come first; an old app is refused everywhere but bootstrap.
    let mut old = t.clone().with_version("0.9.9");
    assert_eq!(old.bootstrap().unwrap().status, 200);
    assert_eq!(old.status().unwrap().code(), "4003");
    let no_headers = p
        .http
        .raw(
            "GET",
            "/pos/status",
            &[("X-Device-Id".into(), "POS-8F3A2C91".into())],
            b"",
        )
        .unwrap();
    assert_eq!(no_headers.code(), "4001");
    let mut ghost = p.register(&mid, "POS-00000099", None);
    p.ok(
        "POST",
        &format!("/merchants/{mid}/devices/POS-00000099/disable"),
        None,
    );
    assert_eq!(ghost.bootstrap().unwrap().code(), "4092");
    assert_eq!(ghost.status().unwrap().json["device_status"], "disabled");

    // Pairing: a new code supersedes the pending one.
    let first = t.pairing_code().unwrap();
    assert_eq!(first.status, 200, "{}", first.json);
    assert_eq!(first.json["expires_in_sec"], 300);
    let code1 = first.json["pairing_code"].as_str().unwrap().to_owned();
    assert!(
        code1.len() == 6
            && code1
                .bytes()
                .all(|c| b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789".contains(&c))
    );
    assert_eq!(t.status().unwrap().json["pairing_code_status"], "pending");
    let code2 = t.pairing_code().unwrap().json["pairing_code"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(code1, code2);
    let a = p.call("POST", "/pos/claim", Some(&json!({"pairing_code": code1})));
    assert_eq!((a.status, a.code()), (400, "4006"));
    let a = p.call(
        "POST",
        "/pos/claim",
        Some(&json!({"pairing_code": "ZZZZZZ"})),
    );
    assert_eq!((a.status, a.code()), (404, "4040"));
    let a = p.call(
        "POST",
        "/pos/claim",
        Some(&json!({"pairing_code": code2, "device_id": "POS-00000001"})),
    );
    assert_eq!((a.status, a.code()), (400, "4000"));
    // A user of another merchant cannot see the device.
    let (other_mid, _) = p.merchant("Other");
    p.ok(
        "POST",
        &format!("/merchants/{other_mid}/users"),
        Some(
            &json!({"email": "x@example.com", "role": "merchant_user", "idp_subject": "stranger"}),
        ),
    );
    let stranger = p.api.token("stranger", "merchant_user").unwrap();
    p.http
        .call(
            "POST",
            "/session/initiate",
            Some(&stranger),
            Some(&json!({"host": "localhost"})),
        )
        .unwrap();
    let a = p
        .http
        .call(
            "POST",
            "/pos/claim",
            Some(&stranger),
            Some(&json!({"pairing_code": code2})),
        )
        .unwrap();
    assert_eq!((a.status, a.code()), (404, "4040"));
    // The merchant's own user claims it.
    p.ok(
        "POST",
        &format!("/merchants/{mid}/users"),
        Some(&json!({"email": "c@example.com", "role": "merchant_user", "idp_subject": "cashier"})),
    );
    let cashier = p.api.token("cashier", "merchant_user").unwrap();
    p.http
        .call(
            "POST",
            "/session/initiate",
            Some(&cashier),
            Some(&json!({"host": "localhost"})),
        )
        .unwrap();
    let claim = p
        .http
        .call(
            "POST",
            "/pos/claim",
            Some(&cashier),
            Some(&json!({"pairing_code": code2, "device_id": "POS-8F3A2C91", "location_id": lid})),
        )
        .unwrap();
    assert_eq!(claim.status, 200, "{}", claim.json);
    assert_eq!(claim.json["status"], "claimed");
    let tid = claim.json["terminal_id"].as_str().unwrap().to_owned();
    assert!(tid.starts_with("TID-") && tid.len() == 10);
    t.set_terminal_id(&tid);
    let a = p
        .http
        .call(
            "POST",
            "/pos/claim",
            Some(&cashier),
            Some(&json!({"pairing_code": code2})),
        )
        .unwrap();
    assert_eq!((a.status, a.code()), (409, "4091"));
    assert_eq!(
        t.status().unwrap().json,
        json!({"device_status": "claimed", "is_claimed": true, "pairing_code_status": "used"})
    );
    assert_eq!(t.pairing_code().unwrap().code(), "4092");

    // Attestation, keys (the client unwraps every block from the ZMK and checks every KCV).
    let a = t.attest().unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["expires_in_sec"], 300);
    let (c, _) = t.config().unwrap();
    assert_eq!(
        (c.status, c.code()),
        (409, "4092"),
        "config needs a key set"
    );
    let keys = t.keys().unwrap();
    assert_eq!(keys.status, 200, "{}", keys.json);
    let set = keys.json["key_set"]["key_set_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = t.keys().unwrap();
    assert_eq!(again.json["key_set"]["key_set_id"], set.as_str());
    for kind in ["tmk", "kek", "msk", "tpk", "tdk", "mac"] {
        assert_eq!(
            again.json["keys"][kind]["key_id"],
            keys.json["keys"][kind]["key_id"]
        );
    }
    // Charging before activation: the device state, after the signature.
    let (a, _) = t.charge("4242424242424242", 1500, "EUR", None).unwrap();
    assert_eq!((a.status, a.code()), (409, "4092"), "{}", a.json);

    // Config and terminal parameters.
    let (c, config) = t.config().unwrap();
    assert_eq!(c.status, 200, "{}", c.json);
    let config = config.unwrap();
    assert_eq!(config["terminal"]["terminal_id"], tid.as_str());
    assert_eq!(config["merchant"]["merchant_id"], mid.as_str());
    assert_eq!(config["location"]["location_id"], lid.as_str());
    assert_eq!(config["merchant"]["currency"], "EUR");
    let (tp, params) = t.terminal_parameters().unwrap();
    assert_eq!(tp.status, 200, "{}", tp.json);
    assert_eq!(tp.json["format"], "TR31-DATA");
    let params = params.unwrap();
    for k in ["acquirers", "ca_public_keys", "emv_kernels", "contactless"] {
        assert!(!params[k].is_null(), "{k}");
    }
    // Overrides merge (merchant then device), and a large result arrives chunked.
    p.ok(
        "PUT",
        &format!("/merchants/{mid}/terminal-parameters"),
        Some(&json!({"contactless": {"limit": "2500"}, "receipt": {"email": true}})),
    );
    let noise: Vec<String> = (0u64..400)
        .map(|i| format!("{:016x}", (i).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
        .collect();
    p.ok(
        "PUT",
        &format!("/merchants/{mid}/devices/POS-8F3A2C91/terminal-parameters"),
        Some(&json!({"contactless": {"cvm_limit": "1000"}, "noise": noise})),
    );
    let (tp, params) = t.terminal_parameters().unwrap();
    assert_eq!(tp.json["format"], "TR31-DATA-CHUNKED", "{}", tp.json);
    let params = params.unwrap();
    assert_eq!(
        params["contactless"],
        json!({"enabled": true, "limit": "2500", "cvm_limit": "1000"})
    );
    assert_eq!(params["receipt"], json!({"print": true, "email": true}));
    assert_eq!(params["noise"].as_array().unwrap().len(), 400);

    // Activation: every flag must be true.
    let (a, _) = t
        .activate_with(&json!({"emv_ready": true, "keys_installed": "yes", "network_ok": true}))
        .unwrap();
    assert_eq!((a.status, a.code()), (400, "4007"));
    let (a, v) = t.activate().unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    let v = v.unwrap();
    assert_eq!(v["terminal_id"], tid.as_str());
    let (_, again) = t.activate().unwrap();
    assert_eq!(again.unwrap()["activated_at"], v["activated_at"]);

    // Charges: every simulator outcome.
    let (a, ok) = t
        .charge("4242424242424242", 1500, "EUR", Some("order-42"))
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    let ok = ok.unwrap();
    assert_eq!(ok["status"], "approved");
    assert_eq!(ok["iso_response_code"], "00");
    assert_eq!(
        ok["card"],
        json!({"brand": "visa", "bin": "424242", "last4": "4242", "entry_mode": "chip"})
    );
    assert_eq!(ok["fee"], json!({"value": "43", "currency": "EUR"}));
    assert_eq!(ok["terminal_id"], tid.as_str());
    assert_eq!(ok["location_id"], lid.as_str());
    assert_eq!(ok["reference"], "order-42");
    assert_eq!(ok["authorization_code"].as_str().unwrap().len(), 6);
    assert!(ok["charge_id"].as_str().unwrap().starts_with("ch_"));
    for (pan, iso, word) in [
        ("4000000000000002", "05", "do_not_honor"),
        ("4000000000009995", "51", "insufficient_funds"),
        ("4000000000000069", "54", "expired_card"),
    ] {
        let (a, v) = t.charge(pan, 1000, "EUR", None).unwrap();
        assert_eq!(a.status, 200, "{}", a.json);
        let v = v.unwrap();
        assert_eq!(
            (
                v["status"].as_str(),
                v["iso_response_code"].as_str(),
                v["decline_code"].as_str()
            ),
            (Some("declined"), Some(iso), Some(word))
        );
    }
    let (_, v) = t.charge("5555555555554444", 1591, "EUR", None).unwrap();
    let v = v.unwrap();
    assert_eq!(
        (
            v["status"].as_str(),
            v["decline_code"].as_str(),
            v["card"]["brand"].as_str()
        ),
        (
            Some("declined"),
            Some("issuer_unavailable"),
            Some("mastercard")
        )
    );
    let (_, v) = t.charge("378282246310005", 990, "EUR", None).unwrap();
    assert_eq!(v.unwrap()["card"]["brand"], "amex");
    let (a, _) = t.charge("4000000000000119", 1000, "EUR", None).unwrap();
    assert_eq!((a.status, a.code()), (502, "5020"));
    let failed = a.json["error"]["details"]["charge_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        p.ok("GET", &format!("/charges/{failed}"), None)["status"],
        "failed"
    );
    let started = std::time::Instant::now();
    let (a, _) = t.charge("4000000000000259", 1000, "EUR", None).unwrap();
    assert_eq!((a.status, a.code()), (502, "5020"));
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    let timed_out = a.json["error"]["details"]["charge_id"].as_str().unwrap();
    assert_eq!(
        p.ok("GET", &format!("/charges/{timed_out}"), None)["status"],
        "failed"
    );
    let (a, _) = t.charge("4242424242424241", 1000, "EUR", None).unwrap();
    assert_eq!((a.status, a.code()), (400, "4000"));
    assert_eq!(a.json["error"]["details"]["fields"][0]["field"], "card.pan");
    let mut inner = json!({"amount": {"value": "100", "currency": "EUR"}, "entry_mode": "chip",
                           "card": {"data": "00".repeat(32), "iv": "00".repeat(16)}});
    let (a, _) = t.charge_with(&inner, None).unwrap();
    assert_eq!(
        a.json["error"]["details"]["fields"][0]["field"],
        "card.data"
    );
    inner["card"] = t.card_blob("4242424242424242").unwrap();
    inner["amount"]["value"] = json!("0");
    let (a, _) = t.charge_with(&inner, None).unwrap();
    assert_eq!(
        a.json["error"]["details"]["fields"][0]["field"],
        "amount.value"
    );

    // Refunds: partial, partial, too much, the rest; then nothing left.
    let id = ok["charge_id"].as_str().unwrap().to_owned();
    let (a, r) = t
        .refund(&id, Some((500, "EUR")), Some("requested_by_customer"))
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    let r = r.unwrap();
    assert_eq!(
        (r["status"].as_str(), r["charge_status"].as_str()),
        (Some("succeeded"), Some("partially_refunded"))
    );
    let (a, _) = t.refund(&id, Some((1001, "EUR")), None).unwrap();
    assert_eq!((a.status, a.code()), (422, "4221"));
    let (a, _) = t.refund(&id, Some((100, "USD")), None).unwrap();
    assert_eq!((a.status, a.code()), (400, "4000"));
    let (a, _) = t.cancel(&id).unwrap();
    assert_eq!(
        (a.status, a.code()),
        (409, "4095"),
        "refunded in part: refund instead"
    );
    let (_, r) = t.refund(&id, Some((1000, "EUR")), None).unwrap();
    assert_eq!(r.unwrap()["charge_status"], "refunded");
    let (a, _) = t.refund(&id, Some((1, "EUR")), None).unwrap();
    assert_eq!((a.status, a.code()), (409, "4094"));
    let charge = p.ok("GET", &format!("/charges/{id}"), None);
    assert_eq!(charge["amount_refunded"]["value"], "1500");
    assert_eq!(charge["refunds"].as_array().unwrap().len(), 2);

    // Cancel / reverse: approved → cancelled, again answered unchanged; declined → 4094.
    let (_, c) = t.charge("4242424242424242", 700, "EUR", None).unwrap();
    let cid = c.unwrap()["charge_id"].as_str().unwrap().to_owned();
    let (a, v) = t.reverse(&cid).unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(v.unwrap()["status"], "cancelled");
    let (_, v) = t.cancel(&cid).unwrap();
    assert_eq!(v.unwrap()["status"], "cancelled");
    let (_, d) = t.charge("4000000000000002", 700, "EUR", None).unwrap();
    let did = d.unwrap()["charge_id"].as_str().unwrap().to_owned();
    assert_eq!(t.cancel(&did).unwrap().0.code(), "4094");
    assert_eq!(
        t.cancel("ch_doesnotexist0000000000").unwrap().0.code(),
        "4040"
    );

    // Settlement closes the batch; a settled charge can be refunded but not voided.
    let (_, s1) = t.charge("4242424242424242", 2000, "EUR", None).unwrap();
    let sid = s1.unwrap()["charge_id"].as_str().unwrap().to_owned();
    let st = p.call("POST", &format!("/merchants/{mid}/settlements"), None);
    assert_eq!(st.status, 201, "{}", st.json);
    assert_eq!(st.json["count"], 2, "{}", st.json);
    // The amex charge of 9.90 and this one of 20.00 (the others are refunded, declined,
    // failed or cancelled).
    assert_eq!(
        st.json["total"],
        json!({"value": "2990", "currency": "EUR"})
    );
    let st2 = p.ok("POST", &format!("/merchants/{mid}/settlements"), None);
    assert_eq!(
        (st2["count"].as_u64(), st2["total"]["value"].as_str()),
        (Some(0), Some("0"))
    );
    assert_eq!(
        p.ok("GET", &format!("/charges/{sid}"), None)["status"],
        "settled"
    );
    assert_eq!(t.cancel(&sid).unwrap().0.code(), "4095");
    let (a, _) = t.refund(&sid, Some((2000, "EUR")), None).unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    let list = p.ok("GET", &format!("/merchants/{mid}/settlements"), None);
    assert_eq!(list["data"].as_array().unwrap().len(), 2);

    // Transactions: charges and refunds together, newest first, filtered.
    let all = p.ok(
        "GET",
        &format!("/merchants/{mid}/transactions?limit=100"),
        None,
    );
    let items = all["data"].as_array().unwrap();
    assert_eq!(items[0]["type"], "refund");
    assert_eq!(items[0]["charge_id"], sid.as_str());
    assert_eq!(items.iter().filter(|i| i["type"] == "refund").count(), 3);
    let declined = p.ok(
        "GET",
        &format!("/merchants/{mid}/transactions?status=declined&limit=100"),
        None,
    );
    assert!(
        declined["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] == "declined")
    );
    assert_eq!(declined["data"].as_array().unwrap().len(), 5);
    let page = p.ok(
        "GET",
        &format!("/merchants/{mid}/transactions?limit=2"),
        None,
    );
    let cursor = page["next_cursor"].as_str().unwrap();
    let next = p.ok(
        "GET",
        &format!("/merchants/{mid}/transactions?limit=2&starting_after={cursor}"),
        None,
    );
    assert_eq!(next["data"][0]["id"], items[2]["id"]);
    let one = p.ok("GET", &format!("/merchants/{mid}/transactions/{id}"), None);
    assert_eq!(one["type"], "charge");
    let charges = p.ok(
        "GET",
        &format!("/charges?merchant_id={mid}&limit=100"),
        None,
    );
    assert!(charges["data"].as_array().unwrap().len() >= 9);

    // Disable: the terminal stops at once; the backoffice still sees its history.
    p.ok(
        "POST",
        &format!("/merchants/{mid}/devices/POS-8F3A2C91/disable"),
        None,
    );
    let (a, _) = t.charge("4242424242424242", 100, "EUR", None).unwrap();
    assert_eq!((a.status, a.code()), (401, "4011"), "{}", a.json);
    assert_eq!(t.keys().unwrap().code(), "4014");

    // Re-enabled: inactive, same terminal id, a new key set after a new claim.
    let e = p.ok(
        "POST",
        &format!("/merchants/{mid}/devices/POS-8F3A2C91/enable"),
        None,
    );
    assert_eq!(
        (e["device_status"].as_str(), e["terminal_id"].as_str()),
        (Some("inactive"), Some(tid.as_str()))
    );
    let code = t.pairing_code().unwrap().json["pairing_code"].clone();
    let claim = p.call("POST", "/pos/claim", Some(&json!({"pairing_code": code})));
    assert_eq!(
        claim.json["terminal_id"],
        tid.as_str(),
        "the terminal id is kept"
    );
    assert_eq!(t.attest().unwrap().status, 200);
    let keys = t.keys().unwrap();
    assert_eq!(keys.status, 200, "{}", keys.json);
    assert_ne!(keys.json["key_set"]["key_set_id"], set.as_str());
    assert_eq!(t.activate().unwrap().0.status, 200);
    let (a, v) = t.charge("4242424242424242", 100, "EUR", None).unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(v.unwrap()["status"], "approved");
}

#[test]
fn attacks_fail_with_the_right_code_and_change_nothing() {
    let mut p = platform();
    let (mid, _) = p.merchant("Shop");
    let mut t = p.register(&mid, "POS-0000A001", None);
    p.activate(&mut t);
    let mut other = p.register(&mid, "POS-0000A002", None);
    p.activate(&mut other);
    let inner = json!({"amount": {"value": "1500", "currency": "EUR"}, "entry_mode": "chip",
                       "card": t.card_blob("4242424242424242").unwrap()});
    let body = t.envelope(inner.to_string().as_bytes(), false).unwrap();
    let send =
        |o: Overrides, body: &[u8]| t.signed_request("POST", "/pos/charge", body, &o).unwrap();
    let base = count(&p, &mid);

    // Replayed nonce: the first goes through, the same nonce again is 4013.
    let nonce = "ReplayNonce000000001".to_owned();
    let a = send(
        Overrides {
            nonce: Some(nonce.clone()),
            ..Default::default()
        },
        &body,
    );
    assert_eq!(a.status, 200, "{}", a.json);
    let a = send(
        Overrides {
            nonce: Some(nonce.clone()),
            ..Default::default()
        },
        &body,
    );
    assert_eq!((a.status, a.code()), (401, "4013"));
    assert_eq!(count(&p, &mid), base + 1);
    // Even after the API restarts.
    p.api.kill();
    p.api.restart().unwrap();
    let a = send(
        Overrides {
            nonce: Some(nonce),
            ..Default::default()
        },
        &body,
    );
    assert_eq!((a.status, a.code()), (401, "4013"));

    // Stale and future timestamps.
    let now = e2e::pos::unix_now().unwrap();
    for skew in [-301, 301] {
        let a = send(
            Overrides {
                timestamp: Some(e2e::pos::timestamp_at(now + skew)),
                ..Default::default()
            },
            &body,
        );
        assert_eq!((a.status, a.code()), (401, "4012"), "skew {skew}");
    }
    // Body tampered after signing; another terminal's key; an unknown key id; a wrong device.
    let mut tampered = body.clone();
    let i = tampered.len() - 3;
    tampered[i] ^= 1;
    let a = send(
        Overrides {
            tamper_body: Some(tampered),
            ..Default::default()
        },
        &body,
    );
    assert_eq!((a.status, a.code()), (401, "4011"));
    let a = send(
        Overrides {
            mac_key: Some(other.mac_key().unwrap().to_vec()),
            ..Default::default()
        },
        &body,
    );
    assert_eq!((a.status, a.code()), (401, "4011"));
    let a = send(
        Overrides {
            key_id: Some(other.mac_key_id().unwrap().to_owned()),
            mac_key: Some(other.mac_key().unwrap().to_vec()),
            ..Default::default()
        },
        &body,
    );
    assert_eq!(
        (a.status, a.code()),
        (401, "4011"),
        "another terminal's key id"
    );
    let a = send(
        Overrides {
            device_id: Some("POS-0000A002".into()),
            ..Default::default()
        },
        &body,
    );
    assert_eq!((a.status, a.code()), (401, "4011"));
    // A bad signature wins over a stale timestamp.
    let a = send(
        Overrides {
            timestamp: Some(e2e::pos::timestamp_at(now - 1000)),
            mac_key: Some(vec![1; 32]),
            ..Default::default()
        },
        &body,
    );
    assert_eq!(a.code(), "4011");
    // Wrong key_kcv is judged before decryption.
    let mut env: Value = serde_json::from_slice(&body).unwrap();
    env["key_kcv"] = json!("000000");
    let a = send(Overrides::default(), env.to_string().as_bytes());
    assert_eq!((a.status, a.code()), (400, "4005"));
    // Bad padding and bad ciphertext: one answer.
    let msk = t.msk().unwrap().to_vec();
    let iv = [7u8; 16];
    let mut bad_padding = e2e::device::encrypt(&msk, &iv, &[b'{'; 15]).unwrap();
    bad_padding.truncate(16);
    let bad_padding = aes_ecb_garbage(&bad_padding);
    let mut env: Value = serde_json::from_slice(&body).unwrap();
    env["initialization_vector"] = json!(e2e::pos::hex_upper(&iv));
    env["ciphertext"] = json!(e2e::pos::hex_upper(&bad_padding));
    let a1 = send(Overrides::default(), env.to_string().as_bytes());
    env["ciphertext"] = json!("00".repeat(48));
    let a2 = send(Overrides::default(), env.to_string().as_bytes());
    assert_eq!((a1.status, a1.code()), (400, "4004"));
    assert_eq!(a1.json["error"]["message"], a2.json["error"]["message"]);
    assert!(a1.json["error"].get("details").is_none());
    let a = send(Overrides::default(), b"not json");
    assert_eq!((a.status, a.code()), (400, "4002"));
    assert_eq!(
        count(&p, &mid),
        base + 1,
        "nothing was charged by any attack"
    );

    // Attestation: a foreign token, an expired-looking token, no token.
    t.attest().unwrap();
    let token = t.attestation_token().unwrap().to_owned();
    other.set_attestation_token(Some(&token));
    assert_eq!(other.keys().unwrap().code(), "4014");
    t.set_attestation_token(Some("att_0000000000000000000000000000000000000000000"));
    assert_eq!(t.keys().unwrap().code(), "4014");
    let mut headers = t.pos_headers();
    headers.push(("X-Device-Id".into(), t.device_id().into()));
    let a = p.http.raw("POST", "/pos/keys", &headers, b"").unwrap();
    assert_eq!((a.status, a.code()), (401, "4014"), "no token at all");
    t.set_attestation_token(Some(&token));
    assert_eq!(t.keys().unwrap().status, 200);
    // Attest with a wrong secret, then a replayed attest nonce.
    let a = t
        .attest_request(&Overrides {
            mac_key: Some(vec![9; 32]),
            ..Default::default()
        })
        .unwrap();
    assert_eq!((a.status, a.code()), (401, "4011"));
    let a = t
        .attest_request(&Overrides {
            nonce: Some("AttestNonce000001".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(a.status, 200);
    let a = t
        .attest_request(&Overrides {
            nonce: Some("AttestNonce000001".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(a.code(), "4013");
    let a = t
        .attest_request(&Overrides {
            timestamp: Some(e2e::pos::timestamp_at(now + 120)),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(a.code(), "4012", "attest allows only 60 s ahead");

    // Idempotency: a retry replays the answer; another request under the key is 4220.
    let inner = json!({"amount": {"value": "1234", "currency": "EUR"}, "entry_mode": "chip",
                       "card": t.card_blob("4242424242424242").unwrap()});
    let (a1, v1) = t.charge_with(&inner, Some("order-7")).unwrap();
    assert_eq!(a1.status, 200, "{}", a1.json);
    let (a2, v2) = t.charge_with(&inner, Some("order-7")).unwrap();
    assert_eq!(a2.status, 200);
    assert_eq!(v1.unwrap()["charge_id"], v2.unwrap()["charge_id"]);
    let mut different = inner.clone();
    different["amount"]["value"] = json!("1235");
    let (a3, _) = t.charge_with(&different, Some("order-7")).unwrap();
    assert_eq!((a3.status, a3.code()), (422, "4220"));
    // A kept decline and a kept 502 replay too.
    let mut failing = inner.clone();
    failing["card"] = t.card_blob("4000000000000119").unwrap();
    let (f1, _) = t.charge_with(&failing, Some("order-8")).unwrap();
    let (f2, _) = t.charge_with(&failing, Some("order-8")).unwrap();
    assert_eq!((f1.code(), f2.code()), ("5020", "5020"));
    assert_eq!(f1.json["error"]["details"], f2.json["error"]["details"]);
    assert_ne!(f1.json["error"]["trace_id"], f2.json["error"]["trace_id"]);
    let before = count(&p, &mid);
    // Concurrent retries under one key: one charge, the others 4093 or the same answer.
    let mut slow = inner.clone();
    slow["amount"]["value"] = json!("4321");
    let answers: Vec<(u16, String, Option<Value>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let mut t = t.clone();
                let slow = slow.clone();
                s.spawn(move || {
                    let (a, v) = t.charge_with(&slow, Some("order-9")).unwrap();
                    (
                        a.status,
                        a.code().to_owned(),
                        v.map(|v| v["charge_id"].clone()),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: std::collections::HashSet<String> = answers
        .iter()
        .filter_map(|(_, _, v)| v.as_ref().map(|v| v.to_string()))
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert!(
        answers.iter().all(|(s, c, _)| *s == 200 || c == "4093"),
        "{answers:?}"
    );
    assert_eq!(count(&p, &mid), before + 1);
    // Double refund beyond the amount: the second is refused, the first stands.
    let id = v1_id(&mut t);
    let (a, _) = t.refund(&id, Some((1000, "EUR")), None).unwrap();
    assert_eq!(a.status, 200);
    let (a, _) = t.refund(&id, Some((1000, "EUR")), None).unwrap();
    assert_eq!(a.code(), "4221");
    assert_eq!(
        p.ok("GET", &format!("/charges/{id}"), None)["amount_refunded"]["value"],
        "1000"
    );
    // Pairing codes: at most ten an hour per device, then 429 with Retry-After.
    let mut idle = p.register(&mid, "POS-0000A0FF", None);
    let mut codes = std::collections::HashSet::new();
    for _ in 0..10 {
        let a = idle.pairing_code().unwrap();
        assert_eq!(a.status, 200, "{}", a.json);
        codes.insert(a.json["pairing_code"].as_str().unwrap().to_owned());
    }
    assert_eq!(codes.len(), 10, "no value is handed out twice");
    let a = idle.pairing_code().unwrap();
    assert_eq!((a.status, a.code()), (429, "4290"));
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((3000..=3600).contains(&retry), "{retry}");
    // A terminal of another merchant cannot touch the charge.
    let (other_mid, _) = p.merchant("Elsewhere");
    let mut foreign = p.register(&other_mid, "POS-0000B001", None);
    p.activate(&mut foreign);
    assert_eq!(
        foreign
            .refund(&id, Some((1, "EUR")), None)
            .unwrap()
            .0
            .code(),
        "4040"
    );
    assert_eq!(foreign.cancel(&id).unwrap().0.code(), "4040");
}

fn count(p: &Platform, mid: &str) -> usize {
    p.ok(
        "GET",
        &format!("/charges?merchant_id={mid}&limit=100"),
        None,
    )["data"]
        .as_array()
        .unwrap()
        .len()
}

fn v1_id(t: &mut Terminal) -> String {
    let (_, v) = t.charge("4242424242424242", 1500, "EUR", None).unwrap();
    v.unwrap()["charge_id"].as_str().unwrap().to_owned()
}

/// A block that decrypts to garbage padding under any key (random-looking bytes).
fn aes_ecb_garbage(block: &[u8]) -> Vec<u8> {
    block.iter().map(|b| b ^ 0x5A).collect()
}

#[test]
fn backoffice_charges_share_the_engine() {
    let p = platform();
    let (mid, _) = p.merchant("Web");
    let card =
        json!({"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"});
    let a = p.call("POST", "/charges", Some(&json!({"merchant_id": mid, "amount": {"value": "1000", "currency": "EUR"}, "tip": {"value": "0", "currency": "EUR"}, "card": card, "description": "web order", "metadata": {"order": "42"}})));
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["card"]["entry_mode"], "manual");
    assert_eq!(a.json["metadata"]["order"], "42");
    let id = a.json["charge_id"].as_str().unwrap().to_owned();
    // The CVC and PAN are nowhere.
    let db = std::fs::read(p.api.dir().join("api.db")).unwrap_or_default();
    let wal = std::fs::read(p.api.dir().join("api.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(!bytes.windows(16).any(|w| w == b"4242424242424242"));
    }
    let a = p.call(
        "POST",
        "/charges",
        Some(&json!({"amount": {"value": "1000", "currency": "EUR"}, "card": card})),
    );
    assert_eq!(
        a.json["error"]["details"]["fields"][0]["field"],
        "merchant_id"
    );
    let mut bad = card.clone();
    bad["number"] = json!("4242424242424241");
    let a = p.call("POST", "/charges", Some(&json!({"merchant_id": mid, "amount": {"value": "1000", "currency": "EUR"}, "card": bad})));
    assert_eq!(
        a.json["error"]["details"]["fields"][0]["field"],
        "card.number"
    );
    let a = p.call(
        "POST",
        &format!("/charges/{id}/refund"),
        Some(&json!({"amount": {"value": "400", "currency": "EUR"}, "reason": "duplicate"})),
    );
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["charge_status"], "partially_refunded");
    let a = p.call("POST", &format!("/charges/{id}/refund"), None);
    assert_eq!(
        a.json["charge_status"], "refunded",
        "no amount refunds the rest"
    );
    let a = p.call("POST", &format!("/charges/{id}/cancel"), None);
    assert_eq!(a.code(), "4095");
    // A merchant user may charge its own merchant without naming it, not another.
    p.ok(
        "POST",
        &format!("/merchants/{mid}/users"),
        Some(
            &json!({"email": "u@example.com", "role": "merchant_user", "idp_subject": "web-user"}),
        ),
    );
    let user = p.api.token("web-user", "merchant_user").unwrap();
    p.http
        .call(
            "POST",
            "/session/initiate",
            Some(&user),
            Some(&json!({"host": "localhost"})),
        )
        .unwrap();
    let a = p
        .http
        .call(
            "POST",
            "/charges",
            Some(&user),
            Some(&json!({"amount": {"value": "500", "currency": "EUR"}, "card": card})),
        )
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    let (other, _) = p.merchant("Other");
    let a = p.http.call("POST", "/charges", Some(&user), Some(&json!({"merchant_id": other, "amount": {"value": "500", "currency": "EUR"}, "card": card}))).unwrap();
    assert_eq!(a.code(), "4040");
    assert_eq!(
        p.http
            .call("GET", &format!("/charges/{id}"), Some(&user), None)
            .unwrap()
            .status,
        200
    );
    // Idempotent backoffice create.
    let headers = vec![
        ("Authorization".to_owned(), format!("Bearer {}", p.admin)),
        ("Idempotency-Key".to_owned(), "web-1".to_owned()),
    ];
    let body =
        json!({"merchant_id": mid, "amount": {"value": "777", "currency": "EUR"}, "card": card})
            .to_string();
    let a1 = p
        .http
        .raw("POST", "/charges", &headers, body.as_bytes())
        .unwrap();
    let a2 = p
        .http
        .raw("POST", "/charges", &headers, body.as_bytes())
        .unwrap();
    assert_eq!(a1.json["charge_id"], a2.json["charge_id"]);
    let a3 = p
        .http
        .raw(
            "POST",
            "/charges",
            &headers,
            body.replace("777", "778").as_bytes(),
        )
        .unwrap();
    assert_eq!(a3.code(), "4220");
}
