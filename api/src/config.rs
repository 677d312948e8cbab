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
        if config.max_body_bytes == 0 || config.max_body_bytes > 1 << 20 {
            return Err(ConfigError("max_body_bytes must be 1 to 1048576".into()));
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
        let unknown = format!("{ok}bogus = 1\n");
        assert!(
            Config::parse(&unknown)
                .unwrap_err()
                .0
                .contains("unknown field")
        );
    }
}
