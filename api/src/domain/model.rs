//! The records the platform keeps, how each is indexed, and how each is shown on the wire.
//!
//! Tenancy lives in the records: a reseller knows its ancestors and a merchant the chain of
//! resellers above it, fixed at creation, so "is this inside the caller's subtree" is a
//! membership test, not a walk up the tree on every request.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::store::db::Record;
use crate::wire::fields::Money;

/// Stored money (minor units and currency).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    /// Minor units.
    pub value: u64,
    /// ISO 4217 code.
    pub currency: String,
}

impl From<Money> for Amount {
    fn from(m: Money) -> Self {
        Self {
            value: m.value,
            currency: m.currency,
        }
    }
}

/// Where an object sits in the tenancy tree.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tenancy {
    /// Resellers from the root down to the one directly above (or equal to) the object.
    pub resellers: Vec<String>,
    /// The merchant, for merchant-level objects.
    pub merchant: Option<String>,
}

/// A reseller (possibly nested under another).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reseller {
    /// UUID.
    pub id: String,
    /// Display name.
    pub name: String,
    /// The reseller above, if any (fixed at creation).
    pub parent_id: Option<String>,
    /// Every reseller above, root first (fixed at creation).
    pub ancestors: Vec<String>,
    /// Branding shown on its merchants' terminals and portals.
    pub branding: Option<Map<String, Value>>,
    /// Portal host names that resolve to this reseller.
    pub portal_hosts: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

impl Reseller {
    /// Its tenancy: its ancestors and itself.
    pub fn tenancy(&self) -> Tenancy {
        let mut resellers = self.ancestors.clone();
        resellers.push(self.id.clone());
        Tenancy {
            resellers,
            merchant: None,
        }
    }
}

impl Record for Reseller {
    const KIND: &'static str = "reseller";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("resellers".into(), String::new()),
            (
                "reseller_children".into(),
                self.parent_id.clone().unwrap_or_default(),
            ),
        ];
        for r in self.ancestors.iter().chain(std::iter::once(&self.id)) {
            out.push(("reseller_tree".into(), r.clone()));
        }
        out
    }
}

/// A brand's own fee row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BrandFee {
    /// Basis points of the amount.
    pub percent_bps: u32,
    /// Fixed part.
    pub fixed: Option<Amount>,
}

/// A reseller's fee template.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeeTemplate {
    /// UUID.
    pub id: String,
    /// Owning reseller (fixed).
    pub reseller_id: String,
    /// Name.
    pub name: String,
    /// Basis points of the amount.
    pub percent_bps: u32,
    /// Fixed part.
    pub fixed: Option<Amount>,
    /// Rows by card brand.
    pub per_brand: BTreeMap<String, BrandFee>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

impl FeeTemplate {
    /// The fee for an amount (minor units, the charge's currency) and a card brand:
    /// fixed + amount × bps / 10 000, rounded half up; the brand's row when it has one.
    pub fn fee(&self, amount: u64, brand: &str) -> u64 {
        let (bps, fixed) = self.per_brand.get(brand).map_or_else(
            || (self.percent_bps, self.fixed.as_ref()),
            |row| (row.percent_bps, row.fixed.as_ref()),
        );
        let percent = (u128::from(amount) * u128::from(bps) + 5_000) / 10_000;
        let fixed = fixed.map_or(0, |f| f.value);
        u64::try_from(percent)
            .unwrap_or(u64::MAX)
            .saturating_add(fixed)
    }
}

impl Record for FeeTemplate {
    const KIND: &'static str = "fee_template";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        vec![("fee_templates".into(), self.reseller_id.clone())]
    }
}

/// A merchant.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Merchant {
    /// UUID.
    pub id: String,
    /// The reseller directly above (fixed).
    pub reseller_id: String,
    /// Every reseller above, root first, ending with `reseller_id` (fixed).
    pub resellers: Vec<String>,
    /// Name.
    pub name: String,
    /// Merchant category code.
    pub mcc: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
    /// Settlement currency.
    pub currency: String,
    /// Fee template of its reseller chain.
    pub fee_template_id: Option<String>,
    /// Free-form tip settings shown in the terminal config.
    pub tip_info: Map<String, Value>,
    /// Free-form tax settings.
    pub tax_info: Map<String, Value>,
    /// Free-form surcharge settings.
    pub surcharge_info: Map<String, Value>,
    /// Public reference shown to terminals (not a secret).
    pub merchant_key: String,
    /// Terminal-parameter overrides for all its devices.
    pub terminal_parameters: Option<Map<String, Value>>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Its card acceptor id on the acquirer link (DE 42, spec 12.4): 15 digits drawn at
    /// creation, unique (a UNIQUE column), never changed.
    pub acquirer_mid: String,
}

