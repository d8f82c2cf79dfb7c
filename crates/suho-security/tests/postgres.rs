//! The identity table, enforced by the real PostgreSQL of the test stack: each service's role
//! may do to each table and function what its row allows and is refused (`permission
//! denied`, SQLSTATE 42501) the rest; only the owner may change a table or its triggers;
//! anonymous, wrong-password, plaintext and row-less logins are refused.
//!
//! The expectations below are written out by hand, not derived from the table, so that a
//! change to the table that opens or closes a privilege fails here until it is meant.

use std::collections::BTreeSet;

use sqlx::postgres::{PgConnectOptions, PgPool, PgSslMode};
use sqlx::Connection;
use suho_security::postgres::{functions, roles, tables, Privilege};
use suho_security::Identity;
use suho_testkit::TestEnv;

use Privilege::{Delete, Insert, Select, Update};

/// What each role may do to each table, by hand.
fn may(identity: Identity, table: &str) -> BTreeSet<&'static str> {
    let p: &[Privilege] = match (identity, table) {
        (Identity::Gateway, "users") => &[Select, Insert],
        (Identity::Gateway, "revoked_tokens" | "client_orders" | "event_outbox") => {
            &[Select, Insert, Delete]
        }
        (Identity::Gateway, "user_settings" | "mt5_accounts" | "api_keys") => {
            &[Select, Insert, Update]
        }
        (Identity::Audit, "audit_events") => &[Select, Insert],
        (Identity::Bridge, "market_ticks" | "market_candles") => &[Select, Insert],
        (Identity::Bridge, "market_bridge_cursor") => &[Select, Insert, Update],
        (Identity::Operator, t) if t != "_sqlx_migrations" => &[Select],
        _ => &[],
    };
    p.iter().map(|p| p.sql()).collect()
}

/// Which functions each role may call, by hand.
fn may_call(identity: Identity, function: &str) -> bool {
    let name = function.split('(').next().unwrap_or_default();
    match identity {
        Identity::Gateway | Identity::Operator => matches!(
            name,
            "compliance_user_events" | "compliance_latest_event" | "market_candle_history"
        ),
        Identity::Bridge => matches!(name, "market_create_partition" | "market_candle_history"),
        Identity::Analytics => name == "market_candle_history",
        _ => false,
    }
}

fn denied(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "42501")
}

/// Whether `pool` may run `sql`: it runs in a transaction that is rolled back, and any answer
/// but `permission denied` (success, a NOT NULL violation, a raised exception) means allowed.
async fn allowed(pool: &PgPool, sql: &str) -> bool {
    let mut tx = pool.begin().await.expect("a transaction");
    let result = sqlx::raw_sql(sql).execute(&mut *tx).await;
    let _ = tx.rollback().await;
    match result {
        Ok(_) => true,
        Err(e) if denied(&e) => false,
        Err(_) => true,
    }
}

