//! The Unix socket: peers identified by `SO_PEERCRED`, many requests in flight per connection.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use keyd_proto::frame::{self, Kind, MAX_BODY};
use keyd_proto::outbox::Outbox;
use keyd_proto::{Status, buffer};
use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use zeroize::Zeroizing;

use crate::audit::{Audit, Entry};
use crate::config::{Config, Placement};
use crate::{Error, Service, dispatch};

/// Binds the socket: the directory is created 0750 if missing, a stale socket file is replaced,
/// and the socket is made 0660 before anyone is told it exists.
///
/// # Errors
/// [`Error::Io`], or [`Error::Config`] if the path holds something other than a socket.
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(Error::Config(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Accepts connections until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    service: Arc<Service>,
    config: Arc<Config>,
    audit: Arc<Audit>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // With working keys in the token every data operation is a PKCS#11 call, which blocks:
    // a few dedicated threads make them all, and the I/O threads only move bytes.
    let hsm_worker = (service.placement() == Placement::Token).then(|| {
        Arc::new(HsmWorkers::spawn(
            &service,
            &audit,
            config.hsm.token_threads,
        ))
    });
    let keeper = tokio::spawn(housekeeping(
        Arc::clone(&service),
        Arc::clone(&audit),
        std::time::Duration::from_millis(config.state_poll_ms),
    ));
    let places = Arc::new(tokio::sync::Semaphore::new(
        netlimits::fit_to_fd_limit(config.max_connections, RESERVED_FDS).max(1),
    ));
    let mut backoff = netlimits::AcceptBackoff::default();
    loop {
        // A place first, then accept: beyond the cap, connections wait in the listen queue
        // instead of taking descriptors.
        let place = tokio::select! {
            () = &mut shutdown => break,
            place = Arc::clone(&places).acquire_owned() => match place {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    let pause = backoff.failed(&e, std::time::Instant::now());
                    drop(place);
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause) => continue,
                    }
                }
            },
        };
        backoff.succeeded();
        let work = connection(
            stream,
            Arc::clone(&service),
            Arc::clone(&config),
            Arc::clone(&audit),
            hsm_worker.clone(),
        );
        tokio::spawn(async move {
            work.await;
            drop(place);
        });
    }
    keeper.abort();
}

