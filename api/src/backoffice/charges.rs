//! The charge endpoints of the backoffice (contract sections 8 and 9): keyed card charges,
//! retrieval and lists, refunds, cancels, settlements and the transactions list. Each handler
//! authorises the caller, reads its body, and hands the work to the engine in
//! `domain::charges` (or `domain::settlement`).

use std::future::Future;

use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::auth::authz::{Action, Principal, Scope, authorize};
use crate::backoffice::Backoffice;
use crate::domain::charges::{
    self, CardInput, Charge, ChargeStatus, NewCharge, Refund, Txn, check_total,
};
use crate::domain::idem::{self, Begin, Running};
use crate::domain::model::Merchant;
use crate::domain::processor::Pan;
use crate::domain::settlement::{self, Settlement};
use crate::error::{ApiError, Code};
use crate::request::{Call, list};
use crate::wire::body::{self, At, Field, Int, Problems, Text};
use crate::wire::fields::{CardNumber, Cvc, Id, Money, MoneyOrZero, tip_in_currency};
use crate::wire::ids;
use crate::wire::reply::Choices;

async fn merchant_of_call(
    app: &Backoffice<'_>,
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
    crate::backoffice::merchant(app, p, &id, action).await
}

/// Runs a keyed request through the idempotency table: a replay answers the kept answer.
pub async fn keyed<'a, F, Fut>(
    app: &'a Backoffice<'a>,
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
        .begin(app.db, scope, "POST", path, key, request, call.now)
        .await?
    {
        Begin::Replay(kept) if kept.status < 300 => Ok(kept.body),
        Begin::Replay(kept) => Err(ApiError::from_stored(&kept.body)),
        Begin::Run(running) => run(Some(running)).await,
    }
}

