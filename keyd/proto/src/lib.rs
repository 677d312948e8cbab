//! keyd's wire protocol.
//!
//! A sans-IO codec ([`frame`], [`codec`], [`message`]) that both keyd and its clients use, and,
//! with the `client` feature, an async [`Client`] over the Unix socket. Bodies are a fixed
//! sequence of big-endian fields per operation, defined in code one can read rather than by a
//! serialisation library's conventions; every decoder refuses truncated and trailing bytes and
//! checks lengths before allocating.
//!
//! What this crate does not do: any cryptography, any policy about who may call what (it only
//! names each operation's [`Group`]; keyd decides), any key storage.

#![cfg_attr(not(feature = "client"), no_std)]

extern crate alloc;

pub mod buffer;
#[cfg(feature = "client")]
mod client;
pub mod codec;
pub mod frame;
pub mod message;
#[cfg(feature = "client")]
pub mod outbox;

#[cfg(feature = "client")]
pub use client::{Client, ClientError};
pub use codec::{DecodeError, Secret};
pub use message::{Group, Message, Opcode, Operation, Status};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
