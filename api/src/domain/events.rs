//! Events: what happened to a charge, a refund, a settlement, a device or a merchant, kept
//! so that merchants' back ends can follow without polling (`GET /events`, and webhooks).
//!
//! An event is written by [`event`] into the *same batch* as the change it reports, so the
//! store's all-or-nothing commit makes it an outbox: after any crash, a change has its event
//! and an event its change. Beside the event goes a small [`Outbox`] row, which webhook fan-out
//! (`crate::webhooks`) deletes in the commit that creates the event's deliveries: the event
//! itself is never written again, and fan-out reads the small rows, not the events' bodies.
//!
//! An event shows its object as the API shows it at that moment (`data.object`), so it never
//! carries more than a `GET` of the object would: no card number, no key, no secret.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::domain::charges::{Charge, ChargeStatus, Refund};
use crate::domain::model::{Device, DeviceStatus, Merchant};
use crate::domain::settlement::Settlement;
use crate::error::ApiError;
use crate::reply;
use crate::store::Write;
use crate::store::db::{self, Record};
use crate::wire::ids;
use crate::wire::reply::{Choices, Shape, Time};

/// Every event type there is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(
    missing_docs,
    reason = "each variant is named after its wire name, listed in ALL"
)]
pub enum EventType {
    ChargeApproved,
    ChargeDeclined,
    ChargeFailed,
    ChargeRefunded,
    ChargePartiallyRefunded,
    ChargeCancelled,
    RefundSucceeded,
    SettlementCreated,
    DeviceRegistered,
    DeviceClaimed,
    DeviceActivated,
    DeviceDisabled,
    DeviceEnabled,
    DeviceOffline,
    DeviceOnline,
    MerchantCreated,
    MerchantUpdated,
}

impl Choices for EventType {
    const ALL: &'static [&'static str] = &[
        "charge.approved",
        "charge.declined",
        "charge.failed",
        "charge.refunded",
        "charge.partially_refunded",
        "charge.cancelled",
        "refund.succeeded",
        "settlement.created",
        "device.registered",
        "device.claimed",
        "device.activated",
        "device.disabled",
        "device.enabled",
        "device.offline",
        "device.online",
        "merchant.created",
        "merchant.updated",
    ];
    fn as_str(self) -> &'static str {
        Self::as_str(self)
    }
}

impl EventType {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ChargeApproved => "charge.approved",
            Self::ChargeDeclined => "charge.declined",
            Self::ChargeFailed => "charge.failed",
            Self::ChargeRefunded => "charge.refunded",
            Self::ChargePartiallyRefunded => "charge.partially_refunded",
            Self::ChargeCancelled => "charge.cancelled",
            Self::RefundSucceeded => "refund.succeeded",
            Self::SettlementCreated => "settlement.created",
            Self::DeviceRegistered => "device.registered",
            Self::DeviceClaimed => "device.claimed",
            Self::DeviceActivated => "device.activated",
            Self::DeviceDisabled => "device.disabled",
            Self::DeviceEnabled => "device.enabled",
            Self::DeviceOffline => "device.offline",
            Self::DeviceOnline => "device.online",
            Self::MerchantCreated => "merchant.created",
            Self::MerchantUpdated => "merchant.updated",
        }
    }

    /// The event a charge's new status is reported by (`None` for a status no one is told
    /// about: `pending`, which is a moment inside a request, and `settled`, which the
    /// settlement's own event reports).
    pub const fn of_charge(status: ChargeStatus) -> Option<Self> {
        Some(match status {
            ChargeStatus::Approved => Self::ChargeApproved,
            ChargeStatus::Declined => Self::ChargeDeclined,
            ChargeStatus::Failed => Self::ChargeFailed,
            ChargeStatus::Refunded => Self::ChargeRefunded,
            ChargeStatus::PartiallyRefunded => Self::ChargePartiallyRefunded,
            ChargeStatus::Cancelled => Self::ChargeCancelled,
            ChargeStatus::Pending | ChargeStatus::Settled => return None,
        })
    }

    /// The event of a device's new status (a device back to `inactive` after being disabled
    /// was enabled).
    pub const fn of_device(status: DeviceStatus) -> Self {
        match status {
            DeviceStatus::Inactive => Self::DeviceEnabled,
            DeviceStatus::Claimed => Self::DeviceClaimed,
            DeviceStatus::Activated => Self::DeviceActivated,
            DeviceStatus::Disabled => Self::DeviceDisabled,
        }
    }
}

