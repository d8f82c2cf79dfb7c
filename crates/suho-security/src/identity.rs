//! The identity table: every suho service, and what it may do on NATS.
//!
//! This is the one home of those facts. The NATS server's `authorization` block is generated
//! from it ([`crate::nats::authorization`]), each service connects under its own row
//! ([`Identity`]), and the tests connect as each row to show both what it may do and that
//! the server refuses the rest.

use std::fmt;

use suho_domain::{subject, Timeframe};

/// A service's identity: its user name on the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identity {
    /// The market feed (synthetic, replay or Polygon) and the historical backfill.
    Feed,
    /// The process's one tick subscription (`TickHub`), shared by the services that read ticks.
    Ticks,
    /// The latest-price request/reply service.
    Price,
    /// Candles and indicators.
    Analytics,
    /// Strategy signals and market alerts.
    Signals,
    /// The data bridge from JetStream into PostgreSQL.
    Bridge,
    /// The trading engine and its simulated broker.
    Engine,
    /// The auto-trading agent (signals to commands).
    Agent,
    /// The audit service.
    Audit,
    /// The gateway's HTTP API.
    Gateway,
    /// The gateway's WebSocket stream `/ws`.
    Ws,
    /// An operator or an outside tool: reads everything, publishes no market data.
    Operator,
}

impl Identity {
    /// Every identity, in the table's order.
    pub const ALL: [Identity; 12] = [
        Identity::Feed,
        Identity::Ticks,
        Identity::Price,
        Identity::Analytics,
        Identity::Signals,
        Identity::Bridge,
        Identity::Engine,
        Identity::Agent,
        Identity::Audit,
        Identity::Gateway,
        Identity::Ws,
        Identity::Operator,
    ];

