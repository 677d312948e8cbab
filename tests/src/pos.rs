//! An independent POS terminal client, written from the platform contract (§1, §2, §4–§8) alone.
//!
//! A [`Terminal`] is one device: it sends the POS headers on every call, walks the lifecycle
//! (bootstrap → pairing code → status → attest → keys → config → terminal parameters →
//! activate), unwraps its key set from the ZMK down, opens and seals MSK envelopes, and makes
//! signed charge calls. Every call returns the raw [`Answer`] so tests can assert on status and
//! error code; on success the answer is parsed and the terminal keeps what it learned.
//!
//! The building blocks ([`Terminal::signed_request`], [`Terminal::envelope`], [`Overrides`], …)
//! are public so attack tests can send almost-right requests.
//!
//! Randomness (IVs, nonces) comes from the operating system's CSPRNG through `tr31::OsRandom`,
//! which the TR-31 library already exposes; this crate has no direct `getrandom` dependency.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{SystemTime, UNIX_EPOCH};

use aes::cipher::block_padding::Pkcs7;
use aes::cipher::{BlockModeDecrypt, KeyIvInit};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use crate::Error;
use crate::api::{Answer, Client};
use crate::device::{encrypt, hmac};

/// The most a gzip'd response plaintext may expand to here (a sanity bound for a test client;
/// the contract's 32 KiB limit applies to request envelopes, which the server checks).
const MAX_GUNZIP: usize = 16 * 1024 * 1024;

/// The largest piece of the gzip stream one chunk of a `TR31-DATA-CHUNKED` envelope may hold (§5).
pub const CHUNK_PIECE: usize = 4096;

/// The expiry every card blob made by [`Terminal::card_blob`] carries.
const EXP_MONTH: u32 = 12;
const EXP_YEAR: u32 = 2030;

/// Changes a test can make to a signed request (charge signature, or attest with
/// [`Terminal::attest_request`]). `None` leaves the terminal's own value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `X-Timestamp` exactly as sent (see [`timestamp_at`]).
    pub timestamp: Option<String>,
    /// `X-Nonce` exactly as sent.
    pub nonce: Option<String>,
    /// `X-Key-Id` (MAC key id for charges, identity key id for attest).
    pub key_id: Option<String>,
    /// `X-Terminal-Id` (charges).
    pub terminal_id: Option<String>,
    /// `X-Device-Id`; `Some("")` leaves the header out (charges only: it is optional there).
    pub device_id: Option<String>,
    /// The key the signature is made with instead of the terminal's (MAC key / identity secret).
    pub mac_key: Option<Vec<u8>>,
    /// The body actually sent, after the signature was computed over the real one.
    pub tamper_body: Option<Vec<u8>>,
    /// An `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
}

/// A key delivered by `POST /pos/keys`, unwrapped and checked.
#[derive(Clone)]
pub struct PosKey {
    /// The key's id (`msk-…`, `mac-…`, …).
    pub key_id: String,
    /// The KCV the server sent, which matched the one computed here (6 upper-case hex).
    pub kcv: String,
    /// The key it was wrapped under (`zmk`, `tmk`, `kek`).
    pub wrapped_under: String,
    key: Vec<u8>,
}

impl PosKey {
    /// The clear key (test data).
    pub fn bytes(&self) -> &[u8] {
        &self.key
    }
}

impl std::fmt::Debug for PosKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PosKey")
            .field("key_id", &self.key_id)
            .field("kcv", &self.kcv)
            .field("wrapped_under", &self.wrapped_under)
            .finish_non_exhaustive()
    }
}

/// One POS device, blocking.
#[derive(Clone)]
pub struct Terminal {
    client: Client,
    device_id: String,
    identity_key_id: String,
    identity_secret: Vec<u8>,
    version: String,
    zmk: Vec<u8>,
    key_set_id: Option<String>,
    keys: BTreeMap<String, PosKey>,
    terminal_id: Option<String>,
    attestation_token: Option<String>,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminal")
            .field("device_id", &self.device_id)
            .field("identity_key_id", &self.identity_key_id)
            .field("version", &self.version)
            .field("key_set_id", &self.key_set_id)
            .field("keys", &self.keys)
            .field("terminal_id", &self.terminal_id)
            .finish_non_exhaustive()
    }
}

impl Terminal {
    /// A terminal for a registered device, with its identity key (the base64 secret shown once
    /// at registration, 32 bytes) and the ZMK of its zone. App version `1.4.0`.
    ///
    /// # Errors
    /// If the secret is not standard base64 of 32 bytes.
    pub fn new(
        client: Client,
        device_id: &str,
        identity_key_id: &str,
        identity_secret_b64: &str,
        zmk: &[u8],
    ) -> Result<Self, Error> {
        let identity_secret = decode_identity_secret(identity_secret_b64)?;
        Ok(Self {
            client,
            device_id: device_id.to_owned(),
            identity_key_id: identity_key_id.to_owned(),
            identity_secret,
            version: "1.4.0".to_owned(),
            zmk: zmk.to_vec(),
            key_set_id: None,
            keys: BTreeMap::new(),
            terminal_id: None,
            attestation_token: None,
        })
    }

    /// Sends this terminal's requests to another API node from now on.
    pub fn set_client(&mut self, client: Client) {
        self.client = client;
    }

    /// The same terminal with another app version (`User-Agent: Viopay-POS/{v} (e2e)`).
    #[must_use]
    pub fn with_version(mut self, v: &str) -> Self {
        v.clone_into(&mut self.version);
        self
    }

    /// Replaces the identity key (after `…/identity-keys` issued a new one).
    ///
    /// # Errors
    /// If the secret is not standard base64 of 32 bytes.
    pub fn set_identity_key(&mut self, key_id: &str, secret_b64: &str) -> Result<(), Error> {
        self.identity_secret = decode_identity_secret(secret_b64)?;
        key_id.clone_into(&mut self.identity_key_id);
        Ok(())
    }

    // ----- lifecycle -----

    /// `POST /pos/bootstrap` with the activation headers.
    ///
    /// # Errors
    /// Transport failures.
    pub fn bootstrap(&mut self) -> Result<Answer, Error> {
        self.activation_request("POST", "/pos/bootstrap", b"")
    }

    /// `POST /pos/pairing-code` with the activation headers.
    ///
    /// # Errors
    /// Transport failures.
    pub fn pairing_code(&mut self) -> Result<Answer, Error> {
        self.activation_request("POST", "/pos/pairing-code", b"")
    }

    /// `GET /pos/status` with the activation headers.
    ///
    /// # Errors
    /// Transport failures.
    pub fn status(&mut self) -> Result<Answer, Error> {
        self.activation_request("GET", "/pos/status", b"")
    }

    /// `POST /pos/attest`, signed with the identity key (§4); keeps the attestation token.
    ///
    /// # Errors
    /// Transport failures, or a 200 whose token is missing or not of the contract's form.
    pub fn attest(&mut self) -> Result<Answer, Error> {
        let answer = self.attest_request(&Overrides::default())?;
        if answer.status == 200 {
            let token = answer
                .json
                .get("attestation_token")
                .and_then(Value::as_str)
                .ok_or("attest: no attestation_token in a 200 answer")?;
            let ok = token
                .strip_prefix("att_")
                .is_some_and(|r| r.len() >= 32 && r.bytes().all(|b| b.is_ascii_alphanumeric()));
            if !ok {
                return Err(format!("attest: malformed attestation token {token:?}").into());
            }
            self.attestation_token = Some(token.to_owned());
        }
        Ok(answer)
    }

