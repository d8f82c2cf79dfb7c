//! `suho`: the command line. It only parses arguments, loads the configuration, sets up
//! telemetry and hands over to the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use suho::shutdown::Watchdog;
use tokio_util::sync::CancellationToken;

/// mimalloc: per-thread free lists instead of glibc's arena locks, which the market path
/// (a message, a header map and a parsed tick per tick) spent a fifth of its CPU in.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "suho",
    version,
    about = "A multi-tenant AI trading platform: market data on NATS, user events on Kafka."
)]
struct Cli {
    /// Configuration file (default: $SUHO_CONFIG, else ./suho.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform: starts the local stack if needed (and stops it on Ctrl-C),
    /// provisions the topics, then runs the feed, price service, trading engine and HTTP API.
    Up,
    /// Kafka topic provisioning.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// The local Kafka, NATS and PostgreSQL.
    Stack {
        #[command(subcommand)]
        action: StackAction,
    },
    /// Print the effective configuration (secrets redacted).
    Config,
    /// Print the HTTP API's OpenAPI document (the one `/api/openapi.json` serves), e.g. for
    /// generating the dashboard's types.
    Openapi,
    /// Download historical bars from Polygon.io's REST API into the candle store (and publish
    /// each on `market.{SYM}.{tf}`); a rerun resumes after the last stored bar of the range.
    Backfill {
        /// Pairs to download (comma-separated; default: `market.symbols`).
        #[arg(long, value_delimiter = ',')]
        symbols: Option<Vec<String>>,
        /// Bar length: 1m, 5m, 15m, 30m, 1h, 4h or 1d.
        #[arg(long, default_value = "1m")]
        timeframe: String,
        /// First day (YYYY-MM-DD, UTC) or epoch milliseconds.
        #[arg(long)]
        from: String,
        /// Last day, included (YYYY-MM-DD, UTC), or epoch milliseconds (default: now).
        #[arg(long)]
        to: Option<String>,
        /// Only store the bars; do not publish them on NATS.
        #[arg(long)]
        no_publish: bool,
    },
    /// Run only the trading engine (consumer group `trading-engine`) against running
    /// servers, e.g. a second engine beside `suho up` (give it its own
    /// `trading.instance_id`); stops on Ctrl-C or SIGTERM.
    Engine,
    /// Operator actions on a user's paper account: queued on `user.commands` like the API's,
    /// and answered by the trading engine on `user.transactions`.
    Account {
        #[command(subcommand)]
        action: AccountAction,
    },
    /// The audit trail (stored by the platform's audit service from every user topic).
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Benchmarks (open loop, HdrHistogram, beside the raw broker baseline of the same run).
    Bench {
        #[command(subcommand)]
        target: BenchTarget,
    },
}

