//! The connection to the acquirer (spec 12.3): one persistent TCP connection (TLS unless the
//! host is loopback), made again with back-off whenever it drops; requests written as they
//! come, many outstanding at once, each answer matched back to its request by DE 11 and DE 41.
//!
//! Every message out is MAC'd by keyd under the ZAK and every message in is verified by keyd
//! before any field of it is read (`MacProtected`); one that fails is dropped as if it had
//! never come (12.4), so its request times out like an unanswered one. The link itself never
//! holds a key.
//!
//! STANs (12.3): handed out in order from a random start (so a restarted process does not
//! begin where STANs of its predecessor's pending reversals may still be in use), wrapping after
//! 999999, never one that is held. A STAN is *held* from allocation until its owner drops the
//! [`StanHold`]: a purchase holds its STAN until its answer or time-out, a pending reversal for
//! its whole life (every `0401` repeats its STAN). A response finds its request only while the
//! request is waiting; a late one is dropped.
//!
//! An idle link (nothing sent or received for `echo_every`) gets an `0800` echo; an echo left
//! unanswered drops the connection, which is then made again.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use acqlink::{De, Deframer, Mac, MacProtected, Message, Mti, Stan, StanCounter};
use keyd_proto::Status;
use keyd_proto::message::{RetailMac, RetailMacVerify};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::messages::{self, Clock};
use crate::keyd::{Keyd, KeydError};

/// The first wait before connecting again; doubled after each failure up to [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// The longest wait between connection attempts.
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Where the acquirer is and how to reach it.
pub(crate) struct Endpoint {
    /// Host name or address.
    pub(crate) host: String,
    /// TCP port.
    pub(crate) port: u16,
    /// TLS, trusting only the configured CA; `None` (loopback only) for plain TCP.
    pub(crate) tls: Option<tokio_rustls::TlsConnector>,
    /// How long one connection attempt (TCP and TLS) may take.
    pub(crate) connect_timeout: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// A TLS client trusting only the CA certificates in `ca_file`.
///
/// # Errors
/// A message naming the file and the problem.
pub(crate) fn tls_connector(ca_file: &Path) -> Result<tokio_rustls::TlsConnector, String> {
    pgtls::client_config(ca_file, "acquirer").map(tokio_rustls::TlsConnector::from)
}

/// Why an exchange produced no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoAnswer {
    /// Nothing went out (no connection within the time, or keyd could not MAC it): the
    /// acquirer cannot have acted on it.
    NotSent(&'static str),
    /// It went out and no verified answer came back in time (or the connection dropped): the
    /// acquirer may have acted on it.
    Lost,
}

/// A request waiting for its answer.
struct Waiting {
    /// DE 41 it was sent with (`None` for an echo, which has none).
    terminal: Option<String>,
    /// DE 7 it was sent with: the answer echoes it.
    transmission: Option<String>,
    /// The MTI its answer must have.
    response: Mti,
    reply: oneshot::Sender<Message>,
}

/// Who has a STAN.
enum Slot {
    /// Held by a request or a reversal, nothing on the wire for it now.
    Held,
    /// Sent; an answer is expected.
    Waiting(Waiting),
}

struct Stans {
    counter: StanCounter,
    slots: HashMap<Stan, Slot>,
}

/// One acquirer link: its connection task, its STANs, and keyd for its MACs.
pub(crate) struct Link {
    endpoint: Endpoint,
    keyd: Arc<Keyd>,
    zak: String,
    echo_every: Duration,
    timeout: Duration,
    stans: Mutex<Stans>,
    /// The open connection's outgoing queue; `None` while there is none.
    writer: watch::Sender<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    /// When something was last sent or received (for the echo test).
    activity: Mutex<Instant>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// A STAN held until dropped (see the module documentation).
pub(crate) struct StanHold {
    link: Weak<Link>,
    stan: Stan,
}

impl std::fmt::Debug for StanHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StanHold({})", self.stan)
    }
}

