//! The API's configuration: one TOML file, unknown keys refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Certificate chain and key (PEM) for HTTPS.
    pub tls: Option<TlsFiles>,
    /// Serve plain HTTP instead of HTTPS; allowed only on a loopback address.
    #[serde(default)]
    pub plain_http: bool,
    /// keyd's socket.
    pub keyd_socket: PathBuf,
    /// Largest request body accepted (contract: 1 MiB).
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// Seconds a client may take to send its request headers.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// Connections served at once; more wait in the kernel's listen queue. Each needs a file
    /// descriptor: the API raises its soft `RLIMIT_NOFILE` to the hard one at start and lowers
    /// this cap to fit what it gets (see docs/operations.md for `LimitNOFILE`).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Connections one client address may hold at once (0: no per-client cap, e.g. behind a
    /// load balancer whose address every connection shares).
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// Where the records are kept: a SQLite file (`database = "path"`, created on first start;
    /// the default) or PostgreSQL (`[database] url = …`).
    #[serde(default = "default_database")]
    pub database: Database,
    /// Backoffice authentication.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Platform-wide settings.
    #[serde(default)]
    pub platform: PlatformConfig,
    /// Serve Prometheus metrics at `/metrics` (unauthenticated: turn on where only the
    /// scraper can reach the port).
    #[serde(default)]
    pub metrics: bool,
    /// The payment processor connector.
    #[serde(default)]
    pub processor: ProcessorConfig,
    /// Webhook delivery.
    #[serde(default)]
    pub webhooks: WebhooksConfig,
    /// Rate limits.
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// The portal and its embedded sign-in.
    #[serde(default)]
    pub portal: PortalConfig,
}

/// The portal (`[portal]`): the web pages for merchants and resellers, and in embedded mode the
/// sign-in provider they use.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalConfig {
    /// PBKDF2-HMAC-SHA-256 iterations for passwords set from now on (at least 10,000; the
    /// default follows current guidance for this function).
    #[serde(default = "default_kdf_iterations")]
    pub kdf_iterations: u32,
    /// The OpenID Connect client id the portal signs in as (the `aud` of its ID tokens).
    #[serde(default = "default_portal_client")]
    pub client_id: String,
    /// The longest a portal session lasts; it also ends with the token it was opened with.
    #[serde(default = "default_portal_session")]
    pub session_secs: u64,
}

impl Default for PortalConfig {
    fn default() -> Self {
        Self {
            kdf_iterations: default_kdf_iterations(),
            client_id: default_portal_client(),
            session_secs: default_portal_session(),
        }
    }
}

