//! Operations: their opcodes, request and response bodies, and status codes.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::codec::{DecodeError, Field, Reader, Secret, Writer};

/// An operation code. A newtype with named constants, so an unknown code from a newer client
/// survives decoding and gets a clean "unsupported" answer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Opcode(pub u16);

/// An outcome code in a response. Append-only: numbers are never reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Status(pub u16);

impl Status {
    /// Success; the body is the operation's response.
    pub const OK: Self = Self(0);
    /// A MAC, a signature, a padding or a key lookup failed. One code for all of them, with no
    /// detail, so answers cannot be used as an oracle.
    pub const AUTH_FAILED: Self = Self(1);
    /// The request body is malformed or a field is out of range.
    pub const BAD_REQUEST: Self = Self(2);
    /// A named device, zone or key set does not exist (management operations only).
    pub const NOT_FOUND: Self = Self(3);
    /// The object already exists, or is in the wrong state.
    pub const CONFLICT: Self = Self(4);
    /// The peer's uid/gid may not call this operation.
    pub const FORBIDDEN: Self = Self(5);
    /// keyd does not know this opcode.
    pub const UNSUPPORTED: Self = Self(6);
    /// Something failed inside keyd; the log has the details (never key material).
    pub const INTERNAL: Self = Self(7);
    /// The HSM or the key store is not available.
    pub const UNAVAILABLE: Self = Self(8);
    /// The key's policy forbids the operation (e.g. exporting a non-exportable key).
    pub const POLICY: Self = Self(9);

    /// Name of the status for logs and errors.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "ok",
            1 => "authentication failed",
            2 => "bad request",
            3 => "not found",
            4 => "conflict",
            5 => "forbidden",
            6 => "unsupported operation",
            7 => "internal error",
            8 => "unavailable",
            9 => "refused by key policy",
            _ => "unknown status",
        }
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status({}, {})", self.0, self.name())
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which group of callers an operation belongs to; keyd's config maps peer uids/gids to groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Hello and ping: every connected peer.
    Session,
    /// Hot-path data operations: verify, envelopes, card data (the API).
    Data,
    /// Device and key-set management (the API, on behalf of merchants).
    Devices,
    /// Key ceremonies and key management (operators).
    Admin,
}

impl Group {
    /// Bit of this group in a permission mask.
    pub const fn bit(self) -> u32 {
        match self {
            Self::Session => 1,
            Self::Data => 2,
            Self::Devices => 4,
            Self::Admin => 8,
        }
    }
}

/// A message body.
pub trait Message: Sized {
    /// Appends the body.
    fn encode(&self, w: &mut Writer);
    /// Reads the body; every byte must be used.
    ///
    /// # Errors
    /// [`DecodeError`] for a malformed body.
    fn decode(body: &[u8]) -> Result<Self, DecodeError>;

    /// The encoded body.
    fn to_vec(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.into_inner()
    }
}

/// A request: its opcode, group, and the type of its successful response.
pub trait Operation: Message {
    /// The opcode.
    const OPCODE: Opcode;
    /// Who may call it.
    const GROUP: Group;
    /// The body of a successful answer.
    type Response: Message;
}