    /// `POST /pos/keys`: unwraps every key block from the ZMK down (each under its own
    /// `wrapped_under`, strict profile), checks version, header and KCV of each, and keeps the
    /// keys.
    ///
    /// # Errors
    /// Transport failures; on a 200, any block that does not open or any header or KCV that is
    /// not the contract's.
    pub fn keys(&mut self) -> Result<Answer, Error> {
        let answer = self.attestation_request("POST", "/pos/keys", b"")?;
        if answer.status == 200 {
            self.install_keys(&answer.json)?;
        }
        Ok(answer)
    }

    /// `POST /pos/config` → the decrypted config (on 200); keeps `terminal.terminal_id`.
    ///
    /// # Errors
    /// Transport failures; a 200 whose envelope does not open.
    pub fn config(&mut self) -> Result<(Answer, Option<Value>), Error> {
        let answer = self.attestation_request("POST", "/pos/config", b"")?;
        let (answer, value) = self.opened(answer)?;
        if let Some(tid) = value
            .as_ref()
            .and_then(|v| v.pointer("/terminal/terminal_id"))
            .and_then(Value::as_str)
        {
            self.terminal_id = Some(tid.to_owned());
        }
        Ok((answer, value))
    }

    /// `POST /pos/terminal-parameters` → the decrypted parameters (single `TR31-DATA`, optionally
    /// gzip, or `TR31-DATA-CHUNKED`).
    ///
    /// # Errors
    /// Transport failures; a 200 whose envelope does not open.
    pub fn terminal_parameters(&mut self) -> Result<(Answer, Option<Value>), Error> {
        let answer = self.attestation_request("POST", "/pos/terminal-parameters", b"")?;
        self.opened(answer)
    }

    /// `POST /pos/activate` with `{"emv_ready":true,"keys_installed":true,"network_ok":true}`.
    ///
    /// # Errors
    /// As [`Terminal::activate_with`].
    pub fn activate(&mut self) -> Result<(Answer, Option<Value>), Error> {
        self.activate_with(&json!({"emv_ready": true, "keys_installed": true, "network_ok": true}))
    }

    /// `POST /pos/activate` with this inner JSON in an MSK envelope; keeps `terminal_id`.
    ///
    /// # Errors
    /// No MSK yet, transport failures, a 200 whose envelope does not open.
    pub fn activate_with(&mut self, inner: &Value) -> Result<(Answer, Option<Value>), Error> {
        let body = self.envelope(&serde_json::to_vec(inner)?, false)?;
        let answer = self.attestation_request("POST", "/pos/activate", &body)?;
        let (answer, value) = self.opened(answer)?;
        if let Some(tid) = value
            .as_ref()
            .and_then(|v| v.get("terminal_id"))
            .and_then(Value::as_str)
        {
            self.terminal_id = Some(tid.to_owned());
        }
        Ok((answer, value))
    }

    // ----- charges -----

    /// `POST /pos/charge`: `entry_mode` `chip`, the card under the TDK, optional reference.
    ///
    /// # Errors
    /// As [`Terminal::charge_with`].
    pub fn charge(
        &mut self,
        pan: &str,
        amount: u64,
        currency: &str,
        reference: Option<&str>,
    ) -> Result<(Answer, Option<Value>), Error> {
        let mut inner = json!({
            "amount": {"value": amount.to_string(), "currency": currency},
            "entry_mode": "chip",
            "card": self.card_blob(pan)?,
        });
        if let (Some(r), Some(obj)) = (reference, inner.as_object_mut()) {
            obj.insert("reference".to_owned(), Value::from(r));
        }
        self.charge_with(&inner, None)
    }

