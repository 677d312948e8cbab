//! End-to-end support: start the platform's services as real processes on throw-away SoftHSM
//! tokens, for integration tests and load drivers.
//!
//! Each [`KeydProcess`] has its own token, config, socket and store in a temporary directory,
//! so any number run side by side; everything is removed when it is dropped.

pub mod api;
pub mod browser;
pub mod load;
pub mod pos;
pub mod proc;
pub mod webdriver;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// API config lines that lift the rate limits a load driver's few terminals and one operator
/// would hit at once (each charges far faster than a real terminal); the limiter still runs.
pub const LOAD_LIMITS: &str =
    "\n[rate_limits]\nper_terminal = 1000000\nper_principal = 1000000\nper_address = 0\n";

/// The demo ZMK every harness token holds for zone `z1` (a published test value, not a secret).
pub const ZMK_HEX: &str = "0123456789ABCDEFFEDCBA98765432100123456789ABCDEFFEDCBA9876543210";

/// The two published demo components whose XOR is [`ZMK_HEX`]: the harness forms zone `z1`
/// from them under dual control, as custodians would.
pub const ZMK_COMPONENTS: [&str; 2] = [
    "2B7E151628AED2A6ABF7158809CF4F3C762E7160F38B4DA56A784D9045190CFE",
    "2A5D5071A1051F49552BAF107F9B7D2C770D34077A20804A94A4F708334D3EEE",
];

/// Two published test components of an LMK, for several keyd nodes whose tokens must hold the
/// same LMK (`keyd init --lmk-components 2`). Never for real keys.
pub const LMK_COMPONENTS: [&str; 2] = [
    "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
    "F0E0D0C0B0A090807060504030201000F0E0D0C0B0A0908070605040302010FF",
];

/// The harness's two security officers and their (published, test-only) passwords.
pub const OFFICERS: [(&str, &str); 2] = [
    ("alice", "correct horse battery staple"),
    ("bob", "tr0ub4dor and three"),
];

/// PBKDF2 iterations of the harness officers' credentials: the configured minimum, so the
/// tests spend their time on what they test.
const TEST_KDF_ITERATIONS: u32 = 10_000;

/// A keyd on its own SoftHSM token.
pub struct KeydProcess {
    hsm: softhsm::SoftHsm,
    binary: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    child: Option<Child>,
    /// `serve --verbose`: refusals logged with their reason (see [`KeydProcess::verbose`]).
    verbose: bool,
    /// Extra environment of later starts (see [`KeydProcess::env`]).
    env: Vec<(String, String)>,
}

impl std::fmt::Debug for KeydProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeydProcess")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// Why the harness failed.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

impl KeydProcess {
    /// A token with an LMK, officers [`OFFICERS`], and zone `z1` (ZMK [`ZMK_HEX`], formed
    /// from [`ZMK_COMPONENTS`] with both officers' approval), and a config that grants this
    /// process's uid the given groups (e.g. `"data", "devices"`), with working keys in the
    /// given placement (`memory` or `token`). Dual control is on.
    ///
    /// # Errors
    /// If SoftHSM is missing or `keyd init` / `keyd zmk-import` fail.
    pub fn new(binary: &Path, groups: &str, placement: &str) -> Result<Self, Error> {
        Self::with_config(binary, groups, placement, "")
    }

    /// As [`KeydProcess::new`], with more lines for the config's `[officers]` section.
    ///
    /// # Errors
    /// As [`KeydProcess::new`].
    pub fn with_config(
        binary: &Path,
        groups: &str,
        placement: &str,
        officers: &str,
    ) -> Result<Self, Error> {
        let keyd = Self::uninitialised(binary, groups, placement, officers)?;
        let [(a, a_password), (b, b_password)] = OFFICERS;
        keyd.run(
            &["init", "--officer", a, "--officer", b],
            &[a_password, b_password],
        )?;
        let [c1, c2] = ZMK_COMPONENTS;
        keyd.run(
            &[
                "zmk-import",
                "--zone",
                "z1",
                "--components",
                "2",
                "--approver",
                a,
                "--approver",
                b,
            ],
            &[a_password, b_password, c1, c2],
        )?;
        Ok(keyd)
    }

