//! The plain (not enveloped) answers of the terminal protocol, and the envelope's own shape,
//! as types with the schemas `/openapi.json` publishes.

use serde_json::{Value, json};

use crate::domain::model::DeviceStatus;
use crate::reply;
use crate::wire::reply::{OneOf, Shape, ShownOnce, Time};

reply! {
    /// `POST /pos/bootstrap`.
    pub struct BootstrapReply<'a> {
        /// Always `ok`.
        pub status: &'a str,
        /// The server's clock.
        pub server_time: Time,
        /// Older apps must update before anything else.
        pub min_supported_version: &'a str,
    }
}

crate::enum_field! {
    /// The state of a device's latest pairing code.
    pub enum PairingCodeStatus {
        None = "none",
        Pending = "pending",
        Used = "used",
        Expired = "expired",
    }
}

reply! {
    /// `GET /pos/status`.
    pub struct StatusReply {
        /// Lifecycle state.
        pub device_status: OneOf<DeviceStatus>,
        /// Claimed or activated.
        pub is_claimed: bool,
        /// The latest pairing code's state.
        pub pairing_code_status: OneOf<PairingCodeStatus>,
    }
}

reply! {
    /// `POST /pos/pairing-code`.
    pub struct PairingCodeReply<'a> {
        /// Six characters to show on the screen.
        pub pairing_code: &'a str,
        /// Seconds it stays valid.
        pub expires_in_sec: i64,
    }
}

reply! {
    /// `POST /pos/claim`.
    pub struct ClaimReply<'a> {
        /// Always `claimed`.
        pub status: &'a str,
        /// The device.
        pub device_id: &'a str,
        /// Its terminal id.
        pub terminal_id: Option<&'a str>,
    }
}

reply! {
    /// `POST /pos/attest`.
    pub struct AttestReply<'a> {
        /// Always `attested`.
        pub status: &'a str,
        /// `att_…`, for `Authorization: Attestation …`.
        pub attestation_token: ShownOnce<'a>,
        /// Seconds it stays valid.
        pub expires_in_sec: i64,
    }
}

reply! {
    /// Which key set is delivered.
    pub struct KeySetInfo<'a> {
        /// `ks_…`.
        pub key_set_id: &'a str,
        /// Issued.
        pub issued_at: Time,
        /// Replaced by a new set after this.
        pub expires_at: Time,
    }
}

reply! {
    /// How the blocks are wrapped.
    pub struct Transport<'a> {
        /// Always `TR31`.
        pub format: &'a str,
        /// Always `AES-256`.
        pub encryption: &'a str,
        /// Always `kek`.
        pub wrapped_under: &'a str,
    }
}

reply! {
    /// One delivered key.
    pub struct DeliveredKey<'a> {
        /// The key's id.
        pub key_id: &'a str,
        /// The TR-31 block (version D), base64.
        pub key_block: String,
        /// What it is for.
        pub usage: &'a str,
        /// Its check value.
        pub kcv: String,
        /// The key it is wrapped under (`zmk`, `tmk` or `kek`).
        pub wrapped_under: &'a str,
    }
}

/// Keys by kind (`tmk`, `kek`, `msk`, `tpk`, `tdk`, `mac`).
#[derive(Debug)]
pub struct DeliveredKeys<'a>(pub Vec<(&'a str, DeliveredKey<'a>)>);

impl serde::Serialize for DeliveredKeys<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (*k, v)))
    }
}

impl Shape for DeliveredKeys<'_> {
    fn schema() -> Value {
        json!({"type": "object", "additionalProperties": DeliveredKey::schema()})
    }
}

reply! {
    /// `POST /pos/keys` (contract section 6).
    pub struct KeysReply<'a> {
        /// The set.
        pub key_set: KeySetInfo<'a>,
        /// How the blocks are wrapped.
        pub transport: Transport<'a>,
        /// The keys by kind.
        pub keys: DeliveredKeys<'a>,
    }
}

/// A sealed answer (contract section 5): one `TR31-DATA` envelope, or `TR31-DATA-CHUNKED`
/// pieces of a gzip stream.
pub fn envelope_schema() -> Value {
    let hex =
        |what: &str| json!({"type": "string", "pattern": "^([0-9A-F]{32})+$", "description": what});
    let iv = json!({"type": "string", "pattern": "^[0-9A-F]{32}$"});
    let kcv = json!({"type": "string", "pattern": "^[0-9A-F]{6}$"});
    json!({"oneOf": [
        {
            "type": "object",
            "required": ["format", "ciphertext", "initialization_vector", "mode", "key_kcv"],
            "properties": {
                "format": {"const": "TR31-DATA"},
                "ciphertext": hex("AES-CBC under the MSK"),
                "initialization_vector": iv,
                "mode": {"const": "CBC"},
                "key_kcv": kcv,
                "content_encoding": {"const": "gzip"},
            },
        },
        {
            "type": "object",
            "required": ["format", "content_encoding", "mode", "key_kcv", "chunks"],
            "properties": {
                "format": {"const": "TR31-DATA-CHUNKED"},
                "content_encoding": {"const": "gzip"},
                "mode": {"const": "CBC"},
                "key_kcv": kcv,
                "chunks": {"type": "array", "items": {
                    "type": "object",
                    "required": ["ciphertext", "initialization_vector", "mode"],
                    "properties": {
                        "ciphertext": hex("AES-CBC of one piece"),
                        "initialization_vector": iv,
                        "mode": {"const": "CBC"},
                    },
                }},
            },
        },
    ]})
}

/// A request envelope: the payload encrypted under the terminal's MSK.
pub fn request_envelope_schema(payload: Option<Value>) -> Value {
    let mut schema = json!({
        "type": "object",
        "required": ["format", "ciphertext", "initialization_vector", "mode"],
        "properties": {
            "format": {"const": "TR31-DATA"},
            "ciphertext": {"type": "string", "pattern": "^([0-9A-Fa-f]{32})+$"},
            "initialization_vector": {"type": "string", "pattern": "^[0-9A-Fa-f]{32}$"},
            "mode": {"const": "CBC"},
            "key_kcv": {"type": "string", "pattern": "^[0-9A-F]{6}$"},
            "content_encoding": {"const": "gzip"},
        },
    });
    if let (Some(p), Some(obj)) = (payload, schema.as_object_mut()) {
        obj.insert("x-viopay-payload".into(), p);
    }
    schema
}