/// `SELECT name(NULL::type, ...)` for a signature `name(type, ...)`.
fn call(signature: &str) -> String {
    let (name, args) = signature.split_once('(').expect("a signature");
    let args: Vec<String> = args
        .trim_end_matches(')')
        .split(',')
        .map(|a| format!("NULL::{}", a.trim()))
        .collect();
    format!("SELECT {name}({})", args.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_may_do_its_row_and_is_denied_the_rest() {
    let env = TestEnv::new().await;
    let owner = env.owner_pool().await;
    let mut first_column = Vec::new();
    for table in tables::ALL {
        let column: String = sqlx::query_scalar(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::regclass AND attnum = 1",
        )
        .bind(table)
        .fetch_one(&owner)
        .await
        .unwrap_or_else(|e| panic!("{table} exists after the migrations: {e}"));
        first_column.push((table, column));
    }
    let mut checks = 0;
    let mut wrong = Vec::new();
    for identity in roles() {
        let pool = env.pool(identity).await;
        for (table, column) in &first_column {
            let want = may(identity, table);
            for privilege in Privilege::ALL {
                let sql = match privilege {
                    Select => format!("SELECT 1 FROM {table} LIMIT 0"),
                    Insert => format!("INSERT INTO {table} DEFAULT VALUES"),
                    Update => format!("UPDATE {table} SET {column} = NULL WHERE false"),
                    Delete => format!("DELETE FROM {table} WHERE false"),
                };
                let got = allowed(&pool, &sql).await;
                checks += 1;
                if got != want.contains(privilege.sql()) {
                    wrong.push(format!("{identity}: {sql} -> allowed={got}"));
                }
            }
        }
        for function in functions::ALL {
            let got = allowed(&pool, &call(function)).await;
            checks += 1;
            if got != may_call(identity, function) {
                wrong.push(format!("{identity}: {function} -> allowed={got}"));
            }
        }
        pool.close().await;
    }
    assert!(
        wrong.is_empty(),
        "{} of {checks} checks wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(checks, 5 * (12 * 4 + 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_changes_tables_and_triggers() {
    let env = TestEnv::new().await;
    let audit = env.pool(Identity::Audit).await;
    for sql in [
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only",
        "DROP TRIGGER audit_events_append_only ON audit_events",
        "DROP TABLE audit_events",
        "UPDATE audit_events SET user_id = 'x'",
        "DELETE FROM audit_events",
    ] {
        assert!(!allowed(&audit, sql).await, "audit: {sql}");
    }
    // No service may make a table, a function or a temporary table it was not granted.
    for identity in [Identity::Gateway, Identity::Audit, Identity::Operator] {
        let pool = env.pool(identity).await;
        for sql in [
            "CREATE TABLE probe (a int)",
            "CREATE FUNCTION probe() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "CREATE TEMP TABLE probe (a int)",
            "DROP TABLE users",
        ] {
            assert!(!allowed(&pool, sql).await, "{identity}: {sql}");
        }
    }
    // The bridge makes partitions only through the owner's function, and only its own.
    let bridge = env.pool(Identity::Bridge).await;
    assert!(
        !allowed(
            &bridge,
            "CREATE TABLE market_ticks_19990101 PARTITION OF market_ticks \
         FOR VALUES FROM ('1999-01-01') TO ('1999-01-02')"
        )
        .await
    );
    let err =
        sqlx::query("SELECT market_create_partition('users', 'users_20240101', now(), now())")
            .execute(&bridge)
            .await
            .expect_err("not a market table");
    assert!(err.to_string().contains("not a market partition"), "{err}");
    // The owner may (in a transaction rolled back).
    let owner = env.owner_pool().await;
    let mut tx = owner.begin().await.expect("a transaction");
    sqlx::query("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        .execute(&mut *tx)
        .await
        .expect("the owner may");
    tx.rollback().await.expect("rollback");
}

/// `env`'s database as `user` with `password`, over verified TLS unless `ssl` says otherwise.
fn login(env: &TestEnv, user: &str, password: &str, ssl: PgSslMode) -> PgConnectOptions {
    suho_database::base_options(&env.config)
        .expect("the test's database URL")
        .username(user)
        .password(password)
        .ssl_mode(ssl)
        .ssl_root_cert(suho_security::Secrets::at(env.config.secrets_dir()).ca_file())
}

fn sqlstate(e: &sqlx::Error) -> String {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.to_string())
        .unwrap_or_else(|| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_wrong_password_plaintext_and_rowless_logins_are_refused() {
    let env = TestEnv::new().await;
    let secrets = suho_security::Secrets::at(env.config.secrets_dir());
    let gateway = secrets.password(Identity::Gateway).expect("a password");
    let pw = secrecy::ExposeSecret::expose_secret(&gateway).to_string();
    // The right login works.
    sqlx::PgConnection::connect_with(&login(&env, "gateway", &pw, PgSslMode::VerifyFull))
        .await
        .expect("the gateway logs in");
    // Anonymous: no user name at all (28000, invalid_authorization_specification).
    let err = sqlx::PgConnection::connect_with(&login(&env, "", "", PgSslMode::VerifyFull))
        .await
        .expect_err("anonymous is refused");
    assert_eq!(sqlstate(&err), "28000", "{err}");
    // 28P01: invalid_password.
    for (user, password) in [("gateway", "wrong"), ("gateway", ""), ("nobody", "x")] {
        let err =
            sqlx::PgConnection::connect_with(&login(&env, user, password, PgSslMode::VerifyFull))
                .await
                .expect_err("refused");
        assert_eq!(sqlstate(&err), "28P01", "{user:?}/{password:?}: {err}");
    }
    // An identity with no row has no role: its own password does not log it in.
    let engine = secrets.password(Identity::Engine).expect("a password");
    let err = sqlx::PgConnection::connect_with(&login(
        &env,
        "engine",
        secrecy::ExposeSecret::expose_secret(&engine),
        PgSslMode::VerifyFull,
    ))
    .await
    .expect_err("no role");
    assert_eq!(sqlstate(&err), "28P01", "{err}");
    // Plaintext, even with the right password: no pg_hba.conf line (28000).
    let err = sqlx::PgConnection::connect_with(&login(&env, "gateway", &pw, PgSslMode::Disable))
        .await
        .expect_err("plaintext is refused");
    assert_eq!(sqlstate(&err), "28000", "{err}");
    assert!(err.to_string().contains("no encryption"), "{err}");
    // A role reaches only the databases granted to it.
    let err = sqlx::PgConnection::connect_with(
        &login(&env, "gateway", &pw, PgSslMode::VerifyFull).database("postgres"),
    )
    .await
    .expect_err("not its database");
    assert_eq!(sqlstate(&err), "42501", "{err}");
}