/// Whether `pattern` (an event type, `<object>.*` or `*`) takes events of type `ty`.
pub fn type_matches(pattern: &str, ty: &str) -> bool {
    pattern == "*"
        || pattern == ty
        || pattern
            .strip_suffix(".*")
            .is_some_and(|object| ty.split_once('.').is_some_and(|(o, _)| o == object))
}

/// Whether a filter is a known type, `<object>.*` for an object events exist for, or `*`.
pub fn valid_pattern(pattern: &str) -> bool {
    pattern == "*"
        || EventType::ALL.contains(&pattern)
        || pattern.strip_suffix(".*").is_some_and(|object| {
            EventType::ALL
                .iter()
                .any(|t| t.split_once('.').is_some_and(|(o, _)| o == object))
        })
}

/// An event as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// `evt_` and a time-ordered suffix.
    pub id: String,
    /// Its type's wire name.
    pub event_type: String,
    /// `charge`, `refund`, `settlement`, `device`, `merchant`.
    pub object_type: String,
    /// The object's id.
    pub object_id: String,
    /// The merchant the object belongs to (tenancy: the merchant, and every reseller above
    /// it through `merchant_resellers`).
    pub merchant_id: Option<String>,
    /// `{"object": …}` as the API showed the object when the event happened.
    pub data: Value,
    /// Unix seconds.
    pub created_at: i64,
}

/// An event whose webhook deliveries do not exist yet: what fan-out needs to route it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outbox {
    /// The event's id.
    pub id: String,
    /// Its type.
    pub event_type: String,
    /// The object it is about.
    pub object_id: String,
    /// Its merchant.
    pub merchant_id: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
}

impl Record for Outbox {
    const KIND: &'static str = "event_outbox";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

impl Record for Event {
    const KIND: &'static str = "event";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        // All are columns (`merchant_events`, `object_events`, and through the merchant's
        // resellers `reseller_events`): nothing to write beside the row.
        Vec::new()
    }
}

reply! {
    /// An event: something that happened to an object, with the object as it was then.
    pub struct EventReply<'a> as "event" {
        /// `evt_…`.
        pub id: &'a str,
        /// What happened.
        pub r#type: &'a str,
        /// The merchant concerned.
        pub merchant_id: Option<&'a str>,
        /// `{"object": …}`: the object as its own endpoint showed it at that moment.
        pub data: EventData<'a>,
        /// When.
        pub created_at: Time,
    }
}

/// An event's `data`, with its schema.
#[derive(Debug)]
pub struct EventData<'a>(pub &'a Value);

impl Serialize for EventData<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl Shape for EventData<'_> {
    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["object"],
            "properties": {"object": {"type": "object",
                "description": "A charge, refund, settlement, device or merchant, as its own endpoint answers it"}},
        })
    }
}

impl Event {
    /// The wire form.
    pub fn reply(&self) -> EventReply<'_> {
        EventReply {
            id: &self.id,
            r#type: &self.event_type,
            merchant_id: self.merchant_id.as_deref(),
            data: EventData(&self.data),
            created_at: Time(self.created_at),
        }
    }

    /// The wire form as a JSON value.
    pub fn to_json(&self) -> Value {
        crate::wire::reply::json(&self.reply())
    }

    /// The tenancy check of an event: who may see it.
    pub fn tenancy(&self, merchant: Option<&Merchant>) -> crate::domain::model::Tenancy {
        crate::domain::model::Tenancy {
            resellers: merchant.map(|m| m.resellers.clone()).unwrap_or_default(),
            merchant: self.merchant_id.clone(),
        }
    }
}

/// An object events are about.
pub trait Subject {
    /// Its `object` name.
    const OBJECT: &'static str;
    /// Its id.
    fn subject_id(&self) -> &str;
    /// Its merchant.
    fn subject_merchant(&self) -> Option<&str>;
    /// As the API shows it: its answer's form, serialised straight into the event.
    fn snapshot(&self) -> impl Serialize + '_;
}

