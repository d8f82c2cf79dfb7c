//! suho's configuration.
//!
//! One optional TOML file (`suho.toml` in the working directory, or the path in
//! `SUHO_CONFIG`) layered under environment overrides spelled `SUHO__SECTION__KEY`
//! (for example `SUHO__HTTP__ADDR=127.0.0.1:9000`). Every field has a default that
//! works on a laptop with no configuration at all. The result is validated once,
//! here; the rest of the code receives typed, checked values.
//!
//! Secrets are [`secrecy::SecretString`]: their `Debug` prints `[REDACTED]`, so a
//! logged or printed config never shows them.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::SecretString;
use serde::Deserialize;

/// The file read when `SUHO_CONFIG` is not set (relative to the working directory).
pub const DEFAULT_FILE: &str = "suho.toml";

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment override could not be parsed.
    #[error("configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("configuration: `{field}` {problem}")]
    Invalid {
        /// Dotted path of the offending field, e.g. `kafka.bootstrap`.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct Config {
    /// The local Kafka / NATS / PostgreSQL stack that suho can install and run.
    pub stack: StackConfig,
    /// NATS, the market-data bus.
    pub nats: NatsConfig,
    /// Kafka, the user-event log.
    pub kafka: KafkaConfig,
    /// PostgreSQL.
    pub database: DatabaseConfig,
    /// HTTP API, WebSocket and dashboard.
    pub http: HttpConfig,
    /// Passwords and tokens.
    pub auth: AuthConfig,
    /// The market-data services.
    pub market: MarketConfig,
    /// Polygon.io: the live feed (`market.feed = "polygon"`) and `suho backfill`.
    pub polygon: PolygonConfig,
    /// The trading engine.
    pub trading: TradingConfig,
    /// The auto-trading agent (strategy signals to commands for opted-in users).
    pub agent: AgentConfig,
    /// Logs, metrics, heartbeats.
    pub telemetry: TelemetryConfig,
    /// Credentials and certificates of the services on NATS, Kafka and PostgreSQL.
    pub security: SecurityConfig,
}

/// Where the services' credentials and the local CA live.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct SecurityConfig {
    /// The secrets directory (passwords, the CA, the servers' certificate); `None` for
    /// `{stack.dir}/secrets`.
    pub secrets_dir: Option<PathBuf>,
    /// Host names or IP addresses the servers' certificate names besides `127.0.0.1`, `::1`
    /// and `localhost` (for servers reached by another name).
    pub tls_hosts: Vec<String>,
    /// How the services reach NATS, Kafka and PostgreSQL. Never read from the file or the
    /// environment, so every deployment is [`Transport::Secured`]; only a benchmark that
    /// measures what security costs sets [`Transport::Plain`], on a throwaway stack of its own.
    #[serde(skip)]
    pub transport: Transport,
}

/// How clients and servers talk: the platform's one way, or the benches' plain baseline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transport {
    /// TLS verified against the local CA, a login per service identity, each identity's
    /// permissions enforced by the server: what `suho stack up` runs and what every
    /// service connects with.
    #[default]
    Secured,
    /// No TLS, no login, no permissions: the same servers and services with security
    /// taken out, so that a benchmark can show its cost beside the secured figure. Only a
    /// throwaway benchmark stack runs it; a secured server refuses such a client.
    Plain,
}

impl Transport {
    /// `plain` or `secured`, as the bench reports name it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Transport::Secured => "secured",
            Transport::Plain => "plain",
        }
    }
}

/// Where and how the local stack lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct StackConfig {
    /// Every byte of broker and database data, logs and downloaded jars lives here.
    pub dir: PathBuf,
    /// `suho up` starts the stack when it is not already running (and stops what it started).
    pub manage: bool,
    /// Apache Kafka version fetched from Maven Central.
    pub kafka_version: String,
    /// Kafka's KRaft controller listener port (the client port comes from `kafka.bootstrap`).
    pub kafka_controller_port: u16,
    /// Kafka JVM heap, e.g. `512m`.
    pub kafka_heap: String,
    /// NATS monitoring port, served over HTTPS with the servers' certificate; `0` (the
    /// default) serves none. The endpoint has no authentication of its own (any local process
    /// reaching it reads connection names and subscriptions), so it is off unless asked for.
    pub nats_monitor_port: u16,
    /// The `nats-server` release built from the Go module proxy (a pinned, current one).
    pub nats_version: String,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from(".suho"),
            manage: true,
            kafka_version: "4.1.1".into(),
            kafka_controller_port: 9093,
            kafka_heap: "512m".into(),
            nats_monitor_port: 0,
            nats_version: "2.15.3".into(),
        }
    }
}

