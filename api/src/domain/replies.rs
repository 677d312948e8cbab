//! How each record is shown on the wire: one reply type per record, borrowed from it, with
//! the schema `/openapi.json` publishes. Nothing secret is in any of them (identity keys show
//! their id and check value; API clients never their secret or its hash; cards their brand,
//! BIN and last four digits).

use serde_json::{Map, Value};

use crate::domain::charges::{Charge, ChargeStatus, Refund, Txn};
use crate::domain::model::{
    Amount, ApiClient, Connectivity, Device, DeviceStatus, FeeTemplate, Location, Merchant,
    Reseller, Role, User,
};
use crate::domain::settlement::Settlement;
use crate::reply;
use crate::wire::reply::{Choices, MoneyOut, OneOf, Shape, Time};

impl Amount {
    /// As the contract writes money.
    pub fn out(&self) -> MoneyOut<'_> {
        MoneyOut {
            value: self.value,
            currency: &self.currency,
        }
    }
}

impl Choices for DeviceStatus {
    const ALL: &'static [&'static str] = &["inactive", "claimed", "activated", "disabled"];
    fn as_str(self) -> &'static str {
        Self::as_str(self)
    }
}

impl Choices for Connectivity {
    const ALL: &'static [&'static str] = &["online", "offline"];
    fn as_str(self) -> &'static str {
        Self::as_str(self)
    }
}

impl Choices for Role {
    const ALL: &'static [&'static str] = &[
        "merchant_user",
        "merchant_admin",
        "reseller_admin",
        "platform_admin",
    ];
    fn as_str(self) -> &'static str {
        Self::as_str(self)
    }
}

impl Choices for ChargeStatus {
    const ALL: &'static [&'static str] = &[
        "pending",
        "approved",
        "declined",
        "failed",
        "cancelled",
        "settled",
        "partially_refunded",
        "refunded",
    ];
    fn as_str(self) -> &'static str {
        Self::as_str(self)
    }
}

reply! {
    /// A reseller.
    pub struct ResellerReply<'a> as "reseller" {
        /// UUID.
        pub id: &'a str,
        /// Display name.
        pub name: &'a str,
        /// The reseller above, if any.
        pub parent_id: Option<&'a str>,
        /// Created.
        pub created_at: Time,
        /// Last changed.
        pub updated_at: Time,
    }
}

impl Reseller {
    /// The wire form.
    pub fn reply(&self) -> ResellerReply<'_> {
        ResellerReply {
            id: &self.id,
            name: &self.name,
            parent_id: self.parent_id.as_deref(),
            created_at: Time(self.created_at),
            updated_at: Time(self.updated_at),
        }
    }
}

reply! {
    /// A brand's own fee row.
    pub struct BrandFeeReply<'a> {
        /// Basis points of the amount.
        pub percent_bps: u32,
        /// Fixed part.
        pub fixed: Option<MoneyOut<'a>>,
    }
}

/// Rows by brand, as an object keyed by brand.
#[derive(Debug)]
pub struct BrandRows<'a>(Vec<(&'a str, BrandFeeReply<'a>)>);

impl serde::Serialize for BrandRows<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (*k, v)))
    }
}

impl Shape for BrandRows<'_> {
    fn schema() -> Value {
        serde_json::json!({
            "type": "object",
            "propertyNames": {"enum": ["visa", "mastercard", "amex", "discover", "unknown"]},
            "additionalProperties": BrandFeeReply::schema(),
        })
    }
}

reply! {
    /// A fee template.
    pub struct FeeTemplateReply<'a> as "fee_template" {
        /// UUID.
        pub id: &'a str,
        /// Owning reseller.
        pub reseller_id: &'a str,
        /// Name.
        pub name: &'a str,
        /// Basis points of the amount.
        pub percent_bps: u32,
        /// Fixed part.
        pub fixed: Option<MoneyOut<'a>>,
        /// Rows by card brand.
        pub per_brand: BrandRows<'a>,
        /// Created.
        pub created_at: Time,
        /// Last changed.
        pub updated_at: Time,
    }
}

