//! The backoffice audit trail over real HTTP: a real `api` on a SQLite file (and PostgreSQL),
//! a real keyd on a SoftHSM token keying the chain, and `api audit-verify` run as an operator
//! would, before and after the database is tampered with.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::api::{Answer, Database, Platform};
use serde_json::{Value, json};

fn api() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_api"))
}

/// A call that must succeed; its request id.
fn mutate(
    p: &Platform,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (String, Value) {
    let a: Answer = p.http.call(method, path, Some(token), body).unwrap();
    assert!(a.status < 300, "{method} {path}: {} {}", a.status, a.json);
    (a.header("x-request-id").unwrap().to_owned(), a.json)
}

fn entries(p: &Platform, token: &str, query: &str) -> Vec<Value> {
    let a = p
        .http
        .call(
            "GET",
            &format!("/audit-events?limit=100{query}"),
            Some(token),
            None,
        )
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    a.json["data"].as_array().unwrap().clone()
}

/// Waits until the housekeeping round has linked every entry.
fn linked(p: &Platform) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = entries(p, &p.admin, "");
        if all.iter().all(|e| e["chain_seq"].is_u64()) {
            return all;
        }
        assert!(Instant::now() < deadline, "entries not linked: {all:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn every_mutation_leaves_one_entry_on(p: &Platform) {
    let admin = p.admin.clone();
    let (reseller_req, r) = mutate(
        p,
        &admin,
        "POST",
        "/resellers",
        Some(&json!({"name": "Audit R"})),
    );
    let rid = r["id"].as_str().unwrap().to_owned();
    let merchant = |name: &str| {
        mutate(
            p,
            &admin,
            "POST",
            "/merchants",
            Some(
                &json!({"reseller_id": rid, "name": name, "mcc": "5812", "country": "DE", "currency": "EUR"}),
            ),
        )
    };
    let (merchant_req, a) = merchant("Audit A");
    let (_, b) = merchant("Audit B");
    let (a, b) = (
        a["id"].as_str().unwrap().to_owned(),
        b["id"].as_str().unwrap().to_owned(),
    );

    let mut expected: Vec<(String, &str, &str)> = vec![
        (reseller_req, "ResellerCreate", "reseller"),
        (merchant_req, "MerchantCreate", "merchant"),
    ];
    let (req, l) = mutate(
        p,
        &admin,
        "POST",
        &format!("/merchants/{a}/locations"),
        Some(
            &json!({"name": "Till", "address": {"line1": "1 St", "city": "Berlin", "postal_code": "10115", "country": "DE"}}),
        ),
    );
    expected.push((req, "LocationCreate", "location"));
    let lid = l["id"].as_str().unwrap();
    let (req, _) = mutate(
        p,
        &admin,
        "PATCH",
        &format!("/merchants/{a}/locations/{lid}"),
        Some(&json!({"name": "Till 2"})),
    );
    expected.push((req, "LocationPatch", "location"));
    // One change's "after" is the next one's "before": both digest the record as stored.
    let on_location = entries(p, &admin, &format!("&object_id={lid}"));
    let digest = |action: &str, which: &str| {
        on_location
            .iter()
            .find(|e| e["action"] == action)
            .map(|e| e[which].clone())
            .unwrap_or_else(|| panic!("no {action} entry: {on_location:?}"))
    };
    assert!(digest("LocationCreate", "digest_after").is_string());
    assert_eq!(
        digest("LocationCreate", "digest_after"),
        digest("LocationPatch", "digest_before")
    );
    let (req, device) = mutate(
        p,
        &admin,
        "POST",
        &format!("/merchants/{a}/devices"),
        Some(&json!({"device_id": "POS-0000AD01", "model": "A920", "serial": "S1"})),
    );
    expected.push((req, "DeviceCreate", "device"));
    let identity_secret = device["identity_key"]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let (req, _) = mutate(
        p,
        &admin,
        "POST",
        &format!("/merchants/{a}/devices/POS-0000AD01/disable"),
        None,
    );
    expected.push((req, "DeviceDisable", "device"));
    let (req, hook) = mutate(
        p,
        &admin,
        "POST",
        &format!("/merchants/{a}/webhook-endpoints"),
        Some(&json!({"url": "https://hooks.example.com/a", "enabled_events": ["*"]})),
    );
    expected.push((req, "MerchantWebhookCreate", "webhook_endpoint"));
    let webhook_secret = hook["secret"].as_str().unwrap().to_owned();
    let hid = hook["endpoint"]["id"].as_str().unwrap();
    let (req, _) = mutate(
        p,
        &admin,
        "DELETE",
        &format!("/merchants/{a}/webhook-endpoints/{hid}"),
        None,
    );
    expected.push((req, "MerchantWebhookDelete", "webhook_endpoint"));
    let (req, t) = mutate(
        p,
        &admin,
        "POST",
        &format!("/resellers/{rid}/fee-templates"),
        Some(&json!({"name": "std", "percent_bps": 100})),
    );
    expected.push((req, "FeeTemplateCreate", "fee_template"));
    let tid = t["id"].as_str().unwrap();
    let (req, _) = mutate(
        p,
        &admin,
        "PATCH",
        &format!("/resellers/{rid}/fee-templates/{tid}"),
        Some(&json!({"name": "std 2"})),
    );
    expected.push((req, "FeeTemplatePatch", "fee_template"));
    let (req, _) = mutate(
        p,
        &admin,
        "DELETE",
        &format!("/resellers/{rid}/fee-templates/{tid}"),
        None,
    );
    expected.push((req, "FeeTemplateDelete", "fee_template"));

    // Endpoints that take the merchant's events (nobody listens: their deliveries stay
    // pending), managed through every webhook route.
    let mut secrets = vec![webhook_secret];
    let mut hooks = Vec::new();
    for (owner, prefix) in [
        (format!("/merchants/{a}"), "Merchant"),
        (format!("/resellers/{rid}"), "Reseller"),
    ] {
        let (req, hook) = mutate(
            p,
            &admin,
            "POST",
            &format!("{owner}/webhook-endpoints"),
            Some(&json!({"url": "http://127.0.0.1:1/hook", "enabled_events": ["merchant.*"]})),
        );
        expected.push((
            req,
            if prefix == "Merchant" {
                "MerchantWebhookCreate"
            } else {
                "ResellerWebhookCreate"
            },
            "webhook_endpoint",
        ));
        secrets.push(hook["secret"].as_str().unwrap().to_owned());
        let base = format!(
            "{owner}/webhook-endpoints/{}",
            hook["endpoint"]["id"].as_str().unwrap()
        );
        let (req, _) = mutate(
            p,
            &admin,
            "PATCH",
            &base,
            Some(&json!({"description": "audited"})),
        );
        expected.push((
            req,
            if prefix == "Merchant" {
                "MerchantWebhookPatch"
            } else {
                "ResellerWebhookPatch"
            },
            "webhook_endpoint",
        ));
        let (req, rotated) = mutate(
            p,
            &admin,
            "POST",
            &format!("{base}/rotate-secret"),
            Some(&json!({})),
        );
        expected.push((
            req,
            if prefix == "Merchant" {
                "MerchantWebhookRotate"
            } else {
                "ResellerWebhookRotate"
            },
            "webhook_endpoint",
        ));
        secrets.push(rotated["secret"].as_str().unwrap().to_owned());
        hooks.push((prefix, base));
    }

    // The rest of the tenant's mutating routes, one call each.
    let calls: Vec<(&str, String, Value, &str, &str)> = vec![
        (
            "PATCH",
            format!("/resellers/{rid}"),
            json!({"name": "Audit R2"}),
            "ResellerPatch",
            "reseller",
        ),
        (
            "PUT",
            format!("/resellers/{rid}/branding"),
            json!({"display_name": "Audit Pay"}),
            "BrandingPut",
            "reseller",
        ),
        (
            "PUT",
            format!("/resellers/{rid}/domains"),
            json!({"portal_hosts": ["audit.example.com"]}),
            "DomainsPut",
            "reseller",
        ),
        (
            "POST",
            format!("/resellers/{rid}/users"),
            json!({"email": "ra@example.com"}),
            "ResellerUserCreate",
            "user",
        ),
        (
            "PATCH",
            format!("/merchants/{a}"),
            json!({"name": "Audit A2"}),
            "MerchantPatch",
            "merchant",
        ),
        (
            "PUT",
            format!("/merchants/{a}/terminal-parameters"),
            json!({"contactless": {"enabled": true}}),
            "MerchantParameters",
            "merchant",
        ),
        (
            "PATCH",
            format!("/merchants/{a}/devices/POS-0000AD01"),
            json!({"label": "till"}),
            "DevicePatch",
            "device",
        ),
        (
            "POST",
            format!("/merchants/{a}/devices/POS-0000AD01/enable"),
            json!({}),
            "DeviceEnable",
            "device",
        ),
        (
            "POST",
            format!("/merchants/{a}/devices/POS-0000AD01/rotate-keys"),
            json!({}),
            "DeviceRotateKeys",
            "device",
        ),
        (
            "PUT",
            format!("/merchants/{a}/devices/POS-0000AD01/terminal-parameters"),
            json!({"beep": false}),
            "DeviceParameters",
            "device",
        ),
        (
            "POST",
            format!("/merchants/{a}/devices/POS-0000AD01/identity-keys"),
            json!({}),
            "DeviceIdentityKey",
            "device",
        ),
        (
            "POST",
            format!("/merchants/{a}/api-clients"),
            json!({"name": "shop"}),
            "ApiClientCreate",
            "api_client",
        ),
        (
            "POST",
            format!("/merchants/{a}/users"),
            json!({"email": "ua@example.com", "role": "merchant_user"}),
            "UserCreate",
            "user",
        ),
        (
            "PUT",
            "/app-versions/A920".to_owned(),
            json!({"latest_version": "2.0.0", "url": "https://u.example.com/a.apk"}),
            "AppVersionPut",
            "app_version",
        ),
        (
            "POST",
            format!("/merchants/{a}/settlements"),
            json!({}),
            "SettlementCreate",
            "settlement",
        ),
    ];
    let mut made = std::collections::HashMap::new();
    for (method, path, body, action, kind) in calls {
        let (req, answer) = mutate(p, &admin, method, &path, Some(&body));
        made.insert(action, answer);
        expected.push((req, action, kind));
    }
    let client = made["ApiClientCreate"]["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (req, _) = mutate(
        p,
        &admin,
        "DELETE",
        &format!("/merchants/{a}/api-clients/{client}"),
        None,
    );
    expected.push((req, "ApiClientDelete", "api_client"));
    let user = made["UserCreate"]["id"].as_str().unwrap().to_owned();
    let (req, _) = mutate(
        p,
        &admin,
        "PATCH",
        &format!("/merchants/{a}/users/{user}"),
        Some(&json!({"name": "U"})),
    );
    expected.push((req, "UserPatch", "user"));
    let (req, _) = mutate(
        p,
        &admin,
        "PUT",
        &format!("/merchants/{a}/users/{user}/password"),
        Some(&json!({"password": "a long enough password"})),
    );
    expected.push((req, "UserPassword", "credential"));
    secrets.push("a long enough password".to_owned());
    let (req, _) = mutate(
        p,
        &admin,
        "DELETE",
        &format!("/merchants/{a}/users/{user}"),
        None,
    );
    expected.push((req, "UserDelete", "user"));
    let (req, _) = mutate(
        p,
        &admin,
        "DELETE",
        &format!("/merchants/{a}/locations/{lid}"),
        None,
    );
    expected.push((req, "LocationDelete", "location"));
    let ruser = made["ResellerUserCreate"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (req, _) = mutate(
        p,
        &admin,
        "PATCH",
        &format!("/resellers/{rid}/users/{ruser}"),
        Some(&json!({"name": "R"})),
    );
    expected.push((req, "ResellerUserPatch", "user"));
    let (req, _) = mutate(
        p,
        &admin,
        "PUT",
        &format!("/resellers/{rid}/users/{ruser}/password"),
        Some(&json!({"password": "a long enough password"})),
    );
    expected.push((req, "ResellerUserPassword", "credential"));
    let (req, _) = mutate(
        p,
        &admin,
        "DELETE",
        &format!("/resellers/{rid}/users/{ruser}"),
        None,
    );
    expected.push((req, "ResellerUserDelete", "user"));

    // The merchant's change made a delivery to each endpoint; each is resent once its first
    // attempt has failed (so the resend visibly changes it: due again at once), then the
    // reseller's endpoint goes.
    for (prefix, base) in &hooks {
        let deadline = Instant::now() + Duration::from_secs(30);
        let delivery = loop {
            let page = p.ok("GET", &format!("{base}/deliveries"), None).unwrap();
            let tried = page["data"]
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["attempts"].as_u64().unwrap_or(0) >= 1)
                .cloned();
            if let Some(d) = tried {
                break d;
            }
            assert!(Instant::now() < deadline, "no attempted delivery: {page}");
            std::thread::sleep(Duration::from_millis(100));
        };
        let (req, _) = mutate(
            p,
            &admin,
            "POST",
            &format!(
                "{base}/deliveries/{}/resend",
                delivery["id"].as_str().unwrap()
            ),
            None,
        );
        let action = if *prefix == "Merchant" {
            "MerchantWebhookResend"
        } else {
            "ResellerWebhookResend"
        };
        expected.push((req, action, "webhook_delivery"));
    }
    let (req, _) = mutate(p, &admin, "DELETE", &hooks[1].1, None);
    expected.push((req, "ResellerWebhookDelete", "webhook_endpoint"));

    // Charges taken in the backoffice, one refunded and one cancelled.
    let card =
        json!({"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"});
    let mut charged = Vec::new();
    for value in ["1000", "1100"] {
        let (req, c) = mutate(
            p,
            &admin,
            "POST",
            "/charges",
            Some(
                &json!({"merchant_id": a, "amount": {"value": value, "currency": "EUR"}, "card": card}),
            ),
        );
        assert_eq!(c["status"], "approved", "{c}");
        expected.push((req, "ChargeCreate", "charge"));
        charged.push(c["charge_id"].as_str().unwrap().to_owned());
    }
    let (req, _) = mutate(
        p,
        &admin,
        "POST",
        &format!("/charges/{}/refund", charged[0]),
        Some(&json!({"amount": {"value": "300", "currency": "EUR"}})),
    );
    expected.push((req, "ChargeRefund", "charge"));
    let (req, _) = mutate(
        p,
        &admin,
        "POST",
        &format!("/charges/{}/cancel", charged[1]),
        None,
    );
    expected.push((req, "ChargeCancel", "charge"));

    // A reseller without merchants can go.
    let (req, gone) = mutate(
        p,
        &admin,
        "POST",
        "/resellers",
        Some(&json!({"name": "Audit gone"})),
    );
    expected.push((req, "ResellerCreate", "reseller"));
    let (req, _) = mutate(
        p,
        &admin,
        "DELETE",
        &format!("/resellers/{}", gone["id"].as_str().unwrap()),
        None,
    );
    expected.push((req, "ResellerDelete", "reseller"));
    let (req, _) = mutate(
        p,
        &admin,
        "POST",
        "/session/initiate",
        Some(&json!({"host": "localhost"})),
    );
    expected.push((req, "SessionInitiate", "session"));

    // Refused and read-only calls leave nothing.
    let refused = p
        .http
        .call(
            "POST",
            &format!("/merchants/{a}/locations"),
            Some(&admin),
            Some(&json!({"name": ""})),
        )
        .unwrap();
    assert_eq!(refused.status, 400);
    let read = p
        .http
        .call("GET", &format!("/merchants/{a}"), Some(&admin), None)
        .unwrap();
    for quiet in [&refused, &read] {
        let id = quiet.header("x-request-id").unwrap();
        assert!(entries(p, &admin, &format!("&request_id={id}")).is_empty());
    }

    for (req, action, kind) in &expected {
        let got = entries(p, &admin, &format!("&request_id={req}"));
        assert_eq!(got.len(), 1, "{action}: {got:?}");
        let e = &got[0];
        assert_eq!(
            (e["action"].as_str(), e["object_kind"].as_str()),
            (Some(*action), Some(*kind))
        );
        assert_eq!(e["subject"], "ops");
        assert_eq!(e["role"], "platform_admin");
        assert_eq!(e["source"], "127.0.0.1");
        let created = action.ends_with("Create")
            || *action == "AppVersionPut"
            || action.ends_with("Password");
        let deleted = action.ends_with("Delete");
        assert_eq!(e["digest_before"].is_null(), created, "{e}");
        assert_eq!(e["digest_after"].is_null(), deleted, "{e}");
        if !created && !deleted {
            assert_ne!(e["digest_before"], e["digest_after"]);
        }
    }

    // A claim: the terminal's own calls are not Bearer calls and leave nothing; the
    // backoffice's claim leaves one entry about the device.
    let (claimed, _) = p.activated_terminal("POS-0000AD09").unwrap();
    let claims = entries(p, &admin, "&action=PosClaim&object_id=POS-0000AD09");
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_eq!(claims[0]["object_kind"], "device");
    assert_eq!(claims[0]["merchant_id"], json!(claimed));
    assert!(!claims[0]["digest_before"].is_null() && !claims[0]["digest_after"].is_null());

    // Every route that may write was called above, and each left its entry; verifying the
    // chain is the one that writes nothing.
    let verify = p
        .http
        .call("POST", "/audit-events/verify", Some(&admin), None)
        .unwrap();
    assert_eq!(verify.status, 200, "{}", verify.json);
    let id = verify.header("x-request-id").unwrap();
    assert!(entries(p, &admin, &format!("&request_id={id}")).is_empty());
    let mut covered: std::collections::BTreeSet<&str> =
        expected.iter().map(|(_, action, _)| *action).collect();
    covered.extend(["PosClaim", "AuditVerify"]);
    let writing: std::collections::BTreeSet<String> = api::http::routes::ROUTES
        .iter()
        .filter(|r| {
            r.method != "GET"
                && matches!(
                    r.access,
                    api::http::routes::Access::Bearer | api::http::routes::Access::BearerNoSession
                )
        })
        .map(|r| format!("{:?}", r.op))
        .collect();
    let missed: Vec<&String> = writing
        .iter()
        .filter(|op| !covered.contains(op.as_str()))
        .collect();
    assert!(
        missed.is_empty(),
        "routes this test does not call: {missed:?}"
    );
    assert_eq!(writing.len(), 49, "{writing:?}");

    // Tenancy: B's admin sees B's entries only; a merchant user sees none; the reseller's
    // admin sees both merchants' and its own.
    let b_admin = p.api.token("b-admin", "merchant_admin").unwrap();
    mutate(
        p,
        &admin,
        "POST",
        &format!("/merchants/{b}/users"),
        Some(
            &json!({"email": "b@example.com", "role": "merchant_admin", "idp_subject": "b-admin"}),
        ),
    );
    p.login_token(&b_admin).unwrap();
    let (req, _) = mutate(
        p,
        &b_admin,
        "POST",
        &format!("/merchants/{b}/locations"),
        Some(
            &json!({"name": "B till", "address": {"line1": "2 St", "city": "Bonn", "postal_code": "53111", "country": "DE"}}),
        ),
    );
    let seen = entries(p, &b_admin, "");
    assert!(
        !seen.is_empty() && seen.iter().all(|e| e["merchant_id"] == json!(b)),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| e["request_id"] == json!(req) && e["subject"] == "b-admin")
    );
    let other = p
        .http
        .call(
            "GET",
            &format!("/audit-events?merchant_id={a}"),
            Some(&b_admin),
            None,
        )
        .unwrap();
    assert_eq!(other.status, 404);
    let user = p.api.token("b-user", "merchant_user").unwrap();
    mutate(
        p,
        &admin,
        "POST",
        &format!("/merchants/{b}/users"),
        Some(&json!({"email": "u@example.com", "role": "merchant_user", "idp_subject": "b-user"})),
    );
    p.login_token(&user).unwrap();
    assert_eq!(
        p.http
            .call("GET", "/audit-events", Some(&user), None)
            .unwrap()
            .status,
        403
    );
    let r_admin = p.api.token("r-admin", "reseller_admin").unwrap();
    mutate(
        p,
        &admin,
        "POST",
        &format!("/resellers/{rid}/users"),
        Some(&json!({"email": "r@example.com", "idp_subject": "r-admin"})),
    );
    p.login_token(&r_admin).unwrap();
    let tree = entries(p, &r_admin, "");
    assert!(tree.iter().any(|e| e["merchant_id"] == json!(a)));
    assert!(tree.iter().any(|e| e["merchant_id"] == json!(b)));
    assert!(tree.iter().any(|e| e["object_kind"] == "fee_template"));

    // Linked into one chain that verifies; no secret anywhere in the trail.
    let all = linked(p);
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains(&identity_secret));
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()));
    }
    let verdict = p.ok("POST", "/audit-events/verify", None).unwrap();
    assert_eq!(verdict["intact"], true, "{verdict}");
    assert_eq!(verdict["count"], json!(all.len()));
}

