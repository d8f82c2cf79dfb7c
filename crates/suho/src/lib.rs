//! The suho platform in one process: the market services on NATS (feed, price service,
//! candles and indicators, signals and alerts, the data bridge into PostgreSQL), the trading engine on
//! Kafka, the auto-trading agent (signals to commands, `agent.enabled`), and the HTTP gateway
//! with its WebSocket stream `/ws`, wired from one [`Config`] and stopped by one
//! [`CancellationToken`].
//!
//! [`Application::build`] connects everything and binds the HTTP port (port 0 works, for
//! tests); [`Application::run`] runs every service as a named task until shutdown, and stops
//! them all if any one of them fails.
//!
//! The feed is chosen in one place (`feed_task`, by `market.feed`): the synthetic random walk,
//! a replayed recording, or Polygon.io's live forex stream ([`polygon`], which also holds the
//! historical backfill behind `suho backfill`).

pub mod polygon;
pub mod shutdown;
pub mod venue;
pub mod web;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;
use shutdown::Running;
use suho_accounts::Accounts;
use suho_config::Config;
use suho_domain::Symbol;
use suho_market::{
    configured_symbols, run_analytics_on, run_feed, run_price_service_on, AnalyticsConfig,
    PriceServiceConfig, SyntheticFeed, TickHub, TradingHours,
};
use suho_messaging::{MarketBus, UserEventProducer};
use suho_security::Identity;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A built platform, ready to run.
pub struct Application {
    config: Config,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    buses: Buses,
    producer: UserEventProducer,
    accounts: Accounts,
    bridge: suho_bridge::Bridge,
    /// The audit's role.
    audit_pool: sqlx::PgPool,
    /// The analytics' role, for the warm-up candles.
    analytics_pool: sqlx::PgPool,
}

