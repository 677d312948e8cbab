//! The payment-HSM operations of contract section 12, on the primitives of `paycrypto`: PIN
//! translation between a device's TPK (ISO 9564-1 format 4, AES) and zone PIN keys (format 0,
//! TDES), the retail MAC under a ZAK (TDES) and AES-CMAC under a zone's AES MAC key (`M6`),
//! both verifiable in batches, and Visa PVV generation and verification under a PVK.
//!
//! Partners' keys (ZPK, ZAK, PVK) are imported keys (`imp-…`, TR-31 blocks under the LMK
//! with the header they arrived with); the header decides what a key may do, as a payment HSM
//! enforces key usage: a ZAK cannot decrypt a PIN block, a ZPK cannot MAC, a key whose mode
//! says "verify only" cannot generate. Every PIN block that does not open, and every key that
//! is unknown or unfit, is the one refusal `Error::Auth`, so nothing tells a caller which check
//! failed.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use keyd_proto::Secret;
use keyd_proto::message as m;
use paycrypto::{AesKey, Pan, TdesKey};
use zeroize::Zeroizing;

use super::{Material, Service};
use crate::Error;
use crate::keys::KeyKind;

/// A partner's key opened from its storage block: what its header allows, and the key.
pub(crate) struct PartnerKey {
    usage: String,
    algorithm: String,
    mode: String,
    key: Zeroizing<Vec<u8>>,
}

/// A key that encrypts PIN blocks, with the format its algorithm implies.
enum PinKey {
    /// A device's TPK or an AES zone PIN key: format 4.
    Aes(AesKey),
    /// A double-length TDES ZPK: format 0.
    Tdes(TdesKey),
}

/// What an operation needs a key to be allowed to do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Encipher (PIN blocks) or generate (MACs, PVVs).
    Make,
    /// Decipher (PIN blocks) or verify (MACs, PVVs).
    Check,
}

/// Whether a TR-31 mode of use allows `want`: `B`/`C` both ways, `E`/`G` making only,
/// `D`/`V` checking only.
fn mode_allows(mode: &str, want: Use) -> bool {
    match mode {
        "B" | "C" => true,
        "E" | "G" => want == Use::Make,
        "D" | "V" => want == Use::Check,
        _ => false,
    }
}

/// A double-length TDES key from stored bytes (anything else is unfit).
fn tdes(bytes: &[u8]) -> Result<TdesKey, Error> {
    let bytes: &[u8; 16] = bytes.try_into().map_err(|_| Error::Auth)?;
    TdesKey::new(bytes).map_err(|_| Error::Auth)
}

fn pan(secret: &Secret) -> Result<Pan, Error> {
    let text = std::str::from_utf8(secret.expose())
        .map_err(|_| Error::BadRequest("a PAN is 12-19 digits".into()))?;
    Pan::new(text).map_err(|_| Error::BadRequest("a PAN is 12-19 digits".into()))
}

/// What `PanSeal` takes: a PAN, or a PAN, `=` and the card's expiry as `YYMM` (the layout of
/// ISO/IEC 7813 track 2: PAN, field separator, expiry), which a refund on the acquirer link
/// needs again (DE 14) and which is kept with the PAN rather than beside it in clear.
fn sealable(secret: &Secret) -> Result<(), Error> {
    let bad = || Error::BadRequest("a PAN is 12-19 digits, optionally =YYMM".into());
    let bytes = secret.expose();
    let (number, expiry) = match bytes.iter().position(|b| *b == b'=') {
        Some(at) => bytes.split_at(at),
        None => (bytes, &[][..]),
    };
    if !(expiry.is_empty() || (expiry.len() == 5 && expiry.iter().skip(1).all(u8::is_ascii_digit)))
    {
        return Err(bad());
    }
    let text = std::str::from_utf8(number).map_err(|_| bad())?;
    Pan::new(text).map(drop).map_err(|_| bad())
}

