//! Whole key blocks: parsing, opening (unwrap) and sealing (wrap).

use alloc::string::String;
use alloc::vec::Vec;

use zeroize::{Zeroize, Zeroizing};

use crate::header::{
    self, Algorithm, Exportability, FIXED_HEADER_LEN, Header, MAX_BLOCK_LEN, Version,
};
use crate::optional_block::{BlockContent, BlockId, KcvMethod, OptionalBlock};
use crate::padding::Padding;
use crate::secret::{ExternalKbpk, KbpkRef};
use crate::{Error, Kbpk, Key, Profile, binding, hex, kcv, policy};

/// A parsed key block whose payload is still encrypted. Everything in it can be shown without a
/// KBPK; [`KeyBlock::open`] needs one.
#[derive(Debug)]
pub struct KeyBlock<'a> {
    header: Header,
    raw_header: &'a [u8],
    ciphertext: Zeroizing<Vec<u8>>,
    mac: [u8; 16],
    profile: Profile,
}

/// The result of opening a key block: its header and the clear key.
#[derive(Debug)]
pub struct Opened {
    /// The block's header.
    pub header: Header,
    /// The clear key.
    pub key: Key,
}

/// Options for [`seal`].
#[derive(Debug, Clone, Copy)]
pub struct SealOptions {
    /// Rules the header must follow. Strict by default.
    pub profile: Profile,
    /// Allow versions A and C, the deprecated TDES variant bindings. Off by default: new blocks
    /// should be B, D or E.
    pub allow_legacy: bool,
    /// Pad TDES keys to 24 bytes and AES keys to 32 bytes so the block does not reveal the key
    /// length (X9.143 makes this mandatory). On by default; only applies to random padding.
    pub obfuscate: bool,
}

impl Default for SealOptions {
    fn default() -> Self {
        Self {
            profile: Profile::Strict,
            allow_legacy: false,
            obfuscate: true,
        }
    }
}

impl<'a> KeyBlock<'a> {
    /// Parses a key block. Nothing secret is needed or touched: this checks the syntax, the
    /// length field, the layout of payload and MAC, and (in the strict profile) the header rules.
    ///
    /// # Errors
    /// [`Error::Malformed`], [`Error::Unsupported`] or (strict) [`Error::Policy`].
    pub fn parse(text: &'a str, profile: Profile) -> Result<Self, Error> {
        let text = text.as_bytes();
        if text.len() > MAX_BLOCK_LEN {
            return Err(Error::malformed("length", "longer than 9999 characters"));
        }
        // Every character is checked by the part that reads it (fixed fields by format, optional
        // blocks as printable ASCII, payload and MAC as hex), so no separate pass is needed.
        let parsed = header::parse(text, profile)?;
        if parsed.declared_len != text.len() {
            return Err(Error::malformed(
                "length",
                "the length field does not match the block's length",
            ));
        }
        let header = parsed.header;
        let version = header.version;
        let (raw_header, rest) = text.split_at_checked(parsed.header_len).unwrap_or_default();
        check_alignment(&header, parsed.header_len, profile)?;
        if profile == Profile::Strict {
            policy::check_header(&header)?;
        }

        let mac_hex_len = 2 * binding::mac_len(version);
        let Some(payload_hex_len) = rest.len().checked_sub(mac_hex_len) else {
            return Err(Error::malformed(
                "payload",
                "too short to hold a payload and a MAC",
            ));
        };
        let (payload_hex, mac_hex) = rest.split_at_checked(payload_hex_len).unwrap_or_default();
        if payload_hex_len % 2 != 0 {
            return Err(Error::malformed("payload", "an odd number of hex digits"));
        }
        let payload_len = payload_hex_len / 2;
        let bs = binding::cipher_block(version);
        let whole_blocks = version == Version::E || payload_len % bs == 0;
        let minimum = if version == Version::E { 3 } else { bs };
        if payload_len < minimum || !whole_blocks {
            return Err(Error::malformed(
                "payload",
                "not a whole number of cipher blocks, or too short for a key",
            ));
        }
        let lenient = profile == Profile::Lenient;
        let mut ciphertext = Zeroizing::new(alloc::vec![0u8; payload_len]);
        if !hex::decode_into(payload_hex, &mut ciphertext, lenient) {
            return Err(Error::malformed("payload", hex_rule(lenient)));
        }
        let mut mac = [0u8; 16];
        if !hex::decode_into(
            mac_hex,
            mac.get_mut(..mac_hex_len / 2).unwrap_or_default(),
            lenient,
        ) {
            return Err(Error::malformed("MAC", hex_rule(lenient)));
        }
        Ok(Self {
            header,
            raw_header,
            ciphertext,
            mac,
            profile,
        })
    }

