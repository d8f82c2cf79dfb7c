//! The data bridge against real NATS (JetStream) and PostgreSQL: ticks and closed candles are
//! stored exactly, a crashed bridge loses nothing and duplicates nothing after a restart (its
//! cursor commits with its rows), replays insert nothing twice (a conflicting batch falls back
//! from the direct COPY to the staging path), batches that fail to be stored are re-read from
//! the cursor, two bridges of one name store everything once, a bridge from before the cursor
//! resumes from its old durable consumer, and a malformed message does not block the stream.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rust_decimal::Decimal;
use sqlx::postgres::PgPool;
use sqlx::Row;
use suho_bridge::{
    candle_count, candle_history, stored_cursor, tick_count, Bridge, BridgeConfig, BridgeStats,
    Store,
};
use suho_domain::{subject, Candle, Symbol, Tick, Timeframe};
use suho_market::SyntheticFeed;
use suho_security::Identity;
use suho_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

/// 2024-01-10T00:00:00Z: synthetic tick times count up from here, one per millisecond.
const BASE_MS: i64 = 1_704_844_800_000;

/// The bridge's own role (its table rights, no DDL).
async fn pool(env: &TestEnv) -> PgPool {
    env.pool(Identity::Bridge).await
}

/// The bridge's own connection.
async fn nats(env: &TestEnv) -> async_nats::Client {
    env.bus(Identity::Bridge).await.client().clone()
}

/// The market feed's connection: the one identity that may publish ticks.
async fn feed(env: &TestEnv) -> async_nats::Client {
    env.bus(Identity::Feed).await.client().clone()
}

fn config(env: &TestEnv) -> BridgeConfig {
    let mut c = BridgeConfig::from_config(&env.config);
    c.batch_max = 500;
    c
}

