//! Kafka's side of the identity table: what each identity may produce and consume, in which
//! consumer groups and under which transactional ids, as ACLs; and the broker's listeners,
//! logins and authorizer, generated from the same secrets.
//!
//! Every service logs in with SASL/SCRAM-SHA-512 over TLS as its [`Identity`]. The broker's
//! own two principals ([`ServerPrincipal`]) log in with `PLAIN` over TLS from passwords in the
//! broker's configuration: they are the super users, so they exist before any SCRAM
//! credential does (on a fresh cluster and on one upgraded from before authentication alike).

use secrecy::ExposeSecret;
use suho_domain::UserTopic;

use crate::{Identity, Secrets, SecretsError, ServerPrincipal};

/// The consumer groups and transactional ids of the services, before the group prefix: one
/// home, read by the services and by the ACLs.
pub mod names {
    /// The trading engine's command consumer group; also the prefix of its other groups and
    /// of its transactional ids (`trading-engine-{instance}`).
    pub const ENGINE: &str = "trading-engine";
    /// The trading engine's `user.settings` reader (risk limits).
    pub const ENGINE_SETTINGS: &str = "trading-engine-settings";
    /// The group id of the engine's rebuild reader (assigned, never joined).
    pub const ENGINE_REBUILD: &str = "suho-engine-rebuild";
    /// The auto-trading agent's `user.settings` reader.
    pub const AGENT: &str = "agent";
    /// The audit service's consumer group.
    pub const AUDIT: &str = "audit";
    /// The group id of the compliance query's direct read of the log (assigned, never joined).
    pub const AUDIT_HISTORY: &str = "suho-audit-history";
    /// The prefix of the gateway `/ws` readers' group ids (assigned, never joined).
    pub const WS: &str = "gateway-ws-";
}

/// The SASL mechanism of every service's login.
pub const SERVICE_MECHANISM: &str = "SCRAM-SHA-512";
/// The SASL mechanism of the broker's own principals.
pub const SERVER_MECHANISM: &str = "PLAIN";

/// A Kafka resource type an ACL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// A topic.
    Topic,
    /// A consumer group.
    Group,
    /// A transactional id.
    TransactionalId,
    /// The cluster (`kafka-cluster`).
    Cluster,
}

/// How an ACL's resource name matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pattern {
    /// Exactly this name (`*` is every name).
    Literal,
    /// Every name starting with this one.
    Prefixed,
}

/// An operation an ACL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    /// Consume (topics), join or commit (groups); implies `Describe`.
    Read,
    /// Produce (topics), use (transactional ids); implies `Describe`.
    Write,
    /// Create topics.
    Create,
    /// Add partitions to topics.
    Alter,
    /// Read topic settings.
    DescribeConfigs,
    /// Change topic settings.
    AlterConfigs,
    /// See (topics, groups, the cluster).
    Describe,
}

impl Operation {
    /// Every operation, in declaration order.
    pub const ALL: [Operation; 7] = [
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Alter,
        Operation::DescribeConfigs,
        Operation::AlterConfigs,
        Operation::Describe,
    ];
}

/// One allow rule for one identity, from any host. Nothing else is allowed
/// (`allow.everyone.if.no.acl.found=false`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Acl {
    /// The principal's user name (`User:{principal}`).
    pub principal: &'static str,
    /// What kind of resource.
    pub resource: Resource,
    /// How `name` matches.
    pub pattern: Pattern,
    /// The resource name or prefix.
    pub name: String,
    /// What is allowed on it.
    pub operation: Operation,
}

/// What one identity may do on Kafka, for one deployment's (or one test's) prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaGrants {
    /// Topics it consumes.
    pub read: Vec<UserTopic>,
    /// Topics it produces to.
    pub write: Vec<UserTopic>,
    /// Consumer groups it uses (full names or prefixes).
    pub groups: Vec<(Pattern, String)>,
    /// Transactional ids it uses (full names or prefixes).
    pub transactional_ids: Vec<(Pattern, String)>,
    /// It reads every topic and group and administers topics (create, add partitions,
    /// settings): the operator.
    pub administers: bool,
}

