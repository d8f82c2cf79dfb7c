//! `nats-server` with JetStream enabled, listening on loopback, TLS required and one user per
//! identity with the permissions of the identity table ([`suho_security::nats`]); no
//! anonymous connection (a benchmark's plain stack: none of that). Ready when it greets a
//! client with `INFO`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use crate::process::{wait_ready, ManagedProcess};
use crate::{Service, StackError, StackSpec, Tools};
use std::sync::atomic::AtomicBool;

pub(crate) fn start(
    spec: &StackSpec,
    tools: &Tools,
    cancel: &AtomicBool,
) -> Result<ManagedProcess, StackError> {
    let home = spec.dir.join("nats");
    let store = home.join("jetstream");
    std::fs::create_dir_all(&store).map_err(|e| StackError::io(&store, e))?;
    let conf = home.join("nats.conf");
    let mut text = format!(
        "# Written by suho-stack on every start, from the identity table.\n\
         listen: 127.0.0.1:{port}\n\
         server_name: suho\n\
         max_payload: 1MB\n\
         jetstream {{\n  store_dir: \"{store}\"\n}}\n",
        port = spec.nats_port,
        store = store.display(),
    );
    // Monitoring has no authentication of its own: only when asked for, and over TLS (the
    // `tls` block below serves it too); a plain stack has no TLS, and nothing to protect.
    if spec.nats_monitor_port != 0 {
        let scheme = if spec.secured() { "https" } else { "http" };
        text.push_str(&format!("{scheme}: 127.0.0.1:{}\n", spec.nats_monitor_port));
    }
    if spec.secured() {
        text.push_str(&suho_security::nats::server_config(
            &spec.secrets(),
            &spec.subject_scope,
        )?);
    }
    suho_security::write_private(&conf, text.as_bytes())?;
    let mut cmd = Command::new(&tools.nats_server);
    cmd.arg("-c").arg(&conf);
    tracing::info!(port = spec.nats_port, "starting nats-server");
    let mut proc = ManagedProcess::spawn(spec, Service::Nats, cmd)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], spec.nats_port));
    wait_ready(spec, &mut proc, cancel, Duration::from_secs(20), || {
        greets(addr)
    })?;
    Ok(proc)
}

/// Connects and reads the server's first line, which must be `INFO {...}`.
fn greets(addr: SocketAddr) -> Result<(), String> {
    let stream =
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.starts_with("INFO ") {
        Ok(())
    } else {
        Err(format!("unexpected greeting: {line:?}"))
    }
}
