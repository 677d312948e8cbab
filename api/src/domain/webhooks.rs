//! Webhook endpoints and deliveries as records, how they are shown, and the rules of
//! delivery that do not need the network: which endpoint takes which event, how long to wait
//! before the next attempt, and the `Viopay-Signature` header.
//!
//! An endpoint's signing secrets live in keyd. What the store keeps of each is its salt, the
//! name keyd derives it from, and when it stops being used; the secret itself is shown once,
//! when keyd makes it, and only keyd can sign with it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::events::type_matches;
use crate::reply;
use crate::store::db::Record;
use crate::wire::reply::{Choices, OneOf, Time};

/// The most event types one endpoint lists.
pub const MAX_EVENT_TYPES: usize = 32;

/// The most secrets one endpoint signs with at once (the current one and those still in their
/// overlap after rotations).
pub const MAX_SECRETS: usize = 4;

/// The attempts a delivery keeps in its log (the latest).
pub const LOG_KEPT: usize = 10;

/// Whether an endpoint is sent events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointStatus {
    /// Sent every event it takes.
    Enabled,
    /// Sent nothing; events meanwhile are not queued for it.
    Disabled,
}

impl Choices for EndpointStatus {
    const ALL: &'static [&'static str] = &["enabled", "disabled"];
    fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
        }
    }
}

/// One signing secret of an endpoint, by its keyd salt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    /// The 16-byte salt keyd derived the secret from, in hex.
    pub salt: String,
    /// Unix seconds.
    pub created_at: i64,
    /// When it stops being used (`None`: the current secret).
    pub expires_at: Option<i64>,
}

/// A webhook endpoint of a merchant or a reseller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    /// `we_…`.
    pub id: String,
    /// The merchant that owns it (its events).
    pub merchant_id: Option<String>,
    /// The reseller that owns it (the events of every merchant below it).
    pub reseller_id: Option<String>,
    /// Where events are POSTed.
    pub url: String,
    /// For people.
    pub description: Option<String>,
    /// Event types, `<object>.*` or `*`.
    pub enabled_events: Vec<String>,
    /// Enabled or disabled.
    pub status: EndpointStatus,
    /// Newest first: the current secret, then those still in their overlap.
    pub secrets: Vec<SecretRef>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

impl Record for WebhookEndpoint {
    const KIND: &'static str = "webhook_endpoint";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

impl WebhookEndpoint {
    /// Whether it is sent events of type `ty`.
    pub fn takes(&self, ty: &str) -> bool {
        self.status == EndpointStatus::Enabled
            && self.enabled_events.iter().any(|p| type_matches(p, ty))
    }

    /// The salts of the secrets to sign with at `now`, current first.
    pub fn signing_salts(&self, now: i64) -> Vec<[u8; 16]> {
        self.secrets
            .iter()
            .filter(|s| s.expires_at.is_none_or(|at| at > now))
            .filter_map(|s| {
                let mut salt = [0u8; 16];
                hex::decode_to_slice(&s.salt, &mut salt).ok()?;
                Some(salt)
            })
            .collect()
    }

    /// Its owner as the store lists it (`webhook_endpoints`).
    pub fn owner(&self) -> &str {
        self.merchant_id
            .as_deref()
            .or(self.reseller_id.as_deref())
            .unwrap_or_default()
    }
}

reply! {
    /// A webhook endpoint (its secret is shown only when it is made).
    pub struct WebhookEndpointReply<'a> as "webhook_endpoint" {
        /// `we_…`.
        pub id: &'a str,
        /// The merchant whose events it gets.
        pub merchant_id: Option<&'a str>,
        /// The reseller whose merchants' events it gets.
        pub reseller_id: Option<&'a str>,
        /// Where events are POSTed.
        pub url: &'a str,
        /// For people.
        pub description: Option<&'a str>,
        /// Event types, `<object>.*` or `*`.
        pub enabled_events: Vec<&'a str>,
        /// `enabled` or `disabled`.
        pub status: OneOf<EndpointStatus>,
        /// When the secret before the last rotation stops signing (`null`: no overlap).
        pub previous_secret_expires_at: Option<Time>,
        /// Created.
        pub created_at: Time,
        /// Last changed.
        pub updated_at: Time,
    }
}

impl WebhookEndpoint {
    /// The wire form at `now`.
    pub fn reply(&self, now: i64) -> WebhookEndpointReply<'_> {
        WebhookEndpointReply {
            id: &self.id,
            merchant_id: self.merchant_id.as_deref(),
            reseller_id: self.reseller_id.as_deref(),
            url: &self.url,
            description: self.description.as_deref(),
            enabled_events: self.enabled_events.iter().map(String::as_str).collect(),
            status: OneOf(self.status),
            previous_secret_expires_at: self
                .secrets
                .iter()
                .filter_map(|s| s.expires_at)
                .filter(|at| *at > now)
                .max()
                .map(Time),
            created_at: Time(self.created_at),
            updated_at: Time(self.updated_at),
        }
    }

    /// The wire form as a JSON value.
    pub fn to_json(&self, now: i64) -> Value {
        crate::wire::reply::json(&self.reply(now))
    }
}

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// An attempt got a 2xx.
    Succeeded,
    /// Given up (too old, or its endpoint is gone or disabled).
    Failed,
}