impl StanHold {
    /// The STAN.
    pub(crate) fn stan(&self) -> Stan {
        self.stan
    }
}

impl Drop for StanHold {
    fn drop(&mut self) {
        if let Some(link) = self.link.upgrade() {
            link.stans().slots.remove(&self.stan);
        }
    }
}

impl Link {
    /// A link (not yet connected: see [`Self::run`]).
    pub(crate) fn new(
        endpoint: Endpoint,
        keyd: Arc<Keyd>,
        zak: String,
        timeout: Duration,
        echo_every: Duration,
    ) -> Result<Self, String> {
        let start = u32::from_be_bytes(
            crate::wire::ids::random_bytes::<4>().map_err(|_| "random source unavailable")?,
        ) % Stan::LAST.get();
        let start = Stan::new(start.max(1)).map_err(|e| e.to_string())?;
        Ok(Self {
            endpoint,
            keyd,
            zak,
            echo_every,
            timeout,
            stans: Mutex::new(Stans {
                counter: StanCounter::after(start),
                slots: HashMap::new(),
            }),
            writer: watch::Sender::new(None),
            activity: Mutex::new(Instant::now()),
        })
    }

    fn stans(&self) -> MutexGuard<'_, Stans> {
        self.stans.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn touch(&self) {
        *self.activity.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
    }

    /// The processor's time-out: how long an exchange waits for its answer.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The next free STAN, held; `None` when all 999,999 are held.
    pub(crate) fn hold_new(self: &Arc<Self>) -> Option<StanHold> {
        let mut stans = self.stans();
        let Stans { counter, slots } = &mut *stans;
        let stan = counter.next_free(|s| slots.contains_key(&s))?;
        slots.insert(stan, Slot::Held);
        Some(StanHold {
            link: Arc::downgrade(self),
            stan,
        })
    }

    /// Holds a given STAN (a stored reversal's), unless something holds it already.
    pub(crate) fn hold(self: &Arc<Self>, stan: Stan) -> Option<StanHold> {
        let mut stans = self.stans();
        if stans.slots.contains_key(&stan) {
            return None;
        }
        stans.slots.insert(stan, Slot::Held);
        Some(StanHold {
            link: Arc::downgrade(self),
            stan,
        })
    }

    /// Sends `request` (which carries `hold`'s STAN) with its MAC and waits until `deadline`
    /// for the verified answer that matches it.
    pub(crate) async fn exchange(
        &self,
        hold: &StanHold,
        request: Message,
        deadline: Instant,
    ) -> Result<Message, NoAnswer> {
        let response = request
            .mti()
            .response()
            .ok_or(NoAnswer::NotSent("not a request"))?;
        let unsigned = request.encode_for_mac();
        let mac = match self
            .keyd
            .call(&RetailMac {
                key_id: self.zak.clone(),
                message: unsigned.mac_input().to_vec(),
            })
            .await
        {
            Ok(m) => m.mac,
            Err(e) => {
                tracing::error!(error = ?e, "keyd cannot MAC the acquirer message; not sent");
                return Err(NoAnswer::NotSent("keyd cannot MAC the message"));
            }
        };
        let frame = acqlink::frame(&unsigned.with_mac(Mac(mac)))
            .map_err(|_| NoAnswer::NotSent("message too long"))?;
        let mut writers = self.writer.subscribe();
        let connected = tokio::time::timeout_at(deadline, writers.wait_for(Option::is_some)).await;
        let Some(queue) = connected.ok().and_then(|w| w.ok().and_then(|w| w.clone())) else {
            return Err(NoAnswer::NotSent("no connection to the acquirer"));
        };
        let (reply, answer) = oneshot::channel();
        self.stans().slots.insert(
            hold.stan,
            Slot::Waiting(Waiting {
                terminal: request.get(De::TerminalId).map(str::to_owned),
                transmission: request.get(De::TransmissionDateTime).map(str::to_owned),
                response,
                reply,
            }),
        );
        if queue.send(frame).is_err() {
            self.stop_waiting(hold.stan);
            return Err(NoAnswer::NotSent("the connection closed"));
        }
        self.touch();
        let answered = tokio::time::timeout_at(deadline, answer).await;
        self.stop_waiting(hold.stan);
        match answered {
            Ok(Ok(message)) => Ok(message),
            // Timed out, or the connection dropped (its waiters are let go at once).
            _ => Err(NoAnswer::Lost),
        }
    }

