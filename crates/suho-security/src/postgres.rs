//! PostgreSQL's part of the identity table: the role each service logs in as, what it may do
//! to which table and function, and the SQL that makes the server agree.
//!
//! Three kinds of role:
//! - the superuser (`initdb`'s user, named by `database.url`), which only `suho stack` and the
//!   test harness use, to make the roles ([`roles_sql`]) and the database, owned by
//! - the owner ([`OWNER`]), which owns every table, function and trigger, runs the migrations
//!   and then grants ([`grants_sql`]) each
//! - service role (the identity's name) exactly its row ([`Identity::postgres`]). A service
//!   with an empty row has no role at all.
//!
//! The gateway reads the audit's and the bridge's tables only through `SECURITY DEFINER`
//! functions (the compliance queries and the candle history), never the tables themselves.

use std::fmt::Write as _;

use secrecy::ExposeSecret;

use crate::{Identity, Secrets, SecretsError, ServerPrincipal};

/// The role that owns the schema.
pub const OWNER: &str = "owner";

/// The tables, by owner crate: `suho-accounts`' migrations, `suho-audit`, `suho-bridge`.
pub mod tables {
    /// Registered users and their password hashes.
    pub const USERS: &str = "users";
    /// Logged-out access tokens until they expire.
    pub const REVOKED_TOKENS: &str = "revoked_tokens";
    /// Each user's settings.
    pub const USER_SETTINGS: &str = "user_settings";
    /// Linked MT5 accounts, passwords sealed.
    pub const MT5_ACCOUNTS: &str = "mt5_accounts";
    /// Client order ids already used.
    pub const CLIENT_ORDERS: &str = "client_orders";
    /// Events written with the change they announce, until relayed to Kafka.
    pub const EVENT_OUTBOX: &str = "event_outbox";
    /// The audit trail, append-only.
    pub const AUDIT_EVENTS: &str = "audit_events";
    /// Stored ticks.
    pub const MARKET_TICKS: &str = "market_ticks";
    /// Stored candles.
    pub const MARKET_CANDLES: &str = "market_candles";
    /// The bridge's stream cursor.
    pub const MARKET_BRIDGE_CURSOR: &str = "market_bridge_cursor";
    /// Programmatic clients' keys, hashed.
    pub const API_KEYS: &str = "api_keys";
    /// sqlx's record of the accounts migrations.
    pub const MIGRATIONS: &str = "_sqlx_migrations";

    /// Every table.
    pub const ALL: [&str; 12] = [
        USERS,
        REVOKED_TOKENS,
        USER_SETTINGS,
        MT5_ACCOUNTS,
        CLIENT_ORDERS,
        EVENT_OUTBOX,
        API_KEYS,
        AUDIT_EVENTS,
        MARKET_TICKS,
        MARKET_CANDLES,
        MARKET_BRIDGE_CURSOR,
        MIGRATIONS,
    ];
}

/// The functions a role may be granted, as `name(argument types)`.
pub mod functions {
    /// A user's audit records of some topics in a time range (the compliance query).
    pub const COMPLIANCE_USER_EVENTS: &str = "compliance_user_events(text, bigint, bigint, text[])";
    /// A user's latest JSON record on a topic.
    pub const COMPLIANCE_LATEST_EVENT: &str = "compliance_latest_event(text, text)";
    /// Stored candles of a symbol and timeframe in a time range.
    pub const MARKET_CANDLE_HISTORY: &str =
        "market_candle_history(text, text, bigint, bigint, bigint)";
    /// Creates one time partition of `market_ticks` or `market_candles`.
    pub const MARKET_CREATE_PARTITION: &str =
        "market_create_partition(text, text, timestamptz, timestamptz)";

    /// Every function, in the order above.
    pub const ALL: [&str; 4] = [
        COMPLIANCE_USER_EVENTS,
        COMPLIANCE_LATEST_EVENT,
        MARKET_CANDLE_HISTORY,
        MARKET_CREATE_PARTITION,
    ];
}

/// A table privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Privilege {
    /// `SELECT`.
    Select,
    /// `INSERT` (and `COPY .. FROM`).
    Insert,
    /// `UPDATE`.
    Update,
    /// `DELETE`.
    Delete,
}

impl Privilege {
    /// All four.
    pub const ALL: [Privilege; 4] = [
        Privilege::Select,
        Privilege::Insert,
        Privilege::Update,
        Privilege::Delete,
    ];

    /// The SQL keyword.
    #[must_use]
    pub fn sql(self) -> &'static str {
        match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Update => "UPDATE",
            Privilege::Delete => "DELETE",
        }
    }
}

/// What one role may do in the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgGrants {
    /// Tables and the privileges on each.
    pub tables: Vec<(&'static str, Vec<Privilege>)>,
    /// Sequences it may draw from (`USAGE`).
    pub sequences: Vec<&'static str>,
    /// Functions it may call (`EXECUTE`).
    pub functions: Vec<&'static str>,
    /// Whether it may make temporary tables (the bridge's staging tables).
    pub temporary: bool,
}

