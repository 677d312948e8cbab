//! The charge engine (contract section 8): one engine behind the POS calls (signed, enveloped)
//! and the backoffice calls (bearer, clear JSON over TLS).
//!
//! A charge is written as `pending` before the processor is asked, and as its outcome (with the
//! kept idempotent answer) after: a crash in between leaves a pending charge that is settled as
//! `failed` by recovery, never a charge the processor approved and the platform forgot.
//! Refunds and cancels of one charge run one at a time.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::domain::events::{self, EventType};
use crate::domain::idem::{self, Running};
use crate::domain::locks::Locks;
use crate::domain::model::{Amount, FeeTemplate, Merchant};
use crate::domain::processor::{
    self, AuthorizationRequest, Outcome, Pan, PinBlock, Processor, ProcessorError, RefundRequest,
    VoidReason, VoidRequest,
};
use crate::error::{ApiError, Code};
use crate::store::Write;
use crate::store::db::{self, Db, Record};
use crate::wire::fields::Money;
use crate::wire::ids;

pub mod recovery;

pub use recovery::{Boot, InFlight};

/// A charge's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    /// Written before the processor call; visible as such until the outcome is written, or
    /// until recovery fails a charge whose request was lost (see [`recovery`]).
    Pending,
    /// Authorised and captured.
    Approved,
    /// Refused by the issuer.
    Declined,
    /// The processor failed or timed out.
    Failed,
    /// Voided before settlement.
    Cancelled,
    /// In a settlement batch.
    Settled,
    /// Refunded in part.
    PartiallyRefunded,
    /// Refunded in full.
    Refunded,
}

impl ChargeStatus {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Declined => "declined",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Settled => "settled",
            Self::PartiallyRefunded => "partially_refunded",
            Self::Refunded => "refunded",
        }
    }
}

/// What is kept of a card: never the PAN, the CVC or a PIN block.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CardInfo {
    /// Brand by BIN.
    pub brand: String,
    /// First six digits.
    pub bin: String,
    /// Last four digits.
    pub last4: String,
    /// chip, contactless, swipe, manual.
    pub entry_mode: String,
    /// Keyed fingerprint from keyd (hex).
    pub fingerprint: String,
}

/// A refund.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refund {
    /// `re_…`.
    pub refund_id: String,
    /// The refunded charge.
    pub charge_id: String,
    /// Its merchant.
    pub merchant_id: String,
    /// The charge's terminal.
    pub terminal_id: Option<String>,
    /// The charge's location.
    pub location_id: Option<String>,
    /// Refunded amount.
    pub amount: Amount,
    /// Why.
    pub reason: Option<String>,
    /// The charge's status after the refund.
    pub charge_status: ChargeStatus,
    /// Processor reference.
    pub processor_reference: String,
    /// Unix seconds.
    pub created_at: i64,
}

impl Record for Refund {
    const KIND: &'static str = "refund";
    fn id(&self) -> &str {
        &self.refund_id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        vec![("transactions".into(), self.merchant_id.clone())]
    }
}

/// A charge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Charge {
    /// `ch_…`.
    pub charge_id: String,
    /// Its merchant.
    pub merchant_id: String,
    /// Resellers above the merchant (tenancy).
    pub resellers: Vec<String>,
    /// Location.
    pub location_id: Option<String>,
    /// Terminal, for POS charges.
    pub terminal_id: Option<String>,
    /// State.
    pub status: ChargeStatus,
    /// Amount.
    pub amount: Amount,
    /// Tip on top.
    pub tip: Option<Amount>,
    /// Sum of refunds (minor units).
    pub amount_refunded: u64,
    /// Issuer authorisation code.
    pub authorization_code: Option<String>,
    /// ISO 8583 response code.
    pub iso_response_code: Option<String>,
    /// Decline reason word.
    pub decline_code: Option<String>,
    /// Card summary.
    pub card: CardInfo,
    /// The terminal's or caller's reference.
    pub reference: Option<String>,
    /// Backoffice description.
    pub description: Option<String>,
    /// Backoffice metadata (string pairs).
    pub metadata: Map<String, Value>,
    /// Fee from the merchant's template.
    pub fee: Amount,
    /// Processor name.
    pub processor: String,
    /// Processor reference.
    pub processor_reference: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of settlement.
    pub settled_at: Option<i64>,
    /// Refunds, oldest first.
    pub refunds: Vec<Refund>,
    /// What the processor keeps to reverse or refund the charge later
    /// ([`processor::Prepared::data`]); never shown.
    #[serde(default)]
    pub processor_data: Option<Value>,
}