/// Runs [`Service::housekeeping`] every `every` (`state_poll_ms`, a second by default): key
/// states, revocations and rotations changed by other processes or other keyd nodes on a shared
/// store reach the working-key cache, and keys whose restore window ended are erased, each
/// erasure on the audit log (of the one node that erased it).
async fn housekeeping(service: Arc<Service>, audit: Arc<Audit>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let started = std::time::Instant::now();
        let s = Arc::clone(&service);
        // One blocking task per tick for both parts (keys, then LMKs).
        let (keys, lmks) =
            match tokio::task::spawn_blocking(move || (s.housekeeping(), s.lmk_housekeeping()))
                .await
            {
                Ok(both) => both,
                Err(e) => {
                    tracing::warn!(error = %e, "housekeeping task failed");
                    continue;
                }
            };
        match keys {
            Ok(erased) if !erased.is_empty() => {
                for key_id in &erased {
                    tracing::info!(key_id = %key_id, "restore window ended: key erased");
                    audit.record(&Entry {
                        peer: "keyd",
                        opcode: crate::audit::op::KEY_ERASED,
                        subject: Some(key_id),
                        kcv: None,
                        status: Status::OK,
                        micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    });
                }
                if let Err(e) = audit.flush(true) {
                    tracing::error!(error = %e, "audit log failed while recording erasures");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
        }
        match lmks {
            Ok(Some(kcv)) => {
                tracing::info!(lmk_kcv = %crate::kcv_hex(kcv), "LMK restore window ended: LMK destroyed");
                audit.record(&Entry {
                    peer: "keyd",
                    opcode: crate::audit::op::LMK_DESTROY,
                    subject: Some("lmk"),
                    kcv: Some(kcv),
                    status: Status::OK,
                    micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                });
                if let Err(e) = audit.flush(true) {
                    tracing::error!(error = %e, "audit log failed while recording an LMK's destruction");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "LMK housekeeping failed"),
        }
    }
}

/// Descriptors kept for everything that is not a peer's connection: the store, the audit log,
/// the token's files and sockets, the listener.
const RESERVED_FDS: u64 = 64;

/// Most answer bytes queued before the reader waits for the writer.
const OUTBOX_LIMIT: usize = 8 << 20;

/// A data request for the HSM thread: everything it needs to answer into the right outbox.
struct HsmJob {
    opcode: keyd_proto::Opcode,
    id: u64,
    groups: u32,
    body: Zeroizing<Vec<u8>>,
    outbox: Arc<Outbox>,
    peer: Arc<str>,
    started: std::time::Instant,
}

/// The threads that make PKCS#11 data calls, each with its own queue. The queues are tokio's,
/// so a full queue makes the socket reader wait asynchronously instead of blocking an I/O
/// thread; each worker, a plain thread, receives with `blocking_recv`. Jobs are dealt round
/// the workers one by one, so with more than one worker a connection's requests may also run
/// out of order: answers carry their request id, and data operations do not depend on each
/// other.
struct HsmWorkers {
    queues: Vec<tokio::sync::mpsc::Sender<HsmJob>>,
    next: std::sync::atomic::AtomicUsize,
}

impl HsmWorkers {
    fn spawn(service: &Arc<Service>, audit: &Arc<Audit>, threads: usize) -> Self {
        let mut queues = Vec::with_capacity(threads);
        for n in 0..threads.max(1) {
            let (tx, rx) = tokio::sync::mpsc::channel::<HsmJob>(8192);
            let (service, audit) = (Arc::clone(service), Arc::clone(audit));
            let spawned = std::thread::Builder::new()
                .name(format!("keyd-hsm-{n}"))
                .spawn(move || hsm_worker(&service, &audit, rx));
            match spawned {
                Ok(_) => queues.push(tx),
                Err(e) => tracing::error!(error = %e, "cannot start an HSM thread"),
            }
        }
        Self {
            queues,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Queues `job` on the next worker; false when none is left to take it.
    async fn send(&self, job: HsmJob) -> bool {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.queues.get(n % self.queues.len().max(1)) {
            Some(queue) => queue.send(job).await.is_ok(),
            None => false,
        }
    }
}

/// Most answers an HSM worker queues before it wakes their writers: enough to spare most
/// wake-ups under load, few enough that the first answer of a run does not wait long.
const HSM_RUN: usize = 64;

/// And the longest the first answer of a run waits for the others (about 64 SoftHSM calls on
/// the machine measured): with a slow token, an HSM across a network, 64 calls would hold it
/// back for tens of milliseconds.
const HSM_RUN_TIME: std::time::Duration = std::time::Duration::from_millis(1);

/// Answers each job into a buffer of its connection's own, outside every lock, and at the end
/// of a run of jobs taken from the queue without waiting hands each buffer to its outbox in
/// one append and wakes that writer once. Waking the writer per answer cost this thread about
/// a fifth of its time in futex and socket wake-ups (BENCHMARKS.md); framing outside the
/// outbox's lock keeps the PKCS#11 calls out from under a lock the connection's reader and
/// writer take.
fn hsm_worker(service: &Service, audit: &Audit, mut rx: tokio::sync::mpsc::Receiver<HsmJob>) {
    // Answers hold plaintexts: every buffer is wiped when handed over, and its allocation
    // kept for the next run.
    let mut staged: Vec<(Arc<Outbox>, Zeroizing<Vec<u8>>)> = Vec::new();
    let mut spare: Vec<Zeroizing<Vec<u8>>> = Vec::new();
    let mut run = 0;
    let mut run_started = std::time::Instant::now();
    let mut next = rx.blocking_recv();
    while let Some(mut job) = next.take() {
        if run == 0 {
            run_started = std::time::Instant::now();
        }
        run += 1;
        // Its peer is gone: nobody will read the answer.
        if !job.outbox.is_gone() {
            let at = match staged.iter().position(|(o, _)| Arc::ptr_eq(o, &job.outbox)) {
                Some(at) => at,
                None => {
                    let buf = spare
                        .pop()
                        .unwrap_or_else(|| Zeroizing::new(Vec::with_capacity(64 * 1024)));
                    staged.push((Arc::clone(&job.outbox), buf));
                    staged.len() - 1
                }
            };
            if let Some((_, out)) = staged.get_mut(at) {
                // As `Outbox::push` does: growing past this leaves an unwiped copy behind.
                buffer::reserve(out, 64 * 1024);
                let mut status = Status::INTERNAL;
                frame::encode_with(Kind::Response, job.opcode, job.id, out, |out| {
                    status = dispatch::handle_into(service, job.groups, job.opcode, &job.body, out);
                    status
                });
                // Recorded before the answer reaches the outbox: the writer flushes the log
                // after taking a batch, so no answer leaves before its record.
                audit.record(&entry(
                    &job.peer,
                    job.opcode,
                    &job.body,
                    status,
                    job.started,
                    None,
                ));
            }
        }
        // Wiped with one `memset` and emptied first: `Zeroizing` would wipe the body byte by byte
        // (see `Secret`'s drop); on the empty `Vec` it only clears the allocation in bulk.
        buffer::wipe(&mut job.body);
        if run < HSM_RUN && run_started.elapsed() < HSM_RUN_TIME {
            next = rx.try_recv().ok();
        }
        if next.is_none() {
            for (outbox, mut answers) in staged.drain(..) {
                outbox.push(|out| {
                    buffer::reserve(out, answers.len());
                    out.extend_from_slice(&answers);
                });
                buffer::wipe(&mut answers);
                spare.push(answers);
            }
            run = 0;
            next = rx.blocking_recv();
        }
    }
}

/// The audit record of one request. The subject is the request's first field where that field
/// is an id (a device, key, zone, webhook endpoint or portal user); the operations whose first
/// field is anything else — a secret, a batch — have none.
fn entry<'a>(
    peer: &'a str,
    opcode: keyd_proto::Opcode,
    body: &'a [u8],
    status: Status,
    started: std::time::Instant,
    kcv: Option<[u8; 3]>,
) -> Entry<'a> {
    let subject = match opcode.0 {
        0x0101..=0x0106 | 0x0201 | 0x0203..=0x0209 | 0x0213 | 0x0218..=0x021A | 0x0301..=0x0304 => {
            first_string(body)
        }
        _ => None,
    };
    Entry {
        peer,
        opcode: opcode.0,
        subject,
        kcv,
        status,
        micros: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    }
}

/// The leading length-prefixed string of a request body, without copying it.
fn first_string(body: &[u8]) -> Option<&str> {
    let (len, rest) = body.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    std::str::from_utf8(rest.get(..len)?).ok()
}

/// The check value in the answer of a key-making or key-moving operation.
fn answer_kcv(opcode: keyd_proto::Opcode, body: &[u8]) -> Option<[u8; 3]> {
    use keyd_proto::message::{self as m, Message};
    match opcode.0 {
        0x0101 | 0x0102 => m::IdentityKey::decode(body).ok().map(|k| k.kcv),
        0x0301 => m::ZoneInfo::decode(body).ok().map(|z| z.kcv),
        0x0302 | 0x0303 => m::KeyBlockOut::decode(body).ok().map(|k| k.kcv),
        0x0304 => m::ImportedKey::decode(body).ok().map(|k| k.kcv),
        _ => None,
    }
}

fn unavailable(out: &mut Vec<u8>, opcode: keyd_proto::Opcode, id: u64) {
    frame::encode(Kind::Response, opcode, Status::UNAVAILABLE, id, &[], out);
}

async fn connection(
    stream: UnixStream,
    service: Arc<Service>,
    config: Arc<Config>,
    audit: Arc<Audit>,
    hsm_worker: Option<Arc<HsmWorkers>>,
) {
    let (groups, peer): (u32, Arc<str>) = match stream.peer_cred() {
        Ok(cred) => (
            config.groups_for(cred.uid(), cred.gid()),
            Arc::from(format!("uid:{}", cred.uid())),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "no peer credentials; closing");
            return;
        }
    };
    if groups == 0 {
        // Allowed to connect by the socket's mode, but named by no access rule.
        tracing::debug!(peer = %peer, "peer has no operation group; closing");
        return;
    }
    let idle = (config.idle_timeout_secs > 0)
        .then(|| std::time::Duration::from_secs(config.idle_timeout_secs));
    let (mut read, write) = stream.into_split();
    // Answers are encoded straight into the connection's outbox and sent a batch at a time;
    // the records of a batch's answers reach the log before the answers reach the peer.
    let outbox = Arc::new(Outbox::new(OUTBOX_LIMIT));
    let writer = tokio::spawn({
        let (outbox, audit) = (Arc::clone(&outbox), Arc::clone(&audit));
        async move {
            outbox
                .write_loop(write, || audit.flush(false).is_ok())
                .await;
        }
    });

    // Requests hold plaintexts, PANs and components: read through a buffer that wipes what
    // it consumes and what it leaves when it grows (`keyd_proto::buffer`).
    let mut buf = Zeroizing::new(Vec::<u8>::with_capacity(64 * 1024));
    'read: loop {
        buffer::reserve(&mut buf, 16 * 1024);
        let got = match idle {
            None => read.read_buf(&mut *buf).await,
            Some(limit) => match tokio::time::timeout(limit, read.read_buf(&mut *buf)).await {
                Ok(got) => got,
                // Nothing asked for a long time and nothing left to answer: let it go.
                Err(_) if outbox.is_empty() => break,
                Err(_) => continue,
            },
        };
        match got {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let mut used = 0;
        loop {
            let frame = match frame::decode(buf.get(used..).unwrap_or_default(), MAX_BODY) {
                Ok(Some((f, len))) => {
                    used += len;
                    f
                }
                Ok(None) => break,
                Err(e) => {
                    // A broken stream closes this connection only.
                    tracing::debug!(error = %e, "malformed frame; closing the connection");
                    break 'read;
                }
            };
            if frame.header.kind != Kind::Request {
                break 'read;
            }
            let (opcode, id) = (frame.header.opcode, frame.header.request_id);
            let started = std::time::Instant::now();
            if audit.failed() {
                // Without its audit log keyd executes nothing.
                outbox.push(|out| unavailable(out, opcode, id));
                continue;
            }
            if dispatch::is_slow(opcode) {
                let body = Zeroizing::new(frame.body.to_vec());
                let service = Arc::clone(&service);
                let outbox = Arc::clone(&outbox);
                let (audit, peer) = (Arc::clone(&audit), Arc::clone(&peer));
                tokio::spawn(async move {
                    let answer = tokio::task::spawn_blocking(move || {
                        let mut out = Zeroizing::new(Vec::new());
                        let mut status = Status::INTERNAL;
                        frame::encode_with(Kind::Response, opcode, id, &mut out, |out| {
                            status = dispatch::handle_into(&service, groups, opcode, &body, out);
                            status
                        });
                        let kcv =
                            answer_kcv(opcode, out.get(frame::HEADER_LEN..).unwrap_or_default());
                        audit.record(&entry(&peer, opcode, &body, status, started, kcv));
                        // Control operations are on disk before their answer is sent.
                        if audit.flush(true).is_err() {
                            out.clear();
                            unavailable(&mut out, opcode, id);
                        }
                        out
                    })
                    .await
                    .unwrap_or_else(|_| {
                        let mut out = Zeroizing::new(Vec::new());
                        frame::encode(Kind::Response, opcode, Status::INTERNAL, id, &[], &mut out);
                        out
                    });
                    outbox.push(|buf| buf.extend_from_slice(&answer));
                });
            } else if let Some(worker) = &hsm_worker {
                let job = HsmJob {
                    opcode,
                    id,
                    groups,
                    body: Zeroizing::new(frame.body.to_vec()),
                    outbox: Arc::clone(&outbox),
                    peer: Arc::clone(&peer),
                    started,
                };
                if !worker.send(job).await {
                    break 'read;
                }
            } else {
                outbox.push(|out| {
                    let mut status = Status::INTERNAL;
                    frame::encode_with(Kind::Response, opcode, id, out, |out| {
                        status = dispatch::handle_into(&service, groups, opcode, frame.body, out);
                        status
                    });
                    audit.record(&entry(&peer, opcode, frame.body, status, started, None));
                });
            }
        }
        buffer::consume(&mut buf, used);
        // A peer that asks without reading the answers is held here (the writer is blocked
        // on its socket) until it reads, or until it goes away and the writer stops.
        if !outbox.room().await {
            break;
        }
    }
    outbox.close();
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use keyd_proto::message::{self as m, Message, Operation};

    use super::*;

    #[test]
    fn webhook_operations_are_recorded_under_their_endpoint_and_without_a_kcv() {
        let started = std::time::Instant::now();
        let create = m::WebhookSecretCreate {
            endpoint_id: "we_1".into(),
        }
        .to_vec();
        let e = entry(
            "1000",
            m::WebhookSecretCreate::OPCODE,
            &create,
            Status::OK,
            started,
            None,
        );
        assert_eq!((e.opcode, e.subject), (0x0218, Some("we_1")));
        let sign = m::WebhookSign {
            endpoint_id: "we_1".into(),
            salts: vec![[1; 16]],
            message: b"1.{}".to_vec(),
        }
        .to_vec();
        let e = entry(
            "1000",
            m::WebhookSign::OPCODE,
            &sign,
            Status::OK,
            started,
            None,
        );
        assert_eq!((e.opcode, e.subject), (0x0219, Some("we_1")));
        // The answer that holds a secret gives the record nothing.
        let answer = m::WebhookSecret {
            salt: [2; 16],
            secret: keyd_proto::Secret::new(b"whsec_x"),
        }
        .to_vec();
        assert_eq!(answer_kcv(m::WebhookSecretCreate::OPCODE, &answer), None);
    }

    #[test]
    fn password_macs_are_recorded_under_their_user_and_without_a_kcv() {
        let request = m::PasswordMac {
            context: "usr_7".into(),
            stretched: keyd_proto::Secret::new(&[0x33; 32]),
        }
        .to_vec();
        let e = entry(
            "1000",
            m::PasswordMac::OPCODE,
            &request,
            Status::OK,
            std::time::Instant::now(),
            None,
        );
        assert_eq!((e.opcode, e.subject, e.kcv), (0x021A, Some("usr_7"), None));
        let answer = m::PasswordMacValue {
            mac: keyd_proto::Secret::new(&[0x44; 32]),
        }
        .to_vec();
        assert_eq!(answer_kcv(m::PasswordMac::OPCODE, &answer), None);
    }
}
