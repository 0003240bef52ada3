//! End-to-end encryption, server side (spec "End-to-End Encryption", "Send-to-Device
//! messaging"): the server stores and hands out keys; it never sees plaintext.
//!
//! - [`device_keys`]: device keys, one-time and fallback keys (upload, query, claim) and the
//!   device-list change log that `/sync` and `/keys/changes` read.
//! - [`cross_signing`]: master, self-signing and user-signing keys and uploaded signatures.
//! - [`to_device`]: per-device inboxes of to-device messages.
//! - [`backup`]: server-side key backup (its own service, [`backup::KeyBackup`]).
//! - [`remote`]: the cache of other servers' users' device lists (filled and kept fresh by
//!   `federation::device_lists`).
//!
//! # Device-list changes
//!
//! Whenever a user's device list changes (device keys uploaded, cross-signing keys uploaded,
//! a device deleted) the change takes a position on the global stream and is logged under the
//! user (`tables::streams`, family `devicelists`, one item per user), and every room the user
//! is joined to is woken: the users sharing a room see the user in `device_lists.changed` of
//! their next sync. Membership changes since the token add users who joined (`changed`) or no
//! longer share any room (`left`).
//!
//! A change of one of our users that other servers hear of ([`ListChange`]: devices added,
//! with new keys or signatures, deleted; master or self-signing keys) is numbered on the
//! user's chain of `m.device_list_update` `stream_id`s in the same batch and handed over,
//! once durable, to `federation::device_lists` ([`Keys::forward_device_changes`]).
//!
//! Key writes run under the lock of the user whose keys they change (uploads, claims of that
//! user's keys, device deletion, cross-signing), so "check then write" (a one-time key handed
//! out exactly once, device keys never silently replaced) holds under concurrency, while one
//! user's flood of uploads or claims never makes another user's wait. A device holds at most
//! [`device_keys::MAX_ONE_TIME_KEYS`] unclaimed one-time keys.
//!
//! Every `/sync` reports the device's one-time key counts and unused fallback key types; they
//! are cached per device and forgotten by each write that changes them (upload, claim,
//! device deletion) once it is durable.

pub mod backup;
pub mod cross_signing;
pub mod device_keys;
pub mod remote;
pub mod to_device;

use std::sync::Arc;

use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedUserId, SigningKeyAlgorithm, UserId, serde::Base64};

use super::{
    rooms::Rooms,
    sync::{
        commit_on_stream,
        notifier::{Key, Notifier},
    },
};
use crate::{
    Result,
    storage::{
        Batch, Db,
        positions::Positions,
        tables::{
            device_keys::DeviceKeysTable, device_lists_fed::DeviceListsFedTable, streams::StreamTable,
            to_device::ToDeviceTable,
        },
    },
    util::{
        bounded::{BoundedMap, KeyedLocks},
        fresh_cache::FreshCache,
    },
};

/// The device-list log has one scope for everyone (the item is the user id), so a sync reads
/// "whose device lists changed since my token" as one range scan.
const ALL_USERS: &str = "";

