//! Device lists across servers: the cache of other servers' users' device lists
//! (`user_remotedevicelist`) and, for our users, the last `stream_id` of the
//! `m.device_list_update` EDUs sent about them (`user_devicelistfedid`).
//!
//! `user_remotedevicelist`: remote user id → postcard [`RemoteDeviceList`] (every device with
//! its keys as JSON bytes, the master and self-signing keys, the last `stream_id` applied, and
//! whether the list is known stale). One record per user: an update rewrites it (at most
//! [`MAX_REMOTE_DEVICES`] devices).
//!
//! `user_devicelistfedid`: local user id → u64, the `stream_id` of the last device-list EDU
//! about the user (0: none yet). Written in the batch of the change it numbers.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::{
    Batch, Db, StorageResult, codec,
    schema::{USER_DEVICELISTFEDID, USER_REMOTEDEVICELIST},
};

/// The most devices kept of one remote user.
pub const MAX_REMOTE_DEVICES: usize = 1_000;

/// One device of a remote user.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteDevice {
    /// The device id.
    pub device_id: String,
    /// Its device keys as JSON bytes, if it has any.
    pub keys: Option<Vec<u8>>,
}

/// A remote user's device list, as cached.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteDeviceList {
    /// The `stream_id` of the last update applied (or of the resync answer).
    pub stream_id: u64,
    /// The devices, sorted by id.
    pub devices: Vec<RemoteDevice>,
    /// The master key as JSON bytes.
    pub master_key: Option<Vec<u8>>,
    /// The self-signing key as JSON bytes.
    pub self_signing_key: Option<Vec<u8>>,
    /// Set when an update could not be applied and the resync has not succeeded yet: the list
    /// must not answer `keys/query`.
    pub stale: bool,
}

/// Typed access to both column families.
#[derive(Clone)]
pub struct DeviceListsFedTable {
    db: Arc<Db>,
}

impl DeviceListsFedTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// The cached device list of remote user `user_id`.
    pub fn remote(&self, user_id: &str) -> StorageResult<Option<RemoteDeviceList>> {
        self.db
            .get(USER_REMOTEDEVICELIST, user_id.as_bytes())?
            .map(|bytes| codec::decode(USER_REMOTEDEVICELIST, &bytes))
            .transpose()
    }

    /// Queues storing the device list of remote user `user_id`.
    pub fn queue_put_remote(&self, batch: &mut Batch, user_id: &str, list: &RemoteDeviceList) -> StorageResult<()> {
        batch.put(
            USER_REMOTEDEVICELIST,
            user_id.as_bytes(),
            &codec::encode(USER_REMOTEDEVICELIST, list)?,
        );
        Ok(())
    }

    /// Queues forgetting the device list of remote user `user_id`.
    pub fn queue_delete_remote(&self, batch: &mut Batch, user_id: &str) {
        batch.delete(USER_REMOTEDEVICELIST, user_id.as_bytes());
    }

    /// The `stream_id` of the last device-list EDU about local user `user_id` (0: none).
    pub fn last_sent(&self, user_id: &str) -> StorageResult<u64> {
        match self.db.get(USER_DEVICELISTFEDID, user_id.as_bytes())? {
            Some(bytes) => codec::read_u64(USER_DEVICELISTFEDID, &bytes),
            None => Ok(0),
        }
    }

    /// Queues recording `stream_id` as the last of local user `user_id`.
    pub fn queue_put_last_sent(&self, batch: &mut Batch, user_id: &str, stream_id: u64) {
        batch.put(USER_DEVICELISTFEDID, user_id.as_bytes(), &codec::u64_bytes(stream_id));
    }
}
