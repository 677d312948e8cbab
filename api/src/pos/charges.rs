//! The POS charge calls (contract sections 4, 5 and 8): signature, window, nonce, device state,
//! envelope — in that order — then the charge engine, with every answer sealed under the MSK.
//!
//! The common case costs one keyd call before the charge engine: when every check that needs
//! no key passes, keyd verifies the signature and opens the envelope together (`ChargeOpen`),
//! and for a new charge also decrypts the card inside it and translates its PIN block
//! (`ChargeOpenCard`). Only when something fails is the signature verified on its own, so that
//! a bad signature is reported as such whatever else is wrong; a card keyd could not open is
//! asked for again after the body's own checks, which say what is wrong with it.

use keyd_proto::message::{
    CardDecrypt, CardDecryptPin, ChargeOpen, ChargeOpenCard, MacItem, MacVerifyBatch,
};
use keyd_proto::{Secret, Status};
use serde_json::{Map, Value};

use crate::domain::charges::{self, CardInput, Charge, NewCharge};
use crate::domain::idem::{self, Begin, Running};
use crate::domain::model::{Device, DeviceStatus, KeySetRef, Merchant};
use crate::domain::processor::{self, Pan, PinBlock};
use crate::domain::replay::NonceWrites;
use crate::error::{ApiError, Code};
use crate::keyd::KeydError;
use crate::pos::envelope::{self, Sealed};
use crate::pos::{self, KEY_SET_GRACE, Terminals, bad_signature, required, signature, timestamp};
use crate::request::Call;

use crate::store::Write;
use crate::wire::body::{self, Text};
use crate::wire::fields::{
    Ciphertext, EmvData, Iv, Money, MoneyOrZero, PinBlockHex, tip_in_currency,
};
use crate::wire::ids;

/// A request whose signature, window, nonce and device state have passed.
#[derive(Debug)]
pub(super) struct Signed {
    pub(super) device: Device,
    pub(super) set: KeySetRef,
    terminal_id: String,
    /// The nonce's durable record, committed with the request's writes (or alone).
    pub(super) nonce: Option<NonceWrites>,
    /// The opened envelope, for calls with a body.
    pub(super) inner: Option<(Map<String, Value>, Vec<u8>)>,
    /// The card of a new charge, when keyd opened it with the envelope.
    card: Option<OpenedCard>,
}

/// A card keyd decrypted in the round trip that opened its charge.
struct OpenedCard {
    plaintext: Secret,
    pan_fingerprint: [u8; 32],
    /// Under the processor's ZPK; empty if no PIN was asked for or it did not translate.
    pin_block: Vec<u8>,
}

impl std::fmt::Debug for OpenedCard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenedCard(..)")
    }
}

/// What the fast path asks of keyd with the signature and the envelope.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Open {
    /// The envelope only.
    Envelope,
    /// The envelope, and the card of the charge inside it.
    Charge,
}

struct Headers<'c> {
    terminal_id: &'c str,
    key_id: &'c str,
    ts_text: &'c str,
    nonce: &'c str,
    sig: [u8; 32],
    device_id: Option<&'c str>,
}

fn headers<'c>(call: &'c Call<'_>) -> Result<Headers<'c>, ApiError> {
    let terminal_id = required(call, "x-terminal-id", |t| {
        t.len() == 10 && t.starts_with("TID-") && t.bytes().skip(4).all(|c| c.is_ascii_digit())
    })?;
    let key_id = required(call, "x-key-id", |k| (1..=128).contains(&k.len()))?;
    let ts_text = required(call, "x-timestamp", |t| timestamp(t).is_some())?;
    let nonce = required(call, "x-nonce", crate::domain::replay::valid_nonce)?;
    let sig = signature(required(call, "x-signature", |s| signature(s).is_some())?)
        .ok_or_else(bad_signature)?;
    let device_id = match call.header("x-device-id") {
        None => None,
        Some(d) if ids::is_device_id(d) => Some(d),
        Some(_) => {
            return Err(ApiError::new(
                Code::HeaderInvalid,
                "header X-Device-Id is malformed",
            ));
        }
    };
    Ok(Headers {
        terminal_id,
        key_id,
        ts_text,
        nonce,
        sig,
        device_id,
    })
}

