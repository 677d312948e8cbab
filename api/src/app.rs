//! What every handler can reach: configuration, storage, keyd, token verification, metrics.

use std::sync::Arc;

use crate::auth::Auth;
use crate::config::Config;
use crate::db::Db;
use crate::error::ApiError;
use crate::idem::Idempotency;
use crate::keyd::Keyd;
use crate::locks::Locks;
use crate::metrics::Metrics;
use crate::processor::{Processor, Simulator};
use crate::replay::Replay;
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
    /// Used nonces.
    pub replay: Replay,
    /// Per-object serialisation of read-check-write sequences.
    pub locks: Locks,
    /// Keyed requests in progress.
    pub idempotency: Idempotency,
    /// The payment processor.
    pub processor: Arc<dyn Processor>,
    /// This process: a random id and its start (Unix seconds). Work a process leaves behind
    /// (a pending charge) names it, so a later process knows the work's owner is gone.
    pub boot: Boot,
}

/// One start of the API process.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Random, unique per start.
    pub id: String,
    /// Unix seconds.
    pub started_at: i64,
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
        Self::with_parts(config, Arc::new(store), auth).map_err(|e| e.message().to_owned())
    }

    /// An application over given parts (tests use the in-memory store).
    ///
    /// # Errors
    /// If the used nonces cannot be loaded.
    pub fn with_parts(config: Config, store: Arc<dyn Store>, auth: Auth) -> Result<Self, ApiError> {
        let db = Db::new(store);
        Ok(Self {
            keyd: Keyd::new(config.keyd_socket.clone()),
            replay: Replay::load(&db, crate::time::now())?,
            db,
            auth,
            metrics: Metrics::new(),
            locks: Locks::default(),
            idempotency: Idempotency::default(),
            boot: Boot {
                id: crate::ids::random_alnum(16)?,
                started_at: crate::time::now(),
            },
            processor: Arc::new(Simulator::new(
                std::time::Duration::from_millis(config.processor.latency_ms),
                config.processor.timeout(),
            )),
            config,
        })
    }

    /// An application on the in-memory store with a fresh signing key and a keyd that is not
    /// there (unit tests of handlers and engines).
    #[cfg(test)]
    pub(crate) fn for_tests() -> Self {
        let config = Config::parse(
            "listen = \"127.0.0.1:1\"\nplain_http = true\nkeyd_socket = \"/nonexistent\"\n",
        )
        .unwrap_or_else(|e| unreachable!("test config: {e}"));
        let signer = crate::jwt::Signer::generate()
            .unwrap_or_else(|e| unreachable!("signing key: {e}"))
            .0;
        let auth =
            Auth::with_signer(&config.auth, signer).unwrap_or_else(|e| unreachable!("auth: {e}"));
        Self::with_parts(config, Arc::new(crate::store::MemoryStore::new()), auth)
            .unwrap_or_else(|e| unreachable!("app: {e}"))
    }
}
