//! Every published vector opens to its key, and every vector with known padding seals back to the
//! identical block. Refusals are data too: vectors/negative.toml.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test helpers fail loudly"
)]

use serde::Deserialize;
use tr31::{Error, Kbpk, Key, Padding, Profile, SealOptions};

#[derive(Deserialize)]
struct Vectors {
    vector: Vec<Vector>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    id: String,
    source: String,
    kbpk: String,
    key: String,
    block: String,
    padding: Option<String>,
    strict_refusal: Option<String>,
}

#[derive(Deserialize)]
struct Negatives {
    case: Vec<Negative>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Negative {
    id: String,
    source: String,
    kbpk: String,
    block: String,
    profile: Option<String>,
    expect: String,
}

fn vectors() -> Vec<Vector> {
    toml::from_str::<Vectors>(include_str!("../vectors/tr31.toml"))
        .unwrap()
        .vector
}

#[test]
fn every_vector_opens_to_its_key() {
    let all = vectors();
    assert!(all.len() >= 20);
    for v in &all {
        assert!(!v.source.is_empty());
        let kbpk = Kbpk::from_hex(&v.kbpk).unwrap();
        let opened = tr31::open(&v.block, &kbpk, Profile::Lenient)
            .unwrap_or_else(|e| panic!("{}: {e}", v.id));
        assert_eq!(opened.key.to_hex().as_str(), v.key, "{}", v.id);

        match (
            &v.strict_refusal,
            tr31::open(&v.block, &kbpk, Profile::Strict),
        ) {
            (None, Ok(strict)) => assert!(strict.key.ct_eq(&opened.key), "{}", v.id),
            (Some(reason), Err(Error::Policy(got))) => assert_eq!(got, reason, "{}", v.id),
            (expected, got) => panic!("{}: expected {expected:?}, got {got:?}", v.id),
        }
    }
}

#[test]
fn vectors_with_known_padding_seal_byte_for_byte() {
    let mut sealed = 0;
    for v in vectors() {
        let Some(padding) = &v.padding else { continue };
        let kbpk = Kbpk::from_hex(&v.kbpk).unwrap();
        let profile = if v.strict_refusal.is_some() {
            Profile::Lenient
        } else {
            Profile::Strict
        };
        let header = tr31::KeyBlock::parse(&v.block, profile)
            .unwrap()
            .into_header();
        let key = Key::from_hex(&v.key).unwrap();
        let padding = if padding.is_empty() {
            Vec::new()
        } else {
            Key::from_hex(padding).unwrap().expose_secret().to_vec()
        };
        let options = SealOptions {
            profile,
            allow_legacy: true,
            obfuscate: true,
        };
        let block = tr31::seal(&kbpk, &header, &key, &options, Padding::Exact(&padding))
            .unwrap_or_else(|e| panic!("{}: {e}", v.id));
        assert_eq!(block, v.block, "{}", v.id);
        sealed += 1;
    }
    assert_eq!(sealed, 13);
}

#[test]
fn negative_vectors_fail_as_expected() {
    let cases = toml::from_str::<Negatives>(include_str!("../vectors/negative.toml"))
        .unwrap()
        .case;
    assert!(cases.len() >= 15);
    for c in cases {
        assert!(!c.source.is_empty());
        let profile = match c.profile.as_deref() {
            None | Some("strict") => Profile::Strict,
            Some("lenient") => Profile::Lenient,
            Some(other) => panic!("{}: unknown profile {other}", c.id),
        };
        let kbpk = Kbpk::from_hex(&c.kbpk).unwrap();
        let got = tr31::open(&c.block, &kbpk, profile);
        let outcome = match &got {
            Ok(_) => "ok".to_string(),
            Err(Error::Authentication) => "authentication".to_string(),
            Err(Error::Kbpk(_)) => "kbpk".to_string(),
            Err(Error::Policy(_)) => "policy".to_string(),
            Err(Error::Unsupported(_)) => "unsupported".to_string(),
            Err(Error::Malformed { field, .. }) => format!("malformed:{field}"),
            Err(other) => format!("{other:?}"),
        };
        assert_eq!(outcome, c.expect, "{}: {got:?}", c.id);
    }
}

/// Every single-character change to every vector is refused with an error, never a panic and
/// never a different key: the MAC covers the header, the payload and itself.
#[test]
fn every_one_character_edit_is_refused() {
    for v in vectors() {
        let kbpk = Kbpk::from_hex(&v.kbpk).unwrap();
        let bytes = v.block.as_bytes();
        for i in 0..bytes.len() {
            for replacement in [b'0', b'A', b'F', b'z'] {
                if bytes[i] == replacement {
                    continue;
                }
                let mut edited = bytes.to_vec();
                edited[i] = replacement;
                let edited = String::from_utf8(edited).unwrap();
                if let Ok(opened) = tr31::open(&edited, &kbpk, Profile::Lenient) {
                    // Only a case change of a hex digit in lenient mode can leave the block valid.
                    assert!(
                        edited.eq_ignore_ascii_case(&v.block),
                        "{} position {i}: {edited} opened to a {}-byte key",
                        v.id,
                        opened.key.len()
                    );
                }
            }
        }
    }
}

/// The wrong-MAC, wrong-padding, wrong-KBPK failures all print the same message.
#[test]
fn authentication_failures_are_indistinguishable() {
    let v = &vectors()[4];
    let right = Kbpk::from_hex(&v.kbpk).unwrap();
    let wrong = Kbpk::from_hex(&"00".repeat(32)).unwrap();
    let mut flipped_mac = v.block.clone();
    flipped_mac.replace_range(flipped_mac.len() - 1.., "0");
    let mut flipped_payload = v.block.clone();
    flipped_payload.replace_range(20..21, "0");
    let messages: Vec<String> = [
        tr31::open(&v.block, &wrong, Profile::Strict),
        tr31::open(&flipped_mac, &right, Profile::Strict),
        tr31::open(&flipped_payload, &right, Profile::Strict),
    ]
    .into_iter()
    .map(|r| r.unwrap_err().to_string())
    .collect();
    assert!(messages.iter().all(|m| m == &messages[0]), "{messages:?}");
}

/// A TDES KBPK "in an HSM" for the tests: the CMAC comes from RustCrypto's `cmac` crate (not
/// this crate's own), as an HSM would compute it, and the legacy check value from `kcv`.
struct ExternalTdes(Vec<u8>);

impl tr31::ExternalKbpk for ExternalTdes {
    fn key_len(&self) -> usize {
        self.0.len()
    }

