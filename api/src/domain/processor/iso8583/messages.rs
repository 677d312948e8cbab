//! The link's messages (spec 12.4), built and read without I/O: the `0200` of a purchase or a
//! refund, the `0400`/`0401` reversal, the `0800` echo, and the reading of a `0210` into an
//! [`Outcome`] (12.6).
//!
//! What a later reversal or refund needs of a request is an [`Original`]: it is fixed before
//! the charge is recorded (so a charge left pending by a crash can still be reversed) and
//! stored with the charge, the PAN in it sealed by keyd.

use std::fmt;

use acqlink::{De, Message, Mti, Stan};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::domain::processor::{Outcome, decline_code};

/// DE 3 of a purchase.
pub(crate) const PURCHASE: &str = "000000";
/// DE 3 of a refund.
pub(crate) const REFUND: &str = "200000";
/// DE 22 of a refund: the card is not read again (key entry, no PIN).
pub(crate) const REFUND_ENTRY_MODE: &str = "012";
/// DE 70 of the echo test.
const ECHO: &str = "301";

/// The times of one message, all from one UTC instant: DE 7, and what DE 12, DE 13 and DE 37
/// take from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Clock {
    /// DE 7: `MMDDhhmmss`.
    pub(crate) transmission: String,
    year: u32,
    day_of_year: u16,
    hour: u8,
}

impl Clock {
    /// The clock fields of `t` (taken as UTC).
    pub(crate) fn at(t: OffsetDateTime) -> Self {
        let t = t.to_offset(time::UtcOffset::UTC);
        Self {
            transmission: format!(
                "{:02}{:02}{:02}{:02}{:02}",
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
            year: u32::try_from(t.year()).unwrap_or_default(),
            day_of_year: t.ordinal(),
            hour: t.hour(),
        }
    }

    /// Now.
    pub(crate) fn now() -> Self {
        Self::at(OffsetDateTime::now_utc())
    }

    /// DE 37 for a request with this STAN.
    pub(crate) fn rrn(&self, stan: Stan) -> Result<String, acqlink::Error> {
        acqlink::rrn(self.year, self.day_of_year, self.hour, stan)
    }
}

/// A request as a later reversal (DE 90, DE 2-4, 37, 41, 42, 49) or refund (DE 2 and 14 as
/// well) needs it. Stored as JSON with the charge (`processor_data`) and with a pending
/// reversal; the PAN and the expiry only sealed by keyd, together (`PAN=YYMM`, see
/// [`split_card`]). `Debug` shows neither the sealed card nor a legacy expiry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Original {
    /// Its MTI (`0200`).
    pub(crate) mti: String,
    /// DE 3.
    pub(crate) processing_code: String,
    /// DE 4, minor units.
    pub(crate) amount: u64,
    /// DE 49, ISO 4217 numeric.
    pub(crate) currency: String,
    /// DE 11.
    pub(crate) stan: String,
    /// DE 7.
    pub(crate) transmission: String,
    /// DE 37: the charge's `processor.reference`.
    pub(crate) rrn: String,
    /// DE 41.
    pub(crate) terminal: String,
    /// DE 42.
    pub(crate) mid: String,
    /// DE 14, `YYMM`, in clear: only in charges recorded before the expiry was sealed with
    /// the PAN (read for their refunds); empty, and not written, in new ones.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) expiry: String,
    /// The PAN, and after `=` the expiry (`YYMM`), as keyd sealed them (`PanSeal`), upper-case
    /// hex.
    pub(crate) sealed_pan: String,
}

/// A card as it was sealed: `PAN=YYMM` (track 2's layout) → the PAN and the expiry; a PAN
/// sealed alone (charges recorded before the expiry was sealed with it) → no expiry.
pub(crate) fn split_card(sealed: &str) -> (&str, Option<&str>) {
    match sealed.split_once('=') {
        Some((pan, expiry)) => (pan, Some(expiry)),
        None => (sealed, None),
    }
}

impl fmt::Debug for Original {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Original")
            .field("mti", &self.mti)
            .field("processing_code", &self.processing_code)
            .field("stan", &self.stan)
            .field("transmission", &self.transmission)
            .field("rrn", &self.rrn)
            .field("terminal", &self.terminal)
            .finish_non_exhaustive()
    }
}

