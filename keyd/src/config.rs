//! keyd's configuration: one TOML file, unknown keys refused, secrets never inline.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use keyd_proto::Group;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::Error;

/// The whole configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Path of the Unix socket. Its directory is created 0750 if missing; the socket is 0660.
    pub socket: PathBuf,
    /// Path of the SQLite key store (one machine). Exactly one of `store` and `[database]`.
    #[serde(default)]
    pub store: Option<PathBuf>,
    /// The PostgreSQL key store shared by several keyd nodes.
    #[serde(default)]
    pub database: Option<DatabaseConfig>,
    /// How often `serve` reads the store's state version (milliseconds) and empties its
    /// working-key cache when it moved: the bound within which a disable, destroy, revocation
    /// or rotation made by another process or node stops a key here. 50 to 60000.
    #[serde(default = "default_state_poll_ms")]
    pub state_poll_ms: u64,
    /// Where working keys live for the hot path: `memory` (in keyd, zeroized, bounded cache)
    /// or `token` (session objects in the HSM). A compliance decision, so it has no default.
    pub placement: Placement,
    /// How long the previous key set's MAC key and MSK keep working after a rotation.
    #[serde(default = "default_grace")]
    pub key_set_grace_secs: u64,
    /// Most working keys held in memory at once.
    #[serde(default = "default_cache")]
    pub cache_capacity: usize,
    /// The HSM.
    pub hsm: HsmConfig,
    /// Which peers (by uid or gid, from `SO_PEERCRED`) may call which operation groups.
    #[serde(default)]
    pub access: Vec<Access>,
    /// The hash-chained audit log (default: the store's path with `.audit.log`).
    #[serde(default)]
    pub audit_log: Option<PathBuf>,
    /// Where checkpoints of the audit log (record count and last MAC) are appended: a file on
    /// another mount, or a FIFO read by a log collector. A log cut after a checkpoint is then
    /// found by `audit-verify`. None by default.
    #[serde(default)]
    pub audit_checkpoints: Option<PathBuf>,
    /// Officer accounts, dual control, key destruction.
    #[serde(default)]
    pub officers: crate::officers::Policy,
    /// Most connections served at once; beyond it new ones wait in the socket's listen queue.
    /// Lowered at start to what `RLIMIT_NOFILE` allows (a warning names `LimitNOFILE`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A connection with no request and no answer pending for this long is closed (0: never).
    /// A client that holds connections open and idle costs a descriptor each.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
    /// `PanFingerprint` calls allowed a second on average (bursts of ten seconds' worth): the
    /// operation answers for any PAN the caller picks, so it is rationed (see
    /// `Service::pan_fingerprint`).
    #[serde(default = "default_fingerprint_rate")]
    pub pan_fingerprint_rate: u32,
}

const fn default_fingerprint_rate() -> u32 {
    crate::service::DEFAULT_FINGERPRINT_RATE
}

const fn default_state_poll_ms() -> u64 {
    1000
}

const fn default_max_connections() -> usize {
    256
}

const fn default_idle_timeout() -> u64 {
    600
}

const fn default_grace() -> u64 {
    24 * 3600
}

const fn default_cache() -> usize {
    100_000
}

/// The PostgreSQL key store (`[database]`): the password never here, TLS to the server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user@host:port/db` or libpq's `key=value` form; a password in it is refused.
    pub url: String,
    /// File holding the password (mode 0600 or stricter).
    pub password_file: Option<PathBuf>,
    /// Or: environment variable holding the password.
    pub password_env: Option<String>,
    /// TLS with the server's certificate checked against this CA (PEM) and its name
    /// (`verify-full`). Without it TLS is off, which is refused unless every host is loopback
    /// or a Unix socket.
    pub ca_file: Option<PathBuf>,
    /// Connections in the pool.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

const fn default_pool_size() -> usize {
    8
}

/// Working-key placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Working keys unwrapped into keyd's memory; RustCrypto runs the hot path.
    Memory,
    /// Working keys as token session objects; every operation is a PKCS#11 call.
    Token,
}