impl Merchant {
    /// Its tenancy.
    pub fn tenancy(&self) -> Tenancy {
        Tenancy {
            resellers: self.resellers.clone(),
            merchant: Some(self.id.clone()),
        }
    }
}

impl Record for Merchant {
    const KIND: &'static str = "merchant";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        let mut out = vec![("merchants".into(), String::new())];
        for r in &self.resellers {
            out.push(("merchant_tree".into(), r.clone()));
        }
        out
    }
}

/// A merchant's location.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Location {
    /// UUID.
    pub id: String,
    /// Owning merchant (fixed).
    pub merchant_id: String,
    /// Name.
    pub name: String,
    /// `{"line1","city","postal_code","country"}`.
    pub address: Map<String, Value>,
    /// IANA time zone name.
    pub timezone: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

impl Record for Location {
    const KIND: &'static str = "location";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        vec![("locations".into(), self.merchant_id.clone())]
    }
}

/// A device's lifecycle state (contract section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceStatus {
    /// Registered, not claimed.
    Inactive,
    /// Claimed by a merchant with a pairing code.
    Claimed,
    /// Activated: may charge.
    Activated,
    /// Disabled by the merchant.
    Disabled,
}

impl DeviceStatus {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Inactive => "inactive",
            Self::Claimed => "claimed",
            Self::Activated => "activated",
            Self::Disabled => "disabled",
        }
    }
}

/// A POS device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    /// `POS-` + 8 hex digits.
    pub device_id: String,
    /// Owning merchant (fixed).
    pub merchant_id: String,
    /// Hardware model.
    pub model: String,
    /// Serial number.
    pub serial: String,
    /// Optional label shown on the terminal.
    pub label: Option<String>,
    /// Location of the same merchant.
    pub location_id: Option<String>,
    /// Key-injection zone (names the ZMK in keyd).
    pub zone: String,
    /// Lifecycle state.
    pub status: DeviceStatus,
    /// `TID-` + 6 digits, from the first claim on.
    pub terminal_id: Option<String>,
    /// The current identity key's id in keyd (the secret never leaves keyd but once).
    pub identity_key_id: String,
    /// Its check value.
    pub identity_kcv: String,
    /// Set by `rotate-keys`: the next key delivery makes a new set.
    pub rotate_keys: bool,
    /// Terminal-parameter overrides of this device.
    pub terminal_parameters: Option<Map<String, Value>>,
    /// Bumped by disable and enable: attestation tokens of an older epoch are dead.
    #[serde(default)]
    pub auth_epoch: u64,
    /// The key set in use.
    #[serde(default)]
    pub key_set: Option<KeySetRef>,
    /// The set before it, honoured for the grace period after the new one was delivered.
    #[serde(default)]
    pub previous_key_set: Option<KeySetRef>,
    /// The latest pairing code issued to the device.
    #[serde(default)]
    pub pairing_code: Option<String>,
    /// When pairing codes were issued in the last hour (rate limit).
    #[serde(default)]
    pub pairing_issued: Vec<i64>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Unix seconds of the first activation.
    pub activated_at: Option<i64>,
    /// Unix seconds of its last heartbeat.
    #[serde(default)]
    pub last_seen_at: Option<i64>,
    /// The POS app version its last heartbeat reported.
    #[serde(default)]
    pub app_version: Option<String>,
    /// Online or offline, from its heartbeats (`None` before the first).
    #[serde(default)]
    pub connectivity: Option<Connectivity>,
    /// What its last heartbeat reported besides the version (battery, network, last charge).
    #[serde(default)]
    pub heartbeat: Option<Map<String, Value>>,
}

/// Whether a terminal is heard from (contract: `POST /pos/heartbeat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Connectivity {
    /// Its last heartbeat is within three intervals.
    Online,
    /// Three intervals passed without a heartbeat.
    Offline,
}

impl Connectivity {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }
}

