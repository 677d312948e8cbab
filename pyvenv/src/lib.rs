//! Test support for cross-checks against Python implementations we did not write (psec,
//! pyiso8583, schemathesis): a pinned virtualenv made once per pin under the target directory,
//! a runner that feeds a script its cases on standard input, the `name=number` knobs of the
//! environment, and a small seeded generator of test cases.
//!
//! For tests only: failures panic with what to do about them (install `python3-venv`, reach
//! PyPI once), because a failure here is a failed test, not something to recover from.

#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stdout,
    reason = "test support: a failure is a failed test, reported with what to do"
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The psec release our crypto is compared against. Pinned, so that a new release cannot turn
/// the build red on a day nothing here changed; raising it makes a fresh virtualenv.
pub const PSEC: &str = "1.3.0";
/// The `cryptography` release psec runs on: pinned for the same reason (its TDES support moves
/// between releases).
pub const CRYPTOGRAPHY: &str = "42.0.8";

/// The python of the virtualenv with psec [`PSEC`] on cryptography [`CRYPTOGRAPHY`], under
/// `root` (a test's `CARGO_TARGET_TMPDIR`): every cross-check against psec shares it.
pub fn psec(root: &Path) -> PathBuf {
    python(
        root,
        &format!("py-psec-{PSEC}-cryptography-{CRYPTOGRAPHY}"),
        &[
            &format!("psec=={PSEC}"),
            &format!("cryptography=={CRYPTOGRAPHY}"),
        ],
        |python| {
            prints(
                python,
                "import psec, cryptography; print(psec.__version__, cryptography.__version__)",
                &format!("{PSEC} {CRYPTOGRAPHY}"),
            )
        },
    )
}

/// The python of a virtualenv `root/name` holding `packages` (pip requirement strings such as
/// `psec==1.3.0`), made on first use and reused while `ready(python)` says it is the right one.
///
/// It is built in a scratch directory renamed into place only once the install worked, so a
/// half-made one (an interrupted run, PyPI unreachable) is never taken for a finished one; put
/// the pinned versions in `name` so that changing a pin makes a new one. pip gives up within a
/// minute or so when PyPI cannot be reached, and the test then fails: it does not skip.
pub fn python(
    root: &Path,
    name: &str,
    packages: &[&str],
    ready: impl Fn(&Path) -> bool,
) -> PathBuf {
    let venv = root.join(name);
    let python = venv.join("bin/python");
    if ready(&python) {
        return python;
    }
    // A stale one: made by a python that is gone, or broken by hand.
    let _ = std::fs::remove_dir_all(&venv);
    let scratch = root.join(format!("{name}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(root).unwrap();
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&scratch)
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed for {name}: {e}"));
    assert!(
        made.status.success(),
        "`python3 -m venv` failed (Debian: apt-get install python3-venv; scripts/test-all does \
         this when run as root):\n{}",
        String::from_utf8_lossy(&made.stderr)
    );
    println!("installing {} into {}", packages.join(" "), venv.display());
    let pip = Command::new(scratch.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
            "--quiet",
            "--retries",
            "2",
            "--timeout",
            "20",
        ])
        .args(packages)
        .output()
        .unwrap();
    if !pip.status.success() {
        let _ = std::fs::remove_dir_all(&scratch);
        panic!(
            "could not install {} from PyPI into a virtualenv; this test needs it (and PyPI \
             once, after which {} is reused). It does not skip.\n{}",
            packages.join(" "),
            venv.display(),
            String::from_utf8_lossy(&pip.stderr)
        );
    }
    // Another test run may have finished first; either copy will do.
    if std::fs::rename(&scratch, &venv).is_err() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    assert!(
        ready(&python),
        "{} installed but not usable from {}",
        packages.join(" "),
        venv.display()
    );
    python
}

/// Whether `python -c <code>` succeeds and prints exactly `expected` (after trimming): the
/// usual `ready` check, with code that imports the packages and prints their versions.
pub fn prints(python: &Path, code: &str, expected: &str) -> bool {
    Command::new(python)
        .args(["-c", code])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == expected)
}

/// Runs `python -c script` with `input` on its standard input and returns its output lines;
/// panics with its standard error if it fails. The input is written from a thread, so a full
/// output pipe cannot stall the writer.
pub fn run_script(python: &Path, script: &str, input: &str) -> Vec<String> {
    let mut child = Command::new(python)
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "the python script failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A number from the environment (`PSEC_CASES=5000`...), or the default.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

/// SplitMix64: a small, seeded generator for test cases (never for keys in use). Seeded, so a
/// failing case is reproduced by its seed.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (not 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A length from `min` to `max`, both included.
    pub fn len(&mut self, min: usize, max: usize) -> usize {
        min + usize::try_from(self.below(u64::try_from(max - min + 1).unwrap())).unwrap()
    }

    /// `N` random bytes.
    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.next_u64().to_le_bytes()[0])
    }

    /// Text of `min` to `max` characters from `alphabet`.
    pub fn text(&mut self, alphabet: &[u8], min: usize, max: usize) -> String {
        let n = self.len(min, max);
        (0..n)
            .map(|_| {
                let i = usize::try_from(self.below(alphabet.len() as u64)).unwrap();
                char::from(alphabet[i])
            })
            .collect()
    }

    /// `min` to `max` decimal digits.
    pub fn digits(&mut self, min: usize, max: usize) -> String {
        self.text(b"0123456789", min, max)
    }
}
