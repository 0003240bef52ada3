//! Server signing keys (`serverkeyid_verifykey`, `server_keyanswer`): the public keys of other
//! servers and our own keys retired by rotation, one record per key id, plus each remote
//! server's latest self-signed key answer as received (the notary serves it again).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::{
    Db, StorageResult, codec,
    schema::{SERVER_KEYANSWER, SERVERKEYID_VERIFYKEY},
};

/// One verify key, as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyKeyRecord {
    /// The ed25519 public key (32 bytes).
    pub key: Vec<u8>,
    /// Until when the key may be used for new signatures, ms since the epoch (0 when it was
    /// only ever seen as an old key).
    pub valid_until_ms: u64,
    /// When the key stopped being used, for keys listed under `old_verify_keys`.
    pub expired_ms: Option<u64>,
}

/// Typed access to server keys.
#[derive(Clone)]
pub struct ServerKeysTable {
    db: Arc<Db>,
}

impl ServerKeysTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// The record of one key of `server`.
    pub fn get(&self, server: &str, key_id: &str) -> StorageResult<Option<VerifyKeyRecord>> {
        self.db
            .get(
                SERVERKEYID_VERIFYKEY,
                &codec::key(&[server.as_bytes(), key_id.as_bytes()]),
            )?
            .map(|bytes| codec::decode(SERVERKEYID_VERIFYKEY, &bytes))
            .transpose()
    }

    /// Every stored key of `server`, by key id.
    pub fn keys_of(&self, server: &str) -> StorageResult<Vec<(String, VerifyKeyRecord)>> {
        let prefix = codec::prefix(&[server.as_bytes()]);
        self.db
            .scan_prefix(SERVERKEYID_VERIFYKEY, &prefix)?
            .into_iter()
            .map(|(key, value)| {
                let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                Ok((id, codec::decode(SERVERKEYID_VERIFYKEY, &value)?))
            })
            .collect()
    }

    /// The latest key answer stored for `server`.
    pub fn answer(&self, server: &str) -> StorageResult<Option<Vec<u8>>> {
        self.db.get(SERVER_KEYANSWER, server.as_bytes())
    }

    /// Stores the keys of one verified answer of `server` (and the answer itself, when given)
    /// in one durable batch.
    pub async fn store(
        &self,
        server: &str,
        keys: &[(String, VerifyKeyRecord)],
        answer: Option<&[u8]>,
    ) -> StorageResult<()> {
        let mut batch = self.db.batch();
        for (id, record) in keys {
            batch.put(
                SERVERKEYID_VERIFYKEY,
                &codec::key(&[server.as_bytes(), id.as_bytes()]),
                &codec::encode(SERVERKEYID_VERIFYKEY, record)?,
            );
        }
        if let Some(answer) = answer {
            batch.put(SERVER_KEYANSWER, server.as_bytes(), answer);
        }
        batch.commit().await
    }

    /// [`Self::store`] from outside the runtime (the key rotation command).
    pub fn store_blocking(&self, server: &str, id: &str, record: &VerifyKeyRecord) -> StorageResult<()> {
        let mut batch = self.db.batch();
        batch.put(
            SERVERKEYID_VERIFYKEY,
            &codec::key(&[server.as_bytes(), id.as_bytes()]),
            &codec::encode(SERVERKEYID_VERIFYKEY, record)?,
        );
        batch.commit_blocking()
    }
}
