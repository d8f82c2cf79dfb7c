//! suho's local stack: real Apache Kafka (KRaft, one JVM), a real `nats-server` and a
//! real PostgreSQL, installed only where missing and run on 127.0.0.1 with every byte of
//! data under one directory.
//!
//! - [`install`] finds or installs the tools: `nats-server`, PostgreSQL and a JRE from
//!   apt, Maven from apt, Apache Kafka's jars from Maven Central (a pinned version).
//! - [`StackSpec`] says where things live and which ports they use.
//! - [`start`] starts whatever is not already running and waits for real readiness
//!   (a NATS `INFO`, `pg_isready`, a Kafka metadata answer), never a sleep.
//! - [`stop`] and [`status`] work from pid files, so `suho stack down` can stop a stack
//!   that another process started.
//!
//! Everything here is synchronous: it runs once at start-up or from the CLI.

mod install;
mod kafka;
mod nats;
mod postgres;
mod process;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

pub use install::{build_nats, install, Tools};
pub use process::{kill_children, ManagedProcess, STOP_GRACE};

/// Why the stack could not be installed, started or stopped. Each message says what is
/// missing or wrong and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A prerequisite is missing and could not be installed.
    #[error("missing prerequisite: {what}. {hint}")]
    Missing {
        /// The missing thing.
        what: String,
        /// How to get it.
        hint: String,
    },
    /// A port the stack needs is held by a process that is not ours.
    #[error("port {port} ({service}) is already in use by another process; stop it, or choose another port ({hint})")]
    PortTaken {
        /// The service that wanted the port.
        service: Service,
        /// The port.
        port: u16,
        /// Which setting moves the port.
        hint: &'static str,
    },
    /// A command we ran failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line, without secrets.
        command: String,
        /// Its exit status and the tail of its output.
        detail: String,
    },
    /// A service started but did not become ready, or exited.
    #[error("{service} did not become ready within {waited:?}: {detail} (log: {log})")]
    NotReady {
        /// The service.
        service: Service,
        /// How long we waited.
        waited: Duration,
        /// What we saw last.
        detail: String,
        /// Its log file.
        log: String,
    },
    /// The start was cancelled (a signal) while `service` was starting; what this call had
    /// started is stopped again.
    #[error("cancelled while {service} was starting")]
    Cancelled {
        /// The service that was starting.
        service: Service,
    },
    /// The credentials or certificates could not be made or read.
    #[error(transparent)]
    Secrets(#[from] suho_security::SecretsError),
    /// The broker did not take the services' SCRAM credentials or ACLs.
    #[error("securing Kafka: {0}")]
    KafkaSecurity(String),
    /// File-system trouble under the stack directory.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl StackError {
    pub(crate) fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        StackError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// One of the three servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// `nats-server`.
    Nats,
    /// PostgreSQL.
    Postgres,
    /// Apache Kafka (broker and controller in one JVM).
    Kafka,
}

impl Service {
    /// All of them, in start order.
    pub const ALL: [Service; 3] = [Service::Nats, Service::Postgres, Service::Kafka];