#[derive(Subcommand)]
enum BenchTarget {
    /// Ticks through NATS into the real in-process subscribers (candles, indicators, price
    /// cache) against a raw async-nats publish/subscribe baseline, at a sweep of rates.
    Market {
        /// Tick rates to sweep, ticks/s over all symbols (comma-separated).
        #[arg(long, value_delimiter = ',')]
        rates: Option<Vec<u32>>,
        /// Seconds of publishing per path and rate.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// An existing NATS server to use (default: a throwaway one on a free port).
        #[arg(long)]
        nats_url: Option<String>,
        /// `off`: a plain throwaway server; `on`: one secured as `suho stack up` secures its
        /// own (TLS, a user per service identity); `both` (the default without --nats-url):
        /// both sweeps in one run and the secured / plain ratios.
        #[arg(long, value_parser = security_arg)]
        security: Option<suho_bench::Security>,
    },
    /// The data bridge's sustained rows/s into PostgreSQL (ticks published on NATS, through
    /// JetStream, stored by the real bridge) against a raw COPY of the same rows into the same
    /// table, in the same run.
    Bridge {
        /// Ticks stored per phase.
        #[arg(long, default_value_t = 200_000)]
        rows: usize,
        /// Rows per raw COPY and the bridge's batch_max.
        #[arg(long, default_value_t = 5_000)]
        batch: usize,
        /// How many times both phases run.
        #[arg(long, default_value_t = 2)]
        runs: u32,
        /// A PostgreSQL server to use; the role must be allowed to create databases (the run
        /// creates and drops its own). Default: a throwaway cluster.
        #[arg(long)]
        database_url: Option<String>,
        /// A NATS server with JetStream to use (default: a throwaway `nats-server -js`).
        #[arg(long)]
        nats_url: Option<String>,
    },
    /// Trade commands from many users, open loop, through the HTTP API or straight into
    /// Kafka, to their TRADE_EXECUTED on user.trades (the real gateway, trading engine and
    /// price service on a throwaway stack), against a bare Kafka two-hop echo on the same
    /// broker; exactly-once checked per phase; a sweep of rates for the highest sustained.
    Trading {
        /// One rate only, commands/s over all users (instead of the sweep).
        #[arg(long, conflicts_with = "sweep")]
        rate: Option<u32>,
        /// Rates to sweep, commands/s (comma-separated; default 50,100,250,500,1000,2000,4000).
        #[arg(long, value_delimiter = ',')]
        sweep: Option<Vec<u32>>,
        /// Seconds of sending per path and rate.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Users to register and spread the commands over.
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// Our paths to measure: http, kafka or both (the echo baselines always run).
        #[arg(long, default_value = "both", value_parser = ["http", "kafka", "both"])]
        path: String,
        /// Highest p99 (command -> TRADE_EXECUTED) of a sustained rate, milliseconds.
        #[arg(long, default_value_t = 500)]
        p99_bound_ms: u64,
        /// `on`: the stack secured as `suho stack up` secures its own (TLS, a login per
        /// service, its permissions); `off`: the same stack plain; `both` (the default): a
        /// plain run, then a secured one, and the secured / plain ratios.
        #[arg(long, default_value = "both", value_parser = security_arg)]
        security: suho_bench::Security,
        /// After the sweep, the resting-book phase: pending orders resting at these book
        /// sizes (comma-separated, increasing; default 1000,10000,100000), ticks reaching a
        /// few of them; `0` skips it.
        #[arg(long, value_delimiter = ',')]
        book: Option<Vec<u64>>,
        /// Users the resting book's orders come from.
        #[arg(long, default_value_t = 10_000)]
        book_users: usize,
        /// Also the journaled echo baseline: each poll's records written to a journal topic,
        /// read back, then forwarded without a transaction (the floor of an engine that
        /// publishes without Kafka transactions).
        #[arg(long)]
        echo_journal: bool,
        /// How the platform's engine publishes outcomes: `transactions` (the default: a Kafka
        /// transaction per batch) or `journal` (journaled, then published plainly).
        #[arg(long, default_value = "transactions", value_parser = delivery_arg)]
        delivery: suho_config::Delivery,
    },
    /// Ticks fanned out through the real gateway's WebSocket /ws to many clients (and with a
    /// share of them not reading), against raw NATS fan-out to as many plain subscribers, at
    /// a sweep of tick rates, on a throwaway stack.
    Gateway {
        /// Client counts (comma-separated; default 100,1000).
        #[arg(long, value_delimiter = ',')]
        clients: Option<Vec<usize>>,
        /// Tick rates to sweep, ticks/s over all symbols (comma-separated; default
        /// 10,25,50,100,250,500,1000,2000; a client count stops after the first rate neither
        /// path sustained).
        #[arg(long, value_delimiter = ',')]
        rates: Option<Vec<u32>>,
        /// Seconds of publishing per phase.
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Share of the clients that stop reading in the ws-stall phases, percent.
        #[arg(long, default_value_t = 10)]
        stalled_percent: u32,
        /// Users to register (connections share their tokens).
        #[arg(long, default_value_t = 50)]
        users: usize,
        /// How many of the major FX pairs the ticks go through in turn (1 to 14; every client
        /// follows them all; market data is conflated per subject).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=14))]
        symbols: u8,
        /// Highest p99 (tick -> client) of a sustained rate, milliseconds.
        #[arg(long, default_value_t = 100)]
        p99_bound_ms: u64,
        /// `on`: the stack secured as `suho stack up` secures its own (TLS, a login per
        /// service, its permissions); `off`: the same stack plain; `both` (the default): a
        /// plain run, then a secured one, and the secured / plain ratios.
        #[arg(long, default_value = "both", value_parser = security_arg)]
        security: suho_bench::Security,
    },
}

