//! Smoke test of the trading benchmark at tiny settings on the test stack (its own prefixes,
//! topics and database): every command of every path is answered exactly once and the report
//! is well formed. No performance assertions.

use std::time::Duration;

use suho_bench::{bench_trading, TradingBenchOptions, TradingPath};

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
    let table = report.to_string();
    for word in ["echo-tx", "http", "kafka", "ratio", "highest sustained"] {
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