/// The HSM backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// `pkcs11` (any module) or `software` (keys in keyd's memory: tests only).
    pub backend: Backend,
    /// Path of the PKCS#11 module.
    pub module: Option<PathBuf>,
    /// Label of the token to use (slot ids change; labels do not).
    pub token_label: Option<String>,
    /// File holding the user PIN; must not be readable by group or others.
    pub pin_file: Option<PathBuf>,
    /// Or: environment variable holding the user PIN.
    pub pin_env: Option<String>,
    /// PKCS#11 sessions in the pool.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// Threads that make the data operations' PKCS#11 calls in `token` placement (1 to
    /// `sessions`). Calls take the pool's sessions in turn, so the token decides how far the
    /// threads' calls overlap.
    #[serde(default = "default_token_threads")]
    pub token_threads: usize,
    /// Must be true for the software backend, so it is never the default by accident.
    #[serde(default)]
    pub allow_software: bool,
}

const fn default_sessions() -> usize {
    4
}

const fn default_token_threads() -> usize {
    TOKEN_THREADS_DEFAULT
}

/// One: SoftHSM gains little from a second thread and keyd lost throughput with two on two
/// cores (BENCHMARKS.md, "`token` placement: the PKCS#11 thread stops waiting and waking",
/// "More threads"). An HSM across a network, whose calls mostly wait, is where more should
/// pay; that was not measured here.
const TOKEN_THREADS_DEFAULT: usize = 1;

/// HSM backend kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A PKCS#11 module.
    Pkcs11,
    /// In-process keys, for tests.
    Software,
}

/// One access rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Access {
    /// The peer's uid.
    pub uid: Option<u32>,
    /// Or the peer's primary gid.
    pub gid: Option<u32>,
    /// Operation groups: `data`, `devices`, `admin`.
    pub groups: Vec<GroupName>,
}

/// A group name in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupName {
    /// Hot-path data operations.
    Data,
    /// Device and key-set management.
    Devices,
    /// Ceremonies and key management.
    Admin,
}

impl GroupName {
    const fn group(self) -> Group {
        match self {
            Self::Data => Group::Data,
            Self::Devices => Group::Devices,
            Self::Admin => Group::Admin,
        }
    }
}

