//! The payment processor seam (contract section 8, **Processor**) and the embedded simulator.
//!
//! The charge engine talks to a processor only through [`Processor`], so a real acquirer
//! connector can replace the [`Simulator`] without touching the engine. The PAN crosses this
//! seam exactly once, inside an [`AuthorizationRequest`], and lives only as long as that call:
//! [`Pan`] zeroizes its buffer on drop, cannot be cloned and never prints more than its last
//! four digits. Refunds and voids name the charge by the processor's own reference instead.
//!
//! The card helpers [`luhn_ok`] and [`brand`] are here because they are facts about card
//! numbers that both the engine (validation, the stored `brand`) and the simulator need.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use std::sync::Arc;

use acqlink::testcards::{self, CardRule};
use keyd_proto::Status;
use keyd_proto::message::PvvVerify;
use zeroize::Zeroizing;

use crate::error::ApiError;
use crate::keyd::{Keyd, KeydError};

pub mod iso8583;

/// Whether `pan` is a plausible card number: 12 to 19 ASCII digits with a valid Luhn check
/// digit. The platform refuses anything else with 400/`4000` before a processor is asked, so
/// a typo costs a round trip to no one.
pub use crate::wire::fields::luhn_ok;

/// The card brand by BIN, as the contract names it: `4` → `visa`; `51`–`55` and
/// `2221`–`2720` → `mastercard`; `34`, `37` → `amex`; `6011`, `65` → `discover`; anything
/// else (including input that does not start with digits) → `unknown`. Only the leading
/// digits are looked at, so the stored brand never depends on the rest of the number.
pub fn brand(pan: &str) -> &'static str {
    let prefix = |n: usize| -> Option<u32> {
        let head = pan.get(..n)?;
        if head.bytes().all(|b| b.is_ascii_digit()) {
            head.parse().ok()
        } else {
            None
        }
    };
    if prefix(1) == Some(4) {
        return "visa";
    }
    if let Some(p2) = prefix(2) {
        if (51..=55).contains(&p2) {
            return "mastercard";
        }
        if p2 == 34 || p2 == 37 {
            return "amex";
        }
        if p2 == 65 {
            return "discover";
        }
    }
    if let Some(p4) = prefix(4) {
        if (2221..=2720).contains(&p4) {
            return "mastercard";
        }
        if p4 == 6011 {
            return "discover";
        }
    }
    "unknown"
}

/// A primary account number held only for the duration of a processor call.
///
/// The buffer is zeroized on drop so the clear PAN does not linger in freed memory; there is
/// deliberately no `Clone`, so the number cannot be copied around by accident, and `Debug`
/// shows only the last four digits so a request can be logged safely.
pub struct Pan(Zeroizing<String>);

impl Pan {
    /// Takes ownership of the clear number (the `String` is moved in, not copied, so the only
    /// copy is the one that will be zeroized).
    pub fn new(pan: String) -> Self {
        Self(Zeroizing::new(pan))
    }

    /// The clear number, for the processor's wire message and nothing else.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The last four characters (all of them if shorter): what the charge object may show.
    pub fn last4(&self) -> &str {
        let s = self.0.as_str();
        s.get(s.len().saturating_sub(4)..).unwrap_or("")
    }

    /// The first six characters (all of them if shorter): the BIN the charge object may show.
    pub fn bin(&self) -> &str {
        let s = self.0.as_str();
        s.get(..s.len().min(6)).unwrap_or("")
    }
}

impl From<String> for Pan {
    fn from(pan: String) -> Self {
        Self::new(pan)
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A short value would be given away entirely by its "last four", so only a real
        // card-number length earns the hint.
        if self.0.len() >= MIN_PAN_LEN {
            write!(f, "Pan(…{})", self.last4())
        } else {
            f.write_str("Pan(…)")
        }
    }
}

