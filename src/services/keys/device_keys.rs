//! Device keys, one-time keys and fallback keys (spec "Key management API"): `keys/upload`,
//! `keys/query`, `keys/claim`, and the device-list changes read by `/sync` and
//! `keys/changes`.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use ruma::{CanonicalJsonValue, OwnedUserId, UserId};
use serde_json::{Value, value::RawValue};

use super::{ALL_USERS, Keys, canonical_object, merge_signatures, signed_part, verify_signature};
use crate::{
    Error, Result,
    services::{rooms::Rooms, sync::notifier::Key},
    storage::{Batch, tables::device_keys::FallbackRecord},
};

/// Most one-time keys one upload may carry.
const MAX_KEYS_PER_UPLOAD: usize = 200;

/// Most unclaimed one-time keys a device may hold, all algorithms together. Synapse refuses an
/// upload beyond 500 too: clients keep about 50 on the server, so a device past this is
/// uploading in a loop, and an unbounded store would only grow.
pub const MAX_ONE_TIME_KEYS: u64 = 500;

/// What `keys/query` answers (JSON objects, keyed as in the spec).
#[derive(Default)]
pub struct QueryResult {
    /// user → device → device keys.
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
    /// user → master key.
    pub master_keys: BTreeMap<OwnedUserId, Value>,
    /// user → self-signing key.
    pub self_signing_keys: BTreeMap<OwnedUserId, Value>,
    /// user → user-signing key (the requester's own only).
    pub user_signing_keys: BTreeMap<OwnedUserId, Value>,
    /// server → why its users are missing.
    pub failures: BTreeMap<String, Value>,
}

/// What a device holds of one-time and fallback keys, as `/sync` reports it.
pub struct KeyCounts {
    /// Unclaimed one-time keys by algorithm (`signed_curve25519` always present).
    pub one_time: BTreeMap<String, u64>,
    /// Algorithms of fallback keys not handed out yet.
    pub unused_fallback: Vec<String>,
}

/// user → device → key id → key, as `keys/claim` answers.
pub type Claimed = BTreeMap<OwnedUserId, BTreeMap<String, BTreeMap<String, Value>>>;

fn algorithm_of(key_id: &str) -> Result<&str> {
    match key_id.split_once(':') {
        Some((algorithm, id)) if !algorithm.is_empty() && !id.is_empty() => Ok(algorithm),
        _ => Err(Error::bad_json(format!(
            "Key id {key_id} is not of the form <algorithm>:<key id>"
        ))),
    }
}

/// A one-time or fallback key: a string (unsigned curve25519) or a signed key object with a
/// `key` string.
fn check_one_time_key(key_id: &str, raw: &RawValue) -> Result<Vec<u8>> {
    algorithm_of(key_id)?;
    let value: Value = serde_json::from_str(raw.get()).map_err(|e| Error::bad_json(format!("Key {key_id}: {e}")))?;
    let ok = match &value {
        Value::String(s) => !s.is_empty(),
        Value::Object(o) => o.get("key").is_some_and(Value::is_string),
        _ => false,
    };
    if !ok {
        return Err(Error::bad_json(format!(
            "Key {key_id} must be a string or an object with a `key`"
        )));
    }
    serde_json::to_vec(&value).map_err(|e| Error::internal(e.to_string()))
}