/// The key set whose MAC key signed: the current one, or the previous one within a day of
/// its successor's delivery.
fn signing_set(device: &Device, key_id: &str, now: i64) -> Option<KeySetRef> {
    let current = device.key_set.as_ref()?;
    if current.mac_key_id == key_id {
        return Some(current.clone());
    }
    device
        .previous_key_set
        .as_ref()
        .filter(|p| p.mac_key_id == key_id && now < current.delivered_at + KEY_SET_GRACE)
        .cloned()
}

async fn verify_only(
    app: &Terminals<'_>,
    key_id: &str,
    message: &[u8],
    sig: [u8; 32],
) -> Result<(), ApiError> {
    let verdict = app
        .keyd
        .call(&MacVerifyBatch {
            items: vec![MacItem {
                key_id: key_id.to_owned(),
                message: message.to_vec(),
                signature: sig,
            }],
        })
        .await;
    match verdict {
        Ok(v) if v.valid.first() == Some(&true) => Ok(()),
        Ok(_) | Err(KeydError::Refused(_)) => Err(bad_signature()),
        Err(KeydError::Unavailable) => Err(KeydError::unavailable()),
    }
}

/// Checks a signed POS call in the contract's order and opens its envelope. `check_version`
/// is false only where an app too old to charge must still be answered (the update check).
pub(super) async fn signed(
    app: &Terminals<'_>,
    call: &Call<'_>,
    method: &str,
    path: &str,
    with_body: Option<Open>,
    check_version: bool,
) -> Result<Signed, ApiError> {
    pos::pos_headers(app, call, check_version)?;
    let h = headers(call)?;
    let Some(device_id) = app.db.owner("terminal_id", h.terminal_id).await? else {
        return Err(bad_signature());
    };
    let device: Device = app.db.get(&device_id).await?.ok_or_else(bad_signature)?;
    if h.device_id.is_some_and(|d| d != device.device_id) {
        return Err(bad_signature());
    }
    let set = signing_set(&device, h.key_id, call.now).ok_or_else(bad_signature)?;
    let mut message = format!(
        "{}\n{}\n{}\n{}\n{method}\n{path}\n",
        h.terminal_id, h.key_id, h.ts_text, h.nonce
    )
    .into_bytes();
    message.extend_from_slice(&call.body);
    let ts = timestamp(h.ts_text).unwrap_or_default();
    let in_window = (call.now - ts).abs() <= 300;
    let unused = app.replay.unused(h.terminal_id, h.nonce, call.now);
    let active = device.status == DeviceStatus::Activated;
    let mut parsed: Option<Result<Sealed, ApiError>> =
        with_body.map(|_| envelope::parse(&call.body, &set.msk_kcv));
    // Fast path: one keyd call verifies and opens. The message and the ciphertext move into
    // the request and back out of it for the slow path: neither is copied.
    if in_window
        && unused
        && active
        && let Some(Ok(sealed)) = &mut parsed
    {
        // Each branch hands the moved buffers back with its answer.
        let (opened, sent_message, sent_ciphertext) = if with_body == Some(Open::Charge) {
            let (tpk_key_id, zpk_key_id) = pin_key_ids(app, &set).unwrap_or_default();
            let request = ChargeOpenCard {
                mac_key_id: set.mac_key_id.clone(),
                message: std::mem::take(&mut message),
                signature: h.sig,
                msk_key_id: set.msk_key_id.clone(),
                iv: sealed.iv,
                ciphertext: std::mem::take(&mut sealed.ciphertext),
                gzip: sealed.gzip,
                tdk_key_id: set.tdk_key_id.clone(),
                tpk_key_id,
                zpk_key_id,
            };
            let answer = app.keyd.call(&request).await.map(|c| {
                let card = c.card_opened.then_some(OpenedCard {
                    plaintext: c.card,
                    pan_fingerprint: c.pan_fingerprint,
                    pin_block: c.pin_block,
                });
                (c.plaintext, card)
            });
            (answer, request.message, request.ciphertext)
        } else {
            let request = ChargeOpen {
                mac_key_id: set.mac_key_id.clone(),
                message: std::mem::take(&mut message),
                signature: h.sig,
                msk_key_id: set.msk_key_id.clone(),
                iv: sealed.iv,
                ciphertext: std::mem::take(&mut sealed.ciphertext),
            };
            let answer = app.keyd.call(&request).await.map(|p| (p.plaintext, None));
            (answer, request.message, request.ciphertext)
        };
        message = sent_message;
        sealed.ciphertext = sent_ciphertext;
        match opened {
            Ok((plaintext, card)) => {
                let nonce = app.replay.take(h.terminal_id, h.nonce, call.now)?;
                let mut signed = Signed {
                    device,
                    set,
                    terminal_id: h.terminal_id.to_owned(),
                    nonce: Some(nonce),
                    inner: None,
                    card,
                };
                match envelope::inner(plaintext.expose(), sealed.gzip) {
                    Ok(inner) => signed.inner = Some(inner),
                    Err(e) => {
                        commit_nonce(app, &mut signed).await;
                        return Err(e);
                    }
                }
                return Ok(signed);
            }
            Err(KeydError::Unavailable) => return Err(KeydError::unavailable()),
            // The signature or the envelope: the slow path below tells which.
            Err(KeydError::Refused(_)) => {}
        }
    }
    verify_only(app, h.key_id, &message, h.sig).await?;
    if !in_window {
        return Err(ApiError::new(
            Code::TimestampWindow,
            "X-Timestamp outside the window",
        ));
    }
    let nonce = app.replay.take(h.terminal_id, h.nonce, call.now)?;
    let mut signed = Signed {
        device,
        set,
        terminal_id: h.terminal_id.to_owned(),
        nonce: Some(nonce),
        inner: None,
        card: None,
    };
    let rest = async {
        if !active {
            return Err(ApiError::new(
                Code::DeviceState,
                "the device is not activated",
            ));
        }
        match parsed {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(sealed)) => envelope::open(app.keyd, &sealed, &signed.set.msk_key_id)
                .await
                .map(Some),
        }
    }
    .await;
    match rest {
        Ok(inner) => {
            signed.inner = inner;
            Ok(signed)
        }
        Err(e) => {
            commit_nonce(app, &mut signed).await;
            Err(e)
        }
    }
}

