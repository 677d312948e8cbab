//! The portal in a real browser: headless Chromium (Debian's `chromium`, driven through
//! `chromedriver`) against a real `api` and keyd, with `pos-sim`, the command-line terminal,
//! on the other side of the counter. A person signs in, registers a terminal and
//! claims it by the code on its screen, watches its charges arrive, refunds one, closes the
//! batch and signs out; a reseller rebrands and the merchant's portal host shows it; a user of
//! another merchant finds nothing of this one. Screenshots of the main pages are kept under
//! the target directory (`portal-screenshots/`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::api::Platform;
use e2e::webdriver::{self, Browser};
use serde_json::json;

const CONFIG: &str = "\n[portal]\nkdf_iterations = 10000\n";
const PASSWORD: &str = "correct horse battery staple";
const WAIT: Duration = Duration::from_secs(30);

fn api() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_api"))
}

fn shots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("portal-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Signs in at `origin` through the login page, as a person types.
fn sign_in(b: &Browser, origin: &str, email: &str) {
    b.open(&format!("{origin}/portal/")).unwrap();
    let page = b.text().unwrap();
    assert!(page.contains("Sign in to"), "{page}");
    b.fill("input[name=email]", email).unwrap();
    b.fill("input[name=password]", PASSWORD).unwrap();
    b.click("form.login button").unwrap();
    // The click returns once the form is sent; the redirects that follow are waited for.
    let page = b.wait_for_text("Sign out", WAIT).unwrap();
    assert!(page.contains(email), "{page}");
    assert!(b.url().unwrap().starts_with(&format!("{origin}/portal/")));
}

#[test]
fn a_merchant_runs_the_day_in_the_browser_and_a_reseller_rebrands() {
    assert!(
        webdriver::available(),
        "Debian's chromium and chromium-driver are needed (scripts/test-all installs them)"
    );
    let p = Platform::start(api(), CONFIG).unwrap();
    let port = p.api.port();
    let r = p
        .ok(
            "POST",
            "/resellers",
            Some(&json!({"name": "Harbour Payments"})),
        )
        .unwrap();
    let rid = r["id"].as_str().unwrap().to_owned();
    let m = p
        .ok(
            "POST",
            "/merchants",
            Some(&json!({"reseller_id": rid, "name": "Harbour Cafe", "mcc": "5812", "country": "DE", "currency": "EUR"})),
        )
        .unwrap();
    let mid = m["id"].as_str().unwrap().to_owned();
    p.user_with_password(
        &format!("/merchants/{mid}"),
        "owner@harbour.example",
        "merchant_admin",
        PASSWORD,
    )
    .unwrap();
    let origin = format!("http://localhost:{port}");
    let b = Browser::start().unwrap();
    sign_in(&b, &origin, "owner@harbour.example");
    assert!(b.text().unwrap().contains("Harbour Cafe"));

    // Register a terminal; its identity secret is on the page this once.
    b.open(&format!("{origin}/portal/devices")).unwrap();
    let register = "main > form:last-of-type";
    b.fill(&format!("{register} input[name=device_id]"), "POS-0000BB01")
        .unwrap();
    b.fill(&format!("{register} input[name=model]"), "A920")
        .unwrap();
    b.fill(&format!("{register} input[name=serial]"), "HB-1")
        .unwrap();
    b.click(&format!("{register} button")).unwrap();
    let shown = b.text().unwrap();
    assert!(shown.contains("shown this once"), "{shown}");
    let key_id = b.element_text("#key-id").unwrap();
    let secret = b.element_text("#identity-secret").unwrap();
    b.screenshot(&shots().join("device-registered.png"))
        .unwrap();

    // pos-sim, injected like a real terminal (the zone's ZMK components and the identity
    // secret on its standard input), boots and shows a pairing code; the person types it into
    // the claim form, and pos-sim goes on by itself: attests, takes its keys, activates and
    // charges.
    let mut sim = Command::new(api().with_file_name("pos-sim"))
        .args(["--api", &format!("127.0.0.1:{port}")])
        .args(["--zmk-component", "-", "--zmk-component", "-", "run"])
        .args(["--device-id", "POS-0000BB01", "--identity-key-id", &key_id])
        .args(["--identity-secret", "-"])
        .args([
            "--card",
            "4242424242424242:1234",
            "--card",
            "4242424242424242:560",
        ])
        .args(["--card", "4242424242424242:4200"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pos-sim (built with the workspace)");
    writeln!(
        sim.stdin.take().unwrap(),
        "{}\n{}\n{secret}",
        e2e::ZMK_COMPONENTS[0],
        e2e::ZMK_COMPONENTS[1]
    )
    .unwrap();
    let mut out = BufReader::new(sim.stdout.take().unwrap());
    let code = loop {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "pos-sim ended without a code"
        );
        if let Some(code) = line.trim().strip_prefix("pairing code: ") {
            break code.to_owned();
        }
    };
    b.open(&format!("{origin}/portal/devices")).unwrap();
    b.fill("input[name=pairing_code]", &code).unwrap();
    b.fill(
        "form:has(input[name=pairing_code]) input[name=device_id]",
        "POS-0000BB01",
    )
    .unwrap();
    b.click("form:has(input[name=pairing_code]) button")
        .unwrap();
    assert!(
        b.text().unwrap().contains("Terminal claimed"),
        "{}",
        b.text().unwrap()
    );

    // Its charges appear on the charges page as they happen.
    b.open(&format!("{origin}/portal/charges")).unwrap();
    let listed = b.reload_until_text("42.00 EUR", WAIT).unwrap();
    assert!(
        listed.contains("12.34 EUR") && listed.contains("5.60 EUR"),
        "{listed}"
    );
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = sim.wait().unwrap();
    assert!(status.success(), "pos-sim: {rest}");
    let charges = p.charges(&mid).unwrap();
    let id_of = |value: &str| {
        charges
            .iter()
            .find(|c| c["amount"]["value"] == value)
            .unwrap()["charge_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let charge_ids = [id_of("1234"), id_of("560")];
    b.screenshot(&shots().join("charges.png")).unwrap();

    // Refund part of one from its page.
    b.click(&format!("a[href='/portal/charges/{}']", charge_ids[0]))
        .unwrap();
    b.fill("input[name=amount]", "2.34").unwrap();
    b.click("form[action$='/refund'] button").unwrap();
    let refunded = b.text().unwrap();
    assert!(
        refunded.contains("Refund done.") && refunded.contains("2.34 EUR"),
        "{refunded}"
    );
    b.screenshot(&shots().join("charge-refunded.png")).unwrap();
    let stored = p
        .ok("GET", &format!("/charges/{}", charge_ids[0]), None)
        .unwrap();
    assert_eq!(stored["amount_refunded"]["value"], "234");

    // Close the batch.
    b.open(&format!("{origin}/portal/settlements")).unwrap();
    b.click("form[action='/portal/settlements'] button")
        .unwrap();
    let closed = b.text().unwrap();
    assert!(
        closed.contains("Batch closed.") && closed.contains("st_"),
        "{closed}"
    );
    b.open(&format!("{origin}/portal/")).unwrap();
    assert!(b.text().unwrap().contains("Sales by day"));
    b.screenshot(&shots().join("overview.png")).unwrap();

    // Sign out: the portal asks to sign in again.
    b.click("form.signout button").unwrap();
    b.wait_for_text("Sign in to", WAIT).unwrap();
    b.open(&format!("{origin}/portal/charges")).unwrap();
    assert!(
        b.text().unwrap().contains("Sign in to"),
        "{}",
        b.text().unwrap()
    );
    b.screenshot(&shots().join("sign-in.png")).unwrap();

    // The reseller's admin rebrands; the merchant's own portal host shows it.
    p.ok(
        "PUT",
        &format!("/resellers/{rid}/domains"),
        Some(&json!({"portal_hosts": ["harbour.localhost"]})),
    )
    .unwrap();
    p.user_with_password(
        &format!("/resellers/{rid}"),
        "admin@harbourpay.example",
        "reseller_admin",
        PASSWORD,
    )
    .unwrap();
    sign_in(&b, &origin, "admin@harbourpay.example");
    assert!(
        b.text().unwrap().contains("Harbour Cafe"),
        "the reseller's merchants"
    );
    b.open(&format!("{origin}/portal/branding")).unwrap();
    b.fill("input[name=display_name]", "Harbour Pay").unwrap();
    b.fill("input[name=primary_color]", "#0b6e4f").unwrap();
    b.click("form[action='/portal/branding'] button").unwrap();
    assert!(b.text().unwrap().contains("Branding saved."));
    b.screenshot(&shots().join("branding.png")).unwrap();
    b.click("form.signout button").unwrap();
    b.wait_for_text("Sign in to", WAIT).unwrap();
    b.open(&format!("http://harbour.localhost:{port}/portal/"))
        .unwrap();
    let branded = b.text().unwrap();
    assert!(branded.contains("Sign in to Harbour Pay"), "{branded}");
    b.screenshot(&shots().join("branded-sign-in.png")).unwrap();

    // A user of another merchant reaches none of this one's pages or data.
    let other = p
        .ok(
            "POST",
            "/merchants",
            Some(&json!({"reseller_id": rid, "name": "Pier Bakery", "mcc": "5462", "country": "DE", "currency": "EUR"})),
        )
        .unwrap();
    p.user_with_password(
        &format!("/merchants/{}", other["id"].as_str().unwrap()),
        "baker@pier.example",
        "merchant_admin",
        PASSWORD,
    )
    .unwrap();
    let b2 = Browser::start().unwrap();
    sign_in(&b2, &origin, "baker@pier.example");
    b2.open(&format!("{origin}/portal/charges/{}", charge_ids[1]))
        .unwrap();
    let denied = b2.text().unwrap();
    assert!(denied.contains("Not found"), "{denied}");
    b2.open(&format!("{origin}/portal/charges")).unwrap();
    assert!(!b2.text().unwrap().contains("42.00 EUR"));
}
