//! The portal and its embedded sign-in over real HTTP, as a browser drives them (cookies,
//! redirects, forms with their `Origin`): a real `api` on a SQLite file and a real keyd on a
//! SoftHSM token keeping the password MAC key. The flow is OpenID Connect's authorization code
//! with PKCE; each step is checked, and so is every way a step may be cut short or replayed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::path::Path;

use e2e::api::{Answer, Platform};
use e2e::browser::Browser;
use serde_json::{Value, json};

/// The fewest PBKDF2 iterations the configuration takes, so the test spends its time on
/// what it tests.
const CONFIG: &str = "\n[portal]\nkdf_iterations = 10000\n";
const PASSWORD: &str = "correct horse battery staple";

fn api() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_api"))
}

/// A merchant with an admin who has a password: (merchant id, user id, e-mail).
fn merchant_with_user(p: &Platform, name: &str) -> (String, String, String) {
    let r = p
        .ok(
            "POST",
            "/resellers",
            Some(&json!({"name": format!("R {name}")})),
        )
        .unwrap();
    let m = p
        .ok(
            "POST",
            "/merchants",
            Some(&json!({"reseller_id": r["id"], "name": name, "mcc": "5812", "country": "DE", "currency": "EUR"})),
        )
        .unwrap();
    let mid = m["id"].as_str().unwrap().to_owned();
    let email = format!("admin@{}.example", name.to_lowercase());
    let uid = p
        .user_with_password(
            &format!("/merchants/{mid}"),
            &email,
            "merchant_admin",
            PASSWORD,
        )
        .unwrap();
    (mid, uid, email)
}

