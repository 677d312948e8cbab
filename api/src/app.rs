//! The composition root: the one place that builds every part. What it builds is
//! [`Services`], what every handler may use; the HTTP layer adds its own request metrics, and
//! housekeeping shares the same services.

use std::sync::Arc;

use crate::auth::Auth;
use crate::config::{Config, Database, ProcessorKind, SslMode};
use crate::domain::charges::{Boot, Engine, InFlight};
use crate::domain::idem::Idempotency;
use crate::domain::locks::Locks;
use crate::domain::processor::iso8583::{Iso8583, Settings};
use crate::domain::processor::{IssuerKeys, Processor, Simulator};
use crate::domain::replay::Replay;
use crate::error::{ApiError, Code};
use crate::keyd::Keyd;
use crate::request::Services;
use crate::store::db::Db;
use crate::store::{PgOptions, PgStore, PgTls, SqliteStore, Store};

/// The configured store: the SQLite file, or a pool on the PostgreSQL database (whose password
/// is read here, from its file or variable, and kept only inside the pool's settings).
async fn open_store(database: &Database) -> Result<Arc<dyn Store>, String> {
    match database {
        Database::Sqlite(path) => SqliteStore::open(path)
            .map(|s| Arc::new(s) as Arc<dyn Store>)
            .map_err(|e| format!("database {}: {e}", path.display())),
        Database::Postgres(pg) => {
            let options = PgOptions {
                url: pg.url.clone(),
                password: pg.password().map_err(|e| e.to_string())?,
                tls: match (pg.sslmode, &pg.ca_file) {
                    (SslMode::VerifyFull, Some(ca_file)) => PgTls::VerifyFull {
                        ca_file: ca_file.clone(),
                    },
                    (SslMode::VerifyFull, None) => {
                        return Err("database: verify-full needs ca_file".to_owned());
                    }
                    (SslMode::Disable, _) => PgTls::Disable,
                },
                pool_size: pg.pool_size,
                // Any number of API nodes share the database: they coordinate through it.
                exclusive: false,
            };
            PgStore::open(&options)
                .await
                .map(|s| Arc::new(s) as Arc<dyn Store>)
                .map_err(|e| format!("database (PostgreSQL): {e}"))
        }
    }
}

/// `api audit-verify`: checks the audit trail's chain in the configured database, with keyd.
/// On SQLite the API must be stopped (the file is one process's); PostgreSQL is shared.
///
/// # Errors
/// What could not be opened, or the first broken entry.
pub async fn verify_audit(config: &Config) -> Result<crate::domain::audit::Verified, String> {
    let store = open_store(&config.database).await?;
    let keyd = Keyd::new(config.keyd_socket.clone());
    crate::domain::audit::verify(&Db::new(store), &keyd).await
}

impl Services {
    /// Opens the configured database and signing key.
    ///
    /// # Errors
    /// A message naming what could not be opened.
    pub async fn open(config: Config) -> Result<Self, String> {
        let store = open_store(&config.database).await?;
        let auth = Auth::new(&config.auth)?;
        Self::with_parts(config, store, auth)
            .await
            .map_err(|e| e.message().to_owned())
    }

