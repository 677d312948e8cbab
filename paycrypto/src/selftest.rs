//! Known-answer tests to run before serving: a wrong build, a miscompiled cipher or a broken
//! platform shows here instead of in a declined payment.

use core::fmt;

use crate::{
    AesKey, Pan, Pin, TdesKey, aes_cmac, decipher_format0, decipher_format4, decode_format0,
    encipher_format4, encode_format0, kcv, pvv, retail_mac, translate_4_to_0, verify_aes_cmac,
    verify_pvv, verify_retail_mac,
};

/// A known-answer test that failed, by name. It carries no key, PIN or block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelfTestError(pub &'static str);

impl fmt::Display for SelfTestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "paycrypto self-test failed: {}", self.0)
    }
}

impl core::error::Error for SelfTestError {}

/// Hex text to bytes; `None` unless exactly `N` bytes of hex.
fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    if text.len() != 2 * N {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let s = core::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

fn check(ok: bool, name: &'static str) -> Result<(), SelfTestError> {
    if ok { Ok(()) } else { Err(SelfTestError(name)) }
}

/// Runs every primitive on fixed published vectors (the sources are in
/// `tests/vectors.toml`) and a round trip of the 4 → 0 translation.
///
/// # Errors
/// The name of the first known-answer test that failed.
pub fn self_test() -> Result<(), SelfTestError> {
    let fail = |name| move |_| SelfTestError(name);
    let none = |name| SelfTestError(name);

    // Format 0, clear block (EFTlab / ID TECH worked example).
    let pan = Pan::new("43219876543210987").map_err(fail("format 0 PAN"))?;
    let pin = Pin::new("1234").map_err(fail("format 0 PIN"))?;
    let block = hex::<8>("0412AC89ABCDEF67").ok_or(none("format 0 vector"))?;
    check(*encode_format0(&pin, &pan) == block, "format 0 encode")?;
    check(
        decode_format0(&block, &pan).is_ok_and(|p| p == pin),
        "format 0 decode",
    )?;

    // Format 4 under AES-128 (ep2 security specification 8.0.0, 8.4, via psec's tests).
    let key = AesKey::new(&hex::<16>("C1D0F8FB4958670DBA40AB1F3752EF0D").ok_or(none("key"))?)
        .map_err(fail("format 4 key"))?;
    let pan = Pan::new("432198765432109870").map_err(fail("format 4 PAN"))?;
    let block = hex::<16>("CC17F65586BFD0953010226C4FC5B3CA").ok_or(none("format 4 vector"))?;
    check(
        decipher_format4(&key, &block, &pan).is_ok_and(|p| p == pin),
        "format 4 decipher",
    )?;

    // Format 4 with fixed random fill (psec's deterministic test).
    let key = AesKey::new(&hex::<16>("00112233445566778899AABBCCDDEEFF").ok_or(none("key"))?)
        .map_err(fail("format 4 key"))?;
    let pan = Pan::new("1234567890123456789").map_err(fail("format 4 PAN"))?;
    let expected = hex::<16>("28B41FDDD29B743E93124BD8E32D921E").ok_or(none("vector"))?;
    let block = encipher_format4(&key, &pin, &pan, &[0xFF; 8]);
    check(block == expected, "format 4 encipher")?;

    // Translation 4 → 0, read back under the ZPK.
    let zpk = TdesKey::new(&hex::<16>("0123456789ABCDEFFEDCBA9876543210").ok_or(none("key"))?)
        .map_err(fail("ZPK"))?;
    let out = translate_4_to_0(&key, &block, &pan, &zpk).map_err(|_| none("translate 4 to 0"))?;
    check(
        decipher_format0(&zpk, &out, &pan).is_ok_and(|p| p == pin),
        "translate 4 to 0 round trip",
    )?;
    let mut wrong = block;
    if let Some(b) = wrong.first_mut() {
        *b ^= 1;
    }
    check(
        translate_4_to_0(&key, &wrong, &pan, &zpk).is_err(),
        "translate refuses a damaged block",
    )?;

    // Retail MAC (psec's tests: "hello world", padding method 1).
    let zak = TdesKey::new(b"AAAAAAAABBBBBBBB").map_err(fail("ZAK"))?;
    let mac = hex::<8>("3DDE5C5511661CBF").ok_or(none("MAC vector"))?;
    check(retail_mac(&zak, b"hello world") == mac, "retail MAC")?;
    check(
        verify_retail_mac(&zak, b"hello world", &mac)
            && !verify_retail_mac(&zak, b"hello world!", &mac),
        "retail MAC verify",
    )?;

    // AES-CMAC (SP 800-38B appendix D.3, AES-256, example 2: one whole block).
    let key = AesKey::new(
        &hex::<32>("603DEB1015CA71BE2B73AEF0857D77811F352C073B6108D72D9810A30914DFF4")
            .ok_or(none("key"))?,
    )
    .map_err(fail("CMAC key"))?;
    let message = hex::<16>("6BC1BEE22E409F96E93D7E117393172A").ok_or(none("message"))?;
    let mac = hex::<16>("28A7023F452E8F82BD4BF28D8C37C35C").ok_or(none("CMAC vector"))?;
    check(aes_cmac(&key, &message) == mac, "AES-CMAC")?;
    check(
        verify_aes_cmac(&key, &message, &mac[..8]) && !verify_aes_cmac(&key, &mac, &mac[..8]),
        "AES-CMAC verify",
    )?;

    // Visa PVV (psec's tests) and the TDES KCV (psec's documentation, 2 bytes shown there).
    let pvk = zpk;
    let pan = Pan::new("1122334455667788").map_err(fail("PVV PAN"))?;
    let pin = Pin::new("4524").map_err(fail("PVV PIN"))?;
    check(pvv(&pvk, &pan, 1, &pin) == Ok(*b"8523"), "PVV")?;
    check(
        verify_pvv(&pvk, &pan, 1, &pin, b"8523") == Ok(true)
            && verify_pvv(&pvk, &pan, 1, &pin, b"8524") == Ok(false),
        "PVV verify",
    )?;
    check(kcv(&pvk).starts_with(&[0x08, 0xD7]), "KCV")?;
    Ok(())
}
