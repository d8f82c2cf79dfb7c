//! A user's settings: risk parameters, watchlist and auto-trading opt-ins (the object of
//! `GET`/`PUT /api/user/{user_id}/settings` and of `SETTINGS_UPDATED` on `user.settings`).
//!
//! An update is a JSON merge patch (RFC 7386) onto the current settings: objects merge
//! field by field, anything else replaces, `null` resets a field to its default. The result
//! is checked as a whole; an error names the field by its dotted path (`risk.leverage`).

use std::collections::{BTreeMap, HashSet};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Symbol;

use crate::money::{on_lot_step, LOT_STEP, MAX_ORDER_VOLUME};

/// Risk parameters the trading engine enforces for the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RiskSettings {
    /// Account leverage, `1..=500`.
    pub leverage: u32,
    /// Largest volume of one order, lots (on the lot step, at most 100).
    #[serde(with = "crate::num")]
    pub max_volume: Decimal,
    /// Most positions open at once, `1..=200`.
    pub max_open_positions: u32,
    /// How the account holds positions (default `hedging`).
    #[serde(default)]
    pub position_mode: PositionMode,
}

impl Default for RiskSettings {
    fn default() -> Self {
        Self {
            leverage: 100,
            max_volume: Decimal::from(10),
            max_open_positions: 20,
            position_mode: PositionMode::Hedging,
        }
    }
}

/// How an account holds positions, as MetaTrader 5's two account modes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum PositionMode {
    /// Any number of positions per symbol, each with its own id, side and stops.
    #[default]
    Hedging,
    /// One position per symbol: an order on the same side adds to it (at the volume-weighted
    /// average price), one on the other side reduces, closes or reverses it.
    Netting,
}

impl PositionMode {
    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            PositionMode::Hedging => "hedging",
            PositionMode::Netting => "netting",
        }
    }
}

/// One strategy's auto-trading opt-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AutoTrading {
    /// Whether the agent trades this strategy's signals for the user.
    pub enabled: bool,
    /// Lots per trade the agent opens (within `risk.max_volume`).
    #[serde(with = "crate::num")]
    pub volume: Decimal,
    /// The stop loss of each auto-trade, pips from its fill.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_loss_pips: Option<Decimal>,
    /// The take profit of each auto-trade, pips from its fill.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub take_profit_pips: Option<Decimal>,
    /// A trailing stop on each auto-trade, this many pips behind the price.
    #[serde(
        default,
        with = "crate::num::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub trailing_stop_pips: Option<Decimal>,
}

/// The most pips an auto-trade's stop or target may sit from its fill (10,000 pips: a
/// whole unit of a four-digit quote).
pub const MAX_EXIT_PIPS: u32 = 10_000;

/// Everything a user can set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserSettings {
    /// Risk parameters.
    pub risk: RiskSettings,
    /// Symbols the dashboard shows first.
    pub watchlist: Vec<Symbol>,
    /// Auto-trading opt-ins by strategy name (`scalping`, `mean_reversion`, ...).
    pub auto_trading: BTreeMap<String, AutoTrading>,
}

/// A settings object that is not valid, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SettingsError {
    /// Dotted path of the field, e.g. `risk.leverage`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// The field is valid on its own but disagrees with another setting (an auto-trading
    /// volume above `risk.max_volume`, the stored one or the patch's): the HTTP API's 409.
    pub conflict: bool,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> SettingsError {
    SettingsError {
        field: field.into(),
        message: message.into(),
        conflict: false,
    }
}

/// The settings' own keys, each level's: a patch naming any other is refused.
const TOP_KEYS: &[&str] = &["risk", "watchlist", "auto_trading"];
const RISK_KEYS: &[&str] = &[
    "leverage",
    "max_volume",
    "max_open_positions",
    "position_mode",
];
const AUTO_KEYS: &[&str] = &[
    "enabled",
    "volume",
    "stop_loss_pips",
    "take_profit_pips",
    "trailing_stop_pips",
];

/// Refuses a key the settings do not have, at any depth, before the patch is merged: in the
/// merge a `null` for an unknown key would vanish unseen.
fn check_keys(patch: &Value, strategies: &[&str]) -> Result<(), SettingsError> {
    let unknown = |field: String, known: &[&str]| {
        invalid(
            field,
            format!("unknown setting; known: {}", known.join(", ")),
        )
    };
    let Value::Object(top) = patch else {
        return Ok(());
    };
    for (key, value) in top {
        match (key.as_str(), value) {
            ("risk", Value::Object(risk)) => {
                if let Some(k) = risk.keys().find(|k| !RISK_KEYS.contains(&k.as_str())) {
                    return Err(unknown(format!("risk.{k}"), RISK_KEYS));
                }
            }
            ("auto_trading", Value::Object(entries)) => {
                for (name, entry) in entries {
                    if !strategies.contains(&name.as_str()) {
                        return Err(invalid(
                            format!("auto_trading.{name}"),
                            format!("unknown strategy; known: {}", strategies.join(", ")),
                        ));
                    }
                    if let Value::Object(o) = entry {
                        if let Some(k) = o.keys().find(|k| !AUTO_KEYS.contains(&k.as_str())) {
                            return Err(unknown(format!("auto_trading.{name}.{k}"), AUTO_KEYS));
                        }
                    }
                }
            }
            (k, _) if TOP_KEYS.contains(&k) => {}
            (k, _) => return Err(unknown(k.to_string(), TOP_KEYS)),
        }
    }
    Ok(())
}

