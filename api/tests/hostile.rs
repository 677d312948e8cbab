//! The API against a hostile client, over real sockets: each test here is a finding of a review
//! (issue 12) that failed on the code before its fix. Malformed requests, descriptor
//! exhaustion, unauthenticated bodies, crowding clients, duplicated JSON keys, foreign media
//! types, unreadable idempotency keys, card data in the idempotency table, users' subjects,
//! settlement totals beyond the money format.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::api::{Answer, ApiProcess, Platform};
use serde_json::{Value, json};

fn api_without_keyd(extra_top: &str) -> ApiProcess {
    ApiProcess::start(
        Path::new(env!("CARGO_BIN_EXE_api")),
        Path::new("/nonexistent/keyd.sock"),
        extra_top,
        "",
    )
    .unwrap()
}

fn platform() -> Platform {
    Platform::start(Path::new(env!("CARGO_BIN_EXE_api")), "").unwrap()
}

/// An error answer in the contract's shape, with its request id repeated as `trace_id`.
fn assert_contract_error(a: &Answer, status: u16, code: &str, what: &str) {
    assert_eq!((a.status, a.code()), (status, code), "{what}: {a:?}");
    assert_eq!(a.header("content-type"), Some("application/json"), "{what}");
    let id = a.header("x-request-id").expect("x-request-id");
    assert_eq!(a.json["error"]["trace_id"], id, "{what}");
    assert!(
        a.json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[test]
fn requests_hyper_refuses_get_the_contract_error_body() {
    let api = api_without_keyd("");
    let http = api.client();
    let post = |headers: &str| format!("POST /resellers HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
    for (what, request) in [
        ("negative length", post("Content-Length: -1\r\n")),
        ("letters for a length", post("Content-Length: abc\r\n")),
        (
            "a 20-digit length",
            post("Content-Length: 99999999999999999999\r\n"),
        ),
        (
            "two different lengths",
            post("Content-Length: 1\r\nContent-Length: 2\r\n"),
        ),
        ("a bad request line", "GARBAGE\r\n\r\n".to_owned()),
        ("a control character", post("Idempotency-Key: a\u{1}b\r\n")),
    ] {
        let a = http.bytes(request.as_bytes()).unwrap();
        assert_contract_error(&a, 400, "4001", what);
    }
    let big = format!(
        "GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(600 * 1024)
    );
    assert_contract_error(
        &http.bytes(big.as_bytes()).unwrap(),
        431,
        "4310",
        "big headers",
    );
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /health/live HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_contract_error(
        &http.bytes(many.as_bytes()).unwrap(),
        431,
        "4310",
        "many headers",
    );
    // A well-formed request on the same server is served as before, keep-alive included.
    let mut s = TcpStream::connect(("127.0.0.1", api.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    }
    // A HEAD answer carries no body (its length, when given, is 0).
    s.write_all(b"HEAD /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "{head}");
    assert!(
        !head.contains("content-length:") || head.contains("content-length: 0\r\n"),
        "{head}"
    );
}

/// CPU seconds (user + system) the process has used.
fn cpu_seconds(pid: u32) -> f64 {
    e2e::proc::cpu_seconds(pid).unwrap()
}

fn raise_own_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

#[test]
fn out_of_descriptors_it_waits_instead_of_spinning() {
    raise_own_nofile();
    // Idle connections are held for the whole header time-out: long enough to measure.
    let mut api = api_without_keyd("max_connections_per_client = 0\nheader_timeout_secs = 120");
    api.restart_with_nofile(1024).unwrap();
    let pid = api.pid().unwrap();
    // 2,000 idle connections against a process allowed 1,024 descriptors (those the listen
    // queue cannot take time out quickly; the rest stay open).
    let mut idle = Vec::new();
    for _ in 0..2000 {
        if let Ok(s) = TcpStream::connect_timeout(
            &([127, 0, 0, 1], api.port()).into(),
            Duration::from_millis(20),
        ) {
            idle.push(s);
        }
    }
    assert!(idle.len() > 1024, "only {} connections opened", idle.len());
    std::thread::sleep(Duration::from_millis(500));
    let log_before = std::fs::metadata(api.log_path()).unwrap().len();
    let cpu_before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(5));
    let cpu = cpu_seconds(pid) - cpu_before;
    let logged = std::fs::metadata(api.log_path()).unwrap().len() - log_before;
    assert!(cpu < 0.5, "{cpu} s of CPU in 5 s with idle connections");
    assert!(logged < 16 * 1024, "{logged} bytes of log in 5 s");
    // Once the idle connections go, the API serves again.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(a) = api.client().call("GET", "/health/live", None, None)
            && a.status == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "the API did not serve again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_bearer_call_is_refused_before_its_body_and_crowds_are_capped() {
    let api = api_without_keyd("max_connections_per_client = 4");
    // Headers announcing a megabyte, then nothing: the 401 comes at once, not after the body
    // time-out.
    let mut s = TcpStream::connect(("127.0.0.1", api.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(
        b"POST /resellers HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
          Content-Length: 1000000\r\n\r\n",
    )
    .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).expect("an answer before the body");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    assert!(head.contains("\"4010\""), "{head}");
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(s);
    std::thread::sleep(Duration::from_millis(200));
    // Four connections from one address are held; the fifth is told why and closed.
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(("127.0.0.1", api.port())).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let a = api
        .client()
        .call("GET", "/health/live", None, None)
        .unwrap();
    assert_contract_error(&a, 429, "4290", "a fifth connection");
    assert_eq!(a.header("retry-after"), Some("1"));
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    let a = api
        .client()
        .call("GET", "/health/live", None, None)
        .unwrap();
    assert_eq!(a.status, 200);
}

fn merchant(p: &Platform) -> String {
    let r = p
        .ok("POST", "/resellers", Some(&json!({"name": "R"})))
        .unwrap();
    let m = p
        .ok(
            "POST",
            "/merchants",
            Some(&json!({"reseller_id": r["id"], "name": "M", "mcc": "5812",
                         "country": "DE", "currency": "EUR"})),
        )
        .unwrap();
    m["id"].as_str().unwrap().to_owned()
}

fn charge_body(mid: &str, value: &str, pan: &str, cvc: &str) -> String {
    json!({"merchant_id": mid, "amount": {"value": value, "currency": "EUR"},
           "card": {"number": pan, "exp_month": 12, "exp_year": 2030, "cvc": cvc}})
    .to_string()
}

fn post_charge(p: &Platform, key: Option<&str>, body: &str) -> Answer {
    let mut headers = vec![
        ("Authorization".to_owned(), format!("Bearer {}", p.admin)),
        ("Content-Type".to_owned(), "application/json".to_owned()),
    ];
    if let Some(k) = key {
        headers.push(("Idempotency-Key".to_owned(), k.to_owned()));
    }
    p.http
        .raw("POST", "/charges", &headers, body.as_bytes())
        .unwrap()
}

/// SHA-256 of the body as the idempotency table kept it before (length-prefixed, hex).
fn plain_request_hash(body: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(body.len() as u64).to_be_bytes());
    ctx.update(body);
    hex::encode_upper(ctx.finish().as_ref())
}

fn kept_requests(p: &Platform) -> Vec<String> {
    let db = rusqlite::Connection::open_with_flags(
        p.api.dir().join("api.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    // The store's own table of kept answers (typed tables, issue 12).
    let mut q = db.prepare("SELECT request FROM idempotency").unwrap();
    q.query_map([], |row| row.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn card_requests_under_a_key_keep_nothing_that_reveals_the_card() {
    let p = platform();
    let mid = merchant(&p);
    let body = charge_body(&mid, "1500", "4242424242424242", "123");
    let first = post_charge(&p, Some("order-1"), &body);
    assert_eq!(first.status, 200, "{}", first.json);
    let kept = kept_requests(&p);
    assert_eq!(kept.len(), 1);
    // Whoever holds the database cannot test guesses of PAN and CVC against what is kept:
    // it is not a plain hash of the body, for any CVC.
    for cvc in 0..1000 {
        let guess = charge_body(&mid, "1500", "4242424242424242", &format!("{cvc:03}"));
        assert_ne!(
            kept[0],
            plain_request_hash(guess.as_bytes()),
            "CVC {cvc:03}"
        );
    }
    // The CVC does not enter the comparison: a retry with another CVC is the same request,
    // another card or amount is not.
    let retry = post_charge(
        &p,
        Some("order-1"),
        &charge_body(&mid, "1500", "4242424242424242", "999"),
    );
    assert_eq!(retry.json["charge_id"], first.json["charge_id"]);
    let other = post_charge(
        &p,
        Some("order-1"),
        &charge_body(&mid, "1500", "5555555555554444", "123"),
    );
    assert_eq!(other.code(), "4220");
    let other = post_charge(
        &p,
        Some("order-1"),
        &charge_body(&mid, "1600", "4242424242424242", "123"),
    );
    assert_eq!(other.code(), "4220");
    assert_eq!(p.charges(&mid).unwrap().len(), 1);
    // Fields the contract ignores neither count nor break the comparison, however large.
    let padded = |pad: &str| {
        let mut v: Value =
            serde_json::from_str(&charge_body(&mid, "2500", "4242424242424242", "123")).unwrap();
        v["note"] = json!(pad);
        v.to_string()
    };
    let big = post_charge(&p, Some("order-2"), &padded(&"x".repeat(70_000)));
    assert_eq!(big.status, 200, "{}", big.json);
    let again = post_charge(&p, Some("order-2"), &padded("y"));
    assert_eq!(again.json["charge_id"], big.json["charge_id"]);
    // A body that fails validation was not accepted: its 400 is not kept, and the key is
    // still free for the corrected request.
    let bad = post_charge(
        &p,
        Some("order-3"),
        &charge_body(&mid, "12x", "4242424242424242", "123"),
    );
    assert_contract_error(&bad, 400, "4000", "a bad amount");
    let good = post_charge(
        &p,
        Some("order-3"),
        &charge_body(&mid, "1200", "4242424242424242", "123"),
    );
    assert_eq!(good.status, 200, "{}", good.json);
    assert_eq!(p.charges(&mid).unwrap().len(), 3);
}

#[test]
fn a_second_process_on_the_same_database_is_refused() {
    let api = api_without_keyd("");
    let config = std::fs::read_to_string(api.dir().join("api.toml")).unwrap();
    let other = config.replace(
        &format!("127.0.0.1:{}", api.port()),
        &format!("127.0.0.1:{}", e2e::api::free_port().unwrap()),
    );
    let path = api.dir().join("api2.toml");
    std::fs::write(&path, other).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_api"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another api process"), "{stderr}");
    // The first one serves on.
    let a = api
        .client()
        .call("GET", "/health/live", None, None)
        .unwrap();
    assert_eq!(a.status, 200);
}

#[test]
fn unreadable_keys_duplicated_fields_and_foreign_types_are_refused() {
    let p = platform();
    let mid = merchant(&p);
    let body = charge_body(&mid, "1500", "4242424242424242", "123");
    // An Idempotency-Key that is there but unreadable is refused, never ignored (ignoring it
    // made the retry a second charge).
    for key in ["caf\u{e9}", "\u{ff}x"] {
        let a = post_charge(&p, Some(key), &body);
        assert_contract_error(&a, 400, "4001", key);
    }
    let mut bytes = format!(
        "POST /charges HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        p.admin,
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(b"Idempotency-Key: k\xff\r\n\r\n");
    bytes.extend_from_slice(body.as_bytes());
    assert_contract_error(&p.http.bytes(&bytes).unwrap(), 400, "4001", "\\xff");
    assert!(
        p.charges(&mid).unwrap().is_empty(),
        "no charge from a refused key"
    );
    // Two `amount` keys: which one a parser keeps is not something to bet money on.
    let twice = format!(
        r#"{{"merchant_id":"{mid}","amount":{{"value":"100","currency":"EUR"}},"amount":{{"value":"900","currency":"EUR"}},"card":{{"number":"4242424242424242","exp_month":12,"exp_year":2030,"cvc":"123"}}}}"#
    );
    assert_contract_error(&post_charge(&p, None, &twice), 400, "4002", "duplicate key");
    assert!(
        p.charges(&mid).unwrap().is_empty(),
        "no charge from a duplicated key"
    );
    // A body that says it is a form is not read as JSON.
    let headers = vec![
        ("Authorization".to_owned(), format!("Bearer {}", p.admin)),
        (
            "Content-Type".to_owned(),
            "application/x-www-form-urlencoded".to_owned(),
        ),
    ];
    let a = p
        .http
        .raw("POST", "/resellers", &headers, br#"{"name":"Form"}"#)
        .unwrap();
    assert_contract_error(&a, 415, "4150", "a form body");
    let list = p.ok("GET", "/resellers", None).unwrap();
    assert!(!list.to_string().contains("Form"));
    // An action that takes no body is not run on bytes that are not JSON.
    let auth = vec![("Authorization".to_owned(), format!("Bearer {}", p.admin))];
    let settle = format!("/merchants/{mid}/settlements");
    let a = p.http.raw("POST", &settle, &auth, b"\x00").unwrap();
    assert_contract_error(&a, 400, "4002", "a NUL byte as body");
    let settlements = p.ok("GET", &settle, None).unwrap();
    assert_eq!(settlements["data"], serde_json::json!([]), "{settlements}");
}

#[test]
fn only_the_platform_binds_identity_provider_subjects() {
    let p = platform();
    let mid = merchant(&p);
    let users = format!("/merchants/{mid}/users");
    p.ok(
        "POST",
        &users,
        Some(
            &json!({"email": "a@example.com", "role": "merchant_admin", "idp_subject": "m-admin"}),
        ),
    )
    .unwrap();
    let admin = p.api.token("m-admin", "merchant_admin").unwrap();
    p.login_token(&admin).unwrap();
    // Another tenant's platform user exists under "taken"; nobody has "free" yet.
    let other = merchant(&p);
    p.ok(
        "POST",
        &format!("/merchants/{other}/users"),
        Some(&json!({"email": "t@example.com", "role": "merchant_user", "idp_subject": "taken"})),
    )
    .unwrap();
    let try_subject = |subject: &str| {
        p.http
            .call(
                "POST",
                &users,
                Some(&admin),
                Some(&json!({"email": "n@example.com", "role": "merchant_user", "idp_subject": subject})),
            )
            .unwrap()
    };
    let taken = try_subject("taken");
    let free = try_subject("free");
    // The same answer whether or not the subject exists elsewhere, and neither is claimed.
    assert_contract_error(&taken, 403, "4030", "a taken subject");
    assert_contract_error(&free, 403, "4030", "a free subject");
    assert_eq!(
        taken.json["error"]["message"],
        free.json["error"]["message"]
    );
    let mine = p.http.call("GET", &users, Some(&admin), None).unwrap();
    assert_eq!(mine.json["data"].as_array().unwrap().len(), 1);
    // The tenant admin still onboards people: their subject is the user's own id, and the
    // platform can bind it to the identity provider's later.
    let a = p
        .http
        .call(
            "POST",
            &users,
            Some(&admin),
            Some(&json!({"email": "n@example.com", "role": "merchant_user"})),
        )
        .unwrap();
    assert_eq!(a.status, 201, "{}", a.json);
    assert_eq!(a.json["idp_subject"], a.json["id"]);
    let uid = a.json["id"].as_str().unwrap();
    let patched = p
        .ok(
            "PATCH",
            &format!("{users}/{uid}"),
            Some(&json!({"idp_subject": "free"})),
        )
        .unwrap();
    assert_eq!(patched["idp_subject"], "free");
    let by_admin = p
        .http
        .call(
            "PATCH",
            &format!("{users}/{uid}"),
            Some(&admin),
            Some(&json!({"idp_subject": "x"})),
        )
        .unwrap();
    assert_contract_error(&by_admin, 403, "4030", "a tenant admin rebinding");
}

#[test]
fn a_settlement_never_passes_twelve_digits() {
    let p = platform();
    let mid = merchant(&p);
    let max = "999999999999";
    for _ in 0..2 {
        let a = post_charge(&p, None, &charge_body(&mid, max, "4242424242424242", "123"));
        assert_eq!(a.status, 200, "{}", a.json);
    }
    let first = p
        .ok("POST", &format!("/merchants/{mid}/settlements"), None)
        .unwrap();
    assert_eq!(first["total"]["value"], max);
    assert_eq!(
        (first["count"].as_u64(), first["has_more"].as_bool()),
        (Some(1), Some(true))
    );
    let second = p
        .ok("POST", &format!("/merchants/{mid}/settlements"), None)
        .unwrap();
    assert_eq!(second["total"]["value"], max);
    assert_eq!(
        (second["count"].as_u64(), second["has_more"].as_bool()),
        (Some(1), Some(false))
    );
    let third = p
        .ok("POST", &format!("/merchants/{mid}/settlements"), None)
        .unwrap();
    assert_eq!(
        (third["count"].as_u64(), third["total"]["value"].as_str()),
        (Some(0), Some("0"))
    );
}