/// NATS connection settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct NatsConfig {
    /// Server URL.
    pub url: String,
    /// Prepended to every subject (empty in production; unique per test).
    pub subject_prefix: String,
    /// Request/reply timeout in milliseconds.
    pub request_timeout_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            subject_prefix: String::new(),
            request_timeout_ms: 1000,
        }
    }
}

/// Kafka connection settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub bootstrap: String,
    /// Prepended to every topic name (empty in production; unique per test).
    pub topic_prefix: String,
    /// Prepended to every consumer group id.
    pub group_prefix: String,
    /// Who the client logs in as, over TLS. Never read from the file or the environment:
    /// each service binds its own identity's credentials from the secrets directory at
    /// start (`suho_messaging::kafka::bind`); a client without it is refused by the broker.
    #[serde(skip)]
    pub login: Option<KafkaLogin>,
}

/// A Kafka client's login: SASL/SCRAM-SHA-512 over TLS, the server verified against the CA.
#[derive(Debug, Clone)]
pub struct KafkaLogin {
    /// The principal's name (the identity's name).
    pub username: String,
    /// Its password.
    pub password: SecretString,
    /// The CA certificate (PEM) the broker's certificate is checked against.
    pub ca_file: PathBuf,
    /// The SASL mechanism: `SCRAM-SHA-512` for every service; `PLAIN` only for the stack's
    /// own admin principal.
    pub mechanism: &'static str,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            group_prefix: String::new(),
            login: None,
        }
    }
}

/// PostgreSQL settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// Connection URL; may carry a password, so it is a secret.
    pub url: SecretString,
    /// Pool size.
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://suho@127.0.0.1:5432/suho"),
            max_connections: 10,
        }
    }
}

/// HTTP server settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Listen address; loopback unless configured otherwise.
    pub addr: SocketAddr,
    /// The built web dashboard the gateway serves at `/` (relative to the working directory).
    /// `suho up` builds it with npm when its `package.json` sits in the parent directory
    /// (`web/`) and the build is missing or older than the sources.
    pub web_dir: PathBuf,
    /// Reverse proxies whose `X-Forwarded-For` is believed (addresses or networks:
    /// `"127.0.0.1"`, `"10.0.0.0/8"`). A request from one of them is taken to come from the
    /// rightmost address of its `X-Forwarded-For` that is not itself a trusted proxy; from
    /// anyone else, from its peer address, whatever the header says. Empty by default.
    pub trusted_proxies: Vec<IpNetwork>,
    /// Origins besides the gateway's own whose pages may call the API from a browser
    /// (CORS), each `scheme://host[:port]` (`"https://app.example.com"`). Empty by default:
    /// only the gateway's own pages, the dashboard, may.
    pub cors_origins: Vec<CorsOrigin>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            web_dir: PathBuf::from("web/dist"),
            trusted_proxies: Vec::new(),
            cors_origins: Vec::new(),
        }
    }
}

/// An IP network: an address and a prefix length, written `10.0.0.0/8` (or an address alone,
/// which is the network of that one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IpNetwork {
    addr: IpAddr,
    prefix: u8,
}

impl IpNetwork {
    /// Whether `ip` is in this network (an IPv4 address never is in an IPv6 network, nor
    /// the other way round).
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNetwork {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let (addr, prefix) = raw
            .trim()
            .split_once('/')
            .map_or((raw.trim(), None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{raw}` is not an IP address or network (`10.0.0.0/8`)"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{raw}`: the prefix length must be 0 to {max}"))?,
        };
        Ok(IpNetwork { addr, prefix })
    }
}

impl TryFrom<String> for IpNetwork {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        raw.parse()
    }
}

impl std::fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A web origin, `http(s)://host[:port]` with nothing after it, as a browser sends it in
/// `Origin` (a wildcard is refused: name each origin).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct CorsOrigin(String);

impl CorsOrigin {
    /// The origin as a browser spells it.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CorsOrigin {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, Self::Error> {
        let bad = || {
            format!(
                "{raw:?} is not an origin: write scheme://host[:port], as https://app.example.com"
            )
        };
        let url = url::Url::parse(&raw).map_err(|_| bad())?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad());
        }
        let origin = url.origin().ascii_serialization();
        // Anything after the origin (a path, even `/`, a query) is not part of one.
        if origin != raw {
            return Err(bad());
        }
        Ok(CorsOrigin(origin))
    }
}

