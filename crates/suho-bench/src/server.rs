//! Throwaway servers on free loopback ports, for runs that name no server: a bare
//! `nats-server` (the stack's pinned release; optionally with JetStream, its store in a temporary directory) and a
//! PostgreSQL cluster in a temporary directory. Stopped, and their files removed, when the
//! guard drops.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A `nats-server` child process; killed and reaped on drop.
pub(crate) struct ThrowawayNats {
    child: Child,
    url: String,
    /// The JetStream store, or a secured server's secrets and configuration, removed after
    /// the server.
    _store: Option<tempfile::TempDir>,
    /// A secured server's credentials: every identity's password and the CA.
    secrets: Option<suho_security::Secrets>,
}

impl ThrowawayNats {
    /// Starts `nats-server` (the stack's pinned release, built into its cache when missing)
    /// on a free port and waits until it accepts connections (at most 10 s).
    pub(crate) fn start(stack: &StackOptions) -> anyhow::Result<Self> {
        Self::start_with(stack, None)
    }

    /// Like [`ThrowawayNats::start`], with JetStream enabled and its store in a fresh
    /// temporary directory.
    pub(crate) fn start_jetstream(stack: &StackOptions) -> anyhow::Result<Self> {
        let store = tempfile::Builder::new()
            .prefix("suho-bench-js-")
            .tempdir()
            .context("creating a JetStream store directory")?;
        Self::start_with(stack, Some(store))
    }

    /// Like [`ThrowawayNats::start`], secured as `suho stack up` secures its own: TLS
    /// required (a fresh local CA), one user per service identity with the identity table's
    /// permissions for any one-token subject prefix, no anonymous connection.
    pub(crate) fn start_secured(stack: &StackOptions) -> anyhow::Result<Self> {
        let binary = nats_binary(stack)?;
        let dir = tempfile::Builder::new()
            .prefix("suho-bench-nats-")
            .tempdir()
            .context("creating a directory for the secured nats-server")?;
        let secrets = suho_security::Secrets::ensure(dir.path().join("secrets"), &[])
            .context("making the secured nats-server's secrets")?;
        let port = free_port()?;
        let mut conf = format!("listen: 127.0.0.1:{port}\nmax_payload: 1MB\n");
        conf.push_str(
            &suho_security::nats::server_config(&secrets, &suho_security::Scope::AnyTestPrefix)
                .context("the secured nats-server's users")?,
        );
        let conf_path = dir.path().join("nats.conf");
        suho_security::write_private(&conf_path, conf.as_bytes())
            .context("writing the secured nats-server's configuration")?;
        let mut cmd = Command::new(binary);
        cmd.arg("-c").arg(&conf_path);
        Self::run(cmd, port, "tls", Some(dir), Some(secrets))
    }

    /// A secured server's credentials (`None` for a plain one).
    pub(crate) fn secrets(&self) -> Option<&suho_security::Secrets> {
        self.secrets.as_ref()
    }

    fn start_with(stack: &StackOptions, store: Option<tempfile::TempDir>) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut cmd = Command::new(nats_binary(stack)?);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        if let Some(dir) = &store {
            cmd.arg("-js").arg("-sd").arg(dir.path());
        }
        Self::run(cmd, port, "nats", store, None)
    }

    /// Runs `cmd`, a `nats-server` that listens on `port`, with its output discarded, and
    /// waits until it accepts connections; the guard keeps `dir` and `secrets` until the
    /// server is gone.
    fn run(
        mut cmd: Command,
        port: u16,
        scheme: &str,
        dir: Option<tempfile::TempDir>,
        secrets: Option<suho_security::Secrets>,
    ) -> anyhow::Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server")?;
        let mut server = Self {
            child,
            url: format!("{scheme}://127.0.0.1:{port}"),
            _store: dir,
            secrets,
        };
        wait_listening(&mut server.child, "nats-server", port)?;
        Ok(server)
    }

    /// The server's URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ThrowawayNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The stack's pinned `nats-server`, built into its cache when missing.
fn nats_binary(stack: &StackOptions) -> anyhow::Result<PathBuf> {
    suho_stack::build_nats(&stack.cache_dir, &stack.nats_version).context("the pinned nats-server")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port())
}