impl Application {
    /// Connects to NATS, Kafka and PostgreSQL (migrating it as the schema's owner, then
    /// logging each service in as its own role), creates the data bridge's JetStream stream,
    /// and binds the HTTP port.
    ///
    /// # Errors
    /// A service is unreachable, the schema cannot be migrated, the port is taken, or the
    /// configuration is unusable; each message says which.
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let buses = Buses::connect(&config).await?;
        // The gateway's producer (the HTTP API and its outbox relay); the engine and the
        // agent make their own, each logged in as itself.
        let gateway_kafka = suho_messaging::kafka::bind(&config, Identity::Gateway)?;
        let producer =
            UserEventProducer::new(&gateway_kafka).context("creating the Kafka producer")?;
        let secret = jwt_secret(&config).context("loading the JWT key")?;
        suho_database::migrate(&config)
            .await
            .context("migrating the database")?;
        let db = |identity| suho_database::pool(&config, identity);
        let accounts = Accounts::with_pool(
            db(Identity::Gateway).await?,
            &secret,
            Duration::from_secs(config.auth.token_ttl_s),
        )
        .with_keyring(credentials_keyring(&config).context("loading the credentials keys")?);
        let audit_pool = db(Identity::Audit).await?;
        let analytics_pool = suho_database::pool_of(
            &config,
            suho_database::Login::Service(Identity::Analytics),
            1,
        )
        .await?;
        // The bridge's JetStream stream exists before the feed speaks, so the store misses
        // nothing from the first tick on.
        let bridge = suho_bridge::Bridge::start(
            suho_bridge::BridgeConfig::from_config(&config),
            buses.get(Identity::Bridge).client().clone(),
            db(Identity::Bridge).await?,
        )
        .await
        .context("starting the data bridge (its JetStream stream and tables)")?;
        let listener = tokio::net::TcpListener::bind(config.http.addr)
            .await
            .with_context(|| format!("binding the HTTP API to {} (http.addr)", config.http.addr))?;
        let addr = listener.local_addr()?;
        Ok(Application {
            config,
            listener,
            addr,
            buses,
            producer,
            accounts,
            bridge,
            audit_pool,
            analytics_pool,
        })
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Runs every service until `shutdown` is cancelled or one of them fails; then stops
    /// the rest and waits (at most [`SERVICES_STOP_WITHIN`]) for them to finish.
    ///
    /// # Errors
    /// The first service that failed, by name.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.run_tracked(shutdown, &Running::default()).await
    }

    /// [`Application::run`], noting each service in `running` while it runs (the
    /// [`shutdown::Watchdog`] names what did not stop).
    ///
    /// # Errors
    /// The first service that failed, by name.
    pub async fn run_tracked(
        self,
        shutdown: CancellationToken,
        running: &Running,
    ) -> anyhow::Result<()> {
        let Application {
            config,
            listener,
            addr: _,
            buses,
            producer,
            accounts,
            bridge,
            audit_pool,
            analytics_pool,
        } = self;
        let symbols = configured_symbols(&config.market)?;
        let stop = shutdown.child_token();
        let mut tasks = Tasks {
            set: JoinSet::new(),
            running: running.clone(),
        };
        let every = Duration::from_millis(config.telemetry.heartbeat_interval_ms);

        // Market domain.
        let token = stop.clone();
        tasks.spawn("data-bridge", async move {
            bridge.run(token).await.map_err(Into::into)
        });
        // One tick subscription for the process, shared by every service that reads ticks.
        let mut hub = TickHub::new();
        let (signal_ticks, _) = hub.listen("signals");
        let (price_ticks, _) = hub.listen("price-service");
        let (analytics_ticks, _) = hub.listen("market-analytics");
        let ticks = hub.run(buses.get(Identity::Ticks), stop.clone());
        tasks.spawn("tick-hub", async move { ticks.await.map_err(Into::into) });
        let mut signals = suho_signals::SignalsConfig::new(symbols.clone());
        signals.state_dir = Some(config.stack.dir.join("signals"));
        // After a restart the strategies and indicators pick up from the stored candles.
        let history = stored_candles(&analytics_pool, &symbols).await;
        analytics_pool.close().await;
        signals.history = history.clone();
        let signals = suho_signals::run_signals_on(
            buses.get(Identity::Signals),
            signals,
            signal_ticks,
            stop.clone(),
        );
        tasks.spawn("signals", async move { signals.await.map_err(Into::into) });
        let price = run_price_service_on(
            buses.get(Identity::Price),
            PriceServiceConfig {
                symbols: symbols.iter().copied().collect(),
                max_age_ms: i64::try_from(config.market.max_quote_age_ms).unwrap_or(i64::MAX),
                observer: None,
            },
            price_ticks,
            stop.clone(),
        );
        tasks.spawn(
            "price-service",
            async move { price.await.map_err(Into::into) },
        );
        let analytics = run_analytics_on(
            buses.get(Identity::Analytics),
            AnalyticsConfig {
                history,
                ..AnalyticsConfig::new(symbols.clone())
            },
            analytics_ticks,
            stop.clone(),
        );
        tasks.spawn("market-analytics", async move {
            analytics.await.map_err(Into::into)
        });
        let feed = feed_task(&config, &buses.get(Identity::Feed), &symbols, &stop)?;
        tasks.spawn("market-feed", feed);

        // User domain.
        let audit = suho_audit::run_audit(
            suho_messaging::kafka::bind(&config, Identity::Audit)?,
            config.telemetry.clone(),
            audit_pool,
            suho_audit::AuditConfig::default(),
            stop.clone(),
        );
        tasks.spawn("audit", async move { audit.await.map_err(Into::into) });
        if config.trading.engine_enabled {
            let engine = suho_trading::Engine::new(
                &config,
                buses.get(Identity::Engine),
                venue::venue(&config)?,
            )
            .context("creating the trading engine")?;
            let token = stop.clone();
            tasks.spawn("trading-engine", async move {
                engine.run(token).await.map_err(Into::into)
            });
        }

        if config.agent.enabled {
            let agent = suho_agent::run_agent(
                suho_agent::AgentOptions::from_config(&config)?,
                buses.get(Identity::Agent),
                stop.clone(),
            );
            tasks.spawn("agent", async move { agent.await.map_err(Into::into) });
        }

        // Gateway.
        let state = Arc::new(
            suho_gateway::AppState::new(
                accounts,
                producer,
                symbols.iter().copied().collect(),
                strategy_names(),
                config.kafka.topic_prefix.clone(),
            )
            .with_trusted_proxies(config.http.trusted_proxies.clone())
            .with_cors_origins(config.http.cors_origins.clone()),
        );
        // The WebSocket stream's shared inputs: one NATS subscription per subject pattern and
        // one Kafka consumer of every user-topic partition, for all connections.
        let (ws, ws_task) = suho_gateway::WsHub::start(
            &buses.get(Identity::Ws),
            &suho_messaging::kafka::bind(&config, Identity::Ws)?,
            suho_gateway::WsOptions::default(),
            stop.clone(),
        )
        .await
        .context("starting the WebSocket hub")?;
        tasks.spawn("ws-hub", async move { ws_task.await.map_err(Into::into) });
        let token = stop.clone();
        let web_dir = config.http.web_dir.clone();
        tasks.spawn("gateway", async move {
            suho_gateway::serve_web(listener, state, Some(ws), Some(web_dir), token)
                .await
                .map_err(Into::into)
        });

        // Heartbeats of every service in this process, each under its own identity.
        for (&identity, bus) in &buses.0 {
            let Some(service) = identity.heartbeat() else {
                continue;
            };
            let beat = suho_messaging::health::heartbeat(
                bus.clone(),
                service.to_string(),
                every,
                stop.clone(),
            );
            tasks.spawn("heartbeat", async move {
                beat.await;
                Ok(())
            });
        }

        let mut tasks = tasks.set;
        let mut failure = None;
        tokio::select! {
            () = stop.cancelled() => {}
            Some(joined) = tasks.join_next() => {
                failure = Some(describe(joined));
                stop.cancel();
            }
        }
        let drained = tokio::time::timeout(SERVICES_STOP_WITHIN, async {
            while let Some(joined) = tasks.join_next().await {
                if let (name, Err(e)) = describe(joined) {
                    tracing::error!(service = name, error = %format!("{e:#}"), "stopped with an error");
                }
            }
        })
        .await;
        let abandoned = drained.is_err().then(|| running.names().join(", "));
        if abandoned.is_some() {
            tasks.abort_all();
        }
        match failure {
            Some((name, Err(e))) => Err(e.context(format!("service `{name}` failed"))),
            Some((name, Ok(()))) if !shutdown.is_cancelled() => {
                Err(anyhow::anyhow!("service `{name}` stopped unexpectedly"))
            }
            _ => match abandoned {
                Some(names) => Err(anyhow::anyhow!(
                    "services did not stop within {}s and were abandoned: {names}",
                    SERVICES_STOP_WITHIN.as_secs()
                )),
                None => Ok(()),
            },
        }
    }
}