impl Choices for DeliveryStatus {
    const ALL: &'static [&'static str] = &["pending", "succeeded", "failed"];
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Unix seconds.
    pub at: i64,
    /// The HTTP status answered, if any.
    pub status_code: Option<u16>,
    /// Why it failed, for a failure without a status (connection, TLS, time-out).
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
}

/// One event to one endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookDelivery {
    /// `wd_…`, time-ordered.
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event.
    pub event_id: String,
    /// Its type.
    pub event_type: String,
    /// The object it is about (deliveries of one object go in event order).
    pub object_id: String,
    /// Where it is.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When it is tried next (pending only).
    pub next_attempt_at: Option<i64>,
    /// The latest attempts, oldest first.
    pub log: Vec<Attempt>,
    /// Unix seconds (the event's time).
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

impl Record for WebhookDelivery {
    const KIND: &'static str = "webhook_delivery";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

reply! {
    /// One attempt.
    pub struct AttemptReply<'a> {
        /// When.
        pub at: Time,
        /// The HTTP status the endpoint answered, if it answered.
        pub status_code: Option<u64>,
        /// Why it failed without a status.
        pub error: Option<&'a str>,
        /// How long it took.
        pub duration_ms: u64,
    }
}

reply! {
    /// One event's delivery to one endpoint.
    pub struct WebhookDeliveryReply<'a> as "webhook_delivery" {
        /// `wd_…`.
        pub id: &'a str,
        /// The endpoint.
        pub endpoint_id: &'a str,
        /// The event (`GET /events/{id}`).
        pub event_id: &'a str,
        /// Its type.
        pub event_type: &'a str,
        /// `pending`, `succeeded` or `failed`.
        pub status: OneOf<DeliveryStatus>,
        /// Attempts made.
        pub attempts: u64,
        /// When it is tried next.
        pub next_attempt_at: Option<Time>,
        /// The latest attempts, oldest first.
        pub log: Vec<AttemptReply<'a>>,
        /// Created.
        pub created_at: Time,
    }
}

impl WebhookDelivery {
    /// The wire form.
    pub fn reply(&self) -> WebhookDeliveryReply<'_> {
        WebhookDeliveryReply {
            id: &self.id,
            endpoint_id: &self.endpoint_id,
            event_id: &self.event_id,
            event_type: &self.event_type,
            status: OneOf(self.status),
            attempts: u64::from(self.attempts),
            next_attempt_at: self.next_attempt_at.map(Time),
            log: self
                .log
                .iter()
                .map(|a| AttemptReply {
                    at: Time(a.at),
                    status_code: a.status_code.map(u64::from),
                    error: a.error.as_deref(),
                    duration_ms: a.duration_ms,
                })
                .collect(),
            created_at: Time(self.created_at),
        }
    }

    /// The wire form as a JSON value.
    pub fn to_json(&self) -> Value {
        crate::wire::reply::json(&self.reply())
    }

    /// Records an attempt made at `now` and decides what comes next: done on a 2xx; else
    /// another attempt after the back-off, unless that would be past `give_up_after` seconds
    /// from the event, in which case the delivery fails.
    pub fn record(&mut self, attempt: Attempt, now: i64, policy: &Backoff) {
        let ok = attempt.status_code.is_some_and(|s| (200..300).contains(&s));
        self.attempts = self.attempts.saturating_add(1);
        self.log.push(attempt);
        if self.log.len() > LOG_KEPT {
            self.log.drain(..self.log.len() - LOG_KEPT);
        }
        self.updated_at = now;
        if ok {
            self.status = DeliveryStatus::Succeeded;
            self.next_attempt_at = None;
            return;
        }
        let next = now.saturating_add(policy.wait(self.attempts));
        if next > self.created_at.saturating_add(policy.give_up_after) {
            self.status = DeliveryStatus::Failed;
            self.next_attempt_at = None;
        } else {
            self.status = DeliveryStatus::Pending;
            self.next_attempt_at = Some(next);
        }
    }
}

/// The waits between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure (seconds).
    pub first: i64,
    /// The longest wait.
    pub max: i64,
    /// Seconds after the event when attempts stop.
    pub give_up_after: i64,
}

impl Backoff {
    /// The wait after `failures` failed attempts: `first`, doubling each time, at most `max`.
    pub fn wait(&self, failures: u32) -> i64 {
        let doublings = failures.saturating_sub(1).min(40);
        self.first
            .saturating_mul(1_i64 << doublings)
            .min(self.max)
            .max(1)
    }
}

