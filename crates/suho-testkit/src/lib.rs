//! The test harness. Integration tests talk to real servers:
//!
//! - [`stack`] starts, once per test binary, a throwaway Apache Kafka, NATS and PostgreSQL on
//!   free ports under `target/suho-test-stacks/<pid>` (killed when the test process exits),
//!   secured as `suho stack up` secures its stack: TLS, and a user per identity whose NATS
//!   permissions cover any one-token test prefix ([`suho_security::Scope::AnyTestPrefix`]).
//! - [`TestEnv::new`] gives each test its own world on that stack: a unique topic, group and
//!   subject prefix, every identity's Kafka ACLs under those prefixes, its own topics, and
//!   its own database (owned by the schema's owner, migrated, each role granted its row), so
//!   tests run in parallel and in any order. A test's database clients log in as a service
//!   ([`TestEnv::pool`]).
//!
//! `TestEnv::config.kafka` has no login: a service logs in as its own identity (its code
//! binds it), and a test's own clients say who they are ([`TestEnv::kafka`]).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use secrecy::SecretString;
use sqlx::Connection;
use suho_config::Config;

/// Addresses of the stack the tests use.
#[derive(Debug, Clone)]
pub struct TestStack {
    /// Kafka bootstrap `host:port`.
    pub kafka_bootstrap: String,
    /// NATS URL.
    pub nats_url: String,
    /// PostgreSQL's port.
    pub pg_port: u16,
    /// PostgreSQL's superuser, which creates each test's database.
    pub pg_user: String,
    /// The stack's credentials and CA (`security.secrets_dir`).
    pub secrets_dir: PathBuf,
    /// Directory of the stack's data and logs.
    pub dir: Option<PathBuf>,
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The stack for this test binary, started on first use.
///
/// # Panics
/// When the stack cannot be installed or started: the tests cannot run without it.
pub fn stack() -> &'static TestStack {
    static STACK: OnceLock<TestStack> = OnceLock::new();
    STACK.get_or_init(|| {
        suho_telemetry::init_tracing("pretty", "warn,suho=info,suho_stack=info");
        // The servers die with the thread that spawned them (PR_SET_PDEATHSIG), so spawn
        // them from a thread that lives as long as the process.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("suho-test-stack".into())
            .spawn(move || {
                let started = start_throwaway();
                let ok = started.is_ok();
                let _ = tx.send(started);
                if ok {
                    loop {
                        std::thread::park();
                    }
                }
            })
            .expect("spawning the stack thread");
        match rx.recv().expect("stack thread answered") {
            Ok(s) => s,
            Err(e) => panic!("could not start the test stack: {e}"),
        }
    })
}

fn start_throwaway() -> Result<TestStack, suho_stack::StackError> {
    // The ports are free when picked, but another process (another test binary run at the
    // same time) can take one before the servers bind it: pick again.
    let mut attempt = 1;
    loop {
        match start_throwaway_once() {
            Err(suho_stack::StackError::PortTaken { .. }) if attempt < 5 => {
                // `start` stopped what it had started; begin again from an empty directory.
                let _ = std::fs::remove_dir_all(stacks_dir().join(std::process::id().to_string()));
                attempt += 1;
            }
            started => return started,
        }
    }
}

/// Where the throwaway stacks keep their data, a directory per test process.
fn stacks_dir() -> PathBuf {
    workspace_root().join("target").join("suho-test-stacks")
}

fn start_throwaway_once() -> Result<TestStack, suho_stack::StackError> {
    let root = workspace_root();
    let stacks = stacks_dir();
    remove_dead_stacks(&stacks);
    let dir = stacks.join(std::process::id().to_string());
    let port = || suho_stack::free_port().expect("a free port");
    let spec = suho_stack::StackSpec {
        dir: dir.clone(),
        cache_dir: root.join(".suho").join("cache"),
        kafka_version: Config::default().stack.kafka_version,
        kafka_heap: "512m".into(),
        kafka_port: port(),
        kafka_controller_port: port(),
        nats_port: port(),
        nats_monitor_port: port(),
        pg_port: port(),
        pg_database: "suho".into(),
        pg_user: "suho".into(),
        ephemeral: true,
        die_with_parent: true,
        nats_version: Config::default().stack.nats_version,
        secrets_dir: dir.join("secrets"),
        tls_hosts: Vec::new(),
        // Every test has a one-token prefix of its own.
        subject_scope: suho_security::Scope::AnyTestPrefix,
        kafka_acl_prefixes: None,
        transport: suho_config::Transport::Secured,
    };
    let tools = suho_stack::install(&spec)?;
    let started = suho_stack::start(&spec, &tools)?;
    // The processes are ours until the test binary exits; PR_SET_PDEATHSIG ends them then.
    std::mem::forget(started);
    Ok(TestStack {
        kafka_bootstrap: spec.kafka_bootstrap(),
        nats_url: spec.nats_url(),
        pg_port: spec.pg_port,
        pg_user: spec.pg_user.clone(),
        secrets_dir: spec.secrets_dir.clone(),
        dir: Some(dir),
    })
}