/// Waits until `port` accepts connections (at most 10 s), failing early if `child` exits.
fn wait_listening(child: &mut Child, what: &str, port: u16) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited before listening: {status}");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on {addr} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A PostgreSQL cluster of its own (`initdb` in a temporary directory, trust authentication,
/// loopback only, no Unix socket), with the server's default settings (`fsync` and
/// `synchronous_commit` on). Runs as the `postgres` system user when we are root, since
/// PostgreSQL refuses to run as root. Fast shutdown, then removal of the files, on drop.
pub(crate) struct ThrowawayPostgres {
    child: Child,
    url: String,
    dir: Option<tempfile::TempDir>,
}

/// The superuser `initdb` creates.
const PG_USER: &str = "suho";

impl ThrowawayPostgres {
    /// Initialises a cluster and starts it on a free port; waits until it accepts connections.
    pub(crate) fn start() -> anyhow::Result<Self> {
        let bin = pg_bin().context(
            "PostgreSQL binaries not found under /usr/lib/postgresql (`suho stack install` installs them)",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("suho-bench-pg-")
            .tempdir()
            .context("creating a PostgreSQL directory")?;
        let owner = server_user()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .context("handing the PostgreSQL directory to the postgres user")?;
        }
        let data = dir.path().join("data");
        let out = as_owner(Command::new(bin.join("initdb")), owner)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                PG_USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let port = free_port()?;
        let child = as_owner(Command::new(bin.join("postgres")), owner)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting postgres")?;
        let mut server = Self {
            child,
            url: format!("postgres://{PG_USER}@127.0.0.1:{port}/postgres"),
            dir: Some(dir),
        };
        wait_listening(&mut server.child, "postgres", port)?;
        // It listens before it accepts sessions ("the database system is starting up").
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["-U", PG_USER, "-d", "postgres"])
                .status()
                .context("running pg_isready")?;
            if ready.success() {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                bail!("postgres exited while starting: {status}");
            }
            if Instant::now() > deadline {
                bail!("postgres did not accept connections within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// URL of the `postgres` database, as the superuser.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: backends end, then the postmaster.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// The newest `/usr/lib/postgresql/<major>/bin` holding a server.
fn pg_bin() -> Option<PathBuf> {
    std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((major, bin))
        })
        .max_by_key(|(major, _)| *major)
        .map(|(_, bin)| bin)
}

/// `(uid, gid)` of the `postgres` system user when we are root; `None` runs as ourselves.
fn server_user() -> anyhow::Result<Option<(u32, u32)>> {
    use std::os::unix::fs::MetadataExt;
    // `/proc/self` belongs to the effective user of this process.
    let euid = std::fs::metadata("/proc/self")
        .context("reading /proc/self")?
        .uid();
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let mut f = line.split(':');
            (f.next()? == "postgres").then_some(())?;
            let (_, uid, gid) = (f.next()?, f.next()?.parse().ok()?, f.next()?.parse().ok()?);
            Some(Some((uid, gid)))
        })
        .context("PostgreSQL refuses to run as root and there is no `postgres` system user")
}

fn as_owner(mut cmd: Command, owner: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Where a `ThrowawayStack` finds Kafka's jars and how it runs Kafka.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Downloaded Kafka jars (`<stack.dir>/cache`, shared with `suho stack up` and the tests).
    pub cache_dir: PathBuf,
    /// Apache Kafka version (`stack.kafka_version`).
    pub kafka_version: String,
    /// Kafka's JVM heap (`stack.kafka_heap`).
    pub kafka_heap: String,
    /// The `nats-server` release (`stack.nats_version`).
    pub nats_version: String,
}

impl StackOptions {
    /// The cache, Kafka version and heap, and `nats-server` release of `config`'s stack.
    #[must_use]
    pub fn from_config(config: &suho_config::Config) -> StackOptions {
        StackOptions {
            cache_dir: config.stack.dir.join("cache"),
            kafka_version: config.stack.kafka_version.clone(),
            kafka_heap: config.stack.kafka_heap.clone(),
            nats_version: config.stack.nats_version.clone(),
        }
    }
}

