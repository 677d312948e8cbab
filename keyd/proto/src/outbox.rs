//! One connection's outgoing frames, queued in one buffer that a writer task sends.
//!
//! Both ends of keyd's socket use it: keyd queues answers, the client queues requests. Whoever
//! has a frame encodes it straight into the shared buffer (no buffer per frame, no channel),
//! and the writer swaps the whole buffer out and sends it in one write. With many frames in
//! flight, one system call carries many of them, and the writer is woken once per batch, not
//! once per frame.
//!
//! Frames carry plaintexts, card data and PANs, so the bytes that leave the buffer are wiped: a
//! sent batch before its allocation is reused, the buffer's old allocation when [`Outbox::push`]
//! makes room (and when the codec grows it, [`crate::codec`]), and whatever is left once the
//! writer stops or the outbox is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use zeroize::Zeroize;

use crate::buffer;

/// Room kept free in the buffer before each frame is encoded: a frame up to this size never
/// makes the encoder grow the vector itself (which would leave an unwiped copy behind). A
/// larger one still grows it once.
const HEADROOM: usize = 64 * 1024;

/// Frames waiting to be written on one connection.
pub struct Outbox {
    buf: Mutex<Vec<u8>>,
    /// Something was queued, or the outbox was closed.
    ready: Notify,
    /// The writer sent a batch, or stopped: a producer held back by a full outbox looks again.
    drained: Notify,
    /// No more frames will come: the writer sends what is left and stops.
    closed: AtomicBool,
    /// The writer stopped (the peer is gone or stopped reading): nothing queued will be sent.
    gone: AtomicBool,
    /// Most bytes queued before [`Outbox::room`] holds producers back.
    limit: usize,
    /// Whether the writer, once woken, lets the other ready tasks run before it takes a batch
    /// ([`Outbox::coalescing`]).
    coalesce: bool,
}

