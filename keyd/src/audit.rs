//! The audit log: one line per operation, each line chained to the one before, so that editing,
//! removing or reordering a record breaks the chain at that record.
//!
//! A line is `{"seq":…,"at":…,"peer":…,"op":"0x0205","subject":…,"kcv":…,"status":…,"micros":…,
//! "prev":"<hex>","mac":"<hex>"}`, where `mac` is HMAC-SHA-256, under a key derived in the token
//! from the LMK ([`AuditKey`]), of the previous record's MAC and the line's text up to (not
//! including) `,"mac"`. Someone who can edit the file but not use the token cannot make a
//! record, or recompute the chain after an edit. Only ids, check values, statuses and timings
//! are written: never key bytes, PANs, secrets or plaintext.
//!
//! `keyd init` writes its first records before the LMK exists: they are chained by plain
//! SHA-256 and end in `"hash"` instead of `"mac"`, and once the LMK is there init writes the
//! first keyed record ([`op::AUDIT_KEYED`]), which covers them. Unkeyed records may only open a
//! log and only be init's (`INIT`, `DUAL_CONTROL_OFF`); a log with no keyed record at all does
//! not verify under a key. So a log rewritten without the token, even as an unkeyed chain, is
//! refused. (A log written by a keyd from before the chain was keyed is refused too: verify it
//! with that version's `audit-verify`, then move it aside.)
//!
//! A log can still be cut: its tail removed. [`Audit::open`] takes an optional checkpoint file
//! (on another mount, or a pipe to a log collector) to which keyd appends the record count and
//! the last MAC every [`CHECKPOINT_EVERY`] records and at every synced flush;
//! [`verify_checkpoints`] then finds a log shorter than, or different from, what was checked
//! in.
//!
//! Records are appended in memory under a lock, then chained and written to the file under an
//! exclusive advisory lock on it before the answers they describe leave keyd (the socket writer
//! flushes the log first); control operations are also synced to disk before their answer. If
//! the log cannot be written keyd stops serving: every later request is answered `UNAVAILABLE`
//! without being executed.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{Flock, FlockArg};

use keyd_proto::Status;
use sha2::{Digest, Sha256};

use crate::Error;

/// Operation codes of what officers, and keyd on its own, do outside the socket protocol.
/// Socket requests are recorded under their protocol opcodes (`0x01xx` devices, `0x02xx` data,
/// `0x0301`-`0x0304` admin).
pub mod op {
    /// `keyd init`: the LMK created.
    pub const INIT: u16 = 0x0300;
    /// A ZMK formed from typed components (the same code as the socket's `ZmkImport`).
    pub const ZMK_FORM: u16 = 0x0301;
    /// A ZMK generated as random components.
    pub const ZMK_GENERATE: u16 = 0x0310;
    /// An officer enrolled.
    pub const OFFICER_ADD: u16 = 0x0311;
    /// An officer changed their password.
    pub const OFFICER_PASSWD: u16 = 0x0312;
    /// An officer's login attempt (subject: the name given).
    pub const OFFICER_LOGIN: u16 = 0x0320;
    /// An officer's approval (subject: `action:subject`).
    pub const APPROVAL: u16 = 0x0321;
    /// A key disabled.
    pub const KEY_DISABLE: u16 = 0x0330;
    /// A key enabled.
    pub const KEY_ENABLE: u16 = 0x0331;
    /// A key's destruction started (its restore window opens).
    pub const KEY_DESTROY: u16 = 0x0332;
    /// A key restored within its window.
    pub const KEY_RESTORE: u16 = 0x0333;
    /// A key's block erased when its window ended.
    pub const KEY_ERASED: u16 = 0x0334;
    /// An officer generated a partner's key (`key-generate`).
    pub const KEY_GENERATE: u16 = 0x0335;
    /// An officer stored the simulators' published test keys (`simulator-keys`), one record
    /// per key.
    pub const SIMULATOR_KEYS: u16 = 0x0336;
    /// A zone's ZMK rotated (subject: the zone; KCV: the new ZMK's).
    pub const ZMK_ROTATE: u16 = 0x0344;
    /// A zone's old ZMK retired by the officers (subject: the zone; KCV: the old ZMK's).
    pub const ZMK_RETIRE: u16 = 0x0345;
    /// An LMK rotation began on this node (KCV: the new LMK's): formed in this token, or
    /// checked against the one formed on another node.
    pub const LMK_FORM: u16 = 0x0340;
    /// A rewrap run moved blocks to the new LMK (subject: `<n> blocks`; KCV: the new LMK's).
    pub const LMK_REWRAP: u16 = 0x0341;
    /// The switch: the new LMK is current (subject: `from <old KCV>`; KCV: the new LMK's).
    pub const LMK_SWITCH: u16 = 0x0342;
    /// A retired LMK destroyed (KCV: its check value).
    pub const LMK_DESTROY: u16 = 0x0343;
    /// The first keyed record of a log: written by `keyd init` once the LMK exists.
    pub const AUDIT_KEYED: u16 = 0x03FD;
    /// keyd started, or a command ran, with dual control off.
    pub const DUAL_CONTROL_OFF: u16 = 0x03FE;
}

