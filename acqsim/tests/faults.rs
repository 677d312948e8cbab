//! Reversals and the faults the platform's link must survive, over a real TCP socket:
//! out-of-order answers, latency, withheld answers, wrong MACs, closed connections.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests fail loudly"
)]

#[path = "support/link.rs"]
mod link;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use acqlink::{De, Mti};
use acqsim::client::{Client, Reply};
use acqsim::{Delivery, Faults};
use link::*;

#[tokio::test]
async fn reversal_then_repeated_reversal() {
    let (sim, mut client) = start().await;
    let original = purchase(1, "4242424242424242", 1500);
    assert_eq!(code(&ask(&mut client, &original).await), "00");
    assert!(!sim.is_reversed(&rrn(1)));

    let first = ask(&mut client, &reversal(&original, 2, false)).await;
    assert_eq!(first.mti(), Mti::ReversalResponse);
    assert_eq!(code(&first), "00");
    for de in [
        De::Pan,
        De::Amount,
        De::Stan,
        De::Rrn,
        De::TerminalId,
        De::Currency,
    ] {
        assert_eq!(first.get(de), reversal(&original, 2, false).get(de));
    }
    assert_eq!(first.get(De::AuthorizationId), None);
    assert!(sim.is_reversed(&rrn(1)));
    assert!(sim.is_reversed_stan(TERMINAL, stan(1)));
    assert!(!sim.is_reversed_stan(TERMINAL, stan(2)));

    // The 0401 repeat (same fields and STAN) answers exactly the same, and reverses nothing
    // more.
    let again = ask(&mut client, &reversal(&original, 2, true)).await;
    assert_eq!(again, first);
    let reversals = sim.reversals();
    assert_eq!(reversals.len(), 1);
    let r = &reversals[0];
    assert_eq!(
        (r.original_mti.as_str(), r.original_stan.as_str()),
        ("0200", "000001")
    );
    assert_eq!(r.original_transmission, WHEN);
    assert!(r.original_seen);
    assert_eq!(r.original_response.as_deref(), Some("00"));
    assert_eq!(r.requests, 2);
    let mtis: Vec<Mti> = sim.journal().iter().map(|e| e.mti).collect();
    assert_eq!(
        mtis,
        [
            Mti::FinancialRequest,
            Mti::ReversalRequest,
            Mti::ReversalRepeat
        ]
    );
}

#[tokio::test]
async fn reversal_of_what_the_host_never_answered_or_never_saw() {
    let (sim, mut client) = start().await;
    // Section 8's time-out card: decided "no answer", then reversed by the platform.
    let timed_out = purchase(1, "4000000000000259", 1500);
    client.send(&timed_out).await.unwrap();
    silence(&mut client).await;
    assert_eq!(
        code(&ask(&mut client, &reversal(&timed_out, 2, false)).await),
        "00"
    );
    // A purchase that never reached the host: still acknowledged.
    let lost = purchase(3, "4242424242424242", 1500);
    assert_eq!(
        code(&ask(&mut client, &reversal(&lost, 4, false)).await),
        "00"
    );
    let r = sim.reversals();
    assert_eq!(r.len(), 2);
    assert!(r[0].original_seen && r[0].original_response.is_none());
    assert!(!r[1].original_seen);
    assert!(sim.is_reversed(&rrn(1)) && sim.is_reversed(&rrn(3)));
}

