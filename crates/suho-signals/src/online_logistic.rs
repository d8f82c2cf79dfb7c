//! `online_logistic`: a logistic-regression model trained online from the candle stream.
//!
//! # Definition
//!
//! The model keeps the last `window` closes. After each closed candle `t` it computes five
//! raw features, each a pure function of those closes (so saved state restores exactly):
//!
//! 1. `r1 = c_t / c_{t-1} - 1`, 2. `r3 = c_t / c_{t-3} - 1`, 3. `r10 = c_t / c_{t-10} - 1`
//!    (recent returns);
//! 4. `gap = (EMA_fast - EMA_slow) / c_t`, the EMAs of [`suho_market::Ema`] run over the
//!    window;
//! 5. `rsi = (RSI - 50) / 50`, the RSI of [`suho_market::Rsi`] run over the window.
//!
//! Each feature is normalised by a running (Welford) mean and standard deviation of everything
//! seen so far, `z = clamp((x - mean) / sd, -5, 5)` (0 while `sd = 0`).
//!
//! **Training.** The label of candle `t`'s features is the sign of the *next* candle's return:
//! when candle `t + 1` closes with `c_{t+1} != c_t`, one SGD step on the log loss with L2 is
//! taken: `p = σ(w·z + b)`, `w ← w - lr·((p - y)·z + l2·w)`, `b ← b - lr·(p - y)`, with
//! `y = 1` for an up move and `0` for a down move (an unchanged close teaches nothing).
//!
//! **Prediction.** After training, `p = σ(w·z_t + b)` for the new candle. Once `warmup` updates
//! are done the model's view is BUY when `p > 0.5 + threshold`, SELL when
//! `p < 0.5 - threshold`, FLAT otherwise, and a signal is emitted only when that view changes
//! (the first view counts as a change from FLAT). Confidence: `p` for a BUY, `1 - p` for a SELL,
//! `1 - 2|p - 0.5|` for a FLAT. The signal's price is the close.
//!
//! **Model string:** `online-logistic@{VERSION}+{updates}`, e.g. `online-logistic@1+1234`: the
//! model version and how many SGD updates it has had.
//!
//! **State.** [`OnlineLogistic::save`] / [`OnlineLogistic::restore`] (and the file helpers
//! [`OnlineLogistic::save_to`], [`OnlineLogistic::load_from`]) carry the parameters, weights,
//! normaliser, update count, the close window, the pending features and the last view, tagged
//! with `model: "online-logistic"` and `version`. Floats are written as strings in Rust's
//! shortest round-trip form, so a restored model continues bit-for-bit like one that never
//! stopped. A state of another model or version is refused with
//! [`StateError::IncompatibleVersion`].
//!
//! # Defaults
//! `learning_rate 0.05`, `l2 0.0001`, `threshold 0.1`, `warmup 50`, `window 64`,
//! `ema_fast 9`, `ema_slow 21`, `rsi 14`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use suho_domain::{Candle, Direction};
use suho_market::{Ema, Rsi};

use crate::strategy::{Decision, Strategy};

/// The strategy's name (`signals.online_logistic.{SYM}`).
pub const NAME: &str = "online_logistic";
/// The model's name in its model string and its saved state.
pub const MODEL: &str = "online-logistic";
/// Version of the model and of its saved state; a state of another version is refused.
pub const VERSION: u32 = 1;
/// Number of features.
pub const FEATURES: usize = 5;
/// Normalised features are clamped to `±Z_CLIP`.
const Z_CLIP: f64 = 5.0;

/// A saved state that cannot be used, or a state file that cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing the state file failed.
    #[error("model state file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state is not valid JSON or does not have the expected shape.
    #[error("model state is malformed: {0}")]
    Json(#[from] serde_json::Error),
    /// The state belongs to another model or another version of this one.
    #[error(
        "model state is {found_model}@{found_version}, this build reads only {MODEL}@{VERSION}; \
         delete or move the state file to start the model afresh"
    )]
    IncompatibleVersion {
        /// The state's model name.
        found_model: String,
        /// The state's version.
        found_version: String,
    },
    /// The state has the right version but inconsistent content.
    #[error("model state is invalid: {0}")]
    Invalid(String),
}