    /// `POST /pos/charge` with this inner JSON in an MSK envelope, signed; optional
    /// `Idempotency-Key`.
    ///
    /// # Errors
    /// No keys or terminal id yet, transport failures, a 200 whose envelope does not open.
    pub fn charge_with(
        &mut self,
        inner: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<(Answer, Option<Value>), Error> {
        let body = self.envelope(&serde_json::to_vec(inner)?, false)?;
        let overrides = Overrides {
            idempotency_key: idempotency_key.map(str::to_owned),
            ..Overrides::default()
        };
        let answer = self.signed_request("POST", "/pos/charge", &body, &overrides)?;
        self.opened(answer)
    }

    /// `POST /pos/heartbeat` with this inner JSON (`app_version`, `battery_pct`, `network`,
    /// `last_charge_id`) in an MSK envelope, signed.
    ///
    /// # Errors
    /// As [`Terminal::charge_with`].
    pub fn heartbeat(&mut self, inner: &Value) -> Result<(Answer, Option<Value>), Error> {
        self.enveloped_call("/pos/heartbeat", inner)
    }

    /// `POST /pos/update-check` for the app version `version`, enveloped and signed.
    ///
    /// # Errors
    /// As [`Terminal::charge_with`].
    pub fn update_check(&mut self, version: &str) -> Result<(Answer, Option<Value>), Error> {
        self.enveloped_call("/pos/update-check", &json!({"app_version": version}))
    }

    /// A signed POST of `inner` in an MSK envelope, its answer opened.
    fn enveloped_call(
        &mut self,
        path: &str,
        inner: &Value,
    ) -> Result<(Answer, Option<Value>), Error> {
        let body = self.envelope(&serde_json::to_vec(inner)?, false)?;
        let answer = self.signed_request("POST", path, &body, &Overrides::default())?;
        self.opened(answer)
    }

    /// `POST /pos/charge/{id}/refund` with `{"amount":{"value","currency"}?,"reason"?}`.
    ///
    /// # Errors
    /// As [`Terminal::refund_with`].
    pub fn refund(
        &mut self,
        charge_id: &str,
        amount: Option<(u64, &str)>,
        reason: Option<&str>,
    ) -> Result<(Answer, Option<Value>), Error> {
        let mut inner = Map::new();
        if let Some((value, currency)) = amount {
            inner.insert(
                "amount".to_owned(),
                json!({"value": value.to_string(), "currency": currency}),
            );
        }
        if let Some(r) = reason {
            inner.insert("reason".to_owned(), Value::from(r));
        }
        self.refund_with(charge_id, &Value::Object(inner), None)
    }

    /// `POST /pos/charge/{id}/refund` with this inner JSON in an MSK envelope, signed.
    ///
    /// # Errors
    /// No keys or terminal id yet, transport failures, a 200 whose envelope does not open.
    pub fn refund_with(
        &mut self,
        charge_id: &str,
        inner: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<(Answer, Option<Value>), Error> {
        let body = self.envelope(&serde_json::to_vec(inner)?, false)?;
        let overrides = Overrides {
            idempotency_key: idempotency_key.map(str::to_owned),
            ..Overrides::default()
        };
        let path = format!("/pos/charge/{charge_id}/refund");
        let answer = self.signed_request("POST", &path, &body, &overrides)?;
        self.opened(answer)
    }

    /// `POST /pos/charge/{id}/cancel`, empty body.
    ///
    /// # Errors
    /// No keys or terminal id yet, transport failures, a 200 whose envelope does not open.
    pub fn cancel(&mut self, charge_id: &str) -> Result<(Answer, Option<Value>), Error> {
        let path = format!("/pos/charge/{charge_id}/cancel");
        let answer = self.signed_request("POST", &path, b"", &Overrides::default())?;
        self.opened(answer)
    }

    /// `POST /pos/charge/{id}/reverse`, empty body.
    ///
    /// # Errors
    /// No keys or terminal id yet, transport failures, a 200 whose envelope does not open.
    pub fn reverse(&mut self, charge_id: &str) -> Result<(Answer, Option<Value>), Error> {
        let path = format!("/pos/charge/{charge_id}/reverse");
        let answer = self.signed_request("POST", &path, b"", &Overrides::default())?;
        self.opened(answer)
    }

    // ----- building blocks -----

    /// `{"data": HEX, "iv": HEX}`: `{"pan","exp_month":12,"exp_year":2030}` under the TDK.
    ///
    /// # Errors
    /// No TDK yet.
    pub fn card_blob(&self, pan: &str) -> Result<Value, Error> {
        self.encrypt_card(&json!({"pan": pan, "exp_month": EXP_MONTH, "exp_year": EXP_YEAR}))
    }

    /// `{"data": HEX, "iv": HEX}` of any card JSON under the TDK (AES-256-CBC, PKCS#7, fresh IV).
    ///
    /// # Errors
    /// No TDK yet.
    pub fn encrypt_card(&self, card: &Value) -> Result<Value, Error> {
        let tdk = self.key_bytes("tdk")?;
        let iv = random_bytes::<16>()?;
        let data = encrypt(tdk, &iv, &serde_json::to_vec(card)?)?;
        Ok(json!({"data": hex_upper(&data), "iv": hex_upper(&iv)}))
    }

    /// A `TR31-DATA` envelope (JSON bytes) of `inner` under the MSK: upper-case hex, fresh IV,
    /// `key_kcv` the MSK's KCV, gzip'd first (with `content_encoding`) if asked.
    ///
    /// # Errors
    /// No MSK yet.
    pub fn envelope(&self, inner: &[u8], gzip: bool) -> Result<Vec<u8>, Error> {
        let msk = self.key("msk").ok_or("no MSK: call keys() first")?;
        let compressed;
        let plaintext = if gzip {
            compressed = gzip_bytes(inner)?;
            compressed.as_slice()
        } else {
            inner
        };
        let iv = random_bytes::<16>()?;
        let ciphertext = encrypt(&msk.key, &iv, plaintext)?;
        let mut env = json!({
            "format": "TR31-DATA",
            "ciphertext": hex_upper(&ciphertext),
            "initialization_vector": hex_upper(&iv),
            "mode": "CBC",
            "key_kcv": msk.kcv,
        });
        if gzip && let Some(obj) = env.as_object_mut() {
            obj.insert("content_encoding".to_owned(), Value::from("gzip"));
        }
        Ok(serde_json::to_vec(&env)?)
    }

    /// Opens a response envelope (`TR31-DATA`, optionally gzip, or `TR31-DATA-CHUNKED`),
    /// requiring `key_kcv` to be this terminal's MSK KCV.
    ///
    /// # Errors
    /// No MSK yet, or anything about the envelope that is not the contract's.
    pub fn open_envelope(&self, body: &Value) -> Result<Value, Error> {
        let msk = self.key("msk").ok_or("no MSK: call keys() first")?;
        open_envelope_with(&msk.key, &msk.kcv, body)
    }

    /// A request with the charge signature (§4). `overrides` changes what a test wants changed;
    /// the signature is computed over `body`, and `overrides.tamper_body` (if any) is sent.
    ///
    /// # Errors
    /// No MAC key or terminal id (and no override for them), transport failures.
    pub fn signed_request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        overrides: &Overrides,
    ) -> Result<Answer, Error> {
        let headers = self.charge_headers(method, path, body, overrides, &now_timestamp()?)?;
        let sent = overrides.tamper_body.as_deref().unwrap_or(body);
        self.client.raw(method, path, &headers, sent)
    }

    /// `POST /pos/attest` with the attest signature (§4), changed as `overrides` says
    /// (`mac_key` replaces the identity secret; `terminal_id` is not used).
    ///
    /// # Errors
    /// Transport failures.
    pub fn attest_request(&self, overrides: &Overrides) -> Result<Answer, Error> {
        let headers = self.attest_headers(overrides, &now_timestamp()?)?;
        let body = overrides.tamper_body.as_deref().unwrap_or_default();
        self.client.raw("POST", "/pos/attest", &headers, body)
    }

    /// A request with `Authorization: Attestation att_…`, `X-Device-Id` and the POS headers.
    ///
    /// # Errors
    /// No attestation token yet, transport failures.
    pub fn attestation_request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Answer, Error> {
        let token = self
            .attestation_token
            .as_deref()
            .ok_or("no attestation token: call attest() first")?;
        let mut headers = self.pos_headers();
        headers.push(("Authorization".to_owned(), format!("Attestation {token}")));
        headers.push(("X-Device-Id".to_owned(), self.device_id.clone()));
        if !body.is_empty() {
            headers.push(("Content-Type".to_owned(), "application/json".to_owned()));
        }
        self.client.raw(method, path, &headers, body)
    }

    /// A request with the activation headers (`X-Device-Id` and the POS headers).
    ///
    /// # Errors
    /// Transport failures.
    pub fn activation_request(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Answer, Error> {
        let mut headers = self.pos_headers();
        headers.push(("X-Device-Id".to_owned(), self.device_id.clone()));
        if !body.is_empty() {
            headers.push(("Content-Type".to_owned(), "application/json".to_owned()));
        }
        self.client.raw(method, path, &headers, body)
    }

    /// `User-Agent: Viopay-POS/{version} (e2e)` and `X-Client-Type: pos`.
    pub fn pos_headers(&self) -> Vec<(String, String)> {
        vec![
            (
                "User-Agent".to_owned(),
                format!("Viopay-POS/{} (e2e)", self.version),
            ),
            ("X-Client-Type".to_owned(), "pos".to_owned()),
        ]
    }

    // ----- getters -----

    /// The device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The terminal id, once config or activate named it (or a test set it).
    pub fn terminal_id(&self) -> Option<&str> {
        self.terminal_id.as_deref()
    }

    /// Sets the terminal id (e.g. from the claim answer).
    pub fn set_terminal_id(&mut self, terminal_id: &str) {
        self.terminal_id = Some(terminal_id.to_owned());
    }

    /// The attestation token, once attested.
    pub fn attestation_token(&self) -> Option<&str> {
        self.attestation_token.as_deref()
    }

    /// Replaces (or forgets) the attestation token.
    pub fn set_attestation_token(&mut self, token: Option<&str>) {
        self.attestation_token = token.map(str::to_owned);
    }

    /// The key set id, once keys were delivered.
    pub fn key_set_id(&self) -> Option<&str> {
        self.key_set_id.as_deref()
    }

    /// A delivered key by name (`tmk`, `kek`, `msk`, `tpk`, `tdk`, `mac`).
    pub fn key(&self, kind: &str) -> Option<&PosKey> {
        self.keys.get(kind)
    }

    /// The MSK's KCV.
    pub fn msk_kcv(&self) -> Option<String> {
        self.key("msk").map(|k| k.kcv.clone())
    }

    /// The MAC key's id (sent as `X-Key-Id` on charges).
    pub fn mac_key_id(&self) -> Option<&str> {
        self.key("mac").map(|k| k.key_id.as_str())
    }

    /// The clear MSK (test data).
    pub fn msk(&self) -> Option<&[u8]> {
        self.key("msk").map(PosKey::bytes)
    }

    /// The clear MAC key (test data).
    pub fn mac_key(&self) -> Option<&[u8]> {
        self.key("mac").map(PosKey::bytes)
    }

    /// A PIN block as a terminal's PIN pad makes it (spec 12.2): ISO 9564-1 format 4 of `pin`
    /// bound to `pan`, under the delivered TPK, in hex; a fresh random fill each time.
    ///
    /// # Errors
    /// No TPK delivered yet, or a PIN or PAN that format 4 cannot carry.
    pub fn pin_block(&self, pin: &str, pan: &str) -> Result<String, Error> {
        let tpk = self.key("tpk").ok_or("no TPK delivered yet")?;
        let tpk = paycrypto::AesKey::new(tpk.bytes()).map_err(|e| format!("TPK: {e:?}"))?;
        let pin = paycrypto::Pin::new(pin).map_err(|e| format!("PIN: {e:?}"))?;
        let pan = paycrypto::Pan::new(pan).map_err(|e| format!("PAN: {e:?}"))?;
        let fill: [u8; 8] = random_bytes()?;
        let block = paycrypto::encipher_format4(&tpk, &pin, &pan, &fill);
        Ok(hex_upper(&block))
    }

    // ----- internals -----

    fn key_bytes(&self, kind: &str) -> Result<&[u8], Error> {
        self.key(kind)
            .map(PosKey::bytes)
            .ok_or_else(|| format!("no {kind} key: call keys() first").into())
    }

    /// On a 200, the opened envelope; otherwise the plain error body stays in the answer.
    fn opened(&self, answer: Answer) -> Result<(Answer, Option<Value>), Error> {
        if answer.status == 200 {
            let value = self.open_envelope(&answer.json)?;
            Ok((answer, Some(value)))
        } else {
            Ok((answer, None))
        }
    }

    fn attest_headers(
        &self,
        overrides: &Overrides,
        now: &str,
    ) -> Result<Vec<(String, String)>, Error> {
        let device_id = overrides.device_id.as_deref().unwrap_or(&self.device_id);
        let key_id = overrides.key_id.as_deref().unwrap_or(&self.identity_key_id);
        let timestamp = overrides.timestamp.as_deref().unwrap_or(now);
        let nonce = match &overrides.nonce {
            Some(n) => n.clone(),
            None => fresh_nonce()?,
        };
        let secret = overrides
            .mac_key
            .as_deref()
            .unwrap_or(&self.identity_secret);
        let signed = attest_string_to_sign(device_id, key_id, timestamp, &nonce);
        let mut headers = self.pos_headers();
        headers.extend([
            ("X-Device-Id".to_owned(), device_id.to_owned()),
            ("X-Key-Id".to_owned(), key_id.to_owned()),
            ("X-Timestamp".to_owned(), timestamp.to_owned()),
            ("X-Nonce".to_owned(), nonce),
            (
                "X-Signature".to_owned(),
                signature_header(secret, signed.as_bytes())?,
            ),
        ]);
        Ok(headers)
    }

    fn charge_headers(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        overrides: &Overrides,
        now: &str,
    ) -> Result<Vec<(String, String)>, Error> {
        let terminal_id = overrides
            .terminal_id
            .as_deref()
            .or(self.terminal_id.as_deref())
            .ok_or("no terminal id: call config() or set_terminal_id() first")?;
        let key_id = match (&overrides.key_id, self.mac_key_id()) {
            (Some(k), _) => k.as_str(),
            (None, Some(k)) => k,
            (None, None) => return Err("no MAC key: call keys() first".into()),
        };
        let mac_key = match &overrides.mac_key {
            Some(k) => k.as_slice(),
            None => self.key_bytes("mac")?,
        };
        let timestamp = overrides.timestamp.as_deref().unwrap_or(now);
        let nonce = match &overrides.nonce {
            Some(n) => n.clone(),
            None => fresh_nonce()?,
        };
        let signed_path = path.split('?').next().unwrap_or(path);
        let signed = charge_string_to_sign(
            terminal_id,
            key_id,
            timestamp,
            &nonce,
            method,
            signed_path,
            body,
        );
        let mut headers = self.pos_headers();
        headers.extend([
            ("X-Terminal-Id".to_owned(), terminal_id.to_owned()),
            ("X-Key-Id".to_owned(), key_id.to_owned()),
            ("X-Timestamp".to_owned(), timestamp.to_owned()),
            ("X-Nonce".to_owned(), nonce),
            (
                "X-Signature".to_owned(),
                signature_header(mac_key, &signed)?,
            ),
        ]);
        match overrides.device_id.as_deref() {
            Some("") => {}
            Some(d) => headers.push(("X-Device-Id".to_owned(), d.to_owned())),
            None => headers.push(("X-Device-Id".to_owned(), self.device_id.clone())),
        }
        if !body.is_empty() {
            headers.push(("Content-Type".to_owned(), "application/json".to_owned()));
        }
        if let Some(k) = &overrides.idempotency_key {
            headers.push(("Idempotency-Key".to_owned(), k.clone()));
        }
        Ok(headers)
    }

    /// Unwraps a `/pos/keys` answer (§6) and keeps the keys.
    fn install_keys(&mut self, answer: &Value) -> Result<(), Error> {
        let key_set_id = answer
            .pointer("/key_set/key_set_id")
            .and_then(Value::as_str)
            .ok_or("keys: no key_set.key_set_id")?;
        if !key_set_id.starts_with("ks-") {
            return Err(format!("keys: key set id {key_set_id:?} is not ks-…").into());
        }
        let delivered = answer
            .get("keys")
            .and_then(Value::as_object)
            .ok_or("keys: no keys object")?;
        let mut done: BTreeMap<String, PosKey> = BTreeMap::new();
        let mut pending: Vec<(&String, &Value)> = delivered.iter().collect();
        while !pending.is_empty() {
            let before = pending.len();
            let mut rest = Vec::new();
            for (name, entry) in pending {
                let parent_name = entry
                    .get("wrapped_under")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("keys: {name} has no wrapped_under"))?;
                let parent = if parent_name == "zmk" {
                    Some(self.zmk.as_slice())
                } else {
                    done.get(parent_name).map(PosKey::bytes)
                };
                match parent {
                    Some(p) => {
                        let key = open_delivered(name, entry, p)?;
                        done.insert(name.clone(), key);
                    }
                    None => rest.push((name, entry)),
                }
            }
            if rest.len() == before {
                let names: Vec<&str> = rest.iter().map(|(n, _)| n.as_str()).collect();
                return Err(format!("keys: no parent key to unwrap {names:?}").into());
            }
            pending = rest;
        }
        for required in ["tmk", "kek", "msk", "tpk", "tdk", "mac"] {
            if !done.contains_key(required) {
                return Err(format!("keys: no {required} key delivered").into());
            }
        }
        self.key_set_id = Some(key_set_id.to_owned());
        self.keys = done;
        Ok(())
    }
}

/// The header each delivered key must carry (§6): usage, algorithm, mode of use, key version,
/// exportability, key context; the optional blocks; and the `usage` word of the JSON.
fn expected_header(name: &str) -> Option<(&'static str, &'static [&'static str], &'static str)> {
    Some(match name {
        "tmk" | "kek" => ("K1AD00N0", &[], "key-encryption"),
        "msk" => ("D0AB00N0", &[], "data-encryption"),
        "tpk" => ("P0AE00N0", &[], "pin-encryption"),
        "tdk" => ("D0AE00N0", &[], "data-encryption"),
        "mac" => ("M7HC00N0", &["HM21", "PB"], "mac"),
        _ => return None,
    })
}

/// Opens one delivered key block under its parent and checks it against §6.
fn open_delivered(name: &str, entry: &Value, parent: &[u8]) -> Result<PosKey, Error> {
    let field = |f: &str| {
        entry
            .get(f)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("keys: {name} has no {f}"))
    };
    let key_id = field("key_id")?;
    let sent_kcv = field("kcv")?;
    let wrapped_under = field("wrapped_under")?;
    let usage_word = field("usage")?;
    let block = String::from_utf8(STANDARD.decode(field("key_block")?)?)?;
    let opened = tr31::open(&block, &tr31::Kbpk::new(parent)?, tr31::Profile::Strict)
        .map_err(|e| format!("keys: {name} block does not open under {wrapped_under}: {e}"))?;
    let h = &opened.header;
    if h.version != tr31::Version::D {
        return Err(format!("keys: {name} block is version {}, not D", h.version).into());
    }
    if let Some((fixed, blocks, word)) = expected_header(name) {
        let got = format!(
            "{}{}{}{}{}{}",
            h.key_usage.as_str(),
            h.algorithm.as_char(),
            h.mode_of_use.as_char(),
            h.key_version.as_str(),
            h.exportability.as_char(),
            h.key_context.as_char(),
        );
        if got != fixed {
            return Err(format!("keys: {name} header fields {got}, contract says {fixed}").into());
        }
        let got_blocks: Vec<String> = h
            .optional_blocks
            .iter()
            .map(|b| {
                let id = b.id();
                if id == tr31::BlockId::PB {
                    "PB".to_owned()
                } else {
                    format!("{}{}", id.as_str(), b.data())
                }
            })
            .collect();
        if got_blocks != *blocks {
            return Err(format!(
                "keys: {name} optional blocks {got_blocks:?}, contract says {blocks:?}"
            )
            .into());
        }
        if usage_word != word {
            return Err(
                format!("keys: {name} usage {usage_word:?}, contract says {word:?}").into(),
            );
        }
        if !key_id.starts_with(&format!("{name}-")) {
            return Err(format!("keys: {name} key id {key_id:?} is not {name}-…").into());
        }
    }
    let key = opened.key.expose_secret().to_vec();
    if key.len() != 32 {
        return Err(format!("keys: {name} is {} bytes, not 32", key.len()).into());
    }
    let kcv = tr31::kcv::for_algorithm(h.algorithm, &key)
        .ok_or_else(|| format!("keys: {name} has no KCV for its algorithm"))?;
    let kcv = hex_upper(&kcv);
    if kcv != sent_kcv {
        return Err(format!("keys: {name} KCV sent {sent_kcv}, computed {kcv}").into());
    }
    Ok(PosKey {
        key_id: key_id.to_owned(),
        kcv,
        wrapped_under: wrapped_under.to_owned(),
        key,
    })
}

/// Opens a response envelope under `msk` whose KCV is `kcv` (§5).
fn open_envelope_with(msk: &[u8], kcv: &str, body: &Value) -> Result<Value, Error> {
    let obj = body
        .as_object()
        .ok_or("envelope: body is not a JSON object")?;
    let text = |o: &Map<String, Value>, f: &str| -> Result<String, Error> {
        o.get(f)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("envelope: no {f}").into())
    };
    let sent_kcv = text(obj, "key_kcv")?;
    if sent_kcv != kcv {
        return Err(format!("envelope: key_kcv {sent_kcv}, our MSK is {kcv}").into());
    }
    if text(obj, "mode")? != "CBC" {
        return Err("envelope: mode is not CBC".into());
    }
    let encoding = obj.get("content_encoding");
    let gzip = match encoding {
        None => false,
        Some(Value::String(s)) if s == "gzip" => true,
        Some(other) => return Err(format!("envelope: content_encoding {other}").into()),
    };
    let piece = |o: &Map<String, Value>| -> Result<Vec<u8>, Error> {
        let iv = unhex(&text(o, "initialization_vector")?)?;
        if iv.len() != 16 {
            return Err("envelope: IV is not 16 bytes".into());
        }
        decrypt(msk, &iv, &unhex(&text(o, "ciphertext")?)?)
    };
    let plaintext = match text(obj, "format")?.as_str() {
        "TR31-DATA" => {
            let p = piece(obj)?;
            if gzip { gunzip(&p)? } else { p }
        }
        "TR31-DATA-CHUNKED" => {
            if !gzip {
                return Err("envelope: a chunked envelope without content_encoding gzip".into());
            }
            let chunks = obj
                .get("chunks")
                .and_then(Value::as_array)
                .filter(|c| !c.is_empty())
                .ok_or("envelope: no chunks")?;
            let mut stream = Vec::new();
            for chunk in chunks {
                let c = chunk
                    .as_object()
                    .ok_or("envelope: a chunk is not an object")?;
                if text(c, "mode")? != "CBC" {
                    return Err("envelope: a chunk's mode is not CBC".into());
                }
                let p = piece(c)?;
                if p.len() > CHUNK_PIECE {
                    return Err(format!("envelope: a piece of {} bytes", p.len()).into());
                }
                stream.extend_from_slice(&p);
            }
            gunzip(&stream)?
        }
        other => return Err(format!("envelope: format {other:?}").into()),
    };
    Ok(serde_json::from_slice(&plaintext)?)
}