    /// The user name on every server.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Identity::Feed => "feed",
            Identity::Ticks => "ticks",
            Identity::Price => "price",
            Identity::Analytics => "analytics",
            Identity::Signals => "signals",
            Identity::Bridge => "bridge",
            Identity::Engine => "engine",
            Identity::Agent => "agent",
            Identity::Audit => "audit",
            Identity::Gateway => "gateway",
            Identity::Ws => "ws",
            Identity::Operator => "operator",
        }
    }

    /// The identity named `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<Identity> {
        Identity::ALL.into_iter().find(|i| i.name() == name)
    }

    /// What the identity is for, in a line.
    #[must_use]
    pub fn purpose(self) -> &'static str {
        match self {
            Identity::Feed => "market feed and backfill: publishes ticks and provider bars",
            Identity::Ticks => "the process's shared tick subscription",
            Identity::Price => "latest-price service: answers price requests",
            Identity::Analytics => "candles and indicators",
            Identity::Signals => "strategy signals and market alerts",
            Identity::Bridge => "data bridge: JetStream into PostgreSQL",
            Identity::Engine => "trading engine and its simulated broker",
            Identity::Agent => "auto-trading agent: signals to commands",
            Identity::Audit => "audit trail",
            Identity::Gateway => "HTTP API",
            Identity::Ws => "WebSocket stream /ws",
            Identity::Operator => "operator and outside tools: reads everything",
        }
    }

    /// The service name this identity's heartbeats carry (`system.health.{service}`), for
    /// the identities that run a service with a heartbeat.
    #[must_use]
    pub fn heartbeat(self) -> Option<&'static str> {
        match self {
            Identity::Feed => Some("market-feed"),
            Identity::Price => Some("price-service"),
            Identity::Analytics => Some("market-analytics"),
            Identity::Signals => Some("signals"),
            Identity::Bridge => Some("data-bridge"),
            Identity::Engine => Some("trading-engine"),
            Identity::Agent => Some("agent"),
            Identity::Audit => Some("audit"),
            Identity::Gateway => Some("gateway"),
            Identity::Ticks | Identity::Ws | Identity::Operator => None,
        }
    }

    /// The prefix of this identity's reply subjects (`_INBOX_{name}`): each service has an
    /// inbox of its own, so no service can subscribe to another's replies.
    #[must_use]
    pub fn inbox_prefix(self) -> String {
        format!("_INBOX_{}", self.name())
    }

    /// What this identity may publish and subscribe to, for subjects under `scope`.
    #[must_use]
    pub fn nats(self, scope: &Scope) -> NatsGrants {
        let p = scope.subject_prefix();
        let p = p.as_str();
        let candles = || Timeframe::ALL.iter().map(|tf| subject::all_candles(p, *tf));
        let inbox = || format!("{}.>", self.inbox_prefix());
        let mut g = NatsGrants::default();
        match self {
            Identity::Feed => {
                g.publish.push(subject::all_ticks(p));
                // A replayed recording and Polygon's aggregates carry bars of their own.
                g.publish.extend(candles());
            }
            Identity::Ticks => g.subscribe.push(subject::all_ticks(p)),
            // The market services read ticks through the process's hub (`Ticks`) in `suho up`,
            // and through subscriptions of their own when run alone.
            Identity::Price => {
                g.subscribe.push(subject::all_ticks(p));
                g.subscribe.push(subject::all_prices(p));
                g.respond = true;
            }
            Identity::Analytics => {
                g.subscribe.push(subject::all_ticks(p));
                g.publish.extend(candles());
                g.publish.push(format!("{p}indicators.>"));
            }
            Identity::Signals => {
                g.subscribe.push(subject::all_ticks(p));
                g.subscribe.extend(candles());
                g.publish.push(format!("{p}signals.>"));
                g.publish.push(format!("{p}alerts.>"));
            }
            Identity::Bridge => {
                let stream = scope.jetstream_name(subject::MARKET_STREAM);
                // Exactly the JetStream API the bridge calls, on its own stream: create or
                // update it, read it, and run its own consumers. Never `$JS.>`.
                for api in ["STREAM.CREATE", "STREAM.UPDATE", "STREAM.INFO"] {
                    g.publish.push(format!("$JS.API.{api}.{stream}"));
                }
                g.publish.push(format!("$JS.API.CONSUMER.CREATE.{stream}"));
                for api in ["CREATE", "INFO", "DELETE", "MSG.NEXT"] {
                    g.publish.push(format!("$JS.API.CONSUMER.{api}.{stream}.>"));
                }
                // A bridge from before the cursor acknowledged its durable consumer's messages.
                g.publish.push(format!("$JS.ACK.{stream}.>"));
                g.subscribe.push(inbox());
            }
            Identity::Engine => {
                // Asks the price service for quotes; the simulated broker watches ticks.
                g.publish.push(subject::all_prices(p));
                g.subscribe.push(inbox());
                g.subscribe.push(subject::all_ticks(p));
            }
            Identity::Agent => g.subscribe.push(format!("{p}signals.>")),
            Identity::Audit | Identity::Gateway => {}
            Identity::Ws => {
                g.subscribe.push(subject::all_ticks(p));
                g.subscribe.extend(candles());
                g.subscribe.push(format!("{p}indicators.*.*"));
                g.subscribe.push(format!("{p}signals.*.*"));
            }
            Identity::Operator => {
                g.subscribe.push(">".into());
                // Reading everything does not make the operator a price responder.
                g.subscribe_deny.push(subject::all_prices(p));
                g.publish.push(subject::all_prices(p));
            }
        }
        if let Some(service) = self.heartbeat() {
            g.publish.push(subject::health(p, service));
        }
        g
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which subjects the grants cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One deployment: subjects under this prefix (`""` outside tests).
    Prefix(String),
    /// A test stack: any one-token prefix (`t1a2b3.`), one per test, all on one server.
    AnyTestPrefix,
}

impl Scope {
    /// The prefix of every subject pattern: the prefix itself, or `*.` for any test prefix.
    #[must_use]
    pub fn subject_prefix(&self) -> String {
        match self {
            Scope::Prefix(p) => p.clone(),
            Scope::AnyTestPrefix => "*.".into(),
        }
    }

