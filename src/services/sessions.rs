//! Devices and their sessions: logging in, access and refresh tokens, authenticating requests,
//! listing, renaming and deleting devices.
//!
//! Tokens are random 40-character strings; only their SHA-256 is stored. An access token issued
//! with a refresh token expires after `sessions.refreshable_token_lifetime_secs`; an expired one
//! is answered with `M_UNKNOWN_TOKEN` and `soft_logout: true` so the client refreshes instead of
//! logging out. "Last seen" times are kept in memory (for the 100,000 most recently active
//! devices) and merged into device listings.

use std::sync::Arc;

use ruma::{OwnedDeviceId, OwnedUserId, UserId};

use crate::{
    Error, Result,
    config::Config,
    services::appservice::Registered,
    storage::{
        Batch, Db,
        tables::devices::{AccessRecord, DeviceRecord, DevicesTable, RefreshRecord, TokenPair},
    },
    util::{
        self,
        bounded::{BoundedMap, Evict},
    },
};

/// Who a request is from.
#[derive(Clone, Debug)]
pub struct Session {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device the token belongs to (for an application service acting without a device,
    /// a placeholder no device has: see `deviceless`).
    pub device_id: OwnedDeviceId,
    /// An application service made the request with its `as_token` and named no device.
    pub deviceless: bool,
    /// The application service that made the request, acting as `user_id`.
    pub appservice: Option<Arc<Registered>>,
}

impl Session {
    /// The request's device; 400 `M_MISSING_PARAM` for an application service that named
    /// none (the spec: operations which require a device id fail).
    pub fn device(&self) -> Result<&ruma::DeviceId> {
        if self.deviceless {
            return Err(Error::missing_param(
                "An application service must name a device (device_id) for this request",
            ));
        }
        Ok(&self.device_id)
    }
}

/// Tokens handed to a client by login, registration or refresh.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The device the tokens belong to.
    pub device_id: OwnedDeviceId,
    /// New access token.
    pub access_token: String,
    /// New refresh token, when asked for.
    pub refresh_token: Option<String>,
    /// Lifetime of the access token, when it expires.
    pub expires_in: Option<std::time::Duration>,
    /// The device did not exist before.
    pub new_device: bool,
}

/// A device as shown to its owner.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Device id.
    pub device_id: OwnedDeviceId,
    /// Display name.
    pub display_name: Option<String>,
    /// Last seen, ms since the epoch.
    pub last_seen_ms: Option<u64>,
    /// Last seen from.
    pub last_seen_ip: Option<String>,
}

/// The sessions service.
pub struct Sessions {
    db: Arc<Db>,
    table: DevicesTable,
    config: Arc<Config>,
    /// When and from where each device was last seen (the most recently active ones).
    last_seen: BoundedMap<(OwnedUserId, OwnedDeviceId), Seen>,
}

/// Devices whose "last seen" is kept in memory; older ones show what their record holds.
const SEEN_DEVICES: usize = 100_000;

/// A device's last use: ms since the epoch, and the client address.
#[derive(Clone)]
struct Seen(u64, String);

impl Evict for Seen {}

fn new_token(prefix: &str) -> String {
    format!("{prefix}_{}", util::random_string(40))
}

impl Sessions {
    /// Builds the service.
    pub fn new(db: Arc<Db>, config: Arc<Config>) -> Self {
        Self {
            table: DevicesTable::new(Arc::clone(&db)),
            db,
            config,
            last_seen: BoundedMap::new(SEEN_DEVICES),
        }
    }

    /// Queues a device (new or existing) with fresh tokens into `batch`; for login and
    /// registration. An existing device keeps its name and loses its old tokens.
    pub fn queue_grant(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        with_refresh: bool,
        ip: Option<String>,
    ) -> Result<Grant> {
        self.queue_grant_keeping(batch, user_id, device_id, display_name, with_refresh, ip, None)
    }