    /// The block's header.
    pub const fn header(&self) -> &Header {
        &self.header
    }

    /// Gives up the header without opening the block.
    pub fn into_header(self) -> Header {
        self.header
    }

    /// Authenticates and decrypts the block under `kbpk`. The MAC is verified before anything
    /// about the decrypted payload is looked at; then the key length field, the key length the
    /// algorithm needs (strict), the KBPK's strength (strict) and any `KC`/`KP` check values.
    ///
    /// # Errors
    /// [`Error::Kbpk`] if the KBPK cannot serve this version; [`Error::Authentication`] for a
    /// wrong KBPK or an altered block (one error for every such cause);
    /// [`Error::CheckValueMismatch`] or (strict) [`Error::Policy`] for an authentic block whose
    /// content contradicts its header.
    pub fn open(self, kbpk: &Kbpk) -> Result<Opened, Error> {
        self.open_ref(KbpkRef::Local(kbpk))
    }

    /// As [`KeyBlock::open`], with the KBPK held in an HSM: a TDES one for version B, an AES one
    /// for versions D and E.
    ///
    /// # Errors
    /// As [`KeyBlock::open`]; [`Error::Kbpk`] for versions A and C, a version that does not fit
    /// the KBPK's algorithm, or an HSM failure.
    pub fn open_external(self, kbpk: &dyn ExternalKbpk) -> Result<Opened, Error> {
        self.open_ref(KbpkRef::External(kbpk))
    }

    fn open_ref(self, kbpk: KbpkRef<'_>) -> Result<Opened, Error> {
        let Self {
            header,
            raw_header,
            mut ciphertext,
            mac,
            profile,
        } = self;
        let version = header.version;
        let mac = mac.get(..binding::mac_len(version)).unwrap_or_default();
        binding::open(version, kbpk, raw_header, &mut ciphertext, mac)?;
        let key = extract_key(ciphertext)?;
        if profile == Profile::Strict {
            policy::check_key_length(header.algorithm, key.len())?;
            policy::check_strength(&header, kbpk.len(), key.len())?;
        }
        check_carried_kcvs(&header, kbpk, &key)?;
        Ok(Opened { header, key })
    }
}

const fn hex_rule(lenient: bool) -> &'static str {
    if lenient {
        "not hex"
    } else {
        "not upper-case hex"
    }
}

/// Parses and opens a key block in one step.
///
/// # Errors
/// As [`KeyBlock::parse`] and [`KeyBlock::open`].
pub fn open(text: &str, kbpk: &Kbpk, profile: Profile) -> Result<Opened, Error> {
    KeyBlock::parse(text, profile)?.open(kbpk)
}

/// Builds a key block holding `key` under `kbpk`.
///
/// The header's length field and block count are computed. A `PB` block is added (or resized)
/// when the optional blocks need padding to the cipher block size; `KC` and `KP` blocks are
/// filled in: leave their data empty to have the check value computed with the usual method,
/// give just the method (`00` legacy, `01` CMAC) to choose it, or give a full value to have it
/// verified.
///
/// # Errors
/// [`Error::Unsupported`] for version A or C without `allow_legacy`; [`Error::Kbpk`] if the KBPK
/// does not fit the version; [`Error::InvalidKey`] if the key or the exact padding do not fit;
/// [`Error::Policy`] for a header the strict profile refuses; [`Error::CheckValueMismatch`] if a
/// given `KC`/`KP` value is wrong; [`Error::Random`] if the padding source fails.
pub fn seal(
    kbpk: &Kbpk,
    header: &Header,
    key: &Key,
    options: &SealOptions,
    padding: Padding<'_>,
) -> Result<String, Error> {
    seal_ref(KbpkRef::Local(kbpk), header, key, options, padding)
}

/// As [`seal`], with the KBPK held in an HSM: a TDES one for version B, an AES one for versions
/// D and E.
///
/// # Errors
/// As [`seal`].
pub fn seal_external(
    kbpk: &dyn ExternalKbpk,
    header: &Header,
    key: &Key,
    options: &SealOptions,
    padding: Padding<'_>,
) -> Result<String, Error> {
    seal_ref(KbpkRef::External(kbpk), header, key, options, padding)
}