/// Signs in through the whole flow; the answer of the last step (the portal's first page),
/// or of the login form when it refused.
fn sign_in(b: &mut Browser, email: &str, password: &str) -> Answer {
    let start = b.get("/portal/").unwrap();
    assert_eq!(start.status, 303);
    assert_eq!(start.header("location"), Some("/portal/login"));
    let (form, answer) = b.submit_login(email, password).unwrap();
    let page = Browser::text(&form);
    assert!(page.contains(r#"name="password""#), "{page}");
    let csp = form.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    if answer.status != 303 {
        return answer;
    }
    let callback = answer.header("location").unwrap().to_owned();
    assert!(
        callback.starts_with(&format!("{}/portal/callback?code=", b.origin())),
        "{callback}"
    );
    let done = b.get(&callback).unwrap();
    assert_eq!(done.status, 303, "{}", Browser::text(&done));
    assert!(b.cookies.contains_key("__Host-vp_portal"));
    assert!(!b.cookies.contains_key("__Host-vp_login"));
    let set = done
        .headers
        .iter()
        .find(|(k, v)| k == "set-cookie" && v.starts_with("__Host-vp_portal="))
        .unwrap()
        .1
        .clone();
    for attribute in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    b.follow(&done).unwrap()
}

#[test]
fn a_merchant_signs_in_works_in_the_portal_and_signs_out() {
    let p = Platform::start(api(), CONFIG).unwrap();
    let (mid, uid, email) = merchant_with_user(&p, "Bakery");
    let port = p.api.port();

    // A wrong password is refused with the same words as an unknown address.
    let mut b = Browser::new(port, "localhost");
    let wrong = sign_in(&mut b, &email, "not the password at all");
    assert_eq!(wrong.status, 401);
    let unknown = sign_in(
        &mut Browser::new(port, "localhost"),
        "nobody@example.com",
        PASSWORD,
    );
    assert_eq!(unknown.status, 401);
    let words = |a: &Answer| {
        let t = Browser::text(a);
        t.contains("The e-mail address or the password is wrong.")
    };
    assert!(words(&wrong) && words(&unknown));

    let mut b = Browser::new(port, "localhost");
    let home = sign_in(&mut b, &email, PASSWORD);
    assert_eq!(home.status, 200, "{}", Browser::text(&home));
    assert!(Browser::text(&home).contains("Bakery"));

    // Register a device through the page: the API call is the user's own, audited as theirs.
    let devices = b.get("/portal/devices").unwrap();
    assert_eq!(devices.status, 200);
    let csrf = Browser::hidden(&devices, "csrf").unwrap();
    let made = b
        .post(
            "/portal/devices",
            &[
                ("csrf", &csrf),
                ("device_id", "POS-00009901"),
                ("model", "A920"),
                ("serial", "S-1"),
            ],
        )
        .unwrap();
    assert_eq!(made.status, 200, "{}", Browser::text(&made));
    let shown = Browser::text(&made);
    assert!(
        shown.contains("shown this once") && shown.contains(r#"id="identity-secret""#),
        "{shown}"
    );
    assert_eq!(made.header("cache-control"), Some("no-store"));
    let listed = b.get("/portal/devices").unwrap();
    assert!(Browser::text(&listed).contains("POS-00009901"));
    let audit = p
        .ok(
            "GET",
            "/audit-events?action=DeviceCreate&object_id=POS-00009901",
            None,
        )
        .unwrap();
    let entry = &audit["data"][0];
    assert_eq!(entry["subject"], json!(uid), "{audit}");
    assert_eq!(entry["merchant_id"], json!(mid));
    assert_eq!(entry["source"], "127.0.0.1");

    // Disable and enable it from its row.
    for (action, status) in [("disable", "disabled"), ("enable", "inactive")] {
        let done = b
            .post(
                &format!("/portal/devices/POS-00009901/{action}"),
                &[("csrf", &csrf)],
            )
            .unwrap();
        assert_eq!(done.status, 303, "{action}: {}", Browser::text(&done));
        let device = p
            .ok(
                "GET",
                &format!("/merchants/{mid}/devices/POS-00009901"),
                None,
            )
            .unwrap();
        assert_eq!(device["device_status"], status, "{device}");
    }

    // Without the form token, or from another origin, nothing changes.
    for (fields, origin) in [
        (vec![("device_id", "POS-00009902")], Some(b.origin())),
        (
            vec![("csrf", csrf.as_str()), ("device_id", "POS-00009902")],
            Some("http://evil.example".to_owned()),
        ),
        (
            vec![("csrf", csrf.as_str()), ("device_id", "POS-00009902")],
            None,
        ),
    ] {
        let mut all = fields.clone();
        all.extend([("model", "A920"), ("serial", "S-2")]);
        let refused = b
            .post_from("/portal/devices", &all, origin.as_deref())
            .unwrap();
        assert_eq!(refused.status, 403, "{}", Browser::text(&refused));
    }
    assert_eq!(
        p.call(
            "GET",
            &format!("/merchants/{mid}/devices/POS-00009902"),
            None
        )
        .unwrap()
        .status,
        404
    );

    // The session's pages are the user's only: another merchant's charge is not found.
    let (other, _, _) = merchant_with_user(&p, "Florist");
    let charge = p
        .ok(
            "POST",
            "/charges",
            Some(&json!({"merchant_id": other, "amount": {"value": "1000", "currency": "EUR"},
                         "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}})),
        )
        .unwrap();
    let theirs = b
        .get(&format!(
            "/portal/charges/{}",
            charge["charge_id"].as_str().unwrap()
        ))
        .unwrap();
    assert_eq!(theirs.status, 404, "{}", Browser::text(&theirs));

    // A charge of the merchant's own, refunded in part from its page.
    let mine = p
        .ok(
            "POST",
            "/charges",
            Some(&json!({"merchant_id": mid, "amount": {"value": "2500", "currency": "EUR"},
                         "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}})),
        )
        .unwrap();
    let id = mine["charge_id"].as_str().unwrap();
    let list = Browser::text(&b.get("/portal/charges?status=approved").unwrap());
    assert!(list.contains(id) && list.contains("25.00 EUR"), "{list}");
    let none = Browser::text(&b.get("/portal/charges?status=declined").unwrap());
    assert!(!none.contains(id), "{none}");
    let today = &mine["created_at"].as_str().unwrap()[..10];
    let dated = Browser::text(
        &b.get(&format!("/portal/charges?from={today}&to={today}"))
            .unwrap(),
    );
    assert!(dated.contains(id), "{dated}");
    let before = Browser::text(&b.get("/portal/charges?to=2001-01-01").unwrap());
    assert!(!before.contains(id), "{before}");
    let bad = b.get("/portal/charges?from=yesterday").unwrap();
    assert_eq!(bad.status, 400, "{}", Browser::text(&bad));
    let shown = b.get(&format!("/portal/charges/{id}")).unwrap();
    assert!(
        Browser::text(&shown).contains("25.00 EUR"),
        "{}",
        Browser::text(&shown)
    );
    let refunded = b
        .post(
            &format!("/portal/charges/{id}/refund"),
            &[("csrf", &csrf), ("amount", "5.50"), ("currency", "EUR")],
        )
        .unwrap();
    assert_eq!(refunded.status, 303, "{}", Browser::text(&refunded));
    let after = p.ok("GET", &format!("/charges/{id}"), None).unwrap();
    assert_eq!(after["amount_refunded"]["value"], "550", "{after}");
    // Another is cancelled from its page.
    let other_charge = p
        .ok(
            "POST",
            "/charges",
            Some(&json!({"merchant_id": mid, "amount": {"value": "700", "currency": "EUR"},
                         "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}})),
        )
        .unwrap();
    let cid = other_charge["charge_id"].as_str().unwrap();
    let cancelled = b
        .post(&format!("/portal/charges/{cid}/cancel"), &[("csrf", &csrf)])
        .unwrap();
    assert_eq!(
        cancelled.header("location"),
        Some(format!("/portal/charges/{cid}?notice=cancelled").as_str())
    );
    let page = Browser::text(&b.follow(&cancelled).unwrap());
    assert!(
        page.contains("Charge cancelled.") && page.contains("cancelled"),
        "{page}"
    );
    let overview = b.get("/portal/").unwrap();
    assert!(
        Browser::text(&overview).contains("25.00 EUR"),
        "{}",
        Browser::text(&overview)
    );

    // Sign-out ends the portal session and the provider's: the next visit signs in again.
    let out = b.post("/portal/logout", &[("csrf", &csrf)]).unwrap();
    assert_eq!(out.status, 303);
    let provider_out = b.follow(&out).unwrap();
    assert_eq!(provider_out.status, 303, "{}", Browser::text(&provider_out));
    assert!(
        !b.cookies.contains_key("__Host-vp_portal") && !b.cookies.contains_key("__Host-vp_idp")
    );
    assert_eq!(
        b.get("/portal/devices").unwrap().header("location"),
        Some("/portal/login")
    );
}

#[test]
fn sign_in_locks_after_five_failures_and_codes_work_once_with_their_verifier() {
    let p = Platform::start(api(), CONFIG).unwrap();
    let (mid, uid, email) = merchant_with_user(&p, "Grocer");
    let port = p.api.port();
    // The fifth failure in a row locks, and says so.
    for attempt in 1..=5 {
        let a = sign_in(
            &mut Browser::new(port, "localhost"),
            &email,
            "wrong password here",
        );
        assert_eq!(
            a.status,
            if attempt < 5 { 401 } else { 429 },
            "attempt {attempt}"
        );
    }
    let locked = sign_in(&mut Browser::new(port, "localhost"), &email, PASSWORD);
    assert_eq!(locked.status, 429, "{}", Browser::text(&locked));
    assert!(Browser::text(&locked).contains("locked"));
    // The operator sets a new password: the lock is lifted.
    p.ok(
        "PUT",
        &format!("/merchants/{mid}/users/{uid}/password"),
        Some(&json!({"password": "another long passphrase"})),
    )
    .unwrap();

    // A code is exchanged once, by the client it was issued to, with its verifier.
    let mut b = Browser::new(port, "localhost");
    let (form, back) = b.submit_login(&email, "another long passphrase").unwrap();
    let authorize = Browser::new(port, "localhost")
        .get("/portal/login")
        .unwrap()
        .header("location")
        .unwrap()
        .to_owned();
    assert_eq!(back.status, 303, "{}", Browser::text(&back));
    let location = back.header("location").unwrap();
    let query = location.split_once('?').unwrap().1;
    let code: String = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let redirect_uri = Browser::hidden(&form, "redirect_uri").unwrap();
    let token = |verifier: &str| {
        let mut t = Browser::new(port, "localhost");
        let a = t
            .post(
                "/oauth/token",
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", &redirect_uri),
                    ("client_id", "viopay-portal"),
                    ("code_verifier", verifier),
                ],
            )
            .unwrap();
        (a.status, a.json)
    };
    // The right verifier is in the browser's login record only; a guessed one fails, and
    // the code is spent by that failure too.
    let (status, body) = token(&"A".repeat(43));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let callback = b.get(location).unwrap();
    assert_eq!(callback.status, 401, "{}", Browser::text(&callback));
    // Another origin's page cannot post the login form.
    let mut other = Browser::new(port, "localhost");
    let form = other.get(&authorize).unwrap();
    let token_field = Browser::hidden(&form, "form_token").unwrap();
    let refused = other
        .post_from(
            "/oauth/authorize",
            &[
                ("form_token", &token_field),
                ("email", &email),
                ("password", "another long passphrase"),
            ],
            Some("http://evil.example"),
        )
        .unwrap();
    assert_eq!(refused.status, 403);
    // A redirect address that is not the portal's gets no code and no redirect.
    let foreign = authorize.replace(
        "redirect_uri=http",
        "redirect_uri=https%3A%2F%2Fevil.example%2Fportal%2Fcallback&x=http",
    );
    let shown = other.get(&foreign).unwrap();
    assert_eq!(shown.status, 400, "{}", Browser::text(&shown));
    assert!(shown.header("location").is_none());
    let discovery: Value = other.get("/.well-known/openid-configuration").unwrap().json;
    assert_eq!(
        discovery["code_challenge_methods_supported"],
        json!(["S256"])
    );
    assert_eq!(discovery["issuer"], "viopay-api");
}

#[test]
fn a_resellers_host_shows_its_branding_and_admits_only_its_subtree() {
    let p = Platform::start(api(), CONFIG).unwrap();
    let (mid, _, email) = merchant_with_user(&p, "Diner");
    let rid = p.ok("GET", &format!("/merchants/{mid}"), None).unwrap()["reseller_id"]
        .as_str()
        .unwrap()
        .to_owned();
    p.ok(
        "PUT",
        &format!("/resellers/{rid}/branding"),
        Some(&json!({"display_name": "Diner Pay <b>", "primary_color": "#aa3300"})),
    )
    .unwrap();
    p.ok(
        "PUT",
        &format!("/resellers/{rid}/domains"),
        Some(&json!({"portal_hosts": ["diner.localhost"]})),
    )
    .unwrap();
    let port = p.api.port();

    // The reseller's host: its name (escaped) and its colour.
    let mut b = Browser::new(port, "diner.localhost");
    let login = b.get("/portal/login").unwrap();
    let form = b.follow(&login).unwrap();
    let page = Browser::text(&form);
    assert!(page.contains("Sign in to Diner Pay &lt;b&gt;"), "{page}");
    let theme = Browser::text(&b.get("/portal/theme.css").unwrap());
    assert!(theme.contains("#aa3300"), "{theme}");
    let home = sign_in(&mut Browser::new(port, "diner.localhost"), &email, PASSWORD);
    assert_eq!(home.status, 200, "{}", Browser::text(&home));

    // The reseller's admin adds another admin, with a password, from the users page; a
    // short password is refused before anyone is made.
    let admin = p
        .ok(
            "POST",
            &format!("/resellers/{rid}/users"),
            Some(&json!({"email": "boss@dinerpay.example"})),
        )
        .unwrap();
    p.ok(
        "PUT",
        &format!(
            "/resellers/{rid}/users/{}/password",
            admin["id"].as_str().unwrap()
        ),
        Some(&json!({"password": PASSWORD})),
    )
    .unwrap();
    let mut boss = Browser::new(port, "diner.localhost");
    assert_eq!(
        sign_in(&mut boss, "boss@dinerpay.example", PASSWORD).status,
        200
    );
    let users = boss.get("/portal/users").unwrap();
    assert!(Browser::text(&users).contains(r#"aria-current="page""#));
    let csrf = Browser::hidden(&users, "csrf").unwrap();
    let short = boss
        .post(
            "/portal/users",
            &[
                ("csrf", &csrf),
                ("email", "new@dinerpay.example"),
                ("password", "short"),
            ],
        )
        .unwrap();
    assert_eq!(short.status, 400, "{}", Browser::text(&short));
    let added = boss
        .post(
            "/portal/users",
            &[
                ("csrf", &csrf),
                ("email", "new@dinerpay.example"),
                ("name", "New"),
                ("password", "a fine long passphrase"),
            ],
        )
        .unwrap();
    assert_eq!(
        added.header("location"),
        Some("/portal/users?notice=user"),
        "{}",
        Browser::text(&added)
    );
    let listed = p
        .ok("GET", &format!("/resellers/{rid}/users"), None)
        .unwrap();
    let emails: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["email"].as_str().unwrap())
        .collect();
    assert_eq!(
        emails
            .iter()
            .filter(|e| **e == "new@dinerpay.example")
            .count(),
        1,
        "{emails:?}"
    );
    let mut new = Browser::new(port, "diner.localhost");
    let (_, signed) = new
        .submit_login("new@dinerpay.example", "a fine long passphrase")
        .unwrap();
    assert_eq!(signed.status, 303, "{}", Browser::text(&signed));

    // A host nobody owns serves nothing.
    let unknown = Browser::new(port, "nobody.localhost")
        .get("/portal/login")
        .unwrap();
    assert_eq!(unknown.status, 404);

    // Another reseller's merchant user signs in at the provider but gets no session here.
    let (_, _, stranger) = merchant_with_user(&p, "Butcher");
    let refused = sign_in_until_callback(&mut Browser::new(port, "diner.localhost"), &stranger);
    assert_eq!(refused.status, 404, "{}", Browser::text(&refused));
}

/// The flow up to the callback's answer (for sign-ins that end there).
fn sign_in_until_callback(b: &mut Browser, email: &str) -> Answer {
    let (_, back) = b.submit_login(email, PASSWORD).unwrap();
    assert_eq!(back.status, 303, "{}", Browser::text(&back));
    b.follow(&back).unwrap()
}
