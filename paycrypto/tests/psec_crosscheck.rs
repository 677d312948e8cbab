//! Cross-check against an independent implementation: psec (Konstantin Novichikhin's payment
//! security package for Python, on PyPI), run over generated cases of every primitive.
//!
//! psec is installed once into a virtualenv under the cargo target directory (pinned, together
//! with the `cryptography` release it runs on) and reused from then on. Needs `python3` with
//! `venv` (Debian: `python3-venv`) and PyPI the first time; without them this test fails and
//! says so, it does not skip. `PSEC_CROSSCHECK_SEED` and `PSEC_CROSSCHECK_CASES` change the seed
//! and the number of cases per operation.
//!
//! What is compared (psec on the right):
//! - format 0: clear block of (PIN, PAN); PIN decoded from our block;
//! - format 4: block of (AES-128/192/256 key, PIN, PAN, random fill), byte for byte, with psec's
//!   random source replaced by the same fill; PIN deciphered from our block; random blocks,
//!   accepted or refused alike;
//! - translations 4 → 0, 0 → 0 and 4 → 4, byte for byte (format 0 is deterministic, and the
//!   4 → 4 fill is given);
//! - retail MAC with padding method 1 over messages of 0 to 40 bytes (the empty one included);
//! - Visa PVV (PVKI 1-6, PAN 12-19 digits, PIN 4-12 digits of which psec is given the 4 it uses);
//! - the TDES KCV (3 bytes);
//! - AES-CMAC (AES-128/192/256, messages of 0 to 69 bytes), against the CMAC of the
//!   `cryptography` package psec runs on (OpenSSL's), since psec itself has none.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::cast_possible_truncation,
    reason = "tests fail loudly and say what they ran"
)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use paycrypto::{AesKey, Pan, Pin, TdesKey};

/// Cases per operation by default.
const CASES: usize = 300;
/// A fixed seed makes a red run repeatable; `PSEC_CROSSCHECK_SEED` picks another.
const SEED: u64 = 0x9564_9797_0004;

/// The answering script: reads one request per line, prints one answer per line.
const SCRIPT: &str = include_str!("psec_crosscheck.py");

