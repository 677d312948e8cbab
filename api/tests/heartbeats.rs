//! Terminals' heartbeats and update checks over real HTTP: a real `api` (heartbeat interval of
//! one second) and keyd on a SoftHSM token, terminals from the contract (`e2e::pos`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::api::Platform;
use e2e::pos::Overrides;
use serde_json::{Value, json};

/// A platform whose terminals beat every second (offline after three silent seconds).
fn platform() -> Platform {
    let mut p = Platform::start(Path::new(env!("CARGO_BIN_EXE_api")), "").unwrap();
    p.api
        .reconfigure(|c| {
            c.replace(
                "default_zone = \"z1\"",
                "default_zone = \"z1\"\nheartbeat_secs = 1",
            )
        })
        .unwrap();
    p.api.restart().unwrap();
    p.login_token(&p.admin).unwrap();
    p
}

fn device(p: &Platform, mid: &str, device_id: &str) -> Value {
    p.ok(
        "GET",
        &format!("/merchants/{mid}/devices/{device_id}"),
        None,
    )
    .unwrap()
}

fn device_events(p: &Platform, mid: &str) -> Vec<String> {
    p.ok(
        "GET",
        &format!("/events?merchant_id={mid}&type=device.*&limit=100"),
        None,
    )
    .unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn heartbeats_keep_a_terminal_online_and_silence_turns_it_offline() {
    let p = platform();
    let (mid, mut t) = p.activated_terminal("POS-0000BE01").unwrap();
    let d = device(&p, &mid, "POS-0000BE01");
    assert_eq!(d["connectivity"], Value::Null, "nothing heard yet");
    let (config, inner) = t.config().unwrap();
    assert_eq!(config.status, 200);
    assert_eq!(inner.unwrap()["intervals"]["heartbeat_sec"], 1);

    let (a, v) = t
        .heartbeat(&json!({"app_version": "1.4.2", "battery_pct": 81, "network": "wifi"}))
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    assert_eq!(v.unwrap()["heartbeat_sec"], 1);
    let d = device(&p, &mid, "POS-0000BE01");
    assert_eq!(d["connectivity"], "online");
    assert_eq!(d["app_version"], "1.4.2");
    assert!(d["last_seen_at"].is_string());
    let online = p
        .ok(
            "GET",
            &format!("/merchants/{mid}/devices?connectivity=online"),
            None,
        )
        .unwrap();
    assert_eq!(online["data"].as_array().unwrap().len(), 1);

    // Beating every half second keeps it online past three intervals.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        let (a, _) = t.heartbeat(&json!({"app_version": "1.4.2"})).unwrap();
        assert_eq!(a.status, 200, "{}", a.json);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(device(&p, &mid, "POS-0000BE01")["connectivity"], "online");

    // Silent: offline within three intervals and a housekeeping round (5 s), with its event.
    let silent_from = Instant::now();
    while device(&p, &mid, "POS-0000BE01")["connectivity"] != "offline" {
        assert!(
            silent_from.elapsed() < Duration::from_secs(3 + 5 + 2),
            "still online after {:?} of silence",
            silent_from.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        silent_from.elapsed() >= Duration::from_secs(2),
        "offline too early"
    );
    let offline = p
        .ok(
            "GET",
            &format!("/merchants/{mid}/devices?connectivity=offline"),
            None,
        )
        .unwrap();
    assert_eq!(offline["data"][0]["device_id"], "POS-0000BE01");
    // Back: online again, and each change is one event.
    let (a, _) = t.heartbeat(&json!({"app_version": "1.4.3"})).unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(device(&p, &mid, "POS-0000BE01")["connectivity"], "online");
    assert_eq!(
        device_events(&p, &mid),
        [
            "device.online",
            "device.offline",
            "device.online",
            "device.activated",
            "device.claimed",
            "device.registered",
        ]
    );
    let bad = p
        .call(
            "GET",
            &format!("/merchants/{mid}/devices?connectivity=sometimes"),
            None,
        )
        .unwrap();
    assert_eq!(bad.status, 400);
}

#[test]
fn heartbeats_are_refused_like_charges_when_forged_replayed_or_malformed() {
    let p = platform();
    let (mid, mut t) = p.activated_terminal("POS-0000BE02").unwrap();
    let body = t
        .envelope(
            json!({"app_version": "1.4.2"}).to_string().as_bytes(),
            false,
        )
        .unwrap();
    let send = |o: Overrides| {
        t.signed_request("POST", "/pos/heartbeat", &body, &o)
            .unwrap()
    };
    let nonce = "HeartbeatNonce000001".to_owned();
    let a = send(Overrides {
        nonce: Some(nonce.clone()),
        ..Default::default()
    });
    assert_eq!(a.status, 200, "{}", a.json);
    let a = send(Overrides {
        nonce: Some(nonce),
        ..Default::default()
    });
    assert_eq!((a.status, a.code()), (401, "4013"));
    let a = send(Overrides {
        mac_key: Some(vec![7; 32]),
        ..Default::default()
    });
    assert_eq!((a.status, a.code()), (401, "4011"), "{}", a.json);
    let a = send(Overrides {
        tamper_body: Some(body.iter().rev().copied().collect()),
        ..Default::default()
    });
    assert_eq!((a.status, a.code()), (401, "4011"), "{}", a.json);
    let a = send(Overrides {
        timestamp: Some(e2e::pos::timestamp_at(e2e::pos::unix_now().unwrap() - 301)),
        ..Default::default()
    });
    assert_eq!((a.status, a.code()), (401, "4012"), "{}", a.json);
    for (inner, field) in [
        (json!({}), "app_version"),
        (json!({"app_version": "1.4"}), "app_version"),
        (
            json!({"app_version": "1.4.2", "battery_pct": 101}),
            "battery_pct",
        ),
        (
            json!({"app_version": "1.4.2", "network": "pigeon"}),
            "network",
        ),
    ] {
        let (a, _) = t.heartbeat(&inner).unwrap();
        assert_eq!(a.status, 400, "{inner}: {}", a.json);
        assert!(
            a.json.to_string().contains(&format!("\"{field}\"")),
            "{inner}: {}",
            a.json
        );
    }
    // Only the one good heartbeat changed the device.
    let d = p
        .ok(
            "GET",
            &format!("/merchants/{mid}/devices/POS-0000BE02"),
            None,
        )
        .unwrap();
    assert_eq!(
        (d["connectivity"].as_str(), d["app_version"].as_str()),
        (Some("online"), Some("1.4.2"))
    );
}

#[test]
fn update_checks_tell_the_published_version_and_whether_it_is_mandatory() {
    let p = platform();
    let (mid, mut t) = p.activated_terminal("POS-0000BE03").unwrap();
    let (a, v) = t.update_check("1.4.2").unwrap();
    assert_eq!(a.status, 200, "{}", a.json);
    let v = v.unwrap();
    assert_eq!(
        (v["update_available"].as_bool(), v["mandatory"].as_bool()),
        (Some(false), Some(false))
    );
    assert_eq!(v["latest_version"], Value::Null);
    let model = device(&p, &mid, "POS-0000BE03")["model"]
        .as_str()
        .unwrap()
        .to_owned();

    // Only a platform admin publishes.
    let token = p.api.token("shop-admin", "merchant_admin").unwrap();
    p.ok(
        "POST",
        &format!("/merchants/{mid}/users"),
        Some(&json!({"email": "s@example.com", "role": "merchant_admin", "idp_subject": "shop-admin"})),
    )
    .unwrap();
    p.login_token(&token).unwrap();
    let release = json!({"latest_version": "2.1.0", "url": "https://updates.example.com/a920/2.1.0.apk",
                         "min_supported_version": "1.5.0"});
    let refused = p
        .http
        .call(
            "PUT",
            &format!("/app-versions/{model}"),
            Some(&token),
            Some(&release),
        )
        .unwrap();
    assert_eq!(refused.status, 403);
    let bad = p
        .call("PUT", &format!("/app-versions/{model}"), Some(&json!({"latest_version": "2.1.0", "url": "http://x/", "min_supported_version": "3.0.0"})))
        .unwrap();
    assert_eq!(bad.status, 400, "{}", bad.json);
    let published = p
        .ok("PUT", &format!("/app-versions/{model}"), Some(&release))
        .unwrap();
    assert_eq!(published["latest_version"], "2.1.0");
    let listed = p
        .http
        .call("GET", "/app-versions", Some(&token), None)
        .unwrap();
    assert_eq!(listed.json["data"][0]["model"], json!(model));

    for (running, available, mandatory) in [
        ("1.4.2", true, true),
        ("1.5.0", true, false),
        ("2.1.0", false, false),
    ] {
        let (a, v) = t.update_check(running).unwrap();
        assert_eq!(a.status, 200, "{}", a.json);
        let v = v.unwrap();
        assert_eq!(v["latest_version"], "2.1.0");
        assert_eq!(v["url"], release["url"]);
        assert_eq!(
            (v["update_available"].as_bool(), v["mandatory"].as_bool()),
            (Some(available), Some(mandatory)),
            "{running}"
        );
    }
}