    /// A fresh token and a config as for [`KeydProcess::with_config`], without `keyd init`:
    /// for tests of the initialisation itself.
    ///
    /// # Errors
    /// If SoftHSM is missing.
    pub fn uninitialised(
        binary: &Path,
        groups: &str,
        placement: &str,
        officers: &str,
    ) -> Result<Self, Error> {
        let hsm = softhsm::SoftHsm::new("keyd-e2e")?;
        let pin = hsm.write_pin_file()?;
        let uid = std::fs::metadata(&pin)?.uid();
        let socket = hsm.dir().join("run/keyd.sock");
        let config = hsm.dir().join("keyd.toml");
        std::fs::write(
            &config,
            format!(
                "socket = \"{socket}\"\nstore = \"{store}\"\nplacement = \"{placement}\"\n\n\
                 [hsm]\nbackend = \"pkcs11\"\nmodule = \"{module}\"\ntoken_label = \"keyd-e2e\"\npin_file = \"{pin}\"\n\n\
                 [[access]]\nuid = {uid}\ngroups = [{groups}]\n\n\
                 [officers]\nkdf_iterations = {TEST_KDF_ITERATIONS}\n{officers}\n",
                socket = socket.display(),
                store = hsm.dir().join("keys.db").display(),
                module = softhsm::module_path()?.display(),
                pin = pin.display(),
            ),
        )?;
        let keyd = Self {
            hsm,
            binary: binary.to_owned(),
            config,
            socket,
            child: None,
            verbose: false,
            env: Vec::new(),
        };
        Ok(keyd)
    }

    /// A node of several keyd nodes on one PostgreSQL key store: its own token, socket and
    /// audit log, and the database `db` of `cluster` (the password in `password_file`) in its
    /// config instead of a SQLite file. Not initialised: the first node runs `init` with
    /// officers and [`LMK_COMPONENTS`], the others `init --lmk-components 2` with the same
    /// components ([`KeydProcess::init_first_node`], [`KeydProcess::init_another_node`]).
    ///
    /// # Errors
    /// If SoftHSM is missing or the config cannot be written.
    pub fn on_postgres(
        binary: &Path,
        groups: &str,
        placement: &str,
        database_url: &str,
        password_file: &Path,
    ) -> Result<Self, Error> {
        let k = Self::uninitialised(binary, groups, placement, "")?;
        let config = std::fs::read_to_string(k.config_path())?;
        let store_line = config
            .lines()
            .find(|l| l.starts_with("store = "))
            .ok_or("no store line in the harness config")?
            .to_owned();
        let audit = k.hsm().dir().join("keys.audit.log");
        let config = config.replace(&store_line, &format!("audit_log = \"{}\"", audit.display()))
            + &format!(
                "\n[database]\nurl = \"{database_url}\"\npassword_file = \"{}\"\npool_size = 4\n",
                password_file.display()
            );
        std::fs::write(k.config_path(), config)?;
        Ok(k)
    }

    /// `init` of the first node on a shared store: the LMK from [`LMK_COMPONENTS`], the
    /// officers [`OFFICERS`], and zone `z1` as [`KeydProcess::new`] forms it.
    ///
    /// # Errors
    /// If a command fails.
    pub fn init_first_node(&self) -> Result<(), Error> {
        let [(a, a_password), (b, b_password)] = OFFICERS;
        self.run(
            &[
                "init",
                "--officer",
                a,
                "--officer",
                b,
                "--lmk-components",
                "2",
            ],
            &[a_password, b_password, LMK_COMPONENTS[0], LMK_COMPONENTS[1]],
        )?;
        let [c1, c2] = ZMK_COMPONENTS;
        self.run(
            &[
                "zmk-import",
                "--zone",
                "z1",
                "--components",
                "2",
                "--approver",
                a,
                "--approver",
                b,
            ],
            &[a_password, b_password, c1, c2],
        )?;
        Ok(())
    }

    /// `init` of another node on the store the first one initialised: the same LMK, formed
    /// from the same components; officers and zones come with the store.
    ///
    /// # Errors
    /// If the command fails.
    pub fn init_another_node(&self) -> Result<(), Error> {
        self.run(&["init", "--lmk-components", "2"], &LMK_COMPONENTS)?;
        Ok(())
    }

    /// Where keyd keeps its key store.
    pub fn store(&self) -> PathBuf {
        self.hsm.dir().join("keys.db")
    }

