//! OpenID tokens (`openidtoken_user`): the token's SHA-256 → who it names and until when, plus
//! an index by expiry so that expired tokens are deleted as new ones are written.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::{Batch, Db, StorageResult, codec, schema::OPENIDTOKEN_USER};

const BY_HASH: u8 = 0x00;
const BY_EXPIRY: u8 = 0x01;

/// One token, as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct OpenIdRecord {
    /// The user the token names.
    pub user_id: String,
    /// When it stops being valid, ms since the epoch.
    pub expires_ms: u64,
}

/// Typed access to OpenID tokens.
#[derive(Clone)]
pub struct OpenIdTable {
    db: Arc<Db>,
}

fn hash_key(hash: &[u8; 32]) -> Vec<u8> {
    let mut key = Vec::with_capacity(33);
    key.push(BY_HASH);
    key.extend_from_slice(hash);
    key
}

fn expiry_key(expires_ms: u64, hash: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(41);
    key.push(BY_EXPIRY);
    key.extend_from_slice(&codec::u64_bytes(expires_ms));
    key.extend_from_slice(hash);
    key
}

impl OpenIdTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Stores a token durably, in a batch that also deletes up to `sweep` tokens that expired
    /// before `now_ms`.
    pub async fn insert(&self, hash: &[u8; 32], record: &OpenIdRecord, now_ms: u64, sweep: usize) -> StorageResult<()> {
        let mut batch: Batch = self.db.batch();
        for (key, _) in self
            .db
            .scan_range(OPENIDTOKEN_USER, &[BY_EXPIRY], &expiry_key(now_ms, &[]), false, sweep)?
        {
            if let Some(old_hash) = key.get(9..) {
                let mut old = vec![BY_HASH];
                old.extend_from_slice(old_hash);
                batch.delete(OPENIDTOKEN_USER, &old);
            }
            batch.delete(OPENIDTOKEN_USER, &key);
        }
        batch.put(
            OPENIDTOKEN_USER,
            &hash_key(hash),
            &codec::encode(OPENIDTOKEN_USER, record)?,
        );
        batch.put(OPENIDTOKEN_USER, &expiry_key(record.expires_ms, hash), &[]);
        batch.commit().await
    }

    /// The record of a token hash (expired or not).
    pub fn get(&self, hash: &[u8; 32]) -> StorageResult<Option<OpenIdRecord>> {
        self.db
            .get(OPENIDTOKEN_USER, &hash_key(hash))?
            .map(|bytes| codec::decode(OPENIDTOKEN_USER, &bytes))
            .transpose()
    }

    /// How many tokens are stored (tests).
    pub fn count(&self) -> StorageResult<u64> {
        Ok(self.db.count(OPENIDTOKEN_USER)? / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let record = OpenIdRecord {
            user_id: "@a:hearth.test".into(),
            expires_ms: 42,
        };
        let bytes = codec::encode(OPENIDTOKEN_USER, &record).unwrap();
        assert_eq!(codec::decode::<OpenIdRecord>(OPENIDTOKEN_USER, &bytes).unwrap(), record);
        assert!(expiry_key(1, &[]) < expiry_key(2, &[0; 32]));
        assert!(expiry_key(u64::MAX, &[0xFF; 32]) > hash_key(&[0xFF; 32]));
    }

    #[tokio::test]
    async fn expired_tokens_are_swept_by_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &crate::storage::StorageOptions::for_tests()).unwrap();
        let table = OpenIdTable::new(db);
        for i in 0..5u8 {
            let record = OpenIdRecord {
                user_id: "@a:hearth.test".into(),
                expires_ms: 100 + u64::from(i),
            };
            table.insert(&[i; 32], &record, 0, 100).await.unwrap();
        }
        assert_eq!(table.count().unwrap(), 5);
        assert_eq!(table.get(&[3; 32]).unwrap().unwrap().expires_ms, 103);
        let fresh = OpenIdRecord {
            user_id: "@b:hearth.test".into(),
            expires_ms: 10_000,
        };
        // At 103 the tokens expiring at 100, 101 and 102 go (two per write here).
        table.insert(&[9; 32], &fresh, 103, 2).await.unwrap();
        assert_eq!(table.count().unwrap(), 4);
        assert!(table.get(&[0; 32]).unwrap().is_none() && table.get(&[1; 32]).unwrap().is_none());
        assert!(table.get(&[2; 32]).unwrap().is_some());
    }
}