impl PortalConfig {
    fn check(&self) -> Result<(), String> {
        if self.kdf_iterations < MIN_KDF_ITERATIONS
            || self.kdf_iterations > 10_000_000
            || self.client_id.is_empty()
            || self.client_id.len() > 64
            || !(60..=7 * 24 * 3600).contains(&self.session_secs)
        {
            return Err(
                "portal: kdf_iterations 10000-10000000, client_id 1-64 characters, \
                        session_secs 60-604800"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The fewest PBKDF2 iterations `[portal] kdf_iterations` accepts (tests use it; production
/// keeps the default).
pub const MIN_KDF_ITERATIONS: u32 = 10_000;

const fn default_kdf_iterations() -> u32 {
    600_000
}

fn default_portal_client() -> String {
    "viopay-portal".into()
}

const fn default_portal_session() -> u64 {
    8 * 3600
}

/// Calls a second each caller may make (`[rate_limits]`), with bursts of twice that; 0 turns
/// one off. Several API nodes share each limit (each allows its share).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    /// Backoffice calls per token subject.
    #[serde(default = "default_per_principal")]
    pub per_principal: u64,
    /// Backoffice and public calls per client address (0 behind a load balancer that does
    /// not pass clients' addresses).
    #[serde(default = "default_per_address")]
    pub per_address: u64,
    /// Credential exchanges (`/client/session`, `/auth/token`) per client address.
    #[serde(default = "default_credentials_per_address")]
    pub credentials_per_address: u64,
    /// Terminal calls per terminal (charges included; never counted per address or globally).
    #[serde(default = "default_per_terminal")]
    pub per_terminal: u64,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            per_principal: default_per_principal(),
            per_address: default_per_address(),
            credentials_per_address: default_credentials_per_address(),
            per_terminal: default_per_terminal(),
        }
    }
}

const fn default_per_principal() -> u64 {
    100
}

const fn default_per_address() -> u64 {
    200
}

const fn default_credentials_per_address() -> u64 {
    10
}

const fn default_per_terminal() -> u64 {
    50
}

/// How webhooks are delivered (`[webhooks]`). The defaults are what production wants; tests
/// shorten the waits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// The CA certificates (PEM) receivers' TLS certificates must chain to: the system's
    /// bundle by default (Debian's `ca-certificates`).
    #[serde(default = "default_webhook_roots")]
    pub ca_file: PathBuf,
    /// How long one attempt may take, connection included.
    #[serde(default = "default_webhook_timeout")]
    pub timeout_ms: u64,
    /// The wait after the first failed attempt; each later wait doubles, up to
    /// `retry_max_secs`.
    #[serde(default = "default_webhook_retry")]
    pub retry_secs: u64,
    /// The longest wait between attempts.
    #[serde(default = "default_webhook_retry_max")]
    pub retry_max_secs: u64,
    /// How long after its event a delivery is given up (3 days).
    #[serde(default = "default_webhook_give_up")]
    pub give_up_after_secs: u64,
    /// Attempts in flight at once (each to a different endpoint and object).
    #[serde(default = "default_webhook_workers")]
    pub workers: usize,
    /// How often new events and due deliveries are looked for.
    #[serde(default = "default_webhook_poll")]
    pub poll_ms: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            ca_file: default_webhook_roots(),
            timeout_ms: default_webhook_timeout(),
            retry_secs: default_webhook_retry(),
            retry_max_secs: default_webhook_retry_max(),
            give_up_after_secs: default_webhook_give_up(),
            workers: default_webhook_workers(),
            poll_ms: default_webhook_poll(),
        }
    }
}

impl WebhooksConfig {
    fn check(&self) -> Result<(), String> {
        if self.timeout_ms == 0
            || self.retry_secs == 0
            || self.retry_max_secs < self.retry_secs
            || self.give_up_after_secs == 0
            || !(1..=256).contains(&self.workers)
            || !(10..=60_000).contains(&self.poll_ms)
        {
            return Err(
                "webhooks: timeout_ms, retry_secs and give_up_after_secs above 0, \
                        retry_max_secs at least retry_secs, workers 1-256, poll_ms 10-60000"
                    .into(),
            );
        }
        Ok(())
    }
}

fn default_webhook_roots() -> PathBuf {
    PathBuf::from("/etc/ssl/certs/ca-certificates.crt")
}

const fn default_webhook_timeout() -> u64 {
    10_000
}

const fn default_webhook_retry() -> u64 {
    30
}

const fn default_webhook_retry_max() -> u64 {
    6 * 3600
}

const fn default_webhook_give_up() -> u64 {
    3 * 24 * 3600
}

const fn default_webhook_workers() -> usize {
    16
}

const fn default_webhook_poll() -> u64 {
    250
}

/// Which processor connector charges go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessorKind {
    /// The embedded simulator (contract section 8).
    #[default]
    Simulator,
    /// An acquirer host over the ISO 8583 link (spec `acquirer-link.md`, section 12).
    Iso8583,
}

