//! Secrets at rest: connection credentials are sealed with XChaCha20-Poly1305
//! before they reach the store. The key is 32 random bytes in
//! `data_dir/secret.key` (created with mode 0600 on first start) or, when set,
//! the hex in `REPEATD_SECRET_KEY`. Tokens and passwords that are only ever
//! checked (API tokens, submitter passwords) are stored as hashes instead.
//! In memory a secret is a [`Secret`], which never prints its value.

use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

const KEY_FILE: &str = "secret.key";
const KEY_ENV: &str = "REPEATD_SECRET_KEY";
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: {problem}")]
    KeyFile { path: String, problem: String },
    #[error("{KEY_ENV} must be 64 hex digits (32 bytes)")]
    KeyEnv,
    #[error(
        "a sealed secret does not open with this key (was the data directory's secret.key replaced?)"
    )]
    Open,
}

/// The key that seals secrets in the store.
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(********)")
    }
}

fn parse_hex_key(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(key)
}

impl SecretKey {
    /// Reads the key from the environment or the data directory, creating a
    /// key file on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<SecretKey, SecretError> {
        if let Ok(text) = std::env::var(KEY_ENV) {
            let key = parse_hex_key(&text).ok_or(SecretError::KeyEnv)?;
            return Ok(SecretKey::from_bytes(&key));
        }
        let path = data_dir.join(KEY_FILE);
        let key_file_error = |problem: String| SecretError::KeyFile {
            path: path.display().to_string(),
            problem,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| key_file_error(format!("holds {} bytes, want 32", bytes.len())))?;
                Ok(SecretKey::from_bytes(&key))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(data_dir).map_err(|e| key_file_error(e.to_string()))?;
                let mut key = [0u8; 32];
                getrandom::fill(&mut key)
                    .map_err(|e| key_file_error(format!("no randomness: {e}")))?;
                write_private_file(&path, &key).map_err(|e| key_file_error(e.to_string()))?;
                Ok(SecretKey::from_bytes(&key))
            }
            Err(error) => Err(key_file_error(error.to_string())),
        }
    }

    pub fn from_bytes(key: &[u8; 32]) -> SecretKey {
        SecretKey {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Encrypts `plaintext`; the random nonce leads the result.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system's randomness");
        let mut sealed = nonce.to_vec();
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), plaintext)
            .expect("sealing never fails for in-memory buffers");
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SecretError> {
        if sealed.len() < NONCE_LEN {
            return Err(SecretError::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), ciphertext)
            .map_err(|_| SecretError::Open)
    }
}

/// Writes a file readable by its owner only.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// SHA-256 of a token, for storing and comparing tokens without keeping them.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two digests in constant time.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

// ---------------------------------------------------------------------------
// Secret values in memory
// ---------------------------------------------------------------------------

/// A password, token or key. `Debug` and `Display` print
/// [`Secret::PLACEHOLDER`]; `Serialize` writes the real value, because the store
/// encrypts whole records; only [`Secret::expose`] reads it in code.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// What is shown in place of a secret.
    pub const PLACEHOLDER: &'static str = "********";

    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(Self::PLACEHOLDER)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(Self::PLACEHOLDER)
    }
}

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_with_the_same_key_only() {
        let key = SecretKey::from_bytes(&[7; 32]);
        let sealed = key.seal(b"hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(key.open(&sealed).unwrap(), b"hunter2");
        let other = SecretKey::from_bytes(&[8; 32]);
        assert!(matches!(other.open(&sealed), Err(SecretError::Open)));
        assert!(matches!(key.open(&sealed[..10]), Err(SecretError::Open)));
    }

    #[test]
    fn key_file_is_created_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("repeatd-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = SecretKey::load_or_create(&dir).unwrap();
        let sealed = first.seal(b"x");
        let again = SecretKey::load_or_create(&dir).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), b"x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hex_keys_parse() {
        assert!(parse_hex_key(&"ab".repeat(32)).is_some());
        assert!(parse_hex_key("abc").is_none());
        assert!(parse_hex_key(&"zz".repeat(32)).is_none());
    }
}