#[derive(Subcommand)]
enum AccountAction {
    /// Credit a user's paper account.
    Deposit {
        /// The user id (`usr_...`).
        #[arg(long)]
        user: String,
        /// Amount in the account currency, at most 2 decimals.
        #[arg(long)]
        amount: String,
    },
    /// Debit a user's paper account (at most its free margin).
    Withdraw {
        /// The user id (`usr_...`).
        #[arg(long)]
        user: String,
        /// Amount in the account currency, at most 2 decimals.
        #[arg(long)]
        amount: String,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// A user's events, from every user topic, with a Kafka time in [--from, --to), as CSV or
    /// JSON lines on stdout.
    Export {
        /// The user id (`usr_...`).
        #[arg(long)]
        user: String,
        /// Start (YYYY-MM-DD, UTC, or epoch milliseconds), included.
        #[arg(long)]
        from: String,
        /// End (YYYY-MM-DD, UTC, the whole day included; or epoch milliseconds, excluded).
        #[arg(long)]
        to: String,
        /// csv or jsonl.
        #[arg(long, default_value = "csv")]
        format: String,
        /// Also read the same range straight from Kafka and fail if it differs from the store.
        #[arg(long)]
        verify: bool,
    },
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Create the contract's topics where missing and report drift on existing ones.
    Apply {
        /// Repair drift where Kafka allows it (configs; partitions can only grow).
        #[arg(long)]
        fix: bool,
    },
}

#[derive(Subcommand)]
enum StackAction {
    /// Install what is missing, start what is not running, wait until ready.
    Up,
    /// Stop the stack of this directory.
    Down,
    /// Show what runs.
    Status,
    /// Install what is missing, start nothing.
    Install,
    /// Print an identity's connection settings as `KEY=value` lines (for an outside client or
    /// tool), or with `--list` every identity and what it is for.
    Credentials {
        /// The identity (`operator` for an outside tool; see `--list`).
        #[arg(required_unless_present = "list")]
        identity: Option<String>,
        /// List the identities instead.
        #[arg(long, conflicts_with = "identity")]
        list: bool,
    },
}

/// `println!`, except that a reader that has gone (a closed pipe or terminal) loses the line
/// instead of panicking the process.
macro_rules! say {
    ($($arg:tt)*) => {
        suho_telemetry::output::stdout_line(&format!($($arg)*))
    };
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let code = match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line, without a backtrace.
            suho_telemetry::output::stderr_line(&format!("suho: error: {e:#}"));
            std::process::ExitCode::FAILURE
        }
    };
    suho_telemetry::output::flush(std::time::Duration::from_secs(1));
    code
}

/// A bench's `--security`: `off`, `on` or `both`.
fn security_arg(text: &str) -> Result<suho_bench::Security, String> {
    suho_bench::Security::parse(text).ok_or_else(|| "expected off, on or both".to_string())
}

fn delivery_arg(text: &str) -> Result<suho_config::Delivery, String> {
    match text {
        "transactions" => Ok(suho_config::Delivery::Transactions),
        "journal" => Ok(suho_config::Delivery::Journal),
        _ => Err("expected transactions or journal".to_string()),
    }
}

