//! The values the link builds for its fields (spec 12.3 and 12.4): STANs, RRNs, DE 22, DE 41,
//! DE 49 and DE 90. Each returns the field's text, ready for [`crate::Message::set`].

use core::fmt;

use crate::{De, Error, Message};

/// A system trace audit number (DE 11): 000001 to 999999. Never 000000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stan(u32);

impl Stan {
    /// The first STAN of a link.
    pub const FIRST: Self = Self(1);
    /// The last STAN before the counter wraps to [`Self::FIRST`].
    pub const LAST: Self = Self(999_999);

    /// A STAN from its number.
    pub fn new(n: u32) -> Result<Self, Error> {
        if (1..=999_999).contains(&n) {
            Ok(Self(n))
        } else {
            Err(Error::Stan)
        }
    }

    /// A STAN from DE 11's six digits.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.len() != 6 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::Stan);
        }
        Self::new(text.parse().map_err(|_| Error::Stan)?)
    }

    /// The number.
    pub fn get(self) -> u32 {
        self.0
    }

    /// The STAN after this one: 999999 is followed by 000001.
    #[must_use]
    pub fn next(self) -> Self {
        if self.0 >= Self::LAST.0 {
            Self::FIRST
        } else {
            Self(self.0 + 1)
        }
    }
}

impl fmt::Display for Stan {
    /// Six digits, as DE 11 carries it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:06}", self.0)
    }
}

/// Hands out a link's STANs in order, wrapping after 999999. Keeping a STAN that is still
/// outstanding from being handed out again (12.3) is the link's business: it knows what is in
/// flight, and [`Self::next_free`] takes that knowledge as a predicate.
#[derive(Debug, Clone)]
pub struct StanCounter {
    next: Stan,
}

impl Default for StanCounter {
    fn default() -> Self {
        Self::new()
    }
}

impl StanCounter {
    /// A counter whose first STAN is 000001.
    pub fn new() -> Self {
        Self { next: Stan::FIRST }
    }

    /// A counter that continues after `last` (for a link restarted from a stored STAN).
    pub fn after(last: Stan) -> Self {
        Self { next: last.next() }
    }

    /// The next STAN.
    pub fn next_stan(&mut self) -> Stan {
        let stan = self.next;
        self.next = stan.next();
        stan
    }

    /// The next STAN for which `in_use` is false, or `None` when all 999,999 are in use.
    pub fn next_free(&mut self, mut in_use: impl FnMut(Stan) -> bool) -> Option<Stan> {
        for _ in 0..Stan::LAST.0 {
            let stan = self.next_stan();
            if !in_use(stan) {
                return Some(stan);
            }
        }
        None
    }
}

/// DE 37, the retrieval reference number: the last digit of the year, the day of the year (3
/// digits), the hour (2 digits) and the STAN (6 digits), 12 characters in all. The caller takes
/// all three from the same UTC time as DE 7.
pub fn rrn(year: u32, day_of_year: u16, hour: u8, stan: Stan) -> Result<String, Error> {
    if !(1..=366).contains(&day_of_year) || hour > 23 {
        return Err(Error::Rrn);
    }
    Ok(format!("{}{day_of_year:03}{hour:02}{stan}", year % 10))
}

/// DE 41 for backoffice charges, which have no terminal.
pub const BACKOFFICE_TERMINAL: &str = "VP000000";

/// DE 41 from a platform terminal id: `TID-004812` → `VP004812`.
pub fn terminal_id(tid: &str) -> Result<String, Error> {
    let digits = tid.strip_prefix("TID-").ok_or(Error::TerminalId)?;
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::TerminalId);
    }
    Ok(format!("VP{digits}"))
}

/// How the card was read, for DE 22.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryMode {
    /// Chip (`05`).
    Chip,
    /// Contactless (`07`).
    Contactless,
    /// Magnetic stripe (`90`).
    Swipe,
    /// Key entry (`01`).
    Manual,
}

/// DE 22: the entry mode's two digits, then `1` when DE 52 (a PIN block) is present, else `2`.
pub fn pos_entry_mode(mode: EntryMode, pin_block_present: bool) -> String {
    let mode = match mode {
        EntryMode::Chip => "05",
        EntryMode::Contactless => "07",
        EntryMode::Swipe => "90",
        EntryMode::Manual => "01",
    };
    format!("{mode}{}", if pin_block_present { '1' } else { '2' })
}

/// DE 90 of a reversal: the original message's MTI, STAN (DE 11) and transmission date and
/// time (DE 7), then 22 zeros (the acquirer id fields the profile does not use).
pub fn original_data_elements(original: &Message) -> Result<String, Error> {
    let stan = original
        .get(De::Stan)
        .ok_or(Error::MissingField { de: 11 })?;
    let when = original
        .get(De::TransmissionDateTime)
        .ok_or(Error::MissingField { de: 7 })?;
    Ok(format!("{}{stan}{when}{:022}", original.mti(), 0))
}

/// The profile's ISO 4217 currencies, alphabetic code to numeric code.
const CURRENCIES: [(&str, &str); 14] = [
    ("AUD", "036"),
    ("CAD", "124"),
    ("CHF", "756"),
    ("CZK", "203"),
    ("DKK", "208"),
    ("EUR", "978"),
    ("GBP", "826"),
    ("HUF", "348"),
    ("JPY", "392"),
    ("NOK", "578"),
    ("PLN", "985"),
    ("RON", "946"),
    ("SEK", "752"),
    ("USD", "840"),
];

/// DE 49 from an ISO 4217 alphabetic code (`EUR` → `978`). Only upper-case codes in the table
/// are known; any other is [`Error::Currency`].
pub fn currency_numeric(alpha: &str) -> Result<&'static str, Error> {
    CURRENCIES
        .iter()
        .find(|(a, _)| *a == alpha)
        .map(|(_, n)| *n)
        .ok_or(Error::Currency)
}