/// What the platform asks a processor to do for a new charge (authorize and capture).
///
/// The PAN lives only as long as the call; `Debug` redacts it. Not `Clone`, for the same
/// reason [`Pan`] is not.
#[derive(Debug)]
pub struct AuthorizationRequest {
    /// The platform's charge id (`ch_…`); processors key idempotency and codes on it.
    pub charge_id: String,
    /// The clear card number.
    pub pan: Pan,
    /// Card expiry month, 1–12.
    pub exp_month: u8,
    /// Card expiry year, four digits.
    pub exp_year: u16,
    /// What to authorize, in minor units: `amount` plus `tip`.
    pub amount: u64,
    /// `amount.value` alone, in minor units: the simulator's outcome rules look at this, not
    /// at [`Self::amount`], so a tip cannot change an outcome.
    pub base_amount: u64,
    /// ISO 4217 code of both amounts.
    pub currency: String,
    /// The merchant the charge belongs to.
    pub merchant_id: String,
    /// `chip`, `contactless`, `swipe` or `manual`.
    pub entry_mode: String,
    /// The cardholder's PIN, when the terminal took one: an ISO 9564-1 format 0 block under
    /// this processor's zone PIN key ([`Processor::pin_key`]), translated by keyd from the
    /// terminal's format 4 block. Never a clear PIN.
    pub pin_block: Option<PinBlock>,
    /// The terminal (`TID-…`), `None` for a backoffice charge.
    pub terminal_id: Option<String>,
    /// The merchant's card acceptor id on an acquirer link (DE 42).
    pub acquirer_mid: String,
    /// The terminal's EMV data (hex TLV) as it sent it, for an acquirer that takes it (DE 55).
    pub emv_data: Option<String>,
    /// What [`Processor::prepare`] fixed before the charge was recorded.
    pub prepared: Prepared,
}

/// What a processor fixes about an authorization before the engine records the charge
/// ([`Processor::prepare`]): the data it needs to reverse or refund the charge later (stored
/// with the charge, never shown), and whatever it holds for the request until it ends.
/// `Debug` leaves the data out (an acquirer link's holds the card's expiry and sealed PAN).
#[derive(Default)]
pub struct Prepared {
    /// Stored with the charge as `processor_data` and handed back in [`RefundRequest`] and
    /// [`VoidRequest`]. Opaque to the engine; never card data in clear.
    pub data: Option<serde_json::Value>,
    /// The processor's reference for the request, when it is fixed before the request is
    /// sent (an acquirer link's RRN): the charge shows it even when no answer came, so a
    /// failed charge can be traced at the acquirer.
    pub reference: Option<String>,
    /// Held for the request's life and dropped with it (an acquirer link's STAN reservation),
    /// so a request the engine abandons releases it.
    pub hold: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("data", &self.data.as_ref().map(|_| "…"))
            .field("reference", &self.reference)
            .field("hold", &self.hold.is_some())
            .finish()
    }
}

/// A format 0 PIN block under a processor's ZPK, as keyd translated it. Wiped on drop, redacted
/// in `Debug`, not `Clone`: enciphered, but the PIN of a card whose number travels beside it.
pub struct PinBlock(Zeroizing<[u8; 8]>);

impl PinBlock {
    /// Wraps the block keyd returned; `None` unless it is 8 bytes (format 0).
    pub fn new(bytes: &[u8]) -> Option<Self> {
        <[u8; 8]>::try_from(bytes)
            .ok()
            .map(|b| Self(Zeroizing::new(b)))
    }

    /// The block's bytes (for keyd and for DE 52).
    pub fn expose(&self) -> &[u8; 8] {
        &self.0
    }
}

impl fmt::Debug for PinBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PinBlock(…)")
    }
}

/// The answer to an authorization that reached a decision. A processor failure is not an
/// outcome but a [`ProcessorError`], because the engine records it differently (`failed`,
/// 502/`5020`) from a decline (`declined`, 200).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The issuer approved; ISO response code `00`.
    Approved {
        /// Six upper-case alphanumeric characters, as printed on receipts.
        authorization_code: String,
        /// The processor's id for this charge; refunds and voids name it.
        reference: String,
    },
    /// The issuer declined.
    Declined {
        /// The two-digit ISO 8583 response code (`05`, `51`, `54`, `91`, …).
        iso_response_code: String,
        /// The contract's word for it (`do_not_honor`, `insufficient_funds`, …).
        decline_code: String,
        /// The processor's id for this attempt, kept for disputes and support.
        reference: String,
    },
}