    /// The services over given parts (tests use a temporary store).
    ///
    /// # Errors
    /// If the used nonces cannot be loaded.
    pub async fn with_parts(
        config: Config,
        store: Arc<dyn Store>,
        auth: Auth,
    ) -> Result<Self, ApiError> {
        let shared = store.shared();
        let db = Db::new(store);
        let boot = Boot {
            id: crate::wire::ids::random_alnum(16)?,
            started_at: crate::wire::time::now(),
        };
        // What a node holds in the store for others to see (an object's lease, a key's
        // reservation) outlives the node that dies holding it by this long: longer than any
        // request runs, the processor's deadline being the longest part of one.
        let hold = i64::try_from(config.processor.timeout().as_secs())
            .unwrap_or(i64::MAX / 4)
            .saturating_mul(2)
            .saturating_add(60);
        let locks = Arc::new(if shared {
            Locks::shared(db.clone(), boot.id.clone(), hold)
        } else {
            Locks::default()
        });
        let processor: Arc<dyn Processor> = match config.processor.kind {
            ProcessorKind::Simulator => Arc::new(simulator(&config)),
            ProcessorKind::Iso8583 => Arc::new(
                acquirer_link(&config, db.clone(), Arc::clone(&locks))
                    .map_err(|e| ApiError::new(Code::Internal, format!("acquirer link: {e}")))?,
            ),
        };
        Ok(Self {
            keyd: Keyd::new(config.keyd_socket.clone()),
            replay: Replay::load(&db, crate::wire::time::now()).await?,
            db: db.clone(),
            auth,
            locks: Arc::clone(&locks),
            idempotency: if shared {
                Idempotency::shared(hold)
            } else {
                Idempotency::default()
            },
            charges: Engine {
                db,
                processor,
                locks,
                timeout: config.processor.timeout(),
                boot,
                in_flight: InFlight::default(),
            },
            live_nodes: std::sync::atomic::AtomicUsize::new(1),
            config,
        })
    }

    /// The services on a temporary store with a fresh signing key and a keyd that is not
    /// there (unit tests of handlers and engines).
    #[cfg(test)]
    pub(crate) async fn for_tests() -> Self {
        let config = Config::parse(
            "listen = \"127.0.0.1:1\"\nplain_http = true\nkeyd_socket = \"/nonexistent\"\n",
        )
        .unwrap_or_else(|e| unreachable!("test config: {e}"));
        let signer = crate::auth::jwt::Signer::generate()
            .unwrap_or_else(|e| unreachable!("signing key: {e}"))
            .0;
        let auth =
            Auth::with_signer(&config.auth, signer).unwrap_or_else(|e| unreachable!("auth: {e}"));
        let store = SqliteStore::temporary().unwrap_or_else(|e| unreachable!("test store: {e}"));
        Self::with_parts(config, Arc::new(store), auth)
            .await
            .unwrap_or_else(|e| unreachable!("app: {e}"))
    }
}

/// The embedded simulator, acting as issuer for PINs when its keys in keyd are configured.
fn simulator(config: &Config) -> Simulator {
    let p = &config.processor;
    let sim = Simulator::new(std::time::Duration::from_millis(p.latency_ms), p.timeout());
    match (&p.pin_zpk, &p.pin_pvk) {
        (Some(zpk), Some(pvk)) => sim.with_issuer(IssuerKeys {
            keyd: Keyd::new(config.keyd_socket.clone()),
            zpk: zpk.clone(),
            pvk: pvk.clone(),
        }),
        _ => sim,
    }
}

/// The ISO 8583 acquirer link of `[processor]` (its connection task starts now).
fn acquirer_link(config: &Config, db: Db, locks: Arc<Locks>) -> Result<Iso8583, String> {
    let p = &config.processor;
    let ms = std::time::Duration::from_millis;
    // `Config::parse` has checked that these are present for kind = "iso8583".
    let missing = || "[processor] kind = \"iso8583\" needs host, port, zak and zpk".to_owned();
    Iso8583::start(
        Settings {
            host: p.host.clone().ok_or_else(missing)?,
            port: p.port.ok_or_else(missing)?,
            ca_file: p.ca_file.clone(),
            zak: p.zak.clone().ok_or_else(missing)?,
            zpk: p.zpk.clone().ok_or_else(missing)?,
            timeout: p.timeout(),
            connect_timeout: ms(p.connect_timeout_ms),
            echo_every: std::time::Duration::from_secs(p.echo_interval_secs),
            retry_first: ms(p.reversal_retry_ms),
            retry_max: ms(p.reversal_retry_max_ms),
        },
        config.keyd_socket.clone(),
        db,
        locks,
    )
}
