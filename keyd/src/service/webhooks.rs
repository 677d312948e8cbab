//! Webhook signing secrets (`WebhookSecretCreate`, `WebhookSign`): the API signs the webhooks
//! it sends merchants Stripe's way (`Viopay-Signature: t=…,v1=…`), but holds no key, so the
//! per-endpoint secret is made here, shown once, and used here.
//!
//! Nothing is stored per endpoint. An endpoint's secret is
//! `whsec_` + base64url (no padding) of HMAC-SHA-256 under keyd's webhook key over
//! `"viopay webhook secret" 0x00 endpoint_id 0x00 salt`, where the 16-byte salt is drawn by
//! keyd when the secret is made and kept by the API. The API cannot choose a salt, so it can
//! learn a secret only from the one answer that made it; afterwards it can only have keyd sign
//! with it. Merchants check signatures with Stripe's libraries, which key HMAC-SHA-256 with the
//! whole secret string (its UTF-8 bytes, prefix included), so keyd signs with exactly that.
//!
//! The webhook key is one of the secrets derived from the LMK (`crate::lmk_secret`), carried
//! unchanged by LMK rotations. A store whose first rotation came before this key existed has
//! no sealed copy of it, and its original LMK may be gone: then one is sealed into the store at
//! the first start (see [`Service::webhook_master_key`]).

use keyd_proto::Secret;
use keyd_proto::message as m;
use zeroize::{Zeroize, Zeroizing};

use super::Service;
use crate::{Error, crypto};

/// The derivation label of the webhook key (and its name in the store's sealed secrets).
pub(crate) const MASTER_LABEL: &str = "keyd webhook secret key";

/// What every secret starts with, as Stripe's secrets do (merchants' code may look for it).
const PREFIX: &str = "whsec_";

/// Domain separation of the secret's derivation from every other use of the webhook key.
const DERIVATION: &[u8] = b"viopay webhook secret";

/// Most secrets one `WebhookSign` signs with: the current one and those still overlapping it
/// after rotations.
const SALTS_MAX: usize = 4;

/// Longest message to sign: what a protocol frame (at most `MAX_BODY`, 1 MiB) leaves after
/// the request's other fields (at most 140 bytes with the longest endpoint id and four salts),
/// rounded down to a whole KiB.
pub(crate) const MESSAGE_MAX: usize = keyd_proto::frame::MAX_BODY - 1024;

/// Appends base64url without padding (RFC 4648 section 5) of `bytes` to `out`, character by
/// character: unlike an encoder with a buffer of its own, it leaves no copy of the text
/// anywhere but in `out`.
fn push_base64url(out: &mut String, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for chunk in bytes.chunks(3) {
        // Up to three bytes as one 24-bit number, most significant first.
        let mut group = chunk
            .iter()
            .chain([0u8; 2].iter())
            .take(3)
            .fold(0u32, |n, b| (n << 8) | u32::from(*b));
        // n bytes make n + 1 characters of six bits each.
        for i in 0..=chunk.len() {
            let six = usize::try_from((group >> (18 - 6 * i)) & 0x3F).unwrap_or_default();
            out.push(char::from(ALPHABET.get(six).copied().unwrap_or(b'A')));
        }
        group.zeroize();
    }
}

impl Service {
    /// Makes a webhook endpoint's signing secret under a salt keyd draws.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a malformed endpoint id; [`Error::Hsm`] if the token's random
    /// source fails.
    pub fn webhook_secret_create(
        &self,
        req: &m::WebhookSecretCreate,
    ) -> Result<m::WebhookSecret, Error> {
        super::check_binding_id(&req.endpoint_id, "endpoint ids")?;
        let mut salt = [0u8; 16];
        self.hsm.random(&mut salt)?;
        let secret = self.webhook_secret_for(&req.endpoint_id, &salt)?;
        Ok(m::WebhookSecret {
            salt,
            secret: Secret::new(secret.as_bytes()),
        })
    }

