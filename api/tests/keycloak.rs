//! Keycloak mode: the API verifies people's tokens against a JWKS served by a separate server,
//! with keys the API never saw, and still signs its own API-client tokens.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;

use api::auth::jwt::Signer;
use e2e::KeydProcess;
use e2e::api::ApiProcess;
use serde_json::{Value, json};

/// A one-route JWKS server on its own thread: the realm's certs endpoint.
fn jwks_server(jwks: Value) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let body = jwks.to_string();
            let answer = if request.starts_with("GET /realms/viopay/protocol/openid-connect/certs ")
            {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            };
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    port
}

#[test]
fn realm_tokens_verify_and_nothing_else_does() {
    let (realm, _) = Signer::generate().unwrap();
    let (stranger, _) = Signer::generate().unwrap();
    let port = jwks_server(json!({"keys": [realm.jwk()]}));
    let issuer = format!("http://127.0.0.1:{port}/realms/viopay");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_api"));
    let mut keyd = KeydProcess::new(
        &bin.with_file_name("keyd"),
        r#""data", "devices""#,
        "memory",
    )
    .unwrap();
    keyd.start().unwrap();
    let api = ApiProcess::start(
        &bin,
        keyd.socket(),
        "",
        &format!(
            "mode = \"keycloak\"\n\n[auth.keycloak]\nissuer = \"{issuer}\"\n\
             jwks_url = \"{issuer}/protocol/openid-connect/certs\"\naudience = \"backoffice\"\n"
        ),
    )
    .unwrap();
    let http = api.client();
    let now = api::wire::time::now();
    let token = |signer: &Signer, iss: &str, aud: &str, sub: &str, role: &str| {
        signer
            .sign(
                &json!({"iss": iss, "aud": aud, "sub": sub, "exp": now + 600, "iat": now,
                           "realm_access": {"roles": [role, "offline_access"]}}),
            )
            .unwrap()
    };
    let admin = token(&realm, &issuer, "backoffice", "kc-admin", "platform_admin");
    let a = http
        .call(
            "POST",
            "/session/initiate",
            Some(&admin),
            Some(&json!({"host": "localhost"})),
        )
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    let r = http
        .call(
            "POST",
            "/resellers",
            Some(&admin),
            Some(&json!({"name": "R"})),
        )
        .unwrap();
    assert_eq!(r.status, 201, "{}", r.json);

    // Another key, another issuer, another audience: all 4010.
    for bad in [
        token(
            &stranger,
            &issuer,
            "backoffice",
            "kc-admin",
            "platform_admin",
        ),
        token(
            &realm,
            "http://127.0.0.1:1/realms/other",
            "backoffice",
            "kc-admin",
            "platform_admin",
        ),
        token(
            &realm,
            &issuer,
            "other-client",
            "kc-admin",
            "platform_admin",
        ),
    ] {
        let a = http.call("GET", "/resellers", Some(&bad), None).unwrap();
        assert_eq!((a.status, a.code()), (401, "4010"), "{}", a.json);
    }
    // The operator mint command is for embedded mode only.
    assert!(api.token("x", "platform_admin").is_err());

    // Merchant people resolve through the platform's user records.
    let rid = r.json["id"].as_str().unwrap();
    let m = http
        .call("POST", "/merchants", Some(&admin), Some(&json!({"reseller_id": rid, "name": "M", "mcc": "5812", "country": "DE", "currency": "EUR"})))
        .unwrap();
    let mid = m.json["id"].as_str().unwrap();
    let u = http
        .call("POST", &format!("/merchants/{mid}/users"), Some(&admin), Some(&json!({"email": "a@example.com", "role": "merchant_user", "idp_subject": "kc-user-1"})))
        .unwrap();
    assert_eq!(u.status, 201, "{}", u.json);
    let user = token(&realm, &issuer, "backoffice", "kc-user-1", "merchant_user");
    let a = http
        .call(
            "POST",
            "/session/initiate",
            Some(&user),
            Some(&json!({"host": "localhost"})),
        )
        .unwrap();
    assert_eq!(a.json["merchant_id"], mid);
    assert_eq!(a.json["reseller_id"], rid);
    assert_eq!(
        http.call("GET", &format!("/merchants/{mid}"), Some(&user), None)
            .unwrap()
            .status,
        200
    );
    // A role the record does not grant is not taken from the token.
    let upgraded = token(&realm, &issuer, "backoffice", "kc-user-1", "merchant_admin");
    let a = http
        .call(
            "PATCH",
            &format!("/merchants/{mid}"),
            Some(&upgraded),
            Some(&json!({"name": "x"})),
        )
        .unwrap();
    assert_eq!((a.status, a.code()), (403, "4030"));

    // API clients still get tokens from the API's own key, which verify here.
    let c = http
        .call(
            "POST",
            &format!("/merchants/{mid}/api-clients"),
            Some(&admin),
            Some(&json!({})),
        )
        .unwrap();
    let s = http
        .call("POST", "/client/session", None, Some(&json!({"client_id": c.json["client_id"], "client_secret": c.json["client_secret"]})))
        .unwrap();
    let client_token = s.json["access_token"].as_str().unwrap();
    assert_eq!(
        http.call("GET", "/merchants", Some(client_token), None)
            .unwrap()
            .status,
        200
    );
}
