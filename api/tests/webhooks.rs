//! Events and webhooks over real HTTP: a real `api` on a SQLite file (and on PostgreSQL for the
//! events), a real keyd on a SoftHSM token holding the signing secrets, a receiver on a real
//! socket, and the signatures checked by Stripe's own Python library (`stripe` from PyPI),
//! which we did not write.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::api::{Database, Platform};
use serde_json::{Value, json};

/// Stripe's Python library, pinned so a new release cannot turn the build red on its own.
const STRIPE: &str = "12.0.0";

/// Short waits, so retries happen within the test.
const FAST: &str = "\n[webhooks]\nretry_secs = 1\nretry_max_secs = 1\npoll_ms = 50\n";

fn api() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_api"))
}

fn stripe_python() -> std::path::PathBuf {
    pyvenv::python(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &format!("py-stripe-{STRIPE}"),
        &[&format!("stripe=={STRIPE}")],
        |python| pyvenv::prints(python, "import stripe; print(stripe.VERSION)", STRIPE),
    )
}

/// What one POST to the receiver carried.
#[derive(Debug, Clone)]
struct Received {
    signature: String,
    delivery_id: String,
    body: String,
}

/// A webhook receiver on a real socket: records every POST, answers 500 to the first
/// `failures` and 200 after.
#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    failures: Arc<Mutex<usize>>,
}

impl Receiver {
    fn listen(&self, listener: TcpListener) {
        self.listen_with(listener, None);
    }

