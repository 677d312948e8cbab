//! The backoffice over real HTTP: a real `api` process on a SQLite file, a real keyd on a
//! SoftHSM token. Tenancy, roles, sessions, client credentials, devices with keyd-made identity
//! keys, and bad input on every endpoint. Each test runs again as `postgres_*` with the API on a
//! throw-away PostgreSQL cluster (skipped with a message where PostgreSQL is not installed and
//! `CI` is not set).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::path::Path;

use base64::Engine;
use e2e::api::{Answer, Database, Platform};
use serde_json::{Value, json};

fn platform() -> Platform {
    Platform::start(Path::new(env!("CARGO_BIN_EXE_api")), "").unwrap()
}

/// The same platform with the API on a throw-away PostgreSQL cluster (returned too, to outlive
/// the API), or `None` when the test is skipped (PostgreSQL not installed, `CI` not set).
fn postgres_platform(test: &str) -> Option<(pgcluster::Cluster, Platform)> {
    let cluster = pgcluster::Cluster::for_tests(test).unwrap()?;
    let database = Database::postgres(&cluster, "api").unwrap();
    let p = Platform::start_on(Path::new(env!("CARGO_BIN_EXE_api")), "", &database).unwrap();
    Some((cluster, p))
}

/// Calls with any token, failing loudly.
trait Calls {
    fn session(&self, sub: &str, role: &str) -> String;
    fn get(&self, token: &str, path: &str) -> Answer;
    fn post(&self, token: &str, path: &str, body: &Value) -> Answer;
    fn send(&self, method: &str, token: &str, path: &str, body: Option<&Value>) -> Answer;
    fn created(&self, token: &str, path: &str, body: &Value) -> Value;
}

impl Calls for Platform {
    /// A token for `sub` with `role`, with its session initiated on the platform host.
    fn session(&self, sub: &str, role: &str) -> String {
        self.login(sub, role).unwrap()
    }

    fn get(&self, token: &str, path: &str) -> Answer {
        self.http.call("GET", path, Some(token), None).unwrap()
    }

    fn post(&self, token: &str, path: &str, body: &Value) -> Answer {
        self.http
            .call("POST", path, Some(token), Some(body))
            .unwrap()
    }

    fn send(&self, method: &str, token: &str, path: &str, body: Option<&Value>) -> Answer {
        self.http.call(method, path, Some(token), body).unwrap()
    }

