//! The `iso8583` processor: charges go to an acquirer host over the ISO 8583 link of spec
//! `acquirer-link.md` (section 12), whose ASCII profile `acqlink` encodes.
//!
//! - [`link`]: the one persistent connection, STANs, answer matching, MACs through keyd, echo
//!   tests and reconnection.
//! - [`messages`]: the `0200`, `0400`/`0401` and `0800` built, the `0210` read (sans-IO).
//! - [`reversals`]: durable reversals, repeated until acknowledged, resent after a restart.
//!
//! The flow of a purchase: [`Processor::prepare`] fixes the request's STAN, DE 7, RRN and
//! the rest of what a reversal needs, the PAN sealed by keyd, and the engine records it with
//! the pending charge; `authorize` sends the `0200` and waits for its `0210` for the time-out.
//! No verified answer in time: a reversal is made durable and sent at once, and the charge
//! fails (502/`5020`). A charge whose outcome the engine could not store is voided by recovery
//! ([`VoidReason::Lost`]) from what was recorded with it, and so reversed too. A cancel sends a
//! reversal and succeeds only on its `0410`. A refund is a `0200` with DE 3 `200000`; an
//! unanswered one is reversed. `processor.reference` is DE 37.
//!
//! What it does not do: several acquirers or connections, advices (`0220`), partial approvals,
//! key exchange on the link (`0800` key change), or settlement messages (`0500`); the
//! platform's settlement is its own.

mod link;
mod messages;
mod reversals;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use acqlink::{BACKOFFICE_TERMINAL, EntryMode};
use keyd_proto::message::PanSeal;
use tokio::sync::watch;
use tokio::time::Instant;
use zeroize::Zeroizing;

use self::link::{Endpoint, Link, NoAnswer, StanHold};
use self::messages::{Clock, Original, Presented};
use self::reversals::{Reason, Retry};
use super::{
    AuthorizationRequest, Outcome, PinBlock, Prepared, Processor, ProcessorError, RefundRequest,
    VoidReason, VoidRequest,
};
use crate::domain::locks::Locks;
use crate::error::ApiError;
use crate::keyd::Keyd;
use crate::store::db::Db;

/// How the link is set up (from `[processor]`, `kind = "iso8583"`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The acquirer host.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The CA file for TLS; `None` only for a loopback host.
    pub ca_file: Option<PathBuf>,
    /// keyd key id of the ZAK.
    pub zak: String,
    /// keyd key id of the ZPK.
    pub zpk: String,
    /// How long an answer is waited for.
    pub timeout: Duration,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
    /// Echo test after this long idle.
    pub echo_every: Duration,
    /// First wait before a reversal is repeated.
    pub retry_first: Duration,
    /// Longest wait between reversal repeats.
    pub retry_max: Duration,
}

/// What the processor and its reversal tasks share.
struct Shared {
    link: Arc<Link>,
    keyd: Arc<Keyd>,
    zpk: String,
    db: Db,
    locks: Arc<Locks>,
    retry: Retry,
    /// Reversals this process is sending: id → acknowledged.
    active: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

/// The acquirer link as a [`Processor`].
pub struct Iso8583 {
    shared: Arc<Shared>,
}

impl fmt::Debug for Iso8583 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iso8583")
            .field("link", &self.shared.link)
            .finish_non_exhaustive()
    }
}

impl Iso8583 {
    /// Starts the link's connection task (on the current runtime) and answers the processor.
    /// `keyd_socket` gets a keyd connection of the link's own; `db` holds pending reversals;
    /// `locks` are the charge engine's (a late cancel acknowledgement changes a charge).
    ///
    /// # Errors
    /// A message naming what is wrong (the CA file, TLS needed, the random source).
    pub fn start(
        settings: Settings,
        keyd_socket: PathBuf,
        db: Db,
        locks: Arc<Locks>,
    ) -> Result<Self, String> {
        let tls = match &settings.ca_file {
            Some(file) => Some(link::tls_connector(file)?),
            None if crate::config::is_loopback_host(&settings.host) => None,
            None => return Err("the acquirer link needs TLS unless the host is loopback".into()),
        };
        let keyd = Arc::new(Keyd::new(keyd_socket));
        let link = Arc::new(Link::new(
            Endpoint {
                host: settings.host,
                port: settings.port,
                tls,
                connect_timeout: settings.connect_timeout,
            },
            Arc::clone(&keyd),
            settings.zak,
            settings.timeout,
            settings.echo_every,
        )?);
        tokio::spawn(Arc::clone(&link).run());
        Ok(Self {
            shared: Arc::new(Shared {
                link,
                keyd,
                zpk: settings.zpk,
                db,
                locks,
                retry: Retry {
                    first: settings.retry_first,
                    max: settings.retry_max,
                },
                active: Mutex::new(HashMap::new()),
            }),
        })
    }