/// One operation, as the log records it.
#[derive(Debug)]
pub struct Entry<'a> {
    /// The peer's uid (from `SO_PEERCRED`), or the officer for ceremonies.
    pub peer: &'a str,
    /// The operation code.
    pub opcode: u16,
    /// The device, key, zone, webhook endpoint or portal user the operation named, if any.
    pub subject: Option<&'a str>,
    /// The check value of the key made, imported or exported, if any.
    pub kcv: Option<[u8; 3]>,
    /// The answer.
    pub status: Status,
    /// How long it took.
    pub micros: u64,
}

struct State {
    /// `None` only while a flush holds the file under its advisory lock.
    file: Option<File>,
    /// The records a flush took from [`Audit::pending`] and is writing; kept between flushes
    /// for its allocation.
    taken: String,
    prev: [u8; 32],
    seq: u64,
    /// Whether the last record is keyed (then every later one must be).
    keyed: bool,
    /// The file's length after this process last wrote it: a different length at the next
    /// write means another keyd process (an operator command beside `serve`) appended.
    len: u64,
    /// Where checkpoints go, and the record the last one covered.
    checkpoints: Option<File>,
    checkpointed: u64,
}

/// The open log.
pub struct Audit {
    /// The chain and the file: held by a flush across its write.
    state: Mutex<State>,
    /// Records not yet written, without their sequence number and chain fields (those are
    /// given when they are written, under the file lock): one record per line. A lock of its
    /// own, so that recording a request never waits for a flush's file write: under load the
    /// thread answering requests stalled on that write, and each stall cost a futex wake.
    pending: Mutex<String>,
    /// `None` only for `keyd init` before the LMK exists.
    key: Option<AuditKey>,
    failed: AtomicBool,
    /// Highest sequence number known to be on disk; held while syncing, so concurrent syncs
    /// wait for one `fdatasync` and find their records already covered (group sync).
    synced: Mutex<u64>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("failed", &self.failed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Lower-case hex, for checking and checkpoints (records are written through [`push_hex`]).
fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// The key of the chain: 32 bytes derived in the token from the LMK (`keyd audit chain key`),
/// so that every keyd process on a token holding that LMK (serve, officers' commands, a
/// standby formed from the same components) writes and checks the same chain, and no one
/// without the token can. Wiped on drop, not printable.
pub struct AuditKey(hmac::Hmac<Sha256>);

impl AuditKey {
    /// The key of the chain: derived from the original LMK in `hsm`, or, once the LMK was
    /// rotated, the same key kept sealed under the current LMK in the store (an LMK rotation
    /// does not change the chain's key, so the log stays one chain under one key).
    ///
    /// # Errors
    /// [`Error::Hsm`] when the token cannot compute it (no LMK); [`Error::Store`].
    pub fn derive(hsm: &dyn crate::hsm::Hsm, store: &dyn crate::KeyStore) -> Result<Self, Error> {
        let key = crate::lmk_secret(hsm, store, "keyd audit chain key")?;
        Self::new(&key[..])
    }

    /// The HMAC with its key already absorbed: each record clones it instead of hashing the
    /// key again (keyd writes a record for every request).
    fn new(key: &[u8]) -> Result<Self, Error> {
        use hmac::KeyInit;
        <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key)
            .map(Self)
            .map_err(|_| Error::Config("audit chain key".into()))
    }

    /// The chain link of `data` after a zero link (tests compare keys through it).
    #[cfg(test)]
    pub(crate) fn mac_for_tests(&self, data: &[u8]) -> [u8; 32] {
        chain(
            Some(self),
            &[0; 32],
            std::str::from_utf8(data).unwrap_or_default(),
        )
    }

    /// A key from bytes (tests).
    #[cfg(test)]
    fn from_bytes(bytes: [u8; 32]) -> Self {
        Self::new(&bytes).unwrap_or_else(|_| unreachable!("32 bytes make an HMAC key"))
    }
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(…)")
    }
}

/// The link of a record: HMAC-SHA-256 under the key, or SHA-256 for the unkeyed records that
/// may open a log.
fn chain(key: Option<&AuditKey>, prev: &[u8; 32], body: &str) -> [u8; 32] {
    use hmac::Mac;
    match key {
        Some(key) => {
            let mut mac = key.0.clone();
            mac.update(prev);
            mac.update(body.as_bytes());
            mac.finalize().into_bytes().into()
        }
        None => {
            let mut h = Sha256::new();
            h.update(prev);
            h.update(body.as_bytes());
            h.finalize().into()
        }
    }
}

/// Records between two checkpoints at most.
pub const CHECKPOINT_EVERY: u64 = 1000;

/// What a walk of the chain found.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    /// Records in the log.
    pub records: u64,
    /// Of them, the unkeyed ones at its start.
    pub unkeyed: u64,
    /// The last record's MAC (or hash, if no record is keyed).
    pub last: [u8; 32],
}

/// Why `verify` stopped.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken {
    /// 1-based line number of the first bad record.
    pub line: u64,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "record {} is broken: {}", self.line, self.reason)
    }
}