/// Serde helpers writing `f64`s as strings in Rust's shortest round-trip form (`"0.1"`,
/// `"1e-7"`), read back exactly (a JSON number is accepted too, best effort).
mod exact_f64 {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Wire {
        Text(String),
        Number(f64),
    }

    fn parse<E: Error>(w: Wire) -> Result<f64, E> {
        match w {
            Wire::Number(x) => Ok(x),
            Wire::Text(s) => s
                .parse::<f64>()
                .map_err(|e| E::custom(format!("{s:?} is not a number: {e}"))),
        }
    }

    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{x:?}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        parse(Wire::deserialize(d)?)
    }

    pub mod vec {
        use super::{parse, Wire};
        use serde::ser::SerializeSeq;
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(xs: &[f64], s: S) -> Result<S::Ok, S::Error> {
            let mut seq = s.serialize_seq(Some(xs.len()))?;
            for x in xs {
                seq.serialize_element(&format!("{x:?}"))?;
            }
            seq.end()
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
            Vec::<Wire>::deserialize(d)?
                .into_iter()
                .map(parse)
                .collect()
        }
    }
}

/// Parameters of [`OnlineLogistic`] (saved with its state).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OnlineLogisticParams {
    /// SGD learning rate (0.05).
    #[serde(with = "exact_f64")]
    pub learning_rate: f64,
    /// L2 penalty on the weights, not the bias (0.0001).
    #[serde(with = "exact_f64")]
    pub l2: f64,
    /// BUY when `p > 0.5 + threshold`, SELL when `p < 0.5 - threshold` (0.1).
    #[serde(with = "exact_f64")]
    pub threshold: f64,
    /// Updates before the model says anything (50).
    pub warmup: u64,
    /// Closes kept for the features (64; at least `max(ema_slow, rsi + 1, 11)`).
    pub window: usize,
    /// Fast EMA period of the gap feature (9).
    pub ema_fast: usize,
    /// Slow EMA period of the gap feature (21).
    pub ema_slow: usize,
    /// RSI period (14).
    pub rsi: usize,
}

impl Default for OnlineLogisticParams {
    fn default() -> Self {
        Self {
            learning_rate: 0.05,
            l2: 0.0001,
            threshold: 0.1,
            warmup: 50,
            window: 64,
            ema_fast: 9,
            ema_slow: 21,
            rsi: 14,
        }
    }
}

impl OnlineLogisticParams {
    /// Closes needed before the features exist.
    fn min_closes(&self) -> usize {
        self.ema_slow.max(self.ema_fast).max(self.rsi + 1).max(11)
    }

    /// The window actually kept: at least [`Self::min_closes`].
    fn effective_window(&self) -> usize {
        self.window.max(self.min_closes())
    }
}

/// Running mean and variance per feature (Welford).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Normaliser {
    count: u64,
    #[serde(with = "exact_f64::vec")]
    mean: Vec<f64>,
    #[serde(with = "exact_f64::vec")]
    m2: Vec<f64>,
}

impl Normaliser {
    fn new() -> Self {
        Self {
            count: 0,
            mean: vec![0.0; FEATURES],
            m2: vec![0.0; FEATURES],
        }
    }

    /// Adds `x` and returns it normalised with the updated statistics.
    #[allow(clippy::cast_precision_loss)]
    fn update_and_normalise(&mut self, x: &[f64; FEATURES]) -> [f64; FEATURES] {
        self.count += 1;
        let n = self.count as f64;
        let mut z = [0.0; FEATURES];
        for (i, &xi) in x.iter().enumerate() {
            let delta = xi - self.mean[i];
            self.mean[i] += delta / n;
            self.m2[i] += delta * (xi - self.mean[i]);
            let sd = (self.m2[i] / n).sqrt();
            z[i] = if sd > 0.0 && sd.is_finite() {
                ((xi - self.mean[i]) / sd).clamp(-Z_CLIP, Z_CLIP)
            } else {
                0.0
            };
        }
        z
    }
}

