//! The embedded issuer's ES256 key: created 0600 on first start, signs the API's own tokens,
//! published as a JWK.

use super::*;

/// The embedded issuer's ES256 signing key.
///
/// Not `Clone` so the private key lives in one place; `Debug` shows only the `kid`.
pub struct Signer {
    pub(super) key: EcdsaKeyPair,
    pub(super) kid: String,
    pub(super) jwk: Value,
    pub(super) rng: SystemRandom,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A fresh P-256 key, with its PKCS#8 DER so the caller can persist it.
    ///
    /// The DER is a plain `Vec` (the crate has no zeroize dependency): write it out and drop it.
    ///
    /// # Errors
    /// When the system random source fails.
    pub fn generate() -> Result<(Self, Vec<u8>), String> {
        let rng = SystemRandom::new();
        let document = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| "could not generate a P-256 key".to_owned())?;
        let der = document.as_ref().to_vec();
        let signer = Self::from_pkcs8(&der)?;
        Ok((signer, der))
    }

    /// The signer for a PKCS#8 (DER) P-256 private key that includes its public key.
    ///
    /// # Errors
    /// When the bytes are not such a key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| format!("not a PKCS#8 P-256 private key: {e}"))?;
        let (x, y) = split_point(key.public_key().as_ref())
            .ok_or_else(|| "unexpected public key encoding".to_owned())?;
        let (x, y) = (b64e(x), b64e(y));
        let kid = ec_thumbprint(&x, &y);
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y, "use": "sig", "alg": "ES256", "kid": kid,
        });
        Ok(Self { key, kid, jwk, rng })
    }

    /// Loads the PKCS#8 key file, or creates it (mode 0600, create_new) when missing; refuses a
    /// file readable by group/others.
    ///
    /// The key must survive restarts (tokens stay valid and the `kid` stays stable) and must not
    /// leak through loose permissions, so any group/other permission bit is refused rather than
    /// silently fixed. The file may be DER or PEM (`-----BEGIN PRIVATE KEY-----`). When two
    /// processes race to create it, the loser loads the winner's key.
    ///
    /// # Errors
    /// A message naming the file and the problem.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        match std::fs::File::open(path) {
            Ok(file) => Self::load(path, file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path),
            Err(e) => Err(format!("signing key {}: {e}", path.display())),
        }
    }

    pub(super) fn load(path: &Path, file: std::fs::File) -> Result<Self, String> {
        use std::io::Read as _;
        let shown = path.display();
        let meta = file
            .metadata()
            .map_err(|e| format!("signing key {shown}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("signing key {shown}: not a regular file"));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(format!(
                    "signing key {shown}: mode {mode:o} gives access to group/others; \
                     chmod 600 it"
                ));
            }
        }
        let mut bytes = Vec::new();
        file.take(MAX_KEY_FILE)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("signing key {shown}: {e}"))?;
        let parsed = if bytes.starts_with(b"-----BEGIN") {
            use rustls_pki_types::PrivatePkcs8KeyDer;
            use rustls_pki_types::pem::PemObject as _;
            PrivatePkcs8KeyDer::from_pem_slice(&bytes)
                .map_err(|e| format!("{e}"))
                .and_then(|key| Self::from_pkcs8(key.secret_pkcs8_der()))
        } else {
            Self::from_pkcs8(&bytes)
        };
        parsed.map_err(|e| format!("signing key {shown}: {e}"))
    }

    /// Creates the key file so that it appears whole or not at all: the key is written and
    /// synced under a private temporary name in the same directory, then hard-linked to its
    /// name, which fails if another process got there first. The loser then loads the
    /// winner's key, which is complete by the time its name exists. (With `create_new` on the
    /// final name instead, the loser could read the file between its creation and its write.)
    pub(super) fn create(path: &Path) -> Result<Self, String> {
        use std::io::Write as _;
        let shown = path.display();
        let (signer, der) = Self::generate()?;
        let mut suffix = [0_u8; 8];
        getrandom::fill(&mut suffix).map_err(|e| format!("random source: {e}"))?;
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{}.tmp", hex::encode(suffix)));
        let temporary = PathBuf::from(name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let written = options
            .open(&temporary)
            .and_then(|mut file| file.write_all(&der).and_then(|()| file.sync_all()));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(format!("signing key {shown}: cannot create: {e}"));
        }
        let linked = std::fs::hard_link(&temporary, path);
        let _ = std::fs::remove_file(&temporary);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Self::load_or_create(path);
            }
            Err(e) => return Err(format!("signing key {shown}: cannot create: {e}")),
        }
        // The new name is durable once its directory is.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all())
        {
            return Err(format!(
                "signing key {shown}: cannot sync its directory: {e}"
            ));
        }
        tracing::info!(path = %shown, kid = %signer.kid, "created a new token signing key");
        Ok(signer)
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url) of the public key — stable across restarts.
    ///
    /// Deriving the `kid` from the key means no extra state to store and no collisions between
    /// rotated keys.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public JWK `{"kty":"EC","crv":"P-256","x","y","use":"sig","alg":"ES256","kid"}`
    /// (x/y from the uncompressed public point `0x04||x||y`).
    ///
    /// This is what `GET /.well-known/jwks.json` publishes (inside `{"keys":[...]}`) and what the
    /// embedded verifier is built from, so both sides use the same bytes.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// Signs claims (a JSON object) as a compact JWS with header
    /// `{"alg":"ES256","typ":"JWT","kid"}`.
    ///
    /// The signature is the 64-byte raw `r||s` JWS requires (not DER).
    ///
    /// # Errors
    /// [`JwtError::Malformed`] when `claims` is not an object or the token would exceed the size
    /// the verifier accepts; [`JwtError::Signature`] when signing itself fails.
    pub fn sign(&self, claims: &Value) -> Result<String, JwtError> {
        if !claims.is_object() {
            return Err(JwtError::Malformed);
        }
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let mut token = format!(
            "{}.{}",
            b64e(header.to_string().as_bytes()),
            b64e(claims.to_string().as_bytes())
        );
        let signature = self
            .key
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| JwtError::Signature)?;
        token.push('.');
        token.push_str(&b64e(signature.as_ref()));
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::Malformed);
        }
        Ok(token)
    }
}
