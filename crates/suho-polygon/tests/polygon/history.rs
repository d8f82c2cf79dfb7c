//! The REST aggregates downloader against the fake Polygon REST server.

use std::time::Duration;

use suho_domain::{Symbol, Timeframe};
use suho_polygon::{BarCheckpoint, InMemoryCheckpoint, PolygonError, PolygonHistory};
use tokio_util::sync::CancellationToken;

use crate::fake_rest::{bar_prices, FakeRest, Mode, BARS, BASE, MIN};
use crate::{config, within, KEY};

fn eurusd() -> Symbol {
    Symbol::parse("EUR/USD").unwrap()
}

fn history(fake: &FakeRest) -> PolygonHistory {
    PolygonHistory::new(config("ws://127.0.0.1:9", &fake.url))
        .expect("config")
        .with_progress(false)
}

const TO: i64 = BASE + (BARS - 1) * MIN;

async fn download(
    fake: &FakeRest,
    store: &InMemoryCheckpoint,
) -> Result<suho_polygon::DownloadSummary, PolygonError> {
    within(
        20,
        "download",
        history(fake).fetch_aggregates(
            eurusd(),
            Timeframe::M1,
            BASE,
            TO,
            store,
            &CancellationToken::new(),
        ),
    )
    .await
}

/// Every bar of the data set exactly once, with exact prices.
fn assert_complete(store: &InMemoryCheckpoint) {
    let bars = store.bars(eurusd(), Timeframe::M1);
    let starts: Vec<i64> = bars.iter().map(|b| b.start).collect();
    let expected: Vec<i64> = (0..BARS).map(|i| BASE + i * MIN).collect();
    assert_eq!(starts, expected);
    for (i, b) in (0..).zip(&bars) {
        let (o, h, l, c) = bar_prices(i);
        assert_eq!((b.open, b.high, b.low, b.close), (o, h, l, c), "bar {i}");
        assert_eq!(b.volume, rust_decimal::Decimal::from(100 + i));
        assert_eq!(
            (b.end, b.closed, b.timeframe),
            (b.start + MIN, true, Timeframe::M1)
        );
    }
    assert_eq!(bars[5].open.to_string(), "1.0855");
    assert_eq!(store.rewrites(), 0, "a bar was stored twice");
    assert_eq!(store.writes(), u64::try_from(BARS).unwrap());
}

#[tokio::test]
async fn follows_next_url_across_three_pages_with_the_key_reappended() {
    let fake = FakeRest::start(Mode::Normal).await;
    let store = InMemoryCheckpoint::new();
    let summary = download(&fake, &store).await.expect("download");
    assert_eq!(summary.pages, 3);
    assert_eq!(summary.bars_stored, 12);
    assert!(!summary.resumed);
    assert_complete(&store);

    let seen = fake.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|s| s.status == 200));
    assert!(seen
        .iter()
        .all(|s| s.query.get("apiKey").map(String::as_str) == Some(KEY)));
    let first = &seen[0].query;
    assert_eq!(first.get("adjusted").map(String::as_str), Some("true"));
    assert_eq!(first.get("sort").map(String::as_str), Some("asc"));
    assert_eq!(first.get("limit").map(String::as_str), Some("50000"));
    assert!(!first.contains_key("cursor"));
    // Pages 2 and 3 came from next_url (cursor kept, path moved on).
    assert_eq!(
        seen[1].query.get("cursor").cloned(),
        Some(format!("c{}", BASE + 4 * MIN))
    );
    assert_eq!(seen[2].from, BASE + 8 * MIN);
    assert_eq!(seen[2].to, TO);
}

