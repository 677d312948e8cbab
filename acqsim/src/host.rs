//! The acquirer host's decisions: one received frame in, at most one framed answer out.
//!
//! Sans-IO apart from the clock-free state it keeps, so the server module only moves bytes
//! and waits. The order for a request: decode strictly, verify the MAC under the ZAK (a failure
//! is counted and never answered, and no field of such a request is read), decide, record, then
//! let the faults say what becomes of the answer.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use acqlink::{De, Mac, MacProtected, Message, Mti, Stan};
use paycrypto::Pan;
use tokio::sync::watch;

use crate::cards::{self, CardRule, CardTable, PinCheck};
use crate::faults::{FaultState, Faults, Injected};
use crate::journal::{Delivery, Entry, Purchase, Record, Reversal, TxnKey};
use crate::keys::Keys;

/// Fields a `0210` and a `0410` echo (spec 12.4), when the request carried them.
const ECHOED: [De; 9] = [
    De::Pan,
    De::ProcessingCode,
    De::Amount,
    De::TransmissionDateTime,
    De::Stan,
    De::Rrn,
    De::TerminalId,
    De::CardAcceptorId,
    De::Currency,
];

/// What the server is to do with one received frame.
#[derive(Debug)]
pub(crate) struct Action {
    /// Wait this long first.
    pub(crate) latency: Duration,
    /// Then send this frame (length prefix included) or, when `None`, nothing.
    pub(crate) frame: Option<Vec<u8>>,
    /// Or close the connection instead.
    pub(crate) close: bool,
}

/// The host: keys, cards, and everything it remembers.
pub(crate) struct Host {
    keys: Keys,
    cards: CardTable,
    pin_try_limit: Option<u32>,
    state: Mutex<State>,
    /// Bumped after every change to the record, for [`crate::Simulator::wait_until`].
    pub(crate) changed: watch::Sender<u64>,
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys and cards redact themselves; the state holds PANs (PIN try counts) and is left
        // out entirely.
        f.debug_struct("Host")
            .field("keys", &self.keys)
            .field("cards", &self.cards)
            .field("pin_try_limit", &self.pin_try_limit)
            .finish_non_exhaustive()
    }
}

/// What changes as requests arrive.
pub(crate) struct State {
    pub(crate) record: Record,
    pub(crate) faults: FaultState,
    /// Consecutive wrong PINs per PAN (only with a PIN try limit).
    pin_failures: HashMap<String, u32>,
    /// PANs whose tries ran out (only with a PIN try limit).
    blocked: HashSet<String>,
    next_auth: u32,
}

/// The decision about one request, before the faults act on its answer.
struct Decision {
    response: Option<Message>,
    pin: PinCheck,
    /// What the card itself asks for (section 8's processor-error and time-out cards).
    card_fault: Injected,
}

impl Host {
    pub(crate) fn new(
        keys: Keys,
        cards: CardTable,
        faults: Faults,
        seed: u64,
        pin_try_limit: Option<u32>,
    ) -> Self {
        Self {
            keys,
            cards,
            pin_try_limit,
            state: Mutex::new(State {
                record: Record::default(),
                faults: FaultState::new(faults, seed),
                pin_failures: HashMap::new(),
                blocked: HashSet::new(),
                next_auth: 0,
            }),
            changed: watch::Sender::new(0),
        }
    }