/// Walks the whole chain under `key` (without it, a log with keyed records does not verify).
///
/// # Errors
/// [`Broken`] naming the first record that does not verify.
pub fn verify(path: &Path, key: Option<&AuditKey>) -> Result<Verified, Broken> {
    let verified = verify_prefix(path, u64::MAX, key, |_, _| {})?;
    keyed_once_the_lmk_exists(&verified, key)?;
    Ok(verified)
}

/// Under a key (the LMK exists), a log must have a keyed record: init writes one as soon as the
/// LMK is made, so an unkeyed-only log was cut back to its head, or rewritten.
fn keyed_once_the_lmk_exists(v: &Verified, key: Option<&AuditKey>) -> Result<(), Broken> {
    if key.is_some() && v.records > 0 && v.unkeyed == v.records {
        return Err(Broken {
            line: v.records,
            reason: "no keyed record although the LMK exists: cut back to init's records, or \
                     rewritten",
        });
    }
    Ok(())
}

/// [`verify`] of the first `len` bytes: what was complete when the length was taken (writers
/// append whole records under the file lock, and never rewrite). `seen` gets every record's
/// sequence number and link.
fn verify_prefix(
    path: &Path,
    len: u64,
    key: Option<&AuditKey>,
    mut seen: impl FnMut(u64, &[u8; 32]),
) -> Result<Verified, Broken> {
    let file = File::open(path).map_err(|_| Broken {
        line: 0,
        reason: "the log cannot be opened",
    })?;
    let mut prev = [0u8; 32];
    let mut n = 0u64;
    let mut unkeyed = 0u64;
    for line in BufReader::new(std::io::Read::take(file, len)).lines() {
        n += 1;
        let broken = |reason| Broken { line: n, reason };
        let line = line.map_err(|_| broken("not text"))?;
        let (body, rest, keyed) = match line.split_once(",\"mac\":\"") {
            Some((body, rest)) => (body, rest, true),
            None => match line.split_once(",\"hash\":\"") {
                Some((body, rest)) => (body, rest, false),
                None => return Err(broken("no MAC")),
            },
        };
        let link = rest
            .strip_suffix("\"}")
            .ok_or_else(|| broken("malformed"))?;
        let want_prev = format!(",\"prev\":\"{}\"", hex(&prev));
        if !body.ends_with(&want_prev) {
            return Err(broken("does not follow the record before it"));
        }
        if !body.starts_with(&format!("{{\"seq\":{n},")) {
            return Err(broken("out of sequence"));
        }
        let computed = if keyed {
            let key = key.ok_or_else(|| broken("keyed: checking it needs the token's LMK"))?;
            chain(Some(key), &prev, body)
        } else {
            if unkeyed + 1 != n {
                return Err(broken("an unkeyed record after keyed ones"));
            }
            let init_op = [op::INIT, op::DUAL_CONTROL_OFF]
                .iter()
                .any(|code| body.contains(&format!(",\"op\":\"0x{code:04x}\",")));
            if !init_op {
                return Err(broken(
                    "unkeyed, and not one of keyd init's records: rewritten, or written by a keyd \
                     from before the chain was keyed",
                ));
            }
            unkeyed += 1;
            chain(None, &prev, body)
        };
        if hex(&computed) != link {
            return Err(broken("its MAC does not match its contents"));
        }
        seen(n, &computed);
        prev = computed;
    }
    Ok(Verified {
        records: n,
        unkeyed,
        last: prev,
    })
}

/// Checks a log against the checkpoints keyd wrote for it (lines `{"at":…,"seq":N,"mac":"…"}`):
/// every checkpoint must name a record the log has, with the same MAC. A log cut after a
/// checkpoint, or rewritten by someone holding the token, fails here even when its own chain is
/// intact. Returns the number of checkpoints checked and the highest record they cover.
///
/// # Errors
/// A message naming the first checkpoint the log does not match.
pub fn verify_checkpoints(
    path: &Path,
    checkpoints: &Path,
    key: Option<&AuditKey>,
) -> Result<(usize, u64), String> {
    let text = std::fs::read_to_string(checkpoints)
        .map_err(|e| format!("{}: {e}", checkpoints.display()))?;
    let mut wanted = std::collections::BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let field = |name: &str| {
            line.split_once(&format!("\"{name}\":"))
                .map(|(_, rest)| rest.trim_start_matches('"'))
                .and_then(|rest| rest.split(['"', ',', '}']).next())
        };
        let seq = field("seq").and_then(|v| v.parse::<u64>().ok());
        let (Some(seq), Some(mac)) = (seq, field("mac")) else {
            return Err(format!("checkpoint line {} is malformed", i + 1));
        };
        wanted.insert(seq, mac.to_owned());
    }
    let mut found = std::collections::BTreeMap::new();
    let verified = verify_prefix(path, u64::MAX, key, |seq, link| {
        if wanted.contains_key(&seq) {
            found.insert(seq, hex(link));
        }
    })
    .map_err(|b| format!("{}: {b}", path.display()))?;
    for (seq, mac) in &wanted {
        match found.get(seq) {
            None => {
                return Err(format!(
                    "the log ends at record {} but a checkpoint covers record {seq}: its tail was cut",
                    verified.records
                ));
            }
            Some(have) if have != mac => {
                return Err(format!(
                    "record {seq} is not the one checkpointed: the log was rewritten"
                ));
            }
            Some(_) => {}
        }
    }
    Ok((
        wanted.len(),
        wanted.keys().next_back().copied().unwrap_or(0),
    ))
}

