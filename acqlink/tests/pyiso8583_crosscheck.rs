//! Cross-check against an independent codec: pyiso8583 (Konstantin Novichikhin's ISO 8583
//! serializer for Python, on PyPI), given the profile's field table of acquirer-link.md 12.4 as
//! its own spec (ASCII everywhere, bitmaps as upper-case hex, LLVAR/LLLVAR lengths as ASCII
//! digits; see `pyiso8583_crosscheck.py`).
//!
//! For each generated message (random MTI of the profile, each field present or not with a
//! random value of its format, MAC or none, so DE 64, DE 128 and no MAC all occur):
//! - acqlink encodes, pyiso8583 decodes: every field pyiso8583 reads (MTI, each DE, the MAC
//!   field) must be the value acqlink holds, and no other field;
//! - pyiso8583 encodes the same fields: its bytes must be acqlink's bytes, and acqlink must
//!   decode them to the same message.
//!
//! pyiso8583 is installed once into a virtualenv under the cargo target directory (pinned) and
//! reused from then on. Needs `python3` with `venv` (Debian: `python3-venv`) and PyPI the first
//! time; without them this test fails and says so, it does not skip.
//! `PYISO8583_CROSSCHECK_SEED` and `PYISO8583_CROSSCHECK_CASES` change the seed and the count.

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

use acqlink::{De, Mac, Message, Mti};

/// The pyiso8583 release compared against. Pinned, so that a new release cannot turn the build
/// red on a day nothing here changed; raising it makes a fresh virtualenv.
const PYISO8583: &str = "4.0.1";

/// Messages by default (each gives two requests).
const CASES: usize = 2000;
/// A fixed seed makes a red run repeatable; `PYISO8583_CROSSCHECK_SEED` picks another.
const SEED: u64 = 0x8583_1987_0200;

/// The answering script: reads one request per line, prints one answer per line.
const SCRIPT: &str = include_str!("pyiso8583_crosscheck.py");

#[test]
fn acqlink_agrees_with_pyiso8583() {
    let python = pyiso8583_python();
    let seed = pyvenv::env_or("PYISO8583_CROSSCHECK_SEED", SEED);
    let cases = pyvenv::env_or("PYISO8583_CROSSCHECK_CASES", CASES);
    let mut rng = pyvenv::SplitMix(seed);

    let mut requests = String::new();
    let mut messages = Vec::new();
    for _ in 0..cases {
        let m = random_message(&mut rng);
        let wire = m.encode();
        let fields = field_words(&m);
        writeln!(requests, "dec {}", hex::encode(&wire)).unwrap();
        writeln!(requests, "enc {fields}").unwrap();
        messages.push((m, wire, fields));
    }

    let started = Instant::now();
    let answers = run_script(&python, &requests);
    println!(
        "pyiso8583 {PYISO8583} answered {} requests ({cases} messages, seed {seed}) in {:.1?}",
        answers.len(),
        started.elapsed()
    );
    assert_eq!(
        answers.len(),
        2 * messages.len(),
        "a different number of answers"
    );

    let mut mismatches = Vec::new();
    for ((m, wire, fields), pair) in messages.iter().zip(answers.chunks_exact(2)) {
        let (decoded, encoded) = (&pair[0], &pair[1]);
        if decoded != fields {
            mismatches.push(format!(
                "pyiso8583 decodes {:?} differently\n  acqlink:   {fields}\n  pyiso8583: {decoded}",
                String::from_utf8_lossy(wire)
            ));
        }
        let theirs = hex::decode(encoded).unwrap_or_default();
        if &theirs != wire {
            mismatches.push(format!(
                "pyiso8583 encodes {fields} differently\n  acqlink:   {}\n  pyiso8583: {encoded}",
                hex::encode(wire)
            ));
        } else if Message::decode(&theirs).as_ref() != Ok(m) {
            mismatches.push(format!("acqlink does not read back pyiso8583's {encoded}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} disagreements with pyiso8583 (seed {seed}; replay with \
         PYISO8583_CROSSCHECK_SEED={seed}):\n{}",
        mismatches.len(),
        mismatches
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The message as the script writes its fields: `t=<hex> 2=<hex> ...` in ascending order, the
/// MAC field (DE 64 or 128) last, every value hex-encoded.
fn field_words(m: &Message) -> String {
    let mut words = vec![format!("t={}", hex::encode(m.mti().code()))];
    for (de, value) in m.fields() {
        words.push(format!("{}={}", de.number(), hex::encode(value)));
    }
    if let Some(mac) = m.mac() {
        let text = hex::encode_upper(mac.0);
        words.push(format!("{}={}", m.mac_field(), hex::encode(text)));
    }
    words.join(" ")
}

/// A message with each field present at one chance in two, with values of its format (written
/// from the spec's table, not the crate's).
fn random_message(rng: &mut pyvenv::SplitMix) -> Message {
    let mti = Mti::ALL[rng.below(Mti::ALL.len() as u64) as usize];
    let mut m = Message::new(mti);
    for de in De::all() {
        if rng.below(2) == 0 {
            continue;
        }
        let value = match de.number() {
            2 => rng.text(b"0123456789", 1, 19),
            3 | 11 | 12 => rng.text(b"0123456789", 6, 6),
            4 => rng.text(b"0123456789", 12, 12),
            7 => rng.text(b"0123456789", 10, 10),
            13 | 14 => rng.text(b"0123456789", 4, 4),
            22 | 49 | 70 => rng.text(b"0123456789", 3, 3),
            25 => rng.text(b"0123456789", 2, 2),
            37 => rng.text(ALNUM, 12, 12),
            38 => rng.text(ALNUM, 6, 6),
            39 => rng.text(ALNUM, 2, 2),
            41 => rng.text(&printable(), 8, 8),
            42 => rng.text(&printable(), 15, 15),
            52 => rng.text(b"0123456789ABCDEF", 16, 16),
            55 => {
                let pairs = 1 + rng.below(255) as usize;
                rng.text(b"0123456789ABCDEF", 2 * pairs, 2 * pairs)
            }
            90 => rng.text(b"0123456789", 42, 42),
            other => panic!("DE {other} is not in the profile"),
        };
        m.set(de, &value).unwrap();
    }
    if rng.below(3) != 0 {
        m.set_mac(Some(Mac(rng.next_u64().to_be_bytes())));
    }
    m
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 ";

fn printable() -> Vec<u8> {
    (b' '..=b'~').collect()
}

/// Feeds the requests to the script and returns its answer lines.
fn run_script(python: &Path, requests: &str) -> Vec<String> {
    pyvenv::run_script(python, SCRIPT, requests)
}

/// The virtualenv's python with pyiso8583 [`PYISO8583`] installed (made once per pin under the
/// cargo target directory).
fn pyiso8583_python() -> PathBuf {
    pyvenv::python(
        Path::new(env!("CARGO_TARGET_TMPDIR")),
        &format!("py-pyiso8583-{PYISO8583}"),
        &[&format!("pyiso8583=={PYISO8583}")],
        |python| {
            pyvenv::prints(
                python,
                "import importlib.metadata as m, iso8583; print(m.version('pyiso8583'))",
                PYISO8583,
            )
        },
    )
}
