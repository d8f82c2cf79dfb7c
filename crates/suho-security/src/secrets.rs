//! The secrets directory (`.suho/secrets/` by default): a password per identity, a local CA
//! and the servers' certificate, generated on first use, each file readable by its owner only.
//!
//! | file | what |
//! |---|---|
//! | `ca.pem`, `ca.key` | the local certificate authority every client trusts |
//! | `server.pem`, `server.key` | the certificate NATS, Kafka and PostgreSQL present (SANs `127.0.0.1`, `localhost` and the configured hosts), signed by the CA |
//! | `{identity}.password` | that identity's password on every server |
//! | `kafka-broker.password`, `kafka-admin.password` | Kafka's own principals (see [`ServerPrincipal`]) |
//!
//! A deployment can hand a password in through the environment instead:
//! `SUHO_SECRET_{IDENTITY}` (upper case, e.g. `SUHO_SECRET_ENGINE`) wins over the file.
//! Nothing here prints, logs or formats a secret: passwords are [`SecretString`]s.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;
use secrecy::SecretString;

use crate::Identity;

/// Why the secrets could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// File-system trouble.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A secret file is readable by others than its owner.
    #[error("{path} is readable by others (mode {mode:o}); it must be 0600: chmod 600 {path}")]
    Exposed {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// A secret that must exist does not (the stack that makes it has not started yet).
    #[error("{path} does not exist: start the stack (`suho stack up`) to generate the secrets, or point security.secrets_dir at them")]
    Missing {
        /// The file.
        path: String,
    },
    /// The CA or a certificate could not be made.
    #[error("generating {what}: {detail}")]
    Certificate {
        /// Which certificate.
        what: &'static str,
        /// The error.
        detail: String,
    },
}

fn io(path: &Path, source: std::io::Error) -> SecretsError {
    SecretsError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A principal of the servers themselves, not of a suho service: it has no row in the
/// identity table and no NATS user, and it is a Kafka super user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerPrincipal {
    /// The Kafka broker, to itself (inter-broker) and to its controller.
    KafkaBroker,
    /// The stack's own Kafka administration: SCRAM credentials and ACLs. Only `suho stack`
    /// and the test harness log in as it.
    KafkaAdmin,
    /// PostgreSQL's superuser (the `initdb` user, named by `database.url`): makes the roles
    /// and the database. Only `suho stack` and the test harness log in as it.
    PostgresAdmin,
    /// The owner of every table, function and trigger (`owner`): runs the migrations and
    /// grants each service's role its row of the identity table; no service runs as it.
    PostgresOwner,
}

impl ServerPrincipal {
    /// Both, in order.
    pub const ALL: [ServerPrincipal; 4] = [
        ServerPrincipal::KafkaBroker,
        ServerPrincipal::KafkaAdmin,
        ServerPrincipal::PostgresAdmin,
        ServerPrincipal::PostgresOwner,
    ];

    /// The principal's user name (`User:{name}` to Kafka's authorizer, the role in
    /// PostgreSQL). PostgreSQL's superuser is named by `database.url` instead.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ServerPrincipal::KafkaBroker => "broker",
            ServerPrincipal::KafkaAdmin | ServerPrincipal::PostgresAdmin => "admin",
            ServerPrincipal::PostgresOwner => crate::postgres::OWNER,
        }
    }

    fn file_stem(self) -> &'static str {
        match self {
            ServerPrincipal::KafkaBroker => "kafka-broker",
            ServerPrincipal::KafkaAdmin => "kafka-admin",
            ServerPrincipal::PostgresAdmin => "postgres-admin",
            ServerPrincipal::PostgresOwner => "postgres-owner",
        }
    }
}

/// The secrets directory.
#[derive(Debug, Clone)]
pub struct Secrets {
    dir: PathBuf,
}

/// What one identity presents to the servers.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Who.
    pub identity: Identity,
    /// Its password.
    pub password: SecretString,
    /// The CA certificate (PEM) the servers' certificates are checked against.
    pub ca_file: PathBuf,
}

impl Credentials {
    /// The user name (the identity's name).
    #[must_use]
    pub fn user(&self) -> &'static str {
        self.identity.name()
    }
}

impl Secrets {
    /// The secrets in `dir`, as they are (see [`Secrets::ensure`] to make missing ones).
    #[must_use]
    pub fn at(dir: impl Into<PathBuf>) -> Secrets {
        Secrets { dir: dir.into() }
    }

