//! Import profiles and the strict X9.143 rules.
//!
//! No public text publishes X9.143's own compatibility table; the one below is assembled from
//! the TR-31:2018 usage/mode lists, vendor documentation (AWS Payment Cryptography, IBM CCA) and
//! the definitions of the MAC algorithms, as recorded in the implementer's note (section 6).
//! Anything it does not list is refused by [`Profile::Strict`] and accepted by
//! [`Profile::Lenient`].

use crate::Error;
use crate::header::{Algorithm, Exportability, Header, KeyContext, KeyUsage, ModeOfUse, Version};
use crate::optional_block::{BdkId, BlockContent, BlockId};

/// How much of the standards an import (or export) insists on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// X9.143 as written: upper-case hex, the content rules of each optional block, ISO 8601
    /// times, no duplicate blocks, `PB` last, aligned optional blocks, and a key usage / algorithm
    /// / mode of use / exportability combination the standard allows, with the key length its
    /// algorithm needs and a KBPK at least as strong as the key (unless a `WP` block admits it).
    #[default]
    Strict,
    /// What real HSMs and older libraries emit: lower-case hex, free-text `KS` blocks (DK/GBIC),
    /// duplicate or misplaced blocks, usage combinations outside the table, single-DES keys
    /// marked `T`. Cryptography and the length field are checked exactly as in the strict
    /// profile; nothing here weakens authentication.
    Lenient,
}

use Algorithm as A;
use ModeOfUse as M;

/// Algorithms and modes of use the strict profile allows for a key usage.
fn allowed(usage: KeyUsage) -> Option<(&'static [Algorithm], &'static [ModeOfUse])> {
    const SYM: &[Algorithm] = &[A::TDES, A::AES];
    const TDES: &[Algorithm] = &[A::TDES];
    const ASYM_SIGN: &[Algorithm] = &[A::RSA, A::EC, A::DSA];
    const ENC: &[ModeOfUse] = &[M::BOTH_ENCRYPT_DECRYPT, M::DECRYPT_ONLY, M::ENCRYPT_ONLY];
    const MAC: &[ModeOfUse] = &[M::GENERATE_VERIFY, M::GENERATE_ONLY, M::VERIFY_ONLY];
    const DERIVE: &[ModeOfUse] = &[M::DERIVE];
    Some(match usage {
        KeyUsage::BDK | KeyUsage::DUKPT_INITIAL_KEY | KeyUsage::KEY_DERIVATION => (SYM, DERIVE),
        KeyUsage::BASE_KEY_VARIANT => (TDES, &[M::DERIVE, M::VARIANT]),
        KeyUsage::CVK => (SYM, MAC),
        KeyUsage::DATA_ENCRYPTION
        | KeyUsage::DECIMALIZATION_TABLE
        | KeyUsage::SENSITIVE_DATA_ENCRYPTION
        | KeyUsage::KEK
        | KeyUsage::KBPK
        | KeyUsage::PIN_ENCRYPTION => (SYM, ENC),
        KeyUsage::ASYMMETRIC_DATA_ENCRYPTION | KeyUsage::EMV_PIN_ENCRYPTION => {
            (&[A::RSA, A::EC], ENC)
        }
        KeyUsage::EMV_MKAC
        | KeyUsage::EMV_MKSMC
        | KeyUsage::EMV_MKSMI
        | KeyUsage::EMV_MKDAC
        | KeyUsage::EMV_MKDN
        | KeyUsage::EMV_PERSONALIZATION
        | KeyUsage::EMV_OTHER => (SYM, DERIVE),
        KeyUsage::IV => (SYM, &[M::NO_RESTRICTIONS]),
        KeyUsage::TR34 => (&[A::RSA], ENC),
        KeyUsage::ASYMMETRIC_KEY_AGREEMENT => (
            &[A::RSA, A::EC],
            &[
                M::BOTH_ENCRYPT_DECRYPT,
                M::DECRYPT_ONLY,
                M::ENCRYPT_ONLY,
                M::DERIVE,
            ],
        ),
        KeyUsage::ISO20038_KBPK => (&[A::AES], ENC),
        KeyUsage::MAC_ISO16609
        | KeyUsage::MAC_ALG1
        | KeyUsage::MAC_ALG2
        | KeyUsage::MAC_ALG3
        | KeyUsage::MAC_ALG4 => (TDES, MAC),
        KeyUsage::MAC_ALG5_1999 | KeyUsage::CMAC | KeyUsage::MAC_ALG6 => (SYM, MAC),
        KeyUsage::HMAC => (&[A::HMAC, A::HMAC_SHA2, A::HMAC_SHA3], MAC),
        KeyUsage::PIN_GENERATION => (SYM, MAC),
        KeyUsage::SIGNATURE | KeyUsage::CA => (ASYM_SIGN, &[M::SIGN_ONLY, M::VERIFY_ONLY]),
        KeyUsage::ASYMMETRIC_OTHER => (
            ASYM_SIGN,
            &[
                M::SIGN_ONLY,
                M::VERIFY_ONLY,
                M::SIGN_DECRYPT,
                M::BOTH_ENCRYPT_DECRYPT,
                M::DECRYPT_ONLY,
                M::ENCRYPT_ONLY,
            ],
        ),
        KeyUsage::PIN_VERIFICATION_OTHER
        | KeyUsage::PIN_VERIFICATION_IBM3624
        | KeyUsage::PIN_VERIFICATION_VISA_PVV
        | KeyUsage::PIN_VERIFICATION_X9132_1
        | KeyUsage::PIN_VERIFICATION_X9132_2
        | KeyUsage::PIN_VERIFICATION_X9132_3 => (SYM, MAC),
        _ => return None,
    })
}