    /// Signs a message with each of an endpoint's secrets named by `salts`, in order.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a malformed endpoint id, no salt or more than four, or an
    /// empty or too long message.
    pub fn webhook_sign(&self, req: &m::WebhookSign) -> Result<m::WebhookSignatures, Error> {
        super::check_binding_id(&req.endpoint_id, "endpoint ids")?;
        if req.salts.is_empty() || req.salts.len() > SALTS_MAX {
            return Err(Error::BadRequest("1 to 4 salts are signed with".into()));
        }
        if req.message.is_empty() || req.message.len() > MESSAGE_MAX {
            return Err(Error::BadRequest(format!(
                "a webhook message is 1 to {MESSAGE_MAX} bytes"
            )));
        }
        let macs = req
            .salts
            .iter()
            .map(|salt| {
                let secret = self.webhook_secret_for(&req.endpoint_id, salt)?;
                crypto::hmac(secret.as_bytes(), &req.message)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(m::WebhookSignatures { macs })
    }

    /// The secret string of an endpoint under a salt, in a buffer wiped when dropped.
    fn webhook_secret_for(
        &self,
        endpoint_id: &str,
        salt: &[u8; 16],
    ) -> Result<Zeroizing<String>, Error> {
        let mut input = Vec::with_capacity(DERIVATION.len() + endpoint_id.len() + 18);
        input.extend_from_slice(DERIVATION);
        input.push(0);
        input.extend_from_slice(endpoint_id.as_bytes());
        input.push(0);
        input.extend_from_slice(salt);
        let raw = Zeroizing::new(crypto::hmac(&self.webhook_key[..], &input)?);
        // Sized once, so the text is never moved to a bigger buffer and left behind.
        let mut secret = Zeroizing::new(String::with_capacity(PREFIX.len() + 43));
        secret.push_str(PREFIX);
        push_base64url(&mut secret, &raw[..]);
        Ok(secret)
    }

    /// The webhook key, read as the other LMK-derived secrets are; since the label came after
    /// the first ones, a store rotated before it gets one sealed at the first start (see
    /// [`Service::late_derived_secret`]).
    ///
    /// # Errors
    /// As [`Service::late_derived_secret`].
    pub(super) fn webhook_master_key(&self) -> Result<Zeroizing<[u8; 32]>, Error> {
        self.late_derived_secret(MASTER_LABEL)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keyd_proto::message as m;

    use super::*;
    use crate::service::tests::node;
    use crate::store::{LmkStore, MemoryStore};

    const LMK: [u8; 32] = [7; 32];

    fn create(s: &Service, endpoint: &str) -> m::WebhookSecret {
        s.webhook_secret_create(&m::WebhookSecretCreate {
            endpoint_id: endpoint.into(),
        })
        .unwrap()
    }

    fn sign(s: &Service, endpoint: &str, salts: &[[u8; 16]], message: &[u8]) -> Vec<[u8; 32]> {
        s.webhook_sign(&m::WebhookSign {
            endpoint_id: endpoint.into(),
            salts: salts.to_vec(),
            message: message.to_vec(),
        })
        .unwrap()
        .macs
    }

    /// HMAC-SHA-256 keyed with the secret string's bytes, by another implementation than
    /// keyd's (ring), as a merchant's library computes it.
    fn merchant_mac(secret: &[u8], message: &[u8]) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        ring::hmac::sign(&key, message).as_ref().try_into().unwrap()
    }

    /// The same node started again: its token and store, whatever they hold now.
    fn restart(s: &Service) -> Service {
        Service::new(
            Arc::clone(&s.hsm),
            Arc::clone(&s.store),
            crate::Placement::Memory,
            3600,
            100,
        )
        .unwrap()
        .with_policy(crate::officers::Policy::for_tests())
        .unwrap()
    }

    fn secret_text(w: &m::WebhookSecret) -> String {
        String::from_utf8(w.secret.expose().to_vec()).unwrap()
    }

    #[test]
    fn a_secret_is_whsec_and_43_base64url_characters_and_signs_as_stripe_checks() {
        let store = Arc::new(MemoryStore::new());
        let s = node(&store, LMK);
        let made = create(&s, "we_0123456789");
        let text = secret_text(&made);
        assert_eq!(text.len(), 49);
        assert!(text.starts_with("whsec_"), "{text}");
        assert!(
            text[6..]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        let body = b"1700000000.{\"id\":\"evt_1\",\"type\":\"charge.succeeded\"}";
        assert_eq!(
            sign(&s, "we_0123456789", &[made.salt], body),
            vec![merchant_mac(text.as_bytes(), body)]
        );
        // Several salts: one MAC each, in the order asked.
        let next = create(&s, "we_0123456789");
        assert_ne!(next.salt, made.salt, "keyd draws a fresh salt each time");
        assert_ne!(secret_text(&next), text);
        let macs = sign(
            &s,
            "we_0123456789",
            &[next.salt, made.salt, next.salt],
            body,
        );
        assert_eq!(
            macs,
            vec![
                merchant_mac(secret_text(&next).as_bytes(), body),
                merchant_mac(text.as_bytes(), body),
                merchant_mac(secret_text(&next).as_bytes(), body),
            ]
        );
        // Debug never shows the secret.
        assert!(!format!("{made:?}").contains(&text[6..]));
    }

    #[test]
    fn a_secret_is_the_same_for_its_endpoint_and_salt_across_calls_and_restarts() {
        let store = Arc::new(MemoryStore::new());
        let s = node(&store, LMK);
        let made = create(&s, "ep-1");
        let text = secret_text(&made);
        let salt = made.salt;
        assert_eq!(*s.webhook_secret_for("ep-1", &salt).unwrap(), text);
        assert_eq!(*s.webhook_secret_for("ep-1", &salt).unwrap(), text);
        // Another endpoint or another salt: another secret.
        assert_ne!(*s.webhook_secret_for("ep-2", &salt).unwrap(), text);
        let mut other = salt;
        other[15] ^= 1;
        assert_ne!(*s.webhook_secret_for("ep-1", &other).unwrap(), text);
        // The endpoint and the salt cannot trade bytes (fields are separated).
        assert_ne!(
            *s.webhook_secret_for("ep", &salt).unwrap(),
            *s.webhook_secret_for("ep-", &salt).unwrap()
        );
        // A restart (and another node with the same LMK) on the same store.
        drop(s);
        let again = node(&store, LMK);
        assert_eq!(*again.webhook_secret_for("ep-1", &salt).unwrap(), text);
        assert_eq!(
            sign(&again, "ep-1", &[salt], b"x"),
            vec![merchant_mac(text.as_bytes(), b"x")]
        );
        // A store of another LMK: other secrets.
        let elsewhere = node(&Arc::new(MemoryStore::new()), [8; 32]);
        assert_ne!(*elsewhere.webhook_secret_for("ep-1", &salt).unwrap(), text);
    }

    #[test]
    fn base64url_is_rfc_4648s_without_padding() {
        use base64::Engine;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let encode = |bytes: &[u8]| {
            let mut out = String::new();
            push_base64url(&mut out, bytes);
            out
        };
        // RFC 4648 section 10's vectors (padding removed).
        for (plain, text) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), text);
        }
        // The two characters base64url has instead of `+` and `/`, and every length to 32.
        assert_eq!(encode(&[0xFB, 0xFF]), "-_8");
        let bytes: Vec<u8> = (0u8..=255).rev().collect();
        for n in 0..=33 {
            let slice = &bytes[..n];
            assert_eq!(encode(slice), engine.encode(slice), "{n} bytes");
        }
    }

