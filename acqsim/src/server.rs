//! The TCP side: a listener, one task per connection, one timer per delayed answer.
//!
//! Each connection reads frames as they come and answers each request on its own schedule, so
//! many requests are outstanding at once and a slow answer does not hold back a quick one (the
//! platform matches answers by DE 11 and DE 41, spec 12.3). Nothing is written to the socket
//! but whole framed responses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use acqlink::{Deframer, Stan};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::cards::CardTable;
use crate::faults::Faults;
use crate::host::{Action, Host};
use crate::journal::{Counters, Entry, Reversal};
use crate::keys::Keys;

/// How to start a [`Simulator`].
#[derive(Debug)]
pub struct Config {
    /// Where to listen; port 0 picks a free port ([`Simulator::addr`] tells which).
    pub listen: SocketAddr,
    /// ZPK, ZAK and PVK.
    pub keys: Keys,
    /// The cards PINs are verified against.
    pub cards: CardTable,
    /// The faults in force from the start.
    pub faults: Faults,
    /// Seed of the generator behind [`Faults::drop_fraction`].
    pub seed: u64,
    /// After this many consecutive wrong PINs a card answers `75` to every PIN until
    /// [`Simulator::reset_pin_tries`]; `None` (the default) counts nothing, so tests sharing one
    /// simulator cannot block each other's cards. [`crate::cards::PIN_BLOCKED_PAN`] answers
    /// `75` either way.
    pub pin_try_limit: Option<u32>,
}

impl Default for Config {
    /// Loopback, a free port, the test keys and cards, no faults.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            keys: Keys::test(),
            cards: CardTable::test(),
            faults: Faults::default(),
            seed: 1,
            pin_try_limit: None,
        }
    }
}

/// A running acquirer host. Dropping it stops the listener and closes every connection.
#[derive(Debug)]
pub struct Simulator {
    host: Arc<Host>,
    addr: SocketAddr,
    /// Bumped to close every open connection.
    close_all: watch::Sender<u64>,
    open: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
}

impl Simulator {
    /// Binds and starts serving on the current tokio runtime.
    ///
    /// # Errors
    /// The listener could not be bound.
    pub async fn start(config: Config) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let host = Arc::new(Host::new(
            config.keys,
            config.cards,
            config.faults,
            config.seed,
            config.pin_try_limit,
        ));
        let close_all = watch::Sender::new(0u64);
        let open = Arc::new(AtomicUsize::new(0));
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&host),
            close_all.clone(),
            Arc::clone(&open),
        ));
        tracing::info!(%addr, "acquirer host listening");
        Ok(Self {
            host,
            addr,
            close_all,
            open,
            accept,
        })
    }

    /// [`Self::start`] with [`Config::default`]: loopback, a free port, test keys and cards.
    ///
    /// # Errors
    /// The listener could not be bound.
    pub async fn start_default() -> std::io::Result<Self> {
        Self::start(Config::default()).await
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    // --- faults ----------------------------------------------------------------------------

    /// The faults in force now (the "next N" counts as far as they have counted down).
    pub fn faults(&self) -> Faults {
        self.host.state().faults.faults.clone()
    }

    /// Replaces every fault.
    pub fn set_faults(&self, faults: Faults) {
        self.host.update(|s| s.faults.faults = faults);
    }

    /// Clears every fault.
    pub fn clear_faults(&self) {
        self.set_faults(Faults::default());
    }

    /// Changes the faults in place.
    pub fn update_faults(&self, f: impl FnOnce(&mut Faults)) {
        self.host.update(|s| f(&mut s.faults.faults));
    }

    /// Waits `latency` before every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.update_faults(|f| f.latency = latency);
    }

    /// Waits `latency` before answering requests with this STAN.
    pub fn set_stan_latency(&self, stan: Stan, latency: Duration) {
        self.update_faults(|f| {
            f.stan_latency.insert(stan, latency);
        });
    }

    /// Never answers requests with this STAN (until the faults are cleared).
    pub fn drop_stan(&self, stan: Stan) {
        self.update_faults(|f| {
            f.drop_stans.insert(stan);
        });
    }

    /// Never answers the next `n` requests.
    pub fn drop_next(&self, n: u32) {
        self.update_faults(|f| f.drop_next = n);
    }

    /// Leaves each request unanswered with probability `fraction` (clamped to 0.0-1.0).
    pub fn set_drop_fraction(&self, fraction: f64) {
        self.update_faults(|f| f.drop_fraction = fraction.clamp(0.0, 1.0));
    }

    /// Answers requests with this STAN with a wrong MAC.
    pub fn bad_mac_stan(&self, stan: Stan) {
        self.update_faults(|f| {
            f.bad_mac_stans.insert(stan);
        });
    }

    /// Answers the next `n` requests with a wrong MAC.
    pub fn bad_mac_next(&self, n: u32) {
        self.update_faults(|f| f.bad_mac_next = n);
    }

    /// Closes the connection that carries each of the next `n` requests instead of answering.
    pub fn close_next(&self, n: u32) {
        self.update_faults(|f| f.close_next = n);
    }

    /// Closes every open connection now (the listener stays up).
    pub fn close_connections(&self) {
        self.close_all.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Forgets PIN try counts and the blocks they caused.
    pub fn reset_pin_tries(&self) {
        self.host.reset_pin_tries();
    }

    // --- what it received -------------------------------------------------------------------

    /// Every request accepted so far (MAC verified), oldest first.
    pub fn journal(&self) -> Vec<Entry> {
        self.host.state().record.entries.iter().cloned().collect()
    }

    /// The journal entries of requests with this STAN (DE 11, six digits).
    pub fn entries_for_stan(&self, stan: Stan) -> Vec<Entry> {
        let text = stan.to_string();
        self.host
            .state()
            .record
            .entries
            .iter()
            .filter(|e| e.stan.as_deref() == Some(text.as_str()))
            .cloned()
            .collect()
    }

    /// The journal entries of requests with this RRN (DE 37, the platform's
    /// `processor.reference`): a purchase and its reversals. Trailing spaces do not matter.
    pub fn entries_for_rrn(&self, rrn: &str) -> Vec<Entry> {
        let rrn = rrn.trim_end();
        self.host
            .state()
            .record
            .entries
            .iter()
            .filter(|e| e.rrn.as_deref().map(str::trim_end) == Some(rrn))
            .cloned()
            .collect()
    }

    /// The running totals.
    pub fn counters(&self) -> Counters {
        self.host.state().record.counters
    }

    /// Every original reversed so far, in the order first reversed.
    pub fn reversals(&self) -> Vec<Reversal> {
        self.host.state().record.reversals()
    }

    /// Whether a reversal arrived for the request with this RRN (DE 37; the platform's
    /// `processor.reference`). Trailing spaces of the field do not matter.
    pub fn is_reversed(&self, rrn: &str) -> bool {
        let rrn = rrn.trim_end();
        self.reversals()
            .iter()
            .any(|r| r.rrn.as_deref().map(str::trim_end) == Some(rrn))
    }

    /// Whether a reversal arrived for the request this terminal (DE 41) sent with this STAN.
    pub fn is_reversed_stan(&self, terminal_id: &str, stan: Stan) -> bool {
        let stan = stan.to_string();
        self.reversals()
            .iter()
            .any(|r| r.terminal_id.trim_end() == terminal_id.trim_end() && r.original_stan == stan)
    }

    /// Waits until `done` holds for the journal (checked now and after every change), at most
    /// `timeout`. Answers whether it held.
    pub async fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let mut changes = self.host.changed.subscribe();
        let waiting = async {
            loop {
                changes.borrow_and_update();
                if done(self) {
                    return true;
                }
                if changes.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(timeout, waiting)
            .await
            .unwrap_or(false)
    }

    /// Stops listening and closes every connection.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.accept.abort();
        self.close_connections();
    }
}