/// Authentication settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// HMAC key for JWTs. When unset, a random key is generated on first start and
    /// kept in `<stack.dir>/secrets/jwt.key` so tokens survive a restart.
    pub jwt_secret: Option<SecretString>,
    /// Lifetime of an access token, seconds.
    pub token_ttl_s: u64,
    /// Keys that seal linked MT5 passwords (XChaCha20-Poly1305), by key id: each a base64
    /// 32-byte key. When empty, one key is generated on first start and kept in
    /// `<stack.dir>/secrets/credentials.key` (id `local-1`).
    pub credentials_keys: std::collections::BTreeMap<String, SecretString>,
    /// The id of the key that seals new passwords (the others only open old ones, for
    /// rotation); required when `credentials_keys` has more than one key.
    pub credentials_key_id: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            token_ttl_s: 3600,
            credentials_keys: std::collections::BTreeMap::new(),
            credentials_key_id: None,
        }
    }
}

/// Market-data settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MarketConfig {
    /// Which feed publishes ticks: `synthetic` (the default, offline), `replay` (a recorded
    /// CSV file of ticks or bars, see `replay_file`) or `polygon` (Polygon.io's forex
    /// WebSocket, see `[polygon]`).
    pub feed: String,
    /// The file the `replay` feed plays.
    pub replay_file: Option<PathBuf>,
    /// Replay speed factor: 1.0 keeps the recorded gaps, 10.0 plays ten times faster, 0.0
    /// plays as fast as possible.
    pub replay_speed: f64,
    /// Stamp replayed records from "now" on (keeping their gaps) instead of their recorded times.
    pub replay_rebase: bool,
    /// Symbols the platform quotes and trades (canonical or display form).
    pub symbols: Vec<String>,
    /// Synthetic feed: ticks per second per symbol.
    pub ticks_per_second: f64,
    /// Synthetic feed: seed of its random walk, so a run is reproducible.
    pub seed: u64,
    /// Synthetic feed: `always` (the default; the intraday session profile applies but the
    /// market never closes) or `fx` (also closed from Friday 22:00 to Sunday 22:00 UTC).
    pub trading_hours: String,
    /// The price service answers `stale` for a quote older than this.
    pub max_quote_age_ms: u64,
    /// Size cap, in bytes, of the JetStream stream that buffers market data for the data
    /// bridge (oldest dropped first). JetStream reserves it on disk up front, so a stream
    /// larger than the server's free store is refused.
    pub bridge_buffer_bytes: u64,
}

impl Default for MarketConfig {
    fn default() -> Self {
        Self {
            feed: "synthetic".into(),
            replay_file: None,
            replay_speed: 1.0,
            replay_rebase: true,
            symbols: [
                "EURUSD", "GBPUSD", "USDJPY", "USDCHF", "AUDUSD", "USDCAD", "NZDUSD", "EURGBP",
                "EURJPY", "GBPJPY", "EURCHF", "AUDJPY", "EURAUD", "GBPCHF",
            ]
            .map(String::from)
            .to_vec(),
            ticks_per_second: 30.0,
            seed: 42,
            trading_hours: "always".into(),
            max_quote_age_ms: 5000,
            bridge_buffer_bytes: 1 << 30,
        }
    }
}

/// Polygon.io settings, for the live feed and the historical backfill.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct PolygonConfig {
    /// The API key (`SUHO__POLYGON__API_KEY`); required when `market.feed` is `polygon` and
    /// for `suho backfill`.
    pub api_key: Option<SecretString>,
    /// The forex WebSocket; `wss://delayed.polygon.io/forex` is the delayed cluster.
    pub ws_url: String,
    /// The REST API's base URL (scheme, host, port).
    pub rest_url: String,
    /// Timeout of each network await (connect, handshake step, HTTP request), milliseconds.
    pub request_timeout_ms: u64,
    /// A live connection silent for this long is dropped and reconnected, milliseconds.
    pub idle_timeout_ms: u64,
    /// First reconnect / retry delay, doubled per consecutive failure, milliseconds.
    pub backoff_initial_ms: u64,
    /// Reconnect / retry delay ceiling, milliseconds.
    pub backoff_max_ms: u64,
}

impl Default for PolygonConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            ws_url: "wss://socket.polygon.io/forex".into(),
            rest_url: "https://api.polygon.io".into(),
            request_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
        }
    }
}

impl PolygonConfig {
    /// The API key, when one is configured and not blank.
    #[must_use]
    pub fn key(&self) -> Option<&SecretString> {
        use secrecy::ExposeSecret;
        self.api_key
            .as_ref()
            .filter(|k| !k.expose_secret().trim().is_empty())
    }
}

