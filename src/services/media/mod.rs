//! The media repository (spec "Content repository"): uploads (direct and asynchronous through
//! `/create`), downloads, thumbnails, URL previews and housekeeping, all stored in RocksDB.
//!
//! An upload's bytes are written chunk by chunk as they arrive ([`store`]), hashed on the way;
//! the batch that makes the media visible is committed last: the media record, the content-hash
//! entry (a second upload of the same bytes only gains a reference, and its chunks are dropped)
//! and the end of the blob's pending mark. A crash before that batch leaves nothing visible;
//! the orphaned chunks are deleted at the next start ([`housekeeping`]), as are `/create`d ids
//! that expired without content.

pub mod housekeeping;
pub mod preview;
pub mod ssrf;
pub mod store;
pub mod thumbnails;

pub mod fetch;
pub mod remote;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::Stream;
use http::StatusCode;
use ruma::{OwnedMxcUri, OwnedServerName, UserId, api::error::ErrorKind};

use crate::{
    Error, Result,
    config::MediaConfig,
    storage::{
        Db,
        tables::media::{BlobRecord, ContentRef, MediaRecord, MediaTable},
    },
    util,
};

/// Longest a download waits for an asynchronous upload to arrive.
const MAX_WAIT: Duration = Duration::from_secs(120);

/// The media service.
pub struct Media {
    table: MediaTable,
    config: MediaConfig,
    server_name: OwnedServerName,
    /// Serialises the commits that touch reference counts and pending ids.
    commit_lock: tokio::sync::Mutex<()>,
    /// Woken whenever an upload completes, for downloads waiting on `/create`d ids.
    uploaded: tokio::sync::Notify,
    thumbnails: thumbnails::Thumbnailer,
    previews: preview::Previews,
    /// One fetch at a time per remote media item (others wait and find it cached).
    remote_locks: util::bounded::KeyedLocks<remote::RemoteKey>,
    /// Fetches that failed while others waited for them.
    remote_failures: util::bounded::BoundedMap<remote::RemoteKey, remote::RecentFailure>,
    /// Remote fetches under way at once (each may hold a file in memory).
    remote_slots: tokio::sync::Semaphore,
}

/// A media item ready to be served.
#[derive(Clone, Debug)]
pub struct MediaInfo {
    /// The uploaded `Content-Type`.
    pub content_type: Option<String>,
    /// The uploaded file name.
    pub filename: Option<String>,
    /// Length in bytes.
    pub size: u64,
    /// When it was created (ms since the epoch).
    pub created_ms: u64,
    blob: BlobRecord,
}

/// Where an upload goes.
pub enum UploadTarget {
    /// A fresh media id (`POST /upload`).
    New,
    /// An id from `/create` (`PUT /upload/{server}/{id}`).
    Created {
        /// The server name of the id.
        server: OwnedServerName,
        /// The media id.
        media_id: String,
    },
}

/// An upload in progress: feed it with [`Upload::write`], then [`Upload::finish`] (or drop it
/// through [`Upload::abort`]).
pub struct Upload<'a> {
    media: &'a Media,
    uploader: String,
    media_id: String,
    created: bool,
    writer: store::BlobWriter,
}

impl Media {
    /// Builds the service and deletes what interrupted uploads left behind.
    pub fn new(db: Arc<Db>, config: MediaConfig, server_name: OwnedServerName) -> Result<Self> {
        let table = MediaTable::new(db);
        housekeeping::delete_orphans(&table, server_name.as_str())?;
        let policy = ssrf::AddressPolicy {
            allow: config.url_preview_ip_allow.clone(),
            deny: config.url_preview_ip_deny.clone(),
        };
        Ok(Self {
            thumbnails: thumbnails::Thumbnailer::new(config.max_image_pixels),
            previews: preview::Previews::new(table.clone(), policy, &config),
            table,
            config,
            server_name,
            commit_lock: tokio::sync::Mutex::new(()),
            uploaded: tokio::sync::Notify::new(),
            remote_locks: util::bounded::KeyedLocks::new(remote::MAX_LOCKS),
            remote_failures: util::bounded::BoundedMap::new(remote::MAX_LOCKS),
            remote_slots: tokio::sync::Semaphore::new(remote::MAX_CONCURRENT_FETCHES),
        })
    }

    /// The media settings.
    pub fn config(&self) -> &MediaConfig {
        &self.config
    }

