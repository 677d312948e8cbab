//! Keycloak mode against a real OpenID Connect provider: `oidc-provider` from npm (a certified
//! implementation we did not write; `tests/oidc/provider.mjs` configures it like a realm:
//! HTTPS with a test CA, RS256 JWT access tokens for the API's audience with
//! `realm_access.roles`, a public portal client with PKCE). In headless Chromium a person
//! signs in to the portal at the realm; the realm's tokens work as bearer tokens; a key
//! rotation at the realm is picked up; a token of another issuer is refused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use e2e::KeydProcess;
use e2e::api::{ApiProcess, Client};
use e2e::webdriver::{self, Browser};
use serde_json::{Value, json};

/// Pinned, so a new release cannot turn the build red on its own.
const OIDC_PROVIDER: &str = "9.13.3";
const WAIT: Duration = Duration::from_secs(30);

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// `oidc-provider` installed from npm once under the target directory, with our script.
fn provider_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("oidc-provider-{OIDC_PROVIDER}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("package.json"),
        format!(
            r#"{{"name": "viopay-test-realm", "private": true, "type": "module", "dependencies": {{"oidc-provider": "{OIDC_PROVIDER}"}}}}"#
        ),
    )
    .unwrap();
    if !dir.join("node_modules/oidc-provider").exists() {
        let status = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm (Node.js) is needed for the realm tests");
        assert!(
            status.success(),
            "npm install oidc-provider@{OIDC_PROVIDER}"
        );
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/oidc/provider.mjs");
    std::fs::copy(script, dir.join("provider.mjs")).unwrap();
    dir
}

/// The realm, running until dropped.
struct Realm {
    child: Child,
    port: u16,
    _config: tempfile::TempDir,
}

impl Drop for Realm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Realm {
    /// Starts the realm on `port` with a fresh signing key named `kid`.
    fn start(port: u16, kid: &str, api_port: u16) -> Self {
        let dir = provider_dir();
        let config = tempfile::tempdir().unwrap();
        let file = config.path().join("realm.json");
        let users = json!({
            "ops-1": {"email": "ops@viopay.example", "password": "ops password 1", "roles": ["platform_admin"]},
            "ann-1": {"email": "ann@harbour.example", "password": "ann password 1", "roles": ["merchant_admin"]},
        });
        std::fs::write(
            &file,
            json!({
                "port": port, "kid": kid, "users": users,
                "cert": data("test-cert.pem"), "key": data("test-key.pem"),
                "redirect_uris": [format!("http://localhost:{api_port}/portal/callback")],
            })
            .to_string(),
        )
        .unwrap();
        // A start that does not say `ready` within 20 s is killed and tried again: once in
        // CI a Node.js process hung before listening, with no CPU time spent.
        for _ in 0..3 {
            let mut child = Command::new("node")
                .arg("provider.mjs")
                .arg(&file)
                .current_dir(&dir)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let out = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut line = String::new();
                let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
                let _ = tx.send(line);
            });
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) if line.starts_with("ready ") => {
                    return Self {
                        child,
                        port,
                        _config: config,
                    };
                }
                other => {
                    eprintln!("realm did not start ({other:?}); trying again");
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!("the realm did not start three times");
    }

    fn issuer(&self) -> String {
        format!("https://localhost:{}", self.port)
    }
}

