//! TR-31 / ANSI X9.143 / ISO 20038 key blocks.
//!
//! A key block carries a symmetric (or asymmetric) key encrypted and authenticated under a key
//! block protection key (KBPK), together with a clear header that binds what the key may be used
//! for. This crate parses, opens (unwraps) and seals (wraps) key blocks of versions A, B, C, D
//! and E, and computes key check values.
//!
//! ```
//! use tr31::{Kbpk, Profile};
//!
//! // TR-31:2018 A.7.4: a TDES PIN key in a version D block under an AES-256 KBPK.
//! let kbpk = Kbpk::from_hex("88E1AB2A2E3DD38C1FA039A536500CC8A87AB9D62DC92C01058FA79F44657DE6")?;
//! let block = "D0112P0AE00E0000B82679114F470F540165EDFBF7E250FCEA43F810D215F8D207E2E417C07156A27E8E31DA05F7425509593D03A457DC34";
//! let opened = tr31::open(block, &kbpk, Profile::Strict)?;
//! assert_eq!(opened.key.to_hex().as_str(), "3F419E1CB7079442AA37474C2EFBF8B8");
//!
//! // Seal it again: random padding, key length hidden (X9.143 obfuscation).
//! let again = tr31::seal(
//!     &kbpk,
//!     &opened.header,
//!     &opened.key,
//!     &tr31::SealOptions::default(),
//!     tr31::Padding::Random(&mut tr31::OsRandom),
//! )?;
//! assert_eq!(tr31::open(&again, &kbpk, Profile::Strict)?.key.to_hex(), opened.key.to_hex());
//! # Ok::<(), tr31::Error>(())
//! ```
//!
//! What this crate does not do: any I/O, any key storage, or deciding which keys a caller may
//! export (beyond the block's own exportability in [`translate`]). It has no `unsafe` code and
//! never panics on input; every clear key and derived key lives in memory that is zeroized when
//! dropped.
//!
//! Secrets are types: [`Kbpk`] and [`Key`] have no `Clone`, print as "redacted" and compare in
//! constant time. Every failure of authentication is one detail-free [`Error::Authentication`].

#![no_std]
#![warn(clippy::std_instead_of_core, clippy::alloc_instead_of_core)]

extern crate alloc;

mod binding;
mod block;
mod error;
pub mod header;
mod hex;
pub mod kcv;
mod modes;
pub mod optional_block;
mod padding;
mod policy;
mod secret;

pub use block::{
    KeyBlock, Opened, SealOptions, obfuscated_len, open, seal, seal_external, translate,
};
pub use error::Error;
pub use header::{
    Algorithm, Exportability, Header, KeyContext, KeyUsage, KeyVersion, ModeOfUse, Version,
};
pub use optional_block::{BlockContent, BlockId, OptionalBlock};
#[cfg(feature = "getrandom")]
pub use padding::{BufferedOsRandom, OsRandom};
pub use padding::{Padding, PaddingSource};
pub use policy::Profile;
pub use secret::{ExternalKbpk, Kbpk, Key};
