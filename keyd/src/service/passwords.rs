//! Portal users' password verifiers (`PasswordMac`): the peppered half of
//! `HMAC-SHA-256(pepper, PBKDF2-HMAC-SHA-256(password, salt, n))`, the form keyd's own
//! officers' credentials take (see `crate::officers`).
//!
//! The API runs the PBKDF2 stretch itself, since it is CPU work that needs no key, and asks
//! keyd for the MAC over its result. The pepper (here the "password key") never leaves keyd,
//! so a stolen copy of the API's database cannot be tested against password guesses offline:
//! every guess needs keyd. The verifier is
//! `HMAC-SHA-256(password key, "keyd portal password v1" 0x00 context 0x00 stretched)`, where
//! the context is the user id, so a verifier copied onto another user's row does not match.
//! The version string leaves room for a later format without a clash with this one.
//!
//! The password key is one of the secrets derived from the LMK (`crate::lmk_secret`) and
//! carried unchanged by LMK rotations, so stored verifiers stay valid; keyd keeps nothing per
//! user. A store rotated before the label existed gets the key sealed at the first start (see
//! [`Service::late_derived_secret`]).

use keyd_proto::Secret;
use keyd_proto::message as m;
use zeroize::Zeroizing;

use super::Service;
use crate::{Error, crypto};

/// The derivation label of the password key (and its name in the store's sealed secrets).
pub(crate) const KEY_LABEL: &str = "keyd portal password key";

/// Domain separation of the verifier from every other use of the password key; a new format
/// would take a new version.
const DERIVATION: &[u8] = b"keyd portal password v1";

/// The length of a PBKDF2-HMAC-SHA-256 output the API stretches to (one SHA-256 block of
/// output: more would only repeat the work for an attacker and the API alike).
const STRETCHED_LEN: usize = 32;

impl Service {
    /// The verifier of a stretched password for a user.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a malformed context or a stretched value that is not 32
    /// bytes.
    pub fn password_mac(&self, req: &m::PasswordMac) -> Result<m::PasswordMacValue, Error> {
        super::check_binding_id(&req.context, "password contexts")?;
        let stretched: &[u8; STRETCHED_LEN] = req.stretched.expose().try_into().map_err(|_| {
            Error::BadRequest(format!(
                "a stretched password is {STRETCHED_LEN} bytes (PBKDF2-HMAC-SHA-256)"
            ))
        })?;
        let mac = self.password_verifier(&req.context, stretched)?;
        Ok(m::PasswordMacValue {
            mac: Secret::new(&mac[..]),
        })
    }