/// The POS app the operator publishes for one device model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppVersion {
    /// The device model it is for.
    pub model: String,
    /// The newest version (`MAJOR.MINOR.PATCH`).
    pub latest_version: String,
    /// Where terminals download it.
    pub url: String,
    /// Terminals below it must update (the platform's minimum when `None`).
    pub min_supported_version: Option<String>,
    /// Unix seconds.
    pub updated_at: i64,
}

impl Record for AppVersion {
    const KIND: &'static str = "app_version";
    fn id(&self) -> &str {
        &self.model
    }
    fn indexes(&self) -> Vec<(String, String)> {
        vec![("app_versions".into(), String::new())]
    }
}

impl Record for Device {
    const KIND: &'static str = "device";
    fn id(&self) -> &str {
        &self.device_id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        vec![("devices".into(), self.merchant_id.clone())]
    }
}

/// A device's key set as the API knows it: ids and check values, never key material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySetRef {
    /// `ks-…`.
    pub key_set_id: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds (365 days after issue).
    pub expires_at: i64,
    /// When it replaced the previous set (start of that set's grace period).
    pub delivered_at: i64,
    /// The HMAC key terminals sign charges with.
    pub mac_key_id: String,
    /// The MSK of envelopes.
    pub msk_key_id: String,
    /// The MSK's check value (6 hex digits).
    pub msk_kcv: String,
    /// The TDK of card data.
    pub tdk_key_id: String,
    /// The TPK of PIN blocks (absent from sets issued before online PIN: such a device
    /// fetches its keys again before it can send a PIN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpk_key_id: Option<String>,
}

/// A platform role (`realm_access.roles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads, claims devices, charges and refunds.
    MerchantUser,
    /// And changes its merchant's settings, users, devices, clients, overrides, settlements.
    MerchantAdmin,
    /// And manages its reseller subtree.
    ResellerAdmin,
    /// Everything.
    PlatformAdmin,
}

impl Role {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MerchantUser => "merchant_user",
            Self::MerchantAdmin => "merchant_admin",
            Self::ResellerAdmin => "reseller_admin",
            Self::PlatformAdmin => "platform_admin",
        }
    }

    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::MerchantUser,
            Self::MerchantAdmin,
            Self::ResellerAdmin,
            Self::PlatformAdmin,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A backoffice user of a merchant or a reseller.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    /// UUID.
    pub id: String,
    /// E-mail address.
    pub email: String,
    /// Display name.
    pub name: Option<String>,
    /// Role within its tenant.
    pub role: Role,
    /// The identity provider's `sub` (defaults to the user id).
    pub idp_subject: String,
    /// Owning merchant, for merchant users.
    pub merchant_id: Option<String>,
    /// Owning reseller, for reseller admins.
    pub reseller_id: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

impl User {
    /// The tenant key the user is listed under.
    pub fn owner(&self) -> &str {
        self.merchant_id
            .as_deref()
            .or(self.reseller_id.as_deref())
            .unwrap_or_default()
    }
}

impl Record for User {
    const KIND: &'static str = "user";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        vec![("users".into(), self.owner().to_owned())]
    }
}

/// An API client of a merchant (machine credentials).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiClient {
    /// `cli_…`.
    pub client_id: String,
    /// Owning merchant (fixed).
    pub merchant_id: String,
    /// Optional name.
    pub name: Option<String>,
    /// Salt for the secret's hash (hex).
    pub salt: String,
    /// SHA-256 of salt and secret (hex). The secret itself is never stored.
    pub secret_hash: String,
    /// Failed attempts in a row.
    pub failures: u32,
    /// Locked until (Unix seconds).
    pub locked_until: i64,
    /// Unix seconds.
    pub created_at: i64,
}

impl Record for ApiClient {
    const KIND: &'static str = "api_client";
    fn id(&self) -> &str {
        &self.client_id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        vec![("api_clients".into(), self.merchant_id.clone())]
    }
}

/// An initiated backoffice session, one per token subject.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The token's `sub` (the record id).
    pub sub: String,
    /// Random session id shown to the client.
    pub session_id: String,
    /// Ends with the token that made it (Unix seconds).
    pub expires_at: i64,
    /// The host it was initiated for.
    pub host: String,
    /// Reseller resolved for the session.
    pub reseller_id: Option<String>,
    /// Merchant of the user, if any.
    pub merchant_id: Option<String>,
}