impl Outcome {
    /// The ISO response code the charge object shows: `00` for an approval.
    pub fn iso_response_code(&self) -> &str {
        match self {
            Self::Approved { .. } => "00",
            Self::Declined {
                iso_response_code, ..
            } => iso_response_code,
        }
    }

    /// The processor's reference, whatever the decision.
    pub fn reference(&self) -> &str {
        match self {
            Self::Approved { reference, .. } | Self::Declined { reference, .. } => reference,
        }
    }
}

/// Why a processor call produced no decision. Both variants map to 502/`5020` upstream; the
/// message never carries card data, since it may be logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProcessorError {
    /// The processor answered with an error or could not be reached.
    Failed(String),
    /// The processor did not answer in time.
    Timeout,
    /// The request cannot be put to this processor as it is (an EMV block too long for the
    /// link, a currency it does not know): 400 naming `field`, before anything is recorded.
    /// Only [`Processor::prepare`] answers it.
    Invalid {
        /// The request field at fault.
        field: &'static str,
        /// Why, for the caller.
        reason: String,
    },
}

impl fmt::Display for ProcessorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Failed(why) => write!(f, "processor failed: {why}"),
            Self::Timeout => f.write_str("processor timed out"),
            Self::Invalid { field, reason } => write!(f, "{field}: {reason}"),
        }
    }
}

impl std::error::Error for ProcessorError {}

/// A full or partial refund of an approved charge, named by the processor's reference (the
/// card is not needed again, so the platform does not keep it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundRequest {
    /// The platform's charge id.
    pub charge_id: String,
    /// The reference the processor gave the charge ([`Outcome::reference`]).
    pub processor_reference: String,
    /// What to give back, in minor units.
    pub amount: u64,
    /// ISO 4217 code; the charge's currency.
    pub currency: String,
    /// What [`Processor::prepare`] kept with the charge.
    pub processor_data: Option<serde_json::Value>,
}

/// Cancelling (reversing) a charge: an approved, unsettled one, or one whose outcome was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoidRequest {
    /// The platform's charge id.
    pub charge_id: String,
    /// The reference the processor gave the charge ([`Outcome::reference`]); empty when the
    /// outcome was lost.
    pub processor_reference: String,
    /// What [`Processor::prepare`] kept with the charge.
    pub processor_data: Option<serde_json::Value>,
    /// Why.
    pub reason: VoidReason,
}

/// Why a charge is voided, which decides what the caller needs to hear back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoidReason {
    /// The merchant cancels an approved charge: it becomes `cancelled` only once the processor
    /// has acknowledged the void.
    Cancel,
    /// Recovery resolves a charge whose outcome was never stored (the process died, or the
    /// store failed, after the processor may have approved it): the void only has to be sure
    /// to happen, so a processor that delivers voids durably may answer once it has recorded it.
    Lost,
}

/// A payment processor connector: the one seam between the charge engine and the outside
/// world of card payments. The methods return boxed futures so the trait stays object-safe
/// (`Arc<dyn Processor>` in the application state). Implementations enforce their own timeouts and report them as
/// [`ProcessorError::Timeout`].
pub trait Processor: Send + Sync + fmt::Debug {
    /// The name the charge object shows under `processor.name`.
    fn name(&self) -> &'static str;

    /// The keyd key id of the zone PIN key this processor takes PIN blocks under (spec 12.2:
    /// keyd translates the terminal's block to it before the call), or `None` when it takes
    /// no PIN, so that a charge with a PIN is refused before it is recorded.
    fn pin_key(&self) -> Option<&str> {
        None
    }

    /// Fixes what the processor needs about an authorization before the engine records the
    /// charge (see [`Prepared`]), so that a charge left `pending` by a crash can still be
    /// voided. The default needs nothing.
    fn prepare<'a>(
        &'a self,
        _req: &'a AuthorizationRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Prepared, ProcessorError>> + Send + 'a>> {
        Box::pin(async { Ok(Prepared::default()) })
    }

    /// Work the processor does on its own, run by housekeeping every few seconds from the
    /// start (an acquirer link resends the reversals a previous start left unacknowledged).
    fn housekeeping(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }

