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