    #[test]
    fn malformed_requests_are_refused() {
        let s = node(&Arc::new(MemoryStore::new()), LMK);
        for bad in ["", "a b", "ep/1", "é", "ep\u{0}1", &"e".repeat(65)] {
            let err = s.webhook_secret_create(&m::WebhookSecretCreate {
                endpoint_id: bad.into(),
            });
            assert!(matches!(err, Err(Error::BadRequest(_))), "{bad:?}");
            let err = s.webhook_sign(&m::WebhookSign {
                endpoint_id: bad.into(),
                salts: vec![[0; 16]],
                message: b"m".to_vec(),
            });
            assert!(matches!(err, Err(Error::BadRequest(_))), "{bad:?}");
        }
        create(&s, &"e".repeat(64));
        create(&s, "A-z_09");
        let ok = |salts: usize, len: usize| {
            s.webhook_sign(&m::WebhookSign {
                endpoint_id: "ep".into(),
                salts: vec![[1; 16]; salts],
                message: vec![b'.'; len],
            })
        };
        assert!(matches!(ok(0, 1), Err(Error::BadRequest(_))));
        assert!(matches!(ok(5, 1), Err(Error::BadRequest(_))));
        assert!(matches!(ok(1, 0), Err(Error::BadRequest(_))));
        assert!(matches!(ok(1, MESSAGE_MAX + 1), Err(Error::BadRequest(_))));
        assert_eq!(ok(4, MESSAGE_MAX).unwrap().macs.len(), 4);
        assert_eq!(ok(1, 1).unwrap().macs.len(), 1);
        // The largest request keyd accepts fits in a frame.
        let largest = m::WebhookSign {
            endpoint_id: "e".repeat(64),
            salts: vec![[1; 16]; 4],
            message: vec![b'.'; MESSAGE_MAX],
        };
        assert!(keyd_proto::Message::to_vec(&largest).len() <= keyd_proto::frame::MAX_BODY);
    }

