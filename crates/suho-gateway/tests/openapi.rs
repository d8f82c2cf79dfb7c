//! The OpenAPI document: it is OpenAPI 3, every reference in it resolves, the real router
//! serves every documented operation (and answers the undocumented methods of those paths
//! with 405), and the request schemas name what the handlers require.
//!
//! No servers are needed: the router's state has a PostgreSQL pool and a Kafka producer that
//! point at a closed port. Every request below is answered before a handler would reach
//! Kafka (no token, or an empty body), and what does reach the database is answered 503
//! within the pool's acquire timeout.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use suho_gateway::{AppState, LoginThrottle, ThrottleLimits};
use tokio_util::sync::CancellationToken;

fn document() -> Value {
    serde_json::to_value(suho_gateway::openapi()).expect("the document serializes")
}

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// `(method, path, operation)` of every documented operation.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let paths = doc["paths"].as_object().expect("paths");
    let mut ops = Vec::new();
    for (path, item) in paths {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                ops.push((method.to_string(), path.clone(), op.clone()));
            }
        }
    }
    ops
}

/// Every string value of a `$ref` key.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

fn schema<'d>(doc: &'d Value, name: &str) -> &'d Value {
    let s = &doc["components"]["schemas"][name];
    assert!(s.is_object(), "no schema {name}");
    s
}