/// The saved state, version 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateV1 {
    model: String,
    version: u32,
    params: OnlineLogisticParams,
    #[serde(with = "exact_f64::vec")]
    weights: Vec<f64>,
    #[serde(with = "exact_f64")]
    bias: f64,
    normaliser: Normaliser,
    updates: u64,
    closes: Vec<String>,
    #[serde(with = "exact_f64::vec")]
    pending: Vec<f64>,
    view: Direction,
}

/// The online logistic model of one symbol; see the module docs.
#[derive(Debug, Clone)]
pub struct OnlineLogistic {
    params: OnlineLogisticParams,
    weights: [f64; FEATURES],
    bias: f64,
    normaliser: Normaliser,
    updates: u64,
    closes: VecDeque<Decimal>,
    /// Normalised features of the last candle, waiting for their label.
    pending: Option<[f64; FEATURES]>,
    /// The view last emitted.
    view: Direction,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn ret(now: Decimal, then: Decimal) -> Option<f64> {
    if then <= Decimal::ZERO {
        return None;
    }
    ((now - then) / then).to_f64()
}

impl OnlineLogistic {
    /// A fresh, untrained model.
    #[must_use]
    pub fn new(params: OnlineLogisticParams) -> Self {
        Self {
            params,
            weights: [0.0; FEATURES],
            bias: 0.0,
            normaliser: Normaliser::new(),
            updates: 0,
            closes: VecDeque::with_capacity(params.effective_window() + 1),
            pending: None,
            view: Direction::Flat,
        }
    }

    /// The parameters.
    #[must_use]
    pub fn params(&self) -> &OnlineLogisticParams {
        &self.params
    }

    /// SGD updates so far.
    #[must_use]
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The weights, then the bias.
    #[must_use]
    pub fn weights(&self) -> ([f64; FEATURES], f64) {
        (self.weights, self.bias)
    }

    /// The raw features of the current window, once it is long enough.
    fn features(&self) -> Option<[f64; FEATURES]> {
        let p = &self.params;
        let n = self.closes.len();
        if n < p.min_closes() {
            return None;
        }
        let c = |back: usize| self.closes.get(n - 1 - back).copied();
        let last = c(0)?;
        let mut fast = Ema::new(p.ema_fast);
        let mut slow = Ema::new(p.ema_slow);
        let mut rsi = Rsi::new(p.rsi);
        let (mut f, mut s, mut r) = (None, None, None);
        for &x in &self.closes {
            f = fast.update(x);
            s = slow.update(x);
            r = rsi.update(x);
        }
        let close = last.to_f64().filter(|x| *x > 0.0)?;
        let x = [
            ret(last, c(1)?)?,
            ret(last, c(3)?)?,
            ret(last, c(10)?)?,
            (f? - s?) / close,
            (r? - 50.0) / 50.0,
        ];
        x.iter().all(|v| v.is_finite()).then_some(x)
    }

    fn probability(&self, z: &[f64; FEATURES]) -> f64 {
        let dot: f64 = self.weights.iter().zip(z).map(|(w, x)| w * x).sum();
        sigmoid(dot + self.bias)
    }

    fn train(&mut self, z: &[f64; FEATURES], up: bool) {
        let y = if up { 1.0 } else { 0.0 };
        let err = self.probability(z) - y;
        let (lr, l2) = (self.params.learning_rate, self.params.l2);
        for (w, x) in self.weights.iter_mut().zip(z) {
            *w -= lr * (err * x + l2 * *w);
        }
        self.bias -= lr * err;
        self.updates += 1;
    }

    /// The model's state as JSON (see the module docs).
    #[must_use]
    pub fn save(&self) -> Value {
        let state = StateV1 {
            model: MODEL.to_string(),
            version: VERSION,
            params: self.params,
            weights: self.weights.to_vec(),
            bias: self.bias,
            normaliser: self.normaliser.clone(),
            updates: self.updates,
            closes: self.closes.iter().map(Decimal::to_string).collect(),
            pending: self.pending.map(|p| p.to_vec()).unwrap_or_default(),
            view: self.view,
        };
        // A struct of strings, numbers and arrays always converts.
        serde_json::to_value(state).unwrap_or(Value::Null)
    }