    /// Runs a `keyd` command to completion with `lines` on its standard input (passwords,
    /// components); returns its standard output.
    ///
    /// # Errors
    /// If it cannot start or exits unsuccessfully (the error carries its standard error).
    pub fn run(&self, args: &[&str], lines: &[&str]) -> Result<String, Error> {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            for line in lines {
                // A command that refuses early exits before reading what follows; its exit
                // status and standard error are the answer, not the broken pipe.
                match stdin.write_all(format!("{line}\n").as_bytes()) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                    other => other?,
                }
            }
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(format!(
                "keyd {}: {}",
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Both harness officers approve `action` on `subject` (e.g. `export`, `z2`).
    ///
    /// # Errors
    /// If `keyd approve` fails.
    pub fn approve(&self, action: &str, subject: &str) -> Result<(), Error> {
        for (name, password) in OFFICERS {
            self.run(
                &[
                    "approve",
                    "--officer",
                    name,
                    "--action",
                    action,
                    "--subject",
                    subject,
                ],
                &[password],
            )?;
        }
        Ok(())
    }

    /// Stores the simulators' published test keys (`keyd simulator-keys`, first harness
    /// officer) and returns their key ids: `(zpk, pvk, zak)`.
    ///
    /// # Errors
    /// If the command fails or prints something else.
    pub fn simulator_keys(&self) -> Result<(String, String, String), Error> {
        let (name, password) = OFFICERS[0];
        let out = self.run(
            &["simulator-keys", "--officer", name, "--json"],
            &[password],
        )?;
        let mut ids = std::collections::HashMap::new();
        for line in out.lines().filter(|l| l.starts_with('{')) {
            let key: serde_json::Value = serde_json::from_str(line)?;
            let text = |k: &str| key.get(k).and_then(serde_json::Value::as_str);
            if let (Some(label), Some(id)) = (text("label"), text("key_id")) {
                ids.insert(label.to_owned(), id.to_owned());
            }
        }
        let mut take = |label: &str| {
            ids.remove(label)
                .ok_or_else(|| format!("simulator-keys printed no {label}: {out}"))
        };
        Ok((
            take("simulator-zpk")?,
            take("simulator-pvk")?,
            take("simulator-zak")?,
        ))
    }

    /// A `keyd` command with this instance's config and token environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .envs(self.hsm.env());
        c
    }

    /// The token.
    pub fn hsm(&self) -> &softhsm::SoftHsm {
        &self.hsm
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The configuration file (tests that need a setting the harness does not write edit it
    /// before [`KeydProcess::start`]).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Adds top-level settings (`max_connections = 8`...) to the configuration; they must come
    /// before its first table, so they go at the top.
    ///
    /// # Errors
    /// If the file cannot be rewritten.
    pub fn prepend_config(&self, lines: &str) -> Result<(), Error> {
        let old = std::fs::read_to_string(&self.config)?;
        std::fs::write(&self.config, format!("{lines}\n{old}"))?;
        Ok(())
    }

    /// Adds `lines` to the config's `[hsm]` table (settings such as `token_threads`).
    ///
    /// # Errors
    /// If the config cannot be read or written.
    pub fn add_hsm_config(&self, lines: &str) -> Result<(), Error> {
        let old = std::fs::read_to_string(&self.config)?;
        std::fs::write(
            &self.config,
            old.replacen("[hsm]\n", &format!("[hsm]\n{lines}\n"), 1),
        )?;
        Ok(())
    }

    /// `keyd lmk-rotate` from two custodians' `components`, both harness officers approving;
    /// its output (which names the new LMK's KCV).
    ///
    /// # Errors
    /// If the ceremony is refused.
    pub fn lmk_rotate(&self, components: [&str; 2]) -> Result<String, Error> {
        let [(a, a_password), (b, b_password)] = OFFICERS;
        self.run(
            &[
                "lmk-rotate",
                "--components",
                "2",
                "--approver",
                a,
                "--approver",
                b,
            ],
            &[a_password, b_password, components[0], components[1]],
        )
    }

    /// Later starts run `serve --verbose`, so a log kept with
    /// [`KeydProcess::start_with`] says why each request was refused (debug lines name no key
    /// material).
    pub fn verbose(&mut self) {
        self.verbose = true;
    }

    /// Later starts run `serve` with this variable set too (e.g. `MALLOC_ARENA_MAX`, so a
    /// test that measures the process's address space is not moved by an allocator arena
    /// reserved mid-measurement by a thread that happens to start then).
    pub fn env(&mut self, name: &str, value: &str) {
        self.env.push((name.to_owned(), value.to_owned()));
    }

    /// Starts `keyd serve` and waits for its socket.
    ///
    /// # Errors
    /// If it does not come up within 20 s.
    pub fn start(&mut self) -> Result<(), Error> {
        self.start_with(None, None)
    }

    /// Starts `keyd serve` under a descriptor limit (soft and hard, as a unit with
    /// `LimitNOFILE=n` would run it) and/or with its log appended to a file, and waits for its
    /// socket.
    ///
    /// # Errors
    /// If it does not come up within 20 s.
    pub fn start_with(&mut self, nofile: Option<u64>, log: Option<&Path>) -> Result<(), Error> {
        let mut command = match nofile {
            None => Command::new(&self.binary),
            Some(n) => proc::with_nofile(&self.binary, n),
        };
        command
            .arg("--config")
            .arg(&self.config)
            .arg("serve")
            .envs(self.hsm.env())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        if self.verbose {
            command.arg("--verbose");
        }
        let stderr = match log {
            None => Stdio::null(),
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let child = command.stderr(stderr).spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // Until a connection is taken, not only until the socket's file exists: the file
        // appears at bind(), a moment before listen(), and a busy machine can connect between
        // the two and be refused.
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            if Instant::now() > deadline {
                return Err("keyd did not start within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops keyd with SIGTERM (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }

    /// Kills keyd with SIGKILL (nothing flushed on the way out), as a host that dies would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Process id of the running keyd.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for KeydProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Stops a process the way `systemctl stop` does: SIGTERM, then SIGKILL after 10 s; waits
/// for it.
pub fn terminate(mut child: Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(child.try_wait(), Ok(None)) {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.wait();
}

/// The SoftHSM module path (see `softhsm::module_path`).
///
/// # Errors
/// If SoftHSM is not installed.
pub fn softhsm_module() -> Result<PathBuf, Error> {
    Ok(softhsm::module_path()?)
}

/// Decodes hex (test data only).
pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .filter_map(|i| s.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect()
}

/// What a terminal does with keys, for tests and drivers: sign, encrypt, and unwrap a delivered
/// key set from the ZMK down.
pub mod device {
    use std::collections::HashMap;

    use aes::cipher::block_padding::Pkcs7;
    use aes::cipher::{BlockModeEncrypt, KeyIvInit};
    use hmac::{Hmac, KeyInit, Mac};
    use keyd_proto::message::KeySetExportResponse;
    use sha2::Sha256;

    use crate::Error;

    /// HMAC-SHA-256.
    ///
    /// # Errors
    /// Never for real keys (HMAC takes any length).
    pub fn hmac(key: &[u8], message: &[u8]) -> Result<[u8; 32], Error> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)?;
        mac.update(message);
        Ok(mac.finalize().into_bytes().into())
    }

    /// AES-256-CBC with PKCS#7 padding, as the contract's envelopes and card data use it.
    ///
    /// # Errors
    /// For a key that is not 32 bytes.
    pub fn encrypt(key: &[u8], iv: &[u8; 16], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = vec![0u8; (plaintext.len() / 16 + 1) * 16];
        let n = cbc::Encryptor::<aes::Aes256>::new_from_slices(key, iv)?
            .encrypt_padded_b2b::<Pkcs7>(plaintext, &mut out)
            .map_err(|_| "padding")?
            .len();
        out.truncate(n);
        Ok(out)
    }

    /// A delivered key: its id and clear value.
    #[derive(Debug)]
    pub struct DeliveredKey {
        /// The key's id.
        pub key_id: String,
        /// The clear key (test data).
        pub key: Vec<u8>,
        /// The KCV the device computes itself.
        pub kcv: [u8; 3],
        /// The KCV keyd sent with it.
        pub sent_kcv: [u8; 3],
    }

    /// Unwraps every block of a delivered key set, each under the key named in its
    /// `wrapped_under` (the ZMK first), strictly, and computes each key's check value.
    ///
    /// # Errors
    /// If a block does not open or a parent key is missing.
    pub fn unwrap_key_set(
        export: &KeySetExportResponse,
        zmk: &[u8],
    ) -> Result<HashMap<String, DeliveredKey>, Error> {
        let mut keys: HashMap<String, DeliveredKey> = HashMap::new();
        for k in &export.keys {
            let parent = match k.wrapped_under.as_str() {
                "zmk" => zmk.to_vec(),
                other => keys
                    .get(other)
                    .map(|p| p.key.clone())
                    .ok_or("a parent key is missing")?,
            };
            let opened = tr31::open(
                &k.key_block,
                &tr31::Kbpk::new(&parent)?,
                tr31::Profile::Strict,
            )?;
            let key = opened.key.expose_secret().to_vec();
            let kcv = if k.kind == "mac" {
                tr31::kcv::hmac_sha256(&key)
            } else {
                tr31::kcv::for_algorithm(tr31::Algorithm::AES, &key).unwrap_or_default()
            };
            keys.insert(
                k.kind.clone(),
                DeliveredKey {
                    key_id: k.key_id.clone(),
                    key,
                    kcv,
                    sent_kcv: k.kcv,
                },
            );
        }
        Ok(keys)
    }
}