impl Identity {
    /// What this identity may do on Kafka, with groups and transactional ids under
    /// `group_prefix` (topics are named without their prefix).
    #[must_use]
    pub fn kafka(self, group_prefix: &str) -> KafkaGrants {
        use UserTopic as T;
        let group = |name: &str| (Pattern::Literal, format!("{group_prefix}{name}"));
        let mut g = KafkaGrants::default();
        match self {
            Identity::Engine => {
                g.read = vec![
                    T::Commands,
                    T::Settings,
                    T::Trades,
                    T::Transactions,
                    T::EngineJournal,
                ];
                g.write = vec![
                    T::Trades,
                    T::Mt5Status,
                    T::RiskAlerts,
                    T::Transactions,
                    T::CommandsDlq,
                    T::EngineJournal,
                ];
                g.groups = vec![
                    group(names::ENGINE),
                    group(names::ENGINE_SETTINGS),
                    (Pattern::Literal, names::ENGINE_REBUILD.into()),
                ];
                g.transactional_ids = vec![(
                    Pattern::Prefixed,
                    format!("{group_prefix}{}-", names::ENGINE),
                )];
            }
            Identity::Agent => {
                g.read = vec![T::Settings];
                g.write = vec![T::Commands];
                g.groups = vec![group(names::AGENT)];
            }
            Identity::Audit => {
                g.read = T::CONTRACT.to_vec();
                g.groups = vec![group(names::AUDIT)];
            }
            // The HTTP API and its outbox relay: commands, and the auth and settings events.
            Identity::Gateway => g.write = vec![T::Commands, T::Auth, T::Settings],
            Identity::Ws => {
                g.read = vec![T::Trades, T::Mt5Status, T::RiskAlerts, T::Transactions];
                g.groups = vec![(Pattern::Prefixed, format!("{group_prefix}{}", names::WS))];
            }
            Identity::Operator => {
                g.read = T::ALL.to_vec();
                g.groups = vec![prefix_or_all(group_prefix)];
                g.administers = true;
            }
            Identity::Feed
            | Identity::Ticks
            | Identity::Price
            | Identity::Analytics
            | Identity::Signals
            | Identity::Bridge => {}
        }
        g
    }

    /// This identity's ACLs (see [`Identity::kafka`]).
    #[must_use]
    pub fn acls(self, topic_prefix: &str, group_prefix: &str) -> Vec<Acl> {
        let g = self.kafka(group_prefix);
        let principal = self.name();
        let acl = |resource, (pattern, name): (Pattern, String), operation| Acl {
            principal,
            resource,
            pattern,
            name,
            operation,
        };
        let topic = |t: &UserTopic| (Pattern::Literal, t.full_name(topic_prefix));
        let mut out = Vec::new();
        if g.administers {
            for op in [
                Operation::Read,
                Operation::Create,
                Operation::Alter,
                Operation::DescribeConfigs,
                Operation::AlterConfigs,
            ] {
                out.push(acl(Resource::Topic, prefix_or_all(topic_prefix), op));
            }
            out.push(acl(
                Resource::Cluster,
                (Pattern::Literal, "kafka-cluster".into()),
                Operation::Describe,
            ));
        } else {
            out.extend(
                g.read
                    .iter()
                    .map(|t| acl(Resource::Topic, topic(t), Operation::Read)),
            );
        }
        out.extend(
            g.write
                .iter()
                .map(|t| acl(Resource::Topic, topic(t), Operation::Write)),
        );
        out.extend(
            g.groups
                .into_iter()
                .map(|n| acl(Resource::Group, n, Operation::Read)),
        );
        out.extend(
            g.transactional_ids
                .into_iter()
                .map(|n| acl(Resource::TransactionalId, n, Operation::Write)),
        );
        out
    }
}

/// Every identity's ACLs, for one deployment's (or one test's) prefixes.
#[must_use]
pub fn all_acls(topic_prefix: &str, group_prefix: &str) -> Vec<Acl> {
    Identity::ALL
        .into_iter()
        .flat_map(|i| i.acls(topic_prefix, group_prefix))
        .collect()
}

/// Every name under `prefix`: a prefixed pattern, or the wildcard when there is no prefix.
fn prefix_or_all(prefix: &str) -> (Pattern, String) {
    if prefix.is_empty() {
        (Pattern::Literal, "*".into())
    } else {
        (Pattern::Prefixed, prefix.into())
    }
}

