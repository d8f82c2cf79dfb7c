//! The suho domain model and wire contract, with no I/O.
//!
//! This crate knows the shapes that cross the process boundary (NATS market payloads, Kafka user
//! events, envelopes) and the small value types they are built from ([`Symbol`], [`Timeframe`],
//! exact [`rust_decimal::Decimal`] prices). It deliberately knows nothing about brokers,
//! networks, databases or async runtimes: no tokio, rdkafka, async-nats, sqlx or axum.
//!
//! Map:
//! - [`num`]: serde helpers writing `Decimal` as a JSON number and reading it back exactly.
//! - [`symbol`]: the validated six-letter [`Symbol`].
//! - [`market`]: NATS market-data payloads (ticks, candles, price replies, signals...).
//! - [`subject`]: NATS subject builders.
//! - [`topic`]: the Kafka user topics and their settings.
//! - [`command`]: commands on `user.commands`, a head and a kind tagged by `event_type`.
//! - [`event`]: Kafka user/trading events.
//! - [`money`]: whole cents, the contract size and the lot step.
//! - [`session`]: the FX day and its 17:00 New York rollover.
//! - [`envelope`]: the `{subject, data}` and `{topic, key, partition, value}` envelopes.
//!
//! With the `openapi` feature, the types the HTTP API sends implement `utoipa::ToSchema`.

pub mod command;
pub mod envelope;
pub mod event;
pub mod market;
pub mod money;
pub mod num;
pub mod session;
pub mod settings;
pub mod subject;
pub mod symbol;
pub mod topic;

pub use command::{
    CancelOrder, ClosePositions, CloseTrade, CommandError, CommandHead, CommandKind,
    CommandMetadata, DescribesTrade, ModifyTrade, Money, OpenTrade, Order, ReplaceOrder,
    TradeCommand,
};
pub use envelope::{KafkaEnvelope, NatsEnvelope};
pub use event::{
    new_event_id, AccountStatus, AccountStatusType, AuthEvent, AuthEventType, CommandType,
    OrderType, OrderView, PositionView, RiskAlert, RiskAlertType, SettingsEvent, SettingsEventType,
    Side, TimeInForce, TradeEvent, TradeEventType, TradeStatus, Transaction, TransactionType,
    UserEvent, UserId, SCHEMA_VERSION,
};
pub use market::{
    Candle, Direction, HealthStatus, Heartbeat, IndicatorValue, MarketAlert, MarketError,
    PriceError, PriceErrorKind, PriceQuote, PriceReply, Signal, Tick, Timeframe, TimeframeError,
};
pub use settings::{AutoTrading, PositionMode, RiskSettings, SettingsError, UserSettings};
pub use symbol::{major_fx, Symbol, SymbolError, MAJOR_FX};
pub use topic::UserTopic;