/// The payment processor: the embedded simulator (the default) or an ISO 8583 acquirer link.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// `simulator` (default) or `iso8583`.
    #[serde(default)]
    pub kind: ProcessorKind,
    /// Added to every simulator call, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// How long a processor call may take before the charge is `failed` (the simulator's
    /// time-out card waits exactly this long; on the acquirer link, how long a `0210` or
    /// `0410` is waited for).
    #[serde(default = "default_processor_timeout")]
    pub timeout_ms: u64,
    /// The keyd key id of the simulator's zone PIN key (`keyd simulator-keys` prints it).
    /// With `pin_pvk`, the simulator takes PINs and checks them as an issuer would (spec
    /// 12.7); without both, a charge that carries a PIN is refused.
    #[serde(default)]
    pub pin_zpk: Option<String>,
    /// The keyd key id of the simulator's PIN verification key.
    #[serde(default)]
    pub pin_pvk: Option<String>,
    /// `iso8583`: the acquirer host's name or address.
    #[serde(default)]
    pub host: Option<String>,
    /// `iso8583`: its TCP port.
    #[serde(default)]
    pub port: Option<u16>,
    /// `iso8583`: the CA certificate(s) (PEM) the acquirer's TLS certificate must chain to.
    /// Required unless `host` is a loopback address, where plain TCP is allowed.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `iso8583`: the keyd key id (`imp-…`) of the zone MAC key every message is MAC'd under.
    #[serde(default)]
    pub zak: Option<String>,
    /// `iso8583`: the keyd key id (`imp-…`) of the zone PIN key PIN blocks go under (DE 52).
    #[serde(default)]
    pub zpk: Option<String>,
    /// `iso8583`: how long one connection attempt may take.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// `iso8583`: an `0800` echo test after this long without traffic.
    #[serde(default = "default_echo_interval")]
    pub echo_interval_secs: u64,
    /// `iso8583`: the wait before the first `0401` repeat of an unanswered reversal; each
    /// later wait doubles, up to `reversal_retry_max_ms`.
    #[serde(default = "default_reversal_retry")]
    pub reversal_retry_ms: u64,
    /// `iso8583`: the longest wait between reversal repeats.
    #[serde(default = "default_reversal_retry_max")]
    pub reversal_retry_max_ms: u64,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            kind: ProcessorKind::Simulator,
            latency_ms: 0,
            timeout_ms: default_processor_timeout(),
            pin_zpk: None,
            pin_pvk: None,
            host: None,
            port: None,
            ca_file: None,
            zak: None,
            zpk: None,
            connect_timeout_ms: default_connect_timeout(),
            echo_interval_secs: default_echo_interval(),
            reversal_retry_ms: default_reversal_retry(),
            reversal_retry_max_ms: default_reversal_retry_max(),
        }
    }
}

