//! The `tr31` command as contract section 11 describes it, run as a real process.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test helpers fail loudly"
)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    vector: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    id: String,
    kbpk: String,
    key: String,
    block: String,
    padding: Option<String>,
    strict_refusal: Option<String>,
}

fn vectors() -> Vec<Vector> {
    toml::from_str::<Vectors>(include_str!("../../vectors/tr31.toml"))
        .unwrap()
        .vector
}

fn tr31(args: &[&str]) -> Output {
    tr31_with_stdin(args, "")
}

fn tr31_with_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tr31"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// A failure: exit 1, exactly one line on stderr, nothing on stdout. Returns the line.
fn failure(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout {:?} stderr {:?}",
        stdout(o),
        stderr(o)
    );
    assert!(o.stdout.is_empty(), "stdout: {}", stdout(o));
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    err
}

#[test]
fn unwrap_prints_the_contract_json_for_every_vector() {
    for v in vectors() {
        let mut args = vec!["unwrap", "--kbpk", &v.kbpk, &v.block];
        if v.strict_refusal.is_some() {
            args.insert(1, "--lenient");
        }
        let out = tr31(&args);
        assert!(out.status.success(), "{}: {}", v.id, stderr(&out));
        let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(json["key"], v.key.as_str(), "{}", v.id);
        assert_eq!(json["version"], &v.block[..1]);
        assert_eq!(json["key_usage"], &v.block[5..7]);
        assert_eq!(json["algorithm"], &v.block[7..8]);
        assert_eq!(json["mode_of_use"], &v.block[8..9]);
        assert_eq!(json["key_version"], &v.block[9..11]);
        assert_eq!(json["exportability"], &v.block[11..12]);
        assert_eq!(json["key_context"], &v.block[14..15]);
        assert!(json["optional_blocks"].is_array());
        let kcv = json["kcv"].as_str().unwrap();
        assert!(
            kcv.len() == 6
                && kcv
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        );
    }
}

