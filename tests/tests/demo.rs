//! The demo the README runs must keep working: it is the system's first end-to-end run.

#![allow(clippy::unwrap_used, reason = "tests fail loudly")]

#[test]
fn the_platform_demo_runs_to_the_end() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_platform-demo"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("every KCV checked"));
    assert!(
        stdout.contains("zone z1: ZMK formed with alice's and bob's approval"),
        "{stdout}"
    );
    assert!(stdout.contains("`keyd zones`: z1 "), "{stdout}");
    assert!(stdout.contains("visa 15.00 EUR: 200 approved 00"));
    assert!(stdout.contains("do-not-honor card: 200 declined 05 do_not_honor"));
    assert!(stdout.contains("processor-error card: 502 error 5020"));
    assert!(stdout.contains("-> charge partially_refunded"));
    assert!(stdout.contains("401 4011 (refused)"));
    assert!(stdout.contains("settlement st_"));
    assert!(
        stdout.contains("with the right PIN over ISO 8583: 200 approved 00 via iso8583, RRN "),
        "{stdout}"
    );
    assert!(
        stdout.contains("signed in as owner@cafe-demo.example")
            && stdout.contains("/portal/ and sign in as owner@cafe-demo.example / "),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("demo finished"));
}