impl TestStack {
    /// Connection settings for `database` as the stack's PostgreSQL superuser, over TLS
    /// checked against the stack's CA.
    ///
    /// # Panics
    /// The superuser's password is missing.
    #[must_use]
    pub fn admin_options(&self, database: &str) -> sqlx::postgres::PgConnectOptions {
        use secrecy::ExposeSecret;
        let secrets = suho_security::Secrets::at(&self.secrets_dir);
        let password = secrets
            .server_password(suho_security::ServerPrincipal::PostgresAdmin)
            .expect("the stack's PostgreSQL superuser password");
        sqlx::postgres::PgConnectOptions::new()
            .host("127.0.0.1")
            .port(self.pg_port)
            .username(&self.pg_user)
            .password(password.expose_secret())
            .database(database)
            .ssl_mode(sqlx::postgres::PgSslMode::VerifyFull)
            .ssl_root_cert(secrets.ca_file())
    }
}

/// Deletes the directories of earlier test runs whose process is gone.
fn remove_dead_stacks(stacks: &Path) {
    let Ok(entries) = std::fs::read_dir(stacks) else {
        let _ = std::fs::create_dir_all(stacks);
        return;
    };
    for e in entries.flatten() {
        let alive = e
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// One test's isolated world on the shared stack.
pub struct TestEnv {
    /// A configuration pointing at the stack with this test's prefixes and database.
    pub config: Config,
    /// The unique prefix (`t<hex>.`) of this test's topics, groups and subjects.
    pub prefix: String,
    /// This test's database name.
    pub database: String,
}

impl TestEnv {
    /// A fresh environment: unique prefixes, the contract's topics created under the
    /// prefix, and an empty database.
    ///
    /// # Panics
    /// When the stack is unusable: the test cannot run.
    pub async fn new() -> TestEnv {
        let stack = stack();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("t{}.", &id[..12]);
        let database = format!("suho_test_{}", &id[..16]);

        let mut admin = sqlx::PgConnection::connect_with(&stack.admin_options("postgres"))
            .await
            .expect("connecting to the test PostgreSQL as its superuser");
        sqlx::query(&format!(
            "CREATE DATABASE \"{database}\" OWNER \"{}\"",
            suho_security::postgres::OWNER
        ))
        .execute(&mut admin)
        .await
        .expect("creating the test database");
        let _ = admin.close().await;

        let mut config = Config::default();
        config.stack.manage = false;
        // Files the platform keeps (the JWT key, model state) go to this test's own directory.
        config.stack.dir = stack
            .dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .join("envs")
            .join(&prefix[..prefix.len() - 1]);
        config.kafka.bootstrap.clone_from(&stack.kafka_bootstrap);
        config.kafka.topic_prefix.clone_from(&prefix);
        config.kafka.group_prefix.clone_from(&prefix);
        config.nats.url.clone_from(&stack.nats_url);
        config.security.secrets_dir = Some(stack.secrets_dir.clone());
        config.nats.subject_prefix.clone_from(&prefix);
        config.database.url =
            SecretString::from(format!("postgres://127.0.0.1:{}/{database}", stack.pg_port));
        config.http.addr = "127.0.0.1:0".parse().expect("loopback address");
        config.auth.jwt_secret = Some(SecretString::from(format!("test-secret-{id}")));
        config.telemetry.heartbeat_interval_ms = 500;
        config.telemetry.lag_interval_ms = 1000;
        // JetStream reserves a stream's cap on disk up front; many platforms at once under
        // the default 1 GiB would exhaust a small disk's store.
        config.market.bridge_buffer_bytes = 32 << 20;

        // Every identity's ACLs under this test's prefixes, granted by the stack's admin.
        let admin = suho_messaging::kafka::with_admin_login(
            &config.kafka,
            &suho_security::Secrets::at(&stack.secrets_dir),
        )
        .expect("the stack's Kafka admin login");
        let acls = suho_security::kafka::all_acls(&prefix, &prefix);
        tokio::task::spawn_blocking(move || {
            suho_messaging::kafka_admin::create_acls(&admin, &acls)
        })
        .await
        .expect("the ACL thread")
        .expect("granting this test's Kafka ACLs");
        let operator = bind_kafka(&config, suho_security::Identity::Operator);
        let report = suho_messaging::topics::apply(&operator, false)
            .await
            .expect("creating this test's topics");
        assert_eq!(
            report.created.len(),
            suho_messaging::topics::desired(&prefix).len()
        );
        wait_for_topics(&operator, &prefix);
        suho_database::migrate(&config)
            .await
            .expect("migrating this test's database as its owner");
        TestEnv {
            config,
            prefix,
            database,
        }
    }
}

impl TestEnv {
    /// This test's Kafka settings, logged in as `identity`: what that service may do, the
    /// broker allows; the rest it refuses.
    ///
    /// # Panics
    /// The identity's credentials are missing.
    #[must_use]
    pub fn kafka(&self, identity: suho_security::Identity) -> suho_config::KafkaConfig {
        bind_kafka(&self.config, identity)
    }

    /// This test's Kafka settings logged in as the stack's admin principal, a super user: for
    /// a test that plays the world around a service (seeding the topics that several services
    /// write), never for a service under test.
    ///
    /// # Panics
    /// The admin password is missing.
    #[must_use]
    pub fn admin_kafka(&self) -> suho_config::KafkaConfig {
        suho_messaging::kafka::with_admin_login(
            &self.config.kafka,
            &suho_security::Secrets::at(self.config.secrets_dir()),
        )
        .expect("the stack's Kafka admin login")
    }

    /// A pool on this test's database logged in as `identity`'s role: what that service may
    /// do, the server allows; the rest it refuses with `permission denied`.
    ///
    /// # Panics
    /// The identity has no role, or the login is refused.
    pub async fn pool(&self, identity: suho_security::Identity) -> sqlx::PgPool {
        suho_database::pool(&self.config, identity)
            .await
            .unwrap_or_else(|e| panic!("connecting to PostgreSQL as `{identity}`: {e}"))
    }

    /// A pool on this test's database logged in as the schema's owner: for a test that
    /// plays the operator's migrations or checks what only the owner may do.
    ///
    /// # Panics
    /// The login is refused.
    pub async fn owner_pool(&self) -> sqlx::PgPool {
        suho_database::pool_of(&self.config, suho_database::Login::Owner, 4)
            .await
            .unwrap_or_else(|e| panic!("connecting to PostgreSQL as the owner: {e}"))
    }

    /// A NATS connection as `identity`, with this test's subject prefix: what that service
    /// may do, the server allows; the rest it refuses.
    ///
    /// # Panics
    /// The connection is refused.
    pub async fn bus(&self, identity: suho_security::Identity) -> suho_messaging::MarketBus {
        suho_messaging::MarketBus::connect(&self.config, identity)
            .await
            .unwrap_or_else(|e| panic!("connecting to NATS as `{identity}`: {e}"))
    }
}

fn bind_kafka(config: &Config, identity: suho_security::Identity) -> suho_config::KafkaConfig {
    suho_messaging::kafka::bind(config, identity)
        .unwrap_or_else(|e| panic!("Kafka credentials of `{identity}`: {e}"))
}

/// Waits until the broker's metadata lists every topic of `prefix` (creation reaches the
/// metadata cache asynchronously).
fn wait_for_topics(kafka: &suho_config::KafkaConfig, prefix: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = suho_messaging::kafka::base_config(kafka)
        .create()
        .expect("a metadata client");
    let want = suho_messaging::topics::desired(prefix);
    for _ in 0..200 {
        if let Ok(md) = consumer.fetch_metadata(None, std::time::Duration::from_secs(5)) {
            let ready = want.iter().all(|w| {
                md.topics().iter().any(|t| {
                    t.name() == w.name
                        && t.error().is_none()
                        && i32::try_from(t.partitions().len()).is_ok_and(|n| n == w.partitions)
                })
            });
            if ready {
                return;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("topics of {prefix} did not appear in the broker's metadata");
}