    fn algorithm(&self) -> tr31::Algorithm {
        tr31::Algorithm::TDES
    }

    fn cmac(&self, data: &[u8]) -> Result<[u8; 16], Error> {
        use cmac::{KeyInit, Mac};
        let tag = match self.0.len() {
            16 => {
                let mut m = <cmac::Cmac<des::TdesEde2> as KeyInit>::new_from_slice(&self.0)
                    .map_err(|_| Error::Kbpk("length"))?;
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            _ => {
                let mut m = <cmac::Cmac<des::TdesEde3> as KeyInit>::new_from_slice(&self.0)
                    .map_err(|_| Error::Kbpk("length"))?;
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        };
        let mut out = [0u8; 16];
        out[..8].copy_from_slice(&tag);
        Ok(out)
    }

    fn legacy_kcv(&self) -> Result<[u8; 3], Error> {
        tr31::kcv::legacy(&self.0)
    }
}

/// A TDES KBPK held in an HSM opens every published version B block to its key and, given
/// the block's padding, seals the very same block; versions A and C (variant binding) and the
/// AES versions are refused with a KBPK error, before anything is decrypted.
#[test]
fn an_hsm_held_tdes_kbpk_serves_version_b_byte_for_byte() {
    let mut b_blocks = 0;
    let mut refused = 0;
    for v in vectors() {
        let external = ExternalTdes(hex(&v.kbpk));
        let parsed = || tr31::KeyBlock::parse(&v.block, Profile::Lenient).unwrap();
        match v.block.as_bytes()[0] {
            b'B' => {
                let opened = parsed().open_external(&external).unwrap_or_else(|e| {
                    panic!("{}: {e}", v.id);
                });
                assert_eq!(opened.key.to_hex().as_str(), v.key, "{}", v.id);
                b_blocks += 1;
                let Some(padding) = &v.padding else { continue };
                let options = SealOptions {
                    profile: Profile::Lenient,
                    allow_legacy: false,
                    obfuscate: true,
                };
                let again = tr31::seal_external(
                    &external,
                    &opened.header,
                    &opened.key,
                    &options,
                    Padding::Exact(&hex(padding)),
                )
                .unwrap();
                assert_eq!(again, v.block, "{}", v.id);
            }
            _ => {
                let err = parsed().open_external(&external).unwrap_err();
                assert!(matches!(err, Error::Kbpk(_)), "{}: {err:?}", v.id);
                refused += 1;
            }
        }
    }
    assert!(b_blocks >= 5, "{b_blocks} version B vectors");
    assert!(refused >= 10, "{refused} refusals");
    // The refusals say why.
    let a = vectors()
        .into_iter()
        .find(|v| v.block.starts_with('A'))
        .unwrap();
    let err = tr31::KeyBlock::parse(&a.block, Profile::Strict)
        .unwrap()
        .open_external(&ExternalTdes(hex(&a.kbpk)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("versions A and C"), "{err}");
    let d = vectors()
        .into_iter()
        .find(|v| v.block.starts_with('D'))
        .unwrap();
    let err = tr31::KeyBlock::parse(&d.block, Profile::Strict)
        .unwrap()
        .open_external(&ExternalTdes(hex("89E88CF7931444F334BD7547FC3F380C")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("a TDES KBPK protects version B"), "{err}");
    // Sealing is refused the same way, for A and C even with the legacy switch.
    let key = Key::from_hex("3F419E1CB7079442AA37474C2EFBF8B8").unwrap();
    let external = ExternalTdes(hex("DD7515F2BFC17F85CE48F3CA25CB21F6"));
    let legacy = SealOptions {
        allow_legacy: true,
        ..SealOptions::default()
    };
    for header in ["A0000P0TE00E0000", "C0000P0TE00E0000", "D0000P0TE00E0000"] {
        let header = tr31::Header::parse(header, Profile::Strict).unwrap();
        let err = tr31::seal_external(
            &external,
            &header,
            &key,
            &legacy,
            Padding::Random(&mut tr31::OsRandom),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Kbpk(_)), "{header:?}: {err:?}");
    }
}

/// `KP` under an HSM-held TDES KBPK: left empty it gets the CMAC method (the one an HSM can
/// always answer), named `00` it gets the legacy value; either way the block is the one the
/// clear KBPK gives, and it opens with its `KP` checked.
#[test]
fn kp_of_an_hsm_held_tdes_kbpk() {
    let clear = Kbpk::from_hex("DD7515F2BFC17F85CE48F3CA25CB21F6").unwrap();
    let external = ExternalTdes(hex("DD7515F2BFC17F85CE48F3CA25CB21F6"));
    let key = Key::from_hex("3F419E1CB7079442AA37474C2EFBF8B8").unwrap();
    let cmac_kcv = tr31::kcv::cmac_tdes(clear.expose_secret()).unwrap();
    let legacy_kcv = tr31::kcv::legacy(clear.expose_secret()).unwrap();
    let hexed = |b: &[u8]| b.iter().map(|x| format!("{x:02X}")).collect::<String>();
    let options = SealOptions::default();
    let pad = [0x1C; 14];
    for (given, local_header, expect) in [
        (
            "B0000P0TE00E0100KP04",
            "B0000P0TE00E0100KP0601",
            format!("KP1001{}", hexed(&cmac_kcv)),
        ),
        (
            "B0000P0TE00E0100KP0600",
            "B0000P0TE00E0100KP0600",
            format!("KP0C00{}", hexed(&legacy_kcv)),
        ),
    ] {
        let h = |t: &str| tr31::Header::parse(t, Profile::Strict).unwrap();
        let a = tr31::seal_external(&external, &h(given), &key, &options, Padding::Exact(&pad))
            .unwrap();
        let b = tr31::seal(
            &clear,
            &h(local_header),
            &key,
            &options,
            Padding::Exact(&pad),
        )
        .unwrap();
        assert_eq!(a, b, "{given}");
        assert!(a.contains(&expect), "{a} lacks {expect}");
        let opened = tr31::KeyBlock::parse(&a, Profile::Strict)
            .unwrap()
            .open_external(&external)
            .unwrap();
        assert!(opened.key.ct_eq(&key));
    }
}

fn hex(s: &str) -> Vec<u8> {
    Key::from_hex(s).unwrap().expose_secret().to_vec()
}