impl FeeTemplate {
    /// The wire form.
    pub fn reply(&self) -> FeeTemplateReply<'_> {
        FeeTemplateReply {
            id: &self.id,
            reseller_id: &self.reseller_id,
            name: &self.name,
            percent_bps: self.percent_bps,
            fixed: self.fixed.as_ref().map(Amount::out),
            per_brand: BrandRows(
                self.per_brand
                    .iter()
                    .map(|(brand, row)| {
                        let row = BrandFeeReply {
                            percent_bps: row.percent_bps,
                            fixed: row.fixed.as_ref().map(Amount::out),
                        };
                        (brand.as_str(), row)
                    })
                    .collect(),
            ),
            created_at: Time(self.created_at),
            updated_at: Time(self.updated_at),
        }
    }
}

reply! {
    /// A merchant.
    pub struct MerchantReply<'a> as "merchant" {
        /// UUID.
        pub id: &'a str,
        /// The reseller it belongs to.
        pub reseller_id: &'a str,
        /// Display name.
        pub name: &'a str,
        /// Merchant category code.
        pub mcc: &'a str,
        /// ISO 3166-1 alpha-2.
        pub country: &'a str,
        /// ISO 4217.
        pub currency: &'a str,
        /// Its fee template.
        pub fee_template_id: Option<&'a str>,
        /// Tip settings shown to terminals.
        pub tip_info: &'a Map<String, Value>,
        /// Tax settings shown to terminals.
        pub tax_info: &'a Map<String, Value>,
        /// Surcharge settings shown to terminals.
        pub surcharge_info: &'a Map<String, Value>,
        /// The merchant's public key name (`mk_…`).
        pub merchant_key: &'a str,
        /// Its card acceptor id on the acquirer link (DE 42): 15 digits assigned at creation,
        /// unique, never changed.
        pub acquirer_mid: &'a str,
        /// Created.
        pub created_at: Time,
        /// Last changed.
        pub updated_at: Time,
    }
}

impl Merchant {
    /// The wire form.
    pub fn reply(&self) -> MerchantReply<'_> {
        MerchantReply {
            id: &self.id,
            reseller_id: &self.reseller_id,
            name: &self.name,
            mcc: &self.mcc,
            country: &self.country,
            currency: &self.currency,
            fee_template_id: self.fee_template_id.as_deref(),
            tip_info: &self.tip_info,
            tax_info: &self.tax_info,
            surcharge_info: &self.surcharge_info,
            merchant_key: &self.merchant_key,
            acquirer_mid: &self.acquirer_mid,
            created_at: Time(self.created_at),
            updated_at: Time(self.updated_at),
        }
    }
}

reply! {
    /// A merchant's location.
    pub struct LocationReply<'a> as "location" {
        /// UUID.
        pub id: &'a str,
        /// The same UUID, under the name terminals use.
        pub location_id: &'a str,
        /// Owning merchant.
        pub merchant_id: &'a str,
        /// Display name.
        pub name: &'a str,
        /// Postal address.
        pub address: &'a Map<String, Value>,
        /// IANA time zone.
        pub timezone: Option<&'a str>,
        /// Created.
        pub created_at: Time,
        /// Last changed.
        pub updated_at: Time,
    }
}

impl Location {
    /// The wire form.
    pub fn reply(&self) -> LocationReply<'_> {
        LocationReply {
            id: &self.id,
            location_id: &self.id,
            merchant_id: &self.merchant_id,
            name: &self.name,
            address: &self.address,
            timezone: self.timezone.as_deref(),
            created_at: Time(self.created_at),
            updated_at: Time(self.updated_at),
        }
    }
}

reply! {
    /// Which identity key a device has (never the key).
    pub struct IdentityKeyRef<'a> {
        /// `idk-…`.
        pub key_id: &'a str,
        /// Its check value.
        pub kcv: &'a str,
    }
}