/// A NATS connection per identity of the services this process runs: each service talks to
/// NATS as itself, so the server holds it to its own row of the identity table.
struct Buses(std::collections::BTreeMap<Identity, MarketBus>);

impl Buses {
    /// The identities [`Application`] runs, with the engine and the agent when enabled.
    async fn connect(config: &Config) -> anyhow::Result<Buses> {
        let mut buses = std::collections::BTreeMap::new();
        for identity in Identity::ALL {
            let runs = match identity {
                Identity::Engine => config.trading.engine_enabled,
                Identity::Agent => config.agent.enabled,
                Identity::Operator => false,
                _ => true,
            };
            if runs {
                let bus = MarketBus::connect(config, identity)
                    .await
                    .with_context(|| format!("connecting to NATS as `{identity}`"))?;
                buses.insert(identity, bus);
            }
        }
        Ok(Buses(buses))
    }

    /// The bus of `identity`, which [`Buses::connect`] connected.
    fn get(&self, identity: Identity) -> MarketBus {
        self.0
            .get(&identity)
            .unwrap_or_else(|| panic!("no NATS connection for `{identity}`"))
            .clone()
    }
}

/// How long [`Application::run`] waits for its services to stop once told to.
pub const SERVICES_STOP_WITHIN: Duration = Duration::from_secs(3);