#[test]
fn every_bearer_mutation_leaves_one_entry_within_its_tenant() {
    every_mutation_leaves_one_entry_on(&Platform::start(api(), "").unwrap());
}

#[test]
fn postgres_every_bearer_mutation_leaves_one_entry_within_its_tenant() {
    let Some(cluster) = pgcluster::Cluster::for_tests("audit_entries").unwrap() else {
        return;
    };
    let database = Database::postgres(&cluster, "api").unwrap();
    every_mutation_leaves_one_entry_on(&Platform::start_on(api(), "", &database).unwrap());
}

/// `api audit-verify` on the stopped API's database: exit status and output.
fn audit_verify(p: &Platform) -> (bool, String) {
    let out = std::process::Command::new(api())
        .arg("--config")
        .arg(p.api.dir().join("api.toml"))
        .arg("audit-verify")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn audit_verify_finds_a_changed_or_missing_entry() {
    let mut p = Platform::start(api(), "").unwrap();
    for i in 0..4 {
        mutate(
            &p,
            &p.admin.clone(),
            "POST",
            "/resellers",
            Some(&json!({"name": format!("R{i}")})),
        );
    }
    let n = linked(&p).len();
    p.api.kill();
    let (ok, out) = audit_verify(&p);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{n} entries, chain intact")), "{out}");

    let db = rusqlite::Connection::open(p.api.dir().join("api.db")).unwrap();
    let subject: String = db
        .query_row(
            "SELECT subject FROM audit_events WHERE chain_seq = 2",
            [],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "UPDATE audit_events SET subject = 'someone-else' WHERE chain_seq = 2",
        [],
    )
    .unwrap();
    let (ok, out) = audit_verify(&p);
    assert!(!ok);
    assert!(
        out.contains("entry 2 (au_") && out.contains("is broken"),
        "{out}"
    );
    db.execute(
        "UPDATE audit_events SET subject = ?1 WHERE chain_seq = 2",
        [&subject],
    )
    .unwrap();
    assert!(audit_verify(&p).0);
    db.execute("DELETE FROM audit_events WHERE chain_seq = 3", [])
        .unwrap();
    let (ok, out) = audit_verify(&p);
    assert!(!ok);
    assert!(out.contains("entry 3 of the chain is missing"), "{out}");
}