/// Runs a bench once per transport `runs` names, printing each report as it comes.
async fn each_run<R, F, Fut>(runs: suho_bench::Security, mut bench: F) -> anyhow::Result<Vec<R>>
where
    R: std::fmt::Display,
    F: FnMut(suho_config::Transport) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<R>>,
{
    let mut reports = Vec::new();
    for transport in runs.transports() {
        let report = bench(transport).await?;
        say!("{report}");
        reports.push(report);
    }
    Ok(reports)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    use anyhow::Context;
    let config = suho_config::Config::load(cli.config.as_deref())?;
    // The trading bench runs the platform in this process: its per-command info lines (two per
    // command) would bury the report, so it logs warnings only unless RUST_LOG says otherwise.
    let log_filter = match &cli.command {
        Command::Bench {
            target: BenchTarget::Trading { .. } | BenchTarget::Gateway { .. },
        } => "warn,suho_bench=info,rdkafka=error",
        _ => config.telemetry.log_filter.as_str(),
    };
    suho_telemetry::init_tracing(&config.telemetry.log_format, log_filter);
    match cli.command {
        Command::Up => stoppable("suho up", |token, dog| up(config, token, dog)),
        Command::Topics {
            action: TopicsAction::Apply { fix },
        } => block_on(async {
            // The operator administers topics (and reads them); it writes nothing.
            let operator = suho_messaging::kafka::bind(&config, suho_security::Identity::Operator)?;
            let report = suho_messaging::topics::apply(&operator, fix).await?;
            suho_telemetry::output::stdout_text(&report.to_string());
            let unresolved = report.unresolved().count();
            if unresolved > 0 {
                anyhow::bail!("{unresolved} setting(s) differ from the contract; `suho topics apply --fix` repairs what Kafka allows");
            }
            Ok(())
        }),
        Command::Stack { action } => stack(&config, action),
        Command::Bench {
            target:
                BenchTarget::Market {
                    rates,
                    seconds,
                    nats_url,
                    security,
                },
        } => stoppable_bench("suho bench market", async {
            let mut opts = suho_bench::MarketBenchOptions::default();
            if let Some(r) = rates {
                opts.rates = r;
            }
            opts.duration = std::time::Duration::from_secs(seconds);
            // A given server is whatever it is: one plain run unless told otherwise.
            let runs = match (security, &nats_url) {
                (Some(runs), _) => runs,
                (None, None) => suho_bench::Security::Both,
                (None, Some(_)) => suho_bench::Security::Off,
            };
            opts.nats_url = nats_url;
            let reports = each_run(runs, |transport| {
                suho_bench::bench_market(suho_bench::MarketBenchOptions {
                    transport,
                    ..opts.clone()
                })
            })
            .await?;
            if let [plain, secured] = reports.as_slice() {
                say!("{}", suho_bench::MarketSecurityCost { plain, secured });
            }
            Ok(())
        }),
        Command::Bench {
            target:
                BenchTarget::Bridge {
                    rows,
                    batch,
                    runs,
                    database_url,
                    nats_url,
                },
        } => stoppable_bench("suho bench bridge", async {
            let opts = suho_bench::BridgeBenchOptions {
                rows,
                batch,
                runs,
                database_url,
                nats_url,
                ..suho_bench::BridgeBenchOptions::default()
            };
            let report = suho_bench::bench_bridge(opts).await?;
            say!("{report}");
            Ok(())
        }),
        Command::Bench {
            target:
                BenchTarget::Trading {
                    rate,
                    sweep,
                    duration,
                    users,
                    path,
                    p99_bound_ms,
                    security,
                    book,
                    book_users,
                    echo_journal,
                    delivery,
                },
        } => stoppable_bench("suho bench trading", async {
            let defaults = suho_bench::TradingBenchOptions::default();
            let paths = match path.as_str() {
                "http" => vec![suho_bench::TradingPath::Http],
                "kafka" => vec![suho_bench::TradingPath::Kafka],
                _ => defaults.paths.clone(),
            };
            let opts = suho_bench::TradingBenchOptions {
                rates: rate
                    .map(|r| vec![r])
                    .or(sweep)
                    .unwrap_or(defaults.rates.clone()),
                duration: std::time::Duration::from_secs(duration),
                users,
                paths,
                p99_bound: std::time::Duration::from_millis(p99_bound_ms),
                // The Kafka jars `suho stack up` downloaded, and its Kafka version and heap.
                stack: suho_bench::StackOptions::from_config(&config),
                book: match book {
                    Some(sizes) if sizes == [0] => None,
                    sizes => Some(suho_bench::BookOptions {
                        stages: sizes.unwrap_or_else(|| suho_bench::BookOptions::default().stages),
                        users: book_users,
                        ..suho_bench::BookOptions::default()
                    }),
                },
                echo_journal,
                delivery,
                ..defaults
            };
            let reports = each_run(security, |transport| {
                suho_bench::bench_trading(suho_bench::TradingBenchOptions {
                    transport,
                    ..opts.clone()
                })
            })
            .await?;
            if let [plain, secured] = reports.as_slice() {
                say!("{}", suho_bench::TradingSecurityCost { plain, secured });
            }
            Ok(())
        }),
        Command::Bench {
            target:
                BenchTarget::Gateway {
                    clients,
                    rates,
                    duration,
                    stalled_percent,
                    users,
                    symbols,
                    p99_bound_ms,
                    security,
                },
        } => stoppable_bench("suho bench gateway", async {
            let defaults = suho_bench::GatewayBenchOptions::default();
            let opts = suho_bench::GatewayBenchOptions {
                clients: clients.unwrap_or(defaults.clients),
                rates: rates.unwrap_or(defaults.rates),
                duration: std::time::Duration::from_secs(duration),
                stalled_percent,
                users,
                symbols: suho_domain::major_fx()
                    .into_iter()
                    .take(usize::from(symbols))
                    .collect(),
                p99_bound: std::time::Duration::from_millis(p99_bound_ms),
                stack: suho_bench::StackOptions::from_config(&config),
                transport: suho_config::Transport::Secured,
            };
            let reports = each_run(security, |transport| {
                suho_bench::bench_gateway(suho_bench::GatewayBenchOptions {
                    transport,
                    ..opts.clone()
                })
            })
            .await?;
            if let [plain, secured] = reports.as_slice() {
                say!("{}", suho_bench::GatewaySecurityCost { plain, secured });
            }
            Ok(())
        }),
        Command::Config => {
            say!("{config:#?}");
            Ok(())
        }
        Command::Openapi => {
            let doc = serde_json::to_string_pretty(&suho::openapi_document(&config)?)
                .context("writing the OpenAPI document")?;
            say!("{doc}");
            Ok(())
        }
        Command::Engine => stoppable("suho engine", |token, dog| async move {
            dog.running()
                .track("trading-engine", suho::run_engine(&config, token))
                .await
        }),
        Command::Account { action } => {
            let (user, amount, withdrawal) = match action {
                AccountAction::Deposit { user, amount } => (user, amount, false),
                AccountAction::Withdraw { user, amount } => (user, amount, true),
            };
            let amount = suho_domain::num::parse_decimal(&amount)
                .map_err(|e| anyhow::anyhow!("--amount: {e}"))?;
            block_on(suho::queue_money(&config, &user, amount, withdrawal))
        }
        Command::Audit {
            action:
                AuditAction::Export {
                    user,
                    from,
                    to,
                    format,
                    verify,
                },
        } => {
            let format: suho_audit::ExportFormat =
                format.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let from = suho::polygon::parse_bound(&from, false).context("--from")?;
            // A day includes its last millisecond; the range's end is excluded.
            let to = suho::polygon::parse_bound(&to, true).context("--to")?;
            let to = if to % 86_400_000 == 86_399_999 {
                to + 1
            } else {
                to
            };
            block_on(suho::audit_export(&config, &user, from, to, format, verify))
        }
        Command::Backfill {
            symbols,
            timeframe,
            from,
            to,
            no_publish,
        } => {
            let symbols = symbols.unwrap_or_else(|| config.market.symbols.clone());
            let request = suho::polygon::BackfillRequest {
                symbols: symbols
                    .iter()
                    .map(|s| suho_domain::Symbol::parse(s))
                    .collect::<Result<_, _>>()
                    .context("--symbols")?,
                timeframe: suho_domain::Timeframe::parse(&timeframe).context("--timeframe")?,
                from_ms: suho::polygon::parse_bound(&from, false).context("--from")?,
                to_ms: match to {
                    Some(to) => suho::polygon::parse_bound(&to, true).context("--to")?,
                    None => suho_messaging::now_ms(),
                },
                publish: !no_publish,
                progress: true,
            };
            stoppable("suho backfill", |token, dog| async move {
                dog.running()
                    .track("backfill", backfill(config, request, token))
                    .await
            })
        }
    }
}

