//! Throw-away SoftHSM2 tokens for tests.
//!
//! [`SoftHsm::new`] makes a temporary directory with its own `softhsm2.conf` and token store,
//! initialises one token with a label and PINs, and removes everything when dropped. SoftHSM
//! reads its configuration from the `SOFTHSM2_CONF` environment variable when the PKCS#11
//! module is initialised, so the token is meant for a child process started with
//! [`SoftHsm::env`] (for example `keyd`), which keeps parallel tests apart without global state.
//!
//! The module is found through `SOFTHSM2_MODULE`, then the Debian and Fedora paths. Tests that
//! need it fail with an instruction to install `softhsm2` if it is missing; nothing is skipped.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::{fmt, fs, io};

/// Where distributions install the module.
const KNOWN_MODULES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// A token in a temporary directory.
pub struct SoftHsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
    label: String,
    user_pin: String,
}

impl fmt::Debug for SoftHsm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftHsm")
            .field("dir", &self.dir.path())
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// Why a token could not be made.
#[derive(Debug)]
pub enum Error {
    /// `softhsm2-util` or the module is not installed.
    NotInstalled(String),
    /// Creating the directory or the config file failed.
    Io(io::Error),
    /// `softhsm2-util --init-token` failed; its output.
    Init(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInstalled(what) => {
                write!(
                    f,
                    "{what} not found: install SoftHSM2 (apt-get install softhsm2)"
                )
            }
            Self::Io(e) => write!(f, "cannot prepare the SoftHSM directory: {e}"),
            Self::Init(out) => write!(f, "softhsm2-util --init-token failed: {out}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl SoftHsm {
    /// A fresh token labelled `label` with a random user PIN.
    ///
    /// # Errors
    /// [`Error`] if SoftHSM is not installed or the token cannot be initialised.
    pub fn new(label: &str) -> Result<Self, Error> {
        module_path()?;
        let dir = tempfile::Builder::new().prefix("softhsm-").tempdir()?;
        let tokens = dir.path().join("tokens");
        fs::create_dir(&tokens)?;
        let conf = dir.path().join("softhsm2.conf");
        fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )?;
        let user_pin = random_pin()?;
        let so_pin = random_pin()?;
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                &so_pin,
                "--pin",
                &user_pin,
            ])
            .output()
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => Error::NotInstalled("softhsm2-util".into()),
                _ => Error::Io(e),
            })?;
        if !out.status.success() {
            return Err(Error::Init(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        Ok(Self {
            dir,
            conf,
            label: label.to_owned(),
            user_pin,
        })
    }

    /// The temporary directory (also a convenient place for other test files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The `softhsm2.conf` of this token.
    pub fn conf_path(&self) -> &Path {
        &self.conf
    }

    /// The token's label.
    pub fn token_label(&self) -> &str {
        &self.label
    }

    /// The user PIN (random per token; test use only).
    pub fn user_pin(&self) -> &str {
        &self.user_pin
    }

    /// The environment a process needs to see this token.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![("SOFTHSM2_CONF", self.conf.clone().into_os_string())]
    }

    /// Runs the ignored test `test` of the current test binary in a process of its own that
    /// sees this token, with its user PIN in the environment variable `pin_var` (SoftHSM reads
    /// its configuration from the environment, which a test process shares between its
    /// threads). Returns the child's output.
    ///
    /// # Errors
    /// If the test binary cannot be found or started.
    pub fn run_child_test(&self, test: &str, pin_var: &str) -> Result<std::process::Output, Error> {
        Ok(Command::new(std::env::current_exe()?)
            .args(["--exact", test, "--ignored", "--nocapture"])
            .envs(self.env())
            .env(pin_var, self.user_pin())
            .output()?)
    }

    /// Writes the user PIN to a file readable only by its owner, as keyd expects it.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_pin_file(&self) -> Result<PathBuf, Error> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = self.dir.path().join("user.pin");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        io::Write::write_all(&mut f, self.user_pin.as_bytes())?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        Ok(path)
    }
}

/// The SoftHSM PKCS#11 module: `SOFTHSM2_MODULE`, or the first known path that exists.
///
/// # Errors
/// [`Error::NotInstalled`] if none is found.
pub fn module_path() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("SOFTHSM2_MODULE") {
        let path = PathBuf::from(path);
        return if path.exists() {
            Ok(path)
        } else {
            Err(Error::NotInstalled(format!(
                "SOFTHSM2_MODULE={}",
                path.display()
            )))
        };
    }
    KNOWN_MODULES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| Error::NotInstalled("libsofthsm2.so".into()))
}

/// A 16-digit PIN from the OS random source.
fn random_pin() -> Result<String, Error> {
    let mut bytes = [0u8; 8];
    io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{:02}", b % 100)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_made_and_removed() {
        let hsm = SoftHsm::new("test-token").unwrap();
        let dir = hsm.dir().to_path_buf();
        assert!(hsm.conf_path().exists());
        assert_eq!(hsm.token_label(), "test-token");
        assert_eq!(hsm.user_pin().len(), 16);
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", hsm.conf_path())
            .arg("--show-slots")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("test-token"));
        let pin = hsm.write_pin_file().unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&pin).unwrap().permissions().mode() & 0o777,
            0o600
        );
        drop(hsm);
        assert!(!dir.exists());
    }
}