    /// Back to held: an answer arriving from now on is not waited for.
    fn stop_waiting(&self, stan: Stan) {
        if let Some(slot) = self.stans().slots.get_mut(&stan) {
            *slot = Slot::Held;
        }
    }

    /// Hands a verified message to the request waiting for it, if any.
    fn deliver(&self, message: Message) {
        let mti = message.mti();
        let Some(stan) = message.get(De::Stan).and_then(|s| Stan::parse(s).ok()) else {
            tracing::warn!(%mti, "acquirer message without a STAN; dropped");
            return;
        };
        let mut stans = self.stans();
        let matched = match stans.slots.get(&stan) {
            Some(Slot::Waiting(w)) => {
                w.response == mti
                    && w.terminal.as_deref() == message.get(De::TerminalId)
                    && (w.transmission.is_none()
                        || w.transmission.as_deref() == message.get(De::TransmissionDateTime))
            }
            _ => false,
        };
        if !matched {
            drop(stans);
            tracing::warn!(%mti, %stan, "acquirer answer matches no waiting request; dropped");
            return;
        }
        if let Some(Slot::Waiting(w)) = stans.slots.insert(stan, Slot::Held) {
            drop(stans);
            let _ = w.reply.send(message);
        }
    }

    /// Lets every waiting request go (the connection dropped: their answers will not come).
    fn release_waiting(&self) {
        for slot in self.stans().slots.values_mut() {
            if matches!(slot, Slot::Waiting(_)) {
                *slot = Slot::Held;
            }
        }
    }

    /// Keeps the link connected for the life of the process.
    pub(crate) async fn run(self: Arc<Self>) {
        let mut backoff = RECONNECT_MIN;
        loop {
            match self.connect().await {
                Ok(io) => {
                    tracing::info!(host = %self.endpoint.host, port = self.endpoint.port,
                        tls = self.endpoint.tls.is_some(), "acquirer link connected");
                    backoff = RECONNECT_MIN;
                    let why = Arc::clone(&self).serve(io).await;
                    tracing::warn!(reason = %why, "acquirer link lost; reconnecting");
                }
                Err(e) => {
                    tracing::warn!(host = %self.endpoint.host, port = self.endpoint.port,
                        error = %e, retry_in_ms = backoff.as_millis(), "cannot connect to the acquirer");
                }
            }
            self.writer.send_replace(None);
            self.release_waiting();
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
    }

    async fn connect(&self) -> io::Result<Box<dyn Io>> {
        let e = &self.endpoint;
        let attempt = async {
            let tcp = TcpStream::connect((e.host.as_str(), e.port)).await?;
            tcp.set_nodelay(true)?;
            let io: Box<dyn Io> = match &e.tls {
                None => Box::new(tcp),
                Some(tls) => {
                    let name = rustls_pki_types::ServerName::try_from(e.host.clone())
                        .map_err(|_| io::Error::other("the acquirer host is not a TLS name"))?;
                    Box::new(tls.connect(name, tcp).await?)
                }
            };
            Ok(io)
        };
        tokio::time::timeout(e.connect_timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))
    }

