//! Finds the stack's tools and installs only what is missing: PostgreSQL, a Java 17+ runtime
//! and Maven from apt; Apache Kafka's jars from Maven Central; a pinned `nats-server` release
//! built from the Go module proxy (Debian's 2.9 predates the fix of NATS's advisory on
//! unrestricted JetStream admin APIs).
//! Safe to call from several processes at once (an exclusive file lock serialises it) and
//! as often as one likes (a second call finds everything and does nothing).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::run;
use crate::{StackError, StackSpec};

/// SLF4J 1.7 binding matching the log4j-core that Kafka's POM brings; without one the
/// broker runs but logs nothing.
const LOG4J_VERSION: &str = "2.24.3";
const DEPENDENCY_PLUGIN: &str = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1";

/// The tools the stack runs with.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `nats-server` binary.
    pub nats_server: PathBuf,
    /// PostgreSQL's `bin` directory (`postgres`, `initdb`, `pg_isready`, `psql`).
    pub pg_bin: PathBuf,
    /// `java` binary (17 or newer).
    pub java: PathBuf,
    /// Directory holding Kafka's jars and their dependencies.
    pub kafka_libs: PathBuf,
}

/// Finds every tool, installing what is missing (apt packages as root; Kafka's jars
/// through Maven into `spec.cache_dir`).
///
/// # Errors
/// A missing package that cannot be installed (not root, apt failing), or a failed
/// download from Maven Central; the message names what is missing and how to get it.
pub fn install(spec: &StackSpec) -> Result<Tools, StackError> {
    std::fs::create_dir_all(&spec.cache_dir).map_err(|e| StackError::io(&spec.cache_dir, e))?;
    let _lock = Lock::exclusive(&spec.cache_dir.join("install.lock"))?;

    let mut missing: Vec<&str> = Vec::new();
    if find_pg_bin().is_none() {
        missing.push("postgresql");
    }
    if java_binary().is_none() {
        missing.push("openjdk-17-jre-headless");
    }
    if which("mvn").is_none() {
        missing.push("maven");
    }
    if !missing.is_empty() {
        apt_install(&missing)?;
    }

    let pg_bin = find_pg_bin().ok_or_else(|| missing_after_apt("postgresql"))?;
    let java = java_binary().ok_or_else(|| StackError::Missing {
        what: "Java 17 or newer (Apache Kafka 4 needs it)".into(),
        hint: "Install a JDK or JRE 17+ (apt-get install openjdk-17-jre-headless) or set JAVA_HOME to one.".into(),
    })?;
    let kafka_libs = fetch_kafka(spec)?;
    let nats_server = build_nats(&spec.cache_dir, &spec.nats_version)?;
    Ok(Tools {
        nats_server,
        pg_bin,
        java,
        kafka_libs,
    })
}

fn missing_after_apt(pkg: &str) -> StackError {
    StackError::Missing {
        what: pkg.into(),
        hint: format!("apt-get reported success but it is still not found; try `apt-get install {pkg}` by hand"),
    }
}

