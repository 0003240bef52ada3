//! Accounts and profiles: `userid_account` and `userid_profile`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::{
    Batch, Db, StorageResult, codec,
    schema::{USERID_ACCOUNT, USERID_PROFILE},
};

/// A local account as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AccountRecord {
    /// PHC-format argon2 hash; `None` for accounts that cannot log in with a password.
    pub password_hash: Option<String>,
    /// Server administrator.
    pub admin: bool,
    /// Deactivated accounts keep their id reserved but cannot log in.
    pub deactivated: bool,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

/// Typed access to accounts and profiles.
#[derive(Clone)]
pub struct AccountsTable {
    db: Arc<Db>,
}

impl AccountsTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// The account of `user_id`, if it exists (deactivated accounts included).
    pub fn get(&self, user_id: &str) -> StorageResult<Option<AccountRecord>> {
        self.db
            .get(USERID_ACCOUNT, user_id.as_bytes())?
            .map(|b| codec::decode(USERID_ACCOUNT, &b))
            .transpose()
    }

    /// Queues a write of the account record.
    pub fn put(&self, batch: &mut Batch, user_id: &str, record: &AccountRecord) -> StorageResult<()> {
        batch.put(
            USERID_ACCOUNT,
            user_id.as_bytes(),
            &codec::encode(USERID_ACCOUNT, record)?,
        );
        Ok(())
    }

    /// Every account, in user id order (deactivated ones included).
    pub fn all(&self) -> StorageResult<Vec<(String, AccountRecord)>> {
        self.db
            .scan_prefix(USERID_ACCOUNT, b"")?
            .into_iter()
            .map(|(k, v)| {
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    codec::decode(USERID_ACCOUNT, &v)?,
                ))
            })
            .collect()
    }

    /// Approximate number of accounts, deactivated ones included.
    pub fn estimate_count(&self) -> StorageResult<u64> {
        self.db.estimate_count(USERID_ACCOUNT)
    }

    /// The stored profile object of `user_id` (JSON bytes), if any.
    pub fn profile(&self, user_id: &str) -> StorageResult<Option<Vec<u8>>> {
        self.db.get(USERID_PROFILE, user_id.as_bytes())
    }

    /// Queues a write of the whole profile object.
    pub fn put_profile(&self, batch: &mut Batch, user_id: &str, json: &[u8]) {
        batch.put(USERID_PROFILE, user_id.as_bytes(), json);
    }

    /// Queues removal of the profile.
    pub fn delete_profile(&self, batch: &mut Batch, user_id: &str) {
        batch.delete(USERID_PROFILE, user_id.as_bytes());
    }
}
