//! One connection: authentication (if the upgrade did not carry a token), the watchlist
//! subscription, the reader of client messages, and the writer that drains the client's
//! queues onto the socket. The writer alone touches the socket's sending half, so a client
//! that does not read blocks only its own writer.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use suho_accounts::{AccountError, Claims};
use suho_domain::Symbol;
use suho_telemetry::names;
use tokio::task::JoinSet;

use super::hub::{Channel, Client, CloseReason, Limits};
use super::protocol::{self, ClientMessage, Invalid, Position};
use super::{feed, WsHub};
use crate::AppState;

/// The close code for a client too slow for its own events (1013, try again later).
const TOO_SLOW: u16 = 1013;

/// What the upgrade handler learned.
pub struct Session {
    pub id: u64,
    pub hub: WsHub,
    pub state: Arc<AppState>,
    /// From the query or header, with the token; `None`: the first message must authenticate.
    pub claims: Option<(Claims, SecretString)>,
    /// From the `resume` query parameter.
    pub positions: Vec<Position>,
}

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

/// Serves one connection to its end.
pub async fn run(socket: WebSocket, session: Session) {
    let Session {
        id,
        hub,
        state,
        claims,
        positions,
    } = session;
    let (mut sink, mut stream) = socket.split();
    let (mut claims, mut token, positions) = match claims {
        Some((c, t)) => (c, t, positions),
        None => match first_message(&mut stream, &hub, &state).await {
            Ok(x) => x,
            Err((code, reason)) => {
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    sink.send(Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    }))),
                )
                .await;
                return;
            }
        },
    };
    let watchlist = match state.accounts.settings(&claims.user_id()).await {
        Ok(s) => s.watchlist,
        Err(e) => {
            tracing::warn!(user_id = %claims.sub, error = %e, "no watchlist for a WebSocket connection");
            Vec::new()
        }
    };
    let mut symbols: HashSet<Symbol> = watchlist.iter().copied().collect();
    let options = &hub.inner.options;
    let registry = hub.inner.registry.clone();
    let client = Arc::new(Client::new(
        id,
        Arc::from(claims.sub.as_str()),
        Limits {
            user_queue: options.user_queue,
            market_subjects: options.market_pending,
            market_depth: options.market_depth,
        },
    ));
    client.push_ordered(
        protocol::control(
            "authenticated",
            json!({"user_id": claims.sub, "symbols": protocol::symbol_names(&symbols)}),
        ),
        Channel::Control,
    );
    // Live events are held from registration until the connection knows where it starts
    // (and, for a resume, has caught up), so none is missed, repeated or out of order.
    client.hold(&[]);
    registry.add(&client);
    registry.subscribe(&client, &watchlist);
    let mut resumes = JoinSet::new();
    resumes.spawn(start(hub.clone(), client.clone(), positions));
    let writer = tokio::spawn(write(sink, client.clone()));
    let expiry = tokio::time::sleep(until_expiry(&claims));
    tokio::pin!(expiry);
    let every = options.token_recheck;
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + every, every);

    loop {
        tokio::select! {
            () = client.closed().cancelled() => break,
            () = hub.inner.shutdown.cancelled() => {
                client.close(CloseReason::Shutdown);
                break;
            }
            () = &mut expiry => {
                client.close(CloseReason::TokenExpired);
                break;
            }
            _ = recheck.tick() => {
                if let Err(AccountError::InvalidToken(_)) =
                    state.accounts.authenticate(token.expose_secret()).await
                {
                    client.close(CloseReason::TokenRevoked);
                    break;
                }
            }
            Some(_) = resumes.join_next() => {}
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if let Ok(ClientMessage::Auth { token: fresh, .. }) =
                        protocol::parse(&text, &state.symbols)
                    {
                        match renew(&state, &claims, &fresh).await {
                            Ok(renewed) => {
                                expiry
                                    .as_mut()
                                    .reset(tokio::time::Instant::now() + until_expiry(&renewed));
                                claims = renewed;
                                token = SecretString::from(fresh);
                                client.push_ordered(
                                    protocol::control(
                                        "authenticated",
                                        json!({"user_id": claims.sub, "symbols": protocol::symbol_names(&symbols)}),
                                    ),
                                    Channel::Control,
                                );
                            }
                            Err(e) => client.push_ordered(protocol::error(&e), Channel::Error),
                        }
                    } else {
                        handle(&text, &hub, &state, &client, &mut symbols, &mut resumes);
                    }
                }
                Some(Ok(Message::Binary(_))) => client.push_ordered(
                    protocol::error(&Invalid {
                        field: "message".into(),
                        message: "message: must be a text frame of JSON".into(),
                    }), Channel::Error),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            },
        }
    }
    registry.remove(&client, &symbols);
    resumes.abort_all();
    // Ends the writer if the client left on its own.
    client.closed().cancel();
    let _ = tokio::time::timeout(Duration::from_secs(3), writer).await;
}