    /// Moves frames both ways until the connection ends; answers why it ended.
    async fn serve(self: Arc<Self>, io: Box<dyn Io>) -> String {
        let (mut reader, mut writer) = tokio::io::split(io);
        let (queue, mut outgoing) = mpsc::unbounded_channel::<Vec<u8>>();
        self.writer.send_replace(Some(queue));
        self.touch();
        let mut deframer = Deframer::new();
        let mut buf = vec![0u8; 8192];
        // This connection's own: an echo left unanswered on it drops it, and only it.
        let unanswered_echo = Arc::new(Notify::new());
        loop {
            let idle_until =
                *self.activity.lock().unwrap_or_else(PoisonError::into_inner) + self.echo_every;
            tokio::select! {
                read = reader.read(&mut buf) => {
                    let n = match read {
                        Ok(0) => return "closed by the acquirer".to_owned(),
                        Ok(n) => n,
                        Err(e) => return format!("read: {e}"),
                    };
                    deframer.push(buf.get(..n).unwrap_or_default());
                    loop {
                        match deframer.pop() {
                            Ok(Some(frame)) => {
                                tokio::spawn(Arc::clone(&self).received(frame));
                            }
                            Ok(None) => break,
                            Err(_) => return "bad frame length from the acquirer".to_owned(),
                        }
                    }
                }
                Some(frame) = outgoing.recv() => {
                    if let Err(e) = writer.write_all(&frame).await {
                        return format!("write: {e}");
                    }
                }
                () = tokio::time::sleep_until(idle_until) => {
                    self.touch();
                    tokio::spawn(Arc::clone(&self).echo(Arc::clone(&unanswered_echo)));
                }
                () = unanswered_echo.notified() => {
                    return "the echo test went unanswered".to_owned();
                }
            }
        }
    }

    /// One frame off the wire: verified by keyd, then delivered.
    async fn received(self: Arc<Self>, frame: Vec<u8>) {
        let protected = match MacProtected::decode(&frame) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "undecodable acquirer message; dropped");
                return;
            }
        };
        let verified = self
            .keyd
            .call(&RetailMacVerify {
                key_id: self.zak.clone(),
                message: protected.mac_input().to_vec(),
                mac: protected.mac().0,
            })
            .await;
        match verified {
            Ok(_) => {
                self.touch();
                self.deliver(protected.into_verified());
            }
            Err(KeydError::Refused(Status::AUTH_FAILED)) => {
                tracing::warn!(mti = %protected.mti(),
                    "acquirer message MAC does not verify; treated as no answer");
            }
            Err(e) => {
                tracing::error!(error = ?e, "keyd cannot verify an acquirer MAC; message dropped");
            }
        }
    }

    /// The echo test of an idle link; an unanswered one drops the connection.
    async fn echo(self: Arc<Self>, unanswered: Arc<Notify>) {
        let Some(hold) = self.hold_new() else { return };
        let Ok(request) = messages::echo(hold.stan(), &Clock::now()) else {
            return;
        };
        let deadline = Instant::now() + self.timeout;
        match self.exchange(&hold, request, deadline).await {
            Ok(answer) => {
                tracing::debug!(
                    de39 = answer.get(De::ResponseCode).unwrap_or("-"),
                    "echo answered"
                );
            }
            Err(NoAnswer::Lost) => {
                tracing::warn!("echo test unanswered; dropping the acquirer connection");
                unanswered.notify_one();
            }
            Err(NoAnswer::NotSent(_)) => {}
        }
    }
}