#[test]
fn paycrypto_agrees_with_psec() {
    let python = psec_python();
    let seed = pyvenv::env_or("PSEC_CROSSCHECK_SEED", SEED);
    let cases = pyvenv::env_or("PSEC_CROSSCHECK_CASES", CASES);
    let mut rng = pyvenv::SplitMix(seed);

    // Each request goes with what paycrypto says the answer is.
    let mut requests = String::new();
    let mut expected: Vec<(String, String)> = Vec::new();
    let mut ask = |request: String, answer: String| {
        writeln!(requests, "{request}").unwrap();
        expected.push((request, answer));
    };

    for _ in 0..cases {
        // psec's format 0 wants at least 13 PAN digits; format 4 and the PVV take 12.
        let pan13 = rng.digits(13, 19);
        let pan12 = rng.digits(12, 19);
        let pin = rng.digits(4, 12);
        let (p, a13, a12) = (
            Pin::new(&pin).unwrap(),
            Pan::new(&pan13).unwrap(),
            Pan::new(&pan12).unwrap(),
        );

        // Format 0, clear.
        let clear = paycrypto::encode_format0(&p, &a13);
        ask(format!("e0 {pin} {pan13}"), hex::encode(*clear));
        ask(format!("d0 {} {pan13}", hex::encode(*clear)), pin.clone());

        // Format 4.
        let (k1, k2) = (rng.aes_key(), rng.aes_key());
        let (key1, key2) = (AesKey::new(&k1).unwrap(), AesKey::new(&k2).unwrap());
        let random: [u8; 8] = rng.bytes();
        let b4 = paycrypto::encipher_format4(&key1, &p, &a12, &random);
        ask(
            format!(
                "e4 {} {pin} {pan12} {}",
                hex::encode(&k1),
                hex::encode(random)
            ),
            hex::encode(b4),
        );
        ask(
            format!("d4 {} {} {pan12}", hex::encode(&k1), hex::encode(b4)),
            pin.clone(),
        );
        // A random block: both refuse it (or, vanishingly rarely, both read the same PIN).
        let junk: [u8; 16] = rng.bytes();
        let read = paycrypto::decipher_format4(&key1, &junk, &a12);
        ask(
            format!("d4 {} {} {pan12}", hex::encode(&k1), hex::encode(junk)),
            read.map_or_else(|_| "ERR".to_owned(), |p| digits_text(&p)),
        );

        // Translations.
        let (z1, z2) = (rng.tdes_key(), rng.tdes_key());
        let (zpk1, zpk2) = (TdesKey::new(&z1).unwrap(), TdesKey::new(&z2).unwrap());
        let b4_13 = paycrypto::encipher_format4(&key1, &p, &a13, &random);
        let t40 = paycrypto::translate_4_to_0(&key1, &b4_13, &a13, &zpk1).unwrap();
        ask(
            format!(
                "t40 {} {} {pan13} {}",
                hex::encode(&k1),
                hex::encode(b4_13),
                hex::encode(z1)
            ),
            hex::encode(t40),
        );
        let t00 = paycrypto::translate_0_to_0(&zpk1, &t40, &a13, &zpk2).unwrap();
        ask(
            format!(
                "t00 {} {} {pan13} {}",
                hex::encode(z1),
                hex::encode(t40),
                hex::encode(z2)
            ),
            hex::encode(t00),
        );
        let fill: [u8; 8] = rng.bytes();
        let t44 = paycrypto::translate_4_to_4(&key1, &b4, &a12, &key2, &fill).unwrap();
        ask(
            format!(
                "t44 {} {} {pan12} {} {}",
                hex::encode(&k1),
                hex::encode(b4),
                hex::encode(&k2),
                hex::encode(fill)
            ),
            hex::encode(t44),
        );

        // Retail MAC, empty messages included.
        let len = rng.below(41) as usize;
        let message: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let message_hex = if message.is_empty() {
            "-".to_owned()
        } else {
            hex::encode(&message)
        };
        ask(
            format!("mac {} {message_hex}", hex::encode(z1)),
            hex::encode(paycrypto::retail_mac(&zpk1, &message)),
        );

        // AES-CMAC, against `cryptography`'s (OpenSSL's) CMAC, under keys of all three
        // lengths, empty messages and whole-block ones included.
        let len = rng.below(70) as usize;
        let message: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let message_hex = if message.is_empty() {
            "-".to_owned()
        } else {
            hex::encode(&message)
        };
        for k in [&k1, &k2] {
            let key = AesKey::new(k).unwrap();
            ask(
                format!("cmac {} {message_hex}", hex::encode(k)),
                hex::encode(paycrypto::aes_cmac(&key, &message)),
            );
        }

        // PVV and KCV.
        let pvki = 1 + rng.below(6) as u8;
        let pvv = paycrypto::pvv(&zpk2, &a12, pvki, &p).unwrap();
        ask(
            format!("pvv {} {pan12} {pvki} {}", hex::encode(z2), &pin[..4]),
            String::from_utf8(pvv.to_vec()).unwrap(),
        );
        ask(
            format!("kcv {}", hex::encode(z2)),
            hex::encode(paycrypto::kcv(&zpk2)),
        );
    }

    let started = Instant::now();
    let answers = run_psec(&python, &requests);
    println!(
        "psec {} answered {} requests ({cases} cases per operation, seed {seed}) in {:.1?}",
        pyvenv::PSEC,
        expected.len(),
        started.elapsed()
    );
    assert_eq!(
        answers.len(),
        expected.len(),
        "psec gave a different number of answers"
    );
    let mismatches: Vec<String> = expected
        .iter()
        .zip(&answers)
        .filter(|((_, ours), theirs)| ours != *theirs)
        .map(|((request, ours), theirs)| {
            format!("{request}\n  paycrypto: {ours}\n  psec:      {theirs}")
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} answers differ from psec (seed {seed}; replay with PSEC_CROSSCHECK_SEED={seed}):\n{}",
        mismatches.len(),
        expected.len(),
        mismatches
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn digits_text(pin: &Pin) -> String {
    pin.expose_digits()
        .iter()
        .map(|d| char::from(b'0' + d))
        .collect()
}

/// Feeds the requests to the script and returns its answer lines.
fn run_psec(python: &Path, requests: &str) -> Vec<String> {
    pyvenv::run_script(python, SCRIPT, requests)
}

fn psec_python() -> PathBuf {
    pyvenv::psec(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// Keys for the cases: AES of the three lengths, and double-length TDES keys paycrypto accepts.
trait CaseKeys {
    fn aes_key(&mut self) -> Vec<u8>;
    fn tdes_key(&mut self) -> [u8; 16];
}

impl CaseKeys for pyvenv::SplitMix {
    fn aes_key(&mut self) -> Vec<u8> {
        let len = [16, 24, 32][self.below(3) as usize];
        (0..len).map(|_| self.next_u64() as u8).collect()
    }

    fn tdes_key(&mut self) -> [u8; 16] {
        loop {
            let k: [u8; 16] = self.bytes();
            if TdesKey::new(&k).is_ok() {
                return k;
            }
        }
    }
}
