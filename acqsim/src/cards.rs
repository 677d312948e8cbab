//! The issuer side: contract section 8's outcome table by card and amount, and the card table
//! of PVVs that online PINs are verified against (spec 12.7).
//!
//! The table itself (rules, PVVs) is [`acqlink::testcards`], shared with the API's embedded
//! simulator so that a charge ends the same whichever processor the platform is configured
//! with; this module adds the issuer's own state (which cards it holds, blocked PINs) and the
//! PIN check with clear test keys.

use std::fmt;

pub use acqlink::testcards::{
    CardRule, PIN_BLOCKED_PAN, PVKI, TEST_CARDS, TEST_PIN, amount_declines, luhn_ok, rule,
};
use paycrypto::{Pan, Pin, TdesKey};

/// One card the issuer holds a PVV for.
#[derive(Clone, PartialEq, Eq)]
pub struct Card {
    /// The card number.
    pub pan: String,
    /// The Visa PVV (PVKI 1) of the card's PIN under the PVK, four ASCII digits.
    pub pvv: [u8; 4],
    /// Whether the card's PIN tries are exhausted (every PIN → `75`).
    pub pin_blocked: bool,
}

impl Card {
    /// A card from its PAN and PVV text (PIN not blocked). `None` unless the PAN is 12 to 19
    /// digits and the PVV four.
    pub fn new(pan: &str, pvv: &str) -> Option<Self> {
        let pvv = <[u8; 4]>::try_from(pvv.as_bytes()).ok()?;
        let digits = |t: &[u8]| t.iter().all(u8::is_ascii_digit);
        (digits(&pvv) && digits(pan.as_bytes()) && (12..=19).contains(&pan.len())).then(|| Self {
            pan: pan.to_owned(),
            pvv,
            pin_blocked: false,
        })
    }
}

impl fmt::Debug for Card {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let last4 = self
            .pan
            .get(self.pan.len().saturating_sub(4)..)
            .unwrap_or("");
        f.debug_struct("Card")
            .field("pan", &format_args!("…{last4}"))
            .field("pvv", &"redacted")
            .field("pin_blocked", &self.pin_blocked)
            .finish()
    }
}

/// The cards the issuer can verify a PIN for.
#[derive(Debug, Clone, Default)]
pub struct CardTable {
    cards: Vec<Card>,
}

impl CardTable {
    /// The built-in table ([`TEST_CARDS`]); valid only under the test PVK.
    pub fn test() -> Self {
        let mut table = Self::default();
        for (pan, pvv) in TEST_CARDS {
            // The constants are four ASCII digits each (checked by a unit test).
            if let Ok(pvv) = <[u8; 4]>::try_from(pvv.as_bytes()) {
                table.insert(Card {
                    pan: pan.to_owned(),
                    pvv,
                    pin_blocked: pan == PIN_BLOCKED_PAN,
                });
            }
        }
        table
    }

    /// An empty table (every PIN is then declined `55`).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Adds a card, replacing any with the same PAN.
    pub fn insert(&mut self, card: Card) {
        self.cards.retain(|c| c.pan != card.pan);
        self.cards.push(card);
    }

    /// The card with this PAN.
    pub fn get(&self, pan: &str) -> Option<&Card> {
        self.cards.iter().find(|c| c.pan == pan)
    }

    /// Every card.
    pub fn cards(&self) -> &[Card] {
        &self.cards
    }
}

/// What the PIN check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinCheck {
    /// No DE 52 in the request.
    Absent,
    /// The PIN's PVV is the card's.
    Correct,
    /// The block did not open for this PAN under the ZPK, or the PVV differs.
    Incorrect,
    /// A PIN on a card outside the table.
    UnknownCard,
    /// The card's PIN tries are exhausted.
    Blocked,
}