/// Makes a used nonce durable when the request writes nothing else.
pub(super) async fn commit_nonce(app: &Terminals<'_>, signed: &mut Signed) {
    if let Some(w) = signed.nonce.take() {
        let _ = app
            .db
            .commit(w.into(), ApiError::new(Code::Conflict, "nonce"))
            .await;
    }
}

/// Runs a signed call's body under its `Idempotency-Key` (scoped to the terminal), seals the
/// answer, and makes the nonce durable whatever happens.
async fn run<'a, F, Fut>(
    app: &'a Terminals<'a>,
    call: &Call<'_>,
    path: &str,
    mut signed: Signed,
    body: F,
) -> Result<Value, ApiError>
where
    F: FnOnce(Signed, Option<Running<'a>>) -> Fut,
    Fut: Future<Output = (Option<Write>, Result<Reply, ApiError>)>,
{
    let key = match idem::key_header(call.headers) {
        Ok(k) => k,
        Err(e) => {
            commit_nonce(app, &mut signed).await;
            return Err(e);
        }
    };
    let msk = signed.set.msk_key_id.clone();
    let begin = match &key {
        None => None,
        Some(k) => {
            // The request's identity under the key is its decrypted body, read in place.
            let plaintext = signed
                .inner
                .as_ref()
                .map_or(&[][..], |(_, raw)| raw.as_slice());
            let begun = app
                .idempotency
                .begin(
                    app.db,
                    &signed.terminal_id,
                    "POST",
                    path,
                    k,
                    plaintext,
                    call.now,
                )
                .await;
            match begun {
                Ok(b) => Some(b),
                Err(e) => {
                    commit_nonce(app, &mut signed).await;
                    return Err(e);
                }
            }
        }
    };
    let (leftover, answer) = match begin {
        Some(Begin::Replay(kept)) => {
            commit_nonce(app, &mut signed).await;
            return if kept.status < 300 {
                envelope::seal(app.keyd, &msk, &kept.body).await
            } else {
                Err(ApiError::from_stored(&kept.body))
            };
        }
        Some(Begin::Run(running)) => body(signed, Some(running)).await,
        None => body(signed, None).await,
    };
    if let Some(w) = leftover {
        let _ = app
            .db
            .commit(vec![w], ApiError::new(Code::Conflict, "nonce"))
            .await;
    }
    match answer? {
        Reply::Text(text) => envelope::seal_text(app.keyd, &msk, text).await,
        Reply::Sealed(sealed) => Ok(sealed),
    }
}

/// A POS answer as JSON text, to be sealed (wiped when dropped: it holds card data).
type Answer = zeroize::Zeroizing<Vec<u8>>;

/// What a call's body answers: text for [`run`] to seal, or an envelope it sealed itself
/// (a new charge seals beside its last commit, see [`charges::create_with`]).
enum Reply {
    Text(Answer),
    Sealed(Value),
}

/// Keeps a final error under the key (with the nonce) and passes it on.
async fn fail(
    app: &Terminals<'_>,
    nonce: Option<NonceWrites>,
    running: Option<&Running<'_>>,
    e: ApiError,
    now: i64,
) -> (Option<Write>, Result<Reply, ApiError>) {
    let mut writes: Vec<Write> = nonce.into_iter().flatten().collect();
    if let Some(r) = running.filter(|_| idem::is_final(&e))
        && let Ok(w) = r.keep_error(&e, now)
    {
        writes.push(w);
    }
    if !writes.is_empty() {
        let _ = app
            .db
            .commit(writes, ApiError::new(Code::Conflict, "keep"))
            .await;
    }
    (None, Err(e))
}

/// `POST /pos/charge`.
pub async fn create(app: &Terminals<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let path = "/pos/charge";
    let signed = signed(app, call, "POST", path, Some(Open::Charge), true).await?;
    run(app, call, path, signed, |mut s, running| async move {
        let nonce = s.nonce.take();
        let (inner, _) = s.inner.take().unwrap_or_default();
        let new = match charge_input(app, &mut s, inner).await {
            Ok(n) => n,
            Err(e) => return fail(app, nonce, running.as_ref(), e, call.now).await,
        };
        let (keyd, msk) = (app.keyd, s.set.msk_key_id.clone());
        let result = charges::create_with(
            app.charges,
            new,
            nonce.into_iter().flatten().collect(),
            running.as_ref(),
            call.now,
            |c: &Charge| {
                let text = c.to_json_text();
                async move { envelope::seal_text(keyd, &msk, text?).await }
            },
        )
        .await
        .map(|(_, sealed)| Reply::Sealed(sealed));
        (None, result)
    })
    .await
}

crate::enum_field! {
    /// How the card was read.
    pub enum EntryMode {
        Chip = "chip",
        Contactless = "contactless",
        Swipe = "swipe",
        Manual = "manual",
    }
}

crate::body! {
    /// Card data as the terminal encrypted it under its TDK.
    #[derive(Debug)]
    pub struct EncryptedCard {
        /// AES-CBC ciphertext of the card JSON, hex.
        pub data: Ciphertext,
        /// Its IV, hex.
        pub iv: Iv,
    }
}

crate::body! {
    /// The decrypted payload of `POST /pos/charge` (contract section 8).
    #[derive(Debug)]
    pub struct PosCharge {
        /// The amount, in the merchant's currency.
        pub amount: Money,
        /// A tip on top, in the same currency.
        pub tip: Option<MoneyOrZero>,
        /// How the card was read.
        pub entry_mode: EntryMode,
        /// The card, encrypted under the TDK.
        pub card: EncryptedCard,
        /// EMV data, hex TLV (checked for form only).
        pub emv_data: Option<EmvData>,
        /// The terminal's own reference.
        pub reference: Option<Text<128>>,
        /// The cardholder's PIN: ISO 9564-1 format 4 under the terminal's TPK (spec 12.2).
        pub pin_block: Option<PinBlockHex>,
    }
}

/// Spec 12.2: chip and swipe may carry a PIN; contactless only above the contactless limit;
/// manual entry never.
fn pin_allowed(charge: &PosCharge, problems: &mut body::Problems) {
    if charge.pin_block.is_none() {
        return;
    }
    let why = match charge.entry_mode {
        EntryMode::Chip | EntryMode::Swipe => return,
        EntryMode::Contactless if charge.amount.value > charges::CONTACTLESS_LIMIT => return,
        EntryMode::Contactless => {
            "a contactless charge carries a PIN only above the contactless limit"
        }
        EntryMode::Manual => "a manually entered card carries no PIN",
    };
    problems.fail_member("pin_block", why);
}

/// Validates the decrypted charge and opens the card data in keyd.
async fn charge_input(
    app: &Terminals<'_>,
    s: &mut Signed,
    inner: Map<String, Value>,
) -> Result<NewCharge, ApiError> {
    let merchant: Merchant = app.db.find(&s.device.merchant_id).await?;
    let PosCharge {
        amount,
        tip,
        entry_mode,
        card,
        reference,
        pin_block,
        emv_data,
    } = body::from_value_checked(Value::Object(inner), |b: &PosCharge, p| {
        tip_in_currency(&b.amount, b.tip.as_ref(), p);
        pin_allowed(b, p);
    })?;
    let tip = tip.map(|t| t.0);
    charges::check_total(&amount, tip.as_ref())?;
    if amount.currency != merchant.currency {
        return Err(ApiError::field(
            "amount.currency",
            "must be the merchant's currency",
        ));
    }
    let (data, iv) = (card.data, card.iv);
    let unreadable = || ApiError::field("card.data", "cannot be decrypted or read");
    let iv: [u8; 16] = crate::wire::unhex_array(iv.as_bytes()).ok_or_else(unreadable)?;
    let ciphertext = crate::wire::unhex(data.as_bytes()).unwrap_or_default();
    // With a PIN, keyd translates it in the same round trip that decrypts the card, bound to
    // that card's PAN (spec 12.2); the keys are looked up first, their absence reported after
    // the card's own checks, as before.
    let keys_for_pin = pin_block.as_ref().map(|_| pin_keys(app, s));
    let opened = match (s.card.take(), &pin_block, &keys_for_pin) {
        // Opened with the envelope; its PIN block was translated there iff one was sent and
        // the keys exist (the same JSON, the same keys).
        (Some(card), _, keys) => Ok((
            card.plaintext,
            card.pan_fingerprint,
            matches!(keys, Some(Ok(_))).then_some(card.pin_block),
        )),
        (None, Some(block), Some(Ok((tpk, zpk)))) => app
            .keyd
            .call(&CardDecryptPin {
                tdk_key_id: s.set.tdk_key_id.clone(),
                iv,
                ciphertext,
                tpk_key_id: tpk.clone(),
                zpk_key_id: zpk.clone(),
                pin_block: crate::wire::unhex(block.expose().as_bytes()).unwrap_or_default(),
            })
            .await
            .map(|c| (c.plaintext, c.pan_fingerprint, Some(c.pin_block))),
        (None, ..) => app
            .keyd
            .call(&CardDecrypt {
                tdk_key_id: s.set.tdk_key_id.clone(),
                iv,
                ciphertext,
            })
            .await
            .map(|c| (c.plaintext, c.pan_fingerprint, None)),
    };
    let (plaintext, pan_fingerprint, translated) = match opened {
        Ok(c) => c,
        Err(KeydError::Refused(Status::AUTH_FAILED | Status::BAD_REQUEST)) => {
            return Err(unreadable());
        }
        Err(KeydError::Refused(s)) => {
            return Err(ApiError::internal(&format!(
                "keyd refused card decrypt: {s}"
            )));
        }
        Err(KeydError::Unavailable) => return Err(KeydError::unavailable()),
    };
    // Borrowed from keyd's plaintext buffer, which is wiped on drop; the one owned copy is the
    // `Pan` handed to the processor, also wiped.
    #[derive(serde::Deserialize)]
    struct Clear<'a> {
        #[serde(borrow)]
        pan: &'a str,
        exp_month: u8,
        exp_year: u16,
    }
    let clear: Clear<'_> = serde_json::from_slice(plaintext.expose()).map_err(|_| unreadable())?;
    if !(1..=12).contains(&clear.exp_month) {
        return Err(unreadable());
    }
    if !processor::luhn_ok(clear.pan) {
        return Err(ApiError::field("card.pan", "fails the Luhn check"));
    }
    let pin_block = match keys_for_pin {
        None => None,
        Some(Err(e)) => return Err(e),
        // Every way the block can fail (not under this terminal's TPK, not a format 4 PIN
        // field, bound to another card) is keyd's one empty answer, and our one 400.
        Some(Ok(_)) => Some(
            PinBlock::new(&translated.unwrap_or_default())
                .ok_or_else(|| ApiError::field("pin_block", "is not a PIN block for this card"))?,
        ),
    };
    Ok(NewCharge {
        merchant,
        amount,
        tip,
        card: CardInput {
            pan: Pan::new(clear.pan.to_owned()),
            exp_month: clear.exp_month,
            exp_year: clear.exp_year,
            fingerprint: hex::encode_upper(pan_fingerprint),
            entry_mode: entry_mode.as_str().to_owned(),
            pin_block,
        },
        reference: reference.map(String::from),
        description: None,
        metadata: Map::new(),
        location_id: s.device.location_id.clone(),
        terminal_id: Some(s.terminal_id.clone()),
        emv_data: emv_data.map(String::from),
    })
}

