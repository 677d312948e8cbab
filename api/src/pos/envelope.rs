//! MSK envelopes (contract section 5): reading a terminal's request envelope in the contract's
//! order of checks, and sealing answers. The API never sees the MSK: keyd decrypts and
//! encrypts; this module only handles the JSON, hex, gzip and size rules around it.

use std::io::Read;

use keyd_proto::message::{EnvelopeOpen, EnvelopeSeal, EnvelopeSealChunks};
use keyd_proto::{Secret, Status};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::error::{ApiError, Code};
use crate::keyd::Keyd;
use crate::keyd::KeydError;

/// Largest decompressed plaintext accepted in a request (32 KiB).
pub const MAX_PLAINTEXT: usize = 32 * 1024;
/// Largest gzip piece of a chunked envelope.
pub const PIECE: usize = 4096;

/// The one answer for an envelope that cannot be opened, whatever the cause.
pub fn unopenable() -> ApiError {
    ApiError::new(Code::EnvelopeInvalid, "the envelope cannot be opened")
}

/// A request envelope, parsed and checked up to (not including) decryption.
#[derive(Debug)]
pub struct Sealed {
    /// The IV.
    pub iv: [u8; 16],
    /// The ciphertext.
    pub ciphertext: Vec<u8>,
    /// Whether the plaintext is gzip.
    pub gzip: bool,
}

/// Parses a request envelope: not JSON → 4002; `key_kcv` present and not `msk_kcv` → 4005
/// (before anything is decrypted); any other defect → 4004.
///
/// # Errors
/// As above.
pub fn parse(body: &[u8], msk_kcv: &str) -> Result<Sealed, ApiError> {
    let value = crate::wire::json::parse(body)
        .map_err(|e| ApiError::new(Code::BodyUnreadable, e.to_string()))?;
    let obj = value.as_object().ok_or_else(unopenable)?;
    if let Some(kcv) = obj.get("key_kcv")
        && kcv.as_str() != Some(msk_kcv)
    {
        return Err(ApiError::new(
            Code::KcvMismatch,
            "key_kcv is not the check value of the key in use",
        ));
    }
    let text = |k: &str| obj.get(k).and_then(Value::as_str);
    if text("format") != Some("TR31-DATA") || text("mode") != Some("CBC") {
        return Err(unopenable());
    }
    let gzip = match obj.get("content_encoding") {
        None | Some(Value::Null) => false,
        Some(v) if v.as_str() == Some("gzip") => true,
        Some(_) => return Err(unopenable()),
    };
    let iv: [u8; 16] = text("initialization_vector")
        .and_then(|s| crate::wire::unhex_array(s.as_bytes()))
        .ok_or_else(unopenable)?;
    let ciphertext = text("ciphertext")
        .and_then(|s| crate::wire::unhex(s.as_bytes()))
        .ok_or_else(unopenable)?;
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(16) {
        return Err(unopenable());
    }
    Ok(Sealed {
        iv,
        ciphertext,
        gzip,
    })
}

/// Turns decrypted bytes into the inner JSON object: gunzip (32 KiB cap → 4002), UTF-8, JSON,
/// an object — any other failure 4004. Returns the exact plaintext too (idempotency compares
/// plaintexts byte for byte).
///
/// # Errors
/// As above.
pub fn inner(plaintext: &[u8], gzip: bool) -> Result<(Map<String, Value>, Vec<u8>), ApiError> {
    let bytes = if gzip {
        let mut out = Vec::new();
        let mut decoder = flate2::read::GzDecoder::new(plaintext).take(MAX_PLAINTEXT as u64 + 1);
        decoder.read_to_end(&mut out).map_err(|_| unopenable())?;
        out
    } else {
        plaintext.to_vec()
    };
    if bytes.len() > MAX_PLAINTEXT {
        return Err(ApiError::new(
            Code::BodyUnreadable,
            "envelope plaintext larger than 32 KiB",
        ));
    }
    match crate::wire::json::parse(&bytes) {
        Ok(Value::Object(map)) => Ok((map, bytes)),
        _ => Err(unopenable()),
    }
}

/// Opens a request envelope with keyd (a parsed [`Sealed`]) into its inner object.
///
/// # Errors
/// 4004 for any decryption failure (one message), 4002 for oversize, 503 without keyd.
pub async fn open(
    keyd: &Keyd,
    sealed: &Sealed,
    msk_key_id: &str,
) -> Result<(Map<String, Value>, Vec<u8>), ApiError> {
    let opened = keyd
        .call(&EnvelopeOpen {
            msk_key_id: msk_key_id.into(),
            iv: sealed.iv,
            ciphertext: sealed.ciphertext.clone(),
        })
        .await;
    match opened {
        Ok(p) => inner(p.plaintext.expose(), sealed.gzip),
        Err(KeydError::Refused(Status::AUTH_FAILED | Status::BAD_REQUEST)) => Err(unopenable()),
        Err(_) => Err(KeydError::unavailable()),
    }
}

/// Seals an answer under the MSK: `{"format":"TR31-DATA",…}`.
///
/// # Errors
/// 503 without keyd.
pub async fn seal(keyd: &Keyd, msk_key_id: &str, answer: &Value) -> Result<Value, ApiError> {
    seal_text(
        keyd,
        msk_key_id,
        Zeroizing::new(answer.to_string().into_bytes()),
    )
    .await
}

