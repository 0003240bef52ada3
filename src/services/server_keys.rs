//! The server's ed25519 signing key: loaded from its file, or created there at first start.
//!
//! The file uses Synapse's format, one line `ed25519 <version> <unpadded base64 seed>`, so keys
//! can move between the two servers. Events and federation requests are signed with it.

use std::path::Path;

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use ring::rand::SecureRandom;
use ruma::signatures::Ed25519KeyPair;

use crate::{Error, Result, util};

/// The signing key.
pub struct ServerKeys {
    /// Key version, e.g. `a_AbCd` (the key id is `ed25519:<version>`).
    pub version: String,
    /// The key pair (from ruma-signatures).
    pub keypair: Ed25519KeyPair,
}

/// PKCS#8 v1 wrapper of a 32-byte ed25519 seed (RFC 8410).
fn pkcs8_from_seed(seed: &[u8; 32]) -> Vec<u8> {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
    ];
    der.extend_from_slice(seed);
    der
}

/// A new key file's contents: `ed25519 a_XXXX <seed>`.
pub fn generate_key_file() -> Result<String> {
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| Error::internal("no randomness for the signing key"))?;
    Ok(format!(
        "ed25519 a_{} {}\n",
        util::random_string(4),
        STANDARD_NO_PAD.encode(seed)
    ))
}

impl ServerKeys {
    /// The key id, `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.version)
    }

    /// The public key (32 bytes).
    pub fn public_key(&self) -> Vec<u8> {
        self.keypair.public_key().to_vec()
    }

    /// Loads the key at `path`, creating the file (mode 0600) when it does not exist.
    pub fn load_or_create(path: &Path, server_name: &str) -> Result<ServerKeys> {
        if !path.exists() {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
            }
            write_private(path, &generate_key_file()?, false)?;
            tracing::info!(path = %path.display(), "created a new signing key for {server_name}");
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::internal(format!("cannot read signing key {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| Error::internal(format!("signing key {}: {e}", path.display())))
    }

    /// Parses a key file.
    pub fn parse(text: &str) -> std::result::Result<ServerKeys, String> {
        let mut parts = text.split_whitespace();
        let (Some("ed25519"), Some(version), Some(seed)) = (parts.next(), parts.next(), parts.next()) else {
            return Err("expected one line `ed25519 <version> <base64 seed>`".into());
        };
        let seed: [u8; 32] = STANDARD_NO_PAD
            .decode(seed.trim_end_matches('='))
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or("the seed is not 32 bytes of base64")?;
        let keypair = Ed25519KeyPair::from_der(&pkcs8_from_seed(&seed), version.to_owned())
            .map_err(|e| format!("invalid key: {e}"))?;
        Ok(ServerKeys {
            version: version.to_owned(),
            keypair,
        })
    }
}

/// Replaces the key at `path` by a new one (key rotation), whole and durably.
pub fn replace_key_file(path: &Path) -> Result<ServerKeys> {
    let text = generate_key_file()?;
    let keys = ServerKeys::parse(&text).map_err(Error::internal)?;
    write_private(path, &text, true)?;
    Ok(keys)
}

/// Creates the key file whole and durably, or not at all: the contents go to a temporary file,
/// which is synced and then linked under `path` (never replacing a file already there, unless
/// `replace`: then renamed over it), and the directory is synced, so the new name survives a
/// power cut. (Without the directory sync a power cut could drop the file and the next start
/// would sign with a new key.)
fn write_private(path: &Path, contents: &str, replace: bool) -> Result<()> {
    use std::io::Write;
    let fail = |e: std::io::Error| Error::internal(format!("cannot create {}: {e}", path.display()));
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let _ = std::fs::remove_file(&partial); // left by a crash during an earlier start
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&partial).map_err(fail)?;
    file.write_all(contents.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(fail)?;
    if replace {
        std::fs::rename(&partial, path).map_err(fail)?;
    } else {
        let linked = std::fs::hard_link(&partial, path);
        let _ = std::fs::remove_file(&partial);
        linked.map_err(fail)?;
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_files_parse_and_sign() {
        let text = generate_key_file().unwrap();
        let keys = ServerKeys::parse(&text).unwrap();
        assert!(keys.version.starts_with("a_"));
        let mut object = ruma::CanonicalJsonObject::new();
        object.insert("a".into(), ruma::CanonicalJsonValue::String("b".into()));
        ruma::signatures::sign_json("hearth.test", &keys.keypair, &mut object).unwrap();
        assert!(object.contains_key("signatures"));
        assert!(ServerKeys::parse("ed25519 a_x notbase64!").is_err());
        assert!(ServerKeys::parse("").is_err());
    }
}