    /// The state; a panic in another holder cannot leave it half-written in a way that
    /// matters to a test double, so a poisoned lock is simply taken over.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state, then tells waiters that something changed.
    pub(crate) fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let out = f(&mut self.state());
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        out
    }

    /// Handles one received frame from connection `connection`.
    pub(crate) fn handle(&self, connection: u64, bytes: &[u8]) -> Option<Action> {
        let received = match MacProtected::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(connection, error = %e, "undecodable frame ignored");
                self.update(|s| {
                    s.record.counters.received += 1;
                    s.record.counters.malformed += 1;
                });
                return None;
            }
        };
        let mti = received.mti();
        if !paycrypto::verify_retail_mac(&self.keys.zak, received.mac_input(), &received.mac().0) {
            tracing::warn!(connection, %mti, "MAC does not verify under the ZAK; ignored");
            self.update(|s| {
                s.record.counters.received += 1;
                s.record.counters.mac_failures += 1;
            });
            return None;
        }
        let request = received.into_verified();
        if mti.response().is_none() {
            tracing::warn!(connection, %mti, "a response sent to the host; ignored");
            self.update(|s| {
                s.record.counters.received += 1;
                s.record.counters.malformed += 1;
            });
            return None;
        }
        let stan = request.get(De::Stan).and_then(|t| Stan::parse(t).ok());
        let matchable =
            stan.is_some() && (mti == Mti::NetworkRequest || request.get(De::TerminalId).is_some());
        self.update(|state| {
            state.record.counters.received += 1;
            let decision = match mti {
                Mti::FinancialRequest => self.financial(state, &request),
                Mti::ReversalRequest | Mti::ReversalRepeat => reversal(state, &request),
                _ => network(&request),
            };
            let injected = if !matchable || decision.response.is_none() {
                Injected::Drop
            } else {
                match state.faults.decide(stan) {
                    Injected::None => decision.card_fault,
                    fault => fault,
                }
            };
            let delivery = match injected {
                _ if !matchable => Delivery::Unanswerable,
                Injected::None => Delivery::Answered,
                Injected::Drop => Delivery::Dropped,
                Injected::BadMac => Delivery::BadMac,
                Injected::Close => Delivery::Closed,
            };
            let response = decision.response.as_ref();
            let entry = Entry {
                seq: 0,
                connection,
                mti,
                stan: field(&request, De::Stan),
                terminal_id: field(&request, De::TerminalId),
                rrn: field(&request, De::Rrn),
                processing_code: field(&request, De::ProcessingCode),
                amount: request.get(De::Amount).and_then(|a| a.parse().ok()),
                expiry: field(&request, De::Expiry),
                response_code: response.and_then(|r| field(r, De::ResponseCode)),
                authorization_id: response.and_then(|r| field(r, De::AuthorizationId)),
                pin: decision.pin,
                delivery,
            };
            tracing::info!(
                connection,
                %mti,
                stan = %entry.stan.as_deref().unwrap_or("-"),
                de39 = %entry.response_code.as_deref().unwrap_or("-"),
                ?delivery,
                "request"
            );
            state.record.push(entry);
            let frame = match (injected, decision.response) {
                (Injected::None | Injected::BadMac, Some(r)) => {
                    self.sign(&r, injected == Injected::BadMac)
                }
                _ => None,
            };
            Some(Action {
                latency: state.faults.latency(stan),
                frame,
                close: injected == Injected::Close,
            })
        })
    }

    /// The framed response with its MAC under the ZAK (DE 64 or DE 128, as the bitmap says),
    /// or a MAC with every bit of its first byte flipped when `spoil`.
    fn sign(&self, response: &Message, spoil: bool) -> Option<Vec<u8>> {
        let unsigned = response.encode_for_mac();
        let mut mac = paycrypto::retail_mac(&self.keys.zak, unsigned.mac_input());
        if spoil && let Some(b) = mac.first_mut() {
            *b ^= 0xFF;
        }
        acqlink::frame(&unsigned.with_mac(Mac(mac))).ok()
    }

    /// A `0200`: purchase (`000000`) or refund (`200000`).
    fn financial(&self, state: &mut State, request: &Message) -> Decision {
        let mut pin = PinCheck::Absent;
        let mut card_fault = Injected::None;
        let pan = request.get(De::Pan);
        let amount = request.get(De::Amount).and_then(|a| a.parse::<u64>().ok());
        let code = match (request.get(De::ProcessingCode), amount) {
            (_, None) | (None, _) => "30",
            (Some("200000"), Some(_)) => "00",
            (Some("000000"), Some(amount)) => match pan {
                None => "30",
                Some(pan) if !cards::luhn_ok(pan) => "14",
                Some(pan) => match cards::rule(pan) {
                    CardRule::Timeout => {
                        remember(state, request, None);
                        return Decision {
                            response: None,
                            pin,
                            card_fault: Injected::Drop,
                        };
                    }
                    CardRule::ProcessorError => {
                        card_fault = Injected::BadMac;
                        "96"
                    }
                    rule => {
                        if let Some(block) = request.get(De::PinBlock) {
                            pin = self.check_pin(state, pan, block);
                        }
                        match (pin, rule) {
                            (PinCheck::Incorrect | PinCheck::UnknownCard, _) => "55",
                            (PinCheck::Blocked, _) => "75",
                            (_, CardRule::Decline(code)) => code,
                            _ if cards::amount_declines(amount) => "91",
                            _ => "00",
                        }
                    }
                },
            },
            (Some(_), Some(_)) => "12",
        };
        let mut response = echo(request, Mti::FinancialResponse);
        if code == "00" {
            state.next_auth = state.next_auth % 999_999 + 1;
            let _ = response.set(De::AuthorizationId, &format!("{:06}", state.next_auth));
        }
        let _ = response.set(De::ResponseCode, code);
        if request.get(De::ProcessingCode) == Some("000000") {
            remember(state, request, Some(code));
        }
        Decision {
            response: Some(response),
            pin,
            card_fault,
        }
    }

    /// The PIN check of 12.7, with the optional PIN try limit on top.
    fn check_pin(&self, state: &mut State, pan: &str, block_hex: &str) -> PinCheck {
        let Some(card) = self.cards.get(pan) else {
            return PinCheck::UnknownCard;
        };
        if card.pin_blocked || state.blocked.contains(pan) {
            return PinCheck::Blocked;
        }
        let mut block = [0u8; 8];
        let (Ok(()), Ok(pan_digits)) = (hex::decode_to_slice(block_hex, &mut block), Pan::new(pan))
        else {
            return PinCheck::Incorrect;
        };
        let found = cards::check_pin(&self.keys.zpk, &self.keys.pvk, card, &pan_digits, &block);
        match (found, self.pin_try_limit) {
            (PinCheck::Correct, _) => {
                state.pin_failures.remove(pan);
                PinCheck::Correct
            }
            (other, Some(limit)) => {
                let failures = state.pin_failures.entry(pan.to_owned()).or_insert(0);
                *failures += 1;
                if *failures >= limit {
                    state.pin_failures.remove(pan);
                    state.blocked.insert(pan.to_owned());
                    PinCheck::Blocked
                } else {
                    other
                }
            }
            (other, None) => other,
        }
    }

    /// Forgets PIN try counts and the blocks they caused (the built-in blocked card stays).
    pub(crate) fn reset_pin_tries(&self) {
        self.update(|s| {
            s.pin_failures.clear();
            s.blocked.clear();
        });
    }
}

