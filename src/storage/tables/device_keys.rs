//! End-to-end encryption keys of users and devices: device keys (`userdevice_devicekeys`),
//! unclaimed one-time keys (`userdevicekeyid_onetimekey`), fallback keys
//! (`userdevicealgo_fallbackkey`), cross-signing keys (`userusage_crosssigningkey`) and
//! signatures uploaded after the keys they sign (`targetsigner_signature`). Values are the
//! JSON bytes clients uploaded; this module knows nothing of their meaning.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::{
    Batch, Db, StorageResult, codec,
    schema::{
        TARGETSIGNER_SIGNATURE, USERDEVICE_DEVICEKEYS, USERDEVICEALGO_FALLBACKKEY, USERDEVICEKEYID_ONETIMEKEY,
        USERUSAGE_CROSSSIGNINGKEY,
    },
};

/// A device's fallback key for one algorithm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackRecord {
    /// The key id (`algorithm:id`).
    pub key_id: String,
    /// The key as JSON.
    pub json: Vec<u8>,
    /// Whether it was handed out by a claim since it was uploaded.
    pub used: bool,
}

/// A signature found for a key: (signer user, signer key id, signature).
pub type StoredSignature = (String, String, String);

/// Typed access to the key tables.
#[derive(Clone)]
pub struct DeviceKeysTable {
    db: Arc<Db>,
}

