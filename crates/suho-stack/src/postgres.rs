//! PostgreSQL with its cluster under the stack directory, listening on loopback only (no
//! Unix socket). When suho runs as root the server runs as the `postgres` system user,
//! since PostgreSQL refuses to run as root.
//!
//! Secured: its `pg_hba.conf` (ours, outside the data directory) accepts only TLS
//! connections (`hostssl`) that log in with `scram-sha-256`, with the server certificate
//! from the secrets directory. The superuser's password is set in single-user mode before
//! the server first starts with it, so there is never a moment without one; then, at every
//! start, [`secure`] (as the superuser) makes the owner's and the services' roles, and the
//! database owned by the owner.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use secrecy::ExposeSecret;

use crate::process::{run, wait_ready, ManagedProcess};
use crate::{Service, StackError, StackSpec, Tools};
use std::sync::atomic::AtomicBool;

/// Our client authentication file: TLS and SCRAM, from loopback, for everyone; nothing else
/// (a plaintext connection finds no line and is refused).
const PG_HBA: &str = "# Written by suho at every start: TLS with scram-sha-256, nothing else.\n\
hostssl all all 127.0.0.1/32 scram-sha-256\n\
hostssl all all ::1/128 scram-sha-256\n";

/// A benchmark's plain stack's: no TLS, no password, from loopback only.
const PG_HBA_PLAIN: &str =
    "# Written by suho for a benchmark's plain stack: no TLS, no password.\n\
host all all 127.0.0.1/32 trust\n\
host all all ::1/128 trust\n";

/// How a client reaches this stack's server (`PGSSLMODE`): TLS verified against the CA, or
/// a plain stack's plaintext.
fn ssl_mode(spec: &StackSpec) -> &'static str {
    if spec.secured() {
        "verify-full"
    } else {
        "disable"
    }
}

/// The file marking that the superuser's password is set (the cluster is from before the
/// roles until it exists).
const ADMIN_SET: &str = "suho-admin-password-set";

/// Our `pg_hba.conf`: a server running without it started before authentication.
pub(crate) fn hba_file(spec: &StackSpec) -> PathBuf {
    spec.dir.join("postgres").join("pg_hba.conf")
}

pub(crate) fn start(
    spec: &StackSpec,
    tools: &Tools,
    cancel: &AtomicBool,
) -> Result<ManagedProcess, StackError> {
    let home = spec.dir.join("postgres");
    let data = home.join("data");
    let owner = server_user()?;
    std::fs::create_dir_all(&home).map_err(|e| StackError::io(&home, e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&home, Some(uid), Some(gid))
            .map_err(|e| StackError::io(&home, e))?;
    }
    if !data.join("PG_VERSION").exists() {
        tracing::info!(dir = %data.display(), "initialising a PostgreSQL cluster");
        let _ = std::fs::remove_dir_all(&data);
        let mut initdb = as_owner(Command::new(tools.pg_bin.join("initdb")), owner);
        initdb.arg("-D").arg(&data).args([
            "-U",
            &spec.pg_user,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
        ]);
        if spec.ephemeral {
            initdb.arg("--no-sync");
        }
        run(&mut initdb)?;
    }
    if !data.join(ADMIN_SET).exists() {
        set_admin_password(spec, tools, &data, owner)?;
    }
    let tls = server_files(spec, &home, owner)?;
    let mut cmd = as_owner(Command::new(tools.pg_bin.join("postgres")), owner);
    cmd.arg("-D")
        .arg(&data)
        .arg("-p")
        .arg(spec.pg_port.to_string())
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",
        ])
        .args(["-c", "max_connections=300"])
        .arg("-c")
        .arg(if spec.secured() { "ssl=on" } else { "ssl=off" })
        .args(["-c", "ssl_min_protocol_version=TLSv1.2"])
        .args(["-c", "password_encryption=scram-sha-256"])
        .arg("-c")
        .arg(format!("ssl_cert_file={}", tls.cert.display()))
        .arg("-c")
        .arg(format!("ssl_key_file={}", tls.key.display()))
        .arg("-c")
        .arg(format!("hba_file={}", tls.hba.display()));
    if spec.ephemeral {
        cmd.args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ]);
    }
    tracing::info!(port = spec.pg_port, "starting PostgreSQL");
    let mut proc = ManagedProcess::spawn(spec, Service::Postgres, cmd)?;
    let isready = tools.pg_bin.join("pg_isready");
    wait_ready(spec, &mut proc, cancel, Duration::from_secs(30), || {
        // The server answers a bare startup packet (refusing it) once it accepts logins.
        let out = Command::new(&isready)
            .env(
                "PGSSLMODE",
                if spec.secured() { "require" } else { "disable" },
            )
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &spec.pg_port.to_string(),
                "-U",
                &spec.pg_user,
                "-d",
                "postgres",
            ])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
    })?;
    Ok(proc)
}

/// As the superuser, at every start (a reused server's too): the owner's and every service's
/// role with its current password, and the configured database, owned by the owner, with
/// whatever an earlier suho made in it as the superuser handed to the owner.
///
/// # Errors
/// The superuser cannot log in, or the server refused a statement.
pub(crate) fn secure(spec: &StackSpec, tools: &Tools) -> Result<(), StackError> {
    let secrets = spec.secrets();
    psql(
        spec,
        tools,
        "postgres",
        &suho_security::postgres::roles_sql(&secrets)?,
    )?;
    create_database(spec, tools, &spec.pg_database)?;
    psql(
        spec,
        tools,
        &spec.pg_database,
        &suho_security::postgres::adopt_sql(),
    )?;
    Ok(())
}