impl Keys {
    /// `keys/upload` for the requester's device: validates everything first (nothing is
    /// stored on bad input), then stores device keys, one-time and fallback keys. Returns the
    /// device's unclaimed one-time key counts by algorithm.
    pub async fn upload(
        &self,
        rooms: &Rooms,
        (user_id, device_id): (&UserId, &str),
        device_keys: Option<&RawValue>,
        one_time_keys: &[(String, &RawValue)],
        fallback_keys: &[(String, &RawValue)],
    ) -> Result<BTreeMap<String, u64>> {
        if one_time_keys.len() > MAX_KEYS_PER_UPLOAD {
            return Err(Error::invalid_param(format!(
                "At most {MAX_KEYS_PER_UPLOAD} one-time keys per upload"
            )));
        }
        let otks = one_time_keys
            .iter()
            .map(|(id, raw)| Ok((id.clone(), check_one_time_key(id, raw)?)))
            .collect::<Result<Vec<_>>>()?;
        let mut fallbacks = BTreeMap::new();
        for (id, raw) in fallback_keys {
            let json = check_one_time_key(id, raw)?;
            fallbacks.insert(algorithm_of(id)?.to_owned(), (id.clone(), json));
        }
        let device_json = device_keys
            .map(|raw| self.check_device_keys(user_id, device_id, raw))
            .transpose()?;

        let _guard = self.user_locks.lock(user_id.to_owned()).await;
        let (user, device) = (user_id.as_str(), device_id);
        // Device keys may be uploaded again unchanged, never replaced by different ones.
        let new_device_keys = match device_json {
            Some((json, signed)) => match self.table.device_keys(user, device)? {
                Some(stored) => {
                    let stored = canonical_object(&raw_of(&stored)?, "stored device keys")?;
                    if signed_part(&stored) != signed {
                        return Err(Error::invalid_param(
                            "This device already has different device keys; log in as a new device",
                        ));
                    }
                    None
                }
                None => Some(json),
            },
            None => None,
        };
        let mut fresh = Vec::new();
        for (id, json) in otks {
            if self.table.has_one_time_key(user, device, &id)? {
                continue;
            }
            fresh.push((id, json));
        }
        let held: u64 = self.key_counts(user_id, device_id)?.one_time.values().sum();
        if held + fresh.len() as u64 > MAX_ONE_TIME_KEYS {
            return Err(Error::invalid_param(format!(
                "This device already holds {held} unclaimed one-time keys; {} more would pass the \
                 limit of {MAX_ONE_TIME_KEYS}",
                fresh.len()
            )));
        }
        let queue = |batch: &mut Batch| -> Result<()> {
            if let Some(json) = &new_device_keys {
                self.table.put_device_keys(batch, user, device, json);
            }
            for (id, json) in &fresh {
                self.table.put_one_time_key(batch, user, device, id, json);
            }
            for (algorithm, (key_id, json)) in &fallbacks {
                let record = FallbackRecord {
                    key_id: key_id.clone(),
                    json: json.clone(),
                    used: false,
                };
                self.table.put_fallback_key(batch, user, device, algorithm, &record)?;
            }
            Ok(())
        };
        if new_device_keys.is_some() {
            let change = super::ListChange::devices(vec![(device_id.to_owned(), false)]);
            let written = self.commit_device_list_change(rooms, user_id, change, queue).await;
            self.key_counts_changed(user_id, device_id);
            written?;
        } else if !fresh.is_empty() || !fallbacks.is_empty() {
            let mut batch = self.db.batch();
            queue(&mut batch)?;
            let written = batch.commit().await;
            self.key_counts_changed(user_id, device_id);
            written?;
        }
        Ok(self.key_counts(user_id, device_id)?.one_time.clone())
    }

    /// Checks uploaded device keys: they name the requester and their device and are signed
    /// with the device's own ed25519 key. Returns the JSON to store and its signed part.
    fn check_device_keys(&self, user_id: &UserId, device_id: &str, raw: &RawValue) -> Result<(Vec<u8>, String)> {
        let object = canonical_object(raw, "device_keys")?;
        let field = |name: &str| match object.get(name) {
            Some(CanonicalJsonValue::String(s)) => Ok(s.as_str()),
            _ => Err(Error::bad_json(format!("device_keys.{name} must be a string"))),
        };
        if field("user_id")? != user_id.as_str() || field("device_id")? != device_id {
            return Err(Error::invalid_param(
                "device_keys must name the requesting user and device",
            ));
        }
        if !matches!(object.get("algorithms"), Some(CanonicalJsonValue::Array(_))) {
            return Err(Error::bad_json("device_keys.algorithms must be an array"));
        }
        let key_id = format!("ed25519:{device_id}");
        let Some(CanonicalJsonValue::Object(keys)) = object.get("keys") else {
            return Err(Error::bad_json("device_keys.keys must be an object"));
        };
        let Some(CanonicalJsonValue::String(ed25519)) = keys.get(&key_id) else {
            return Err(Error::bad_json(format!("device_keys.keys must hold {key_id}")));
        };
        if keys.values().any(|v| !matches!(v, CanonicalJsonValue::String(_))) {
            return Err(Error::bad_json("device_keys.keys values must be strings"));
        }
        verify_signature(&object, user_id.as_str(), &key_id, ed25519)
            .map_err(|why| Error::invalid_param(format!("device_keys are not self-signed: {why}")))?;
        let json = serde_json::to_vec(&object).map_err(|e| Error::internal(e.to_string()))?;
        Ok((json, signed_part(&object)))
    }

