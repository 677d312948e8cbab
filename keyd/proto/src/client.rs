//! An async client over keyd's Unix socket. One connection carries many requests at once: each
//! call gets a request id, a background task reads answers and hands each to its caller.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use zeroize::Zeroizing;

use crate::buffer;
use crate::frame::{self, FrameError, HEADER_LEN, Kind, MAX_BODY};
use crate::message::{Hello, HelloResponse, Message, Operation};
use crate::outbox::Outbox;
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

/// Most request bytes queued before callers wait for the writer.
const OUTBOX_LIMIT: usize = 8 << 20;

/// The sending side of a connection, shared by a client's clones: when the last one goes, the
/// writer sends what is queued and closes the socket's write side.
#[derive(Debug)]
struct Link(Arc<Outbox>);

impl Drop for Link {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A connection to keyd. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    /// Calls encode their frames straight into one outbox, which a writer task sends in one
    /// write per batch: with many calls in flight, one system call carries many requests, and
    /// a call allocates no frame of its own.
    link: Arc<Link>,
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
        let outbox = Arc::new(Outbox::coalescing(OUTBOX_LIMIT));
        let sender = Arc::clone(&outbox);
        tokio::spawn(async move { sender.write_loop(write, || true).await });
        let mut client = Self {
            link: Arc::new(Link(outbox)),
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
        if body.len() > MAX_BODY {
            return Err(ClientError::Frame(FrameError::TooLarge(
                u32::try_from(body.len()).unwrap_or(u32::MAX),
            )));
        }
        self.send(opcode, |out| {
            buffer::reserve(out, body.len());
            out.extend_from_slice(body);
        })
        .await
    }

    async fn send(
        &self,
        opcode: crate::Opcode,
        body: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(Status, Zeroizing<Vec<u8>>), ClientError> {
        // The only wait before the frame is queued, so a caller that gives up here (a
        // timeout) leaves nothing behind.
        let outbox = &self.link.0;
        if !outbox.room().await {
            return Err(ClientError::Closed);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            match pending.as_mut() {
                Some(map) => map.insert(id, tx),
                None => return Err(ClientError::Closed),
            };
        }
        // Encoded in place; a body over the limit is wiped and taken back out.
        let too_large = outbox.push(|out| {
            let start = out.len();
            frame::encode_with(Kind::Request, opcode, id, out, |out| {
                body(out);
                Status::OK
            });
            let len = out.len() - start - HEADER_LEN;
            (len > MAX_BODY).then(|| {
                buffer::zero(out.get_mut(start..).unwrap_or_default());
                out.truncate(start);
                len
            })
        });
        if let Some(len) = too_large {
            self.forget(id);
            return Err(ClientError::Frame(FrameError::TooLarge(
                u32::try_from(len).unwrap_or(u32::MAX),
            )));
        }
        if outbox.is_gone() {
            // The writer stopped before this frame could go: it never will.
            outbox.discard();
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixListener;

    use super::*;
    use crate::codec::Writer;
    use crate::message::{MacItem, MacVerifyBatch, Ping};

    type Seen = Arc<Mutex<Vec<(crate::Opcode, usize)>>>;

    /// A stand-in for keyd on one connection: answers hello, echoes every other request's
    /// body, and notes each request's opcode and body length. Returns when the client closes.
    async fn fake_keyd(listener: UnixListener, seen: Seen) {
        let (mut stream, _) = listener.accept().await.unwrap();
        let (mut buf, mut chunk) = (Vec::new(), vec![0; 64 * 1024]);
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            let (mut out, mut used) = (Vec::new(), 0);
            while let Some((f, len)) = frame::decode(&buf[used..], MAX_BODY).unwrap() {
                used += len;
                let (opcode, id) = (f.header.opcode, f.header.request_id);
                seen.lock().unwrap().push((opcode, f.body.len()));
                let body = if opcode == Hello::OPCODE {
                    let mut w = Writer::from_vec(Vec::new());
                    HelloResponse {
                        server_version: PROTOCOL_VERSION,
                        groups: 1,
                    }
                    .encode(&mut w);
                    w.into_inner()
                } else {
                    f.body.to_vec()
                };
                frame::encode(Kind::Response, opcode, Status::OK, id, &body, &mut out);
            }
            buf.drain(..used);
            stream.write_all(&out).await.unwrap();
        }
    }

    #[tokio::test]
    async fn an_oversized_request_is_refused_whole_and_the_connection_goes_on() {
        let dir = std::env::temp_dir().join(format!("keyd-proto-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keyd.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let seen = Seen::default();
        let keyd = tokio::spawn(fake_keyd(listener, Arc::clone(&seen)));

        let client = Client::connect(&path).await.unwrap();
        let err = client
            .call_raw(Ping::OPCODE, &vec![0x5a; MAX_BODY + 1])
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Frame(FrameError::TooLarge(n)) if n as usize == MAX_BODY + 1),
            "{err:?}"
        );
        // The same for a typed request, refused after it was encoded in the shared buffer.
        let big = MacVerifyBatch {
            items: vec![MacItem {
                key_id: "k".into(),
                message: vec![0x5a; MAX_BODY],
                signature: [0; 32],
            }],
        };
        let err = client.call(&big).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Frame(FrameError::TooLarge(n)) if n as usize > MAX_BODY),
            "{err:?}"
        );
        let (status, body) = client.call_raw(Ping::OPCODE, b"after").await.unwrap();
        assert_eq!((status, &body[..]), (Status::OK, &b"after"[..]));

        // The last clone gone, the writer closes the socket's write side and keyd sees the end.
        drop(client);
        keyd.await.unwrap();
        // Not one byte of the refused frame reached keyd: the next frame was read whole.
        assert_eq!(
            *seen.lock().unwrap(),
            [(Hello::OPCODE, 2), (Ping::OPCODE, 5)]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