    /// The directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes whatever is missing in `dir` (mode 0700): a password per identity, the CA, and a
    /// server certificate for `127.0.0.1`, `localhost` and `hosts`. What exists is kept (a
    /// certificate is made again when it lacks one of `hosts`, or expires within 30 days).
    ///
    /// # Errors
    /// The directory cannot be written, an existing secret is readable by others, or a
    /// certificate cannot be made.
    pub fn ensure(dir: impl Into<PathBuf>, hosts: &[String]) -> Result<Secrets, SecretsError> {
        let secrets = Secrets::at(dir);
        let dir = secrets.dir.as_path();
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io(dir, e))?;
        let files = Identity::ALL
            .into_iter()
            .map(|i| secrets.password_file(i))
            .chain(ServerPrincipal::ALL.map(|p| secrets.server_password_file(p)));
        for path in files {
            if !path.exists() {
                write_private(&path, random_password().as_bytes())?;
            }
        }
        crate::tls::ensure(&secrets, hosts)?;
        for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let path = entry.map_err(|e| io(dir, e))?.path();
            check_private(&path)?;
        }
        Ok(secrets)
    }

    /// The file holding `identity`'s password.
    #[must_use]
    pub fn password_file(&self, identity: Identity) -> PathBuf {
        self.dir.join(format!("{}.password", identity.name()))
    }

    /// The file holding a server principal's password.
    #[must_use]
    pub fn server_password_file(&self, principal: ServerPrincipal) -> PathBuf {
        self.dir.join(format!("{}.password", principal.file_stem()))
    }

    /// A server principal's password, from its file.
    ///
    /// # Errors
    /// The file is missing, unreadable or readable by others.
    pub fn server_password(
        &self,
        principal: ServerPrincipal,
    ) -> Result<SecretString, SecretsError> {
        read_secret(&self.server_password_file(principal))
    }

    /// The CA certificate (PEM).
    #[must_use]
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The CA's private key (PEM).
    #[must_use]
    pub fn ca_key_file(&self) -> PathBuf {
        self.dir.join("ca.key")
    }

    /// The servers' certificate (PEM, signed by the CA).
    #[must_use]
    pub fn server_cert_file(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The servers' private key (PEM, PKCS#8).
    #[must_use]
    pub fn server_key_file(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// `identity`'s password: `SUHO_SECRET_{IDENTITY}` when set, else its file.
    ///
    /// # Errors
    /// The file is missing, unreadable or readable by others.
    pub fn password(&self, identity: Identity) -> Result<SecretString, SecretsError> {
        let var = format!("SUHO_SECRET_{}", identity.name().to_ascii_uppercase());
        if let Ok(value) = std::env::var(&var) {
            if !value.is_empty() {
                return Ok(SecretString::from(value));
            }
        }
        read_secret(&self.password_file(identity))
    }

    /// What `identity` presents to the servers.
    ///
    /// # Errors
    /// See [`Secrets::password`]; the CA certificate is missing.
    pub fn credentials(&self, identity: Identity) -> Result<Credentials, SecretsError> {
        let ca_file = self.ca_file();
        if !ca_file.exists() {
            return Err(SecretsError::Missing {
                path: ca_file.display().to_string(),
            });
        }
        Ok(Credentials {
            identity,
            password: self.password(identity)?,
            ca_file,
        })
    }
}

/// The secret in `path`, which must exist and be private.
fn read_secret(path: &Path) -> Result<SecretString, SecretsError> {
    if !path.exists() {
        return Err(SecretsError::Missing {
            path: path.display().to_string(),
        });
    }
    check_private(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    Ok(SecretString::from(text.trim().to_string()))
}

/// 32 random bytes, base64url without padding (43 characters, no shell or URL specials).
fn random_password() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Writes `bytes` to `path` as a new file of mode 0600, replacing any file there atomically
/// (so an older file's mode never carries over): every file of secrets is written this way,
/// the servers' configurations that hold credentials too.
///
/// # Errors
/// The file cannot be written.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), SecretsError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))
}

/// A file is a secret only while no one but its owner can read it.
fn check_private(path: &Path) -> Result<(), SecretsError> {
    let mode = std::fs::metadata(path)
        .map_err(|e| io(path, e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(SecretsError::Exposed {
            path: path.display().to_string(),
            mode: mode & 0o777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn ensure_makes_private_secrets_once_and_keeps_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("secrets");
        let s = Secrets::ensure(&dir, &[]).unwrap();
        let engine = s.password(Identity::Engine).unwrap();
        assert_eq!(engine.expose_secret().len(), 43);
        assert_ne!(
            engine.expose_secret(),
            s.password(Identity::Feed).unwrap().expose_secret()
        );
        for entry in std::fs::read_dir(&dir).unwrap() {
            let mode = entry.unwrap().metadata().unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let ca = std::fs::read(s.ca_file()).unwrap();
        let again = Secrets::ensure(&dir, &[]).unwrap();
        assert_eq!(
            again.password(Identity::Engine).unwrap().expose_secret(),
            engine.expose_secret()
        );
        assert_eq!(std::fs::read(again.ca_file()).unwrap(), ca);
    }

    #[test]
    fn a_secret_readable_by_others_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Secrets::ensure(tmp.path(), &[]).unwrap();
        let file = s.password_file(Identity::Audit);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = s.password(Identity::Audit).unwrap_err().to_string();
        assert!(err.contains("readable by others"), "{err}");
        assert!(Secrets::ensure(tmp.path(), &[]).is_err());
    }

    #[test]
    fn missing_secrets_say_how_to_make_them() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Secrets::at(tmp.path())
            .credentials(Identity::Gateway)
            .unwrap_err()
            .to_string();
        assert!(err.contains("suho stack up"), "{err}");
    }
}