/// `suho backfill`: the download, stopped cleanly by Ctrl-C (what was stored stays stored).
async fn backfill(
    config: suho_config::Config,
    request: suho::polygon::BackfillRequest,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let summaries = suho::polygon::backfill(&config, &request, &shutdown).await?;
    for s in summaries {
        say!(
            "{} {}: {} bars stored in {} pages{}",
            s.symbol,
            s.timeframe,
            s.bars_stored,
            s.pages,
            if s.resumed { " (resumed)" } else { "" }
        );
    }
    Ok(())
}

fn stack(config: &suho_config::Config, action: StackAction) -> anyhow::Result<()> {
    use anyhow::Context;
    let spec = suho_stack::StackSpec::from_config(config)?;
    match action {
        StackAction::Install => {
            suho_stack::install(&spec)?;
        }
        StackAction::Up => {
            // The servers keep running after it returns.
            let started = stoppable("suho stack up", |token, _| async move {
                Ok(start_stack(spec, token).await??)
            })?;
            for p in &started.started {
                say!("{:<9} started (pid {})", p.service.name(), p.pid);
            }
            for s in &started.reused {
                say!("{:<9} already running", s.name());
            }
        }
        StackAction::Down => {
            let stopped = suho_stack::stop(&spec);
            if stopped.is_empty() {
                say!("nothing was running");
            }
            for s in stopped {
                say!("{:<9} stopped", s.name());
            }
        }
        StackAction::Credentials { identity, list } => {
            if list {
                for i in suho_security::Identity::ALL {
                    say!("{:<10} {}", i.name(), i.purpose());
                }
                return Ok(());
            }
            let name = identity.unwrap_or_default();
            let identity = suho_security::Identity::from_name(&name).with_context(|| {
                format!("no identity {name:?}; `suho stack credentials --list` names them")
            })?;
            let credentials = suho_security::Secrets::at(config.secrets_dir())
                .credentials(identity)
                .with_context(|| format!("the credentials of `{identity}`"))?;
            for (key, value) in suho::credentials_env(config, &credentials) {
                say!("{key}={value}");
            }
        }
        StackAction::Status => {
            for s in suho_stack::status(&spec) {
                let state = match (s.pid, s.listening) {
                    (Some(pid), true) => format!("running (pid {pid})"),
                    (Some(pid), false) => format!("starting or stuck (pid {pid}, port closed)"),
                    (None, true) => "port in use by another process".to_string(),
                    (None, false) => "stopped".to_string(),
                };
                say!("{:<9} 127.0.0.1:{:<5} {state}", s.service.name(), s.port);
            }
        }
    }
    Ok(())
}