    /// The device's unclaimed one-time keys counted by algorithm, and the algorithms of its
    /// fallback keys not yet handed out.
    pub fn key_counts(&self, user_id: &UserId, device_id: &str) -> Result<Arc<KeyCounts>> {
        let key = (user_id.to_owned(), device_id.to_owned());
        self.key_counts.get_or_read(
            &key,
            || key.clone(),
            || {
                let (user, device) = (user_id.as_str(), device_id);
                // `signed_curve25519` is always reported (0 included) so clients know to upload.
                let mut one_time = BTreeMap::from([("signed_curve25519".to_owned(), 0)]);
                for (key_id, _) in self.table.one_time_keys(user, device)? {
                    if let Some((algorithm, _)) = key_id.split_once(':') {
                        *one_time.entry(algorithm.to_owned()).or_insert(0) += 1;
                    }
                }
                let unused_fallback = self
                    .table
                    .fallback_keys(user, device)?
                    .into_iter()
                    .filter(|(_, record)| !record.used)
                    .map(|(algorithm, _)| algorithm)
                    .collect();
                Ok(Arc::new(KeyCounts {
                    one_time,
                    unused_fallback,
                }))
            },
        )
    }

    /// Forgets what [`Self::key_counts`] holds for a device; called once a write changing its
    /// one-time or fallback keys is done (or failed).
    pub(super) fn key_counts_changed(&self, user_id: &UserId, device_id: &str) {
        self.key_counts.invalidate(&(user_id.to_owned(), device_id.to_owned()));
    }

    /// `keys/query`: device and cross-signing keys of `users` (all devices when the list is
    /// empty), with later signatures merged in and `unsigned.device_display_name` from
    /// `display_name`. Unknown local users and devices are absent; remote users (asked here
    /// only with federation off: `federation::device_lists` answers them otherwise) are
    /// reported under `failures`.
    pub fn query(
        &self,
        requester: &UserId,
        users: &BTreeMap<OwnedUserId, Vec<String>>,
        display_name: &dyn Fn(&UserId, &str) -> Option<String>,
    ) -> Result<QueryResult> {
        let mut out = QueryResult::default();
        for (user_id, wanted) in users {
            if !self.is_local(user_id) {
                out.failures.insert(
                    user_id.server_name().to_string(),
                    serde_json::json!({"status": 503, "message": "Federation is not available"}),
                );
                continue;
            }
            let mut devices = BTreeMap::new();
            for (device_id, bytes) in self.table.all_device_keys(user_id.as_str())? {
                if !wanted.is_empty() && !wanted.contains(&device_id) {
                    continue;
                }
                let mut keys: Value = serde_json::from_slice(&bytes).map_err(|e| Error::internal(e.to_string()))?;
                merge_signatures(&mut keys, self.table.signatures(user_id.as_str(), &device_id)?);
                if let Some(name) = display_name(user_id, &device_id) {
                    keys["unsigned"] = serde_json::json!({"device_display_name": name});
                }
                devices.insert(device_id, keys);
            }
            if !devices.is_empty() || wanted.is_empty() {
                out.device_keys.insert(user_id.clone(), devices);
            }
            for (usage, map) in [
                ("master", &mut out.master_keys),
                ("self_signing", &mut out.self_signing_keys),
                ("user_signing", &mut out.user_signing_keys),
            ] {
                if usage == "user_signing" && user_id != requester {
                    continue;
                }
                if let Some(key) = self.cross_signing_key_with_signatures(user_id, usage)? {
                    map.insert(user_id.clone(), key);
                }
            }
        }
        Ok(out)
    }