impl ProcessorConfig {
    /// The time-out.
    pub const fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms)
    }

    /// The checks of the `[processor]` table, as a message naming the problem.
    fn check(&self) -> Result<(), String> {
        let key_id = |k: &Option<String>| {
            k.as_deref().is_none_or(|k| {
                (5..=64).contains(&k.len())
                    && k.starts_with("imp-")
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
        };
        if !key_id(&self.pin_zpk)
            || !key_id(&self.pin_pvk)
            || !key_id(&self.zak)
            || !key_id(&self.zpk)
        {
            return Err("processor key ids are keyd key ids (imp-…)".into());
        }
        if self.timeout_ms == 0 {
            return Err("processor.timeout_ms must be above 0".into());
        }
        let link = [
            ("host", self.host.is_some()),
            ("port", self.port.is_some()),
            ("ca_file", self.ca_file.is_some()),
            ("zak", self.zak.is_some()),
            ("zpk", self.zpk.is_some()),
        ];
        match self.kind {
            ProcessorKind::Simulator => {
                if let Some((name, _)) = link.iter().find(|(_, set)| *set) {
                    return Err(format!("processor.{name} is for kind = \"iso8583\""));
                }
                if self.pin_zpk.is_some() != self.pin_pvk.is_some() {
                    return Err("processor.pin_zpk and processor.pin_pvk go together".into());
                }
            }
            ProcessorKind::Iso8583 => {
                if let Some((name, _)) = link.iter().find(|(name, set)| !*set && *name != "ca_file")
                {
                    return Err(format!("kind = \"iso8583\" needs processor.{name}"));
                }
                if self.pin_zpk.is_some() || self.pin_pvk.is_some() || self.latency_ms != 0 {
                    return Err(
                        "processor.pin_zpk, pin_pvk and latency_ms are the simulator's".into(),
                    );
                }
                let host = self.host.as_deref().unwrap_or_default();
                if self.ca_file.is_none() && !is_loopback_host(host) {
                    return Err(
                        "the acquirer link needs TLS (processor.ca_file) unless the host is loopback"
                            .into(),
                    );
                }
                if self.port == Some(0) || host.is_empty() {
                    return Err("processor.host and port name the acquirer".into());
                }
                if !(1..=3600).contains(&self.echo_interval_secs)
                    || self.connect_timeout_ms == 0
                    || self.reversal_retry_ms == 0
                    || self.reversal_retry_max_ms < self.reversal_retry_ms
                {
                    return Err(
                        "processor.echo_interval_secs is 1-3600; connect_timeout_ms and \
                                reversal_retry_ms above 0; reversal_retry_max_ms at least \
                                reversal_retry_ms"
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }
}

/// Whether `host` is a loopback name or address (`localhost`, `127.0.0.0/8`, `::1`): the one
/// place the acquirer link may run without TLS, since nothing crosses a network.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

const fn default_connect_timeout() -> u64 {
    5_000
}

const fn default_echo_interval() -> u64 {
    60
}

const fn default_reversal_retry() -> u64 {
    5_000
}

const fn default_reversal_retry_max() -> u64 {
    300_000
}

const fn default_processor_timeout() -> u64 {
    10_000
}

/// Which issuer signs backoffice tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// The API signs its own ES256 tokens and publishes their JWKS.
    #[default]
    Embedded,
    /// People's tokens come from a Keycloak realm; the API only verifies them.
    Keycloak,
}

/// Backoffice authentication settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `embedded` (default) or `keycloak`.
    #[serde(default)]
    pub mode: AuthMode,
    /// `iss` of the tokens the API signs itself (people in embedded mode, API clients always).
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// `aud` every token must carry.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// The embedded issuer's ES256 key (PKCS#8 DER, created 0600 on first start).
    #[serde(default = "default_signing_key")]
    pub signing_key: PathBuf,
    /// Lifetime of tokens the API signs.
    #[serde(default = "default_ttl")]
    pub token_ttl_secs: u64,
    /// The Keycloak realm, for `mode = "keycloak"`.
    pub keycloak: Option<KeycloakConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Embedded,
            issuer: default_issuer(),
            audience: default_audience(),
            signing_key: default_signing_key(),
            token_ttl_secs: default_ttl(),
            keycloak: None,
        }
    }
}

/// A Keycloak realm the API trusts.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeycloakConfig {
    /// Exact `iss` (e.g. `https://sso.example.com/realms/viopay`).
    pub issuer: String,
    /// The realm's JWKS address (`…/protocol/openid-connect/certs`).
    pub jwks_url: String,
    /// Required `aud`.
    pub audience: String,
    /// CA certificate (PEM) that signs the JWKS server's certificate, for https.
    pub ca_file: Option<PathBuf>,
    /// The realm's authorization endpoint (`…/protocol/openid-connect/auth`), where the portal
    /// sends people to sign in. Without it and `token_url`, the portal has no sign-in.
    pub authorization_url: Option<String>,
    /// The realm's token endpoint (`…/protocol/openid-connect/token`), where the portal
    /// exchanges its codes (over https, trusting `ca_file`).
    pub token_url: Option<String>,
}

