//! The audit log: one line per operation, each line chained to the one before by SHA-256, so
//! that editing, removing or reordering a record breaks the chain at that record.
//!
//! A line is `{"seq":…,"at":…,"peer":…,"op":"0x0205","subject":…,"kcv":…,"status":…,"micros":…,
//! "prev":"<hex>","hash":"<hex>"}`, where `hash` is SHA-256 of the previous record's hash and
//! the line's text up to (not including) `,"hash"`. Only ids, check values, statuses and
//! timings are written: never key bytes, PANs, secrets or plaintext.
//!
//! Records are appended in memory under a lock, then chained and written to the file under an
//! exclusive advisory lock on it before the answers they describe leave keyd (the socket writer
//! flushes the log first); control operations are also synced to disk before their answer. If
//! the log cannot be written keyd stops serving: every later request is answered `UNAVAILABLE`
//! without being executed.

use std::fmt::Write as _;
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
    /// The device, key or zone the operation named, if any.
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
    /// Records not yet written, without their sequence number and chain fields (those are
    /// given when they are written, under the file lock): one record per line.
    pending: String,
    prev: [u8; 32],
    seq: u64,
    /// The file's length after this process last wrote it: a different length at the next
    /// write means another keyd process (an operator command beside `serve`) appended.
    len: u64,
}