    async fn prepare_link(&self, req: &AuthorizationRequest) -> Result<Prepared, ProcessorError> {
        let currency =
            acqlink::currency_numeric(&req.currency).map_err(|_| ProcessorError::Invalid {
                field: "amount.currency",
                reason: "not a currency the acquirer link carries".into(),
            })?;
        if req.emv_data.as_ref().is_some_and(|e| e.len() > MAX_EMV_HEX) {
            return Err(ProcessorError::Invalid {
                field: "emv_data",
                reason: "at most 255 bytes go to the acquirer (DE 55)".into(),
            });
        }
        let terminal = match &req.terminal_id {
            Some(t) => acqlink::terminal_id(t).map_err(|_| failed("terminal id not TID-nnnnnn"))?,
            None => BACKOFFICE_TERMINAL.to_owned(),
        };
        let hold = self
            .shared
            .link
            .hold_new()
            .ok_or_else(|| failed("no free STAN"))?;
        let clock = Clock::now();
        let rrn = clock
            .rrn(hold.stan())
            .map_err(|_| failed("cannot make an RRN"))?;
        // DE 14 goes into a later refund's 0200 too: sealed with the PAN, never kept in clear.
        let card = Zeroizing::new(format!("{}={}", req.pan.expose(), expiry(req).as_str()));
        let sealed = self
            .shared
            .keyd
            .call(&PanSeal {
                pan: keyd_proto::Secret::new(card.as_bytes()),
            })
            .await
            .map_err(|_| failed("keyd cannot seal the PAN"))?;
        drop(card);
        let original = Original {
            mti: acqlink::Mti::FinancialRequest.code().to_owned(),
            processing_code: messages::PURCHASE.to_owned(),
            amount: req.amount,
            currency: currency.to_owned(),
            stan: hold.stan().to_string(),
            transmission: clock.transmission,
            rrn,
            terminal,
            mid: req.acquirer_mid.clone(),
            expiry: String::new(),
            sealed_pan: hex::encode_upper(&sealed.sealed),
        };
        Ok(Prepared {
            data: Some(serde_json::to_value(&original).map_err(|_| failed("encoding"))?),
            reference: Some(original.rrn),
            hold: Some(Box::new(hold)),
        })
    }

    async fn purchase(&self, mut req: AuthorizationRequest) -> Result<Outcome, ProcessorError> {
        let original = original(req.prepared.data.as_ref())
            .ok_or_else(|| failed("the request was not prepared"))?;
        let hold = req
            .prepared
            .hold
            .take()
            .and_then(|h| h.downcast::<StanHold>().ok())
            .ok_or_else(|| failed("the request was not prepared"))?;
        let mode = match req.entry_mode.as_str() {
            "chip" => EntryMode::Chip,
            "contactless" => EntryMode::Contactless,
            "swipe" => EntryMode::Swipe,
            _ => EntryMode::Manual,
        };
        let entry_mode = acqlink::pos_entry_mode(mode, req.pin_block.is_some());
        let expiry = expiry(&req);
        let request = messages::financial(
            &original,
            Presented {
                pan: req.pan.expose(),
                expiry: &expiry,
                entry_mode: &entry_mode,
                pin_block: req.pin_block.as_ref().map(PinBlock::expose),
                emv: req.emv_data.as_deref().filter(|e| !e.is_empty()),
            },
        )
        .map_err(|e| failed_owned(format!("cannot build the 0200: {e}")))?;
        // The PAN is not needed past this point.
        drop(req.pan);
        let deadline = Instant::now() + self.shared.link.timeout();
        let answered = self.shared.link.exchange(&hold, request, deadline).await;
        match answered {
            Ok(response) => match messages::outcome(&response) {
                Some(outcome) => Ok(outcome),
                None => {
                    self.reverse_now(&req.charge_id, Reason::Timeout, &original)
                        .await;
                    Err(failed("a 0210 without a response code"))
                }
            },
            Err(NoAnswer::NotSent(why)) => Err(failed(why)),
            Err(NoAnswer::Lost) => {
                tracing::warn!(charge_id = %req.charge_id, "no 0210 in time; reversing");
                self.reverse_now(&req.charge_id, Reason::Timeout, &original)
                    .await;
                Err(ProcessorError::Timeout)
            }
        }
    }

