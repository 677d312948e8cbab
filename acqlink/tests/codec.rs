//! The codec against the spec: hand-worked golden messages (bitmaps computed by hand from the
//! field table of acquirer-link.md 12.4), every strictness rule of the decoder, the MAC split of
//! 12.5, and a property test that any valid message encodes and decodes to itself.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

use acqlink::{De, Error, Mac, MacProtected, Message, Mti};
use proptest::prelude::*;

const MAC: Mac = Mac([0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF]);

/// A `0200` with every request field of the profile, PIN block included.
fn purchase() -> Message {
    Message::new(Mti::FinancialRequest)
        .with(De::Pan, "4761739001010119")
        .and_then(|m| m.with(De::ProcessingCode, "0"))
        .and_then(|m| m.with(De::Amount, "1250"))
        .and_then(|m| m.with(De::TransmissionDateTime, "1127093015"))
        .and_then(|m| m.with(De::Stan, "4812"))
        .and_then(|m| m.with(De::LocalTime, "093015"))
        .and_then(|m| m.with(De::LocalDate, "1127"))
        .and_then(|m| m.with(De::Expiry, "2812"))
        .and_then(|m| m.with(De::PosEntryMode, "051"))
        .and_then(|m| m.with(De::PosConditionCode, "00"))
        .and_then(|m| m.with(De::Rrn, "633109004812"))
        .and_then(|m| m.with(De::TerminalId, "VP004812"))
        .and_then(|m| m.with(De::CardAcceptorId, "100000000000042"))
        .and_then(|m| m.with(De::Currency, "978"))
        .and_then(|m| m.with(De::PinBlock, "0123456789ABCDEF"))
        .unwrap()
}

/// Bitmap 723C048008C09001: byte 0 has fields 2, 3, 4, 7 (0x40|0x20|0x10|0x02); byte 1 fields
/// 11-14 (0x20|0x10|0x08|0x04); byte 2 field 22 (0x04); byte 3 field 25 (0x80); byte 4 field 37
/// (0x08); byte 5 fields 41, 42 (0x80|0x40); byte 6 fields 49, 52 (0x80|0x10); byte 7 field 64.
const PURCHASE: &str = concat!(
    "0200",
    "723C048008C09001",
    "164761739001010119",
    "000000",
    "000000001250",
    "1127093015",
    "004812",
    "093015",
    "1127",
    "2812",
    "051",
    "00",
    "633109004812",
    "VP004812",
    "100000000000042",
    "978",
    "0123456789ABCDEF",
    "0123456789ABCDEF",
);

#[test]
fn a_purchase_encodes_as_worked_out_by_hand() {
    let unsigned = purchase().encode_for_mac();
    assert_eq!(
        unsigned.mac_input(),
        &PURCHASE.as_bytes()[..PURCHASE.len() - 16]
    );
    let wire = unsigned.with_mac(MAC);
    assert_eq!(String::from_utf8(wire.clone()).unwrap(), PURCHASE);
    let mut signed = purchase();
    signed.set_mac(Some(MAC));
    assert_eq!(signed.encode(), wire);
    assert_eq!(Message::decode(&wire).unwrap(), signed);
    assert_eq!(
        acqlink::mac_input(&wire).unwrap(),
        &PURCHASE.as_bytes()[..PURCHASE.len() - 16]
    );
}