/// A whole suho stack of its own (Apache Kafka in KRaft mode, `nats-server`, PostgreSQL),
/// started by `suho_stack` as `suho stack up` starts it, on free loopback ports, with every
/// file in a temporary directory. The servers are started, and stopped, by one thread that
/// lives as long as the guard: they die with that thread (`PR_SET_PDEATHSIG`), so a crashed
/// run leaves none behind. Stopped, and the files removed, on drop.
pub(crate) struct ThrowawayStack {
    kafka_bootstrap: String,
    nats_url: String,
    database_url: String,
    secrets_dir: PathBuf,
    transport: suho_config::Transport,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: Option<tempfile::TempDir>,
}

impl ThrowawayStack {
    /// Installs what is missing (as `suho stack install`), starts the three servers and waits
    /// until each is ready, secured as `suho stack up` secures its own, or plain (no TLS, no
    /// logins, no permissions) for the figures security is measured against. Blocking
    /// (Kafka takes some seconds).
    pub(crate) fn start(
        opts: &StackOptions,
        transport: suho_config::Transport,
    ) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("suho-bench-stack-")
            .tempdir()
            .context("creating the stack directory")?;
        // PostgreSQL runs as the `postgres` user when we are root: it must reach its directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .context("opening the stack directory to the postgres user")?;
        let port = || suho_stack::free_port().context("finding a free port");
        let spec = suho_stack::StackSpec {
            dir: dir.path().to_path_buf(),
            cache_dir: std::path::absolute(&opts.cache_dir)
                .unwrap_or_else(|_| opts.cache_dir.clone()),
            kafka_version: opts.kafka_version.clone(),
            kafka_heap: opts.kafka_heap.clone(),
            kafka_port: port()?,
            kafka_controller_port: port()?,
            nats_port: port()?,
            nats_monitor_port: port()?,
            pg_port: port()?,
            pg_database: "suho".into(),
            pg_user: "suho".into(),
            ephemeral: false,
            die_with_parent: true,
            nats_version: opts.nats_version.clone(),
            secrets_dir: dir.path().join("secrets"),
            tls_hosts: Vec::new(),
            // The bench's runs each take a one-token prefix of their own.
            subject_scope: suho_security::Scope::AnyTestPrefix,
            kafka_acl_prefixes: None,
            transport,
        };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread_spec = spec.clone();
        let thread = std::thread::Builder::new()
            .name("suho-bench-stack".into())
            .spawn(move || {
                let started = suho_stack::install(&thread_spec)
                    .and_then(|tools| suho_stack::start(&thread_spec, &tools));
                let mut started = match started {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                // Until the guard drops (or its sender is gone).
                let _ = stop_rx.recv();
                suho_stack::stop_processes(&mut started.started);
            })
            .context("spawning the stack thread")?;
        let mut stack = Self {
            kafka_bootstrap: spec.kafka_bootstrap(),
            nats_url: spec.nats_url(),
            // The services log in as their own roles; the URL names the server and database.
            database_url: format!("postgres://127.0.0.1:{}/{}", spec.pg_port, spec.pg_database),
            secrets_dir: spec.secrets_dir.clone(),
            transport,
            stop: Some(stop_tx),
            thread: Some(thread),
            dir: Some(dir),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(stack),
            Ok(Err(e)) => {
                stack.stop = None;
                Err(e).context("starting a throwaway Kafka, NATS and PostgreSQL")
            }
            Err(_) => bail!("the stack thread ended without starting the stack"),
        }
    }

    /// Kafka's `host:port`.
    pub(crate) fn kafka_bootstrap(&self) -> &str {
        &self.kafka_bootstrap
    }

    /// The NATS URL.
    pub(crate) fn nats_url(&self) -> &str {
        &self.nats_url
    }

    /// The stack's credentials and CA.
    pub(crate) fn secrets_dir(&self) -> &std::path::Path {
        &self.secrets_dir
    }

    /// The URL of the stack's (empty) `suho` database, owned by the schema's owner.
    pub(crate) fn database_url(&self) -> &str {
        &self.database_url
    }

    /// Secured, or plain.
    pub(crate) fn transport(&self) -> suho_config::Transport {
        self.transport
    }
}

impl Drop for ThrowawayStack {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}
