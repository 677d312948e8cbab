//! An async client over keyd's Unix socket. One connection carries many requests at once: each
//! call gets a request id, a background task reads answers and hands each to its caller.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use crate::buffer;
use crate::frame::{self, FrameError, HEADER_LEN, Kind, MAX_BODY};
use crate::message::{Hello, HelloResponse, Message, Operation};
use crate::{DecodeError, PROTOCOL_VERSION, Status};

/// What can go wrong with a call.
#[derive(Debug)]
pub enum ClientError {
    /// The socket failed or closed.
    Io(io::Error),
    /// keyd answered with a status other than OK.
    Status(Status),
    /// keyd sent bytes that are not a frame.
    Frame(FrameError),
    /// keyd sent a body that is not the expected response.
    Decode(DecodeError),
    /// The connection was closed before the answer came.
    Closed,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "keyd connection: {e}"),
            Self::Status(s) => write!(f, "keyd: {s}"),
            Self::Frame(e) => write!(f, "keyd protocol: {e}"),
            Self::Decode(e) => write!(f, "keyd protocol: {e}"),
            Self::Closed => f.write_str("keyd connection closed"),
        }
    }
}

impl std::error::Error for ClientError {}

type Answer = Result<(Status, Zeroizing<Vec<u8>>), ClientError>;
type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Answer>>>>>;

/// A connection to keyd. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    /// Frames go to one writer task, which sends whatever is queued in one write: with many
    /// calls in flight, one system call carries many requests.
    writer: tokio::sync::mpsc::Sender<Zeroizing<Vec<u8>>>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    groups: u32,
}

impl Client {
    /// Connects and says hello.
    ///
    /// # Errors
    /// [`ClientError`] if the socket cannot be reached or keyd speaks another version.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).await.map_err(ClientError::Io)?;
        let (read, write) = stream.into_split();
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(read_loop(read, Arc::clone(&pending)));
        let (writer, queue) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(write_loop(write, queue));
        let mut client = Self {
            writer,
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
            groups: 0,
        };
        let hello: HelloResponse = client
            .call(&Hello {
                client_version: PROTOCOL_VERSION,
            })
            .await?;
        client.groups = hello.groups;
        Ok(client)
    }

    /// The groups keyd lets this peer call ([`crate::Group::bit`] bits).
    pub const fn groups(&self) -> u32 {
        self.groups
    }

    /// Sends one request and waits for its answer.
    ///
    /// # Errors
    /// [`ClientError::Status`] for a refusal; the others for transport faults.
    pub async fn call<O: Operation>(&self, request: &O) -> Result<O::Response, ClientError> {
        let (status, body) = self
            .send(O::OPCODE, |out| {
                let mut w = crate::codec::Writer::from_vec(std::mem::take(out));
                request.encode(&mut w);
                *out = w.into_inner();
            })
            .await?;
        if status != Status::OK {
            return Err(ClientError::Status(status));
        }
        O::Response::decode(&body).map_err(ClientError::Decode)
    }

    /// Sends a request body under any opcode (for tests of unknown or malformed requests).
    ///
    /// # Errors
    /// Transport faults only; keyd's status is returned.
    pub async fn call_raw(
        &self,
        opcode: crate::Opcode,
        body: &[u8],
    ) -> Result<(Status, Zeroizing<Vec<u8>>), ClientError> {
        self.send(opcode, |out| out.extend_from_slice(body)).await
    }

    async fn send(
        &self,
        opcode: crate::Opcode,
        body: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(Status, Zeroizing<Vec<u8>>), ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            match pending.as_mut() {
                Some(map) => map.insert(id, tx),
                None => return Err(ClientError::Closed),
            };
        }
        // Requests carry plaintexts and PANs: the frame is wiped when dropped. (A body larger
        // than this first allocation makes the encoder move it once, leaving the smaller copy
        // in freed memory: the hot path's bodies fit.)
        let mut frame = Zeroizing::new(Vec::with_capacity(HEADER_LEN + 1024));
        frame::encode_with(Kind::Request, opcode, id, &mut frame, |out| {
            body(out);
            Status::OK
        });
        if frame.len() - HEADER_LEN > MAX_BODY {
            self.forget(id);
            return Err(ClientError::Frame(FrameError::TooLarge(
                u32::try_from(frame.len() - HEADER_LEN).unwrap_or(u32::MAX),
            )));
        }
        if self.writer.send(frame).await.is_err() {
            self.forget(id);
            return Err(ClientError::Closed);
        }
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    fn forget(&self, id: u64) {
        if let Some(map) = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            map.remove(&id);
        }
    }
}

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut queue: tokio::sync::mpsc::Receiver<Zeroizing<Vec<u8>>>,
) {
    let mut batch = Zeroizing::new(Vec::with_capacity(64 * 1024));
    while let Some(frame) = queue.recv().await {
        buffer::reserve(&mut batch, frame.len());
        batch.extend_from_slice(&frame);
        while batch.len() < 256 * 1024 {
            match queue.try_recv() {
                Ok(more) => {
                    buffer::reserve(&mut batch, more.len());
                    batch.extend_from_slice(&more);
                }
                Err(_) => break,
            }
        }
        let sent = write.write_all(&batch).await;
        // Wiped, not only cleared: the next batch reuses the allocation.
        buffer::wipe(&mut batch);
        if sent.is_err() {
            break;
        }
    }
}

async fn read_loop(mut read: tokio::net::unix::OwnedReadHalf, pending: Pending) {
    let mut buf = Zeroizing::new(Vec::with_capacity(64 * 1024));
    let failure = loop {
        buffer::reserve(&mut buf, 16 * 1024);
        match read.read_buf(&mut *buf).await {
            Ok(0) => break ClientError::Closed,
            Ok(_) => {}
            Err(e) => break ClientError::Io(e),
        }
        let mut used = 0;
        let broken = loop {
            match frame::decode(buf.get(used..).unwrap_or_default(), MAX_BODY) {
                Ok(Some((f, len))) => {
                    used += len;
                    let waiter = pending
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .as_mut()
                        .and_then(|m| m.remove(&f.header.request_id));
                    if let Some(tx) = waiter {
                        let _ = tx.send(Ok((f.header.status, Zeroizing::new(f.body.to_vec()))));
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        buffer::consume(&mut buf, used);
        if let Some(e) = broken {
            break ClientError::Frame(e);
        }
    };
    // Wake every caller still waiting: the connection is gone.
    let waiting = pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    for (_, tx) in waiting.into_iter().flatten() {
        let _ = tx.send(Err(match &failure {
            ClientError::Frame(e) => ClientError::Frame(*e),
            _ => ClientError::Closed,
        }));
    }
}
