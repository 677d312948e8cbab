//! Webhook delivery: from the events outbox to the receivers' endpoints, at least once.
//!
//! Two steps, both run by one node at a time (the holder of the `webhooks` lease; on a store of
//! its own, the process):
//!
//! 1. **Fan-out.** The outbox (`domain::events::Outbox`: rows events leave on PostgreSQL, the
//!    events past a cursor on SQLite, see `Store::outbox`) is read in batches and handled
//!    oldest first: one delivery per enabled endpoint that takes the event's type,
//!    of its merchant and of every reseller above it. The deliveries and the outbox rows'
//!    deletion are one commit: a crash leaves the rows and the fan-out is done again, whole.
//!    Two fan-outs at once (a lease taken over) cannot both deliver one event to one endpoint:
//!    `(endpoint_id, event_id)` is unique, so the second commit fails whole. (An `Expect` on
//!    each outbox row would say the same again at a lookup per event on the hot writer.)
//! 2. **Delivery.** Due deliveries are read every `poll_ms` and POSTed, signed by keyd, with at
//!    most `workers` requests in flight and at most [`PER_ENDPOINT`] to one endpoint, so a slow
//!    or dead receiver holds a few workers and no charge: charges only write their event. The
//!    deliveries of one endpoint and object go one after the other in event order; while one
//!    waits for its retry, the later ones wait with it (a first attempt looks in the store for
//!    an older delivery of its object still pending, so the order holds across restarts). Each attempt is recorded after it is
//!    made, so a crash between the two sends it again (receivers dedupe on `Viopay-Delivery-Id`
//!    or the event id).
//!
//! Failed attempts are retried after `retry_secs`, doubling up to `retry_max_secs`, until
//! `give_up_after_secs` after the event (three days by default).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use tokio_rustls::TlsConnector;

use crate::config::WebhooksConfig;
use crate::domain::events::{Event, Outbox};
use crate::domain::lease;
use crate::domain::model::Merchant;
use crate::domain::webhooks::{
    Attempt, Backoff, DeliveryStatus, EndpointStatus, WebhookDelivery, WebhookEndpoint,
    signature_header, signed_payload,
};
use crate::error::{ApiError, Code};
use crate::request::Services;
use crate::store::db::{self, Db};
use crate::wire::ids;

/// Requests in flight to one endpoint at once.
pub const PER_ENDPOINT: usize = 4;
/// Events fanned out per commit.
const FAN_OUT_BATCH: usize = 200;
/// Due deliveries read per round.
const DUE_BATCH: usize = 500;
/// The lease's name and how long it lasts unless renewed (seconds).
const LEASE: &str = "webhooks";
const LEAD_FOR: i64 = 15;
/// How often the lease is renewed (well inside `LEAD_FOR`).
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// The most of a receiver's answer read (and thrown away).
const ANSWER_MAX: usize = 16 * 1024;

/// What the delivery loop keeps between rounds.
#[derive(Debug, Default)]
struct Busy {
    /// `(endpoint, object)` pairs with a request in flight.
    pairs: HashSet<(String, String)>,
    /// Requests in flight per endpoint.
    per_endpoint: HashMap<String, usize>,
    /// `(endpoint, object)` pairs whose oldest delivery failed, until its retry: later
    /// deliveries of the pair wait for it, so they arrive in order.
    waiting: HashMap<(String, String), i64>,
    /// Requests in flight.
    total: usize,
}

/// The sender: configuration, TLS trust and the shared state of the delivery loop.
struct Sender {
    config: WebhooksConfig,
    backoff: Backoff,
    tls: Option<TlsConnector>,
    busy: Mutex<Busy>,
    /// Where the next round reads due deliveries from (the last one the round before read),
    /// so a backlog larger than one read is gone through from newest to oldest over several
    /// rounds instead of its newest part being read again and again.
    due_from: Mutex<Option<String>>,
}