/// Trading-engine settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TradingConfig {
    /// Run the trading engine inside `suho up`.
    pub engine_enabled: bool,
    /// First retry delay for transient failures (no price, broker down), milliseconds.
    pub retry_initial_ms: u64,
    /// Retry delay ceiling, milliseconds.
    pub retry_max_ms: u64,
    /// Opening balance of a new paper account, whole units of the account currency (USD),
    /// as a demo account opens funded; deposits add to it. Not an event: every engine must
    /// use the same value, or rebuilt balances differ.
    pub paper_opening_balance: u64,
    /// Leverage of the paper accounts of users who have not set their own
    /// (`risk.leverage` in their settings).
    pub paper_leverage: u32,
    /// Most commands one user may have executed in any one second; more are rejected
    /// (`TRADE_REJECTED`, reason `rate limit`). Counted by the records' Kafka timestamps.
    pub max_commands_per_second: u32,
    /// This engine's name among the engines of one cluster: part of its Kafka
    /// `transactional.id`, so a restarted engine fences out its crashed predecessor. Give
    /// each concurrently running engine its own. A number is taken as its digits
    /// (`SUHO__TRADING__INSTANCE_ID=2`).
    #[serde(deserialize_with = "string_or_number")]
    pub instance_id: String,
    /// What trading costs on the paper venue (default: nothing).
    pub costs: CostsConfig,
    /// The venue commands execute on.
    pub venue: Venue,
    /// How the scripted venue misbehaves (read only with `venue = "scripted"`).
    pub scripted: ScriptedVenueConfig,
    /// How the engine publishes outcomes exactly once.
    pub delivery: Delivery,
}

/// How the trading engine publishes a batch's outcomes exactly once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// In a Kafka transaction with the commands' offsets, one per batch: readers that read
    /// committed see all of a batch or nothing. The default.
    #[default]
    Transactions,
    /// Journaled first (`engine.journal`, an entry per batch, confirmed from the journal's
    /// own tail so that an engine that lost its partitions publishes nothing), then published
    /// plainly, the offsets committed after. A new owner publishes what its predecessor
    /// journaled and had not published. Not yet the default: see `suho_trading::journal`.
    Journal,
}

/// Trading costs, in the account currency: a commission per lot on every fill (opening and
/// closing), and per symbol a swap per lot for each night a position is held
/// (`[trading.costs.swaps.EURUSD] long = -7.2, short = 2.1`; negative is a charge), three
/// nights' worth at Wednesday's rollover. Every engine must use the same values (they are
/// not events: a rebuild recomputes nothing, but new charges follow them).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CostsConfig {
    /// Commission per lot and fill.
    #[serde(deserialize_with = "decimal")]
    pub commission_per_lot: rust_decimal::Decimal,
    /// Swap rates by symbol.
    pub swaps: std::collections::BTreeMap<String, SwapRates>,
}

/// One symbol's swap per lot and night.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SwapRates {
    /// Of a long (BUY) position.
    #[serde(deserialize_with = "decimal")]
    pub long: rust_decimal::Decimal,
    /// Of a short (SELL) position.
    #[serde(deserialize_with = "decimal")]
    pub short: rust_decimal::Decimal,
}

/// An exact decimal from a number (read through its shortest text, as written) or a string
/// (environment overrides arrive as text).
fn decimal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<rust_decimal::Decimal, D::Error> {
    use std::str::FromStr;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Whole(i64),
        Float(f64),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Text(s) => s,
        Raw::Whole(n) => n.to_string(),
        Raw::Float(f) => f.to_string(),
    };
    rust_decimal::Decimal::from_str(text.trim())
        .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a decimal number: {e}")))
}

/// The venue behind the trading engine's broker port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Venue {
    /// The simulated MT5 broker (`suho_broker::PaperBroker`), the default.
    #[default]
    Paper,
    /// A test venue: the paper broker's books behind a venue that refuses some orders, fills
    /// late and is unavailable now and then, as `trading.scripted` says. For tests of the engine
    /// through a venue other than the paper broker; never for money.
    Scripted,
}

/// The scripted venue's misbehaviour; each is deterministic in the command id, so every
/// engine (and a restarted one) treats a command alike.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ScriptedVenueConfig {
    /// Refuse one command in this many (chosen by a hash of its id; 0: none).
    pub reject_every: u32,
    /// Hold every fill this long before answering, milliseconds.
    pub fill_delay_ms: u64,
    /// Answer the first try of one trade command in this many "unavailable" (a transient
    /// failure the engine retries; chosen by another hash of its id, counted per engine
    /// process; 0: none).
    pub unavailable_every: u32,
}

impl Default for ScriptedVenueConfig {
    fn default() -> Self {
        Self {
            reject_every: 7,
            fill_delay_ms: 20,
            unavailable_every: 3,
        }
    }
}

/// A string, or a number taken as its decimal digits (environment overrides such as
/// `SUHO__TRADING__INSTANCE_ID=2` arrive as numbers).
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Whole(u64),
        Signed(i64),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Text(s) => s,
        Raw::Whole(n) => n.to_string(),
        Raw::Signed(n) => n.to_string(),
    })
}