/// Verifies the PIN in a format 0 block (DE 52, under `zpk`) against the card's PVV: decipher
/// with the PAN, compute the PVV under `pvk` with [`PVKI`], compare in constant time. The clear
/// PIN lives only inside this call (a [`Pin`], wiped on drop).
pub fn check_pin(
    zpk: &TdesKey,
    pvk: &TdesKey,
    card: &Card,
    pan: &Pan,
    block: &[u8; 8],
) -> PinCheck {
    let pin: Pin = match paycrypto::decipher_format0(zpk, block, pan) {
        Ok(pin) => pin,
        Err(_) => return PinCheck::Incorrect,
    };
    match paycrypto::verify_pvv(pvk, pan, PVKI, &pin, &card.pvv) {
        Ok(true) => PinCheck::Correct,
        _ => PinCheck::Incorrect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Keys;

    #[test]
    fn the_card_tables_pvvs_are_those_of_pin_1234_under_the_test_pvk() {
        let keys = Keys::test();
        let pin = Pin::new(TEST_PIN).unwrap();
        let table = CardTable::test();
        assert_eq!(table.cards().len(), TEST_CARDS.len());
        for card in table.cards() {
            let pan = Pan::new(&card.pan).unwrap();
            let pvv = paycrypto::pvv(&keys.pvk, &pan, PVKI, &pin).unwrap();
            assert_eq!(pvv, card.pvv, "{}", card.pan);
            assert!(luhn_ok(&card.pan), "{}", card.pan);
        }
        // And the method itself against the published vector the PVK comes from.
        let published = Pan::new("1122334455667788").unwrap();
        let pvv = paycrypto::pvv(&keys.pvk, &published, 1, &Pin::new("4524").unwrap()).unwrap();
        assert_eq!(&pvv, b"8523");
    }

    #[test]
    fn a_pin_block_opens_only_with_1234_on_its_own_card() {
        let keys = Keys::test();
        let table = CardTable::test();
        let card = table.get("4242424242424242").unwrap();
        let pan = Pan::new(&card.pan).unwrap();
        let good = paycrypto::encipher_format0(&keys.zpk, &Pin::new("1234").unwrap(), &pan);
        let bad = paycrypto::encipher_format0(&keys.zpk, &Pin::new("4321").unwrap(), &pan);
        assert_eq!(
            check_pin(&keys.zpk, &keys.pvk, card, &pan, &good),
            PinCheck::Correct
        );
        assert_eq!(
            check_pin(&keys.zpk, &keys.pvk, card, &pan, &bad),
            PinCheck::Incorrect
        );
        // Bound to another PAN: the block does not open (or opens to another PIN).
        let other = Pan::new("5555555555554444").unwrap();
        let moved = paycrypto::encipher_format0(&keys.zpk, &Pin::new("1234").unwrap(), &other);
        assert_eq!(
            check_pin(&keys.zpk, &keys.pvk, card, &pan, &moved),
            PinCheck::Incorrect
        );
    }

    #[test]
    fn section_8_rules() {
        assert_eq!(rule("4242424242424242"), CardRule::Approve);
        assert_eq!(rule("4000000000000002"), CardRule::Decline("05"));
        assert_eq!(rule("4000000000009995"), CardRule::Decline("51"));
        assert_eq!(rule("4000000000000069"), CardRule::Decline("54"));
        assert_eq!(rule("4000000000000119"), CardRule::ProcessorError);
        assert_eq!(rule("4000000000000259"), CardRule::Timeout);
        assert_eq!(rule("6011111111111117"), CardRule::Approve);
        assert!(amount_declines(1591) && amount_declines(91));
        assert!(!amount_declines(1590) && !amount_declines(9) && !amount_declines(910));
        assert!(luhn_ok("378282246310005") && !luhn_ok("4242424242424241"));
        assert!(!luhn_ok("42424242424") && !luhn_ok("4242 4242 4242 4242"));
    }

    #[test]
    fn debug_hides_the_pan_and_pvv() {
        let shown = format!("{:?}", CardTable::test());
        assert!(
            !shown.contains("4242424242424242") && !shown.contains("7539"),
            "{shown}"
        );
        assert!(shown.contains("…4242"));
    }
}
