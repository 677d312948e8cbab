//! Terminals under load: set-up of many activated terminals through the real lifecycle, and a
//! driver that sends signed, MSK-enveloped charges over many keep-alive connections (tasks on
//! one thread), flat out or paced, with a progress line and a latency histogram. `charge-load` and
//! `pos-sim load` are both this module.

#![allow(
    clippy::indexing_slicing,
    reason = "only reads of serde_json values, which answer Null for what is missing"
)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::Error;
use crate::api::Client;
use crate::pos::Terminal;

/// Registers `count` devices under a merchant (ids from `first`), and takes each through
/// pairing, claim (with `admin`), attestation, key delivery and activation.
///
/// # Errors
/// The first step that fails, with its answer.
pub fn activate_terminals(
    http: Client,
    admin: &str,
    merchant_id: &str,
    zmk: &[u8],
    first: u32,
    count: u32,
) -> Result<Vec<Terminal>, Error> {
    let call = |method: &str, path: &str, body: Option<&Value>| -> Result<Value, Error> {
        let a = http.call(method, path, Some(admin), body)?;
        if a.status >= 300 {
            return Err(format!("{method} {path}: {} {}", a.status, a.json).into());
        }
        Ok(a.json)
    };
    let mut terminals = Vec::new();
    for i in first..first.saturating_add(count) {
        let device_id = format!("POS-{i:08X}");
        let d = call(
            "POST",
            &format!("/merchants/{merchant_id}/devices"),
            Some(&json!({"device_id": device_id, "model": "sim", "serial": format!("SIM-{i}")})),
        )?;
        let key = &d["identity_key"];
        let mut t = Terminal::new(
            http,
            &device_id,
            key["key_id"].as_str().unwrap_or_default(),
            key["secret"].as_str().unwrap_or_default(),
            zmk,
        )?;
        let code = t.pairing_code()?.json["pairing_code"].clone();
        let claim = call("POST", "/pos/claim", Some(&json!({"pairing_code": code})))?;
        t.set_terminal_id(claim["terminal_id"].as_str().unwrap_or_default());
        for (what, status) in [
            ("attest", t.attest()?.status),
            ("keys", t.keys()?.status),
            ("activate", t.activate()?.0.status),
        ] {
            if status != 200 {
                return Err(format!("{device_id}: {what} answered {status}").into());
            }
        }
        terminals.push(t);
    }
    Ok(terminals)
}

/// One keep-alive HTTP/1.1 connection of the driver (a tokio socket: used inside the driver's
/// runtime).
#[derive(Debug)]
struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: String,
}