/// Runs `work` on a new runtime and then shuts the runtime down, waiting at most 1 s for
/// tasks still blocked in a library call (they must not keep the process alive).
fn block_on<T>(work: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let out = runtime.block_on(work);
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    out
}

/// Runs a long command (`what`, as the user typed it) that Ctrl-C, SIGTERM and SIGHUP stop:
/// the handlers are installed before `work` starts anything; the first signal cancels the
/// token `work` gets, and the watchdog ends the process if the stop takes longer than
/// [`suho::shutdown::STOP_DEADLINE`] (a second signal ends it at once).
fn stoppable<T, F, Fut>(what: &str, work: F) -> anyhow::Result<T>
where
    F: FnOnce(CancellationToken, Watchdog) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    use anyhow::Context;
    let dog = Watchdog::new(what);
    block_on(async move {
        let token = CancellationToken::new();
        let _signals = suho::shutdown::on_signals(token.clone(), dog.clone())
            .context("installing the signal handlers")?;
        work(token, dog).await
    })
}

/// A benchmark that a signal interrupts: its future is dropped, which stops the throwaway
/// servers it started (their guards' `Drop`), and the run ends with an error.
fn stoppable_bench(
    what: &str,
    bench: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    stoppable(what, |token, dog| async move {
        let _step = dog.running().enter("benchmark");
        tokio::select! {
            r = bench => r,
            () = token.cancelled() => Err(anyhow::anyhow!("interrupted; no report")),
        }
    })
}