impl Config {
    /// Reads and checks a config file.
    ///
    /// # Errors
    /// [`Error::Config`] naming the problem.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// Parses and checks config text.
    ///
    /// # Errors
    /// [`Error::Config`] naming the problem.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let config: Self = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), Error> {
        self.officers.check()?;
        match (&self.store, &self.database) {
            (Some(_), None) => {}
            (None, Some(db)) => {
                if db.password_file.is_some() && db.password_env.is_some() {
                    return Err(Error::Config(
                        "give at most one of database.password_file and database.password_env"
                            .into(),
                    ));
                }
                if db.pool_size == 0 || db.pool_size > 256 {
                    return Err(Error::Config("database.pool_size must be 1 to 256".into()));
                }
                if self.audit_log.is_none() {
                    return Err(Error::Config(
                        "with [database], name this node's own audit_log file".into(),
                    ));
                }
            }
            _ => {
                return Err(Error::Config(
                    "give exactly one of store (SQLite) and [database] (PostgreSQL)".into(),
                ));
            }
        }
        if !(50..=60_000).contains(&self.state_poll_ms) {
            return Err(Error::Config("state_poll_ms must be 50 to 60000".into()));
        }
        if self.hsm.sessions == 0 || self.hsm.sessions > 64 {
            return Err(Error::Config("hsm.sessions must be 1 to 64".into()));
        }
        if self.hsm.token_threads == 0 || self.hsm.token_threads > self.hsm.sessions {
            return Err(Error::Config(
                "hsm.token_threads must be 1 to hsm.sessions".into(),
            ));
        }
        if self.cache_capacity == 0 {
            return Err(Error::Config("cache_capacity must be at least 1".into()));
        }
        match self.hsm.backend {
            Backend::Software if !self.hsm.allow_software => Err(Error::Config(
                "hsm.backend = \"software\" keeps root keys in process memory; set hsm.allow_software = true to accept that (tests only)".into(),
            )),
            Backend::Pkcs11 => {
                if self.hsm.module.is_none() || self.hsm.token_label.is_none() {
                    return Err(Error::Config("hsm.module and hsm.token_label are required for pkcs11".into()));
                }
                if self.hsm.pin_file.is_some() == self.hsm.pin_env.is_some() {
                    return Err(Error::Config("give exactly one of hsm.pin_file and hsm.pin_env".into()));
                }
                Ok(())
            }
            Backend::Software => Ok(()),
        }?;
        for rule in &self.access {
            if rule.uid.is_some() == rule.gid.is_some() {
                return Err(Error::Config(
                    "each [[access]] rule names exactly one of uid and gid".into(),
                ));
            }
        }
        Ok(())
    }

    /// The user PIN, from the file or the environment.
    ///
    /// # Errors
    /// [`Error::Config`] if it cannot be read, or the file is readable by others.
    pub fn user_pin(&self) -> Result<Zeroizing<String>, Error> {
        if let Some(path) = &self.hsm.pin_file {
            return read_private(path, "hsm.pin_file");
        }
        if let Some(var) = &self.hsm.pin_env {
            return std::env::var(var)
                .map(|v| Zeroizing::new(v.trim().to_owned()))
                .map_err(|_| {
                    Error::Config(format!(
                        "environment variable {var} (hsm.pin_env) is not set"
                    ))
                });
        }
        Err(Error::Config("no PIN source".into()))
    }

    /// Where the audit log is (with `[database]` the config names it; see `check`).
    pub fn audit_path(&self) -> PathBuf {
        match (&self.audit_log, &self.store) {
            (Some(path), _) => path.clone(),
            (None, Some(store)) => store.with_extension("audit.log"),
            (None, None) => PathBuf::from("keyd.audit.log"),
        }
    }

    /// The database password, from the file or the environment (none: the server trusts the
    /// connection, e.g. a Unix socket with peer authentication).
    ///
    /// # Errors
    /// [`Error::Config`] if it cannot be read, or the file is readable by others.
    pub fn database_password(&self) -> Result<Option<Zeroizing<String>>, Error> {
        let Some(db) = &self.database else {
            return Ok(None);
        };
        if let Some(path) = &db.password_file {
            return read_private(path, "database.password_file").map(Some);
        }
        if let Some(var) = &db.password_env {
            return std::env::var(var)
                .map(|v| Some(Zeroizing::new(v.trim().to_owned())))
                .map_err(|_| {
                    Error::Config(format!(
                        "environment variable {var} (database.password_env) is not set"
                    ))
                });
        }
        Ok(None)
    }

    /// The groups a peer may call: the union of the rules naming its uid or gid, with Hello and
    /// Ping for any peer a rule names.
    ///
    /// A peer that no `[[access]]` rule names gets nothing, not even the session operations
    /// (`Hello`, `Ping`): the socket's file mode decides who may connect, the rules decide who
    /// may ask anything, and a stranger has no business even pinging.
    pub fn groups_for(&self, uid: u32, gid: u32) -> u32 {
        let mut rules = self
            .access
            .iter()
            .filter(|r| r.uid == Some(uid) || r.gid == Some(gid))
            .peekable();
        if rules.peek().is_none() {
            return 0;
        }
        rules
            .flat_map(|r| r.groups.iter())
            .fold(Group::Session.bit(), |acc, g| acc | g.group().bit())
    }
}

