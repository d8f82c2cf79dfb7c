//! A fake Polygon forex WebSocket: accepts connections on 127.0.0.1, runs a per-connection
//! script, and records what each client sent.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::KEY;

type Script = Arc<dyn Fn(usize, Conn) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The running fake.
pub struct FakeWs {
    pub url: String,
    connections: Arc<AtomicUsize>,
    log: Arc<Mutex<Vec<(usize, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeWs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeWs {
    /// Starts the fake; `script(connection_index, conn)` drives each connection.
    pub async fn start<F, Fut>(script: F) -> FakeWs
    where
        F: Fn(usize, Conn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let script: Script = Arc::new(move |i, c| Box::pin(script(i, c)));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("addr"));
        let connections = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (c, l) = (Arc::clone(&connections), Arc::clone(&log));
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let idx = c.fetch_add(1, Ordering::SeqCst);
                let (script, log) = (Arc::clone(&script), Arc::clone(&l));
                conns.spawn(async move {
                    if let Ok(ws) = tokio_tungstenite::accept_async(tcp).await {
                        script(idx, Conn { ws, idx, log }).await;
                    }
                });
            }
        });
        FakeWs {
            url,
            connections,
            log,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Text messages the clients sent, with their connection index.
    pub fn received(&self) -> Vec<(usize, String)> {
        self.log.lock().unwrap().clone()
    }

    /// The `params` of every subscribe message, in order.
    pub fn subscriptions(&self) -> Vec<String> {
        self.received()
            .iter()
            .filter_map(|(_, m)| {
                let v: serde_json::Value = serde_json::from_str(m).ok()?;
                (v["action"] == "subscribe").then(|| v["params"].as_str().unwrap_or("").to_owned())
            })
            .collect()
    }
}

/// One accepted connection.
pub struct Conn {
    ws: WebSocketStream<TcpStream>,
    pub idx: usize,
    log: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Conn {
    pub async fn send(&mut self, text: impl Into<String>) {
        let _ = self.ws.send(Message::text(text.into())).await;
    }

    pub async fn send_status(&mut self, status: &str, message: &str) {
        let v = serde_json::json!([{"ev": "status", "status": status, "message": message}]);
        self.send(v.to_string()).await;
    }

    /// The next text message from the client (recorded), or `None` on close / 5 s silence.
    pub async fn recv(&mut self) -> Option<String> {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .ok()??
                .ok()?;
            match msg {
                Message::Text(t) => {
                    let t = t.to_string();
                    self.log.lock().unwrap().push((self.idx, t.clone()));
                    return Some(t);
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// Polygon's handshake: `connected`, check the auth message and key (`auth_failed` and close
    /// when wrong), `auth_success`, wait for the subscribe message and confirm each channel.
    /// Returns the subscribe params, or `None` when the client failed the handshake.
    pub async fn handshake(&mut self) -> Option<String> {
        self.send_status("connected", "Connected Successfully")
            .await;
        let auth: serde_json::Value = serde_json::from_str(&self.recv().await?).ok()?;
        if auth != serde_json::json!({"action": "auth", "params": KEY}) {
            self.send_status("auth_failed", "authentication failed")
                .await;
            let _ = self.ws.close(None).await;
            return None;
        }
        self.send_status("auth_success", "authenticated").await;
        let sub: serde_json::Value = serde_json::from_str(&self.recv().await?).ok()?;
        if sub["action"] != "subscribe" {
            self.send_status("error", "expected subscribe").await;
            return None;
        }
        let params = sub["params"].as_str()?.to_owned();
        for channel in params.split(',') {
            self.send_status("success", &format!("subscribed to: {channel}"))
                .await;
        }
        Some(params)
    }

    /// Keeps the connection open (answering pings) until the client leaves.
    pub async fn hold(mut self) {
        while let Some(Ok(_)) = self.ws.next().await {}
    }

    /// Drops the TCP connection without a close frame.
    pub fn drop_abruptly(self) {
        drop(self);
    }
}

/// A quote event as Polygon writes it (prices as literal JSON number text).
pub fn quote(pair: &str, bid: &str, ask: &str, t: i64) -> String {
    format!(r#"{{"ev":"C","p":"{pair}","x":48,"a":{ask},"b":{bid},"t":{t}}}"#)
}

/// A frame of events.
pub fn frame(events: &[String]) -> String {
    format!("[{}]", events.join(","))
}
