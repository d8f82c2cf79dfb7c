//! `suho topics apply`: makes the broker's user topics match the contract (partitions,
//! retention, compaction), idempotently, and reports every difference it finds.
//!
//! Topics are created when missing. An existing topic that differs is *drift*: reported
//! always, and with `fix` repaired where Kafka allows it (configs are altered; partitions
//! can only grow, never shrink).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use suho_domain::UserTopic;

use crate::kafka::base_config;
use crate::MessagingError;

/// What the broker should hold for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTopic {
    /// Full name, prefix included.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Topic-level configs we manage.
    pub configs: Vec<(&'static str, String)>,
}

/// The contract's topics (and the dead-letter topic and the engines' journal) under `prefix`.
pub fn desired(prefix: &str) -> Vec<DesiredTopic> {
    UserTopic::ALL
        .into_iter()
        .map(|t| DesiredTopic {
            name: t.full_name(prefix),
            partitions: t.partitions(),
            configs: vec![
                ("retention.ms", t.retention_ms().to_string()),
                ("cleanup.policy", t.cleanup_policy().to_string()),
                ("unclean.leader.election.enable", "false".to_string()),
            ],
        })
        .collect()
}

/// One difference between the broker and [`desired`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// Topic name.
    pub topic: String,
    /// `partitions` or a config key.
    pub setting: String,
    /// What the contract says.
    pub want: String,
    /// What the broker has.
    pub have: String,
    /// Whether this run repaired it.
    pub fixed: bool,
}

/// The outcome of [`apply`].
#[derive(Debug, Default)]
pub struct Report {
    /// Topics created by this run.
    pub created: Vec<String>,
    /// Topics that already matched.
    pub unchanged: Vec<String>,
    /// Differences found (and whether each was fixed).
    pub drift: Vec<Drift>,
}

impl Report {
    /// Drift that is still there after this run.
    pub fn unresolved(&self) -> impl Iterator<Item = &Drift> {
        self.drift.iter().filter(|d| !d.fixed)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.created {
            writeln!(f, "created    {t}")?;
        }
        for t in &self.unchanged {
            writeln!(f, "ok         {t}")?;
        }
        for d in &self.drift {
            let state = if d.fixed { "fixed" } else { "DRIFT" };
            writeln!(
                f,
                "{state:<10} {} {}: broker has {}, contract wants {}",
                d.topic, d.setting, d.have, d.want
            )?;
        }
        Ok(())
    }
}

/// Creates missing topics and reports (with `fix`, repairs) drift on existing ones.
///
/// # Errors
/// The broker is unreachable or refuses an admin request.
pub async fn apply(config: &suho_config::KafkaConfig, fix: bool) -> Result<Report, MessagingError> {
    let admin: AdminClient<DefaultClientContext> = base_config(config).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let want = desired(&config.topic_prefix);

    let existing: HashMap<String, i32> = {
        let md = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))?;
        md.topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| {
                (
                    t.name().to_string(),
                    i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
                )
            })
            .collect()
    };

    let mut report = Report::default();
    let missing: Vec<&DesiredTopic> = want
        .iter()
        .filter(|t| !existing.contains_key(&t.name))
        .collect();
    if !missing.is_empty() {
        let new: Vec<NewTopic> = missing
            .iter()
            .map(|t| {
                t.configs.iter().fold(
                    NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(1)),
                    |nt, (k, v)| nt.set(k, v),
                )
            })
            .collect();
        for result in admin.create_topics(&new, &opts).await? {
            match result {
                Ok(name) => report.created.push(name),
                // Created meanwhile by another process: compare it like any existing one below.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(MessagingError::Admin { topic, code }),
            }
        }
    }

    let to_check: Vec<&DesiredTopic> = want
        .iter()
        .filter(|t| !report.created.contains(&t.name))
        .collect();
    if to_check.is_empty() {
        return Ok(report);
    }
    let specs: Vec<ResourceSpecifier> = to_check
        .iter()
        .map(|t| ResourceSpecifier::Topic(&t.name))
        .collect();
    let described = admin.describe_configs(&specs, &opts).await?;
    let mut grow = Vec::new();
    let mut alter = Vec::new();
    for (topic, result) in to_check.iter().zip(described) {
        let resource = result.map_err(|code| MessagingError::Admin {
            topic: topic.name.clone(),
            code,
        })?;
        let mut drifted = false;
        let have_parts = existing
            .get(&topic.name)
            .copied()
            .unwrap_or(topic.partitions);
        if have_parts != topic.partitions {
            drifted = true;
            let can_fix = fix && have_parts < topic.partitions;
            if can_fix {
                grow.push(topic);
            }
            report.drift.push(Drift {
                topic: topic.name.clone(),
                setting: "partitions".into(),
                want: topic.partitions.to_string(),
                have: have_parts.to_string(),
                fixed: can_fix,
            });
        }
        let mut config_drift = false;
        for (key, want_value) in &topic.configs {
            let have = resource
                .get(key)
                .and_then(|e| e.value.clone())
                .unwrap_or_else(|| "(unset)".into());
            if &have != want_value {
                drifted = true;
                config_drift = true;
                report.drift.push(Drift {
                    topic: topic.name.clone(),
                    setting: (*key).to_string(),
                    want: want_value.clone(),
                    have,
                    fixed: fix,
                });
            }
        }
        if config_drift && fix {
            alter.push(topic);
        }
        if !drifted {
            report.unchanged.push(topic.name.clone());
        }
    }
    if !alter.is_empty() {
        let changes: Vec<AlterConfig> = alter
            .iter()
            .map(|t| {
                t.configs.iter().fold(
                    AlterConfig::new(ResourceSpecifier::Topic(&t.name)),
                    |ac, (k, v)| ac.set(k, v),
                )
            })
            .collect();
        for r in admin.alter_configs(&changes, &opts).await? {
            r.map_err(|(resource, code)| MessagingError::Admin {
                topic: format!("{resource:?}"),
                code,
            })?;
        }
    }
    if !grow.is_empty() {
        let parts: Vec<NewPartitions> = grow
            .iter()
            .map(|t| NewPartitions::new(&t.name, usize::try_from(t.partitions).unwrap_or(1)))
            .collect();
        for r in admin.create_partitions(&parts, &opts).await? {
            r.map_err(|(topic, code)| MessagingError::Admin { topic, code })?;
        }
    }
    Ok(report)
}
