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
    assert!(stdout.contains("(device computes the same)"));
    assert!(!stdout.contains("MISMATCH"));
    assert!(stdout.contains("refused (authentication failed)"));
    assert!(stdout.trim_end().ends_with("demo finished"));
}