    fn created(&self, token: &str, path: &str, body: &Value) -> Value {
        let a = self.post(token, path, body);
        assert_eq!(a.status, 201, "POST {path}: {}", a.json);
        a.json
    }
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

#[test]
fn sessions_tokens_and_client_credentials() {
    sessions_tokens_and_client_credentials_on(platform());
}

#[test]
fn postgres_sessions_tokens_and_client_credentials() {
    let Some((_cluster, p)) = postgres_platform("postgres_sessions_tokens_and_client_credentials")
    else {
        return;
    };
    sessions_tokens_and_client_credentials_on(p);
}

fn sessions_tokens_and_client_credentials_on(p: Platform) {
    // No token, a garbage token, a token signed by someone else: 4010.
    let a = p.http.call("GET", "/merchants", None, None).unwrap();
    assert_eq!((a.status, a.code()), (401, "4010"));
    let a = p.get("not.a.jwt", "/merchants");
    assert_eq!((a.status, a.code()), (401, "4010"));
    let admin = p.api.token("fresh-ops", "platform_admin").unwrap();
    let mut forged = admin.clone();
    forged.pop();
    forged.push(if admin.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(p.get(&forged, "/merchants").code(), "4010");
    // A good token without a session: 4015; after initiating, 200.
    let a = p.get(&admin, "/merchants");
    assert_eq!((a.status, a.code()), (401, "4015"));
    let a = p.post(&admin, "/session/initiate", &json!({"host": "localhost"}));
    assert_eq!(a.status, 200, "{}", a.json);
    for field in ["session_id", "expires_at", "user"] {
        assert!(!a.json[field].is_null(), "{field}: {}", a.json);
    }
    assert_eq!(a.json["channel"], "web");
    assert_eq!(a.json["application"], "backoffice");
    assert!(a.json["reseller_id"].is_null());
    let a = p.post(
        &admin,
        "/session/initiate",
        &json!({"host": "unknown.example.com"}),
    );
    assert_eq!((a.status, a.code()), (404, "4040"));
    let a = p.get(&admin, "/merchants");
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(a.json["object"], "list");

    // The JWKS publishes the embedded key.
    let jwks = p
        .http
        .call("GET", "/.well-known/jwks.json", None, None)
        .unwrap();
    assert_eq!(jwks.json["keys"][0]["alg"], "ES256");

    // A token for a subject with no user record is authenticated but not authorised.
    let nobody = p.api.token("nobody", "merchant_admin").unwrap();
    let a = p.post(&nobody, "/session/initiate", &json!({"host": "localhost"}));
    assert_eq!((a.status, a.code()), (403, "4030"));

    // API clients: created with a secret shown once; the token acts as merchant_admin.
    let r = p.created(&admin, "/resellers", &json!({"name": "R"}));
    let m = p.created(
        &admin,
        "/merchants",
        &json!({"reseller_id": id(&r), "name": "M", "mcc": "5812", "country": "DE", "currency": "EUR"}),
    );
    // Each merchant gets its own 15-digit acquirer id (DE 42), which nothing changes.
    let mid = m["acquirer_mid"].as_str().unwrap().to_owned();
    assert!(
        mid.len() == 15 && mid.bytes().all(|b| b.is_ascii_digit()),
        "{mid}"
    );
    let other = p.created(
        &admin,
        "/merchants",
        &json!({"reseller_id": id(&r), "name": "M2", "mcc": "5812", "country": "DE", "currency": "EUR"}),
    );
    assert_ne!(other["acquirer_mid"], m["acquirer_mid"]);
    let patched = p.send(
        "PATCH",
        &admin,
        &format!("/merchants/{}", id(&m)),
        Some(&json!({"name": "M renamed", "acquirer_mid": "000000000000001"})),
    );
    assert_eq!(patched.status, 200, "{}", patched.json);
    assert_eq!(patched.json["acquirer_mid"], mid.as_str());
    assert_eq!(
        p.get(&admin, &format!("/merchants/{}", id(&m))).json["acquirer_mid"],
        mid.as_str()
    );
    let c = p.created(
        &admin,
        &format!("/merchants/{}/api-clients", id(&m)),
        &json!({"name": "till"}),
    );
    let (client_id, secret) = (
        c["client_id"].as_str().unwrap(),
        c["client_secret"].as_str().unwrap(),
    );
    assert!(client_id.starts_with("cli_"));
    let listed = p.get(&admin, &format!("/merchants/{}/api-clients", id(&m)));
    assert!(!listed.json.to_string().contains(secret));
    for path in ["/client/session", "/auth/token"] {
        let a = p
            .http
            .call(
                "POST",
                path,
                None,
                Some(&json!({"client_id": client_id, "client_secret": secret})),
            )
            .unwrap();
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(a.json["token_type"], "Bearer");
        assert_eq!(a.json["expires_in"], 3600);
        assert_eq!(a.json["merchant_id"], id(&m));
        let token = a.json["access_token"].as_str().unwrap();
        // The session is initiated at once; the client sees its merchant and nothing else.
        assert_eq!(p.get(token, &format!("/merchants/{}", id(&m))).status, 200);
        assert_eq!(p.get(token, &format!("/resellers/{}", id(&r))).status, 404);
        assert_eq!(p.get(token, "/resellers").status, 403);
    }
    // Ten failures in a row lock the client for 30 minutes, even against the right secret.
    for i in 0..10 {
        let a = p
            .http
            .call(
                "POST",
                "/client/session",
                None,
                Some(&json!({"client_id": client_id, "client_secret": "wrong"})),
            )
            .unwrap();
        assert_eq!(a.status, 401);
        assert_eq!(a.code(), if i < 9 { "4016" } else { "4017" }, "attempt {i}");
    }
    let a = p
        .http
        .call(
            "POST",
            "/client/session",
            None,
            Some(&json!({"client_id": client_id, "client_secret": secret})),
        )
        .unwrap();
    assert_eq!((a.status, a.code()), (401, "4017"));
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1700..=1800).contains(&retry), "{retry}");
    // Unknown clients and malformed bodies.
    let a = p
        .http
        .call(
            "POST",
            "/client/session",
            None,
            Some(&json!({"client_id": "cli_aaaaaaaaaaaaaaaaaaaaaaaa", "client_secret": "x"})),
        )
        .unwrap();
    assert_eq!(a.code(), "4016");
    let a = p
        .http
        .call("POST", "/client/session", None, Some(&json!({})))
        .unwrap();
    assert_eq!(a.code(), "4000");
    // Deleting the client ends its tokens.
    let c2 = p.created(
        &admin,
        &format!("/merchants/{}/api-clients", id(&m)),
        &json!({}),
    );
    let t2 = p
        .http
        .call(
            "POST",
            "/client/session",
            None,
            Some(&json!({"client_id": c2["client_id"], "client_secret": c2["client_secret"]})),
        )
        .unwrap()
        .json["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(p.get(&t2, "/merchants").status, 200);
    let path = format!(
        "/merchants/{}/api-clients/{}",
        id(&m),
        c2["client_id"].as_str().unwrap()
    );
    assert_eq!(p.send("DELETE", &admin, &path, None).status, 200);
    assert_eq!(p.get(&t2, "/merchants").code(), "4010");

    // Portal hosts: a reseller's host resolves to it, for users inside it only.
    let a = p.send(
        "PUT",
        &admin,
        &format!("/resellers/{}/domains", id(&r)),
        Some(&json!({"portal_hosts": ["pay.r.example.com"]})),
    );
    assert_eq!(a.status, 200, "{}", a.json);
    let a = p.post(
        &admin,
        "/session/initiate",
        &json!({"host": "pay.r.example.com"}),
    );
    assert_eq!(a.json["reseller_id"], id(&r));
    let other = p.created(&admin, "/resellers", &json!({"name": "Other"}));
    let a = p.send(
        "PUT",
        &admin,
        &format!("/resellers/{}/domains", id(&other)),
        Some(&json!({"portal_hosts": ["pay.r.example.com"]})),
    );
    assert_eq!((a.status, a.code()), (409, "4090"));
    let a = p.send(
        "PUT",
        &admin,
        &format!("/resellers/{}/domains", id(&other)),
        Some(&json!({"portal_hosts": ["localhost"]})),
    );
    assert_eq!((a.status, a.code()), (409, "4090"));
    p.created(
        &admin,
        &format!("/resellers/{}/users", id(&other)),
        &json!({"email": "o@example.com", "idp_subject": "other-admin"}),
    );
    let other_admin = p.api.token("other-admin", "reseller_admin").unwrap();
    let a = p.post(
        &other_admin,
        "/session/initiate",
        &json!({"host": "pay.r.example.com"}),
    );
    assert_eq!((a.status, a.code()), (404, "4040"));
}

#[test]
fn devices_get_identity_keys_from_keyd() {
    devices_get_identity_keys_from_keyd_on(platform());
}

#[test]
fn postgres_devices_get_identity_keys_from_keyd() {
    let Some((_cluster, p)) = postgres_platform("postgres_devices_get_identity_keys_from_keyd")
    else {
        return;
    };
    devices_get_identity_keys_from_keyd_on(p);
}

fn devices_get_identity_keys_from_keyd_on(p: Platform) {
    let admin = p.session("ops", "platform_admin");
    let r = p.created(&admin, "/resellers", &json!({"name": "R"}));
    let m = p.created(
        &admin,
        "/merchants",
        &json!({"reseller_id": id(&r), "name": "M", "mcc": "5812", "country": "DE", "currency": "EUR"}),
    );
    let mid = id(&m);
    let loc = p.created(
        &admin,
        &format!("/merchants/{mid}/locations"),
        &json!({"name": "Front", "address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115", "country": "DE"}, "timezone": "Europe/Berlin"}),
    );
    let devices = format!("/merchants/{mid}/devices");
    let d = p.created(
        &admin,
        &devices,
        &json!({"device_id": "POS-8F3A2C91", "model": "A920", "serial": "SN1", "location_id": id(&loc)}),
    );
    assert_eq!(d["device"]["device_status"], "inactive");
    assert_eq!(d["device"]["zone"], "z1");
    let secret = base64::engine::general_purpose::STANDARD
        .decode(d["identity_key"]["secret"].as_str().unwrap())
        .unwrap();
    assert_eq!(secret.len(), 32);
    let key_id = d["identity_key"]["key_id"].as_str().unwrap().to_owned();
    assert!(key_id.starts_with("idk-"));
    // The KCV the API reports is the HMAC KCV of the secret it showed once.
    let kcv = e2e::device::hmac(&secret, &[0u8; 16]).unwrap();
    let kcv_hex: String = kcv[..3].iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(d["identity_key"]["kcv"], kcv_hex);
    // Never again: not in the device, not in the list.
    let one = p.get(&admin, &format!("{devices}/POS-8F3A2C91"));
    assert_eq!(one.status, 200);
    let secret_b64 = d["identity_key"]["secret"].as_str().unwrap();
    assert!(!one.json.to_string().contains(secret_b64));
    assert!(
        !p.get(&admin, &devices)
            .json
            .to_string()
            .contains(secret_b64)
    );
    // And not in the database file.
    let db = std::fs::read(p.api.dir().join("api.db")).unwrap_or_default();
    let wal = std::fs::read(p.api.dir().join("api.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes
                .windows(secret_b64.len())
                .any(|w| w == secret_b64.as_bytes())
        );
        assert!(!bytes.windows(32).any(|w| w == secret.as_slice()));
    }