/// A connection, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> Arc<Link> {
        Arc::new(
            Link::new(
                Endpoint {
                    host: "127.0.0.1".into(),
                    port: 1,
                    tls: None,
                    connect_timeout: Duration::from_secs(1),
                },
                Arc::new(Keyd::new("/nonexistent/keyd.sock".into())),
                "imp-zak".into(),
                Duration::from_millis(200),
                Duration::from_secs(60),
            )
            .unwrap(),
        )
    }

    #[test]
    fn stans_are_held_until_dropped_and_wrap_past_held_ones() {
        let l = link();
        let a = l.hold_new().unwrap();
        let b = l.hold_new().unwrap();
        assert_eq!(b.stan(), a.stan().next());
        assert!(l.hold(a.stan()).is_none(), "a held STAN is not handed out");
        let s = a.stan();
        drop(a);
        let again = l.hold(s).unwrap();
        assert_eq!(again.stan(), s);
        drop((again, b));
        // At the end of the range the counter wraps to 000001, skipping what is held.
        l.stans().counter = StanCounter::after(Stan::new(999_998).unwrap());
        let one = l.hold(Stan::FIRST).unwrap();
        let last = l.hold_new().unwrap();
        assert_eq!(last.stan(), Stan::LAST);
        assert_eq!(l.hold_new().unwrap().stan(), Stan::new(2).unwrap());
        drop(one);
        assert!(l.stans().slots.len() <= 2);
    }

    fn answer(mti: Mti, stan: &str, terminal: Option<&str>, when: &str) -> Message {
        let mut m = Message::new(mti)
            .with(De::Stan, stan)
            .unwrap()
            .with(De::TransmissionDateTime, when)
            .unwrap()
            .with(De::ResponseCode, "00")
            .unwrap();
        if let Some(t) = terminal {
            m.set(De::TerminalId, t).unwrap();
        }
        m
    }

    #[tokio::test]
    async fn an_answer_reaches_only_the_request_that_waits_for_it() {
        let l = link();
        let hold = l.hold_new().unwrap();
        let stan = hold.stan().to_string();
        let (reply, mut answered) = oneshot::channel();
        l.stans().slots.insert(
            hold.stan(),
            Slot::Waiting(Waiting {
                terminal: Some("VP004812".into()),
                transmission: Some("1127093015".into()),
                response: Mti::FinancialResponse,
                reply,
            }),
        );
        // Another terminal, another message type, another DE 7, another STAN: not ours.
        l.deliver(answer(
            Mti::FinancialResponse,
            &stan,
            Some("VP004813"),
            "1127093015",
        ));
        l.deliver(answer(
            Mti::ReversalResponse,
            &stan,
            Some("VP004812"),
            "1127093015",
        ));
        l.deliver(answer(
            Mti::FinancialResponse,
            &stan,
            Some("VP004812"),
            "1127093016",
        ));
        let other = hold.stan().next().to_string();
        l.deliver(answer(
            Mti::FinancialResponse,
            &other,
            Some("VP004812"),
            "1127093015",
        ));
        assert!(answered.try_recv().is_err());
        let ours = answer(
            Mti::FinancialResponse,
            &stan,
            Some("VP004812"),
            "1127093015",
        );
        l.deliver(ours.clone());
        assert_eq!(answered.try_recv().unwrap(), ours);
        // Answered once: the STAN stays held by its owner, a duplicate goes nowhere.
        assert!(matches!(
            l.stans().slots.get(&hold.stan()),
            Some(Slot::Held)
        ));
        l.deliver(ours);
    }

    #[tokio::test]
    async fn a_lost_connection_lets_waiting_requests_go_at_once() {
        let l = link();
        let hold = l.hold_new().unwrap();
        let (reply, answered) = oneshot::channel();
        l.stans().slots.insert(
            hold.stan(),
            Slot::Waiting(Waiting {
                terminal: None,
                transmission: None,
                response: Mti::NetworkResponse,
                reply,
            }),
        );
        l.release_waiting();
        assert!(
            answered.await.is_err(),
            "the sender is gone: no answer will come"
        );
    }

    #[tokio::test]
    async fn nothing_goes_out_that_keyd_did_not_mac() {
        let l = link();
        let hold = l.hold_new().unwrap();
        let echo = messages::echo(hold.stan(), &Clock::now()).unwrap();
        let deadline = Instant::now() + Duration::from_millis(200);
        assert_eq!(
            l.exchange(&hold, echo, deadline).await,
            Err(NoAnswer::NotSent("keyd cannot MAC the message"))
        );
    }
}