/// [`seal`] of an answer already written as JSON text.
///
/// # Errors
/// As [`seal`].
pub async fn seal_text(
    keyd: &Keyd,
    msk_key_id: &str,
    plaintext: Zeroizing<Vec<u8>>,
) -> Result<Value, ApiError> {
    let sealed = keyd
        .call(&EnvelopeSeal {
            msk_key_id: msk_key_id.into(),
            plaintext: Secret::new(&plaintext),
        })
        .await
        .map_err(|e| keyd_failure(e, "envelope seal"))?;
    Ok(json!({
        "format": "TR31-DATA",
        "ciphertext": crate::wire::hex_upper(&sealed.ciphertext),
        "initialization_vector": crate::wire::hex_upper(&sealed.iv),
        "mode": "CBC",
        "key_kcv": crate::wire::hex_upper(&sealed.kcv),
    }))
}

/// Seals a large answer gzip-compressed: one `TR31-DATA` with `content_encoding: gzip` when
/// the gzip fits one 4096-byte piece, else `TR31-DATA-CHUNKED`.
///
/// # Errors
/// 503 without keyd.
pub async fn seal_gzip(keyd: &Keyd, msk_key_id: &str, answer: &Value) -> Result<Value, ApiError> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder
        .write_all(answer.to_string().as_bytes())
        .map_err(|e| ApiError::internal(&e))?;
    let gz = Zeroizing::new(encoder.finish().map_err(|e| ApiError::internal(&e))?);
    let pieces: Vec<Secret> = gz.chunks(PIECE).map(Secret::new).collect();
    let sealed = keyd
        .call(&EnvelopeSealChunks {
            msk_key_id: msk_key_id.into(),
            pieces,
        })
        .await
        .map_err(|e| keyd_failure(e, "envelope seal"))?;
    let kcv = crate::wire::hex_upper(&sealed.kcv);
    let chunks: Vec<Value> = sealed
        .chunks
        .iter()
        .map(|c| {
            json!({"ciphertext": crate::wire::hex_upper(&c.ciphertext),
                   "initialization_vector": crate::wire::hex_upper(&c.iv), "mode": "CBC"})
        })
        .collect();
    if let [one] = chunks.as_slice() {
        let mut single = one.clone();
        if let Some(map) = single.as_object_mut() {
            map.insert("format".into(), "TR31-DATA".into());
            map.insert("content_encoding".into(), "gzip".into());
            map.insert("key_kcv".into(), kcv.into());
        }
        return Ok(single);
    }
    Ok(json!({
        "format": "TR31-DATA-CHUNKED", "content_encoding": "gzip", "mode": "CBC",
        "key_kcv": kcv, "chunks": chunks,
    }))
}

fn keyd_failure(e: KeydError, what: &str) -> ApiError {
    match e {
        KeydError::Unavailable => KeydError::unavailable(),
        KeydError::Refused(s) => ApiError::internal(&format!("keyd refused {what}: {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(fields: Value) -> Vec<u8> {
        let mut base = json!({"format": "TR31-DATA", "mode": "CBC", "key_kcv": "ABC123",
            "initialization_vector": "00112233445566778899aabbccddeeff",
            "ciphertext": "00".repeat(32)});
        for (k, v) in fields.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        base.to_string().into_bytes()
    }

    #[test]
    fn checks_come_in_the_contract_order() {
        let code = |b: &[u8]| parse(b, "ABC123").err().map(|e| e.code());
        assert_eq!(code(b"{"), Some(Code::BodyUnreadable));
        assert_eq!(code(b"[]"), Some(Code::EnvelopeInvalid));
        // The KCV is judged before anything else in the envelope.
        assert_eq!(
            code(&envelope(json!({"key_kcv": "FFFFFF", "format": "nope"}))),
            Some(Code::KcvMismatch)
        );
        assert_eq!(
            code(&envelope(json!({"key_kcv": 5}))),
            Some(Code::KcvMismatch)
        );
        assert_eq!(code(&envelope(json!({"key_kcv": null}))), None);
        for bad in [
            json!({"format": "TR31"}),
            json!({"mode": "ECB"}),
            json!({"ciphertext": "00".repeat(15)}),
            json!({"ciphertext": ""}),
            json!({"ciphertext": "zz".repeat(16)}),
            json!({"initialization_vector": "00"}),
            json!({"content_encoding": "br"}),
        ] {
            assert_eq!(
                code(&envelope(bad.clone())),
                Some(Code::EnvelopeInvalid),
                "{bad}"
            );
        }
        let ok = parse(&envelope(json!({"content_encoding": "gzip"})), "ABC123").unwrap();
        assert!(ok.gzip && ok.ciphertext.len() == 32 && ok.iv[15] == 0xff);
        assert_eq!(crate::wire::unhex(b"+F"), None);
        assert_eq!(crate::wire::unhex(b"0aFF"), Some(vec![10, 255]));
    }

    #[test]
    fn inner_plaintexts() {
        use std::io::Write;
        assert!(inner(br#"{"a":1}"#, false).is_ok());
        assert_eq!(
            inner(b"[1]", false).unwrap_err().code(),
            Code::EnvelopeInvalid
        );
        assert_eq!(
            inner(b"\xff", false).unwrap_err().code(),
            Code::EnvelopeInvalid
        );
        assert_eq!(
            inner(b"{}", true).unwrap_err().code(),
            Code::EnvelopeInvalid
        );
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_PLAINTEXT));
        assert_eq!(
            inner(big.as_bytes(), false).unwrap_err().code(),
            Code::BodyUnreadable
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(big.as_bytes()).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 1024);
        assert_eq!(inner(&bomb, true).unwrap_err().code(), Code::BodyUnreadable);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(br#"{"ok":true}"#).unwrap();
        let (map, raw) = inner(&gz.finish().unwrap(), true).unwrap();
        assert_eq!(map["ok"], true);
        assert_eq!(raw, br#"{"ok":true}"#);
    }
}
