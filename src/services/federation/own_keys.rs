//! Our signing keys as other servers see them: the signed answer of `/_matrix/key/v2/server`
//! (the current key, and the keys retired by rotation with the time they expired), kept for
//! half its validity, and key rotation (`hearth signing-key rotate`).

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, serde::Raw};
use serde_json::value::RawValue;

use crate::{
    Error, Result,
    services::server_keys::{self, ServerKeys},
    storage::tables::server_keys::{ServerKeysTable, VerifyKeyRecord},
    util,
};

/// How long other servers may rely on our answer (Synapse's default refresh interval).
pub const ANSWER_VALIDITY_MS: u64 = 24 * 60 * 60 * 1000;

/// Our key answer, built on demand and kept while it is fresh.
pub struct OwnKeys {
    server_name: OwnedServerName,
    keys: Arc<ServerKeys>,
    table: ServerKeysTable,
    /// The signed answer and when it stops being valid.
    answer: Mutex<Option<(u64, Arc<Box<RawValue>>)>>,
}

fn text(s: impl Into<String>) -> CanonicalJsonValue {
    CanonicalJsonValue::String(s.into())
}

impl OwnKeys {
    /// Our keys over their table.
    pub fn new(server_name: OwnedServerName, keys: Arc<ServerKeys>, table: ServerKeysTable) -> Self {
        Self {
            server_name,
            keys,
            table,
            answer: Mutex::new(None),
        }
    }

    /// The current key pair.
    pub fn current(&self) -> &ServerKeys {
        &self.keys
    }

    /// Every public key of ours by key id, the retired ones included (to check our own
    /// signatures coming back from other servers).
    pub fn public_keys(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut keys = vec![(self.keys.key_id(), self.keys.public_key())];
        for (id, record) in self.table.keys_of(self.server_name.as_str())? {
            if id != keys[0].0 {
                keys.push((id, record.key));
            }
        }
        Ok(keys)
    }

    /// The signed answer of `/_matrix/key/v2/server`, as canonical JSON.
    pub fn answer(&self) -> Result<Arc<Box<RawValue>>> {
        let now = util::now_ms();
        let mut cached = self.answer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((valid_until, answer)) = cached.as_ref()
            && now + ANSWER_VALIDITY_MS / 2 < *valid_until
        {
            return Ok(Arc::clone(answer));
        }
        let valid_until = now + ANSWER_VALIDITY_MS;
        let object = self.build(valid_until)?;
        let json = serde_json::to_string(&object).map_err(|e| Error::internal(e.to_string()))?;
        let answer = Arc::new(RawValue::from_string(json).map_err(|e| Error::internal(e.to_string()))?);
        *cached = Some((valid_until, Arc::clone(&answer)));
        Ok(answer)
    }

    /// The answer as ruma's type, for the handler.
    pub fn answer_raw<T>(&self) -> Result<Raw<T>> {
        let answer = self.answer()?;
        Ok(Raw::from_json((*answer).clone()))
    }

    fn build(&self, valid_until: u64) -> Result<CanonicalJsonObject> {
        let current = self.keys.key_id();
        let mut verify_keys = CanonicalJsonObject::new();
        verify_keys.insert(
            current.clone(),
            CanonicalJsonValue::Object(
                [("key".to_owned(), text(STANDARD_NO_PAD.encode(self.keys.public_key())))].into(),
            ),
        );
        let mut old_verify_keys = CanonicalJsonObject::new();
        for (id, record) in self.table.keys_of(self.server_name.as_str())? {
            if id == current {
                continue;
            }
            let expired = record.expired_ms.unwrap_or(record.valid_until_ms);
            old_verify_keys.insert(
                id,
                CanonicalJsonValue::Object(
                    [
                        ("key".to_owned(), text(STANDARD_NO_PAD.encode(&record.key))),
                        (
                            "expired_ts".to_owned(),
                            CanonicalJsonValue::Integer(expired.try_into().unwrap_or_default()),
                        ),
                    ]
                    .into(),
                ),
            );
        }
        let mut object = CanonicalJsonObject::new();
        object.insert("server_name".into(), text(self.server_name.as_str()));
        object.insert("verify_keys".into(), CanonicalJsonValue::Object(verify_keys));
        object.insert("old_verify_keys".into(), CanonicalJsonValue::Object(old_verify_keys));
        object.insert(
            "valid_until_ts".into(),
            CanonicalJsonValue::Integer(valid_until.try_into().unwrap_or_default()),
        );
        ruma::signatures::sign_json(self.server_name.as_str(), &self.keys.keypair, &mut object)
            .map_err(|e| Error::internal(format!("cannot sign our key answer: {e}")))?;
        Ok(object)
    }
}

impl OwnKeys {
    /// Retires the current key (its public half is kept with the time it expired and listed
    /// under `old_verify_keys` from now on) and writes a new one to `key_path`, the file it
    /// was read from. The old key is recorded durably before the file is replaced, so a crash
    /// in between loses nothing. Returns the old and the new key id.
    pub fn rotate(&self, key_path: &Path) -> Result<(String, String)> {
        let now = util::now_ms();
        self.table.store_blocking(
            self.server_name.as_str(),
            &self.keys.key_id(),
            &VerifyKeyRecord {
                key: self.keys.public_key(),
                valid_until_ms: now,
                expired_ms: Some(now),
            },
        )?;
        let new = server_keys::replace_key_file(key_path)?;
        Ok((self.keys.key_id(), new.key_id()))
    }
}