    // Idempotent creation: the replay is the same device, with the secret withheld.
    let headers = vec![
        ("Authorization".to_owned(), format!("Bearer {admin}")),
        ("Idempotency-Key".to_owned(), "register-77".to_owned()),
    ];
    let body = json!({"device_id": "POS-00000077", "model": "A", "serial": "S"}).to_string();
    let first = p
        .http
        .raw("POST", &devices, &headers, body.as_bytes())
        .unwrap();
    assert_eq!(first.status, 201, "{}", first.json);
    let replay = p
        .http
        .raw("POST", &devices, &headers, body.as_bytes())
        .unwrap();
    assert_eq!(replay.status, 201);
    assert_eq!(
        replay.json["identity_key"]["key_id"],
        first.json["identity_key"]["key_id"]
    );
    assert_ne!(
        replay.json["identity_key"]["secret"],
        first.json["identity_key"]["secret"]
    );
    let other = p
        .http
        .raw(
            "POST",
            &devices,
            &headers,
            body.replace("77", "78").as_bytes(),
        )
        .unwrap();
    assert_eq!((other.status, other.code()), (422, "4220"));
    assert_eq!(
        p.send(
            "POST",
            &admin,
            &format!("{devices}/POS-00000077/disable"),
            None
        )
        .status,
        200
    );

    // Duplicates, unknown zones, foreign locations, malformed ids.
    let again = p.post(
        &admin,
        &devices,
        &json!({"device_id": "POS-8F3A2C91", "model": "A", "serial": "S"}),
    );
    assert_eq!((again.status, again.code()), (409, "4090"));
    let zone = p.post(
        &admin,
        &devices,
        &json!({"device_id": "POS-00000002", "model": "A", "serial": "S", "zone": "nowhere"}),
    );
    assert_eq!((zone.status, zone.code()), (400, "4000"));
    assert_eq!(zone.json["error"]["details"]["fields"][0]["field"], "zone");
    // The refused id is free again.
    p.created(
        &admin,
        &devices,
        &json!({"device_id": "POS-00000002", "model": "A", "serial": "S"}),
    );
    let bad = p.post(
        &admin,
        &devices,
        &json!({"device_id": "pos-1", "model": "A", "serial": "S"}),
    );
    assert_eq!(
        bad.json["error"]["details"]["fields"][0]["field"],
        "device_id"
    );
    assert_eq!(p.get(&admin, &format!("{devices}/pos-1")).status, 404);

