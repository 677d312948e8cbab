//! Key binding per version: deriving the block encryption and authentication keys from the KBPK,
//! and the encrypt/MAC order of each version.
//!
//! | Version | Keys from the KBPK                 | Seal                                   |
//! |---------|------------------------------------|----------------------------------------|
//! | A, C    | XOR variants `0x45` / `0x4D`       | TDES-CBC (IV = header[..8]), then CBC-MAC over header ‖ ciphertext, 4 bytes |
//! | B       | TDES-CMAC counter KDF              | TDES-CMAC over header ‖ plaintext (8 bytes), then TDES-CBC with IV = MAC |
//! | D       | AES-CMAC counter KDF               | AES-CMAC over header ‖ plaintext (16 bytes), then AES-CBC with IV = MAC |
//! | E       | AES-CMAC KDF, encryption usage `0002` | as D, with AES-CTR from the MAC      |
//!
//! Keys are derived from scratch on every call: nothing derived from a KBPK outlives the call.

use aes::cipher::{Block, BlockCipherDecrypt, BlockCipherEncrypt, BlockSizeUser, KeyInit};
use aes::{Aes128Dec, Aes128Enc, Aes192Dec, Aes192Enc, Aes256Dec, Aes256Enc};
use des::{TdesEde2, TdesEde3};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use crate::Error;
use crate::header::{Algorithm, Version};
use crate::modes::{self, Cmac, block_size};
use crate::secret::KbpkRef;

/// Bytes of MAC each version carries.
pub(crate) const fn mac_len(version: Version) -> usize {
    match version {
        Version::A | Version::C => 4,
        Version::B => 8,
        _ => 16,
    }
}

/// Cipher block size of a version: 8 for the TDES versions, 16 for the AES ones.
pub(crate) const fn cipher_block(version: Version) -> usize {
    match version {
        Version::A | Version::B | Version::C => 8,
        _ => 16,
    }
}

/// True for the versions protected by an AES KBPK.
pub(crate) const fn is_aes(version: Version) -> bool {
    matches!(version, Version::D | Version::E)
}

/// Checks that `kbpk` can protect a block of this version.
///
/// A KBPK held in an HSM is reached only through CMAC under it, so it serves the derivation
/// versions only: a TDES one version B, an AES one versions D and E. Versions A and C need XOR
/// variants of the clear KBPK, which an HSM does not give out.
pub(crate) fn check_kbpk(version: Version, kbpk: KbpkRef<'_>) -> Result<(), Error> {
    if let KbpkRef::External(k) = kbpk {
        match (k.algorithm(), version) {
            (_, Version::A | Version::C) => {
                return Err(Error::Kbpk(
                    "versions A and C bind with XOR variants of the clear KBPK, which a KBPK held \
                     in an HSM cannot give (an HSM-held TDES KBPK serves version B)",
                ));
            }
            (Algorithm::TDES, Version::B) | (Algorithm::AES, Version::D | Version::E) => {}
            (Algorithm::TDES, _) => {
                return Err(Error::Kbpk(
                    "a TDES KBPK protects version B blocks (versions D and E need an AES KBPK)",
                ));
            }
            (Algorithm::AES, _) => {
                return Err(Error::Kbpk(
                    "an AES KBPK protects version D and E blocks (version B needs a TDES KBPK)",
                ));
            }
            _ => return Err(Error::Kbpk("an HSM-held KBPK is AES or TDES")),
        }
    }
    match (is_aes(version), kbpk.len()) {
        (false, 16 | 24) | (true, 16 | 24 | 32) => Ok(()),
        (false, _) => Err(Error::Kbpk(
            "versions A, B and C need a 16- or 24-byte TDES KBPK (an AES-256 KBPK needs version D or E)",
        )),
        (true, _) => Err(Error::Kbpk(
            "versions D and E need a 16-, 24- or 32-byte AES KBPK",
        )),
    }
}

/// Decrypts `payload` in place and verifies `mac` over `header` and the payload. On failure the
/// payload holds garbage the caller must discard.
pub(crate) fn open(
    version: Version,
    kbpk: KbpkRef<'_>,
    header: &[u8],
    payload: &mut [u8],
    mac: &[u8],
) -> Result<(), Error> {
    check_kbpk(version, kbpk)?;
    match (is_aes(version), kbpk.len()) {
        (false, 16) => open_with::<Tdes2>(version, kbpk, header, payload, mac),
        (false, _) => open_with::<Tdes3>(version, kbpk, header, payload, mac),
        (true, 16) => open_with::<Aes128Family>(version, kbpk, header, payload, mac),
        (true, 24) => open_with::<Aes192Family>(version, kbpk, header, payload, mac),
        (true, _) => open_with::<Aes256Family>(version, kbpk, header, payload, mac),
    }
}