/// A `0400` reversal: secondary bitmap (bit 1), DE 90 and the MAC in DE 128.
#[test]
fn a_reversal_puts_its_mac_in_de_128() {
    let original = purchase();
    let de90 = acqlink::original_data_elements(&original).unwrap();
    assert_eq!(
        de90,
        format!("0200004812{}{}", "1127093015", "0".repeat(22))
    );
    let reversal = Message::new(Mti::ReversalRequest)
        .with(De::Pan, "4761739001010119")
        .and_then(|m| m.with(De::ProcessingCode, "000000"))
        .and_then(|m| m.with(De::Amount, "1250"))
        .and_then(|m| m.with(De::TransmissionDateTime, "1127093115"))
        .and_then(|m| m.with(De::Stan, "004813"))
        .and_then(|m| m.with(De::Rrn, "633109004812"))
        .and_then(|m| m.with(De::TerminalId, "VP004812"))
        .and_then(|m| m.with(De::CardAcceptorId, "100000000000042"))
        .and_then(|m| m.with(De::Currency, "978"))
        .and_then(|m| m.with(De::OriginalData, &de90))
        .unwrap();
    assert_eq!(reversal.mac_field(), 128);
    let wire = reversal.encode_for_mac().with_mac(MAC);
    // Primary: bit 1 (0x80) + 2, 3, 4, 7 = 0xF2; 11 (0x20); 37; 41, 42; 49. Secondary: 90
    // (byte 3 of 65-128: fields 89-96, 0x40) and 128 (0x01).
    let text = String::from_utf8(wire.clone()).unwrap();
    assert_eq!(&text[..36], "0400F220000008C080000000004000000001");
    assert!(text.ends_with(&format!("{de90}0123456789ABCDEF")));
    let received = MacProtected::decode(&wire).unwrap();
    assert_eq!(received.mti(), Mti::ReversalRequest);
    assert_eq!(received.mac(), MAC);
    assert_eq!(received.mac_input(), &wire[..wire.len() - 16]);
    let mut expected = reversal;
    expected.set_mac(Some(MAC));
    assert_eq!(received.into_verified(), expected);
}

/// `0800` echo (DE 70 `301`) without a MAC: the secondary bitmap holds only field 70.
#[test]
fn an_echo_without_mac() {
    let echo = Message::new(Mti::NetworkRequest)
        .with(De::TransmissionDateTime, "1127093015")
        .and_then(|m| m.with(De::Stan, "17"))
        .and_then(|m| m.with(De::NetworkCode, "301"))
        .unwrap();
    let wire = echo.encode();
    assert_eq!(
        wire,
        b"0800822000000000000004000000000000001127093015000017301"
    );
    assert_eq!(Message::decode(&wire).unwrap(), echo);
    assert_eq!(acqlink::mac_input(&wire), Err(Error::MissingMac));
    assert_eq!(MacProtected::decode(&wire).unwrap_err(), Error::MissingMac);
}

#[test]
fn setting_pads_and_refuses() {
    let mut m = Message::new(Mti::FinancialResponse);
    m.set(De::Amount, "5").unwrap();
    assert_eq!(m.get(De::Amount), Some("000000000005"));
    m.set(De::ResponseCode, "0").unwrap();
    assert_eq!(m.get(De::ResponseCode), Some("0 "));
    m.set(De::TerminalId, "VP1").unwrap();
    assert_eq!(m.get(De::TerminalId), Some("VP1     "));
    assert_eq!(
        m.set(De::Amount, "1234567890123").unwrap_err(),
        Error::Length { de: 4 }
    );
    assert_eq!(
        m.set(De::Amount, "12a").unwrap_err(),
        Error::Content { de: 4 }
    );
    assert_eq!(m.set(De::Pan, "").unwrap_err(), Error::Length { de: 2 });
    assert_eq!(
        m.set(De::Pan, &"4".repeat(20)).unwrap_err(),
        Error::Length { de: 2 }
    );
    assert_eq!(
        m.set(De::PinBlock, "0123456789abcdef").unwrap_err(),
        Error::Content { de: 52 }
    );
    assert_eq!(
        m.set(De::PinBlock, "0123").unwrap_err(),
        Error::Length { de: 52 }
    );
    assert_eq!(
        m.set(De::IccData, "9F2").unwrap_err(),
        Error::Content { de: 55 }
    );
    assert_eq!(
        m.set(De::Rrn, "63310900481-").unwrap_err(),
        Error::Content { de: 37 }
    );
    assert_eq!(
        m.set(De::CardAcceptorId, "caf\u{e9}").unwrap_err(),
        Error::Content { de: 42 }
    );
    m.set(De::IccData, &"AB".repeat(255)).unwrap();
    assert_eq!(
        m.set(De::IccData, &"AB".repeat(256)).unwrap_err(),
        Error::Length { de: 55 }
    );
}