impl Service {
    /// An imported key opened under the LMK (or from the cache), if its header has `usage`
    /// and algorithm `T` (or `A` where `aes_ok`) and its mode allows `want`.
    fn partner_key(
        &self,
        key_id: &str,
        usage: &str,
        aes_ok: bool,
        want: Use,
    ) -> Result<Arc<PartnerKey>, Error> {
        let cached = self
            .partners
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key_id)
            .cloned();
        let key = match cached {
            Some(k) => k,
            None => self.load_partner_key(key_id)?,
        };
        let fits = key.usage == usage
            && (key.algorithm == "T" || (aes_ok && key.algorithm == "A"))
            && mode_allows(&key.mode, want);
        if fits { Ok(key) } else { Err(Error::Auth) }
    }

    fn load_partner_key(&self, key_id: &str) -> Result<Arc<PartnerKey>, Error> {
        let generation = self.cache_generation.load(Ordering::Acquire);
        let record = self.store.imported(key_id)?.ok_or(Error::Auth)?;
        self.require_active(&record.key_id)
            .map_err(|_| Error::Auth)?;
        let opened = super::lmk::open_under_lmk(&*self.hsm, &record.block)?;
        let h = &opened.header;
        let bound = h
            .optional_block(tr31::BlockId::LB)
            .map(tr31::OptionalBlock::data);
        if bound != Some(record.key_id.as_str()) {
            return Err(Error::Store(format!(
                "stored block of {} does not match its record",
                record.key_id
            )));
        }
        let key = Arc::new(PartnerKey {
            usage: h.key_usage.as_str().to_owned(),
            algorithm: h.algorithm.to_string(),
            mode: h.mode_of_use.to_string(),
            key: Zeroizing::new(opened.key.expose_secret().to_vec()),
        });
        let mut cache = self
            .partners
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // A key disabled while it was being loaded is used for this request, not kept.
        if self.cache_generation.load(Ordering::Acquire) == generation {
            if cache.len() >= self.capacity {
                cache.clear();
            }
            cache.insert(key_id.to_owned(), Arc::clone(&key));
        }
        Ok(key)
    }

    /// A device's TPK (format 4) or an imported zone PIN key (`P0`: format 0 under TDES,
    /// format 4 under AES).
    fn pin_key(&self, key_id: &str, want: Use) -> Result<PinKey, Error> {
        if key_id.starts_with("imp-") {
            let partner = self.partner_key(key_id, "P0", true, want)?;
            return if partner.algorithm == "A" {
                AesKey::new(&partner.key)
                    .map(PinKey::Aes)
                    .map_err(|_| Error::Auth)
            } else {
                tdes(&partner.key).map(PinKey::Tdes)
            };
        }
        let working = self.working_key(key_id, KeyKind::Tpk)?;
        let bytes = match &working.material {
            Material::Memory(bytes) => Zeroizing::new(bytes.to_vec()),
            // In `token` placement the working copy lives in the token, where PKCS#11 offers
            // no ISO 9564 format; the stored block is opened for this call and wiped after.
            Material::Token { .. } => {
                let record = self.store.key(key_id)?.ok_or(Error::Auth)?;
                let key = self.open_stored(&record)?;
                Zeroizing::new(key.expose_secret().to_vec())
            }
        };
        AesKey::new(&bytes)
            .map(PinKey::Aes)
            .map_err(|_| Error::Auth)
    }

    /// Translates a PIN block between two PIN keys (4→0, 0→0, 4→4, 0→4).
    ///
    /// # Errors
    /// [`Error::Auth`] for a block that does not open, or an unknown or unfit key;
    /// [`Error::BadRequest`] for a PAN that is not 12-19 digits.
    pub fn pin_translate(&self, req: &m::PinTranslate) -> Result<m::PinBlock, Error> {
        let pan = pan(&req.pan)?;
        self.translate(&req.from_key_id, &req.to_key_id, &pan, &req.pin_block)
    }

    /// `CardDecrypt` and `PinTranslate` in one call (contract section 12.2): the card data
    /// decrypted under the TDK, and the terminal's PIN block translated, bound to the `pan` of
    /// that same card. A block that does not translate, for whatever reason, gives an empty
    /// `pin_block`, so the caller can tell it from card data that does not open.
    ///
    /// # Errors
    /// As [`Self::card_decrypt`] for the card; [`Error::Unavailable`] and the like when the
    /// token fails during the translation.
    pub fn card_decrypt_pin(&self, req: &m::CardDecryptPin) -> Result<m::CardPinData, Error> {
        let (card, at) = self.open_card(&req.tdk_key_id, &req.iv, &req.ciphertext)?;
        let pin_block =
            self.pin_for_card(&card, at, &req.tpk_key_id, &req.zpk_key_id, &req.pin_block)?;
        Ok(m::CardPinData {
            plaintext: card.plaintext,
            pan_fingerprint: card.pan_fingerprint,
            pin_block,
        })
    }

    /// The PIN block translated for the card whose PAN lies at `at` in its plaintext; empty
    /// for every block that does not translate (one answer for every reason).
    fn pin_for_card(
        &self,
        card: &m::CardData,
        at: std::ops::Range<usize>,
        tpk_key_id: &str,
        zpk_key_id: &str,
        block: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let translated = std::str::from_utf8(card.plaintext.expose().get(at).unwrap_or_default())
            .ok()
            .and_then(|text| Pan::new(text).ok())
            .ok_or(Error::Auth)
            .and_then(|pan| self.translate(tpk_key_id, zpk_key_id, &pan, block));
        match translated {
            Ok(block) => Ok(block.pin_block),
            Err(Error::Auth | Error::BadRequest(_)) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// A POS charge's signature, envelope and card in one call (see [`m::ChargeOpenCard`]).
    ///
    /// Only the signature and the envelope can fail the call (one [`Error::Auth`], as
    /// [`Service::charge_open`]); whatever is wrong with the card inside is left for the
    /// caller to report in its own order of checks, so the answer then says `card_opened:
    /// false`.
    ///
    /// # Errors
    /// [`Error::Auth`] for a bad signature or envelope; [`Error::Hsm`] and the like.
    pub fn charge_open_card(
        &self,
        req: &m::ChargeOpenCardView<'_>,
    ) -> Result<m::ChargeCard, Error> {
        let plaintext = self.verify_and_open(
            (req.mac_key_id, req.message, &req.signature),
            req.msk_key_id,
            &req.iv,
            req.ciphertext,
        )?;
        let mut answer = m::ChargeCard {
            plaintext,
            card_opened: false,
            card: Secret(Zeroizing::new(Vec::new())),
            pan_fingerprint: [0; 32],
            pin_block: Vec::new(),
        };
        let inflated;
        let inner = if req.gzip {
            match gunzip(answer.plaintext.expose()) {
                Some(bytes) => {
                    inflated = bytes;
                    &inflated[..]
                }
                None => return Ok(answer),
            }
        } else {
            answer.plaintext.expose()
        };
        let Some(sent) = SentCard::read(inner) else {
            return Ok(answer);
        };
        let (card, at) = match self.open_card(req.tdk_key_id, &sent.iv, &sent.ciphertext) {
            Ok(opened) => opened,
            Err(Error::Auth | Error::BadRequest(_)) => return Ok(answer),
            Err(e) => return Err(e),
        };
        if let Some(block) = sent.pin_block.filter(|_| !req.tpk_key_id.is_empty()) {
            answer.pin_block =
                self.pin_for_card(&card, at, req.tpk_key_id, req.zpk_key_id, &block)?;
        }
        answer.card_opened = true;
        answer.card = card.plaintext;
        answer.pan_fingerprint = card.pan_fingerprint;
        Ok(answer)
    }

    /// A PIN block from one PIN key to another, bound to `pan`.
    fn translate(
        &self,
        from_key_id: &str,
        to_key_id: &str,
        pan: &Pan,
        block: &[u8],
    ) -> Result<m::PinBlock, Error> {
        let from = self.pin_key(from_key_id, Use::Check)?;
        let to = self.pin_key(to_key_id, Use::Make)?;
        let pin = match &from {
            PinKey::Aes(k) => {
                let block: [u8; 16] = block.try_into().map_err(|_| Error::Auth)?;
                paycrypto::decipher_format4(k, &block, pan)
            }
            PinKey::Tdes(k) => {
                let block: [u8; 8] = block.try_into().map_err(|_| Error::Auth)?;
                paycrypto::decipher_format0(k, &block, pan)
            }
        }
        .map_err(|_| Error::Auth)?;
        let pin_block = match &to {
            PinKey::Tdes(k) => paycrypto::encipher_format0(k, &pin, pan).to_vec(),
            PinKey::Aes(k) => {
                let mut fill = Zeroizing::new([0u8; 8]);
                self.hsm.random(&mut fill[..])?;
                paycrypto::encipher_format4(k, &pin, pan, &fill).to_vec()
            }
        };
        Ok(m::PinBlock { pin_block })
    }

    /// The retail MAC of a message under a ZAK (`M3`, TDES, mode `C` or `G`).
    ///
    /// # Errors
    /// [`Error::Auth`] for an unknown or unfit key.
    pub fn retail_mac(&self, req: &m::RetailMac) -> Result<m::MacValue, Error> {
        let key = tdes(&self.partner_key(&req.key_id, "M3", false, Use::Make)?.key)?;
        Ok(m::MacValue {
            mac: paycrypto::retail_mac(&key, &req.message),
        })
    }

    /// The AES-CMAC of a message under a zone's AES MAC key (`M6`, AES, mode `C` or `G`).
    ///
    /// # Errors
    /// [`Error::Auth`] for an unknown or unfit key.
    pub fn aes_cmac(&self, req: &m::AesCmac) -> Result<m::CmacValue, Error> {
        let key = self.cmac_key(&req.key_id, Use::Make)?;
        Ok(m::CmacValue {
            mac: paycrypto::aes_cmac(&key, &req.message),
        })
    }

    /// Verifies an AES-CMAC (16 bytes, or its leftmost 8 to 15) under a zone's AES MAC key
    /// (`M6`, AES, mode `C` or `V`).
    ///
    /// # Errors
    /// [`Error::Auth`] for a MAC that does not match, or an unknown or unfit key.
    pub fn aes_cmac_verify(&self, req: &m::AesCmacVerify) -> Result<m::Empty, Error> {
        let key = self.cmac_key(&req.key_id, Use::Check)?;
        if paycrypto::verify_aes_cmac(&key, &req.message, &req.mac) {
            Ok(m::Empty {})
        } else {
            Err(Error::Auth)
        }
    }

    /// Verifies many zone MACs, each by its key: the retail MAC under a TDES `M3` key, AES-CMAC
    /// under an AES `M6` key.
    ///
    /// # Errors
    /// None per item: each failure (a wrong MAC, an unknown or unfit key) is a `false`.
    pub fn zone_mac_verify_batch(
        &self,
        req: &m::ZoneMacVerifyBatch,
    ) -> Result<m::MacVerifyBatchResponse, Error> {
        let valid = req
            .items
            .iter()
            .map(|item| self.zone_mac_ok(&item.key_id, &item.message, &item.mac))
            .collect();
        Ok(m::MacVerifyBatchResponse { valid })
    }

    /// One item of a zone MAC batch.
    fn zone_mac_ok(&self, key_id: &str, message: &[u8], mac: &[u8]) -> bool {
        if let Ok(key) = self.partner_key(key_id, "M3", false, Use::Check) {
            let Ok(mac) = <&[u8; 8]>::try_from(mac) else {
                return false;
            };
            return tdes(&key.key).is_ok_and(|k| paycrypto::verify_retail_mac(&k, message, mac));
        }
        self.cmac_key(key_id, Use::Check)
            .is_ok_and(|k| paycrypto::verify_aes_cmac(&k, message, mac))
    }

    /// A zone's AES MAC key: usage `M6` (ISO 9797-1 MAC algorithm 5, CMAC), algorithm `A`.
    fn cmac_key(&self, key_id: &str, want: Use) -> Result<AesKey, Error> {
        let partner = self.partner_key(key_id, "M6", true, want)?;
        if partner.algorithm != "A" {
            return Err(Error::Auth);
        }
        AesKey::new(&partner.key).map_err(|_| Error::Auth)
    }

    /// Verifies a retail MAC under a ZAK (`M3`, TDES, mode `C` or `V`).
    ///
    /// # Errors
    /// [`Error::Auth`] for a MAC that does not match, or an unknown or unfit key.
    pub fn retail_mac_verify(&self, req: &m::RetailMacVerify) -> Result<m::Empty, Error> {
        let key = tdes(&self.partner_key(&req.key_id, "M3", false, Use::Check)?.key)?;
        if paycrypto::verify_retail_mac(&key, &req.message, &req.mac) {
            Ok(m::Empty {})
        } else {
            Err(Error::Auth)
        }
    }

    /// The PIN in a format 0 block under a ZPK, and the PVK (`V2`, TDES) to work with it.
    fn pvv_inputs(
        &self,
        pvk_key_id: &str,
        zpk_key_id: &str,
        pan: &Pan,
        block: &[u8; 8],
        want: Use,
    ) -> Result<(TdesKey, paycrypto::Pin), Error> {
        let pvk = tdes(&self.partner_key(pvk_key_id, "V2", false, want)?.key)?;
        let PinKey::Tdes(zpk) = self.pin_key(zpk_key_id, Use::Check)? else {
            return Err(Error::Auth);
        };
        let pin = paycrypto::decipher_format0(&zpk, block, pan).map_err(|_| Error::Auth)?;
        Ok((pvk, pin))
    }

    /// The Visa PVV of the PIN in a format 0 block.
    ///
    /// # Errors
    /// [`Error::Auth`] for a block that does not open or an unfit key; [`Error::BadRequest`]
    /// for a bad PAN or a PVKI outside 1-6.
    pub fn pvv_generate(&self, req: &m::PvvGenerate) -> Result<m::PvvValue, Error> {
        let pan = pan(&req.pan)?;
        let (pvk, pin) = self.pvv_inputs(
            &req.pvk_key_id,
            &req.zpk_key_id,
            &pan,
            &req.pin_block,
            Use::Make,
        )?;
        let pvv = paycrypto::pvv(&pvk, &pan, req.pvki, &pin)
            .map_err(|_| Error::BadRequest("the PVKI is 1-6".into()))?;
        Ok(m::PvvValue { pvv })
    }

    /// Verifies the PIN in a format 0 block against a PVV.
    ///
    /// # Errors
    /// [`Error::Auth`] for a wrong PIN, a block that does not open or an unfit key;
    /// [`Error::BadRequest`] for a bad PAN or a PVKI outside 1-6.
    pub fn pvv_verify(&self, req: &m::PvvVerify) -> Result<m::Empty, Error> {
        let pan = pan(&req.pan)?;
        let (pvk, pin) = self.pvv_inputs(
            &req.pvk_key_id,
            &req.zpk_key_id,
            &pan,
            &req.pin_block,
            Use::Check,
        )?;
        let ok = paycrypto::verify_pvv(&pvk, &pan, req.pvki, &pin, &req.pvv)
            .map_err(|_| Error::BadRequest("the PVKI is 1-6".into()))?;
        if ok {
            Ok(m::Empty {})
        } else {
            Err(Error::Auth)
        }
    }

    /// Seals a PAN, alone or with its expiry as `PAN=YYMM`, for storage (`PanSeal`): IV (16) ‖
    /// AES-256-CBC ciphertext ‖ HMAC-SHA-256 tag (32) over IV and ciphertext, under keys
    /// derived from the LMK for this use alone.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for anything that is not 12-19 digits, optionally followed by `=`
    /// and four digits.
    pub fn pan_seal(&self, req: &m::PanSeal) -> Result<m::SealedPan, Error> {
        sealable(&req.pan)?;
        let (enc, mac) = &self.pan_seal_keys;
        let mut iv = [0u8; 16];
        self.hsm.random(&mut iv)?;
        let ciphertext = crate::crypto::cbc_encrypt(&enc[..], &iv, req.pan.expose())?;
        let mut sealed = Vec::with_capacity(16 + ciphertext.len() + 32);
        sealed.extend_from_slice(&iv);
        sealed.extend_from_slice(&ciphertext);
        let tag = crate::crypto::hmac(&mac[..], &sealed)?;
        sealed.extend_from_slice(&tag);
        Ok(m::SealedPan { sealed })
    }

    /// Opens a PAN sealed by [`Self::pan_seal`]. The tag is checked (in constant time) before
    /// anything is decrypted.
    ///
    /// # Errors
    /// [`Error::Auth`] for every blob that does not open to a PAN (with or without expiry).
    pub fn pan_open(&self, req: &m::PanOpen) -> Result<m::PanValue, Error> {
        let (enc, mac) = &self.pan_seal_keys;
        let split = req.sealed.len().checked_sub(32).ok_or(Error::Auth)?;
        let (body, tag) = req.sealed.split_at(split);
        crate::crypto::verify_hmac(&mac[..], body, tag)?;
        let (iv, ciphertext) = body.split_first_chunk::<16>().ok_or(Error::Auth)?;
        let clear = crate::crypto::cbc_decrypt(&enc[..], iv, ciphertext)?;
        let secret = Secret::new(&clear);
        sealable(&secret).map_err(|_| Error::Auth)?;
        Ok(m::PanValue { pan: secret })
    }
}

/// Largest inflated envelope plaintext read for its card (the API's own limit, 32 KiB).
const MAX_INFLATED: u64 = 32 * 1024;

/// A gzip envelope plaintext inflated, or `None` if it is not gzip or passes the limit.
fn gunzip(bytes: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    use std::io::Read;
    let mut out = Zeroizing::new(Vec::new());
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_INFLATED + 1)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() as u64 <= MAX_INFLATED).then_some(out)
}

