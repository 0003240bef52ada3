//! Media of other servers: a local user's download of `mxc://{other}/{id}` fetches it once from
//! its origin over federation (`federation/media.rs`) and caches it here, under the origin's
//! name and the media id, in the same tables as our own media (chunks, content-hash dedup,
//! thumbnails), so the next download, and every thumbnail, is served from RocksDB.
//!
//! Concurrent downloads of one item share one fetch: each takes the item's lock
//! ([`KeyedLocks`](crate::util::bounded::KeyedLocks), bounded), and whoever comes second finds
//! it cached, or gets the answer of the fetch that failed while it waited (remembered a minute
//! in a bounded map, only for those who were already waiting). At most [`MAX_CONCURRENT_FETCHES`] fetches run at once, as each holds at most
//! `media.max_upload_size` bytes in memory before they are written. A failure is not cached
//! (the next download asks again), nor is a file over the limit. With federation off nothing
//! is fetched: remote media not already cached is 404.

use std::time::{Duration, Instant};

use http::StatusCode;
use ruma::{OwnedServerName, ServerName, api::error::ErrorKind};

use super::{Media, MediaInfo, store};
use crate::{
    Error, Result,
    services::federation::{Federation, media::RemoteFile},
    storage::tables::media::{ContentRef, MediaRecord},
    util::{self, bounded::Evict},
};

/// Remote media items whose locks are kept while unused, and failed fetches remembered.
pub const MAX_LOCKS: usize = 1_000;
/// Remote fetches running at once.
pub const MAX_CONCURRENT_FETCHES: usize = 4;
/// The longest media id fetched (Synapse's ids are 24 characters).
const MAX_MEDIA_ID: usize = 255;

/// How long a failed fetch is remembered for the downloads that waited on it.
const FAILURE_KEPT: Duration = Duration::from_secs(60);

/// A remote media item.
pub(super) type RemoteKey = (OwnedServerName, String);

/// A fetch that failed: the downloads that waited for it get its answer instead of asking
/// again; a download that starts later asks again.
pub(super) struct RecentFailure {
    at: Instant,
    status: StatusCode,
    kind: ErrorKind,
    message: String,
}

impl Evict for RecentFailure {
    fn stale(&self, now: Instant) -> bool {
        now.duration_since(self.at) > FAILURE_KEPT
    }
}

/// Whether `id` is a media id the spec allows (`[A-Za-z0-9_-]+`): anything else is never
/// asked of another server.
fn valid_media_id(id: &str) -> bool {
    (1..=MAX_MEDIA_ID).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Media {
    /// The cached copy of another server's media item.
    pub(super) fn cached_remote(&self, server: &ServerName, media_id: &str) -> Result<Option<MediaInfo>> {
        let Some(record) = self.table.get(server.as_str(), media_id)? else {
            return Ok(None);
        };
        match record.content.clone() {
            Some(content) => self.info(record, &content).map(Some),
            None => Ok(None),
        }
    }

    /// A media item for a local user's authenticated download: ours (waiting up to `wait` for an
    /// asynchronous upload), or another server's, from the cache or fetched from its origin
    /// now and cached.
    pub async fn get_or_fetch(
        &self,
        federation: &Federation,
        server: &ServerName,
        media_id: &str,
        wait: std::time::Duration,
    ) -> Result<MediaInfo> {
        if server == self.server_name {
            return self.get(server, media_id, wait).await;
        }
        let unknown = || Error::not_found("Media not found");
        if let Some(info) = self.cached_remote(server, media_id)? {
            return Ok(info);
        }
        if !federation.enabled || !valid_media_id(media_id) {
            return Err(unknown());
        }
        let key: RemoteKey = (server.to_owned(), media_id.to_owned());
        let asked_at = Instant::now();
        let _item = self.remote_locks.lock(key.clone()).await;
        // Whoever held the lock before us may have fetched it, or failed to.
        if let Some(info) = self.cached_remote(server, media_id)? {
            return Ok(info);
        }
        let failed_meanwhile = self.remote_failures.with(&key, |failure| {
            failure
                .filter(|f| f.at >= asked_at)
                .map(|f| Error::new(f.status, f.kind.clone(), f.message.clone()))
        });
        if let Some(error) = failed_meanwhile {
            return Err(error);
        }
        let _slot = self
            .remote_slots
            .acquire()
            .await
            .map_err(|_| Error::internal("remote media slots closed"))?;
        let fetched = federation
            .download_media(server, media_id, self.config.max_upload_size)
            .await;
        match fetched {
            Ok(file) => self.store_remote(server, media_id, file).await,
            Err(error) => {
                if let Error::Matrix { status, kind, message } = &error {
                    let failure = RecentFailure {
                        at: Instant::now(),
                        status: *status,
                        kind: kind.clone(),
                        message: message.clone(),
                    };
                    self.remote_failures.insert(key, failure);
                }
                Err(error)
            }
        }
    }

    /// Writes a fetched file as chunks and commits its record in one synced batch.
    async fn store_remote(&self, server: &ServerName, media_id: &str, file: RemoteFile) -> Result<MediaInfo> {
        let mut writer = store::BlobWriter::new(self.table.clone());
        for piece in file.bytes.chunks(store::CHUNK_SIZE) {
            if let Err(e) = writer.write(piece).await {
                writer.discard().await;
                return Err(e);
            }
        }
        if file.bytes.is_empty()
            && let Err(e) = writer.write(&[]).await
        {
            writer.discard().await;
            return Err(e);
        }
        drop(file.bytes);
        let written = writer.finish().await?;
        let record = MediaRecord {
            uploader: server.to_string(),
            created_ms: util::now_ms(),
            content_type: file
                .content_type
                .filter(|t| !t.is_empty() && t.len() <= 255 && t.is_ascii()),
            filename: file.filename,
            content: Some(ContentRef {
                hash: written.hash,
                size: written.size,
            }),
            expires_ms: None,
        };
        let guard = self.commit_lock.lock().await;
        let outcome = async {
            let mut batch = self.table.batch();
            self.queue_blob(&mut batch, &written)?;
            self.table.queue_put(&mut batch, server.as_str(), media_id, &record)?;
            batch.commit().await?;
            Ok::<_, Error>(())
        }
        .await;
        drop(guard);
        if let Err(e) = outcome {
            store::discard_blob(&self.table, written.blob_id).await;
            return Err(e);
        }
        tracing::debug!(%server, %media_id, size = written.size, "remote media cached");
        if super::thumbnails::is_thumbnailable(record.content_type.as_deref()) {
            self.pregenerate_thumbnails(server.to_string(), media_id.to_owned());
        }
        let content = record.content.clone().ok_or_else(|| Error::internal("no content"))?;
        self.info(record, &content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids_are_checked_before_asking() {
        assert!(valid_media_id("abcDEF012_-"));
        assert!(!valid_media_id(""));
        assert!(!valid_media_id("../x"));
        assert!(!valid_media_id("a/b"));
        assert!(!valid_media_id(&"a".repeat(256)));
    }
}
