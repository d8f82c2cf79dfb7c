//! Apache Kafka in KRaft mode, broker and controller in one JVM, listening on loopback.
//! The log directory is formatted once (with a fresh cluster id) and reused after; ready
//! when the broker answers a metadata request naming itself.

use std::process::Command;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;

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
    let props = home.join("server.properties");
    write(
        &props,
        &server_properties(spec, &data.display().to_string()),
    )?;
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
    let bootstrap = spec.kafka_bootstrap();
    wait_ready(spec, &mut proc, cancel, Duration::from_secs(90), || {
        metadata(&bootstrap)
    })?;
    Ok(proc)
}

fn write(path: &std::path::Path, text: &str) -> Result<(), StackError> {
    std::fs::write(path, text).map_err(|e| StackError::io(path, e))
}

/// Asks the broker for cluster metadata; ready once it lists a broker.
fn metadata(bootstrap: &str) -> Result<(), String> {
    let addr: std::net::SocketAddr = bootstrap.parse().map_err(|e| format!("{e}"))?;
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300))
        .map_err(|e| format!("port not open: {e}"))?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
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
         listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
         controller.listener.names=CONTROLLER\n\
         inter.broker.listener.name=PLAINTEXT\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
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
        port = spec.kafka_port,
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
