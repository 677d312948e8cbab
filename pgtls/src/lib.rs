//! TLS to a PostgreSQL server through the workspace's rustls (ring), trusting only the
//! configured CA and checking the server's name: `verify-full` in libpq's terms.
//!
//! Shared by the API's store and keyd's key store, so both connect the same way: [`settings`]
//! reads the URL and applies the rules both keep (no password in the URL, TLS off only towards
//! loopback hosts and Unix sockets, server-side time limits on every session). What it does not
//! do: read passwords (the caller brings the one it read from a file or the environment), pool
//! connections or migrate schemas.
//!
//! Written here (about sixty lines of glue between `tokio-postgres`'s TLS traits and
//! `tokio-rustls`) rather than taken from `tokio-postgres-rustls`, whose only addition is
//! SCRAM channel binding and which brings an X.509 parser and ten more crates for it. Channel
//! binding guards the password exchange against a server that holds a certificate the client
//! trusts but is not the one meant; with only the operator's own CA trusted and the host name
//! checked, that server cannot exist, so SCRAM-SHA-256 without binding is what is used.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::TlsConnector;

/// Makes the TLS connection of each new pooled connection (`None`: TLS is off, and
/// `tokio-postgres` never asks for it because its `sslmode` is `disable`).
#[derive(Clone, Debug)]
pub struct Rustls(pub Option<Arc<rustls::ClientConfig>>);

/// One connection's handshake, to the host name it was made for.
pub struct Handshake {
    connector: Option<TlsConnector>,
    host: String,
}

/// The encrypted stream.
pub struct Stream(tokio_rustls::client::TlsStream<Socket>);

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("tls", &self.connector.is_some())
            .field("host", &self.host)
            .finish()
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream")
    }
}

impl MakeTlsConnect<Socket> for Rustls {
    type Stream = Stream;
    type TlsConnect = Handshake;
    type Error = io::Error;

    fn make_tls_connect(&mut self, host: &str) -> io::Result<Handshake> {
        Ok(Handshake {
            connector: self.0.clone().map(TlsConnector::from),
            host: host.to_owned(),
        })
    }
}

impl TlsConnect<Socket> for Handshake {
    type Stream = Stream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        Box::pin(async move {
            let connector = self
                .connector
                .ok_or_else(|| io::Error::other("TLS to the database is not configured"))?;
            let name = ServerName::try_from(self.host)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            connector.connect(name, socket).await.map(Stream)
        })
    }
}

impl tokio_postgres::tls::TlsStream for Stream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// A client configuration trusting only the certificates of `ca_file` (PEM), never the
/// system's store: each peer it is used for (the database; the api's acquirer link too) is one
/// known server, not the web. `what` names the setting in errors ("database", "acquirer").
///
/// # Errors
/// A message naming the file and the problem: unreadable, no certificate, a bad one.
pub fn client_config(
    ca_file: &std::path::Path,
    what: &str,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let shown = ca_file.display();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| format!("{what} CA file {shown}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("{what} CA file {shown}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{what} CA file {shown}: no certificate"));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Server-side limits on every session: a statement (including a wait for a lock) longer than
/// 30 s fails, and a session idle inside a transaction for 60 s (a client stuck or cut off
/// halfway) is ended by the server, releasing its locks for the other nodes.
pub const SESSION_LIMITS: &str =
    "-c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000";

/// How a store reaches its server: what [`settings`] reads.
#[derive(Debug)]
pub struct Target<'a> {
    /// `postgres://user@host:port/db` or libpq's `key=value` form; no password in it.
    pub url: &'a str,
    /// The password, read by the caller from a file or the environment.
    pub password: Option<&'a [u8]>,
    /// The CA file for TLS (verify-full); `None`: TLS off, allowed only for local hosts.
    pub ca_file: Option<&'a std::path::Path>,
    /// `application_name` (shows in `pg_stat_activity`).
    pub application: &'a str,
    /// More `-c name=value` session settings after [`SESSION_LIMITS`] (e.g. a `search_path`).
    pub session: &'a str,
    /// How long a new connection may take.
    pub connect_timeout: std::time::Duration,
}

/// The client settings of `target`, its TLS, and `host:port/db` for logs.
///
/// # Errors
/// A message for the operator: an unreadable URL, a password in it, no host, TLS off towards a
/// host that is not this machine, or a CA file that does not load.
pub fn settings(target: &Target<'_>) -> Result<(tokio_postgres::Config, Rustls, String), String> {
    let mut config: tokio_postgres::Config = target
        .url
        .parse()
        .map_err(|e| format!("database url: {e}"))?;
    if config.get_password().is_some() {
        return Err(
            "database url: holds a password; give it in password_file or password_env".to_owned(),
        );
    }
    if config.get_hosts().is_empty() {
        return Err("database url: no host".to_owned());
    }
    let tls = match target.ca_file {
        None => {
            if let Some(host) = config.get_hosts().iter().find(|h| !is_local(h)) {
                return Err(format!(
                    "database: TLS is off (sslmode = \"disable\", or no ca_file), which is \
                     allowed only for loopback hosts and Unix sockets, not {}",
                    shown(host)
                ));
            }
            config.ssl_mode(SslMode::Disable);
            Rustls(None)
        }
        Some(ca_file) => {
            config.ssl_mode(SslMode::Require);
            Rustls(Some(client_config(ca_file, "database")?))
        }
    };
    if let Some(password) = target.password {
        config.password(password);
    }
    let session = [
        config.get_options().unwrap_or(""),
        SESSION_LIMITS,
        target.session,
    ]
    .iter()
    .filter(|s| !s.is_empty())
    .copied()
    .collect::<Vec<_>>()
    .join(" ");
    config
        .options(&session)
        .application_name(target.application)
        .connect_timeout(target.connect_timeout)
        .keepalives_idle(std::time::Duration::from_secs(30));
    let host = config.get_hosts().first().map(shown).unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let shown = format!("{host}:{port}/{}", config.get_dbname().unwrap_or(""));
    Ok((config, tls, shown))
}

/// A pool of up to `size` connections made with [`settings`]' output, each recycled with a
/// quick check; `wait` bounds waiting for a free connection, making one, and recycling one.
/// Building it connects to nothing: the first `get` does.
///
/// # Errors
/// A message if the pool cannot be built (no tokio runtime).
pub fn pool(
    config: tokio_postgres::Config,
    tls: Rustls,
    size: usize,
    wait: std::time::Duration,
) -> Result<deadpool_postgres::Pool, String> {
    use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
    let manager = Manager::from_config(
        config,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size.max(1))
        .wait_timeout(Some(wait))
        .create_timeout(Some(wait))
        .recycle_timeout(Some(wait))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| format!("database pool: {e}"))
}

/// Whether a host is this machine: a Unix socket directory or a loopback address.
fn is_local(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

fn shown(host: &Host) -> String {
    match host {
        Host::Tcp(name) => name.clone(),
        Host::Unix(path) => path.display().to_string(),
    }
}