impl PgGrants {
    /// No table and no function: the identity gets no role.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty() && self.functions.is_empty()
    }

    /// Whether the row allows `privilege` on `table`.
    #[must_use]
    pub fn allows(&self, table: &str, privilege: Privilege) -> bool {
        self.tables
            .iter()
            .any(|(t, p)| *t == table && p.contains(&privilege))
    }
}

impl Identity {
    /// What this identity may do in the database.
    #[must_use]
    pub fn postgres(self) -> PgGrants {
        use functions::*;
        use tables::*;
        use Privilege::{Delete, Insert, Select, Update};
        let mut g = PgGrants::default();
        match self {
            Identity::Gateway => {
                g.tables = vec![
                    (USERS, vec![Select, Insert]),
                    (REVOKED_TOKENS, vec![Select, Insert, Delete]),
                    (USER_SETTINGS, vec![Select, Insert, Update]),
                    (MT5_ACCOUNTS, vec![Select, Insert, Update]),
                    (CLIENT_ORDERS, vec![Select, Insert, Delete]),
                    // The outbox and its relay.
                    (EVENT_OUTBOX, vec![Select, Insert, Delete]),
                    // Made, listed, revoked and marked used; never deleted.
                    (API_KEYS, vec![Select, Insert, Update]),
                ];
                g.sequences = vec!["event_outbox_id_seq"];
                g.functions = vec![
                    COMPLIANCE_USER_EVENTS,
                    COMPLIANCE_LATEST_EVENT,
                    MARKET_CANDLE_HISTORY,
                ];
            }
            Identity::Audit => g.tables = vec![(AUDIT_EVENTS, vec![Select, Insert])],
            Identity::Bridge => {
                g.tables = vec![
                    (MARKET_TICKS, vec![Select, Insert]),
                    (MARKET_CANDLES, vec![Select, Insert]),
                    (MARKET_BRIDGE_CURSOR, vec![Select, Insert, Update]),
                ];
                g.functions = vec![MARKET_CREATE_PARTITION, MARKET_CANDLE_HISTORY];
                g.temporary = true;
            }
            // The indicators and the strategies start from the stored candles.
            Identity::Analytics => g.functions = vec![MARKET_CANDLE_HISTORY],
            Identity::Operator => {
                g.tables = tables::ALL
                    .iter()
                    .filter(|t| **t != MIGRATIONS)
                    .map(|t| (*t, vec![Select]))
                    .collect();
                g.functions = vec![
                    COMPLIANCE_USER_EVENTS,
                    COMPLIANCE_LATEST_EVENT,
                    MARKET_CANDLE_HISTORY,
                ];
            }
            Identity::Feed
            | Identity::Ticks
            | Identity::Price
            | Identity::Signals
            | Identity::Engine
            | Identity::Agent
            | Identity::Ws => {}
        }
        g
    }
}

/// The identities with a database role.
#[must_use]
pub fn roles() -> Vec<Identity> {
    Identity::ALL
        .into_iter()
        .filter(|i| !i.postgres().is_empty())
        .collect()
}

/// `name` as a quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a quoted SQL string literal.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The superuser's script (any database): the owner's and every service's login role,
/// made if missing, with its password from `secrets` (set again on every run, so a changed
/// secret takes effect), and no power beyond logging in. The server stores the SCRAM
/// verifier only.
///
/// # Errors
/// A password is missing or unreadable.
pub fn roles_sql(secrets: &Secrets) -> Result<String, SecretsError> {
    let mut logins = vec![(
        OWNER.to_string(),
        secrets.server_password(ServerPrincipal::PostgresOwner)?,
    )];
    for identity in roles() {
        logins.push((identity.name().to_string(), secrets.password(identity)?));
    }
    // Roles get only the databases granted them: not the maintenance ones.
    let mut sql = String::from(
        "SET password_encryption = 'scram-sha-256';\n\
         REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC;\n\
         REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;\n",
    );
    for (name, password) in logins {
        let _ = writeln!(
            sql,
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {lit}) THEN \
             CREATE ROLE {id}; END IF; END $$;\n\
             ALTER ROLE {id} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION \
             NOBYPASSRLS INHERIT PASSWORD {pw};",
            lit = literal(&name),
            id = ident(&name),
            pw = literal(password.expose_secret()),
        );
    }
    Ok(sql)
}

