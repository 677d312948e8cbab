//! Rate limits over real HTTP: a terminal or a token driven at twice its limit gets 429s with
//! `Retry-After` and `RateLimit-*` headers, while another terminal's charges and another
//! caller's calls go through untouched.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::api::{Answer, Platform};
use serde_json::json;

/// Terminal calls: 5 a second (bursts of 10); backoffice calls: 10 a second per subject.
const LIMITS: &str = "\n[rate_limits]\nper_terminal = 5\nper_principal = 10\n";

/// Calls `f` `rate` times a second for `secs` seconds; the answers.
fn paced(rate: u32, secs: u32, mut f: impl FnMut() -> Answer) -> Vec<Answer> {
    let start = Instant::now();
    (0..rate * secs)
        .map(|i| {
            let due = start + Duration::from_secs_f64(f64::from(i) / f64::from(rate));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            f()
        })
        .collect()
}

fn count(answers: &[Answer], status: u16) -> usize {
    answers.iter().filter(|a| a.status == status).count()
}

#[test]
fn twice_the_limit_gets_429s_and_leaves_other_terminals_and_callers_alone() {
    let p = Platform::start(Path::new(env!("CARGO_BIN_EXE_api")), LIMITS).unwrap();
    let (busy_merchant, mut busy) = p.activated_terminal("POS-0000A7E1").unwrap();
    let (_, mut calm) = p.activated_terminal("POS-0000A7E2").unwrap();
    // Let the activations' calls refill the buckets.
    std::thread::sleep(Duration::from_secs(3));

    let noisy = std::thread::spawn(move || {
        paced(10, 4, || {
            busy.charge("4242424242424242", 500, "EUR", None).unwrap().0
        })
    });
    let quiet = std::thread::spawn(move || {
        paced(2, 4, || {
            calm.charge("4242424242424242", 500, "EUR", None).unwrap().0
        })
    });
    let noisy = noisy.join().unwrap();
    let quiet = quiet.join().unwrap();

    assert_eq!(
        count(&quiet, 200),
        quiet.len(),
        "the calm terminal was limited"
    );
    let (ok, limited) = (count(&noisy, 200), count(&noisy, 429));
    assert_eq!(ok + limited, noisy.len());
    // A burst of 10, then 5 a second for about 4 s: about 30 of the 40 go through.
    assert!((24..=34).contains(&ok), "{ok} let through");
    let refused = noisy.iter().find(|a| a.status == 429).unwrap();
    assert_eq!(refused.code(), "4290");
    let wait: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait));
    assert_eq!(refused.header("ratelimit-limit"), Some("10"));
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    let passed = noisy.iter().find(|a| a.status == 200).unwrap();
    assert!(passed.header("ratelimit-remaining").is_some());
    // A refused charge is no charge.
    assert_eq!(p.charges(&busy_merchant).unwrap().len(), ok);
    // Once the bucket refills, the terminal charges again.
    std::thread::sleep(Duration::from_secs(1));
    let mut again = p.activated_terminal("POS-0000A7E3").unwrap().1;
    assert_eq!(
        again
            .charge("4242424242424242", 500, "EUR", None)
            .unwrap()
            .0
            .status,
        200
    );

    // The same for two backoffice callers: the one at twice its limit is refused, the other
    // is not.
    let other = p.login("second-operator", "platform_admin").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let http = p.http;
    let admin = p.admin.clone();
    let noisy = std::thread::spawn(move || {
        paced(20, 4, || {
            http.call("GET", "/resellers", Some(&admin), None).unwrap()
        })
    });
    let quiet = paced(4, 4, || {
        p.http
            .call("GET", "/resellers", Some(&other), None)
            .unwrap()
    });
    let noisy = noisy.join().unwrap();
    assert_eq!(count(&quiet, 200), quiet.len());
    assert!(count(&noisy, 429) >= 10, "{} refused", count(&noisy, 429));
    let body = &noisy.iter().find(|a| a.status == 429).unwrap().json;
    assert_eq!(body["error"]["code"], json!("4290"));
}