    /// Lower-case name, used for pid and log files.
    pub fn name(self) -> &'static str {
        match self {
            Service::Nats => "nats",
            Service::Postgres => "postgres",
            Service::Kafka => "kafka",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the stack lives and how it listens.
#[derive(Debug, Clone)]
pub struct StackSpec {
    /// Data, logs and pid files.
    pub dir: PathBuf,
    /// Downloaded jars (shared by every stack of this checkout).
    pub cache_dir: PathBuf,
    /// Apache Kafka version from Maven Central.
    pub kafka_version: String,
    /// JVM heap for Kafka.
    pub kafka_heap: String,
    /// Kafka client port.
    pub kafka_port: u16,
    /// Kafka KRaft controller port.
    pub kafka_controller_port: u16,
    /// NATS client port.
    pub nats_port: u16,
    /// NATS monitoring port.
    pub nats_monitor_port: u16,
    /// PostgreSQL port.
    pub pg_port: u16,
    /// Database created on first start.
    pub pg_database: String,
    /// Superuser created by `initdb`.
    pub pg_user: String,
    /// Trade durability for speed (fsync off); for throwaway test stacks only.
    pub ephemeral: bool,
    /// Kill the servers when the process that started them dies (test harnesses).
    pub die_with_parent: bool,
    /// The `nats-server` release to build and run.
    pub nats_version: String,
    /// The services' credentials, the local CA and the servers' certificate (made on first
    /// start, see [`suho_security::Secrets`]).
    pub secrets_dir: PathBuf,
    /// Names the servers' certificate carries besides the loopback ones.
    pub tls_hosts: Vec<String>,
    /// The subjects the NATS permissions cover: the deployment's prefix, or any test prefix.
    pub subject_scope: suho_security::Scope,
    /// The Kafka topic and group prefixes the stack grants each identity's ACLs under, at
    /// every start; `None` for a test stack, where each test grants its own prefixes.
    pub kafka_acl_prefixes: Option<(String, String)>,
    /// Secured (TLS, logins, permissions: what `suho stack up` always runs), or plain: the
    /// same servers with security taken out, only for a benchmark's throwaway stack that
    /// measures its cost ([`suho_config::Transport`]).
    pub transport: suho_config::Transport,
}

impl StackSpec {
    /// The stack a [`suho_config::Config`] describes: ports from the service URLs,
    /// data under `stack.dir`.
    ///
    /// # Errors
    /// A service address in the config has no usable port.
    pub fn from_config(
        config: &suho_config::Config,
    ) -> Result<StackSpec, suho_config::ConfigError> {
        use secrecy::ExposeSecret;
        let db = url_path_and_user(config.database.url.expose_secret());
        // Absolute, so that the servers (which get other working directories) and Maven
        // (which resolves against its POM's directory) see the same paths.
        let dir =
            std::path::absolute(&config.stack.dir).unwrap_or_else(|_| config.stack.dir.clone());
        Ok(StackSpec {
            cache_dir: dir.join("cache"),
            dir,
            kafka_version: config.stack.kafka_version.clone(),
            kafka_heap: config.stack.kafka_heap.clone(),
            kafka_port: config.kafka_port()?,
            kafka_controller_port: config.stack.kafka_controller_port,
            nats_port: config.nats_port()?,
            nats_monitor_port: config.stack.nats_monitor_port,
            pg_port: config.database_port()?,
            pg_database: db.0,
            pg_user: db.1,
            ephemeral: false,
            die_with_parent: false,
            nats_version: config.stack.nats_version.clone(),
            secrets_dir: std::path::absolute(config.secrets_dir())
                .unwrap_or_else(|_| config.secrets_dir()),
            tls_hosts: config.security.tls_hosts.clone(),
            subject_scope: suho_security::Scope::Prefix(config.nats.subject_prefix.clone()),
            kafka_acl_prefixes: Some((
                config.kafka.topic_prefix.clone(),
                config.kafka.group_prefix.clone(),
            )),
            transport: config.security.transport,
        })
    }

    pub(crate) fn log_file(&self, service: Service) -> PathBuf {
        self.dir
            .join("logs")
            .join(format!("{}.log", service.name()))
    }

    pub(crate) fn pid_file(&self, service: Service) -> PathBuf {
        self.dir.join("run").join(format!("{}.pid", service.name()))
    }

    /// The `host:port` Kafka clients use.
    pub fn kafka_bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    /// The NATS URL clients use (TLS is required by the server; clients verify it against
    /// the local CA); `nats://` on a plain stack.
    pub fn nats_url(&self) -> String {
        let scheme = match self.transport {
            suho_config::Transport::Secured => "tls",
            suho_config::Transport::Plain => "nats",
        };
        format!("{scheme}://127.0.0.1:{}", self.nats_port)
    }

    /// Whether the servers run secured (every stack but a benchmark's plain one).
    pub(crate) fn secured(&self) -> bool {
        self.transport == suho_config::Transport::Secured
    }

    /// The secrets the servers are configured with.
    pub fn secrets(&self) -> suho_security::Secrets {
        suho_security::Secrets::at(&self.secrets_dir)
    }

    /// A PostgreSQL URL for `database` on this stack.
    pub fn database_url(&self, database: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            self.pg_user, self.pg_port, database
        )
    }
}

/// `(database, user)` of a PostgreSQL URL, with suho's defaults where absent.
fn url_path_and_user(raw: &str) -> (String, String) {
    let rest = raw.split_once("://").map_or(raw, |(_, r)| r);
    let (auth_host, path) = rest.split_once('/').unwrap_or((rest, "suho"));
    let user = auth_host
        .split_once('@')
        .map(|(auth, _)| auth.split(':').next().unwrap_or("suho"))
        .filter(|u| !u.is_empty())
        .unwrap_or("suho");
    let db = path
        .split('?')
        .next()
        .filter(|d| !d.is_empty())
        .unwrap_or("suho");
    (db.to_string(), user.to_string())
}

/// What [`start`] did.
#[derive(Debug, Default)]
pub struct Started {
    /// Services this call started (and so may stop).
    pub started: Vec<ManagedProcess>,
    /// Services that were already running and were reused.
    pub reused: Vec<Service>,
}

/// Starts every service that is not already running and waits until each is ready.
/// A service already running from this `spec.dir` (per its pid file) is reused.
///
/// # Errors
/// A port held by a stranger, a failed `initdb` or Kafka format, or a server that exits
/// or does not become ready in time; on error, what this call started is stopped again.
pub fn start(spec: &StackSpec, tools: &Tools) -> Result<Started, StackError> {
    start_cancellable(spec, tools, &AtomicBool::new(false))
}

/// [`start`], which gives up when `cancel` is set (checked while it waits for a server to
/// become ready): it then stops what it started and returns [`StackError::Cancelled`].
///
/// # Errors
/// As [`start`], and [`StackError::Cancelled`].
pub fn start_cancellable(
    spec: &StackSpec,
    tools: &Tools,
    cancel: &AtomicBool,
) -> Result<Started, StackError> {
    for sub in ["logs", "run"] {
        let d = spec.dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| StackError::io(&d, e))?;
    }
    suho_security::Secrets::ensure(&spec.secrets_dir, &spec.tls_hosts)?;
    let mut out = Started::default();
    for service in Service::ALL {
        if let Some(pid) = process::running_pid(spec, service) {
            if outdated(spec, service, pid, tools) {
                // A server from before this build's settings (Debian's nats-server, which
                // knew no users or TLS): replace it rather than leave it open.
                tracing::warn!(%service, pid, "an older build is running; restarting it as this one");
                stop_processes(&mut vec![ManagedProcess::adopt(spec, service, pid)]);
            } else {
                tracing::info!(%service, "already running, reusing it");
                out.reused.push(service);
                continue;
            }
        }
        let result = check_port_free(spec, service).and_then(|()| match service {
            Service::Nats => nats::start(spec, tools, cancel),
            Service::Postgres => postgres::start(spec, tools, cancel),
            Service::Kafka => kafka::start(spec, tools, cancel),
        });
        match result {
            Ok(proc) => out.started.push(proc),
            Err(e) => {
                stop_processes(&mut out.started);
                return Err(e);
            }
        }
    }
    // Every start, a reused broker's too: a password made since, or an identity added, is
    // in place before any service logs in. (A plain stack's broker has no logins; its
    // database still has the services' roles, which the grants name.)
    let kafka = || {
        if spec.secured() {
            kafka::secure(spec)
        } else {
            Ok(())
        }
    };
    if let Err(e) = kafka().and_then(|()| postgres::secure(spec, tools)) {
        stop_processes(&mut out.started);
        return Err(e);
    }
    Ok(out)
}

