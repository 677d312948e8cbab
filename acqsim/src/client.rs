//! A bare link client for tests: MACs and frames requests under a ZAK, reads framed answers
//! and checks their MACs. It is what the simulator's own tests drive it with, and what a
//! platform test can use to poke the simulator directly; the platform's real link (with STAN
//! allocation, matching and reversals) is the `iso8583` processor, not this.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use acqlink::{Deframer, Mac, MacProtected, Message};
use paycrypto::TdesKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An answer read off the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Its MAC verified under the ZAK.
    Verified(Message),
    /// It decoded, but its MAC did not verify (its fields are not looked at).
    BadMac,
}

/// One connection to an acquirer host.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    zak: TdesKey,
    deframer: Deframer,
}

impl Client {
    /// Connects to `addr`; requests are MACed and answers verified under `zak`.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn connect(addr: SocketAddr, zak: TdesKey) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            zak,
            deframer: Deframer::new(),
        })
    }

    /// Sends `message` with its retail MAC under the ZAK.
    ///
    /// # Errors
    /// The write failed.
    pub async fn send(&mut self, message: &Message) -> io::Result<()> {
        let unsigned = message.encode_for_mac();
        let mac = paycrypto::retail_mac(&self.zak, unsigned.mac_input());
        self.send_raw(&unsigned.with_mac(Mac(mac))).await
    }

    /// Sends `message` with this MAC, right or wrong.
    ///
    /// # Errors
    /// The write failed.
    pub async fn send_with_mac(&mut self, message: &Message, mac: Mac) -> io::Result<()> {
        self.send_raw(&message.encode_for_mac().with_mac(mac)).await
    }

    /// Frames and sends these message bytes as they are.
    ///
    /// # Errors
    /// The message is empty or over 4,096 bytes, or the write failed.
    pub async fn send_raw(&mut self, message: &[u8]) -> io::Result<()> {
        let framed =
            acqlink::frame(message).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.stream.write_all(&framed).await
    }

    /// The next answer, or `None` if none arrives within `wait`.
    ///
    /// # Errors
    /// [`io::ErrorKind::UnexpectedEof`] when the host closed the connection; a frame that does
    /// not decode as a MAC-protected message is [`io::ErrorKind::InvalidData`].
    pub async fn recv(&mut self, wait: Duration) -> io::Result<Option<Reply>> {
        let Some(bytes) = self.recv_frame(wait).await? else {
            return Ok(None);
        };
        let received = MacProtected::decode(&bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if paycrypto::verify_retail_mac(&self.zak, received.mac_input(), &received.mac().0) {
            Ok(Some(Reply::Verified(received.into_verified())))
        } else {
            Ok(Some(Reply::BadMac))
        }
    }

    /// The next frame's message bytes, or `None` if none arrives within `wait`.
    ///
    /// # Errors
    /// As for [`Self::recv`].
    pub async fn recv_frame(&mut self, wait: Duration) -> io::Result<Option<Vec<u8>>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = [0u8; 4096];
        loop {
            match self.deframer.pop() {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await;
            match read {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(n)) => self.deframer.push(buf.get(..n).unwrap_or_default()),
                Ok(Err(e)) => return Err(e),
            }
        }
    }
}