impl Charge {
    /// Amount plus tip.
    pub fn total(&self) -> u64 {
        self.amount.value + self.tip.as_ref().map_or(0, |t| t.value)
    }

    /// Tenancy (for authorisation).
    pub fn tenancy(&self) -> crate::domain::model::Tenancy {
        crate::domain::model::Tenancy {
            resellers: self.resellers.clone(),
            merchant: Some(self.merchant_id.clone()),
        }
    }
}

impl Record for Charge {
    const KIND: &'static str = "charge";
    fn id(&self) -> &str {
        &self.charge_id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        // One index for charges and refunds: the transactions list reads both in one order,
        // and the charge list filters it.
        vec![("transactions".into(), self.merchant_id.clone())]
    }
}

/// A card as the engine receives it (PAN only in memory, for the processor call).
#[derive(Debug)]
pub struct CardInput {
    /// The PAN.
    pub pan: Pan,
    /// Expiry month.
    pub exp_month: u8,
    /// Expiry year.
    pub exp_year: u16,
    /// Keyed fingerprint (hex).
    pub fingerprint: String,
    /// Entry mode.
    pub entry_mode: String,
    /// The PIN, already under the processor's zone PIN key (see [`AuthorizationRequest`]).
    pub pin_block: Option<PinBlock>,
}

/// The contactless CVM limit in minor units, as terminals are configured with it
/// (`security.contactless_limit`): a contactless charge may carry a PIN only above it
/// (spec 12.2).
pub const CONTACTLESS_LIMIT: u64 = 5_000;

/// A charge to make.
#[derive(Debug)]
pub struct NewCharge {
    /// The merchant.
    pub merchant: Merchant,
    /// Amount.
    pub amount: Money,
    /// Tip.
    pub tip: Option<Money>,
    /// Card.
    pub card: CardInput,
    /// Reference.
    pub reference: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Metadata.
    pub metadata: Map<String, Value>,
    /// Location.
    pub location_id: Option<String>,
    /// Terminal.
    pub terminal_id: Option<String>,
    /// The terminal's EMV data (hex TLV), passed to the processor as given.
    pub emv_data: Option<String>,
}

/// Amount plus tip must itself be a contract money value (at most 12 digits).
///
/// # Errors
/// 400 naming `tip.value`.
pub fn check_total(amount: &Money, tip: Option<&Money>) -> Result<(), ApiError> {
    let total = amount.value.saturating_add(tip.map_or(0, |t| t.value));
    if total > crate::wire::fields::MAX_MINOR {
        return Err(ApiError::field(
            "tip.value",
            "amount plus tip must be at most 12 digits",
        ));
    }
    Ok(())
}

/// What the charge engine works with: the records, the processor, per-charge locks, and this
/// process's identity (for recovery). Cheap to clone; each handler layer holds one.
#[derive(Debug, Clone)]
pub struct Engine {
    /// Records.
    pub db: Db,
    /// The payment processor.
    pub processor: Arc<dyn Processor>,
    /// Per-object serialisation (shared with the POS device locks).
    pub locks: Arc<Locks>,
    /// The processor's own time-out.
    pub timeout: std::time::Duration,
    /// This start of the process.
    pub boot: Boot,
    /// The charges this process is making (recovery leaves them alone).
    pub in_flight: InFlight,
}

/// How long the platform waits for any processor call: its own time-out and a margin, so a
/// processor that ignores its time-out cannot hold a request for ever.
pub(crate) fn processor_deadline(engine: &Engine) -> std::time::Duration {
    engine.timeout + std::time::Duration::from_secs(5)
}

async fn fee(
    engine: &Engine,
    merchant: &Merchant,
    amount: u64,
    brand: &str,
) -> Result<u64, ApiError> {
    Ok(match &merchant.fee_template_id {
        Some(id) => engine
            .db
            .get::<FeeTemplate>(id)
            .await?
            .map_or(0, |t| t.fee(amount, brand)),
        None => 0,
    })
}

/// Creates a charge: pending record, processor, outcome — each durable before the next step.
/// `extra` (a nonce) goes into the first commit; the kept idempotent answer into the last.
///
/// # Errors
/// 502/`5020` (the charge kept as `failed`), 503 when storage is down.
pub async fn create(
    engine: &Engine,
    new: NewCharge,
    extra: Vec<Write>,
    running: Option<&Running<'_>>,
    now: i64,
) -> Result<Charge, ApiError> {
    let (charge, ()) = create_with(engine, new, extra, running, now, |_| async { Ok(()) }).await?;
    Ok(charge)
}