fn seal_ref(
    kbpk: KbpkRef<'_>,
    header: &Header,
    key: &Key,
    options: &SealOptions,
    padding: Padding<'_>,
) -> Result<String, Error> {
    let version = header.version;
    if matches!(version, Version::A | Version::C) && !options.allow_legacy {
        return Err(Error::Unsupported(
            "versions A and C are deprecated; export them only with the legacy switch",
        ));
    }
    binding::check_kbpk(version, kbpk)?;
    let key_bytes = key.expose_secret();
    let key_bits = u16::try_from(key_bytes.len() * 8)
        .map_err(|_| Error::InvalidKey("the key is too long for a key block"))?;
    let keep_pb = matches!(padding, Padding::Exact(_));
    let header = prepare_header(header, kbpk, key, keep_pb)?;
    if options.profile == Profile::Strict {
        if header.key_usage == crate::KeyUsage::BASE_KEY_VARIANT {
            return Err(Error::Policy("key usage B2 is deprecated: import only"));
        }
        if header.optional_block(BlockId::KV).is_some() {
            return Err(Error::Policy(
                "the KV block is deprecated: accepted on import, never written",
            ));
        }
        policy::check_header(&header)?;
        policy::check_key_length(header.algorithm, key_bytes.len())?;
        policy::check_strength(&header, kbpk.len(), key_bytes.len())?;
    }

    let bs = binding::cipher_block(version);
    let pad_len = match &padding {
        Padding::Exact(bytes) => {
            if version != Version::E && !(2 + key_bytes.len() + bytes.len()).is_multiple_of(bs) {
                return Err(Error::InvalidKey(
                    "the padding must complete the last cipher block of the payload",
                ));
            }
            bytes.len()
        }
        Padding::Random(_) => {
            let masked = if options.obfuscate {
                obfuscated_len(header.algorithm, key_bytes.len())
            } else {
                key_bytes.len()
            };
            let payload = if version == Version::E {
                2 + masked
            } else {
                (2 + masked).div_ceil(bs) * bs
            };
            payload - 2 - key_bytes.len()
        }
    };
    let payload_len = 2 + key_bytes.len() + pad_len;
    let mac_len = binding::mac_len(version);
    let header_len = header.encoded_len();
    let total = header_len + 2 * payload_len + 2 * mac_len;
    if total > MAX_BLOCK_LEN {
        return Err(Error::InvalidKey(
            "the key block would exceed 9999 characters",
        ));
    }

    let mut out = Vec::with_capacity(total);
    header.encode_into(total, &mut out)?;
    let mut payload = Zeroizing::new(Vec::with_capacity(payload_len));
    payload.extend_from_slice(&key_bits.to_be_bytes());
    payload.extend_from_slice(key_bytes);
    payload.resize(payload_len, 0);
    let pad = payload.get_mut(2 + key_bytes.len()..).unwrap_or_default();
    match padding {
        Padding::Exact(bytes) => pad.copy_from_slice(bytes),
        Padding::Random(source) => source.fill(pad)?,
    }
    let mut mac = [0u8; 16];
    let mac = mac.get_mut(..mac_len).unwrap_or_default();
    binding::seal(version, kbpk, &out, &mut payload, mac)?;
    hex::encode_into(&payload, &mut out);
    hex::encode_into(mac, &mut out);
    String::from_utf8(out).map_err(|_| Error::malformed("header", "not ASCII"))
}

/// Opens a block under one KBPK and seals its key under another, keeping the header apart from
/// the version and what [`seal`] fills in. The key's exportability is honoured: `N` keys are
/// never re-exported, `E` keys only into key blocks (which this always produces).
///
/// # Errors
/// As [`open`] and [`seal`]; [`Error::Policy`] for a non-exportable key.
pub fn translate(
    text: &str,
    from: &Kbpk,
    to: &Kbpk,
    version: Version,
    options: &SealOptions,
    padding: Padding<'_>,
) -> Result<String, Error> {
    let Opened { mut header, key } = open(text, from, options.profile)?;
    match header.exportability {
        Exportability::EXPORTABLE | Exportability::SENSITIVE => {}
        _ => return Err(Error::Policy("the key is not exportable")),
    }
    header.version = version;
    header
        .optional_blocks
        .retain(|b| !matches!(b.id(), BlockId::PB | BlockId::KP));
    for block in &mut header.optional_blocks {
        if block.id() == BlockId::KC {
            *block = OptionalBlock::new(BlockId::KC, "")?;
        }
    }
    seal(to, &header, &key, options, padding)
}

/// The padded key length X9.143 prescribes so the block hides the key length: TDES keys as long
/// as a 3-key TDES key, AES keys as long as an AES-256 key. Other algorithms have no rule.
pub const fn obfuscated_len(algorithm: Algorithm, key_len: usize) -> usize {
    let target = match algorithm {
        Algorithm::TDES => 24,
        Algorithm::AES => 32,
        _ => 0,
    };
    if key_len > target { key_len } else { target }
}