/// The sequence number, link and keyedness of the log's last record, read from the end of the
/// file. Used when another process appended since this one last wrote: its records were
/// chained by the same rules under the same lock, so the tail is where the chain continues.
fn tail(file: &File, len: u64) -> Option<(u64, [u8; 32], bool)> {
    use std::os::unix::fs::FileExt;
    if len == 0 {
        return Some((0, [0u8; 32], false));
    }
    let start = len.saturating_sub(4096);
    let mut buf = vec![0u8; usize::try_from(len - start).ok()?];
    file.read_exact_at(&mut buf, start).ok()?;
    let text = std::str::from_utf8(&buf).ok()?.strip_suffix('\n')?;
    let last = text.rsplit('\n').next()?;
    let seq = last
        .strip_prefix("{\"seq\":")?
        .split(',')
        .next()?
        .parse()
        .ok()?;
    let (link_hex, keyed) = match last.split_once(",\"mac\":\"") {
        Some((_, rest)) => (rest, true),
        None => (last.split_once(",\"hash\":\"")?.1, false),
    };
    let link_hex = link_hex.strip_suffix("\"}")?;
    if link_hex.len() != 64 {
        return None;
    }
    let mut link = [0u8; 32];
    for (i, byte) in link.iter_mut().enumerate() {
        *byte = u8::from_str_radix(link_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((seq, link, keyed))
}

impl Audit {
    /// Opens (or creates, 0600) the log, verifying the existing chain first under `key`: keyd
    /// does not append to a log someone has edited. Records are keyed from now on when `key`
    /// is given; `None` (only `keyd init`, before the LMK exists) writes unkeyed records and
    /// cannot continue a keyed log. Checkpoints are appended to `checkpoints` when given.
    ///
    /// Several keyd processes may have the log open at once (`serve` and an officer's
    /// command): every write takes an exclusive advisory lock on the file and continues the
    /// chain from the file's last record, so their records interleave in one chain.
    ///
    /// # Errors
    /// [`Error::Config`] when the chain is broken, [`Error::Io`] when the file cannot be opened.
    pub fn open(
        path: &Path,
        key: Option<AuditKey>,
        checkpoints: Option<&Path>,
    ) -> Result<Self, Error> {
        Self::open_with(path, key, checkpoints, false)
    }

    /// [`Audit::open`] for `keyd init` once it has made the LMK: the log holds only init's
    /// unkeyed records, and the first keyed record ([`op::AUDIT_KEYED`]) is written now.
    ///
    /// # Errors
    /// As [`Audit::open`].
    pub fn open_first_keyed(
        path: &Path,
        key: AuditKey,
        checkpoints: Option<&Path>,
    ) -> Result<Self, Error> {
        let log = Self::open_with(path, Some(key), checkpoints, true)?;
        let keyed = log.state.lock().map(|s| s.keyed).unwrap_or(false);
        if !keyed {
            log.record(&Entry {
                peer: "keyd",
                opcode: op::AUDIT_KEYED,
                subject: None,
                kcv: None,
                status: Status::OK,
                micros: 0,
            });
            log.flush(true)?;
        }
        Ok(log)
    }

    fn open_with(
        path: &Path,
        key: Option<AuditKey>,
        checkpoints: Option<&Path>,
        first_keyed: bool,
    ) -> Result<Self, Error> {
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        // The lock is held only to read a length at a record boundary: the (long) walk of the
        // chain runs without it, so a running `serve` never waits for an officer's command.
        let locked = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::Io(std::io::Error::from(e)))?;
        let len = locked.metadata()?.len();
        let file = locked
            .unlock()
            .map_err(|(_, e)| Error::Io(std::io::Error::from(e)))?;
        let verified = verify_prefix(path, len, key.as_ref(), |_, _| {})
            .and_then(|v| {
                if !first_keyed {
                    keyed_once_the_lmk_exists(&v, key.as_ref())?;
                }
                Ok(v)
            })
            .map_err(|b| Error::Config(format!("audit log {}: {b}", path.display())))?;
        let checkpoints = checkpoints
            .map(|p| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(p)
            })
            .transpose()?;
        let seq = verified.records;
        Ok(Self {
            state: Mutex::new(State {
                file: Some(file),
                taken: String::with_capacity(64 * 1024),
                prev: verified.last,
                seq,
                keyed: verified.unkeyed < seq,
                len,
                checkpoints,
                checkpointed: seq,
            }),
            pending: Mutex::new(String::with_capacity(64 * 1024)),
            key,
            failed: AtomicBool::new(false),
            synced: Mutex::new(seq),
        })
    }

    /// Whether the log has failed (keyd then serves nothing).
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn fail(&self, e: &std::io::Error) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %e, "audit log cannot be written: keyd stops serving");
        }
    }

    /// A lock poisoned by a panic while it was held: what it guarded cannot be trusted, so the
    /// log fails for good (keyd then answers `UNAVAILABLE`) rather than serving unrecorded.
    fn poisoned(&self) -> Error {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!("audit log lock poisoned: keyd stops serving");
        }
        Error::Config("audit log lock poisoned".into())
    }

    /// Appends a record (in memory; [`Audit::flush`] chains and writes it).
    pub fn record(&self, e: &Entry<'_>) {
        let Ok(mut p) = self.pending.lock() else {
            self.failed.store(true, Ordering::Release);
            return;
        };
        // Read under the lock, so records stay in time order.
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let p = &mut *p;
        // Pushed piece by piece: through `write!` the formatting machinery was a tenth of
        // keyd's time under load, and this runs for every request.
        p.push_str("\"at\":");
        p.push_str(itoa::Buffer::new().format(at));
        p.push_str(",\"peer\":\"");
        push_clean(p, e.peer);
        p.push_str("\",\"op\":\"0x");
        push_hex(p, &e.opcode.to_be_bytes(), false);
        p.push('"');
        if let Some(subject) = e.subject {
            p.push_str(",\"subject\":\"");
            push_clean(p, subject);
            p.push('"');
        }
        if let Some(k) = e.kcv {
            p.push_str(",\"kcv\":\"");
            push_hex(p, &k, true);
            p.push('"');
        }
        p.push_str(",\"status\":\"");
        p.push_str(e.status.name());
        p.push_str("\",\"micros\":");
        p.push_str(itoa::Buffer::new().format(e.micros));
        p.push('\n');
    }

    /// Chains the pending records onto the file's last record and writes them, holding the
    /// file's exclusive lock. Returns the sequence number of the last record written.
    fn write_pending(&self, s: &mut State) -> Result<u64, Error> {
        {
            let Ok(mut pending) = self.pending.lock() else {
                return Err(self.poisoned());
            };
            // Taken under the chain's lock, so batches are written in the order they were
            // taken; records made from here on wait for the next flush. Records a failed
            // write left behind stay first.
            if s.taken.is_empty() {
                std::mem::swap(&mut *pending, &mut s.taken);
            } else {
                s.taken.push_str(&pending);
                pending.clear();
            }
        }
        if s.taken.is_empty() {
            return Ok(s.seq);
        }
        let Some(file) = s.file.take() else {
            return Err(Error::Config("audit log file lost".into()));
        };
        let mut locked = match Flock::lock(file, FlockArg::LockExclusive) {
            Ok(l) => l,
            Err((file, errno)) => {
                s.file = Some(file);
                let e = std::io::Error::from(errno);
                self.fail(&e);
                return Err(Error::Io(e));
            }
        };
        let written = (|| -> Result<(), std::io::Error> {
            let len = locked.metadata()?.len();
            if len != s.len {
                let (seq, prev, keyed) = tail(&locked, len)
                    .ok_or_else(|| std::io::Error::other("the log's last record cannot be read"))?;
                s.seq = seq;
                s.prev = prev;
                s.keyed = keyed;
            }
            if s.keyed && self.key.is_none() {
                return Err(std::io::Error::other(
                    "the log is keyed and this process has no key to continue it",
                ));
            }
            let field = if self.key.is_some() {
                ",\"mac\":\""
            } else {
                ",\"hash\":\""
            };
            let mut out = String::with_capacity(s.taken.len() * 2);
            // Each record's link, in hex, is the next one's `prev`: encoded once.
            let mut prev_hex = String::with_capacity(64);
            push_hex(&mut prev_hex, &s.prev, false);
            for middle in s.taken.lines() {
                s.seq += 1;
                let start = out.len();
                out.push_str("{\"seq\":");
                out.push_str(itoa::Buffer::new().format(s.seq));
                out.push(',');
                out.push_str(middle);
                out.push_str(",\"prev\":\"");
                out.push_str(&prev_hex);
                out.push('"');
                let link = chain(
                    self.key.as_ref(),
                    &s.prev,
                    out.get(start..).unwrap_or_default(),
                );
                s.prev = link;
                prev_hex.clear();
                push_hex(&mut prev_hex, &link, false);
                out.push_str(field);
                out.push_str(&prev_hex);
                out.push_str("\"}\n");
            }
            s.keyed |= self.key.is_some();
            locked.write_all(out.as_bytes())?;
            s.len = len + out.len() as u64;
            if s.seq - s.checkpointed >= CHECKPOINT_EVERY {
                checkpoint(s)?;
            }
            Ok(())
        })();
        s.taken.clear();
        match locked.unlock() {
            Ok(file) => s.file = Some(file),
            Err((locked, errno)) => {
                // Dropping the lock guard releases the lock; the log is unusable from here.
                drop(locked);
                let e = std::io::Error::from(errno);
                self.fail(&e);
                return Err(Error::Io(e));
            }
        }
        written.map_err(|e| {
            self.fail(&e);
            Error::Io(e)
        })?;
        Ok(s.seq)
    }

    /// Writes the records appended so far to the file, and when `sync` waits until they are
    /// on disk. Syncs run outside the append lock and are shared: while one `fdatasync` runs,
    /// later callers wait and usually find their records covered by it.
    ///
    /// # Errors
    /// [`Error::Io`]; the log is then failed for good.
    pub fn flush(&self, sync: bool) -> Result<(), Error> {
        let poisoned = || self.poisoned();
        let (written, file) = {
            let mut s = self.state.lock().map_err(|_| poisoned())?;
            if self.failed() {
                return Err(Error::Config("audit log failed".into()));
            }
            let written = self.write_pending(&mut s)?;
            if !sync {
                return Ok(());
            }
            let clone = s
                .file
                .as_ref()
                .map(File::try_clone)
                .transpose()
                .map_err(|e| {
                    self.fail(&e);
                    Error::Io(e)
                })?
                .ok_or_else(|| Error::Config("audit log file lost".into()))?;
            (written, clone)
        };
        let mut synced = self.synced.lock().map_err(|_| poisoned())?;
        if *synced >= written {
            return Ok(());
        }
        // Everything appended up to now is written and covered by this sync, not only our
        // records: the callers queued behind us find theirs done.
        let target = {
            let mut s = self.state.lock().map_err(|_| poisoned())?;
            self.write_pending(&mut s)?
        };
        file.sync_data().map_err(|e| {
            self.fail(&e);
            Error::Io(e)
        })?;
        *synced = target;
        // What is on disk now is checked in outside it.
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        if s.checkpointed < s.seq {
            checkpoint(&mut s).map_err(|e| {
                self.fail(&e);
                Error::Io(e)
            })?;
        }
        Ok(())
    }
}

