//! JWKS documents: the usable RS256/ES256 signing keys by `kid`, each checked for the
//! algorithm it may be used with; everything else skipped.

use super::*;

/// A public key from a JWKS, already checked for the algorithm it may be used with.
#[derive(Debug)]
pub(super) enum PublicKey {
    /// Uncompressed P-256 point `0x04 || x || y`.
    Es256(Vec<u8>),
    /// RSA modulus and exponent, big-endian without leading zeros; modulus 2048..=8192 bits.
    Rs256 { n: Vec<u8>, e: Vec<u8> },
}

pub(super) type KeySet = HashMap<String, Arc<PublicKey>>;

/// The usable signing keys of a JWKS, by `kid`. Keys that are not for signatures, of another
/// type/curve/algorithm, without `kid`, or malformed are skipped; on duplicate `kid`s the first
/// wins.
pub(super) fn parse_jwks(jwks: &Value) -> KeySet {
    let mut set = KeySet::new();
    for key in jwks
        .get("keys")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
    {
        if let Some((kid, public)) = parse_jwk(key) {
            set.entry(kid).or_insert_with(|| Arc::new(public));
        }
    }
    set
}

pub(super) fn parse_jwk(key: &Value) -> Option<(String, PublicKey)> {
    let kid = key.get("kid")?.as_str()?;
    if kid.is_empty() {
        return None;
    }
    if key.get("use").is_some_and(|u| u.as_str() != Some("sig")) {
        return None;
    }
    // `alg` is optional in a JWK; when present it pins the key to one algorithm.
    let alg_allows = |wanted: &str| key.get("alg").is_none_or(|a| a.as_str() == Some(wanted));
    let member = |name: &str| key.get(name).and_then(Value::as_str).and_then(b64d);
    let public = match key.get("kty")?.as_str()? {
        "EC" => {
            if key.get("crv")?.as_str()? != "P-256" || !alg_allows("ES256") {
                return None;
            }
            let (x, y) = (member("x")?, member("y")?);
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            PublicKey::Es256(point)
        }
        "RSA" => {
            if !alg_allows("RS256") {
                return None;
            }
            let (n, e) = (strip_zeros(member("n")?), strip_zeros(member("e")?));
            let n_ok = match n.first() {
                Some(&top) => n.len() > 256 || (n.len() == 256 && top >= 0x80),
                None => false,
            };
            if !n_ok || n.len() > 1024 || e.is_empty() || e.len() > 5 {
                return None;
            }
            PublicKey::Rs256 { n, e }
        }
        _ => return None,
    };
    Some((kid.to_owned(), public))
}

pub(super) fn strip_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.drain(..start);
    bytes
}
