//! Push notifications (client-server "Push Notifications" module and the Push Gateway API).
//!
//! - `rules.rs`: each user's push rules (stored as `m.push_rules` account data, merged with the
//!   server defaults) and the context they are evaluated in. The same rules decide the unread
//!   counts of `/sync` (`sync/unread.rs`), `/notifications` and pushes.
//! - here: pushers (`/pushers`, `/pushers/set`).
//! - `notifications.rs`: `/notifications`, evaluated when asked.
//! - `worker.rs`: the background task that evaluates every new room event for the room's
//!   members who have pushers, and queues and delivers their pushes.
//!
//! The write path of rooms only adds one small "to evaluate" entry to each event's batch
//! (`pos_pushpending`); everything else happens in the worker, off the send path.

pub mod notifications;
pub mod rules;
pub mod worker;

use std::sync::Arc;

use ruma::{
    OwnedUserId, UserId,
    api::{
        client::push::{Pusher, PusherKind, set_pusher::v3::PusherAction},
        error::ErrorKind,
    },
    push::Ruleset,
};
use tokio::sync::Mutex as AsyncMutex;

use crate::{
    Error, Result,
    config::PushConfig,
    services::{Services, media::ssrf::AddressPolicy},
    storage::{
        Db,
        tables::push::{PushTable, PusherRecord},
    },
    util::fresh_cache::FreshCache,
};

/// Most pushers one user may have.
pub const MAX_PUSHERS_PER_USER: usize = 100;
/// The path every HTTP pusher's URL must have (Push Gateway API).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

/// The push service: its tables, the cached rules and the gateway policy.
pub struct Push {
    table: PushTable,
    /// Parsed rules per user, until the user changes them.
    rules: FreshCache<OwnedUserId, Arc<Ruleset>>,
    /// Each user's pushers (app id, pushkey), until they change: the worker asks for every
    /// recipient of every event, and most have none.
    pusher_keys: FreshCache<OwnedUserId, PusherKeys>,
    /// Serialises rule changes per user (by shard).
    rule_locks: Vec<AsyncMutex<()>>,
    /// Serialises pusher changes.
    pusher_lock: AsyncMutex<()>,
    /// Which addresses gateways may have.
    policy: AddressPolicy,
    /// Time limit of one gateway request.
    timeout: std::time::Duration,
    /// Wakes the worker when a pusher is added (nothing else needs it: events wake it through
    /// the notifier).
    pub(super) wake: Arc<tokio::sync::Notify>,
    /// Where the worker's next delivery round starts in the queue (round-robin over pushers).
    queue_cursor: std::sync::Mutex<Vec<u8>>,
    /// Every event to evaluate at or below this position has been: the next look at the
    /// pending entries starts above it, past the deletions of the evaluated ones (a scan from
    /// the start would step over all of them until RocksDB compacts them away).
    pending_after: std::sync::atomic::AtomicU64,
}