    /// A model from a state written by [`OnlineLogistic::save`].
    ///
    /// # Errors
    /// [`StateError::IncompatibleVersion`] when the state is of another model or version,
    /// [`StateError::Json`] when it does not have the version's shape, and
    /// [`StateError::Invalid`] when its content is inconsistent (wrong lengths, bad numbers).
    pub fn restore(value: Value) -> Result<Self, StateError> {
        let found_model = value.get("model").and_then(Value::as_str).unwrap_or("?");
        let found_version = value.get("version").and_then(Value::as_u64);
        if found_model != MODEL || found_version != Some(u64::from(VERSION)) {
            return Err(StateError::IncompatibleVersion {
                found_model: found_model.to_string(),
                found_version: value
                    .get("version")
                    .map_or_else(|| "?".to_string(), Value::to_string),
            });
        }
        let s: StateV1 = serde_json::from_value(value)?;
        let invalid = |m: String| StateError::Invalid(m);
        let array = |name: &str, v: &[f64]| -> Result<[f64; FEATURES], StateError> {
            <[f64; FEATURES]>::try_from(v).map_err(|_| {
                invalid(format!(
                    "{name} has {} values, expected {FEATURES}",
                    v.len()
                ))
            })
        };
        let weights = array("weights", &s.weights)?;
        array("normaliser.mean", &s.normaliser.mean)?;
        array("normaliser.m2", &s.normaliser.m2)?;
        let pending = if s.pending.is_empty() {
            None
        } else {
            Some(array("pending", &s.pending)?)
        };
        if !weights.iter().chain([&s.bias]).all(|w| w.is_finite()) {
            return Err(invalid("weights are not finite".into()));
        }
        let window = s.params.effective_window();
        if s.closes.len() > window {
            return Err(invalid(format!(
                "{} closes kept, the window is {window}",
                s.closes.len()
            )));
        }
        let closes = s
            .closes
            .iter()
            .map(|c| Decimal::from_str(c).map_err(|e| invalid(format!("close {c:?}: {e}"))))
            .collect::<Result<VecDeque<_>, _>>()?;
        Ok(Self {
            params: s.params,
            weights,
            bias: s.bias,
            normaliser: s.normaliser,
            updates: s.updates,
            closes,
            pending,
            view: s.view,
        })
    }

    /// Writes the state to `path` atomically: a temporary file in the same directory (created
    /// if missing), flushed to disk, then renamed over `path`.
    ///
    /// # Errors
    /// [`StateError::Io`] when the directory, the temporary file or the rename fails.
    pub fn save_to(&self, path: &Path) -> Result<(), StateError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StateError::Io { path, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let mut text = serde_json::to_vec_pretty(&self.save())?;
        text.push(b'\n');
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp)(e));
        }
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(path)(e)
        })
    }

    /// Reads a state file written by [`OnlineLogistic::save_to`].
    ///
    /// # Errors
    /// [`StateError::Io`] when the file cannot be read, otherwise as
    /// [`OnlineLogistic::restore`].
    pub fn load_from(path: &Path) -> Result<Self, StateError> {
        let text = std::fs::read(path).map_err(|source| StateError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::restore(serde_json::from_slice(&text)?)
    }
}

impl Default for OnlineLogistic {
    fn default() -> Self {
        Self::new(OnlineLogisticParams::default())
    }
}

impl Strategy for OnlineLogistic {
    fn name(&self) -> &str {
        NAME
    }

    fn model(&self) -> String {
        format!("{MODEL}@{VERSION}+{}", self.updates)
    }

