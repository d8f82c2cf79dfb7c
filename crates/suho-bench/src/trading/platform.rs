//! The services on a trade command's path, wired as `suho::Application::run` wires them, in
//! this process: the synthetic feed and the price service (behind one `TickHub`) for the
//! engine's `market.{SYM}.price` requests, the trading engine, and the HTTP gateway with its
//! accounts in PostgreSQL. Not started, because no command waits for them: analytics,
//! signals, the data bridge, the audit service and the heartbeats.
//!
//! Also the users: registered and logged in through the gateway, as a client would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use secrecy::SecretString;
use suho_config::Config;
use suho_domain::{PriceReply, Symbol, UserId};
use suho_market::{
    configured_symbols, run_feed, run_price_service_on, PriceServiceConfig, SyntheticFeed, TickHub,
    TradingHours,
};
use suho_messaging::{MarketBus, UserEventProducer};
use suho_security::Identity;
use tokio::task::JoinSet;

use crate::server::ThrowawayStack;
use tokio_util::sync::CancellationToken;

/// The password of every bench user.
const PASSWORD: &str = "bench-correct-horse-battery";

type Tasks = JoinSet<(&'static str, anyhow::Result<()>)>;

/// The running services.
pub(crate) struct Platform {
    /// Where the gateway listens.
    pub(crate) http_addr: SocketAddr,
    /// The market bus, as the engine (which may ask the price service for quotes).
    pub(crate) bus: MarketBus,
    stop: CancellationToken,
    feed_stop: CancellationToken,
    tasks: Tasks,
}

/// A registered, logged-in user.
#[derive(Clone)]
pub(crate) struct BenchUser {
    pub(crate) id: UserId,
    /// `Bearer <token>`.
    pub(crate) authorization: Arc<str>,
}

impl Platform {
    /// Connects to the stack `config` names, migrates the accounts database, binds the HTTP
    /// port and starts the services.
    ///
    /// # Errors
    /// A server is unreachable or a service cannot be created.
    pub(crate) async fn start(config: &Config) -> anyhow::Result<Platform> {
        let GatewayParts {
            bus,
            producer,
            accounts,
            listener,
            addr: http_addr,
            symbols,
        } = GatewayParts::connect(config, Identity::Engine).await?;
        // Each service on NATS as itself, as `suho up` runs them.
        let as_identity = |identity| async move {
            MarketBus::connect(config, identity)
                .await
                .with_context(|| format!("connecting to NATS as `{identity}`"))
        };
        let stop = CancellationToken::new();
        let mut tasks = Tasks::new();

        // Market: one tick subscription (the hub) feeding the price service; the feed.
        let mut hub = TickHub::new();
        let (price_ticks, _) = hub.listen("price-service");
        let ticks = hub.run(as_identity(Identity::Ticks).await?, stop.clone());
        tasks.spawn(async move { ("tick-hub", ticks.await.map_err(Into::into)) });
        let price = run_price_service_on(
            as_identity(Identity::Price).await?,
            PriceServiceConfig {
                symbols: symbols.iter().copied().collect(),
                max_age_ms: i64::try_from(config.market.max_quote_age_ms).unwrap_or(i64::MAX),
                observer: None,
            },
            price_ticks,
            stop.clone(),
        );
        tasks.spawn(async move { ("price-service", price.await.map_err(Into::into)) });
        let hours = TradingHours::from_name(&config.market.trading_hours)
            .context("market.trading_hours")?;
        // The feed stops on its own token (the resting-book phase is its own feed), then
        // waits for the others so that stopping it is not taken for a failure.
        let feed_stop = stop.child_token();
        let feed = run_feed(
            as_identity(Identity::Feed).await?,
            SyntheticFeed::new(&symbols, config.market.seed).with_hours(hours),
            symbols.len(),
            config.market.ticks_per_second,
            feed_stop.clone(),
        );
        let all = stop.clone();
        tasks.spawn(async move {
            let fed = feed.await;
            if fed.is_ok() {
                all.cancelled().await;
            }
            ("market-feed", fed.map_err(Into::into))
        });

        // The trading engine.
        let t = &config.trading;
        let venue =
            suho_broker::PaperBroker::for_platform(t.paper_leverage, t.paper_opening_balance)
                .context("trading.paper_*")?;
        let engine = suho_trading::Engine::new(config, bus.clone(), venue)
            .context("creating the trading engine")?;
        let token = stop.clone();
        tasks.spawn(async move {
            (
                "trading-engine",
                engine.run(token).await.map_err(Into::into),
            )
        });

        // The gateway.
        let state = app_state(config, accounts, producer, &symbols);
        let token = stop.clone();
        tasks.spawn(async move {
            let served = suho_gateway::serve(listener, state, token).await;
            ("gateway", served.map_err(Into::into))
        });
        Ok(Platform {
            http_addr,
            bus,
            stop,
            feed_stop,
            tasks,
        })
    }

    /// Stops the synthetic feed (the other services go on): from now on the bench's own
    /// ticks are the market.
    pub(crate) fn stop_feed(&self) {
        self.feed_stop.cancel();
    }

    /// Fails if a service has stopped (they run until [`Platform::stop`]).
    ///
    /// # Errors
    /// The first service that ended, with its error.
    pub(crate) fn check(&mut self) -> anyhow::Result<()> {
        if let Some(joined) = self.tasks.try_join_next() {
            let (name, result) = joined.unwrap_or_else(|e| ("a service", Err(e.into())));
            return Err(result
                .err()
                .unwrap_or_else(|| anyhow::anyhow!("stopped unexpectedly")))
            .with_context(|| format!("the platform's {name} failed during the bench"));
        }
        Ok(())
    }

    /// Stops every service (at most 10 s).
    ///
    /// # Errors
    /// A service failed while stopping.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        let mut first_error = None;
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(joined) = self.tasks.join_next().await {
                let (name, result) = joined.unwrap_or_else(|e| ("a service", Err(e.into())));
                if let Err(e) = result {
                    first_error.get_or_insert(e.context(format!("{name} failed while stopping")));
                }
            }
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
            tracing::warn!("some services did not stop within 10 s");
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The configuration of the bench's platform on a throwaway stack: suho's defaults, with the
/// stack's addresses, its transport and the run's own prefixes, then [`bench_settings`].
pub(crate) fn config(stack: &ThrowawayStack, prefix: &str) -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.security.secrets_dir = Some(stack.secrets_dir().to_path_buf());
    config.security.transport = stack.transport();
    config.stack.manage = false;
    config.kafka.bootstrap = stack.kafka_bootstrap().to_string();
    config.kafka.topic_prefix = prefix.to_string();
    config.kafka.group_prefix = prefix.to_string();
    config.nats.url = stack.nats_url().to_string();
    config.nats.subject_prefix = prefix.to_string();
    config.database.url = SecretString::from(stack.database_url().to_string());
    bench_settings(config)
}

/// Grants every identity's Kafka ACLs under `config`'s prefixes (the bench's run has
/// prefixes of its own), as the stack's admin principal, and returns `config` with that
/// admin login for the bench's own clients (topics, baselines, observers); the platform's
/// services log in as themselves. A plain stack has neither ACLs nor logins: `config` as it
/// is.
///
/// # Errors
/// The admin password is missing, or the broker refused the ACLs.
pub(crate) async fn secure(mut config: Config) -> anyhow::Result<Config> {
    if config.security.transport == suho_config::Transport::Plain {
        return Ok(config);
    }
    let secrets = suho_security::Secrets::at(config.secrets_dir());
    let admin = suho_messaging::kafka::with_admin_login(&config.kafka, &secrets)
        .context("the stack's Kafka admin login")?;
    let acls =
        suho_security::kafka::all_acls(&config.kafka.topic_prefix, &config.kafka.group_prefix);
    let grant = admin.clone();
    tokio::task::spawn_blocking(move || suho_messaging::kafka_admin::create_acls(&grant, &acls))
        .await
        .context("the ACL thread")?
        .context("granting the bench's Kafka ACLs")?;
    config.kafka = admin;
    Ok(config)
}

/// `config` with the bench's own settings: an ephemeral HTTP port on loopback, a random JWT
/// key, its own engine instance and no per-user command limit.
pub(crate) fn bench_settings(mut config: Config) -> anyhow::Result<Config> {
    config.http.addr = ([127, 0, 0, 1], 0).into();
    let key: [u8; 32] = rand::random();
    config.auth.jwt_secret = Some(SecretString::from(
        key.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    ));
    config.trading.instance_id = "bench".into();
    // Each user sends at most a few commands a second here, but a slow phase bunches them:
    // the engine's per-user limit must not reject what the bench measures.
    config.trading.max_commands_per_second = 1_000_000;
    config
        .validate()
        .context("the bench's platform configuration")?;
    Ok(config)
}

/// Waits (at most 30 s) until the price service answers a quote for every one of `symbols`.
///
/// # Errors
/// A symbol has no quote in time.
pub(crate) async fn wait_for_quotes(bus: &MarketBus, symbols: &[Symbol]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for &symbol in symbols {
        let subject = suho_domain::subject::price(bus.prefix(), symbol);
        loop {
            let reply = bus.request(subject.clone(), bytes::Bytes::new()).await;
            let quoted = reply
                .ok()
                .and_then(|p| serde_json::from_slice::<PriceReply>(&p).ok())
                .is_some_and(|r| matches!(r, PriceReply::Quote(_)));
            if quoted {
                break;
            }
            if Instant::now() > deadline {
                bail!("the price service has no quote for {symbol} after 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Registers and logs in `n` users through the gateway (a few at a time: each costs two
/// argon2id hashes).
///
/// # Errors
/// A registration or login is refused.
pub(crate) async fn register_users(
    http: &reqwest::Client,
    addr: SocketAddr,
    n: usize,
    run: &str,
) -> anyhow::Result<Vec<BenchUser>> {
    let parallel = std::thread::available_parallelism().map_or(2, std::num::NonZero::get) * 2;
    let users: Vec<anyhow::Result<BenchUser>> = futures::stream::iter(0..n)
        .map(|i| async move {
            let creds = serde_json::json!({
                "email": format!("bench-{run}-{i}@example.com"),
                "password": PASSWORD,
            });
            let register = post(http, addr, "/api/auth/register", &creds).await?;
            anyhow::ensure!(
                register.0 == 201,
                "registering: {} {}",
                register.0,
                register.1
            );
            let login = post(http, addr, "/api/auth/login", &creds).await?;
            anyhow::ensure!(login.0 == 200, "logging in: {} {}", login.0, login.1);
            let id = login.1["user_id"].as_str().context("login: no user_id")?;
            let token = login.1["access_token"]
                .as_str()
                .context("login: no access_token")?;
            Ok(BenchUser {
                id: UserId::new(id),
                authorization: Arc::from(format!("Bearer {token}")),
            })
        })
        .buffered(parallel)
        .collect()
        .await;
    users.into_iter().collect()
}

async fn post(
    http: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let response = http
        .post(format!("http://{addr}{path}"))
        .json(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("POST {path}"))?;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    ))
}

/// What the gateway is built from, connected as `suho::Application::build` connects it.
pub(crate) struct GatewayParts {
    /// NATS, as the identity named at [`GatewayParts::connect`].
    pub(crate) bus: MarketBus,
    /// The user-event producer.
    pub(crate) producer: UserEventProducer,
    /// The accounts, migrated.
    pub(crate) accounts: suho_accounts::Accounts,
    /// The bound HTTP listener.
    pub(crate) listener: tokio::net::TcpListener,
    /// Its address.
    pub(crate) addr: SocketAddr,
    /// The configured symbols.
    pub(crate) symbols: Vec<Symbol>,
}

impl GatewayParts {
    /// Connects NATS (as `identity`), Kafka and PostgreSQL, migrates, and binds `http.addr`.
    ///
    /// # Errors
    /// A server is unreachable, or the configuration lacks the JWT secret.
    pub(crate) async fn connect(
        config: &Config,
        identity: Identity,
    ) -> anyhow::Result<GatewayParts> {
        let bus = MarketBus::connect(config, identity)
            .await
            .context("connecting to NATS")?;
        let gateway = suho_messaging::kafka::bind(config, Identity::Gateway)?;
        let producer = UserEventProducer::new(&gateway).context("creating the Kafka producer")?;
        let secret = config
            .auth
            .jwt_secret
            .clone()
            .context("the bench sets auth.jwt_secret")?;
        suho_database::migrate(config)
            .await
            .context("migrating the database")?;
        let accounts = suho_accounts::Accounts::with_pool(
            suho_database::pool(config, Identity::Gateway).await?,
            &secret,
            Duration::from_secs(config.auth.token_ttl_s),
        );
        let listener = tokio::net::TcpListener::bind(config.http.addr)
            .await
            .context("binding the HTTP API")?;
        let addr = listener.local_addr()?;
        let symbols = configured_symbols(&config.market)?;
        Ok(GatewayParts {
            bus,
            producer,
            accounts,
            listener,
            addr,
            symbols,
        })
    }
}

/// The gateway's state over `accounts` and `producer`, trading `symbols`.
pub(crate) fn app_state(
    config: &Config,
    accounts: suho_accounts::Accounts,
    producer: UserEventProducer,
    symbols: &[Symbol],
) -> Arc<suho_gateway::AppState> {
    Arc::new(suho_gateway::AppState::new(
        accounts,
        producer,
        symbols.iter().copied().collect(),
        Vec::new(),
        config.kafka.topic_prefix.clone(),
    ))
}