/// Header rules of the strict profile that need no key: field values, the usage table, and the
/// optional blocks' contents and consistency with the header. Alignment and lengths are checked
/// by the block parser for both profiles.
pub(crate) fn check_header(header: &Header) -> Result<(), Error> {
    let (algorithms, modes) =
        allowed(header.key_usage).ok_or(Error::Policy("proprietary or unknown key usage"))?;
    if !algorithms.contains(&header.algorithm) {
        return Err(Error::Policy(
            "the algorithm is not allowed for this key usage",
        ));
    }
    if !modes.contains(&header.mode_of_use) {
        return Err(Error::Policy(
            "the mode of use is not allowed for this key usage",
        ));
    }
    if !matches!(
        header.exportability,
        Exportability::EXPORTABLE | Exportability::NON_EXPORTABLE | Exportability::SENSITIVE
    ) {
        return Err(Error::Policy("exportability is not E, N or S"));
    }
    match header.key_context {
        KeyContext::ANY | KeyContext::EXCHANGE => {}
        KeyContext::STORAGE if matches!(header.version, Version::B | Version::D) => {}
        KeyContext::STORAGE => {
            return Err(Error::Policy(
                "key context 1 (storage) is only used with versions B and D",
            ));
        }
        _ => return Err(Error::Policy("key context is not 0, 1 or 2")),
    }
    if header.reserved != b'0' {
        return Err(Error::Policy("the reserved header byte is not 0"));
    }
    let blocks = &header.optional_blocks;
    for (i, block) in blocks.iter().enumerate() {
        if blocks.iter().skip(i + 1).any(|b| b.id() == block.id()) {
            return Err(Error::Policy("an optional block appears twice"));
        }
        if block.id() == BlockId::PB && i + 1 != blocks.len() {
            return Err(Error::Policy(
                "the PB padding block is not the last optional block",
            ));
        }
        check_block_fits_header(header, &block.content()?)?;
    }
    Ok(())
}

fn check_block_fits_header(header: &Header, content: &BlockContent<'_>) -> Result<(), Error> {
    let asymmetric = matches!(header.algorithm, A::RSA | A::EC | A::DSA);
    let ok = match content {
        BlockContent::HashAlgorithm(_) => {
            header.key_usage == KeyUsage::HMAC && header.algorithm == A::HMAC
        }
        BlockContent::KeySetId(_) => header.algorithm == A::TDES,
        BlockContent::InitialKeyId(_) => header.algorithm == A::AES,
        BlockContent::DerivationsAllowed(_) => header.key_usage == KeyUsage::KEY_DERIVATION,
        BlockContent::BdkId(BdkId::TdesKeySetId(_)) => header.algorithm == A::TDES,
        BlockContent::BdkId(BdkId::AesBdkId(_)) => header.algorithm == A::AES,
        BlockContent::Certificates(_) | BlockContent::AsymmetricKeyLife(_) => asymmetric,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Policy(match content {
            BlockContent::HashAlgorithm(_) => "HM is only for key usage M7 with algorithm H",
            BlockContent::KeySetId(_) => "KS (TDES DUKPT key serial number) needs algorithm T",
            BlockContent::InitialKeyId(_) => "IK (AES DUKPT initial key id) needs algorithm A",
            BlockContent::DerivationsAllowed(_) => "DA is only for key usage B3",
            BlockContent::BdkId(_) => "the BI type does not match the key's algorithm",
            _ => "CT and AL are only for asymmetric keys",
        }))
    }
}

/// Key lengths the strict profile accepts for an algorithm; `None` means any length.
pub(crate) fn check_key_length(algorithm: Algorithm, len: usize) -> Result<(), Error> {
    let ok = match algorithm {
        A::TDES => matches!(len, 16 | 24),
        A::AES => matches!(len, 16 | 24 | 32),
        A::DES => len == 8,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Policy("the key length does not fit the algorithm"))
    }
}

