//! The whole platform on its embedded defaults, end to end, talking to the person running it:
//! keyd on a throw-away SoftHSM token (LMK made inside the token, a demo zone whose ZMK is the
//! published demo value), the REST API on loopback over a SQLite file, a reseller, a merchant,
//! a location and a device seeded through the backoffice API, and a simulated terminal that
//! pairs, is claimed, attests, receives its keys as TR-31 blocks (unwrapped from the ZMK the
//! way a terminal does), activates, and makes signed, MSK-encrypted charges.
//!
//! Last, the API is restarted with `[processor] kind = "iso8583"` towards `acquirer-sim` (the
//! acquirer host simulator, its own process on a loopback port), and the terminal makes one
//! charge with a PIN over the ISO 8583 link (spec 12).
//!
//! `cargo build --release -p keyd -p api -p acqsim -p e2e && target/release/platform-demo`

#![allow(
    clippy::print_stdout,
    clippy::indexing_slicing,
    reason = "a demo talks to the person running it and fails loudly"
)]

use std::process::ExitCode;

use e2e::api::{Answer, ApiProcess, Client};
use e2e::pos::Terminal;
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("platform-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A backoffice call that must succeed.
fn ok(
    http: Client,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, Error> {
    let a = http.call(method, path, Some(token), body)?;
    if a.status >= 300 {
        return Err(format!("{method} {path}: {} {}", a.status, a.json).into());
    }
    Ok(a.json)
}

fn show(a: &Answer, v: Option<&Value>) -> String {
    match v {
        Some(v) => format!(
            "{} {} {} {}",
            a.status,
            v["status"].as_str().unwrap_or("?"),
            v["iso_response_code"].as_str().unwrap_or(""),
            v["decline_code"].as_str().unwrap_or("")
        ),
        None => format!(
            "{} error {} ({})",
            a.status,
            a.code(),
            a.json["error"]["message"].as_str().unwrap_or("")
        ),
    }
}

fn run() -> Result<(), Error> {
    let exe = std::env::current_exe()?;
    let (keyd_bin, api_bin, acquirer_bin) = (
        exe.with_file_name("keyd"),
        exe.with_file_name("api"),
        exe.with_file_name("acquirer-sim"),
    );
    if !keyd_bin.exists() || !api_bin.exists() || !acquirer_bin.exists() {
        return Err("build keyd, api and acquirer-sim next to this program: \
                    cargo build --release -p keyd -p api -p acqsim -p e2e"
            .into());
    }
    println!("== keyd on a fresh SoftHSM token");
    let mut keyd = e2e::KeydProcess::new(&keyd_bin, r#""data", "devices""#, "memory")?;
    keyd.start()?;
    let zmk = e2e::hex(e2e::ZMK_HEX);
    let zmk_kcv = e2e::pos::hex_upper(&tr31::kcv::cmac_aes(&zmk)?[..3]);
    println!("   LMK generated inside the token (never leaves it)");
    let [(a, _), (b, _)] = e2e::OFFICERS;
    println!("   officers {a} and {b} enrolled (published demo passwords)");
    for (n, component) in e2e::ZMK_COMPONENTS.iter().enumerate() {
        let kcv = e2e::pos::hex_upper(&tr31::kcv::cmac_aes(&e2e::hex(component))?[..3]);
        println!("   component {} typed by its custodian, KCV {kcv}", n + 1);
    }
    println!("   zone z1: ZMK formed with {a}'s and {b}'s approval, KCV {zmk_kcv}");
    let zones = keyd.run(&["zones"], &[])?;
    if let Some(z1) = zones.lines().find(|l| l.starts_with("z1 ")) {
        println!(
            "   `keyd zones`: {}",
            z1.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }

    let (zpk, pvk, zak) = keyd.simulator_keys()?;
    println!("   `keyd simulator-keys`: the simulator's published test ZPK {zpk} and PVK {pvk}");

    println!("== the API on loopback (SQLite file, embedded token issuer, simulated processor)");
    let processor = format!("\n[processor]\npin_zpk = \"{zpk}\"\npin_pvk = \"{pvk}\"\n");
    let mut api = ApiProcess::start(&api_bin, keyd.socket(), "", &processor)?;
    // Terminals beat every 2 s here (300 s by default), so the demo can show one going quiet.
    api.reconfigure(|text| {
        text.replace(
            "default_zone = \"z1\"",
            "default_zone = \"z1\"\nheartbeat_secs = 2",
        )
    })?;
    api.restart()?;
    let http = api.client();
    println!("   listening on http://127.0.0.1:{}", api.port());
    let admin = api.token("demo-operator", "platform_admin")?;
    println!("   `api token --sub demo-operator --role platform_admin` minted a bearer token");
    ok(
        http,
        &admin,
        "POST",
        "/session/initiate",
        Some(&json!({"host": "localhost"})),
    )?;

    println!("== backoffice: a reseller, a merchant, a location, a device");
    let r = ok(
        http,
        &admin,
        "POST",
        "/resellers",
        Some(&json!({"name": "Demo Reseller"})),
    )?;
    let rid = r["id"].as_str().unwrap_or_default().to_owned();
    ok(
        http,
        &admin,
        "PUT",
        &format!("/resellers/{rid}/branding"),
        Some(&json!({"display_name": "Demo Pay", "primary_color": "#0A7CFF", "theme": "light"})),
    )?;
    let fee = ok(
        http,
        &admin,
        "POST",
        &format!("/resellers/{rid}/fee-templates"),
        Some(
            &json!({"name": "standard", "percent_bps": 150, "fixed": {"value": "20", "currency": "EUR"}}),
        ),
    )?;
    let m = ok(
        http,
        &admin,
        "POST",
        "/merchants",
        Some(
            &json!({"reseller_id": rid, "name": "Cafe Demo", "mcc": "5812", "country": "DE", "currency": "EUR", "fee_template_id": fee["id"]}),
        ),
    )?;
    let mid = m["id"].as_str().unwrap_or_default().to_owned();
    let l = ok(
        http,
        &admin,
        "POST",
        &format!("/merchants/{mid}/locations"),
        Some(
            &json!({"name": "Front desk", "address": {"line1": "1 Demo Street", "city": "Berlin", "postal_code": "10115", "country": "DE"}, "timezone": "Europe/Berlin"}),
        ),
    )?;
    let d = ok(
        http,
        &admin,
        "POST",
        &format!("/merchants/{mid}/devices"),
        Some(
            &json!({"device_id": "POS-8F3A2C91", "model": "A920", "serial": "DEMO-1", "location_id": l["id"], "zone": "z1"}),
        ),
    )?;
    let identity = &d["identity_key"];
    println!("   merchant {mid} (fee 1.5 % + 0.20 EUR)");
    println!(
        "   device POS-8F3A2C91 registered; identity key {} (KCV {}), its secret shown once",
        identity["key_id"].as_str().unwrap_or(""),
        identity["kcv"].as_str().unwrap_or("")
    );

    println!("== the terminal: injected with the ZMK and its identity secret");
    let mut t = Terminal::new(
        http,
        "POS-8F3A2C91",
        identity["key_id"].as_str().unwrap_or_default(),
        identity["secret"].as_str().unwrap_or_default(),
        &zmk,
    )?;
    let boot = t.bootstrap()?;
    println!(
        "   bootstrap: {} (server time {})",
        boot.status,
        boot.json["server_time"].as_str().unwrap_or("")
    );
    let code = t.pairing_code()?;
    let code = code.json["pairing_code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    println!("   pairing code on screen: {code}");
    let claim = ok(
        http,
        &admin,
        "POST",
        "/pos/claim",
        Some(&json!({"pairing_code": code})),
    )?;
    let tid = claim["terminal_id"].as_str().unwrap_or_default().to_owned();
    t.set_terminal_id(&tid);
    println!("   the merchant claimed it: terminal {tid}");
    let attest = t.attest()?;
    println!(
        "   attest (HMAC over device, key, time, nonce): {}",
        attest.status
    );
    let keys = t.keys()?;
    if keys.status != 200 {
        return Err(format!("keys: {} {}", keys.status, keys.json).into());
    }
    println!(
        "   key set {}: every block unwrapped from the ZMK down, every KCV checked:",
        keys.json["key_set"]["key_set_id"].as_str().unwrap_or("")
    );
    for kind in ["tmk", "kek", "msk", "tpk", "tdk", "mac"] {
        let k = &keys.json["keys"][kind];
        println!(
            "     {kind}: {} under {:<3} KCV {}",
            k["key_id"].as_str().unwrap_or(""),
            k["wrapped_under"].as_str().unwrap_or(""),
            k["kcv"].as_str().unwrap_or("")
        );
    }
    let (_, config) = t.config()?;
    let config = config.unwrap_or_default();
    println!(
        "   config (MSK envelope): merchant {:?}, branding {}",
        config["merchant"]["name"].as_str().unwrap_or(""),
        config["branding"]["primary_color"].as_str().unwrap_or("")
    );
    let (tp, _) = t.terminal_parameters()?;
    println!(
        "   terminal parameters: {} envelope",
        tp.json["format"].as_str().unwrap_or("")
    );
    let (a, v) = t.activate()?;
    println!("   activate: {}", show(&a, v.as_ref()));
    let (a, _) =
        t.heartbeat(&json!({"app_version": "1.4.2", "battery_pct": 87, "network": "wifi"}))?;
    let device = ok(
        http,
        &admin,
        "GET",
        &format!("/merchants/{mid}/devices/POS-8F3A2C91"),
        None,
    )?;
    println!(
        "   heartbeat (signed, enveloped): {} -> device {}, app {}",
        a.status,
        device["connectivity"].as_str().unwrap_or("?"),
        device["app_version"].as_str().unwrap_or("?")
    );

    println!("== charges (signed, MSK-encrypted, card data under the TDK; keyd decrypts)");
    let (a, v) = t.charge("4242424242424242", 1500, "EUR", Some("order-42"))?;
    let approved = v.clone().unwrap_or_default();
    println!(
        "   visa 15.00 EUR: {} fee {}",
        show(&a, v.as_ref()),
        approved["fee"]["value"].as_str().unwrap_or("")
    );
    for (pan, amount, label) in [
        ("4000000000000002", 1000, "do-not-honor card"),
        ("4000000000009995", 1000, "insufficient-funds card"),
        ("5555555555554444", 1591, "mastercard, amount ending in 91"),
        ("4000000000000119", 1000, "processor-error card"),
    ] {
        let (a, v) = t.charge(pan, amount, "EUR", None)?;
        println!("   {label}: {}", show(&a, v.as_ref()));
    }
    println!("== online PIN (format 4 under the TPK; keyd translates it and checks the PVV)");
    for (pin, label) in [("1234", "the right PIN"), ("4321", "a wrong PIN")] {
        let inner = json!({"amount": {"value": "6000", "currency": "EUR"}, "entry_mode": "chip",
                           "card": t.card_blob("4242424242424242")?,
                           "pin_block": t.pin_block(pin, "4242424242424242")?});
        let (a, v) = t.charge_with(&inner, None)?;
        println!("   visa 60.00 EUR with {label}: {}", show(&a, v.as_ref()));
    }
    let id = approved["charge_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (a, v) = t.refund(&id, Some((500, "EUR")), Some("requested_by_customer"))?;
    println!(
        "   refund 5.00 of {id}: {} -> charge {}",
        a.status,
        v.as_ref()
            .map_or("", |v| v["charge_status"].as_str().unwrap_or(""))
    );
    let (_, v) = t.charge("4242424242424242", 700, "EUR", None)?;
    let cid = v.unwrap_or_default()["charge_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (a, v) = t.cancel(&cid)?;
    println!("   cancel {cid}: {}", show(&a, v.as_ref()));
    let tampered = t.signed_request(
        "POST",
        "/pos/charge",
        br#"{"format":"TR31-DATA"}"#,
        &e2e::pos::Overrides {
            tamper_body: Some(br#"{"format":"TR31-DATA","x":1}"#.to_vec()),
            ..e2e::pos::Overrides::default()
        },
    )?;
    println!(
        "   a body changed after signing: {} {} (refused)",
        tampered.status,
        tampered.code()
    );

    println!("== backoffice: settlement and transactions");
    let st = ok(
        http,
        &admin,
        "POST",
        &format!("/merchants/{mid}/settlements"),
        None,
    )?;
    println!(
        "   settlement {}: {} charges, {} {}",
        st["settlement_id"].as_str().unwrap_or(""),
        st["count"],
        st["total"]["value"].as_str().unwrap_or(""),
        st["total"]["currency"].as_str().unwrap_or("")
    );
    let txns = ok(
        http,
        &admin,
        "GET",
        &format!("/merchants/{mid}/transactions?limit=100"),
        None,
    )?;
    for item in txns["data"].as_array().into_iter().flatten() {
        println!(
            "   {:<6} {:<28} {:<18} {:>6} {}",
            item["type"].as_str().unwrap_or(""),
            item["id"].as_str().unwrap_or(""),
            item["status"].as_str().unwrap_or(""),
            item["amount"]["value"].as_str().unwrap_or(""),
            item["amount"]["currency"].as_str().unwrap_or("")
        );
    }
    portal(http, &admin, &mid, api.port())?;
    offline(http, &admin, &mid)?;
    acquirer_link(
        &mut api,
        &mut t,
        &acquirer_bin,
        &processor,
        &format!(
            "\n[processor]\nkind = \"iso8583\"\nhost = \"127.0.0.1\"\nport = {{port}}\n\
             zak = \"{zak}\"\nzpk = \"{zpk}\"\n"
        ),
    )?;
    println!("demo finished");
    Ok(())
}

/// A merchant admin with a password, signed in to the portal the way a browser does.
fn portal(http: Client, admin: &str, mid: &str, port: u16) -> Result<(), Error> {
    const EMAIL: &str = "owner@cafe-demo.example";
    const PASSWORD: &str = "demo portal password";
    println!("== the portal (OpenID Connect sign-in at the embedded provider, PKCE)");
    let u = ok(
        http,
        admin,
        "POST",
        &format!("/merchants/{mid}/users"),
        Some(&json!({"email": EMAIL, "name": "Cafe owner", "role": "merchant_admin"})),
    )?;
    let uid = u["id"].as_str().unwrap_or_default();
    ok(
        http,
        admin,
        "PUT",
        &format!("/merchants/{mid}/users/{uid}/password"),
        Some(&json!({"password": PASSWORD})),
    )?;
    let mut b = e2e::browser::Browser::new(port, "localhost");
    let (_, back) = b.submit_login(EMAIL, PASSWORD)?;
    let opened = b.follow(&back)?;
    let home = b.follow(&opened)?;
    if home.status != 200 {
        return Err(format!("portal sign-in: {}", home.status).into());
    }
    println!("   signed in as {EMAIL}: the overview shows this week's sales");
    println!("   open http://localhost:{port}/portal/ and sign in as {EMAIL} / {PASSWORD}");
    Ok(())
}

/// The terminal stops beating: offline after three intervals, and the events say so.
fn offline(http: Client, admin: &str, mid: &str) -> Result<(), Error> {
    println!("== the terminal goes quiet (heartbeat every 2 s: offline after three missed)");
    let started = std::time::Instant::now();
    let path = format!("/merchants/{mid}/devices/POS-8F3A2C91");
    while ok(http, admin, "GET", &path, None)?["connectivity"] != "offline" {
        if started.elapsed() > std::time::Duration::from_secs(30) {
            return Err("the silent terminal was not marked offline within 30 s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    println!(
        "   offline after {:.1} s of silence",
        started.elapsed().as_secs_f64()
    );
    let events = ok(
        http,
        admin,
        "GET",
        &format!("/events?merchant_id={mid}&limit=100"),
        None,
    )?;
    let types: Vec<&str> = events["data"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .filter_map(|e| e["type"].as_str())
        .collect();
    println!("   GET /events, oldest first: {}", types.join(", "));
    Ok(())
}

/// The API restarted towards `acquirer-sim` over ISO 8583 (`processor` is the `[processor]`
/// table it ran with; `iso8583` the one to run with, `{port}` standing for the acquirer's),
/// and one charge with a PIN made over the link.
fn acquirer_link(
    api: &mut ApiProcess,
    t: &mut Terminal,
    acquirer_bin: &std::path::Path,
    processor: &str,
    iso8583: &str,
) -> Result<(), Error> {
    use std::io::BufRead as _;
    println!("== the acquirer link: ISO 8583 to acquirer-sim (spec 12)");
    let mut acquirer = std::process::Command::new(acquirer_bin)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut first = String::new();
    if let Some(out) = acquirer.stdout.take() {
        std::io::BufReader::new(out).read_line(&mut first)?;
    }
    let Some(port) = first
        .trim()
        .strip_prefix("listening on ")
        .and_then(|addr| addr.parse::<std::net::SocketAddr>().ok())
        .map(|addr| addr.port())
    else {
        let _ = acquirer.kill();
        return Err(format!("acquirer-sim did not say where it listens: {first:?}").into());
    };
    println!("   acquirer-sim listening on 127.0.0.1:{port} (the published test ZPK, ZAK and PVK)");
    let charged = (|| -> Result<(), Error> {
        api.reconfigure(|text| {
            text.replacen(processor, &iso8583.replace("{port}", &port.to_string()), 1)
        })?;
        api.terminate();
        api.restart()?;
        println!(
            "   the API restarted with [processor] kind = \"iso8583\" (keyd MACs every message)"
        );
        let inner = json!({"amount": {"value": "2500", "currency": "EUR"}, "entry_mode": "chip",
                           "card": t.card_blob("4242424242424242")?,
                           "pin_block": t.pin_block("1234", "4242424242424242")?});
        let (a, v) = t.charge_with(&inner, None)?;
        let c = v.clone().unwrap_or_default();
        println!(
            "   visa 25.00 EUR with the right PIN over ISO 8583: {} via {}, RRN {}, authorization {}",
            show(&a, v.as_ref()).trim_end(),
            c["processor"]["name"].as_str().unwrap_or(""),
            c["processor"]["reference"].as_str().unwrap_or(""),
            c["authorization_code"].as_str().unwrap_or("")
        );
        Ok(())
    })();
    let _ = acquirer.kill();
    let _ = acquirer.wait();
    charged
}