macro_rules! subject {
    ($t:ty, $object:literal, |$s:ident| $id:expr, $merchant:expr) => {
        impl Subject for $t {
            const OBJECT: &'static str = $object;
            fn subject_id(&self) -> &str {
                let $s = self;
                $id
            }
            fn subject_merchant(&self) -> Option<&str> {
                let $s = self;
                Some($merchant)
            }
            fn snapshot(&self) -> impl Serialize + '_ {
                self.reply()
            }
        }
    };
}

subject!(Charge, "charge", |c| &c.charge_id, &c.merchant_id);
subject!(Refund, "refund", |r| &r.refund_id, &r.merchant_id);
subject!(
    Settlement,
    "settlement",
    |s| &s.settlement_id,
    &s.merchant_id
);
subject!(Device, "device", |d| &d.device_id, &d.merchant_id);
subject!(Merchant, "merchant", |m| &m.id, &m.id);

/// The writes that record event `ty` about `subject` (the event and its outbox row), to go
/// into the batch that makes the change it reports.
///
/// # Errors
/// 500 if no random id can be drawn.
pub fn event<S: Subject>(ty: EventType, subject: &S, now: i64) -> Result<Vec<Write>, ApiError> {
    let outbox = Outbox {
        id: ids::time_ordered("evt_")?,
        event_type: ty.as_str().to_owned(),
        object_id: subject.subject_id().to_owned(),
        merchant_id: subject.subject_merchant().map(str::to_owned),
        created_at: now,
    };
    // The subject goes into the row's `data` column as text in one pass, without a JSON tree
    // of it first (on the charge path that tree and its copies were a tenth of the API's CPU).
    let e = EventView {
        id: &outbox.id,
        event_type: &outbox.event_type,
        object_type: S::OBJECT,
        object_id: &outbox.object_id,
        merchant_id: outbox.merchant_id.as_deref(),
        data: Object {
            object: subject.snapshot(),
        },
        created_at: now,
    };
    Ok(vec![
        db::put_view::<Event, _>(e.id, Vec::new(), &e)?,
        db::put(&outbox)?,
    ])
}

/// An [`Event`] as it is written: the same fields, borrowed, with `data` serialised from the
/// subject's answer.
#[derive(Serialize)]
struct EventView<'a, T: Serialize> {
    id: &'a str,
    event_type: &'a str,
    object_type: &'a str,
    object_id: &'a str,
    merchant_id: Option<&'a str>,
    data: Object<T>,
    created_at: i64,
}

/// `{"object": …}`.
#[derive(Serialize)]
struct Object<T: Serialize> {
    object: T,
}

/// The event of a charge's status, if it has one (no writes otherwise).
///
/// # Errors
/// As [`event`].
pub fn charge_event(charge: &Charge, now: i64) -> Result<Vec<Write>, ApiError> {
    match EventType::of_charge(charge.status) {
        Some(ty) => event(ty, charge, now),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_take_their_types_and_nothing_else() {
        assert!(type_matches("*", "charge.approved"));
        assert!(type_matches("charge.*", "charge.partially_refunded"));
        assert!(type_matches("charge.approved", "charge.approved"));
        assert!(!type_matches("charge.*", "refund.succeeded"));
        assert!(!type_matches("charge", "charge.approved"));
        assert!(!type_matches("charge.approved", "charge.declined"));
        assert!(valid_pattern("device.*") && valid_pattern("*"));
        assert!(valid_pattern("settlement.created"));
        assert!(!valid_pattern("nothing.*") && !valid_pattern("charge.paid"));
        assert!(!valid_pattern("") && !valid_pattern("charge.*.*"));
    }

    #[test]
    fn every_type_is_listed_once_under_its_own_name() {
        let all = [
            EventType::ChargeApproved,
            EventType::ChargeDeclined,
            EventType::ChargeFailed,
            EventType::ChargeRefunded,
            EventType::ChargePartiallyRefunded,
            EventType::ChargeCancelled,
            EventType::RefundSucceeded,
            EventType::SettlementCreated,
            EventType::DeviceRegistered,
            EventType::DeviceClaimed,
            EventType::DeviceActivated,
            EventType::DeviceDisabled,
            EventType::DeviceEnabled,
            EventType::DeviceOffline,
            EventType::DeviceOnline,
            EventType::MerchantCreated,
            EventType::MerchantUpdated,
        ];
        let names: Vec<&str> = all.iter().map(|t| t.as_str()).collect();
        assert_eq!(names, EventType::ALL);
    }
}
