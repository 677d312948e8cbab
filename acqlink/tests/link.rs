//! The link's helper values (spec 12.3, 12.4) and the framing.

#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

use acqlink::{
    Deframer, EntryMode, Error, MAX_MESSAGE, Stan, StanCounter, currency_numeric, frame,
    pos_entry_mode, rrn, terminal_id,
};

#[test]
fn stans_wrap_and_skip_zero() {
    assert_eq!(Stan::new(0), Err(Error::Stan));
    assert_eq!(Stan::new(1_000_000), Err(Error::Stan));
    assert_eq!(Stan::LAST.next(), Stan::FIRST);
    assert_eq!(Stan::FIRST.to_string(), "000001");
    assert_eq!(Stan::parse("004812").unwrap().get(), 4812);
    assert_eq!(Stan::parse("000000"), Err(Error::Stan));
    assert_eq!(Stan::parse("4812"), Err(Error::Stan));
    assert_eq!(Stan::parse("+04812"), Err(Error::Stan));
    let mut c = StanCounter::after(Stan::new(999_998).unwrap());
    let got: Vec<u32> = (0..3).map(|_| c.next_stan().get()).collect();
    assert_eq!(got, [999_999, 1, 2]);
    let mut c = StanCounter::new();
    assert_eq!(c.next_free(|s| s.get() < 3).unwrap().get(), 3);
    assert_eq!(StanCounter::new().next_free(|_| true), None);
}

#[test]
fn rrn_is_year_digit_day_hour_stan() {
    let stan = Stan::new(4812).unwrap();
    assert_eq!(rrn(2026, 331, 9, stan).unwrap(), "633109004812");
    assert_eq!(rrn(2030, 1, 0, Stan::FIRST).unwrap(), "000100000001");
    assert_eq!(rrn(2026, 0, 9, stan), Err(Error::Rrn));
    assert_eq!(rrn(2026, 367, 9, stan), Err(Error::Rrn));
    assert_eq!(rrn(2026, 366, 24, stan), Err(Error::Rrn));
}

#[test]
fn terminal_ids() {
    assert_eq!(terminal_id("TID-004812").unwrap(), "VP004812");
    assert_eq!(acqlink::BACKOFFICE_TERMINAL, "VP000000");
    for bad in [
        "TID-04812",
        "TID-0048120",
        "tid-004812",
        "TID-00481A",
        "004812",
        "",
    ] {
        assert_eq!(terminal_id(bad), Err(Error::TerminalId), "{bad}");
    }
}

#[test]
fn entry_modes() {
    assert_eq!(pos_entry_mode(EntryMode::Chip, true), "051");
    assert_eq!(pos_entry_mode(EntryMode::Contactless, false), "072");
    assert_eq!(pos_entry_mode(EntryMode::Swipe, true), "901");
    assert_eq!(pos_entry_mode(EntryMode::Manual, false), "012");
}

#[test]
fn currencies() {
    for (a, n) in [
        ("EUR", "978"),
        ("USD", "840"),
        ("GBP", "826"),
        ("CHF", "756"),
        ("JPY", "392"),
        ("SEK", "752"),
        ("NOK", "578"),
        ("DKK", "208"),
        ("PLN", "985"),
        ("CZK", "203"),
    ] {
        assert_eq!(currency_numeric(a).unwrap(), n);
    }
    assert_eq!(currency_numeric("eur"), Err(Error::Currency));
    assert_eq!(currency_numeric("XXX"), Err(Error::Currency));
}

#[test]
fn framing() {
    assert_eq!(frame(b"0800").unwrap(), b"\x00\x040800");
    assert_eq!(frame(b""), Err(Error::FrameLength));
    assert_eq!(frame(&[b'0'; MAX_MESSAGE + 1]), Err(Error::FrameLength));
    let big = frame(&[b'0'; MAX_MESSAGE]).unwrap();
    assert_eq!(&big[..2], &[0x10, 0x00]);

    let mut d = Deframer::new();
    assert_eq!(d.pop(), Ok(None));
    d.push(&[0x00]);
    assert_eq!(d.pop(), Ok(None));
    d.push(&[0x03, b'a', b'b']);
    assert_eq!(d.pop(), Ok(None));
    assert_eq!(d.buffered(), 4);
    d.push(b"c\x00\x01d\x00");
    assert_eq!(d.pop().unwrap().unwrap(), b"abc");
    assert_eq!(d.pop().unwrap().unwrap(), b"d");
    assert_eq!(d.pop(), Ok(None));
    assert_eq!(d.buffered(), 1);

    for prefix in [[0x00, 0x00], [0x10, 0x01], [0xFF, 0xFF]] {
        let mut d = Deframer::new();
        d.push(&prefix);
        assert_eq!(d.pop(), Err(Error::FrameLength));
        d.push(b"\x00\x01a");
        assert_eq!(d.pop(), Err(Error::FrameLength), "poisoned for good");
    }
}