/// Platform-wide settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformConfig {
    /// The platform's own portal hosts (resolve to no reseller).
    #[serde(default = "default_hosts")]
    pub hosts: Vec<String>,
    /// Key-injection zone of devices registered without one.
    #[serde(default = "default_zone")]
    pub default_zone: String,
    /// Lowest POS app version served (`MAJOR.MINOR.PATCH`).
    #[serde(default = "default_min_version")]
    pub min_supported_version: String,
    /// How often terminals send `POST /pos/heartbeat` (their config says so); a terminal
    /// silent for three intervals is offline.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    /// How often terminals ask `POST /pos/update-check`.
    #[serde(default = "default_update_check")]
    pub update_check_secs: u64,
}

const fn default_heartbeat() -> u64 {
    300
}

const fn default_update_check() -> u64 {
    3600
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            hosts: default_hosts(),
            default_zone: default_zone(),
            min_supported_version: default_min_version(),
            heartbeat_secs: default_heartbeat(),
            update_check_secs: default_update_check(),
        }
    }
}

fn default_database() -> Database {
    Database::Sqlite("/var/lib/viopay/api.db".into())
}

fn default_issuer() -> String {
    "viopay-api".into()
}

fn default_audience() -> String {
    "viopay".into()
}

fn default_signing_key() -> PathBuf {
    "/var/lib/viopay/jwt-es256.p8".into()
}

const fn default_ttl() -> u64 {
    3600
}

fn default_hosts() -> Vec<String> {
    vec!["localhost".into()]
}

fn default_zone() -> String {
    "default".into()
}

fn default_min_version() -> String {
    "1.0.0".into()
}

/// Where the API keeps its records.
///
/// Written `database = "/path/api.db"` for SQLite (the embedded default, one process per file)
/// or as a `[database]` table with a `url` for PostgreSQL (any number of API nodes on one
/// database), so every existing config keeps meaning what it meant.
#[derive(Debug)]
pub enum Database {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(PostgresConfig),
}

impl<'de> Deserialize<'de> for Database {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> serde::de::Visitor<'de> for Either {
            type Value = Database;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a SQLite file path, or a [database] table with a PostgreSQL url")
            }
            fn visit_str<E: serde::de::Error>(self, path: &str) -> Result<Database, E> {
                Ok(Database::Sqlite(path.into()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Database, A::Error> {
                PostgresConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Database::Postgres)
            }
        }
        d.deserialize_any(Either)
    }
}

/// PostgreSQL settings (`[database]`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user@host:port/dbname` (or libpq's `key=value` form). No password: it would
    /// end up wherever the config is copied or shown.
    pub url: String,
    /// A file holding the password (one line; readable by its owner only).
    pub password_file: Option<PathBuf>,
    /// The name of an environment variable holding the password (e.g. from a secrets manager
    /// or systemd's `LoadCredential`), instead of `password_file`.
    pub password_env: Option<String>,
    /// TLS to the server: `verify-full` (the default: TLS, the server's certificate must chain
    /// to `ca_file` and name the host) or `disable` (only for loopback hosts and Unix sockets).
    #[serde(default)]
    pub sslmode: SslMode,
    /// CA certificate(s) (PEM) the server's certificate must chain to, for `verify-full`.
    pub ca_file: Option<PathBuf>,
    /// Connections in this node's pool (the server's `max_connections` must cover every
    /// node's pool).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
}

/// TLS to PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// TLS, certificate chain and host name checked.
    #[default]
    VerifyFull,
    /// No TLS (loopback and Unix sockets only).
    Disable,
}

const fn default_pool_size() -> usize {
    16
}

