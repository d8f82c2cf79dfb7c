//! Apache Kafka in KRaft mode, broker and controller in one JVM, listening on loopback.
//! The log directory is formatted once (with a fresh cluster id) and reused after; ready
//! when the broker answers a metadata request naming itself.
//!
//! Secured as `suho_security::kafka` describes: SASL_SSL only, the controller listener
//! closed to all but the broker, the standard authorizer denying what no ACL allows. After
//! every start [`secure`] sets each identity's SCRAM-SHA-512 credential and, outside the
//! test stacks, its ACLs; a cluster from before authentication gets both in place, its data
//! untouched. A benchmark's plain stack has one plaintext listener and no authorizer.

use std::process::Command;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::producer::{BaseProducer, Producer};

use crate::process::{run, wait_ready, ManagedProcess};
use crate::{Service, StackError, StackSpec, Tools};
use std::sync::atomic::AtomicBool;

pub(crate) fn start(
    spec: &StackSpec,
    tools: &Tools,
    cancel: &AtomicBool,
) -> Result<ManagedProcess, StackError> {
    let home = spec.dir.join("kafka");
    let data = home.join("data");
    std::fs::create_dir_all(&data).map_err(|e| StackError::io(&data, e))?;
    let props = properties_file(spec);
    let listeners = if spec.secured() {
        let secrets = suho_security::Secrets::at(&spec.secrets_dir);
        // The broker reads its key and certificate from one PEM file.
        let keystore = home.join("keystore.pem");
        let mut pem = std::fs::read(secrets.server_key_file())
            .map_err(|e| StackError::io(secrets.server_key_file(), e))?;
        pem.extend(
            std::fs::read(secrets.server_cert_file())
                .map_err(|e| StackError::io(secrets.server_cert_file(), e))?,
        );
        suho_security::write_private(&keystore, &pem)?;
        suho_security::kafka::server_properties(
            &secrets,
            spec.kafka_port,
            spec.kafka_controller_port,
            &keystore,
        )?
    } else {
        suho_security::kafka::plain_server_properties(spec.kafka_port, spec.kafka_controller_port)
    };
    // It holds the broker's own passwords: private, as the secrets are.
    let text = server_properties(spec, &data.display().to_string()) + &listeners;
    suho_security::write_private(&props, text.as_bytes())?;
    let log4j = home.join("log4j2.properties");
    write(&log4j, LOG4J2)?;
    let classpath = format!("{}/*", tools.kafka_libs.display());

    if !data.join("meta.properties").exists() {
        tracing::info!(dir = %data.display(), "formatting Kafka's log directory");
        run(Command::new(&tools.java)
            .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
            .args(["-cp", &classpath, "kafka.tools.StorageTool", "format", "-g"])
            // `--cluster-id=ID`, not `-t ID`: an id starting with '-' (1 in 64) would be
            // parsed as an option.
            .arg(format!("--cluster-id={}", cluster_id()))
            .arg("-c")
            .arg(&props))?;
    }

    let mut cmd = Command::new(&tools.java);
    cmd.arg(format!("-Xms{}", spec.kafka_heap))
        .arg(format!("-Xmx{}", spec.kafka_heap))
        .args([
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
        ])
        .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
        .args(["-cp", &classpath, "kafka.Kafka"])
        .arg(&props);
    tracing::info!(port = spec.kafka_port, version = %spec.kafka_version, "starting Apache Kafka");
    let mut proc = ManagedProcess::spawn(spec, Service::Kafka, cmd)?;
    let admin = admin_config(spec)?;
    wait_ready(spec, &mut proc, cancel, Duration::from_secs(90), || {
        metadata(&admin)
    })?;
    Ok(proc)
}

/// The broker's configuration file, written at every start.
pub(crate) fn properties_file(spec: &StackSpec) -> std::path::PathBuf {
    spec.dir.join("kafka").join("server.properties")
}

/// A client of this stack's broker, logged in as the admin principal (a plain stack's: no
/// login).
fn admin_config(spec: &StackSpec) -> Result<suho_config::KafkaConfig, StackError> {
    let kafka = suho_config::KafkaConfig {
        bootstrap: spec.kafka_bootstrap(),
        ..suho_config::KafkaConfig::default()
    };
    if !spec.secured() {
        return Ok(kafka);
    }
    suho_messaging::kafka::with_admin_login(&kafka, &suho_security::Secrets::at(&spec.secrets_dir))
        .map_err(|e| StackError::KafkaSecurity(e.to_string()))
}

