//! The published test keys of the platform's simulators (spec 12.7): the embedded simulator's
//! ZPK and PVK, which keyd loads only on an officer's request (`keyd simulator-keys`), and the
//! acquirer host simulator's ZPK, ZAK and PVK. They are public, printed in the docs and the
//! tests; a key built from them protects nothing and must never carry a real cardholder's PIN.
//!
//! Double-length TDES, 32 hex digits, every byte of odd parity (as HSMs that check DES parity
//! want); their KCVs (TDES legacy) are in the comments and checked by a test.

/// The test ZPK (zone PIN key): the classic `0123456789ABCDEF` left half and its byte-reversed
/// right half. KCV `8B913F`.
pub const ZPK_HEX: &str = "0123456789ABCDEFEFCDAB8967452301";

/// The test ZAK (zone MAC key) of the acquirer link: the same bytes rotated. KCV `EB7A8D`.
pub const ZAK_HEX: &str = "89ABCDEF0123456776543210FEDCBA98";

/// The test PVK (PIN verification key): the key of the published psec Visa PVV vectors
/// (`paycrypto/tests/vectors.toml`, `[[pvv]]`), so the PVVs made under it are anchored to a
/// published answer. KCV `08D7B4`.
pub const PVK_HEX: &str = "0123456789ABCDEFFEDCBA9876543210";