/// The E2EE key service: device keys, one-time keys, cross-signing, to-device messages.
pub struct Keys {
    db: Arc<Db>,
    table: DeviceKeysTable,
    device_lists: StreamTable,
    inbox: ToDeviceTable,
    positions: Arc<Positions>,
    notifier: Arc<Notifier>,
    server_name: ruma::OwnedServerName,
    /// Per user: serialises writes of the user's keys (uploads, claims, deletions) so
    /// check-then-write is atomic.
    user_locks: KeyedLocks<OwnedUserId>,
    /// Per (user, device): serialises the device's `sendToDevice` transactions (a retried
    /// transaction is done once) and the moves within its own inbox.
    device_locks: KeyedLocks<(OwnedUserId, String)>,
    /// Per (user, device): its to-device inbox's size, as counted (see `to_device`).
    inbox_sizes: BoundedMap<(OwnedUserId, String), to_device::InboxSize>,
    /// The most an inbox holds.
    inbox_max: to_device::InboxSize,
    /// Per (user, device): what `/sync` reports of its one-time and fallback keys.
    key_counts: FreshCache<(OwnedUserId, String), Arc<device_keys::KeyCounts>>,
    /// Per (user, device): a position up to which its to-device inbox was found empty (see
    /// [`Keys::acknowledge_to_device`]).
    inbox_empty_up_to: quick_cache::sync::Cache<(OwnedUserId, String), u64>,
    /// The week before which received to-device EDUs were forgotten (see `to_device`).
    seen_pruned_before: std::sync::atomic::AtomicU64,
    /// The remote device-list cache and our users' EDU stream ids (see [`remote`]).
    fed_table: DeviceListsFedTable,
    /// Per user: serialises the numbering of the user's device-list EDUs.
    fed_locks: KeyedLocks<OwnedUserId>,
    /// Where our users' device-list changes go to be sent to other servers (set by
    /// `federation::device_lists` when federation is on).
    outbound: std::sync::OnceLock<tokio::sync::mpsc::Sender<OutboundChange>>,
}

/// What a device-list change was about, for the other servers (nothing, for user-signing
/// keys or signatures of another user's keys).
#[derive(Clone, Debug, Default)]
pub struct ListChange {
    /// Devices added or whose keys changed (`false`) or deleted (`true`).
    pub devices: Vec<(String, bool)>,
    /// Whether the user's master or self-signing key changed (`m.signing_key_update`).
    pub signing_keys: bool,
}

impl ListChange {
    /// A change of these devices (`true`: deleted).
    pub fn devices(devices: Vec<(String, bool)>) -> Self {
        Self {
            devices,
            signing_keys: false,
        }
    }
}

/// One `m.device_list_update` to send: a device of the user, numbered on the user's chain.
#[derive(Clone, Debug)]
pub struct DeviceUpdate {
    /// The device.
    pub device_id: String,
    /// Whether it was deleted.
    pub deleted: bool,
    /// Its `stream_id`.
    pub stream_id: u64,
    /// The `stream_id` before it (none for the user's first).
    pub prev_id: Option<u64>,
}

/// A durable device-list change of one of our users, for `federation::device_lists`.
#[derive(Clone, Debug)]
pub struct OutboundChange {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device updates, in chain order.
    pub devices: Vec<DeviceUpdate>,
    /// Whether the cross-signing keys changed.
    pub signing_keys: bool,
}

/// Device updates numbered one by one for one change; past this a change gets one number
/// that skips one, so the other servers see a gap and fetch the whole list.
pub const MAX_UPDATES_PER_CHANGE: usize = 100;

impl Keys {
    /// Builds the service.
    pub fn new(
        db: Arc<Db>,
        positions: Arc<Positions>,
        notifier: Arc<Notifier>,
        server_name: ruma::OwnedServerName,
    ) -> Self {
        let db_for_fed = Arc::clone(&db);
        Self {
            table: DeviceKeysTable::new(Arc::clone(&db)),
            device_lists: StreamTable::new(Arc::clone(&db), "devicelists"),
            inbox: ToDeviceTable::new(Arc::clone(&db)),
            db,
            positions,
            notifier,
            server_name,
            user_locks: KeyedLocks::new(10_000),
            device_locks: KeyedLocks::new(10_000),
            inbox_sizes: BoundedMap::new(10_000),
            inbox_max: to_device::InboxSize::MAX,
            key_counts: FreshCache::new(10_000),
            inbox_empty_up_to: quick_cache::sync::Cache::new(10_000),
            seen_pruned_before: std::sync::atomic::AtomicU64::new(0),
            fed_table: DeviceListsFedTable::new(Arc::clone(&db_for_fed)),
            fed_locks: KeyedLocks::new(10_000),
            outbound: std::sync::OnceLock::new(),
        }
    }