reply! {
    /// A POS device.
    pub struct DeviceReply<'a> as "device" {
        /// `POS-` and 8 hex digits.
        pub device_id: &'a str,
        /// Owning merchant.
        pub merchant_id: &'a str,
        /// Hardware model.
        pub model: &'a str,
        /// Serial number.
        pub serial: &'a str,
        /// A name for people.
        pub label: Option<&'a str>,
        /// Where it stands.
        pub location_id: Option<&'a str>,
        /// Its key-injection zone.
        pub zone: &'a str,
        /// Lifecycle state.
        pub device_status: OneOf<DeviceStatus>,
        /// `TID-` and 6 digits, from the first claim on.
        pub terminal_id: Option<&'a str>,
        /// Its identity key.
        pub identity_key: IdentityKeyRef<'a>,
        /// Created.
        pub created_at: Time,
        /// Last changed.
        pub updated_at: Time,
        /// First activated.
        pub activated_at: Option<Time>,
        /// `online` or `offline` from its heartbeats; `null` before the first.
        pub connectivity: Option<OneOf<Connectivity>>,
        /// Its last heartbeat.
        pub last_seen_at: Option<Time>,
        /// The POS app version it last reported.
        pub app_version: Option<&'a str>,
    }
}

impl Device {
    /// The wire form.
    pub fn reply(&self) -> DeviceReply<'_> {
        DeviceReply {
            device_id: &self.device_id,
            merchant_id: &self.merchant_id,
            model: &self.model,
            serial: &self.serial,
            label: self.label.as_deref(),
            location_id: self.location_id.as_deref(),
            zone: &self.zone,
            device_status: OneOf(self.status),
            terminal_id: self.terminal_id.as_deref(),
            identity_key: IdentityKeyRef {
                key_id: &self.identity_key_id,
                kcv: &self.identity_kcv,
            },
            created_at: Time(self.created_at),
            updated_at: Time(self.updated_at),
            activated_at: self.activated_at.map(Time),
            connectivity: self.connectivity.map(OneOf),
            last_seen_at: self.last_seen_at.map(Time),
            app_version: self.app_version.as_deref(),
        }
    }
}

reply! {
    /// A backoffice user.
    pub struct UserReply<'a> as "user" {
        /// UUID.
        pub id: &'a str,
        /// E-mail address.
        pub email: &'a str,
        /// Display name.
        pub name: Option<&'a str>,
        /// What the user may do.
        pub role: OneOf<Role>,
        /// The subject of the user's tokens.
        pub idp_subject: &'a str,
        /// The merchant, for merchant users.
        pub merchant_id: Option<&'a str>,
        /// The reseller, for reseller admins.
        pub reseller_id: Option<&'a str>,
        /// Created.
        pub created_at: Time,
        /// Last changed.
        pub updated_at: Time,
    }
}

impl User {
    /// The wire form.
    pub fn reply(&self) -> UserReply<'_> {
        UserReply {
            id: &self.id,
            email: &self.email,
            name: self.name.as_deref(),
            role: OneOf(self.role),
            idp_subject: &self.idp_subject,
            merchant_id: self.merchant_id.as_deref(),
            reseller_id: self.reseller_id.as_deref(),
            created_at: Time(self.created_at),
            updated_at: Time(self.updated_at),
        }
    }
}

reply! {
    /// A merchant's API client (never its secret).
    pub struct ApiClientReply<'a> as "api_client" {
        /// `cli_…`.
        pub client_id: &'a str,
        /// Owning merchant.
        pub merchant_id: &'a str,
        /// A name for people.
        pub name: Option<&'a str>,
        /// Created.
        pub created_at: Time,
    }
}

impl ApiClient {
    /// The wire form.
    pub fn reply(&self) -> ApiClientReply<'_> {
        ApiClientReply {
            client_id: &self.client_id,
            merchant_id: &self.merchant_id,
            name: self.name.as_deref(),
            created_at: Time(self.created_at),
        }
    }
}

reply! {
    /// A refund.
    pub struct RefundReply<'a> as "refund" {
        /// `re_…`.
        pub refund_id: &'a str,
        /// The refunded charge.
        pub charge_id: &'a str,
        /// Always `succeeded`: a refund the processor refuses is not kept.
        pub status: &'a str,
        /// How much.
        pub amount: MoneyOut<'a>,
        /// Why.
        pub reason: Option<&'a str>,
        /// The charge's status after it.
        pub charge_status: OneOf<ChargeStatus>,
        /// Created.
        pub created_at: Time,
    }
}

