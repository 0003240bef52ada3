//! The rules of Matrix, one service per concern. Services know nothing of HTTP (no actix types)
//! and nothing of RocksDB (they use the typed tables of `storage::tables`).
//!
//! [`Services`] is built once at start and shared (`Arc`) with every request handler.

pub mod account_data;
pub mod accounts;
pub mod appservice;
pub mod directory;
pub mod events;
pub mod federation;
pub mod keys;
pub mod media;
pub mod oauth;
pub mod openid;
pub mod passwords;
pub mod presence;
pub mod profile;
pub mod push;
pub mod rate_limit;
pub mod receipts;
pub mod registration;
pub mod reports;
pub mod rooms;
pub mod search;
pub mod server_keys;
pub mod sessions;
pub mod spaces;
pub mod sync;
pub mod tags;
pub mod thread_subs;
pub mod tokens;
pub mod typing;
pub mod uiaa;
pub mod user_directory;
pub mod voip;

use std::sync::Arc;

use crate::{
    config::Config,
    storage::{Batch, Db, StorageOptions, StorageResult},
};

/// Every service, built once.
pub struct Services {
    db: Arc<Db>,
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Accounts and passwords.
    pub accounts: accounts::Accounts,
    /// Devices, access and refresh tokens, login.
    pub sessions: sessions::Sessions,
    /// Registration policy and registration tokens.
    pub registration: registration::Registration,
    /// User-interactive authentication sessions.
    pub uiaa: uiaa::Uiaa,
    /// Profiles.
    pub profile: profile::Profiles,
    /// Account data.
    pub account_data: account_data::AccountData,
    /// Request rate limits.
    pub rate_limit: rate_limit::RateLimiter,
    /// The server's signing key.
    pub server_keys: Arc<server_keys::ServerKeys>,
    /// Rooms: the event graph, state and timelines.
    pub rooms: rooms::Rooms,
    /// Room aliases, the published room list and room summaries.
    pub directory: Arc<directory::Directory>,
    /// Abuse reports.
    pub reports: reports::Reports,
    /// The media repository.
    pub media: media::Media,
    /// Sync filters.
    pub filters: sync::filter::Filters,
    /// Typing notifications (in memory).
    pub typing: typing::Typing,
    /// Read receipts.
    pub receipts: receipts::Receipts,
    /// Unread notification counts, cached per room and user.
    pub unread: sync::unread::UnreadCache,
    /// Unread counts per thread (`sync::thread_unread`).
    pub thread_unread: sync::thread_unread::ThreadUnreadCache,
    /// Lazy-loaded members already sent, per device and room.
    pub lazy_members: sync::lazy::SentMembers,
    /// The bound on initial syncs under construction at once (`[sync] initial_concurrency`).
    pub initial_syncs: sync::InitialSyncs,
    /// Sliding sync: connections and bump stamps (in memory).
    pub sliding: sync::sliding::SlidingSync,
    /// Presence (in memory).
    pub presence: presence::Presence,
    /// End-to-end encryption keys and to-device messages.
    pub keys: keys::Keys,
    /// Server-side key backup.
    pub key_backup: keys::backup::KeyBackup,
    /// The OAuth 2.0 authorization server (clients, codes, device grants, browser sessions).
    pub oauth: oauth::OAuth,
    /// The user directory (in memory, rebuilt at start).
    pub user_directory: Arc<user_directory::UserDirectory>,
    /// OpenID tokens for third parties (widgets, call services).
    pub openid: openid::OpenId,
    /// Push rules, pushers, the notification log and push delivery.
    pub push: push::Push,
    /// Thread subscriptions (MSC4306).
    pub thread_subs: Arc<thread_subs::ThreadSubs>,
    /// Talking to other servers.
    pub federation: federation::Federation,
    /// The registered application services (bridges, bots).
    pub appservices: appservice::Appservices,
}

impl Services {
    /// Opens the database in the configured directory and builds the services over it.
    pub fn open(config: Config) -> Result<Arc<Services>, crate::Error> {
        let db = open_db(&config)?;
        Self::build(config, db)
    }

