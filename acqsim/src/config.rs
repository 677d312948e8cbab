//! The simulator's TOML file: keys in clear hex (test keys only, this is a test double outside
//! the platform), extra cards, and the faults in force from the start.
//!
//! ```toml
//! listen = "127.0.0.1:8583"
//! seed = 1
//! pin_try_limit = 3          # optional; absent: no counting
//! test_cards = true          # the built-in card table (default true)
//!
//! [keys]                     # optional; absent: the built-in test keys
//! zpk = "0123456789ABCDEFEFCDAB8967452301"
//! zak = "89ABCDEF0123456776543210FEDCBA98"
//! pvk = "0123456789ABCDEFFEDCBA9876543210"
//!
//! [[cards]]                  # more cards: PAN and the PVV (PVKI 1) of its PIN under the PVK
//! pan = "6011111111111117"
//! pvv = "1234"
//!
//! [faults]
//! latency_ms = 0
//! stan_latency_ms = { "000005" = 200 }
//! drop_stans = [7]
//! drop_next = 0
//! drop_fraction = 0.0
//! bad_mac_stans = []
//! bad_mac_next = 0
//! close_next = 0
//! ```
//!
//! Errors never quote the file: a key may be on the offending line.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use acqlink::Stan;
use serde::Deserialize;

use crate::cards::{Card, CardTable};
use crate::faults::Faults;
use crate::keys::{KeyError, Keys};
use crate::server::Config;

/// Why a configuration was refused.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Io(std::io::Error),
    /// The file is not valid TOML for this schema (the parser's message, without the line).
    Toml(String),
    /// A key is not 32 hex characters or is weak.
    Key(KeyError),
    /// A STAN outside 1-999999.
    Stan(u32),
    /// The n-th `[[cards]]` entry (from 1) is not a PAN of 12-19 digits with a 4-digit PVV.
    Card(usize),
    /// `drop_fraction` outside 0.0-1.0.
    Fraction,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "cannot read the configuration: {e}"),
            Self::Toml(m) => write!(f, "configuration: {m}"),
            Self::Key(e) => write!(f, "configuration: {e}"),
            Self::Stan(n) => write!(f, "configuration: STAN {n} is outside 1-999999"),
            Self::Card(i) => write!(
                f,
                "configuration: card {i} needs a PAN of 12-19 digits and a PVV of 4 digits"
            ),
            Self::Fraction => f.write_str("configuration: drop_fraction is 0.0 to 1.0"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl From<KeyError> for ConfigError {
    fn from(e: KeyError) -> Self {
        Self::Key(e)
    }
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Listening address.
    pub listen: Option<SocketAddr>,
    /// Seed for the drop fraction.
    pub seed: Option<u64>,
    /// PIN try limit (see [`Config::pin_try_limit`]).
    pub pin_try_limit: Option<u32>,
    /// Whether the built-in card table is loaded (default: yes).
    pub test_cards: Option<bool>,
    /// The three keys.
    pub keys: Option<FileKeys>,
    /// Extra cards.
    #[serde(default)]
    pub cards: Vec<FileCard>,
    /// Faults from the start.
    #[serde(default)]
    pub faults: FileFaults,
}

/// `[keys]`: hex text. `Debug` redacts.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileKeys {
    /// Zone PIN key.
    pub zpk: String,
    /// Zone MAC key.
    pub zak: String,
    /// PIN verification key.
    pub pvk: String,
}

impl fmt::Debug for FileKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKeys(redacted)")
    }
}

/// `[[cards]]`. `Debug` shows the last four digits only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCard {
    /// The card number.
    pub pan: String,
    /// The PVV of its PIN (PVKI 1).
    pub pvv: String,
}

impl fmt::Debug for FileCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last4 = self
            .pan
            .get(self.pan.len().saturating_sub(4)..)
            .unwrap_or("");
        write!(f, "FileCard(…{last4})")
    }
}

/// `[faults]`: see [`Faults`]. STANs as numbers, latencies in milliseconds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFaults {
    /// [`Faults::latency`].
    #[serde(default)]
    pub latency_ms: u64,
    /// [`Faults::stan_latency`], by STAN text.
    #[serde(default)]
    pub stan_latency_ms: HashMap<String, u64>,
    /// [`Faults::drop_stans`].
    #[serde(default)]
    pub drop_stans: Vec<u32>,
    /// [`Faults::drop_next`].
    #[serde(default)]
    pub drop_next: u32,
    /// [`Faults::drop_fraction`].
    #[serde(default)]
    pub drop_fraction: f64,
    /// [`Faults::bad_mac_stans`].
    #[serde(default)]
    pub bad_mac_stans: Vec<u32>,
    /// [`Faults::bad_mac_next`].
    #[serde(default)]
    pub bad_mac_next: u32,
    /// [`Faults::close_next`].
    #[serde(default)]
    pub close_next: u32,
}

