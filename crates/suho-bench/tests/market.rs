//! Smoke test of the market benchmark at tiny settings on a throwaway `nats-server` of its own
//! (the stack's pinned release): the report is well formed. No performance assertions.

use std::time::Duration;

use suho_bench::{bench_market, MarketBenchOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_market_bench_gives_a_well_formed_report() {
    tiny(suho_config::Transport::Plain).await;
}

/// The same on a secured server: every connection logs in as its service's identity over
/// TLS, and the identities' permissions let each do its part (nothing is lost to a denial).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_secured_market_bench_delivers_through_tls_and_the_permissions() {
    let report = tiny(suho_config::Transport::Secured).await;
    assert_eq!(report.transport, suho_config::Transport::Secured);
    assert!(report.to_string().contains("secured (TLS"));
    let r = &report.rates[0];
    assert!(r.ours.lossless() && r.raw.lossless(), "{report}");
}

async fn tiny(transport: suho_config::Transport) -> suho_bench::MarketBenchReport {
    let mut stack = suho_bench::StackOptions::from_config(&suho_config::Config::default());
    stack.cache_dir = suho_testkit::workspace_root().join(".suho").join("cache");
    let opts = MarketBenchOptions {
        rates: vec![500],
        duration: Duration::from_secs(1),
        nats_url: None,
        // One token: the identities' permissions allow one prefix token.
        subject_prefix: format!("t{}", std::process::id()),
        stack,
        transport,
        ..MarketBenchOptions::default()
    };
    let report = bench_market(opts).await.expect("the bench runs");
    assert_eq!(report.rates.len(), 1);
    let r = &report.rates[0];
    assert_eq!(r.rate, 500);
    // One latency value per tick and measuring subscriber: ours has two (analytics, prices).
    for (p, subscribers) in [(&r.ours, 2), (&r.raw, 1)] {
        assert_eq!(p.published, 500);
        assert!(p.delivered <= p.published);
        assert_eq!(p.lost, p.published - p.delivered);
        assert!(p.delivered > 0, "something is delivered");
        assert!(!p.latency_ns.is_empty());
        if p.lost == 0 {
            assert_eq!(p.latency_ns.len(), subscribers * p.delivered);
        }
        assert!(p.latency_us(0.5) <= p.latency_us(0.99));
    }
    assert!(report.payload_bytes > 0);
    let table = report.to_string();
    assert!(table.contains("ours") && table.contains("raw") && table.contains("ratio"));
    report
}