    fn on_candle(&mut self, candle: &Candle) -> Option<Decision> {
        let prev_close = self.closes.back().copied();
        self.closes.push_back(candle.close);
        while self.closes.len() > self.params.effective_window() {
            self.closes.pop_front();
        }
        // Label the previous candle's features with this candle's move.
        if let (Some(z), Some(prev)) = (self.pending.take(), prev_close) {
            if candle.close != prev {
                self.train(&z, candle.close > prev);
            }
        }
        let x = self.features()?;
        let z = self.normaliser.update_and_normalise(&x);
        self.pending = Some(z);
        if self.updates < self.params.warmup {
            return None;
        }
        let p = self.probability(&z);
        let t = self.params.threshold;
        let (direction, confidence) = if p > 0.5 + t {
            (Direction::Buy, p)
        } else if p < 0.5 - t {
            (Direction::Sell, 1.0 - p)
        } else {
            (Direction::Flat, 1.0 - 2.0 * (p - 0.5).abs())
        };
        if direction == self.view {
            return None;
        }
        self.view = direction;
        Some(Decision {
            direction,
            confidence,
            price: candle.close,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::candles;

    /// A series with a learnable pattern: momentum (each move tends to repeat).
    fn trending(n: usize) -> Vec<f64> {
        let mut price = 1.1;
        let mut step: f64 = 0.0002;
        (0..n)
            .map(|i| {
                // Flip the trend every 7 candles, with a small deterministic wiggle.
                if i % 7 == 0 {
                    step = -step;
                }
                price += step + if i % 3 == 0 { 0.00003 } else { -0.00002 };
                price
            })
            .collect()
    }

    #[test]
    fn learns_and_speaks_after_warm_up() {
        let mut m = OnlineLogistic::default();
        let series = candles(&trending(400));
        let decisions: Vec<(usize, Decision)> = series
            .iter()
            .enumerate()
            .filter_map(|(i, c)| m.on_candle(c).map(|d| (i, d)))
            .collect();
        assert!(m.updates() > 300, "{}", m.updates());
        assert!(!decisions.is_empty());
        assert!(
            decisions.iter().all(|(i, _)| *i > 50),
            "nothing during warm-up"
        );
        for w in decisions.windows(2) {
            assert_ne!(
                w[0].1.direction, w[1].1.direction,
                "only changes are emitted"
            );
        }
        for (_, d) in &decisions {
            assert!((0.0..=1.0).contains(&d.confidence));
        }
        assert_eq!(m.model(), format!("online-logistic@1+{}", m.updates()));
    }

    #[test]
    fn state_round_trips_exactly() {
        let mut m = OnlineLogistic::default();
        for c in candles(&trending(200)) {
            m.on_candle(&c);
        }
        let saved = m.save();
        assert_eq!(saved["model"], "online-logistic");
        assert_eq!(saved["version"], 1);
        let text = serde_json::to_string(&saved).expect("text");
        let back =
            OnlineLogistic::restore(serde_json::from_str(&text).expect("json")).expect("restores");
        assert_eq!(back.weights(), m.weights());
        assert_eq!(back.save(), saved);
    }

    #[test]
    fn another_version_or_model_is_refused() {
        let saved = OnlineLogistic::default().save();
        let mut v2 = saved.clone();
        v2["version"] = serde_json::json!(2);
        let err = OnlineLogistic::restore(v2).expect_err("version 2 refused");
        assert!(
            matches!(err, StateError::IncompatibleVersion { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("online-logistic@2"), "{err}");
        let mut other = saved.clone();
        other["model"] = serde_json::json!("random-forest");
        assert!(matches!(
            OnlineLogistic::restore(other),
            Err(StateError::IncompatibleVersion { .. })
        ));
        let mut short = saved;
        short["weights"] = serde_json::json!(["1.0"]);
        assert!(matches!(
            OnlineLogistic::restore(short),
            Err(StateError::Invalid(_))
        ));
    }

    #[test]
    fn floats_are_written_exactly() {
        let m = OnlineLogistic {
            bias: 0.1 + 0.2,
            ..OnlineLogistic::default()
        };
        let back =
            OnlineLogistic::restore(serde_json::from_str(&m.save().to_string()).expect("json"))
                .expect("restore");
        assert_eq!(back.bias.to_bits(), (0.1_f64 + 0.2).to_bits());
    }
}