impl Outbox {
    /// An empty outbox that holds producers back above `limit` queued bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Mutex::new(Vec::new()),
            ready: Notify::new(),
            drained: Notify::new(),
            closed: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            limit,
            coalesce: false,
        }
    }

    /// An outbox whose writer, woken by a frame, first yields (`tokio::task::yield_now`) so
    /// that tasks already ready may queue their frames into the same write. For a client whose
    /// callers are many tasks each sending one request at a time (the API's handlers): without
    /// it the writer ran straight after each call and sent one frame per system call, and each
    /// one woke keyd. It is a hint to the scheduler, not a promise: tokio runs the yielded
    /// task again once its worker runs out of ready tasks or checks for I/O (every few dozen
    /// polls), so a frame waits at most that long, and an idle runtime sends it at once. Frames
    /// queued during the yield leave a wake-up behind, which costs the writer one empty pass.
    pub fn coalescing(limit: usize) -> Self {
        let mut outbox = Self::new(limit);
        outbox.coalesce = true;
        outbox
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.buf.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lets `f` append to the queued bytes, then wakes the writer. What `f` appends must be
    /// whole frames; `f` runs under the outbox's lock, so it should only encode.
    pub fn push<T>(&self, f: impl FnOnce(&mut Vec<u8>) -> T) -> T {
        let mut buf = self.lock();
        buffer::reserve(&mut buf, HEADROOM);
        let out = f(&mut buf);
        drop(buf);
        self.ready.notify_one();
        out
    }

    /// Nothing is waiting to be written.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The writer stopped: nothing pushed from now on will be sent.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Waits, without spinning, until the queued bytes are within the limit; `false` when the
    /// writer stopped instead, so the producer stops too.
    pub async fn room(&self) -> bool {
        loop {
            let drained = self.drained.notified();
            if self.is_gone() {
                return false;
            }
            if self.lock().len() <= self.limit {
                return true;
            }
            drained.await;
        }
    }

    /// No more frames will be pushed: the writer sends what is queued and stops.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }

    /// The writer: sends everything queued in one write each time, until the outbox is closed
    /// and empty or a write fails. `before` runs before each batch is sent; if it returns
    /// `false` the batch is dropped (wiped) and the writer stops, as after a failed write
    /// (keyd uses it to put the answers' audit records on disk before the answers leave).
    pub async fn write_loop(
        &self,
        mut write: impl AsyncWrite + Unpin,
        mut before: impl FnMut() -> bool,
    ) {
        let mut spare = Vec::with_capacity(HEADROOM);
        loop {
            let mut batch = std::mem::replace(&mut *self.lock(), std::mem::take(&mut spare));
            if batch.is_empty() {
                if self.closed.load(Ordering::Acquire) {
                    break;
                }
                self.ready.notified().await;
                if self.coalesce {
                    tokio::task::yield_now().await;
                }
                spare = batch;
                continue;
            }
            if !before() || write.write_all(&batch).await.is_err() {
                buffer::wipe(&mut batch);
                break;
            }
            spare = batch;
            // Wiped, not only cleared, before the allocation takes the next batch.
            buffer::wipe(&mut spare);
            // Every producer held back looks again (a client has many), not only one.
            self.drained.notify_waiters();
        }
        buffer::wipe(&mut spare);
        self.gone.store(true, Ordering::Release);
        // Nothing queued from now on will be sent: wiped now, not when the last owner goes.
        self.discard();
        self.drained.notify_waiters();
    }

    /// Wipes whatever is queued and not sent (after the writer stopped).
    pub fn discard(&self) {
        buffer::wipe(&mut self.lock());
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // Frames never sent (the peer left) are wiped with the connection.
        self.buf
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .zeroize();
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use tokio::io::AsyncReadExt;
    use tokio::net::UnixStream;

    use super::*;

    #[tokio::test]
    async fn a_coalescing_writer_lets_the_ready_tasks_queue_before_it_sends() {
        // On the current-thread runtime tests use: the writer is woken before the second
        // caller is spawned, so it runs first unless it yields. A regression fails, not hangs.
        let run = tokio::time::timeout(std::time::Duration::from_secs(10), coalesced_batches());
        run.await.expect("the writer sent both frames");
    }

    async fn coalesced_batches() {
        for (coalesce, batches_wanted) in [(false, 2), (true, 1)] {
            let (near, mut far) = UnixStream::pair().unwrap();
            let outbox = Arc::new(if coalesce {
                Outbox::coalescing(1 << 20)
            } else {
                Outbox::new(1 << 20)
            });
            let batches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let writer = tokio::spawn({
                let (outbox, batches) = (Arc::clone(&outbox), Arc::clone(&batches));
                async move {
                    outbox
                        .write_loop(near, || {
                            batches.fetch_add(1, Ordering::SeqCst);
                            true
                        })
                        .await;
                }
            });
            // The writer starts and waits for a frame.
            tokio::task::yield_now().await;
            outbox.push(|out| out.extend_from_slice(b"one,"));
            // Another caller, ready to queue its frame once this one gives way: the writer was
            // woken first, so without coalescing it sends the first frame alone.
            let second = tokio::spawn({
                let outbox = Arc::clone(&outbox);
                async move { outbox.push(|out| out.extend_from_slice(b"two.")) }
            });
            second.await.unwrap();
            let mut got = [0; 8];
            far.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"one,two.");
            outbox.close();
            writer.await.unwrap();
            assert_eq!(
                batches.load(Ordering::SeqCst),
                batches_wanted,
                "coalescing: {coalesce}"
            );
        }
    }

    #[tokio::test]
    async fn a_full_outbox_holds_producers_until_sent_and_lets_them_go_when_the_writer_stops() {
        let (near, mut far) = UnixStream::pair().unwrap();
        let outbox = Arc::new(Outbox::new(8));
        outbox.push(|out| out.extend_from_slice(b"0123456789"));
        let held = tokio::spawn({
            let outbox = Arc::clone(&outbox);
            async move { outbox.room().await }
        });
        let writer = tokio::spawn({
            let outbox = Arc::clone(&outbox);
            async move { outbox.write_loop(near, || true).await }
        });
        assert!(held.await.unwrap(), "room once the batch went");
        let mut got = [0; 10];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"0123456789");
        assert!(outbox.is_empty());

        // The peer leaves: the next write fails, the writer stops, and producers waiting for
        // room are told to stop instead of waiting forever.
        drop(far);
        outbox.push(|out| out.extend_from_slice(b"0123456789"));
        writer.await.unwrap();
        assert!(outbox.is_gone());
        assert!(!outbox.room().await);
    }

    #[tokio::test]
    async fn every_producer_held_back_is_let_go_when_the_writer_stops() {
        let (near, far) = UnixStream::pair().unwrap();
        drop(far);
        let outbox = Arc::new(Outbox::new(4));
        outbox.push(|out| out.extend_from_slice(b"0123456789"));
        let held: Vec<_> = (0..3)
            .map(|_| {
                let outbox = Arc::clone(&outbox);
                tokio::spawn(async move { outbox.room().await })
            })
            .collect();
        tokio::task::yield_now().await;
        // The peer is gone: the first write fails and the writer stops.
        outbox.write_loop(near, || true).await;
        for producer in held {
            let told = tokio::time::timeout(std::time::Duration::from_secs(10), producer).await;
            assert!(!told.expect("left waiting").unwrap(), "told to stop");
        }
        assert!(outbox.is_empty(), "what was never sent is wiped at once");
    }

    #[tokio::test]
    async fn a_closed_outbox_sends_what_is_queued_then_closes_the_socket() {
        let (near, mut far) = UnixStream::pair().unwrap();
        let outbox = Arc::new(Outbox::new(1 << 20));
        outbox.push(|out| out.extend_from_slice(b"first"));
        outbox.push(|out| out.extend_from_slice(b"second"));
        outbox.close();
        outbox.write_loop(near, || true).await;
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"firstsecond");
    }

    #[tokio::test]
    async fn a_batch_its_check_refuses_is_never_sent() {
        let (near, mut far) = UnixStream::pair().unwrap();
        let outbox = Outbox::new(1 << 20);
        outbox.push(|out| out.extend_from_slice(b"answer"));
        outbox.write_loop(near, || false).await;
        assert!(outbox.is_gone());
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty(), "nothing reached the peer");
    }
}
