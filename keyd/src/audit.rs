//! The audit log: one line per operation, each line chained to the one before by SHA-256, so
//! that editing, removing or reordering a record breaks the chain at that record.
//!
//! A line is `{"seq":…,"at":…,"peer":…,"op":"0x0205","subject":…,"kcv":…,"status":…,"micros":…,
//! "prev":"<hex>","hash":"<hex>"}`, where `hash` is SHA-256 of the previous record's hash and
//! the line's text up to (not including) `,"hash"`. Only ids, check values, statuses and
//! timings are written: never key bytes, PANs, secrets or plaintext.
//!
//! Records are appended in memory under a lock and written to the file before the answers they
//! describe leave keyd (the socket writer flushes the log first); control operations are also
//! synced to disk before their answer. If the log cannot be written keyd stops serving: every
//! later request is answered `UNAVAILABLE` without being executed.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use keyd_proto::Status;
use sha2::{Digest, Sha256};

use crate::Error;

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
    file: File,
    pending: Vec<u8>,
    prev: [u8; 32],
    seq: u64,
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
    let file = File::open(path).map_err(|_| Broken {
        line: 0,
        reason: "the log cannot be opened",
    })?;
    let mut prev = [0u8; 32];
    let mut n = 0u64;
    for line in BufReader::new(file).lines() {
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

impl Audit {
    /// Opens (or creates, 0600) the log, verifying the existing chain first: keyd does not
    /// append to a log someone has edited.
    ///
    /// # Errors
    /// [`Error::Config`] when the chain is broken, [`Error::Io`] when the file cannot be opened.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let (seq, prev) = if path.exists() {
            verify(path).map_err(|b| Error::Config(format!("audit log {}: {b}", path.display())))?
        } else {
            (0, [0u8; 32])
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        Ok(Self {
            state: Mutex::new(State {
                file,
                pending: Vec::with_capacity(64 * 1024),
                prev,
                seq,
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

    /// Appends a record (in memory; [`Audit::flush`] writes it).
    pub fn record(&self, e: &Entry<'_>) {
        let Ok(mut s) = self.state.lock() else {
            self.failed.store(true, Ordering::Release);
            return;
        };
        s.seq += 1;
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut body = format!(
            "{{\"seq\":{},\"at\":{at},\"peer\":\"{}\",\"op\":\"0x{:04x}\"",
            s.seq,
            clean(e.peer),
            e.opcode
        );
        if let Some(subject) = e.subject {
            let _ = write!(body, ",\"subject\":\"{}\"", clean(subject));
        }
        if let Some(k) = e.kcv {
            let _ = write!(body, ",\"kcv\":\"{}\"", hex(&k).to_uppercase());
        }
        let _ = write!(
            body,
            ",\"status\":\"{}\",\"micros\":{},\"prev\":\"{}\"",
            e.status,
            e.micros,
            hex(&s.prev)
        );
        let hash = chain(&s.prev, &body);
        s.prev = hash;
        s.pending.extend_from_slice(body.as_bytes());
        s.pending.extend_from_slice(b",\"hash\":\"");
        s.pending.extend_from_slice(hex(&hash).as_bytes());
        s.pending.extend_from_slice(b"\"}\n");
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
            let State {
                file, pending, seq, ..
            } = &mut *s;
            if !pending.is_empty() {
                if let Err(e) = file.write_all(pending) {
                    self.fail(&e);
                    return Err(Error::Io(e));
                }
                pending.clear();
            }
            if !sync {
                return Ok(());
            }
            let clone = file.try_clone().map_err(|e| {
                self.fail(&e);
                Error::Io(e)
            })?;
            (*seq, clone)
        };
        let mut synced = self.synced.lock().map_err(|_| poisoned())?;
        if *synced >= written {
            return Ok(());
        }
        // Everything appended up to now is written and covered by this sync, not only our
        // records: the callers queued behind us find theirs done.
        let target = {
            let mut s = self.state.lock().map_err(|_| poisoned())?;
            let State {
                file, pending, seq, ..
            } = &mut *s;
            if !pending.is_empty() {
                if let Err(e) = file.write_all(pending) {
                    self.fail(&e);
                    return Err(Error::Io(e));
                }
                pending.clear();
            }
            *seq
        };
        file.sync_data().map_err(|e| {
            self.fail(&e);
            Error::Io(e)
        })?;
        *synced = target;
        Ok(())
    }
}

/// Ids and peers are short tokens; anything else is replaced so a line stays one JSON line.
fn clean(s: &str) -> String {
    s.chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.:@".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
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