    fn mxc(&self, media_id: &str) -> OwnedMxcUri {
        format!("mxc://{}/{media_id}", self.server_name).into()
    }

    /// `POST /create`: a media id whose bytes come later, with its expiry (ms).
    pub async fn create_pending(&self, user: &UserId) -> Result<(OwnedMxcUri, u64)> {
        let _guard = self.commit_lock.lock().await;
        let now = util::now_ms();
        let pending = self.table.user_pending(user.as_str())?;
        let live = pending.iter().filter(|(_, expires)| *expires > now).count();
        if live >= self.config.max_pending_uploads {
            return Err(Error::new(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorKind::LimitExceeded(Default::default()),
                "Too many pending uploads; upload or wait for the pending ones to expire",
            ));
        }
        let media_id = util::random_string(24);
        let expires_ms = now + self.config.unused_expiration.as_millis() as u64;
        let record = MediaRecord {
            uploader: user.to_string(),
            created_ms: now,
            content_type: None,
            filename: None,
            content: None,
            expires_ms: Some(expires_ms),
        };
        let mut batch = self.table.batch();
        self.table
            .queue_put(&mut batch, self.server_name.as_str(), &media_id, &record)?;
        self.table
            .queue_user_pending(&mut batch, user.as_str(), &media_id, expires_ms);
        for (id, _) in pending.iter().filter(|(_, e)| *e <= now) {
            self.table.queue_user_pending_done(&mut batch, user.as_str(), id);
        }
        batch.commit().await?;
        Ok((self.mxc(&media_id), expires_ms))
    }

    /// Starts an upload, checking the target of an asynchronous one first.
    pub fn begin_upload(&self, user: &UserId, target: UploadTarget) -> Result<Upload<'_>> {
        let (media_id, created) = match target {
            UploadTarget::New => (util::random_string(24), false),
            UploadTarget::Created { server, media_id } => {
                self.check_created(user, &server, &media_id)?;
                (media_id, true)
            }
        };
        Ok(Upload {
            media: self,
            uploader: user.to_string(),
            media_id,
            created,
            writer: store::BlobWriter::new(self.table.clone()),
        })
    }

    fn check_created(&self, user: &UserId, server: &ruma::ServerName, media_id: &str) -> Result<MediaRecord> {
        let unknown = || Error::not_found("Unknown media ID");
        if server != self.server_name {
            return Err(unknown());
        }
        let record = self.table.get(server.as_str(), media_id)?.ok_or_else(unknown)?;
        if record.content.is_some() {
            return Err(Error::new(
                StatusCode::CONFLICT,
                ErrorKind::CannotOverwriteMedia,
                "Media already uploaded",
            ));
        }
        if record.uploader != user.as_str() {
            return Err(Error::forbidden("This media ID was created by another user"));
        }
        if record.expires_ms.is_some_and(|e| e <= util::now_ms()) {
            return Err(unknown());
        }
        Ok(record)
    }

    /// The media item, waiting up to `wait` for an asynchronous upload to arrive.
    pub async fn get(&self, server: &ruma::ServerName, media_id: &str, wait: Duration) -> Result<MediaInfo> {
        let unknown = || Error::not_found("Media not found");
        if server != self.server_name {
            // Remote media: what the cache holds (`remote.rs` fetches).
            return self.cached_remote(server, media_id)?.ok_or_else(unknown);
        }
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let notified = self.uploaded.notified();
            let record = self.table.get(server.as_str(), media_id)?.ok_or_else(unknown)?;
            match &record.content {
                Some(content) => return self.info(record.clone(), content),
                None if record.expires_ms.is_some_and(|e| e <= util::now_ms()) => return Err(unknown()),
                None => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    ErrorKind::NotYetUploaded,
                    "Content has not yet been uploaded",
                ));
            }
        }
    }

    fn info(&self, record: MediaRecord, content: &ContentRef) -> Result<MediaInfo> {
        let blob = self
            .table
            .blob(&content.hash)?
            .ok_or_else(|| Error::internal("media record without its blob"))?;
        Ok(MediaInfo {
            content_type: record.content_type,
            filename: record.filename,
            size: content.size,
            created_ms: record.created_ms,
            blob,
        })
    }

    /// Whether the legacy unauthenticated endpoints may serve this item (the freeze).
    pub fn legacy_allowed(&self, info: &MediaInfo) -> bool {
        self.config.serve_legacy_unauthenticated
            || self
                .config
                .legacy_unauthenticated_before_ms
                .is_some_and(|before| info.created_ms < before)
    }

    /// The bytes `start..end` of an item, streamed chunk by chunk; notes the access.
    pub fn read(
        &self,
        server: &ruma::ServerName,
        media_id: &str,
        info: &MediaInfo,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
        let table = self.table.clone();
        let (server, media_id) = (server.to_string(), media_id.to_owned());
        tokio::task::spawn_blocking(move || {
            let now = util::now_ms();
            let stale = table
                .last_access(&server, &media_id)
                .map(|last| last.is_none_or(|t| t + 3_600_000 < now));
            if stale.unwrap_or(false)
                && let Err(e) = table.set_last_access(&server, &media_id, now)
            {
                tracing::warn!("could not record a media access: {e}");
            }
        });
        store::read_range(self.table.clone(), info.blob.clone(), start, end.min(info.size))
    }

    /// Queues what makes freshly written content a stored blob: a reference more to an existing
    /// blob of the same bytes (whose new chunks are dropped), or the new blob itself; the
    /// pending mark goes either way. Call under `commit_lock`.
    fn queue_blob(&self, batch: &mut crate::storage::Batch, written: &store::Written) -> Result<()> {
        let table = &self.table;
        match table.blob(&written.hash)? {
            Some(mut existing) => {
                existing.refs += 1;
                table.queue_put_blob(batch, &written.hash, &existing)?;
                table.queue_delete_chunks(batch, written.blob_id);
            }
            None => {
                let blob = BlobRecord {
                    blob_id: written.blob_id,
                    size: written.size,
                    chunk_size: store::CHUNK_SIZE as u32,
                    refs: 1,
                };
                table.queue_put_blob(batch, &written.hash, &blob)?;
            }
        }
        table.queue_pending_blob_done(batch, written.blob_id);
        Ok(())
    }

    /// Notes that an upload completed, waking downloads that wait for it.
    fn notify_uploaded(&self) {
        self.uploaded.notify_waiters();
    }
}