#[tokio::test]
async fn rate_limit_429_waits_for_retry_after_then_succeeds() {
    let fake = FakeRest::start(Mode::RateLimited(1)).await;
    let store = InMemoryCheckpoint::new();
    let summary = download(&fake, &store).await.expect("download");
    assert_eq!(summary.bars_stored, 12);
    assert_complete(&store);
    let seen = fake.seen();
    assert_eq!(
        seen.iter().map(|s| s.status).collect::<Vec<_>>(),
        vec![429, 200, 200, 200]
    );
    // The backoff is 20 ms: waiting a full second is the Retry-After at work.
    let waited = seen[1].at.duration_since(seen[0].at);
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}"
    );
    assert_eq!(
        (seen[0].from, seen[1].from),
        (BASE, BASE),
        "same page retried"
    );
}

#[tokio::test]
async fn transient_503_is_retried_with_backoff() {
    let fake = FakeRest::start(Mode::Unavailable(2)).await;
    let store = InMemoryCheckpoint::new();
    download(&fake, &store).await.expect("download");
    assert_complete(&store);
    assert_eq!(
        fake.seen().iter().map(|s| s.status).collect::<Vec<_>>(),
        vec![503, 503, 200, 200, 200]
    );
}

#[tokio::test]
async fn unauthorized_401_is_fatal_and_not_retried() {
    let fake = FakeRest::start(Mode::Unauthorized).await;
    let store = InMemoryCheckpoint::new();
    let err = download(&fake, &store).await.expect_err("401 must fail");
    assert!(matches!(err, PolygonError::Auth { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(!format!("{err} {err:?}").contains(KEY), "key leaked: {err}");
    assert_eq!(fake.seen().len(), 1, "401 must not be retried");
    assert!(store.bars(eurusd(), Timeframe::M1).is_empty());
}

#[tokio::test]
async fn interrupted_download_resumes_after_the_last_stored_bar() {
    let fake = FakeRest::start(Mode::FailAfterPages(2)).await;
    let store = InMemoryCheckpoint::new();

    // First run: two pages arrive, then the server breaks for good.
    let err = download(&fake, &store).await.expect_err("server broke");
    match &err {
        PolygonError::RetriesExhausted { attempts, last } => {
            assert_eq!(*attempts, 3);
            assert!(last.is_retryable(), "{last:?}");
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    assert!(!format!("{err} {err:?}").contains(KEY), "key leaked: {err}");
    let stored = store.bars(eurusd(), Timeframe::M1);
    assert_eq!(stored.len(), 8, "the two good pages were stored");
    assert_eq!(
        store.last_bar_start(eurusd(), Timeframe::M1).await.unwrap(),
        Some(BASE + 7 * MIN)
    );
    let first_run = fake.seen().len();

    // Second run with the same checkpoint: starts after the last stored bar.
    fake.set_mode(Mode::Normal);
    let summary = download(&fake, &store).await.expect("resumed download");
    assert!(summary.resumed);
    assert_eq!(summary.start_ms, BASE + 8 * MIN);
    assert_eq!(summary.bars_stored, 4);
    let seen = fake.seen();
    let resumed = &seen[first_run];
    assert_eq!(
        resumed.from,
        BASE + 8 * MIN,
        "resumed from last bar + 1 minute"
    );
    assert!(!resumed.query.contains_key("cursor"));
    assert_eq!(seen.len(), first_run + 1, "one page left to fetch");
    assert_complete(&store);

    // A third run has nothing left to do and makes no request.
    let summary = download(&fake, &store).await.expect("no-op");
    assert_eq!(summary.bars_stored, 0);
    assert_eq!(fake.seen().len(), first_run + 1);
}

#[tokio::test]
async fn cancellation_during_backoff_returns_cancelled() {
    let fake = FakeRest::start(Mode::RateLimited(100)).await;
    let store = InMemoryCheckpoint::new();
    let shutdown = CancellationToken::new();
    let h = history(&fake);
    let sd = shutdown.clone();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sd.cancel();
    });
    let err = within(
        5,
        "cancelled download",
        h.fetch_aggregates(eurusd(), Timeframe::M1, BASE, TO, &store, &shutdown),
    )
    .await
    .expect_err("cancelled");
    assert!(matches!(err, PolygonError::Cancelled), "{err:?}");
    canceller.await.unwrap();
}