#[test]
fn unwrap_output_keeps_the_contract_field_order() {
    let v = &vectors()[2];
    let out = stdout(&tr31(&["unwrap", "--kbpk", &v.kbpk, &v.block]));
    let order = [
        "\"version\"",
        "\"key_usage\"",
        "\"algorithm\"",
        "\"mode_of_use\"",
        "\"key_version\"",
        "\"exportability\"",
        "\"key_context\"",
        "\"optional_blocks\"",
        "\"id\"",
        "\"data\"",
        "\"key\"",
        "\"kcv\"",
    ];
    let positions: Vec<usize> = order.iter().map(|f| out.find(f).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{out}");
    assert!(
        out.contains(r#""optional_blocks":[{"id":"KS","data":"00604B120F9292800000"}]"#),
        "{out}"
    );
    // TR-31:2018 A.7.3.1 wraps TDES key EDB380DD340BC2620247D445F5B8D678: legacy KCV, 3 bytes.
    let key = [
        0xED, 0xB3, 0x80, 0xDD, 0x34, 0x0B, 0xC2, 0x62, 0x02, 0x47, 0xD4, 0x45, 0xF5, 0xB8, 0xD6,
        0x78,
    ];
    let kcv = tr31::kcv::legacy(&key).unwrap();
    let want = format!(r#""kcv":"{:02X}{:02X}{:02X}"}}"#, kcv[0], kcv[1], kcv[2]);
    assert!(out.trim_end().ends_with(&want), "{out} {want}");
}

#[test]
fn wrap_with_padding_reproduces_published_blocks() {
    for v in vectors() {
        let Some(padding) = &v.padding else { continue };
        let header = &v.block[..16 + optional_len(&v.block)];
        let mut args = vec![
            "wrap",
            "--kbpk",
            &v.kbpk,
            "--header",
            header,
            "--key",
            &v.key,
            "--padding",
            padding,
        ];
        if matches!(&v.block[..1], "A" | "C") {
            args.push("--allow-legacy");
        }
        if v.strict_refusal.is_some() {
            args.push("--lenient");
        }
        let out = tr31(&args);
        assert!(out.status.success(), "{}: {}", v.id, stderr(&out));
        assert_eq!(stdout(&out).trim_end(), v.block, "{}", v.id);
    }
}

/// Characters of optional blocks in a (short-form) header, for slicing the header off a block.
fn optional_len(block: &str) -> usize {
    let count: usize = block[12..14].parse().unwrap();
    let mut pos = 16;
    for _ in 0..count {
        pos += usize::from_str_radix(&block[pos + 2..pos + 4], 16).unwrap();
    }
    pos - 16
}

#[test]
fn wrap_random_padding_round_trips_and_hides_the_key_length() {
    let kbpk = "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6";
    let key = "3F419E1CB7079442AA37474C2EFBF8B8";
    let a = stdout(&tr31(&[
        "wrap",
        "--kbpk",
        kbpk,
        "--header",
        "D0000P0AE00E0000",
        "--key",
        key,
    ]));
    let b = stdout(&tr31(&[
        "wrap",
        "--kbpk",
        kbpk,
        "--header",
        "D0000P0AE00E0000",
        "--key",
        key,
    ]));
    assert_ne!(a, b, "padding must be random");
    // AES-128 key obfuscated to 32 bytes: payload 48 bytes, so 16 + 96 + 32 = 144 characters.
    assert!(a.starts_with("D0144P0AE00E0000"), "{a}");
    let out = tr31(&["unwrap", "--kbpk", kbpk, a.trim()]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["key"], key);
}

#[test]
fn wrap_fills_kc_and_kp_blocks() {
    let kbpk = "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6";
    let out = tr31(&[
        "wrap",
        "--kbpk",
        kbpk,
        "--header",
        "D0000P0TE00E0200KC0600KP0601",
        "--key",
        "3F419E1CB7079442AA37474C2EFBF8B8",
    ]);
    let block = stdout(&out);
    // openemv's export test header: KC legacy 57C409, KP CMAC 2331550BC9, then PB04.
    assert!(
        block.starts_with("D0144P0TE00E0300KC0C0057C409KP10012331550BC9PB04"),
        "{block} {}",
        stderr(&out)
    );
}

#[test]
fn inspect_shows_any_well_formed_block_and_checks_rules_on_request() {
    let b2 = "E0084B0TV16N0000B2AE5E26BBA7F246E84D5EA24167E208A6B66EF2E27E55A52DB52F0AEACB94C57547";
    assert!(tr31(&["inspect", b2]).status.success());
    let refused = failure(&tr31(&["inspect", "--strict", b2]));
    assert!(refused.contains("mode of use"), "{refused}");
}

#[test]
fn a_wrong_length_kbpk_reads_like_a_wrong_mac() {
    let v = &vectors()[1]; // version B
    let aes256 = "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6";
    let wrong_len = failure(&tr31(&["unwrap", "--kbpk", aes256, &v.block]));
    let wrong_key = failure(&tr31(&[
        "unwrap",
        "--kbpk",
        "00112233445566778899AABBCCDDEEFF",
        &v.block,
    ]));
    assert_eq!(wrong_len, wrong_key);
}

#[test]
fn inspect_needs_no_kbpk() {
    let v = &vectors()[5];
    let out = tr31(&["inspect", &v.block]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["version"], "D");
    assert!(json.get("key").is_none() && json.get("kcv").is_none());
}

#[test]
fn authentication_failures_share_one_message() {
    let v = &vectors()[4];
    let wrong_kbpk = "00".repeat(32);
    let mut bad_mac = v.block.clone();
    bad_mac.replace_range(bad_mac.len() - 1.., "0");
    let mut bad_payload = v.block.clone();
    bad_payload.replace_range(40..41, "0");
    let messages = [
        failure(&tr31(&["unwrap", "--kbpk", &wrong_kbpk, &v.block])),
        failure(&tr31(&["unwrap", "--kbpk", &v.kbpk, &bad_mac])),
        failure(&tr31(&["unwrap", "--kbpk", &v.kbpk, &bad_payload])),
    ];
    assert!(messages.iter().all(|m| m == &messages[0]), "{messages:?}");
}

#[test]
fn every_failure_is_one_line_and_exit_1() {
    let v = &vectors()[4];
    let cases: Vec<Vec<&str>> = vec![
        vec!["unwrap", "--kbpk", "XYZ", &v.block],
        vec!["unwrap", "--kbpk", &v.kbpk, "D0112P0AE00E0000"],
        vec!["unwrap", "--kbpk", &v.kbpk, &v.block[..110]],
        vec!["unwrap", &v.block],
        vec!["inspect", "D0112P0AE00E0000B826"],
        vec![
            "wrap",
            "--kbpk",
            &v.kbpk,
            "--header",
            "A0000P0TE00E0000",
            "--key",
            "00112233445566778899AABBCCDDEEFF",
        ],
        vec![
            "wrap",
            "--kbpk",
            &v.kbpk,
            "--header",
            "D0000P0AE00E0000",
            "--key",
            "0011",
            "--padding",
            "00",
        ],
        vec![
            "wrap",
            "--kbpk",
            &v.kbpk,
            "--header",
            "D0000B0TV00E0000",
            "--key",
            "00112233445566778899AABBCCDDEEFF",
        ],
        vec![
            "wrap",
            "--kbpk",
            &v.kbpk,
            "--header",
            "D0000P0AE00E0000",
            "--key",
            "00112233445566778899AABBCCDDEEFF",
            "--padding",
            "+F",
        ],
        vec![
            "inspect",
            "--strict",
            "E0084B0TV16N0000B2AE5E26BBA7F246E84D5EA24167E208A6B66EF2E27E55A52DB52F0AEACB94C57547",
        ],
        vec!["bogus"],
        vec![],
    ];
    for args in cases {
        let line = failure(&tr31(&args));
        assert!(line.starts_with("tr31: "), "{args:?}: {line}");
        // No key material in any error.
        assert!(
            !line.contains("3F419E1C") && !line.contains("88E1AB2A"),
            "{line}"
        );
    }
    let legacy = failure(&tr31(&[
        "wrap",
        "--kbpk",
        "89E88CF7931444F334BD7547FC3F380C",
        "--header",
        "A0000P0TE00E0000",
        "--key",
        "F039121BEC83D26B169BDCD5B22AAF8F",
    ]));
    assert!(legacy.contains("legacy"), "{legacy}");
}

#[test]
fn strict_by_default_lenient_on_request() {
    let v = vectors()
        .into_iter()
        .find(|v| v.id == "ISO20038-2017-B.2")
        .unwrap();
    let refused = failure(&tr31(&["unwrap", "--kbpk", &v.kbpk, &v.block]));
    assert!(refused.contains("mode of use"), "{refused}");
    assert!(
        tr31(&["unwrap", "--lenient", "--kbpk", &v.kbpk, &v.block])
            .status
            .success()
    );
}

#[test]
fn secrets_can_come_from_stdin() {
    let v = &vectors()[4];
    let out = tr31_with_stdin(
        &["unwrap", "--kbpk", "-", &v.block],
        &format!("{}\n", v.kbpk),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tr31_with_stdin(
        &[
            "wrap",
            "--kbpk",
            "-",
            "--header",
            "D0000P0AE00E0000",
            "--key",
            "-",
        ],
        &format!("{}\n{}\n", v.kbpk, v.key),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tr31_with_stdin(&["unwrap", "--kbpk", "-", &v.block], "");
    failure(&out);
}

#[test]
fn help_is_there_and_exits_0() {
    for args in [
        vec!["--help"],
        vec!["unwrap", "--help"],
        vec!["wrap", "--help"],
        vec!["inspect", "--help"],
    ] {
        let out = tr31(&args);
        assert!(out.status.success());
        assert!(stdout(&out).contains("Usage"));
    }
}

#[test]
fn kcv_command() {
    let out = stdout(&tr31(&[
        "kcv",
        "--algorithm",
        "T",
        "--key",
        "3F419E1CB7079442AA37474C2EFBF8B8",
    ]));
    assert_eq!(out.trim(), "57C409");
    let out = stdout(&tr31(&["kcv", "--key", "3F419E1CB7079442AA37474C2EFBF8B8"]));
    assert_eq!(out.trim(), "08793E");
}