impl Upload<'_> {
    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.writer.size()
    }

    /// Takes the next piece of the body; refuses more than `max_upload_size` in total.
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        let max = self.media.config.max_upload_size;
        if self.writer.size() + data.len() as u64 > max {
            return Err(Error::too_large(format!("The upload is larger than {max} bytes")));
        }
        self.writer.write(data).await
    }

    /// Abandons the upload and deletes what it wrote.
    pub async fn abort(self) {
        self.writer.discard().await;
    }

    /// Completes the upload: the media becomes visible in one synced batch.
    pub async fn finish(self, content_type: Option<String>, filename: Option<String>) -> Result<OwnedMxcUri> {
        let media = self.media;
        let table = &media.table;
        // On failure the writer's drop deletes what it wrote.
        let written = self.writer.finish().await?;
        let server = media.server_name.as_str();
        let guard = media.commit_lock.lock().await;
        let outcome = async {
            let mut record = if self.created {
                let user = <&UserId>::try_from(self.uploader.as_str()).map_err(|e| Error::internal(e.to_string()))?;
                media.check_created(user, &media.server_name, &self.media_id)?
            } else {
                MediaRecord {
                    uploader: self.uploader.clone(),
                    created_ms: util::now_ms(),
                    content_type: None,
                    filename: None,
                    content: None,
                    expires_ms: None,
                }
            };
            record.content_type = content_type.filter(|t| !t.is_empty());
            record.filename = filename.filter(|f| !f.is_empty());
            record.content = Some(ContentRef {
                hash: written.hash,
                size: written.size,
            });
            record.expires_ms = None;
            let mut batch = table.batch();
            media.queue_blob(&mut batch, &written)?;
            table.queue_put(&mut batch, server, &self.media_id, &record)?;
            if self.created {
                table.queue_user_pending_done(&mut batch, &self.uploader, &self.media_id);
            }
            batch.commit().await?;
            Ok::<_, Error>(record)
        }
        .await;
        drop(guard);
        let record = match outcome {
            Ok(record) => record,
            Err(e) => {
                store::discard_blob(table, written.blob_id).await;
                return Err(e);
            }
        };
        media.notify_uploaded();
        tracing::debug!(media_id = %self.media_id, size = written.size, "media uploaded");
        if thumbnails::is_thumbnailable(record.content_type.as_deref()) {
            media.pregenerate_thumbnails(server.to_owned(), self.media_id.clone());
        }
        Ok(media.mxc(&self.media_id))
    }
}
