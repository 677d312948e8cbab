//! The TLS client side of the API's outbound connections (PostgreSQL, the acquirer link): trust
//! only the CA certificates the operator names, never the system's store, because each of these
//! peers is one known server, not the web.

use std::path::Path;
use std::sync::Arc;

/// A client configuration trusting only the certificates in `ca_file` (PEM). `what` names the
/// setting in errors ("database", "acquirer").
///
/// # Errors
/// A message naming the file and the problem: unreadable, no certificate, a bad one.
pub fn client_config(ca_file: &Path, what: &str) -> Result<Arc<rustls::ClientConfig>, String> {
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
