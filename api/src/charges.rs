//! The charge engine (contract section 8): one engine behind the POS calls (signed, enveloped)
//! and the backoffice calls (bearer, clear JSON over TLS).
//!
//! A charge is written as `pending` before the processor is asked, and as its outcome (with the
//! kept idempotent answer) after: a crash in between leaves a pending charge that is settled as
//! `failed` at the next start, never a charge the processor approved and the platform forgot.
//! Refunds and cancels of one charge run one at a time.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use crate::app::App;
use crate::authz::{Action, Principal, Scope, authorize};
use crate::call::{Call, list};
use crate::db::{self, Record};
use crate::error::{ApiError, Code};
use crate::idem::{self, Begin, Running};
use crate::ids;
use crate::input::{self, Input, Money};
use crate::model::{Amount, FeeTemplate, Merchant};
use crate::processor::{self, AuthorizationRequest, Outcome, Pan, RefundRequest, VoidRequest};
use crate::store::Write;
use crate::time::rfc3339;

pub mod recovery;

pub use recovery::PendingCharge;

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

impl Refund {
    /// The wire form.
    pub fn to_json(&self) -> Value {
        json!({
            "refund_id": self.refund_id, "object": "refund", "charge_id": self.charge_id,
            "status": "succeeded", "amount": self.amount.to_json(), "reason": self.reason,
            "charge_status": self.charge_status.as_str(), "created_at": rfc3339(self.created_at),
        })
    }
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
}

impl Charge {
    /// Amount plus tip.
    pub fn total(&self) -> u64 {
        self.amount.value + self.tip.as_ref().map_or(0, |t| t.value)
    }

    /// Tenancy (for authorisation).
    pub fn tenancy(&self) -> crate::model::Tenancy {
        crate::model::Tenancy {
            resellers: self.resellers.clone(),
            merchant: Some(self.merchant_id.clone()),
        }
    }

    /// The wire form.
    pub fn to_json(&self) -> Value {
        let c = &self.amount.currency;
        json!({
            "charge_id": self.charge_id, "object": "charge", "status": self.status.as_str(),
            "amount": self.amount.to_json(),
            "tip": self.tip.as_ref().map_or_else(
                || json!({"value": "0", "currency": c}),
                Amount::to_json,
            ),
            "amount_refunded": {"value": self.amount_refunded.to_string(), "currency": c},
            "authorization_code": self.authorization_code,
            "iso_response_code": self.iso_response_code,
            "decline_code": self.decline_code,
            "card": {"brand": self.card.brand, "bin": self.card.bin, "last4": self.card.last4,
                     "entry_mode": self.card.entry_mode},
            "terminal_id": self.terminal_id, "merchant_id": self.merchant_id,
            "location_id": self.location_id, "reference": self.reference,
            "description": self.description, "metadata": self.metadata,
            "fee": self.fee.to_json(),
            "processor": {"name": self.processor, "reference": self.processor_reference},
            "created_at": rfc3339(self.created_at),
            "settled_at": self.settled_at.map(rfc3339),
            "refunds": self.refunds.iter().map(Refund::to_json).collect::<Vec<_>>(),
        })
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

/// A settlement batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settlement {
    /// `st_…`.
    pub settlement_id: String,
    /// Its merchant.
    pub merchant_id: String,
    /// Charges settled.
    pub count: u64,
    /// Σ (amount + tip − refunded).
    pub total: Amount,
    /// Unix seconds.
    pub created_at: i64,
    /// When the batch left settleable charges for the next one (its total would have passed
    /// the 12 digits of the money format): the creation time of the oldest left.
    #[serde(default)]
    pub left_from: Option<i64>,
}

impl Settlement {
    /// The wire form. `has_more: true` says settleable charges were left for the next batch
    /// because this one's total would have passed the 12 digits of the money format.
    pub fn to_json(&self) -> Value {
        json!({
            "settlement_id": self.settlement_id, "object": "settlement",
            "merchant_id": self.merchant_id, "count": self.count,
            "total": self.total.to_json(), "created_at": rfc3339(self.created_at),
            "has_more": self.left_from.is_some(),
        })
    }

