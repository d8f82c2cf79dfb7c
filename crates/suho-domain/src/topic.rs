//! The Kafka topics of the user / trading domain and their settings.
//!
//! Every record on these topics is keyed by `user_id`, so one user's events stay ordered in one
//! partition. Retention follows the contract; the seven-year figure is the seed's
//! `220_903_200_000` ms and ten years is counted in 365.25-day years.

use std::fmt;

const DAY_MS: i64 = 86_400_000;

/// A user-domain Kafka topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UserTopic {
    /// `user.auth`: registration, logins, logouts.
    Auth,
    /// `user.settings`: settings and MT5 account links (compacted).
    Settings,
    /// `user.commands`: trade commands.
    Commands,
    /// `user.trades`: trade execution results.
    Trades,
    /// `user.mt5_status`: account status snapshots.
    Mt5Status,
    /// `user.risk_alerts`: margin calls, stop-outs, limit breaches.
    RiskAlerts,
    /// `user.transactions`: deposits and withdrawals.
    Transactions,
    /// `user.commands.dlq`: command records that could not be parsed, with the reason.
    CommandsDlq,
    /// `engine.journal`: the trading engines' own record of what each batch decided, written
    /// before any of it is published (one partition per `user.commands` partition; read and
    /// written by the engines alone, not part of the contract).
    EngineJournal,
}

impl UserTopic {
    /// All topics: the contract's, in contract order, then the dead-letter topic and the
    /// engines' journal.
    pub const ALL: [UserTopic; 9] = [
        UserTopic::Auth,
        UserTopic::Settings,
        UserTopic::Commands,
        UserTopic::Trades,
        UserTopic::Mt5Status,
        UserTopic::RiskAlerts,
        UserTopic::Transactions,
        UserTopic::CommandsDlq,
        UserTopic::EngineJournal,
    ];

    /// The contract's seven topics, in contract order: [`UserTopic::ALL`] without the
    /// dead-letter topic and the journal (what the audit keeps).
    pub const CONTRACT: [UserTopic; 7] = {
        let mut out = [UserTopic::Auth; 7];
        let mut i = 0;
        while i < out.len() {
            out[i] = UserTopic::ALL[i];
            i += 1;
        }
        out
    };

    /// The topic name without any prefix, e.g. `user.trades`.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            UserTopic::Auth => "user.auth",
            UserTopic::Settings => "user.settings",
            UserTopic::Commands => "user.commands",
            UserTopic::Trades => "user.trades",
            UserTopic::Mt5Status => "user.mt5_status",
            UserTopic::RiskAlerts => "user.risk_alerts",
            UserTopic::Transactions => "user.transactions",
            UserTopic::CommandsDlq => "user.commands.dlq",
            UserTopic::EngineJournal => "engine.journal",
        }
    }

    /// The topic whose unprefixed name is `name`.
    #[must_use]
    pub fn from_name(name: &str) -> Option<UserTopic> {
        UserTopic::ALL.into_iter().find(|t| t.name() == name)
    }

    /// `prefix` + name, e.g. `t123.user.trades`.
    #[must_use]
    pub fn full_name(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.name())
    }

    /// Partition count.
    #[must_use]
    pub const fn partitions(&self) -> i32 {
        match self {
            // The journal's partition p is user.commands' partition p.
            UserTopic::Commands
            | UserTopic::Trades
            | UserTopic::CommandsDlq
            | UserTopic::EngineJournal => 6,
            UserTopic::Auth
            | UserTopic::Settings
            | UserTopic::Mt5Status
            | UserTopic::RiskAlerts
            | UserTopic::Transactions => 3,
        }
    }

    /// `retention.ms`; `-1` means infinite.
    #[must_use]
    pub const fn retention_ms(&self) -> i64 {
        match self {
            UserTopic::Auth => 90 * DAY_MS,
            UserTopic::Settings => -1,
            UserTopic::Commands | UserTopic::Trades | UserTopic::CommandsDlq => 220_903_200_000,
            UserTopic::Mt5Status => 30 * DAY_MS,
            UserTopic::RiskAlerts => 365 * DAY_MS,
            // Ten years of 365.25 days.
            UserTopic::Transactions => 3_652 * DAY_MS + DAY_MS / 2,
            // A recovering engine reads back to its predecessor's last entry: days are plenty.
            UserTopic::EngineJournal => 7 * DAY_MS,
        }
    }

    /// Whether the topic is log-compacted (only `user.settings`).
    #[must_use]
    pub const fn compacted(&self) -> bool {
        matches!(self, UserTopic::Settings)
    }

    /// `cleanup.policy`: `compact` or `delete`.
    #[must_use]
    pub const fn cleanup_policy(&self) -> &'static str {
        if self.compacted() {
            "compact"
        } else {
            "delete"
        }
    }
}

impl fmt::Display for UserTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
