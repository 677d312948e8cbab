//! Request builders and a connected client for the simulator's integration tests: messages
//! laid out as spec 12.4 lists them for the platform, MACed under the test ZAK.

#![allow(dead_code, reason = "each test file uses its own part of the helpers")]

use std::time::Duration;

use acqlink::{De, Message, Mti, Stan};
use acqsim::client::{Client, Reply};
use acqsim::keys::{KeyName, TEST_ZAK_HEX, TEST_ZPK_HEX, key_from_hex};
use acqsim::{Config, Simulator};
use paycrypto::{Pan, Pin, TdesKey};

/// Long enough for an answer on a loaded 2-core machine.
pub(crate) const ANSWER: Duration = Duration::from_secs(5);
/// How long "no answer" is waited for.
pub(crate) const SILENCE: Duration = Duration::from_millis(300);
pub(crate) const TERMINAL: &str = "VP004812";
pub(crate) const MERCHANT: &str = "100000000004812";
pub(crate) const WHEN: &str = "1127093015";

pub(crate) fn zak() -> TdesKey {
    key_from_hex(TEST_ZAK_HEX, KeyName::Zak).unwrap()
}

pub(crate) fn zpk() -> TdesKey {
    key_from_hex(TEST_ZPK_HEX, KeyName::Zpk).unwrap()
}

pub(crate) fn stan(n: u32) -> Stan {
    Stan::new(n).unwrap()
}

pub(crate) fn rrn(n: u32) -> String {
    acqlink::rrn(2026, 331, 9, stan(n)).unwrap()
}

pub(crate) async fn start() -> (Simulator, Client) {
    start_with(Config::default()).await
}

pub(crate) async fn start_with(config: Config) -> (Simulator, Client) {
    let sim = Simulator::start(config).await.unwrap();
    let client = Client::connect(sim.addr(), zak()).await.unwrap();
    (sim, client)
}

/// A `0200` purchase as the platform sends it (no PIN).
pub(crate) fn purchase(n: u32, pan: &str, amount: u64) -> Message {
    financial(n, pan, amount, "000000")
}

fn financial(n: u32, pan: &str, amount: u64, processing: &str) -> Message {
    Message::new(Mti::FinancialRequest)
        .with(De::Pan, pan)
        .unwrap()
        .with(De::ProcessingCode, processing)
        .unwrap()
        .with(De::Amount, &amount.to_string())
        .unwrap()
        .with(De::TransmissionDateTime, WHEN)
        .unwrap()
        .with(De::Stan, &stan(n).to_string())
        .unwrap()
        .with(De::LocalTime, "093015")
        .unwrap()
        .with(De::LocalDate, "1127")
        .unwrap()
        .with(De::Expiry, "3012")
        .unwrap()
        .with(De::PosEntryMode, "052")
        .unwrap()
        .with(De::PosConditionCode, "00")
        .unwrap()
        .with(De::Rrn, &rrn(n))
        .unwrap()
        .with(De::TerminalId, TERMINAL)
        .unwrap()
        .with(De::CardAcceptorId, MERCHANT)
        .unwrap()
        .with(De::Currency, "978")
        .unwrap()
}

/// A `0200` refund (DE 3 `200000`), without the card number (the platform does not keep it).
pub(crate) fn refund(n: u32, amount: u64) -> Message {
    let mut m = financial(n, "4242424242424242", amount, "200000");
    m.remove(De::Pan);
    m.remove(De::Expiry);
    m
}

/// The purchase with DE 52: `pin` for `pin_pan` in format 0 under the test ZPK (DE 22 says so).
pub(crate) fn with_pin(mut m: Message, pin: &str, pin_pan: &str) -> Message {
    let block =
        paycrypto::encipher_format0(&zpk(), &Pin::new(pin).unwrap(), &Pan::new(pin_pan).unwrap());
    m.set(De::PinBlock, &hex::encode_upper(block)).unwrap();
    m.set(De::PosEntryMode, "051").unwrap();
    m
}

/// The `0400` (or, `repeat`, `0401`) reversing `original`, under STAN `n`.
pub(crate) fn reversal(original: &Message, n: u32, repeat: bool) -> Message {
    let mti = if repeat {
        Mti::ReversalRepeat
    } else {
        Mti::ReversalRequest
    };
    let mut m = Message::new(mti);
    for de in [
        De::Pan,
        De::ProcessingCode,
        De::Amount,
        De::Rrn,
        De::TerminalId,
        De::CardAcceptorId,
        De::Currency,
    ] {
        if let Some(v) = original.get(de) {
            m.set(de, v).unwrap();
        }
    }
    m.set(De::TransmissionDateTime, "1127093045").unwrap();
    m.set(De::Stan, &stan(n).to_string()).unwrap();
    m.set(
        De::OriginalData,
        &acqlink::original_data_elements(original).unwrap(),
    )
    .unwrap();
    m
}

/// A `0800` echo test.
pub(crate) fn echo(n: u32) -> Message {
    Message::new(Mti::NetworkRequest)
        .with(De::TransmissionDateTime, WHEN)
        .unwrap()
        .with(De::Stan, &stan(n).to_string())
        .unwrap()
        .with(De::NetworkCode, "301")
        .unwrap()
}

/// The next answer, which must come and must verify.
pub(crate) async fn answer(client: &mut Client) -> Message {
    match client.recv(ANSWER).await.unwrap() {
        Some(Reply::Verified(m)) => m,
        other => panic!("expected a verified answer, got {other:?}"),
    }
}

/// Sends `m` and returns its verified answer.
pub(crate) async fn ask(client: &mut Client, m: &Message) -> Message {
    client.send(m).await.unwrap();
    answer(client).await
}

/// Asserts that nothing arrives for [`SILENCE`].
pub(crate) async fn silence(client: &mut Client) {
    let got = client.recv(SILENCE).await.unwrap();
    assert!(got.is_none(), "expected no answer, got {got:?}");
}

/// DE 39 of an answer.
pub(crate) fn code(m: &Message) -> &str {
    m.get(De::ResponseCode).unwrap()
}
