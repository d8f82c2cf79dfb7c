//! PostgreSQL with its cluster under the stack directory, listening on loopback only (no
//! Unix socket). When suho runs as root the server runs as the `postgres` system user,
//! since PostgreSQL refuses to run as root.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::process::{run, wait_ready, ManagedProcess};
use crate::{Service, StackError, StackSpec, Tools};
use std::sync::atomic::AtomicBool;

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
        .args(["-c", "max_connections=300"]);
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
        let out = Command::new(&isready)
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
    ensure_database(spec, &tools.pg_bin)?;
    Ok(proc)
}

/// Creates the configured database unless it exists.
fn ensure_database(spec: &StackSpec, pg_bin: &Path) -> Result<(), StackError> {
    let port = spec.pg_port.to_string();
    let exists = run(Command::new(pg_bin.join("psql"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            &spec.pg_user,
            "-d",
            "postgres",
            "-Atc",
        ])
        .arg(format!(
            "SELECT 1 FROM pg_database WHERE datname = '{}'",
            spec.pg_database.replace('\'', "''")
        )))?;
    if exists.trim() != "1" {
        run(Command::new(pg_bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", &spec.pg_user])
            .arg(&spec.pg_database))?;
    }
    Ok(())
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