/// MACs and encrypts `payload` in place; writes the MAC to `mac` (of [`mac_len`] bytes).
pub(crate) fn seal(
    version: Version,
    kbpk: KbpkRef<'_>,
    header: &[u8],
    payload: &mut [u8],
    mac: &mut [u8],
) -> Result<(), Error> {
    check_kbpk(version, kbpk)?;
    match (is_aes(version), kbpk.len()) {
        (false, 16) => seal_with::<Tdes2>(version, kbpk, header, payload, mac),
        (false, _) => seal_with::<Tdes3>(version, kbpk, header, payload, mac),
        (true, 16) => seal_with::<Aes128Family>(version, kbpk, header, payload, mac),
        (true, 24) => seal_with::<Aes192Family>(version, kbpk, header, payload, mac),
        (true, _) => seal_with::<Aes256Family>(version, kbpk, header, payload, mac),
    }
}

/// A cipher and key size, with separate encrypt-only and decrypt-only key schedules: AES
/// decryption needs its own round keys, and building only the ones a step uses is measurably
/// cheaper on the hot path.
trait Family {
    type Enc: BlockCipherEncrypt + KeyInit;
    type Dec: BlockCipherDecrypt
        + KeyInit
        + BlockSizeUser<BlockSize = <Self::Enc as BlockSizeUser>::BlockSize>;
}

macro_rules! family {
    ($name:ident, $enc:ty, $dec:ty) => {
        struct $name;
        impl Family for $name {
            type Enc = $enc;
            type Dec = $dec;
        }
    };
}

family!(Tdes2, TdesEde2, TdesEde2);
family!(Tdes3, TdesEde3, TdesEde3);
family!(Aes128Family, Aes128Enc, Aes128Dec);
family!(Aes192Family, Aes192Enc, Aes192Dec);
family!(Aes256Family, Aes256Enc, Aes256Dec);

/// The two keys of a block, as bytes: encryption (KBEK) and authentication (KBAK). Ciphers are
/// built from them by each step, with only the key schedule it needs.
struct SessionKeys {
    enc: Zeroizing<[u8; 32]>,
    auth: Zeroizing<[u8; 32]>,
    len: usize,
}

impl SessionKeys {
    fn enc(&self) -> &[u8] {
        self.enc.get(..self.len).unwrap_or_default()
    }

    fn auth(&self) -> &[u8] {
        self.auth.get(..self.len).unwrap_or_default()
    }
}

fn session_keys<F: Family>(version: Version, kbpk: KbpkRef<'_>) -> Result<SessionKeys, Error> {
    let kbpk = match kbpk {
        KbpkRef::Local(k) => k.expose_secret(),
        // The same derivation with each CMAC computed by the HSM that holds the KBPK (a TDES
        // one answers its 8-byte CMAC in the first 8 bytes).
        KbpkRef::External(k) => {
            return derive_keys(version, k.key_len(), block_size::<F::Enc>(), |input| {
                k.cmac(input)
            });
        }
    };
    match version {
        // TR-31 key variant binding: fixed XOR masks.
        Version::A | Version::C => {
            let mut keys = SessionKeys::empty(kbpk.len());
            for ((e, a), k) in keys.enc.iter_mut().zip(keys.auth.iter_mut()).zip(kbpk) {
                *e = k ^ 0x45;
                *a = k ^ 0x4D;
            }
            Ok(keys)
        }
        _ => {
            let cipher = new_cipher::<F::Enc>(kbpk)?;
            let master = Cmac::new(&cipher);
            derive_keys(version, kbpk.len(), block_size::<F::Enc>(), |input| {
                let mut mac = master.mac(&[input]);
                let mut out = [0u8; 16];
                for (o, m) in out.iter_mut().zip(mac.iter()) {
                    *o = *m;
                }
                mac.as_mut_slice().zeroize();
                Ok(out)
            })
        }
    }
}

impl SessionKeys {
    fn empty(len: usize) -> Self {
        Self {
            enc: Zeroizing::new([0; 32]),
            auth: Zeroizing::new([0; 32]),
            len,
        }
    }
}