    /// Whether `user_id` belongs to this server.
    fn is_local(&self, user_id: &UserId) -> bool {
        user_id.server_name() == self.server_name
    }

    /// Hands our users' device-list changes to `receiver` from now on (once; `None` when
    /// already taken).
    pub fn forward_device_changes(&self, capacity: usize) -> Option<tokio::sync::mpsc::Receiver<OutboundChange>> {
        let (sender, receiver) = tokio::sync::mpsc::channel(capacity);
        self.outbound.set(sender).ok().map(|()| receiver)
    }

    /// Commits `queue`'s writes together with a device-list change of `user_id` on the
    /// stream, waking the user and every room they are joined to. For a user of ours, `change`
    /// says what other servers hear of it: device updates are numbered on the user's chain
    /// (`stream_id`, `prev_id`) in the same batch, and handed over once durable.
    async fn commit_device_list_change(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        change: ListChange,
        queue: impl FnOnce(&mut Batch) -> Result<()>,
    ) -> Result<u64> {
        let mut keys: Vec<Key> = rooms.joined_rooms(user_id)?.iter().map(|r| Key::room(r)).collect();
        keys.push(Key::user(user_id));
        keys.push(Key::DeviceLists);
        let outbound = self.outbound.get().filter(|_| self.is_local(user_id));
        let devices = match outbound {
            Some(_) => change.devices.as_slice(),
            None => &[],
        };
        let _numbering = match devices.is_empty() {
            true => None,
            false => Some(self.fed_locks.lock(user_id.to_owned()).await),
        };
        let mut updates = Vec::new();
        if !devices.is_empty() {
            let mut last = self.fed_table.last_sent(user_id.as_str())?;
            if devices.len() > MAX_UPDATES_PER_CHANGE {
                // Too many to send one by one: one update whose `prev_id` was never sent, so
                // every other server sees the gap and fetches the list.
                last += 1;
            }
            for (device_id, deleted) in devices.iter().take(MAX_UPDATES_PER_CHANGE.min(devices.len())) {
                let prev_id = (last > 0).then_some(last);
                last += 1;
                updates.push(DeviceUpdate {
                    device_id: device_id.clone(),
                    deleted: *deleted,
                    stream_id: last,
                    prev_id,
                });
                if devices.len() > MAX_UPDATES_PER_CHANGE {
                    break;
                }
            }
        }
        let position = commit_on_stream(&self.db, &self.positions, &self.notifier, keys, |batch, position| {
            queue(batch)?;
            if let Some(last) = updates.last() {
                self.fed_table
                    .queue_put_last_sent(batch, user_id.as_str(), last.stream_id);
            }
            Ok(self
                .device_lists
                .queue_put(batch, ALL_USERS, user_id.as_bytes(), position, b"")?)
        })
        .await?;
        let signing_keys = change.signing_keys;
        if let Some(outbound) = outbound
            && (!updates.is_empty() || signing_keys)
        {
            let change = OutboundChange {
                user_id: user_id.to_owned(),
                devices: updates,
                signing_keys,
            };
            // Full: the other servers miss this one and see the gap at the next.
            if outbound.try_send(change).is_err() {
                tracing::warn!(%user_id, "device-list change not sent to other servers: queue full");
            }
        }
        Ok(position)
    }

    /// Queues the removal of a deleted device's keys and inbox (see [`Keys::devices_deleted`]).
    fn queue_delete_device(&self, batch: &mut Batch, user_id: &UserId, device_id: &str) -> Result<()> {
        self.table.delete_device(batch, user_id.as_str(), device_id)?;
        self.inbox.delete_device(batch, user_id.as_str(), device_id);
        Ok(())
    }

    /// Records that `user_id` has a new device (a login), so users sharing a room with them see
    /// it in `device_lists.changed` at once, before the device uploads keys (as Synapse does).
    pub async fn device_added(&self, rooms: &Rooms, user_id: &UserId, device_id: &str) -> Result<()> {
        let change = ListChange::devices(vec![(device_id.to_owned(), false)]);
        self.commit_device_list_change(rooms, user_id, change, |_| Ok(()))
            .await
            .map(|_| ())
    }

