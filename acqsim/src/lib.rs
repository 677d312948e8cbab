//! `acqsim`: an acquirer host for the platform's ISO 8583 link (spec `acquirer-link.md`,
//! sections 12.3 to 12.7) to talk to in tests, demos and load runs.
//!
//! It is the other end of the link: it listens on TCP, reads 2-byte length-prefixed frames,
//! verifies each request's retail MAC under its ZAK (a request whose MAC fails is counted and
//! never answered), decides, and answers with its own MAC, possibly out of order.
//!
//! - `0200` → `0210`: contract section 8's outcome table by card and amount ([`cards`]),
//!   mapped to DE 39 as 12.6 reads it back (`00`, `05`, `51`, `54`, `91`); with DE 52, the
//!   PIN is checked the issuer's way (decipher format 0 under the ZPK, Visa PVV under the PVK
//!   with PVKI 1, compare to the card table): `55` when wrong or the card is not in the table,
//!   `75` on [`cards::PIN_BLOCKED_PAN`] or past an optional try limit. Refunds (DE 3 `200000`)
//!   are approved.
//! - `0400`/`0401` → `0410` `00`, recorded against the original DE 90 names; a repeat answers
//!   what the first got. [`Simulator::is_reversed`] tells a test whether a purchase was.
//! - `0800` → `0810` (`00` for DE 70 `301`).
//! - Faults ([`Faults`]): latency (all, or per STAN), answers withheld (per STAN, the next N,
//!   a fraction), wrong MACs (per STAN, the next N), connections closed (the next N requests, or
//!   all at once).
//!
//! It is a test double: it holds its keys in clear ([`Keys`]), keeps everything in memory, and
//! does not check dates, currencies, amounts against a balance or anything else a real issuer
//! would. It never logs or journals a PAN, a PIN block or a key, and every `Debug` redacts them.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! let sim = acqsim::Simulator::start_default().await?;
//! // ... point the platform's `iso8583` processor at sim.addr(), with the test ZPK and ZAK ...
//! sim.drop_next(1); // the next request goes unanswered
//! let reversed = sim
//!     .wait_until(Duration::from_secs(5), |s| s.is_reversed("633109000001"))
//!     .await;
//! # let _ = reversed;
//! # Ok(()) }
//! ```

pub mod cards;
pub mod client;
pub mod config;
pub mod faults;
mod host;
pub mod journal;
pub mod keys;
mod server;

pub use cards::{CardTable, PinCheck};
pub use config::{ConfigError, FileConfig};
pub use faults::Faults;
pub use journal::{Counters, Delivery, Entry, Reversal};
pub use keys::Keys;
pub use server::{Config, Simulator};
