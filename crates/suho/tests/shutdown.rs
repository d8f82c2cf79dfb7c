//! `suho up` stops, and stops its servers, whatever happened to its output.
//!
//! Each test runs the release `suho up` as a child process, on free ports and a data
//! directory of its own, with stdout and stderr on pipes that the test reads and then
//! closes (as `suho up 2>&1 | tee up.log` and a Ctrl-C that also ends `tee` do, or a closed
//! terminal). It then sends a signal and requires, within 10 s, the process gone with
//! exit status 0 (the clean path, not the watchdog) and every port the run opened closed:
//! HTTP, NATS and its monitor, Kafka and its controller, PostgreSQL.
//!
//! The release binary is built by `cargo build --release --bin suho` on first use (or
//! named by `SUHO_SHUTDOWN_TEST_BIN`, to run these tests against another build). The
//! tests run one at a time: each starts a whole stack of its own.

use std::io::Read;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a stop may take, from the signal to the last port closed.
const STOP_WITHIN: Duration = Duration::from_secs(10);
/// How long `suho up` may take to serve (a first start formats Kafka and PostgreSQL).
const SERVE_WITHIN: Duration = Duration::from_secs(120);

/// The stacks are started one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The release `suho` binary.
fn release_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("SUHO_SHUTDOWN_TEST_BIN") {
            return PathBuf::from(bin);
        }
        let root = suho_testkit::workspace_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "suho"])
            .current_dir(&root)
            .status()
            .expect("running cargo build --release");
        assert!(status.success(), "cargo build --release --bin suho failed");
        root.join("target").join("release").join("suho")
    })
}

fn free_port() -> u16 {
    suho_stack::free_port().expect("a free port")
}

/// The ports of one run.
#[derive(Debug, Clone, Copy)]
struct Ports {
    http: u16,
    nats: u16,
    nats_monitor: u16,
    kafka: u16,
    kafka_controller: u16,
    postgres: u16,
}

impl Ports {
    fn pick() -> Ports {
        Ports {
            http: free_port(),
            nats: free_port(),
            nats_monitor: free_port(),
            kafka: free_port(),
            kafka_controller: free_port(),
            postgres: free_port(),
        }
    }

    fn all(&self) -> [(&'static str, u16); 6] {
        [
            ("http", self.http),
            ("nats", self.nats),
            ("nats monitor", self.nats_monitor),
            ("kafka", self.kafka),
            ("kafka controller", self.kafka_controller),
            ("postgres", self.postgres),
        ]
    }

    /// Those still taken (something listens, or holds it).
    fn open(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|&(_, port)| TcpListener::bind(("127.0.0.1", port)).is_err())
            .map(|(name, port)| format!("{name} ({port})"))
            .collect()
    }
}

/// A test's data directory, removed when the test passes (kept for a look when it fails).
struct DataDir(PathBuf);

