//! keyd under hostile or careless peers (issue 16, findings 7–9): a peer that asks without
//! reading and then leaves, a process the access rules do not name, idle connections, and more
//! connections than the descriptor limit allows. Each runs a real `keyd serve` on a throw-away
//! SoftHSM token and measures its CPU time from `/proc`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "tests fail loudly"
)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::KeydProcess;
use keyd_proto::frame::{self, Kind};
use keyd_proto::message::{self as m, Operation};
use keyd_proto::{Client, Status};

fn keyd() -> KeydProcess {
    KeydProcess::new(Path::new(env!("CARGO_BIN_EXE_keyd")), r#""data""#, "memory").unwrap()
}

/// CPU seconds keyd uses over the next `secs` seconds.
fn cpu_over(pid: u32, secs: u64) -> f64 {
    let before = e2e::proc::cpu_seconds(pid).unwrap();
    std::thread::sleep(Duration::from_secs(secs));
    e2e::proc::cpu_seconds(pid).unwrap() - before
}

fn ping_works(socket: &Path) -> bool {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let Ok(client) = Client::connect(socket).await else {
            return false;
        };
        tokio::time::timeout(Duration::from_secs(5), client.call(&m::Ping {}))
            .await
            .is_ok_and(|r| r.is_ok())
    })
}

#[test]
fn a_peer_that_asks_without_reading_and_leaves_costs_nothing_afterwards() {
    let mut keyd = keyd();
    keyd.start().unwrap();
    let pid = keyd.pid().unwrap();
    // Pings in bulk, never reading the answers, until keyd stops reading too (its answers
    // back up past its queue limit), then gone.
    let mut one = Vec::new();
    frame::encode(Kind::Request, m::Ping::OPCODE, Status::OK, 1, &[], &mut one);
    let burst: Vec<u8> = one.repeat(64 * 1024);
    let mut peer = UnixStream::connect(keyd.socket()).unwrap();
    peer.set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut sent = 0usize;
    while sent < 64 << 20 && peer.write_all(&burst).is_ok() {
        sent += burst.len();
    }
    assert!(
        sent >= 8 << 20,
        "keyd held the peer back after only {sent} bytes"
    );
    drop(peer);
    std::thread::sleep(Duration::from_millis(500));
    let cpu = cpu_over(pid, 3);
    assert!(cpu < 0.3, "{cpu} s of CPU in 3 s after the peer left");
    assert!(ping_works(keyd.socket()), "keyd still serves others");
}

#[test]
fn a_process_no_access_rule_names_may_not_even_ping() {
    let mut keyd = keyd();
    // Rewrite the one access rule to name some other user.
    let config = std::fs::read_to_string(keyd.config_path()).unwrap();
    let rule = config
        .lines()
        .find(|l| l.starts_with("uid = "))
        .unwrap()
        .to_owned();
    std::fs::write(keyd.config_path(), config.replace(&rule, "uid = 4242424")).unwrap();
    keyd.start().unwrap();
    let mut stranger = UnixStream::connect(keyd.socket()).unwrap();
    let mut ping = Vec::new();
    frame::encode(
        Kind::Request,
        m::Ping::OPCODE,
        Status::OK,
        1,
        &[],
        &mut ping,
    );
    // keyd closes at once: the write may still land in the socket buffer, the read sees EOF.
    let _ = stranger.write_all(&ping);
    stranger
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let read = stranger.read_to_end(&mut answer);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "no answer for a stranger"
    );
    assert!(answer.is_empty());
}

#[test]
fn an_idle_connection_is_closed_after_the_configured_time() {
    let mut keyd = keyd();
    keyd.prepend_config("idle_timeout_secs = 1").unwrap();
    keyd.start().unwrap();
    let mut idle = UnixStream::connect(keyd.socket()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(idle.read(&mut buf).unwrap(), 0, "closed by keyd");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // A connection in use is not idle.
    assert!(ping_works(keyd.socket()));
}

#[test]
fn out_of_descriptors_keyd_waits_instead_of_spinning() {
    let mut keyd = keyd();
    let log = keyd.config_path().with_file_name("keyd.log");
    // 128 descriptors: keyd keeps 64 for its own files and serves at most 64 peers.
    keyd.start_with(Some(128), Some(&log)).unwrap();
    let pid = keyd.pid().unwrap();
    let mut held = Vec::new();
    for _ in 0..300 {
        held.push(UnixStream::connect(keyd.socket()).unwrap());
    }
    std::thread::sleep(Duration::from_millis(500));
    let log_before = std::fs::metadata(&log).unwrap().len();
    let cpu = cpu_over(pid, 3);
    let logged = std::fs::metadata(&log).unwrap().len() - log_before;
    assert!(cpu < 0.3, "{cpu} s of CPU in 3 s");
    assert!(logged < 16 * 1024, "{logged} bytes of log in 3 s");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("LimitNOFILE"), "the cap is explained: {text}");
    // The connections beyond the cap wait in the listen queue; once the first go, they are
    // served in turn and keyd answers again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ping_works(keyd.socket()) {
        assert!(Instant::now() < deadline, "keyd did not serve again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Peak virtual memory of a process so far, in KiB (`VmPeak`): a reservation counts even if
/// its pages are never touched, which is what a decoder's `with_capacity` makes.
fn vm_peak_kib(pid: u32) -> u64 {
    e2e::proc::status_kib(pid, "VmPeak").unwrap()
}

#[test]
fn a_list_count_the_frame_cannot_hold_reserves_nothing() {
    let mut keyd = keyd();
    // One malloc arena: glibc reserves 64 MiB of address space for each new arena, and a
    // worker thread that first allocates during the measurement would look like a reservation
    // made for the claimed count.
    keyd.env("MALLOC_ARENA_MAX", "1");
    keyd.start().unwrap();
    let pid = keyd.pid().unwrap();
    assert!(ping_works(keyd.socket()));
    let before = vm_peak_kib(pid);
    // A batch claiming a million MAC items in a frame of just under 1 MiB of zeros (each item
    // is at least 40 bytes: two empty strings and a 32-byte signature).
    let mut body = 1_000_000u32.to_be_bytes().to_vec();
    body.resize((1 << 20) - 64, 0);
    let mut request = Vec::new();
    frame::encode(
        Kind::Request,
        m::MacVerifyBatch::OPCODE,
        Status::OK,
        7,
        &body,
        &mut request,
    );
    let mut peer = UnixStream::connect(keyd.socket()).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    peer.write_all(&request).unwrap();
    let mut header = [0u8; frame::HEADER_LEN];
    peer.read_exact(&mut header).unwrap();
    let (answer, _) = frame::decode(&header, 1 << 20).unwrap().unwrap();
    assert_eq!(answer.header.status, Status::BAD_REQUEST);
    let grown = vm_peak_kib(pid).saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "decoding a 1 MiB frame reserved {grown} KiB more"
    );
}