fn check_alignment(header: &Header, header_len: usize, profile: Profile) -> Result<(), Error> {
    let bs = binding::cipher_block(header.version);
    // The A and C CBC-MAC cannot even be computed over an unaligned header; the others can, so
    // the lenient profile lets misaligned headers from sloppy writers through.
    let required = profile == Profile::Strict || matches!(header.version, Version::A | Version::C);
    if required && !header_len.is_multiple_of(bs) {
        return Err(Error::malformed(
            "optional blocks",
            "the header is not a multiple of the cipher block size (a PB block is missing or wrong)",
        ));
    }
    Ok(())
}

/// Takes the key out of a decrypted payload (`key length in bits ‖ key ‖ padding`), reusing the
/// payload's buffer. Any inconsistency is an authentication failure: it can only come from a
/// wrong key or a forged block, and must not be told apart from a bad MAC.
fn extract_key(mut payload: Zeroizing<Vec<u8>>) -> Result<Key, Error> {
    let Some((&[b0, b1], rest)) = payload.split_first_chunk::<2>() else {
        return Err(Error::Authentication);
    };
    let bits = usize::from(u16::from_be_bytes([b0, b1]));
    let len = bits / 8;
    if bits % 8 != 0 || len == 0 || len > rest.len() {
        return Err(Error::Authentication);
    }
    payload.get_mut(2 + len..).unwrap_or_default().zeroize();
    payload.copy_within(2..2 + len, 0);
    payload.truncate(len);
    payload.get_mut(len..).unwrap_or_default().zeroize();
    Ok(Key::from_vec(payload))
}

/// Verifies `KC` and `KP` blocks against the opened key and the KBPK.
fn check_carried_kcvs(header: &Header, kbpk: KbpkRef<'_>, key: &Key) -> Result<(), Error> {
    for block in &header.optional_blocks {
        let (value, name) = match block.content() {
            Ok(BlockContent::KeyCheckValue(v)) => (v, "KC"),
            Ok(BlockContent::KbpkCheckValue(v)) => (v, "KP"),
            _ => continue,
        };
        let computed = check_value(block.id(), value.method, header, kbpk, key)
            .map_err(|_| Error::CheckValueMismatch(name))?;
        let mut hex_value = Vec::with_capacity(10);
        hex::encode_into(&computed, &mut hex_value);
        if hex_value.get(..value.value.len()) != Some(value.value.as_bytes()) {
            return Err(Error::CheckValueMismatch(name));
        }
    }
    Ok(())
}

/// The check value a `KC` (of the key) or `KP` (of the KBPK) block should carry.
fn check_value(
    id: BlockId,
    method: KcvMethod,
    header: &Header,
    kbpk: KbpkRef<'_>,
    key: &Key,
) -> Result<[u8; 5], Error> {
    match (id, kbpk) {
        (BlockId::KP, KbpkRef::Local(k)) => {
            kcv::by_method(method, binding::is_aes(header.version), k.expose_secret())
        }
        (BlockId::KP, KbpkRef::External(k)) => {
            let aes = binding::is_aes(header.version);
            match method {
                // One zero block of the KBPK's cipher.
                KcvMethod::Cmac => {
                    let zero = [0u8; 16];
                    let block = zero
                        .get(..binding::cipher_block(header.version))
                        .unwrap_or_default();
                    k.cmac(block).map(|v| [v[0], v[1], v[2], v[3], v[4]])
                }
                KcvMethod::Legacy if aes => {
                    Err(Error::InvalidKey("AES keys have no legacy check value"))
                }
                KcvMethod::Legacy => k.legacy_kcv().map(|v| [v[0], v[1], v[2], 0, 0]),
            }
        }
        _ => kcv::by_method(
            method,
            header.algorithm == Algorithm::AES,
            key.expose_secret(),
        ),
    }
}