fn apt_install(packages: &[&str]) -> Result<(), StackError> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || which("apt-get").is_none() {
        return Err(StackError::Missing {
            what: packages.join(", "),
            hint: format!(
                "Install them as root: apt-get update && apt-get install -y {}",
                packages.join(" ")
            ),
        });
    }
    tracing::info!(packages = %packages.join(" "), "installing missing packages with apt-get");
    if packages.contains(&"postgresql") {
        keep_apt_from_creating_a_cluster()?;
    }
    run(Command::new("apt-get")
        .args(["-q", "update"])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args([
            "-q",
            "install",
            "-y",
            "--no-install-recommends",
            "-o",
            "Dpkg::Options::=--force-confdef",
            "-o",
            "Dpkg::Options::=--force-confold",
        ])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

/// suho runs its own PostgreSQL under the stack directory: keep the package from creating
/// (and starting) a system cluster that would take port 5432.
fn keep_apt_from_creating_a_cluster() -> Result<(), StackError> {
    let conf = Path::new("/etc/postgresql-common/createcluster.conf");
    let current = std::fs::read_to_string(conf).unwrap_or_default();
    let decided = current
        .lines()
        .any(|l| l.trim_start().starts_with("create_main_cluster"));
    if decided {
        return Ok(());
    }
    std::fs::create_dir_all("/etc/postgresql-common").map_err(|e| StackError::io(conf, e))?;
    let text = format!(
        "{current}\n# Added by suho: it runs its own cluster.\ncreate_main_cluster = false\n"
    );
    std::fs::write(conf, text).map_err(|e| StackError::io(conf, e))
}

/// Fetches Apache Kafka's jars with Maven unless a previous fetch completed.
fn fetch_kafka(spec: &StackSpec) -> Result<PathBuf, StackError> {
    let home = spec.cache_dir.join(format!("kafka-{}", spec.kafka_version));
    let libs = home.join("libs");
    let done = home.join(".complete");
    if done.exists() {
        return Ok(libs);
    }
    tracing::info!(version = %spec.kafka_version, "fetching Apache Kafka from Maven Central");
    std::fs::create_dir_all(&home).map_err(|e| StackError::io(&home, e))?;
    let _ = std::fs::remove_dir_all(&libs);
    let pom = home.join("pom.xml");
    std::fs::write(&pom, kafka_pom(&spec.kafka_version)).map_err(|e| StackError::io(&pom, e))?;
    run(Command::new("mvn")
        .arg("-B")
        .arg("-q")
        .arg("-f")
        .arg(&pom)
        .arg(format!("{DEPENDENCY_PLUGIN}:copy-dependencies"))
        .arg("-DincludeScope=runtime")
        .arg(format!("-DoutputDirectory={}", libs.display())))
    .map_err(|e| match e {
        StackError::Command { detail, .. } => StackError::Missing {
            what: format!("Apache Kafka {} jars", spec.kafka_version),
            hint: format!("Downloading them from Maven Central failed: {detail}"),
        },
        other => other,
    })?;
    std::fs::write(&done, "").map_err(|e| StackError::io(&done, e))?;
    Ok(libs)
}

/// The `nats-server` binary of release `version`, built with `go install` from the Go module
/// proxy into `cache_dir` when it is not there yet (once; about a minute).
///
/// # Errors
/// Go is missing, or the build failed.
pub fn build_nats(cache_dir: &Path, version: &str) -> Result<PathBuf, StackError> {
    std::fs::create_dir_all(cache_dir).map_err(|e| StackError::io(cache_dir, e))?;
    let _lock = Lock::exclusive(&cache_dir.join("nats-build.lock"))?;
    let home = cache_dir.join(format!("nats-server-v{version}"));
    let binary = home.join("nats-server");
    let done = home.join(".complete");
    if done.exists() && binary.exists() {
        return Ok(binary);
    }
    let go = which("go")
        .or_else(|| Some(PathBuf::from("/usr/local/go/bin/go")).filter(|p| p.exists()))
        .ok_or_else(|| StackError::Missing {
            what: "Go (to build the pinned nats-server)".into(),
            hint: "Install Go 1.24 or newer (https://go.dev/doc/install) and put `go` on PATH."
                .into(),
        })?;
    tracing::info!(%version, "building nats-server from the Go module proxy (once, about a minute)");
    std::fs::create_dir_all(&home).map_err(|e| StackError::io(&home, e))?;
    run(Command::new(go)
        .env("GOBIN", &home)
        .env("CGO_ENABLED", "0")
        .arg("install")
        .arg(format!("github.com/nats-io/nats-server/v2@v{version}")))
    .map_err(|e| match e {
        StackError::Command { detail, .. } => StackError::Missing {
            what: format!("nats-server v{version}"),
            hint: format!("Building it from the Go module proxy failed: {detail}"),
        },
        other => other,
    })?;
    std::fs::write(&done, "").map_err(|e| StackError::io(&done, e))?;
    Ok(binary)
}

fn kafka_pom(version: &str) -> String {
    format!(
        r#"<project xmlns="http://maven.apache.org/POM/4.0.0">
  <!-- Written by suho-stack: Apache Kafka's broker and its runtime dependencies. -->
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.suho</groupId>
  <artifactId>kafka-dist</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{LOG4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"#
    )
}

/// `name` on `PATH` (or in the sbin directories, where Debian puts some servers).
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The newest `/usr/lib/postgresql/<major>/bin` holding a server.
fn find_pg_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("postgres").is_file() && bin.join("initdb").is_file()).then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// A `java` of version 17 or newer: `$JAVA_HOME/bin/java`, else the one on `PATH`.
fn java_binary() -> Option<PathBuf> {
    let candidates = std::env::var_os("JAVA_HOME")
        .map(|h| PathBuf::from(h).join("bin/java"))
        .into_iter()
        .chain(which("java"));
    candidates.into_iter().find(|java| {
        Command::new(java)
            .arg("-version")
            .output()
            .ok()
            .and_then(|o| java_major(&String::from_utf8_lossy(&o.stderr)))
            .is_some_and(|major| major >= 17)
    })
}

/// The major version in `java -version` output (`openjdk version "17.0.15"` -> 17).
fn java_major(text: &str) -> Option<u32> {
    let quoted = text.split('"').nth(1)?;
    let first = quoted.split(['.', '-', '+']).next()?;
    match first.parse().ok()? {
        1 => quoted.split('.').nth(1)?.parse().ok(),
        n => Some(n),
    }
}

/// An exclusive `flock` held until dropped.
struct Lock {
    _file: std::fs::File,
}

impl Lock {
    fn exclusive(path: &Path) -> Result<Lock, StackError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| StackError::io(path, e))?;
        // SAFETY: flock on a descriptor we own; released when the file closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(StackError::io(path, std::io::Error::last_os_error()));
        }
        Ok(Lock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_versions() {
        assert_eq!(
            java_major("openjdk version \"17.0.15\" 2025-04-15"),
            Some(17)
        );
        assert_eq!(java_major("java version \"1.8.0_292\""), Some(8));
        assert_eq!(java_major("openjdk version \"21\" 2023-09-19"), Some(21));
        assert_eq!(java_major("nonsense"), None);
    }
}