    /// The MAC itself, for a context already checked. The input holds the stretched value, so
    /// it is built in a buffer wiped when dropped, sized once so it is never moved.
    fn password_verifier(
        &self,
        context: &str,
        stretched: &[u8; STRETCHED_LEN],
    ) -> Result<Zeroizing<[u8; 32]>, Error> {
        let mut input = Zeroizing::new(Vec::with_capacity(
            DERIVATION.len() + context.len() + STRETCHED_LEN + 2,
        ));
        input.extend_from_slice(DERIVATION);
        input.push(0);
        input.extend_from_slice(context.as_bytes());
        input.push(0);
        input.extend_from_slice(stretched);
        Ok(Zeroizing::new(crypto::hmac(
            &self.password_key[..],
            &input,
        )?))
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

    fn mac(s: &Service, context: &str, stretched: &[u8]) -> Result<[u8; 32], Error> {
        let answer = s.password_mac(&m::PasswordMac {
            context: context.into(),
            stretched: Secret::new(stretched),
        })?;
        Ok(answer.mac.expose().try_into().unwrap())
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

    /// A rotation to a new LMK run to its end, and the LMK it replaced destroyed.
    fn rotate(s: &Service) {
        let from = s.current_lmk().unwrap();
        s.lmk_form(None).unwrap();
        assert!(s.lmk_rewrap(3, &mut |_| {}).unwrap().switched);
        s.lmk_destroy(from, true).unwrap();
    }

    /// The password key of the LMK `[7; 32]` and the verifier of one input, computed apart
    /// from keyd's code: the key as `derive_from_lmk` defines it (AES-CMAC under the LMK of
    /// the label with ", part 1" and ", part 2"), by the `cmac` crate; the MAC by `hmac` and
    /// `sha2`.
    fn expected(context: &str, stretched: &[u8; 32]) -> [u8; 32] {
        use hmac::{Hmac, KeyInit, Mac};
        let part = |n: u8| -> [u8; 16] {
            let mut c = <cmac::Cmac<aes::Aes256> as KeyInit>::new_from_slice(&LMK).unwrap();
            c.update(format!("keyd portal password key, part {n}").as_bytes());
            c.finalize().into_bytes().into()
        };
        let key = [part(1), part(2)].concat();
        let mut h = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&key).unwrap();
        h.update(b"keyd portal password v1\0");
        h.update(context.as_bytes());
        h.update(b"\0");
        h.update(stretched);
        h.finalize().into_bytes().into()
    }

    #[test]
    fn the_verifier_is_hmac_sha_256_under_the_password_key_over_label_context_and_stretched() {
        let s = node(&Arc::new(MemoryStore::new()), LMK);
        let stretched: [u8; 32] = core::array::from_fn(|i| u8::try_from(i).unwrap());
        let got = mac(&s, "usr_01HXYZ", &stretched).unwrap();
        assert_eq!(got, expected("usr_01HXYZ", &stretched));
        // The same vector from Python's `cryptography` (CMAC) and `hmac` modules, pinned so
        // that a change of label, layout or derivation cannot pass unseen.
        assert_eq!(
            hex::encode(s.password_key.as_slice()),
            "4963c8175b09ab1da14d00e289c55173d4544a1d0184b50734e1c531c6cb3bf3"
        );
        assert_eq!(
            hex::encode(got),
            "3a1f2776209ab7006c07f2a797b6743ca5fbeb1278c41b0be0aa39f387e8f507"
        );
        // The stretched value as the API makes it (PBKDF2-HMAC-SHA-256 of the password).
        let stretched = crypto::pbkdf2_sha256(b"correct horse", b"salt of usr_2", 1000);
        assert_eq!(
            mac(&s, "usr_2", &stretched[..]).unwrap(),
            expected("usr_2", &stretched)
        );
    }

    #[test]
    fn the_password_key_is_apart_from_every_other_derived_secret() {
        let s = node(&Arc::new(MemoryStore::new()), LMK);
        for label in crate::service::lmk::DERIVED {
            let other = crate::lmk_secret(&*s.hsm, &*s.store, label).unwrap();
            assert_eq!(
                *other == *s.password_key,
                label == KEY_LABEL,
                "{label:?} against the password key"
            );
        }
        assert_ne!(*s.password_key, *s.webhook_key);
        assert_ne!(
            *s.password_key, [0; 32],
            "read at start, not left as the placeholder"
        );
    }

    #[test]
    fn a_verifier_depends_on_the_context_and_every_byte_of_the_stretched_value() {
        let s = node(&Arc::new(MemoryStore::new()), LMK);
        let stretched = [0x5C; 32];
        let first = mac(&s, "usr_1", &stretched).unwrap();
        assert_eq!(
            mac(&s, "usr_1", &stretched).unwrap(),
            first,
            "deterministic"
        );
        assert_ne!(mac(&s, "usr_2", &stretched).unwrap(), first);
        assert_ne!(mac(&s, "usr_1x", &stretched).unwrap(), first);
        for i in 0..32 {
            let mut other = stretched;
            other[i] ^= 0x01;
            assert_ne!(mac(&s, "usr_1", &other).unwrap(), first, "byte {i}");
        }
        // Another LMK (another installation): other verifiers.
        let elsewhere = node(&Arc::new(MemoryStore::new()), [8; 32]);
        assert_ne!(mac(&elsewhere, "usr_1", &stretched).unwrap(), first);
    }

    #[test]
    fn malformed_requests_are_refused() {
        let s = node(&Arc::new(MemoryStore::new()), LMK);
        for bad in [
            "",
            "a b",
            "usr/1",
            "é",
            "usr\u{0}1",
            "usr.1",
            &"u".repeat(65),
        ] {
            assert!(
                matches!(mac(&s, bad, &[1; 32]), Err(Error::BadRequest(_))),
                "{bad:?}"
            );
        }
        for len in [0, 1, 31, 33, 64] {
            assert!(
                matches!(mac(&s, "usr_1", &vec![1; len]), Err(Error::BadRequest(_))),
                "{len} bytes"
            );
        }
        mac(&s, &"u".repeat(64), &[1; 32]).unwrap();
        mac(&s, "A-z_09", &[1; 32]).unwrap();
    }

    #[test]
    fn the_operation_is_a_data_operation_on_the_socket() {
        use keyd_proto::message::{Group, Message, Operation};
        use keyd_proto::{Opcode, Status};

        let s = node(&Arc::new(MemoryStore::new()), LMK);
        let data = Group::Data.bit();
        let request = |context: &str, len: usize| {
            m::PasswordMac {
                context: context.into(),
                stretched: Secret::new(&vec![9; len]),
            }
            .to_vec()
        };
        let (status, answer) = crate::handle(&s, data, m::PasswordMac::OPCODE, &request("u", 32));
        assert_eq!(status, Status::OK);
        let answer = m::PasswordMacValue::decode(&answer).unwrap();
        assert_eq!(answer.mac.expose(), &expected("u", &[9; 32])[..]);
        // Only for the data group; a bad context, a short value or a malformed body is a bad
        // request.
        let others = Group::Devices.bit() | Group::Admin.bit() | Group::Session.bit();
        assert_eq!(
            crate::handle(&s, others, m::PasswordMac::OPCODE, &request("u", 32)).0,
            Status::FORBIDDEN
        );
        for body in [
            request("u", 31),
            request("u u", 32),
            request("u", 32)[..36].to_vec(),
        ] {
            assert_eq!(
                crate::handle(&s, data, Opcode(0x021A), &body).0,
                Status::BAD_REQUEST
            );
        }
    }

    #[test]
    fn verifiers_survive_restarts_an_lmk_rotation_and_the_original_lmks_destruction() {
        let store = Arc::new(MemoryStore::new());
        let s = node(&store, LMK);
        let first = mac(&s, "usr_1", &[0xA1; 32]).unwrap();
        // A restart, and another node with the same LMK on the same store.
        assert_eq!(mac(&restart(&s), "usr_1", &[0xA1; 32]).unwrap(), first);
        assert_eq!(
            mac(&node(&store, LMK), "usr_1", &[0xA1; 32]).unwrap(),
            first
        );
        rotate(&s);
        assert!(
            store.lmk_secret(KEY_LABEL).unwrap().is_some(),
            "the rotation seals the password key with the other derived secrets"
        );
        assert!(s.hsm().lmks().1.is_none(), "the original LMK is gone");
        assert_eq!(mac(&s, "usr_1", &[0xA1; 32]).unwrap(), first);
        // Restarted on the same token (the new LMK only) and store, then rotated again.
        let restarted = restart(&s);
        assert_eq!(mac(&restarted, "usr_1", &[0xA1; 32]).unwrap(), first);
        rotate(&restarted);
        assert_eq!(
            mac(&restart(&restarted), "usr_1", &[0xA1; 32]).unwrap(),
            first
        );
    }

    #[test]
    fn a_store_rotated_before_the_password_key_existed_gets_one_sealed_once() {
        let store = Arc::new(MemoryStore::new());
        let s = node(&store, LMK);
        rotate(&s);
        // As if the rotation had run before keyd knew the password key: no sealed copy, and no
        // original LMK to derive it from.
        store.forget_lmk_secret_for_tests(KEY_LABEL);
        assert!(
            crate::lmk_secret(&*s.hsm, &*s.store, KEY_LABEL).is_err(),
            "neither a sealed copy nor the original LMK"
        );
        let first = restart(&s);
        let block = store.lmk_secret(KEY_LABEL).unwrap().unwrap();
        assert_eq!(
            crate::service::lmk::kp_of(&block).unwrap(),
            Some(s.current_lmk().unwrap()),
            "sealed under the LMK that seals new blocks"
        );
        assert_ne!(
            *first.password_key, *first.webhook_key,
            "a key of its own, not a copy of the webhook key"
        );
        let made = mac(&first, "usr_1", &[0xB2; 32]).unwrap();
        // Every later start reads the stored key, and the next rotation carries it.
        let second = restart(&s);
        assert_eq!(store.lmk_secret(KEY_LABEL).unwrap().unwrap(), block);
        assert_eq!(mac(&second, "usr_1", &[0xB2; 32]).unwrap(), made);
        rotate(&second);
        assert_eq!(mac(&restart(&s), "usr_1", &[0xB2; 32]).unwrap(), made);
    }

    #[test]
    fn a_store_rotated_before_the_label_while_the_original_lmk_is_held_seals_the_derived_key() {
        let store = Arc::new(MemoryStore::new());
        let s = node(&store, LMK);
        let before = mac(&s, "usr_1", &[0xC3; 32]).unwrap();
        let from = s.current_lmk().unwrap();
        s.lmk_form(None).unwrap();
        assert!(s.lmk_rewrap(3, &mut |_| {}).unwrap().switched);
        // The rotation is over but the original LMK is still in the token (restore window).
        assert!(s.hsm().lmks().1.is_some());
        store.forget_lmk_secret_for_tests(KEY_LABEL);
        let later = restart(&s);
        assert_eq!(
            mac(&later, "usr_1", &[0xC3; 32]).unwrap(),
            before,
            "the key the original LMK derives, as the rotation would have sealed it"
        );
        s.lmk_destroy(from, true).unwrap();
        assert_eq!(mac(&restart(&s), "usr_1", &[0xC3; 32]).unwrap(), before);
    }
}
