//! Connections the API opens itself (JWKS and token fetches, webhook deliveries): TCP to a
//! parsed [`Target`], and TLS over it when the target is https. One place decides how an
//! outbound connection is made, so the callers differ only in the request they send.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::url::Target;

/// A connection, plain or TLS, behind one type so that each caller writes its exchange once.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Connects to `target` with Nagle's algorithm off, then speaks TLS with `tls` when the
/// target is https (the server name checked against the connector's trust).
///
/// # Errors
/// A message for the log: an https target without a connector, connect, server name, TLS.
pub async fn connect(
    target: &Target,
    tls: Option<&TlsConnector>,
) -> Result<Box<dyn Stream>, String> {
    let tls = match (target.https, tls) {
        (false, _) => None,
        (true, Some(connector)) => Some(connector),
        (true, None) => return Err("https target but no CA to verify it".to_owned()),
    };
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let Some(connector) = tls else {
        return Ok(Box::new(tcp));
    };
    let name = rustls_pki_types::ServerName::try_from(target.host.clone())
        .map_err(|e| format!("TLS server name: {e}"))?;
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    Ok(Box::new(stream))
}
