//! The contract's error body on the answers hyper writes by itself.
//!
//! When a request cannot be parsed (a bad request line, a malformed or oversized header, a
//! `Content-Length` of `-1` or twenty digits, a control character in a header value), hyper
//! answers 400, 414 or 431 with an empty body and closes the connection, before our service
//! sees anything. hyper offers no hook for that answer, so this stream wrapper watches what
//! hyper writes: every answer of our own carries `x-request-id`, so a 4xx/5xx head without one
//! is hyper's, and it is replaced by the same status with the contract's error body.
//!
//! The wrapper follows the outgoing stream answer by answer (head, then exactly
//! `content-length` body bytes: our answers always have a fixed length, see [`super`]). It also
//! gathers each answer into one buffer written at flush, so an answer costs one system call.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::{ApiError, Code};

/// Bytes gathered before they are written even without a flush.
const GATHER: usize = 64 * 1024;
/// A head longer than this is not one of ours or hyper's: passed on as it is.
const MAX_HEAD: usize = 16 * 1024;

/// A connection's stream with hyper's own error answers given the contract's body.
#[derive(Debug)]
pub(super) struct Answers<S> {
    inner: S,
    out: Vec<u8>,
    written: usize,
    head: Vec<u8>,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next bytes start an answer's head.
    Head,
    /// This many bytes of body follow, passed on.
    Body(u64),
    /// This many bytes of body follow, dropped (the body of a replaced answer).
    Skip(u64),
}

impl<S> Answers<S> {
    /// Wraps a connection's stream.
    pub(super) const fn new(inner: S) -> Self {
        Self {
            inner,
            out: Vec::new(),
            written: 0,
            head: Vec::new(),
            state: State::Head,
        }
    }

    /// Takes bytes of an answer's head; returns how many were consumed.
    fn take_head(&mut self, buf: &[u8]) -> usize {
        let before = self.head.len();
        self.head.extend_from_slice(buf);
        let from = before.saturating_sub(3);
        let end = self
            .head
            .get(from..)
            .and_then(|tail| tail.windows(4).position(|w| w == b"\r\n\r\n"))
            .map(|at| from + at + 4);
        let Some(end) = end else {
            if self.head.len() > MAX_HEAD {
                self.out.append(&mut self.head);
                self.state = State::Body(u64::MAX);
            }
            return buf.len();
        };
        self.head.truncate(end);
        let head = std::mem::take(&mut self.head);
        let facts = Head::read(&head);
        // What follows the head: nothing for an interim answer (100 Continue), a 204 or 304,
        // or a zero length; exactly `content-length` bytes otherwise; and for a chunked answer
        // (we write none) everything, since its end cannot be known without decoding it.
        let body = if facts.status < 200 || matches!(facts.status, 204 | 304) {
            0
        } else if facts.chunked {
            u64::MAX
        } else {
            facts.length
        };
        let keep = facts.ours || facts.status < 400;
        if keep {
            self.out.extend_from_slice(&head);
        } else {
            self.out
                .extend_from_slice(&replacement(facts.status, &facts.reason));
        }
        self.state = match (body, keep) {
            (0, _) => State::Head,
            (n, true) => State::Body(n),
            (n, false) => State::Skip(n),
        };
        self.head = head;
        self.head.clear();
        end - before
    }

    /// Takes bytes from hyper; returns how many were consumed (at least one of a non-empty
    /// `buf`: every state makes progress).
    fn take(&mut self, buf: &[u8]) -> usize {
        match self.state {
            State::Head => self.take_head(buf),
            State::Body(left) => {
                let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                self.out.extend_from_slice(buf.get(..n).unwrap_or(buf));
                self.state = body_left(left, n, State::Body);
                n
            }
            State::Skip(left) => {
                let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                self.state = body_left(left, n, State::Skip);
                n
            }
        }
    }
}

fn body_left(left: u64, taken: usize, state: fn(u64) -> State) -> State {
    match left.saturating_sub(taken as u64) {
        0 => State::Head,
        more => state(more),
    }
}

/// What the wrapper needs to know of an answer's head.
struct Head {
    status: u16,
    reason: String,
    length: u64,
    chunked: bool,
    ours: bool,
}

impl Head {
    fn read(head: &[u8]) -> Self {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut words = status_line.splitn(3, ' ');
        let _version = words.next();
        let status = words.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let reason = words.next().unwrap_or_default().to_owned();
        let mut length = 0;
        let mut chunked = false;
        let mut ours = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("x-request-id") {
                ours = true;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            }
        }
        Self {
            status,
            reason,
            length,
            chunked,
            ours,
        }
    }
}

