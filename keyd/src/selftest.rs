//! Known-answer self-tests, run before keyd serves anything: if its own cryptography gives a
//! wrong answer, keyd must not hand out envelopes, verdicts or key blocks made with it.
//!
//! The vectors are published ones: NIST SP 800-38A F.2.5 (AES-256-CBC), NIST SP 800-38B D.3
//! (AES-256-CMAC), RFC 4231 test case 2 (HMAC-SHA-256) and TR-31:2018 A.7.4 (a version D key
//! block under an AES-256 KBPK), the last exercising the `tr31` library's key derivation, CMAC
//! and CBC together; then `paycrypto`'s known answers for PIN blocks, the retail MAC and the PVV. `KEYD_SELF_TEST_FAIL=<name>` corrupts one expected value, so a test can
//! watch keyd refuse to start; it can only ever make keyd stop.

use cmac::Mac as _;

use crate::Error;

/// The tests, by name.
pub const NAMES: [&str; 5] = [
    "aes-cbc",
    "aes-cmac",
    "hmac-sha256",
    "tr31-unwrap",
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

    // ISO 9564-1 formats 0 and 4, the retail MAC and the Visa PVV: `paycrypto`'s own
    // published known answers (its sources are in its `tests/vectors.toml`).
    let forced = std::env::var("KEYD_SELF_TEST_FAIL").is_ok_and(|v| v == "payments");
    if forced || paycrypto::self_test().is_err() {
        return Err(Error::SelfTest("payments"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_known_answers_hold() {
        super::run().unwrap();
    }
}