impl Conn {
    /// Connects to a loopback port.
    ///
    /// # Errors
    /// If the connection fails.
    async fn new(port: u16) -> Result<Self, Error> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(reader),
            writer,
            line: String::new(),
        })
    }

    /// Sends a whole request; returns the status and body of the answer.
    ///
    /// # Errors
    /// Transport failures, and an answer this reader cannot frame (no status line, a chunked
    /// body): the connection is then out of step and must not be used again.
    async fn send(&mut self, request: &[u8]) -> Result<(u16, Vec<u8>), Error> {
        self.writer.write_all(request).await?;
        let mut status = None;
        let mut length = 0usize;
        loop {
            self.line.clear();
            if self.reader.read_line(&mut self.line).await? == 0 {
                return Err("connection closed".into());
            }
            let line = self.line.as_str();
            if line == "\r\n" {
                break;
            }
            if status.is_none() {
                status = line
                    .strip_prefix("HTTP/1.")
                    .and_then(|rest| rest.get(2..5))
                    .and_then(|s| s.parse::<u16>().ok());
                if status.is_none() {
                    return Err("no status line".into());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err("a chunked answer".into());
                }
            }
        }
        let status = status.ok_or("no status line")?;
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

/// A signed, enveloped `POST /pos/charge` as bytes on the wire (keep-alive).
///
/// # Errors
/// If the terminal has no keys or terminal id yet.
pub fn charge_request(
    t: &Terminal,
    pan: &str,
    amount: u64,
    currency: &str,
    pin_block: Option<&str>,
) -> Result<Vec<u8>, Error> {
    let mut inner = json!({
        "amount": {"value": amount.to_string(), "currency": currency},
        "entry_mode": "contactless",
        "card": t.card_blob(pan)?,
    });
    if let Some(block) = pin_block {
        // A chip card takes a PIN at any amount (spec 12.2).
        inner["entry_mode"] = json!("chip");
        inner["pin_block"] = json!(block);
    }
    let body = t.envelope(inner.to_string().as_bytes(), false)?;
    let tid = t.terminal_id().ok_or("no terminal id")?;
    let kid = t.mac_key_id().ok_or("no MAC key")?;
    let ts = crate::pos::now_timestamp()?;
    let nonce = crate::pos::fresh_nonce()?;
    let message =
        crate::pos::charge_string_to_sign(tid, kid, &ts, &nonce, "POST", "/pos/charge", &body);
    let sig = crate::pos::signature_header(t.mac_key().ok_or("no MAC key")?, &message)?;
    // Sized for the headers and the body at once: growing a copy of the body per request was
    // a tenth of the driver's time, on the cores the servers are measured on.
    let mut req = Vec::with_capacity(body.len() + 640);
    write!(
        req,
        "POST /pos/charge HTTP/1.1\r\nHost: localhost\r\nUser-Agent: Viopay-POS/1.4.0 (load)\r\n\
         X-Client-Type: pos\r\nX-Terminal-Id: {tid}\r\nX-Key-Id: {kid}\r\nX-Timestamp: {ts}\r\n\
         X-Nonce: {nonce}\r\nX-Signature: {sig}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )?;
    req.extend_from_slice(&body);
    Ok(req)
}

/// How to load.
#[derive(Debug, Clone)]
pub struct Options {
    /// Keep-alive connections, each a closed loop of one charge at a time; terminals are
    /// shared round-robin.
    pub connections: usize,
    /// How long.
    pub duration: Duration,
    /// Charges per second over all connections; 0 = as fast as answers come.
    pub rate: u64,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// The card number charged.
    pub pan: String,
    /// The currency of the merchant.
    pub currency: String,
    /// Open every answer and keep the acknowledged charge ids (costs client CPU; for checks
    /// that every acknowledged charge was stored exactly once).
    pub collect: bool,
    /// A PIN every charge carries (chip entry, a format 4 block under the terminal's TPK, made
    /// once per connection), or none (contactless).
    pub pin: Option<String>,
}

/// What a run measured.
#[derive(Debug, Default)]
pub struct Report {
    /// Charges answered 200.
    pub approved: u64,
    /// Other answers by status (0 = transport failure).
    pub failed: BTreeMap<u16, u64>,
    /// Latency of every 200.
    pub latencies: Latencies,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Ids of the acknowledged charges, when collected.
    pub acknowledged: Vec<String>,
}

impl Report {
    /// Charges per second.
    pub fn rate(&self) -> f64 {
        #[allow(clippy::cast_precision_loss, reason = "a count as a rate")]
        let n = self.approved as f64;
        n / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q` (0-1), milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latencies.quantile_ms(q)
    }

    /// p50/p90/p99/p999 and a histogram with power-of-two millisecond buckets.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "approved charges: {} in {:.1} s = {:.0}/s; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms\n",
            self.approved,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.quantile_ms(0.5),
            self.quantile_ms(0.9),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
        );
        let buckets = self.latencies.by_power_of_two_ms();
        let top = buckets.values().copied().max().unwrap_or(1).max(1);
        for (bucket, n) in &buckets {
            let (lo, hi) = if *bucket == 0 {
                (0, 1)
            } else {
                (1u64 << (bucket - 1), 1u64 << bucket)
            };
            let width = usize::try_from(n * 50 / top).unwrap_or(50);
            out.push_str(&format!(
                "  {lo:>5}-{hi:<5} ms {n:>9} {}\n",
                "#".repeat(width.max(1))
            ));
        }
        if !self.failed.is_empty() {
            out.push_str(&format!("failed answers by status: {:?}\n", self.failed));
        }
        out
    }
}

/// Sends charges over `options.connections` connections for `options.duration`.
pub fn run(port: u16, terminals: &[Terminal], options: &Options) -> Report {
    run_on(&[port], terminals, options)
}

/// What the connections of a run add to, and the flag that ends it.
#[derive(Debug, Default)]
struct Tally {
    stop: AtomicBool,
    approved: AtomicU64,
    failed: Mutex<BTreeMap<u16, u64>>,
    latencies: Mutex<Latencies>,
    acknowledged: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, status: u16) {
        if let Ok(mut f) = self.failed.lock() {
            *f.entry(status).or_default() += 1;
        }
    }
}

/// As [`run`], the connections spread round-robin over several API nodes' ports (as a load
/// balancer would spread them).
///
/// All connections are tasks on one dedicated thread (a current-thread runtime), each a closed
/// loop: build a request, send it, wait for its answer. The driver shares the cores
/// with the servers it measures, and a thread per connection cost it about a quarter of its
/// time in context switches (32 threads, each woken once per answer); one thread reads the
/// answers that are ready together. A measured latency therefore also holds any time the answer
/// waited while that thread built another connection's request.
///
/// # Panics
/// If the driver's thread or runtime cannot be started, or a connection's task panics: a run
/// that could not load must not pass for one that loaded and saw failures.
pub fn run_on(ports: &[u16], terminals: &[Terminal], options: &Options) -> Report {
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    #[allow(clippy::cast_precision_loss, reason = "a pacing interval")]
    let interval = (options.rate > 0)
        .then(|| Duration::from_secs_f64(options.connections as f64 / options.rate as f64));
    let connections: Vec<_> = (0..options.connections)
        .filter_map(|i| {
            let t = terminals.get(i % terminals.len().max(1)).cloned()?;
            Some((t, *ports.get(i % ports.len().max(1))?))
        })
        .collect();
    let driver = {
        let (tally, options) = (Arc::clone(&tally), options.clone());
        std::thread::Builder::new()
            .name("load-driver".into())
            .spawn(move || {
                #[allow(clippy::expect_used, reason = "see the doc's Panics")]
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the load driver's runtime");
                runtime.block_on(async {
                    let tasks: Vec<_> = connections
                        .into_iter()
                        .map(|(t, port)| {
                            tokio::spawn(connection(
                                t,
                                port,
                                options.clone(),
                                interval,
                                Arc::clone(&tally),
                            ))
                        })
                        .collect();
                    for task in tasks {
                        if let Err(e) = task.await
                            && e.is_panic()
                        {
                            std::panic::resume_unwind(e.into_panic());
                        }
                    }
                });
            })
    };
    let mut last = 0;
    while started.elapsed() < options.duration {
        std::thread::sleep(
            Duration::from_secs(1).min(options.duration.saturating_sub(started.elapsed())),
        );
        if options.progress {
            let now = tally.approved.load(Ordering::Relaxed);
            let elapsed = started.elapsed().as_secs();
            let total = options.duration.as_secs().max(1);
            let filled = usize::try_from(elapsed * 30 / total).unwrap_or(30).min(30);
            eprintln!(
                "[{}{}] {elapsed:>3}/{total} s  {now:>8} charges  {:>6}/s",
                "=".repeat(filled),
                " ".repeat(30 - filled),
                now - last
            );
            last = now;
        }
    }
    tally.stop.store(true, Ordering::Relaxed);
    #[allow(clippy::expect_used, reason = "see the doc's Panics")]
    let driver = driver.expect("the load driver's thread");
    if let Err(panic) = driver.join() {
        std::panic::resume_unwind(panic);
    }
    Report {
        approved: tally.approved.load(Ordering::Relaxed),
        failed: tally.failed.lock().map(|f| f.clone()).unwrap_or_default(),
        latencies: tally
            .latencies
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default(),
        elapsed: started.elapsed(),
        acknowledged: tally
            .acknowledged
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default(),
    }
}

/// How long a connection waits for an answer before it counts a failure and reconnects: so that
/// a server that hangs without closing its sockets ends the run (at most this much late) like
/// one that died.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// One connection's closed loop, until the run's flag is set: a transport failure is counted
/// and the connection made again (a run that outlives a restart of the API goes on).
async fn connection(
    t: Terminal,
    port: u16,
    options: Options,
    interval: Option<Duration>,
    tally: Arc<Tally>,
) {
    let Ok(mut conn) = Conn::new(port).await else {
        tally.fail(0);
        return;
    };
    let pin_block = match options.pin.as_deref().map(|p| t.pin_block(p, &options.pan)) {
        None => None,
        Some(Ok(block)) => Some(block),
        Some(Err(_)) => {
            tally.fail(0);
            return;
        }
    };
    let mut mine = Latencies::default();
    let mut next = tokio::time::Instant::now();
    let mut n = 0u64;
    while !tally.stop.load(Ordering::Relaxed) {
        if let Some(interval) = interval {
            tokio::time::sleep_until(next).await;
            next += interval;
            // A slow pace sleeps up to `connections / rate`: the run may have ended meanwhile.
            if tally.stop.load(Ordering::Relaxed) {
                break;
            }
        }
        n += 1;
        let amount = 1000 + (n % 89);
        let Ok(request) = charge_request(
            &t,
            &options.pan,
            amount,
            &options.currency,
            pin_block.as_deref(),
        ) else {
            tally.fail(0);
            break;
        };
        let sent = Instant::now();
        match tokio::time::timeout(ANSWER_TIMEOUT, conn.send(&request)).await {
            Ok(Ok((200, body))) => {
                tally.approved.fetch_add(1, Ordering::Relaxed);
                mine.record(sent.elapsed());
                if options.collect {
                    let id = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| t.open_envelope(&v).ok())
                        .and_then(|c| c["charge_id"].as_str().map(str::to_owned));
                    if let (Some(id), Ok(mut ids)) = (id, tally.acknowledged.lock()) {
                        ids.push(id);
                    }
                }
            }
            Ok(Ok((status, _))) => tally.fail(status),
            // A transport failure, or no answer in time (a hung server): the connection is
            // dropped (a half-read answer cannot be resumed) and made again.
            Ok(Err(_)) | Err(_) => {
                tally.fail(0);
                match Conn::new(port).await {
                    Ok(c) => conn = c,
                    Err(_) => break,
                }
            }
        }
    }
    if let Ok(mut l) = tally.latencies.lock() {
        l.merge(&mine);
    }
}

/// Counts a merchant's approved charges through the API (the durability check).
///
/// # Errors
/// Transport failures or a refused listing.
pub fn count_approved(http: Client, admin: &str, merchant_id: &str) -> Result<u64, Error> {
    let mut approved = 0u64;
    crate::api::each_charge(http, admin, merchant_id, |c| {
        approved += u64::from(c.get("status").and_then(Value::as_str) == Some("approved"));
    })?;
    Ok(approved)
}

/// Latencies as a fixed-size log-linear histogram: 64 sub-buckets per power of two of
/// microseconds (under 1.6 % error at any value), so a run of any length keeps 32 KiB per
/// connection instead of eight bytes per charge.
#[derive(Debug, Clone)]
pub struct Latencies {
    counts: Box<[u64; Self::BUCKETS]>,
    total: u64,
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            counts: Box::new([0; Self::BUCKETS]),
            total: 0,
        }
    }
}

impl Latencies {
    const SUB: u32 = 64;
    const BUCKETS: usize = 64 * 64;

    /// The bucket of `us` microseconds: values below 64 have one bucket each; above, the top
    /// six bits after the leading one pick the sub-bucket of their power of two.
    fn bucket(us: u64) -> usize {
        if us < u64::from(Self::SUB) {
            return usize::try_from(us).unwrap_or(0);
        }
        let power = 63 - us.leading_zeros(); // >= 6
        let sub = (us >> (power - 6)) - u64::from(Self::SUB);
        usize::try_from(u64::from(power - 5) * u64::from(Self::SUB) + sub)
            .unwrap_or(Self::BUCKETS - 1)
            .min(Self::BUCKETS - 1)
    }

    /// The lowest value, in microseconds, of a bucket.
    fn floor_us(bucket: usize) -> u64 {
        let b = u64::try_from(bucket).unwrap_or(0);
        let sub = u64::from(Self::SUB);
        if b < sub {
            return b;
        }
        let power = b / sub + 5;
        (sub + b % sub) << (power - 6)
    }

    /// Counts one latency.
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some(c) = self.counts.get_mut(Self::bucket(us)) {
            *c += 1;
        }
        self.total += 1;
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
    }

    /// Latencies counted.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True before the first latency.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The latency at quantile `q` (0-1), milliseconds (the floor of its bucket).
    pub fn quantile_ms(&self, q: f64) -> f64 {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a rank from a fraction of a count; microseconds for display"
        )]
        let rank = ((self.total.saturating_sub(1) as f64) * q).round() as u64;
        let mut seen = 0;
        for (bucket, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen > rank {
                #[allow(clippy::cast_precision_loss, reason = "microseconds for display")]
                return Self::floor_us(bucket) as f64 / 1000.0;
            }
        }
        0.0
    }

    /// Counts by power-of-two milliseconds (`0` for under 1 ms, `k` for 2^(k-1) to 2^k ms).
    fn by_power_of_two_ms(&self) -> BTreeMap<u32, u64> {
        let mut out = BTreeMap::new();
        for (bucket, n) in self.counts.iter().enumerate().filter(|(_, n)| **n > 0) {
            let ms = Self::floor_us(bucket) / 1000;
            let k = if ms == 0 { 0 } else { 64 - ms.leading_zeros() };
            *out.entry(k).or_default() += n;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on a loopback port that answers each request it reads with `answer`.
    async fn answering(answer: &'static [u8]) -> u16 {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 || stream.write_all(answer).await.is_err() {
                    break;
                }
            }
        });
        port
    }

    #[tokio::test]
    async fn answers_are_framed_by_their_length_and_odd_ones_refused() {
        let ok = b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\nX-A: b\r\n\r\nhello";
        let mut conn = Conn::new(answering(ok).await).await.unwrap();
        assert_eq!(conn.send(b"ping").await.unwrap(), (201, b"hello".to_vec()));
        // Keep-alive: the next answer on the same connection is framed the same way.
        assert_eq!(conn.send(b"ping").await.unwrap(), (201, b"hello".to_vec()));
        for odd in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\nhello",
        ] {
            let mut conn = Conn::new(answering(odd).await).await.unwrap();
            assert!(
                conn.send(b"ping").await.is_err(),
                "{}",
                String::from_utf8_lossy(odd)
            );
        }
    }

    #[test]
    fn latency_buckets_are_within_two_percent_and_ordered() {
        let mut previous = 0;
        for us in (0..2_000_000u64)
            .step_by(37)
            .chain([u64::from(u32::MAX), 1 << 40])
        {
            let b = Latencies::bucket(us);
            assert!(b >= previous, "{us}");
            previous = b;
            let floor = Latencies::floor_us(b);
            assert!(floor <= us && us - floor <= us / 62, "{us} -> {floor}");
        }
        let mut l = Latencies::default();
        for ms in 1..=1000u64 {
            l.record(Duration::from_millis(ms));
        }
        let mut other = Latencies::default();
        other.record(Duration::from_secs(5));
        l.merge(&other);
        assert_eq!(l.len(), 1001);
        let p50 = l.quantile_ms(0.5);
        assert!((490.0..=501.0).contains(&p50), "{p50}");
        assert!(l.quantile_ms(1.0) >= 4900.0);
        assert!(l.quantile_ms(0.0) >= 0.98 && l.quantile_ms(0.0) <= 1.0);
        let by_ms = l.by_power_of_two_ms();
        assert_eq!(by_ms.values().sum::<u64>(), 1001);
        assert_eq!(by_ms.get(&1), Some(&1));
    }
}
