//! The stack's own behaviour with real servers: a port held by a stranger is reported by
//! name instead of a server failing obscurely, and NATS comes up, is found again through
//! its pid file, and stops.

use std::time::Duration;

use suho_stack::{free_port, Service, StackError, StackSpec};

fn spec(dir: &std::path::Path) -> StackSpec {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf();
    StackSpec {
        dir: dir.to_path_buf(),
        cache_dir: root.join(".suho").join("cache"),
        kafka_version: suho_config::Config::default().stack.kafka_version,
        kafka_heap: "256m".into(),
        kafka_port: free_port().unwrap(),
        kafka_controller_port: free_port().unwrap(),
        nats_port: free_port().unwrap(),
        nats_monitor_port: free_port().unwrap(),
        pg_port: free_port().unwrap(),
        pg_database: "suho".into(),
        pg_user: "suho".into(),
        ephemeral: true,
        die_with_parent: false,
        nats_version: suho_config::Config::default().stack.nats_version,
        secrets_dir: dir.join("secrets"),
        tls_hosts: Vec::new(),
        subject_scope: suho_security::Scope::AnyTestPrefix,
        kafka_acl_prefixes: None,
        transport: suho_config::Transport::Secured,
    }
}

#[test]
fn a_taken_port_is_reported_by_service_and_port() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path());
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    spec.nats_port = squatter.local_addr().unwrap().port();
    let tools = suho_stack::install(&spec).unwrap();
    match suho_stack::start(&spec, &tools) {
        Err(StackError::PortTaken {
            service,
            port,
            hint,
        }) => {
            assert_eq!(service, Service::Nats);
            assert_eq!(port, spec.nats_port);
            assert_eq!(hint, "SUHO__NATS__URL");
        }
        other => panic!("expected PortTaken, got {other:?}"),
    }
    let message = StackError::PortTaken {
        service: Service::Nats,
        port: 4222,
        hint: "SUHO__NATS__URL",
    }
    .to_string();
    assert!(
        message.contains("port 4222 (nats) is already in use"),
        "{message}"
    );
}

#[test]
fn status_follows_the_pid_files() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path());
    let status = suho_stack::status(&spec);
    assert!(status.iter().all(|s| s.pid.is_none() && !s.listening));
    assert!(suho_stack::stop(&spec).is_empty(), "nothing to stop");
    // A stale pid file (a process that is gone) is not taken for a running server.
    std::fs::create_dir_all(dir.path().join("run")).unwrap();
    std::fs::write(dir.path().join("run/nats.pid"), "999999\n").unwrap();
    assert!(suho_stack::status(&spec)[0].pid.is_none());
}

#[test]
fn the_stack_stops_and_starts_again_on_its_own_data() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // PostgreSQL runs as `postgres` when we are root: it must be able to enter the directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = spec(dir.path());
    let tools = suho_stack::install(&spec).unwrap();

    let mut first = suho_stack::start(&spec, &tools).unwrap();
    assert_eq!(first.started.len(), 3);
    assert!(suho_stack::status(&spec)
        .iter()
        .all(|s| s.pid.is_some() && s.listening));
    // NATS monitoring, when asked for, is HTTPS only: a plaintext request reads nothing.
    {
        use std::io::{Read, Write};
        let mut http = std::net::TcpStream::connect(("127.0.0.1", spec.nats_monitor_port)).unwrap();
        http.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        http.write_all(b"GET /connz HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        let _ = http.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            !answer.contains("200 OK") && !answer.contains("connections"),
            "{answer}"
        );
    }
    let meta = std::fs::read_to_string(dir.path().join("kafka/data/meta.properties")).unwrap();
    create_topic(&spec, "kept-across-restarts");

    // A second start finds everything running and reuses it.
    let again = suho_stack::start(&spec, &tools).unwrap();
    assert!(again.started.is_empty());
    assert_eq!(again.reused.len(), 3);

    let began = std::time::Instant::now();
    suho_stack::stop_processes(&mut first.started);
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "stopping took {:?}",
        began.elapsed()
    );
    assert!(suho_stack::status(&spec).iter().all(|s| s.pid.is_none()));

    let mut second = suho_stack::start(&spec, &tools).unwrap();
    assert_eq!(second.started.len(), 3);
    let meta_after =
        std::fs::read_to_string(dir.path().join("kafka/data/meta.properties")).unwrap();
    assert_eq!(
        meta, meta_after,
        "Kafka's log directory was not formatted again"
    );
    assert!(
        topic_exists(&spec, "kept-across-restarts"),
        "the topic survived the restart"
    );
    // Stopped by pid file, as `suho stack down` does from another process.
    let stopped = suho_stack::stop(&spec);
    assert_eq!(stopped.len(), 3);
    second.started.clear();
}

fn admin(spec: &StackSpec) -> rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> {
    let kafka = suho_config::KafkaConfig {
        bootstrap: spec.kafka_bootstrap(),
        ..suho_config::KafkaConfig::default()
    };
    let secrets = suho_security::Secrets::at(&spec.secrets_dir);
    suho_messaging::kafka::base_config(
        &suho_messaging::kafka::with_admin_login(&kafka, &secrets).unwrap(),
    )
    .create()
    .unwrap()
}

fn create_topic(spec: &StackSpec, name: &str) {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    let rt = tokio_rt();
    let created = rt
        .block_on(admin(spec).create_topics(
            &[NewTopic::new(name, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        ))
        .unwrap();
    created[0].as_ref().unwrap();
}

fn topic_exists(spec: &StackSpec, name: &str) -> bool {
    for _ in 0..50 {
        let md = admin(spec)
            .inner()
            .fetch_metadata(Some(name), Duration::from_secs(5));
        if md.is_ok_and(|m| {
            m.topics()
                .iter()
                .any(|t| t.name() == name && t.error().is_none())
        }) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