/// A realm access token for a user, as the portal's client gets one: the authorization code
/// flow in the browser (the realm's login page), the code exchanged with its PKCE verifier by
/// Node's `fetch` (trusting the test CA).
fn realm_token(realm: &Realm, api_port: u16, email: &str, password: &str) -> String {
    let b = Browser::start_with(&["--ignore-certificate-errors"]).unwrap();
    let verifier = "a-test-verifier-of-forty-three-characters-00";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    let redirect = format!("http://localhost:{api_port}/portal/callback");
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("client_id", "viopay-portal")
        .append_pair("response_type", "code")
        .append_pair("scope", "openid email")
        .append_pair("redirect_uri", &redirect)
        .append_pair("state", "test")
        .append_pair("nonce", "test")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .finish();
    b.open(&format!("{}/auth?{query}", realm.issuer())).unwrap();
    b.fill("input[name=username]", email).unwrap();
    b.fill("input[name=password]", password).unwrap();
    b.click("button").unwrap();
    // The realm sends the browser to the portal's callback with the code (which the portal
    // refuses: it did not start this sign-in); the code is in the address.
    let deadline = Instant::now() + WAIT;
    let code = loop {
        let url = b.url().unwrap();
        if let Some(q) = url.split_once('?').map(|(_, q)| q)
            && url.starts_with(&redirect)
            && let Some((_, code)) = form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "code")
        {
            break code.into_owned();
        }
        assert!(Instant::now() < deadline, "no code: {url}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", &code)
        .append_pair("redirect_uri", &redirect)
        .append_pair("client_id", "viopay-portal")
        .append_pair("code_verifier", verifier)
        .finish();
    let out = Command::new("node")
        .args([
            "-e",
            "fetch(process.argv[1], {method: 'POST', headers: {'content-type': \
             'application/x-www-form-urlencoded'}, body: process.argv[2]})\
             .then(r => r.text()).then(t => console.log(t))",
            &format!("{}/token", realm.issuer()),
            &body,
        ])
        .env("NODE_EXTRA_CA_CERTS", data("ca-cert.pem"))
        .output()
        .unwrap();
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    answer["access_token"]
        .as_str()
        .unwrap_or_else(|| {
            panic!(
                "no token: {answer} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
        .to_owned()
}

fn bearer(
    http: Client,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let a = http.call(method, path, Some(token), body).unwrap();
    (a.status, a.json)
}

#[test]
fn the_portal_signs_in_at_a_real_realm_whose_tokens_and_key_rotation_the_api_follows() {
    assert!(
        webdriver::available(),
        "Debian's chromium and chromium-driver are needed"
    );
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_api"));
    let mut keyd = KeydProcess::new(
        &bin.with_file_name("keyd"),
        r#""data", "devices""#,
        "memory",
    )
    .unwrap();
    keyd.start().unwrap();
    let realm_port = e2e::api::free_port().unwrap();
    let issuer = format!("https://localhost:{realm_port}");
    let auth = format!(
        "mode = \"keycloak\"\n\n[auth.keycloak]\nissuer = \"{issuer}\"\n\
         jwks_url = \"{issuer}/jwks\"\naudience = \"viopay-backoffice\"\n\
         ca_file = \"{}\"\nauthorization_url = \"{issuer}/auth\"\ntoken_url = \"{issuer}/token\"\n",
        data("ca-cert.pem").display()
    );
    let api = ApiProcess::start(&bin, keyd.socket(), "", &auth).unwrap();
    let api_port = api.port();
    let http = api.client();
    let mut realm = Realm::start(realm_port, "k1", api_port);

    // The realm's platform admin sets up a merchant and binds the realm's user to it.
    let ops = realm_token(&realm, api_port, "ops@viopay.example", "ops password 1");
    let (s, j) = bearer(
        http,
        &ops,
        "POST",
        "/session/initiate",
        Some(&json!({"host": "localhost"})),
    );
    assert_eq!(s, 200, "{j}");
    let (_, r) = bearer(
        http,
        &ops,
        "POST",
        "/resellers",
        Some(&json!({"name": "Harbour Payments"})),
    );
    let (_, m) = bearer(
        http,
        &ops,
        "POST",
        "/merchants",
        Some(
            &json!({"reseller_id": r["id"], "name": "Harbour Cafe", "mcc": "5812", "country": "DE", "currency": "EUR"}),
        ),
    );
    let mid = m["id"].as_str().unwrap().to_owned();
    let (s, j) = bearer(
        http,
        &ops,
        "POST",
        &format!("/merchants/{mid}/users"),
        Some(
            &json!({"email": "ann@harbour.example", "role": "merchant_admin", "idp_subject": "ann-1"}),
        ),
    );
    assert_eq!(s, 201, "{j}");
    // No password is kept here in keycloak mode, and the embedded provider is off.
    let (s, _) = bearer(
        http,
        &ops,
        "PUT",
        &format!(
            "/merchants/{mid}/users/{}/password",
            j["id"].as_str().unwrap()
        ),
        Some(&json!({"password": "a long enough password"})),
    );
    assert_eq!(s, 409);
    assert_eq!(
        http.call("GET", "/.well-known/openid-configuration", None, None)
            .unwrap()
            .status,
        404
    );

    // A person signs in to the portal at the realm's login page.
    let b = Browser::start_with(&["--ignore-certificate-errors"]).unwrap();
    let portal = format!("http://localhost:{api_port}/portal/");
    b.open(&portal).unwrap();
    b.wait_for_text("Test realm", WAIT).unwrap();
    b.fill("input[name=username]", "ann@harbour.example")
        .unwrap();
    b.fill("input[name=password]", "ann password 1").unwrap();
    b.click("button").unwrap();
    let home = b.wait_for_text("Sign out", WAIT).unwrap();
    assert!(
        home.contains("Harbour Cafe") && home.contains("ann@harbour.example"),
        "{home}"
    );

    // The realm's tokens are bearer tokens; another issuer's are not.
    let ann = realm_token(&realm, api_port, "ann@harbour.example", "ann password 1");
    bearer(
        http,
        &ann,
        "POST",
        "/session/initiate",
        Some(&json!({"host": "localhost"})),
    );
    let (s, j) = bearer(http, &ann, "GET", &format!("/merchants/{mid}"), None);
    assert_eq!(s, 200, "{j}");
    // A token of another issuer, and one claiming the realm as issuer under a key the realm
    // never published: both refused like no token at all.
    let (stranger, _) = api::auth::jwt::Signer::generate().unwrap();
    let now = api::wire::time::now();
    for iss in ["https://other-realm.example", issuer.as_str()] {
        let forged = stranger
            .sign(
                &json!({"iss": iss, "aud": "viopay-backoffice", "sub": "ann-1", "exp": now + 600,
                          "iat": now, "realm_access": {"roles": ["merchant_admin"]}}),
            )
            .unwrap();
        let (s, j) = bearer(http, &forged, "GET", &format!("/merchants/{mid}"), None);
        assert_eq!(
            (s, j["error"]["code"].as_str()),
            (401, Some("4010")),
            "{iss}: {j}"
        );
    }

    // The realm rotates its key. Its new tokens are accepted once the API refetches the
    // realm's keys (at most once a minute); the old key's tokens are refused after.
    drop(realm);
    realm = Realm::start(realm_port, "k2", api_port);
    let fresh = realm_token(&realm, api_port, "ann@harbour.example", "ann password 1");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (s, _) = bearer(http, &fresh, "GET", &format!("/merchants/{mid}"), None);
        if s == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated key was never picked up: {s}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let (s, _) = bearer(http, &ann, "GET", &format!("/merchants/{mid}"), None);
    assert_eq!(s, 401, "a token of the retired key");
    drop(keyd);
}