impl Refund {
    /// The wire form.
    pub fn reply(&self) -> RefundReply<'_> {
        RefundReply {
            refund_id: &self.refund_id,
            charge_id: &self.charge_id,
            status: "succeeded",
            amount: self.amount.out(),
            reason: self.reason.as_deref(),
            charge_status: OneOf(self.charge_status),
            created_at: Time(self.created_at),
        }
    }
}

reply! {
    /// What is shown of a card.
    pub struct CardReply<'a> {
        /// Brand by BIN.
        pub brand: &'a str,
        /// First six digits.
        pub bin: &'a str,
        /// Last four digits.
        pub last4: &'a str,
        /// How it was read.
        pub entry_mode: &'a str,
    }
}

reply! {
    /// Who processed a charge.
    pub struct ProcessorReply<'a> {
        /// The connector.
        pub name: &'a str,
        /// The processor's reference.
        pub reference: Option<&'a str>,
    }
}

reply! {
    /// A charge.
    pub struct ChargeReply<'a> as "charge" {
        /// `ch_…`.
        pub charge_id: &'a str,
        /// Where it stands.
        pub status: OneOf<ChargeStatus>,
        /// The amount.
        pub amount: MoneyOut<'a>,
        /// The tip (`"0"` without one).
        pub tip: MoneyOut<'a>,
        /// Refunded so far.
        pub amount_refunded: MoneyOut<'a>,
        /// The issuer's authorisation code, when approved.
        pub authorization_code: Option<&'a str>,
        /// ISO 8583 response code.
        pub iso_response_code: Option<&'a str>,
        /// Why it was declined.
        pub decline_code: Option<&'a str>,
        /// The card.
        pub card: CardReply<'a>,
        /// The terminal, for POS charges.
        pub terminal_id: Option<&'a str>,
        /// The merchant.
        pub merchant_id: &'a str,
        /// Where it happened.
        pub location_id: Option<&'a str>,
        /// The terminal's own reference.
        pub reference: Option<&'a str>,
        /// Free text.
        pub description: Option<&'a str>,
        /// Free-form pairs.
        pub metadata: &'a Map<String, Value>,
        /// The platform's fee.
        pub fee: MoneyOut<'a>,
        /// Who processed it.
        pub processor: ProcessorReply<'a>,
        /// Created.
        pub created_at: Time,
        /// Settled.
        pub settled_at: Option<Time>,
        /// Its refunds, oldest first.
        pub refunds: Vec<RefundReply<'a>>,
    }
}

impl Charge {
    /// The wire form.
    pub fn reply(&self) -> ChargeReply<'_> {
        let currency = self.amount.currency.as_str();
        let money = |value| MoneyOut { value, currency };
        ChargeReply {
            charge_id: &self.charge_id,
            status: OneOf(self.status),
            amount: self.amount.out(),
            tip: self.tip.as_ref().map_or_else(|| money(0), Amount::out),
            amount_refunded: money(self.amount_refunded),
            authorization_code: self.authorization_code.as_deref(),
            iso_response_code: self.iso_response_code.as_deref(),
            decline_code: self.decline_code.as_deref(),
            card: CardReply {
                brand: &self.card.brand,
                bin: &self.card.bin,
                last4: &self.card.last4,
                entry_mode: &self.card.entry_mode,
            },
            terminal_id: self.terminal_id.as_deref(),
            merchant_id: &self.merchant_id,
            location_id: self.location_id.as_deref(),
            reference: self.reference.as_deref(),
            description: self.description.as_deref(),
            metadata: &self.metadata,
            fee: self.fee.out(),
            processor: ProcessorReply {
                name: &self.processor,
                reference: self.processor_reference.as_deref(),
            },
            created_at: Time(self.created_at),
            settled_at: self.settled_at.map(Time),
            refunds: self.refunds.iter().map(Refund::reply).collect(),
        }
    }
}