/// Sets every identity's SCRAM-SHA-512 credential from its password, grants the ACLs of
/// [`StackSpec::kafka_acl_prefixes`] (when set), and waits until a service can log in.
///
/// # Errors
/// The broker refused a request, or no service login worked within 30 s.
pub(crate) fn secure(spec: &StackSpec) -> Result<(), StackError> {
    use suho_security::Identity;
    let fail = |e: suho_messaging::MessagingError| StackError::KafkaSecurity(e.to_string());
    let admin = admin_config(spec)?;
    let secrets = suho_security::Secrets::at(&spec.secrets_dir);
    let mut users = Vec::new();
    for identity in Identity::ALL {
        users.push((identity.name(), secrets.password(identity)?));
    }
    suho_messaging::kafka_admin::upsert_scram(&admin, &users).map_err(fail)?;
    if let Some((topics, groups)) = &spec.kafka_acl_prefixes {
        let acls = suho_security::kafka::all_acls(topics, groups);
        suho_messaging::kafka_admin::create_acls(&admin, &acls).map_err(fail)?;
    }
    // A credential reaches the broker a moment after the controller takes it.
    let operator =
        suho_messaging::kafka::with_login(&admin, &secrets.credentials(Identity::Operator)?);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match metadata(&operator) {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(StackError::KafkaSecurity(format!(
                    "a service could not log in with its SCRAM credential: {e}"
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn write(path: &std::path::Path, text: &str) -> Result<(), StackError> {
    std::fs::write(path, text).map_err(|e| StackError::io(path, e))
}

/// Asks the broker for cluster metadata as `kafka`'s login; ready once it lists a broker.
fn metadata(kafka: &suho_config::KafkaConfig) -> Result<(), String> {
    let addr: std::net::SocketAddr = kafka.bootstrap.parse().map_err(|e| format!("{e}"))?;
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300))
        .map_err(|e| format!("port not open: {e}"))?;
    let producer: BaseProducer = suho_messaging::kafka::base_config(kafka)
        .set_log_level(RDKafkaLogLevel::Emerg)
        .create()
        .map_err(|e| e.to_string())?;
    let md = producer
        .client()
        .fetch_metadata(None, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    if md.brokers().is_empty() {
        Err("metadata lists no broker yet".into())
    } else {
        Ok(())
    }
}

/// A Kafka cluster id: 16 random bytes, base64url without padding.
fn cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut out = String::with_capacity(22);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(ALPHABET[((acc >> bits) & 63) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (6 - bits)) & 63) as usize] as char);
    }
    out
}

fn server_properties(spec: &StackSpec, log_dir: &str) -> String {
    format!(
        "# Written by suho-stack on every start.\n\
         process.roles=broker,controller\n\
         node.id=1\n\
         controller.quorum.voters=1@127.0.0.1:{controller}\n\
         log.dirs={log_dir}\n\
         num.partitions=1\n\
         default.replication.factor=1\n\
         min.insync.replicas=1\n\
         offsets.topic.replication.factor=1\n\
         offsets.topic.num.partitions=12\n\
         transaction.state.log.replication.factor=1\n\
         transaction.state.log.min.isr=1\n\
         transaction.state.log.num.partitions=12\n\
         share.coordinator.state.topic.replication.factor=1\n\
         share.coordinator.state.topic.min.isr=1\n\
         group.initial.rebalance.delay.ms=0\n\
         auto.create.topics.enable=false\n\
         unclean.leader.election.enable=false\n",
        controller = spec.kafka_controller_port,
    )
}

const LOG4J2: &str =
    "# Written by suho-stack: Kafka logs to stdout, which suho sends to logs/kafka.log.\n\
status = warn\n\
appender.console.type = Console\n\
appender.console.name = STDOUT\n\
appender.console.layout.type = PatternLayout\n\
appender.console.layout.pattern = [%d] %p %m (%c)%n\n\
rootLogger.level = INFO\n\
rootLogger.appenderRef.stdout.ref = STDOUT\n\
logger.kafka.name = kafka\n\
logger.kafka.level = INFO\n\
logger.apache.name = org.apache.kafka\n\
logger.apache.level = WARN\n\
logger.state.name = state.change.logger\n\
logger.state.level = WARN\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_are_22_base64url_chars() {
        let id = cluster_id();
        assert_eq!(id.len(), 22);
        assert!(id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(id, cluster_id());
    }
}
