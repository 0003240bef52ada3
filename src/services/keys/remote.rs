//! The cache of other servers' users' device lists (server-server-api "Device Management"):
//! each remote user's devices with their keys, master and self-signing keys and the last
//! `stream_id` applied (`tables::device_lists_fed`). `federation::device_lists` fills and
//! updates it; every change is a device-list change of that user on the stream, so our users
//! sharing a room with them see them in `device_lists.changed`. Writes of one remote user's
//! list are serialised with [`Keys::remote_lock`].

use std::collections::BTreeMap;

use ruma::{OwnedUserId, UserId};
use serde_json::Value;

use super::{Keys, ListChange};
use crate::{Error, Result, services::rooms::Rooms, storage::tables::device_lists_fed::RemoteDeviceList};

pub use crate::storage::tables::device_lists_fed::{MAX_REMOTE_DEVICES, RemoteDevice};

/// A cached list answering a `keys/query` for one user: device id → keys, master key,
/// self-signing key.
pub type CachedKeys = (BTreeMap<String, Value>, Option<Value>, Option<Value>);

fn json(bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| Error::internal(format!("cached keys: {e}")))
}

impl Keys {
    /// Serialises the writes of `user_id`'s cached list (read, compare, write).
    pub async fn remote_lock(&self, user_id: &UserId) -> tokio::sync::OwnedMutexGuard<()> {
        self.fed_locks.lock(user_id.to_owned()).await
    }

    /// The `stream_id` of the last `m.device_list_update` about our user `user_id` (0: none).
    pub fn device_list_stream_id(&self, user_id: &UserId) -> Result<u64> {
        Ok(self.fed_table.last_sent(user_id.as_str())?)
    }

    /// The cached device list of remote user `user_id`.
    pub fn remote_list(&self, user_id: &UserId) -> Result<Option<RemoteDeviceList>> {
        Ok(self.fed_table.remote(user_id.as_str())?)
    }

    /// Stores `list` as `user_id`'s (under [`Keys::remote_lock`]); with `notify`, as a change of
    /// their device list our users sharing a room with them see.
    pub async fn store_remote_list(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        list: &RemoteDeviceList,
        notify: bool,
    ) -> Result<()> {
        if self.is_local(user_id) {
            return Err(Error::internal("a local user's device list is not cached"));
        }
        if !notify {
            let mut batch = self.db.batch();
            self.fed_table.queue_put_remote(&mut batch, user_id.as_str(), list)?;
            return Ok(batch.commit().await?);
        }
        self.commit_device_list_change(rooms, user_id, ListChange::default(), |batch| {
            Ok(self.fed_table.queue_put_remote(batch, user_id.as_str(), list)?)
        })
        .await
        .map(|_| ())
    }

    /// Forgets the cached list of `user_id` (no room shared any more).
    pub async fn forget_remote_list(&self, user_id: &UserId) -> Result<()> {
        let mut batch = self.db.batch();
        self.fed_table.queue_delete_remote(&mut batch, user_id.as_str());
        Ok(batch.commit().await?)
    }

    /// The keys of a fresh cached list for a `keys/query` (only `wanted` devices unless it is
    /// empty); `None` when the user is not cached or the list is stale.
    pub fn cached_keys(&self, user_id: &OwnedUserId, wanted: &[String]) -> Result<Option<CachedKeys>> {
        let Some(list) = self.remote_list(user_id)? else {
            return Ok(None);
        };
        if list.stale {
            return Ok(None);
        }
        let mut devices = BTreeMap::new();
        for device in &list.devices {
            if !wanted.is_empty() && !wanted.contains(&device.device_id) {
                continue;
            }
            if let Some(keys) = &device.keys {
                devices.insert(device.device_id.clone(), json(keys)?);
            }
        }
        let master = list.master_key.as_deref().map(json).transpose()?;
        let self_signing = list.self_signing_key.as_deref().map(json).transpose()?;
        Ok(Some((devices, master, self_signing)))
    }
}