    // Identity rotation: a new secret, shown once, a new key id.
    let rotated = p.created(
        &admin,
        &format!("{devices}/POS-8F3A2C91/identity-keys"),
        &json!({}),
    );
    assert_ne!(rotated["key_id"], key_id.as_str());
    assert_ne!(rotated["secret"], secret_b64);
    assert_eq!(
        p.get(&admin, &format!("{devices}/POS-8F3A2C91")).json["identity_key"]["key_id"],
        rotated["key_id"]
    );

    // Disable / enable / rotate-keys.
    let a = p.post(
        &admin,
        &format!("{devices}/POS-8F3A2C91/enable"),
        &json!({}),
    );
    assert_eq!((a.status, a.code()), (409, "4092"));
    let a = p.post(
        &admin,
        &format!("{devices}/POS-8F3A2C91/disable"),
        &json!({}),
    );
    assert_eq!(a.json["device_status"], "disabled");
    let a = p.post(
        &admin,
        &format!("{devices}/POS-8F3A2C91/disable"),
        &json!({}),
    );
    assert_eq!(
        (a.status, a.json["device_status"].as_str()),
        (200, Some("disabled"))
    );
    let a = p.post(
        &admin,
        &format!("{devices}/POS-8F3A2C91/enable"),
        &json!({}),
    );
    assert_eq!(a.json["device_status"], "inactive");
    let a = p.post(
        &admin,
        &format!("{devices}/POS-8F3A2C91/rotate-keys"),
        &json!({}),
    );
    assert_eq!(a.status, 200);

    // A location with a device cannot go; PATCH moves the device, then it can.
    let loc_path = format!("/merchants/{mid}/locations/{}", id(&loc));
    assert_eq!(p.send("DELETE", &admin, &loc_path, None).code(), "4090");
    let a = p.send(
        "PATCH",
        &admin,
        &format!("{devices}/POS-8F3A2C91"),
        Some(&json!({"location_id": null, "label": "Till 1"})),
    );
    assert_eq!(a.json["label"], "Till 1");
    assert!(a.json["location_id"].is_null());
    assert_eq!(p.send("DELETE", &admin, &loc_path, None).status, 200);

    // Pagination: newest first, cursor by id, no overlap.
    for i in 3..8 {
        p.created(
            &admin,
            &devices,
            &json!({"device_id": format!("POS-0000000{i}"), "model": "A", "serial": "S"}),
        );
    }
    let first = p.get(&admin, &format!("{devices}?limit=3"));
    assert_eq!(first.json["has_more"], true);
    let ids: Vec<&str> = first.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["POS-00000007", "POS-00000006", "POS-00000005"]);
    assert_eq!(first.json["next_cursor"], "POS-00000005");
    let rest = p.get(
        &admin,
        &format!("{devices}?limit=100&starting_after=POS-00000005"),
    );
    let ids: Vec<&str> = rest.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "POS-00000004",
            "POS-00000003",
            "POS-00000002",
            "POS-00000077",
            "POS-8F3A2C91"
        ]
    );
    assert_eq!(rest.json["has_more"], false);
    assert!(rest.json["next_cursor"].is_null());
    for bad in [
        "limit=0",
        "limit=101",
        "limit=x",
        "starting_after=POS-99999999",
    ] {
        let a = p.get(&admin, &format!("{devices}?{bad}"));
        assert_eq!((a.status, a.code()), (400, "4000"), "{bad}");
    }

    // Everything survives a kill -9 of the API.
    let mut api = p.api;
    api.kill();
    api.restart().unwrap();
    let a = api
        .client()
        .call("GET", &format!("{devices}?limit=100"), Some(&admin), None)
        .unwrap();
    assert_eq!(a.json["data"].as_array().unwrap().len(), 8, "{}", a.json);
}

/// The tenancy used by the matrix: R1 ⊃ R2 ⊃ M (own) and R3 ⊃ F (foreign).
struct World {
    r1: String,
    r2: String,
    r3: String,
    m: String,
    f: String,
}

#[test]
fn authorization_matrix_every_role_every_endpoint_own_and_foreign() {
    authorization_matrix_every_role_every_endpoint_own_and_foreign_on(platform());
}

#[test]
fn postgres_authorization_matrix_every_role_every_endpoint_own_and_foreign() {
    let Some((_cluster, p)) = postgres_platform(
        "postgres_authorization_matrix_every_role_every_endpoint_own_and_foreign",
    ) else {
        return;
    };
    authorization_matrix_every_role_every_endpoint_own_and_foreign_on(p);
}