    /// [`Self::queue_grant`], except that the tokens in `keep` stay valid, as the device's
    /// superseded pair, until the new tokens are first used.
    #[allow(clippy::too_many_arguments)]
    fn queue_grant_keeping(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        with_refresh: bool,
        ip: Option<String>,
        keep: Option<TokenPair>,
    ) -> Result<Grant> {
        let device_id = device_id.unwrap_or_else(|| OwnedDeviceId::from(util::random_string(10).to_uppercase()));
        let existing = self.table.get(user_id.as_str(), device_id.as_str())?;
        if let Some(old) = &existing {
            self.table.revoke_tokens(batch, old, keep);
        }
        let access_token = new_token("hat");
        let access_hash = util::sha256(access_token.as_bytes());
        let (refresh_token, expires_in) = if with_refresh {
            (Some(new_token("hrt")), Some(self.config.refreshable_token_lifetime))
        } else {
            (None, None)
        };
        let refresh_hash = refresh_token.as_ref().map(|t| util::sha256(t.as_bytes()));
        let now = util::now_ms();
        let record = DeviceRecord {
            display_name: existing.as_ref().map_or(display_name, |d| d.display_name.clone()),
            last_seen_ms: Some(now),
            last_seen_ip: ip,
            access_hash: Some(access_hash),
            refresh_hash,
            superseded: keep,
        };
        self.table.put(batch, user_id.as_str(), device_id.as_str(), &record)?;
        let access = AccessRecord {
            user_id: user_id.to_string(),
            device_id: device_id.to_string(),
            expires_ms: expires_in.map(|d| now + d.as_millis() as u64),
            unused_refresh_grant: keep.is_some(),
        };
        self.table.put_access(batch, &access_hash, &access)?;
        if let Some(hash) = refresh_hash {
            self.table.put_refresh(
                batch,
                &hash,
                &RefreshRecord {
                    user_id: user_id.to_string(),
                    device_id: device_id.to_string(),
                },
            )?;
        }
        Ok(Grant {
            device_id,
            access_token,
            refresh_token,
            expires_in,
            new_device: existing.is_none(),
        })
    }

    /// Logs a device in: new tokens, stored durably before they are returned.
    pub async fn login(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<String>,
        with_refresh: bool,
        ip: Option<String>,
    ) -> Result<Grant> {
        let mut batch = self.db.batch();
        let grant = self.queue_grant(&mut batch, user_id, device_id, display_name, with_refresh, ip)?;
        batch.commit().await?;
        Ok(grant)
    }

    /// Who an access token belongs to. Records "last seen" in memory. The first use of tokens
    /// issued by a refresh retires the tokens they replaced.
    pub async fn authenticate(&self, token: &str, ip: Option<&str>) -> Result<Session> {
        let hash = util::sha256(token.as_bytes());
        let mut record = self.table.access(&hash)?.ok_or_else(|| Error::unknown_token(false))?;
        if record.expires_ms.is_some_and(|exp| exp <= util::now_ms()) {
            return Err(Error::unknown_token(true));
        }
        if record.unused_refresh_grant {
            record.unused_refresh_grant = false;
            let mut batch = self.db.batch();
            self.table.put_access(&mut batch, &hash, &record)?;
            self.queue_retire_superseded(&mut batch, &record.user_id, &record.device_id)?;
            batch.commit().await?;
        }
        let user_id =
            OwnedUserId::try_from(record.user_id).map_err(|e| Error::internal(format!("stored user id: {e}")))?;
        let device_id = OwnedDeviceId::from(record.device_id);
        self.last_seen.insert(
            (user_id.clone(), device_id.clone()),
            Seen(util::now_ms(), ip.unwrap_or_default().to_owned()),
        );
        Ok(Session {
            user_id,
            device_id,
            deviceless: false,
            appservice: None,
        })
    }