fn required(schema: &Value) -> BTreeSet<&str> {
    schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn the_document_is_openapi_3_and_every_reference_resolves() {
    let text = suho_gateway::openapi()
        .to_pretty_json()
        .expect("serializes");
    let doc: Value = serde_json::from_str(&text).expect("the document is JSON");
    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3."), "OpenAPI {version}");
    assert!(doc["info"]["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(doc["info"]["version"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));

    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "unresolved {r}");
    }

    let bearer = &doc["components"]["securitySchemes"][suho_gateway::openapi::BEARER];
    assert_eq!(bearer["type"], "http");
    assert_eq!(bearer["scheme"], "bearer");

    let ops = operations(&doc);
    assert!(!ops.is_empty());
    for (method, path, op) in &ops {
        let name = format!("{} {path}", method.to_uppercase());
        let responses = op["responses"].as_object().expect("responses");
        // `101 Switching Protocols` is the success of the WebSocket upgrade (`/ws`).
        assert!(
            responses.keys().any(|s| s.starts_with('2') || s == "101"),
            "{name}: no success answer"
        );
        let secured = op["security"].as_array().is_some_and(|s| {
            s.iter()
                .any(|req| req.get(suho_gateway::openapi::BEARER).is_some())
        });
        if secured {
            assert!(responses.contains_key("401"), "{name}: no 401");
        }
        if path.contains("{user_id}") {
            assert!(secured, "{name}: a user's path without the bearer scheme");
            assert!(responses.contains_key("403"), "{name}: no 403");
        }
        if op.get("requestBody").is_some() {
            for status in ["400", "413", "422"] {
                assert!(responses.contains_key(status), "{name}: no {status}");
            }
        }
        for (status, answer) in responses {
            if status.starts_with('4') || status.starts_with('5') {
                if status == "413" || *path == "/health" {
                    continue;
                }
                assert_eq!(
                    answer["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{name} {status}: not an ErrorBody"
                );
            }
        }
    }
    let login = &doc["paths"]["/api/auth/login"]["post"]["responses"]["429"];
    assert!(
        login["headers"]["Retry-After"].is_object(),
        "the login throttle's Retry-After"
    );
}

#[test]
fn the_trade_open_request_names_its_required_fields() {
    let doc = document();
    let body = &doc["paths"]["/api/trade/open"]["post"]["requestBody"];
    assert_eq!(body["required"], true);
    assert_eq!(
        body["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/OpenTradeRequest"
    );
    let open = schema(&doc, "OpenTradeRequest");
    assert_eq!(required(open), BTreeSet::from(["symbol", "type", "volume"]));
    let props: BTreeSet<&str> = open["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        props,
        BTreeSet::from([
            "symbol",
            "type",
            "volume",
            "stop_loss",
            "take_profit",
            "client_order_id",
            "order_type",
            "limit_price",
            "stop_price",
            "time_in_force",
            "expires_at",
            "trailing_stop_pips",
            "oco_with"
        ])
    );
    // The order types and times in force of the contract's "Orders" section.
    assert_eq!(
        schema(&doc, "OrderType")["enum"],
        serde_json::json!(["MARKET", "LIMIT", "STOP", "STOP_LIMIT"])
    );
    assert_eq!(
        schema(&doc, "TimeInForce")["enum"],
        serde_json::json!(["GTC", "DAY", "GTD", "IOC", "FOK"])
    );
    for (path, name, fields) in [
        ("/api/trade/cancel", "CancelOrderRequest", vec!["order_id"]),
        (
            "/api/trade/replace",
            "ReplaceOrderRequest",
            vec![
                "order_id",
                "volume",
                "limit_price",
                "stop_price",
                "stop_loss",
                "take_profit",
                "expires_at",
            ],
        ),
    ] {
        let body = &doc["paths"][path]["post"]["requestBody"];
        assert_eq!(
            body["content"]["application/json"]["schema"]["$ref"],
            format!("#/components/schemas/{name}"),
            "{path}"
        );
        let keys: BTreeSet<&str> = schema(&doc, name)["properties"]
            .as_object()
            .expect("properties")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, fields.into_iter().collect::<BTreeSet<_>>(), "{name}");
    }
    let side = open["properties"]["type"]["$ref"]
        .as_str()
        .and_then(|r| r.rsplit('/').next())
        .expect("type is a referenced enum");
    assert_eq!(
        schema(&doc, side)["enum"],
        serde_json::json!(["BUY", "SELL"])
    );

    assert_eq!(
        required(schema(&doc, "CloseTradeRequest")),
        BTreeSet::from(["trade_id"])
    );
    assert_eq!(
        required(schema(&doc, "ModifyTradeRequest")),
        BTreeSet::from(["trade_id"])
    );
    assert_eq!(
        required(schema(&doc, "MoneyRequest")),
        BTreeSet::from(["amount"])
    );
    assert_eq!(
        required(schema(&doc, "Credentials")),
        BTreeSet::from(["email", "password"])
    );
    assert_eq!(
        required(schema(&doc, "Mt5LinkRequest")),
        BTreeSet::from(["mt5_account", "password"])
    );
    assert_eq!(
        required(schema(&doc, "ErrorBody")),
        BTreeSet::from(["error", "message"])
    );
}

/// Prices, volumes and money are JSON numbers, never strings, in requests and answers.
#[test]
fn money_is_a_json_number() {
    let doc = document();
    let money: HashSet<&str> = [
        "volume",
        "stop_loss",
        "take_profit",
        "amount",
        "open",
        "high",
        "low",
        "close",
        "balance",
        "equity",
        "margin",
        "free_margin",
        "margin_level",
        "open_price",
        "execution_price",
        "close_price",
        "profit",
        "max_volume",
    ]
    .into();
    let mut seen = 0;
    for (name, s) in doc["components"]["schemas"].as_object().expect("schemas") {
        let Some(props) = s["properties"].as_object() else {
            continue;
        };
        for (field, p) in props {
            if !money.contains(field.as_str()) {
                continue;
            }
            seen += 1;
            let ty = &p["type"];
            let number =
                ty == "number" || ty.as_array().is_some_and(|t| t.contains(&"number".into()));
            assert!(number, "{name}.{field} is {ty}, not a number");
        }
    }
    assert!(seen >= 20, "only {seen} money fields found");
}

#[test]
fn the_candle_limit_is_the_stores_limit() {
    let doc = document();
    let params = doc["paths"]["/api/market/{symbol}/candles"]["get"]["parameters"]
        .as_array()
        .expect("parameters");
    let limit = params.iter().find(|p| p["name"] == "limit").expect("limit");
    assert_eq!(limit["in"], "query");
    assert_eq!(
        limit["schema"]["maximum"].as_i64(),
        Some(suho_bridge::MAX_HISTORY_LIMIT)
    );
    let names: BTreeSet<&str> = params.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["symbol", "tf", "from", "to", "limit"])
    );
}