/// The attest string to sign (§4), no trailing newline.
pub fn attest_string_to_sign(
    device_id: &str,
    key_id: &str,
    timestamp: &str,
    nonce: &str,
) -> String {
    format!("{device_id}\n{key_id}\n{timestamp}\n{nonce}")
}

/// The charge string to sign (§4): `path` without the query, `body` the exact bytes sent.
pub fn charge_string_to_sign(
    terminal_id: &str,
    key_id: &str,
    timestamp: &str,
    nonce: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Vec<u8> {
    let mut s =
        format!("{terminal_id}\n{key_id}\n{timestamp}\n{nonce}\n{method}\n{path}\n").into_bytes();
    s.extend_from_slice(body);
    s
}

/// `v1=` + standard base64 (with padding) of HMAC-SHA256(key, message).
///
/// # Errors
/// Never for real keys.
pub fn signature_header(key: &[u8], message: &[u8]) -> Result<String, Error> {
    Ok(format!("v1={}", STANDARD.encode(hmac(key, message)?)))
}

/// Seconds since the Unix epoch.
///
/// # Errors
/// If the clock is before 1970.
pub fn unix_now() -> Result<i64, Error> {
    Ok(i64::try_from(
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
    )?)
}

/// `X-Timestamp` for now: RFC 3339 UTC, whole seconds, `Z`.
///
/// # Errors
/// If the clock is before 1970.
pub fn now_timestamp() -> Result<String, Error> {
    Ok(timestamp_at(unix_now()?))
}

/// An `X-Timestamp` value for a Unix time: RFC 3339 UTC with `Z` and whole seconds
/// (`2025-12-13T14:25:30Z`), as §1 writes times and the reconstructed docs give this header.
pub fn timestamp_at(unix: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// A fresh `X-Nonce`: 24 random characters of `[A-Za-z0-9]`.
///
/// # Errors
/// If the OS random source fails.
pub fn fresh_nonce() -> Result<String, Error> {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(24);
    while out.len() < 24 {
        for b in random_bytes::<32>()? {
            // 248 = 4 × 62: reject the rest so every character is equally likely.
            if b < 248
                && out.len() < 24
                && let Some(c) = ALNUM.get(usize::from(b % 62))
            {
                out.push(char::from(*c));
            }
        }
    }
    Ok(out)
}

/// Random bytes from the OS CSPRNG (through the TR-31 library's padding source).
fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut out = [0u8; N];
    tr31::PaddingSource::fill(&mut tr31::OsRandom, &mut out)?;
    Ok(out)
}

fn decode_identity_secret(b64: &str) -> Result<Vec<u8>, Error> {
    let secret = STANDARD.decode(b64)?;
    if secret.len() != 32 {
        return Err(format!("identity secret is {} bytes, not 32", secret.len()).into());
    }
    Ok(secret)
}

/// Upper-case hex. (A `format!` per byte was a quarter of the load driver's CPU: every
/// simulated charge hex-encodes its card blob and envelope.)
pub fn hex_upper(bytes: &[u8]) -> String {
    hex::encode_upper(bytes)
}

/// Hex of either case; anything else is an error.
///
/// # Errors
/// Odd length or a non-hex character.
pub fn unhex(text: &str) -> Result<Vec<u8>, Error> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("not hex".into());
    }
    text.as_bytes()
        .chunks_exact(2)
        .map(|p| Ok(u8::from_str_radix(std::str::from_utf8(p)?, 16)?))
        .collect()
}