/// The superuser's script inside `database`, after it is owned by [`OWNER`]: hands the owner
/// every table, sequence, view and function that an earlier suho made as the superuser
/// (a database from before the roles), so that the owner can grant them.
#[must_use]
pub fn adopt_sql() -> String {
    format!(
        "DO $$ DECLARE r record; BEGIN
  FOR r IN SELECT c.oid::regclass AS name, c.relkind FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
        AND pg_get_userbyid(c.relowner) <> {owner}
        -- A serial column's sequence follows its table.
        AND (c.relkind <> 'S' OR NOT EXISTS (SELECT 1 FROM pg_depend d
          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
            AND d.deptype IN ('a', 'i')))
      ORDER BY c.relkind = 'S' LOOP
    IF r.relkind = 'S' THEN
      EXECUTE format('ALTER SEQUENCE %s OWNER TO {id}', r.name);
    ELSIF r.relkind IN ('v', 'm') THEN
      EXECUTE format('ALTER %s %s OWNER TO {id}',
        CASE r.relkind WHEN 'v' THEN 'VIEW' ELSE 'MATERIALIZED VIEW' END, r.name);
    ELSE
      EXECUTE format('ALTER TABLE %s OWNER TO {id}', r.name);
    END IF;
  END LOOP;
  FOR r IN SELECT p.oid::regprocedure AS name FROM pg_proc p
      JOIN pg_namespace n ON n.oid = p.pronamespace
      WHERE n.nspname = 'public' AND pg_get_userbyid(p.proowner) <> {owner} LOOP
    EXECUTE format('ALTER FUNCTION %s OWNER TO {id}', r.name);
  END LOOP;
END $$;",
        owner = literal(OWNER),
        id = ident(OWNER),
    )
}

/// The owner's script inside `database`, after every migration: PUBLIC loses its default
/// rights (connecting, temporary tables, calling functions), each service role loses whatever
/// it had and gets exactly its row. One transaction, so no role is ever between the two.
#[must_use]
pub fn grants_sql(database: &str) -> String {
    let db = ident(database);
    let mut sql = format!(
        "BEGIN;\n\
         SELECT pg_advisory_xact_lock(7526466839133595506);\n\
         REVOKE ALL ON DATABASE {db} FROM PUBLIC;\n\
         REVOKE ALL ON SCHEMA public FROM PUBLIC;\n\
         REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC;\n\
         ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;\n"
    );
    for identity in roles() {
        let role = ident(identity.name());
        let g = identity.postgres();
        let _ = writeln!(
            sql,
            "REVOKE ALL ON DATABASE {db} FROM {role};\n\
             REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role};\n\
             REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role};\n\
             REVOKE ALL ON ALL FUNCTIONS IN SCHEMA public FROM {role};\n\
             GRANT CONNECT ON DATABASE {db} TO {role};\n\
             GRANT USAGE ON SCHEMA public TO {role};"
        );
        if g.temporary {
            let _ = writeln!(sql, "GRANT TEMPORARY ON DATABASE {db} TO {role};");
        }
        for (table, privileges) in &g.tables {
            let list: Vec<&str> = privileges.iter().map(|p| p.sql()).collect();
            let _ = writeln!(
                sql,
                "GRANT {} ON TABLE {} TO {role};",
                list.join(", "),
                ident(table)
            );
        }
        for sequence in &g.sequences {
            let _ = writeln!(
                sql,
                "GRANT USAGE ON SEQUENCE {} TO {role};",
                ident(sequence)
            );
        }
        for function in &g.functions {
            let _ = writeln!(sql, "GRANT EXECUTE ON FUNCTION {function} TO {role};");
        }
    }
    sql.push_str("COMMIT;\n");
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_identities_with_a_row_get_a_role() {
        let names: Vec<&str> = roles().iter().map(|i| i.name()).collect();
        assert_eq!(
            names,
            ["analytics", "bridge", "audit", "gateway", "operator"]
        );
    }

    #[test]
    fn the_gateway_reads_audit_and_market_data_only_through_functions() {
        let g = Identity::Gateway.postgres();
        for table in [
            tables::AUDIT_EVENTS,
            tables::MARKET_TICKS,
            tables::MARKET_CANDLES,
        ] {
            assert!(!g.tables.iter().any(|(t, _)| *t == table), "{table}");
        }
        assert!(g.functions.contains(&functions::COMPLIANCE_USER_EVENTS));
    }

    #[test]
    fn the_audit_role_only_inserts_and_selects_its_table() {
        let g = Identity::Audit.postgres();
        assert_eq!(
            g.tables,
            vec![(
                tables::AUDIT_EVENTS,
                vec![Privilege::Select, Privilege::Insert]
            )]
        );
        assert!(g.functions.is_empty());
    }

    #[test]
    fn no_service_may_write_through_the_operator() {
        let g = Identity::Operator.postgres();
        assert!(g
            .tables
            .iter()
            .all(|(_, p)| p.as_slice() == [Privilege::Select]));
    }

    #[test]
    fn names_are_quoted() {
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(literal("it's"), "'it''s'");
        assert!(grants_sql("suho").contains("GRANT CONNECT ON DATABASE \"suho\" TO \"gateway\""));
    }
}
