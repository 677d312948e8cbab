//! Known-answer self-tests, run before keyd serves anything: if its own cryptography gives a
//! wrong answer, keyd must not hand out envelopes, verdicts or key blocks made with it.
//!
//! The vectors are published ones: NIST SP 800-38A F.2.5 (AES-256-CBC), NIST SP 800-38B D.3
//! (AES-256-CMAC), RFC 4231 test case 2 (HMAC-SHA-256) and TR-31:2018 A.7.4 (a version D key
//! block under an AES-256 KBPK), the last exercising the `tr31` library's key derivation, CMAC
//! and CBC together; NIST SP 800-38B D.5 (two-key TDES-CMAC) through the CMAC composition keyd
//! runs over a TDES ZMK's CBC in the token, and TR-31:2018 A.7.2.2 (a version B block) opened
//! through a TDES KBPK reached only by that CMAC, as a TDES zone's ZMK is; then `paycrypto`'s
//! known answers for PIN blocks, the retail MAC and the PVV. `KEYD_SELF_TEST_FAIL=<name>` corrupts one expected value, so a test can
//! watch keyd refuse to start; it can only ever make keyd stop.

use cmac::Mac as _;

use crate::Error;

/// The tests, by name.
pub const NAMES: [&str; 7] = [
    "aes-cbc",
    "aes-cmac",
    "hmac-sha256",
    "tr31-unwrap",
    "tdes-cmac",
    "tr31-b-unwrap",
    "payments",
];

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .filter_map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

/// The expected value, corrupted when the environment asks for this test to fail.
fn expected(name: &str, hex: &str) -> Vec<u8> {
    let mut want = unhex(hex);
    if std::env::var("KEYD_SELF_TEST_FAIL").is_ok_and(|v| v == name)
        && let Some(b) = want.first_mut()
    {
        *b ^= 1;
    }
    want
}

fn check(name: &'static str, got: &[u8], want: &[u8]) -> Result<(), Error> {
    if got == want {
        Ok(())
    } else {
        Err(Error::SelfTest(name))
    }
}

const KEY256: &str = "603DEB1015CA71BE2B73AEF0857D77811F352C073B6108D72D9810A30914DFF4";
const BLOCK1: &str = "6BC1BEE22E409F96E93D7E117393172A";

/// Runs every known-answer test.
///
/// # Errors
/// [`Error::SelfTest`] naming the first that failed.
pub fn run() -> Result<(), Error> {
    // AES-256-CBC, SP 800-38A F.2.5, first block (the padding block follows it).
    let key = unhex(KEY256);
    let iv: [u8; 16] = unhex("000102030405060708090A0B0C0D0E0F")
        .try_into()
        .map_err(|_| Error::SelfTest("aes-cbc"))?;
    let ct = crate::crypto::cbc_encrypt(&key, &iv, &unhex(BLOCK1))?;
    check(
        "aes-cbc",
        ct.get(..16).unwrap_or_default(),
        &expected("aes-cbc", "F58C4C04D6E5F1BA779EABFB5F7BFBD6"),
    )?;
    let back =
        crate::crypto::cbc_decrypt(&key, &iv, &ct).map_err(|_| Error::SelfTest("aes-cbc"))?;
    check("aes-cbc", &back, &unhex(BLOCK1))?;

    // AES-256-CMAC, SP 800-38B D.3, example 2.
    let mut mac = <cmac::Cmac<aes::Aes256> as cmac::KeyInit>::new_from_slice(&key)
        .map_err(|_| Error::SelfTest("aes-cmac"))?;
    mac.update(&unhex(BLOCK1));
    check(
        "aes-cmac",
        &mac.finalize().into_bytes(),
        &expected("aes-cmac", "28A7023F452E8F82BD4BF28D8C37C35C"),
    )?;

    // HMAC-SHA-256, RFC 4231 test case 2.
    let tag = crate::crypto::hmac(b"Jefe", b"what do ya want for nothing?")?;
    check(
        "hmac-sha256",
        &tag,
        &expected(
            "hmac-sha256",
            "5BDCC146BF60754E6A042426089575C75A003F089D2739839DEC58B964EC3843",
        ),
    )?;

    // TR-31:2018 A.7.4: a version D block under an AES-256 KBPK opens to its published key.
    let kbpk = tr31::Kbpk::new(&unhex(
        "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6",
    ))
    .map_err(|_| Error::SelfTest("tr31-unwrap"))?;
    let opened = tr31::open(
        "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E8E31DA05F7425509593D03A457DC34",
        &kbpk,
        tr31::Profile::Strict,
    )
    .map_err(|_| Error::SelfTest("tr31-unwrap"))?;
    check(
        "tr31-unwrap",
        opened.key.expose_secret(),
        &expected("tr31-unwrap", "3F419E1CB7079442AA37474C2EFBF8B8"),
    )?;

    tdes_zone_path()?;

    // ISO 9564-1 formats 0 and 4, the retail MAC and the Visa PVV: `paycrypto`'s own
    // published known answers (its sources are in its `tests/vectors.toml`).
    let forced = std::env::var("KEYD_SELF_TEST_FAIL").is_ok_and(|v| v == "payments");
    if forced || paycrypto::self_test().is_err() {
        return Err(Error::SelfTest("payments"));
    }
    Ok(())
}