impl FileConfig {
    /// Reads and parses a file.
    ///
    /// # Errors
    /// The file cannot be read or is not valid.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(ConfigError::Io)?;
        Self::parse(&text)
    }

    /// Parses TOML text.
    ///
    /// # Errors
    /// Not valid TOML for this schema.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Toml(e.message().to_owned()))
    }

    /// The simulator configuration this file describes.
    ///
    /// # Errors
    /// A bad key, STAN, card or fraction.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(seed) = self.seed {
            config.seed = seed;
        }
        config.pin_try_limit = self.pin_try_limit;
        if let Some(k) = &self.keys {
            config.keys = Keys::from_hex(&k.zpk, &k.zak, &k.pvk)?;
        }
        if self.test_cards == Some(false) {
            config.cards = CardTable::empty();
        }
        for (i, c) in self.cards.iter().enumerate() {
            let card = Card::new(&c.pan, &c.pvv).ok_or(ConfigError::Card(i + 1))?;
            config.cards.insert(card);
        }
        config.faults = self.faults.into_faults()?;
        Ok(config)
    }
}

impl FileFaults {
    /// The faults, checked.
    ///
    /// # Errors
    /// A STAN outside 1-999999 or a fraction outside 0.0-1.0.
    pub fn into_faults(self) -> Result<Faults, ConfigError> {
        let stan = |n: u32| Stan::new(n).map_err(|_| ConfigError::Stan(n));
        if !(0.0..=1.0).contains(&self.drop_fraction) {
            return Err(ConfigError::Fraction);
        }
        let mut faults = Faults {
            latency: Duration::from_millis(self.latency_ms),
            drop_next: self.drop_next,
            drop_fraction: self.drop_fraction,
            bad_mac_next: self.bad_mac_next,
            close_next: self.close_next,
            ..Faults::default()
        };
        for (text, ms) in self.stan_latency_ms {
            let n = text
                .trim()
                .parse::<u32>()
                .map_err(|_| ConfigError::Stan(0))?;
            faults
                .stan_latency
                .insert(stan(n)?, Duration::from_millis(ms));
        }
        for n in self.drop_stans {
            faults.drop_stans.insert(stan(n)?);
        }
        for n in self.bad_mac_stans {
            faults.bad_mac_stans.insert(stan(n)?);
        }
        Ok(faults)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let text = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
            .collect::<Vec<_>>()
            .join("\n");
        let config = FileConfig::parse(&text).unwrap().into_config().unwrap();
        assert_eq!(config.listen.port(), 8583);
        assert_eq!(config.pin_try_limit, Some(3));
        assert!(config.cards.get("6011111111111117").is_some());
        assert!(config.cards.get("4242424242424242").is_some());
        assert!(config.faults.drop_stans.contains(&Stan::new(7).unwrap()));
        assert_eq!(
            config.faults.stan_latency.get(&Stan::new(5).unwrap()),
            Some(&Duration::from_millis(200))
        );
    }

    #[test]
    fn errors_do_not_quote_keys() {
        let text = "[keys]\nzpk = \"0123456789ABCDEF0123456789ABCDEF\"\nzak = \"x\"\npvk = 7\n";
        let e = FileConfig::parse(text).unwrap_err().to_string();
        assert!(!e.contains("0123456789"), "{e}");
        let text = "[keys]\nzpk = \"0123456789ABCDEF0123456789ABCDEF\"\nzak = \"x\"\npvk = \"y\"\n";
        let e = FileConfig::parse(text).unwrap().into_config().unwrap_err();
        assert!(matches!(e, ConfigError::Key(_)));
        assert!(!e.to_string().contains("0123456789"));
        assert!(
            FileConfig::parse("[faults]\ndrop_stans = [0]\n")
                .unwrap()
                .into_config()
                .is_err()
        );
        assert!(FileConfig::parse("surprise = 1\n").is_err());
        let shown = format!("{:?}", FileConfig::parse(text).unwrap());
        assert!(!shown.contains("0123456789"), "{shown}");
    }
}