    /// Makes a reversal durable and sends it; if storage refuses, keeps trying in the
    /// background (the charge is `failed` either way).
    async fn reverse_now(&self, charge_id: &str, reason: Reason, original: &Original) {
        let id = charge_id.to_owned();
        if let Err(why) =
            reversals::reverse(&self.shared, id.clone(), charge_id, reason, original).await
        {
            tracing::error!(%charge_id, %why, "cannot record a reversal; retrying in the background");
            let shared = Arc::clone(&self.shared);
            let (charge_id, original) = (charge_id.to_owned(), original.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(shared.retry.first).await;
                    if reversals::reverse(&shared, id.clone(), &charge_id, reason, &original)
                        .await
                        .is_ok()
                    {
                        return;
                    }
                }
            });
        }
    }

    async fn refund_link(&self, req: RefundRequest) -> Result<String, ProcessorError> {
        let charge = original(req.processor_data.as_ref())
            .ok_or_else(|| failed("the charge was not made over the acquirer link"))?;
        let pending = self
            .shared
            .db
            .get::<reversals::Reversal>(&req.charge_id)
            .await
            .map_err(|_| failed("storage unavailable"))?;
        if pending.is_some() {
            return Err(failed("a reversal of the charge is pending"));
        }
        let hold = self
            .shared
            .link
            .hold_new()
            .ok_or_else(|| failed("no free STAN"))?;
        let clock = Clock::now();
        let refund = Original {
            processing_code: messages::REFUND.to_owned(),
            amount: req.amount,
            stan: hold.stan().to_string(),
            rrn: clock
                .rrn(hold.stan())
                .map_err(|_| failed("cannot make an RRN"))?,
            transmission: clock.transmission,
            ..charge
        };
        let card = reversals::open_pan(&self.shared, &refund.sealed_pan)
            .await
            .map_err(|_| failed("keyd cannot open the sealed PAN"))?;
        let (pan, sealed_expiry) = messages::split_card(&card);
        let expiry = sealed_expiry
            .or(Some(refund.expiry.as_str()).filter(|e| !e.is_empty()))
            .ok_or_else(|| failed("the charge's expiry was not kept"))?;
        let request = messages::financial(
            &refund,
            Presented {
                pan,
                expiry,
                entry_mode: messages::REFUND_ENTRY_MODE,
                pin_block: None,
                emv: None,
            },
        )
        .map_err(|e| failed_owned(format!("cannot build the refund: {e}")))?;
        drop(card);
        let deadline = Instant::now() + self.shared.link.timeout();
        let reversal_id = format!("{}/{}{}", req.charge_id, refund.stan, refund.transmission);
        match self.shared.link.exchange(&hold, request, deadline).await {
            Ok(response) => match messages::outcome(&response) {
                Some(Outcome::Approved { reference, .. }) => Ok(reference),
                Some(Outcome::Declined {
                    iso_response_code, ..
                }) => Err(failed_owned(format!(
                    "the acquirer declined the refund ({iso_response_code})"
                ))),
                None => {
                    self.reverse_refund(reversal_id, &req.charge_id, &refund)
                        .await;
                    Err(failed("a 0210 without a response code"))
                }
            },
            Err(NoAnswer::NotSent(why)) => Err(failed(why)),
            Err(NoAnswer::Lost) => {
                tracing::warn!(charge_id = %req.charge_id, "no 0210 to a refund in time; reversing it");
                self.reverse_refund(reversal_id, &req.charge_id, &refund)
                    .await;
                Err(ProcessorError::Timeout)
            }
        }
    }

    async fn reverse_refund(&self, id: String, charge_id: &str, refund: &Original) {
        if let Err(why) =
            reversals::reverse(&self.shared, id, charge_id, Reason::RefundTimeout, refund).await
        {
            tracing::error!(%charge_id, %why, "cannot record the reversal of an unanswered refund");
        }
    }

    async fn void_link(&self, req: VoidRequest) -> Result<(), ProcessorError> {
        let Some(original) = original(req.processor_data.as_ref()) else {
            return match req.reason {
                // Nothing of it went over this link (made before it was configured).
                VoidReason::Lost => Ok(()),
                VoidReason::Cancel => Err(failed("the charge was not made over the acquirer link")),
            };
        };
        let reason = match req.reason {
            VoidReason::Cancel => Reason::Cancel,
            VoidReason::Lost => Reason::Lost,
        };
        let mut ack = reversals::reverse(
            &self.shared,
            req.charge_id.clone(),
            &req.charge_id,
            reason,
            &original,
        )
        .await
        .map_err(failed_owned)?;
        if req.reason == VoidReason::Lost {
            // Durable and under way: it will be delivered whatever happens to this process.
            return Ok(());
        }
        let wait = self.shared.link.timeout() + CANCEL_MARGIN;
        match tokio::time::timeout(wait, ack.wait_for(|done| *done)).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                tracing::warn!(charge_id = %req.charge_id,
                    "no 0410 to a cancel in time; the charge stays approved, the reversal goes on");
                Err(ProcessorError::Timeout)
            }
        }
    }
}