/// [`create`], running `beside` on the charge as it will be answered while its last commit
/// is under way, once the processor has given an outcome (not when it failed). The POS seals
/// its answer there, so keyd's round trip overlaps the disk's instead of following it. The
/// caller still gets nothing before the commit is durable: a failed commit is the error, and
/// whatever `beside` made is dropped.
///
/// # Errors
/// As [`create`], and `beside`'s own error after a durable commit.
pub async fn create_with<T, F, Fut>(
    engine: &Engine,
    new: NewCharge,
    extra: Vec<Write>,
    running: Option<&Running<'_>>,
    now: i64,
    beside: F,
) -> Result<(Charge, T), ApiError>
where
    F: FnOnce(&Charge) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let brand = processor::brand(new.card.pan.expose()).to_owned();
    let currency = new.amount.currency.clone();
    let fee_value = fee(engine, &new.merchant, new.amount.value, &brand).await?;
    let mut charge = Charge {
        charge_id: ids::time_ordered("ch_")?,
        merchant_id: new.merchant.id.clone(),
        resellers: new.merchant.resellers.clone(),
        location_id: new.location_id,
        terminal_id: new.terminal_id,
        status: ChargeStatus::Pending,
        amount: new.amount.clone().into(),
        tip: new.tip.clone().map(Amount::from),
        amount_refunded: 0,
        authorization_code: None,
        iso_response_code: None,
        decline_code: None,
        card: CardInfo {
            brand,
            bin: new.card.pan.bin().to_owned(),
            last4: new.card.pan.last4().to_owned(),
            entry_mode: new.card.entry_mode.clone(),
            fingerprint: new.card.fingerprint.clone(),
        },
        reference: new.reference,
        description: new.description,
        metadata: new.metadata,
        fee: Amount {
            value: fee_value,
            currency: currency.clone(),
        },
        processor: engine.processor.name().to_owned(),
        processor_reference: None,
        // When it is stored, not when the request arrived: recovery's checkpoints rely on
        // charges being no older than the moment they are made.
        created_at: crate::wire::time::now().max(now),
        settled_at: None,
        refunds: Vec::new(),
        processor_data: None,
    };
    let mut request = AuthorizationRequest {
        charge_id: charge.charge_id.clone(),
        pan: new.card.pan,
        exp_month: new.card.exp_month,
        exp_year: new.card.exp_year,
        amount: charge.total(),
        base_amount: charge.amount.value,
        currency,
        merchant_id: charge.merchant_id.clone(),
        entry_mode: new.card.entry_mode,
        pin_block: new.card.pin_block,
        terminal_id: charge.terminal_id.clone(),
        acquirer_mid: new.merchant.acquirer_mid,
        emv_data: new.emv_data,
        prepared: processor::Prepared::default(),
    };
    // What the processor needs to void the charge goes into the same write as the pending
    // charge, so whatever becomes of this request, recovery can void it.
    let prepared = match engine.processor.prepare(&request).await {
        Err(ProcessorError::Invalid { field, reason }) => {
            return Err(ApiError::field(field, &reason));
        }
        prepared => prepared,
    };
    if let Ok(p) = &prepared {
        charge.processor_data.clone_from(&p.data);
        charge.processor_reference.clone_from(&p.reference);
    }
    // The charge exists, as `pending`, before the processor hears of it; this process knows
    // it is making it, so recovery leaves it alone until the request ends.
    let making = engine.in_flight.start(&charge);
    let mut first = extra;
    first.push(db::put(&charge)?);
    engine
        .db
        .commit(first, ApiError::new(Code::Conflict, "charge id collision"))
        .await?;
    let outcome = match prepared {
        Ok(p) => {
            request.prepared = p;
            tokio::time::timeout(
                processor_deadline(engine),
                engine.processor.authorize(request),
            )
            .await
        }
        Err(e) => Ok(Err(e)),
    };
    let failed = match outcome {
        Ok(Ok(Outcome::Approved {
            authorization_code,
            reference,
        })) => {
            charge.status = ChargeStatus::Approved;
            charge.authorization_code = Some(authorization_code);
            charge.iso_response_code = Some("00".into());
            charge.processor_reference = Some(reference);
            None
        }
        Ok(Ok(Outcome::Declined {
            iso_response_code,
            decline_code,
            reference,
        })) => {
            charge.status = ChargeStatus::Declined;
            charge.iso_response_code = Some(iso_response_code);
            charge.decline_code = Some(decline_code);
            charge.processor_reference = Some(reference);
            None
        }
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no answer within the processor timeout".to_owned()),
    };
    // On a store of its own, no precondition on the pending charge: recovery never resolves a
    // charge this process is making and no other process shares the store, so nothing can
    // have changed it (an `Expect` cost about 5 % of whole-charge throughput). Where nodes
    // share the store, another node's recovery fails a charge left pending past the deadline
    // and a margin; the outcome is then written only over the pending charge as first
    // written (version 1), never over what recovery wrote.
    let mut last = Vec::with_capacity(3);
    if engine.db.store().shared() {
        last.push(db::expect::<Charge>(&charge.charge_id, 1));
    }
    if failed.is_some() {
        charge.status = ChargeStatus::Failed;
    }
    last.push(db::put(&charge)?);
    last.extend(events::charge_event(&charge, now)?);
    let answer = match &failed {
        None => Ok(()),
        Some(cause) => {
            tracing::warn!(charge_id = %charge.charge_id, cause = %cause, "processor failed");
            Err(processor_failed(&charge.charge_id))
        }
    };
    if let Some(r) = running {
        last.push(match &answer {
            Ok(()) => r.keep(200, &charge.reply(), now)?,
            Err(e) => r.keep_error(e, now)?,
        });
    }
    // Failing here (storage down) leaves the charge pending and this request's guard not
    // done: the charge becomes an orphan that recovery voids and fails.
    let commit = engine
        .db
        .commit(last, ApiError::new(Code::Conflict, "charge changed"));
    match answer {
        Ok(()) => {
            let (committed, made) = tokio::join!(commit, beside(&charge));
            committed?;
            making.done();
            Ok((charge, made?))
        }
        Err(e) => {
            commit.await?;
            making.done();
            Err(e)
        }
    }
}