/// What a `0200` carries beyond its [`Original`]: the card as read this time.
#[derive(Clone, Copy)]
pub(crate) struct Presented<'a> {
    /// DE 2.
    pub(crate) pan: &'a str,
    /// DE 14, `YYMM`.
    pub(crate) expiry: &'a str,
    /// DE 22.
    pub(crate) entry_mode: &'a str,
    /// DE 52: a format 0 block under the ZPK.
    pub(crate) pin_block: Option<&'a [u8; 8]>,
    /// DE 55: the terminal's EMV data (hex; written upper-case).
    pub(crate) emv: Option<&'a str>,
}

impl fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presented")
            .field("entry_mode", &self.entry_mode)
            .field("pin_block", &self.pin_block.is_some())
            .field("emv", &self.emv.is_some())
            .finish_non_exhaustive()
    }
}

/// The `0200` of a purchase or refund (12.4: DE 2, 3, 4, 7, 11, 12, 13, 14, 22, 25, 37, 41,
/// 42, 49, [52], [55]; the MAC is added on the way out). DE 12 and 13 are DE 7's time and date.
pub(crate) fn financial(o: &Original, card: Presented<'_>) -> Result<Message, acqlink::Error> {
    let (date, time) = o.transmission.split_at(o.transmission.len().min(4));
    let mut m = Message::new(Mti::FinancialRequest)
        .with(De::Pan, card.pan)?
        .with(De::ProcessingCode, &o.processing_code)?
        .with(De::Amount, &o.amount.to_string())?
        .with(De::TransmissionDateTime, &o.transmission)?
        .with(De::Stan, &o.stan)?
        .with(De::LocalTime, time)?
        .with(De::LocalDate, date)?
        .with(De::Expiry, card.expiry)?
        .with(De::PosEntryMode, card.entry_mode)?
        .with(De::PosConditionCode, "00")?
        .with(De::Rrn, &o.rrn)?
        .with(De::TerminalId, &o.terminal)?
        .with(De::CardAcceptorId, &o.mid)?
        .with(De::Currency, &o.currency)?;
    if let Some(block) = card.pin_block {
        m.set(De::PinBlock, &hex::encode_upper(block))?;
    }
    if let Some(emv) = card.emv {
        m.set(De::IccData, &emv.to_ascii_uppercase())?;
    }
    Ok(m)
}

/// A reversal of `o` (12.4: DE 2, 3, 4, 7, 11, 37, 41, 42, 49, 90; the MAC in DE 128): `0400`
/// the first time, `0401` for every repeat, which keeps the STAN and DE 7 of the first. DE 2
/// is left out only when the sealed PAN can no longer be opened (`pan` `None`), since a
/// reversal the acquirer can match by DE 90 is better than none.
pub(crate) fn reversal(
    o: &Original,
    pan: Option<&str>,
    stan: &str,
    transmission: &str,
    repeat: bool,
) -> Result<Message, acqlink::Error> {
    let original = Message::new(Mti::from_code(o.mti.as_bytes())?)
        .with(De::Stan, &o.stan)?
        .with(De::TransmissionDateTime, &o.transmission)?;
    let mti = if repeat {
        Mti::ReversalRepeat
    } else {
        Mti::ReversalRequest
    };
    let mut m = Message::new(mti);
    if let Some(pan) = pan {
        m.set(De::Pan, pan)?;
    }
    m.set(De::ProcessingCode, &o.processing_code)?
        .set(De::Amount, &o.amount.to_string())?
        .set(De::TransmissionDateTime, transmission)?
        .set(De::Stan, stan)?
        .set(De::Rrn, &o.rrn)?
        .set(De::TerminalId, &o.terminal)?
        .set(De::CardAcceptorId, &o.mid)?
        .set(De::Currency, &o.currency)?
        .set(
            De::OriginalData,
            &acqlink::original_data_elements(&original)?,
        )?;
    Ok(m)
}

/// The `0800` echo test (DE 7, 11, 70 `301`).
pub(crate) fn echo(stan: Stan, clock: &Clock) -> Result<Message, acqlink::Error> {
    Message::new(Mti::NetworkRequest)
        .with(De::TransmissionDateTime, &clock.transmission)?
        .with(De::Stan, &stan.to_string())?
        .with(De::NetworkCode, ECHO)
}

