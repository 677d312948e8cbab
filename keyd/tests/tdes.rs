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

use std::path::{Path, PathBuf};

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

fn upper(bytes: &[u8]) -> String {
    hex::encode_upper(bytes)
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
    let out = token.run_child_test("token_child", CHILD).unwrap();
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

/// psec's side: one request per line, one answer per line.
/// `kcv KEY` → legacy KCV; `wrap KBPK HEADER KEY` → block; `unwrap KBPK BLOCK` →
/// `VERSION USAGE ALGORITHM MODE KEY`.
const PSEC_SCRIPT: &str = r#"
import sys
import psec
for line in sys.stdin:
    op, *args = line.split()
    if op == "kcv":
        print(psec.des.generate_kcv(bytes.fromhex(args[0]), 3).hex().upper())
    elif op == "wrap":
        print(psec.tr31.wrap(bytes.fromhex(args[0]), args[1], bytes.fromhex(args[2])))
    elif op == "unwrap":
        h, key = psec.tr31.unwrap(bytes.fromhex(args[0]), args[1])
        print(h.version_id, h.key_usage, h.algorithm, h.mode_of_use, key.hex().upper())
    else:
        raise ValueError(op)
"#;

fn psec_python() -> PathBuf {
    pyvenv::psec(Path::new(env!("CARGO_TARGET_TMPDIR")))
}

/// Asks psec one thing.
fn psec(python: &Path, request: &str) -> String {
    let answer = pyvenv::run_script(python, PSEC_SCRIPT, &format!("{request}\n"));
    assert_eq!(answer.len(), 1, "{request}: {answer:?}");
    answer.into_iter().next().unwrap()
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A TDES zone formed from components whose clear value the test knows, on a real keyd and
/// SoftHSM token under dual control, exchanging version B blocks with psec: psec's block
/// imports with psec's KCV, keyd's ZPK exported to the zone opens in psec to the key keyd
/// said, a wrong MAC is the one detail-free failure, and an AES key is refused for the zone.
#[test]
fn a_tdes_zone_exchanges_version_b_blocks_with_psec() {
    let python = psec_python();
    let k = e2e::KeydProcess::new(Path::new(env!("CARGO_BIN_EXE_keyd")), r#""data""#, "memory")
        .unwrap();
    let [(a, a_password), (b, b_password)] = e2e::OFFICERS;
    let both = [a_password, b_password];

    // Two custodians' components (odd parity, as on their forms); the ZMK is their XOR.
    let c1 = "0123456789ABCDEFFEDCBA9876543210";
    let mut c2 = unhex("A1B2C3D4E5F60718293A4B5C6D7E8F90");
    keyd::odd_parity(&mut c2);
    let c2 = upper(&c2);
    let zmk: Vec<u8> = unhex(c1)
        .iter()
        .zip(unhex(&c2))
        .map(|(x, y)| x ^ y)
        .collect();
    let form = |lines: &[&str]| {
        k.run(
            &[
                "zmk-import",
                "--zone",
                "acq",
                "--algorithm",
                "tdes",
                "--components",
                "2",
                "--approver",
                a,
                "--approver",
                b,
            ],
            lines,
        )
    };
    // An AES-length component for a TDES zone is refused: the algorithm is the ceremony's
    // decision, not the typist's.
    let aes_component = "2B7E151628AED2A6ABF7158809CF4F3C762E7160F38B4DA56A784D9045190CFE";
    let err = form(&[a_password, b_password, aes_component, &c2])
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected 32 hex digits"), "{err}");
    let out = form(&[a_password, b_password, c1, &c2]).unwrap();
    let zmk_kcv = psec(&python, &format!("kcv {}", upper(&zmk)));
    assert!(
        out.contains(&format!("zone acq ZMK KCV {zmk_kcv} (double-length TDES)")),
        "keyd's KCV is psec's legacy KCV {zmk_kcv}: {out}"
    );
    for (n, c) in [(1, c1), (2, c2.as_str())] {
        let kcv = psec(&python, &format!("kcv {c}"));
        assert!(out.contains(&format!("component {n} KCV {kcv}")), "{out}");
    }
    let zones = k.run(&["zones", "--json"], &[]).unwrap();
    let acq = zones
        .lines()
        .map(json)
        .find(|z| z["zone"] == "acq")
        .unwrap_or_else(|| panic!("{zones}"));
    assert_eq!(acq["algorithm"], "tdes");
    assert_eq!(acq["kcv"], zmk_kcv.as_str());

    // The acquirer's ZPK, wrapped by psec as a version B block under the ZMK, imports with the
    // KCV psec gives it.
    let mut zpk = unhex("E6F1C8B3A2D5907A1F3E5D7C9B8A6452");
    keyd::odd_parity(&mut zpk);
    let block = psec(
        &python,
        &format!("wrap {} B0096P0TB00E0000 {}", upper(&zmk), upper(&zpk)),
    );
    assert!(block.starts_with('B'), "{block}");
    let import = |block: &str| {
        k.run(
            &[
                "tr31-import",
                "--zone",
                "acq",
                "--label",
                "acquirer zpk",
                "--officer",
                a,
                "--json",
                "-",
            ],
            &[a_password, block],
        )
    };
    let imported = json(&import(&block).unwrap());
    let zpk_kcv = psec(&python, &format!("kcv {}", upper(&zpk)));
    assert_eq!(imported["kcv"], zpk_kcv.as_str(), "{imported}");
    assert_eq!(imported["header"]["version"], "B");
    assert_eq!(imported["header"]["algorithm"], "T");
    assert_eq!(imported["header"]["key_usage"], "P0");
    // A wrong MAC: the one detail-free authentication failure.
    let mut forged = block.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let err = import(&forged).unwrap_err().to_string();
    assert!(
        err.trim_end().ends_with("keyd: authentication failed"),
        "{err}"
    );
    assert!(!err.contains("MAC") && !err.contains(&forged), "{err}");

    // A ZPK keyd generates for the acquirer goes out under the zone as a version B block that
    // psec opens to the key keyd gave the KCV of.
    let made = json(
        &k.run(
            &[
                "key-generate",
                "--header",
                "D0000P0TB00E0000",
                "--label",
                "zpk for acquirer",
                "--officer",
                a,
                "--json",
            ],
            &[a_password],
        )
        .unwrap(),
    );
    let zpk_id = made["key_id"].as_str().unwrap();
    let sent = json(
        &k.run(
            &[
                "tr31-export",
                "--key",
                zpk_id,
                "--zone",
                "acq",
                "--approver",
                a,
                "--approver",
                b,
                "--json",
            ],
            &both,
        )
        .unwrap(),
    );
    let sent_block = sent["key_block"].as_str().unwrap();
    assert!(sent_block.starts_with('B'), "{sent_block}");
    let opened = psec(&python, &format!("unwrap {} {sent_block}", upper(&zmk)));
    let fields: Vec<&str> = opened.split(' ').collect();
    assert_eq!(fields[..4], ["B", "P0", "T", "B"], "{opened}");
    let psec_kcv = psec(&python, &format!("kcv {}", fields[4]));
    assert_eq!(made["kcv"], psec_kcv.as_str());
    assert_eq!(sent["kcv"], psec_kcv.as_str());

    // An AES key is not sent under the TDES ZMK, and keyd says so before asking any officer
    // for a password (none is given here).
    let aes = json(
        &k.run(
            &[
                "key-generate",
                "--header",
                "D0000D0AB00E0000",
                "--label",
                "aes data key",
                "--officer",
                a,
                "--json",
            ],
            &[a_password],
        )
        .unwrap(),
    );
    let err = k
        .run(
            &[
                "tr31-export",
                "--key",
                aes["key_id"].as_str().unwrap(),
                "--zone",
                "acq",
                "--approver",
                a,
                "--approver",
                b,
            ],
            &[],
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("only DES and TDES keys go under a TDES ZMK"),
        "{err}"
    );
    // Nor translated there from an AES zone; a TDES key translates from the TDES zone to the
    // AES one as a version D block.
    let z1 = tr31::Kbpk::new(&unhex(e2e::ZMK_HEX)).unwrap();
    let aes_block = tr31::seal(
        &z1,
        &tr31::Header::parse("D0000D0AB00E0000", tr31::Profile::Strict).unwrap(),
        &tr31::Key::new(&[0x42; 32]).unwrap(),
        &tr31::SealOptions::default(),
        tr31::Padding::Random(&mut tr31::OsRandom),
    )
    .unwrap();
    let translate = |from: &str, to: &str, block: &str, lines: &[&str]| {
        k.run(
            &[
                "tr31-translate",
                "--from-zone",
                from,
                "--to-zone",
                to,
                "--approver",
                a,
                "--approver",
                b,
                "--json",
                block,
            ],
            lines,
        )
    };
    let err = translate("z1", "acq", &aes_block, &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("only DES and TDES keys go under a TDES ZMK"),
        "{err}"
    );
    let moved = json(&translate("acq", "z1", &block, &both).unwrap());
    let d = moved["key_block"].as_str().unwrap();
    assert!(d.starts_with('D'), "{d}");
    let opened = tr31::open(d, &z1, tr31::Profile::Strict).unwrap();
    assert_eq!(opened.key.expose_secret(), &zpk[..]);
    assert_eq!(moved["kcv"], zpk_kcv.as_str());

    // The audit log has the ceremony with its KCV, and no component and no key.
    let log = std::fs::read_to_string(k.hsm().dir().join("keys.audit.log")).unwrap();
    assert!(log.contains(&zmk_kcv), "{log}");
    for secret in [c1, c2.as_str(), &upper(&zmk), &upper(&zpk)] {
        assert!(!log.contains(secret), "a secret reached the audit log");
    }
}

/// `zmk-generate --algorithm tdes` prints odd-parity components of 32 hex digits whose legacy
/// KCVs are on the forms and combine to the ZMK keyd loaded; `zmk-rotate` of the zone reads
/// components of its own algorithm and gives it a new TDES ZMK; `zmk-retire` ends it.
#[test]
fn a_tdes_zone_is_generated_as_custodian_forms_and_rotates_as_tdes() {
    let k = e2e::KeydProcess::new(Path::new(env!("CARGO_BIN_EXE_keyd")), r#""data""#, "memory")
        .unwrap();
    let [(a, a_password), (b, b_password)] = e2e::OFFICERS;
    let approvers = ["--approver", a, "--approver", b];
    let legacy = |key: &[u8]| upper(&tr31::kcv::legacy(key).unwrap());
    let mut args = vec![
        "zmk-generate",
        "--zone",
        "g1",
        "--algorithm",
        "tdes",
        "--components",
        "2",
    ];
    args.extend(approvers);
    let text = k.run(&args, &[a_password, b_password]).unwrap();
    assert_eq!(text.matches("double-length TDES").count(), 3, "{text}");
    let mut zmk = [0u8; 16];
    let mut parts = 0;
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.strip_prefix("Value:") else {
            continue;
        };
        let part = unhex(&value.split_whitespace().collect::<String>());
        assert_eq!(part.len(), 16, "one line of eight groups: {line}");
        assert!(
            part.iter().all(|b| b.count_ones() % 2 == 1),
            "odd parity: {line}"
        );
        let printed = lines[i + 1].strip_prefix("Component KCV:  ").unwrap();
        assert_eq!(printed, legacy(&part));
        for (z, p) in zmk.iter_mut().zip(&part) {
            *z ^= p;
        }
        parts += 1;
    }
    assert_eq!(parts, 2);
    let kcv = legacy(&zmk);
    assert!(text.contains(&format!("ZMK KCV:        {kcv}")), "{text}");
    assert!(
        text.contains(&format!("zone g1 ZMK KCV {kcv} (double-length TDES)")),
        "{text}"
    );

    // The rotation takes TDES components only.
    let mut args = vec!["zmk-rotate", "--zone", "g1", "--components", "2"];
    args.extend(approvers);
    let aes_component = "2B7E151628AED2A6ABF7158809CF4F3C762E7160F38B4DA56A784D9045190CFE";
    let err = k
        .run(&args, &[a_password, b_password, aes_component])
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected 32 hex digits"), "{err}");
    let (n1, n2) = (
        "0123456789ABCDEFFEDCBA9876543210",
        "A1B3C2D5E5F70719293B4A5D6D7F8F91",
    );
    let new: Vec<u8> = unhex(n1)
        .iter()
        .zip(unhex(n2))
        .map(|(x, y)| x ^ y)
        .collect();
    let out = k.run(&args, &[a_password, b_password, n1, n2]).unwrap();
    assert!(
        out.contains(&format!("zone g1 new ZMK KCV {}", legacy(&new))),
        "{out}"
    );
    let zones = k.run(&["zones"], &[]).unwrap();
    assert!(
        zones.contains(&format!("tdes      {} (rotating from {kcv})", legacy(&new))),
        "{zones}"
    );
    let mut args = vec!["zmk-retire", "--zone", "g1"];
    args.extend(approvers);
    k.run(&args, &[a_password, b_password]).unwrap();
    let zones = k.run(&["zones", "--json"], &[]).unwrap();
    assert!(
        zones.contains(&format!(
            r#"{{"zone":"g1","algorithm":"tdes","kcv":"{}"}}"#,
            legacy(&new)
        )),
        "{zones}"
    );
}