fn authorization_matrix_every_role_every_endpoint_own_and_foreign_on(p: Platform) {
    let admin = p.session("ops", "platform_admin");
    let r1 = id(&p.created(&admin, "/resellers", &json!({"name": "R1"})));
    let r2 = id(&p.created(
        &admin,
        "/resellers",
        &json!({"name": "R2", "parent_id": r1}),
    ));
    let r3 = id(&p.created(&admin, "/resellers", &json!({"name": "R3"})));
    let merchant = |r: &str, name: &str| {
        id(&p.created(&admin, "/merchants", &json!({"reseller_id": r, "name": name, "mcc": "5812", "country": "DE", "currency": "EUR"})))
    };
    let w = World {
        m: merchant(&r2, "M"),
        f: merchant(&r3, "F"),
        r1,
        r2,
        r3,
    };
    p.created(
        &admin,
        &format!("/resellers/{}/users", w.r1),
        &json!({"email": "ra@example.com", "idp_subject": "ra"}),
    );
    p.created(
        &admin,
        &format!("/merchants/{}/users", w.m),
        &json!({"email": "ma@example.com", "role": "merchant_admin", "idp_subject": "ma"}),
    );
    p.created(
        &admin,
        &format!("/merchants/{}/users", w.m),
        &json!({"email": "mu@example.com", "role": "merchant_user", "idp_subject": "mu"}),
    );
    let who = [
        ("platform_admin", admin.clone()),
        ("reseller_admin", p.session("ra", "reseller_admin")),
        ("merchant_admin", p.session("ma", "merchant_admin")),
        ("merchant_user", p.session("mu", "merchant_user")),
    ];
    let mut next_device = 0x100u32;
    let mut cells = 0;
    let mut failures = Vec::new();

    // Each row: method, path, body, expected status for [platform, reseller, merchant admin,
    // merchant user] on the own tenant, then on the foreign one. `{r}` is the reseller (R1 own,
    // R3 foreign), `{m}` the merchant; `{x}` is a fresh child object made for each cell.
    type Row = (&'static str, &'static str, Value, [u16; 4], [u16; 4], Fresh);
    let rows: Vec<Row> = vec![
        (
            "GET",
            "/resellers/{r}",
            json!(null),
            [200, 200, 404, 404],
            [200, 404, 404, 404],
            Fresh::None,
        ),
        (
            "PATCH",
            "/resellers/{r}",
            json!({"name": "n"}),
            [200, 200, 404, 404],
            [200, 404, 404, 404],
            Fresh::None,
        ),
        (
            "DELETE",
            "/resellers/{x}",
            json!(null),
            [200, 200, 404, 404],
            [200, 404, 404, 404],
            Fresh::SubReseller,
        ),
        (
            "GET",
            "/resellers/{r}/hierarchy",
            json!(null),
            [200, 200, 404, 404],
            [200, 404, 404, 404],
            Fresh::None,
        ),
        (
            "POST",
            "/resellers/{r}/fee-templates",
            json!({"name": "std", "percent_bps": 150}),
            [201, 201, 404, 404],
            [201, 404, 404, 404],
            Fresh::None,
        ),
        (
            "GET",
            "/resellers/{r}/fee-templates",
            json!(null),
            [200, 200, 404, 404],
            [200, 404, 404, 404],
            Fresh::None,
        ),
        (
            "GET",
            "/resellers/{r}/fee-templates/{x}",
            json!(null),
            [200, 200, 404, 404],
            [200, 404, 404, 404],
            Fresh::FeeTemplate,
        ),
        (
            "PATCH",
            "/resellers/{r}/fee-templates/{x}",
            json!({"percent_bps": 10}),
            [200, 200, 404, 404],
            [200, 404, 404, 404],
            Fresh::FeeTemplate,
        ),
        (
            "DELETE",
            "/resellers/{r}/fee-templates/{x}",
            json!(null),
            [200, 200, 404, 404],
            [200, 404, 404, 404],
            Fresh::FeeTemplate,
        ),
        (
            "GET",
            "/resellers/{r}/branding",
            json!(null),
            [200, 200, 404, 404],
            [200, 404, 404, 404],
            Fresh::None,
        ),
        (
            "PUT",
            "/resellers/{r}/branding",
            json!({"display_name": "D", "primary_color": "#112233"}),
            [200, 200, 404, 404],
            [200, 404, 404, 404],
            Fresh::None,
        ),
        (
            "GET",
            "/resellers/{r}/domains",
            json!(null),
            [200, 200, 404, 404],
            [200, 404, 404, 404],
            Fresh::None,
        ),
        (
            "PUT",
            "/resellers/{r}/domains",
            json!({"portal_hosts": []}),
            [200, 200, 404, 404],
            [200, 404, 404, 404],
            Fresh::None,
        ),
        (
            "POST",
            "/resellers/{r}/users",
            json!({"email": "x@example.com"}),
            [201, 201, 404, 404],
            [201, 404, 404, 404],
            Fresh::None,
        ),
        (
            "GET",
            "/resellers/{r}/users",
            json!(null),
            [200, 200, 404, 404],
            [200, 404, 404, 404],
            Fresh::None,
        ),
        (
            "GET",
            "/resellers/{r}/users/{x}",
            json!(null),
            [200, 200, 404, 404],
            [200, 404, 404, 404],
            Fresh::ResellerUser,
        ),
        (
            "PATCH",
            "/resellers/{r}/users/{x}",
            json!({"name": "n"}),
            [200, 200, 404, 404],
            [200, 404, 404, 404],
            Fresh::ResellerUser,
        ),
        (
            "DELETE",
            "/resellers/{r}/users/{x}",
            json!(null),
            [200, 200, 404, 404],
            [200, 404, 404, 404],
            Fresh::ResellerUser,
        ),
        (
            "POST",
            "/merchants",
            json!({"reseller_id": "{r}", "name": "N", "mcc": "5812", "country": "DE", "currency": "EUR"}),
            [201, 201, 404, 404],
            [201, 404, 404, 404],
            Fresh::None,
        ),
        (
            "GET",
            "/merchants/{m}",
            json!(null),
            [200, 200, 200, 200],
            [200, 404, 404, 404],
            Fresh::None,
        ),
        (
            "PATCH",
            "/merchants/{m}",
            json!({"name": "n"}),
            [200, 200, 200, 403],
            [200, 404, 404, 404],
            Fresh::None,
        ),
        (
            "PUT",
            "/merchants/{m}/terminal-parameters",
            json!({"contactless": {"limit": "5000"}}),
            [200, 200, 200, 403],
            [200, 404, 404, 404],
            Fresh::None,
        ),
        (
            "POST",
            "/merchants/{m}/locations",
            json!({"name": "L", "address": {"line1": "a", "city": "b", "postal_code": "1", "country": "DE"}}),
            [201, 201, 201, 403],
            [201, 404, 404, 404],
            Fresh::None,
        ),
        (
            "GET",
            "/merchants/{m}/locations",
            json!(null),
            [200, 200, 200, 200],
            [200, 404, 404, 404],
            Fresh::None,
        ),
        (
            "GET",
            "/merchants/{m}/locations/{x}",
            json!(null),
            [200, 200, 200, 200],
            [200, 404, 404, 404],
            Fresh::Location,
        ),
        (
            "PATCH",
            "/merchants/{m}/locations/{x}",
            json!({"name": "n"}),
            [200, 200, 200, 403],
            [200, 404, 404, 404],
            Fresh::Location,
        ),
        (
            "DELETE",
            "/merchants/{m}/locations/{x}",
            json!(null),
            [200, 200, 200, 403],
            [200, 404, 404, 404],
            Fresh::Location,
        ),
        (
            "POST",
            "/merchants/{m}/devices",
            json!({"device_id": "{device}", "model": "A", "serial": "S"}),
            [201, 201, 201, 403],
            [201, 404, 404, 404],
            Fresh::None,
        ),
        (
            "GET",
            "/merchants/{m}/devices",
            json!(null),
            [200, 200, 200, 200],
            [200, 404, 404, 404],
            Fresh::None,
        ),
        (
            "GET",
            "/merchants/{m}/devices/{x}",
            json!(null),
            [200, 200, 200, 200],
            [200, 404, 404, 404],
            Fresh::Device,
        ),
        (
            "PATCH",
            "/merchants/{m}/devices/{x}",
            json!({"label": "n"}),
            [200, 200, 200, 403],
            [200, 404, 404, 404],
            Fresh::Device,
        ),
        (
            "POST",
            "/merchants/{m}/devices/{x}/disable",
            json!(null),
            [200, 200, 200, 403],
            [200, 404, 404, 404],
            Fresh::Device,
        ),
        (
            "POST",
            "/merchants/{m}/devices/{x}/enable",
            json!(null),
            [200, 200, 200, 403],
            [200, 404, 404, 404],
            Fresh::DisabledDevice,
        ),
        (
            "POST",
            "/merchants/{m}/devices/{x}/identity-keys",
            json!(null),
            [201, 201, 201, 403],
            [201, 404, 404, 404],
            Fresh::Device,
        ),
        (
            "POST",
            "/merchants/{m}/devices/{x}/rotate-keys",
            json!(null),
            [200, 200, 200, 403],
            [200, 404, 404, 404],
            Fresh::Device,
        ),
        (
            "PUT",
            "/merchants/{m}/devices/{x}/terminal-parameters",
            json!({"a": 1}),
            [200, 200, 200, 403],
            [200, 404, 404, 404],
            Fresh::Device,
        ),
        (
            "POST",
            "/merchants/{m}/users",
            json!({"email": "u@example.com", "role": "merchant_user"}),
            [201, 201, 201, 403],
            [201, 404, 404, 404],
            Fresh::None,
        ),
        (
            "GET",
            "/merchants/{m}/users",
            json!(null),
            [200, 200, 200, 200],
            [200, 404, 404, 404],
            Fresh::None,
        ),
        (
            "GET",
            "/merchants/{m}/users/{x}",
            json!(null),
            [200, 200, 200, 200],
            [200, 404, 404, 404],
            Fresh::MerchantUser,
        ),
        (
            "PATCH",
            "/merchants/{m}/users/{x}",
            json!({"name": "n"}),
            [200, 200, 200, 403],
            [200, 404, 404, 404],
            Fresh::MerchantUser,
        ),
        (
            "DELETE",
            "/merchants/{m}/users/{x}",
            json!(null),
            [200, 200, 200, 403],
            [200, 404, 404, 404],
            Fresh::MerchantUser,
        ),
        (
            "POST",
            "/merchants/{m}/api-clients",
            json!({}),
            [201, 201, 201, 403],
            [201, 404, 404, 404],
            Fresh::None,
        ),
        (
            "GET",
            "/merchants/{m}/api-clients",
            json!(null),
            [200, 200, 200, 200],
            [200, 404, 404, 404],
            Fresh::None,
        ),
        (
            "DELETE",
            "/merchants/{m}/api-clients/{x}",
            json!(null),
            [200, 200, 200, 403],
            [200, 404, 404, 404],
            Fresh::ApiClient,
        ),
    ];
    for (method, path, body, own, foreign) in rows
        .iter()
        .map(|(a, b, c, d, e, _)| (a, b, c, d, e))
        .zip(rows.iter().map(|r| r.5))
        .map(|((a, b, c, d, e), f)| (a, b, (c, f), d, e))
    {
        let (body, fresh) = body;
        for (tenant, expected) in [("own", own), ("foreign", foreign)] {
            let (r, m) = if tenant == "own" {
                (&w.r1, &w.m)
            } else {
                (&w.r3, &w.f)
            };
            for ((role, token), want) in who.iter().zip(expected) {
                let x = make(&p, &admin, fresh, &w, tenant == "own", &mut next_device);
                next_device += 1;
                let device = format!("POS-{next_device:08X}");
                let fill = |s: &str| {
                    s.replace("{r}", r)
                        .replace("{m}", m)
                        .replace("{x}", &x)
                        .replace("{device}", &device)
                };
                let path = fill(path);
                let body: Option<Value> = (!body.is_null())
                    .then(|| serde_json::from_str(&fill(&body.to_string())).unwrap());
                let a = p.send(method, token, &path, body.as_ref());
                cells += 1;
                if a.status != *want {
                    failures.push(format!(
                        "{role} {tenant} {method} {path}: want {want}, got {} {}",
                        a.status, a.json
                    ));
                }
                let code = a.code();
                match a.status {
                    404 => assert_eq!(code, "4040"),
                    403 => assert_eq!(code, "4030"),
                    _ => {}
                }
            }
        }
    }
    // Platform-wide lists and top-level creation.
    let flat = [
        ("GET", "/resellers", [200, 200, 403, 403]),
        ("GET", "/merchants", [200, 200, 200, 200]),
        ("POST", "/resellers", [201, 403, 403, 403]),
    ];
    for (method, path, expected) in flat {
        for ((role, token), want) in who.iter().zip(expected) {
            let body = (method == "POST").then(|| json!({"name": "top"}));
            let a = p.send(method, token, path, body.as_ref());
            cells += 1;
            if a.status != want {
                failures.push(format!(
                    "{role} {method} {path}: want {want}, got {} {}",
                    a.status, a.json
                ));
            }
        }
    }
    // What a reseller admin lists is its subtree only.
    let ra = &who[1].1;
    let listed = p.get(ra, "/merchants?limit=100").json.to_string();
    assert!(listed.contains(&w.m) && !listed.contains(&w.f));
    let listed = p.get(ra, "/resellers?limit=100").json.to_string();
    assert!(listed.contains(&w.r2) && !listed.contains(&w.r3));
    let mu = &who[3].1;
    let listed = p.get(mu, "/merchants").json;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(
        failures.is_empty(),
        "{} of {cells} cells wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(cells > 350, "{cells}");
    let _ = &w.r2;
}

#[derive(Debug, Clone, Copy)]
enum Fresh {
    None,
    SubReseller,
    FeeTemplate,
    ResellerUser,
    Location,
    Device,
    DisabledDevice,
    MerchantUser,
    ApiClient,
}

/// Makes the object a cell acts on (as the platform admin), so destructive cells do not
/// disturb each other.
fn make(p: &Platform, admin: &str, fresh: Fresh, w: &World, own: bool, n: &mut u32) -> String {
    let (r, m) = if own { (&w.r1, &w.m) } else { (&w.r3, &w.f) };
    match fresh {
        Fresh::None => String::new(),
        Fresh::SubReseller => {
            let parent = if own { &w.r2 } else { &w.r3 };
            id(&p.created(admin, "/resellers", &json!({"name": "S", "parent_id": parent})))
        }
        Fresh::FeeTemplate => id(&p.created(admin, &format!("/resellers/{r}/fee-templates"), &json!({"name": "t", "percent_bps": 1}))),
        Fresh::ResellerUser => id(&p.created(admin, &format!("/resellers/{r}/users"), &json!({"email": "z@example.com"}))),
        Fresh::MerchantUser => id(&p.created(admin, &format!("/merchants/{m}/users"), &json!({"email": "z@example.com", "role": "merchant_user"}))),
        Fresh::Location => id(&p.created(admin, &format!("/merchants/{m}/locations"), &json!({"name": "L", "address": {"line1": "a", "city": "b", "postal_code": "1", "country": "DE"}}))),
        Fresh::ApiClient => p.created(admin, &format!("/merchants/{m}/api-clients"), &json!({}))["client_id"].as_str().unwrap().to_owned(),
        Fresh::Device | Fresh::DisabledDevice => {
            *n += 1;
            let device_id = format!("POS-{n:08X}");
            p.created(admin, &format!("/merchants/{m}/devices"), &json!({"device_id": device_id, "model": "A", "serial": "S"}));
            if matches!(fresh, Fresh::DisabledDevice) {
                let a = p.post(admin, &format!("/merchants/{m}/devices/{device_id}/disable"), &json!({}));
                assert_eq!(a.status, 200);
            }
            device_id
        }
    }
}

#[test]
fn bad_input_is_a_4xx_with_the_right_code_and_writes_nothing() {
    bad_input_is_a_4xx_with_the_right_code_and_writes_nothing_on(platform());
}

#[test]
fn postgres_bad_input_is_a_4xx_with_the_right_code_and_writes_nothing() {
    let Some((_cluster, p)) =
        postgres_platform("postgres_bad_input_is_a_4xx_with_the_right_code_and_writes_nothing")
    else {
        return;
    };
    bad_input_is_a_4xx_with_the_right_code_and_writes_nothing_on(p);
}

fn bad_input_is_a_4xx_with_the_right_code_and_writes_nothing_on(p: Platform) {
    let admin = p.session("ops", "platform_admin");
    let r = id(&p.created(&admin, "/resellers", &json!({"name": "R"})));
    let m = id(&p.created(
        &admin,
        "/merchants",
        &json!({"reseller_id": r, "name": "M", "mcc": "5812", "country": "DE", "currency": "EUR"}),
    ));
    let creates: Vec<(String, &str)> = vec![
        ("/resellers".into(), "/resellers"),
        (format!("/resellers/{r}/fee-templates"), "fee"),
        (format!("/resellers/{r}/users"), "users"),
        ("/merchants".into(), "/merchants"),
        (format!("/merchants/{m}/locations"), "loc"),
        (format!("/merchants/{m}/devices"), "dev"),
        (format!("/merchants/{m}/users"), "musers"),
    ];
    let count = |path: &str| -> usize {
        let a = p.get(&admin, &format!("{path}?limit=100"));
        a.json["data"].as_array().map_or(0, Vec::len)
    };
    for (path, _) in &creates {
        let before = count(path);
        // Malformed JSON, not an object, missing fields, wrong types, oversized.
        let cases: Vec<(Vec<u8>, u16, &str)> = vec![
            (b"{\"name\":".to_vec(), 400, "4002"),
            (b"not json".to_vec(), 400, "4002"),
            (b"[1,2]".to_vec(), 400, "4000"),
            (b"{}".to_vec(), 400, "4000"),
            (br#"{"name": 5, "email": false, "device_id": 7, "reseller_id": "not-a-uuid", "percent_bps": "x", "address": 3, "mcc": 12}"#.to_vec(), 400, "4000"),
            (vec![b' '; 1_100_000], 400, "4002"),
        ];
        for (body, status, code) in cases {
            let headers = vec![("Authorization".to_owned(), format!("Bearer {admin}"))];
            let a = p.http.raw("POST", path, &headers, &body).unwrap();
            assert_eq!(
                (a.status, a.code()),
                (status, code),
                "POST {path} {}: {}",
                String::from_utf8_lossy(&body[..body.len().min(40)]),
                a.json
            );
            if code == "4000" && body.len() > 2 && body[0] == b'{' {
                assert!(
                    a.json["error"]["details"]["fields"]
                        .as_array()
                        .is_some_and(|f| !f.is_empty()),
                    "{}",
                    a.json
                );
            }
        }
        assert_eq!(count(path), before, "{path}: something was written");
    }
    // Bad ids in paths are 404, never 500.
    for path in [
        "/resellers/123".to_owned(),
        "/resellers/00000000-0000-4000-8000-000000000000".to_owned(),
        format!("/merchants/{m}/devices/POS-1"),
        format!("/merchants/{m}/locations/%00"),
        format!("/merchants/{m}/users/{r}"),
        "/merchants/ZZZ/devices".to_owned(),
    ] {
        let a = p.get(&admin, &path);
        assert_eq!((a.status, a.code()), (404, "4040"), "{path}");
    }
    // Unknown path and wrong method.
    assert_eq!(p.get(&admin, "/nope").code(), "4040");
    let a = p.send("DELETE", &admin, "/merchants", None);
    assert_eq!((a.status, a.code()), (405, "4050"));
    assert!(a.header("allow").unwrap().contains("GET"));
    // Money and enum rules in fee templates; references outside the tenant.
    let a = p.post(
        &admin,
        &format!("/resellers/{r}/fee-templates"),
        &json!({"name": "t", "percent_bps": 10, "fixed": {"value": "01", "currency": "EUR"}}),
    );
    assert_eq!(
        a.json["error"]["details"]["fields"][0]["field"],
        "fixed.value"
    );
    let a = p.post(
        &admin,
        &format!("/resellers/{r}/fee-templates"),
        &json!({"name": "t", "percent_bps": 10, "per_brand": {"diners": {"percent_bps": 1}}}),
    );
    assert_eq!(
        a.json["error"]["details"]["fields"][0]["field"],
        "per_brand.diners"
    );
    let other = id(&p.created(&admin, "/resellers", &json!({"name": "O"})));
    let t = id(&p.created(
        &admin,
        &format!("/resellers/{other}/fee-templates"),
        &json!({"name": "t", "percent_bps": 1}),
    ));
    let a = p.send(
        "PATCH",
        &admin,
        &format!("/merchants/{m}"),
        Some(&json!({"fee_template_id": t})),
    );
    assert_eq!(
        a.json["error"]["details"]["fields"][0]["field"],
        "fee_template_id"
    );
    let a = p.post(
        &admin,
        "/resellers",
        &json!({"name": "x", "parent_id": "00000000-0000-4000-8000-000000000000"}),
    );
    assert_eq!(a.code(), "4040");
    // Deleting a reseller with merchants or children is refused.
    let a = p.send("DELETE", &admin, &format!("/resellers/{r}"), None);
    assert_eq!((a.status, a.code()), (409, "4090"));
    // The hierarchy counts what is below.
    p.created(
        &admin,
        &format!("/merchants/{m}/devices"),
        &json!({"device_id": "POS-0000ABCD", "model": "A", "serial": "S"}),
    );
    let h = p.get(&admin, &format!("/resellers/{r}/hierarchy"));
    assert_eq!(h.json["merchant_count"], 1);
    assert_eq!(h.json["device_count"], 1);
    assert_eq!(h.json["merchants"][0]["device_count"], 1);
    // OpenAPI describes every route and metrics count what was asked.
    let doc = p.http.call("GET", "/openapi.json", None, None).unwrap();
    assert_eq!(doc.json["openapi"], "3.1.0");
    assert!(doc.json["paths"]["/merchants/{merchant_id}/devices"]["post"].is_object());
    let metrics = p.http.call("GET", "/metrics", None, None).unwrap();
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.contains("method=\"POST\",route=\"/merchants/{merchant_id}/devices\",status=\"201\""),
        "{text}"
    );
}
