//! What every handler can reach: configuration, storage, keyd, token verification, metrics.

use std::sync::Arc;

use crate::auth::Auth;
use crate::config::Config;
use crate::db::Db;
use crate::keyd::Keyd;
use crate::metrics::Metrics;
use crate::store::{SqliteStore, Store};

/// The application.
#[derive(Debug)]
pub struct App {
    /// The configuration it started with.
    pub config: Config,
    /// Records.
    pub db: Db,
    /// The key service.
    pub keyd: Keyd,
    /// Bearer tokens.
    pub auth: Auth,
    /// Request counters and latencies.
    pub metrics: Metrics,
}

impl App {
    /// Opens the configured database and signing key.
    ///
    /// # Errors
    /// A message naming what could not be opened.
    pub fn open(config: Config) -> Result<Self, String> {
        let store = SqliteStore::open(&config.database)
            .map_err(|e| format!("database {}: {e}", config.database.display()))?;
        let auth = Auth::new(&config.auth)?;
        Ok(Self::with_parts(config, Arc::new(store), auth))
    }

    /// An application over given parts (tests use the in-memory store).
    pub fn with_parts(config: Config, store: Arc<dyn Store>, auth: Auth) -> Self {
        Self {
            keyd: Keyd::new(config.keyd_socket.clone()),
            db: Db::new(store),
            auth,
            metrics: Metrics::new(),
            config,
        }
    }
}