    /// The charges whose cancel this processor has sent but not yet seen acknowledged (an
    /// acquirer link's pending `0400`/`0401` reversals of approved charges). Settlement leaves
    /// them out of its batch: such a charge is on its way to `cancelled`, and settling it
    /// would have the cardholder both charged and reversed. Read under the charges' locks.
    /// The default has none.
    ///
    /// # Errors
    /// 503 when the processor's records cannot be read.
    fn cancels_pending(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<HashSet<String>, ApiError>> + Send + '_>> {
        Box::pin(async { Ok(HashSet::new()) })
    }

    /// Authorizes and captures a charge. Takes the request by value so the PAN is dropped
    /// (and zeroized) as soon as the call is over.
    fn authorize(
        &self,
        req: AuthorizationRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Outcome, ProcessorError>> + Send + '_>>;

    /// Refunds part or all of a charge; answers the processor's refund reference.
    fn refund(
        &self,
        req: RefundRequest,
    ) -> Pin<Box<dyn Future<Output = Result<String, ProcessorError>> + Send + '_>>;

    /// Voids (reverses) an unsettled charge.
    fn void(
        &self,
        req: VoidRequest,
    ) -> Pin<Box<dyn Future<Output = Result<(), ProcessorError>> + Send + '_>>;
}

/// The embedded processor: deterministic by card number and amount (contract section 8), so
/// tests and demos can ask for any outcome, with a configurable latency to make timing
/// behaviour observable.
#[derive(Clone, Debug)]
pub struct Simulator {
    latency: Duration,
    timeout: Duration,
    issuer: Option<Arc<IssuerKeys>>,
}

/// The simulator's issuer keys in keyd (spec 12.7), stored there by `keyd simulator-keys`:
/// its zone PIN key, which terminals' PIN blocks are translated to, and its PVK, with which
/// keyd checks the PIN against the PVV of the card. The simulator never sees a PIN.
#[derive(Debug)]
pub struct IssuerKeys {
    /// keyd, for `PvvVerify`.
    pub keyd: Keyd,
    /// The ZPK's key id in keyd.
    pub zpk: String,
    /// The PVK's key id in keyd.
    pub pvk: String,
}

/// The contract's decline word for an ISO response code (spec 12.6), `other` for any code it
/// does not name.
pub fn decline_code(iso: &str) -> &'static str {
    match iso {
        "05" => "do_not_honor",
        "51" => "insufficient_funds",
        "54" => "expired_card",
        "55" => "incorrect_pin",
        "75" => "pin_tries_exceeded",
        "91" => "issuer_unavailable",
        _ => "other",
    }
}

impl Simulator {
    /// A simulator that waits `latency` before every answer (zero: answers at once) and whose
    /// timeout card waits `timeout` before reporting [`ProcessorError::Timeout`].
    pub fn new(latency: Duration, timeout: Duration) -> Self {
        Self {
            latency,
            timeout,
            issuer: None,
        }
    }

    /// The same simulator acting as issuer for PINs: without issuer keys it takes no PIN.
    #[must_use]
    pub fn with_issuer(mut self, keys: IssuerKeys) -> Self {
        self.issuer = Some(Arc::new(keys));
        self
    }

    /// The decision for a request, after the latency, in the order an issuer takes them
    /// (the same as the acquirer host simulator's): the cards that fail or time out, then the
    /// PIN, then the card's own decline, then the amount rule.
    async fn decide(&self, req: AuthorizationRequest) -> Result<Outcome, ProcessorError> {
        pause(self.latency).await;
        let pan = req.pan.expose();
        if !luhn_ok(pan) {
            // The platform refuses a Luhn-invalid PAN before asking; this is only a backstop.
            return Err(ProcessorError::Failed("invalid card".to_owned()));
        }
        let (code, reference) = authorization_ids(&req.charge_id);
        let decline = |iso: &str| Outcome::Declined {
            iso_response_code: iso.to_owned(),
            decline_code: decline_code(iso).to_owned(),
            reference: reference.clone(),
        };
        let rule = testcards::rule(pan);
        match rule {
            CardRule::ProcessorError => {
                return Err(ProcessorError::Failed(
                    "simulated processor error".to_owned(),
                ));
            }
            CardRule::Timeout => {
                pause(self.timeout).await;
                return Err(ProcessorError::Timeout);
            }
            CardRule::Approve | CardRule::Decline(_) => {}
        }
        if let Some(block) = &req.pin_block
            && let Some(iso) = self.check_pin(&req.pan, block).await?
        {
            return Ok(decline(iso));
        }
        match rule {
            CardRule::Decline(iso) => Ok(decline(iso)),
            // Every other valid card would approve; the amount rule can still decline it.
            _ if testcards::amount_declines(req.base_amount) => Ok(decline("91")),
            _ => Ok(Outcome::Approved {
                authorization_code: code,
                reference,
            }),
        }
    }

