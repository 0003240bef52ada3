//! Media housekeeping: deleting the chunks of uploads a crash interrupted, the store's
//! statistics, and purging media (unused for a number of days, or uploaded by one user) with
//! reference counting over deduplicated content.

use super::Media;
use crate::{
    Result,
    storage::tables::media::{MediaRecord, MediaTable},
    util,
};

/// Deletes blobs left pending by interrupted uploads and `/create`d ids that expired without
/// content (run at start, before any upload).
pub(super) fn delete_orphans(table: &MediaTable, server: &str) -> Result<()> {
    let pending = table.pending_blobs()?;
    let now = util::now_ms();
    let expired: Vec<_> = table
        .all_user_pending()?
        .into_iter()
        .filter(|(_, _, expires)| *expires <= now)
        .collect();
    if pending.is_empty() && expired.is_empty() {
        return Ok(());
    }
    let mut batch = table.batch();
    for blob_id in &pending {
        table.queue_delete_chunks(&mut batch, *blob_id);
        table.queue_pending_blob_done(&mut batch, *blob_id);
    }
    for (user, media_id, _) in &expired {
        if table.get(server, media_id)?.is_some_and(|r| r.content.is_none()) {
            table.queue_delete(&mut batch, server, media_id)?;
        }
        table.queue_user_pending_done(&mut batch, user, media_id);
    }
    batch.commit_blocking()?;
    tracing::info!(
        interrupted = pending.len(),
        expired = expired.len(),
        "deleted interrupted uploads and expired media ids"
    );
    Ok(())
}

/// What the media store holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// Media ids with content.
    pub media: u64,
    /// Media ids created but not uploaded yet.
    pub pending: u64,
    /// Distinct contents stored (after deduplication).
    pub blobs: u64,
    /// Bytes of distinct content.
    pub blob_bytes: u64,
    /// Bytes all media ids would take without deduplication.
    pub logical_bytes: u64,
    /// Cached thumbnails.
    pub thumbnails: u64,
    /// Bytes of cached thumbnails.
    pub thumbnail_bytes: u64,
}

/// Which media a purge removes.
#[derive(Clone, Debug)]
pub enum PurgeFilter {
    /// Neither uploaded nor downloaded during the last `days` days.
    UnusedForDays(u64),
    /// Uploaded (or created) by this user.
    User(String),
}

impl Media {
    /// Counts and sizes of the store (a full scan; for the admin command).
    pub fn stats(&self) -> Result<MediaStats> {
        let mut stats = MediaStats::default();
        for (_, _, record) in self.table.all()? {
            match &record.content {
                Some(content) => {
                    stats.media += 1;
                    stats.logical_bytes += content.size;
                }
                None => stats.pending += 1,
            }
        }
        for blob in self.table.blobs()? {
            stats.blobs += 1;
            stats.blob_bytes += blob.size;
        }
        (stats.thumbnails, stats.thumbnail_bytes) = self.table.thumbnail_stats()?;
        Ok(stats)
    }

    /// Deletes the media the filter selects, with their thumbnails, and the content no other
    /// media id references. `progress` is called after each item with (done, total). Returns
    /// (media ids removed, content bytes freed).
    pub async fn purge(&self, filter: &PurgeFilter, mut progress: impl FnMut(u64, u64)) -> Result<(u64, u64)> {
        let now = util::now_ms();
        let selected: Vec<(String, String, MediaRecord)> = self
            .table
            .all()?
            .into_iter()
            .filter(|(server, id, record)| match filter {
                PurgeFilter::User(user) => record.uploader == *user,
                PurgeFilter::UnusedForDays(days) => {
                    let cutoff = now.saturating_sub(days.saturating_mul(86_400_000));
                    let last = self
                        .table
                        .last_access(server, id)
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                        .max(record.created_ms);
                    last < cutoff
                }
            })
            .collect();
        let total = selected.len() as u64;
        let (mut removed, mut freed) = (0, 0);
        for (server, media_id, record) in selected {
            let _guard = self.commit_lock.lock().await;
            let mut batch = self.table.batch();
            self.table.queue_delete(&mut batch, &server, &media_id)?;
            if record.content.is_none() {
                self.table
                    .queue_user_pending_done(&mut batch, &record.uploader, &media_id);
            }
            if let Some(content) = &record.content
                && let Some(mut blob) = self.table.blob(&content.hash)?
            {
                if blob.refs <= 1 {
                    self.table.queue_delete_blob(&mut batch, &content.hash, blob.blob_id);
                    freed += blob.size;
                } else {
                    blob.refs -= 1;
                    self.table.queue_put_blob(&mut batch, &content.hash, &blob)?;
                }
            }
            batch.commit().await?;
            removed += 1;
            progress(removed, total);
        }
        Ok((removed, freed))
    }
}