/// The state of `stream` once its last sequence is `last` (at most 10 s). The feed publishes
/// on a connection of its own, so the stream has every tick soon after the feed's flush, not
/// at once.
async fn stream_reaches(
    client: &async_nats::Client,
    stream: &str,
    last: u64,
) -> async_nats::jetstream::stream::State {
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream(stream).await.expect("stream");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = stream.info().await.expect("info").state.clone();
        if state.last_sequence >= last || Instant::now() > deadline {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` every 50 ms until it is true, panicking with `what` after `timeout`.
async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a bridge (schema, stream, consumer ready on return) and runs it in a task.
async fn spawn_bridge(
    config: BridgeConfig,
    nats: async_nats::Client,
    pool: PgPool,
    shutdown: &CancellationToken,
) -> (tokio::task::JoinHandle<()>, Arc<BridgeStats>) {
    let bridge = tokio::time::timeout(Duration::from_secs(20), Bridge::start(config, nats, pool))
        .await
        .expect("bridge start timed out")
        .expect("bridge start");
    let stats = bridge.stats();
    let shutdown = shutdown.clone();
    let task = tokio::spawn(async move {
        bridge.run(shutdown).await.expect("bridge run");
    });
    (task, stats)
}

/// Shuts the bridges down and waits (at most 10 s each) for them to stop cleanly.
async fn stop(
    shutdown: &CancellationToken,
    tasks: impl IntoIterator<Item = tokio::task::JoinHandle<()>>,
) {
    shutdown.cancel();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("bridge stops on shutdown")
            .expect("bridge task");
    }
}

/// `n` ticks stamped `start`, `start + 1` ... ms (distinct stamps, so distinct rows).
fn ticks_from(start: i64, n: usize, seed: u64) -> Vec<Tick> {
    let mut feed = SyntheticFeed::new(&suho_domain::major_fx(), seed);
    (0..n)
        .map(|i| {
            feed.next_tick(start + i64::try_from(i).expect("small"))
                .expect("a tick")
        })
        .collect()
}

fn ticks(n: usize, seed: u64) -> Vec<Tick> {
    ticks_from(BASE_MS, n, seed)
}

async fn publish_tick(feed: &async_nats::Client, prefix: &str, t: &Tick) {
    let payload = serde_json::to_vec(t).expect("encode");
    feed.publish(subject::tick(prefix, t.symbol), payload.into())
        .await
        .expect("publish");
}

fn closed_candle(symbol: Symbol, tf: Timeframe, start: i64, k: i64) -> Candle {
    let p = |x: i64| Decimal::new(108_500 + x, 5);
    Candle {
        symbol,
        timeframe: tf,
        open: p(k),
        high: p(k + 7),
        low: p(k - 3),
        close: p(k + 2),
        volume: Decimal::from(10 + k),
        start,
        end: start + tf.duration_ms(),
        closed: true,
    }
}

type TickKey = (String, i64, String, String, String);

fn key_of(t: &Tick) -> TickKey {
    (
        t.symbol.to_string(),
        t.timestamp,
        t.bid.normalize().to_string(),
        t.ask.normalize().to_string(),
        t.source.clone(),
    )
}

/// Every stored tick, prices as normalized exact decimals (JSON numbers on the wire do not
/// keep trailing zeros, so the scale is not part of the comparison; the value is, exactly).
async fn stored_ticks(pool: &PgPool) -> Vec<TickKey> {
    sqlx::query(
        "SELECT symbol, (extract(epoch FROM ts) * 1000)::bigint AS ms, bid::text AS bid, \
         ask::text AS ask, source FROM market_ticks",
    )
    .fetch_all(pool)
    .await
    .expect("reading ticks")
    .iter()
    .map(|r| {
        (
            r.get("symbol"),
            r.get("ms"),
            exact(r.get("bid")),
            exact(r.get("ask")),
            r.get("source"),
        )
    })
    .collect()
}

fn exact(text: String) -> String {
    Decimal::from_str_exact(&text)
        .expect("a decimal")
        .normalize()
        .to_string()
}

async fn count(pool: &PgPool) -> i64 {
    tick_count(pool, None).await.expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_ticks_and_closed_candles_exactly() {
    let env = TestEnv::new().await;
    let pool = pool(&env).await;
    let client = nats(&env).await;
    let feed = feed(&env).await;
    let shutdown = CancellationToken::new();
    let (task, stats) = spawn_bridge(config(&env), client.clone(), pool.clone(), &shutdown).await;

    let published = ticks(2_000, 42);
    for t in &published {
        publish_tick(&feed, &env.prefix, t).await;
    }
    let eur = Symbol::parse("EURUSD").expect("sym");
    let m1_start = Timeframe::M1.align(BASE_MS);
    let candles: Vec<Candle> = (0..30)
        .map(|k| closed_candle(eur, Timeframe::M1, m1_start + k * 60_000, k))
        .collect();
    for c in &candles {
        // A forming update first (not stored), then the closed candle.
        let mut open = c.clone();
        open.closed = false;
        for v in [&open, c] {
            let payload = serde_json::to_vec(v).expect("encode");
            feed.publish(
                subject::candle(&env.prefix, eur, Timeframe::M1),
                payload.into(),
            )
            .await
            .expect("publish");
        }
    }
    let h1 = closed_candle(eur, Timeframe::H1, Timeframe::H1.align(BASE_MS), 99);
    feed.publish(
        subject::candle(&env.prefix, eur, Timeframe::H1),
        serde_json::to_vec(&h1).expect("encode").into(),
    )
    .await
    .expect("publish");
    feed.flush().await.expect("flush");

    wait_until(Duration::from_secs(30), "2000 ticks and 31 candles", || {
        let pool = pool.clone();
        async move {
            count(&pool).await == 2_000 && candle_count(&pool, None).await.expect("count") == 31
        }
    })
    .await;

    let stored: HashSet<TickKey> = stored_ticks(&pool).await.into_iter().collect();
    let want: HashSet<TickKey> = published.iter().map(key_of).collect();
    assert_eq!(want.len(), 2_000, "the published ticks are distinct");
    assert_eq!(
        stored, want,
        "stored ticks equal published ones, digit for digit"
    );
    assert_eq!(
        tick_count(&pool, Some(eur)).await.expect("count"),
        i64::try_from(published.iter().filter(|t| t.symbol == eur).count()).expect("small")
    );

    // History: candles 5..20 in [from, to), in order, exactly as published.
    let from = m1_start + 5 * 60_000;
    let to = m1_start + 20 * 60_000;
    let history = candle_history(&pool, eur, Timeframe::M1, from, to, 1_000)
        .await
        .expect("history");
    assert_eq!(history, candles[5..20].to_vec());
    let limited = candle_history(&pool, eur, Timeframe::M1, from, to, 3)
        .await
        .expect("history");
    assert_eq!(limited, candles[5..8].to_vec());
    let hourly = candle_history(&pool, eur, Timeframe::H1, 0, i64::MAX / 2, 10)
        .await
        .expect("history");
    assert_eq!(hourly, vec![h1]);
    assert!(
        candle_history(&pool, eur, Timeframe::M5, 0, i64::MAX / 2, 10)
            .await
            .expect("history")
            .is_empty()
    );

    // A batch is counted after its commit: wait for the stats to have the last one.
    wait_until(Duration::from_secs(10), "every message counted", || {
        let s = stats.snapshot();
        async move { s.messages >= 2_061 }
    })
    .await;
    let s = stats.snapshot();
    assert_eq!(s.open_candles, 30, "{s:?}");
    assert_eq!(s.invalid, 0, "{s:?}");
    stop(&shutdown, [task]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_bridge_restarts_without_loss_or_duplicates() {
    const N: usize = 5_000;
    const PER_TICK_MS: u64 = 2; // steady pace: ~500 ticks per second (10 every 20 ms)
    let env = TestEnv::new().await;
    let cfg = config(&env);
    let feed = feed(&env).await;
    let published_ticks = ticks(N, 7);

    // Bridge 1, with its own NATS connection and pool, as a separate process would have.
    let shutdown = CancellationToken::new();
    let (task1, stats1) =
        spawn_bridge(cfg.clone(), nats(&env).await, pool(&env).await, &shutdown).await;

    // The publisher: steady pace, counts what it has published. It holds its last 1,000 ticks
    // until crash 2, so that however slowly bridge 2 starts, ticks go on arriving through
    // both outages.
    const HELD: usize = N - 1_000;
    let published = Arc::new(AtomicU64::new(0));
    let (crash2_tx, mut crash2) = tokio::sync::watch::channel(false);
    let publisher = {
        let feed = feed.clone();
        let prefix = env.prefix.clone();
        let published = Arc::clone(&published);
        let ticks = published_ticks.clone();
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(10 * PER_TICK_MS));
            for (i, chunk) in ticks.chunks(10).enumerate() {
                if i * 10 == HELD {
                    crash2.wait_for(|crashed| *crashed).await.expect("crash 2");
                    pace.reset();
                }
                pace.tick().await;
                for t in chunk {
                    publish_tick(&feed, &prefix, t).await;
                    published.fetch_add(1, Ordering::SeqCst);
                }
            }
            feed.flush().await.expect("flush");
        })
    };
    let observer = pool(&env).await;

    // Crash 1 mid-stream, after the bridge has stored some rows.
    wait_until(Duration::from_secs(30), "bridge 1 stores rows", || {
        let p = observer.clone();
        let published = published.load(Ordering::SeqCst);
        async move { published >= 1_200 && count(&p).await > 0 }
    })
    .await;
    task1.abort();
    let _ = task1.await;
    let down1 = Instant::now();
    let at_kill1 = published.load(Ordering::SeqCst);
    let stored_at_kill1 = count(&observer).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let at_restart1 = published.load(Ordering::SeqCst);
    let outage1 = down1.elapsed();
    let (task2, stats2) =
        spawn_bridge(cfg.clone(), nats(&env).await, pool(&env).await, &shutdown).await;

    // Crash 2, again mid-stream, once bridge 2 has stored something of its own.
    let stored_at_restart1 = count(&observer).await;
    wait_until(Duration::from_secs(30), "bridge 2 stores rows", || {
        let p = observer.clone();
        let published = published.load(Ordering::SeqCst);
        async move { published >= 2_800 && count(&p).await > stored_at_restart1 }
    })
    .await;
    task2.abort();
    let _ = task2.await;
    let down2 = Instant::now();
    let at_kill2 = published.load(Ordering::SeqCst);
    crash2_tx.send(true).expect("the publisher waits");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let at_restart2 = published.load(Ordering::SeqCst);
    let outage2 = down2.elapsed();
    let (task3, stats3) = spawn_bridge(cfg, nats(&env).await, pool(&env).await, &shutdown).await;

    tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publisher finishes")
        .expect("publisher task");
    let n = i64::try_from(N).expect("small");
    wait_until(Duration::from_secs(60), "all ticks stored", || {
        let p = observer.clone();
        async move { count(&p).await >= n }
    })
    .await;
    // Give a stray redelivery time to show up, then check nothing was added.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let rows = stored_ticks(&observer).await;
    let distinct: HashSet<&TickKey> = rows.iter().collect();
    let want: HashSet<TickKey> = published_ticks.iter().map(key_of).collect();
    let missing = want.iter().filter(|k| !distinct.contains(k)).count();
    let (s1, s2, s3) = (stats1.snapshot(), stats2.snapshot(), stats3.snapshot());
    println!(
        "restart test: published {N} ticks at ~{} per second\n  \
         crash 1: killed at {at_kill1} published ({stored_at_kill1} stored), outage {outage1:?}, \
         {} published during the outage\n  \
         crash 2: killed at {at_kill2} published, outage {outage2:?}, {} published during the \
         outage\n  \
         stored rows {}, distinct {}, missing {missing}\n  \
         bridge 1 {s1:?}\n  bridge 2 {s2:?}\n  bridge 3 {s3:?}",
        1_000 / PER_TICK_MS,
        at_restart1 - at_kill1,
        at_restart2 - at_kill2,
        rows.len(),
        distinct.len(),
    );
    assert!(
        at_restart1 > at_kill1,
        "ticks were published during outage 1"
    );
    assert!(
        at_restart2 > at_kill2,
        "ticks were published during outage 2"
    );
    assert_eq!(missing, 0, "every published tick is stored");
    assert_eq!(rows.len(), distinct.len(), "no duplicate rows");
    assert_eq!(rows.len(), N, "stored rows equal published messages");
    let dup_count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT symbol, ts, source FROM market_ticks \
         GROUP BY 1, 2, 3 HAVING count(*) > 1) d",
    )
    .fetch_one(&observer)
    .await
    .expect("duplicate check");
    assert_eq!(dup_count, 0);
    // The rows above are the proof of exactly-once. The stats can only confirm that no bridge
    // inserted more: a bridge counts a batch after its commit returns, so one aborted between
    // the two has stored rows it never counted.
    let inserted = s1.ticks_inserted + s2.ticks_inserted + s3.ticks_inserted;
    assert!(
        inserted <= N as u64 && s3.ticks_inserted > 0,
        "no tick inserted twice across bridges: {inserted}"
    );
    stop(&shutdown, [task3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_batches_insert_nothing_twice() {
    let env = TestEnv::new().await;
    let pool = pool(&env).await;

    // Store level: the same batch twice (a crash after commit, before the ack).
    let store = Store::open(pool.clone()).await.expect("store");
    let batch = ticks(300, 3);
    let eur = Symbol::parse("EURUSD").expect("sym");
    let candles: Vec<Candle> = (0..5)
        .map(|k| {
            closed_candle(
                eur,
                Timeframe::M5,
                Timeframe::M5.align(BASE_MS) + k * 300_000,
                k,
            )
        })
        .collect();
    let first = store.write(&batch, &candles).await.expect("write");
    assert_eq!((first.ticks_inserted, first.candles_inserted), (300, 5));
    let again = store.write(&batch, &candles).await.expect("rewrite");
    assert_eq!((again.ticks_inserted, again.candles_inserted), (0, 0));
    assert_eq!(again.duplicates(), 305);
    // Duplicates inside one batch collapse too.
    let doubled: Vec<Tick> = batch.iter().chain(batch.iter()).cloned().collect();
    assert_eq!(
        store
            .write(&doubled, &[])
            .await
            .expect("write")
            .ticks_inserted,
        0
    );

    // Stream level: a second consumer on the same stream redelivers every message.
    let client = nats(&env).await;
    let feed = feed(&env).await;
    let shutdown = CancellationToken::new();
    let cfg = config(&env);
    let (task, stats) = spawn_bridge(cfg.clone(), client.clone(), pool.clone(), &shutdown).await;
    let more = ticks_from(BASE_MS + 3_600_000, 1_000, 4);
    for t in &more {
        publish_tick(&feed, &env.prefix, t).await;
    }
    feed.flush().await.expect("flush");
    wait_until(Duration::from_secs(30), "1300 ticks", || {
        let p = pool.clone();
        async move { count(&p).await == 1_300 }
    })
    .await;
    let mut replay = cfg.clone();
    replay.consumer_name = format!("{}-replay", cfg.consumer_name);
    let (task2, stats2) = spawn_bridge(replay, client.clone(), pool.clone(), &shutdown).await;
    wait_until(
        Duration::from_secs(30),
        "the replay consumer reads everything",
        || {
            let s = stats2.snapshot();
            async move { s.messages >= 1_000 }
        },
    )
    .await;
    let s2 = stats2.snapshot();
    assert_eq!(s2.ticks_inserted, 0, "{s2:?}");
    assert_eq!(s2.duplicates, 1_000, "{s2:?}");
    assert_eq!(count(&pool).await, 1_300);
    assert_eq!(stats.snapshot().ticks_inserted, 1_000);
    stop(&shutdown, [task, task2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_skipped_and_do_not_block() {
    let env = TestEnv::new().await;
    let pool = pool(&env).await;
    let client = nats(&env).await;
    let feed = feed(&env).await;
    let shutdown = CancellationToken::new();
    let cfg = config(&env);
    let (task, stats) = spawn_bridge(cfg.clone(), client.clone(), pool.clone(), &shutdown).await;
    let eur = Symbol::parse("EURUSD").expect("sym");
    let good = ticks(60, 9);

    let tick_subject = subject::tick(&env.prefix, eur);
    let bad: Vec<(String, Vec<u8>)> = vec![
        (tick_subject.clone(), b"\x00\xffnot json".to_vec()),
        (
            tick_subject.clone(),
            br#"{"symbol":"EUR/USD","bid":1.2,"ask":1.1,"timestamp":1704844800000,"source":"x"}"#
                .to_vec(),
        ),
        (
            subject::tick(&env.prefix, Symbol::parse("GBPUSD").expect("sym")),
            serde_json::to_vec(&good[0]).expect("encode"),
        ),
        (
            subject::candle(&env.prefix, eur, Timeframe::M1),
            b"[]".to_vec(),
        ),
        (
            format!("{}market.eurusd.tick", env.prefix),
            serde_json::to_vec(&good[0]).expect("encode"),
        ),
    ];
    for (i, t) in good.iter().enumerate() {
        if let Some((subj, payload)) = bad.get(i) {
            feed.publish(subj.clone(), payload.clone().into())
                .await
                .expect("publish");
        }
        publish_tick(&feed, &env.prefix, t).await;
    }
    feed.flush().await.expect("flush");
    wait_until(Duration::from_secs(30), "the good ticks", || {
        let p = pool.clone();
        async move { count(&p).await == 60 }
    })
    .await;
    wait_until(Duration::from_secs(10), "the bad ones counted", || {
        let s = stats.snapshot();
        async move { s.invalid == 5 }
    })
    .await;

    // The cursor moved past the bad messages too: nothing is parked on them.
    let js = async_nats::jetstream::new(client.clone());
    let mut stream = js.get_stream(&cfg.stream_name).await.expect("stream");
    let last = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    assert_eq!(last, 65, "60 good and 5 bad messages");
    wait_until(
        Duration::from_secs(10),
        "the cursor at the stream's end",
        || {
            let p = pool.clone();
            let name = cfg.consumer_name.clone();
            async move { stored_cursor(&p, &name).await.expect("cursor") == Some(last) }
        },
    )
    .await;

    // And a later good tick still gets through.
    let late = ticks(61, 9).pop().expect("tick");
    publish_tick(&feed, &env.prefix, &late).await;
    wait_until(Duration::from_secs(10), "a later tick", || {
        let p = pool.clone();
        async move { count(&p).await == 61 }
    })
    .await;
    stop(&shutdown, [task]).await;
}

/// The direct path (COPY into the tables) takes fresh batches, across a day's partition
/// boundary; a batch holding any stored row, or a duplicate inside itself, is rolled back
/// whole and stored through staging, which inserts only the new rows; a candle already stored
/// keeps its first content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_batches_fall_back_to_staging_without_duplicates() {
    let env = TestEnv::new().await;
    let pool = pool(&env).await;
    let store = Store::open(pool.clone()).await.expect("store");
    let eur = Symbol::parse("EURUSD").expect("sym");

    // Fresh ticks spanning midnight (two daily partitions, the second created on demand) and
    // fresh candles spanning a month boundary: direct.
    let day_end = BASE_MS + 86_400_000;
    let first = ticks_from(day_end - 200, 400, 11);
    let month_end = 1_706_745_600_000; // 2024-02-01T00:00:00Z
    let candles: Vec<Candle> = (-2..2)
        .map(|k| closed_candle(eur, Timeframe::H1, month_end + k * 3_600_000, k))
        .collect();
    let r = store.write(&first, &candles).await.expect("write");
    assert_eq!((r.ticks_inserted, r.candles_inserted), (400, 4), "{r:?}");
    assert!(!r.staged, "a fresh batch takes the direct path: {r:?}");

    // Half stored, half new: the direct copy conflicts and is rolled back; staging inserts
    // the new half only.
    let second: Vec<Tick> = first[200..]
        .iter()
        .cloned()
        .chain(ticks_from(day_end + 200, 200, 14))
        .collect();
    let r = store.write(&second, &[]).await.expect("write");
    assert!(r.staged, "{r:?}");
    assert_eq!(r.ticks_inserted, 200, "{r:?}");
    assert_eq!(r.duplicates(), 200, "{r:?}");

    // A candle's key already stored with other values: nothing inserted, the first kept,
    // and the new ticks of the same batch are stored.
    let mut changed = candles[1].clone();
    changed.close += Decimal::new(1, 5);
    let more = ticks_from(day_end + 1_000, 50, 12);
    let r = store
        .write(&more, std::slice::from_ref(&changed))
        .await
        .expect("write");
    assert!(r.staged, "{r:?}");
    assert_eq!((r.ticks_inserted, r.candles_inserted), (50, 0), "{r:?}");
    let history = candle_history(&pool, eur, Timeframe::H1, 0, i64::MAX / 2, 10)
        .await
        .expect("history");
    assert_eq!(history, candles, "stored candles keep their first content");

    // A duplicate inside one fresh batch.
    let fresh = ticks_from(BASE_MS + 7_200_000, 30, 13);
    let doubled: Vec<Tick> = fresh.iter().chain(&fresh[..10]).cloned().collect();
    let r = store.write(&doubled, &[]).await.expect("write");
    assert!(r.staged, "{r:?}");
    assert_eq!(r.ticks_inserted, 30, "{r:?}");

    // Every tick exactly once, times to the millisecond, on either path.
    let rows = stored_ticks(&pool).await;
    let distinct: HashSet<&TickKey> = rows.iter().collect();
    assert_eq!(rows.len(), distinct.len(), "no duplicate rows");
    let want: HashSet<TickKey> = first
        .iter()
        .chain(&second)
        .chain(&more)
        .chain(&fresh)
        .map(key_of)
        .collect();
    assert_eq!(rows.iter().cloned().collect::<HashSet<_>>(), want);
    let partitions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'market_ticks'::regclass",
    )
    .fetch_one(&pool)
    .await
    .expect("partitions");
    assert_eq!(partitions, 2, "the ticks span two daily partitions");
}

/// Batches that fail to be stored (PostgreSQL refuses every row for a while) leave the cursor
/// where it was, and the bridge re-reads them from it (dropping the batch it had prefetched);
/// once the database accepts rows again, every tick is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_batches_are_reread_from_the_cursor() {
    const N: usize = 3_000;
    let env = TestEnv::new().await;
    let pool = pool(&env).await;
    let client = nats(&env).await;
    let feed = feed(&env).await;
    let mut cfg = config(&env);
    cfg.retry_max = Duration::from_millis(800);
    let shutdown = CancellationToken::new();
    let (task, stats) = spawn_bridge(cfg, client.clone(), pool.clone(), &shutdown).await;
    // Only the tables' owner may add a trigger.
    let owner = env.owner_pool().await;
    for sql in [
        "CREATE FUNCTION bridge_test_refuse() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$",
        "CREATE TRIGGER bridge_test_refuse BEFORE INSERT ON market_ticks \
         FOR EACH ROW EXECUTE FUNCTION bridge_test_refuse()",
    ] {
        sqlx::query(sql).execute(&owner).await.expect(sql);
    }

    let published = ticks(N, 21);
    for t in &published {
        publish_tick(&feed, &env.prefix, t).await;
    }
    feed.flush().await.expect("flush");
    wait_until(Duration::from_secs(30), "failed batches", || {
        let s = stats.snapshot();
        async move { s.batch_errors >= 3 }
    })
    .await;
    assert_eq!(count(&pool).await, 0, "nothing stored while refused");

    sqlx::query("DROP TRIGGER bridge_test_refuse ON market_ticks")
        .execute(&owner)
        .await
        .expect("drop trigger");
    let n = i64::try_from(N).expect("small");
    wait_until(Duration::from_secs(60), "every tick stored", || {
        let p = pool.clone();
        async move { count(&p).await >= n }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = stored_ticks(&pool).await;
    let distinct: HashSet<&TickKey> = rows.iter().collect();
    let want: HashSet<TickKey> = published.iter().map(key_of).collect();
    assert_eq!(rows.len(), N, "stored rows equal published messages");
    assert_eq!(distinct.len(), N, "no duplicate rows");
    assert!(want.iter().all(|k| distinct.contains(k)), "no tick lost");
    let s = stats.snapshot();
    assert_eq!(s.ticks_inserted, N as u64, "{s:?}");
    stop(&shutdown, [task]).await;
}

/// Two bridges with the same name on the same stream (a restart overlapping the old process,
/// say): they serialise on the cursor row, so every tick is stored once between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bridges_of_one_name_store_everything_once() {
    const N: usize = 4_000;
    let env = TestEnv::new().await;
    let pool = pool(&env).await;
    let client = nats(&env).await;
    let feed = feed(&env).await;
    let shutdown = CancellationToken::new();
    let cfg = config(&env);
    let (task1, stats1) = spawn_bridge(cfg.clone(), client.clone(), pool.clone(), &shutdown).await;
    let (task2, stats2) =
        spawn_bridge(cfg.clone(), nats(&env).await, pool.clone(), &shutdown).await;
    let published = ticks(N, 31);
    for t in &published {
        publish_tick(&feed, &env.prefix, t).await;
    }
    feed.flush().await.expect("flush");
    let n = i64::try_from(N).expect("small");
    wait_until(Duration::from_secs(60), "every tick stored", || {
        let p = pool.clone();
        async move { count(&p).await >= n }
    })
    .await;
    wait_until(Duration::from_secs(10), "the cursor at the end", || {
        let p = pool.clone();
        let name = cfg.consumer_name.clone();
        async move { stored_cursor(&p, &name).await.expect("cursor") == Some(N as u64) }
    })
    .await;
    // A batch is counted after its commit: wait for the stats to have the last one.
    wait_until(
        Duration::from_secs(10),
        "every stored batch counted",
        || {
            let (s1, s2) = (stats1.snapshot(), stats2.snapshot());
            async move {
                s1.ticks_inserted + s2.ticks_inserted + s1.duplicates + s2.duplicates >= N as u64
            }
        },
    )
    .await;
    let (s1, s2) = (stats1.snapshot(), stats2.snapshot());
    assert_eq!(count(&pool).await, n, "{s1:?} {s2:?}");
    assert_eq!(
        s1.ticks_inserted + s2.ticks_inserted,
        N as u64,
        "{s1:?} {s2:?}"
    );
    assert_eq!(s1.duplicates + s2.duplicates, 0, "{s1:?} {s2:?}");
    stop(&shutdown, [task1, task2]).await;
}

/// A bridge from before the cursor kept its place in a durable consumer with explicit acks:
/// the new bridge starts its cursor at that consumer's acknowledged floor and removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_resumes_from_the_old_durable_consumer() {
    use async_nats::jetstream::consumer;
    const N: usize = 300;
    const ACKED: usize = 120;
    let env = TestEnv::new().await;
    let pool = pool(&env).await;
    let client = nats(&env).await;
    let feed = feed(&env).await;
    let cfg = config(&env);
    // Creates the stream and the cursor table; not run yet.
    let starter = Bridge::start(cfg.clone(), client.clone(), pool.clone())
        .await
        .expect("start");
    drop(starter);
    // The bridge's role may not delete its cursor; the owner may.
    sqlx::query("DELETE FROM market_bridge_cursor")
        .execute(&env.owner_pool().await)
        .await
        .expect("forget the cursor");
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(&cfg.stream_name).await.expect("stream");
    let old: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(cfg.consumer_name.clone()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("old durable consumer");
    let published = ticks(N, 5);
    for t in &published {
        publish_tick(&feed, &env.prefix, t).await;
    }
    feed.flush().await.expect("flush");
    stream_reaches(&client, &cfg.stream_name, N as u64).await;
    // The old bridge stored and acknowledged the first ACKED messages.
    let mut messages = old
        .fetch()
        .max_messages(ACKED)
        .messages()
        .await
        .expect("fetch");
    let store = Store::open(pool.clone()).await.expect("store");
    let mut first = Vec::new();
    while let Some(m) = messages.next().await {
        let m = m.expect("message");
        first.push(serde_json::from_slice::<Tick>(&m.payload).expect("tick"));
        m.double_ack().await.expect("ack");
    }
    assert_eq!(first.len(), ACKED);
    store.write(&first, &[]).await.expect("old bridge's rows");

    let shutdown = CancellationToken::new();
    let (task, stats) = spawn_bridge(cfg.clone(), client.clone(), pool.clone(), &shutdown).await;
    let n = i64::try_from(N).expect("small");
    wait_until(Duration::from_secs(30), "every tick stored", || {
        let p = pool.clone();
        async move { count(&p).await >= n }
    })
    .await;
    // The bridge counts a batch after its transaction commits, so the rows can be visible a
    // moment before the stats are.
    wait_until(
        Duration::from_secs(10),
        "the stored batches counted",
        || {
            let s = stats.snapshot();
            async move { s.ticks_inserted + s.duplicates >= (N - ACKED) as u64 }
        },
    )
    .await;
    let s = stats.snapshot();
    assert_eq!(s.ticks_inserted, (N - ACKED) as u64, "{s:?}");
    assert_eq!(
        s.duplicates, 0,
        "resumed after the acknowledged floor: {s:?}"
    );
    assert!(
        stream.consumer_info(&cfg.consumer_name).await.is_err(),
        "the old durable consumer is gone"
    );
    stop(&shutdown, [task]).await;
}

/// A bridge that was down for longer than the stream holds finds the oldest messages gone:
/// it stores what is left and counts the rest as a gap, not silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_the_stream_dropped_are_counted_as_a_gap() {
    const N: usize = 3_000;
    let env = TestEnv::new().await;
    let pool = pool(&env).await;
    let client = nats(&env).await;
    let feed = feed(&env).await;
    let mut cfg = config(&env);
    cfg.max_bytes = Some(64 * 1024);
    let bridge = Bridge::start(cfg.clone(), client.clone(), pool.clone())
        .await
        .expect("start");
    let published = ticks(N, 8);
    for t in &published {
        publish_tick(&feed, &env.prefix, t).await;
    }
    feed.flush().await.expect("flush");
    let state = stream_reaches(&client, &cfg.stream_name, N as u64).await;
    assert_eq!(state.last_sequence, N as u64);
    let dropped = state.first_sequence - 1;
    assert!(dropped > 0, "the cap dropped the oldest messages");

    let stats = bridge.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { bridge.run(shutdown).await.expect("run") }
    });
    let kept = i64::try_from(N as u64 - dropped).expect("small");
    wait_until(Duration::from_secs(30), "what the stream kept", || {
        let p = pool.clone();
        async move { count(&p).await >= kept }
    })
    .await;
    let s = stats.snapshot();
    assert_eq!(s.gap, dropped, "{s:?}");
    assert_eq!(count(&pool).await, kept);
    stop(&shutdown, [task]).await;
}
