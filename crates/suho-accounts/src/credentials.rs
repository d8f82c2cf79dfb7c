//! Broker credentials sealed at rest: XChaCha20-Poly1305 (an AEAD) under a key from the
//! configuration, a fresh random 24-byte nonce per seal, and the user id and account number
//! as associated data, so a sealed password moved to another row does not open. Each sealed
//! value records the id of its key: keys can be rotated by adding a new current key and
//! keeping the old ones for opening.

use std::collections::HashMap;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};

/// A password sealed under one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Id of the key that sealed it.
    pub key_id: String,
    /// The random nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

/// Why a key or a sealed value is unusable. Never carries the secret itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// A configured key is not 32 bytes of base64.
    #[error("credentials key {key_id}: {reason}")]
    BadKey {
        /// The key's id.
        key_id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// No key with that id is configured.
    #[error("credentials key {0} is not configured")]
    UnknownKey(String),
    /// The value does not open: wrong key, wrong row, or tampered with.
    #[error("a sealed credential did not open (wrong key or tampered)")]
    Open,
    /// Sealing failed.
    #[error("sealing a credential failed")]
    Seal,
}

/// The configured keys: one current key seals, every key opens what it sealed.
#[derive(Clone)]
pub struct Keyring {
    current: String,
    keys: HashMap<String, XChaCha20Poly1305>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<&String> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("key_ids", &ids)
            .finish()
    }
}

impl Keyring {
    /// A keyring whose current key is `current_id`; `keys` maps ids to base64 32-byte keys.
    ///
    /// # Errors
    /// A key that is not 32 bytes of base64, or no key for `current_id`.
    pub fn new(
        current_id: &str,
        keys: impl IntoIterator<Item = (String, SecretString)>,
    ) -> Result<Keyring, CredentialError> {
        let mut ring = HashMap::new();
        for (id, key) in keys {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(key.expose_secret().trim())
                .map_err(|_| CredentialError::BadKey {
                    key_id: id.clone(),
                    reason: "is not base64",
                })?;
            let cipher =
                XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| CredentialError::BadKey {
                    key_id: id.clone(),
                    reason: "must be 32 bytes",
                })?;
            ring.insert(id, cipher);
        }
        if !ring.contains_key(current_id) {
            return Err(CredentialError::UnknownKey(current_id.to_string()));
        }
        Ok(Keyring {
            current: current_id.to_string(),
            keys: ring,
        })
    }

    /// A new random key, base64, for a configuration or a key file.
    #[must_use]
    pub fn generate_key() -> SecretString {
        let key: [u8; 32] = rand::random();
        SecretString::from(base64::engine::general_purpose::STANDARD.encode(key))
    }

    /// The id of the key that seals.
    #[must_use]
    pub fn current_key_id(&self) -> &str {
        &self.current
    }

    /// Seals `secret`, bound to `context` (associated data, e.g. user id and account).
    ///
    /// # Errors
    /// [`CredentialError::Seal`] (not expected).
    pub fn seal(&self, secret: &SecretString, context: &[u8]) -> Result<Sealed, CredentialError> {
        let cipher = self
            .keys
            .get(&self.current)
            .ok_or_else(|| CredentialError::UnknownKey(self.current.clone()))?;
        let nonce: [u8; 24] = rand::random();
        let ciphertext = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: secret.expose_secret().as_bytes(),
                    aad: context,
                },
            )
            .map_err(|_| CredentialError::Seal)?;
        Ok(Sealed {
            key_id: self.current.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens what [`Keyring::seal`] sealed with the same `context`.
    ///
    /// # Errors
    /// The key is not configured, or the value does not open.
    pub fn open(&self, sealed: &Sealed, context: &[u8]) -> Result<SecretString, CredentialError> {
        let cipher = self
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| CredentialError::UnknownKey(sealed.key_id.clone()))?;
        if sealed.nonce.len() != 24 {
            return Err(CredentialError::Open);
        }
        let plain = cipher
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| CredentialError::Open)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| CredentialError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_rotates_and_refuses_tampering() {
        let k1 = Keyring::generate_key();
        let k2 = Keyring::generate_key();
        let old = Keyring::new("k1", [("k1".to_string(), k1.clone())]).expect("ring");
        let secret = SecretString::from("mt5-pa55word".to_string());
        let sealed = old.seal(&secret, b"usr_1|5001").expect("seal");
        assert_eq!(sealed.key_id, "k1");
        assert!(
            !sealed.ciphertext.windows(4).any(|w| w == b"pa55"),
            "not in clear"
        );
        assert_eq!(
            old.open(&sealed, b"usr_1|5001")
                .expect("open")
                .expose_secret(),
            "mt5-pa55word"
        );
        // Bound to its row.
        assert!(matches!(
            old.open(&sealed, b"usr_2|5001"),
            Err(CredentialError::Open)
        ));
        // Tampered.
        let mut bad = sealed.clone();
        bad.ciphertext[0] ^= 1;
        assert!(matches!(
            old.open(&bad, b"usr_1|5001"),
            Err(CredentialError::Open)
        ));
        // Rotation: a new current key seals, the old one still opens its values.
        let rotated = Keyring::new("k2", [("k1".into(), k1), ("k2".into(), k2)]).expect("ring");
        assert_eq!(rotated.seal(&secret, b"x").expect("seal").key_id, "k2");
        assert!(rotated.open(&sealed, b"usr_1|5001").is_ok());
        // Errors never carry the key.
        let err = Keyring::new(
            "k",
            [("k".to_string(), SecretString::from("c2hvcnQ=".to_string()))],
        )
        .expect_err("short key");
        assert_eq!(err.to_string(), "credentials key k: must be 32 bytes");
    }
}