async fn accept_loop(
    listener: TcpListener,
    host: Arc<Host>,
    close_all: watch::Sender<u64>,
    open: Arc<AtomicUsize>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // Connections are numbered from 1 per simulator, in the order accepted.
        let id = host.update(|s| {
            s.record.counters.connections += 1;
            s.record.counters.connections
        });
        tracing::info!(connection = id, %peer, "connection accepted");
        open.fetch_add(1, Ordering::SeqCst);
        let host = Arc::clone(&host);
        let close = close_all.subscribe();
        let open = Arc::clone(&open);
        tokio::spawn(async move {
            let closed_by_host = serve(&host, stream, id, close).await;
            open.fetch_sub(1, Ordering::SeqCst);
            if closed_by_host {
                host.update(|s| s.record.counters.closed += 1);
            }
            tracing::info!(connection = id, closed_by_host, "connection ended");
        });
    }
}

/// What a request's task hands back to its connection.
enum Outgoing {
    Frame(Vec<u8>),
    Close,
}

/// Serves one connection until the peer closes it, a read or write fails, or the host closes
/// it. Answers whether the host closed it.
async fn serve(
    host: &Arc<Host>,
    stream: TcpStream,
    id: u64,
    mut close: watch::Receiver<u64>,
) -> bool {
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let mut deframer = Deframer::new();
    let mut buf = vec![0u8; 8192];
    close.borrow_and_update();
    loop {
        tokio::select! {
            read = reader.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => n,
                };
                deframer.push(buf.get(..n).unwrap_or_default());
                loop {
                    match deframer.pop() {
                        Ok(Some(frame)) => dispatch(host, id, &frame, &tx),
                        Ok(None) => break,
                        Err(_) => {
                            // A length prefix of 0 or over 4,096: the stream cannot be resynchronised.
                            tracing::warn!(connection = id, "bad frame length; closing");
                            host.update(|s| {
                                s.record.counters.received += 1;
                                s.record.counters.malformed += 1;
                            });
                            return true;
                        }
                    }
                }
            }
            Some(out) = rx.recv() => match out {
                Outgoing::Frame(bytes) => {
                    if writer.write_all(&bytes).await.is_err() {
                        return false;
                    }
                }
                Outgoing::Close => return true,
            },
            _ = close.changed() => return true,
        }
    }
}

/// Decides one frame and schedules what follows: at once when there is no latency (so the
/// answers to a burst keep their order), else on a timer of its own.
fn dispatch(host: &Host, id: u64, frame: &[u8], tx: &mpsc::UnboundedSender<Outgoing>) {
    let Some(Action {
        latency,
        frame,
        close,
    }) = host.handle(id, frame)
    else {
        return;
    };
    let out = if close {
        Some(Outgoing::Close)
    } else {
        frame.map(Outgoing::Frame)
    };
    let Some(out) = out else { return };
    if latency.is_zero() {
        let _ = tx.send(out);
    } else {
        let tx = tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(latency).await;
            // The connection may be gone by now; then there is no one to answer.
            let _ = tx.send(out);
        });
    }
}