impl PostgresConfig {
    /// The password, from `password_file` or `password_env` (or none, e.g. for peer or trust
    /// authentication over a Unix socket).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or variable (never the password): unreadable, missing,
    /// empty, or a file readable by group or others.
    pub fn password(&self) -> Result<Option<zeroize::Zeroizing<String>>, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let text = match (&self.password_file, &self.password_env) {
            (Some(file), None) => {
                let shown = file.display();
                let mode = std::fs::metadata(file)
                    .map_err(|e| ConfigError(format!("database.password_file {shown}: {e}")))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(ConfigError(format!(
                        "database.password_file {shown} is readable by group or others \
                         (chmod 600 it)"
                    )));
                }
                zeroize::Zeroizing::new(
                    std::fs::read_to_string(file)
                        .map_err(|e| ConfigError(format!("database.password_file {shown}: {e}")))?,
                )
            }
            (None, Some(var)) => zeroize::Zeroizing::new(std::env::var(var).map_err(|_| {
                ConfigError(format!(
                    "database.password_env: ${var} is not set (or not UTF-8)"
                ))
            })?),
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "database: give password_file or password_env, not both".into(),
                ));
            }
        };
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(ConfigError("database: the password is empty".into()));
        }
        Ok(Some(zeroize::Zeroizing::new(password.to_owned())))
    }

    fn check(&self) -> Result<(), ConfigError> {
        let url = self.url.trim_start();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError(
                "database.url must be a postgres:// URL (a SQLite file is `database = \"path\"`)"
                    .into(),
            ));
        }
        if self.password_file.is_some() && self.password_env.is_some() {
            return Err(ConfigError(
                "database: give password_file or password_env, not both".into(),
            ));
        }
        match (self.sslmode, &self.ca_file) {
            (SslMode::VerifyFull, None) => {
                return Err(ConfigError(
                    "database: sslmode = \"verify-full\" needs ca_file (or sslmode = \"disable\" \
                     for a server on loopback)"
                        .into(),
                ));
            }
            (SslMode::Disable, Some(_)) => {
                return Err(ConfigError(
                    "database: ca_file is given but sslmode is \"disable\"".into(),
                ));
            }
            _ => {}
        }
        if !(1..=1024).contains(&self.pool_size) {
            return Err(ConfigError("database.pool_size must be 1 to 1024".into()));
        }
        Ok(())
    }
}

/// HTTPS certificate and key files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

const fn default_body() -> usize {
    1 << 20
}

const fn default_header_timeout() -> u64 {
    10
}

const fn default_max_connections() -> usize {
    4096
}

const fn default_max_connections_per_client() -> usize {
    512
}