/// A TDES KBPK reached only through its CMAC, computed by the composition keyd runs over a
/// TDES ZMK's CBC in the token (here over a software TDES-CBC).
struct CmacOnlyTdes(zeroize::Zeroizing<Vec<u8>>);

impl tr31::ExternalKbpk for CmacOnlyTdes {
    fn key_len(&self) -> usize {
        self.0.len()
    }

    fn algorithm(&self) -> tr31::Algorithm {
        tr31::Algorithm::TDES
    }

    fn cmac(&self, data: &[u8]) -> Result<[u8; 16], tr31::Error> {
        crate::crypto::tdes_cmac_via_cbc(|b| crate::crypto::tdes_cbc_zero_iv(&self.0, b), data)
            .map(|tag| crate::hsm::cmac_block(&tag))
            .map_err(|_| tr31::Error::Kbpk("TDES-CMAC failed"))
    }
}

/// The TDES zones' path: TDES-CMAC, then the version B key derivation built on it.
fn tdes_zone_path() -> Result<(), Error> {
    // TDES-CMAC, SP 800-38B D.5 (two-key TDEA) example 3, 160-bit message (erratum applied:
    // the 2005 text printed another tag; keyd/tests/vectors/tdes_cmac.toml has all eight).
    let key = zeroize::Zeroizing::new(unhex("4CF15134A2850DD58A3D10BA80570D38"));
    let tag = crate::crypto::tdes_cmac_via_cbc(
        |b| crate::crypto::tdes_cbc_zero_iv(&key, b),
        &unhex("6BC1BEE22E409F96E93D7E117393172AAE2D8A57"),
    )
    .map_err(|_| Error::SelfTest("tdes-cmac"))?;
    check(
        "tdes-cmac",
        &tag,
        &expected("tdes-cmac", "62DD1B471902BD4E"),
    )?;

    // TR-31:2018 A.7.2.2: a version B block under a double-length TDES KBPK opens to its
    // published key with every derivation CMAC from the composition above.
    let kbpk = CmacOnlyTdes(zeroize::Zeroizing::new(unhex(
        "DD7515F2BFC17F85CE48F3CA25CB21F6",
    )));
    let opened = tr31::KeyBlock::parse(
        "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E",
        tr31::Profile::Strict,
    )
    .and_then(|b| b.open_external(&kbpk))
    .map_err(|_| Error::SelfTest("tr31-b-unwrap"))?;
    check(
        "tr31-b-unwrap",
        opened.key.expose_secret(),
        &expected("tr31-b-unwrap", "3F419E1CB7079442AA37474C2EFBF8B8"),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_known_answers_hold() {
        super::run().unwrap();
    }

    /// The B block opens under its KBPK only: a key one bit off (not a parity bit) is the
    /// one detail-free authentication failure.
    #[test]
    fn the_tdes_path_catches_a_wrong_answer() {
        let kbpk = |hex: &str| super::CmacOnlyTdes(zeroize::Zeroizing::new(super::unhex(hex)));
        let block =
            "B0080P0TE00E000094B420079CC80BA3461F86FE26EFC4A3B8E4FA4C5F5341176EED7B727B8A248E";
        let open = |k: &super::CmacOnlyTdes| {
            tr31::KeyBlock::parse(block, tr31::Profile::Strict)
                .unwrap()
                .open_external(k)
        };
        assert!(open(&kbpk("DD7515F2BFC17F85CE48F3CA25CB21F6")).is_ok());
        let bad = kbpk("DD7515F2BFC17F85CE48F3CA25CB21F4");
        assert_eq!(open(&bad).unwrap_err(), tr31::Error::Authentication);
    }
}