impl Default for TradingConfig {
    fn default() -> Self {
        Self {
            engine_enabled: true,
            retry_initial_ms: 100,
            retry_max_ms: 5000,
            paper_opening_balance: 10_000,
            paper_leverage: 100,
            max_commands_per_second: 50,
            instance_id: "1".into(),
            costs: CostsConfig::default(),
            venue: Venue::Paper,
            scripted: ScriptedVenueConfig::default(),
            delivery: Delivery::Transactions,
        }
    }
}

/// Auto-trading agent settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct AgentConfig {
    /// Run the auto-trading agent inside `suho up`.
    pub enabled: bool,
    /// First retry delay of a command Kafka did not take, milliseconds.
    pub retry_initial_ms: u64,
    /// Retry delay ceiling, milliseconds.
    pub retry_max_ms: u64,
    /// A command still not acknowledged this long after its signal arrived is given up (logged
    /// as an error and counted): a signal is a decision about the market of that moment, and
    /// trading it much later would be a different trade. Milliseconds.
    pub command_deadline_ms: u64,
    /// How many recent (user, signal) pairs the agent remembers having sent, so a signal
    /// delivered twice is sent once.
    pub recent_capacity: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            retry_initial_ms: 100,
            retry_max_ms: 5000,
            command_deadline_ms: 60_000,
            recent_capacity: 100_000,
        }
    }
}

/// Telemetry settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TelemetryConfig {
    /// `pretty` or `json`.
    pub log_format: String,
    /// Default filter when `RUST_LOG` is unset.
    pub log_filter: String,
    /// Interval of `system.health.{service}` heartbeats, milliseconds.
    pub heartbeat_interval_ms: u64,
    /// How often consumer lag is sampled into `kafka_consumer_lag`, milliseconds.
    pub lag_interval_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: "pretty".into(),
            log_filter: "info,rdkafka=warn,async_nats=warn".into(),
            heartbeat_interval_ms: 5000,
            lag_interval_ms: 5000,
        }
    }
}

impl Config {
    /// The secrets directory: `security.secrets_dir`, or `{stack.dir}/secrets`.
    #[must_use]
    pub fn secrets_dir(&self) -> PathBuf {
        self.security
            .secrets_dir
            .clone()
            .unwrap_or_else(|| self.stack.dir.join("secrets"))
    }