    /// `keys/claim`: one one-time key per (user, device, algorithm), each handed out exactly
    /// once (claims run under the locks of the users whose keys they take, taken in user-id
    /// order, and delete what they hand out in one batch); a device without one gives its
    /// fallback key. Unknown devices are absent.
    pub async fn claim(
        &self,
        wanted: &BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    ) -> Result<(Claimed, BTreeMap<String, Value>)> {
        let mut out = Claimed::new();
        let mut failures = BTreeMap::new();
        let mut held = Vec::new();
        for user_id in wanted.keys().filter(|u| self.is_local(u)) {
            held.push(self.user_locks.lock(user_id.clone()).await);
        }
        let mut batch = self.db.batch();
        for (user_id, devices) in wanted {
            if !self.is_local(user_id) {
                failures.insert(
                    user_id.server_name().to_string(),
                    serde_json::json!({"status": 503, "message": "Federation is not available"}),
                );
                continue;
            }
            let user = user_id.as_str();
            for (device_id, algorithm) in devices {
                let found = self.table.first_one_time_key(user, device_id, algorithm)?;
                let (key_id, json) = match found {
                    Some((key_id, json)) => {
                        self.table.delete_one_time_key(&mut batch, user, device_id, &key_id);
                        (key_id, json)
                    }
                    None => {
                        let fallback = self
                            .table
                            .fallback_keys(user, device_id)?
                            .into_iter()
                            .find(|(a, _)| a == algorithm);
                        let Some((_, mut record)) = fallback else {
                            continue;
                        };
                        if !record.used {
                            record.used = true;
                            self.table
                                .put_fallback_key(&mut batch, user, device_id, algorithm, &record)?;
                        }
                        (record.key_id, record.json)
                    }
                };
                let key: Value = serde_json::from_slice(&json).map_err(|e| Error::internal(e.to_string()))?;
                out.entry(user_id.clone())
                    .or_default()
                    .entry(device_id.clone())
                    .or_default()
                    .insert(key_id, key);
            }
        }
        if !batch.is_empty() {
            let written = batch.commit().await;
            for (user_id, devices) in &out {
                for device_id in devices.keys() {
                    self.key_counts_changed(user_id, device_id);
                }
            }
            written?;
        }
        Ok((out, failures))
    }

    /// The users whose device lists changed at positions in `(after, up_to]` among those
    /// sharing a room with `user_id` (themself included), and those who stopped sharing any
    /// room: `(changed, left)`.
    ///
    /// Cheap when nothing moved: no read of the device-list log when the notifier saw no
    /// device-list change since the token (else one range scan), and the cached member lists
    /// of the user's rooms (whose entries carry the position of each membership).
    pub fn device_list_changes(
        &self,
        rooms: &Rooms,
        user_id: &UserId,
        after: u64,
        up_to: u64,
    ) -> Result<(Vec<OwnedUserId>, Vec<OwnedUserId>)> {
        if after >= up_to {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut changed: BTreeSet<OwnedUserId> = if self.notifier.quiet_since(&Key::DeviceLists, after) {
            BTreeSet::new()
        } else {
            self.device_lists
                .since(ALL_USERS, after, up_to)?
                .into_iter()
                .filter_map(|e| OwnedUserId::try_from(String::from_utf8_lossy(&e.item).into_owned()).ok())
                .collect()
        };
        let mut departed = BTreeSet::new();
        let mut joined_rooms = Vec::new();
        for (room_id, own) in rooms.memberships_of(user_id)?.iter() {
            let joined = own.membership == "join";
            let members = rooms.members(room_id)?;
            // Membership changes since the token, as the member list has them now.
            for (target, membership) in members.changed(after, up_to) {
                let me = target == user_id;
                match (membership, me) {
                    ("join", true) if joined => changed.extend(members.with("join").map(ToOwned::to_owned)),
                    ("join", false) if joined => {
                        changed.insert(target.to_owned());
                    }
                    ("leave" | "ban", true) if !joined => departed.extend(members.with("join").map(ToOwned::to_owned)),
                    ("leave" | "ban", false) => {
                        departed.insert(target.to_owned());
                    }
                    _ => {}
                }
            }
            if joined {
                joined_rooms.push(members);
            }
        }
        let shares = |other: &UserId| other == user_id || joined_rooms.iter().any(|m| m.is_joined(other));
        let left = departed.into_iter().filter(|u| !shares(u)).collect();
        let changed = changed.into_iter().filter(|u| shares(u)).collect();
        Ok((changed, left))
    }
}

fn raw_of(bytes: &[u8]) -> Result<Box<RawValue>> {
    RawValue::from_string(String::from_utf8_lossy(bytes).into_owned())
        .map_err(|e| Error::internal(format!("stored keys: {e}")))
}