fn device_key(user_id: &str, device_id: &str) -> Vec<u8> {
    codec::key(&[user_id.as_bytes(), device_id.as_bytes()])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl DeviceKeysTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// A device's device keys.
    pub fn device_keys(&self, user_id: &str, device_id: &str) -> StorageResult<Option<Vec<u8>>> {
        self.db.get(USERDEVICE_DEVICEKEYS, &device_key(user_id, device_id))
    }

    /// Every device of a user that has device keys, with them.
    pub fn all_device_keys(&self, user_id: &str) -> StorageResult<Vec<(String, Vec<u8>)>> {
        let prefix = codec::prefix(&[user_id.as_bytes()]);
        Ok(self
            .db
            .scan_prefix(USERDEVICE_DEVICEKEYS, &prefix)?
            .into_iter()
            .map(|(k, v)| (text(&k[prefix.len()..]), v.into_vec()))
            .collect())
    }

    /// Queues storing a device's device keys.
    pub fn put_device_keys(&self, batch: &mut Batch, user_id: &str, device_id: &str, json: &[u8]) {
        batch.put(USERDEVICE_DEVICEKEYS, &device_key(user_id, device_id), json);
    }

    /// Queues storing a one-time key.
    pub fn put_one_time_key(&self, batch: &mut Batch, user_id: &str, device_id: &str, key_id: &str, json: &[u8]) {
        batch.put(
            USERDEVICEKEYID_ONETIMEKEY,
            &codec::key(&[user_id.as_bytes(), device_id.as_bytes(), key_id.as_bytes()]),
            json,
        );
    }

    /// Whether a one-time key with this id is stored.
    pub fn has_one_time_key(&self, user_id: &str, device_id: &str, key_id: &str) -> StorageResult<bool> {
        Ok(self
            .db
            .get(
                USERDEVICEKEYID_ONETIMEKEY,
                &codec::key(&[user_id.as_bytes(), device_id.as_bytes(), key_id.as_bytes()]),
            )?
            .is_some())
    }

    /// A device's unclaimed one-time keys, by key id (`algorithm:id`), in key-id order.
    pub fn one_time_keys(&self, user_id: &str, device_id: &str) -> StorageResult<Vec<(String, Vec<u8>)>> {
        let prefix = codec::prefix(&[user_id.as_bytes(), device_id.as_bytes()]);
        Ok(self
            .db
            .scan_prefix(USERDEVICEKEYID_ONETIMEKEY, &prefix)?
            .into_iter()
            .map(|(k, v)| (text(&k[prefix.len()..]), v.into_vec()))
            .collect())
    }

    /// The device's first unclaimed one-time key of `algorithm` (in key-id order), read alone.
    pub fn first_one_time_key(
        &self,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
    ) -> StorageResult<Option<(String, Vec<u8>)>> {
        let prefix = codec::prefix(&[user_id.as_bytes(), device_id.as_bytes()]);
        let mut start = prefix.clone();
        start.extend_from_slice(algorithm.as_bytes());
        start.push(b':');
        // Just past every `algorithm:…` key.
        let mut end = start.clone();
        end.pop();
        end.push(b':' + 1);
        Ok(self
            .db
            .scan_range(USERDEVICEKEYID_ONETIMEKEY, &start, &end, false, 1)?
            .into_iter()
            .next()
            .map(|(k, v)| (text(&k[prefix.len()..]), v.into_vec())))
    }

    /// Queues removal of one one-time key.
    pub fn delete_one_time_key(&self, batch: &mut Batch, user_id: &str, device_id: &str, key_id: &str) {
        batch.delete(
            USERDEVICEKEYID_ONETIMEKEY,
            &codec::key(&[user_id.as_bytes(), device_id.as_bytes(), key_id.as_bytes()]),
        );
    }

    /// A device's fallback keys, by algorithm.
    pub fn fallback_keys(&self, user_id: &str, device_id: &str) -> StorageResult<Vec<(String, FallbackRecord)>> {
        let prefix = codec::prefix(&[user_id.as_bytes(), device_id.as_bytes()]);
        self.db
            .scan_prefix(USERDEVICEALGO_FALLBACKKEY, &prefix)?
            .into_iter()
            .map(|(k, v)| Ok((text(&k[prefix.len()..]), codec::decode(USERDEVICEALGO_FALLBACKKEY, &v)?)))
            .collect()
    }

    /// Queues storing a device's fallback key for an algorithm.
    pub fn put_fallback_key(
        &self,
        batch: &mut Batch,
        user_id: &str,
        device_id: &str,
        algorithm: &str,
        record: &FallbackRecord,
    ) -> StorageResult<()> {
        batch.put(
            USERDEVICEALGO_FALLBACKKEY,
            &codec::key(&[user_id.as_bytes(), device_id.as_bytes(), algorithm.as_bytes()]),
            &codec::encode(USERDEVICEALGO_FALLBACKKEY, record)?,
        );
        Ok(())
    }

    /// Queues removal of everything a device holds: device keys, one-time and fallback keys,
    /// signatures of its keys.
    pub fn delete_device(&self, batch: &mut Batch, user_id: &str, device_id: &str) -> StorageResult<()> {
        batch.delete(USERDEVICE_DEVICEKEYS, &device_key(user_id, device_id));
        let prefix = codec::prefix(&[user_id.as_bytes(), device_id.as_bytes()]);
        for table in [
            USERDEVICEKEYID_ONETIMEKEY,
            USERDEVICEALGO_FALLBACKKEY,
            TARGETSIGNER_SIGNATURE,
        ] {
            for (key, _) in self.db.scan_prefix(table, &prefix)? {
                batch.delete(table, &key);
            }
        }
        Ok(())
    }

    /// A user's cross-signing key for `usage` (`master`, `self_signing`, `user_signing`).
    pub fn cross_signing_key(&self, user_id: &str, usage: &str) -> StorageResult<Option<Vec<u8>>> {
        self.db.get(
            USERUSAGE_CROSSSIGNINGKEY,
            &codec::key(&[user_id.as_bytes(), usage.as_bytes()]),
        )
    }

    /// Queues storing a cross-signing key.
    pub fn put_cross_signing_key(&self, batch: &mut Batch, user_id: &str, usage: &str, json: &[u8]) {
        batch.put(
            USERUSAGE_CROSSSIGNINGKEY,
            &codec::key(&[user_id.as_bytes(), usage.as_bytes()]),
            json,
        );
    }

    /// Queues storing a signature of `target` (a device id or a cross-signing public key) of
    /// `target_user` by `signer_key_id` of `signer`.
    pub fn put_signature(
        &self,
        batch: &mut Batch,
        (target_user, target): (&str, &str),
        (signer, signer_key_id): (&str, &str),
        signature: &str,
    ) {
        batch.put(
            TARGETSIGNER_SIGNATURE,
            &codec::key(&[
                target_user.as_bytes(),
                target.as_bytes(),
                signer.as_bytes(),
                signer_key_id.as_bytes(),
            ]),
            signature.as_bytes(),
        );
    }

    /// Every signature stored for `target` of `target_user`.
    pub fn signatures(&self, target_user: &str, target: &str) -> StorageResult<Vec<StoredSignature>> {
        let prefix = codec::prefix(&[target_user.as_bytes(), target.as_bytes()]);
        let mut out = Vec::new();
        for (key, value) in self.db.scan_prefix(TARGETSIGNER_SIGNATURE, &prefix)? {
            let mut parts = codec::split(&key[prefix.len()..]);
            if let (Some(signer), Some(key_id)) = (parts.next(), parts.next()) {
                out.push((text(signer), text(key_id), text(&value)));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    #[test]
    fn keys_round_trip_and_device_deletion_clears_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let t = DeviceKeysTable::new(Arc::clone(&db));
        let mut batch = db.batch();
        t.put_device_keys(&mut batch, "@a:x", "D1", b"{}");
        t.put_one_time_key(&mut batch, "@a:x", "D1", "signed_curve25519:B", b"{\"k\":2}");
        t.put_one_time_key(&mut batch, "@a:x", "D1", "signed_curve25519:A", b"{\"k\":1}");
        t.put_one_time_key(&mut batch, "@a:x", "D10", "signed_curve25519:C", b"{}");
        let fallback = FallbackRecord {
            key_id: "signed_curve25519:F".into(),
            json: b"{}".to_vec(),
            used: false,
        };
        t.put_fallback_key(&mut batch, "@a:x", "D1", "signed_curve25519", &fallback)
            .unwrap();
        t.put_signature(&mut batch, ("@a:x", "D1"), ("@a:x", "ed25519:MK"), "sig");
        batch.commit_blocking().unwrap();
        let otks = t.one_time_keys("@a:x", "D1").unwrap();
        assert_eq!(otks[0].0, "signed_curve25519:A");
        assert_eq!(otks.len(), 2);
        let first = t.first_one_time_key("@a:x", "D1", "signed_curve25519").unwrap();
        assert_eq!(first.map(|(id, _)| id).as_deref(), Some("signed_curve25519:A"));
        assert!(t.first_one_time_key("@a:x", "D1", "signed").unwrap().is_none());
        assert!(t.first_one_time_key("@a:x", "D1", "curve25519").unwrap().is_none());
        assert_eq!(t.fallback_keys("@a:x", "D1").unwrap()[0].1, fallback);
        assert_eq!(
            t.signatures("@a:x", "D1").unwrap(),
            vec![("@a:x".into(), "ed25519:MK".into(), "sig".into())]
        );
        let mut batch = db.batch();
        t.delete_device(&mut batch, "@a:x", "D1").unwrap();
        batch.commit_blocking().unwrap();
        assert!(t.device_keys("@a:x", "D1").unwrap().is_none());
        assert!(t.one_time_keys("@a:x", "D1").unwrap().is_empty());
        assert!(t.fallback_keys("@a:x", "D1").unwrap().is_empty());
        assert!(t.signatures("@a:x", "D1").unwrap().is_empty());
        assert_eq!(t.one_time_keys("@a:x", "D10").unwrap().len(), 1);
    }
}