/// AES-256-CBC decryption with strict PKCS#7 unpadding.
///
/// # Errors
/// A wrong key or IV length, a ciphertext that is empty or not whole blocks, bad padding.
pub fn decrypt(key: &[u8], iv: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, Error> {
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(16) {
        return Err("ciphertext is not a non-zero number of blocks".into());
    }
    let mut out = vec![0u8; ciphertext.len()];
    let n = cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)?
        .decrypt_padded_b2b::<Pkcs7>(ciphertext, &mut out)
        .map_err(|_| "bad padding")?
        .len();
    out.truncate(n);
    Ok(out)
}

/// Gzip.
///
/// # Errors
/// Never in practice (in-memory writer).
pub fn gzip_bytes(data: &[u8]) -> Result<Vec<u8>, Error> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data)?;
    Ok(enc.finish()?)
}

/// Gunzip, bounded.
fn gunzip(data: &[u8]) -> Result<Vec<u8>, Error> {
    let limit = u64::try_from(MAX_GUNZIP)?.saturating_add(1);
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .take(limit)
        .read_to_end(&mut out)?;
    if out.len() > MAX_GUNZIP {
        return Err("gzip plaintext too large".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZMK: [u8; 32] = [0x5A; 32];

    #[allow(clippy::unwrap_used)]
    fn offline() -> Terminal {
        Terminal::new(
            Client::new(1),
            "POS-8F3A2C91",
            "idk-test",
            &STANDARD.encode([7u8; 32]),
            &ZMK,
        )
        .unwrap()
    }

    #[allow(clippy::unwrap_used)]
    fn seal(kbpk: &[u8], header: &tr31::Header, key: &[u8]) -> String {
        tr31::seal(
            &tr31::Kbpk::new(kbpk).unwrap(),
            header,
            &tr31::Key::new(key).unwrap(),
            &tr31::SealOptions::default(),
            tr31::Padding::Random(&mut tr31::OsRandom),
        )
        .unwrap()
    }

    fn header(usage: &[u8; 2], alg: u8, mode: u8) -> tr31::Header {
        tr31::Header::new(
            tr31::Version::D,
            tr31::KeyUsage::from_bytes(*usage),
            tr31::Algorithm::from_byte(alg),
            tr31::ModeOfUse::from_byte(mode),
            tr31::Exportability::NON_EXPORTABLE,
        )
    }

    /// A `/pos/keys` answer as §6 shows it, sealed under [`ZMK`]; `patch` may change it.
    #[allow(clippy::unwrap_used, clippy::indexing_slicing)]
    fn key_set_answer(patch: impl FnOnce(&mut Value)) -> Value {
        let tmk = [0x11u8; 32];
        let kek = [0x22u8; 32];
        let mut mac_header = header(b"M7", b'H', b'C');
        mac_header
            .optional_blocks
            .push(tr31::OptionalBlock::new(tr31::BlockId::HM, "21").unwrap());
        let aes_kcv = |k: &[u8]| hex_upper(&tr31::kcv::cmac_aes(k).unwrap()[..3]);
        let entry = |id: &str, block: String, usage: &str, kcv: String, under: &str| {
            json!({"key_id": id, "key_block": STANDARD.encode(block), "usage": usage,
                   "kcv": kcv, "wrapped_under": under})
        };
        let mut v = json!({
            "key_set": {"key_set_id": "ks-1", "issued_at": "2026-01-01T00:00:00Z",
                        "expires_at": "2027-01-01T00:00:00Z"},
            "transport": {"format": "TR31", "encryption": "AES-256", "wrapped_under": "kek"},
            "keys": {
                // Working keys first: the client must not depend on the order.
                "mac": entry("mac-1", seal(&kek, &mac_header, &[0x66; 32]), "mac",
                             hex_upper(&tr31::kcv::hmac_sha256(&[0x66; 32])), "kek"),
                "msk": entry("msk-1", seal(&kek, &header(b"D0", b'A', b'B'), &[0x33; 32]),
                             "data-encryption", aes_kcv(&[0x33; 32]), "kek"),
                "tpk": entry("tpk-1", seal(&kek, &header(b"P0", b'A', b'E'), &[0x44; 32]),
                             "pin-encryption", aes_kcv(&[0x44; 32]), "kek"),
                "tdk": entry("tdk-1", seal(&kek, &header(b"D0", b'A', b'E'), &[0x55; 32]),
                             "data-encryption", aes_kcv(&[0x55; 32]), "kek"),
                "kek": entry("kek-1", seal(&tmk, &header(b"K1", b'A', b'D'), &kek),
                             "key-encryption", aes_kcv(&kek), "tmk"),
                "tmk": entry("tmk-1", seal(&ZMK, &header(b"K1", b'A', b'D'), &tmk),
                             "key-encryption", aes_kcv(&tmk), "zmk"),
            }
        });
        patch(&mut v);
        v
    }

    #[allow(clippy::unwrap_used)]
    fn keyed() -> Terminal {
        let mut t = offline();
        t.install_keys(&key_set_answer(|_| {})).unwrap();
        t
    }

    #[test]
    fn key_set_unwraps_from_the_zmk_down() {
        let t = keyed();
        assert_eq!(t.key_set_id(), Some("ks-1"));
        assert_eq!(t.msk(), Some(&[0x33u8; 32][..]));
        assert_eq!(t.mac_key(), Some(&[0x66u8; 32][..]));
        assert_eq!(t.key("tdk").unwrap().bytes(), &[0x55u8; 32]);
        assert_eq!(t.key("kek").unwrap().wrapped_under, "tmk");
        assert_eq!(t.mac_key_id(), Some("mac-1"));
        // KCVs computed independently (Python `cryptography` AES-CMAC, `hmac` HMAC-SHA256).
        assert_eq!(t.msk_kcv().as_deref(), Some("4954E6"));
        assert_eq!(t.key("mac").unwrap().kcv, "A8F407");
        let kcv = t.msk_kcv().unwrap();
        assert_eq!(kcv.len(), 6);
        assert!(
            kcv.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
        );
        // The debug form shows no key bytes.
        assert!(!format!("{t:?}").contains("51, 51"));
    }

    #[test]
    fn key_set_refuses_a_wrong_kcv_zmk_header_or_missing_parent() {
        let mut t = offline();
        let bad_kcv = key_set_answer(|v| v["keys"]["tdk"]["kcv"] = json!("000000"));
        let e = t.install_keys(&bad_kcv).unwrap_err().to_string();
        assert!(e.contains("tdk KCV"), "{e}");
        assert!(t.key("msk").is_none(), "nothing kept from a failed set");

        let mut other_zmk = Terminal::new(
            Client::new(1),
            "POS-8F3A2C91",
            "idk-test",
            &STANDARD.encode([7u8; 32]),
            &[0x5B; 32],
        )
        .unwrap();
        assert!(other_zmk.install_keys(&key_set_answer(|_| {})).is_err());

        let swapped = key_set_answer(|v| {
            let msk = v["keys"]["msk"].clone();
            v["keys"]["tdk"]["key_block"] = msk["key_block"].clone();
            v["keys"]["tdk"]["kcv"] = msk["kcv"].clone();
        });
        let e = t.install_keys(&swapped).unwrap_err().to_string();
        assert!(e.contains("header fields"), "{e}");

        let orphan = key_set_answer(|v| v["keys"]["msk"]["wrapped_under"] = json!("tpk2"));
        assert!(t.install_keys(&orphan).is_err());

        let missing = key_set_answer(|v| {
            v["keys"].as_object_mut().unwrap().remove("tpk");
        });
        assert!(t.install_keys(&missing).is_err());
    }

    #[test]
    fn envelope_round_trip_single_and_gzip() {
        let t = keyed();
        let inner = br#"{"emv_ready":true,"keys_installed":true,"network_ok":true}"#;
        for gzip in [false, true] {
            let bytes = t.envelope(inner, gzip).unwrap();
            let env: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(env["format"], "TR31-DATA");
            assert_eq!(env["mode"], "CBC");
            assert_eq!(env["key_kcv"], t.msk_kcv().unwrap().as_str());
            let iv = env["initialization_vector"].as_str().unwrap();
            let ct = env["ciphertext"].as_str().unwrap();
            assert_eq!(iv.len(), 32);
            for h in [iv, ct] {
                assert!(
                    h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
                );
            }
            assert_eq!(env.get("content_encoding").is_some(), gzip);
            let opened = t.open_envelope(&env).unwrap();
            assert_eq!(opened, serde_json::from_slice::<Value>(inner).unwrap());
            // Lower-case hex is accepted on receipt.
            let mut lower = env.clone();
            lower["ciphertext"] = json!(ct.to_ascii_lowercase());
            assert_eq!(t.open_envelope(&lower).unwrap(), opened);
        }
        // Fresh IV every time.
        let a: Value = serde_json::from_slice(&t.envelope(inner, false).unwrap()).unwrap();
        let b: Value = serde_json::from_slice(&t.envelope(inner, false).unwrap()).unwrap();
        assert_ne!(a["initialization_vector"], b["initialization_vector"]);
    }

    #[test]
    fn envelope_refuses_wrong_kcv_format_or_tampering() {
        let t = keyed();
        let env: Value = serde_json::from_slice(&t.envelope(b"{}", false).unwrap()).unwrap();
        let mut bad = env.clone();
        bad["key_kcv"] = json!("ABCDEF");
        assert!(t.open_envelope(&bad).is_err());
        let mut bad = env.clone();
        bad.as_object_mut().unwrap().remove("key_kcv");
        assert!(t.open_envelope(&bad).is_err());
        let mut bad = env.clone();
        bad["format"] = json!("TR31-DATA-X");
        assert!(t.open_envelope(&bad).is_err());
        let mut bad = env.clone();
        bad["mode"] = json!("ECB");
        assert!(t.open_envelope(&bad).is_err());
        let mut bad = env.clone();
        bad["ciphertext"] = json!("00");
        assert!(t.open_envelope(&bad).is_err());
        let mut bad = env;
        bad["initialization_vector"] = json!("00112233");
        assert!(t.open_envelope(&bad).is_err());
    }

    #[test]
    fn chunked_envelope_assembled_by_hand() {
        let t = keyed();
        let msk = t.msk().unwrap();
        // Enough incompressible-ish data that the gzip needs several pieces.
        let mut entries = Vec::new();
        for i in 0u32..3000 {
            entries.push(json!({"i": i, "h": hex_upper(&hmac(&[1], &i.to_be_bytes()).unwrap())}));
        }
        let params = json!({"acquirers": [], "ca_public_keys": entries, "emv_kernels": {},
                            "contactless": {}});
        let gz = gzip_bytes(&serde_json::to_vec(&params).unwrap()).unwrap();
        assert!(gz.len() > 2 * CHUNK_PIECE);
        let chunks: Vec<Value> = gz
            .chunks(CHUNK_PIECE)
            .map(|piece| {
                let iv = random_bytes::<16>().unwrap();
                json!({"ciphertext": hex_upper(&encrypt(msk, &iv, piece).unwrap()),
                       "initialization_vector": hex_upper(&iv), "mode": "CBC"})
            })
            .collect();
        let env = json!({"format": "TR31-DATA-CHUNKED", "content_encoding": "gzip", "mode": "CBC",
                         "key_kcv": t.msk_kcv().unwrap(), "chunks": chunks});
        assert_eq!(t.open_envelope(&env).unwrap(), params);

        // Out of order → the gzip stream is broken.
        let mut swapped = env;
        swapped["chunks"].as_array_mut().unwrap().swap(0, 1);
        assert!(t.open_envelope(&swapped).is_err());
        // A piece over 4096 bytes is not the contract's.
        let iv = [9u8; 16];
        let big = json!({"format": "TR31-DATA-CHUNKED", "content_encoding": "gzip", "mode": "CBC",
                         "key_kcv": t.msk_kcv().unwrap(), "chunks": [{
                             "ciphertext": hex_upper(&encrypt(msk, &iv, &gz).unwrap()),
                             "initialization_vector": hex_upper(&iv), "mode": "CBC"}]});
        assert!(t.open_envelope(&big).is_err());
    }

    #[test]
    fn attest_string_and_signature_match_literals() {
        let s = attest_string_to_sign(
            "POS-8F3A2C91",
            "device-id-key-2025-01",
            "2025-12-13T14:25:30Z",
            "a1b2c3d4e5f6",
        );
        assert_eq!(
            s,
            "POS-8F3A2C91\ndevice-id-key-2025-01\n2025-12-13T14:25:30Z\na1b2c3d4e5f6"
        );
        assert_eq!(
            signature_header(b"example-device-identity-secret", s.as_bytes()).unwrap(),
            "v1=U00qD7P7jX6dsEYqrCizvO4HXvP+RfSIg3Zu9cFe14M="
        );
    }

    #[test]
    fn charge_string_to_sign_for_an_empty_body_ends_in_newline() {
        let s = charge_string_to_sign(
            "TID-004812",
            "mac-1",
            "2025-12-13T14:25:30Z",
            "abcdefABCDEF12",
            "POST",
            "/pos/charge/ch_X/cancel",
            b"",
        );
        assert_eq!(
            s,
            b"TID-004812\nmac-1\n2025-12-13T14:25:30Z\nabcdefABCDEF12\nPOST\n/pos/charge/ch_X/cancel\n"
        );
        let key: Vec<u8> = (0u8..32).collect();
        assert_eq!(
            signature_header(&key, &s).unwrap(),
            "v1=vAPNB2lpp86ea5uIVCZTR8t2ENQUS4UluiLfNOlNBB4="
        );
        let with_body = charge_string_to_sign("T", "K", "S", "N", "POST", "/pos/charge", b"{}");
        assert_eq!(with_body, b"T\nK\nS\nN\nPOST\n/pos/charge\n{}");
    }

    fn get<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn charge_headers_are_signed_over_path_without_query() {
        let mut t = keyed().with_version("2.10.3");
        t.set_terminal_id("TID-004812");
        let body = t.envelope(b"{}", false).unwrap();
        let h = t
            .charge_headers(
                "POST",
                "/pos/charge?x=1",
                &body,
                &Overrides::default(),
                "2025-12-13T14:25:30Z",
            )
            .unwrap();
        assert_eq!(get(&h, "User-Agent"), Some("Viopay-POS/2.10.3 (e2e)"));
        assert_eq!(get(&h, "X-Client-Type"), Some("pos"));
        assert_eq!(get(&h, "X-Terminal-Id"), Some("TID-004812"));
        assert_eq!(get(&h, "X-Key-Id"), Some("mac-1"));
        assert_eq!(get(&h, "X-Timestamp"), Some("2025-12-13T14:25:30Z"));
        assert_eq!(get(&h, "X-Device-Id"), Some("POS-8F3A2C91"));
        assert_eq!(get(&h, "Content-Type"), Some("application/json"));
        assert_eq!(get(&h, "Idempotency-Key"), None);
        let nonce = get(&h, "X-Nonce").unwrap();
        let want = charge_string_to_sign(
            "TID-004812",
            "mac-1",
            "2025-12-13T14:25:30Z",
            nonce,
            "POST",
            "/pos/charge",
            &body,
        );
        let sig = get(&h, "X-Signature").unwrap();
        assert_eq!(sig, signature_header(&[0x66; 32], &want).unwrap());
        assert_eq!(sig.len(), 3 + 44);

        // Overrides replace what they name; an empty device id leaves the header out.
        let o = Overrides {
            timestamp: Some("1999-01-01T00:00:00Z".into()),
            nonce: Some("NONCENONCE12".into()),
            key_id: Some("mac-other".into()),
            terminal_id: Some("TID-000001".into()),
            device_id: Some(String::new()),
            mac_key: Some(vec![1; 32]),
            tamper_body: None,
            idempotency_key: Some("idem-1".into()),
        };
        let h = t
            .charge_headers("POST", "/pos/charge/ch_1/cancel", b"", &o, "x")
            .unwrap();
        assert_eq!(get(&h, "X-Device-Id"), None);
        assert_eq!(get(&h, "Content-Type"), None);
        assert_eq!(get(&h, "Idempotency-Key"), Some("idem-1"));
        let want = b"TID-000001\nmac-other\n1999-01-01T00:00:00Z\nNONCENONCE12\nPOST\n/pos/charge/ch_1/cancel\n";
        assert_eq!(
            get(&h, "X-Signature"),
            Some(signature_header(&[1; 32], want).unwrap().as_str())
        );
    }

    #[test]
    fn attest_headers_use_the_identity_key() {
        let t = offline();
        let h = t
            .attest_headers(&Overrides::default(), "2025-12-13T14:25:30Z")
            .unwrap();
        assert_eq!(get(&h, "X-Device-Id"), Some("POS-8F3A2C91"));
        assert_eq!(get(&h, "X-Key-Id"), Some("idk-test"));
        assert_eq!(get(&h, "User-Agent"), Some("Viopay-POS/1.4.0 (e2e)"));
        let nonce = get(&h, "X-Nonce").unwrap();
        let s = attest_string_to_sign("POS-8F3A2C91", "idk-test", "2025-12-13T14:25:30Z", nonce);
        assert_eq!(
            get(&h, "X-Signature"),
            Some(signature_header(&[7; 32], s.as_bytes()).unwrap().as_str())
        );
    }

    #[test]
    fn calls_needing_state_fail_before_sending() {
        let t = offline();
        assert!(t.envelope(b"{}", false).is_err());
        assert!(t.card_blob("4242424242424242").is_err());
        assert!(t.attestation_request("POST", "/pos/keys", b"").is_err());
        let k = keyed();
        // Keys but no terminal id.
        assert!(
            k.charge_headers("POST", "/pos/charge", b"", &Overrides::default(), "x")
                .is_err()
        );
        assert!(
            Terminal::new(Client::new(1), "POS-8F3A2C91", "idk", "AAAA", &ZMK).is_err(),
            "a 3-byte identity secret is refused"
        );
    }

    #[test]
    fn card_blob_decrypts_under_the_tdk() {
        let t = keyed();
        let blob = t.card_blob("4242424242424242").unwrap();
        let iv = unhex(blob["iv"].as_str().unwrap()).unwrap();
        assert_eq!(iv.len(), 16);
        let plain = decrypt(
            &[0x55; 32],
            &iv,
            &unhex(blob["data"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        let card: Value = serde_json::from_slice(&plain).unwrap();
        assert_eq!(
            card,
            json!({"pan": "4242424242424242", "exp_month": 12, "exp_year": 2030})
        );
    }

    #[test]
    fn timestamps_are_rfc3339_whole_seconds() {
        assert_eq!(timestamp_at(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp_at(1_765_635_930), "2025-12-13T14:25:30Z");
        assert_eq!(timestamp_at(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(timestamp_at(-1), "1969-12-31T23:59:59Z");
        let now = now_timestamp().unwrap();
        assert_eq!(now.len(), 20);
        assert!(now.ends_with('Z'));
    }

    #[test]
    fn nonces_are_fresh_alphanumerics() {
        let a = fresh_nonce().unwrap();
        let b = fresh_nonce().unwrap();
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!((12..=64).contains(&n.len()));
            assert!(n.bytes().all(|c| c.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(hex_upper(&[0xab, 0x01]), "AB01");
        assert_eq!(unhex("ab01").unwrap(), vec![0xab, 0x01]);
        assert!(unhex("abc").is_err());
        assert!(unhex("+1").is_err());
        assert!(unhex("zz").is_err());
    }
}