/// A `0400`/`0401`: always acknowledged (`00`; `30` when DE 90 is missing), and recorded
/// against the original DE 90 names. A repeat of a reversal request already answered gets the
/// same DE 39.
fn reversal(state: &mut State, request: &Message) -> Decision {
    let terminal = request.get(De::TerminalId).unwrap_or_default().to_owned();
    let own: TxnKey = (
        terminal.clone(),
        request.get(De::Stan).unwrap_or_default().to_owned(),
        request
            .get(De::TransmissionDateTime)
            .unwrap_or_default()
            .to_owned(),
    );
    let original = request.get(De::OriginalData).and_then(|d| {
        Some((
            d.get(..4)?.to_owned(),
            d.get(4..10)?.to_owned(),
            d.get(10..20)?.to_owned(),
        ))
    });
    let code = match (state.record.reversal_answers.get(&own), original) {
        (Some(code), original) => {
            let code = code.clone();
            if let Some((_, stan, when)) = original {
                let key = (terminal, stan, when);
                if let Some(r) = state.record.reversals.get_mut(&key) {
                    r.requests += 1;
                }
            }
            code
        }
        (None, None) => "30".to_owned(),
        (None, Some((mti, stan, when))) => {
            let key: TxnKey = (terminal.clone(), stan.clone(), when.clone());
            let seen = state.record.purchase(&key).cloned();
            let record = &mut state.record;
            if let Some(r) = record.reversals.get_mut(&key) {
                r.requests += 1;
            } else {
                record.reversal_order.push(key.clone());
                record.reversals.insert(
                    key,
                    Reversal {
                        terminal_id: terminal,
                        original_mti: mti,
                        original_stan: stan,
                        original_transmission: when,
                        rrn: field(request, De::Rrn),
                        original_seen: seen.is_some(),
                        original_response: seen.and_then(|p| p.response_code),
                        requests: 1,
                    },
                );
            }
            "00".to_owned()
        }
    };
    state.record.reversal_answers.insert(own, code.clone());
    let mut response = echo(request, Mti::ReversalResponse);
    let _ = response.set(De::ResponseCode, &code);
    Decision {
        response: Some(response),
        pin: PinCheck::Absent,
        card_fault: Injected::None,
    }
}

/// A `0800`: echoes DE 7, 11 and 70 and answers `00` for an echo test (`301`), `12` otherwise.
fn network(request: &Message) -> Decision {
    let mut response = Message::new(Mti::NetworkResponse);
    for de in [De::TransmissionDateTime, De::Stan, De::NetworkCode] {
        if let Some(v) = request.get(de) {
            let _ = response.set(de, v);
        }
    }
    let code = if request.get(De::NetworkCode) == Some("301") {
        "00"
    } else {
        "12"
    };
    let _ = response.set(De::ResponseCode, code);
    Decision {
        response: Some(response),
        pin: PinCheck::Absent,
        card_fault: Injected::None,
    }
}

/// A response of type `mti` echoing the [`ECHOED`] fields the request carried.
fn echo(request: &Message, mti: Mti) -> Message {
    let mut response = Message::new(mti);
    for de in ECHOED {
        if let Some(v) = request.get(de) {
            // The value came off the wire in the same format, so it always sets.
            let _ = response.set(de, v);
        }
    }
    response
}

/// Remembers a purchase for matching a later reversal.
fn remember(state: &mut State, request: &Message, code: Option<&str>) {
    let key = (
        request.get(De::TerminalId).unwrap_or_default().to_owned(),
        request.get(De::Stan).unwrap_or_default().to_owned(),
        request
            .get(De::TransmissionDateTime)
            .unwrap_or_default()
            .to_owned(),
    );
    state.record.remember_purchase(
        key,
        Purchase {
            response_code: code.map(str::to_owned),
        },
    );
}

fn field(message: &Message, de: De) -> Option<String> {
    message.get(de).map(str::to_owned)
}
