//! The tick hub against a real NATS server: one subscription, every listener gets every tick
//! in order, a malformed tick is skipped, and a listener that stops reading misses ticks
//! (counted) without holding up the others.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rust_decimal::Decimal;
use suho_domain::{subject, Symbol, Tick};
use suho_market::TickHub;
use suho_security::Identity;
use suho_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

fn tick(symbol: Symbol, i: i64) -> Tick {
    let bid = Decimal::new(10_000 + i, 4);
    Tick::new(
        symbol,
        bid,
        bid + Decimal::new(2, 4),
        1_700_000_000_000 + i,
        "test",
    )
    .unwrap()
}

#[tokio::test]
async fn every_listener_gets_every_tick_in_order_and_a_stalled_one_only_misses_its_own() {
    let env = TestEnv::new().await;
    let bus = env.bus(Identity::Feed).await;
    let shutdown = CancellationToken::new();
    let mut hub = TickHub::new();
    let (mut reader, reader_missed) = hub.listen("reader");
    // Never read until the end: its queue fills and it misses the rest.
    let (mut stalled, stalled_missed) = hub.listen("stalled");
    let ticks = env.bus(Identity::Ticks).await;
    tokio::spawn(hub.run(ticks.clone(), shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    ticks.client().flush().await.unwrap();

    let eur = Symbol::parse("EURUSD").unwrap();
    let total = TickHub::QUEUE as i64 + 5_000;
    let prefix = bus.prefix().to_string();
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            bus.publish_bytes(subject::tick(&prefix, eur), b"{not a tick".to_vec().into())
                .await
                .unwrap();
            for i in 0..total {
                bus.publish(subject::tick(&prefix, eur), &tick(eur, i))
                    .await
                    .unwrap();
            }
            bus.client().flush().await.unwrap();
        })
    };

    // The reader gets all of them, in order, the malformed one left out.
    for i in 0..total {
        let received = tokio::time::timeout(Duration::from_secs(10), reader.recv())
            .await
            .expect("the reader is not held up by the stalled listener")
            .expect("the hub is running");
        assert_eq!(received.tick, tick(eur, i));
        assert_eq!(
            received.message.subject.as_str(),
            subject::tick(bus.prefix(), eur)
        );
    }
    publisher.await.unwrap();
    assert_eq!(reader_missed.load(Ordering::Relaxed), 0);

    // The stalled listener kept a full queue of the first ticks and missed the rest, counted.
    let missed = stalled_missed.load(Ordering::Relaxed);
    assert!(missed >= 5_000, "missed {missed}");
    let mut kept = 0;
    let mut last = -1;
    while let Ok(Some(received)) =
        tokio::time::timeout(Duration::from_millis(200), stalled.recv()).await
    {
        let i = received.tick.timestamp - 1_700_000_000_000;
        assert!(i > last, "in order");
        last = i;
        kept += 1;
    }
    assert!(kept <= TickHub::QUEUE, "kept {kept}");
    assert_eq!(kept as u64 + missed, total as u64);
    shutdown.cancel();
}

#[tokio::test]
async fn listeners_see_the_end_when_the_hub_stops() {
    let env = TestEnv::new().await;
    let bus = env.bus(Identity::Ticks).await;
    let shutdown = CancellationToken::new();
    let mut hub = TickHub::new();
    let (mut ticks, _) = hub.listen("reader");
    let hub = tokio::spawn(hub.run(bus, shutdown.clone()));
    shutdown.cancel();
    hub.await.unwrap().unwrap();
    assert!(ticks.recv().await.is_none());
}