/// The KDF input fields for a KBPK: usage code of the encryption key, algorithm code, bits.
fn kdf_params(version: Version, len: usize) -> (u16, u16, u16) {
    let (algorithm, bits) = match (is_aes(version), len) {
        (false, 16) => (0x0000, 0x0080),
        (false, _) => (0x0001, 0x00C0),
        (true, 16) => (0x0002, 0x0080),
        (true, 24) => (0x0003, 0x00C0),
        (true, _) => (0x0004, 0x0100),
    };
    let enc_usage = if version == Version::E {
        0x0002
    } else {
        0x0000
    };
    (enc_usage, algorithm, bits)
}

/// X9.143 / ISO 20038 key derivation of the block encryption and authentication keys: CMAC
/// under the KBPK of counter ‖ usage ‖ 00 ‖ algorithm ‖ length-in-bits, one call per cipher
/// block of output (`block` bytes of each CMAC are used). `cmac` runs in memory or in an HSM.
fn derive_keys(
    version: Version,
    len: usize,
    block: usize,
    mut cmac: impl FnMut(&[u8]) -> Result<[u8; 16], Error>,
) -> Result<SessionKeys, Error> {
    let (enc_usage, algorithm, bits) = kdf_params(version, len);
    let [a0, a1] = algorithm.to_be_bytes();
    let [b0, b1] = bits.to_be_bytes();
    let mut keys = SessionKeys::empty(len);
    for (usage, out) in [(enc_usage, &mut keys.enc), (0x0001u16, &mut keys.auth)] {
        let [u0, u1] = usage.to_be_bytes();
        for (counter, chunk) in
            (1u8..).zip(out.get_mut(..len).unwrap_or_default().chunks_mut(block))
        {
            let mut piece = cmac(&[counter, u0, u1, 0x00, a0, a1, b0, b1])?;
            chunk.copy_from_slice(piece.get(..chunk.len()).unwrap_or_default());
            piece.zeroize();
        }
    }
    Ok(keys)
}

fn new_cipher<C: KeyInit>(key: &[u8]) -> Result<C, Error> {
    C::new_from_slice(key).map_err(|_| Error::Kbpk("wrong KBPK length for this version"))
}

fn open_with<F: Family>(
    version: Version,
    kbpk: KbpkRef<'_>,
    header: &[u8],
    payload: &mut [u8],
    mac: &[u8],
) -> Result<(), Error> {
    let keys = session_keys::<F>(version, kbpk)?;
    let auth = new_cipher::<F::Enc>(keys.auth())?;
    match version {
        Version::A | Version::C => {
            let expected =
                modes::cbc_mac(&auth, &[header, payload]).ok_or(Error::Authentication)?;
            verify(expected.get(..mac_len(version)).unwrap_or_default(), mac)?;
            let iv = header
                .get(..block_size::<F::Enc>())
                .ok_or(Error::Authentication)?;
            modes::cbc_decrypt(&new_cipher::<F::Dec>(keys.enc())?, iv, payload);
        }
        Version::E => {
            let counter = Block::<F::Enc>::try_from(mac).map_err(|_| Error::Authentication)?;
            modes::ctr_apply(&new_cipher::<F::Enc>(keys.enc())?, &counter, payload);
            verify(&Cmac::new(&auth).mac(&[header, payload]), mac)?;
        }
        _ => {
            modes::cbc_decrypt(&new_cipher::<F::Dec>(keys.enc())?, mac, payload);
            verify(&Cmac::new(&auth).mac(&[header, payload]), mac)?;
        }
    }
    Ok(())
}

fn seal_with<F: Family>(
    version: Version,
    kbpk: KbpkRef<'_>,
    header: &[u8],
    payload: &mut [u8],
    mac_out: &mut [u8],
) -> Result<(), Error> {
    let keys = session_keys::<F>(version, kbpk)?;
    let enc = new_cipher::<F::Enc>(keys.enc())?;
    let auth = new_cipher::<F::Enc>(keys.auth())?;
    match version {
        Version::A | Version::C => {
            let iv = header
                .get(..block_size::<F::Enc>())
                .ok_or(Error::malformed("header", "too short"))?;
            modes::cbc_encrypt(&enc, iv, payload);
            let mac = modes::cbc_mac(&auth, &[header, payload]).ok_or(Error::malformed(
                "header",
                "not a whole number of cipher blocks",
            ))?;
            copy(mac_out, &mac);
        }
        Version::E => {
            let mac = Cmac::new(&auth).mac(&[header, payload]);
            modes::ctr_apply(&enc, &mac, payload);
            copy(mac_out, &mac);
        }
        _ => {
            let mac = Cmac::new(&auth).mac(&[header, payload]);
            modes::cbc_encrypt(&enc, &mac, payload);
            copy(mac_out, &mac);
        }
    }
    Ok(())
}