/// The first message must be `{"action":"auth",...}` with a valid token.
async fn first_message(
    stream: &mut Stream,
    hub: &WsHub,
    state: &AppState,
) -> Result<(Claims, SecretString, Vec<Position>), (u16, String)> {
    let policy = |reason: &str| (close_code::POLICY, reason.to_string());
    let text = tokio::time::timeout(hub.inner.options.auth_timeout, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => return Some(t),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                _ => return None,
            }
        }
    })
    .await
    .map_err(|_| {
        policy("authentication timed out: send {\"action\":\"auth\",\"token\":...} first")
    })?
    .ok_or_else(|| policy("the first message must be {\"action\":\"auth\",\"token\":...}"))?;
    let (token, positions) = match protocol::parse(&text, &state.symbols) {
        Ok(ClientMessage::Auth { token, positions }) => (token, positions),
        Ok(_) => {
            return Err(policy(
                "the first message must be {\"action\":\"auth\",\"token\":...}",
            ))
        }
        Err(e) => return Err(policy(&truncate(&e.message))),
    };
    match state.accounts.authenticate(&token).await {
        Ok(claims) if !claims.allows(suho_accounts::ApiScope::Read) => {
            Err(policy("this API key lacks the `read` scope"))
        }
        Ok(claims) => Ok((claims, SecretString::from(token), positions)),
        Err(AccountError::InvalidToken(reason)) => Err(policy(&format!("invalid token: {reason}"))),
        Err(e) => {
            tracing::error!(error = %e, "authenticating a WebSocket connection");
            Err((
                close_code::ERROR,
                "authentication is unavailable; try again".into(),
            ))
        }
    }
}

/// The time left until the token's `exp` (at most a year: an API key's claims name the far
/// future, and its revocation, not its expiry, ends the stream).
fn until_expiry(claims: &Claims) -> Duration {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(claims.exp)
        .saturating_sub(now)
        .min(Duration::from_secs(365 * 24 * 3600))
}

/// The claims of `fresh`, a token a connection of `current`'s user renews itself with.
async fn renew(state: &AppState, current: &Claims, fresh: &str) -> Result<Claims, Invalid> {
    let invalid = |message: String| Invalid {
        field: "token".into(),
        message,
    };
    match state.accounts.authenticate(fresh).await {
        Ok(c) if c.sub != current.sub => Err(invalid(
            "token: it is another user's; this connection keeps its own".into(),
        )),
        Ok(c) if !c.allows(suho_accounts::ApiScope::Read) => {
            Err(invalid("token: this API key lacks the `read` scope".into()))
        }
        Ok(c) => Ok(c),
        Err(AccountError::InvalidToken(reason)) => {
            Err(invalid(format!("token: invalid token: {reason}")))
        }
        Err(e) => {
            tracing::warn!(error = %e, "renewing a WebSocket connection's token");
            Err(invalid("token: cannot be checked now; try again".into()))
        }
    }
}