    /// Builds the services over an open database.
    pub fn build(config: Config, db: Arc<Db>) -> Result<Arc<Services>, crate::Error> {
        let config = Arc::new(config);
        let server_keys = Arc::new(server_keys::ServerKeys::load_or_create(
            &config.signing_key_path,
            config.server_name.as_str(),
        )?);
        let positions = Arc::new(crate::storage::positions::Positions::open(Arc::clone(&db))?);
        let directory = Arc::new(directory::Directory::new(Arc::clone(&db), config.server_name.clone()));
        let user_directory = Arc::new(user_directory::UserDirectory::new(
            config.user_directory_search_all_users,
        ));
        let rooms = rooms::Rooms::new(
            Arc::clone(&db),
            Arc::clone(&positions),
            Arc::clone(&server_keys),
            config.server_name.clone(),
            Arc::clone(&directory),
            Arc::clone(&user_directory),
        )?;
        let accounts = accounts::Accounts::new(Arc::clone(&db), Arc::clone(&config))?;
        let sessions = sessions::Sessions::new(Arc::clone(&db), Arc::clone(&config));
        let oauth = oauth::OAuth::new(Arc::clone(&db), Arc::clone(&config));
        let registration = registration::Registration::new(Arc::clone(&db), config.registration);
        let profile = profile::Profiles::new(Arc::clone(&db));
        let notifier = Arc::clone(rooms.notifier());
        let account_data =
            account_data::AccountData::new(Arc::clone(&db), Arc::clone(&positions), Arc::clone(&notifier));
        let filters = sync::filter::Filters::new(Arc::clone(&db));
        let typing = typing::Typing::new(Arc::clone(&notifier));
        let keys = keys::Keys::new(
            Arc::clone(&db),
            Arc::clone(&positions),
            Arc::clone(&notifier),
            config.server_name.clone(),
        );
        let key_backup = keys::backup::KeyBackup::new(Arc::clone(&db));
        let thread_subs = Arc::new(thread_subs::ThreadSubs::new(
            Arc::clone(&db),
            Arc::clone(&positions),
            Arc::clone(&notifier),
            config.push.thread_subscription_rules,
        ));
        let receipts = receipts::Receipts::new(Arc::clone(&db), positions, Arc::clone(&notifier));
        let presence = presence::Presence::new(notifier);
        let rate_limit = rate_limit::RateLimiter::new(&config);
        let reports = reports::Reports::new(Arc::clone(&db));
        let media = media::Media::new(Arc::clone(&db), config.media.clone(), config.server_name.clone())?;
        user_directory.rebuild(&accounts, &profile, &rooms)?;
        let openid = openid::OpenId::new(Arc::clone(&db));
        let push = push::Push::new(Arc::clone(&db), &config.push);
        let initial_syncs = sync::InitialSyncs::new(config.initial_sync_concurrency);
        let federation = federation::Federation::new(&config, Arc::clone(&db), Arc::clone(&server_keys))?;
        let mut appservices = appservice::Appservices::load(&config.appservice_registration_files, &config.server_name)
            .map_err(crate::Error::internal)?;
        appservices.attach(Arc::clone(&db));
        Ok(Arc::new(Services {
            federation,
            appservices,
            db,
            reports,
            media,
            uiaa: uiaa::Uiaa::new(),
            accounts,
            sessions,
            registration,
            profile,
            account_data,
            rate_limit,
            server_keys,
            rooms,
            directory,
            config,
            filters,
            typing,
            receipts,
            unread: sync::unread::UnreadCache::default(),
            thread_unread: Default::default(),
            lazy_members: sync::lazy::SentMembers::default(),
            initial_syncs,
            sliding: sync::sliding::SlidingSync::default(),
            presence,
            keys,
            key_backup,
            oauth,
            user_directory,
            openid,
            push,
            thread_subs,
        }))
    }
}

impl Services {
    /// Starts a batch: services queue their parts of one logical change into it.
    pub fn batch(&self) -> Batch {
        self.db.batch()
    }

    /// A batch for creating `user_id`'s account, holding what a new account starts with: its
    /// localpart as display name (unless `registration.localpart_as_display_name` is off).
    pub fn new_account_batch(&self, user_id: &ruma::UserId) -> crate::Result<Batch> {
        let mut batch = self.batch();
        if self.config.localpart_as_display_name {
            self.profile.queue_initial(&mut batch, user_id)?;
        }
        Ok(batch)
    }

    /// Deactivates an account: no password, no devices or tokens, no profile, no account
    /// data, no thread subscriptions, all in one batch (the user id stays reserved); then the user leaves every room
    /// they are in, rejects their invites and withdraws their knocks, each with its member
    /// event, as Synapse does.
    pub async fn deactivate_user(&self, user_id: &ruma::UserId) -> Result<(), crate::Error> {
        let devices = self.device_ids(user_id, None, None)?;
        let mut batch = self.batch();
        self.sessions.queue_delete_devices(&mut batch, user_id, None, None)?;
        self.profile.queue_clear(&mut batch, user_id);
        self.account_data.queue_clear(&mut batch, user_id)?;
        self.thread_subs.queue_clear(&mut batch, user_id)?;
        self.push.queue_delete_pushers(&mut batch, user_id, None)?;
        self.accounts.deactivate(user_id, batch).await?;
        self.push.pushers_changed(user_id);
        self.user_directory.account_deactivated(user_id);
        self.keys.devices_deleted(&self.rooms, user_id, &devices).await?;
        for (room_id, member) in self.rooms.memberships_of(user_id)?.iter() {
            if !matches!(member.membership.as_str(), "join" | "invite" | "knock") {
                continue;
            }
            // An invite to or knock on a room this server does not have: ended through the
            // server it came from or went through (here only if that server cannot be reached).
            let remote = match self.rooms.remote_invite(room_id, user_id)? {
                Some((invite, _)) => Some(invite.sender.server_name().to_owned()),
                None => self.rooms.remote_knock(room_id, user_id)?.map(|knock| knock.via),
            };
            if let Some(server) = remote
                && !self.federation.resident(&self.rooms, room_id)?
            {
                if self.federation.enabled
                    && let Err(e) = self.federation.leave_remote(user_id, room_id, &server).await
                {
                    tracing::info!(%user_id, %room_id, error = %e, "remote invite or knock ended here only");
                }
                if let Err(e) = self.rooms.drop_remote_invite(room_id, user_id).await {
                    tracing::warn!(%user_id, %room_id, error = %e, "deactivated user's remote membership stays");
                }
                continue;
            }
            // One room refusing (say, a broken room) must not keep the user in the others.
            if let Err(e) = self
                .rooms
                .set_membership(room_id, user_id, user_id, "leave", None)
                .await
            {
                tracing::warn!(%user_id, %room_id, error = %e, "deactivated user could not leave a room");
            }
        }
        tracing::info!(%user_id, "account deactivated");
        Ok(())
    }
}