/// Our answer in place of hyper's empty one: same status, the contract's body, a fresh
/// request id (the request's own could not be read), and the connection closed after it.
fn replacement(status: u16, reason: &str) -> Vec<u8> {
    let (code, message) = match status {
        414 => (Code::UriTooLong, "the request target is too long"),
        431 => (Code::HeadersTooLarge, "the request headers are too large"),
        _ => (
            Code::HeaderInvalid,
            "the request line or a header is malformed",
        ),
    };
    let reason = if reason.is_empty() {
        "Bad Request"
    } else {
        reason
    };
    closing_answer(&ApiError::new(code, message), reason)
}

/// A whole answer carrying `error`, written by hand for a connection hyper will not serve;
/// the connection is closed after it.
pub(super) fn closing_answer(error: &ApiError, reason: &str) -> Vec<u8> {
    let request_id = super::new_request_id();
    let body = error.body(&request_id).to_string();
    let retry = error
        .retry_after()
        .map(|s| format!("retry-after: {s}\r\n"))
        .unwrap_or_default();
    format!(
        "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         x-request-id: {request_id}\r\n{retry}connection: close\r\n\r\n{body}",
        error.code().status(),
        body.len(),
    )
    .into_bytes()
}

impl<S: AsyncWrite + Unpin> Answers<S> {
    /// Writes what is gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.out.get(self.written..).filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.out.clear();
        self.written = 0;
        // A large answer (the terminal config) does not pin its buffer for the connection's life.
        if self.out.capacity() > 4 * GATHER {
            self.out = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Answers<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Answers<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.out.len() >= GATHER {
            ready!(self.poll_drain(cx))?;
        }
        let mut consumed = 0;
        while let Some(rest) = buf.get(consumed..).filter(|r| !r.is_empty()) {
            consumed += self.take(rest);
            if self.out.len() >= GATHER {
                break;
            }
        }
        Poll::Ready(Ok(consumed))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn through(chunks: &[&[u8]]) -> Vec<u8> {
        let mut a = Answers::new(Vec::<u8>::new());
        for chunk in chunks {
            let mut rest = *chunk;
            while !rest.is_empty() {
                let n = a.take(rest);
                assert!(n > 0, "no progress on {:?}", String::from_utf8_lossy(rest));
                rest = rest.get(n..).unwrap_or_default();
            }
        }
        a.out
    }

    #[test]
    fn answers_without_a_body_are_followed_by_the_next() {
        let empty: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-request-id: r1\r\n\r\n";
        let no_content: &[u8] = b"HTTP/1.1 204 No Content\r\nx-request-id: r2\r\n\r\n";
        let next: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-request-id: r3\r\n\r\n{}";
        let all = [empty, no_content, next].concat();
        assert_eq!(through(&[empty, no_content, next]), all);
        assert_eq!(through(&[&all]), all);
    }

    #[test]
    fn our_answers_pass_unchanged_in_any_pieces() {
        let ours: &[u8] = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n\
            content-length: 5\r\nx-request-id: r1\r\n\r\n{\"a\"}HTTP/1.1 100 Continue\r\n\r\n\
            HTTP/1.1 200 OK\r\ncontent-length: 2\r\nX-Request-Id: r2\r\n\r\n{}";
        assert_eq!(through(&[ours]), ours);
        let pieces: Vec<&[u8]> = ours.chunks(3).collect();
        assert_eq!(through(&pieces), ours);
    }

    #[test]
    fn hypers_own_errors_get_the_contract_body() {
        let hyper_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\
            date: Thu, 03 Dec 2026 00:00:00 GMT\r\n\r\n";
        let ours: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-request-id: r1\r\n\r\n{}";
        let out = through(&[ours, hyper_400]);
        let text = String::from_utf8(out).unwrap();
        let (first, second) = text.split_at(ours.len());
        assert_eq!(first.as_bytes(), ours);
        assert!(
            second.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{second}"
        );
        let body = second.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "4001");
        assert!(second.contains(&format!("content-length: {}\r\n", body.len())));
        assert!(second.contains("connection: close\r\n"));
        for (status, code) in [(431, "4310"), (414, "4140")] {
            let head = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
            let text = String::from_utf8(through(&[head.as_bytes()])).unwrap();
            assert!(
                text.starts_with(&format!("HTTP/1.1 {status} X\r\n")),
                "{text}"
            );
            assert!(text.contains(&format!("\"code\":\"{code}\"")), "{text}");
        }
    }
}