    /// Deletes the keys and inboxes of devices that were removed (logout, device deletion,
    /// deactivation) and records the device-list change.
    pub async fn devices_deleted(&self, rooms: &Rooms, user_id: &UserId, device_ids: &[String]) -> Result<()> {
        self.delete_devices_with(rooms, user_id, device_ids, |_| Ok(())).await
    }

    /// [`Keys::devices_deleted`] in one batch with `also` (the caller's part of the deletion,
    /// such as the devices and tokens themselves).
    pub async fn delete_devices_with(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        device_ids: &[String],
        also: impl FnOnce(&mut Batch) -> Result<()>,
    ) -> Result<()> {
        if device_ids.is_empty() {
            return Ok(());
        }
        let _guard = self.user_locks.lock(user_id.to_owned()).await;
        let change = ListChange::devices(device_ids.iter().map(|d| (d.clone(), true)).collect());
        let written = self
            .commit_device_list_change(rooms, user_id, change, |batch| {
                also(batch)?;
                for device_id in device_ids {
                    self.queue_delete_device(batch, user_id, device_id)?;
                }
                Ok(())
            })
            .await;
        for device_id in device_ids {
            self.key_counts_changed(user_id, device_id);
            self.inbox_changed(user_id, device_id);
        }
        written.map(|_| ())
    }
}

pub(crate) use crate::services::events::canonical_object;

/// Checks the signature `object.signatures[signer][key_id]` with the ed25519 public key
/// `public_key` (unpadded base64). `Err` says why it does not hold.
pub(crate) fn verify_signature(
    object: &CanonicalJsonObject,
    signer: &str,
    key_id: &str,
    public_key: &str,
) -> std::result::Result<(), String> {
    let signature = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(by_signer)) => match by_signer.get(signer) {
            Some(CanonicalJsonValue::Object(by_key)) => match by_key.get(key_id) {
                Some(CanonicalJsonValue::String(s)) => s.clone(),
                _ => return Err(format!("no signature by {signer} with {key_id}")),
            },
            _ => return Err(format!("no signature by {signer}")),
        },
        _ => return Err("no signatures".to_owned()),
    };
    let signature =
        Base64::<ruma::serde::base64::Standard>::parse(&signature).map_err(|_| "signature is not base64")?;
    let public_key = Base64::<ruma::serde::base64::Standard>::parse(public_key).map_err(|_| "key is not base64")?;
    let canonical = ruma::signatures::to_canonical_json_string_for_signing(object).map_err(|e| e.to_string())?;
    ruma::signatures::verify_canonical_json_bytes(
        &SigningKeyAlgorithm::Ed25519,
        public_key.as_bytes(),
        signature.as_bytes(),
        canonical.as_bytes(),
    )
    .map_err(|_| "signature does not verify".to_owned())
}

/// The object without `signatures` and `unsigned` (what a signature covers), as a string.
pub(crate) fn signed_part(object: &CanonicalJsonObject) -> String {
    let mut object = object.clone();
    object.remove("signatures");
    object.remove("unsigned");
    ruma::canonical_json::to_canonical_value(&object)
        .map(|v| v.to_string())
        .unwrap_or_default()
}

/// Adds stored signatures `(signer, key id, signature)` into a key object's `signatures`.
pub(crate) fn merge_signatures(object: &mut serde_json::Value, signatures: Vec<(String, String, String)>) {
    if signatures.is_empty() {
        return;
    }
    if !object["signatures"].is_object() {
        object["signatures"] = serde_json::json!({});
    }
    for (signer, key_id, signature) in signatures {
        if !object["signatures"][&signer].is_object() {
            object["signatures"][&signer] = serde_json::json!({});
        }
        object["signatures"][&signer][&key_id] = signature.into();
    }
}