crate::enum_field! {
    /// What a transaction is.
    pub enum TxnType { Charge = "charge", Refund = "refund" }
}

reply! {
    /// A charge or a refund in a merchant's transactions.
    pub struct TxnReply<'a> {
        /// The charge's or the refund's id.
        pub id: &'a str,
        /// Which it is.
        pub r#type: OneOf<TxnType>,
        /// The item's own status (a refund's is `succeeded`).
        pub status: &'a str,
        /// How much.
        pub amount: MoneyOut<'a>,
        /// The terminal (a refund's is its charge's).
        pub terminal_id: Option<&'a str>,
        /// The location (a refund's is its charge's).
        pub location_id: Option<&'a str>,
        /// Created.
        pub created_at: Time,
        /// The charge itself, or the refunded charge.
        pub charge_id: &'a str,
    }
}

impl Txn {
    /// The transactions list's item.
    pub fn reply(&self) -> TxnReply<'_> {
        match self {
            Self::Charge(c) => TxnReply {
                id: &c.charge_id,
                r#type: OneOf(TxnType::Charge),
                status: c.status.as_str(),
                amount: c.amount.out(),
                terminal_id: c.terminal_id.as_deref(),
                location_id: c.location_id.as_deref(),
                created_at: Time(c.created_at),
                charge_id: &c.charge_id,
            },
            Self::Refund(r) => TxnReply {
                id: &r.refund_id,
                r#type: OneOf(TxnType::Refund),
                status: "succeeded",
                amount: r.amount.out(),
                terminal_id: r.terminal_id.as_deref(),
                location_id: r.location_id.as_deref(),
                created_at: Time(r.created_at),
                charge_id: &r.charge_id,
            },
        }
    }
}

reply! {
    /// A settlement batch.
    pub struct SettlementReply<'a> as "settlement" {
        /// `st_…`.
        pub settlement_id: &'a str,
        /// The merchant.
        pub merchant_id: &'a str,
        /// Charges settled.
        pub count: u64,
        /// Σ(amount + tip − refunded).
        pub total: MoneyOut<'a>,
        /// Created.
        pub created_at: Time,
        /// Whether settleable charges were left for the next batch because this one's total
        /// would have passed the 12 digits of the money format.
        pub has_more: bool,
    }
}

impl Settlement {
    /// The wire form.
    pub fn reply(&self) -> SettlementReply<'_> {
        SettlementReply {
            settlement_id: &self.settlement_id,
            merchant_id: &self.merchant_id,
            count: self.count,
            total: self.total.out(),
            created_at: Time(self.created_at),
            has_more: self.left_from.is_some(),
        }
    }
}

/// Records answered as JSON values (handlers and kept idempotent answers hold values).
macro_rules! wire_form {
    ($($t:ty),*) => {$(
        impl $t {
            /// The wire form, as a JSON value.
            pub fn to_json(&self) -> Value {
                crate::wire::reply::json(&self.reply())
            }

            /// The wire form as JSON text, written straight from the reply with no JSON tree
            /// in between (an answer sealed at once); wiped when dropped, as answers hold
            /// card data. Written into room reserved beforehand (4 KiB: a charge with ten
            /// refunds), so that growing leaves no unwiped copy behind.
            ///
            /// # Errors
            /// 500 if it cannot be written (replies hold strings, numbers, booleans and
            /// string-keyed maps, which always can).
            pub fn to_json_text(&self) -> Result<zeroize::Zeroizing<Vec<u8>>, crate::error::ApiError> {
                let mut out = zeroize::Zeroizing::new(Vec::with_capacity(4 * 1024));
                serde_json::to_writer(&mut *out, &self.reply())
                    .map_err(|e| crate::error::ApiError::internal(&e))?;
                Ok(out)
            }
        }
    )*};
}

wire_form!(
    Reseller,
    FeeTemplate,
    Merchant,
    Location,
    Device,
    User,
    ApiClient,
    Refund,
    Charge,
    Txn,
    Settlement
);