/// A close reason fits in 123 bytes.
fn truncate(text: &str) -> String {
    let mut end = text.len().min(120);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn handle(
    text: &str,
    hub: &WsHub,
    state: &AppState,
    client: &Arc<Client>,
    symbols: &mut HashSet<Symbol>,
    resumes: &mut JoinSet<()>,
) {
    let registry = &hub.inner.registry;
    match protocol::parse(text, &state.symbols) {
        Ok(ClientMessage::Subscribe(list)) => {
            registry.subscribe(client, &list);
            symbols.extend(list);
            client.push_ordered(
                protocol::control(
                    "subscribed",
                    json!({"symbols": protocol::symbol_names(symbols.iter())}),
                ),
                Channel::Control,
            );
        }
        Ok(ClientMessage::Unsubscribe(list)) => {
            registry.unsubscribe(client, &list);
            for s in &list {
                symbols.remove(s);
            }
            client.push_ordered(
                protocol::control(
                    "unsubscribed",
                    json!({"symbols": protocol::symbol_names(symbols.iter())}),
                ),
                Channel::Control,
            );
        }
        Ok(ClientMessage::Resume(positions)) => {
            if positions.is_empty() {
                let e = Invalid {
                    field: "positions".into(),
                    message: "positions: name at least one `topic:partition:offset`".into(),
                };
                client.push_ordered(protocol::error(&e), Channel::Error);
            } else {
                // A start still running is started again with these positions.
                resumes.abort_all();
                let named: Vec<_> = positions.iter().map(|p| (p.topic, p.partition)).collect();
                if client.hold(&named) {
                    resumes.spawn(start(hub.clone(), client.clone(), positions));
                    return;
                }
                let e = Invalid {
                    field: "action".into(),
                    message: "action: resume is accepted only before the connection's first user event; reconnect with `resume`".into(),
                };
                client.push_ordered(protocol::error(&e), Channel::Error);
            }
        }
        // Renewals are taken before this (`renew`).
        Ok(ClientMessage::Auth { .. }) => {}
        Err(e) => client.push_ordered(protocol::error(&e), Channel::Error),
    }
}

/// Finds where the connection starts (reading the log after `positions`, if any), then
/// releases the held live events.
async fn start(hub: WsHub, client: Arc<Client>, positions: Vec<Position>) {
    let inner = &hub.inner;
    let Ok(_permit) = inner.resumes.acquire().await else {
        return;
    };
    let r = feed::start(
        &inner.kafka,
        client.user.clone(),
        positions,
        inner.options.resume_timeout,
    )
    .await;
    match r {
        Ok(start) => client.release(&start.records, &start.read_to, &start.live_from),
        Err(e) => {
            tracing::warn!(user_id = %client.user, error = %e, "a WebSocket connection could not find its start in the log");
            client.close(CloseReason::ResumeFailed);
        }
    }
}

/// Drains the client's queues onto the socket until the connection ends, then sends the
/// close frame the reason calls for (at most 1 s: a stalled client gets its socket dropped).
async fn write(mut sink: Sink, client: Arc<Client>) {
    // Looked up once: a lookup per message showed in the fan-out's profile.
    let counter =
        |channel: &'static str| metrics::counter!(names::WS_MESSAGES_SENT, "channel" => channel);
    let (user, control, error, market_sent) = (
        counter("user"),
        counter("control"),
        counter("error"),
        counter("market"),
    );
    'serve: loop {
        let batch = client.take();
        if batch.ordered.is_empty() && batch.market.is_empty() {
            tokio::select! {
                () = client.wait() => continue,
                () = client.closed().cancelled() => break,
            }
        }
        let sent = async {
            for (message, channel) in batch.ordered {
                sink.feed(Message::Text(message)).await?;
                match channel {
                    Channel::User => &user,
                    Channel::Control => &control,
                    Channel::Error => &error,
                }
                .increment(1);
            }
            let market = batch.market.len() as u64;
            for message in batch.market {
                sink.feed(Message::Text(message)).await?;
            }
            market_sent.increment(market);
            sink.flush().await
        };
        tokio::select! {
            r = sent => if r.is_err() {
                break 'serve;
            },
            () = client.closed().cancelled() => break 'serve,
        }
    }
    let frame = match client.reason() {
        Some(CloseReason::TooSlow) => Some((TOO_SLOW, "too slow: reconnect with resume")),
        Some(CloseReason::Shutdown) => Some((close_code::AWAY, "the server is stopping")),
        Some(CloseReason::TokenExpired) => Some((
            close_code::POLICY,
            "token expired: reconnect with a new token and resume",
        )),
        Some(CloseReason::TokenRevoked) => {
            Some((close_code::POLICY, "invalid token: logged out or revoked"))
        }
        Some(CloseReason::ResumeFailed) => Some((close_code::ERROR, "resume failed; try again")),
        None => None,
    };
    if let Some((code, reason)) = frame {
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        }));
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close)).await;
    }
    let _ = tokio::time::timeout(Duration::from_millis(200), sink.close()).await;
}