/// Whether the running server `pid` is another build than the one this stack runs (only
/// NATS's binary has changed: it is built from a pinned release).
fn outdated(spec: &StackSpec, service: Service, pid: u32, tools: &Tools) -> bool {
    match service {
        Service::Nats => {
            let ours = std::fs::canonicalize(&tools.nats_server).unwrap_or_default();
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe != ours)
        }
        // A broker started before authentication: its configuration (written when it
        // started) has no SASL_SSL listener.
        Service::Kafka => std::fs::read_to_string(kafka::properties_file(spec))
            .is_ok_and(|p| p.contains("SASL_SSL") != spec.secured()),
        // A server started before authentication: it runs on initdb's own pg_hba.conf
        // (trust), since ours did not exist.
        Service::Postgres => !postgres::hba_file(spec).exists(),
    }
}

fn check_port_free(spec: &StackSpec, service: Service) -> Result<(), StackError> {
    let ports: &[(u16, &'static str)] = match service {
        Service::Nats => &[
            (spec.nats_port, "SUHO__NATS__URL"),
            (spec.nats_monitor_port, "SUHO__STACK__NATS_MONITOR_PORT"),
        ],
        Service::Postgres => &[(spec.pg_port, "SUHO__DATABASE__URL")],
        Service::Kafka => &[
            (spec.kafka_port, "SUHO__KAFKA__BOOTSTRAP"),
            (
                spec.kafka_controller_port,
                "SUHO__STACK__KAFKA_CONTROLLER_PORT",
            ),
        ],
    };
    for &(port, hint) in ports {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            return Err(StackError::PortTaken {
                service,
                port,
                hint,
            });
        }
    }
    Ok(())
}