/// `POST /charges`.
///
/// The body is validated before the `Idempotency-Key` is looked at: a body that fails
/// validation was not accepted, so its 400 is answered again to a retry rather than kept
/// (contract section 1 keeps "the first final answer given after the body was accepted").
pub async fn create_backoffice(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let body = ChargeBody::read(&call.body)?;
    let path = "/charges";
    let scope = p.sub.clone();
    let request = if idem::key_header(call.headers)?.is_some() {
        body.fingerprint(app).await?
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
            let result = create_backoffice_inner(app, call, p, body, running.as_ref()).await;
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

/// A valid `POST /charges` body. The CVC is checked and then dropped: nothing downstream
/// needs it (the simulator, like a card-not-present processor behind a gateway that verified
/// it, decides on the PAN) and nothing derived from it may be kept.
#[derive(serde::Serialize)]
struct ChargeBody {
    merchant_id: Option<String>,
    amount: Money,
    tip: Option<Money>,
    #[serde(serialize_with = "expose")]
    number: Zeroizing<String>,
    exp_month: u8,
    exp_year: u16,
    location_id: Option<String>,
    description: Option<String>,
    metadata: Map<String, Value>,
}

fn expose<S: serde::Serializer>(number: &Zeroizing<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(number)
}

crate::body! {
    /// The card of a keyed charge.
    #[derive(Debug)]
    pub struct Card {
        /// The card number.
        pub number: CardNumber,
        /// Expiry month.
        pub exp_month: Int<1, 12>,
        /// Expiry year, four digits.
        pub exp_year: Int<2000, 2099>,
        /// Checked for form, then dropped: never kept in any form.
        pub cvc: Cvc,
    }
}

/// Free-form pairs a merchant attaches to a charge: at most 20, names of at most 40
/// characters, string values of at most 500.
#[derive(Debug, Default)]
pub struct Metadata(Map<String, Value>);

impl Field for Metadata {
    fn read(value: Value, at: &At<'_>, problems: &mut Problems) -> Option<Self> {
        match value {
            Value::Object(m)
                if m.len() <= 20
                    && m.iter().all(|(k, v)| {
                        k.chars().count() <= 40
                            && v.as_str().is_some_and(|s| s.chars().count() <= 500)
                    }) =>
            {
                Some(Self(m))
            }
            _ => {
                problems.fail(at, "at most 20 string pairs");
                None
            }
        }
    }

    fn schema() -> Value {
        serde_json::json!({
            "type": "object",
            "maxProperties": 20,
            "propertyNames": {"maxLength": 40},
            "additionalProperties": {"type": "string", "maxLength": 500},
        })
    }
}

crate::body! {
    /// `POST /charges`: a keyed card charge.
    #[derive(Debug)]
    pub struct ChargeCreate {
        /// The merchant charging; a merchant's own users may leave it out.
        pub merchant_id: Option<Id>,
        /// The amount, in the merchant's currency.
        pub amount: Money,
        /// A tip on top, in the same currency.
        pub tip: Option<MoneyOrZero>,
        /// The card.
        pub card: Card,
        /// Where the sale happened.
        pub location_id: Option<Id>,
        /// Shown in the transaction list.
        pub description: Option<Text<500>>,
        /// Free-form pairs kept with the charge.
        pub metadata: Option<Metadata>,
        /// Never given (spec 12.2).
        pub pin_block: body::NoPin,
    }
}

impl ChargeBody {
    /// Validates every field, reporting every bad one at once.
    fn read(bytes: &[u8]) -> Result<Self, ApiError> {
        let b: ChargeCreate = body::parse_checked(bytes, |b: &ChargeCreate, p| {
            tip_in_currency(&b.amount, b.tip.as_ref(), p);
        })?;
        Ok(Self {
            merchant_id: b.merchant_id.map(String::from),
            amount: b.amount,
            tip: b.tip.map(|t| t.0),
            number: b.card.number.into_inner(),
            exp_month: u8::try_from(b.card.exp_month.0).unwrap_or_default(),
            exp_year: u16::try_from(b.card.exp_year.0).unwrap_or_default(),
            location_id: b.location_id.map(String::from),
            description: b.description.map(String::from),
            metadata: b.metadata.unwrap_or_default().0,
        })
    }

    /// What an `Idempotency-Key` compares for `POST /charges`: keyd's keyed fingerprint of
    /// the validated fields (the CVC is not among them, nor any field the contract ignores).
    ///
    /// A plain hash of the body would let anyone holding the database recover the card from
    /// it (with the BIN and last four digits beside it, about 10^10 guesses), and nothing
    /// derived from a CVC may outlive the authorisation (PCI DSS 3.3.1): so the CVC never
    /// enters the value, and the rest is keyed by a key only keyd holds. Two requests that
    /// differ only in their CVC, in fields the contract ignores, or in the spelling of the
    /// same JSON are therefore the same request.
    async fn fingerprint(&self, app: &Backoffice<'_>) -> Result<String, ApiError> {
        let bytes = Zeroizing::new(serde_json::to_vec(self).map_err(|e| ApiError::internal(&e))?);
        crate::keyd::ops::request_fingerprint(app.keyd, &bytes).await
    }
}

async fn create_backoffice_inner(
    app: &Backoffice<'_>,
    call: &Call<'_>,
    p: &Principal,
    body: ChargeBody,
    running: Option<&Running<'_>>,
) -> Result<Value, ApiError> {
    let ChargeBody {
        merchant_id,
        amount,
        tip,
        number,
        exp_month,
        exp_year,
        location_id,
        description,
        metadata,
    } = body;
    let merchant = merchant_of_call(app, p, merchant_id.as_deref(), Action::Operate).await?;
    check_total(&amount, tip.as_ref())?;
    if amount.currency != merchant.currency {
        return Err(ApiError::field(
            "amount.currency",
            "must be the merchant's currency",
        ));
    }
    if let Some(l) = &location_id {
        crate::domain::model::check_location(app.db, &merchant.id, l).await?;
    }
    let fingerprint = crate::keyd::ops::pan_fingerprint(app.keyd, &number).await?;
    let charge = charges::create(
        app.charges,
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
                pin_block: None,
            },
            reference: None,
            description,
            metadata,
            location_id,
            terminal_id: None,
            emv_data: None,
        },
        Vec::new(),
        running,
        call.now,
    )
    .await?;
    Ok(charge.to_json())
}

async fn visible_charge(
    app: &Backoffice<'_>,
    p: &Principal,
    id: &str,
    action: Action,
) -> Result<Charge, ApiError> {
    if !ids::is_prefixed(id, "ch_", 20) {
        return Err(ApiError::not_found());
    }
    let c: Charge = app.db.find(id).await?;
    authorize(p, action, &c.tenancy())?;
    Ok(c)
}

/// `GET /charges/{id}`.
pub async fn get_backoffice(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    Ok(
        visible_charge(app, call.who()?, call.param(0), Action::Read)
            .await?
            .to_json(),
    )
}