    /// Loads defaults, then the file (if it exists), then `SUHO__*` environment overrides.
    ///
    /// `file` of `None` means `SUHO_CONFIG`, else `suho.toml` in the working directory.
    ///
    /// # Errors
    /// A malformed file or override, or a value that fails validation.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let path = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("SUHO_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_FILE));
        Self::figment(&path, Env::prefixed("SUHO__").split("__"))
    }

    fn figment(path: &Path, env: Env) -> Result<Config, ConfigError> {
        let config: Config = Figment::new()
            .merge(Toml::file(path))
            .merge(env)
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks cross-field and range constraints.
    ///
    /// # Errors
    /// The first field that is not acceptable, by its dotted name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                field,
                problem: problem.into(),
            }
        }
        self.nats_port()?;
        self.kafka_port()?;
        self.database_port()?;
        if self.market.symbols.is_empty() {
            return Err(invalid("market.symbols", "must name at least one symbol"));
        }
        if !(self.market.ticks_per_second > 0.0 && self.market.ticks_per_second.is_finite()) {
            return Err(invalid(
                "market.ticks_per_second",
                "must be a positive number",
            ));
        }
        match self.market.feed.as_str() {
            "synthetic" => {}
            "replay" if self.market.replay_file.is_none() => {
                return Err(invalid(
                    "market.replay_file",
                    "is required when market.feed is `replay`",
                ))
            }
            "replay" => {}
            "polygon" if self.polygon.key().is_none() => {
                return Err(invalid(
                    "polygon.api_key",
                    "is required when market.feed is `polygon` (set SUHO__POLYGON__API_KEY)",
                ))
            }
            "polygon" => {}
            other => {
                return Err(invalid(
                    "market.feed",
                    format!("`{other}` is not a feed; use `synthetic`, `replay` or `polygon`"),
                ))
            }
        }
        self.validate_polygon()?;
        if !matches!(self.market.trading_hours.as_str(), "always" | "fx") {
            return Err(invalid(
                "market.trading_hours",
                format!(
                    "`{}` is not a schedule; use `always` or `fx`",
                    self.market.trading_hours
                ),
            ));
        }
        if !(self.market.replay_speed >= 0.0 && self.market.replay_speed.is_finite()) {
            return Err(invalid(
                "market.replay_speed",
                "must be 0 or a positive number",
            ));
        }
        if self.market.bridge_buffer_bytes < 1 << 20
            || self.market.bridge_buffer_bytes > i64::MAX as u64
        {
            return Err(invalid(
                "market.bridge_buffer_bytes",
                "must be at least 1048576 (1 MiB)",
            ));
        }
        if self.auth.token_ttl_s == 0 {
            return Err(invalid("auth.token_ttl_s", "must be at least 1"));
        }
        if self.trading.retry_initial_ms == 0
            || self.trading.retry_max_ms < self.trading.retry_initial_ms
        {
            return Err(invalid(
                "trading.retry_max_ms",
                "must be at least trading.retry_initial_ms, which must be positive",
            ));
        }
        if self.trading.max_commands_per_second == 0 {
            return Err(invalid(
                "trading.max_commands_per_second",
                "must be positive",
            ));
        }
        if self.agent.retry_initial_ms == 0 || self.agent.retry_max_ms < self.agent.retry_initial_ms
        {
            return Err(invalid(
                "agent.retry_max_ms",
                "must be at least agent.retry_initial_ms, which must be positive",
            ));
        }
        if self.agent.command_deadline_ms < self.agent.retry_initial_ms {
            return Err(invalid(
                "agent.command_deadline_ms",
                "must be at least agent.retry_initial_ms",
            ));
        }
        if self.agent.recent_capacity == 0 {
            return Err(invalid("agent.recent_capacity", "must be at least 1"));
        }
        if !matches!(self.telemetry.log_format.as_str(), "pretty" | "json") {
            return Err(invalid(
                "telemetry.log_format",
                "must be `pretty` or `json`",
            ));
        }
        Ok(())
    }

    fn validate_polygon(&self) -> Result<(), ConfigError> {
        let p = &self.polygon;
        let scheme_of =
            |field: &'static str, raw: &str, schemes: &[&str]| match url::Url::parse(raw) {
                Ok(u) if schemes.contains(&u.scheme()) && u.host().is_some() => Ok(()),
                _ => Err(ConfigError::Invalid {
                    field,
                    problem: format!("`{raw}` is not a {} URL", schemes.join(" or ")),
                }),
            };
        scheme_of("polygon.ws_url", &p.ws_url, &["ws", "wss"])?;
        scheme_of("polygon.rest_url", &p.rest_url, &["http", "https"])?;
        let positive = |field: &'static str, v: u64| {
            if v == 0 {
                Err(ConfigError::Invalid {
                    field,
                    problem: "must be at least 1".into(),
                })
            } else {
                Ok(())
            }
        };
        positive("polygon.request_timeout_ms", p.request_timeout_ms)?;
        positive("polygon.idle_timeout_ms", p.idle_timeout_ms)?;
        positive("polygon.backoff_initial_ms", p.backoff_initial_ms)?;
        if p.backoff_max_ms < p.backoff_initial_ms {
            return Err(ConfigError::Invalid {
                field: "polygon.backoff_max_ms",
                problem: "must be at least polygon.backoff_initial_ms".into(),
            });
        }
        Ok(())
    }

    /// The NATS port named by `nats.url`.
    ///
    /// # Errors
    /// `nats.url` is not a URL with a port.
    pub fn nats_port(&self) -> Result<u16, ConfigError> {
        url_port(&self.nats.url, "nats.url", 4222)
    }

    /// The Kafka port of the first `kafka.bootstrap` address.
    ///
    /// # Errors
    /// `kafka.bootstrap` is not `host:port`.
    pub fn kafka_port(&self) -> Result<u16, ConfigError> {
        let first = self.kafka.bootstrap.split(',').next().unwrap_or_default();
        first
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or(ConfigError::Invalid {
                field: "kafka.bootstrap",
                problem: format!("`{first}` is not host:port"),
            })
    }

    /// The PostgreSQL port named by `database.url`.
    ///
    /// # Errors
    /// `database.url` is not a URL.
    pub fn database_port(&self) -> Result<u16, ConfigError> {
        use secrecy::ExposeSecret;
        url_port(self.database.url.expose_secret(), "database.url", 5432)
    }
}