/// The open log.
pub struct Audit {
    state: Mutex<State>,
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

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn chain(prev: &[u8; 32], body: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(body.as_bytes());
    h.finalize().into()
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

/// Walks the whole chain. `Ok` gives the number of records and the last hash.
///
/// # Errors
/// [`Broken`] naming the first record that does not verify.
pub fn verify(path: &Path) -> Result<(u64, [u8; 32]), Broken> {
    verify_prefix(path, u64::MAX)
}

/// [`verify`] of the first `len` bytes: what was complete when the length was taken (writers
/// append whole records under the file lock, and never rewrite).
fn verify_prefix(path: &Path, len: u64) -> Result<(u64, [u8; 32]), Broken> {
    let file = File::open(path).map_err(|_| Broken {
        line: 0,
        reason: "the log cannot be opened",
    })?;
    let mut prev = [0u8; 32];
    let mut n = 0u64;
    for line in BufReader::new(std::io::Read::take(file, len)).lines() {
        n += 1;
        let broken = |reason| Broken { line: n, reason };
        let line = line.map_err(|_| broken("not text"))?;
        let (body, rest) = line
            .split_once(",\"hash\":\"")
            .ok_or_else(|| broken("no hash"))?;
        let hash = rest
            .strip_suffix("\"}")
            .ok_or_else(|| broken("malformed"))?;
        let want_prev = format!(",\"prev\":\"{}\"", hex(&prev));
        if !body.ends_with(&want_prev) {
            return Err(broken("does not follow the record before it"));
        }
        if !body.starts_with(&format!("{{\"seq\":{n},")) {
            return Err(broken("out of sequence"));
        }
        let computed = chain(&prev, body);
        if hex(&computed) != hash {
            return Err(broken("its hash does not match its contents"));
        }
        prev = computed;
    }
    Ok((n, prev))
}

/// The sequence number and hash of the log's last record, read from the end of the file.
/// Used when another process appended since this one last wrote: its records were chained by
/// the same rules under the same lock, so the tail is where the chain continues.
fn tail(file: &File, len: u64) -> Option<(u64, [u8; 32])> {
    use std::os::unix::fs::FileExt;
    if len == 0 {
        return Some((0, [0u8; 32]));
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
    let hash_hex = last.split_once(",\"hash\":\"")?.1.strip_suffix("\"}")?;
    if hash_hex.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hash_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((seq, hash))
}

impl Audit {
    /// Opens (or creates, 0600) the log, verifying the existing chain first: keyd does not
    /// append to a log someone has edited.
    ///
    /// Several keyd processes may have the log open at once (`serve` and an officer's
    /// command): every write takes an exclusive advisory lock on the file and continues the
    /// chain from the file's last record, so their records interleave in one chain.
    ///
    /// # Errors
    /// [`Error::Config`] when the chain is broken, [`Error::Io`] when the file cannot be opened.
    pub fn open(path: &Path) -> Result<Self, Error> {
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
        let (seq, prev) = verify_prefix(path, len)
            .map_err(|b| Error::Config(format!("audit log {}: {b}", path.display())))?;
        Ok(Self {
            state: Mutex::new(State {
                file: Some(file),
                pending: String::with_capacity(64 * 1024),
                prev,
                seq,
                len,
            }),
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

    /// Appends a record (in memory; [`Audit::flush`] chains and writes it).
    pub fn record(&self, e: &Entry<'_>) {
        let Ok(mut s) = self.state.lock() else {
            self.failed.store(true, Ordering::Release);
            return;
        };
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let p = &mut s.pending;
        let _ = write!(p, "\"at\":{at},\"peer\":\"");
        push_clean(p, e.peer);
        let _ = write!(p, "\",\"op\":\"0x{:04x}\"", e.opcode);
        if let Some(subject) = e.subject {
            p.push_str(",\"subject\":\"");
            push_clean(p, subject);
            p.push('"');
        }
        if let Some(k) = e.kcv {
            let _ = write!(p, ",\"kcv\":\"{}\"", crate::kcv_hex(k));
        }
        let _ = writeln!(p, ",\"status\":\"{}\",\"micros\":{}", e.status, e.micros);
    }

    /// Chains the pending records onto the file's last record and writes them, holding the
    /// file's exclusive lock. Returns the sequence number of the last record written.
    fn write_pending(&self, s: &mut State) -> Result<u64, Error> {
        if s.pending.is_empty() {
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
                let (seq, prev) = tail(&locked, len)
                    .ok_or_else(|| std::io::Error::other("the log's last record cannot be read"))?;
                s.seq = seq;
                s.prev = prev;
            }
            let mut out = String::with_capacity(s.pending.len() * 2);
            // Each record's hash, in hex, is the next one's `prev`: encoded once.
            let mut prev_hex = hex(&s.prev);
            for middle in s.pending.lines() {
                s.seq += 1;
                let start = out.len();
                let _ = write!(out, "{{\"seq\":{},{middle},\"prev\":\"{prev_hex}\"", s.seq);
                let hash = chain(&s.prev, out.get(start..).unwrap_or_default());
                s.prev = hash;
                prev_hex = hex(&hash);
                let _ = writeln!(out, ",\"hash\":\"{prev_hex}\"}}");
            }
            locked.write_all(out.as_bytes())?;
            s.len = len + out.len() as u64;
            Ok(())
        })();
        s.pending.clear();
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
        let poisoned = || Error::Config("audit log lock poisoned".into());
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
        Ok(())
    }
}

/// Appends `s` as an id or peer: short tokens; anything else is replaced so a line stays one
/// JSON line. Written straight into the record (this runs for every request).
fn push_clean(out: &mut String, s: &str) {
    out.extend(s.chars().take(128).map(|c| {
        if c.is_ascii_alphanumeric() || "-_.:@+".contains(c) {
            c
        } else {
            '?'
        }
    }));
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

    #[test]
    fn two_processes_appending_share_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        // Two handles stand for `keyd serve` and an officer's command running beside it.
        let serve = Audit::open(&path).unwrap();
        let officer = Audit::open(&path).unwrap();
        for round in 0..4 {
            serve.record(&entry(&format!("serve-{round}")));
            serve.record(&entry(&format!("serve-{round}b")));
            serve.flush(round % 2 == 0).unwrap();
            officer.record(&entry(&format!("officer-{round}")));
            officer.flush(true).unwrap();
        }
        let (records, _) = verify(&path).unwrap();
        assert_eq!(records, 12);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.find("officer-0").unwrap() < text.find("serve-1").unwrap());
        // A third opener continues it too.
        drop(serve);
        let later = Audit::open(&path).unwrap();
        later.record(&entry("later"));
        later.flush(true).unwrap();
        assert_eq!(verify(&path).unwrap().0, 13);
    }

    #[test]
    fn the_chain_catches_edits_removals_and_reorders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = Audit::open(&path).unwrap();
        for i in 0..5 {
            log.record(&entry(&format!("mac-{i}")));
        }
        log.flush(true).unwrap();
        drop(log);
        assert_eq!(verify(&path).unwrap().0, 5);
        // Reopening continues the chain.
        let log = Audit::open(&path).unwrap();
        log.record(&entry("mac-5\"},{\"evil\":1"));
        log.flush(false).unwrap();
        drop(log);
        assert_eq!(verify(&path).unwrap().0, 6);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("evil\":1"), "subjects cannot inject JSON");
        let lines: Vec<&str> = text.lines().collect();
        let write = |lines: &[String]| std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let owned: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
        // An edited field.
        let mut edited = owned.clone();
        edited[2] = edited[2].replace("\"micros\":12", "\"micros\":13");
        write(&edited);
        assert_eq!(verify(&path).unwrap_err().line, 3);
        assert!(
            Audit::open(&path).is_err(),
            "keyd does not append to an edited log"
        );
        // A removed record.
        let mut removed = owned.clone();
        removed.remove(3);
        write(&removed);
        assert_eq!(verify(&path).unwrap_err().line, 4);
        // Two records swapped.
        let mut swapped = owned.clone();
        swapped.swap(1, 2);
        write(&swapped);
        assert_eq!(verify(&path).unwrap_err().line, 2);
        // The original verifies again.
        write(&owned);
        assert_eq!(verify(&path).unwrap().0, 6);
    }
}