fn processor_failed_after(charge_id: &str, what: &str) -> ApiError {
    ApiError::new(
        Code::ProcessorFailed,
        format!("the payment processor failed or timed out; the {what} was not made and the charge is unchanged"),
    )
    .with_details(json!({"charge_id": charge_id}))
}

fn processor_failed(charge_id: &str) -> ApiError {
    ApiError::new(
        Code::ProcessorFailed,
        "the payment processor failed or timed out; the charge is kept as failed",
    )
    .with_details(json!({"charge_id": charge_id}))
}

/// Refunds part or all of a charge. `amount` None refunds what is left.
///
/// # Errors
/// 409/`4094` in a state without refunds, 422/`4221` beyond the refundable amount, 400 for a
/// currency mismatch, 502 if the processor fails.
pub async fn refund(
    engine: &Engine,
    charge_id: &str,
    amount: Option<Money>,
    reason: Option<String>,
    extra: Vec<Write>,
    running: Option<&Running<'_>>,
    now: i64,
) -> Result<Refund, ApiError> {
    let _guard = engine.locks.lock(charge_id).await?;
    let result = refund_locked(engine, charge_id, amount, reason, now).await;
    let mut writes = extra;
    let answer = match result {
        Ok((charge, refund)) => {
            writes.push(db::put(&charge)?);
            writes.push(db::put(&refund)?);
            writes.extend(events::charge_event(&charge, now)?);
            writes.extend(events::event(EventType::RefundSucceeded, &refund, now)?);
            Ok(refund)
        }
        Err(e) => Err(e),
    };
    if let Some(r) = running {
        match &answer {
            Ok(refund) => writes.push(r.keep(200, &refund.reply(), now)?),
            Err(e) if idem::is_final(e) => writes.push(r.keep_error(e, now)?),
            Err(_) => {}
        }
    }
    if !writes.is_empty() {
        engine
            .db
            .commit(writes, ApiError::new(Code::Conflict, "charge changed"))
            .await?;
    }
    answer
}

