//! A fake Polygon REST server for `/v2/aggs/ticker/{ticker}/range/{n}/{unit}/{from}/{to}`.
//!
//! It serves [`BARS`] one-minute EURUSD bars starting at [`BASE`], [`PAGE_SIZE`] per page, with
//! a Polygon-style `next_url` (absolute `https://api.polygon.io/...`, with a `cursor`, without
//! the key). Requests without the right `apiKey` get 401, like Polygon. A [`Mode`] injects
//! failures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rust_decimal::Decimal;

use super::KEY;

/// First bar start.
pub const BASE: i64 = 1_704_931_200_000;
/// Bars in the data set.
pub const BARS: i64 = 12;
/// Bars per page.
pub const PAGE_SIZE: i64 = 4;
/// One minute.
pub const MIN: i64 = 60_000;

/// Failure injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Serve normally.
    Normal,
    /// Answer the next `n` requests with 429 and `Retry-After: 1`.
    RateLimited(u32),
    /// Answer the next `n` requests with 503.
    Unavailable(u32),
    /// Answer every request with 401.
    Unauthorized,
    /// After `n` pages were served, answer every request with 500.
    FailAfterPages(u32),
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub from: i64,
    pub to: i64,
    pub query: HashMap<String, String>,
    pub at: Instant,
    pub status: u16,
}

#[derive(Debug)]
struct Inner {
    mode: Mode,
    pages_served: u32,
    seen: Vec<Seen>,
}

#[derive(Clone)]
struct AppState(Arc<Mutex<Inner>>);

/// The running fake.
pub struct FakeRest {
    pub url: String,
    state: AppState,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRest {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeRest {
    pub async fn start(mode: Mode) -> FakeRest {
        let state = AppState(Arc::new(Mutex::new(Inner {
            mode,
            pages_served: 0,
            seen: Vec::new(),
        })));
        let app = Router::new()
            .route(
                "/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{from}/{to}",
                get(aggs),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeRest { url, state, task }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.0.lock().unwrap().mode = mode;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.0.lock().unwrap().seen.clone()
    }
}

/// Bar `i`'s prices as exact text: open 1.0850 + i pips, etc.
pub fn bar_prices(i: i64) -> (Decimal, Decimal, Decimal, Decimal) {
    let o = Decimal::new(10_850 + i, 4);
    let h = Decimal::new(10_853 + i, 4);
    let l = Decimal::new(10_849 + i, 4);
    let c = Decimal::new(10_851 + i, 4);
    (o, h, l, c)
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({"status": "ERROR", "request_id": "fake", "error": message});
    (status, body.to_string()).into_response()
}

async fn aggs(
    State(state): State<AppState>,
    Path((ticker, multiplier, timespan, from, to)): Path<(String, u32, String, i64, i64)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut inner = state.0.lock().unwrap();
    let mut seen = Seen {
        from,
        to,
        query: query.clone(),
        at: Instant::now(),
        status: 200,
    };
    let response = respond(&mut inner, &ticker, multiplier, &timespan, from, to, &query);
    seen.status = response.status().as_u16();
    inner.seen.push(seen);
    response
}

fn respond(
    inner: &mut Inner,
    ticker: &str,
    multiplier: u32,
    timespan: &str,
    from: i64,
    to: i64,
    query: &HashMap<String, String>,
) -> Response {
    if query.get("apiKey").map(String::as_str) != Some(KEY) {
        return error(StatusCode::UNAUTHORIZED, "Unknown API Key");
    }
    match inner.mode {
        Mode::Normal => {}
        Mode::Unauthorized => return error(StatusCode::UNAUTHORIZED, "Unknown API Key"),
        Mode::RateLimited(n) => {
            inner.mode = if n > 1 {
                Mode::RateLimited(n - 1)
            } else {
                Mode::Normal
            };
            let mut headers = HeaderMap::new();
            headers.insert("retry-after", HeaderValue::from_static("1"));
            let body =
                r#"{"status":"ERROR","error":"You've exceeded the maximum requests per minute"}"#;
            return (StatusCode::TOO_MANY_REQUESTS, headers, body).into_response();
        }
        Mode::Unavailable(n) => {
            inner.mode = if n > 1 {
                Mode::Unavailable(n - 1)
            } else {
                Mode::Normal
            };
            return error(StatusCode::SERVICE_UNAVAILABLE, "try again");
        }
        Mode::FailAfterPages(n) => {
            if inner.pages_served >= n {
                return error(StatusCode::INTERNAL_SERVER_ERROR, "broken");
            }
        }
    }
    if ticker != "C:EURUSD" || multiplier != 1 || timespan != "minute" {
        return error(StatusCode::BAD_REQUEST, "unexpected ticker or range");
    }
    if let Some(cursor) = query.get("cursor") {
        if *cursor != format!("c{from}") {
            return error(StatusCode::BAD_REQUEST, "cursor does not match the page");
        }
    }
    // Bars i with BASE + i*MIN in [from, to], at most PAGE_SIZE.
    let in_range: Vec<i64> = (0..BARS)
        .filter(|i| (from..=to).contains(&(BASE + i * MIN)))
        .collect();
    let page = &in_range[..in_range.len().min(usize::try_from(PAGE_SIZE).unwrap())];
    let results: Vec<String> = page
        .iter()
        .map(|&i| {
            let (o, h, l, c) = bar_prices(i);
            format!(
                r#"{{"v":{v},"vw":{o},"o":{o},"c":{c},"h":{h},"l":{l},"t":{t},"n":{v}}}"#,
                v = 100 + i,
                t = BASE + i * MIN
            )
        })
        .collect();
    let next_url = in_range.get(page.len()).map(|&i| {
        let next_from = BASE + i * MIN;
        format!(
            "https://api.polygon.io/v2/aggs/ticker/{ticker}/range/{multiplier}/{timespan}/{next_from}/{to}?cursor=c{next_from}"
        )
    });
    inner.pages_served += 1;
    let body = format!(
        r#"{{"ticker":"{ticker}","queryCount":{n},"resultsCount":{n},"adjusted":true,"results":[{results}],"status":"OK","request_id":"fake","count":{n}{next}}}"#,
        n = page.len(),
        results = results.join(","),
        next = next_url
            .map(|u| format!(r#","next_url":"{u}""#))
            .unwrap_or_default()
    );
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}
