//! Device lists and cross-signing keys across servers (server-server-api "Device Management",
//! "End-to-End Encryption"), both ways.
//!
//! Outbound: each durable device-list change of one of our users (`keys::OutboundChange`: a
//! device added, its keys uploaded or signed, a device deleted; numbered on the user's chain,
//! `stream_id` and `prev_id`) becomes one `m.device_list_update` per device (with its current
//! keys, `deleted` for a deletion), and a change of the master or self-signing key an
//! `m.signing_key_update`, queued for every server with joined members in a room the user is
//! joined to. `user/devices` answers the chain's last `stream_id`.
//!
//! Inbound: an update counts only for a user of the server that sent it who shares a room with
//! one of ours. It is applied to the cached list (`keys::remote`) when its `prev_id` names the
//! `stream_id` we hold; otherwise (a gap, no cached list, no `prev_id`) the list is marked stale
//! and the user queued for a resync (`GET user/devices/{userId}`): at most one per user queued
//! or in flight, [`RESYNC_QUEUE`] queued, [`RESYNC_CONCURRENCY`] in flight, a server that
//! failed left alone for 30 s doubling to 10 min. Every applied change makes our users who
//! share a room with the remote user see them in `device_lists.changed`.
//!
//! Client `keys/query` for remote users ([`Federation::query_remote_keys`]): a fresh cached list
//! answers for a user sharing a room with ours; the others are asked of their servers (one
//! request per server, all at once, within the request's timeout), a server that does not
//! answer is named under `failures`, and users sharing a room are queued for a resync so the
//! next query is answered here. A cached list whose user no longer shares a room is dropped
//! when next read (`device_lists.left` comes from the membership change).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex, OnceLock, Weak},
    time::{Duration, Instant},
};

use ruma::{
    OwnedServerName, OwnedUserId, ServerName, UserId,
    api::federation::{device::get_devices, keys::get_keys},
};
use serde_json::{Value, json};

use super::Federation;
use crate::{
    Result,
    services::{
        Services,
        keys::{
            OutboundChange,
            remote::{MAX_REMOTE_DEVICES, RemoteDevice},
        },
    },
    storage::tables::device_lists_fed::RemoteDeviceList,
    util::bounded::{BoundedMap, Evict},
};

/// Our users' changes waiting to become EDUs.
const OUTBOUND_CHANNEL: usize = 1_024;
/// Remote users waiting for a resync.
pub const RESYNC_QUEUE: usize = 1_000;
/// Resyncs in flight at once.
pub const RESYNC_CONCURRENCY: usize = 10;
/// The first back-off after a server failed a resync, and the longest.
const BACKOFF_FIRST: Duration = Duration::from_secs(30);
const BACKOFF_MAX: Duration = Duration::from_secs(600);
/// The largest key object kept (device keys, a cross-signing key; real ones are under 2 KiB),
/// so a cached list stays under 4 MiB.
const MAX_KEY_BYTES: usize = 4 * 1024;
/// The default time limit of a client's `keys/query` over federation.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

struct Backoff {
    until: Instant,
    delay: Duration,
}

impl Evict for Backoff {
    fn stale(&self, now: Instant) -> bool {
        self.until <= now
    }
}

/// The inbound side's state: the resync queue and the servers backed off.
pub struct DeviceListSync {
    resync: OnceLock<tokio::sync::mpsc::Sender<OwnedUserId>>,
    /// Users queued or in flight (at most [`RESYNC_QUEUE`] + [`RESYNC_CONCURRENCY`]), each
    /// with whether another resync was asked for meanwhile (its answer may predate the news).
    queued: Mutex<HashMap<OwnedUserId, bool>>,
    backoff: BoundedMap<OwnedServerName, Backoff>,
}

impl Default for DeviceListSync {
    fn default() -> Self {
        Self {
            resync: OnceLock::new(),
            queued: Mutex::new(HashMap::new()),
            backoff: BoundedMap::new(10_000),
        }
    }
}