fn decode_str(s: &str) -> Result<Message, Error> {
    Message::decode(s.as_bytes())
}

#[test]
fn decoding_is_strict() {
    let echo = "0800822000000000000004000000000000001127093015000017301";
    assert!(decode_str(echo).is_ok());
    // MTI.
    assert_eq!(decode_str("0100"), Err(Error::Mti));
    assert_eq!(decode_str("08"), Err(Error::Mti));
    assert_eq!(decode_str(""), Err(Error::Mti));
    // Bitmaps: lower case, short, non-hex.
    assert_eq!(
        decode_str(&echo.replace("04000000", "04a00000")),
        Err(Error::Bitmap { secondary: true })
    );
    assert_eq!(
        decode_str("0800723c048008c09001"),
        Err(Error::Bitmap { secondary: false })
    );
    assert_eq!(
        decode_str("08008220"),
        Err(Error::Bitmap { secondary: false })
    );
    assert_eq!(
        decode_str("08008220000000000000"),
        Err(Error::Bitmap { secondary: true })
    );
    assert_eq!(
        decode_str("080082200000000000000000000000000000"),
        Err(Error::EmptySecondaryBitmap)
    );
    // Fields 65-128 announced in a secondary bitmap that bit 1 does not announce: the secondary
    // bitmap is then read as field 7's text, which is not what field 7 is.
    assert_eq!(
        decode_str("08000220000000000000040000000000000011270930150000173010"),
        Err(Error::TrailingBytes)
    );
    // Undefined fields: 5 in the primary, 65 in the secondary.
    assert_eq!(
        decode_str("08000800000000000000"),
        Err(Error::UndefinedField { de: 5 })
    );
    assert_eq!(
        decode_str("080080000000000000008000000000000000"),
        Err(Error::UndefinedField { de: 65 })
    );
    // DE 64 with a secondary bitmap.
    assert_eq!(
        decode_str(&format!("08008000000000000001{}", "0400000000000000")),
        Err(Error::MacNotLast)
    );
    // Truncation everywhere, never a panic.
    for end in 0..echo.len() {
        assert!(decode_str(&echo[..end]).is_err(), "{end}");
    }
    assert_eq!(
        decode_str(&echo[..echo.len() - 1]),
        Err(Error::Truncated { de: 70 })
    );
    assert_eq!(decode_str(&format!("{echo}0")), Err(Error::TrailingBytes));
    // Non-digits in a numeric field.
    assert_eq!(
        decode_str(&echo.replace("000017301", "0000 7301")),
        Err(Error::Content { de: 11 })
    );
    // LLVAR lengths: zero, over the maximum, not digits, past the end.
    let pan = |ll: &str| format!("02004000000000000000{ll}4761739001010119");
    assert!(decode_str(&pan("16")).is_ok());
    assert_eq!(decode_str(&pan("00")), Err(Error::Length { de: 2 }));
    assert_eq!(decode_str(&pan("20")), Err(Error::Length { de: 2 }));
    assert_eq!(decode_str(&pan("1A")), Err(Error::Length { de: 2 }));
    assert_eq!(decode_str(&pan("18")), Err(Error::Truncated { de: 2 }));
    assert_eq!(decode_str(&pan("15")), Err(Error::TrailingBytes));
    // LLLVAR over 510, and odd-length or lower-case ICC data.
    let icc = |text: &str| format!("02000000000000000200{text}");
    assert!(decode_str(&icc("0049F02")).is_ok());
    assert_eq!(decode_str(&icc("511")), Err(Error::Length { de: 55 }));
    assert_eq!(decode_str(&icc("0039F0")), Err(Error::Content { de: 55 }));
    assert_eq!(decode_str(&icc("0049f02")), Err(Error::Content { de: 55 }));
    // MAC in lower-case hex.
    let mac = PURCHASE.replace(
        "0123456789ABCDEF0123456789ABCDEF",
        "0123456789ABCDEF0123456789abcdef",
    );
    assert_eq!(decode_str(&mac), Err(Error::Content { de: 64 }));
}