/// RFC 7386: merges `patch` into `target`.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    // An object patch onto anything else (a new entry) merges into an empty object, so its
    // own `null`s are dropped too.
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

impl UserSettings {
    /// `self` with `patch` merged in and checked: watchlist symbols must be in `symbols`,
    /// auto-trading strategies in `strategies`.
    ///
    /// # Errors
    /// The patch is not an object, or the result is invalid; the error names the field.
    pub fn patched(
        &self,
        patch: &Value,
        symbols: &HashSet<Symbol>,
        strategies: &[&str],
    ) -> Result<UserSettings, SettingsError> {
        if !patch.is_object() {
            return Err(invalid("settings", "must be a JSON object"));
        }
        check_keys(patch, strategies)?;
        let mut value =
            serde_json::to_value(self).map_err(|e| invalid("settings", e.to_string()))?;
        merge(&mut value, patch);
        let settings = from_value(&value)?;
        settings.validate(symbols, strategies)?;
        Ok(settings)
    }

    /// Checks every field.
    ///
    /// # Errors
    /// The first invalid field.
    pub fn validate(
        &self,
        symbols: &HashSet<Symbol>,
        strategies: &[&str],
    ) -> Result<(), SettingsError> {
        let r = &self.risk;
        if !(1..=500).contains(&r.leverage) {
            return Err(invalid("risk.leverage", "must be between 1 and 500"));
        }
        if r.max_volume <= Decimal::ZERO || r.max_volume > MAX_ORDER_VOLUME {
            return Err(invalid(
                "risk.max_volume",
                format!("must be positive and at most {MAX_ORDER_VOLUME} lots"),
            ));
        }
        if !on_lot_step(r.max_volume) {
            return Err(invalid(
                "risk.max_volume",
                format!("must be a multiple of the lot step {LOT_STEP}"),
            ));
        }
        if !(1..=200).contains(&r.max_open_positions) {
            return Err(invalid(
                "risk.max_open_positions",
                "must be between 1 and 200",
            ));
        }
        if self.watchlist.len() > 100 {
            return Err(invalid("watchlist", "holds at most 100 symbols"));
        }
        if let Some(s) = self.watchlist.iter().find(|s| !symbols.contains(s)) {
            return Err(invalid("watchlist", format!("{s} is not traded here")));
        }
        for (name, auto) in &self.auto_trading {
            if !strategies.contains(&name.as_str()) {
                return Err(invalid(
                    format!("auto_trading.{name}"),
                    format!("unknown strategy; known: {}", strategies.join(", ")),
                ));
            }
            if auto.volume <= Decimal::ZERO
                || auto.volume > MAX_ORDER_VOLUME
                || !on_lot_step(auto.volume)
            {
                return Err(invalid(
                    format!("auto_trading.{name}.volume"),
                    format!(
                        "must be positive, on the lot step {LOT_STEP} and at most {MAX_ORDER_VOLUME}"
                    ),
                ));
            }
            for (key, pips) in [
                ("stop_loss_pips", auto.stop_loss_pips),
                ("take_profit_pips", auto.take_profit_pips),
                ("trailing_stop_pips", auto.trailing_stop_pips),
            ] {
                if pips.is_some_and(|p| {
                    p <= Decimal::ZERO
                        || p > Decimal::from(MAX_EXIT_PIPS)
                        || p.normalize().scale() > 1
                }) {
                    return Err(invalid(
                        format!("auto_trading.{name}.{key}"),
                        format!("must be positive, a multiple of 0.1 and at most {MAX_EXIT_PIPS}"),
                    ));
                }
            }
            if auto.volume > r.max_volume {
                return Err(SettingsError {
                    conflict: true,
                    ..invalid(
                        format!("auto_trading.{name}.volume"),
                        format!("is above risk.max_volume ({})", r.max_volume),
                    )
                });
            }
        }
        Ok(())
    }
}