/// DE 55 is LLLVAR ..510 hex characters: 255 bytes.
const MAX_EMV_HEX: usize = 510;

/// What a cancel waits beyond the time-out for its reversal's first answer (keyd's MAC and
/// PAN calls on the way).
const CANCEL_MARGIN: Duration = Duration::from_secs(1);

/// DE 14 of the card in a request: `YYMM`.
fn expiry(req: &AuthorizationRequest) -> Zeroizing<String> {
    Zeroizing::new(format!("{:02}{:02}", req.exp_year % 100, req.exp_month))
}

/// The [`Original`] kept with a charge, if it was made over this link.
fn original(data: Option<&serde_json::Value>) -> Option<Original> {
    data.and_then(|d| serde_json::from_value(d.clone()).ok())
}

fn failed(why: &str) -> ProcessorError {
    ProcessorError::Failed(why.to_owned())
}

fn failed_owned(why: String) -> ProcessorError {
    ProcessorError::Failed(why)
}

type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Processor for Iso8583 {
    fn name(&self) -> &'static str {
        "iso8583"
    }

    fn pin_key(&self) -> Option<&str> {
        Some(&self.shared.zpk)
    }

    fn prepare<'a>(
        &'a self,
        req: &'a AuthorizationRequest,
    ) -> Boxed<'a, Result<Prepared, ProcessorError>> {
        Box::pin(self.prepare_link(req))
    }

    fn authorize(&self, req: AuthorizationRequest) -> Boxed<'_, Result<Outcome, ProcessorError>> {
        Box::pin(self.purchase(req))
    }

    fn refund(&self, req: RefundRequest) -> Boxed<'_, Result<String, ProcessorError>> {
        Box::pin(self.refund_link(req))
    }

    fn void(&self, req: VoidRequest) -> Boxed<'_, Result<(), ProcessorError>> {
        Box::pin(self.void_link(req))
    }

    fn cancels_pending(&self) -> Boxed<'_, Result<HashSet<String>, ApiError>> {
        Box::pin(reversals::cancels_pending(&self.shared))
    }

    fn housekeeping(&self) -> Boxed<'_, ()> {
        Box::pin(reversals::resend_pending(&self.shared))
    }
}
