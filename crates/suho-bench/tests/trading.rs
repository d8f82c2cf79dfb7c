//! Smoke test of the trading benchmark at tiny settings on the test stack (its own prefixes,
//! topics and database): every command of every path is answered exactly once and the report
//! is well formed. No performance assertions.

use std::time::Duration;

use suho_bench::{bench_trading, BookOptions, TradingBenchOptions, TradingPath};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_trading_bench_answers_every_command_once() {
    let env = suho_testkit::TestEnv::new().await;
    let opts = TradingBenchOptions {
        rates: vec![10],
        duration: Duration::from_secs(2),
        users: 4,
        // A debug build on a shared machine: only the counts are checked here.
        p99_bound: Duration::from_secs(30),
        platform: Some(env.config.clone()),
        book: Some(BookOptions {
            stages: vec![40, 80],
            users: 8,
            rounds: 3,
            per_round: 2,
            round_every: Duration::from_millis(200),
            timeout: Duration::from_secs(120),
        }),
        echo_journal: true,
        ..TradingBenchOptions::default()
    };
    let report = bench_trading(opts).await.expect("the bench runs");
    assert_eq!(report.rates.len(), 1);
    let r = &report.rates[0];
    let paths: Vec<TradingPath> = r.phases.iter().map(|p| p.path).collect();
    assert_eq!(
        paths,
        [
            TradingPath::Echo,
            TradingPath::EchoTx,
            TradingPath::EchoJournal,
            TradingPath::Http,
            TradingPath::Kafka
        ]
    );
    for p in &r.phases {
        assert_eq!(p.scheduled, 20, "{:?}", p.path);
        assert_eq!(p.sent, 20, "{:?}", p.path);
        assert_eq!(p.accepted, 20, "{:?}: {:?}", p.path, p.first_refusal);
        assert_eq!(p.answered, 20, "{:?}", p.path);
        assert_eq!(
            (p.missing, p.duplicated, p.refused),
            (0, 0, 0),
            "{:?}",
            p.path
        );
        assert_eq!((p.rejected, p.unexpected), (0, 0), "{:?}", p.path);
        assert!(p.exactly_once(), "{:?}", p.path);
        assert!(!p.fill_ns.is_empty(), "{:?}", p.path);
        assert!(p.fill_ms(0.5) <= p.fill_ms(0.99));
        if p.path.is_ours() {
            // Each user's second command closes the trade its first opened (or the warm-up's).
            assert!(!p.close_ns.is_empty(), "{:?}", p.path);
            assert_eq!(p.fill_ns.len() + p.close_ns.len(), 20, "{:?}", p.path);
        }
    }
    // The resting book: every order placed, and each one a round's tick reached filled
    // exactly once.
    let book = report.book.as_ref().expect("the resting-book phase ran");
    let resting: Vec<u64> = book.stages.iter().map(|s| s.resting).collect();
    assert_eq!(resting, [40, 80]);
    for s in &book.stages {
        assert_eq!(s.place_rejected, 0, "{s:?}");
        assert_eq!(
            (s.reached, s.filled, s.missing, s.duplicated),
            (6, 6, 0, 0),
            "{s:?}"
        );
        assert_eq!(s.fill_ns.len(), 6);
    }
    assert_eq!(book.stages[0].placed, 40);
    assert_eq!(book.stages[1].placed, 40 + 6);
    let table = report.to_string();
    for word in [
        "echo-tx",
        "echo-jnl",
        "http",
        "kafka",
        "ratio",
        "highest sustained",
        "resting book",
    ] {
        assert!(table.contains(word), "{word} in\n{table}");
    }
}

/// The plain stack the security cost is measured against (`--security off|both`) is the
/// same platform with TLS, the logins and the permissions taken out: it must run the same
/// commands to the same outcomes, or the cost it shows means nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_trading_bench_on_a_plain_throwaway_stack_answers_every_command_once() {
    let mut stack = suho_bench::StackOptions::from_config(&suho_config::Config::default());
    // The jars and the nats-server the test stacks use.
    stack.cache_dir = suho_testkit::workspace_root().join(".suho").join("cache");
    let opts = TradingBenchOptions {
        rates: vec![10],
        duration: Duration::from_secs(2),
        users: 2,
        paths: vec![TradingPath::Kafka],
        p99_bound: Duration::from_secs(30),
        stack,
        transport: suho_config::Transport::Plain,
        book: None,
        ..TradingBenchOptions::default()
    };
    let report = bench_trading(opts).await.expect("the bench runs");
    assert_eq!(report.transport, suho_config::Transport::Plain);
    let r = &report.rates[0];
    for p in &r.phases {
        assert_eq!(p.answered, 20, "{:?}: {:?}", p.path, p.first_refusal);
        assert!(p.exactly_once(), "{:?}", p.path);
    }
    assert!(report.to_string().contains("plain (no TLS"), "{report}");
}