impl Sender {
    fn busy(&self) -> std::sync::MutexGuard<'_, Busy> {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs for the life of the process.
pub async fn run(app: Arc<Services>) {
    let config = app.config.webhooks.clone();
    let tls = match pgtls::client_config(&config.ca_file, "webhooks") {
        Ok(c) => Some(TlsConnector::from(c)),
        Err(e) => {
            tracing::warn!(error = %e, "webhooks to https:// endpoints will fail: no CA bundle");
            None
        }
    };
    let sender = Arc::new(Sender {
        backoff: Backoff {
            first: i64::try_from(config.retry_secs).unwrap_or(i64::MAX),
            max: i64::try_from(config.retry_max_secs).unwrap_or(i64::MAX),
            give_up_after: i64::try_from(config.give_up_after_secs).unwrap_or(i64::MAX),
        },
        tls,
        busy: Mutex::new(Busy::default()),
        due_from: Mutex::new(None),
        config,
    });
    let mut tick = tokio::time::interval(Duration::from_millis(sender.config.poll_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leadership = lease::Leadership::new(LEASE, LEAD_FOR);
    let mut renewed: Option<Instant> = None;
    loop {
        tick.tick().await;
        let now = crate::wire::time::now();
        // Renewed every few seconds, not every poll: a poll is tens of milliseconds.
        if renewed.is_none_or(|at| at.elapsed() >= RENEW_EVERY) {
            leadership.renew(&app.db, &app.charges.boot.id, now).await;
            renewed = Some(Instant::now());
        }
        if !leadership.leading() {
            continue;
        }
        if let Err(e) = fan_out(&app.db, now).await {
            tracing::warn!(error = %e, "webhook fan-out failed; will retry");
        }
        if let Err(e) = deliver_due(&app, &sender, now).await {
            tracing::warn!(error = %e, "webhook deliveries not read; will retry");
        }
    }
}

/// Endpoints that may take a merchant's events: its own and its resellers', read once per
/// fan-out batch.
#[derive(Default)]
struct Audience {
    merchants: HashMap<String, Option<Merchant>>,
    endpoints: HashMap<String, Vec<WebhookEndpoint>>,
}

impl Audience {
    async fn endpoints_of(&mut self, db: &Db, owner: &str) -> Result<&[WebhookEndpoint], ApiError> {
        if !self.endpoints.contains_key(owner) {
            let mut all = Vec::new();
            db.walk::<WebhookEndpoint>("webhook_endpoints", owner, |e| {
                all.push(e);
                Ok(true)
            })
            .await?;
            self.endpoints.insert(owner.to_owned(), all);
        }
        Ok(self.endpoints.get(owner).map_or(&[][..], Vec::as_slice))
    }

    /// The enabled endpoints that take the event.
    async fn of(&mut self, db: &Db, event: &Outbox) -> Result<Vec<String>, ApiError> {
        let Some(merchant_id) = &event.merchant_id else {
            return Ok(Vec::new());
        };
        if !self.merchants.contains_key(merchant_id) {
            let m = db.get::<Merchant>(merchant_id).await?;
            self.merchants.insert(merchant_id.clone(), m);
        }
        let mut owners = vec![merchant_id.clone()];
        if let Some(Some(m)) = self.merchants.get(merchant_id) {
            owners.extend(m.resellers.iter().cloned());
        }
        let mut out = Vec::new();
        for owner in owners {
            for e in self.endpoints_of(db, &owner).await? {
                if e.takes(&event.event_type) {
                    out.push(e.id.clone());
                }
            }
        }
        Ok(out)
    }
}

/// Step 1: deliveries for every event in the outbox. Returns how many events it dispatched.
///
/// # Errors
/// 503 when the store is down.
pub async fn fan_out(db: &Db, now: i64) -> Result<usize, ApiError> {
    let mut done = 0;
    // A bounded number of batches per round, so a backlog does not starve deliveries.
    for _ in 0..16 {
        let (mut events, more) = db.outbox::<Outbox>(FAN_OUT_BATCH).await?;
        // Time-ordered ids: oldest first.
        events.sort_by(|a, b| a.id.cmp(&b.id));
        let mut audience = Audience::default();
        let mut writes = Vec::new();
        for event in &events {
            for endpoint_id in audience.of(db, event).await? {
                writes.push(db::put(&WebhookDelivery {
                    id: ids::time_ordered("wd_")?,
                    endpoint_id,
                    event_id: event.id.clone(),
                    event_type: event.event_type.clone(),
                    object_id: event.object_id.clone(),
                    status: DeliveryStatus::Pending,
                    attempts: 0,
                    next_attempt_at: Some(now),
                    log: Vec::new(),
                    created_at: event.created_at,
                    updated_at: now,
                })?);
            }
            writes.push(db::delete::<Outbox>(&event.id));
        }
        if writes.is_empty() {
            break;
        }
        match db
            .commit(
                writes,
                ApiError::new(Code::Conflict, "dispatched elsewhere"),
            )
            .await
        {
            Ok(()) => done += events.len(),
            // Another node dispatched some of them meanwhile: the next round reads what is
            // left.
            Err(e) if e.code() == Code::Conflict => break,
            Err(e) => return Err(e),
        }
        if !more {
            break;
        }
    }
    Ok(done)
}

/// Step 2: starts the due deliveries the limits allow.
async fn deliver_due(app: &Arc<Services>, sender: &Arc<Sender>, now: i64) -> Result<(), ApiError> {
    let from = sender
        .due_from
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let key = now.to_string();
    let page = match app
        .db
        .page::<WebhookDelivery>("webhook_due", &key, from.as_deref(), DUE_BATCH)
        .await
    {
        Ok(page) => page,
        // The cursor's delivery is gone (deleted with nothing else): start from the newest.
        Err(e) if e.code() == Code::BodyInvalid => {
            *sender
                .due_from
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    *sender
        .due_from
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = page
        .has_more
        .then(|| page.items.last().map(|d| d.id.clone()))
        .flatten();
    let mut due = page.items;
    due.retain(|d| d.status == DeliveryStatus::Pending);
    due.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    // Each endpoint and object's due deliveries, in event order, the oldest pair first.
    let mut order: Vec<(String, String)> = Vec::new();
    let mut groups: HashMap<(String, String), Vec<WebhookDelivery>> = HashMap::new();
    for d in due {
        let pair = (d.endpoint_id.clone(), d.object_id.clone());
        groups
            .entry(pair.clone())
            .or_insert_with(|| {
                order.push(pair);
                Vec::new()
            })
            .push(d);
    }
    for pair in order {
        let deliveries = groups.remove(&pair).unwrap_or_default();
        {
            let mut busy = sender.busy();
            busy.waiting.retain(|_, at| *at > now);
            if busy.total >= sender.config.workers
                || busy.pairs.contains(&pair)
                || busy.waiting.contains_key(&pair)
                || busy.per_endpoint.get(&pair.0).copied().unwrap_or(0) >= PER_ENDPOINT
            {
                continue;
            }
        }
        // A first attempt waits behind an older delivery of the same object to the same
        // endpoint that is still pending (in back-off, or queued before a restart of this
        // node): the endpoint gets the object's events in order.
        if let Some(first) = deliveries.first().filter(|d| d.attempts == 0) {
            let older = app
                .db
                .page_filtered::<WebhookDelivery>("webhook_object", &pair.1, None, 1, |o| {
                    o.endpoint_id == pair.0
                        && o.status == DeliveryStatus::Pending
                        && o.event_id < first.event_id
                        && !deliveries.iter().any(|d| d.id == o.id)
                })
                .await?;
            if let Some(o) = older.items.first() {
                let at = o.next_attempt_at.unwrap_or(now).max(now + 1);
                sender.busy().waiting.insert(pair, at);
                continue;
            }
        }
        {
            // Only this loop takes places, so what was free before the lookup still is.
            let mut busy = sender.busy();
            busy.total += 1;
            busy.pairs.insert(pair.clone());
            *busy.per_endpoint.entry(pair.0.clone()).or_insert(0) += 1;
        }
        let (app, sender) = (Arc::clone(app), Arc::clone(sender));
        tokio::spawn(async move {
            let waiting = send_group(&app, &sender, deliveries).await;
            let mut busy = sender.busy();
            busy.total = busy.total.saturating_sub(1);
            busy.pairs.remove(&pair);
            if let Some(n) = busy.per_endpoint.get_mut(&pair.0) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    busy.per_endpoint.remove(&pair.0);
                }
            }
            if let Some(at) = waiting {
                busy.waiting.insert(pair, at);
            }
        });
    }
    Ok(())
}

/// Sends one endpoint and object's deliveries in order, stopping at the first that fails;
/// returns when that one is next tried, for the others to wait for.
async fn send_group(
    app: &Services,
    sender: &Sender,
    deliveries: Vec<WebhookDelivery>,
) -> Option<i64> {
    for d in deliveries {
        match send_one(app, sender, &d).await {
            Ok(updated) if updated.status == DeliveryStatus::Pending => {
                return updated.next_attempt_at;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(delivery = %d.id, error = %e, "webhook attempt not recorded");
                return None;
            }
        }
    }
    None
}

/// One attempt of one delivery, recorded.
async fn send_one(
    app: &Services,
    sender: &Sender,
    d: &WebhookDelivery,
) -> Result<WebhookDelivery, ApiError> {
    let endpoint = app.db.get::<WebhookEndpoint>(&d.endpoint_id).await?;
    let event = app.db.get::<Event>(&d.event_id).await?;
    let started = Instant::now();
    let now = crate::wire::time::now();
    let attempt = match (endpoint, event) {
        (Some(endpoint), Some(event)) if endpoint.status == EndpointStatus::Enabled => {
            let outcome = post(app, sender, &endpoint, &event, &d.id, now).await;
            let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            match outcome {
                Ok(status) => Attempt {
                    at: now,
                    status_code: Some(status),
                    error: None,
                    duration_ms,
                },
                Err(error) => Attempt {
                    at: now,
                    status_code: None,
                    error: Some(error),
                    duration_ms,
                },
            }
        }
        (endpoint, _) => {
            // Nothing to send to: the delivery ends here.
            let why = match endpoint {
                None => "the endpoint was deleted",
                Some(e) if e.status == EndpointStatus::Disabled => "the endpoint is disabled",
                Some(_) => "the event is gone",
            };
            return app
                .db
                .update::<WebhookDelivery>(&d.id, |d| {
                    if d.status == DeliveryStatus::Pending {
                        d.status = DeliveryStatus::Failed;
                        d.next_attempt_at = None;
                        d.updated_at = now;
                        d.log.push(Attempt {
                            at: now,
                            status_code: None,
                            error: Some(why.to_owned()),
                            duration_ms: 0,
                        });
                    }
                    Ok(Vec::new())
                })
                .await;
        }
    };
    let backoff = sender.backoff;
    let done = crate::wire::time::now();
    app.db
        .update::<WebhookDelivery>(&d.id, |d| {
            // A resend asked meanwhile keeps its own turn; otherwise this attempt decides.
            if d.status == DeliveryStatus::Pending {
                d.record(attempt.clone(), done, &backoff);
            } else {
                d.log.push(attempt.clone());
            }
            Ok(Vec::new())
        })
        .await
}

/// POSTs the event, signed, and returns the status answered.
async fn post(
    app: &Services,
    sender: &Sender,
    endpoint: &WebhookEndpoint,
    event: &Event,
    delivery_id: &str,
    now: i64,
) -> Result<u16, String> {
    let body = Bytes::from(event.to_json().to_string());
    let salts = endpoint.signing_salts(now);
    let macs = crate::keyd::ops::webhook_sign(
        &app.keyd,
        &endpoint.id,
        &salts,
        &signed_payload(now, &body),
    )
    .await
    .map_err(|e| format!("not signed: {}", e.message()))?;
    let target = crate::wire::url::parse(&endpoint.url)?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(target.path.as_str())
        .header(header::HOST, target.authority.as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "viopay-webhooks/1")
        .header(header::CONNECTION, "close")
        .header("viopay-signature", signature_header(now, &macs))
        .header("viopay-delivery-id", delivery_id)
        .body(Full::new(body))
        .map_err(|e| format!("request: {e}"))?;
    let timeout = Duration::from_millis(sender.config.timeout_ms);
    if target.https && sender.tls.is_none() {
        return Err("no CA bundle to check the endpoint's certificate".to_owned());
    }
    let exchange = async {
        let io = crate::wire::outbound::connect(&target, sender.tls.as_ref()).await?;
        exchange(TokioIo::new(io), request).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {} ms", sender.config.timeout_ms))?
}

/// One HTTP/1.1 request on a fresh connection; the status, with the answer read (bounded)
/// and dropped.
async fn exchange<T>(io: T, request: Request<Full<Bytes>>) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status().as_u16();
    let _ = http_body_util::Limited::new(response.into_body(), ANSWER_MAX)
        .collect()
        .await;
    Ok(status)
}