/// Reads the merged object field by field, so a wrong type names its field. Its keys are
/// known ones: the stored settings' and a patch's that [`check_keys`] passed.
fn from_value(value: &Value) -> Result<UserSettings, SettingsError> {
    let defaults = UserSettings::default();
    let obj = value
        .as_object()
        .ok_or_else(|| invalid("settings", "must be a JSON object"))?;
    let risk = match obj.get("risk") {
        None => defaults.risk,
        Some(Value::Object(r)) => {
            let int = |k: &str, default: u32| -> Result<u32, SettingsError> {
                match r.get(k) {
                    None => Ok(default),
                    Some(v) => v
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| invalid(format!("risk.{k}"), "must be a whole number")),
                }
            };
            RiskSettings {
                leverage: int("leverage", defaults.risk.leverage)?,
                max_volume: match r.get("max_volume") {
                    None => defaults.risk.max_volume,
                    Some(v) => decimal(v)
                        .ok_or_else(|| invalid("risk.max_volume", "must be a number of lots"))?,
                },
                max_open_positions: int("max_open_positions", defaults.risk.max_open_positions)?,
                position_mode: match r.get("position_mode") {
                    None => defaults.risk.position_mode,
                    Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                        invalid("risk.position_mode", "must be \"hedging\" or \"netting\"")
                    })?,
                },
            }
        }
        Some(_) => return Err(invalid("risk", "must be an object")),
    };
    let watchlist = match obj.get("watchlist") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .filter(|s| s.trim() == *s)
                    .ok_or_else(|| invalid("watchlist", "must be a list of symbols"))
                    .and_then(|s| Symbol::parse(s).map_err(|e| invalid("watchlist", e.to_string())))
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err(invalid("watchlist", "must be a list of symbols")),
    };
    let auto_trading = match obj.get("auto_trading") {
        None => BTreeMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(name, v)| {
                let field = |f: &str| format!("auto_trading.{name}.{f}");
                let o = v
                    .as_object()
                    .ok_or_else(|| invalid(format!("auto_trading.{name}"), "must be an object"))?;
                let enabled = match o.get("enabled") {
                    Some(Value::Bool(b)) => *b,
                    None => false,
                    Some(_) => return Err(invalid(field("enabled"), "must be true or false")),
                };
                let volume = match o.get("volume") {
                    None => LOT_STEP * Decimal::from(10),
                    Some(v) => decimal(v)
                        .ok_or_else(|| invalid(field("volume"), "must be a number of lots"))?,
                };
                let pips = |key: &str| match o.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(v) => decimal(v)
                        .map(Some)
                        .ok_or_else(|| invalid(field(key), "must be a number of pips")),
                };
                Ok((
                    name.clone(),
                    AutoTrading {
                        enabled,
                        volume,
                        stop_loss_pips: pips("stop_loss_pips")?,
                        take_profit_pips: pips("take_profit_pips")?,
                        trailing_stop_pips: pips("trailing_stop_pips")?,
                    },
                ))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?,
        Some(_) => return Err(invalid("auto_trading", "must be an object")),
    };
    Ok(UserSettings {
        risk,
        watchlist,
        auto_trading,
    })
}