    /// Serves on `listener`, over TLS with `tls` when given.
    fn listen_with(&self, listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) {
        let me = self.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let me = me.clone();
                let tls = tls.clone();
                std::thread::spawn(move || match tls {
                    None => me.serve(stream),
                    Some(config) => {
                        let Ok(connection) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        me.serve(rustls::StreamOwned::new(connection, stream));
                    }
                });
            }
        });
    }

    fn serve(&self, stream: impl Read + Write) {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        if reader.read_line(&mut line).is_err() {
            // A client that gave up during the handshake.
            return;
        }
        assert!(line.starts_with("POST /hook "), "{line}");
        let mut headers = HashMap::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap();
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
        let n: usize = headers["content-length"].parse().unwrap();
        let mut body = vec![0; n];
        reader.read_exact(&mut body).unwrap();
        let status = {
            let mut f = self.failures.lock().unwrap();
            if *f > 0 {
                *f -= 1;
                500
            } else {
                200
            }
        };
        if status == 200 {
            self.got.lock().unwrap().push(Received {
                signature: headers["viopay-signature"].clone(),
                delivery_id: headers["viopay-delivery-id"].clone(),
                body: String::from_utf8(body).unwrap(),
            });
        }
        let out = reader.get_mut();
        write!(
            out,
            "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        out.flush().unwrap();
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until events with all of `ids` have arrived.
    fn wait_for(&self, ids: &[String]) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.received();
            let seen: Vec<String> = got.iter().map(|r| event_id(&r.body)).collect();
            if ids.iter().all(|id| seen.contains(id)) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "events not delivered: {:?}",
                ids.iter().filter(|i| !seen.contains(i)).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn event_id(body: &str) -> String {
    serde_json::from_str::<Value>(body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every event of a merchant of types `pattern` (all pages), newest first.
fn events(p: &Platform, merchant_id: &str, pattern: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let page = p
            .ok(
                "GET",
                &format!("/events?merchant_id={merchant_id}&type={pattern}&limit=100{after}"),
                None,
            )
            .unwrap();
        out.extend(page["data"].as_array().unwrap().iter().cloned());
        if page["has_more"] != json!(true) {
            return out;
        }
        after = format!("&starting_after={}", page["next_cursor"].as_str().unwrap());
    }
}

/// Runs Stripe's `WebhookSignature.verify_header` on each `(payload, header, secret,
/// tolerance)`: "ok", or the library's complaint.
fn stripe_verdicts(cases: &[(String, String, String, u64)]) -> Vec<String> {
    let script = r#"
import json, sys, stripe
for line in sys.stdin:
    c = json.loads(line)
    try:
        stripe.WebhookSignature.verify_header(c["payload"], c["header"], c["secret"], c["tolerance"])
        print("ok")
    except stripe.SignatureVerificationError as e:
        print("refused: " + str(e).split("\n")[0])
"#;
    let input: String = cases
        .iter()
        .map(|(payload, header, secret, tolerance)| {
            format!(
                "{}\n",
                json!({"payload": payload, "header": header, "secret": secret, "tolerance": tolerance})
            )
        })
        .collect();
    pyvenv::run_script(&stripe_python(), script, &input)
}

#[test]
fn webhooks_are_signed_for_stripes_library_and_survive_a_dead_endpoint_and_kill_9() {
    webhooks_survive_on(&Database::Sqlite);
}

#[test]
fn postgres_webhooks_are_signed_for_stripes_library_and_survive_a_dead_endpoint_and_kill_9() {
    let Some(cluster) = pgcluster::Cluster::for_tests("webhooks_delivery").unwrap() else {
        return;
    };
    webhooks_survive_on(&Database::postgres(&cluster, "api").unwrap());
}

fn webhooks_survive_on(database: &Database) {
    let mut p = Platform::start_on(api(), FAST, database).unwrap();
    let (mid, mut t) = p.activated_terminal("POS-0000AB01").unwrap();
    // A port nobody listens on yet: every attempt fails to connect until the receiver starts.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let created = p
        .call(
            "POST",
            &format!("/merchants/{mid}/webhook-endpoints"),
            Some(&json!({"url": format!("http://127.0.0.1:{port}/hook"),
                         "enabled_events": ["charge.*", "refund.succeeded"],
                         "description": "the shop's back end"})),
        )
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.json);
    let secret = created.json["secret"].as_str().unwrap().to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 40,
        "{secret}"
    );
    let endpoint = created.json["endpoint"]["id"].as_str().unwrap().to_owned();
    let base = format!("/merchants/{mid}/webhook-endpoints/{endpoint}");
    // The secret is never shown again.
    let shown = p.ok("GET", &base, None).unwrap();
    assert!(!shown.to_string().contains(&secret[6..]), "{shown}");
    assert_eq!(
        shown["enabled_events"],
        json!(["charge.*", "refund.succeeded"])
    );

    let mut charges = Vec::new();
    for i in 0..4 {
        let (a, v) = t.charge("4242424242424242", 1000 + i, "EUR", None).unwrap();
        assert_eq!(a.status, 200, "{}", a.json);
        charges.push(v.unwrap()["charge_id"].as_str().unwrap().to_owned());
    }
    // kill -9 with deliveries pending and failing, then more changes after the restart.
    p.api.kill();
    p.api.restart().unwrap();
    for i in 0..4 {
        let (a, v) = t.charge("4242424242424242", 2000 + i, "EUR", None).unwrap();
        assert_eq!(a.status, 200, "{}", a.json);
        charges.push(v.unwrap()["charge_id"].as_str().unwrap().to_owned());
    }
    let refunded = charges[0].clone();
    let (a, _) = t.refund(&refunded, Some((400, "EUR")), None).unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    // Every delivery is queued and tried (failing to connect) within seconds; on PostgreSQL the
    // restarted node first waits out the killed one's `webhooks` lease (15 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    let pending = loop {
        let page = p
            .ok(
                "GET",
                &format!("{base}/deliveries?status=pending&limit=100"),
                None,
            )
            .unwrap();
        let pending = page["data"].as_array().unwrap().clone();
        let tried = pending
            .iter()
            .filter(|d| d["attempts"].as_u64().unwrap() >= 1)
            .count();
        if pending.len() == 10 && tried == 9 {
            break pending;
        }
        assert!(
            Instant::now() < deadline,
            "8 approvals, a partial refund and its refund, all but one tried: {pending:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Each was tried and failed to connect, but the partial refund's charge event: it waits
    // behind the same charge's approval, so that the two arrive in order.
    for d in &pending {
        if d["event_type"] == "charge.partially_refunded" {
            assert_eq!(d["attempts"], 0, "{d}");
        } else {
            assert!(d["attempts"].as_u64().unwrap() >= 1, "{d}");
            let error = d["log"][0]["error"].as_str().unwrap();
            assert!(error.starts_with("connect"), "{d}");
        }
    }

    // The receiver comes up and fails its first two answers: retried until accepted.
    let receiver = Receiver::default();
    *receiver.failures.lock().unwrap() = 2;
    receiver.listen(TcpListener::bind(("127.0.0.1", port)).unwrap());
    let wanted: Vec<String> = events(&p, &mid, "*")
        .iter()
        .filter(|e| {
            let ty = e["type"].as_str().unwrap();
            ty.starts_with("charge.") || ty == "refund.succeeded"
        })
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(wanted.len(), 10);
    let got = receiver.wait_for(&wanted);
    // No loss, and every event is exactly the event the API shows.
    for r in &got {
        let shown = p
            .ok("GET", &format!("/events/{}", event_id(&r.body)), None)
            .unwrap();
        assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap(), shown);
        assert!(r.delivery_id.starts_with("wd_"));
    }
    // In order per object: the refunded charge's approval came before its refund.
    let types_of_refunded: Vec<String> = got
        .iter()
        .map(|r| serde_json::from_str::<Value>(&r.body).unwrap())
        .filter(|e| {
            e["data"]["object"]["charge_id"] == json!(refunded)
                && e["data"]["object"]["object"] == json!("charge")
        })
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        types_of_refunded.first().map(String::as_str),
        Some("charge.approved"),
        "{types_of_refunded:?}"
    );
    assert!(types_of_refunded.contains(&"charge.partially_refunded".to_owned()));

    // Stripe's library accepts every signature, and refuses a wrong secret, a changed body
    // and a timestamp outside its tolerance.
    let mut cases: Vec<(String, String, String, u64)> = got
        .iter()
        .map(|r| (r.body.clone(), r.signature.clone(), secret.clone(), 300))
        .collect();
    let sample = got[0].clone();
    cases.push((
        sample.body.clone(),
        sample.signature.clone(),
        "whsec_wrong".into(),
        300,
    ));
    cases.push((
        sample.body.replace("\"charge", "\"Charge"),
        sample.signature.clone(),
        secret.clone(),
        300,
    ));
    std::thread::sleep(Duration::from_secs(2));
    cases.push((sample.body, sample.signature, secret.clone(), 1));
    let verdicts = stripe_verdicts(&cases);
    let n = got.len();
    assert!(verdicts[..n].iter().all(|v| v == "ok"), "{verdicts:?}");
    assert!(
        verdicts[n].starts_with("refused: No signatures found matching"),
        "{}",
        verdicts[n]
    );
    assert!(
        verdicts[n + 1].starts_with("refused: No signatures found matching"),
        "{}",
        verdicts[n + 1]
    );
    assert!(
        verdicts[n + 2].starts_with("refused: Timestamp outside the tolerance zone"),
        "{}",
        verdicts[n + 2]
    );

    // The delivery log tells the story: failed attempts, then a 200.
    let done = p
        .ok(
            "GET",
            &format!("{base}/deliveries?status=succeeded&limit=100"),
            None,
        )
        .unwrap();
    let done = done["data"].as_array().unwrap();
    assert_eq!(done.len(), 10);
    for d in done {
        let log = d["log"].as_array().unwrap();
        assert_eq!(log.last().unwrap()["status_code"], json!(200), "{d}");
        if d["event_type"] != "charge.partially_refunded" {
            assert!(log.len() >= 2 && log[0]["status_code"].is_null(), "{d}");
        }
    }

    // A rotation: both secrets sign during the overlap, and each verifies on its own.
    let rotated = p
        .ok(
            "POST",
            &format!("{base}/rotate-secret"),
            Some(&json!({"expire_previous_in_secs": 3600})),
        )
        .unwrap();
    let secret2 = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(secret2, secret);
    assert!(rotated["endpoint"]["previous_secret_expires_at"].is_string());
    let (a, v) = t.charge("4242424242424242", 3000, "EUR", None).unwrap();
    assert_eq!(a.status, 200);
    let charge = v.unwrap()["charge_id"].as_str().unwrap().to_owned();
    let last = events(&p, &mid, "charge.approved")
        .into_iter()
        .find(|e| e["data"]["object"]["charge_id"] == json!(charge))
        .unwrap();
    let got = receiver.wait_for(&[last["id"].as_str().unwrap().to_owned()]);
    let r = got
        .iter()
        .find(|r| event_id(&r.body) == last["id"].as_str().unwrap())
        .unwrap();
    assert_eq!(r.signature.matches("v1=").count(), 2, "{}", r.signature);
    let verdicts = stripe_verdicts(&[
        (r.body.clone(), r.signature.clone(), secret, 300),
        (r.body.clone(), r.signature.clone(), secret2, 300),
    ]);
    assert_eq!(verdicts, ["ok", "ok"]);

    // A manual resend sends the same event again.
    let first = &done[0];
    let resent = p
        .ok(
            "POST",
            &format!("{base}/deliveries/{}/resend", first["id"].as_str().unwrap()),
            None,
        )
        .unwrap();
    assert_eq!(resent["status"], "pending");
    let before = receiver
        .received()
        .iter()
        .filter(|r| r.delivery_id == first["id"].as_str().unwrap())
        .count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver
        .received()
        .iter()
        .filter(|r| r.delivery_id == first["id"].as_str().unwrap())
        .count()
        == before
    {
        assert!(Instant::now() < deadline, "resend not sent");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn endpoints_refuse_bad_input_and_stay_inside_their_tenant() {
    let p = Platform::start(api(), FAST).unwrap();
    let r = p
        .ok("POST", "/resellers", Some(&json!({"name": "R"})))
        .unwrap();
    let rid = r["id"].as_str().unwrap();
    let m = |name: &str| {
        p.ok(
            "POST",
            "/merchants",
            Some(&json!({"reseller_id": rid, "name": name, "mcc": "5812", "country": "DE", "currency": "EUR"})),
        )
        .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (a, b) = (m("A"), m("B"));
    let path = format!("/merchants/{a}/webhook-endpoints");
    for (body, field) in [
        (
            json!({"url": "http://hooks.example.com/x", "enabled_events": ["*"]}),
            "url",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "enabled_events": []}),
            "enabled_events",
        ),
        (
            json!({"url": "https://hooks.example.com/x", "enabled_events": ["charge.paid"]}),
            "enabled_events[0]",
        ),
        (
            json!({"url": "https://hooks.example.com/x"}),
            "enabled_events",
        ),
    ] {
        let answer = p.call("POST", &path, Some(&body)).unwrap();
        assert_eq!(answer.status, 400, "{body}: {}", answer.json);
        let fields = answer.json["error"]["details"]["fields"].to_string();
        assert!(fields.contains(&format!("\"{field}\"")), "{body}: {fields}");
    }
    let made = p
        .call("POST", &path, Some(&json!({"url": "https://hooks.example.com/x", "enabled_events": ["charge.*", "charge.*"]})))
        .unwrap();
    assert_eq!(made.status, 201, "{}", made.json);
    assert_eq!(made.json["endpoint"]["enabled_events"], json!(["charge.*"]));
    let id = made.json["endpoint"]["id"].as_str().unwrap();

    // B's admin cannot see or touch A's endpoint; A's can, and disables it.
    let admin_b = p.api.token("admin-b", "merchant_admin").unwrap();
    let admin_a = p.api.token("admin-a", "merchant_admin").unwrap();
    let bind = |token: &str, merchant: &str| {
        p.ok(
            "POST",
            &format!("/merchants/{merchant}/users"),
            Some(
                &json!({"email": format!("{merchant}@example.com"), "role": "merchant_admin",
                         "idp_subject": if merchant == a { "admin-a" } else { "admin-b" }}),
            ),
        )
        .unwrap();
        p.login_token(token).unwrap();
    };
    bind(&admin_a, &a);
    bind(&admin_b, &b);
    for (method, suffix) in [
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("GET", "/deliveries"),
        ("POST", "/rotate-secret"),
    ] {
        let answer = p
            .http
            .call(
                method,
                &format!("/merchants/{a}/webhook-endpoints/{id}{suffix}"),
                Some(&admin_b),
                Some(&json!({})),
            )
            .unwrap();
        assert_eq!(answer.status, 404, "{method} {suffix}: {}", answer.json);
        let answer = p
            .http
            .call(
                method,
                &format!("/merchants/{b}/webhook-endpoints/{id}{suffix}"),
                Some(&admin_b),
                Some(&json!({})),
            )
            .unwrap();
        assert_eq!(
            answer.status, 404,
            "{method} {suffix} under B: {}",
            answer.json
        );
    }
    let patched = p
        .http
        .call(
            "PATCH",
            &format!("{path}/{id}"),
            Some(&admin_a),
            Some(&json!({"status": "disabled", "description": null})),
        )
        .unwrap();
    assert_eq!(patched.status, 200, "{}", patched.json);
    assert_eq!(patched.json["status"], "disabled");
    // A merchant user reads but does not manage.
    let user = p.api.token("user-a", "merchant_user").unwrap();
    p.ok(
        "POST",
        &format!("/merchants/{a}/users"),
        Some(&json!({"email": "u@example.com", "role": "merchant_user", "idp_subject": "user-a"})),
    )
    .unwrap();
    p.login_token(&user).unwrap();
    let listed = p.http.call("GET", &path, Some(&user), None).unwrap();
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json["data"].as_array().unwrap().len(), 1);
    let refused = p
        .http
        .call("DELETE", &format!("{path}/{id}"), Some(&user), None)
        .unwrap();
    assert_eq!(refused.status, 403, "{}", refused.json);
    let gone = p
        .http
        .call("DELETE", &format!("{path}/{id}"), Some(&admin_a), None)
        .unwrap();
    assert_eq!(gone.status, 200);
    assert_eq!(
        p.call("GET", &format!("{path}/{id}"), None).unwrap().status,
        404
    );

    // A reseller endpoint, managed by the reseller's admin.
    let reseller = p
        .call(
            "POST",
            &format!("/resellers/{rid}/webhook-endpoints"),
            Some(&json!({"url": "https://r.example.com/h", "enabled_events": ["merchant.*"]})),
        )
        .unwrap();
    assert_eq!(reseller.status, 201, "{}", reseller.json);
    assert_eq!(reseller.json["endpoint"]["reseller_id"], json!(rid));
    let by_merchant = p
        .http
        .call(
            "GET",
            &format!("/resellers/{rid}/webhook-endpoints"),
            Some(&admin_a),
            None,
        )
        .unwrap();
    assert_eq!(by_merchant.status, 404, "{}", by_merchant.json);
}