/// The keys a terminal's PIN block is translated between: its TPK and the processor's zone
/// PIN key. A processor that takes no PIN is 400 on `pin_block`; a key set from before TPKs
/// existed is told to fetch keys again.
fn pin_keys(app: &Terminals<'_>, s: &Signed) -> Result<(String, String), ApiError> {
    pin_key_ids(app, &s.set)
}

/// [`pin_keys`] for a key set.
fn pin_key_ids(app: &Terminals<'_>, set: &KeySetRef) -> Result<(String, String), ApiError> {
    let Some(zpk) = app.charges.processor.pin_key() else {
        return Err(ApiError::field(
            "pin_block",
            "the configured processor takes no PIN",
        ));
    };
    let Some(tpk) = &set.tpk_key_id else {
        return Err(ApiError::new(
            Code::DeviceState,
            "the device's key set has no PIN key; fetch keys again (POST /pos/keys)",
        ));
    };
    Ok((tpk.clone(), zpk.to_owned()))
}

/// A charge of the terminal's own merchant, else 404.
async fn own_charge(app: &Terminals<'_>, s: &Signed, id: &str) -> Result<Charge, ApiError> {
    if !ids::is_prefixed(id, "ch_", 20) {
        return Err(ApiError::not_found());
    }
    match app.db.get::<Charge>(id).await? {
        Some(c) if c.merchant_id == s.device.merchant_id => Ok(c),
        _ => Err(ApiError::not_found()),
    }
}

