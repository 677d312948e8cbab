//! The simulators' test cards (contract section 8, spec 12.7): which card declines how, and the
//! PVV of each card's PIN `1234`. Shared by the API's embedded simulator and the acquirer host
//! simulator (`acqsim`) so both end a charge the same way. Public test data, not secrets: the
//! PVVs are those of a published test PIN under a published test PVK.

/// The PVKI the card table's PVVs were generated with (spec 12.7: PVKI 1).
pub const PVKI: u8 = 1;

/// What the issuer decides about a card before looking at the PIN or the amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardRule {
    /// Approves, unless the amount ends in 91 (then `91`).
    Approve,
    /// Declines with this DE 39 (`05`, `51`, `54`).
    Decline(&'static str),
    /// Section 8's "processor error": the link has no DE 39 for it (12.6 makes every code a
    /// decision), so the host answers with a response whose MAC is wrong. The platform treats
    /// that as no response (12.4) and records the charge `failed`, as the contract wants.
    ProcessorError,
    /// Section 8's "processor times out": never answered.
    Timeout,
}

/// Section 8's special cards. Every other Luhn-valid PAN approves.
const RULES: [(&str, CardRule); 8] = [
    ("4242424242424242", CardRule::Approve),
    ("5555555555554444", CardRule::Approve),
    ("378282246310005", CardRule::Approve),
    ("4000000000000002", CardRule::Decline("05")),
    ("4000000000009995", CardRule::Decline("51")),
    ("4000000000000069", CardRule::Decline("54")),
    ("4000000000000119", CardRule::ProcessorError),
    ("4000000000000259", CardRule::Timeout),
];

/// The rule for a PAN (section 8).
pub fn rule(pan: &str) -> CardRule {
    RULES
        .iter()
        .find(|(p, _)| *p == pan)
        .map_or(CardRule::Approve, |(_, r)| *r)
}

/// Section 8's amount rule: an amount ending in 91 on a card that would approve → `91`. The
/// contract reads `amount.value`; the acquirer sees only DE 4 (amount + tip), so a platform
/// test of this rule sends no tip.
pub fn amount_declines(amount: u64) -> bool {
    amount % 100 == 91
}

/// The PAN whose PIN tries are already exhausted: every PIN on it is answered `75`. Section 8
/// gives no card for `pin_tries_exceeded`, so the acquirer adds one (Luhn-valid, not one of
/// section 8's cards; without a PIN it approves like any other card).
pub const PIN_BLOCKED_PAN: &str = "4000000000000754";

/// The built-in card table: section 8's cards, `4111111111111111`, and [`PIN_BLOCKED_PAN`],
/// each with the PVV of PIN `1234` under the published test PVK (`paycrypto::published::PVK_HEX`) (PVKI 1). The PVVs were
/// computed with psec 1.3.0 (`pin.generate_visa_pvv`), an implementation independent of
/// paycrypto, and a unit test recomputes them with paycrypto.
pub const TEST_CARDS: [(&str, &str); 10] = [
    ("4242424242424242", "7539"),
    ("5555555555554444", "0516"),
    ("378282246310005", "1321"),
    ("4000000000000002", "6499"),
    ("4000000000009995", "8831"),
    ("4000000000000069", "2364"),
    ("4000000000000119", "6889"),
    ("4000000000000259", "1017"),
    ("4111111111111111", "9464"),
    (PIN_BLOCKED_PAN, "7851"),
];

/// The test cards' PIN.
pub const TEST_PIN: &str = "1234";

/// Whether `pan` is 12 to 19 ASCII digits with a valid Luhn check digit.
pub fn luhn_ok(pan: &str) -> bool {
    if !(12..=19).contains(&pan.len()) || !pan.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = pan
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let d = d * 2;
                if d > 9 { d - 9 } else { d }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}
