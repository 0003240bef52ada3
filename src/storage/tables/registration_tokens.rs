//! Registration tokens: `token_registration`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::{Batch, Db, StorageResult, codec, schema::TOKEN_REGISTRATION};

/// A registration token as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RegistrationTokenRecord {
    /// How many registrations it may complete; `None` = unlimited.
    pub uses_allowed: Option<u32>,
    /// Registrations completed with it.
    pub completed: u32,
    /// Expiry, ms since the epoch.
    pub expires_ms: Option<u64>,
    /// Creation time, ms since the epoch.
    pub created_ms: u64,
}

/// Typed access to registration tokens.
#[derive(Clone)]
pub struct RegistrationTokensTable {
    db: Arc<Db>,
}

impl RegistrationTokensTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// One token.
    pub fn get(&self, token: &str) -> StorageResult<Option<RegistrationTokenRecord>> {
        self.db
            .get(TOKEN_REGISTRATION, token.as_bytes())?
            .map(|b| codec::decode(TOKEN_REGISTRATION, &b))
            .transpose()
    }

    /// Every token, in token order.
    pub fn list(&self) -> StorageResult<Vec<(String, RegistrationTokenRecord)>> {
        self.db
            .scan_prefix(TOKEN_REGISTRATION, b"")?
            .into_iter()
            .map(|(k, v)| {
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    codec::decode(TOKEN_REGISTRATION, &v)?,
                ))
            })
            .collect()
    }

    /// Queues a write.
    pub fn put(&self, batch: &mut Batch, token: &str, record: &RegistrationTokenRecord) -> StorageResult<()> {
        batch.put(
            TOKEN_REGISTRATION,
            token.as_bytes(),
            &codec::encode(TOKEN_REGISTRATION, record)?,
        );
        Ok(())
    }

    /// Queues removal.
    pub fn delete(&self, batch: &mut Batch, token: &str) {
        batch.delete(TOKEN_REGISTRATION, token.as_bytes());
    }
}