impl Record for Session {
    const KIND: &'static str = "session";
    fn id(&self) -> &str {
        &self.sub
    }
    fn indexes(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// A pairing code's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairingStatus {
    /// Issued and usable until it expires.
    Pending,
    /// Claimed a device.
    Used,
    /// Replaced by a newer code (time-outs are computed from `expires_at`).
    Expired,
}

/// A pairing code (the record id is the code itself).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairingCode {
    /// Six characters of the pairing alphabet.
    pub code: String,
    /// The device it pairs.
    pub device_id: String,
    /// Stored state (see [`PairingCode::status`] for the effective one).
    pub status: PairingStatus,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// When it stopped being pending (used, replaced, or timed out).
    pub ended_at: Option<i64>,
}

impl PairingCode {
    /// The state at `now`: a pending code past its time is expired.
    pub fn status(&self, now: i64) -> PairingStatus {
        match self.status {
            PairingStatus::Pending if now >= self.expires_at => PairingStatus::Expired,
            s => s,
        }
    }

    /// When it stopped being pending, if it has.
    pub fn ended(&self, now: i64) -> Option<i64> {
        match self.status(now) {
            PairingStatus::Pending => None,
            _ => Some(self.ended_at.unwrap_or(self.expires_at)),
        }
    }
}

impl Record for PairingCode {
    const KIND: &'static str = "pairing_code";
    fn id(&self) -> &str {
        &self.code
    }
    fn indexes(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// An attestation token, stored by the SHA-256 of its value (the record id, hex).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attestation {
    /// Hex SHA-256 of the token.
    pub hash: String,
    /// The device it was issued to.
    pub device_id: String,
    /// The device's auth epoch at issue: disabling the device kills the token.
    pub epoch: u64,
    /// Unix seconds.
    pub expires_at: i64,
}

impl Record for Attestation {
    const KIND: &'static str = "attestation";
    fn id(&self) -> &str {
        &self.hash
    }
    fn indexes(&self) -> Vec<(String, String)> {
        vec![(
            "attestation_minute".into(),
            (self.expires_at / 60).to_string(),
        )]
    }
}

/// A used nonce (replay protection survives a restart and holds across nodes).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Nonce {
    /// `{time:012}:{micros:06}{random}`: time first, so the oldest are found first, and to the
    /// microsecond, so that new rows are appended to the id index rather than scattered over
    /// the second's pages; random after, so two nodes taking the same nonce in the same
    /// microsecond write two different rows and the database's unique `key` refuses the second.
    pub id: String,
    /// Unix seconds when it was used.
    pub at: i64,
    /// `{scope}:{nonce}`, unique in the store.
    pub key: String,
}

impl Record for Nonce {
    const KIND: &'static str = "nonce";
    fn id(&self) -> &str {
        &self.id
    }
    fn indexes(&self) -> Vec<(String, String)> {
        // Found by time through the id (`Store::scan_back`), not an index.
        Vec::new()
    }
}

/// A location given in a body must be one of the merchant's (400 naming `location_id`).
///
/// # Errors
/// 400 naming `location_id`; 503 when storage is down.
pub async fn check_location(
    db: &crate::store::db::Db,
    merchant_id: &str,
    id: &str,
) -> Result<(), ApiError> {
    match db.get::<Location>(id).await? {
        Some(l) if l.merchant_id == merchant_id => Ok(()),
        _ => Err(ApiError::field(
            "location_id",
            "no such location of this merchant",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fees_round_half_up_and_prefer_the_brand_row() {
        let mut t = FeeTemplate {
            id: "t".into(),
            reseller_id: "r".into(),
            name: "n".into(),
            percent_bps: 150,
            fixed: Some(Amount {
                value: 20,
                currency: "EUR".into(),
            }),
            per_brand: BTreeMap::new(),
            created_at: 0,
            updated_at: 0,
        };
        // 1700 × 1.5 % = 25.5 → 26, + 20.
        assert_eq!(t.fee(1700, "visa"), 46);
        // 1500 × 1.5 % = 22.5 → 23.
        assert_eq!(t.fee(1500, "visa"), 43);
        t.per_brand.insert(
            "amex".into(),
            BrandFee {
                percent_bps: 300,
                fixed: None,
            },
        );
        assert_eq!(t.fee(1500, "amex"), 45);
        assert_eq!(t.fee(999_999_999_999, "visa"), 15_000_000_020);
    }
}
