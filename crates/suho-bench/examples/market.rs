//! Runs the market benchmark with its defaults and prints the report:
//! `cargo run --release -p suho-bench --example market`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let report = suho_bench::bench_market(suho_bench::MarketBenchOptions::default()).await?;
    println!("{report}");
    Ok(())
}