#[test]
fn errors_name_the_field_and_never_the_value() {
    let mut wire = PURCHASE.to_owned();
    wire.replace_range(22..23, "X"); // a letter inside the PAN
    let err = decode_str(&wire).unwrap_err();
    assert_eq!(err, Error::Content { de: 2 });
    let text = err.to_string();
    assert!(text.contains("DE 2") && !text.contains("476173"), "{text}");
    let debug = format!("{:?}", purchase());
    assert!(!debug.contains("4761739001010119") && !debug.contains("0123456789ABCDEF"));
}

// Values of each format, written from the spec's table (not from the crate's).
fn value(de: De) -> BoxedStrategy<String> {
    let n = |len: usize| proptest::string::string_regex(&format!("[0-9]{{{len}}}")).unwrap();
    let re = |pattern: &str| proptest::string::string_regex(pattern).unwrap();
    match de.number() {
        2 => re("[0-9]{1,19}").boxed(),
        3 | 11 | 12 => n(6).boxed(),
        4 => n(12).boxed(),
        7 => n(10).boxed(),
        13 | 14 => n(4).boxed(),
        22 | 49 | 70 => n(3).boxed(),
        25 => n(2).boxed(),
        37 => re("[A-Za-z0-9 ]{12}").boxed(),
        38 => re("[A-Za-z0-9 ]{6}").boxed(),
        39 => re("[A-Za-z0-9 ]{2}").boxed(),
        41 => re("[ -~]{8}").boxed(),
        42 => re("[ -~]{15}").boxed(),
        52 => re("[0-9A-F]{16}").boxed(),
        55 => re("([0-9A-F]{2}){1,255}").boxed(),
        90 => n(42).boxed(),
        other => panic!("DE {other} is not in the profile"),
    }
}

fn message() -> impl Strategy<Value = Message> {
    let fields: Vec<_> = De::all()
        .map(|de| proptest::option::of(value(de)).prop_map(move |v| (de, v)))
        .collect();
    (
        proptest::sample::select(Mti::ALL.to_vec()),
        fields,
        proptest::option::of(any::<[u8; 8]>()),
    )
        .prop_map(|(mti, fields, mac)| {
            let mut m = Message::new(mti);
            for (de, v) in fields {
                if let Some(v) = v {
                    m.set(de, &v).unwrap();
                }
            }
            m.set_mac(mac.map(Mac));
            m
        })
}

proptest! {
    #[test]
    fn any_message_round_trips(m in message()) {
        let wire = m.encode();
        prop_assert!(wire.len() <= acqlink::MAX_MESSAGE);
        prop_assert_eq!(&Message::decode(&wire).unwrap(), &m);
        let unsigned = m.encode_for_mac();
        let input = unsigned.mac_input().to_vec();
        let signed = unsigned.with_mac(MAC);
        prop_assert_eq!(acqlink::mac_input(&signed).unwrap(), &input[..]);
        prop_assert_eq!(&signed[..input.len()], &input[..]);
        let mut framed = acqlink::frame(&signed).unwrap();
        framed.extend(acqlink::frame(&wire).unwrap());
        let mut d = acqlink::Deframer::new();
        for chunk in framed.chunks(7) {
            d.push(chunk);
        }
        prop_assert_eq!(d.pop().unwrap().unwrap(), signed);
        prop_assert_eq!(d.pop().unwrap().unwrap(), wire);
        prop_assert_eq!(d.pop().unwrap(), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(m) = Message::decode(&bytes) {
            prop_assert_eq!(m.encode(), bytes);
        }
    }

    #[test]
    fn one_changed_byte_is_refused_or_reencodes_to_itself(
        m in message(), at in any::<prop::sample::Index>(), byte in any::<u8>()
    ) {
        let mut wire = m.encode();
        let i = at.index(wire.len());
        wire[i] = byte;
        if let Ok(decoded) = Message::decode(&wire) {
            prop_assert_eq!(decoded.encode(), wire);
        }
    }
}