async fn refund_locked(
    engine: &Engine,
    charge_id: &str,
    amount: Option<Money>,
    reason: Option<String>,
    now: i64,
) -> Result<(Charge, Refund), ApiError> {
    let mut charge: Charge = engine.db.find(charge_id).await?;
    if !matches!(
        charge.status,
        ChargeStatus::Approved | ChargeStatus::Settled | ChargeStatus::PartiallyRefunded
    ) {
        return Err(ApiError::new(
            Code::ChargeState,
            format!("a {} charge cannot be refunded", charge.status.as_str()),
        ));
    }
    let refundable = charge.total().saturating_sub(charge.amount_refunded);
    let value = match &amount {
        Some(m) if m.currency != charge.amount.currency => {
            return Err(ApiError::field(
                "amount.currency",
                "must be the charge's currency",
            ));
        }
        Some(m) => m.value,
        None => refundable,
    };
    if value > refundable || value == 0 {
        return Err(
            ApiError::new(Code::RefundExceeds, "refund exceeds the refundable amount")
                .with_details(json!({"refundable": {"value": refundable.to_string(),
                                             "currency": charge.amount.currency}})),
        );
    }
    let reference = tokio::time::timeout(
        processor_deadline(engine),
        engine.processor.refund(RefundRequest {
            charge_id: charge.charge_id.clone(),
            processor_reference: charge.processor_reference.clone().unwrap_or_default(),
            amount: value,
            currency: charge.amount.currency.clone(),
            processor_data: charge.processor_data.clone(),
        }),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .ok_or_else(|| processor_failed_after(&charge.charge_id, "refund"))?;
    charge.amount_refunded += value;
    if charge.amount_refunded >= charge.total() {
        charge.status = ChargeStatus::Refunded;
    } else {
        charge.status = ChargeStatus::PartiallyRefunded;
    }
    let refund = Refund {
        refund_id: ids::time_ordered("re_")?,
        charge_id: charge.charge_id.clone(),
        merchant_id: charge.merchant_id.clone(),
        terminal_id: charge.terminal_id.clone(),
        location_id: charge.location_id.clone(),
        amount: Amount {
            value,
            currency: charge.amount.currency.clone(),
        },
        reason,
        charge_status: charge.status,
        processor_reference: reference,
        created_at: now,
    };
    charge.refunds.push(refund.clone());
    Ok((charge, refund))
}

/// Voids an approved charge before settlement; a cancelled one is answered again.
///
/// # Errors
/// 409/`4095` once settled or refunded in part, 409/`4094` in other states, 502.
pub async fn cancel(
    engine: &Engine,
    charge_id: &str,
    extra: Vec<Write>,
    running: Option<&Running<'_>>,
    now: i64,
) -> Result<Charge, ApiError> {
    let _guard = engine.locks.lock(charge_id).await?;
    let mut charge: Charge = engine.db.find(charge_id).await?;
    let result = match charge.status {
        ChargeStatus::Cancelled => Ok(false),
        _ if charge.settled_at.is_some() || !charge.refunds.is_empty() => Err(ApiError::new(
            Code::NotVoidable,
            "the charge can no longer be voided: refund it instead",
        )),
        ChargeStatus::Approved => {
            let voided = tokio::time::timeout(
                processor_deadline(engine),
                engine.processor.void(VoidRequest {
                    charge_id: charge.charge_id.clone(),
                    processor_reference: charge.processor_reference.clone().unwrap_or_default(),
                    processor_data: charge.processor_data.clone(),
                    reason: VoidReason::Cancel,
                }),
            )
            .await;
            match voided {
                Ok(Ok(())) => Ok(true),
                _ => Err(processor_failed_after(&charge.charge_id, "void")),
            }
        }
        s => Err(ApiError::new(
            Code::ChargeState,
            format!("a {} charge cannot be cancelled", s.as_str()),
        )),
    };
    let mut writes = extra;
    if let Ok(true) = result {
        charge.status = ChargeStatus::Cancelled;
        writes.push(db::put(&charge)?);
        writes.extend(events::charge_event(&charge, now)?);
    }
    let answer = result.map(|_| charge);
    if let Some(r) = running {
        match &answer {
            Ok(c) => writes.push(r.keep(200, &c.reply(), now)?),
            Err(e) if idem::is_final(e) => writes.push(r.keep_error(e, now)?),
            Err(_) => {}
        }
    }
    if !writes.is_empty() {
        engine
            .db
            .commit(writes, ApiError::new(Code::Conflict, "charge changed"))
            .await?;
    }
    answer
}

/// A charge or a refund, as the transactions list reads them from one index.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Txn {
    /// A refund.
    Refund(Box<Refund>),
    /// A charge.
    Charge(Box<Charge>),
}