#[tokio::test]
async fn answers_come_out_of_order_with_latency() {
    let (sim, mut client) = start().await;
    sim.set_stan_latency(stan(1), Duration::from_millis(400));
    let started = Instant::now();
    client
        .send(&purchase(1, "4242424242424242", 1500))
        .await
        .unwrap();
    client
        .send(&purchase(2, "4000000000000002", 1500))
        .await
        .unwrap();
    client.send(&echo(3)).await.unwrap();
    let a = answer(&mut client).await;
    let b = answer(&mut client).await;
    let c = answer(&mut client).await;
    assert_eq!(a.get(De::Stan), Some("000002"));
    assert_eq!(b.get(De::Stan), Some("000003"));
    assert_eq!(c.get(De::Stan), Some("000001"));
    assert_eq!((code(&a), code(&c)), ("05", "00"));
    assert!(started.elapsed() >= Duration::from_millis(400));

    // A latency for every answer.
    sim.set_latency(Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(code(&ask(&mut client, &echo(4)).await), "00");
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn many_outstanding_requests_are_all_answered() {
    let (sim, mut client) = start().await;
    for n in 1..=60u32 {
        sim.set_stan_latency(stan(n), Duration::from_millis(u64::from((n * 37) % 200)));
    }
    for n in 1..=60 {
        client
            .send(&purchase(n, "4242424242424242", 1000 + u64::from(n)))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 1..=60 {
        let a = answer(&mut client).await;
        let n: u32 = a.get(De::Stan).unwrap().parse().unwrap();
        // Each answer belongs to its request: same STAN, same amount.
        assert_eq!(
            a.get(De::Amount).unwrap().parse::<u64>().unwrap(),
            1000 + u64::from(n)
        );
        seen.push(n);
    }
    assert_ne!(
        seen,
        (1..=60).collect::<Vec<_>>(),
        "answered in latency order"
    );
    seen.sort_unstable();
    assert_eq!(seen, (1..=60).collect::<Vec<_>>());
}

#[tokio::test]
async fn dropped_answers_by_stan_and_next_n() {
    let (sim, mut client) = start().await;
    sim.drop_stan(stan(5));
    let lost = purchase(5, "4242424242424242", 1500);
    client.send(&lost).await.unwrap();
    silence(&mut client).await;
    // The host still decided it, so the platform's reversal has something to reverse.
    let e = &sim.entries_for_stan(stan(5))[0];
    assert_eq!(
        (e.delivery, e.response_code.as_deref()),
        (Delivery::Dropped, Some("00"))
    );
    assert_eq!(
        code(&ask(&mut client, &reversal(&lost, 6, false)).await),
        "00"
    );
    assert_eq!(sim.reversals()[0].original_response.as_deref(), Some("00"));
    // Per-STAN drops hold until cleared.
    client.send(&echo(5)).await.unwrap();
    silence(&mut client).await;

    sim.drop_next(2);
    client.send(&echo(7)).await.unwrap();
    client.send(&echo(8)).await.unwrap();
    client.send(&echo(9)).await.unwrap();
    assert_eq!(answer(&mut client).await.get(De::Stan), Some("000009"));
    silence(&mut client).await;

    sim.clear_faults();
    assert_eq!(sim.faults(), Faults::default());
    assert_eq!(code(&ask(&mut client, &echo(5)).await), "00");
    let c = sim.counters();
    assert_eq!((c.dropped, c.answered), (4, 3));
}

#[tokio::test]
async fn dropped_fraction() {
    let (sim, mut client) = start().await;
    sim.set_drop_fraction(1.0);
    client.send(&echo(1)).await.unwrap();
    silence(&mut client).await;
    sim.set_drop_fraction(0.5);
    for n in 2..=101 {
        client.send(&echo(n)).await.unwrap();
    }
    let mut answered = 0u64;
    while let Some(reply) = client.recv(SILENCE).await.unwrap() {
        assert!(matches!(reply, Reply::Verified(_)));
        answered += 1;
    }
    assert!((20..=80).contains(&answered), "{answered}");
    let c = sim.counters();
    assert_eq!((c.answered, c.dropped), (answered, 101 - answered));
}

#[tokio::test]
async fn answers_with_a_bad_mac() {
    let (sim, mut client) = start().await;
    sim.bad_mac_next(1);
    sim.bad_mac_stan(stan(3));
    client.send(&echo(1)).await.unwrap();
    assert_eq!(client.recv(ANSWER).await.unwrap(), Some(Reply::BadMac));
    assert_eq!(code(&ask(&mut client, &echo(2)).await), "00");
    client.send(&echo(3)).await.unwrap();
    assert_eq!(client.recv(ANSWER).await.unwrap(), Some(Reply::BadMac));
    assert_eq!(sim.counters().bad_mac, 2);
    assert_eq!(sim.entries_for_stan(stan(3))[0].delivery, Delivery::BadMac);
}

#[tokio::test]
async fn closed_connections() {
    let (sim, mut client) = start().await;
    sim.close_next(1);
    client.send(&echo(1)).await.unwrap();
    let e = client.recv(ANSWER).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
    assert!(sim.wait_until(ANSWER, |s| s.counters().closed == 1).await);
    assert_eq!(sim.journal()[0].delivery, Delivery::Closed);

    // A new connection works; then every connection is closed at once.
    let mut a = Client::connect(sim.addr(), zak()).await.unwrap();
    let mut b = Client::connect(sim.addr(), zak()).await.unwrap();
    assert_eq!(code(&ask(&mut a, &echo(2)).await), "00");
    assert_eq!(code(&ask(&mut b, &echo(3)).await), "00");
    assert_eq!(sim.open_connections(), 2);
    sim.close_connections();
    for c in [&mut a, &mut b] {
        assert_eq!(
            c.recv(ANSWER).await.unwrap_err().kind(),
            ErrorKind::UnexpectedEof
        );
    }
    assert!(sim.wait_until(ANSWER, |s| s.open_connections() == 0).await);
    assert_eq!(sim.counters().closed, 3);
    assert_eq!(sim.counters().connections, 3);
}

#[tokio::test]
async fn a_bad_frame_length_closes_the_connection() {
    let (sim, client) = start().await;
    drop(client);
    let mut raw = tokio::net::TcpStream::connect(sim.addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, &[0x20, 0x00, b'0'])
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(ANSWER, tokio::io::AsyncReadExt::read(&mut raw, &mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert_eq!(sim.counters().malformed, 1);
}

#[tokio::test]
async fn wait_until_sees_a_reversal_that_arrives_later() {
    let (sim, mut client) = start().await;
    let original = purchase(1, "4242424242424242", 1500);
    let waiter = sim.wait_until(ANSWER, |s| s.is_reversed(&rrn(1)));
    let sender = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.send(&reversal(&original, 2, false)).await.unwrap();
    };
    let (reversed, ()) = tokio::join!(waiter, sender);
    assert!(reversed);
    assert!(
        !sim.wait_until(Duration::from_millis(50), |s| s.is_reversed(&rrn(9)))
            .await
    );
}

#[tokio::test]
async fn a_lost_0410_is_recovered_by_the_0401_repeat() {
    let (sim, mut client) = start().await;
    let original = purchase(1, "5555555555554444", 2500);
    assert_eq!(code(&ask(&mut client, &original).await), "00");
    sim.drop_next(1);
    client.send(&reversal(&original, 2, false)).await.unwrap();
    silence(&mut client).await;
    // The host did reverse it; the platform repeats as 0401 until it hears so.
    assert!(sim.is_reversed(&rrn(1)));
    let answer = ask(&mut client, &reversal(&original, 2, true)).await;
    assert_eq!((answer.mti(), code(&answer)), (Mti::ReversalResponse, "00"));
    assert_eq!(sim.reversals()[0].requests, 2);
    let deliveries: Vec<Delivery> = sim
        .entries_for_rrn(&rrn(1))
        .iter()
        .map(|e| e.delivery)
        .collect();
    assert_eq!(
        deliveries,
        [Delivery::Answered, Delivery::Dropped, Delivery::Answered]
    );
}