/// A state whose database and Kafka are a closed port.
fn offline_state() -> Arc<AppState> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://suho@127.0.0.1:1/suho")
        .expect("a lazy pool");
    let accounts = suho_accounts::Accounts::with_pool(
        pool,
        &secrecy::SecretString::from("openapi-test-secret"),
        Duration::from_secs(60),
    );
    let producer = suho_messaging::UserEventProducer::new(&suho_config::KafkaConfig {
        bootstrap: "127.0.0.1:1".into(),
        ..suho_config::KafkaConfig::default()
    })
    .expect("a producer");
    Arc::new(AppState {
        accounts,
        producer,
        symbols: suho_domain::major_fx().into_iter().collect(),
        strategies: vec!["scalping".into()],
        topic_prefix: String::new(),
        login_throttle: LoginThrottle::new(ThrottleLimits::default()),
        trusted_proxies: Vec::new(),
        cors_origins: Vec::new(),
        metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle(),
        started: Instant::now(),
        relay: suho_gateway::outbox::Relay::default(),
    })
}

/// The real router, served by the real `serve`, answers every documented operation with one
/// of its documented statuses (never 404 or 405), and every other method of a documented path
/// with 405. The router and the document are made from the same `#[utoipa::path]`
/// annotations (`suho_gateway::api`); this checks that each annotation's method and path
/// reach its handler.
#[tokio::test]
async fn the_router_serves_every_documented_operation_and_no_other_method() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let state = offline_state();
    let served_document = suho_gateway::openapi::served(&state.symbols, &state.strategies);
    let server = tokio::spawn(suho_gateway::serve(listener, state, stop.clone()));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let doc = document();
    let ops = operations(&doc);
    assert!(ops.len() >= 17, "only {} operations documented", ops.len());
    let concrete = |path: &str| {
        path.replace("{user_id}", "usr_openapi")
            .replace("{symbol}", "EURUSD")
    };
    for (method, path, op) in &ops {
        let url = format!("{base}{}", concrete(path));
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let answer = client.request(m, &url).send().await.expect("answer");
        let status = answer.status().as_u16();
        let documented: Vec<u16> = op["responses"]
            .as_object()
            .expect("responses")
            .keys()
            .filter_map(|s| s.parse().ok())
            .collect();
        assert!(
            status != 404 && status != 405,
            "{method} {path}: {status}, the route is missing"
        );
        assert!(
            documented.contains(&status),
            "{method} {path}: {status} is not documented ({documented:?})"
        );
    }
    let paths = doc["paths"].as_object().expect("paths");
    for (path, item) in paths {
        for method in METHODS.iter().filter(|m| item.get(**m).is_none()) {
            let url = format!("{base}{}", concrete(path));
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let status = client
                .request(m, &url)
                .send()
                .await
                .expect("answer")
                .status();
            assert_eq!(status, 405, "{method} {path} is served but not documented");
        }
    }
    let missing = client
        .get(format!("{base}/api/nothing/here"))
        .send()
        .await
        .expect("answer");
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await.expect("json");
    assert_eq!(body["error"], "not_found");

    let served = client
        .get(format!("{base}/api/openapi.json"))
        .send()
        .await
        .expect("answer");
    assert_eq!(served.status(), 200);
    assert_eq!(
        served.headers()[reqwest::header::CONTENT_TYPE],
        "application/json"
    );
    let served: Value = served.json().await.expect("the served document is JSON");
    assert_eq!(served, served_document);
    // The served document is the annotations' with the configured rules written in.
    assert_eq!(
        served["paths"].as_object().map(|p| p.len()),
        doc["paths"].as_object().map(|p| p.len())
    );
    let traded = &served["components"]["schemas"]["TradedSymbol"]["pattern"];
    let pattern = traded.as_str().expect("a symbol pattern");
    assert!(
        pattern.contains("[Ee][Uu][Rr][/-]?[Uu][Ss][Dd]"),
        "{pattern}"
    );

    stop.cancel();
    server.await.expect("joins").expect("serves");
}