/// A `0210` read as spec 12.6 reads it: DE 39 `00` approves with DE 38 as the authorization
/// code, any other DE 39 declines with its word; the reference is DE 37. `None` for a response
/// without DE 39, which decides nothing and is treated as no response.
pub(crate) fn outcome(response: &Message) -> Option<Outcome> {
    let code = response.get(De::ResponseCode)?.trim_end().to_owned();
    let reference = response
        .get(De::Rrn)
        .map(|r| r.trim_end().to_owned())
        .unwrap_or_default();
    Some(if code == "00" {
        Outcome::Approved {
            authorization_code: response
                .get(De::AuthorizationId)
                .map(|a| a.trim_end().to_owned())
                .unwrap_or_default(),
            reference,
        }
    } else {
        Outcome::Declined {
            decline_code: decline_code(&code).to_owned(),
            iso_response_code: code,
            reference,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use acqlink::{Mac, MacProtected};

    fn clock() -> Clock {
        // 2026-11-27 09:30:15 UTC: day 331 of the year.
        Clock::at(OffsetDateTime::from_unix_timestamp(1_795_771_815).unwrap())
    }

    fn original() -> Original {
        let stan = Stan::new(17).unwrap();
        Original {
            mti: "0200".into(),
            processing_code: PURCHASE.into(),
            amount: 1700,
            currency: "978".into(),
            stan: stan.to_string(),
            transmission: clock().transmission,
            rrn: clock().rrn(stan).unwrap(),
            terminal: "VP004812".into(),
            mid: "123456789012345".into(),
            expiry: String::new(),
            sealed_pan: "00AB".into(),
        }
    }

    #[test]
    fn clock_fields_come_from_one_utc_instant() {
        let c = clock();
        assert_eq!(c.transmission, "1127093015");
        assert_eq!(c.rrn(Stan::new(17).unwrap()).unwrap(), "633109000017");
        let first = Clock::at(OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap());
        assert_eq!(first.transmission, "0101000000");
        assert_eq!(first.rrn(Stan::LAST).unwrap(), "600100999999");
    }

    #[test]
    fn purchase_has_the_profile_fields_in_order() {
        let block = [0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC, 0xDE, 0xF0];
        let m = financial(
            &original(),
            Presented {
                pan: "4242424242424242",
                expiry: "3012",
                entry_mode: "051",
                pin_block: Some(&block),
                emv: Some("9f2608a1b2"),
            },
        )
        .unwrap();
        let numbers: Vec<u8> = m.fields().map(|(de, _)| de.number()).collect();
        assert_eq!(
            numbers,
            [2, 3, 4, 7, 11, 12, 13, 14, 22, 25, 37, 41, 42, 49, 52, 55]
        );
        assert_eq!(m.get(De::Amount), Some("000000001700"));
        assert_eq!(m.get(De::LocalDate), Some("1127"));
        assert_eq!(m.get(De::LocalTime), Some("093015"));
        assert_eq!(m.get(De::PinBlock), Some("123456789ABCDEF0"));
        assert_eq!(m.get(De::IccData), Some("9F2608A1B2"));
        let wire = m.encode_for_mac().with_mac(Mac([7; 8]));
        assert!(wire.starts_with(b"0200"));
        // DE 64 is the MAC (no field above 64), so it is the last 16 characters.
        assert!(wire.ends_with(b"0707070707070707"));
        let back = MacProtected::decode(&wire).unwrap().into_verified();
        assert_eq!(back.get(De::Pan), Some("4242424242424242"));
        // Without a PIN or EMV data, neither field is there.
        let bare = financial(
            &original(),
            Presented {
                pan: "4242424242424242",
                expiry: "3012",
                entry_mode: "052",
                pin_block: None,
                emv: None,
            },
        )
        .unwrap();
        assert!(bare.get(De::PinBlock).is_none() && bare.get(De::IccData).is_none());
        // DE 55 is at most 510 hex characters.
        let long = "AB".repeat(256);
        assert!(
            financial(
                &original(),
                Presented {
                    pan: "4242424242424242",
                    expiry: "3012",
                    entry_mode: "052",
                    pin_block: None,
                    emv: Some(&long),
                },
            )
            .is_err()
        );
    }

    #[test]
    fn reversal_names_the_original_and_macs_in_de_128() {
        let o = original();
        let first = reversal(&o, Some("4242424242424242"), "000018", "1127093025", false).unwrap();
        assert_eq!(first.mti(), Mti::ReversalRequest);
        let numbers: Vec<u8> = first.fields().map(|(de, _)| de.number()).collect();
        assert_eq!(numbers, [2, 3, 4, 7, 11, 37, 41, 42, 49, 90]);
        assert_eq!(
            first.get(De::OriginalData),
            Some("020000001711270930150000000000000000000000")
        );
        assert_eq!(first.get(De::Rrn), Some(o.rrn.as_str()));
        assert_eq!(first.get(De::Stan), Some("000018"));
        assert_eq!(first.mac_field(), 128);
        let repeat = reversal(&o, Some("4242424242424242"), "000018", "1127093025", true).unwrap();
        assert_eq!(repeat.mti(), Mti::ReversalRepeat);
        assert_eq!(
            repeat.fields().collect::<Vec<_>>(),
            first.fields().collect::<Vec<_>>(),
            "a repeat has the same fields"
        );
        let blind = reversal(&o, None, "000018", "1127093025", true).unwrap();
        assert!(blind.get(De::Pan).is_none());
    }

    #[test]
    fn echo_is_de_7_11_70() {
        let m = echo(Stan::new(5).unwrap(), &clock()).unwrap();
        let numbers: Vec<u8> = m.fields().map(|(de, _)| de.number()).collect();
        assert_eq!(numbers, [7, 11, 70]);
        assert_eq!(m.get(De::NetworkCode), Some("301"));
    }

    #[test]
    fn responses_map_to_outcomes_by_de_39() {
        let response = |code: Option<&str>, auth: Option<&str>| {
            let mut m = Message::new(Mti::FinancialResponse)
                .with(De::Stan, "000017")
                .unwrap()
                .with(De::Rrn, "633109000017")
                .unwrap();
            if let Some(c) = code {
                m.set(De::ResponseCode, c).unwrap();
            }
            if let Some(a) = auth {
                m.set(De::AuthorizationId, a).unwrap();
            }
            m
        };
        assert_eq!(
            outcome(&response(Some("00"), Some("000042"))),
            Some(Outcome::Approved {
                authorization_code: "000042".into(),
                reference: "633109000017".into()
            })
        );
        for (code, word) in [
            ("05", "do_not_honor"),
            ("51", "insufficient_funds"),
            ("54", "expired_card"),
            ("55", "incorrect_pin"),
            ("75", "pin_tries_exceeded"),
            ("91", "issuer_unavailable"),
            ("14", "other"),
            ("96", "other"),
        ] {
            assert_eq!(
                outcome(&response(Some(code), None)),
                Some(Outcome::Declined {
                    iso_response_code: code.into(),
                    decline_code: word.into(),
                    reference: "633109000017".into()
                }),
                "{code}"
            );
        }
        assert_eq!(outcome(&response(None, None)), None);
    }

    #[test]
    fn the_expiry_is_kept_only_sealed_with_the_pan() {
        let o = original();
        let stored = serde_json::to_value(&o).unwrap();
        assert!(stored.get("expiry").is_none(), "{stored}");
        assert_eq!(serde_json::from_value::<Original>(stored).unwrap(), o);
        // A charge recorded before the expiry was sealed still reads (for its refunds).
        let mut legacy = serde_json::to_value(&o).unwrap();
        legacy["expiry"] = "3012".into();
        assert_eq!(
            serde_json::from_value::<Original>(legacy).unwrap().expiry,
            "3012"
        );
        assert_eq!(
            split_card("4242424242424242=3012"),
            ("4242424242424242", Some("3012"))
        );
        assert_eq!(split_card("4242424242424242"), ("4242424242424242", None));
    }

    #[test]
    fn debug_shows_no_card_data() {
        let mut o = original();
        o.expiry = "3012".into();
        let shown = format!("{o:?}");
        assert!(
            !shown.contains("00AB") && !shown.contains("3012"),
            "{shown}"
        );
        let p = Presented {
            pan: "4242424242424242",
            expiry: "3012",
            entry_mode: "051",
            pin_block: Some(&[1; 8]),
            emv: None,
        };
        assert!(!format!("{p:?}").contains("4242"));
    }
}