impl Push {
    /// Builds the service.
    pub fn new(db: Arc<Db>, config: &PushConfig) -> Self {
        Push {
            table: PushTable::new(db),
            rules: FreshCache::new(10_000),
            pusher_keys: FreshCache::new(100_000),
            rule_locks: (0..rules::RULE_LOCKS).map(|_| AsyncMutex::new(())).collect(),
            pusher_lock: AsyncMutex::new(()),
            policy: AddressPolicy {
                allow: config.gateway_ip_allow.clone(),
                deny: config.gateway_ip_deny.clone(),
            },
            timeout: config.gateway_timeout,
            wake: Arc::new(tokio::sync::Notify::new()),
            queue_cursor: std::sync::Mutex::new(Vec::new()),
            pending_after: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// A user's pushers as (app id, pushkey).
pub type PusherKeys = Arc<Vec<(String, String)>>;

impl Push {
    /// A user's pushers as (app id, pushkey), from the cache.
    pub fn pusher_keys(&self, user_id: &UserId) -> Result<PusherKeys> {
        self.pusher_keys.get_or_read(
            user_id,
            || user_id.to_owned(),
            || -> Result<PusherKeys> {
                Ok(Arc::new(
                    self.table
                        .pushers(user_id.as_str())?
                        .into_iter()
                        .map(|(app_id, pushkey, _)| (app_id, pushkey))
                        .collect(),
                ))
            },
        )
    }

    /// Forgets the cached pushers of a user; call it once a change to them is durable.
    pub fn pushers_changed(&self, user_id: &UserId) {
        self.pusher_keys.invalidate(user_id);
    }

    /// Queues removal of a user's pushers set by `devices` (all when `None`), as Synapse
    /// removes a device's pushers with the device (logout, device deletion, deactivation).
    pub fn queue_delete_pushers(
        &self,
        batch: &mut crate::storage::Batch,
        user_id: &UserId,
        devices: Option<&[String]>,
    ) -> Result<()> {
        for (app_id, pushkey, record) in self.table.pushers(user_id.as_str())? {
            if devices.is_none_or(|d| d.contains(&record.device_id)) {
                self.table
                    .queue_delete_pusher(batch, user_id.as_str(), &app_id, &pushkey);
            }
        }
        Ok(())
    }
}

fn config_error(message: &str) -> Error {
    // Synapse answers pusher configuration errors with 400 M_MISSING_PARAM "Config Error: …".
    Error::missing_param(format!("Config Error: {message}"))
}

/// Whether `url` is an http(s) URL whose path is the gateway's notify path.
fn valid_gateway_url(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return false;
    }
    let path_start = rest.find('/').unwrap_or(rest.len());
    if path_start == 0 {
        return false;
    }
    let path = rest[path_start..].split(['?', '#']).next().unwrap_or("");
    path == NOTIFY_PATH
}

impl Services {
    /// A user's pushers.
    pub fn pushers(&self, user_id: &UserId) -> Result<Vec<Pusher>> {
        self.push
            .table
            .pushers(user_id.as_str())?
            .into_iter()
            .map(|(_, _, record)| {
                serde_json::from_str(&record.json).map_err(|e| Error::internal(format!("stored pusher: {e}")))
            })
            .collect()
    }

    /// `POST /pushers/set`: creates, replaces or (with `kind: null`) deletes a pusher, as
    /// Synapse does: without `append`, the same app id and pushkey of other users are removed.
    pub async fn set_pusher(&self, user_id: &UserId, device_id: &str, action: PusherAction) -> Result<()> {
        let table = &self.push.table;
        let _guard = self.push.pusher_lock.lock().await;
        let data = match action {
            PusherAction::Delete(ids) => {
                let mut batch = self.batch();
                table.queue_delete_pusher(&mut batch, user_id.as_str(), &ids.app_id, &ids.pushkey);
                batch.commit().await?;
                self.push.pushers_changed(user_id);
                return Ok(());
            }
            PusherAction::Post(data) => data,
            _ => return Err(Error::invalid_param("Unknown pusher action")),
        };
        let pusher = data.pusher;
        let (app_id, pushkey) = (pusher.ids.app_id.clone(), pusher.ids.pushkey.clone());
        if app_id.is_empty() || app_id.len() > 64 {
            return Err(Error::invalid_param("app_id must be 1 to 64 bytes"));
        }
        if pushkey.is_empty() || pushkey.len() > 512 {
            return Err(Error::invalid_param("pushkey must be 1 to 512 bytes"));
        }
        match &pusher.kind {
            PusherKind::Http(http) => {
                if !valid_gateway_url(&http.url) {
                    return Err(config_error(&format!(
                        "'url' must be an http(s) URL with a path of '{NOTIFY_PATH}'"
                    )));
                }
            }
            // Hearth binds no e-mail addresses to accounts, so no address can be the user's
            // (Synapse's answer when the address is not the user's).
            PusherKind::Email(_) => {
                return Err(Error::new(
                    http::StatusCode::BAD_REQUEST,
                    ErrorKind::ThreepidNotFound,
                    "Email not found",
                ));
            }
            _ => {
                return Err(Error::invalid_param(
                    "Unknown pusher kind: only \"http\" pushers are supported",
                ));
            }
        }
        let existing = table.pushers(user_id.as_str())?;
        let previous = existing
            .iter()
            .find(|(a, k, _)| *a == app_id && *k == pushkey)
            .map(|(_, _, r)| r.clone());
        if previous.is_none() && existing.len() >= MAX_PUSHERS_PER_USER {
            return Err(Error::invalid_param(format!(
                "A user may have at most {MAX_PUSHERS_PER_USER} pushers"
            )));
        }
        let json = serde_json::to_string(&pusher).map_err(|e| Error::internal(format!("pusher: {e}")))?;
        let record = PusherRecord {
            json,
            pushkey_ts_ms: crate::util::now_ms(),
            // Updating another device's pusher keeps the device that created it.
            device_id: previous.map_or_else(|| device_id.to_owned(), |p| p.device_id),
        };
        let mut batch = self.batch();
        let mut losers = Vec::new();
        if !data.append {
            for other in table.pushkey_users(&app_id, &pushkey)? {
                if other != user_id.as_str() {
                    tracing::info!(%app_id, user = %other, "pushkey taken over by another user: pusher removed");
                    table.queue_delete_pusher(&mut batch, &other, &app_id, &pushkey);
                    losers.extend(OwnedUserId::try_from(other).ok());
                }
            }
        }
        table.queue_put_pusher(&mut batch, user_id.as_str(), &app_id, &pushkey, &record)?;
        batch.commit().await?;
        self.push.pushers_changed(user_id);
        for other in &losers {
            self.push.pushers_changed(other);
        }
        self.push.wake.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::valid_gateway_url;

    #[test]
    fn gateway_urls_need_the_notify_path() {
        assert!(valid_gateway_url("https://push.example.org/_matrix/push/v1/notify"));
        assert!(valid_gateway_url("http://127.0.0.1:5000/_matrix/push/v1/notify"));
        assert!(!valid_gateway_url("https://push.example.org/notify"));
        assert!(!valid_gateway_url("ftp://push.example.org/_matrix/push/v1/notify"));
        assert!(!valid_gateway_url("/_matrix/push/v1/notify"));
        assert!(!valid_gateway_url("https:///_matrix/push/v1/notify"));
    }
}