impl Record for Txn {
    const KIND: &'static str = "charge";
    fn id(&self) -> &str {
        match self {
            Self::Refund(r) => &r.refund_id,
            Self::Charge(c) => &c.charge_id,
        }
    }
    fn indexes(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

impl Txn {
    /// The status the list filters on.
    pub fn status(&self) -> &str {
        match self {
            Self::Charge(c) => c.status.as_str(),
            Self::Refund(_) => "succeeded",
        }
    }
}

impl Txn {
    /// Its merchant.
    pub fn merchant(&self) -> &str {
        match self {
            Self::Charge(c) => &c.merchant_id,
            Self::Refund(r) => &r.merchant_id,
        }
    }
}

#[cfg(test)]
impl Engine {
    /// An engine on a temporary store with the simulator answering at once.
    pub(crate) fn for_tests() -> Self {
        let timeout = std::time::Duration::from_secs(10);
        Self {
            db: Db::new(Arc::new(
                crate::store::SqliteStore::temporary()
                    .unwrap_or_else(|e| unreachable!("test store: {e}")),
            )),
            processor: Arc::new(processor::Simulator::new(
                std::time::Duration::ZERO,
                timeout,
            )),
            locks: Arc::new(Locks::default()),
            timeout,
            boot: Boot {
                id: "test-boot".into(),
                started_at: crate::wire::time::now(),
            },
            in_flight: InFlight::default(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {

    use super::*;

    fn app() -> Engine {
        Engine::for_tests()
    }

    pub(crate) fn charge(id: &str, status: ChargeStatus, created_at: i64) -> Charge {
        Charge {
            charge_id: id.into(),
            merchant_id: "m".into(),
            resellers: vec!["r".into()],
            location_id: None,
            terminal_id: None,
            status,
            amount: Amount {
                value: 100,
                currency: "EUR".into(),
            },
            tip: None,
            amount_refunded: 0,
            authorization_code: None,
            iso_response_code: None,
            decline_code: None,
            card: CardInfo {
                brand: "visa".into(),
                bin: "424242".into(),
                last4: "4242".into(),
                entry_mode: "chip".into(),
                fingerprint: String::new(),
            },
            reference: None,
            description: None,
            metadata: Map::new(),
            fee: Amount {
                value: 0,
                currency: "EUR".into(),
            },
            processor: "simulator".into(),
            processor_reference: None,
            created_at,
            settled_at: None,
            refunds: Vec::new(),
            processor_data: None,
        }
    }

    /// A pending charge, as a lost request leaves it.
    async fn lost(app: &Engine, id: &str, created_at: i64) -> Charge {
        let c = charge(id, ChargeStatus::Pending, created_at);
        app.db
            .commit(
                vec![db::put(&c).unwrap()],
                ApiError::new(Code::Conflict, "x"),
            )
            .await
            .unwrap();
        c
    }

    async fn status(app: &Engine, id: &str) -> ChargeStatus {
        app.db.get::<Charge>(id).await.unwrap().unwrap().status
    }

    async fn put<R: Record>(app: &Engine, r: &R) {
        app.db
            .commit(
                vec![db::put(r).unwrap()],
                ApiError::new(Code::Conflict, "x"),
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn pending_charges_from_before_checkpoints_are_found_however_old() {
        let app = app();
        let now = crate::wire::time::now();
        lost(&app, "ch_0000000aOLD0000000000000", now - 86_400).await;
        lost(&app, "ch_0000000bHOUR000000000000", now - 3600).await;
        put(
            &app,
            &charge(
                "ch_0000000cMID0000000000000",
                ChargeStatus::Approved,
                now - 10,
            ),
        )
        .await;
        assert_eq!(recovery::recover(&app, now, true).await.unwrap(), 2);
        assert_eq!(
            status(&app, "ch_0000000aOLD0000000000000").await,
            ChargeStatus::Failed
        );
        assert_eq!(
            status(&app, "ch_0000000bHOUR000000000000").await,
            ChargeStatus::Failed
        );
        assert_eq!(
            status(&app, "ch_0000000cMID0000000000000").await,
            ChargeStatus::Approved
        );
        // Once per store: later rounds look only where a start's checkpoint says.
        assert!(
            app.db
                .owner("migration", "pending-charges-before-checkpoints")
                .await
                .unwrap()
                .is_some()
        );
        lost(&app, "ch_0000000dANCIENT000000000", now - 7 * 86_400).await;
        assert_eq!(recovery::recover(&app, now, true).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_gone_start_is_recovered_from_its_checkpoint_and_running_charges_are_left_alone() {
        let app = app();
        let now = crate::wire::time::now();
        assert_eq!(recovery::recover(&app, now, true).await.unwrap(), 0);
        // An earlier start of the process, gone, whose last checkpoint was a minute ago.
        put(
            &app,
            &recovery::BootRecord {
                id: "gone".into(),
                started_at: now - 3600,
                checkpoint: now - 60,
                seen_at: now - 60,
            },
        )
        .await;
        lost(&app, "ch_0000000aGONE1000000000000", now - 50).await;
        lost(&app, "ch_0000000bGONE2000000000000", now - 2).await;
        // This process is making one; another of its requests was dropped half-way.
        let running = lost(&app, "ch_0000000cRUNNING00000000000", now).await;
        let making = app.in_flight.start(&running);
        let dropped = lost(&app, "ch_0000000dDROPPED00000000000", now).await;
        drop(app.in_flight.start(&dropped));
        assert_eq!(recovery::recover(&app, now, true).await.unwrap(), 3);
        for id in [
            "ch_0000000aGONE1000000000000",
            "ch_0000000bGONE2000000000000",
            "ch_0000000dDROPPED00000000000",
        ] {
            assert_eq!(status(&app, id).await, ChargeStatus::Failed, "{id}");
        }
        assert!(
            app.db
                .get::<recovery::BootRecord>("gone")
                .await
                .unwrap()
                .is_none()
        );
        // The running one stays pending however long it takes, and holds this start's
        // checkpoint back so a crash now would still find it.
        assert_eq!(recovery::recover(&app, now + 3600, true).await.unwrap(), 0);
        assert_eq!(
            status(&app, "ch_0000000cRUNNING00000000000").await,
            ChargeStatus::Pending
        );
        let mine = app
            .db
            .get::<recovery::BootRecord>(&app.boot.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(mine.checkpoint, now);
        making.done();
        recovery::recover(&app, now + 3600, true).await.unwrap();
        let mine = app
            .db
            .get::<recovery::BootRecord>(&app.boot.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(mine.checkpoint, now + 3600);
    }

    /// A processor that prepares `{"link": 1}` with reference `ref-1`, times out every
    /// authorization, refuses EMV data, and records its voids.
    #[derive(Debug, Default)]
    struct Recorder {
        voids: std::sync::Mutex<Vec<VoidRequest>>,
    }

    type Boxed<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

    impl Processor for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn prepare<'a>(
            &'a self,
            req: &'a AuthorizationRequest,
        ) -> Boxed<'a, Result<processor::Prepared, ProcessorError>> {
            Box::pin(async move {
                if req.emv_data.is_some() {
                    return Err(ProcessorError::Invalid {
                        field: "emv_data",
                        reason: "too long".into(),
                    });
                }
                Ok(processor::Prepared {
                    data: Some(json!({"link": 1})),
                    reference: Some("ref-1".into()),
                    hold: None,
                })
            })
        }
        fn authorize(&self, _: AuthorizationRequest) -> Boxed<'_, Result<Outcome, ProcessorError>> {
            Box::pin(async { Err(ProcessorError::Timeout) })
        }
        fn refund(&self, _: RefundRequest) -> Boxed<'_, Result<String, ProcessorError>> {
            Box::pin(async { Err(ProcessorError::Timeout) })
        }
        fn void(&self, req: VoidRequest) -> Boxed<'_, Result<(), ProcessorError>> {
            self.voids.lock().unwrap().push(req);
            Box::pin(async { Ok(()) })
        }
    }

    fn new_charge(emv_data: Option<&str>) -> NewCharge {
        let merchant: Merchant = serde_json::from_value(json!({
            "id": "m", "reseller_id": "r", "resellers": ["r"], "name": "M", "mcc": "5812",
            "country": "DE", "currency": "EUR", "fee_template_id": null, "tip_info": {},
            "tax_info": {}, "surcharge_info": {}, "merchant_key": "mk_1",
            "terminal_parameters": null, "created_at": 1, "updated_at": 1,
            "acquirer_mid": "900000000000001"}))
        .unwrap();
        NewCharge {
            merchant,
            amount: Money {
                value: 1500,
                currency: "EUR".into(),
            },
            tip: None,
            card: CardInput {
                pan: Pan::new("4242424242424242".into()),
                exp_month: 12,
                exp_year: 2030,
                fingerprint: "F".into(),
                entry_mode: "chip".into(),
                pin_block: None,
            },
            reference: None,
            description: None,
            metadata: Map::new(),
            location_id: None,
            terminal_id: Some("TID-000001".into()),
            emv_data: emv_data.map(str::to_owned),
        }
    }

    /// `beside` sees the charge as answered, after an outcome only, and what it makes comes
    /// back only with a durable charge.
    #[tokio::test]
    async fn beside_runs_on_the_answered_charge_and_only_after_an_outcome() {
        let app = app();
        let now = crate::wire::time::now();
        let (charge, seen) = create_with(&app, new_charge(None), Vec::new(), None, now, |c| {
            let seen = (c.charge_id.clone(), c.status);
            async move { Ok(seen) }
        })
        .await
        .unwrap();
        assert!(matches!(
            charge.status,
            ChargeStatus::Approved | ChargeStatus::Declined
        ));
        assert_eq!(seen, (charge.charge_id.clone(), charge.status));
        assert_eq!(status(&app, &charge.charge_id).await, charge.status);
        // Its error comes after the commit: the charge is kept, the caller gets the error.
        let e = create_with(&app, new_charge(None), Vec::new(), None, now, |_| async {
            Err::<(), _>(ApiError::new(Code::Unavailable, "keyd"))
        })
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        let mut kept = 0;
        app.db
            .walk_back::<Charge>(|c| {
                assert_ne!(c.status, ChargeStatus::Pending);
                kept += 1;
                Ok(true)
            })
            .await
            .unwrap();
        assert_eq!(kept, 2);
        // A failed processor: no outcome, so nothing to run beside.
        let recorder = Arc::new(Recorder::default());
        let app = Engine {
            processor: Arc::clone(&recorder) as Arc<dyn Processor>,
            ..Engine::for_tests()
        };
        let called = std::sync::atomic::AtomicBool::new(false);
        let e = create_with(&app, new_charge(None), Vec::new(), None, now, |_| {
            called.store(true, std::sync::atomic::Ordering::Relaxed);
            async { Ok(()) }
        })
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::ProcessorFailed);
        assert!(!called.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[tokio::test]
    async fn what_the_processor_prepares_is_kept_and_a_lost_outcome_is_voided_with_it() {
        let recorder = Arc::new(Recorder::default());
        let app = Engine {
            processor: Arc::clone(&recorder) as Arc<dyn Processor>,
            ..Engine::for_tests()
        };
        let now = crate::wire::time::now();
        // Refused while preparing: 400 on the field, nothing recorded.
        let e = create(&app, new_charge(Some("9F26")), Vec::new(), None, now)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::BodyInvalid);
        let mut seen = 0;
        app.db
            .walk_back::<Charge>(|_| {
                seen += 1;
                Ok(true)
            })
            .await
            .unwrap();
        assert_eq!(seen, 0);
        // Timed out: failed, with the prepared data and reference kept (never shown).
        let e = create(&app, new_charge(None), Vec::new(), None, now)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::ProcessorFailed);
        let id = e.stored()["details"]["charge_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let failed: Charge = app.db.find(&id).await.unwrap();
        assert_eq!(failed.status, ChargeStatus::Failed);
        assert_eq!(failed.processor_data, Some(json!({"link": 1})));
        assert_eq!(failed.processor_reference.as_deref(), Some("ref-1"));
        assert_eq!(failed.to_json()["processor"]["reference"], "ref-1");
        assert!(failed.to_json().get("processor_data").is_none());
        // A pending charge whose outcome was lost is voided with what was kept with it.
        let mut c = charge("ch_0000000aLOST0000000000000", ChargeStatus::Pending, now);
        c.processor_data = Some(json!({"link": 2}));
        put(&app, &c).await;
        assert_eq!(recovery::recover(&app, now, true).await.unwrap(), 1);
        let voids = recorder.voids.lock().unwrap().clone();
        assert_eq!(voids.len(), 1);
        assert_eq!(voids[0].reason, VoidReason::Lost);
        assert_eq!(voids[0].processor_data, Some(json!({"link": 2})));
        assert_eq!(status(&app, &c.charge_id).await, ChargeStatus::Failed);
    }

    #[test]
    fn totals_stay_within_twelve_digits() {
        let m = |v| Money {
            value: v,
            currency: "EUR".into(),
        };
        assert!(check_total(&m(999_999_999_000), Some(&m(999))).is_ok());
        assert_eq!(
            check_total(&m(999_999_999_999), Some(&m(1)))
                .unwrap_err()
                .code(),
            Code::BodyInvalid
        );
    }
}