    /// Where the next batch may stop looking back: charges older than this were settled by
    /// this batch or could not be (still pending), unless this batch left some.
    fn next_cutoff(&self, margin: i64) -> i64 {
        let cut = self.created_at - margin;
        self.left_from.map_or(cut, |left| cut.min(left))
    }
}

/// Largest money value (12 digits): a batch's total stops short of it.
const MAX_MONEY: u64 = 999_999_999_999;

/// The charges one batch takes, oldest first, while the total stays within the money format;
/// returns them, the total, and the creation time of the oldest charge left out.
fn fill_batch(mut open: Vec<Charge>) -> (Vec<Charge>, u64, Option<i64>) {
    open.sort_by(|a, b| (a.created_at, &a.charge_id).cmp(&(b.created_at, &b.charge_id)));
    let mut total = 0u64;
    let mut taken = Vec::with_capacity(open.len());
    let mut left_from: Option<i64> = None;
    for c in open {
        let net = c.total().saturating_sub(c.amount_refunded);
        match total.checked_add(net).filter(|t| *t <= MAX_MONEY) {
            Some(t) => {
                total = t;
                taken.push(c);
            }
            None => {
                left_from = Some(left_from.map_or(c.created_at, |l| l.min(c.created_at)));
            }
        }
    }
    (taken, total, left_from)
}

impl Record for Settlement {
    const KIND: &'static str = "settlement";
    fn id(&self) -> &str {
        &self.settlement_id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        vec![("settlements".into(), self.merchant_id.clone())]
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
}

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
}

/// Amount plus tip must itself be a contract money value (at most 12 digits).
///
/// # Errors
/// 400 naming `tip.value`.
pub fn check_total(amount: &Money, tip: Option<&Money>) -> Result<(), ApiError> {
    let total = amount.value.saturating_add(tip.map_or(0, |t| t.value));
    if total > 999_999_999_999 {
        return Err(ApiError::field(
            "tip.value",
            "amount plus tip must be at most 12 digits",
        ));
    }
    Ok(())
}

/// How long the platform waits for any processor call: its own time-out and a margin, so a
/// processor that ignores its time-out cannot hold a request for ever.
fn processor_deadline(app: &App) -> std::time::Duration {
    app.config.processor.timeout() + std::time::Duration::from_secs(5)
}

/// How long after a charge was created its outcome can still arrive (seconds): charges older
/// than the newest by more than this are settled, one way or the other.
fn outcome_window(app: &App) -> i64 {
    i64::try_from(app.config.processor.timeout().as_secs()).unwrap_or(60) + 120
}

fn fee(app: &App, merchant: &Merchant, amount: u64, brand: &str) -> Result<u64, ApiError> {
    Ok(match &merchant.fee_template_id {
        Some(id) => app
            .db
            .get::<FeeTemplate>(id)?
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
    app: &App,
    new: NewCharge,
    extra: Vec<Write>,
    running: Option<&Running<'_>>,
    now: i64,
) -> Result<Charge, ApiError> {
    let brand = processor::brand(new.card.pan.expose()).to_owned();
    let currency = new.amount.currency.clone();
    let fee_value = fee(app, &new.merchant, new.amount.value, &brand)?;
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
        processor: app.processor.name().to_owned(),
        processor_reference: None,
        created_at: now,
        settled_at: None,
        refunds: Vec::new(),
    };
    // The charge exists, as `pending`, before the processor hears of it; its marker is how
    // recovery finds it if this request is lost.
    let marker = PendingCharge::of(&charge, &app.boot);
    let mut first = extra;
    first.push(db::put(&charge)?);
    first.push(db::put(&marker)?);
    app.db
        .commit(first, ApiError::new(Code::Conflict, "charge id collision"))
        .await?;
    let request = AuthorizationRequest {
        charge_id: charge.charge_id.clone(),
        pan: new.card.pan,
        exp_month: new.card.exp_month,
        exp_year: new.card.exp_year,
        amount: charge.total(),
        base_amount: charge.amount.value,
        currency,
        merchant_id: charge.merchant_id.clone(),
        entry_mode: new.card.entry_mode,
    };
    let outcome =
        tokio::time::timeout(processor_deadline(app), app.processor.authorize(request)).await;
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
    // The outcome is written only if recovery has not taken the charge over meanwhile.
    let mut last = vec![
        db::expect(&marker)?,
        db::delete::<PendingCharge>(&charge.charge_id),
        db::put(&charge_with_status(&charge, failed.is_some()))?,
    ];
    if failed.is_some() {
        charge.status = ChargeStatus::Failed;
    }
    let answer = match &failed {
        None => Ok(charge.to_json()),
        Some(cause) => {
            tracing::warn!(charge_id = %charge.charge_id, cause = %cause, "processor failed");
            Err(processor_failed(&charge.charge_id))
        }
    };
    let keep = |answer: &Result<Value, ApiError>| -> Result<Option<Write>, ApiError> {
        running
            .map(|r| match answer {
                Ok(body) => r.keep(200, body.clone(), now),
                Err(e) => r.keep_error(e, now),
            })
            .transpose()
    };
    last.extend(keep(&answer)?);
    match app.db.commit(last, recovery::taken_over()).await {
        Ok(()) => answer.map(|_| charge),
        Err(e) if e.code() == Code::Conflict => {
            // Recovery took the charge over: it voids whatever the processor did and stores
            // the charge failed, so that is the answer, kept like any other.
            tracing::warn!(charge_id = %charge.charge_id, "outcome arrived after recovery took the charge over");
            let e = processor_failed(&charge.charge_id);
            if let Some(w) = keep(&Err(e.clone()))? {
                let _ = app.db.commit(vec![w], recovery::taken_over()).await;
            }
            Err(e)
        }
        Err(e) => Err(e),
    }
}

fn charge_with_status(charge: &Charge, failed: bool) -> Charge {
    let mut c = charge.clone();
    if failed {
        c.status = ChargeStatus::Failed;
    }
    c
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
    app: &App,
    charge_id: &str,
    amount: Option<Money>,
    reason: Option<String>,
    extra: Vec<Write>,
    running: Option<&Running<'_>>,
    now: i64,
) -> Result<Refund, ApiError> {
    let _guard = app.locks.lock(charge_id).await;
    let result = refund_locked(app, charge_id, amount, reason, now).await;
    let mut writes = extra;
    let answer = match result {
        Ok((charge, refund)) => {
            writes.push(db::put(&charge)?);
            writes.push(db::put(&refund)?);
            Ok(refund)
        }
        Err(e) => Err(e),
    };
    if let Some(r) = running {
        match &answer {
            Ok(refund) => writes.push(r.keep(200, refund.to_json(), now)?),
            Err(e) if idem::is_final(e) => writes.push(r.keep_error(e, now)?),
            Err(_) => {}
        }
    }
    if !writes.is_empty() {
        app.db
            .commit(writes, ApiError::new(Code::Conflict, "charge changed"))
            .await?;
    }
    answer
}

async fn refund_locked(
    app: &App,
    charge_id: &str,
    amount: Option<Money>,
    reason: Option<String>,
    now: i64,
) -> Result<(Charge, Refund), ApiError> {
    let mut charge: Charge = app.db.find(charge_id)?;
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
        processor_deadline(app),
        app.processor.refund(RefundRequest {
            charge_id: charge.charge_id.clone(),
            processor_reference: charge.processor_reference.clone().unwrap_or_default(),
            amount: value,
            currency: charge.amount.currency.clone(),
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
    app: &App,
    charge_id: &str,
    extra: Vec<Write>,
    running: Option<&Running<'_>>,
    now: i64,
) -> Result<Charge, ApiError> {
    let _guard = app.locks.lock(charge_id).await;
    let mut charge: Charge = app.db.find(charge_id)?;
    let result = match charge.status {
        ChargeStatus::Cancelled => Ok(false),
        _ if charge.settled_at.is_some() || !charge.refunds.is_empty() => Err(ApiError::new(
            Code::NotVoidable,
            "the charge can no longer be voided: refund it instead",
        )),
        ChargeStatus::Approved => {
            let voided = tokio::time::timeout(
                processor_deadline(app),
                app.processor.void(VoidRequest {
                    charge_id: charge.charge_id.clone(),
                    processor_reference: charge.processor_reference.clone().unwrap_or_default(),
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
    }
    let answer = result.map(|_| charge);
    if let Some(r) = running {
        match &answer {
            Ok(c) => writes.push(r.keep(200, c.to_json(), now)?),
            Err(e) if idem::is_final(e) => writes.push(r.keep_error(e, now)?),
            Err(_) => {}
        }
    }
    if !writes.is_empty() {
        app.db
            .commit(writes, ApiError::new(Code::Conflict, "charge changed"))
            .await?;
    }
    answer
}

// ---------------------------------------------------------------------------------------------
// Backoffice endpoints.

fn merchant_of_call(
    app: &App,
    p: &Principal,
    given: Option<&str>,
    action: Action,
) -> Result<Merchant, ApiError> {
    let id = match (&p.scope, given) {
        (_, Some(id)) => id.to_owned(),
        (Scope::Merchant(m), None) => m.clone(),
        _ => {
            return Err(ApiError::field(
                "merchant_id",
                "required for callers above a merchant",
            ));
        }
    };
    crate::backoffice::merchant(app, p, &id, action)
}

/// Runs a keyed request through the idempotency table: a replay answers the kept answer.
pub async fn keyed<'a, F, Fut>(
    app: &'a App,
    call: &Call<'_>,
    scope: &str,
    path: &str,
    request: &[u8],
    run: F,
) -> Result<Value, ApiError>
where
    F: FnOnce(Option<Running<'a>>) -> Fut,
    Fut: Future<Output = Result<Value, ApiError>>,
{
    let Some(key) = idem::key_header(call.headers)? else {
        return run(None).await;
    };
    match app
        .idempotency
        .begin(&app.db, scope, "POST", path, key, request, call.now)?
    {
        Begin::Replay(kept) if kept.status < 300 => Ok(kept.body),
        Begin::Replay(kept) => Err(ApiError::from_stored(&kept.body)),
        Begin::Run(running) => run(Some(running)).await,
    }
}

/// `POST /charges`.
pub async fn create_backoffice(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let obj = input::object(&call.body)?;
    let path = "/charges";
    let scope = p.sub.clone();
    let request = if idem::key_header(call.headers)?.is_some() {
        card_request_fingerprint(app, &obj).await?
    } else {
        String::new()
    };
    keyed(
        app,
        call,
        &scope,
        path,
        request.as_bytes(),
        |running| async move {
            let result = create_backoffice_inner(app, call, p, &obj, running.as_ref()).await;
            if let (Err(e), Some(r)) = (&result, &running)
                && idem::is_final(e)
                && e.code() != Code::ProcessorFailed
            {
                let _ = app
                    .db
                    .commit(
                        vec![r.keep_error(e, call.now)?],
                        ApiError::new(Code::Conflict, "x"),
                    )
                    .await;
            }
            result
        },
    )
    .await
}

/// What an `Idempotency-Key` compares for `POST /charges`: keyd's keyed fingerprint of the
/// body without the CVC.
///
/// A plain hash of the body would let anyone holding the database recover the card from it
/// (with the BIN and last four digits beside it, about 10^10 guesses), and nothing derived from
/// a CVC may outlive the authorisation (PCI DSS 3.3.1): so the CVC never enters the value, and
/// the rest is keyed by a key only keyd holds. Two requests that differ only in their CVC are
/// therefore the same request.
async fn card_request_fingerprint(app: &App, obj: &Map<String, Value>) -> Result<String, ApiError> {
    let mut without_cvc = obj.clone();
    if let Some(Value::Object(card)) = without_cvc.get_mut("card") {
        card.remove("cvc");
    }
    let bytes =
        Zeroizing::new(serde_json::to_vec(&without_cvc).map_err(|e| ApiError::internal(&e))?);
    crate::keyd_ops::request_fingerprint(app, &bytes).await
}

async fn create_backoffice_inner(
    app: &App,
    call: &Call<'_>,
    p: &Principal,
    obj: &Map<String, Value>,
    running: Option<&Running<'_>>,
) -> Result<Value, ApiError> {
    let mut input = Input::new(obj);
    let merchant_id = input.opt_matching("merchant_id", ids::is_uuid, "a merchant id");
    let amount = input.money("amount", true, false, None);
    let currency = amount.as_ref().map(|a| a.currency.clone());
    let tip = input.money("tip", false, true, currency.as_deref());
    let card = input.nested("card", true, |c| {
        let number = c.matching(
            "number",
            processor::luhn_ok,
            "a card number passing the Luhn check",
        );
        let month = c.int("exp_month", 1..=12);
        let year = c.int("exp_year", 2000..=2099);
        c.matching(
            "cvc",
            |v| (3..=4).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()),
            "3 or 4 digits",
        );
        Some((
            Zeroizing::new(number?),
            u8::try_from(month?).ok()?,
            u16::try_from(year?).ok()?,
        ))
    });
    let location_id = input.opt_matching("location_id", ids::is_uuid, "a location id");
    let description = input.opt_text("description", 500);
    let metadata = input.opt_object("metadata");
    if let Some(m) = &metadata
        && (m.len() > 20
            || m.iter()
                .any(|(k, v)| k.len() > 40 || v.as_str().is_none_or(|s| s.len() > 500)))
    {
        input.fail("metadata", "at most 20 string pairs");
    }
    input.finish()?;
    let merchant = merchant_of_call(app, p, merchant_id.as_deref(), Action::Operate)?;
    let amount = amount.ok_or_else(|| ApiError::field("amount", "required"))?;
    check_total(&amount, tip.as_ref())?;
    if amount.currency != merchant.currency {
        return Err(ApiError::field(
            "amount.currency",
            "must be the merchant's currency",
        ));
    }
    if let Some(l) = &location_id {
        crate::backoffice::check_location(app, &merchant.id, l)?;
    }
    let (number, exp_month, exp_year) = card.ok_or_else(|| ApiError::field("card", "required"))?;
    let fingerprint = crate::keyd_ops::pan_fingerprint(app, &number).await?;
    let charge = create(
        app,
        NewCharge {
            merchant,
            amount,
            tip,
            card: CardInput {
                pan: Pan::new(number.to_string()),
                exp_month,
                exp_year,
                fingerprint,
                entry_mode: "manual".into(),
            },
            reference: None,
            description,
            metadata: metadata.unwrap_or_default(),
            location_id,
            terminal_id: None,
        },
        Vec::new(),
        running,
        call.now,
    )
    .await?;
    Ok(charge.to_json())
}

fn visible_charge(app: &App, p: &Principal, id: &str, action: Action) -> Result<Charge, ApiError> {
    if !ids::is_prefixed(id, "ch_", 20) {
        return Err(ApiError::not_found());
    }
    let c: Charge = app.db.find(id)?;
    authorize(p, action, &c.tenancy())?;
    Ok(c)
}

/// `GET /charges/{id}`.
pub fn get_backoffice(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(visible_charge(app, call.who()?, call.param(0), Action::Read)?.to_json())
}

/// `GET /charges`.
pub fn list_backoffice(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let merchant = merchant_of_call(app, p, call.query("merchant_id"), Action::Read)?;
    let (limit, after) = call.page()?;
    let page = app
        .db
        .page_filtered::<Txn>("transactions", &merchant.id, after, limit, |t| {
            matches!(t, Txn::Charge(_))
        })?;
    let items = page
        .items
        .iter()
        .filter_map(|t| match t {
            Txn::Charge(c) => Some(c.to_json()),
            Txn::Refund(_) => None,
        })
        .collect();
    Ok(list(items, page.has_more, "charge_id"))
}

/// A refund request's body, for the backoffice and the POS route alike.
pub(crate) fn refund_body(
    obj: &Map<String, Value>,
) -> Result<(Option<Money>, Option<String>), ApiError> {
    let mut input = Input::new(obj);
    let amount = input.money("amount", false, false, None);
    let reason = input.one_of(
        "reason",
        &["requested_by_customer", "duplicate", "fraudulent", "other"],
        false,
    );
    input.finish()?;
    Ok((amount, reason))
}

/// `POST /charges/{id}/refund`.
pub async fn refund_backoffice(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let charge = visible_charge(app, p, call.param(0), Action::Operate)?;
    let obj = if call.body.is_empty() {
        Map::new()
    } else {
        input::object(&call.body)?
    };
    let path = format!("/charges/{}/refund", charge.charge_id);
    keyed(app, call, &p.sub, &path, &call.body, |running| async move {
        let (amount, reason) = match refund_body(&obj) {
            Ok(x) => x,
            Err(e) => {
                if let Some(r) = &running {
                    let _ = app
                        .db
                        .commit(
                            vec![r.keep_error(&e, call.now)?],
                            ApiError::new(Code::Conflict, "x"),
                        )
                        .await;
                }
                return Err(e);
            }
        };
        refund(
            app,
            &charge.charge_id,
            amount,
            reason,
            Vec::new(),
            running.as_ref(),
            call.now,
        )
        .await
        .map(|r| r.to_json())
    })
    .await
}

/// `POST /charges/{id}/cancel`.
pub async fn cancel_backoffice(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let charge = visible_charge(app, p, call.param(0), Action::Operate)?;
    let path = format!("/charges/{}/cancel", charge.charge_id);
    keyed(app, call, &p.sub, &path, &call.body, |running| async move {
        cancel(
            app,
            &charge.charge_id,
            Vec::new(),
            running.as_ref(),
            call.now,
        )
        .await
        .map(|c| c.to_json())
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Settlements and transactions.

/// `POST /merchants/{id}/settlements`: closes the batch.
pub async fn settle(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let merchant = merchant_of_call(app, p, Some(call.param(0)), Action::ManageMerchant)?;
    // No merchant-wide lock: stripes are never nested (a settle key could share a stripe with a
    // charge and wait on itself). Holding every candidate's stripe at once (`lock_many`, in
    // order) serialises concurrent settlements of the same charges; the second finds them
    // settled when it re-reads.
    let settleable = |c: &Charge| {
        c.settled_at.is_none()
            && matches!(
                c.status,
                ChargeStatus::Approved | ChargeStatus::PartiallyRefunded
            )
    };
    // Every charge older than the last batch was settled by it or could not be; only a charge
    // still pending at that moment (its outcome came later) can be older, hence the margin.
    let margin = outcome_window(app);
    let cutoff = app
        .db
        .page::<Settlement>("settlements", &merchant.id, None, 1)?
        .items
        .first()
        .map(|s| s.next_cutoff(margin));
    let mut candidates: Vec<String> = Vec::new();
    app.db.walk::<Txn>("transactions", &merchant.id, |t| {
        if let Txn::Charge(c) = t {
            if cutoff.is_some_and(|cut| c.created_at < cut) {
                return Ok(false);
            }
            if settleable(&c) {
                candidates.push(c.charge_id);
            }
        }
        Ok(true)
    })?;
    // Refunds and cancels hold their charge's lock across the processor call and the commit;
    // holding every candidate's lock, the batch sees (and writes) each charge's latest state.
    let _charge_guards = app.locks.lock_many(&candidates).await;
    let mut open = Vec::with_capacity(candidates.len());
    for id in &candidates {
        if let Some(c) = app.db.get::<Charge>(id)?.filter(settleable) {
            open.push(c);
        }
    }
    // A total beyond 12 digits cannot be written as money: the batch takes the oldest charges
    // that fit and says `has_more`; the next settlement takes the rest.
    let (open, total, left_from) = fill_batch(open);
    let mut writes = Vec::with_capacity(open.len() + 1);
    for c in &open {
        let mut c = c.clone();
        c.settled_at = Some(call.now);
        if c.status == ChargeStatus::Approved {
            c.status = ChargeStatus::Settled;
        }
        writes.push(db::put(&c)?);
    }
    let settlement = Settlement {
        settlement_id: ids::time_ordered("st_")?,
        merchant_id: merchant.id.clone(),
        count: open.len() as u64,
        total: Amount {
            value: total,
            currency: merchant.currency.clone(),
        },
        created_at: call.now,
        left_from,
    };
    writes.push(db::put(&settlement)?);
    app.db
        .commit(
            writes,
            ApiError::new(Code::Conflict, "charges changed; try again"),
        )
        .await?;
    Ok(settlement.to_json())
}

/// `GET /merchants/{id}/settlements`.
pub fn settlements(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let merchant = merchant_of_call(app, p, Some(call.param(0)), Action::Read)?;
    let (limit, after) = call.page()?;
    let page = app
        .db
        .page::<Settlement>("settlements", &merchant.id, after, limit)?;
    let items = page.items.iter().map(Settlement::to_json).collect();
    Ok(list(items, page.has_more, "settlement_id"))
}

/// A charge or a refund, as the transactions list reads them from one index.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum Txn {
    Refund(Box<Refund>),
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
    fn item(&self) -> Value {
        match self {
            Self::Charge(c) => json!({
                "id": c.charge_id, "type": "charge", "status": c.status.as_str(),
                "amount": c.amount.to_json(), "terminal_id": c.terminal_id,
                "location_id": c.location_id, "created_at": rfc3339(c.created_at),
                "charge_id": c.charge_id,
            }),
            Self::Refund(r) => json!({
                "id": r.refund_id, "type": "refund", "status": "succeeded",
                "amount": r.amount.to_json(), "terminal_id": r.terminal_id,
                "location_id": r.location_id, "created_at": rfc3339(r.created_at),
                "charge_id": r.charge_id,
            }),
        }
    }

    fn status(&self) -> &str {
        match self {
            Self::Charge(c) => c.status.as_str(),
            Self::Refund(_) => "succeeded",
        }
    }
}

/// `GET /merchants/{id}/transactions`.
pub fn transactions(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let merchant = merchant_of_call(app, p, Some(call.param(0)), Action::Read)?;
    let (limit, after) = call.page()?;
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        call.query(name)
            .map(|t| {
                crate::time::parse_rfc3339(t)
                    .ok_or_else(|| ApiError::field(name, "an RFC 3339 time"))
            })
            .transpose()
    };
    let (from, to) = (time("from")?, time("to")?);
    let status = call.query("status").map(str::to_owned);
    let location = call.query("location_id").map(str::to_owned);
    let terminal = call.query("terminal_id").map(str::to_owned);
    // The cursor may name a charge or a refund.
    let after = match after {
        Some(id) if ids::is_prefixed(id, "re_", 20) => {
            if app.db.seq::<Refund>(id)?.is_none() {
                return Err(ApiError::field("starting_after", "unknown cursor"));
            }
            Some(id)
        }
        other => other,
    };
    let page = match after {
        Some(id) if id.starts_with("re_") => {
            let seq = app.db.seq::<Refund>(id)?.unwrap_or_default();
            app.db
                .page_before::<Txn>("transactions", &merchant.id, seq, limit, |t| {
                    keep_txn(
                        t,
                        status.as_deref(),
                        from,
                        to,
                        location.as_deref(),
                        terminal.as_deref(),
                    )
                })?
        }
        _ => app
            .db
            .page_filtered::<Txn>("transactions", &merchant.id, after, limit, |t| {
                keep_txn(
                    t,
                    status.as_deref(),
                    from,
                    to,
                    location.as_deref(),
                    terminal.as_deref(),
                )
            })?,
    };
    let items = page.items.iter().map(Txn::item).collect();
    Ok(list(items, page.has_more, "id"))
}

fn keep_txn(
    t: &Txn,
    status: Option<&str>,
    from: Option<i64>,
    to: Option<i64>,
    location: Option<&str>,
    terminal: Option<&str>,
) -> bool {
    let (created, loc, term) = match t {
        Txn::Charge(c) => (
            c.created_at,
            c.location_id.as_deref(),
            c.terminal_id.as_deref(),
        ),
        Txn::Refund(r) => (
            r.created_at,
            r.location_id.as_deref(),
            r.terminal_id.as_deref(),
        ),
    };
    status.is_none_or(|s| s == t.status())
        && from.is_none_or(|f| created >= f)
        && to.is_none_or(|x| created < x)
        && location.is_none_or(|l| loc == Some(l))
        && terminal.is_none_or(|x| term == Some(x))
}

/// `GET /merchants/{id}/transactions/{id}`.
pub fn transaction(app: &App, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let merchant = merchant_of_call(app, p, Some(call.param(0)), Action::Read)?;
    let id = call.param(1);
    let txn = if ids::is_prefixed(id, "re_", 20) {
        app.db.get::<Refund>(id)?.map(|r| Txn::Refund(Box::new(r)))
    } else if ids::is_prefixed(id, "ch_", 20) {
        app.db.get::<Charge>(id)?.map(|c| Txn::Charge(Box::new(c)))
    } else {
        None
    };
    match txn {
        Some(t) if t.merchant() == merchant.id => Ok(t.item()),
        _ => Err(ApiError::not_found()),
    }
}

impl Txn {
    fn merchant(&self) -> &str {
        match self {
            Self::Charge(c) => &c.merchant_id,
            Self::Refund(r) => &r.merchant_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn app() -> App {
        App::for_tests()
    }

    fn charge(id: &str, status: ChargeStatus, created_at: i64) -> Charge {
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
        }
    }

    /// A pending charge and its marker, as a lost request leaves them.
    async fn lost(app: &App, id: &str, created_at: i64) {
        let c = charge(id, ChargeStatus::Pending, created_at);
        let writes = vec![
            db::put(&c).unwrap(),
            db::put(&PendingCharge::of(&c, &app.boot)).unwrap(),
        ];
        app.db
            .commit(writes, ApiError::new(Code::Conflict, "x"))
            .await
            .unwrap();
    }

    fn status(app: &App, id: &str) -> ChargeStatus {
        app.db.get::<Charge>(id).unwrap().unwrap().status
    }

    #[tokio::test]
    async fn every_lost_charge_is_resolved_however_old() {
        let app = Arc::new(app());
        let now = crate::time::now();
        // A day old, an hour old (far outside any window from the newest charge), and one
        // made just now whose request may still be running.
        lost(&app, "ch_0000000aOLD0000000000000", now - 86_400).await;
        lost(&app, "ch_0000000bHOUR000000000000", now - 3600).await;
        let approved = charge(
            "ch_0000000cMID0000000000000",
            ChargeStatus::Approved,
            now - 10,
        );
        lost(&app, "ch_0000000dNEW0000000000000", now).await;
        app.db
            .commit(
                vec![db::put(&approved).unwrap()],
                ApiError::new(Code::Conflict, "x"),
            )
            .await
            .unwrap();
        assert_eq!(recovery::recover(&app, now).await.unwrap(), 2);
        assert_eq!(
            status(&app, "ch_0000000aOLD0000000000000"),
            ChargeStatus::Failed
        );
        assert_eq!(
            status(&app, "ch_0000000bHOUR000000000000"),
            ChargeStatus::Failed
        );
        assert_eq!(
            status(&app, "ch_0000000cMID0000000000000"),
            ChargeStatus::Approved
        );
        // Visible as pending while its request may still answer; resolved once it cannot.
        assert_eq!(
            status(&app, "ch_0000000dNEW0000000000000"),
            ChargeStatus::Pending
        );
        assert_eq!(recovery::recover(&app, now + 60).await.unwrap(), 1);
        assert_eq!(
            status(&app, "ch_0000000dNEW0000000000000"),
            ChargeStatus::Failed
        );
        assert_eq!(recovery::recover(&app, now + 60).await.unwrap(), 0);
        assert!(
            app.db
                .all::<PendingCharge>("pending_charges", "all")
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn pending_charges_from_before_markers_are_found() {
        let app = Arc::new(app());
        let now = crate::time::now();
        let old = charge(
            "ch_0000000aOLD0000000000000",
            ChargeStatus::Pending,
            now - 86_400,
        );
        app.db
            .commit(
                vec![db::put(&old).unwrap()],
                ApiError::new(Code::Conflict, "x"),
            )
            .await
            .unwrap();
        assert_eq!(recovery::mark_unmarked(&app).await.unwrap(), 1);
        assert_eq!(
            recovery::mark_unmarked(&app).await.unwrap(),
            0,
            "once per store"
        );
        assert_eq!(recovery::recover(&app, now).await.unwrap(), 1);
        assert_eq!(
            status(&app, "ch_0000000aOLD0000000000000"),
            ChargeStatus::Failed
        );
    }

    /// A request whose processor answer comes after recovery took its charge over: the
    /// charge ends failed (recovery voided it), and the request says so, never "approved".
    #[tokio::test]
    async fn a_late_outcome_never_overwrites_recovery() {
        let mut app = app();
        app.processor = Arc::new(processor::Simulator::new(
            std::time::Duration::from_millis(400),
            std::time::Duration::from_secs(5),
        ));
        let app = Arc::new(app);
        let now = crate::time::now();
        let merchant: Merchant = serde_json::from_value(json!({
            "id": "m", "reseller_id": "r", "resellers": ["r"], "name": "M", "mcc": "5812",
            "country": "DE", "currency": "EUR", "fee_template_id": null, "tip_info": {},
            "tax_info": {}, "surcharge_info": {}, "merchant_key": "k",
            "terminal_parameters": null, "created_at": now, "updated_at": now,
        }))
        .unwrap();
        let new = NewCharge {
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
                fingerprint: String::new(),
                entry_mode: "chip".into(),
            },
            reference: None,
            description: None,
            metadata: Map::new(),
            location_id: None,
            terminal_id: None,
        };
        let live = {
            let app = Arc::clone(&app);
            tokio::spawn(async move { create(&app, new, Vec::new(), None, now).await })
        };
        // While the processor thinks, a recovery round that sees the charge as overdue (as
        // after a stalled request) takes it over.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(recovery::recover(&app, now + 3600).await.unwrap(), 1);
        let answer = live.await.unwrap();
        assert_eq!(answer.unwrap_err().code(), Code::ProcessorFailed);
        let charges = app.db.scan_back::<Charge>(None, 10).unwrap();
        assert_eq!(charges.len(), 1);
        assert_eq!(charges[0].status, ChargeStatus::Failed);
    }

    #[test]
    fn a_batch_never_passes_twelve_digits() {
        let big = |id: &str, at: i64| {
            let mut c = charge(id, ChargeStatus::Approved, at);
            c.amount.value = MAX_MONEY;
            c
        };
        let small = charge("ch_0000000cSMALL00000000000", ChargeStatus::Approved, 30);
        let (taken, total, left) = fill_batch(vec![
            big("ch_0000000bBIG200000000000", 20),
            small.clone(),
            big("ch_0000000aBIG100000000000", 10),
        ]);
        let ids: Vec<_> = taken.iter().map(|c| c.charge_id.as_str()).collect();
        assert_eq!(
            ids,
            ["ch_0000000aBIG100000000000"],
            "oldest first, the rest left"
        );
        assert_eq!((total, left), (MAX_MONEY, Some(20)));
        let (taken, total, left) = fill_batch(vec![big("ch_0000000bBIG200000000000", 20), small]);
        assert_eq!((taken.len(), total, left), (1, MAX_MONEY, Some(30)));
        let s = Settlement {
            settlement_id: "st_x".into(),
            merchant_id: "m".into(),
            count: 1,
            total: Amount {
                value: total,
                currency: "EUR".into(),
            },
            created_at: 1000,
            left_from: left,
        };
        assert_eq!(s.to_json()["has_more"], true);
        assert_eq!(
            s.next_cutoff(100),
            30,
            "the next batch looks back to what was left"
        );
        let (taken, total, left) = fill_batch(Vec::new());
        assert_eq!((taken.len(), total, left), (0, 0, None));
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