/// `POST /pos/charge/{id}/refund`.
pub async fn refund(app: &Terminals<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let path = format!("/pos/charge/{}/refund", call.param(0));
    let signed = signed(app, call, "POST", &path, Some(Open::Envelope), true).await?;
    run(app, call, &path, signed, |mut s, running| async move {
        let nonce = s.nonce.take();
        let (inner, _) = s.inner.take().unwrap_or_default();
        let checked = async {
            let charge = own_charge(app, &s, call.param(0)).await?;
            let (amount, reason) = crate::request::refund_body(inner)?;
            Ok((charge, amount, reason))
        }
        .await;
        let (charge, amount, reason) = match checked {
            Ok(x) => x,
            Err(e) => return fail(app, nonce, running.as_ref(), e, call.now).await,
        };
        let result = charges::refund(
            app.charges,
            &charge.charge_id,
            amount,
            reason,
            nonce.into_iter().flatten().collect(),
            running.as_ref(),
            call.now,
        )
        .await
        .and_then(|r| r.to_json_text())
        .map(Reply::Text);
        (None, result)
    })
    .await
}

/// `POST /pos/charge/{id}/cancel` and `…/reverse` (empty body).
pub async fn cancel(app: &Terminals<'_>, call: &Call<'_>, verb: &str) -> Result<Value, ApiError> {
    let path = format!("/pos/charge/{}/{verb}", call.param(0));
    let signed = signed(app, call, "POST", &path, None, true).await?;
    run(app, call, &path, signed, |mut s, running| async move {
        let nonce = s.nonce.take();
        let charge = match own_charge(app, &s, call.param(0)).await {
            Ok(c) => c,
            Err(e) => return fail(app, nonce, running.as_ref(), e, call.now).await,
        };
        let result = charges::cancel(
            app.charges,
            &charge.charge_id,
            nonce.into_iter().flatten().collect(),
            running.as_ref(),
            call.now,
        )
        .await
        .and_then(|c| c.to_json_text())
        .map(Reply::Text);
        (None, result)
    })
    .await
}