/// The broker's listeners and security settings, for `server.properties`: `CLIENT` (SASL_SSL,
/// SCRAM-SHA-512 for the services, PLAIN for the broker's own principals) on `port`, and
/// `CONTROLLER` (SASL_SSL, PLAIN, the broker alone) on `controller_port`; the standard
/// authorizer with nothing allowed that no ACL allows. `keystore` is the PEM file of the
/// server's key and certificate.
///
/// # Errors
/// A server principal's password cannot be read.
pub fn server_properties(
    secrets: &Secrets,
    port: u16,
    controller_port: u16,
    keystore: &std::path::Path,
) -> Result<String, SecretsError> {
    let broker = ServerPrincipal::KafkaBroker;
    let admin = ServerPrincipal::KafkaAdmin;
    let broker_pw = secrets.server_password(broker)?;
    let admin_pw = secrets.server_password(admin)?;
    let plain = |users: &[(ServerPrincipal, &str)]| {
        let mut s = format!(
            "org.apache.kafka.common.security.plain.PlainLoginModule required username=\"{}\" password=\"{}\"",
            broker.name(),
            broker_pw.expose_secret()
        );
        for (p, pw) in users {
            s.push_str(&format!(" user_{}=\"{pw}\"", p.name()));
        }
        s.push(';');
        s
    };
    let client_plain = plain(&[
        (broker, broker_pw.expose_secret()),
        (admin, admin_pw.expose_secret()),
    ]);
    let controller_plain = plain(&[(broker, broker_pw.expose_secret())]);
    Ok(format!(
        "listeners=CLIENT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}\n\
         advertised.listeners=CLIENT://127.0.0.1:{port}\n\
         listener.security.protocol.map=CLIENT:SASL_SSL,CONTROLLER:SASL_SSL\n\
         inter.broker.listener.name=CLIENT\n\
         controller.listener.names=CONTROLLER\n\
         sasl.mechanism.inter.broker.protocol={SERVER_MECHANISM}\n\
         sasl.mechanism.controller.protocol={SERVER_MECHANISM}\n\
         listener.name.client.sasl.enabled.mechanisms={SERVICE_MECHANISM},{SERVER_MECHANISM}\n\
         listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;\n\
         listener.name.client.plain.sasl.jaas.config={client_plain}\n\
         listener.name.controller.sasl.enabled.mechanisms={SERVER_MECHANISM}\n\
         listener.name.controller.plain.sasl.jaas.config={controller_plain}\n\
         ssl.keystore.type=PEM\n\
         ssl.keystore.location={keystore}\n\
         ssl.truststore.type=PEM\n\
         ssl.truststore.location={ca}\n\
         ssl.endpoint.identification.algorithm=https\n\
         authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n\
         allow.everyone.if.no.acl.found=false\n\
         super.users=User:{broker};User:{admin}\n",
        keystore = keystore.display(),
        ca = secrets.ca_file().display(),
        broker = broker.name(),
        admin = admin.name(),
    ))
}

/// The listener settings of a benchmark's plain broker (`suho_config::Transport::Plain`):
/// the same two listeners as [`server_properties`], in plaintext, with no SASL and no
/// authorizer, so that the benchmark can show what [`server_properties`] costs.
#[must_use]
pub fn plain_server_properties(port: u16, controller_port: u16) -> String {
    format!(
        "listeners=CLIENT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}\n\
         advertised.listeners=CLIENT://127.0.0.1:{port}\n\
         listener.security.protocol.map=CLIENT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
         inter.broker.listener.name=CLIENT\n\
         controller.listener.names=CONTROLLER\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn may(identity: Identity, resource: Resource, name: &str, op: Operation) -> bool {
        identity.acls("", "").iter().any(|a| {
            a.resource == resource
                && (a.operation == op
                    || (op == Operation::Describe
                        && matches!(a.operation, Operation::Read | Operation::Write)))
                && match a.pattern {
                    Pattern::Literal => a.name == name || a.name == "*",
                    Pattern::Prefixed => name.starts_with(&a.name),
                }
        })
    }

    fn writers(topic: UserTopic) -> Vec<Identity> {
        Identity::ALL
            .into_iter()
            .filter(|i| may(*i, Resource::Topic, topic.name(), Operation::Write))
            .collect()
    }

    fn readers(topic: UserTopic) -> Vec<Identity> {
        Identity::ALL
            .into_iter()
            .filter(|i| may(*i, Resource::Topic, topic.name(), Operation::Read))
            .collect()
    }

    #[test]
    fn commands_come_only_from_the_gateway_and_the_agent_and_only_the_engine_writes_outcomes() {
        assert_eq!(
            writers(UserTopic::Commands),
            [Identity::Agent, Identity::Gateway]
        );
        for t in [
            UserTopic::Trades,
            UserTopic::Mt5Status,
            UserTopic::RiskAlerts,
            UserTopic::Transactions,
            UserTopic::CommandsDlq,
            UserTopic::EngineJournal,
        ] {
            assert_eq!(writers(t), [Identity::Engine], "{t:?}");
        }
        assert_eq!(
            readers(UserTopic::EngineJournal),
            [Identity::Engine, Identity::Operator]
        );
        assert_eq!(writers(UserTopic::Auth), [Identity::Gateway]);
        assert_eq!(
            readers(UserTopic::Commands),
            [Identity::Engine, Identity::Audit, Identity::Operator]
        );
        assert!(!may(
            Identity::Gateway,
            Resource::Topic,
            "user.trades",
            Operation::Read
        ));
        assert!(!may(
            Identity::Operator,
            Resource::Topic,
            "user.commands",
            Operation::Write
        ));
    }

    #[test]
    fn only_the_engine_has_transactional_ids() {
        for i in Identity::ALL {
            let has = may(
                i,
                Resource::TransactionalId,
                "trading-engine-engine-1",
                Operation::Write,
            );
            assert_eq!(has, i == Identity::Engine, "{i}");
        }
    }

    #[test]
    fn a_prefix_scopes_every_name() {
        for a in all_acls("t1.", "t1.") {
            if a.name == names::ENGINE_REBUILD || a.resource == Resource::Cluster {
                continue;
            }
            assert!(a.name.starts_with("t1."), "{a:?}");
        }
    }
}