fn copy(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
}

fn verify(expected: &[u8], received: &[u8]) -> Result<(), Error> {
    if expected.len() == received.len() && bool::from(expected.ct_eq(received)) {
        Ok(())
    } else {
        Err(Error::Authentication)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> alloc::vec::Vec<u8> {
        crate::hex::decode(s.as_bytes(), true).unwrap()
    }

    /// Derived-key values from the implementer's note, section 3.7.
    #[test]
    fn derived_keys_match_published_values() {
        let cases: &[(Version, &str, &str, &str)] = &[
            (
                Version::A,
                "89E88CF7931444F334BD7547FC3F380C",
                "CCADC9B2D65101B671F83002B97A7D49",
                "C4A5C1BADE5909BE79F0380AB1727541",
            ),
            (
                Version::B,
                "DD7515F2BFC17F85CE48F3CA25CB21F6",
                "698832F8778A7CFCBC79559DAB07B88A",
                "DD6CEEC1782D8453671BF8358AF9DB47",
            ),
            (
                Version::B,
                "1D22BF32387C600AD97F9B97A51311AC",
                "BCE8E2AD5D4489FD0EA5236A884DAC58",
                "1F9B2BDAF969C7B8B6C933AC7B9C6894",
            ),
            (
                Version::D,
                "00112233445566778899AABBCCDDEEFF",
                "37DC7700D70781C3E2498A41A027E0B1",
                "063E785CE4C4C8FE54921839BD1F9ADF",
            ),
            (
                Version::D,
                "00112233445566778899AABBCCDDEEFF0011223344556677",
                "F343DFB92345457EF5CB08309EEB65DEC170BE7B069FB351",
                "23F93132F6677CD822FA653562F71CCE3CB9361733BFA128",
            ),
            (
                Version::D,
                "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6",
                "396C9382A6E2E66A088774E1D6E46541F5EAD67D7204F8DD0D7AE8FDA334D3AC",
                "4EF24317696213840451890756757E573E0673483888F9B7F9B7517827F95022",
            ),
            (
                Version::E,
                "3235362D62697420414553207772617070696E67202849534F20323030333829",
                "3A3D93E513CB591DCAC550C1554194F08ED9676770D25B727AD628E21B85D5CC",
                "97AC0955A4B883CE77CBEA0620E8542C6DF7E9AFB4CF8F115E00D4D67FEA1E06",
            ),
        ];
        for (version, kbpk, kbek, kbak) in cases {
            let kbpk = crate::Kbpk::new(&h(kbpk)).unwrap();
            let aes = is_aes(*version);
            let keys = match (aes, kbpk.len()) {
                (false, 16) => session_keys::<Tdes2>(*version, KbpkRef::Local(&kbpk)),
                (false, _) => session_keys::<Tdes3>(*version, KbpkRef::Local(&kbpk)),
                (true, 16) => session_keys::<Aes128Family>(*version, KbpkRef::Local(&kbpk)),
                (true, 24) => session_keys::<Aes192Family>(*version, KbpkRef::Local(&kbpk)),
                (true, _) => session_keys::<Aes256Family>(*version, KbpkRef::Local(&kbpk)),
            }
            .unwrap();
            assert_eq!(keys.enc(), h(kbek).as_slice(), "{version:?}");
            assert_eq!(keys.auth(), h(kbak).as_slice(), "{version:?}");
        }
    }

    #[test]
    fn kbpk_must_fit_the_version() {
        let k = |n: usize| crate::Kbpk::new(&[0; 32][..n]).unwrap();
        assert!(matches!(
            check_kbpk(Version::B, KbpkRef::Local(&k(32))),
            Err(Error::Kbpk(_))
        ));
        assert!(check_kbpk(Version::D, KbpkRef::Local(&k(32))).is_ok());
        assert!(check_kbpk(Version::A, KbpkRef::Local(&k(24))).is_ok());
        assert!(check_kbpk(Version::E, KbpkRef::Local(&k(16))).is_ok());
    }
}