impl DeviceListSync {
    /// Queues a resync of `user_id`; when one is queued or in flight, another follows it (or
    /// the queue is full: the list stays stale and `keys/query` asks the server).
    fn queue_resync(&self, user_id: &UserId) {
        let Some(sender) = self.resync.get() else { return };
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(again) = queued.get_mut(user_id) {
            *again = true;
            return;
        }
        if queued.len() >= RESYNC_QUEUE + RESYNC_CONCURRENCY {
            return;
        }
        if sender.try_send(user_id.to_owned()).is_ok() {
            queued.insert(user_id.to_owned(), false);
        }
    }

    /// A resync of `user_id` ended; the one asked for meanwhile is queued.
    fn done(&self, user_id: &UserId) {
        let again = self.queued.lock().unwrap_or_else(|p| p.into_inner()).remove(user_id);
        if again == Some(true) {
            self.queue_resync(user_id);
        }
    }

    fn backing_off(&self, server: &ServerName) -> bool {
        self.backoff
            .with(server, |b| b.is_some_and(|b| b.until > Instant::now()))
    }

    fn failed(&self, server: &ServerName) {
        self.backoff.get_or_insert_with(
            server,
            || server.to_owned(),
            || Backoff {
                until: Instant::now(),
                delay: BACKOFF_FIRST / 2,
            },
            |b| {
                b.delay = (b.delay * 2).min(BACKOFF_MAX);
                b.until = Instant::now() + b.delay;
            },
        );
    }
}

/// Starts the outbound worker and the resync workers (with federation on; otherwise
/// nothing). The tasks hold the services weakly.
pub fn spawn(services: &Arc<Services>) {
    if !services.federation.enabled {
        return;
    }
    if let Some(mut changes) = services.keys.forward_device_changes(OUTBOUND_CHANNEL) {
        let weak: Weak<Services> = Arc::downgrade(services);
        tokio::spawn(async move {
            while let Some(change) = changes.recv().await {
                let Some(services) = weak.upgrade() else { return };
                if let Err(e) = send_change(&services, &change) {
                    tracing::warn!(user_id = %change.user_id, error = %e, "device-list change not sent");
                }
            }
        });
    }
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<OwnedUserId>(RESYNC_QUEUE);
    if services.federation.device_lists.resync.set(sender).is_err() {
        return;
    }
    let weak: Weak<Services> = Arc::downgrade(services);
    tokio::spawn(async move {
        let permits = Arc::new(tokio::sync::Semaphore::new(RESYNC_CONCURRENCY));
        while let Some(user_id) = receiver.recv().await {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                return;
            };
            let Some(services) = weak.upgrade() else { return };
            tokio::spawn(async move {
                if let Err(e) = resync(&services, &user_id).await {
                    tracing::info!(%user_id, error = %e, "device list resync failed");
                }
                services.federation.device_lists.done(&user_id);
                drop(permit);
            });
        }
    });
}

/// The other servers with joined members in a room `user_id` is joined to.
fn servers_sharing(services: &Services, user_id: &UserId) -> Result<Vec<OwnedServerName>> {
    let ours = services.federation.server_name();
    let mut servers = BTreeSet::new();
    for room in services.rooms.joined_rooms(user_id)? {
        let members = services.rooms.members(&room)?;
        servers.extend(members.joined_servers().iter().filter(|s| *s != ours).cloned());
    }
    Ok(servers.into_iter().collect())
}