    /// The issuer's PIN check: `None` when the PIN is right, else the decline code (`55` for
    /// a wrong PIN or a card it holds no PVV for, `75` on the card whose tries are used up).
    async fn check_pin(
        &self,
        pan: &Pan,
        block: &PinBlock,
    ) -> Result<Option<&'static str>, ProcessorError> {
        let Some(issuer) = &self.issuer else {
            // The engine only sends a PIN to a processor that named a PIN key.
            return Err(ProcessorError::Failed("no issuer keys".to_owned()));
        };
        if pan.expose() == testcards::PIN_BLOCKED_PAN {
            return Ok(Some("75"));
        }
        let Some(pvv) = testcards::TEST_CARDS
            .iter()
            .find(|(p, _)| *p == pan.expose())
            .and_then(|(_, pvv)| <[u8; 4]>::try_from(pvv.as_bytes()).ok())
        else {
            return Ok(Some("55"));
        };
        let verified = issuer
            .keyd
            .call(&PvvVerify {
                pvk_key_id: issuer.pvk.clone(),
                zpk_key_id: issuer.zpk.clone(),
                pan: keyd_proto::Secret::new(pan.expose().as_bytes()),
                pin_block: *block.expose(),
                pvki: testcards::PVKI,
                pvv,
            })
            .await;
        match verified {
            Ok(_) => Ok(None),
            Err(KeydError::Refused(Status::AUTH_FAILED)) => Ok(Some("55")),
            Err(_) => Err(ProcessorError::Failed(
                "the issuer's PIN check is unavailable".to_owned(),
            )),
        }
    }
}

impl Processor for Simulator {
    fn name(&self) -> &'static str {
        "simulator"
    }

    fn pin_key(&self) -> Option<&str> {
        self.issuer.as_ref().map(|i| i.zpk.as_str())
    }

    fn authorize(
        &self,
        req: AuthorizationRequest,
    ) -> Pin<Box<dyn Future<Output = Result<Outcome, ProcessorError>> + Send + '_>> {
        Box::pin(self.decide(req))
    }

    fn refund(
        &self,
        _req: RefundRequest,
    ) -> Pin<Box<dyn Future<Output = Result<String, ProcessorError>> + Send + '_>> {
        Box::pin(async move {
            pause(self.latency).await;
            // Random rather than derived: two equal partial refunds of one charge are still
            // two refunds and must not share a reference.
            let mut id = [0u8; 12];
            getrandom::fill(&mut id)
                .map_err(|_| ProcessorError::Failed("random source unavailable".to_owned()))?;
            Ok(format!("simr_{}", hex(&id)))
        })
    }

    fn void(
        &self,
        _req: VoidRequest,
    ) -> Pin<Box<dyn Future<Output = Result<(), ProcessorError>> + Send + '_>> {
        Box::pin(async move {
            pause(self.latency).await;
            Ok(())
        })
    }
}