/// `GET /charges`.
pub async fn list_backoffice(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let merchant = merchant_of_call(app, p, call.query("merchant_id"), Action::Read).await?;
    let (limit, after) = call.page()?;
    let page = app
        .db
        .page_filtered::<Txn>("transactions", &merchant.id, after, limit, |t| {
            matches!(t, Txn::Charge(_))
        })
        .await?;
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

/// `POST /charges/{id}/refund`.
pub async fn refund_backoffice(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let charge = visible_charge(app, p, call.param(0), Action::Operate).await?;
    let obj = if call.body.is_empty() {
        Map::new()
    } else {
        body::object(&call.body)?
    };
    let path = format!("/charges/{}/refund", charge.charge_id);
    keyed(app, call, &p.sub, &path, &call.body, |running| async move {
        let (amount, reason) = match crate::request::refund_body(obj) {
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
        charges::refund(
            app.charges,
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
pub async fn cancel_backoffice(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let charge = visible_charge(app, p, call.param(0), Action::Operate).await?;
    let path = format!("/charges/{}/cancel", charge.charge_id);
    keyed(app, call, &p.sub, &path, &call.body, |running| async move {
        charges::cancel(
            app.charges,
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
pub async fn settle(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let merchant = merchant_of_call(app, p, Some(call.param(0)), Action::ManageMerchant).await?;
    Ok(settlement::settle(app.charges, &merchant, call.now)
        .await?
        .to_json())
}

/// `GET /merchants/{id}/settlements`.
pub async fn settlements(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let merchant = merchant_of_call(app, p, Some(call.param(0)), Action::Read).await?;
    let (limit, after) = call.page()?;
    let page = app
        .db
        .page::<Settlement>("settlements", &merchant.id, after, limit)
        .await?;
    let items = page.items.iter().map(Settlement::to_json).collect();
    Ok(list(items, page.has_more, "settlement_id"))
}

/// `GET /merchants/{id}/transactions`.
pub async fn transactions(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let merchant = merchant_of_call(app, p, Some(call.param(0)), Action::Read).await?;
    let (limit, after) = call.page()?;
    let time = |name: &str| -> Result<Option<i64>, ApiError> {
        call.query(name)
            .map(|t| {
                crate::wire::time::parse_rfc3339(t)
                    .ok_or_else(|| ApiError::field(name, "an RFC 3339 time"))
            })
            .transpose()
    };
    let (from, to) = (time("from")?, time("to")?);
    let status = call.query("status").map(str::to_owned);
    if let Some(s) = &status
        && s != "succeeded"
        && !<ChargeStatus as Choices>::ALL.contains(&s.as_str())
    {
        return Err(ApiError::field("status", "a charge status or succeeded"));
    }
    let location = call.query("location_id").map(str::to_owned);
    let terminal = call.query("terminal_id").map(str::to_owned);
    // The cursor may name a charge or a refund.
    let after = match after {
        Some(id) if ids::is_prefixed(id, "re_", 20) => {
            if app.db.seq::<Refund>(id).await?.is_none() {
                return Err(ApiError::field("starting_after", "unknown cursor"));
            }
            Some(id)
        }
        other => other,
    };
    let page = match after {
        Some(id) if id.starts_with("re_") => {
            let seq = app.db.seq::<Refund>(id).await?.unwrap_or_default();
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
                })
                .await?
        }
        _ => {
            app.db
                .page_filtered::<Txn>("transactions", &merchant.id, after, limit, |t| {
                    keep_txn(
                        t,
                        status.as_deref(),
                        from,
                        to,
                        location.as_deref(),
                        terminal.as_deref(),
                    )
                })
                .await?
        }
    };
    let items = page.items.iter().map(Txn::to_json).collect();
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
pub async fn transaction(app: &Backoffice<'_>, call: &Call<'_>) -> Result<Value, ApiError> {
    let p = call.who()?;
    let merchant = merchant_of_call(app, p, Some(call.param(0)), Action::Read).await?;
    let id = call.param(1);
    let txn = if ids::is_prefixed(id, "re_", 20) {
        app.db
            .get::<Refund>(id)
            .await?
            .map(|r| Txn::Refund(Box::new(r)))
    } else if ids::is_prefixed(id, "ch_", 20) {
        app.db
            .get::<Charge>(id)
            .await?
            .map(|c| Txn::Charge(Box::new(c)))
    } else {
        None
    };
    match txn {
        Some(t) if t.merchant() == merchant.id => Ok(t.to_json()),
        _ => Err(ApiError::not_found()),
    }
}
