//! TDES zones on a real SoftHSM token: the token's TDES-CMAC against the published SP 800-38B
//! answers, and a zone formed from components exchanging version B blocks with an
//! implementation we did not write (psec, from PyPI, in a pinned virtualenv).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::print_stdout,
    reason = "tests fail loudly and say what they ran"
)]

use std::path::Path;

use keyd::{Hsm, ZmkAlgorithm};

/// The SP 800-38B TDES-CMAC answers (`tests/vectors/tdes_cmac.toml`).
#[derive(serde::Deserialize)]
struct Vectors {
    case: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    source: String,
    key: String,
    message: String,
    tag: String,
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// Set in the child process that opens the token itself (SoftHSM reads its configuration from
/// the environment, which a test process shares between its threads: hence a process of its
/// own, started by `the_tokens_tdes_cmac_gives_the_published_answers`).
const CHILD: &str = "KEYD_TDES_TOKEN_CHILD";

/// A double-length TDES ZMK in the token: its CMAC (keyd's composition over the token's
/// TDES-CBC, the key's only mechanism) gives SP 800-38B D.5's four answers, its check value is
/// the legacy one computed in the token, and after the token is opened again its algorithm
/// comes from the object's key type.
#[test]
fn the_tokens_tdes_cmac_gives_the_published_answers() {
    let token = softhsm::SoftHsm::new("keyd-tdes").unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "token_child", "--ignored", "--nocapture"])
        .envs(token.env())
        .env(CHILD, token.user_pin())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("token checks passed") && text.contains("1 passed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "run in a process of its own by the_tokens_tdes_cmac_gives_the_published_answers"]
fn token_child() {
    let pin =
        std::env::var(CHILD).expect("started by the_tokens_tdes_cmac_gives_the_published_answers");
    let module = softhsm::module_path().unwrap();
    let open = || keyd::Pkcs11Hsm::open(&module, "keyd-tdes", &pin, 2).unwrap();
    let vectors: Vectors = toml::from_str(include_str!("vectors/tdes_cmac.toml")).unwrap();
    let two_key: Vec<&Case> = vectors.case.iter().filter(|c| c.key.len() == 32).collect();
    assert_eq!(two_key.len(), 4);
    let hsm = open();
    hsm.import_zmk("nist", ZmkAlgorithm::Tdes, &unhex(&two_key[0].key))
        .unwrap();
    hsm.import_zmk("aes", ZmkAlgorithm::Aes, &[0x5A; 32])
        .unwrap();
    let check = |hsm: &keyd::Pkcs11Hsm| {
        for c in &two_key {
            let mac = hsm.zmk_cmac("nist", &unhex(&c.message)).unwrap();
            assert_eq!(hex::encode(&mac[..8]), c.tag, "{}", c.source);
            assert_eq!(mac[8..], [0; 8], "{}", c.source);
        }
        // CIPH_K(0^64) of the D.5 key is c7679b9f6b8d7d7a (SP 800-38B D.5).
        assert_eq!(hsm.zmk_kcv("nist").unwrap(), [0xC7, 0x67, 0x9B]);
        assert_eq!(hsm.zmk_algorithm("nist").unwrap(), ZmkAlgorithm::Tdes);
        assert_eq!(hsm.zmk_algorithm("aes").unwrap(), ZmkAlgorithm::Aes);
        assert_eq!(
            hsm.zmk_kcv("aes").unwrap(),
            ZmkAlgorithm::Aes.kcv(&[0x5A; 32])
        );
    };
    check(&hsm);
    assert!(matches!(
        hsm.import_zmk("short", ZmkAlgorithm::Tdes, &[1; 32]),
        Err(keyd::Error::BadRequest(_))
    ));
    drop(hsm);
    // Another process (or keyd after a restart) finds both with their algorithms.
    let hsm = open();
    assert_eq!(hsm.zones(), ["aes", "nist"]);
    check(&hsm);
    drop(hsm);
    the_tdes_zmk_object_does_one_thing(&module, &pin);
    println!("token checks passed");
}

/// The TDES ZMK as the token holds it: never readable, and usable for TDES-CBC encryption
/// alone (`CKA_ALLOWED_MECHANISMS`): no ECB, no decryption, no CMAC or any other mechanism.
fn the_tdes_zmk_object_does_one_thing(module: &Path, pin: &str) {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::{Attribute, AttributeType};
    use cryptoki::session::UserType;
    let context = Pkcs11::new(module).unwrap();
    context
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = context.get_slots_with_token().unwrap()[0];
    let session = context.open_rw_session(slot).unwrap();
    session
        .login(UserType::User, Some(&pin.to_owned().into()))
        .unwrap();
    let found = session
        .find_objects(&[Attribute::Label(b"keyd-zmk:nist".to_vec())])
        .unwrap();
    let [zmk] = found[..] else {
        panic!("{} objects", found.len())
    };
    let attrs = session
        .get_attributes(
            zmk,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Encrypt,
                AttributeType::Decrypt,
                AttributeType::Sign,
            ],
        )
        .unwrap();
    assert_eq!(
        attrs,
        [
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(false),
            Attribute::Sign(false),
        ]
    );
    assert!(
        session
            .get_attributes(zmk, &[AttributeType::Value])
            .map_or(true, |v| v.is_empty())
    );
    let zero = [0u8; 8];
    assert!(
        session
            .encrypt(&Mechanism::Des3Cbc([0; 8]), zmk, &zero)
            .is_ok()
    );
    assert!(session.encrypt(&Mechanism::Des3Ecb, zmk, &zero).is_err());
    assert!(
        session
            .decrypt(&Mechanism::Des3Cbc([0; 8]), zmk, &zero)
            .is_err()
    );
    assert!(session.sign(&Mechanism::Sha256Hmac, zmk, &zero).is_err());
}