/// Appends a checkpoint of the last record written (its number and link) to the checkpoint
/// file, if there is one.
fn checkpoint(s: &mut State) -> Result<(), std::io::Error> {
    if let Some(file) = s.checkpoints.as_mut() {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        writeln!(
            file,
            "{{\"at\":{at},\"seq\":{},\"mac\":\"{}\"}}",
            s.seq,
            hex(&s.prev)
        )?;
    }
    s.checkpointed = s.seq;
    Ok(())
}

/// Appends `s` as an id or peer: short tokens; anything else is replaced so a line stays one
/// JSON line. Written straight into the record (this runs for every request).
fn push_clean(out: &mut String, s: &str) {
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@' | b'+');
    // Ids and peers are nearly always clean already: then one scan of bytes and one copy.
    if s.len() <= 128 && s.bytes().all(allowed) {
        out.push_str(s);
        return;
    }
    out.extend(s.chars().take(128).map(|c| match u8::try_from(c) {
        Ok(b) if allowed(b) => c,
        _ => '?',
    }));
}

/// Appends `bytes` in hex, lower or upper case, without an allocation: a record has two links
/// and often a check value.
fn push_hex(out: &mut String, bytes: &[u8], upper: bool) {
    let digits: &[u8; 16] = if upper {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    let mut text = [0u8; 64];
    for chunk in bytes.chunks(32) {
        for (pair, &b) in text.chunks_exact_mut(2).zip(chunk) {
            let hi = digits.get(usize::from(b >> 4)).copied().unwrap_or(b'0');
            let lo = digits.get(usize::from(b & 0x0f)).copied().unwrap_or(b'0');
            pair.copy_from_slice(&[hi, lo]);
        }
        let used = text.get(..chunk.len() * 2).unwrap_or_default();
        // Hex digits are ASCII.
        out.push_str(std::str::from_utf8(used).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(subject: &str) -> Entry<'_> {
        Entry {
            peer: "uid:1000",
            opcode: 0x0205,
            subject: Some(subject),
            kcv: Some([0xAB, 0xCD, 0xEF]),
            status: Status::OK,
            micros: 12,
        }
    }

    fn key() -> AuditKey {
        AuditKey::from_bytes([0x5A; 32])
    }

    fn open(path: &Path) -> Audit {
        Audit::open(path, Some(key()), None).unwrap()
    }

    fn records(path: &Path) -> u64 {
        verify(path, Some(&key())).unwrap().records
    }

    /// Writes `entries` to a fresh log (keyed or not) and checks each line's text: `{"seq":N,
    /// "at":<ms>`, then `fields`, then the links, each line ending in a newline.
    fn check_written(keyed: bool, entries: &[Entry<'_>], fields: &[String]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = Audit::open(&path, keyed.then(key), None).unwrap();
        for e in entries {
            log.record(e);
        }
        log.flush(false).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with('\n'), "a log ends with a whole line");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), fields.len());
        let field = if keyed { ",\"mac\":\"" } else { ",\"hash\":\"" };
        let mut prev = [0u8; 32];
        for (n, (line, want)) in lines.iter().zip(fields).enumerate() {
            // The link covers the line up to `,"mac"` (or `,"hash"`), after the previous link.
            let (body, link) = line.rsplit_once(field).unwrap();
            let rest = body
                .strip_prefix(&format!("{{\"seq\":{},\"at\":", n + 1))
                .unwrap();
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            assert!(digits >= 13, "milliseconds since the epoch: {line}");
            assert_eq!(
                rest.get(digits..).unwrap(),
                format!("{want},\"prev\":\"{}\"", hex(&prev)),
            );
            let computed = chain(keyed.then(key).as_ref(), &prev, body);
            assert_eq!(link, format!("{}\"}}", hex(&computed)));
            prev = computed;
        }
    }

    #[test]
    fn a_record_is_written_field_by_field_as_documented() {
        let long = "A".repeat(129);
        let accents = "\u{e9}".repeat(64);
        let entries = [
            Entry {
                peer: "uid:1000",
                opcode: 0x020b,
                subject: Some("POS-0001"),
                kcv: Some([0x0A, 0xBC, 0xEF]),
                status: Status::AUTH_FAILED,
                micros: u64::MAX,
            },
            // Anything but a short clean token: one `?` per character, at most 128 of them.
            Entry {
                peer: "uid 0\n\"x\"",
                opcode: 0x0300,
                subject: Some("\u{fc}n\u{ef}\u{20ac}\u{1f600}"),
                kcv: None,
                status: Status::OK,
                micros: 0,
            },
            Entry {
                peer: &long,
                opcode: 0x0001,
                subject: Some(&accents),
                kcv: Some([0, 0, 0]),
                status: Status::UNAVAILABLE,
                micros: 7,
            },
        ];
        let fields = [
            ",\"peer\":\"uid:1000\",\"op\":\"0x020b\",\"subject\":\"POS-0001\",\"kcv\":\"0ABCEF\",\
             \"status\":\"authentication failed\",\"micros\":18446744073709551615"
                .to_owned(),
            ",\"peer\":\"uid?0??x?\",\"op\":\"0x0300\",\"subject\":\"?n???\",\"status\":\"ok\",\
             \"micros\":0"
                .to_owned(),
            format!(
                ",\"peer\":\"{}\",\"op\":\"0x0001\",\"subject\":\"{}\",\"kcv\":\"000000\",\
                 \"status\":\"{}\",\"micros\":7",
                "A".repeat(128),
                "?".repeat(64),
                Status::UNAVAILABLE.name(),
            ),
        ];
        check_written(true, &entries, &fields);
        check_written(false, &entries, &fields);
    }

    #[test]
    fn two_processes_appending_share_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // Two handles stand for `keyd serve` and an officer's command running beside it.
        let serve = open(&path);
        let officer = open(&path);
        for round in 0..4 {
            serve.record(&entry(&format!("serve-{round}")));
            serve.record(&entry(&format!("serve-{round}b")));
            serve.flush(round % 2 == 0).unwrap();
            officer.record(&entry(&format!("officer-{round}")));
            officer.flush(true).unwrap();
        }
        assert_eq!(records(&path), 12);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.find("officer-0").unwrap() < text.find("serve-1").unwrap());
        // A third opener continues it too.
        drop(serve);
        let later = open(&path);
        later.record(&entry("later"));
        later.flush(true).unwrap();
        assert_eq!(records(&path), 13);
    }

    #[test]
    fn the_chain_catches_edits_removals_and_reorders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = open(&path);
        for i in 0..5 {
            log.record(&entry(&format!("mac-{i}")));
        }
        log.flush(true).unwrap();
        drop(log);
        assert_eq!(records(&path), 5);
        // Reopening continues the chain.
        let log = open(&path);
        log.record(&entry("mac-5\"},{\"evil\":1"));
        log.flush(false).unwrap();
        drop(log);
        assert_eq!(records(&path), 6);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("evil\":1"), "subjects cannot inject JSON");
        let lines: Vec<&str> = text.lines().collect();
        let write = |lines: &[String]| std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let owned: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        // An edited field.
        let mut edited = owned.clone();
        edited[2] = edited[2].replace("\"micros\":12", "\"micros\":13");
        write(&edited);
        assert_eq!(verify(&path, Some(&key())).unwrap_err().line, 3);
        assert!(
            Audit::open(&path, Some(key()), None).is_err(),
            "keyd does not append to an edited log"
        );
        // A removed record.
        let mut removed = owned.clone();
        removed.remove(3);
        write(&removed);
        assert_eq!(verify(&path, Some(&key())).unwrap_err().line, 4);
        // Two records swapped.
        let mut swapped = owned.clone();
        swapped.swap(1, 2);
        write(&swapped);
        assert_eq!(verify(&path, Some(&key())).unwrap_err().line, 2);
        // The original verifies again.
        write(&owned);
        assert_eq!(records(&path), 6);
    }

    /// Rewrites a log as someone who can edit the file but not use the token would: change a
    /// record, then recompute every later link with what they have (SHA-256, or HMAC under a
    /// key they guess).
    fn forge(path: &Path, at: usize, forged_key: Option<&AuditKey>) {
        let text = std::fs::read_to_string(path).unwrap();
        let mut prev = [0u8; 32];
        let mut out = String::new();
        for (i, line) in text.lines().enumerate() {
            let (body, _) = line
                .split_once(",\"mac\":\"")
                .or_else(|| line.split_once(",\"hash\":\""))
                .unwrap();
            let body = body.split_once(",\"prev\":\"").unwrap().0;
            let body = if i == at {
                body.replace("\"micros\":12", "\"micros\":1")
            } else {
                body.to_owned()
            };
            let body = format!("{body},\"prev\":\"{}\"", hex(&prev));
            let link = chain(forged_key, &prev, &body);
            let field = if forged_key.is_some() { "mac" } else { "hash" };
            out.push_str(&format!("{body},\"{field}\":\"{}\"}}\n", hex(&link)));
            prev = link;
        }
        std::fs::write(path, out).unwrap();
    }

    #[test]
    fn an_edit_with_every_link_recomputed_is_still_caught_without_the_key() {
        for forged_key in [None, Some(AuditKey::from_bytes([0x11; 32]))] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.log");
            let log = open(&path);
            for i in 0..4 {
                log.record(&entry(&format!("k-{i}")));
            }
            log.flush(true).unwrap();
            drop(log);
            forge(&path, 1, forged_key.as_ref());
            // An unkeyed SHA-256 chain would now verify; the keyed one does not.
            assert!(
                verify(&path, Some(&key())).is_err(),
                "forged with {forged_key:?}"
            );
        }
    }

    #[test]
    fn unkeyed_records_may_only_open_the_log_and_are_covered_by_the_first_keyed_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // `keyd init`, before the LMK: unkeyed.
        let init = Audit::open(&path, None, None).unwrap();
        let init_entry = |opcode| Entry {
            opcode,
            subject: None,
            ..entry("")
        };
        init.record(&init_entry(op::DUAL_CONTROL_OFF));
        init.record(&init_entry(op::INIT));
        init.flush(true).unwrap();
        drop(init);
        // Until init's keyed record, a keyed process does not take the log: it could be a
        // log cut back to its head.
        assert!(Audit::open(&path, Some(key()), None).is_err());
        assert!(verify(&path, Some(&key())).is_err());
        let first = Audit::open_first_keyed(&path, key(), None).unwrap();
        drop(first);
        let log = open(&path);
        log.record(&entry("serve"));
        log.flush(true).unwrap();
        drop(log);
        let v = verify(&path, Some(&key())).unwrap();
        assert_eq!((v.records, v.unkeyed), (4, 2));
        // Without the key, the keyed part cannot be checked, and cannot be continued.
        assert!(verify(&path, None).is_err());
        assert!(Audit::open(&path, None, None).is_err());
        // An edit of the unkeyed head, its links recomputed, breaks the first keyed record.
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let head = lines[..2].join("\n") + "\n";
        std::fs::write(&path, &head).unwrap();
        forge(&path, 0, None);
        let forged = std::fs::read_to_string(&path).unwrap() + &lines[2..].join("\n") + "\n";
        std::fs::write(&path, forged).unwrap();
        assert_eq!(verify(&path, Some(&key())).unwrap_err().line, 3);
        // A log cut back to init's records.
        std::fs::write(&path, &head).unwrap();
        assert!(verify(&path, Some(&key())).is_err());
        // An unkeyed record after keyed ones is refused.
        std::fs::write(&path, text.clone()).unwrap();
        let mut tail = String::new();
        let prev = verify(&path, Some(&key())).unwrap().last;
        let body = format!(
            "{{\"seq\":5,\"at\":1,\"peer\":\"x\",\"op\":\"0x0300\",\"status\":\"ok\",\"micros\":1,\"prev\":\"{}\"",
            hex(&prev)
        );
        tail.push_str(&format!(
            "{body},\"hash\":\"{}\"}}\n",
            hex(&chain(None, &prev, &body))
        ));
        std::fs::write(&path, text + &tail).unwrap();
        assert_eq!(verify(&path, Some(&key())).unwrap_err().line, 5);
    }

    #[test]
    fn checkpoints_find_a_cut_tail_and_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let marks = dir.path().join("elsewhere.checkpoints");
        let log = Audit::open(&path, Some(key()), Some(&marks)).unwrap();
        for i in 0..3 {
            log.record(&entry(&format!("c-{i}")));
        }
        log.flush(true).unwrap();
        for i in 0..(CHECKPOINT_EVERY + 5) {
            log.record(&entry(&format!("bulk-{i}")));
        }
        log.flush(false).unwrap();
        log.record(&entry("last"));
        log.flush(true).unwrap();
        drop(log);
        let total = 3 + CHECKPOINT_EVERY + 5 + 1;
        assert_eq!(
            verify_checkpoints(&path, &marks, Some(&key())).unwrap(),
            (3, total)
        );
        // The tail cut after the last checkpoint: the chain alone still verifies.
        let text = std::fs::read_to_string(&path).unwrap();
        let cut: String = text.lines().take(10).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, &cut).unwrap();
        assert_eq!(records(&path), 10);
        let e = verify_checkpoints(&path, &marks, Some(&key())).unwrap_err();
        assert!(e.contains("tail was cut"), "{e}");
        // A different log of the same length (rewritten with the key) does not match either.
        std::fs::write(&path, "").unwrap();
        let other = open(&path);
        for i in 0..total {
            other.record(&entry(&format!("other-{i}")));
        }
        other.flush(true).unwrap();
        drop(other);
        let e = verify_checkpoints(&path, &marks, Some(&key())).unwrap_err();
        assert!(e.contains("rewritten"), "{e}");
    }
}
