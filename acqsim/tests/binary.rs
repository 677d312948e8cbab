//! The `acquirer-sim` binary: it tells its address, serves with the test keys, applies its
//! fault flags, and refuses bad keys without echoing them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail loudly"
)]

#[path = "support/link.rs"]
mod link;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use acqsim::client::Client;
use link::*;

/// The child process, killed when the test ends however it ends.
struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> (Sim, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_acquirer-sim"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let sim = Sim(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line: {line:?}"))
        .parse()
        .unwrap();
    (sim, addr)
}

#[tokio::test]
async fn the_binary_serves_and_applies_its_flags() {
    let (sim, addr) = spawn(&["--drop-stan", "9", "--bad-mac-stan", "8"]);
    let mut client = Client::connect(addr, zak()).await.unwrap();
    assert_eq!(code(&ask(&mut client, &echo(1)).await), "00");
    let answer = ask(&mut client, &purchase(2, "4000000000009995", 1500)).await;
    assert_eq!(code(&answer), "51");
    client.send(&echo(9)).await.unwrap();
    silence(&mut client).await;
    client.send(&echo(8)).await.unwrap();
    assert_eq!(
        client.recv(ANSWER).await.unwrap(),
        Some(acqsim::client::Reply::BadMac)
    );
    // One log line per request on standard error, without the card number.
    let mut sim = sim;
    sim.0.kill().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut sim.0.stderr.take().unwrap(), &mut log).unwrap();
    assert!(log.contains("de39=51"), "{log}");
    assert!(
        !log.contains("4000000000009995") && !log.contains("400000"),
        "{log}"
    );
}

#[test]
fn bad_keys_are_refused_without_being_echoed() {
    let zpk = "0123456789ABCDEF0123456789ABCDEF"; // both halves equal: single DES
    let out = Command::new(env!("CARGO_BIN_EXE_acquirer-sim"))
        .args(["--listen", "127.0.0.1:0", "--zpk", zpk])
        .args(["--zak", acqsim::keys::TEST_ZAK_HEX])
        .args(["--pvk", acqsim::keys::TEST_PVK_HEX])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ZPK"), "{err}");
    assert!(!err.contains("0123456789ABCDEF"), "{err}");
    assert!(!err.contains(acqsim::keys::TEST_ZAK_HEX), "{err}");
}