    #[test]
    fn the_operations_are_data_operations_on_the_socket() {
        use keyd_proto::message::{Group, Message, Operation};
        use keyd_proto::{Opcode, Status};

        let s = node(&Arc::new(MemoryStore::new()), LMK);
        let data = Group::Data.bit();
        let body = m::WebhookSecretCreate {
            endpoint_id: "ep".into(),
        }
        .to_vec();
        let (status, answer) = crate::handle(&s, data, m::WebhookSecretCreate::OPCODE, &body);
        assert_eq!(status, Status::OK);
        let made = m::WebhookSecret::decode(&answer).unwrap();
        let sign = m::WebhookSign {
            endpoint_id: "ep".into(),
            salts: vec![made.salt],
            message: b"1.{}".to_vec(),
        };
        let (status, answer) = crate::handle(&s, data, m::WebhookSign::OPCODE, &sign.to_vec());
        assert_eq!(status, Status::OK);
        assert_eq!(
            m::WebhookSignatures::decode(&answer).unwrap().macs,
            vec![merchant_mac(made.secret.expose(), b"1.{}")]
        );
        // Only for the data group; a malformed request is a bad request.
        let others = Group::Devices.bit() | Group::Admin.bit() | Group::Session.bit();
        assert_eq!(
            crate::handle(&s, others, m::WebhookSecretCreate::OPCODE, &body).0,
            Status::FORBIDDEN
        );
        assert_eq!(
            crate::handle(&s, others, m::WebhookSign::OPCODE, &sign.to_vec()).0,
            Status::FORBIDDEN
        );
        assert_eq!(
            crate::handle(&s, data, Opcode(0x0219), &body).0,
            Status::BAD_REQUEST
        );
    }