/// Sleeps for `d`, or not at all when it is zero (not even a yield), so a zero-latency
/// simulator answers on the first poll.
async fn pause(d: Duration) {
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

/// The authorization code and reference for a charge: SHA-256 of the charge id, so a retried
/// request gets the same answer. The reference is `sim_` and the hex of the first 12 bytes;
/// the code is the next 8 bytes read as a number, written as 6 base-36 digits (the modulo
/// bias over 2^64 is immaterial, and the code is not a secret anyway).
fn authorization_ids(charge_id: &str) -> (String, String) {
    let digest = ring::digest::digest(&ring::digest::SHA256, charge_id.as_bytes());
    let bytes = digest.as_ref();
    let (head, rest) = bytes.split_at(bytes.len().min(12));
    let mut word = [0u8; 8];
    for (dst, src) in word.iter_mut().zip(rest) {
        *dst = *src;
    }
    let mut n = u64::from_be_bytes(word);
    let mut code = [b'0'; 6];
    for slot in code.iter_mut().rev() {
        // `n % 36` is below 36, so the conversion and the index always succeed.
        *slot = usize::try_from(n % 36)
            .ok()
            .and_then(|i| CODE_ALPHABET.get(i))
            .copied()
            .unwrap_or(b'0');
        n /= 36;
    }
    let code = code.iter().map(|&b| char::from(b)).collect();
    (code, format!("sim_{}", hex(head)))
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

const MIN_PAN_LEN: usize = 12;
const CODE_ALPHABET: &[u8; 36] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn req(pan: &str, base_amount: u64) -> AuthorizationRequest {
        AuthorizationRequest {
            charge_id: "ch_test0000000000000000001".to_owned(),
            pan: Pan::new(pan.to_owned()),
            exp_month: 12,
            exp_year: 2030,
            amount: base_amount + 200,
            base_amount,
            currency: "EUR".to_owned(),
            merchant_id: "m_1".to_owned(),
            entry_mode: "chip".to_owned(),
            pin_block: None,
            terminal_id: None,
            acquirer_mid: "900000000000001".to_owned(),
            emv_data: None,
            prepared: Prepared::default(),
        }
    }

    fn sim() -> Simulator {
        Simulator::new(Duration::ZERO, Duration::from_millis(50))
    }

    async fn outcome(pan: &str, base_amount: u64) -> Result<Outcome, ProcessorError> {
        sim().authorize(req(pan, base_amount)).await
    }

    fn declined(iso: &str, word: &str) -> impl Fn(&Outcome) -> bool {
        move |o| {
            matches!(o, Outcome::Declined { iso_response_code, decline_code, reference }
                if iso_response_code == iso && decline_code == word && reference.starts_with("sim_"))
        }
    }

    #[test]
    fn luhn() {
        for ok in [
            "4242424242424242",
            "5555555555554444",
            "378282246310005",
            "4000000000000002",
            "4000000000009995",
            "4000000000000069",
            "4000000000000119",
            "4000000000000259",
            "6011111111111117",
            "2223003122003222",
            "000000000000",
            "4000000000000000006", // 19 digits
        ] {
            assert!(luhn_ok(ok), "{ok}");
        }
        for bad in [
            "4242424242424241",
            "4242 4242 4242 4242",
            "424242424242424a",
            "",
            "00000000000",          // 11 digits
            "00000000000000000000", // 20 digits
            "+242424242424242",
            "４242424242424242",
        ] {
            assert!(!luhn_ok(bad), "{bad}");
        }
    }

    #[test]
    fn brands() {
        let cases = [
            ("4242424242424242", "visa"),
            ("4", "visa"),
            ("5055555555554444", "unknown"),
            ("5105105105105100", "mastercard"),
            ("5555555555554444", "mastercard"),
            ("5655555555554444", "unknown"),
            ("2220999999999999", "unknown"),
            ("2221000000000009", "mastercard"),
            ("2720999999999999", "mastercard"),
            ("2721000000000000", "unknown"),
            ("378282246310005", "amex"),
            ("340000000000009", "amex"),
            ("350000000000000", "unknown"),
            ("6011111111111117", "discover"),
            ("6012000000000000", "unknown"),
            ("6500000000000002", "discover"),
            ("6400000000000000", "unknown"),
            ("", "unknown"),
            ("22", "unknown"),
            ("a4", "unknown"),
            ("５1", "unknown"),
        ];
        for (pan, want) in cases {
            assert_eq!(brand(pan), want, "{pan}");
        }
    }

    #[tokio::test]
    async fn approving_cards() {
        for pan in [
            "4242424242424242",
            "5555555555554444",
            "378282246310005",
            "6011111111111117",
            "4111111111111111",
        ] {
            let o = outcome(pan, 1500).await.unwrap();
            let Outcome::Approved {
                authorization_code,
                reference,
            } = &o
            else {
                panic!("{pan}: {o:?}");
            };
            assert_eq!(authorization_code.len(), 6);
            assert!(
                authorization_code
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            );
            assert!(reference.starts_with("sim_") && reference.len() == 4 + 24);
            assert_eq!(o.iso_response_code(), "00");
        }
    }

    #[tokio::test]
    async fn codes_are_deterministic_by_charge() {
        let a = outcome("4242424242424242", 1500).await.unwrap();
        let b = outcome("5555555555554444", 700).await.unwrap();
        assert_eq!(a, b);
        let mut other = req("4242424242424242", 1500);
        other.charge_id = "ch_other".to_owned();
        let c = sim().authorize(other).await.unwrap();
        assert_ne!(a, c);
    }

    #[tokio::test]
    async fn declining_cards() {
        let cases = [
            ("4000000000000002", "05", "do_not_honor"),
            ("4000000000009995", "51", "insufficient_funds"),
            ("4000000000000069", "54", "expired_card"),
        ];
        for (pan, iso, word) in cases {
            // Also with an amount ending in 91: the card's own decline wins.
            for amount in [1500, 1591] {
                let o = outcome(pan, amount).await.unwrap();
                assert!(declined(iso, word)(&o), "{pan} {amount}: {o:?}");
                assert_eq!(o.iso_response_code(), iso);
            }
        }
    }

    #[tokio::test]
    async fn processor_error_card() {
        for amount in [1500, 91] {
            let e = outcome("4000000000000119", amount).await.unwrap_err();
            assert!(matches!(e, ProcessorError::Failed(_)));
            assert!(!e.to_string().contains("4000000000000119"));
        }
    }

    #[tokio::test]
    async fn amount_ending_in_91() {
        for amount in [91, 191, 1591, 100_091] {
            for pan in ["4242424242424242", "378282246310005", "4111111111111111"] {
                let o = outcome(pan, amount).await.unwrap();
                assert!(
                    declined("91", "issuer_unavailable")(&o),
                    "{pan} {amount}: {o:?}"
                );
            }
        }
        // The rule reads the base amount, not amount + tip, and needs the last two digits.
        for amount in [9, 19, 910, 1590, 1592, 0] {
            let o = outcome("4242424242424242", amount).await.unwrap();
            assert!(matches!(o, Outcome::Approved { .. }), "{amount}: {o:?}");
        }
        let mut r = req("4242424242424242", 1500);
        r.amount = 1591; // base 1500 + tip 91
        let o = sim().authorize(r).await.unwrap();
        assert!(matches!(o, Outcome::Approved { .. }));
    }

    #[tokio::test]
    async fn invalid_card_is_refused() {
        let e = outcome("4242424242424241", 1500).await.unwrap_err();
        assert_eq!(e, ProcessorError::Failed("invalid card".to_owned()));
    }

    #[tokio::test]
    async fn timeout_card_waits_the_timeout() {
        let s = Simulator::new(Duration::ZERO, Duration::from_millis(80));
        let start = Instant::now();
        let e = s
            .authorize(req("4000000000000259", 1500))
            .await
            .unwrap_err();
        assert_eq!(e, ProcessorError::Timeout);
        assert!(start.elapsed() >= Duration::from_millis(80));
        // And it really is pending until then.
        let early = tokio::time::timeout(
            Duration::from_millis(20),
            s.authorize(req("4000000000000259", 1500)),
        )
        .await;
        assert!(early.is_err());
    }

    #[tokio::test]
    async fn latency_applies_to_every_call() {
        let latency = Duration::from_millis(40);
        let s = Simulator::new(latency, Duration::from_millis(10));
        let start = Instant::now();
        s.authorize(req("4242424242424242", 1500)).await.unwrap();
        assert!(start.elapsed() >= latency);
        let start = Instant::now();
        s.authorize(req("4000000000000002", 1500)).await.unwrap();
        assert!(start.elapsed() >= latency);
        let start = Instant::now();
        let e = s
            .authorize(req("4000000000000259", 1500))
            .await
            .unwrap_err();
        assert_eq!(e, ProcessorError::Timeout);
        assert!(start.elapsed() >= latency + Duration::from_millis(10));
        let start = Instant::now();
        let refund = RefundRequest {
            charge_id: "ch_1".to_owned(),
            processor_reference: "sim_00".to_owned(),
            amount: 100,
            currency: "EUR".to_owned(),
            processor_data: None,
        };
        s.refund(refund).await.unwrap();
        assert!(start.elapsed() >= latency);
        let start = Instant::now();
        let void = VoidRequest {
            charge_id: "ch_1".to_owned(),
            processor_reference: "sim_00".to_owned(),
            processor_data: None,
            reason: VoidReason::Cancel,
        };
        s.void(void).await.unwrap();
        assert!(start.elapsed() >= latency);
    }

    #[tokio::test]
    async fn zero_latency_answers_on_first_poll() {
        // `timeout` polls the inner future before its timer: a zero deadline succeeds only if
        // the simulator answered without sleeping.
        let s = sim();
        let first = tokio::time::timeout(Duration::ZERO, s.authorize(req("4242424242424242", 1)));
        assert!(first.await.is_ok());
        // Long enough that no scheduling delay between creating its sleep and polling it can
        // make the sleep look over on the first poll (1 ms once did, on a loaded machine).
        let slow = Simulator::new(Duration::from_secs(10), Duration::ZERO);
        let first =
            tokio::time::timeout(Duration::ZERO, slow.authorize(req("4242424242424242", 1)));
        assert!(first.await.is_err());
        let void = VoidRequest {
            charge_id: "ch_1".to_owned(),
            processor_reference: "sim_00".to_owned(),
            processor_data: None,
            reason: VoidReason::Cancel,
        };
        assert!(
            tokio::time::timeout(Duration::ZERO, s.void(void))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn refunds_and_voids() {
        let s = sim();
        assert_eq!(s.name(), "simulator");
        let refund = || RefundRequest {
            charge_id: "ch_1".to_owned(),
            processor_reference: "sim_00".to_owned(),
            amount: 100,
            currency: "EUR".to_owned(),
            processor_data: None,
        };
        let a = s.refund(refund()).await.unwrap();
        let b = s.refund(refund()).await.unwrap();
        assert!(a.starts_with("simr_") && a.len() == 5 + 24, "{a}");
        assert_ne!(a, b);
        let void = VoidRequest {
            charge_id: "ch_1".to_owned(),
            processor_reference: "sim_00".to_owned(),
            processor_data: None,
            reason: VoidReason::Cancel,
        };
        assert_eq!(s.void(void).await, Ok(()));
    }

    #[test]
    fn debug_redacts_the_pan() {
        let r = req("4000000000009995", 1500);
        let shown = format!("{r:?} {r:#?} {:?}", r.pan);
        assert!(!shown.contains("4000000000009995"), "{shown}");
        assert!(!shown.contains("400000"), "{shown}");
        assert!(shown.contains("…9995"), "{shown}");
        assert_eq!(format!("{:?}", Pan::new("123".to_owned())), "Pan(…)");
        assert_eq!(r.pan.last4(), "9995");
        assert_eq!(r.pan.bin(), "400000");
        assert_eq!(r.pan.expose(), "4000000000009995");
        let mut r = req("4000000000009995", 1500);
        r.prepared = Prepared {
            data: Some(serde_json::json!({"sealed_pan": "C0FFEE", "expiry": "3012"})),
            reference: Some("633109000017".into()),
            hold: None,
        };
        let shown = format!("{r:?}");
        assert!(
            !shown.contains("C0FFEE") && !shown.contains("3012"),
            "{shown}"
        );
    }

    #[test]
    fn usable_as_a_trait_object() {
        let p: Arc<dyn Processor> = Arc::new(sim());
        assert_eq!(p.name(), "simulator");
        assert!(format!("{p:?}").contains("Simulator"));
    }
}