impl std::ops::Deref for DataDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A data directory for a run (kept across the runs of one test), with the Kafka jars of
/// the other test stacks.
fn data_dir(name: &str) -> DataDir {
    let root = suho_testkit::workspace_root();
    let dir = root
        .join("target")
        .join("suho-shutdown-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join(".suho")).expect("creating the data directory");
    let cache = root.join(".suho").join("cache");
    std::fs::create_dir_all(&cache).expect("creating the shared cache");
    std::os::unix::fs::symlink(&cache, dir.join(".suho").join("cache"))
        .expect("linking the shared cache");
    // PostgreSQL runs as the `postgres` user when we are root: it must reach its directory.
    let mut up = dir.as_path();
    while let Some(parent) = up.parent() {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(up) {
            let mode = meta.permissions().mode();
            let _ = std::fs::set_permissions(up, std::fs::Permissions::from_mode(mode | 0o055));
        }
        if up == root {
            break;
        }
        up = parent;
    }
    DataDir(dir)
}

/// A running `suho up`, its output on pipes until [`Run::close_output`].
struct Run {
    child: Child,
    ports: Ports,
    dir: PathBuf,
    output: Vec<u8>,
    pipes: Option<(std::process::ChildStdout, std::process::ChildStderr)>,
    started: Instant,
}

impl Run {
    fn start(dir: &Path, ports: Ports) -> Run {
        Run::start_with(dir, ports, None)
    }

    /// [`Run::start`], with `SUHO_FAILPOINT` set to `failpoint`.
    fn start_with(dir: &Path, ports: Ports, failpoint: Option<&str>) -> Run {
        let mut cmd = Command::new(release_binary());
        match failpoint {
            Some(f) => cmd.env("SUHO_FAILPOINT", f),
            None => cmd.env_remove("SUHO_FAILPOINT"),
        };
        let mut child = cmd
            .arg("up")
            .current_dir(dir)
            .env("SUHO_CONFIG", "/nonexistent/suho.toml")
            .env("SUHO__STACK__DIR", dir.join(".suho"))
            .env("SUHO__HTTP__ADDR", format!("127.0.0.1:{}", ports.http))
            .env(
                "SUHO__NATS__URL",
                format!("nats://127.0.0.1:{}", ports.nats),
            )
            .env(
                "SUHO__STACK__NATS_MONITOR_PORT",
                ports.nats_monitor.to_string(),
            )
            .env(
                "SUHO__KAFKA__BOOTSTRAP",
                format!("127.0.0.1:{}", ports.kafka),
            )
            .env(
                "SUHO__STACK__KAFKA_CONTROLLER_PORT",
                ports.kafka_controller.to_string(),
            )
            .env(
                "SUHO__DATABASE__URL",
                format!("postgres://suho@127.0.0.1:{}/suho", ports.postgres),
            )
            .env("RUST_LOG", "info")
            .env_remove("SUHO_TEST_REUSE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting suho up");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        for fd in [stdout.as_raw_fd(), stderr.as_raw_fd()] {
            // SAFETY: fcntl on a pipe fd this process owns.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        Run {
            child,
            ports,
            dir: dir.to_path_buf(),
            output: Vec::new(),
            pipes: Some((stdout, stderr)),
            started: Instant::now(),
        }
    }

    /// Reads what the pipes hold now.
    fn drain(&mut self) {
        let Some((out, err)) = self.pipes.as_mut() else {
            return;
        };
        let mut buf = [0u8; 65536];
        for reader in [out as &mut dyn Read, err as &mut dyn Read] {
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                self.output.extend_from_slice(&buf[..n]);
            }
        }
    }

    /// Closes the read ends: from now on every write of the child fails with `EPIPE`.
    fn close_output(&mut self) {
        self.drain();
        self.pipes = None;
    }

    /// Waits (reading the output) until `GET /health` answers 200.
    async fn wait_serving(&mut self) {
        let url = format!("http://127.0.0.1:{}/health", self.ports.http);
        let http = reqwest::Client::new();
        loop {
            self.drain();
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("suho up exited before serving ({status}):\n{}", self.log());
            }
            let ok = tokio::time::timeout(Duration::from_secs(1), http.get(&url).send())
                .await
                .is_ok_and(|r| r.is_ok_and(|r| r.status().is_success()));
            if ok {
                return;
            }
            assert!(
                self.started.elapsed() < SERVE_WITHIN,
                "suho up did not serve within {SERVE_WITHIN:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sleeps until `at` after the start, reading the output meanwhile.
    async fn until(&mut self, at: Duration) {
        while self.started.elapsed() < at {
            self.drain();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(pid, sig);
        }
    }

    /// The pids the stack's pid files name now.
    fn server_pids(&self) -> Vec<(String, i32)> {
        let run = self.dir.join(".suho").join("run");
        std::fs::read_dir(run)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid = std::fs::read_to_string(e.path())
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some((e.file_name().to_string_lossy().into_owned(), pid))
            })
            .collect()
    }

    /// Sends `sig`, then requires the process gone with status 0 (the clean path, not the
    /// watchdog) and every port closed within [`STOP_WITHIN`]; returns how long that took.
    async fn stop_with(&mut self, sig: libc::c_int) -> Duration {
        let (took, status) = self.stop_within(sig).await;
        assert!(
            status.success(),
            "suho up exited with {status} after signal {sig} (the clean path exits 0)\n{}",
            self.log()
        );
        took
    }

    /// Sends `sig`, then requires the process gone and every port closed within
    /// [`STOP_WITHIN`]; returns how long that took and the exit status.
    async fn stop_within(&mut self, sig: libc::c_int) -> (Duration, std::process::ExitStatus) {
        let servers = self.server_pids();
        let signalled = Instant::now();
        self.signal(sig);
        let status = loop {
            self.drain();
            if let Some(status) = self.child.try_wait().expect("waiting for suho up") {
                break status;
            }
            assert!(
                signalled.elapsed() < STOP_WITHIN,
                "suho up still running {STOP_WITHIN:?} after signal {sig}; ports open: {:?}\n{}",
                self.ports.open(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        loop {
            let open = self.ports.open();
            let alive: Vec<&(String, i32)> = servers
                .iter()
                .filter(|(_, pid)| Path::new(&format!("/proc/{pid}")).exists() && !zombie(*pid))
                .collect();
            if open.is_empty() && alive.is_empty() {
                break;
            }
            assert!(
                signalled.elapsed() < STOP_WITHIN,
                "{STOP_WITHIN:?} after signal {sig}: ports still open {open:?}, servers alive {alive:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (signalled.elapsed(), status)
    }

    /// What the child wrote before its output was closed.
    fn log(&self) -> String {
        let text = String::from_utf8_lossy(&self.output);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

fn zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(|st| st == "Z"))
        })
        .unwrap_or(true)
}

impl Drop for Run {
    /// A failed test leaves nothing running: the child and the servers of its pid files
    /// are killed.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (_, pid) in self.server_pids() {
            // SAFETY: kill(2) on a pid our own stack's pid file names.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Starts `suho up`, waits until it serves, closes its output, sends `sig`, and checks the
/// stop.
async fn serve_close_and_stop(name: &str, sig: libc::c_int) {
    let _serial = SERIAL.lock().await;
    let dir = data_dir(name);
    let mut run = Run::start(&dir, Ports::pick());
    run.wait_serving().await;
    run.close_output();
    // Something to log after the pipe closed, before the signal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let took = run.stop_with(sig).await;
    eprintln!("{name}: stopped in {took:?}");
}

/// Starts `suho up`, closes its output and sends SIGINT `at` after the start, whatever it
/// is doing then (starting the servers, provisioning, serving).
async fn close_and_interrupt_at(name: &str, at: Duration) {
    let _serial = SERIAL.lock().await;
    let dir = data_dir(name);
    // A first run formats Kafka and PostgreSQL; the timed run starts from a stack that
    // has been up once, as a user's second `suho up` does.
    let ports = Ports::pick();
    let mut first = Run::start(&dir, ports);
    first.wait_serving().await;
    first.stop_with(libc::SIGINT).await;
    drop(first);
    let mut run = Run::start(&dir, ports);
    run.until(at.saturating_sub(Duration::from_millis(200)))
        .await;
    run.close_output();
    run.until(at).await;
    let took = run.stop_with(libc::SIGINT).await;
    eprintln!("{name}: SIGINT at {at:?}, stopped in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_with_the_output_closed_stops_suho_up_and_its_servers() {
    serve_close_and_stop("sigint", libc::SIGINT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_output_closed_stops_suho_up_and_its_servers() {
    serve_close_and_stop("sigterm", libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_the_output_closed_stops_suho_up_and_its_servers() {
    serve_close_and_stop("sighup", libc::SIGHUP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_one_second_after_start_stops_everything() {
    close_and_interrupt_at("at-1s", Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_three_seconds_after_start_stops_everything() {
    close_and_interrupt_at("at-3s", Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_ten_seconds_after_start_stops_everything() {
    close_and_interrupt_at("at-10s", Duration::from_secs(10)).await;
}

/// Registers and logs in a user; returns `(user_id, token)`.
async fn user(http: &reqwest::Client, base: &str) -> (String, String) {
    let body = serde_json::json!({"email": "inflight@example.com", "password": "correct horse"});
    let r = http
        .post(format!("{base}/api/auth/register"))
        .json(&body)
        .send()
        .await
        .expect("register");
    assert_eq!(
        r.status(),
        201,
        "register: {}",
        r.text().await.unwrap_or_default()
    );
    let r: serde_json::Value = http
        .post(format!("{base}/api/auth/login"))
        .json(&body)
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login body");
    (
        r["user_id"].as_str().expect("user_id").to_string(),
        r["access_token"].as_str().expect("token").to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_with_trades_in_flight_stops_and_loses_no_acknowledged_command() {
    let _serial = SERIAL.lock().await;
    let dir = data_dir("in-flight");
    let ports = Ports::pick();
    let base = format!("http://127.0.0.1:{}", ports.http);
    let http = reqwest::Client::new();
    let mut run = Run::start(&dir, ports);
    run.wait_serving().await;
    let (user_id, token) = user(&http, &base).await;

    // Orders keep coming, 40 a second, while the signal lands.
    let sender = {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            for _ in 0..400 {
                tick.tick().await;
                let sent = http
                    .post(format!("{base}/api/trade/open"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({"symbol": "EURUSD", "type": "BUY", "volume": 0.01}))
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                let Ok(r) = sent else { break };
                if r.status() != 202 {
                    break;
                }
                let body: serde_json::Value = r.json().await.expect("a 202 body");
                acknowledged.push(body["command_id"].as_str().expect("command_id").to_string());
            }
            acknowledged
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.close_output();
    let took = run.stop_with(libc::SIGINT).await;
    let acknowledged = sender.await.expect("the sender ends");
    eprintln!(
        "in-flight: stopped in {took:?} with {} commands acknowledged",
        acknowledged.len()
    );
    assert!(
        acknowledged.len() >= 20,
        "orders were flowing when the signal came"
    );
    drop(run);

    // The next start answers every acknowledged command exactly once.
    let mut again = Run::start(&dir, ports);
    again.wait_serving().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let outcomes = loop {
        let trades: serde_json::Value = http
            .get(format!("{base}/api/user/{user_id}/trades?from=0"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("the trade history")
            .json()
            .await
            .expect("a JSON history");
        let events = trades.as_array().cloned().unwrap_or_default();
        let mut per_command: std::collections::HashMap<String, usize> =
            std::collections::HashMap::new();
        for e in &events {
            if let Some(id) = e.get("command_id").and_then(serde_json::Value::as_str) {
                *per_command.entry(id.to_string()).or_default() += 1;
            }
        }
        if acknowledged.iter().all(|id| per_command.contains_key(id)) {
            break per_command;
        }
        assert!(
            Instant::now() < deadline,
            "after the restart, {} of {} acknowledged commands have no outcome: {}",
            acknowledged
                .iter()
                .filter(|id| !per_command.contains_key(*id))
                .count(),
            acknowledged.len(),
            trades
        );
        again.drain();
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for id in &acknowledged {
        assert_eq!(
            outcomes[id], 1,
            "command {id} was answered {} times",
            outcomes[id]
        );
    }
    again.close_output();
    again.stop_with(libc::SIGTERM).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_hangs_is_ended_by_the_watchdog_which_kills_the_servers() {
    let _serial = SERIAL.lock().await;
    let dir = data_dir("watchdog");
    // `up.stop_servers` blocks `suho up` for good just before it stops its servers, as a
    // library call that never returns would.
    let mut run = Run::start_with(&dir, Ports::pick(), Some("up.stop_servers"));
    run.wait_serving().await;
    let (took, status) = run.stop_within(libc::SIGINT).await;
    run.drain();
    let log = run.log();
    eprintln!("watchdog: ended in {took:?} with {status}");
    assert_eq!(
        status.code(),
        Some(1),
        "the watchdog exits with status 1\n{log}"
    );
    assert!(
        took >= Duration::from_secs(8),
        "the watchdog waits its 8 s first ({took:?})"
    );
    assert!(
        log.contains("suho up did not stop within 8s")
            && log.contains("still running: stopping the stack servers")
            && log.contains("killing the processes it started"),
        "the watchdog names what did not stop:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_a_hanging_stop_at_once() {
    let _serial = SERIAL.lock().await;
    let dir = data_dir("second-signal");
    let mut run = Run::start_with(&dir, Ports::pick(), Some("up.stop_servers"));
    run.wait_serving().await;
    run.close_output();
    run.signal(libc::SIGINT);
    // The stop hangs before the servers are stopped; a second signal must not wait for the
    // watchdog's 8 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (took, status) = run.stop_within(libc::SIGTERM).await;
    eprintln!("second signal: ended in {took:?} with {status}");
    assert_eq!(status.code(), Some(130), "a second signal exits with 130");
    assert!(
        took < Duration::from_secs(5),
        "the second signal ends the stop at once ({took:?})"
    );
}