/// Whether remote user `user_id` is joined to a room one of our users is joined to.
pub fn shares_room(services: &Services, user_id: &UserId) -> Result<bool> {
    let ours = services.federation.server_name();
    for room in services.rooms.joined_rooms(user_id)? {
        if services
            .rooms
            .members(&room)?
            .joined_servers()
            .iter()
            .any(|s| s == ours)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Turns one of our users' changes into EDUs for the servers sharing a room with them.
fn send_change(services: &Services, change: &OutboundChange) -> Result<()> {
    let servers = servers_sharing(services, &change.user_id)?;
    if servers.is_empty() {
        return Ok(());
    }
    let user_id = &change.user_id;
    let devices: Vec<String> = change
        .devices
        .iter()
        .filter(|d| !d.deleted)
        .map(|d| d.device_id.clone())
        .collect();
    let asked = BTreeMap::from([(user_id.clone(), devices)]);
    let mut found = services.keys.query(user_id, &asked, &|_, _| None)?;
    let mut keys = found.device_keys.remove(user_id).unwrap_or_default();
    let fed = &services.federation;
    for update in &change.devices {
        let mut content = json!({
            "user_id": user_id,
            "device_id": update.device_id,
            "stream_id": update.stream_id,
            "prev_id": update.prev_id.into_iter().collect::<Vec<_>>(),
        });
        if update.deleted {
            content["deleted"] = json!(true);
        } else if let Some(device_keys) = keys.remove(&update.device_id) {
            content["keys"] = device_keys;
        }
        fed.queue_edu(
            &servers,
            json!({"edu_type": "m.device_list_update", "content": content}),
        );
    }
    if change.signing_keys {
        let mut content = json!({"user_id": user_id});
        if let Some(master) = found.master_keys.remove(user_id) {
            content["master_key"] = master;
        }
        if let Some(self_signing) = found.self_signing_keys.remove(user_id) {
            content["self_signing_key"] = self_signing;
        }
        fed.queue_edu(
            &servers,
            json!({"edu_type": "m.signing_key_update", "content": content}),
        );
    }
    Ok(())
}

/// A key object as bytes when it is an object of reasonable size about `user_id` (and, for
/// device keys, `device_id`).
fn checked_key(value: &Value, user_id: &UserId, device_id: Option<&str>) -> Option<Vec<u8>> {
    if !value.is_object() || value["user_id"].as_str() != Some(user_id.as_str()) {
        return None;
    }
    if device_id.is_some_and(|d| value["device_id"].as_str() != Some(d)) {
        return None;
    }
    serde_json::to_vec(value).ok().filter(|b| b.len() <= MAX_KEY_BYTES)
}

/// Drops the cached list of a remote user who no longer shares a room with ours.
async fn forget_unshared(services: &Services, user_id: &UserId) {
    if services.keys.remote_list(user_id).ok().flatten().is_some()
        && let Err(e) = services.keys.forget_remote_list(user_id).await
    {
        tracing::warn!(%user_id, error = %e, "cached device list not dropped");
    }
}

/// An inbound `m.device_list_update` from `origin`.
pub async fn receive_device_list_update(services: &Services, origin: &ServerName, content: &Value) {
    let Some(user_id) = content["user_id"].as_str().and_then(|u| UserId::parse(u).ok()) else {
        return;
    };
    let (Some(device_id), Some(stream_id)) = (content["device_id"].as_str(), content["stream_id"].as_u64()) else {
        return;
    };
    if user_id.server_name() != origin {
        tracing::warn!(%origin, %user_id, "device-list update about another server's user ignored");
        return;
    }
    if !shares_room(services, &user_id).unwrap_or(false) {
        forget_unshared(services, &user_id).await;
        return;
    }
    let prev_ids: Vec<u64> = content["prev_id"]
        .as_array()
        .map(|p| p.iter().take(10).filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let deleted = content["deleted"].as_bool().unwrap_or(false);
    let keys = content
        .get("keys")
        .and_then(|k| checked_key(k, &user_id, Some(device_id)));
    let keys_service = &services.keys;
    let _lock = keys_service.remote_lock(&user_id).await;
    let list = match keys_service.remote_list(&user_id) {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(%user_id, error = %e, "cannot read a cached device list");
            return;
        }
    };
    let applies = |list: &RemoteDeviceList| !list.stale && prev_ids.contains(&list.stream_id);
    let result = match list {
        Some(list) if !list.stale && stream_id <= list.stream_id => return,
        Some(mut list) if applies(&list) => {
            let at = list.devices.binary_search_by(|d| d.device_id.as_str().cmp(device_id));
            match (at, deleted) {
                (Ok(i), true) => {
                    list.devices.remove(i);
                }
                (Err(_), true) => {}
                (Ok(i), false) => list.devices[i].keys = keys,
                (Err(i), false) if list.devices.len() < MAX_REMOTE_DEVICES => list.devices.insert(
                    i,
                    RemoteDevice {
                        device_id: device_id.to_owned(),
                        keys,
                    },
                ),
                (Err(_), false) => {
                    tracing::warn!(%user_id, "remote user has too many devices; the new one is not cached");
                }
            }
            list.stream_id = stream_id;
            keys_service
                .store_remote_list(&services.rooms, &user_id, &list, true)
                .await
        }
        Some(mut list) => {
            // A gap: the list is not trusted until the resync.
            list.stale = true;
            let stored = keys_service
                .store_remote_list(&services.rooms, &user_id, &list, true)
                .await;
            services.federation.device_lists.queue_resync(&user_id);
            stored
        }
        None => {
            services.federation.device_lists.queue_resync(&user_id);
            Ok(())
        }
    };
    if let Err(e) = result {
        tracing::warn!(%user_id, error = %e, "device-list update not stored");
    }
}

/// An inbound `m.signing_key_update` from `origin`: the cached cross-signing keys change (for
/// a user not cached, our users sharing a room are told to query again).
pub async fn receive_signing_key_update(services: &Services, origin: &ServerName, content: &Value) {
    let Some(user_id) = content["user_id"].as_str().and_then(|u| UserId::parse(u).ok()) else {
        return;
    };
    if user_id.server_name() != origin {
        tracing::warn!(%origin, %user_id, "signing-key update about another server's user ignored");
        return;
    }
    if !shares_room(services, &user_id).unwrap_or(false) {
        forget_unshared(services, &user_id).await;
        return;
    }
    let keys_service = &services.keys;
    let _lock = keys_service.remote_lock(&user_id).await;
    let mut list = match keys_service.remote_list(&user_id) {
        Ok(Some(list)) => list,
        Ok(None) => {
            services.federation.device_lists.queue_resync(&user_id);
            return;
        }
        Err(e) => {
            tracing::warn!(%user_id, error = %e, "cannot read a cached device list");
            return;
        }
    };
    let master = content.get("master_key").and_then(|k| checked_key(k, &user_id, None));
    let self_signing = content
        .get("self_signing_key")
        .and_then(|k| checked_key(k, &user_id, None));
    if master.is_none() && self_signing.is_none() {
        return;
    }
    list.master_key = master.or(list.master_key);
    list.self_signing_key = self_signing.or(list.self_signing_key);
    if let Err(e) = keys_service
        .store_remote_list(&services.rooms, &user_id, &list, true)
        .await
    {
        tracing::warn!(%user_id, error = %e, "signing-key update not stored");
    }
}

/// A list from a `user/devices` answer about `user_id`.
fn list_from(user_id: &UserId, answer: &get_devices::v1::Response) -> RemoteDeviceList {
    let mut devices: Vec<RemoteDevice> = answer
        .devices
        .iter()
        .take(MAX_REMOTE_DEVICES)
        .map(|d| RemoteDevice {
            device_id: d.device_id.to_string(),
            keys: serde_json::from_str::<Value>(d.keys.json().get())
                .ok()
                .and_then(|k| checked_key(&k, user_id, Some(d.device_id.as_str()))),
        })
        .collect();
    devices.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    devices.dedup_by(|a, b| a.device_id == b.device_id);
    let cross = |raw: &Option<ruma::serde::Raw<_>>| {
        raw.as_ref()
            .and_then(|r: &ruma::serde::Raw<ruma::encryption::CrossSigningKey>| {
                serde_json::from_str::<Value>(r.json().get()).ok()
            })
            .and_then(|k| checked_key(&k, user_id, None))
    };
    RemoteDeviceList {
        stream_id: answer.stream_id.into(),
        devices,
        master_key: cross(&answer.master_key),
        self_signing_key: cross(&answer.self_signing_key),
        stale: false,
    }
}

/// Fetches `user_id`'s whole device list from their server and caches it (while they share a
/// room with one of ours), as a change our users see.
async fn resync(services: &Services, user_id: &UserId) -> Result<()> {
    let server = user_id.server_name();
    let sync = &services.federation.device_lists;
    if sync.backing_off(server) {
        return Ok(());
    }
    let request = get_devices::v1::Request::new(user_id.to_owned());
    let answer = match services.federation.send_signed(server, request).await {
        Ok(answer) => answer,
        Err(e) => {
            sync.failed(server);
            return Err(e);
        }
    };
    sync.backoff.remove(server);
    if answer.user_id != user_id {
        return Ok(());
    }
    let list = list_from(user_id, &answer);
    let _lock = services.keys.remote_lock(user_id).await;
    if !shares_room(services, user_id)? {
        return services.keys.forget_remote_list(user_id).await;
    }
    let unchanged = services.keys.remote_list(user_id)?.is_some_and(|held| held == list);
    if !unchanged {
        services
            .keys
            .store_remote_list(&services.rooms, user_id, &list, true)
            .await?;
    }
    Ok(())
}

/// What a client's `keys/query` gets for remote users.
#[derive(Default)]
pub struct RemoteKeys {
    /// user → device → keys.
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
    /// user → master key.
    pub master_keys: BTreeMap<OwnedUserId, Value>,
    /// user → self-signing key.
    pub self_signing_keys: BTreeMap<OwnedUserId, Value>,
    /// server → why it did not answer.
    pub failures: BTreeMap<String, Value>,
}

impl Federation {
    /// Remote users' keys for a client's `keys/query` (`users` by server; an empty device list
    /// asks for all): from the cache where fresh, else from their servers within `timeout`.
    pub async fn query_remote_keys(
        &self,
        services: &Services,
        users: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, Vec<String>>>,
        timeout: Duration,
    ) -> RemoteKeys {
        let mut out = RemoteKeys::default();
        let mut ask: Vec<(OwnedServerName, BTreeMap<OwnedUserId, Vec<ruma::OwnedDeviceId>>)> = Vec::new();
        for (server, users) in users {
            let mut remaining = BTreeMap::new();
            for (user_id, wanted) in users {
                let shared = shares_room(services, &user_id).unwrap_or(false);
                match shared.then(|| services.keys.cached_keys(&user_id, &wanted)) {
                    Some(Ok(Some((devices, master, self_signing)))) => {
                        out.device_keys.insert(user_id.clone(), devices);
                        if let Some(master) = master {
                            out.master_keys.insert(user_id.clone(), master);
                        }
                        if let Some(self_signing) = self_signing {
                            out.self_signing_keys.insert(user_id, self_signing);
                        }
                        continue;
                    }
                    Some(_) => self.device_lists.queue_resync(&user_id),
                    // Not sharing a room any more: a list still cached is dropped.
                    None => forget_unshared(services, &user_id).await,
                }
                let devices = wanted.into_iter().map(ruma::OwnedDeviceId::from).collect();
                remaining.insert(user_id, devices);
            }
            if !remaining.is_empty() {
                ask.push((server, remaining));
            }
        }
        let asks = ask.into_iter().map(|(server, users)| async move {
            let answer = tokio::time::timeout(timeout, self.remote_device_keys(&server, users)).await;
            (server, answer)
        });
        for (server, answer) in futures_util::future::join_all(asks).await {
            let answer: Result<get_keys::v1::Response> = match answer {
                Ok(answer) => answer,
                Err(_) => {
                    out.failures.insert(
                        server.to_string(),
                        json!({"status": 504, "message": "The server did not answer in time"}),
                    );
                    continue;
                }
            };
            match answer {
                Ok(answer) => {
                    for (user, devices) in answer.device_keys {
                        let devices = devices
                            .into_iter()
                            .filter_map(|(d, k)| Some((d.to_string(), serde_json::from_str(k.json().get()).ok()?)))
                            .collect();
                        out.device_keys.insert(user, devices);
                    }
                    for (user, key) in answer.master_keys {
                        if let Ok(key) = serde_json::from_str(key.json().get()) {
                            out.master_keys.insert(user, key);
                        }
                    }
                    for (user, key) in answer.self_signing_keys {
                        if let Ok(key) = serde_json::from_str(key.json().get()) {
                            out.self_signing_keys.insert(user, key);
                        }
                    }
                }
                Err(e) => {
                    out.failures
                        .insert(server.to_string(), json!({"status": 503, "message": e.to_string()}));
                }
            }
        }
        out
    }
}