impl Services {
    /// The ids of a user's devices that [`sessions::Sessions::queue_delete_devices`] with the
    /// same `only` and `keep` removes.
    pub fn device_ids(
        &self,
        user_id: &ruma::UserId,
        only: Option<&[String]>,
        keep: Option<&str>,
    ) -> Result<Vec<String>, crate::Error> {
        Ok(self
            .sessions
            .list_devices(user_id)?
            .into_iter()
            .map(|d| d.device_id.to_string())
            .filter(|d| only.is_none_or(|ids| ids.contains(d)) && keep != Some(d.as_str()))
            .collect())
    }

    /// Replaces `user_id`'s password; with `sign_out_others`, every device but `keep` is signed
    /// out in the same batch (tokens, keys, pushers and to-device inboxes, as
    /// [`Services::delete_devices`]), as `/account/password` does with `logout_devices`.
    pub async fn change_password(
        &self,
        user_id: &ruma::UserId,
        new_password: &str,
        sign_out_others: bool,
        keep: Option<&str>,
    ) -> Result<(), crate::Error> {
        let devices = match sign_out_others {
            true => self.device_ids(user_id, None, keep)?,
            false => Vec::new(),
        };
        if devices.is_empty() {
            return self.accounts.set_password(user_id, new_password, self.batch()).await;
        }
        let hash = self.accounts.hash_password(new_password).await?;
        self.keys
            .delete_devices_with(&self.rooms, user_id, &devices, |batch| {
                self.accounts.queue_password_hash(batch, user_id, hash)?;
                self.push.queue_delete_pushers(batch, user_id, Some(&devices))?;
                self.sessions.queue_delete_devices(batch, user_id, None, keep)
            })
            .await?;
        self.push.pushers_changed(user_id);
        Ok(())
    }

    /// Deletes devices (all when `only` is `None`, except `keep`) with their tokens, keys,
    /// pushers and to-device inboxes in one batch, and records the device-list change.
    pub async fn delete_devices(
        &self,
        user_id: &ruma::UserId,
        only: Option<&[String]>,
        keep: Option<&str>,
    ) -> Result<(), crate::Error> {
        let devices = self.device_ids(user_id, only, keep)?;
        self.keys
            .delete_devices_with(&self.rooms, user_id, &devices, |batch| {
                self.push.queue_delete_pushers(batch, user_id, Some(&devices))?;
                self.sessions.queue_delete_devices(batch, user_id, only, keep)
            })
            .await?;
        self.push.pushers_changed(user_id);
        Ok(())
    }
}

impl Services {
    /// Flushes what is stored to the database's files before the process stops (every other
    /// holder of the services, the background workers, may still hold the database open).
    pub fn flush_for_shutdown(&self) {
        if let Err(e) = self.db.flush_all() {
            tracing::warn!(error = %e, "could not flush the database on stop; the next start replays its log");
        }
    }
}

#[cfg(test)]
impl Services {
    /// Services on a fresh database in `dir` (writes not synced), with `cache_bytes` of cache.
    pub(crate) fn for_tests(dir: &std::path::Path, cache_bytes: usize) -> Arc<Services> {
        let config = Config {
            database_path: dir.join("db"),
            signing_key_path: dir.join("signing.key"),
            cache_bytes,
            sync_writes: false,
            ..Config::defaults()
        };
        Services::open(config).expect("services on a fresh database")
    }
}

/// Opens the database a configuration points at.
pub fn open_db(config: &Config) -> StorageResult<Arc<Db>> {
    Db::open(
        &config.database_path,
        &StorageOptions {
            cache_bytes: config.cache_bytes,
            sync_writes: config.sync_writes,
        },
    )
}
