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
    /// The SQLite database file (created on first start).
    #[serde(default = "default_database")]
    pub database: PathBuf,
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
}

/// The payment processor: the embedded simulator (the only connector so far).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Added to every simulator call, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
    /// How long a processor call may take before the charge is `failed` (the simulator's
    /// time-out card waits exactly this long).
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
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            timeout_ms: default_processor_timeout(),
            pin_zpk: None,
            pin_pvk: None,
        }
    }
}

impl ProcessorConfig {
    /// The time-out.
    pub const fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms)
    }
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
}

impl Default for PlatformConfig {
    fn default() -> Self {
        Self {
            hosts: default_hosts(),
            default_zone: default_zone(),
            min_supported_version: default_min_version(),
        }
    }
}

fn default_database() -> PathBuf {
    "/var/lib/viopay/api.db".into()
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
        let key_id = |k: &Option<String>| {
            k.as_deref().is_none_or(|k| {
                (5..=64).contains(&k.len())
                    && k.starts_with("imp-")
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
        };
        if config.processor.pin_zpk.is_some() != config.processor.pin_pvk.is_some()
            || !key_id(&config.processor.pin_zpk)
            || !key_id(&config.processor.pin_pvk)
        {
            return Err(ConfigError(
                "processor.pin_zpk and processor.pin_pvk go together, each a keyd key id (imp-…)"
                    .into(),
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
        let unknown = format!("{ok}bogus = 1\n");
        assert!(
            Config::parse(&unknown)
                .unwrap_err()
                .0
                .contains("unknown field")
        );
    }
}