fn decimal(v: &Value) -> Option<Decimal> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(|f| crate::num::from_f64(f).ok())
            .or_else(|| n.as_i64().map(Decimal::from)),
        // A JSON number, as the HTTP API documents it: a string is refused.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn symbols() -> HashSet<Symbol> {
        crate::major_fx().into_iter().collect()
    }

    const STRATEGIES: &[&str] = &["scalping", "mean_reversion"];

    #[test]
    fn defaults_round_trip_and_validate() {
        let s = UserSettings::default();
        s.validate(&symbols(), STRATEGIES)
            .expect("defaults are valid");
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(
            v,
            json!({"risk":{"leverage":100,"max_volume":10.0,"max_open_positions":20,
                   "position_mode":"hedging"},"watchlist":[],"auto_trading":{}})
        );
        assert_eq!(from_value(&v).expect("reads back"), s);
    }

    #[test]
    fn a_patch_merges_and_null_resets() {
        let s = UserSettings::default()
            .patched(
                &json!({"risk":{"leverage":30},"watchlist":["EURUSD","GBP/USD"],
                        "auto_trading":{"scalping":{"enabled":true,"volume":0.25}}}),
                &symbols(),
                STRATEGIES,
            )
            .expect("valid");
        assert_eq!(s.risk.leverage, 30);
        assert_eq!(s.risk.max_volume, Decimal::from(10), "untouched field kept");
        assert_eq!(s.watchlist.len(), 2);
        assert_eq!(
            s.auto_trading["scalping"].volume,
            Decimal::new(25, 2),
            "exact decimal"
        );
        let reset = s
            .patched(&json!({"risk":{"leverage":null}}), &symbols(), STRATEGIES)
            .expect("valid");
        assert_eq!(reset.risk.leverage, 100);
        assert_eq!(reset.watchlist.len(), 2);
    }

    #[test]
    fn auto_trading_exits_are_set_and_cleared_by_patch() {
        let s = UserSettings::default()
            .patched(
                &json!({"auto_trading":{"scalping":{"enabled":true,"volume":0.1,
                    "stop_loss_pips":20,"take_profit_pips":40.5}}}),
                &symbols(),
                STRATEGIES,
            )
            .expect("valid");
        let auto = &s.auto_trading["scalping"];
        assert_eq!(auto.stop_loss_pips, Some(Decimal::from(20)));
        assert_eq!(auto.take_profit_pips, Some(Decimal::new(405, 1)));
        assert_eq!(auto.trailing_stop_pips, None);
        let cleared = s
            .patched(
                &json!({"auto_trading":{"scalping":{"stop_loss_pips":null,"trailing_stop_pips":15}}}),
                &symbols(),
                STRATEGIES,
            )
            .expect("valid");
        let auto = &cleared.auto_trading["scalping"];
        assert_eq!(auto.stop_loss_pips, None);
        assert_eq!(auto.take_profit_pips, Some(Decimal::new(405, 1)));
        assert_eq!(auto.trailing_stop_pips, Some(Decimal::from(15)));
        let round = serde_json::to_value(&cleared).expect("write");
        assert_eq!(
            round["auto_trading"]["scalping"],
            json!({"enabled":true,"volume":0.1,"take_profit_pips":40.5,"trailing_stop_pips":15.0})
        );
    }

    #[test]
    fn the_position_mode_is_set_and_reset() {
        let s = UserSettings::default()
            .patched(
                &json!({"risk":{"position_mode":"netting"}}),
                &symbols(),
                STRATEGIES,
            )
            .expect("valid");
        assert_eq!(s.risk.position_mode, PositionMode::Netting);
        assert_eq!(
            serde_json::to_value(&s).expect("write")["risk"]["position_mode"],
            "netting"
        );
        let reset = s
            .patched(
                &json!({"risk":{"position_mode":null}}),
                &symbols(),
                STRATEGIES,
            )
            .expect("valid");
        assert_eq!(reset.risk.position_mode, PositionMode::Hedging);
    }

    #[test]
    fn every_bad_field_is_named() {
        let base = UserSettings::default();
        let cases = [
            (json!([]), "settings"),
            (json!({"nope":1}), "nope"),
            (json!({"risk":5}), "risk"),
            (json!({"risk":{"leverage":0}}), "risk.leverage"),
            (json!({"risk":{"leverage":"x"}}), "risk.leverage"),
            (json!({"risk":{"leverage":1.5}}), "risk.leverage"),
            (json!({"risk":{"max_volume":0.015}}), "risk.max_volume"),
            (json!({"risk":{"max_volume":101}}), "risk.max_volume"),
            (
                json!({"risk":{"max_open_positions":0}}),
                "risk.max_open_positions",
            ),
            (json!({"risk":{"margin":1}}), "risk.margin"),
            (
                json!({"risk":{"position_mode":"fifo"}}),
                "risk.position_mode",
            ),
            (json!({"risk":{"position_mode":1}}), "risk.position_mode"),
            (json!({"watchlist":"EURUSD"}), "watchlist"),
            (json!({"watchlist":["XYZABC"]}), "watchlist"),
            (json!({"watchlist":["EURXYZ1"]}), "watchlist"),
            (
                json!({"auto_trading":{"martingale":{"enabled":true}}}),
                "auto_trading.martingale",
            ),
            (
                json!({"auto_trading":{"scalping":{"enabled":"yes"}}}),
                "auto_trading.scalping.enabled",
            ),
            (
                json!({"auto_trading":{"scalping":{"enabled":true,"volume":50}}}),
                "auto_trading.scalping.volume",
            ),
            (
                json!({"auto_trading":{"scalping":{"enabled":true,"stop_loss_pips":0}}}),
                "auto_trading.scalping.stop_loss_pips",
            ),
            (
                json!({"auto_trading":{"scalping":{"enabled":true,"take_profit_pips":"40"}}}),
                "auto_trading.scalping.take_profit_pips",
            ),
            (
                json!({"auto_trading":{"scalping":{"enabled":true,"trailing_stop_pips":0.25}}}),
                "auto_trading.scalping.trailing_stop_pips",
            ),
            (
                json!({"auto_trading":{"scalping":{"enabled":true,"stop_loss_pips":10001}}}),
                "auto_trading.scalping.stop_loss_pips",
            ),
            (
                json!({"auto_trading":{"scalping":{"stop_distance":5}}}),
                "auto_trading.scalping.stop_distance",
            ),
        ];
        for (patch, field) in cases {
            let err = base
                .patched(&patch, &symbols(), STRATEGIES)
                .expect_err(&patch.to_string());
            assert_eq!(err.field, field, "{patch}: {err}");
        }
    }
}