/// The encrypted card and PIN block of a POS charge's inner JSON: the only members keyd reads.
struct SentCard {
    iv: [u8; 16],
    ciphertext: Vec<u8>,
    pin_block: Option<Zeroizing<Vec<u8>>>,
}

impl SentCard {
    /// `None` when the JSON, the card or its hex is not what a well-formed charge holds: the
    /// caller then reads the body itself and says what is wrong in the contract's order.
    fn read(inner: &[u8]) -> Option<Self> {
        use std::borrow::Cow;
        #[derive(serde::Deserialize)]
        struct Charge<'a> {
            #[serde(borrow)]
            card: Card<'a>,
            #[serde(borrow, default)]
            pin_block: Option<Cow<'a, str>>,
        }
        #[derive(serde::Deserialize)]
        struct Card<'a> {
            #[serde(borrow)]
            data: Cow<'a, str>,
            #[serde(borrow)]
            iv: Cow<'a, str>,
        }
        let charge: Charge<'_> = serde_json::from_slice(inner).ok()?;
        let iv = hex::decode(charge.card.iv.as_bytes())
            .ok()?
            .try_into()
            .ok()?;
        let ciphertext = hex::decode(charge.card.data.as_bytes()).ok()?;
        let pin_block = match charge.pin_block {
            None => None,
            Some(text) => Some(Zeroizing::new(hex::decode(text.as_bytes()).ok()?)),
        };
        Some(Self {
            iv,
            ciphertext,
            pin_block,
        })
    }
}
