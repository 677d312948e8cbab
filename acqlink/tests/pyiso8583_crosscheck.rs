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
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
    let seed = env_or("PYISO8583_CROSSCHECK_SEED", SEED);
    let cases = env_or("PYISO8583_CROSSCHECK_CASES", CASES);
    let mut rng = SplitMix(seed);

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
fn random_message(rng: &mut SplitMix) -> Message {
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
        m.set_mac(Some(Mac(rng.next().to_be_bytes())));
    }
    m
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 ";

fn printable() -> Vec<u8> {
    (b' '..=b'~').collect()
}

/// Feeds the requests to the script and returns its answer lines.
fn run_script(python: &Path, requests: &str) -> Vec<String> {
    let mut child = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
    // Written from a thread so that a full stdout pipe cannot stall the writer.
    let mut stdin = child.stdin.take().unwrap();
    let input = requests.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "the pyiso8583 script failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The virtualenv's python with pyiso8583 [`PYISO8583`] installed; made on first use under the
/// cargo target directory, in a scratch directory renamed into place only once the install
/// worked (a half-made one is never taken for a finished one).
fn pyiso8583_python() -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let name = format!("py-pyiso8583-{PYISO8583}");
    let venv = target.join(&name);
    let python = venv.join("bin/python");
    if reports_version(&python) {
        return python;
    }
    let _ = std::fs::remove_dir_all(&venv);
    let scratch = target.join(format!("{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(target).unwrap();
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&scratch)
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed for the pyiso8583 cross-check: {e}"));
    assert!(
        made.status.success(),
        "`python3 -m venv` failed (Debian: apt-get install python3-venv):\n{}",
        String::from_utf8_lossy(&made.stderr)
    );
    println!("installing pyiso8583=={PYISO8583} into {}", venv.display());
    let pip = Command::new(scratch.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            // Fail within a minute or so when PyPI is unreachable, not after pip's long retries.
            "--retries",
            "2",
            "--timeout",
            "20",
        ])
        .arg(format!("pyiso8583=={PYISO8583}"))
        .output()
        .unwrap();
    if !pip.status.success() {
        let _ = std::fs::remove_dir_all(&scratch);
        panic!(
            "could not install pyiso8583=={PYISO8583} from PyPI into a virtualenv; this test \
             needs it (and PyPI once, after which {} is reused). It does not skip: the \
             cross-check is part of the crate's tests.\n{}",
            venv.display(),
            String::from_utf8_lossy(&pip.stderr)
        );
    }
    // Another test run may have finished first; either copy will do.
    if std::fs::rename(&scratch, &venv).is_err() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    assert!(
        reports_version(&python),
        "pyiso8583=={PYISO8583} installed but does not import from {}",
        venv.display()
    );
    python
}

/// Whether this python imports pyiso8583 [`PYISO8583`].
fn reports_version(python: &Path) -> bool {
    Command::new(python)
        .args([
            "-c",
            "import importlib.metadata as m, iso8583; print(m.version('pyiso8583'))",
        ])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == PYISO8583)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

/// SplitMix64: a small, seeded generator for test cases.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn text(&mut self, alphabet: &[u8], min: usize, max: usize) -> String {
        let len = min + self.below((max - min + 1) as u64) as usize;
        (0..len)
            .map(|_| char::from(alphabet[self.below(alphabet.len() as u64) as usize]))
            .collect()
    }
}