/// The platform's tasks, each named, and noted in a [`Running`] while it runs.
struct Tasks {
    set: JoinSet<(&'static str, anyhow::Result<()>)>,
    running: Running,
}

impl Tasks {
    fn spawn(
        &mut self,
        name: &'static str,
        task: impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let task = self.running.track(name, task);
        self.set.spawn(async move { (name, task.await) });
    }
}

/// The running feed, whichever one `market.feed` names.
type FeedTask = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

/// The one place a feed is chosen: `market.feed` names it, and every feed publishes on the same
/// `market.{SYM}.tick` / `market.{SYM}.{tf}` subjects (so the price service, analytics and the
/// data bridge do not know which one runs).
///
/// # Errors
/// The chosen feed's settings are unusable (a replay file that does not load, a missing
/// `polygon.api_key`...), each naming its field.
/// The strategies this platform runs, by name (the only keys of `auto_trading`).
fn strategy_names() -> Vec<String> {
    suho_signals::StrategyKind::ALL
        .iter()
        .map(|k| k.name().to_string())
        .collect()
}

/// The OpenAPI document a gateway of `config` serves at `/api/openapi.json` (with its traded
/// symbols and strategies), without running anything: what the dashboard's types are
/// generated from.
///
/// # Errors
/// The configured symbols are invalid.
pub fn openapi_document(config: &Config) -> anyhow::Result<serde_json::Value> {
    let symbols = configured_symbols(&config.market)?;
    Ok(suho_gateway::openapi::served(
        &symbols.iter().copied().collect(),
        &strategy_names(),
    ))
}

/// Closed 1m candles the strategies are warmed up with after a restart, per symbol.
const WARM_UP_CANDLES: usize = 200;
/// Only candles this recent warm the strategies up (older ones describe another market).
const WARM_UP_WINDOW_MS: i64 = 6 * 60 * 60 * 1000;

/// The last [`WARM_UP_CANDLES`] stored closed 1m candles of every symbol from the last
/// [`WARM_UP_WINDOW_MS`], oldest first per symbol, for the warm-up of the signals and the
/// indicators. A failed query is logged and gives none for that symbol: they then warm up on
/// live candles, as on a first start.
async fn stored_candles(pool: &sqlx::PgPool, symbols: &[Symbol]) -> Vec<suho_domain::Candle> {
    let to = suho_messaging::now_ms() + 1;
    let mut all = Vec::new();
    for &symbol in symbols {
        let query = suho_bridge::candle_history(
            pool,
            symbol,
            suho_domain::Timeframe::M1,
            to - WARM_UP_WINDOW_MS,
            to,
            suho_bridge::MAX_HISTORY_LIMIT,
        );
        match query.await {
            Ok(candles) => {
                let skip = candles.len().saturating_sub(WARM_UP_CANDLES);
                all.extend(candles.into_iter().skip(skip));
            }
            Err(e) => {
                tracing::warn!(%symbol, error = %e, "reading stored candles for the signals' warm-up failed; warming up on live candles");
            }
        }
    }
    all
}

fn feed_task(
    config: &Config,
    bus: &MarketBus,
    symbols: &[Symbol],
    stop: &CancellationToken,
) -> anyhow::Result<FeedTask> {
    let bus = bus.clone();
    Ok(match config.market.feed.as_str() {
        "replay" => {
            let path = config
                .market
                .replay_file
                .as_ref()
                .context("market.replay_file is required when market.feed is `replay`")?;
            let recording = suho_market::Recording::load(path)
                .with_context(|| format!("market.replay_file {}", path.display()))?;
            let options = suho_market::ReplayOptions {
                speed: config.market.replay_speed,
                rebase: config.market.replay_rebase,
            };
            let token = stop.clone();
            let replay = suho_market::run_replay(bus, recording, options, stop.clone());
            Box::pin(async move {
                replay.await?;
                // A finished recording is not a failure: the platform stays up.
                token.cancelled().await;
                Ok(())
            })
        }
        "polygon" => {
            let live = suho_polygon::PolygonLive::new(polygon::adapter_config(config)?)
                .context("[polygon] settings")?;
            Box::pin(polygon::run_live(bus, live, symbols.to_vec(), stop.clone()))
        }
        "synthetic" => {
            let hours = TradingHours::from_name(&config.market.trading_hours)
                .context("market.trading_hours: use `always` or `fx`")?;
            let feed = run_feed(
                bus,
                SyntheticFeed::new(symbols, config.market.seed).with_hours(hours),
                symbols.len(),
                config.market.ticks_per_second,
                stop.clone(),
            );
            Box::pin(async move { Ok(feed.await?) })
        }
        other => anyhow::bail!("market.feed: `{other}` is not a feed"),
    })
}

fn describe(
    joined: Result<(&'static str, anyhow::Result<()>), tokio::task::JoinError>,
) -> (&'static str, anyhow::Result<()>) {
    joined.unwrap_or_else(|e| ("a service task", Err(anyhow::anyhow!("panicked: {e}"))))
}

/// The `KEY=value` settings `suho stack credentials` prints for an identity: how an outside
/// client connects to this stack as it. NATS requires TLS (verified against `SUHO_CA_FILE`)
/// and the identity's user and password; Kafka SASL_SSL with SCRAM-SHA-512, the same user and
/// password, and the same CA; PostgreSQL the same over TLS with SCRAM (`SUHO_DATABASE_URL`).
#[must_use]
pub fn credentials_env(
    config: &Config,
    credentials: &suho_security::Credentials,
) -> Vec<(&'static str, String)> {
    use secrecy::ExposeSecret;
    vec![
        ("SUHO_NATS_URL", config.nats.url.clone()),
        ("SUHO_NATS_USER", credentials.user().to_string()),
        (
            "SUHO_NATS_PASSWORD",
            credentials.password.expose_secret().to_string(),
        ),
        ("SUHO_KAFKA_BOOTSTRAP", config.kafka.bootstrap.clone()),
        ("SUHO_KAFKA_SECURITY_PROTOCOL", "SASL_SSL".to_string()),
        (
            "SUHO_KAFKA_SASL_MECHANISM",
            suho_security::kafka::SERVICE_MECHANISM.to_string(),
        ),
        ("SUHO_KAFKA_SASL_USERNAME", credentials.user().to_string()),
        (
            "SUHO_KAFKA_SASL_PASSWORD",
            credentials.password.expose_secret().to_string(),
        ),
        (
            "SUHO_CA_FILE",
            std::path::absolute(&credentials.ca_file)
                .unwrap_or_else(|_| credentials.ca_file.clone())
                .display()
                .to_string(),
        ),
        ("SUHO_DATABASE_URL", database_url(config, credentials)),
    ]
}

/// A libpq URL that logs in as the identity's role over TLS that verifies the server
/// (`sslmode=verify-full` against the local CA). An identity whose row grants nothing in
/// PostgreSQL has no role: the server refuses its URL.
fn database_url(config: &Config, credentials: &suho_security::Credentials) -> String {
    use secrecy::ExposeSecret;
    let (host, port, database) = suho_database::base_options(config).map_or_else(
        |_| ("127.0.0.1".to_string(), 5432, "suho".to_string()),
        |o| {
            (
                o.get_host().to_string(),
                o.get_port(),
                o.get_database().unwrap_or("suho").to_string(),
            )
        },
    );
    let ca =
        std::path::absolute(&credentials.ca_file).unwrap_or_else(|_| credentials.ca_file.clone());
    // Passwords are base64url: nothing in them needs escaping in a URL.
    format!(
        "postgres://{}:{}@{host}:{port}/{database}?sslmode=verify-full&sslrootcert={}",
        credentials.user(),
        credentials.password.expose_secret(),
        ca.display()
    )
}

/// `suho engine`: the trading engine alone, until `shutdown`.
///
/// # Errors
/// NATS or Kafka is unreachable, or the engine fails for good.
pub async fn run_engine(config: &Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let bus = MarketBus::connect(config, Identity::Engine)
        .await
        .context("connecting to NATS")?;
    let engine = suho_trading::Engine::new(config, bus, venue::venue(config)?)
        .context("creating the trading engine")?;
    tracing::info!(instance = %config.trading.instance_id, "trading engine starting");
    engine.run(shutdown).await.context("the trading engine")
}

/// `suho account deposit|withdraw`: queues a `DEPOSIT` / `WITHDRAWAL` command for `user` on
/// `user.commands` (keyed by the user, `acks=all`), and prints its `command_id`.
///
/// # Errors
/// The amount is not positive in whole cents, or Kafka does not take the command.
pub async fn queue_money(
    config: &Config,
    user: &str,
    amount: rust_decimal::Decimal,
    withdrawal: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        user.starts_with("usr_") && user.len() > 4,
        "--user: {user:?} is not a user id (usr_...)"
    );
    let command = suho_domain::TradeCommand::money(
        suho_domain::UserId::new(user),
        amount,
        withdrawal,
        suho_messaging::now_ms(),
    );
    command
        .validate()
        .map_err(|e| anyhow::anyhow!("--amount: {e}"))?;
    // A command enters `user.commands` as every command does: through the gateway's login
    // (the operator reads everything and writes no commands).
    let kafka = suho_messaging::kafka::bind(config, Identity::Gateway)?;
    let producer = UserEventProducer::new(&kafka).context("creating the Kafka producer")?;
    producer
        .send(&command)
        .await
        .context("queuing the command on user.commands")?;
    suho_telemetry::output::stdout_line(&format!(
        "{{\"status\":\"queued\",\"command_id\":\"{}\"}}",
        command.head.event_id
    ));
    Ok(())
}

/// `suho audit export`: the user's stored events in `[from_ms, to_ms)` on stdout; with
/// `verify`, the same range read straight from Kafka must match, else an error.
///
/// # Errors
/// The database or Kafka is unreachable, or (with `verify`) the store and the log differ.
pub async fn audit_export(
    config: &Config,
    user: &str,
    from_ms: i64,
    to_ms: i64,
    format: suho_audit::ExportFormat,
    verify: bool,
) -> anyhow::Result<()> {
    anyhow::ensure!(from_ms < to_ms, "--from must be before --to");
    let pool = suho_database::pool_of(config, suho_database::Login::Service(Identity::Operator), 2)
        .await?;
    let topics: Vec<String> = suho_audit::AUDITED_TOPICS
        .iter()
        .map(|t| t.full_name(&config.kafka.topic_prefix))
        .collect();
    let records = suho_audit::user_events(&pool, &topics, user, from_ms, to_ms)
        .await
        .context("reading the audit store")?;
    if verify {
        let operator = suho_messaging::kafka::bind(config, Identity::Operator)?;
        let log = suho_audit::kafka_history(&operator, topics, user.to_string(), from_ms, to_ms)
            .await
            .context("reading the history from Kafka")?;
        anyhow::ensure!(
            log == records,
            "the audit store ({} records) differs from Kafka ({} records) for {user} in [{from_ms}, {to_ms}): the audit service may be behind",
            records.len(),
            log.len()
        );
        suho_telemetry::output::stderr_line(&format!(
            "verified: {} records, the same in the store and in Kafka",
            records.len()
        ));
    }
    let mut out = std::io::stdout().lock();
    suho_audit::write_export(&mut out, &records, format).context("writing the export")
}

/// The keys that seal MT5 passwords: `auth.credentials_keys` (current: `auth.credentials_key_id`,
/// or the only key) if configured, else a random key generated once and kept (mode 0600) in
/// `<stack.dir>/secrets/credentials.key` under the id `local-1`.
///
/// # Errors
/// A configured key is not 32 bytes of base64, the current id names no key, or the key file
/// cannot be read or written.
pub fn credentials_keyring(config: &Config) -> anyhow::Result<suho_accounts::Keyring> {
    let auth = &config.auth;
    if !auth.credentials_keys.is_empty() {
        let current = match (&auth.credentials_key_id, auth.credentials_keys.len()) {
            (Some(id), _) => id.clone(),
            (None, 1) => auth
                .credentials_keys
                .keys()
                .next()
                .cloned()
                .unwrap_or_default(),
            (None, _) => anyhow::bail!(
                "auth.credentials_key_id: required when auth.credentials_keys holds several keys"
            ),
        };
        return suho_accounts::Keyring::new(&current, auth.credentials_keys.clone())
            .map_err(|e| anyhow::anyhow!("auth.credentials_keys: {e}"));
    }
    const LOCAL_ID: &str = "local-1";
    let path = config.stack.dir.join("secrets").join("credentials.key");
    let key = match std::fs::read_to_string(&path) {
        Ok(existing) if !existing.trim().is_empty() => {
            SecretString::from(existing.trim().to_string())
        }
        _ => {
            use secrecy::ExposeSecret;
            let key = suho_accounts::Keyring::generate_key();
            write_private_file(&path, key.expose_secret())?;
            key
        }
    };
    suho_accounts::Keyring::new(LOCAL_ID, [(LOCAL_ID.to_string(), key)])
        .with_context(|| format!("{}", path.display()))
}

/// The JWT key: `auth.jwt_secret` if configured, else a random key generated once and
/// kept (mode 0600) in `<stack.dir>/secrets/jwt.key` so tokens survive restarts.
///
/// # Errors
/// The key file cannot be read or written.
pub fn jwt_secret(config: &Config) -> anyhow::Result<SecretString> {
    if let Some(s) = &config.auth.jwt_secret {
        return Ok(s.clone());
    }
    let path = config.stack.dir.join("secrets").join("jwt.key");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        if existing.trim().len() >= 32 {
            return Ok(SecretString::from(existing.trim().to_string()));
        }
    }
    write_secret_file(&path)
}

fn write_secret_file(path: &Path) -> anyhow::Result<SecretString> {
    let bytes: [u8; 32] = rand::random();
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private_file(path, &key)?;
    Ok(SecretString::from(key))
}

/// Writes `content` to `path` (mode 0600, see [`suho_security::write_private`]), creating the
/// directory.
fn write_private_file(path: &Path, content: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(suho_security::write_private(path, content.as_bytes())?)
}