/// A secret's file, refused when group or others may read it; trimmed.
fn read_private(path: &Path, setting: &str) -> Result<Zeroizing<String>, Error> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::Config(format!("{setting} {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(Error::Config(format!(
            "{setting} {} is readable by group or others; chmod 600 it",
            path.display()
        )));
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{setting} {}: {e}", path.display())))?,
    );
    Ok(Zeroizing::new(text.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
socket = "/tmp/keyd.sock"
store = "/tmp/keys.db"
placement = "memory"

[hsm]
backend = "pkcs11"
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "keyd"
pin_env = "KEYD_PIN"

[[access]]
uid = 1000
groups = ["data", "devices"]

[[access]]
gid = 50
groups = ["admin"]
"#;

    #[test]
    fn example_parses_and_maps_peers() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.key_set_grace_secs, 86_400);
        assert_eq!(
            c.groups_for(1000, 1),
            Group::Session.bit() | Group::Data.bit() | Group::Devices.bit()
        );
        assert_eq!(
            c.groups_for(7, 50),
            Group::Session.bit() | Group::Admin.bit()
        );
        // A peer no rule names may not even ping.
        assert_eq!(c.groups_for(7, 7), 0);
        assert_eq!(c.max_connections, 256);
        assert_eq!(c.idle_timeout_secs, 600);
    }

    #[test]
    fn a_database_instead_of_a_file() {
        let text = GOOD.replace(
            "store = \"/tmp/keys.db\"",
            "audit_log = \"/var/lib/keyd/node1.audit.log\"\nstate_poll_ms = 250",
        ) + "\n[database]\nurl = \"postgres://keyd@db.example/keys\"\npassword_env = \"KEYD_DB_PASSWORD\"\nca_file = \"/etc/keyd/db-ca.pem\"\n";
        let c = Config::parse(&text).unwrap();
        let db = c.database.as_ref().unwrap();
        assert_eq!(db.pool_size, 8);
        assert_eq!(c.state_poll_ms, 250);
        assert!(c.store.is_none());
        assert_eq!(
            c.audit_path(),
            PathBuf::from("/var/lib/keyd/node1.audit.log")
        );
        assert_eq!(Config::parse(GOOD).unwrap().state_poll_ms, 1000);
    }

    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../keyd.example.toml");
        Config::parse(text).unwrap();
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let cases = [
            (GOOD.replace("placement = \"memory\"", ""), "placement"),
            (GOOD.replace("pin_env = \"KEYD_PIN\"", ""), "exactly one"),
            (
                GOOD.replace("backend = \"pkcs11\"", "backend = \"software\""),
                "allow_software",
            ),
            (
                GOOD.replace("uid = 1000", "uid = 1000\ngid = 1"),
                "exactly one of uid",
            ),
            (format!("{GOOD}\nbogus = 1"), "unknown field"),
            (
                GOOD.replace("store = \"/tmp/keys.db\"", ""),
                "exactly one of store",
            ),
            (
                format!("{GOOD}\n[database]\nurl = \"postgres://k@db/keys\""),
                "exactly one of store",
            ),
            (
                GOOD.replace(
                    "placement = \"memory\"",
                    "placement = \"memory\"\nstate_poll_ms = 10",
                ),
                "state_poll_ms",
            ),
            (
                GOOD.replace(
                    "pin_env = \"KEYD_PIN\"",
                    "pin_env = \"KEYD_PIN\"\ntoken_threads = 0",
                ),
                "token_threads",
            ),
            (
                GOOD.replace(
                    "pin_env = \"KEYD_PIN\"",
                    "pin_env = \"KEYD_PIN\"\nsessions = 2\ntoken_threads = 3",
                ),
                "token_threads",
            ),
            (
                GOOD.replace("store = \"/tmp/keys.db\"", "")
                    + "\n[database]\nurl = \"postgres://k@db/keys\"",
                "own audit_log",
            ),
            (
                GOOD.replace("store = \"/tmp/keys.db\"", "audit_log = \"/tmp/a.log\"")
                    + "\n[database]\nurl = \"postgres://k@db/keys\"\npassword = \"x\"",
                "unknown field",
            ),
            (
                GOOD.replace("store = \"/tmp/keys.db\"", "audit_log = \"/tmp/a.log\"")
                    + "\n[database]\nurl = \"postgres://k@db/keys\"\npassword_file = \"/a\"\npassword_env = \"B\"",
                "at most one",
            ),
        ];
        for (text, why) in cases {
            let err = Config::parse(&text).unwrap_err().to_string();
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