macro_rules! message {
    ($(#[$m:meta])* $name:ident { $( $(#[$fm:meta])* $field:ident : $ty:ty ),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, PartialEq)]
        #[allow(missing_docs, reason = "fields are named for what they carry; the type's doc says what the message does")]
        pub struct $name { $( $(#[$fm])* pub $field: $ty, )* }

        impl Message for $name {
            #[allow(unused_variables, reason = "empty messages have no fields")]
            fn encode(&self, w: &mut Writer) {
                $( Field::put(&self.$field, w); )*
            }
            #[allow(unused_mut, reason = "empty messages have no fields")]
            fn decode(body: &[u8]) -> Result<Self, DecodeError> {
                let mut r = Reader::new(body);
                let out = Self { $( $field: Field::get(&mut r)?, )* };
                r.finish()?;
                Ok(out)
            }
        }

        impl crate::codec::Element for $name {}

        impl Field for $name {
            const MIN_WIRE: usize = 0 $( + <$ty as Field>::MIN_WIRE )*;
            #[allow(unused_variables, reason = "empty messages have no fields")]
            fn put(&self, w: &mut Writer) {
                $( Field::put(&self.$field, w); )*
            }
            #[allow(unused_variables, reason = "empty messages have no fields")]
            fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Ok(Self { $( $field: Field::get(r)?, )* })
            }
        }
    };
}

/// A message with a borrowed twin: the message as [`message!`] makes it, and a view with the
/// same fields in the same order, each field written once with both its owned and its view
/// type (byte strings and strings as slices of the body, see [`crate::codec::View`]). The
/// view's `decode` accepts and refuses exactly the bodies the message's does; the message
/// lends itself as its view, so one service function serves both.
macro_rules! message_with_view {
    ($(#[$m:meta])* $owned:ident, read in place as $name:ident {
        $( $field:ident : $ty:ty => $vty:ty ),* $(,)?
    }) => {
        message! { $(#[$m])* $owned { $( $field: $ty ),* } }

        #[doc = concat!("[`", stringify!($owned), "`] read in place.")]
        #[derive(Debug, Clone, Copy, PartialEq)]
        #[allow(missing_docs, reason = "the fields are the owned message's")]
        pub struct $name<'a> { $( pub $field: $vty, )* }

        impl<'a> $name<'a> {
            /// Reads a body in place.
            ///
            /// # Errors
            /// [`DecodeError`] exactly where the owned message's decode fails.
            pub fn decode(body: &'a [u8]) -> Result<Self, DecodeError> {
                let mut r = Reader::new(body);
                let out = Self { $( $field: crate::codec::View::view(&mut r)?, )* };
                r.finish()?;
                Ok(out)
            }
        }

        impl $owned {
            /// This message as its borrowed view.
            pub fn view(&self) -> $name<'_> {
                $name { $( $field: crate::codec::Lend::lend(&self.$field), )* }
            }
        }
    };
}

macro_rules! operation {
    ($name:ident, $code:literal, $group:ident, $resp:ident) => {
        impl Operation for $name {
            const OPCODE: Opcode = Opcode($code);
            const GROUP: Group = Group::$group;
            type Response = $resp;
        }
    };
}

message! {
    /// Opens a conversation: the client's protocol version.
    Hello { client_version: u16 }
}
message! {
    /// keyd's protocol version and the groups this peer may call (bits of [`Group::bit`]).
    HelloResponse { server_version: u16, groups: u32 }
}
message! {
    /// Liveness check.
    Ping {}
}
message! {
    /// An empty successful answer.
    Empty {}
}

message! {
    /// Registers a device: makes its identity key (32 random bytes from the HSM) and records the
    /// key-injection zone whose ZMK protects its TMK.
    DeviceCreate { device_id: String, zone: String }
}
message! {
    /// A device identity key: the secret is returned this once and never again.
    IdentityKey { key_id: String, secret: Secret, kcv: [u8; 3] }
}
message! {
    /// Replaces a device's identity key; the old one stops verifying at once.
    IdentityRotate { device_id: String }
}
message! {
    /// Revokes every key set of a device (device disabled or re-enabled): its working keys stop
    /// working at once, grace period or not. The identity key is left alone.
    KeySetRevoke { device_id: String }
}
message! {
    /// Makes a new key set (TMK, KEK, MSK, TPK, TDK, MAC) for a device. The previous set's MAC
    /// key and MSK stay usable for the grace period.
    KeySetCreate { device_id: String }
}
message! {
    /// One key of a set, without key material.
    KeyInfo { kind: String, key_id: String, kcv: [u8; 3] }
}
message! {
    /// A key set's identity and its keys.
    KeySetInfo { key_set_id: String, created_at: u64, keys: Vec<KeyInfo> }
}
message! {
    /// Exports a key set as TR-31 version D blocks for delivery to the device: TMK under the
    /// zone's ZMK, KEK under the TMK, the working keys under the KEK. Padding is fresh each time.
    KeySetExport { device_id: String, key_set_id: String }
}
message! {
    /// One exported key.
    ExportedKey { kind: String, key_id: String, key_block: String, kcv: [u8; 3], wrapped_under: String }
}
message! {
    /// An exported key set.
    KeySetExportResponse { key_set_id: String, keys: Vec<ExportedKey> }
}

message! {
    /// Verifies an HMAC-SHA-256 signature made with a device identity key.
    AttestVerify { device_id: String, key_id: String, message: Vec<u8>, signature: [u8; 32] }
}
message! {
    /// One item of a batch verify: a MAC key id, the signed string and the signature.
    MacItem { key_id: String, message: Vec<u8>, signature: [u8; 32] }
}
message! {
    /// Verifies many terminal MAC signatures in one frame.
    MacVerifyBatch { items: Vec<MacItem> }
}
message! {
    /// One verdict per item, in order.
    MacVerifyBatchResponse { valid: Vec<bool> }
}
message! {
    /// Decrypts an MSK envelope (AES-256-CBC, PKCS#7).
    EnvelopeOpen { msk_key_id: String, iv: [u8; 16], ciphertext: Vec<u8> }
}
message! {
    /// Decrypted plaintext.
    Plaintext { plaintext: Secret }
}
message! {
    /// Encrypts a plaintext under an MSK with a fresh random IV.
    EnvelopeSeal { msk_key_id: String, plaintext: Secret }
}
message! {
    /// An encrypted envelope and the KCV of the MSK used.
    Sealed { iv: [u8; 16], ciphertext: Vec<u8>, kcv: [u8; 3] }
}
message_with_view! {
    /// A charge in one call: verify the terminal's HMAC over the string to sign, and only if it
    /// is valid, open the MSK envelope.
    ChargeOpen, read in place as ChargeOpenView {
        mac_key_id: String => &'a str,
        message: Vec<u8> => &'a [u8],
        signature: [u8; 32] => [u8; 32],
        msk_key_id: String => &'a str,
        iv: [u8; 16] => [u8; 16],
        ciphertext: Vec<u8> => &'a [u8],
    }
}
message! {
    /// Decrypts TDK-encrypted card data (AES-256-CBC, PKCS#7); also returns a keyed fingerprint
    /// (HMAC-SHA-256 under keyd's fingerprint key) of the plaintext's `pan` field for storage.
    CardDecrypt { tdk_key_id: String, iv: [u8; 16], ciphertext: Vec<u8> }
}
message! {
    /// The keyed fingerprint of a PAN the caller already holds (backoffice card entry), the same
    /// value [`CardDecrypt`] returns for card data, so one card has one fingerprint however it
    /// arrived.
    PanFingerprint { pan: Secret }
}
message! {
    /// A keyed fingerprint of a request that may hold card data (HMAC-SHA-256 under a key of
    /// its own, derived from the LMK), so the API can recognise a retried request without
    /// keeping anything from which the card could be guessed. The caller leaves sensitive
    /// authentication data (a CVC) out of `data`.
    RequestFingerprint { data: Secret }
}
message! {
    /// HMAC-SHA-256 under one of keyd's fingerprint keys.
    Fingerprint { value: [u8; 32] }
}
message! {
    /// Card plaintext and the PAN fingerprint.
    CardData { plaintext: Secret, pan_fingerprint: [u8; 32] }
}
message! {
    /// The KCV of a stored key.
    KeyCheck { key_id: String }
}
message! {
    /// A three-byte check value.
    CheckValue { kcv: [u8; 3] }
}

message! {
    /// Loads a zone's ZMK into the token from its clear value (until the ceremony front end
    /// forms it from components). Admin only.
    ZmkImport { zone: String, key: Secret }
}
message! {
    /// A zone and the KCV of its ZMK.
    ZoneInfo { zone: String, kcv: [u8; 3] }
}

message! {
    /// Re-wraps a TR-31 block from one zone's ZMK to another's, both held in the token. The
    /// key's exportability is honoured: `N` is refused, `E` and `S` go into a version D block
    /// with the same header. Admin only.
    Tr31Translate { from_zone: String, to_zone: String, key_block: String }
}
message! {
    /// A key block and the KCV of the key inside it.
    KeyBlockOut { key_block: String, kcv: [u8; 3] }
}
message! {
    /// Exports a stored key under a zone's ZMK as a version D block: device keys with their
    /// delivery header, imported keys with the header they came with. Only keys whose stored
    /// exportability allows it (identity keys never leave). Admin only.
    Tr31Export { key_id: String, zone: String }
}

message! {
    /// Imports a key delivered as a TR-31 block under a zone's ZMK (a partner's BDK, say) into
    /// keyd's store, wrapped under the LMK with its header. `label` is kept with the record.
    /// Admin only.
    Tr31Import { zone: String, key_block: String, label: String }
}
message! {
    /// An imported key's id and check value.
    ImportedKey { key_id: String, kcv: [u8; 3] }
}

message! {
    /// Revokes a device's identity key without a replacement (the device is disabled):
    /// attestation fails until an identity rotation issues a new one.
    IdentityRevoke { device_id: String }
}
message! {
    /// The chunked envelope of contract section 5: each piece (at most 4,096 bytes of the gzip
    /// stream) padded and encrypted alone under the MSK with its own random IV.
    EnvelopeSealChunks { msk_key_id: String, pieces: Vec<Secret> }
}
message! {
    /// One encrypted piece.
    SealedChunk { iv: [u8; 16], ciphertext: Vec<u8> }
}
message! {
    /// The encrypted pieces in order, and the KCV of the MSK.
    SealedChunks { chunks: Vec<SealedChunk>, kcv: [u8; 3] }
}
message! {
    /// Opens a chunked envelope: each piece decrypted and unpadded alone, concatenated in order.
    EnvelopeOpenChunks { msk_key_id: String, chunks: Vec<SealedChunk> }
}

message! {
    /// Translates a PIN block from one PIN key to another inside keyd (contract section 12.2):
    /// ISO 9564-1 format 4 under an AES key (a device's TPK), format 0 under a double-length
    /// TDES key (a ZPK imported from an acquirer). The PAN binds the block; neither the PIN nor
    /// a clear block ever leaves keyd. Every block that does not open is the one refusal
    /// `AUTH_FAILED`.
    PinTranslate { from_key_id: String, to_key_id: String, pan: Secret, pin_block: Vec<u8> }
}
message! {
    /// A PIN block under the destination key (16 bytes for format 4, 8 for format 0).
    PinBlock { pin_block: Vec<u8> }
}
message! {
    /// [`CardDecrypt`] and [`PinTranslate`] in one round trip (contract section 12.2): the
    /// card data decrypted under the TDK and the terminal's PIN block translated from its TPK
    /// to a zone PIN key, bound to the `pan` of that same card (so the PAN need not travel
    /// back). A card that does not open is refused as by [`CardDecrypt`].
    CardDecryptPin {
        tdk_key_id: String,
        iv: [u8; 16],
        ciphertext: Vec<u8>,
        tpk_key_id: String,
        zpk_key_id: String,
        pin_block: Vec<u8>,
    }
}
message! {
    /// What [`CardDecryptPin`] answers: [`CardData`]'s fields, and the translated PIN block,
    /// empty when the block did not translate (one answer for every reason).
    CardPinData { plaintext: Secret, pan_fingerprint: [u8; 32], pin_block: Vec<u8> }
}
message_with_view! {
    /// [`ChargeOpen`] and the card decrypt of `POST /pos/charge` in one round trip (contract
    /// sections 4, 5 and 8): verify the HMAC, open the envelope (gunzipped first when `gzip`),
    /// then read the `card` member (`data` and `iv`, hex) and any `pin_block` of the inner
    /// JSON and answer as [`CardDecrypt`] would for that card, or as [`CardDecryptPin`] when
    /// `tpk_key_id` and `zpk_key_id` are given and the charge carries a PIN block. keyd reads
    /// nothing else of the charge.
    ChargeOpenCard, read in place as ChargeOpenCardView {
        mac_key_id: String => &'a str,
        message: Vec<u8> => &'a [u8],
        signature: [u8; 32] => [u8; 32],
        msk_key_id: String => &'a str,
        iv: [u8; 16] => [u8; 16],
        ciphertext: Vec<u8> => &'a [u8],
        gzip: bool => bool,
        tdk_key_id: String => &'a str,
        tpk_key_id: String => &'a str,
        zpk_key_id: String => &'a str,
    }
}
message! {
    /// What [`ChargeOpenCard`] answers: the envelope's plaintext as [`ChargeOpen`] returns it
    /// (not gunzipped); and, when `card_opened`, the card as [`CardPinData`] has it (an empty
    /// `pin_block` when no PIN was asked for, none was sent, or it did not translate). A card
    /// that is absent, malformed or does not open leaves `card_opened` false and the rest
    /// empty: the caller reports it after its own checks of the body, through [`CardDecrypt`].
    ChargeCard {
        plaintext: Secret,
        card_opened: bool,
        card: Secret,
        pan_fingerprint: [u8; 32],
        pin_block: Vec<u8>,
    }
}
message! {
    /// ISO/IEC 9797-1 MAC algorithm 3 (the retail MAC, padding method 1) under a ZAK.
    RetailMac { key_id: String, message: Vec<u8> }
}
message! {
    /// An 8-byte MAC.
    MacValue { mac: [u8; 8] }
}
message! {
    /// Verifies a retail MAC under a ZAK: `AUTH_FAILED` when it does not match.
    RetailMacVerify { key_id: String, message: Vec<u8>, mac: [u8; 8] }
}
message! {
    /// AES-CMAC (NIST SP 800-38B, ISO/IEC 9797-1:2011 MAC algorithm 5) under a zone's AES MAC
    /// key (TR-31 usage `M6`, algorithm `A`): the MAC of zones that use AES, where
    /// [`RetailMac`] serves TDES ones. The whole 16 bytes; a zone that sends fewer sends the
    /// leftmost.
    AesCmac { key_id: String, message: Vec<u8> }
}
message! {
    /// A 16-byte AES-CMAC.
    CmacValue { mac: [u8; 16] }
}
message! {
    /// Verifies an AES-CMAC under a zone's AES MAC key: whole (16 bytes) or truncated to its
    /// leftmost 8 to 15 bytes; `AUTH_FAILED` when it does not match.
    AesCmacVerify { key_id: String, message: Vec<u8>, mac: Vec<u8> }
}
message! {
    /// One item of [`ZoneMacVerifyBatch`]: a zone MAC key id, the message and its MAC.
    ZoneMacItem { key_id: String, message: Vec<u8>, mac: Vec<u8> }
}
message! {
    /// Verifies many acquirer-zone MACs in one frame, like [`MacVerifyBatch`] for terminals'
    /// HMACs: each item by what its key is, the retail MAC (8 bytes) under a TDES `M3` key,
    /// AES-CMAC (8 to 16 bytes) under an AES `M6` key. Answers [`MacVerifyBatchResponse`]; an
    /// unknown or unfit key is that item's `false`.
    ZoneMacVerifyBatch { items: Vec<ZoneMacItem> }
}
message! {
    /// The Visa PVV of the PIN in a format 0 block under a ZPK, with a PVK (PVKI 1-6): what an
    /// issuer stores at PIN selection.
    PvvGenerate { pvk_key_id: String, zpk_key_id: String, pan: Secret, pin_block: [u8; 8], pvki: u8 }
}
message! {
    /// Four PVV digits (ASCII).
    PvvValue { pvv: [u8; 4] }
}
message! {
    /// Verifies the PIN in a format 0 block under a ZPK against a PVV (payShield `EC`, AWS
    /// `VerifyPinData`): `AUTH_FAILED` for a wrong PIN and for a block that does not open.
    PvvVerify { pvk_key_id: String, zpk_key_id: String, pan: Secret, pin_block: [u8; 8], pvki: u8, pvv: [u8; 4] }
}
message! {
    /// Seals a PAN for storage under a key of keyd's own (derived from the LMK, never leaving
    /// keyd): what the platform must keep to reverse or refund a charge on an acquirer link
    /// long after the request that carried the card (contract section 12.6), without holding
    /// the number in clear or any key. AES-256-CBC with a random IV, then HMAC-SHA-256 over IV
    /// and ciphertext (encrypt-then-MAC). `pan` is the PAN's digits, optionally followed by
    /// `=` and the card's expiry `YYMM` (track 2's layout), which a refund needs again.
    PanSeal { pan: Secret }
}
message! {
    /// A sealed PAN: IV, ciphertext and tag, opaque to the caller.
    SealedPan { sealed: Vec<u8> }
}
message! {
    /// Opens a PAN sealed by [`PanSeal`]; every blob that does not open is `AUTH_FAILED`.
    PanOpen { sealed: Vec<u8> }
}
message! {
    /// A PAN opened from its sealed form (with `=YYMM` if it was sealed so).
    PanValue { pan: Secret }
}

message! {
    /// Makes the signing secret of a webhook endpoint, for the API to show the merchant once.
    /// keyd draws the salt itself and never takes one from the caller: a secret is then only
    /// ever learnt at its creation, so "shown once" holds even against the API, which may
    /// afterwards only ask for signatures ([`WebhookSign`]). The secret is
    /// `whsec_` + base64url (no padding) of HMAC-SHA-256 under a key of keyd's own (kept
    /// like the fingerprint keys) over the endpoint id and the salt, so keyd stores nothing
    /// per endpoint; the caller keeps the salt.
    WebhookSecretCreate { endpoint_id: String }
}
message! {
    /// A new webhook signing secret (49 ASCII characters) and the salt that names it.
    WebhookSecret { salt: [u8; 16], secret: Secret }
}
message! {
    /// Signs a webhook delivery (`message` is `<t>.<raw body>` for a `Viopay-Signature`
    /// header) with the secrets of an endpoint named by their salts, 1 to 4 of them: more than
    /// one while a rotated secret overlaps the old one. Each MAC is HMAC-SHA-256 keyed with the
    /// whole secret string, `whsec_` prefix included, as merchants' Stripe libraries key it.
    WebhookSign { endpoint_id: String, salts: Vec<[u8; 16]>, message: Vec<u8> }
}
message! {
    /// One MAC per salt of [`WebhookSign`], in the same order.
    WebhookSignatures { macs: Vec<[u8; 32]> }
}
message! {
    /// The peppered step of a portal user's password check. The API stretches the password
    /// itself (PBKDF2-HMAC-SHA-256 under the user's salt: CPU work, no key) and sends the
    /// 32-byte result here; keyd answers HMAC-SHA-256 under a key of its own (kept like the
    /// fingerprint keys) over `"keyd portal password v1" 0x00 context 0x00 stretched`. The
    /// stored verifier is that MAC, so a copy of the API's database cannot be tested against
    /// guesses without keyd. `context` is the user id (1-64 of `[0-9A-Za-z_-]`), binding the
    /// verifier to its user; `stretched` must be exactly 32 bytes. It is a [`Secret`] because
    /// it stands one PBKDF2 away from the password.
    PasswordMac { context: String, stretched: Secret }
}
message! {
    /// The 32-byte verifier of [`PasswordMac`]. A [`Secret`] (wiped, redacted in `Debug`) like
    /// the stretched value it came from: it is what the API stores and compares, and has no
    /// business in a log.
    PasswordMacValue { mac: Secret }
}

operation!(Hello, 0x0001, Session, HelloResponse);
operation!(Ping, 0x0002, Session, Empty);
operation!(DeviceCreate, 0x0101, Devices, IdentityKey);
operation!(IdentityRotate, 0x0102, Devices, IdentityKey);
operation!(KeySetRevoke, 0x0103, Devices, Empty);
operation!(KeySetCreate, 0x0104, Devices, KeySetInfo);
operation!(KeySetExport, 0x0105, Devices, KeySetExportResponse);
operation!(IdentityRevoke, 0x0106, Devices, Empty);
operation!(AttestVerify, 0x0201, Data, Empty);
operation!(MacVerifyBatch, 0x0202, Data, MacVerifyBatchResponse);
operation!(EnvelopeOpen, 0x0203, Data, Plaintext);
operation!(EnvelopeSeal, 0x0204, Data, Sealed);
operation!(ChargeOpen, 0x0205, Data, Plaintext);
operation!(CardDecrypt, 0x0206, Data, CardData);
operation!(PanFingerprint, 0x020A, Data, Fingerprint);
operation!(RequestFingerprint, 0x020B, Data, Fingerprint);
operation!(KeyCheck, 0x0207, Data, CheckValue);
operation!(EnvelopeSealChunks, 0x0208, Data, SealedChunks);
operation!(EnvelopeOpenChunks, 0x0209, Data, Plaintext);
operation!(PinTranslate, 0x020C, Data, PinBlock);
operation!(RetailMac, 0x020D, Data, MacValue);
operation!(RetailMacVerify, 0x020E, Data, Empty);
operation!(PvvGenerate, 0x020F, Data, PvvValue);
operation!(PvvVerify, 0x0210, Data, Empty);
operation!(PanSeal, 0x0211, Data, SealedPan);
operation!(PanOpen, 0x0212, Data, PanValue);
operation!(CardDecryptPin, 0x0213, Data, CardPinData);
operation!(AesCmac, 0x0214, Data, CmacValue);
operation!(AesCmacVerify, 0x0215, Data, Empty);
operation!(ZoneMacVerifyBatch, 0x0216, Data, MacVerifyBatchResponse);
operation!(ChargeOpenCard, 0x0217, Data, ChargeCard);
operation!(WebhookSecretCreate, 0x0218, Data, WebhookSecret);
operation!(WebhookSign, 0x0219, Data, WebhookSignatures);
operation!(PasswordMac, 0x021A, Data, PasswordMacValue);
operation!(ZmkImport, 0x0301, Admin, ZoneInfo);
operation!(Tr31Translate, 0x0302, Admin, KeyBlockOut);
operation!(Tr31Export, 0x0303, Admin, KeyBlockOut);
operation!(Tr31Import, 0x0304, Admin, ImportedKey);

impl Opcode {
    /// The group of a known opcode, `None` for an unknown one.
    pub const fn group(self) -> Option<Group> {
        Some(match self.0 {
            0x0001 | 0x0002 => Group::Session,
            0x0101..=0x0106 => Group::Devices,
            0x0201..=0x021A => Group::Data,
            0x0301..=0x0304 => Group::Admin,
            _ => return None,
        })
    }
}

impl fmt::Debug for Opcode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Opcode({:#06x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_refuse_trailing_bytes() {
        let m = ChargeOpen {
            mac_key_id: "mac-1".into(),
            message: b"TID-000001\nmac-1\n...".to_vec(),
            signature: [7; 32],
            msk_key_id: "msk-1".into(),
            iv: [1; 16],
            ciphertext: vec![2; 32],
        };
        let body = m.to_vec();
        assert_eq!(ChargeOpen::decode(&body).unwrap(), m);
        let mut longer = body.clone();
        longer.push(0);
        assert_eq!(ChargeOpen::decode(&longer), Err(DecodeError::Trailing));
        assert_eq!(
            ChargeOpen::decode(&body[..body.len() - 1]),
            Err(DecodeError::Truncated)
        );
        assert_eq!(Empty::decode(&[]), Ok(Empty {}));
        let info = KeySetInfo {
            key_set_id: "ks-1".into(),
            created_at: 5,
            keys: vec![KeyInfo {
                kind: "msk".into(),
                key_id: "msk-1".into(),
                kcv: [1, 2, 3],
            }],
        };
        assert_eq!(KeySetInfo::decode(&info.to_vec()).unwrap(), info);
    }

    #[test]
    fn webhook_messages_round_trip() {
        let create = WebhookSecretCreate {
            endpoint_id: "we_01HXYZ".into(),
        };
        assert_eq!(
            WebhookSecretCreate::decode(&create.to_vec()).unwrap(),
            create
        );
        let secret = WebhookSecret {
            salt: [3; 16],
            secret: Secret::new(b"whsec_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"),
        };
        let body = secret.to_vec();
        assert_eq!(WebhookSecret::decode(&body).unwrap(), secret);
        assert_eq!(
            WebhookSecret::decode(&body[..body.len() - 1]),
            Err(DecodeError::Truncated)
        );
        let sign = WebhookSign {
            endpoint_id: "we_01HXYZ".into(),
            salts: vec![[1; 16], [2; 16]],
            message: b"1700000000.{\"id\":\"evt_1\"}".to_vec(),
        };
        let body = sign.to_vec();
        assert_eq!(WebhookSign::decode(&body).unwrap(), sign);
        // The salts are a count and then 16 bytes each, nothing else.
        assert_eq!(&body[13..17], &[0, 0, 0, 2]);
        assert_eq!(&body[17..49], &[[1u8; 16], [2; 16]].concat()[..]);
        let mut longer = body;
        longer.push(0);
        assert_eq!(WebhookSign::decode(&longer), Err(DecodeError::Trailing));
        let macs = WebhookSignatures {
            macs: vec![[7; 32], [8; 32], [9; 32]],
        };
        assert_eq!(WebhookSignatures::decode(&macs.to_vec()).unwrap(), macs);
        let empty = WebhookSignatures { macs: vec![] };
        assert_eq!(WebhookSignatures::decode(&empty.to_vec()).unwrap(), empty);
    }

    #[test]
    fn password_mac_messages_are_two_length_prefixed_fields_and_one() {
        let request = PasswordMac {
            context: "usr_1".into(),
            stretched: Secret::new(&[0xA5; 32]),
        };
        let body = request.to_vec();
        // The context (4-byte length, UTF-8), then the stretched value (4-byte length, bytes).
        assert_eq!(&body[..9], b"\0\0\0\x05usr_1");
        assert_eq!(&body[9..13], &[0, 0, 0, 32]);
        assert_eq!(&body[13..], &[0xA5; 32]);
        assert_eq!(PasswordMac::decode(&body).unwrap(), request);
        assert_eq!(
            PasswordMac::decode(&body[..body.len() - 1]),
            Err(DecodeError::Truncated)
        );
        // Any length decodes (keyd, not the codec, refuses all but 32 with a clean status).
        let short = PasswordMac {
            context: "usr_1".into(),
            stretched: Secret::new(&[0xA5; 31]),
        };
        assert_eq!(PasswordMac::decode(&short.to_vec()).unwrap(), short);
        let answer = PasswordMacValue {
            mac: Secret::new(&[0x5A; 32]),
        };
        let body = answer.to_vec();
        assert_eq!(body.len(), 36);
        assert_eq!(PasswordMacValue::decode(&body).unwrap(), answer);
        // Neither the stretched value nor the verifier shows in `Debug`.
        assert_eq!(
            format!("{request:?}"),
            "PasswordMac { context: \"usr_1\", stretched: Secret(32 bytes) }"
        );
        assert_eq!(
            format!("{answer:?}"),
            "PasswordMacValue { mac: Secret(32 bytes) }"
        );
    }

    #[test]
    fn every_operation_has_its_group() {
        fn check<O: Operation>() {
            assert_eq!(O::OPCODE.group(), Some(O::GROUP), "{:?}", O::OPCODE);
        }
        check::<Hello>();
        check::<Ping>();
        check::<DeviceCreate>();
        check::<IdentityRotate>();
        check::<KeySetRevoke>();
        check::<KeySetCreate>();
        check::<KeySetExport>();
        check::<AttestVerify>();
        check::<MacVerifyBatch>();
        check::<EnvelopeOpen>();
        check::<EnvelopeSeal>();
        check::<ChargeOpen>();
        check::<CardDecrypt>();
        check::<PanFingerprint>();
        check::<RequestFingerprint>();
        check::<KeyCheck>();
        check::<IdentityRevoke>();
        check::<EnvelopeSealChunks>();
        check::<EnvelopeOpenChunks>();
        check::<ZmkImport>();
        check::<Tr31Translate>();
        check::<Tr31Export>();
        check::<Tr31Import>();
        check::<PinTranslate>();
        check::<RetailMac>();
        check::<RetailMacVerify>();
        check::<PvvGenerate>();
        check::<PvvVerify>();
        check::<PanSeal>();
        check::<PanOpen>();
        check::<CardDecryptPin>();
        check::<AesCmac>();
        check::<AesCmacVerify>();
        check::<ZoneMacVerifyBatch>();
        check::<ChargeOpenCard>();
        check::<WebhookSecretCreate>();
        check::<WebhookSign>();
        check::<PasswordMac>();
        assert_eq!(Opcode(0x7777).group(), None);
    }

    /// Decodes `body` with the owned message and with its view; both must agree.
    fn same_reading(body: &[u8]) -> Result<(), proptest::test_runner::TestCaseError> {
        let owned = ChargeOpen::decode(body);
        let view = ChargeOpenView::decode(body);
        proptest::prop_assert_eq!(owned.as_ref().err(), view.as_ref().err());
        if let (Ok(owned), Ok(view)) = (&owned, &view) {
            proptest::prop_assert_eq!(owned.view(), *view);
        }
        let owned = ChargeOpenCard::decode(body);
        let view = ChargeOpenCardView::decode(body);
        proptest::prop_assert_eq!(owned.as_ref().err(), view.as_ref().err());
        if let (Ok(owned), Ok(view)) = (&owned, &view) {
            proptest::prop_assert_eq!(owned.view(), *view);
        }
        Ok(())
    }

    proptest::proptest! {
        /// Every encoded charge, cut short, lengthened or with a byte flipped, reads the same
        /// through the view as through the owned message: same fields, same refusal.
        #[test]
        fn views_read_exactly_what_the_owned_messages_read(
            ids in proptest::collection::vec("[a-z0-9-]{0,12}", 5),
            message in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            ciphertext in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            signature in proptest::array::uniform32(proptest::num::u8::ANY),
            iv in proptest::array::uniform16(proptest::num::u8::ANY),
            gzip in proptest::bool::ANY,
            cut in 0usize..400,
            flip in (0usize..400, 1u8..=255),
        ) {
            let open = ChargeOpen {
                mac_key_id: ids[0].clone(),
                message: message.clone(),
                signature,
                msk_key_id: ids[1].clone(),
                iv,
                ciphertext: ciphertext.clone(),
            };
            let card = ChargeOpenCard {
                mac_key_id: ids[0].clone(),
                message,
                signature,
                msk_key_id: ids[1].clone(),
                iv,
                ciphertext,
                gzip,
                tdk_key_id: ids[2].clone(),
                tpk_key_id: ids[3].clone(),
                zpk_key_id: ids[4].clone(),
            };
            for owned in [open.to_vec(), card.to_vec()] {
                same_reading(&owned)?;
                same_reading(&owned[..cut.min(owned.len())])?;
                let mut longer = owned.clone();
                longer.push(0);
                same_reading(&longer)?;
                let mut flipped = owned;
                if let Some(b) = flipped.get_mut(flip.0) {
                    *b ^= flip.1;
                }
                same_reading(&flipped)?;
            }
            let body = open.to_vec();
            let view = ChargeOpenView::decode(&body).map_err(|e| {
                proptest::test_runner::TestCaseError::fail(e.to_string())
            })?;
            proptest::prop_assert_eq!(view, open.view());
        }
    }
}