fn events_follow_their_changes_and_tenancy_on(p: &Platform) {
    let (mid, mut t) = p.activated_terminal("POS-0000AB02").unwrap();
    let (other, _) = p.activated_terminal("POS-0000AB03").unwrap();
    let (a, v) = t.charge("4242424242424242", 1200, "EUR", None).unwrap();
    assert_eq!(a.status, 200);
    let charge = v.unwrap()["charge_id"].as_str().unwrap().to_owned();
    let (a, _) = t.cancel(&charge).unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    let device = p
        .ok(
            "POST",
            &format!("/merchants/{mid}/devices/POS-0000AB02/disable"),
            None,
        )
        .unwrap();
    assert_eq!(device["device_status"], "disabled");

    let all: Vec<String> = events(p, &mid, "*")
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    // Newest first, each change once.
    assert_eq!(
        all,
        [
            "device.disabled",
            "charge.cancelled",
            "charge.approved",
            "device.activated",
            "device.claimed",
            "device.registered",
            "merchant.created",
        ]
    );
    let by_object = p
        .ok("GET", &format!("/events?object_id={charge}"), None)
        .unwrap();
    let types: Vec<&str> = by_object["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["charge.cancelled", "charge.approved"]);
    let cancelled = &by_object["data"][0];
    assert_eq!(cancelled["object"], "event");
    assert_eq!(cancelled["data"]["object"]["status"], "cancelled");
    assert_eq!(
        cancelled["data"]["object"],
        p.ok("GET", &format!("/charges/{charge}"), None).unwrap()
    );
    assert_eq!(events(p, &mid, "device.*").len(), 4);
    let bad = p.call("GET", "/events?type=charge.paid", None).unwrap();
    assert_eq!(bad.status, 400, "{}", bad.json);

    // The other merchant's admin sees none of it: the list leaves it out, an id is 404.
    let token = p.api.token("other-admin", "merchant_admin").unwrap();
    p.ok(
        "POST",
        &format!("/merchants/{other}/users"),
        Some(&json!({"email": "o@example.com", "role": "merchant_admin", "idp_subject": "other-admin"})),
    )
    .unwrap();
    p.login_token(&token).unwrap();
    let mine = p
        .http
        .call("GET", "/events?limit=100", Some(&token), None)
        .unwrap();
    assert_eq!(mine.status, 200);
    let mine = mine.json["data"].as_array().unwrap().clone();
    assert!(!mine.is_empty());
    assert!(
        mine.iter().all(|e| e["merchant_id"] == json!(other)),
        "{mine:?}"
    );
    let id = cancelled["id"].as_str().unwrap();
    assert_eq!(
        p.http
            .call("GET", &format!("/events/{id}"), Some(&token), None)
            .unwrap()
            .status,
        404
    );
    let filtered = p
        .http
        .call(
            "GET",
            &format!("/events?merchant_id={mid}"),
            Some(&token),
            None,
        )
        .unwrap();
    assert_eq!(filtered.status, 404);
    let by_object = p
        .http
        .call(
            "GET",
            &format!("/events?object_id={charge}"),
            Some(&token),
            None,
        )
        .unwrap();
    assert_eq!(by_object.status, 200);
    assert_eq!(by_object.json["data"], json!([]));
}

#[test]
fn events_follow_their_changes_and_tenancy() {
    events_follow_their_changes_and_tenancy_on(&Platform::start(api(), FAST).unwrap());
}

#[test]
fn postgres_events_follow_their_changes_and_tenancy() {
    let Some(cluster) = pgcluster::Cluster::for_tests("events_tenancy").unwrap() else {
        return;
    };
    let database = Database::postgres(&cluster, "api").unwrap();
    let p = Platform::start_on(api(), FAST, &database).unwrap();
    events_follow_their_changes_and_tenancy_on(&p);
}

/// The receiver's TLS configuration: the API's test leaf for `localhost`, signed by the test CA.
fn receiver_tls() -> Arc<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let certs = vec![CertificateDer::from_pem_file(data.join("test-cert.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(data.join("test-key.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    )
}

#[test]
fn a_resellers_https_endpoint_gets_its_merchants_events_and_no_others() {
    let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ca-cert.pem");
    let config = format!("{FAST}ca_file = \"{}\"\n", ca.display());
    let p = Platform::start(api(), &config).unwrap();
    let (mine, mut t) = p.activated_terminal("POS-0000AC01").unwrap();
    let (theirs, mut other) = p.activated_terminal("POS-0000AC02").unwrap();
    let reseller = p.ok("GET", &format!("/merchants/{mine}"), None).unwrap()["reseller_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let receiver = Receiver::default();
    receiver.listen_with(listener, Some(receiver_tls()));
    let created = p
        .call(
            "POST",
            &format!("/resellers/{reseller}/webhook-endpoints"),
            Some(&json!({"url": format!("https://localhost:{port}/hook"),
                         "enabled_events": ["charge.approved"]})),
        )
        .unwrap();
    assert_eq!(created.status, 201, "{}", created.json);
    let secret = created.json["secret"].as_str().unwrap().to_owned();

    let (a, _) = other.charge("4242424242424242", 700, "EUR", None).unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    let (a, _) = t.charge("4242424242424242", 800, "EUR", None).unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    let approved = events(&p, &mine, "charge.approved");
    assert_eq!(approved.len(), 1);
    let id = approved[0]["id"].as_str().unwrap().to_owned();
    let got = receiver.wait_for(std::slice::from_ref(&id));
    // The other merchant's approval, made first, has had its chance to arrive; it has no
    // delivery to this endpoint at all.
    let theirs_approved = events(&p, &theirs, "charge.approved");
    assert_eq!(theirs_approved.len(), 1);
    assert!(
        got.iter().all(|r| event_id(&r.body) == id),
        "{:?}",
        got.iter().map(|r| event_id(&r.body)).collect::<Vec<_>>()
    );
    let endpoint = created.json["endpoint"]["id"].as_str().unwrap();
    let log = p
        .ok(
            "GET",
            &format!("/resellers/{reseller}/webhook-endpoints/{endpoint}/deliveries?limit=100"),
            None,
        )
        .unwrap();
    let log = log["data"].as_array().unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["event_id"], json!(id));
    let verdicts = stripe_verdicts(&[(got[0].body.clone(), got[0].signature.clone(), secret, 300)]);
    assert_eq!(verdicts, ["ok"]);
}
