//! Devices and their tokens: `userdeviceid_device`, `tokenhash_access`, `tokenhash_refresh`.
//!
//! Tokens are never stored, only their SHA-256. A device record remembers the hashes of its
//! current tokens so that deleting a device revokes them in the same batch.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::{
    Batch, Db, StorageResult, codec,
    schema::{TOKENHASH_ACCESS, TOKENHASH_REFRESH, USERDEVICEID_DEVICE},
};

/// A device as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeviceRecord {
    /// Name shown to the user.
    pub display_name: Option<String>,
    /// Last time the device was seen, ms since the epoch.
    pub last_seen_ms: Option<u64>,
    /// Address it was last seen from.
    pub last_seen_ip: Option<String>,
    /// SHA-256 of the current access token.
    pub access_hash: Option<[u8; 32]>,
    /// SHA-256 of the current refresh token.
    pub refresh_hash: Option<[u8; 32]>,
    /// Tokens replaced by a refresh, still valid until the current ones are first used (so a
    /// client that lost the `/refresh` answer can retry).
    pub superseded: Option<TokenPair>,
}

/// The hashes of an access token and the refresh token issued with it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenPair {
    /// SHA-256 of the access token.
    pub access_hash: [u8; 32],
    /// SHA-256 of the refresh token.
    pub refresh_hash: [u8; 32],
}

/// What an access token grants.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AccessRecord {
    /// Owner.
    pub user_id: String,
    /// Device the token belongs to.
    pub device_id: String,
    /// Expiry (ms since the epoch) for refreshable tokens.
    pub expires_ms: Option<u64>,
    /// Issued by a refresh and not used yet: its first use retires the superseded tokens.
    pub unused_refresh_grant: bool,
}

/// What a refresh token grants.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RefreshRecord {
    /// Owner.
    pub user_id: String,
    /// Device the token belongs to.
    pub device_id: String,
}

/// Typed access to devices and tokens.
#[derive(Clone)]
pub struct DevicesTable {
    db: Arc<Db>,
}

fn device_key(user_id: &str, device_id: &str) -> Vec<u8> {
    codec::key(&[user_id.as_bytes(), device_id.as_bytes()])
}

impl DevicesTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// One device.
    pub fn get(&self, user_id: &str, device_id: &str) -> StorageResult<Option<DeviceRecord>> {
        self.db
            .get(USERDEVICEID_DEVICE, &device_key(user_id, device_id))?
            .map(|b| codec::decode(USERDEVICEID_DEVICE, &b))
            .transpose()
    }

    /// All devices of a user, by device id.
    pub fn list(&self, user_id: &str) -> StorageResult<Vec<(String, DeviceRecord)>> {
        let prefix = codec::prefix(&[user_id.as_bytes()]);
        self.db
            .scan_prefix(USERDEVICEID_DEVICE, &prefix)?
            .into_iter()
            .map(|(k, v)| {
                let device_id = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((device_id, codec::decode(USERDEVICEID_DEVICE, &v)?))
            })
            .collect()
    }

    /// Queues a write of a device record.
    pub fn put(&self, batch: &mut Batch, user_id: &str, device_id: &str, record: &DeviceRecord) -> StorageResult<()> {
        batch.put(
            USERDEVICEID_DEVICE,
            &device_key(user_id, device_id),
            &codec::encode(USERDEVICEID_DEVICE, record)?,
        );
        Ok(())
    }

    /// Queues removal of a device and of the tokens it holds.
    pub fn delete(&self, batch: &mut Batch, user_id: &str, device_id: &str, record: &DeviceRecord) {
        self.revoke_tokens(batch, record, None);
        batch.delete(USERDEVICEID_DEVICE, &device_key(user_id, device_id));
    }

    /// Queues removal of every token a device record points at, except those in `keep`.
    pub fn revoke_tokens(&self, batch: &mut Batch, record: &DeviceRecord, keep: Option<TokenPair>) {
        let superseded = record.superseded.map(|p| (p.access_hash, p.refresh_hash));
        let access = record.access_hash.into_iter().chain(superseded.map(|p| p.0));
        let refresh = record.refresh_hash.into_iter().chain(superseded.map(|p| p.1));
        for hash in access.filter(|h| keep.is_none_or(|k| k.access_hash != *h)) {
            batch.delete(TOKENHASH_ACCESS, &hash);
        }
        for hash in refresh.filter(|h| keep.is_none_or(|k| k.refresh_hash != *h)) {
            batch.delete(TOKENHASH_REFRESH, &hash);
        }
    }

    /// Queues removal of the superseded tokens of a device.
    pub fn retire_superseded(&self, batch: &mut Batch, pair: TokenPair) {
        batch.delete(TOKENHASH_ACCESS, &pair.access_hash);
        batch.delete(TOKENHASH_REFRESH, &pair.refresh_hash);
    }

    /// The grant of an access token, by its hash.
    pub fn access(&self, hash: &[u8; 32]) -> StorageResult<Option<AccessRecord>> {
        self.db
            .get(TOKENHASH_ACCESS, hash)?
            .map(|b| codec::decode(TOKENHASH_ACCESS, &b))
            .transpose()
    }

    /// Queues an access-token grant.
    pub fn put_access(&self, batch: &mut Batch, hash: &[u8; 32], record: &AccessRecord) -> StorageResult<()> {
        batch.put(TOKENHASH_ACCESS, hash, &codec::encode(TOKENHASH_ACCESS, record)?);
        Ok(())
    }

    /// Queues removal of one access token.
    pub fn delete_access(&self, batch: &mut Batch, hash: &[u8; 32]) {
        batch.delete(TOKENHASH_ACCESS, hash);
    }

    /// The grant of a refresh token, by its hash.
    pub fn refresh(&self, hash: &[u8; 32]) -> StorageResult<Option<RefreshRecord>> {
        self.db
            .get(TOKENHASH_REFRESH, hash)?
            .map(|b| codec::decode(TOKENHASH_REFRESH, &b))
            .transpose()
    }

    /// Queues a refresh-token grant.
    pub fn put_refresh(&self, batch: &mut Batch, hash: &[u8; 32], record: &RefreshRecord) -> StorageResult<()> {
        batch.put(TOKENHASH_REFRESH, hash, &codec::encode(TOKENHASH_REFRESH, record)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_record_round_trips() {
        let r = DeviceRecord {
            display_name: Some("phone".into()),
            last_seen_ms: Some(5),
            last_seen_ip: None,
            access_hash: Some([7; 32]),
            refresh_hash: None,
            superseded: Some(TokenPair {
                access_hash: [1; 32],
                refresh_hash: [2; 32],
            }),
        };
        let bytes = codec::encode("t", &r).unwrap();
        assert_eq!(codec::decode::<DeviceRecord>("t", &bytes).unwrap(), r);
        let a = AccessRecord {
            user_id: "@a:b".into(),
            device_id: "D".into(),
            expires_ms: Some(9),
            unused_refresh_grant: true,
        };
        assert_eq!(
            codec::decode::<AccessRecord>("t", &codec::encode("t", &a).unwrap()).unwrap(),
            a
        );
    }
}