    /// The token of a JetStream object named `base` (see [`subject::jetstream_name`]): its
    /// exact name, or `*` for any test prefix's.
    #[must_use]
    pub fn jetstream_name(&self, base: &str) -> String {
        match self {
            Scope::Prefix(p) => subject::jetstream_name(base, p),
            Scope::AnyTestPrefix => "*".into(),
        }
    }
}

/// What one identity may do on NATS. Anything not listed is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsGrants {
    /// Subjects it may publish to (patterns).
    pub publish: Vec<String>,
    /// Subjects it may subscribe to (patterns).
    pub subscribe: Vec<String>,
    /// Subjects excluded from `subscribe` (deny wins).
    pub subscribe_deny: Vec<String>,
    /// It may publish to the reply subject of a request it received, and nowhere else
    /// beyond `publish`.
    pub respond: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_unique() {
        for i in Identity::ALL {
            assert_eq!(Identity::from_name(i.name()), Some(i));
        }
        let mut names: Vec<_> = Identity::ALL.iter().map(|i| i.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Identity::ALL.len());
    }

    /// Who may publish a subject, by the table.
    fn publishers(subject: &str) -> Vec<Identity> {
        let scope = Scope::Prefix(String::new());
        Identity::ALL
            .into_iter()
            .filter(|i| {
                i.nats(&scope)
                    .publish
                    .iter()
                    .any(|p| pattern_matches(p, subject))
            })
            .collect()
    }

    fn subscribers(subject: &str) -> Vec<Identity> {
        let scope = Scope::Prefix(String::new());
        Identity::ALL
            .into_iter()
            .filter(|i| {
                let g = i.nats(&scope);
                g.subscribe.iter().any(|p| pattern_matches(p, subject))
                    && !g.subscribe_deny.iter().any(|p| pattern_matches(p, subject))
            })
            .collect()
    }

    /// NATS matching of a concrete subject against a pattern.
    fn pattern_matches(pattern: &str, subject: &str) -> bool {
        let mut s = subject.split('.');
        for p in pattern.split('.') {
            match (p, s.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (p, Some(t)) if p == t => {}
                _ => return false,
            }
        }
        s.next().is_none()
    }

    #[test]
    fn only_the_feed_publishes_ticks_and_only_the_price_service_hears_price_requests() {
        assert_eq!(publishers("market.EURUSD.tick"), [Identity::Feed]);
        assert_eq!(subscribers("market.EURUSD.price"), [Identity::Price]);
        assert_eq!(
            publishers("market.EURUSD.price"),
            [Identity::Engine, Identity::Operator]
        );
        assert_eq!(publishers("indicators.rsi.EURUSD"), [Identity::Analytics]);
        assert_eq!(publishers("signals.sma.EURUSD"), [Identity::Signals]);
        assert_eq!(publishers("alerts.market.spike"), [Identity::Signals]);
        assert_eq!(
            publishers("market.EURUSD.1m"),
            [Identity::Feed, Identity::Analytics]
        );
        assert!(publishers("$JS.API.STREAM.DELETE.MARKET").is_empty());
        assert!(publishers("$JS.API.ACCOUNT.PURGE.x").is_empty());
        assert_eq!(
            publishers("$JS.API.CONSUMER.MSG.NEXT.MARKET.abc"),
            [Identity::Bridge]
        );
        assert_eq!(
            publishers("system.health.trading-engine"),
            [Identity::Engine]
        );
    }

    #[test]
    fn a_test_scope_covers_any_one_token_prefix() {
        let g = Identity::Feed.nats(&Scope::AnyTestPrefix);
        assert!(g
            .publish
            .iter()
            .any(|p| pattern_matches(p, "t1a2b3.market.EURUSD.tick")));
        assert!(!g
            .publish
            .iter()
            .any(|p| pattern_matches(p, "market.EURUSD.tick")));
        let b = Identity::Bridge.nats(&Scope::Prefix("t1a2b3.".into()));
        assert!(b
            .publish
            .contains(&"$JS.API.STREAM.CREATE.MARKET_t1a2b3".to_string()));
    }
}