/// A configuration problem.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "configuration: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads and checks a config file.
    ///
    /// # Errors
    /// [`ConfigError`] naming the problem.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// Parses and checks config text.
    ///
    /// # Errors
    /// [`ConfigError`] naming the problem.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError(e.to_string()))?;
        match (&config.tls, config.plain_http) {
            (Some(_), true) => {
                return Err(ConfigError(
                    "give either [tls] or plain_http = true, not both".into(),
                ));
            }
            (None, false) => {
                return Err(ConfigError(
                    "HTTPS needs [tls] cert and key (or plain_http = true on loopback)".into(),
                ));
            }
            (None, true) if !config.listen.ip().is_loopback() => {
                return Err(ConfigError(
                    "plain_http is allowed only on a loopback address".into(),
                ));
            }
            _ => {}
        }
        config.processor.check().map_err(ConfigError)?;
        config.webhooks.check().map_err(ConfigError)?;
        config.portal.check().map_err(ConfigError)?;
        if !(1..=86_400).contains(&config.platform.heartbeat_secs)
            || !(1..=604_800).contains(&config.platform.update_check_secs)
        {
            return Err(ConfigError(
                "platform.heartbeat_secs is 1-86400, update_check_secs 1-604800".into(),
            ));
        }
        if config.max_body_bytes == 0 || config.max_body_bytes > 1 << 20 {
            return Err(ConfigError("max_body_bytes must be 1 to 1048576".into()));
        }
        if config.max_connections == 0 || config.max_connections > 1 << 20 {
            return Err(ConfigError("max_connections must be 1 to 1048576".into()));
        }
        match (config.auth.mode, &config.auth.keycloak) {
            (AuthMode::Keycloak, None) => {
                return Err(ConfigError(
                    "auth.mode = \"keycloak\" needs [auth.keycloak] issuer, jwks_url, audience"
                        .into(),
                ));
            }
            (AuthMode::Embedded, Some(_)) => {
                return Err(ConfigError(
                    "[auth.keycloak] is given but auth.mode is not \"keycloak\"".into(),
                ));
            }
            (AuthMode::Keycloak, Some(k)) => {
                crate::wire::url::jwks_target(&k.jwks_url)
                    .map_err(|e| ConfigError(format!("auth.keycloak.jwks_url: {e}")))?;
            }
            _ => {}
        }
        if let Database::Postgres(pg) = &config.database {
            pg.check()?;
        }
        if !(60..=86_400).contains(&config.auth.token_ttl_secs) {
            return Err(ConfigError(
                "auth.token_ttl_secs must be 60 to 86400".into(),
            ));
        }
        if !crate::wire::ids::is_zone(&config.platform.default_zone) {
            return Err(ConfigError(
                "platform.default_zone: 1-64 characters of [0-9A-Za-z_.-]".into(),
            ));
        }
        if crate::wire::ids::pos_version(&config.platform.min_supported_version).is_none() {
            return Err(ConfigError(
                "platform.min_supported_version must be MAJOR.MINOR.PATCH".into(),
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_parses() {
        Config::parse(include_str!("../api.example.toml")).unwrap();
    }

    #[test]
    fn plain_http_only_on_loopback_and_tls_or_plain() {
        let ok = "listen = \"127.0.0.1:8080\"\nplain_http = true\nkeyd_socket = \"/run/keyd/keyd.sock\"\n";
        assert!(Config::parse(ok).is_ok());
        let public = ok.replace("127.0.0.1", "0.0.0.0");
        assert!(Config::parse(&public).unwrap_err().0.contains("loopback"));
        let neither = ok.replace("plain_http = true\n", "");
        assert!(Config::parse(&neither).unwrap_err().0.contains("HTTPS"));
        let keycloak = |url: &str| {
            format!(
                "{ok}[auth]\nmode = \"keycloak\"\n[auth.keycloak]\nissuer = \"https://sso\"\n\
                 jwks_url = \"{url}\"\naudience = \"viopay\"\n"
            )
        };
        assert!(Config::parse(&keycloak("http://127.0.0.1:8081/certs")).is_ok());
        assert!(Config::parse(&keycloak("https://sso.example.test/certs")).is_ok());
        let e = Config::parse(&keycloak("http://sso.example.test/certs")).unwrap_err();
        assert!(e.0.contains("loopback"), "{e}");
        let link = |lines: &str| Config::parse(&format!("{ok}[processor]\n{lines}"));
        let keys = "zak = \"imp-zak1\"\nzpk = \"imp-zpk1\"\n";
        assert!(
            link(&format!(
                "kind = \"iso8583\"\nhost = \"127.0.0.1\"\nport = 5800\n{keys}"
            ))
            .is_ok()
        );
        assert!(
            link(&format!(
                "kind = \"iso8583\"\nhost = \"localhost\"\nport = 5800\n{keys}"
            ))
            .is_ok()
        );
        let e = link(&format!(
            "kind = \"iso8583\"\nhost = \"acq.example\"\nport = 5800\n{keys}"
        ))
        .unwrap_err();
        assert!(e.0.contains("TLS"), "{e}");
        assert!(
            link(&format!(
                "kind = \"iso8583\"\nhost = \"acq.example\"\nport = 5800\nca_file = \"/ca.pem\"\n{keys}"
            ))
            .is_ok()
        );
        let e = link(&format!("kind = \"iso8583\"\nhost = \"127.0.0.1\"\n{keys}")).unwrap_err();
        assert!(e.0.contains("processor.port"), "{e}");
        let e = link(
            "kind = \"iso8583\"\nhost = \"127.0.0.1\"\nport = 1\nzak = \"zak\"\nzpk = \"imp-z\"\n",
        )
        .unwrap_err();
        assert!(e.0.contains("imp-"), "{e}");
        let e = link(&format!("host = \"127.0.0.1\"\n{keys}")).unwrap_err();
        assert!(e.0.contains("iso8583"), "{e}");
        let e = link(&format!(
            "kind = \"iso8583\"\nhost = \"::1\"\nport = 1\n{keys}latency_ms = 5\n"
        ))
        .unwrap_err();
        assert!(e.0.contains("simulator"), "{e}");
        assert!(is_loopback_host("127.9.9.9") && is_loopback_host("[::1]"));
        assert!(!is_loopback_host("10.0.0.1") && !is_loopback_host("localhost.example"));
        let unknown = format!("{ok}bogus = 1\n");
        assert!(
            Config::parse(&unknown)
                .unwrap_err()
                .0
                .contains("unknown field")
        );
    }

    #[test]
    fn database_is_a_sqlite_path_or_a_postgres_table() {
        use std::os::unix::fs::PermissionsExt;
        let top = "listen = \"127.0.0.1:8080\"\nplain_http = true\nkeyd_socket = \"/k\"\n";
        let sqlite = |c: Config| match c.database {
            Database::Sqlite(p) => p,
            Database::Postgres(_) => panic!("not SQLite"),
        };
        assert_eq!(
            sqlite(Config::parse(top).unwrap()),
            PathBuf::from("/var/lib/viopay/api.db")
        );
        let file = format!("{top}database = \"/tmp/x.db\"\n");
        assert_eq!(
            sqlite(Config::parse(&file).unwrap()),
            PathBuf::from("/tmp/x.db")
        );

        let pg = |lines: &str| Config::parse(&format!("{top}[database]\n{lines}"));
        let url = "url = \"postgres://api@127.0.0.1:5432/viopay\"\n";
        let Database::Postgres(p) = pg(&format!("{url}sslmode = \"disable\"\n"))
            .unwrap()
            .database
        else {
            panic!("not PostgreSQL")
        };
        assert_eq!((p.pool_size, p.sslmode), (16, SslMode::Disable));
        assert!(p.password().unwrap().is_none());
        let full = pg(&format!("{url}ca_file = \"/ca.pem\"\npool_size = 4\n")).unwrap();
        assert!(matches!(full.database, Database::Postgres(p) if p.sslmode == SslMode::VerifyFull));
        for (lines, says) in [
            (url.to_owned(), "ca_file"),
            (
                format!("{url}sslmode = \"disable\"\nca_file = \"/ca\"\n"),
                "disable",
            ),
            (format!("{url}sslmode = \"require\"\n"), "unknown variant"),
            (format!("{url}password = \"x\"\n"), "unknown field"),
            (
                format!(
                    "{url}sslmode = \"disable\"\npassword_file = \"/p\"\npassword_env = \"P\"\n"
                ),
                "not both",
            ),
            (
                "url = \"mysql://x\"\nsslmode = \"disable\"\n".to_owned(),
                "postgres://",
            ),
            (
                format!("{url}sslmode = \"disable\"\npool_size = 0\n"),
                "pool_size",
            ),
        ] {
            let e = pg(&lines).unwrap_err();
            assert!(e.0.contains(says), "{lines}: {e}");
        }

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let with_file = |path: &Path| PostgresConfig {
            url: "postgres://a@127.0.0.1/b".into(),
            password_file: Some(path.to_owned()),
            password_env: None,
            sslmode: SslMode::Disable,
            ca_file: None,
            pool_size: 1,
        };
        let e = with_file(&file).password().unwrap_err();
        assert!(
            e.0.contains("group or others") && !e.0.contains("s3cret"),
            "{e}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            with_file(&file).password().unwrap().unwrap().as_str(),
            "s3cret"
        );
        let missing = PostgresConfig {
            password_file: None,
            password_env: Some("VIOPAY_TEST_UNSET_PASSWORD".into()),
            ..with_file(&file)
        };
        let e = missing.password().unwrap_err();
        assert!(e.0.contains("VIOPAY_TEST_UNSET_PASSWORD"), "{e}");
    }
}