/// Security strength in bits of a symmetric key, after NIST SP 800-57.
fn strength(aes: bool, len: usize) -> usize {
    match (aes, len) {
        (true, n) => n * 8,
        (false, 8) => 56,
        (false, 16) => 80,
        (false, _) => 112,
    }
}

/// The strict profile refuses a KBPK weaker than the key it protects, unless a `WP` block says
/// the pedigree is "lesser strength" (1 or 3).
pub(crate) fn check_strength(
    header: &Header,
    kbpk_len: usize,
    key_len: usize,
) -> Result<(), Error> {
    let key_strength = match header.algorithm {
        A::TDES | A::DES => strength(false, key_len),
        A::AES => strength(true, key_len),
        _ => return Ok(()),
    };
    let kbpk_strength = strength(crate::binding::is_aes(header.version), kbpk_len);
    let admitted = matches!(
        header.optional_block(BlockId::WP).map(|b| b.content()),
        Some(Ok(BlockContent::WrappingPedigree(1 | 3)))
    );
    if key_strength > kbpk_strength && !admitted {
        return Err(Error::Policy(
            "the KBPK is weaker than the key it protects (and no WP block says so)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict(text: &str) -> Result<(), Error> {
        check_header(&Header::parse(text, Profile::Lenient)?)
    }

    #[test]
    fn table_accepts_the_contract_headers() {
        for h in [
            "D0000K1AD00N0000",
            "D0000D0AB00N0000",
            "D0000P0AE00N0000",
            "D0000D0AE00N0000",
            "D0000M7HC00N0200HM0621PB0A000000",
            "B0000B0TX12S0100KS1800604B120F9292800000",
        ] {
            assert_eq!(strict(h), Ok(()), "{h}");
        }
    }

    #[test]
    fn table_refuses_what_the_standard_does_not_pair() {
        let cases = [
            ("E0000B0TV16N0000", "mode"),
            ("D0000M3AC00N0000", "algorithm"),
            ("D0000P0DE00N0000", "algorithm"),
            ("D000010T100N0000", "usage"),
            ("D0000P0AE00X0000", "exportability"),
            ("A0000P0TE00E0010", "context"),
            ("D0000P0AE00E0001", "reserved"),
            ("D0000P0AE00E0200KS1800604B120F9292800000PB04", "KS"),
            ("D0000P0AE00E0200PB04LB04", "PB"),
            ("D0000P0AE00E0200LB04LB04", "twice"),
            ("D0000D0AB00N0100HM0621", "HM"),
            ("D0000P0AE00E0100TS1A2018-06-18T20:42:39.22", "TS"),
        ];
        for (h, what) in cases {
            let err = strict(h).unwrap_err();
            let text = alloc::format!("{err}");
            assert!(
                text.contains(what) || text.contains(&what.to_lowercase()),
                "{h}: {text}"
            );
        }
    }

    #[test]
    fn optional_blocks_must_fit_the_header() {
        for (h, why) in [
            ("D0000P0TE00E0100IK140123456789ABCDEF", "IK"),
            ("D0000P0AE00E0100DA0B01P0TEE", "DA"),
            ("D0000B0AX00E0100BI1000FFFF00A020", "BI"),
            ("D0000P0AE00E0100AL080101", "AL"),
            ("D0000M7IC00N0100HM0621", "HM"),
        ] {
            let err = strict(h).unwrap_err();
            assert!(alloc::format!("{err}").contains(why), "{h}: {err}");
        }
        // ISO 20038 HMAC-SHA-1 (algorithm H without HM) and X9.143 HMAC with HM both pass.
        assert_eq!(strict("D0000M7HC00N0000"), Ok(()));
        assert_eq!(strict("D0000B3AX00E0100DA0B01P0AEN"), Ok(()));
        assert_eq!(strict("D0000B1AX00N0100IK140123456789ABCDEF"), Ok(()));
    }

    #[test]
    fn strength_rule() {
        let h = Header::parse("D0000P0AE00E0000", Profile::Strict).unwrap();
        assert!(check_strength(&h, 16, 32).is_err());
        assert!(check_strength(&h, 32, 32).is_ok());
        let h = Header::parse("D0000P0AE00E0100WP07001", Profile::Strict).unwrap();
        assert!(check_strength(&h, 16, 32).is_ok());
        let h = Header::parse("B0000P0TE00E0000", Profile::Strict).unwrap();
        assert!(check_strength(&h, 16, 24).is_err());
        assert!(check_strength(&h, 24, 16).is_ok());
    }
}