/// The `Viopay-Signature` header: `t=<unix>,v1=<hex>` with one `v1` per secret in use, as
/// Stripe's libraries read it (they accept the request when any `v1` matches).
pub fn signature_header(t: i64, macs: &[[u8; 32]]) -> String {
    let mut out = format!("t={t}");
    for mac in macs {
        out.push_str(",v1=");
        out.push_str(&hex::encode(mac));
    }
    out
}

/// What is signed: `"<t>.<raw body>"`.
pub fn signed_payload(t: i64, body: &[u8]) -> Vec<u8> {
    let mut out = format!("{t}.").into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery() -> WebhookDelivery {
        WebhookDelivery {
            id: "wd_1".into(),
            endpoint_id: "we_1".into(),
            event_id: "evt_1".into(),
            event_type: "charge.approved".into(),
            object_id: "ch_1".into(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_at: Some(1000),
            log: Vec::new(),
            created_at: 1000,
            updated_at: 1000,
        }
    }

    fn failure(at: i64) -> Attempt {
        Attempt {
            at,
            status_code: Some(500),
            error: None,
            duration_ms: 3,
        }
    }

    #[test]
    fn waits_double_up_to_the_cap_and_stop_after_three_days() {
        let policy = Backoff {
            first: 30,
            max: 6 * 3600,
            give_up_after: 3 * 86_400,
        };
        assert_eq!(policy.wait(1), 30);
        assert_eq!(policy.wait(2), 60);
        assert_eq!(policy.wait(3), 120);
        assert_eq!(policy.wait(20), 6 * 3600);
        assert_eq!(policy.wait(u32::MAX), 6 * 3600);
        let mut d = delivery();
        let mut now = 1000;
        let mut attempts = 0;
        while d.status == DeliveryStatus::Pending {
            d.record(failure(now), now, &policy);
            attempts += 1;
            if let Some(next) = d.next_attempt_at {
                assert!(next > now && next <= 1000 + 3 * 86_400);
                now = next;
            }
        }
        assert_eq!(d.status, DeliveryStatus::Failed);
        assert_eq!(d.attempts, attempts);
        // 30 s doubling ten times (8.5 h in all), then every 6 h: 21 attempts in three days.
        assert_eq!(attempts, 21);
        assert_eq!(d.log.len(), LOG_KEPT);
        assert_eq!(d.log.last().map(|a| a.at), Some(now));
    }

    #[test]
    fn a_2xx_ends_a_delivery_and_other_answers_do_not() {
        let policy = Backoff {
            first: 1,
            max: 2,
            give_up_after: 100,
        };
        let mut d = delivery();
        for code in [199, 300, 404, 500] {
            d.record(
                Attempt {
                    status_code: Some(code),
                    ..failure(1000)
                },
                1000,
                &policy,
            );
            assert_eq!(d.status, DeliveryStatus::Pending, "{code}");
        }
        d.record(
            Attempt {
                status_code: Some(204),
                ..failure(1001)
            },
            1001,
            &policy,
        );
        assert_eq!(d.status, DeliveryStatus::Succeeded);
        assert_eq!(d.next_attempt_at, None);
    }

    #[test]
    fn the_header_carries_one_v1_per_secret() {
        assert_eq!(
            signature_header(1_700_000_000, &[[0xab; 32], [0x01; 32]]),
            format!("t=1700000000,v1={},v1={}", "ab".repeat(32), "01".repeat(32))
        );
        assert_eq!(signed_payload(5, b"{}"), b"5.{}");
    }

    #[test]
    fn endpoints_take_what_they_list_while_enabled_and_sign_with_live_secrets() {
        let mut e = WebhookEndpoint {
            id: "we_1".into(),
            merchant_id: Some("m".into()),
            reseller_id: None,
            url: "https://x/".into(),
            description: None,
            enabled_events: vec!["charge.*".into(), "device.offline".into()],
            status: EndpointStatus::Enabled,
            secrets: vec![
                SecretRef {
                    salt: "11".repeat(16),
                    created_at: 10,
                    expires_at: None,
                },
                SecretRef {
                    salt: "22".repeat(16),
                    created_at: 5,
                    expires_at: Some(100),
                },
            ],
            created_at: 5,
            updated_at: 10,
        };
        assert!(e.takes("charge.refunded") && e.takes("device.offline"));
        assert!(!e.takes("device.online") && !e.takes("refund.succeeded"));
        assert_eq!(e.signing_salts(99), vec![[0x11; 16], [0x22; 16]]);
        assert_eq!(e.signing_salts(100), vec![[0x11; 16]]);
        assert_eq!(
            e.reply(99).previous_secret_expires_at.map(|t| t.0),
            Some(100)
        );
        assert!(e.reply(100).previous_secret_expires_at.is_none());
        e.status = EndpointStatus::Disabled;
        assert!(!e.takes("charge.approved"));
    }
}