/// Fills in `KC`/`KP` and fixes `PB` so the optional blocks align to the cipher block. A `PB` the
/// caller gave is kept only when it is needed, or when the padding is exact (reproducing a
/// published block byte for byte); a superfluous one is never written otherwise.
fn prepare_header(
    header: &Header,
    kbpk: KbpkRef<'_>,
    key: &Key,
    keep_pb: bool,
) -> Result<Header, Error> {
    let mut out = header.clone();
    for block in &mut out.optional_blocks {
        // The usual method is legacy for TDES and CMAC for AES; a KBPK held in an HSM is
        // reached through CMAC, so its `KP` is the CMAC one unless the caller names another.
        let (cmac_first, name) = match block.id() {
            BlockId::KC => (header.algorithm == Algorithm::AES, "KC"),
            BlockId::KP => (binding::is_aes(header.version) || kbpk.is_external(), "KP"),
            _ => continue,
        };
        let data = block.data();
        let method = match data.get(..2) {
            None if data.is_empty() => {
                if cmac_first {
                    KcvMethod::Cmac
                } else {
                    KcvMethod::Legacy
                }
            }
            Some("00") => KcvMethod::Legacy,
            Some("01") => KcvMethod::Cmac,
            _ => {
                return Err(Error::malformed(
                    "optional block KC/KP",
                    "method is not 00 or 01",
                ));
            }
        };
        let (code, default_len) = match method {
            KcvMethod::Legacy => ("00", 6),
            KcvMethod::Cmac => ("01", 10),
        };
        let given = data.get(2..).unwrap_or_default();
        let computed = check_value(block.id(), method, header, kbpk, key)
            .map_err(|_| Error::InvalidKey("no check value method fits this key"))?;
        let mut value = Vec::with_capacity(10);
        hex::encode_into(&computed, &mut value);
        let value =
            core::str::from_utf8(value.get(..default_len).unwrap_or_default()).unwrap_or("");
        let new_data = if given.is_empty() {
            alloc::format!("{code}{value}")
        } else if value.as_bytes().starts_with(given.as_bytes()) && given.len() % 2 == 0 {
            String::from(data)
        } else {
            return Err(Error::CheckValueMismatch(name));
        };
        *block = OptionalBlock::new(block.id(), new_data)?;
    }
    let bs = binding::cipher_block(header.version);
    let aligned = out.encoded_len().is_multiple_of(bs);
    let pb_count = out
        .optional_blocks
        .iter()
        .filter(|b| b.id() == BlockId::PB)
        .count();
    let pb_last = out.optional_blocks.last().map(OptionalBlock::id) == Some(BlockId::PB);
    let without_pb: usize = FIXED_HEADER_LEN
        + out
            .optional_blocks
            .iter()
            .filter(|b| b.id() != BlockId::PB)
            .map(OptionalBlock::encoded_len)
            .sum::<usize>();
    let superfluous = pb_count > 0 && without_pb.is_multiple_of(bs) && !keep_pb;
    let well_placed = pb_count == 0 || (pb_count == 1 && pb_last);
    if !(aligned && well_placed) || superfluous {
        out.optional_blocks.retain(|b| b.id() != BlockId::PB);
        let len = out.encoded_len();
        if !len.is_multiple_of(bs) {
            let pb_data = (bs - (len + 4) % bs) % bs;
            out.optional_blocks
                .push(OptionalBlock::new(BlockId::PB, "0".repeat(pb_data))?);
        }
    }
    debug_assert_eq!(out.encoded_len() % bs, 0);
    if out.encoded_len() < FIXED_HEADER_LEN {
        return Err(Error::malformed("header", "too short"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeyUsage, ModeOfUse};

    const KBPK: &str = "88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6";
    const KEY: &str = "3F419E1CB7079442AA37474C2EFBF8B8";

    fn header(text: &str) -> Header {
        Header::parse(text, Profile::Strict).unwrap()
    }

    fn exact(n: usize) -> Vec<u8> {
        alloc::vec![0x1C; n]
    }

    /// A block whose MAC is right but whose `KC` does not match the key: built by hand with the
    /// binding directly, since `seal` refuses to write one.
    fn inconsistent_block(kc: &str) -> String {
        let kbpk = Kbpk::from_hex(KBPK).unwrap();
        let mut h = header("D0000P0TE00E0000");
        h.optional_blocks
            .push(OptionalBlock::new(BlockId::KC, kc).unwrap());
        h.optional_blocks
            .push(OptionalBlock::new(BlockId::PB, "").unwrap());
        let key = Key::from_hex(KEY).unwrap();
        let mut payload = alloc::vec![0x00, 0x80];
        payload.extend_from_slice(key.expose_secret());
        payload.extend_from_slice(&exact(14));
        let total = h.encoded_len() + 2 * payload.len() + 32;
        let mut out = Vec::new();
        h.encode_into(total, &mut out).unwrap();
        let mut mac = [0u8; 16];
        binding::seal(
            Version::D,
            KbpkRef::Local(&kbpk),
            &out,
            &mut payload,
            &mut mac,
        )
        .unwrap();
        hex::encode_into(&payload, &mut out);
        hex::encode_into(&mac, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn carried_check_values_are_verified_after_the_mac() {
        let kbpk = Kbpk::from_hex(KBPK).unwrap();
        let good = inconsistent_block("0057C409");
        open(&good, &kbpk, Profile::Strict)
            .map_err(|e| alloc::format!("{good} {e}"))
            .unwrap();
        let bad = inconsistent_block("0057C408");
        assert_eq!(
            open(&bad, &kbpk, Profile::Strict).unwrap_err(),
            Error::CheckValueMismatch("KC")
        );
        assert_eq!(
            open(&bad, &kbpk, Profile::Lenient).unwrap_err(),
            Error::CheckValueMismatch("KC")
        );
        // Under a wrong KBPK the MAC fails first, so the KC says nothing.
        let wrong = Kbpk::new(&[0; 32]).unwrap();
        assert_eq!(
            open(&bad, &wrong, Profile::Strict).unwrap_err(),
            Error::Authentication
        );
    }

    #[test]
    fn seal_fills_or_checks_kc_and_kp() {
        let kbpk = Kbpk::from_hex(KBPK).unwrap();
        let key = Key::from_hex(KEY).unwrap();
        let opts = SealOptions::default();
        let block = seal(
            &kbpk,
            &header("D0000P0TE00E0200KC04KP04"),
            &key,
            &opts,
            Padding::Exact(&exact(14)),
        )
        .unwrap();
        assert!(
            block.starts_with("D0144P0TE00E0300KC0C0057C409KP10012331550BC9PB04"),
            "{block}"
        );
        assert!(open(&block, &kbpk, Profile::Strict).is_ok());
        let wrong = header("D0000P0TE00E0100KC0C00FFFFFF");
        assert_eq!(
            seal(&kbpk, &wrong, &key, &opts, Padding::Exact(&exact(14))).unwrap_err(),
            Error::CheckValueMismatch("KC")
        );
        let cmac = seal(
            &kbpk,
            &header("D0000P0TE00E0100KC0601"),
            &key,
            &opts,
            Padding::Exact(&exact(14)),
        )
        .unwrap();
        assert!(cmac.contains("KC1001C66363F72B"), "{cmac}");
    }

    #[test]
    fn seal_keeps_an_aligned_pb_and_fixes_a_wrong_one() {
        let kbpk = Kbpk::from_hex(KBPK).unwrap();
        let key = Key::from_hex(KEY).unwrap();
        let opts = SealOptions::default();
        let kept = seal(
            &kbpk,
            &header("D0000P0TE00E0200KS1800604B120F9292800000PB08abcd"),
            &key,
            &opts,
            Padding::Exact(&exact(14)),
        )
        .unwrap();
        assert!(kept.contains("PB08abcd"), "{kept}");
        let fixed = seal(
            &kbpk,
            &header("D0000P0TE00E0200KS1800604B120F9292800000PB05x"),
            &key,
            &opts,
            Padding::Exact(&exact(14)),
        )
        .unwrap();
        assert!(
            fixed.contains("KS1800604B120F9292800000PB080000"),
            "{fixed}"
        );
    }

    #[test]
    fn lenient_reads_what_strict_refuses_and_pb_rules() {
        let kbpk = Kbpk::from_hex(KBPK).unwrap();
        let key = Key::from_hex(KEY).unwrap();
        let lenient = SealOptions {
            profile: Profile::Lenient,
            ..SealOptions::default()
        };
        // A DK/GBIC-style free-text KS (openemv issue #1).
        let gbic = Header::parse("D0000P0TE00E0100KS10DE#GBIC#MMK1", Profile::Lenient).unwrap();
        let block = seal(&kbpk, &gbic, &key, &lenient, Padding::Exact(&exact(14))).unwrap();
        assert!(matches!(
            open(&block, &kbpk, Profile::Strict),
            Err(Error::Malformed {
                field: "optional block KS",
                ..
            })
        ));
        assert!(open(&block, &kbpk, Profile::Lenient).is_ok());
        // A superfluous PB (psec pads a whole extra block) is accepted on import and kept when
        // reproducing with exact padding, but never written with random padding.
        let extra = header("D0000P0TE00E0100PB10000000000000");
        let opts = SealOptions::default();
        let kept = seal(&kbpk, &extra, &key, &opts, Padding::Exact(&exact(14))).unwrap();
        assert!(
            kept.starts_with("D0128P0TE00E0100PB10000000000000"),
            "{kept}"
        );
        assert!(open(&kept, &kbpk, Profile::Strict).is_ok());
        let dropped = seal(
            &kbpk,
            &extra,
            &key,
            &opts,
            Padding::Random(&mut crate::OsRandom),
        )
        .unwrap();
        assert!(dropped.starts_with("D0112P0TE00E0000"), "{dropped}");
        // An empty PB04 is legal.
        let empty = seal(
            &kbpk,
            &header("D0000P0TE00E0200KC0C0057C409PB04"),
            &key,
            &opts,
            Padding::Exact(&exact(14)),
        )
        .unwrap();
        assert!(empty.contains("KC0C0057C409PB04"), "{empty}");
        assert!(open(&empty, &kbpk, Profile::Strict).is_ok());
        // Deprecated things are imported but not written by a strict seal.
        let kv = header("D0000P0TE00E0200KV080000PB04");
        assert!(matches!(
            seal(&kbpk, &kv, &key, &opts, Padding::Exact(&exact(14))),
            Err(Error::Policy(_))
        ));
    }

    #[test]
    fn seal_refusals() {
        let tdes = Kbpk::from_hex("89E88CF7931444F334BD7547FC3F380C").unwrap();
        let aes = Kbpk::from_hex(KBPK).unwrap();
        let key = Key::from_hex(KEY).unwrap();
        let opts = SealOptions::default();
        let pad = Padding::Exact(&[]);
        assert!(matches!(
            seal(&tdes, &header("A0000P0TE00E0000"), &key, &opts, pad),
            Err(Error::Unsupported(_))
        ));
        let legacy = SealOptions {
            allow_legacy: true,
            ..opts
        };
        assert!(
            seal(
                &tdes,
                &header("C0000P0TE00E0000"),
                &key,
                &legacy,
                Padding::Random(&mut crate::OsRandom)
            )
            .is_ok()
        );
        assert!(matches!(
            seal(
                &aes,
                &header("B0000P0TE00E0000"),
                &key,
                &opts,
                Padding::Exact(&exact(6))
            ),
            Err(Error::Kbpk(_))
        ));
        assert!(matches!(
            seal(
                &aes,
                &header("D0000P0TE00E0000"),
                &key,
                &opts,
                Padding::Exact(&exact(5))
            ),
            Err(Error::InvalidKey(_))
        ));
        let short = Key::new(&[1; 8]).unwrap();
        assert!(matches!(
            seal(
                &aes,
                &header("D0000P0TE00E0000"),
                &short,
                &opts,
                Padding::Exact(&exact(6))
            ),
            Err(Error::Policy(_))
        ));
        let long = Key::new(&[1; 5000]).unwrap();
        assert!(matches!(
            seal(
                &aes,
                &header("D0000M7HC00N0000"),
                &long,
                &opts,
                Padding::Exact(&exact(14))
            ),
            Err(Error::InvalidKey(_))
        ));
        // A 2-key TDES KBPK may not protect a 3-key TDES key in the strict profile.
        let key24 = Key::new(&[7; 24]).unwrap();
        assert!(matches!(
            seal(
                &tdes,
                &header("B0000P0TE00E0000"),
                &key24,
                &opts,
                Padding::Exact(&exact(6))
            ),
            Err(Error::Policy(_))
        ));
    }

    #[test]
    fn translate_honours_exportability() {
        let from = Kbpk::from_hex("89E88CF7931444F334BD7547FC3F380C").unwrap();
        let to = Kbpk::from_hex(KBPK).unwrap();
        // TR-31:2018 A.7.2.1: exportability E, version A, into a version D block.
        let block = "A0072P0TE00E0000F5161ED902807AF26F1D62263644BD24192FDB3193C730301CEE8701";
        let opts = SealOptions::default();
        let d = translate(
            block,
            &from,
            &to,
            Version::D,
            &opts,
            Padding::Random(&mut crate::OsRandom),
        )
        .unwrap();
        assert!(d.starts_with("D0112P0TE00E0000"), "{d}");
        let opened = open(&d, &to, Profile::Strict).unwrap();
        assert_eq!(
            opened.key.to_hex().as_str(),
            "F039121BEC83D26B169BDCD5B22AAF8F"
        );
        // The same key marked N is not exportable.
        let mut h = opened.header.clone();
        h.exportability = Exportability::NON_EXPORTABLE;
        let n = seal(
            &to,
            &h,
            &opened.key,
            &opts,
            Padding::Random(&mut crate::OsRandom),
        )
        .unwrap();
        assert_eq!(
            translate(
                &n,
                &to,
                &to,
                Version::D,
                &opts,
                Padding::Random(&mut crate::OsRandom)
            )
            .unwrap_err(),
            Error::Policy("the key is not exportable")
        );
    }

    #[test]
    fn key_components_and_obfuscation() {
        let kbpk = Kbpk::from_hex(KBPK).unwrap();
        let key = Key::new(&[0x5A; 32]).unwrap();
        let mut h = Header::new(
            Version::D,
            KeyUsage::KEK,
            Algorithm::AES,
            ModeOfUse::ENCRYPT_ONLY,
            Exportability::EXPORTABLE,
        );
        h.key_version = crate::KeyVersion::from_bytes(*b"c2");
        let block = seal(
            &kbpk,
            &h,
            &key,
            &SealOptions::default(),
            Padding::Random(&mut crate::OsRandom),
        )
        .unwrap();
        let opened = open(&block, &kbpk, Profile::Strict).unwrap();
        assert_eq!(opened.header.key_version.component(), Some(b'2'));
        assert_eq!(obfuscated_len(Algorithm::TDES, 16), 24);
        assert_eq!(obfuscated_len(Algorithm::AES, 16), 32);
        assert_eq!(obfuscated_len(Algorithm::HMAC, 20), 20);
    }

    #[test]
    fn payload_key_length_field_errors_are_authentication_errors() {
        // Key length fields that cannot be right: zero, not whole bytes, longer than the payload.
        for payload in [
            alloc::vec![0u8, 0, 1, 2],
            alloc::vec![0, 0x81, 1, 2],
            alloc::vec![0x01, 0x00, 1, 2],
            alloc::vec![0],
        ] {
            assert_eq!(
                extract_key(Zeroizing::new(payload)).unwrap_err(),
                Error::Authentication
            );
        }
        let key = extract_key(Zeroizing::new(alloc::vec![0x00, 0x10, 0xAB, 0xCD, 0xEF])).unwrap();
        assert_eq!(key.expose_secret(), &[0xAB, 0xCD]);
    }

    /// A stand-in HSM: CMAC in software, counting the calls.
    struct SoftHsm {
        key: Vec<u8>,
        calls: core::cell::Cell<usize>,
    }

    impl ExternalKbpk for SoftHsm {
        fn key_len(&self) -> usize {
            self.key.len()
        }

        fn cmac(&self, data: &[u8]) -> Result<[u8; 16], Error> {
            use aes::cipher::KeyInit;
            self.calls.set(self.calls.get() + 1);
            let cipher =
                aes::Aes256Enc::new_from_slice(&self.key).map_err(|_| Error::Kbpk("len"))?;
            let mac = crate::modes::Cmac::new(&cipher).mac(&[data]);
            let mut out = [0u8; 16];
            out.copy_from_slice(&mac);
            Ok(out)
        }
    }

    #[test]
    fn an_hsm_held_kbpk_opens_and_seals_the_same_blocks() {
        let hsm = SoftHsm {
            key: hex::decode(KBPK.as_bytes(), false).unwrap(),
            calls: 0.into(),
        };
        let local = Kbpk::from_hex(KBPK).unwrap();
        let block = "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E8E31DA05F7425509593D03A457DC34";
        let opened = KeyBlock::parse(block, Profile::Strict)
            .unwrap()
            .open_external(&hsm)
            .unwrap();
        assert_eq!(opened.key.to_hex().as_str(), KEY);
        assert_eq!(
            hsm.calls.get(),
            4,
            "two CMACs each for the encryption and MAC keys"
        );
        let pad = hex::decode(b"1C2965473CE206BB855B01533782", false).unwrap();
        let opts = SealOptions::default();
        let again = seal_external(
            &hsm,
            &opened.header,
            &opened.key,
            &opts,
            Padding::Exact(&pad),
        )
        .unwrap();
        assert_eq!(again, block);
        let with_kp = header("D0000P0TE00E0100KP04");
        let a = seal_external(
            &hsm,
            &with_kp,
            &opened.key,
            &opts,
            Padding::Exact(&exact(14)),
        )
        .unwrap();
        let b = seal(
            &local,
            &with_kp,
            &opened.key,
            &opts,
            Padding::Exact(&exact(14)),
        )
        .unwrap();
        assert_eq!(a, b);
        assert!(a.contains("KP10012331550BC9"), "{a}");
        assert!(
            KeyBlock::parse(&a, Profile::Strict)
                .unwrap()
                .open_external(&hsm)
                .is_ok()
        );
        let tdes = header("B0000P0TE00E0000");
        assert!(matches!(
            seal_external(&hsm, &tdes, &opened.key, &opts, Padding::Exact(&exact(6))),
            Err(Error::Kbpk(_))
        ));
    }
}