/// Stops the given processes (started by this process), all at once: each gets
/// [`STOP_GRACE`] to stop cleanly, then is killed. Returns those still running after that
/// (none, unless a SIGKILL did not take).
pub fn stop_processes(procs: &mut Vec<ManagedProcess>) -> Vec<Service> {
    for p in procs.iter() {
        p.signal_stop();
    }
    let deadline = Instant::now() + STOP_GRACE;
    let mut left = Vec::new();
    for p in procs.iter_mut() {
        let grace = deadline.saturating_duration_since(Instant::now());
        if !p.wait_or_kill(grace) {
            left.push(p.service);
        }
    }
    procs.clear();
    left
}

/// Stops every service of `spec.dir` that its pid file says is running, whoever started it.
pub fn stop(spec: &StackSpec) -> Vec<Service> {
    let mut procs: Vec<ManagedProcess> = Service::ALL
        .into_iter()
        .filter_map(|s| {
            process::running_pid(spec, s).map(|pid| ManagedProcess::adopt(spec, s, pid))
        })
        .collect();
    let stopped = procs.iter().map(|p| p.service).collect();
    stop_processes(&mut procs);
    stopped
}

/// One line of `suho stack status`.
#[derive(Debug, Clone)]
pub struct ServiceStatus {
    /// Which service.
    pub service: Service,
    /// Its pid when our pid file names a live process.
    pub pid: Option<u32>,
    /// Its client port.
    pub port: u16,
    /// Whether something accepts connections on that port.
    pub listening: bool,
}

/// The state of each service of `spec.dir`.
pub fn status(spec: &StackSpec) -> Vec<ServiceStatus> {
    Service::ALL
        .into_iter()
        .map(|service| {
            let port = match service {
                Service::Nats => spec.nats_port,
                Service::Postgres => spec.pg_port,
                Service::Kafka => spec.kafka_port,
            };
            ServiceStatus {
                service,
                pid: process::running_pid(spec, service),
                port,
                listening: std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_millis(300),
                )
                .is_ok(),
            }
        })
        .collect()
}

/// A free TCP port on 127.0.0.1 (for test stacks).
///
/// # Errors
/// The OS refused to bind any port.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port())
}

/// The last `n` lines of a log file, for error messages.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_and_user_come_from_the_url() {
        assert_eq!(
            url_path_and_user("postgres://suho@127.0.0.1:5432/suho"),
            ("suho".into(), "suho".into())
        );
        assert_eq!(
            url_path_and_user("postgres://bob:pw@127.0.0.1:5432/trading?sslmode=disable"),
            ("trading".into(), "bob".into())
        );
        assert_eq!(
            url_path_and_user("postgres://127.0.0.1:5432"),
            ("suho".into(), "suho".into())
        );
    }
}
