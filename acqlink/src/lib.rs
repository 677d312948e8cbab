//! The acquirer link's ISO 8583:1987 ASCII profile (normative spec `acquirer-link.md`,
//! sections 12.3 to 12.5), without I/O.
//!
//! - [`Message`]: an [`Mti`] of the profile, data elements ([`De`]) checked against the
//!   profile's format table when set, and an optional [`Mac`]. [`Message::encode`] and
//!   [`Message::decode`] are exact inverses; decoding is strict (see [`Error`] for every
//!   refusal) and never reads a length it has not bounded first.
//! - The MAC (12.5) covers every byte before the MAC field, which is the last field (DE 64, or
//!   DE 128 with a secondary bitmap). Sending: [`Message::encode_for_mac`] gives an
//!   [`Unsigned`] whose [`Unsigned::mac_input`] goes to keyd and whose [`Unsigned::with_mac`]
//!   takes keyd's answer. Receiving: [`MacProtected::decode`] shows the MTI, the MAC and
//!   [`MacProtected::mac_input`], and only [`MacProtected::into_verified`] hands over the fields.
//! - Framing (12.3): [`frame`] and the incremental [`Deframer`].
//! - The link's values: [`Stan`] and [`StanCounter`], [`rrn`], [`terminal_id`],
//!   [`pos_entry_mode`], [`original_data_elements`], [`currency_numeric`].
//!
//! ```
//! use acqlink::{De, Mac, MacProtected, Message, Mti};
//!
//! let echo = Message::new(Mti::NetworkRequest)
//!     .with(De::TransmissionDateTime, "1127093015")?
//!     .with(De::Stan, "17")?
//!     .with(De::NetworkCode, "301")?;
//! let unsigned = echo.encode_for_mac();
//! // keyd computes the retail MAC over this under the ZAK.
//! assert!(unsigned.mac_input().starts_with(b"08008220000000000000"));
//! let wire = acqlink::frame(&unsigned.with_mac(Mac([0xAB; 8])))?;
//!
//! let mut deframer = acqlink::Deframer::new();
//! deframer.push(&wire);
//! let bytes = deframer.pop()?.expect("a whole message");
//! let received = MacProtected::decode(&bytes)?;
//! // ... keyd verifies received.mac() over received.mac_input(), then:
//! let message = received.into_verified();
//! assert_eq!(message.get(De::Stan), Some("000017"));
//! # Ok::<(), acqlink::Error>(())
//! ```
//!
//! Values never appear in errors or in `Debug` output: DE 2 is a card number and DE 52 a PIN
//! block.

mod error;
mod field;
mod frame;
mod link;
mod message;
pub mod testcards;

pub use error::Error;
pub use field::De;
pub use frame::{Deframer, MAX_MESSAGE, frame};
pub use link::{
    BACKOFFICE_TERMINAL, EntryMode, Stan, StanCounter, currency_numeric, original_data_elements,
    pos_entry_mode, rrn, terminal_id,
};
pub use message::{Mac, MacProtected, Message, Mti, Unsigned, mac_input};