fn url_port(raw: &str, field: &'static str, default: u16) -> Result<u16, ConfigError> {
    let parsed = url::Url::parse(raw).map_err(|e| ConfigError::Invalid {
        field,
        problem: format!("is not a URL: {e}"),
    })?;
    Ok(parsed.port().unwrap_or(default))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    // figment's own test helper dictates the closure's error type.
    #[allow(clippy::result_large_err)]
    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("suho.toml");
        std::fs::write(&path, toml).unwrap();
        let mut out = None;
        figment::Jail::expect_with(|jail| {
            for (k, v) in env {
                jail.set_env(k, v);
            }
            out = Some(Config::figment(&path, Env::prefixed("SUHO__").split("__")));
            Ok(())
        });
        out.expect("the jail ran")
    }

    #[test]
    fn no_file_or_environment_can_turn_security_off() {
        let c = load(
            "[security]\ntransport = \"plain\"\n",
            &[("SUHO__SECURITY__TRANSPORT", "plain")],
        )
        .expect("loads");
        assert_eq!(c.security.transport, Transport::Secured);
    }

    #[test]
    fn trading_costs_are_exact_decimals_from_the_file_or_the_environment() {
        let c = load(
            "[trading.costs]\ncommission_per_lot = 3.5\n[trading.costs.swaps.EURUSD]\nlong = -7.2\nshort = 2.1\n",
            &[("SUHO__TRADING__COSTS__SWAPS__GBPUSD__LONG", "-0.07")],
        )
        .expect("loads");
        let costs = &c.trading.costs;
        assert_eq!(costs.commission_per_lot.to_string(), "3.5");
        assert_eq!(costs.swaps["EURUSD"].long.to_string(), "-7.2");
        assert_eq!(costs.swaps["EURUSD"].short.to_string(), "2.1");
        // Environment keys arrive in lower case; the venue reads a symbol in any case.
        assert_eq!(costs.swaps["gbpusd"].long.to_string(), "-0.07");
        let err =
            load("[trading.costs]\ncommission_per_lot = \"lots\"\n", &[]).expect_err("refused");
        assert!(err.to_string().contains("lots"), "{err}");
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks_and_a_bad_one_is_refused() {
        let c = load(
            "[http]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\", \"fd00::/8\"]\n",
            &[],
        )
        .expect("valid networks load");
        let nets = &c.http.trusted_proxies;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(nets[0].contains(ip("127.0.0.1")) && !nets[0].contains(ip("127.0.0.2")));
        assert!(nets[1].contains(ip("10.200.3.4")) && !nets[1].contains(ip("11.0.0.1")));
        assert!(nets[2].contains(ip("fd12::1")) && !nets[2].contains(ip("10.0.0.1")));
        assert!("0.0.0.0/0"
            .parse::<IpNetwork>()
            .unwrap()
            .contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "localhost", "10.0.0.0/x"] {
            let err = load(&format!("[http]\ntrusted_proxies = [\"{bad}\"]\n"), &[])
                .expect_err("a bad network is refused");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn cors_origins_are_exact_origins() {
        let c = load(
            "[http]\ncors_origins = [\"https://app.example.com\", \"http://127.0.0.1:5173\"]\n",
            &[],
        )
        .expect("origins load");
        let origins: Vec<&str> = c.http.cors_origins.iter().map(CorsOrigin::as_str).collect();
        assert_eq!(
            origins,
            ["https://app.example.com", "http://127.0.0.1:5173"]
        );
        for bad in [
            "*",
            "app.example.com",
            "https://app.example.com/",
            "ftp://x.org",
            "https://a.b/path",
        ] {
            let err = load(&format!("[http]\ncors_origins = [\"{bad}\"]\n"), &[])
                .expect_err("not an origin");
            assert!(err.to_string().contains("is not an origin"), "{bad}: {err}");
        }
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::figment(Path::new("/nonexistent/suho.toml"), Env::raw().only(&[])).unwrap();
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.kafka_port().unwrap(), 9092);
        assert_eq!(c.nats_port().unwrap(), 4222);
        assert_eq!(c.database_port().unwrap(), 5432);
        assert_eq!(c.market.symbols.len(), 14);
        assert_eq!(c.market.trading_hours, "always");
    }

    #[test]
    fn env_overrides_file() {
        let c = load(
            "[http]\naddr = \"127.0.0.1:9000\"\n[kafka]\nbootstrap = \"127.0.0.1:19092\"\n",
            &[("SUHO__HTTP__ADDR", "127.0.0.1:9100")],
        )
        .unwrap();
        assert_eq!(c.http.addr.port(), 9100);
        assert_eq!(c.kafka_port().unwrap(), 19092);
    }

    #[test]
    fn secrets_never_print() {
        let c = load(
            "[auth]\njwt_secret = \"hunter2-very-secret\"\ncredentials_key_id = \"k2\"\n\
             [auth.credentials_keys]\nk2 = \"c2VhbC1rZXktc2VjcmV0\"\n\
             [database]\nurl = \"postgres://u:pw-secret@127.0.0.1:5432/db\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.auth.credentials_key_id.as_deref(), Some("k2"));
        assert_eq!(
            c.auth.credentials_keys["k2"].expose_secret(),
            "c2VhbC1rZXktc2VjcmV0"
        );
        assert_eq!(
            c.auth.jwt_secret.as_ref().unwrap().expose_secret(),
            "hunter2-very-secret"
        );
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("pw-secret"), "{shown}");
        assert!(!shown.contains("c2VhbC1rZXktc2VjcmV0"), "{shown}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let err = load("[market]\nticks_per_second = -1.0\n", &[]).unwrap_err();
        assert!(err.to_string().contains("market.ticks_per_second"), "{err}");
        let err = load("[market]\nfeed = \"polygon-live\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("market.feed"), "{err}");
        let err = load("[market]\nfeed = \"replay\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("market.replay_file"), "{err}");
        let err = load("[market]\ntrading_hours = \"weekdays\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("market.trading_hours"), "{err}");
        let err = load("[kafka]\nbootstrap = \"nohost\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("kafka.bootstrap"), "{err}");
    }

    #[test]
    fn agent_settings_have_defaults_and_name_the_field() {
        let c = load("", &[]).unwrap();
        assert!(c.agent.enabled);
        assert_eq!(c.agent.command_deadline_ms, 60_000);
        let c = load(
            "[agent]\nenabled = false\n",
            &[("SUHO__AGENT__RECENT_CAPACITY", "10")],
        )
        .unwrap();
        assert!(!c.agent.enabled);
        assert_eq!(c.agent.recent_capacity, 10);
        let err = load("[agent]\nretry_initial_ms = 0\n", &[]).unwrap_err();
        assert!(err.to_string().contains("agent.retry_max_ms"), "{err}");
        let err = load("[agent]\nretry_initial_ms = 500\nretry_max_ms = 100\n", &[]).unwrap_err();
        assert!(err.to_string().contains("agent.retry_max_ms"), "{err}");
        let err = load("[agent]\ncommand_deadline_ms = 10\n", &[]).unwrap_err();
        assert!(
            err.to_string().contains("agent.command_deadline_ms"),
            "{err}"
        );
        let err = load("[agent]\nrecent_capacity = 0\n", &[]).unwrap_err();
        assert!(err.to_string().contains("agent.recent_capacity"), "{err}");
    }

    #[test]
    fn the_polygon_feed_needs_a_key_from_the_file_or_the_environment() {
        let err = load("[market]\nfeed = \"polygon\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("polygon.api_key"), "{err}");
        let err = load(
            "[market]\nfeed = \"polygon\"\n[polygon]\napi_key = \"  \"\n",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("polygon.api_key"), "{err}");
        let c = load(
            "[market]\nfeed = \"polygon\"\n",
            &[("SUHO__POLYGON__API_KEY", "pk-from-env-123")],
        )
        .unwrap();
        assert_eq!(c.polygon.key().unwrap().expose_secret(), "pk-from-env-123");
        assert!(!format!("{c:?}").contains("pk-from-env-123"));
        let c = load(
            "[polygon]\nws_url = \"wss://delayed.polygon.io/forex\"\n",
            &[("SUHO__POLYGON__REST_URL", "http://127.0.0.1:9999")],
        )
        .unwrap();
        assert_eq!(c.polygon.ws_url, "wss://delayed.polygon.io/forex");
        assert_eq!(c.polygon.rest_url, "http://127.0.0.1:9999");
        // Without the polygon feed, no key is needed.
        assert!(c.polygon.key().is_none());
    }

    #[test]
    fn polygon_urls_and_timings_name_the_field() {
        let err = load("[polygon]\nws_url = \"https://x\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("polygon.ws_url"), "{err}");
        let err = load("[polygon]\nrest_url = \"nope\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("polygon.rest_url"), "{err}");
        let err = load("[polygon]\nrequest_timeout_ms = 0\n", &[]).unwrap_err();
        assert!(
            err.to_string().contains("polygon.request_timeout_ms"),
            "{err}"
        );
        let err = load(
            "[polygon]\nbackoff_initial_ms = 10\nbackoff_max_ms = 5\n",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("polygon.backoff_max_ms"), "{err}");
    }

    #[test]
    fn a_numeric_instance_id_is_taken_as_its_digits() {
        let c = load("", &[("SUHO__TRADING__INSTANCE_ID", "2")]).unwrap();
        assert_eq!(c.trading.instance_id, "2");
        let c = load("[trading]\ninstance_id = \"eu-1\"\n", &[]).unwrap();
        assert_eq!(c.trading.instance_id, "eu-1");
        let c = load("", &[("SUHO__TRADING__MAX_COMMANDS_PER_SECOND", "0")]);
        assert!(c
            .unwrap_err()
            .to_string()
            .contains("trading.max_commands_per_second"));
    }
}