/// Installs what is missing and starts the stack on a blocking thread; the start gives up
/// (and stops what it started) when `token` is cancelled while it waits for a server.
async fn start_stack(
    spec: suho_stack::StackSpec,
    token: CancellationToken,
) -> anyhow::Result<Result<suho_stack::Started, suho_stack::StackError>> {
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&cancel);
    let watch = tokio::spawn(async move {
        token.cancelled().await;
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let started = tokio::task::spawn_blocking(move || {
        let tools = suho_stack::install(&spec)?;
        suho_stack::start_cancellable(&spec, &tools, &cancel)
    })
    .await;
    watch.abort();
    Ok(started?)
}

/// `suho up`: the stack (if managed and not running), topics, then the platform until a
/// signal; then the platform stops, then the stack servers this run started.
async fn up(
    config: suho_config::Config,
    token: CancellationToken,
    dog: Watchdog,
) -> anyhow::Result<()> {
    let mut started = Vec::new();
    if config.stack.manage {
        let spec = suho_stack::StackSpec::from_config(&config)?;
        let step = dog.running().enter("starting the stack");
        match start_stack(spec, token.clone()).await? {
            Ok(s) => started = s.started,
            // Stopped by a signal: the start stopped what it had started.
            Err(suho_stack::StackError::Cancelled { service }) => {
                tracing::info!(%service, "stopped while the stack was starting");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
        drop(step);
    }
    // The dashboard the gateway serves at `/`: built with npm when missing or stale. Without
    // it the API still runs, and `/` says how to build it. A signal does not wait for npm.
    let web_dir = config.http.web_dir.clone();
    let build = tokio::task::spawn_blocking(move || suho::web::ensure_built(&web_dir));
    let built = dog
        .running()
        .track("building the dashboard", async {
            tokio::select! {
                r = build => Some(r),
                () = token.cancelled() => None,
            }
        })
        .await;
    match built {
        Some(Ok(Ok(suho::web::WebBuild::Built { .. }))) => tracing::info!("dashboard built"),
        Some(Ok(Ok(_))) | None => {}
        Some(Ok(Err(e))) => tracing::warn!("the dashboard is not built: {e:#}"),
        Some(Err(e)) => tracing::warn!("the dashboard build did not finish: {e}"),
    }
    let result = if token.is_cancelled() {
        Ok(())
    } else {
        platform(config, token, dog.running()).await
    };
    if !started.is_empty() {
        tracing::info!("stopping the stack servers this run started");
        let _step = dog.running().enter("stopping the stack servers");
        suho_trading::failpoint::stall("up.stop_servers");
        let stop = tokio::task::spawn_blocking(move || suho_stack::stop_processes(&mut started));
        let left = stop.await?;
        if !left.is_empty() {
            let names: Vec<&str> = left.iter().map(|s| s.name()).collect();
            return result.and(Err(anyhow::anyhow!(
                "still running after SIGKILL: {}",
                names.join(", ")
            )));
        }
    }
    result
}

async fn platform(
    config: suho_config::Config,
    token: CancellationToken,
    running: &suho::shutdown::Running,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let provisioning = async {
        let operator = suho_messaging::kafka::bind(&config, suho_security::Identity::Operator)?;
        let report = suho_messaging::topics::apply(&operator, false)
            .await
            .context("provisioning Kafka topics")?;
        for t in &report.created {
            tracing::info!(topic = %t, "topic created");
        }
        for d in report.unresolved() {
            tracing::warn!(topic = %d.topic, setting = %d.setting, want = %d.want, have = %d.have, "topic drift (`suho topics apply --fix` repairs it)");
        }
        suho::Application::build(config.clone()).await
    };
    let app = tokio::select! {
        app = running.track("starting the platform", provisioning) => app?,
        () = token.cancelled() => return Ok(()),
    };
    let addr = app.http_addr();
    tracing::info!(
        "suho is up: dashboard and HTTP API http://{addr}/ | NATS {} | Kafka {} | Ctrl-C stops it",
        config.nats.url,
        config.kafka.bootstrap
    );
    app.run_tracked(token, running).await
}