    #[test]
    fn secrets_survive_an_lmk_rotation_and_the_original_lmks_destruction() {
        let store = Arc::new(MemoryStore::new());
        let s = node(&store, LMK);
        let made = create(&s, "ep-1");
        let text = secret_text(&made);
        let from = s.current_lmk().unwrap();
        s.lmk_form(None).unwrap();
        assert!(
            store.lmk_secret(MASTER_LABEL).unwrap().is_some(),
            "the rotation seals the webhook key with the other derived secrets"
        );
        assert!(s.lmk_rewrap(3, &mut |_| {}).unwrap().switched);
        s.lmk_destroy(from, true).unwrap();
        assert!(s.hsm().lmks().1.is_none(), "the original LMK is gone");
        assert_eq!(*s.webhook_secret_for("ep-1", &made.salt).unwrap(), text);
        // Restarted on the same token (the new LMK only) and store.
        let restarted = restart(&s);
        assert_eq!(
            sign(&restarted, "ep-1", &[made.salt], b"t.body"),
            vec![merchant_mac(text.as_bytes(), b"t.body")]
        );
    }

    #[test]
    fn a_store_rotated_before_the_webhook_key_existed_gets_one_sealed_once() {
        let store = Arc::new(MemoryStore::new());
        let s = node(&store, LMK);
        let from = s.current_lmk().unwrap();
        s.lmk_form(None).unwrap();
        assert!(s.lmk_rewrap(3, &mut |_| {}).unwrap().switched);
        s.lmk_destroy(from, true).unwrap();
        // As if the rotation had run before keyd knew the webhook key: no sealed copy, and no
        // original LMK to derive it from.
        store.forget_lmk_secret_for_tests(MASTER_LABEL);
        assert!(
            crate::lmk_secret(&*s.hsm, &*s.store, MASTER_LABEL).is_err(),
            "neither a sealed copy nor the original LMK"
        );
        let start = || restart(&s);
        let first = start();
        let block = store.lmk_secret(MASTER_LABEL).unwrap().unwrap();
        let current = s.current_lmk().unwrap();
        assert_eq!(
            crate::service::lmk::kp_of(&block).unwrap(),
            Some(current),
            "sealed under the LMK that seals new blocks"
        );
        let made = create(&first, "ep-1");
        let text = secret_text(&made);
        // Every later start reads the stored key: the same secrets.
        let second = start();
        assert_eq!(store.lmk_secret(MASTER_LABEL).unwrap().unwrap(), block);
        assert_eq!(
            *second.webhook_secret_for("ep-1", &made.salt).unwrap(),
            text
        );
        assert_eq!(
            sign(&second, "ep-1", &[made.salt], b"m"),
            vec![merchant_mac(text.as_bytes(), b"m")]
        );
        // And the next rotation carries it like the others.
        let next_from = second.current_lmk().unwrap();
        second.lmk_form(None).unwrap();
        assert!(second.lmk_rewrap(3, &mut |_| {}).unwrap().switched);
        second.lmk_destroy(next_from, true).unwrap();
        let third = start();
        assert_eq!(*third.webhook_secret_for("ep-1", &made.salt).unwrap(), text);
    }

    #[test]
    fn nodes_sealing_the_missing_key_at_once_agree_on_the_first_one_stored() {
        let store = Arc::new(MemoryStore::new());
        let s = node(&store, LMK);
        let from = s.current_lmk().unwrap();
        s.lmk_form(None).unwrap();
        assert!(s.lmk_rewrap(3, &mut |_| {}).unwrap().switched);
        s.lmk_destroy(from, true).unwrap();
        store.forget_lmk_secret_for_tests(MASTER_LABEL);
        // Another node got there first with its own random key, between this node's look and
        // its insert: simulated by sealing one before this node starts, which the insert then
        // leaves alone; what this node uses is what is stored.
        let mut theirs = Zeroizing::new([0u8; 32]);
        s.hsm.random(&mut theirs[..]).unwrap();
        s.seal_secret(MASTER_LABEL, &theirs).unwrap();
        let stored = store.lmk_secret(MASTER_LABEL).unwrap().unwrap();
        s.seal_secret(MASTER_LABEL, &Zeroizing::new([9u8; 32]))
            .unwrap();
        assert_eq!(
            store.lmk_secret(MASTER_LABEL).unwrap().unwrap(),
            stored,
            "insert-if-absent keeps the first"
        );
        let later = restart(&s);
        assert_eq!(*later.webhook_key, *theirs);
    }
}