    /// Exchanges a refresh token for new tokens (spec "Refreshing access tokens"). The tokens
    /// it replaces stay valid until the new ones are first used; refreshing with those old
    /// tokens again (the client lost the answer) replaces the unused new ones instead.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Grant> {
        let hash = util::sha256(refresh_token.as_bytes());
        let record = self.table.refresh(&hash)?.ok_or_else(|| Error::unknown_token(false))?;
        let user_id =
            OwnedUserId::try_from(record.user_id).map_err(|e| Error::internal(format!("stored user id: {e}")))?;
        let device = self
            .table
            .get(user_id.as_str(), &record.device_id)?
            .ok_or_else(|| Error::unknown_token(false))?;
        let keep = match (device.refresh_hash, device.access_hash, device.superseded) {
            // The current refresh token: it is now in use, so what it superseded goes, and it
            // becomes the superseded pair itself.
            (Some(current), Some(access_hash), _) if current == hash => Some(TokenPair {
                access_hash,
                refresh_hash: current,
            }),
            // The superseded one, retried: keep it superseded; the unused current pair goes.
            (_, _, Some(old)) if old.refresh_hash == hash => Some(old),
            _ => return Err(Error::unknown_token(false)),
        };
        let mut batch = self.db.batch();
        let grant = self.queue_grant_keeping(
            &mut batch,
            &user_id,
            Some(OwnedDeviceId::from(record.device_id)),
            None,
            true,
            None,
            keep,
        )?;
        batch.commit().await?;
        Ok(grant)
    }

    /// The user and device an access or refresh token belongs to (for OAuth 2.0 token
    /// revocation), whether or not the access token has expired.
    pub fn token_owner(&self, token: &str) -> Result<Option<(OwnedUserId, String)>> {
        let hash = util::sha256(token.as_bytes());
        let owner = match self.table.access(&hash)? {
            Some(record) => Some((record.user_id, record.device_id)),
            None => self.table.refresh(&hash)?.map(|r| (r.user_id, r.device_id)),
        };
        owner
            .map(|(user, device)| {
                OwnedUserId::try_from(user)
                    .map(|user| (user, device))
                    .map_err(|e| Error::internal(format!("stored user id: {e}")))
            })
            .transpose()
    }

    fn queue_retire_superseded(&self, batch: &mut Batch, user_id: &str, device_id: &str) -> Result<()> {
        if let Some(mut device) = self.table.get(user_id, device_id)?
            && let Some(pair) = device.superseded.take()
        {
            self.table.retire_superseded(batch, pair);
            self.table.put(batch, user_id, device_id, &device)?;
        }
        Ok(())
    }

    /// Deletes one device and its tokens.
    pub async fn delete_device(&self, user_id: &UserId, device_id: &str) -> Result<()> {
        let mut batch = self.db.batch();
        self.queue_delete_devices(&mut batch, user_id, Some(&[device_id.to_owned()]), None)?;
        batch.commit().await?;
        Ok(())
    }

    /// Queues removal of the given devices (all when `only` is `None`) except `keep`.
    pub fn queue_delete_devices(
        &self,
        batch: &mut Batch,
        user_id: &UserId,
        only: Option<&[String]>,
        keep: Option<&str>,
    ) -> Result<()> {
        for (device_id, record) in self.table.list(user_id.as_str())? {
            let wanted = only.is_none_or(|ids| ids.contains(&device_id));
            if wanted && keep != Some(device_id.as_str()) {
                self.table.delete(batch, user_id.as_str(), &device_id, &record);
                self.last_seen
                    .remove(&(user_id.to_owned(), OwnedDeviceId::from(device_id)));
            }
        }
        Ok(())
    }

    /// Deletes several devices at once (unknown ids are ignored, as the spec says).
    pub async fn delete_devices(&self, user_id: &UserId, device_ids: &[String]) -> Result<()> {
        let mut batch = self.db.batch();
        self.queue_delete_devices(&mut batch, user_id, Some(device_ids), None)?;
        batch.commit().await?;
        Ok(())
    }

    /// Deletes every device of the user.
    pub async fn delete_all_devices(&self, user_id: &UserId) -> Result<()> {
        let mut batch = self.db.batch();
        self.queue_delete_devices(&mut batch, user_id, None, None)?;
        batch.commit().await?;
        Ok(())
    }

    /// Every device of a user.
    pub fn list_devices(&self, user_id: &UserId) -> Result<Vec<DeviceInfo>> {
        Ok(self
            .table
            .list(user_id.as_str())?
            .into_iter()
            .map(|(id, record)| {
                let device_id = OwnedDeviceId::from(id);
                let live = self
                    .last_seen
                    .with(&(user_id.to_owned(), device_id.clone()), |seen| seen.cloned());
                DeviceInfo {
                    display_name: record.display_name,
                    last_seen_ms: live.as_ref().map(|l| l.0).or(record.last_seen_ms),
                    last_seen_ip: live.map(|l| l.1).filter(|ip| !ip.is_empty()).or(record.last_seen_ip),
                    device_id,
                }
            })
            .collect())
    }

    /// One device of a user.
    pub fn device(&self, user_id: &UserId, device_id: &str) -> Result<Option<DeviceInfo>> {
        Ok(self
            .list_devices(user_id)?
            .into_iter()
            .find(|d| d.device_id.as_str() == device_id))
    }

    /// Creates a device without tokens (MSC4190: an application service making a device for
    /// one of its users, then acting as it with `device_id`); `Ok(false)` when it already
    /// existed (it is left as it is).
    pub async fn create_device(&self, user_id: &UserId, device_id: &str, display_name: Option<String>) -> Result<bool> {
        if self.table.get(user_id.as_str(), device_id)?.is_some() {
            return Ok(false);
        }
        let record = DeviceRecord {
            display_name,
            last_seen_ms: None,
            last_seen_ip: None,
            access_hash: None,
            refresh_hash: None,
            superseded: None,
        };
        let mut batch = self.db.batch();
        self.table.put(&mut batch, user_id.as_str(), device_id, &record)?;
        batch.commit().await?;
        Ok(true)
    }

    /// Renames a device; `Ok(false)` when it does not exist.
    pub async fn rename_device(&self, user_id: &UserId, device_id: &str, display_name: Option<String>) -> Result<bool> {
        let Some(mut record) = self.table.get(user_id.as_str(), device_id)? else {
            return Ok(false);
        };
        record.display_name = display_name;
        let mut batch = self.db.batch();
        self.table.put(&mut batch, user_id.as_str(), device_id, &record)?;
        batch.commit().await?;
        Ok(true)
    }
}
