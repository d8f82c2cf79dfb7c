//! The `nats-server` configuration generated from the identity table: one user per
//! [`Identity`] with its password's bcrypt hash and its allow lists, and the TLS block.

use secrecy::ExposeSecret;

use crate::{Identity, NatsGrants, Scope, Secrets, SecretsError};

/// The bcrypt cost of the hashes in the server's configuration. The passwords are 256 random
/// bits, so the hash's cost adds nothing against guessing; a low one keeps each connection's
/// check (the server runs it on every connect) under a millisecond.
const BCRYPT_COST: u32 = 6;

/// The `authorization { users = [...] }` and `tls { ... }` blocks for `scope`.
///
/// # Errors
/// A password cannot be read, or hashing failed.
pub fn server_config(secrets: &Secrets, scope: &Scope) -> Result<String, SecretsError> {
    let mut out = String::from("authorization {\n  timeout: 5\n  users = [\n");
    for identity in Identity::ALL {
        let password = secrets.password(identity)?;
        let hash = bcrypt::hash(password.expose_secret(), BCRYPT_COST).map_err(|e| {
            SecretsError::Certificate {
                what: "a NATS password hash",
                detail: e.to_string(),
            }
        })?;
        out.push_str(&format!(
            "    {{ user: {user}, password: {hash}, permissions: {perms} }}\n",
            user = quote(identity.name()),
            hash = quote(&hash),
            perms = permissions(&identity.nats(scope)),
        ));
    }
    out.push_str("  ]\n}\n");
    out.push_str(&format!(
        "tls {{\n  cert_file: {cert}\n  key_file: {key}\n  timeout: 5\n}}\n",
        cert = quote(&secrets.server_cert_file().display().to_string()),
        key = quote(&secrets.server_key_file().display().to_string()),
    ));
    Ok(out)
}

/// One user's `permissions` map. An empty allow list is a deny of everything: NATS reads a
/// missing list as "anything".
fn permissions(g: &NatsGrants) -> String {
    let list = |items: &[String]| {
        items
            .iter()
            .map(|s| quote(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let publish = if g.publish.is_empty() {
        "{ deny: [\">\"] }".to_string()
    } else {
        format!("{{ allow: [{}] }}", list(&g.publish))
    };
    let subscribe = match (g.subscribe.is_empty(), g.subscribe_deny.is_empty()) {
        (true, _) => "{ deny: [\">\"] }".to_string(),
        (false, true) => format!("{{ allow: [{}] }}", list(&g.subscribe)),
        (false, false) => format!(
            "{{ allow: [{}], deny: [{}] }}",
            list(&g.subscribe),
            list(&g.subscribe_deny)
        ),
    };
    let mut out = format!("{{ publish: {publish}, subscribe: {subscribe}");
    if g.respond {
        out.push_str(", allow_responses: true");
    }
    out.push_str(" }");
    out
}

/// A double-quoted NATS configuration string (no variable expansion inside).
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_identity_is_a_user_and_empty_lists_deny_everything() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Secrets::ensure(tmp.path(), &[]).unwrap();
        let text = server_config(&s, &Scope::Prefix(String::new())).unwrap();
        for i in Identity::ALL {
            assert!(text.contains(&format!("user: \"{}\"", i.name())), "{i}");
        }
        let audit = text.lines().find(|l| l.contains("\"audit\"")).unwrap();
        assert!(audit.contains("subscribe: { deny: [\">\"] }"), "{audit}");
        let ticks = text.lines().find(|l| l.contains("\"ticks\"")).unwrap();
        assert!(ticks.contains("publish: { deny: [\">\"] }"), "{ticks}");
        assert!(!text.contains(s.password(Identity::Feed).unwrap().expose_secret()));
        assert!(text.contains("$2b$06$"));
    }
}