/// Creates `database` owned by the schema's owner, or makes an existing one the owner's.
///
/// # Errors
/// The superuser cannot log in, or the server refused.
pub(crate) fn create_database(
    spec: &StackSpec,
    tools: &Tools,
    database: &str,
) -> Result<(), StackError> {
    let owner = suho_security::postgres::OWNER;
    let name = format!("\"{}\"", database.replace('"', "\"\""));
    let exists = psql(
        spec,
        tools,
        "postgres",
        &format!(
            "SELECT 1 FROM pg_database WHERE datname = '{}';",
            database.replace('\'', "''")
        ),
    )?;
    let sql = if exists.trim() == "1" {
        format!("ALTER DATABASE {name} OWNER TO \"{owner}\";")
    } else {
        format!("CREATE DATABASE {name} OWNER \"{owner}\";")
    };
    psql(spec, tools, "postgres", &sql)?;
    Ok(())
}

/// Runs `sql` in `database` as the superuser over TLS (the script on standard input, so no
/// password is ever in a command line); its output.
fn psql(spec: &StackSpec, tools: &Tools, database: &str, sql: &str) -> Result<String, StackError> {
    let secrets = spec.secrets();
    let password = secrets.server_password(suho_security::ServerPrincipal::PostgresAdmin)?;
    let mut cmd = Command::new(tools.pg_bin.join("psql"));
    cmd.env("PGPASSWORD", password.expose_secret())
        .env("PGSSLMODE", ssl_mode(spec))
        .env("PGSSLROOTCERT", secrets.ca_file())
        .env("PGCONNECT_TIMEOUT", "10")
        .args([
            "-X",
            "-q",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
        ])
        .arg(spec.pg_port.to_string())
        .args(["-U", &spec.pg_user, "-d", database, "-f", "-"]);
    feed(&mut cmd, sql, "psql")
}

/// Runs `cmd` with `input` on its standard input; its output, or its error with the last
/// lines it printed.
fn feed(cmd: &mut Command, input: &str, what: &str) -> Result<String, StackError> {
    let failed = |detail: String| StackError::Command {
        command: what.to_string(),
        detail,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        Err(failed(format!(
            "{}\n{}",
            out.status,
            lines[lines.len().saturating_sub(20)..].join("\n")
        )))
    }
}

/// Sets the superuser's password in single-user mode (the server is not running): a new
/// cluster, or one from before the roles, has none, and our `pg_hba.conf` lets no one in
/// without one.
fn set_admin_password(
    spec: &StackSpec,
    tools: &Tools,
    data: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(), StackError> {
    let password = spec
        .secrets()
        .server_password(suho_security::ServerPrincipal::PostgresAdmin)?;
    let sql = format!(
        "ALTER ROLE \"{}\" WITH PASSWORD '{}';\n",
        spec.pg_user.replace('"', "\"\""),
        password.expose_secret().replace('\'', "''")
    );
    let mut single = as_owner(Command::new(tools.pg_bin.join("postgres")), owner);
    single.args(["--single", "-D"]).arg(data).args([
        "-c",
        "password_encryption=scram-sha-256",
        "-c",
        "unix_socket_directories=",
        "postgres",
    ]);
    feed(
        &mut single,
        &sql,
        "postgres --single (setting the superuser's password)",
    )?;
    let marker = data.join(ADMIN_SET);
    std::fs::write(&marker, b"").map_err(|e| StackError::io(&marker, e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&marker, Some(uid), Some(gid))
            .map_err(|e| StackError::io(&marker, e))?;
    }
    tracing::info!("PostgreSQL superuser password set");
    Ok(())
}

/// The server's TLS certificate and key and our `pg_hba.conf`, copied where the server's
/// system user can read them (PostgreSQL wants its key private to that user).
struct ServerFiles {
    cert: PathBuf,
    key: PathBuf,
    hba: PathBuf,
}

fn server_files(
    spec: &StackSpec,
    home: &Path,
    owner: Option<(u32, u32)>,
) -> Result<ServerFiles, StackError> {
    let secrets = spec.secrets();
    let files = ServerFiles {
        cert: home.join("server.pem"),
        key: home.join("server.key"),
        hba: hba_file(spec),
    };
    let copy = |from: &Path, to: &Path| -> Result<(), StackError> {
        let bytes = std::fs::read(from).map_err(|e| StackError::io(from, e))?;
        suho_security::write_private(to, &bytes)?;
        Ok(())
    };
    copy(&secrets.server_cert_file(), &files.cert)?;
    copy(&secrets.server_key_file(), &files.key)?;
    let hba = if spec.secured() { PG_HBA } else { PG_HBA_PLAIN };
    suho_security::write_private(&files.hba, hba.as_bytes())?;
    for path in [&files.cert, &files.key, &files.hba] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StackError::io(path, e))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(|e| StackError::io(path, e))?;
        }
    }
    Ok(files)
}

/// `(uid, gid)` of the `postgres` user when we are root; `None` runs as ourselves.
fn server_user() -> Result<Option<(u32, u32)>, StackError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = c"postgres";
    // SAFETY: getpwnam with a NUL-terminated name; we copy the two ids out at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(StackError::Missing {
            what: "the `postgres` system user".into(),
            hint: "PostgreSQL refuses to run as root and suho runs it as `postgres`; reinstall the postgresql package (apt-get install --reinstall postgresql-common).".into(),
        });
    }
    // SAFETY: pw is non-null and points to getpwnam's static record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn as_owner(mut cmd: Command, owner: Option<(u32, u32)>) -> Command {
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd
}
