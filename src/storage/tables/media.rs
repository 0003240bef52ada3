//! The media repository's tables: media records, content blobs stored as numbered chunks, the
//! content-hash index that deduplicates them, blobs still being written, cached thumbnails,
//! last-access times and URL previews. Layouts are in [`crate::storage::schema`].
//!
//! A blob's chunks are written first (unsynced, one chunk per batch) under a fresh blob id that
//! is marked pending; the batch that makes the media visible (its record, the content-hash
//! entry, the pending mark's removal) is committed last and synced. A crash in between leaves
//! only the pending mark and its chunks, which [`MediaTable::pending_blobs`] lets the service
//! delete at the next start.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::{
    Batch, Db, StorageResult, codec,
    schema::{
        BLOBCHUNK_BYTES, BLOBID_PENDING, CONTENTHASH_BLOB, MEDIAID_LASTACCESS, MEDIAID_MEDIA, MEDIATHUMB_THUMBNAIL,
        URL_PREVIEW, USERMEDIA_PENDING,
    },
};

/// The content of an uploaded media item.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContentRef {
    /// SHA-256 of the bytes: the key into `contenthash_blob`.
    pub hash: [u8; 32],
    /// Length in bytes.
    pub size: u64,
}

/// One media id, as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MediaRecord {
    /// Who created it.
    pub uploader: String,
    /// When it was created (ms since the epoch).
    pub created_ms: u64,
    /// The uploaded `Content-Type`.
    pub content_type: Option<String>,
    /// The uploaded file name.
    pub filename: Option<String>,
    /// The content; `None` while an asynchronous upload (`/create`) waits for its bytes.
    pub content: Option<ContentRef>,
    /// Until when a pending id may still be uploaded to (ms since the epoch).
    pub expires_ms: Option<u64>,
}

/// One stored blob: the chunks of one distinct content, shared by every media id with that hash.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BlobRecord {
    /// Key prefix of the chunks in `blobchunk_bytes`.
    pub blob_id: u64,
    /// Length in bytes.
    pub size: u64,
    /// Size of every chunk but the last.
    pub chunk_size: u32,
    /// How many media ids reference this blob.
    pub refs: u64,
}

impl BlobRecord {
    /// Number of chunks.
    pub fn chunks(&self) -> u32 {
        self.size.div_ceil(u64::from(self.chunk_size)) as u32
    }
}

/// A cached thumbnail.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ThumbnailRecord {
    /// Its `Content-Type`.
    pub content_type: String,
    /// The encoded image.
    pub bytes: Vec<u8>,
}

/// A cached URL preview.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PreviewRecord {
    /// When it was fetched (ms since the epoch).
    pub fetched_ms: u64,
    /// The OpenGraph object as JSON text.
    pub json: String,
}

/// Typed access to the media tables.
#[derive(Clone)]
pub struct MediaTable {
    db: Arc<Db>,
}

fn media_key(server: &str, media_id: &str) -> Vec<u8> {
    codec::key(&[server.as_bytes(), media_id.as_bytes()])
}

fn chunk_key(blob_id: u64, index: u32) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..8].copy_from_slice(&blob_id.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

impl MediaTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Starts a batch.
    pub fn batch(&self) -> Batch {
        self.db.batch()
    }

    /// A media record.
    pub fn get(&self, server: &str, media_id: &str) -> StorageResult<Option<MediaRecord>> {
        self.db
            .get(MEDIAID_MEDIA, &media_key(server, media_id))?
            .map(|b| codec::decode(MEDIAID_MEDIA, &b))
            .transpose()
    }

    /// Queues a media record (new or updated).
    pub fn queue_put(
        &self,
        batch: &mut Batch,
        server: &str,
        media_id: &str,
        record: &MediaRecord,
    ) -> StorageResult<()> {
        batch.put(
            MEDIAID_MEDIA,
            &media_key(server, media_id),
            &codec::encode(MEDIAID_MEDIA, record)?,
        );
        Ok(())
    }

    /// Queues the deletion of a media record, its last-access time and its thumbnails.
    pub fn queue_delete(&self, batch: &mut Batch, server: &str, media_id: &str) -> StorageResult<()> {
        let key = media_key(server, media_id);
        batch.delete(MEDIAID_MEDIA, &key);
        batch.delete(MEDIAID_LASTACCESS, &key);
        for (thumb, _) in self.db.scan_prefix(
            MEDIATHUMB_THUMBNAIL,
            &codec::prefix(&[server.as_bytes(), media_id.as_bytes()]),
        )? {
            batch.delete(MEDIATHUMB_THUMBNAIL, &thumb);
        }
        Ok(())
    }

    /// Every media record as (server, media id, record), in key order.
    pub fn all(&self) -> StorageResult<Vec<(String, String, MediaRecord)>> {
        let mut out = Vec::new();
        for (key, value) in self.db.scan_prefix(MEDIAID_MEDIA, b"")? {
            let mut parts = codec::split(&key);
            let server = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let media_id = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            out.push((server, media_id, codec::decode(MEDIAID_MEDIA, &value)?));
        }
        Ok(out)
    }

    /// Queues a user's pending asynchronous upload (`/create`) with its expiry.
    pub fn queue_user_pending(&self, batch: &mut Batch, user: &str, media_id: &str, expires_ms: u64) {
        batch.put(
            USERMEDIA_PENDING,
            &codec::key(&[user.as_bytes(), media_id.as_bytes()]),
            &codec::u64_bytes(expires_ms),
        );
    }

    /// Queues the removal of a user's pending upload.
    pub fn queue_user_pending_done(&self, batch: &mut Batch, user: &str, media_id: &str) {
        batch.delete(USERMEDIA_PENDING, &codec::key(&[user.as_bytes(), media_id.as_bytes()]));
    }

    /// A user's pending uploads as (media id, expiry ms).
    pub fn user_pending(&self, user: &str) -> StorageResult<Vec<(String, u64)>> {
        self.db
            .scan_prefix(USERMEDIA_PENDING, &codec::prefix(&[user.as_bytes()]))?
            .into_iter()
            .map(|(k, v)| {
                let id = codec::split(&k).nth(1).unwrap_or_default();
                Ok((
                    String::from_utf8_lossy(id).into_owned(),
                    codec::read_u64(USERMEDIA_PENDING, &v)?,
                ))
            })
            .collect()
    }

    /// Every pending upload as (user, media id, expiry ms).
    pub fn all_user_pending(&self) -> StorageResult<Vec<(String, String, u64)>> {
        self.db
            .scan_prefix(USERMEDIA_PENDING, b"")?
            .into_iter()
            .map(|(k, v)| {
                let mut parts = codec::split(&k);
                let user = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                let id = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
                Ok((user, id, codec::read_u64(USERMEDIA_PENDING, &v)?))
            })
            .collect()
    }

    /// Marks a blob id as being written (its chunks are not referenced yet).
    pub fn mark_pending_blob(&self, blob_id: u64, started_ms: u64) -> StorageResult<()> {
        let mut batch = self.db.batch();
        batch.put(BLOBID_PENDING, &blob_id.to_be_bytes(), &codec::u64_bytes(started_ms));
        batch.commit_unsynced()
    }

    /// Blob ids whose writing never finished (left by a crash).
    pub fn pending_blobs(&self) -> StorageResult<Vec<u64>> {
        self.db
            .scan_prefix(BLOBID_PENDING, b"")?
            .into_iter()
            .map(|(k, _)| codec::read_u64(BLOBID_PENDING, &k))
            .collect()
    }

    /// Queues the end of a blob's pending state (it is now referenced, or deleted).
    pub fn queue_pending_blob_done(&self, batch: &mut Batch, blob_id: u64) {
        batch.delete(BLOBID_PENDING, &blob_id.to_be_bytes());
    }

    /// Writes one chunk without syncing (blocking; a later synced batch makes it durable).
    pub fn put_chunk(&self, blob_id: u64, index: u32, bytes: &[u8]) -> StorageResult<()> {
        let mut batch = self.db.batch();
        batch.put(BLOBCHUNK_BYTES, &chunk_key(blob_id, index), bytes);
        batch.commit_unsynced()
    }

    /// Reads one chunk (blocking).
    pub fn chunk(&self, blob_id: u64, index: u32) -> StorageResult<Option<Vec<u8>>> {
        self.db.get(BLOBCHUNK_BYTES, &chunk_key(blob_id, index))
    }

    /// Queues the deletion of every chunk of a blob. Blob ids stay below `u64::MAX`.
    pub fn queue_delete_chunks(&self, batch: &mut Batch, blob_id: u64) {
        batch.delete_range(BLOBCHUNK_BYTES, &chunk_key(blob_id, 0), &chunk_key(blob_id + 1, 0));
    }

    /// The blob holding the content with this hash.
    pub fn blob(&self, hash: &[u8; 32]) -> StorageResult<Option<BlobRecord>> {
        self.db
            .get(CONTENTHASH_BLOB, hash)?
            .map(|b| codec::decode(CONTENTHASH_BLOB, &b))
            .transpose()
    }

    /// Queues a blob record (new or with a changed reference count).
    pub fn queue_put_blob(&self, batch: &mut Batch, hash: &[u8; 32], blob: &BlobRecord) -> StorageResult<()> {
        batch.put(CONTENTHASH_BLOB, hash, &codec::encode(CONTENTHASH_BLOB, blob)?);
        Ok(())
    }

    /// Queues the removal of a blob record and its chunks.
    pub fn queue_delete_blob(&self, batch: &mut Batch, hash: &[u8; 32], blob_id: u64) {
        batch.delete(CONTENTHASH_BLOB, hash);
        self.queue_delete_chunks(batch, blob_id);
    }

    /// Every blob record (for statistics).
    pub fn blobs(&self) -> StorageResult<Vec<BlobRecord>> {
        self.db
            .scan_prefix(CONTENTHASH_BLOB, b"")?
            .into_iter()
            .map(|(_, v)| codec::decode(CONTENTHASH_BLOB, &v))
            .collect()
    }

    /// A cached thumbnail.
    pub fn thumbnail(&self, server: &str, media_id: &str, spec: &str) -> StorageResult<Option<ThumbnailRecord>> {
        self.db
            .get(
                MEDIATHUMB_THUMBNAIL,
                &codec::key(&[server.as_bytes(), media_id.as_bytes(), spec.as_bytes()]),
            )?
            .map(|b| codec::decode(MEDIATHUMB_THUMBNAIL, &b))
            .transpose()
    }

    /// Caches a thumbnail (unsynced: it can always be made again).
    pub fn put_thumbnail(
        &self,
        server: &str,
        media_id: &str,
        spec: &str,
        thumb: &ThumbnailRecord,
    ) -> StorageResult<()> {
        let mut batch = self.db.batch();
        batch.put(
            MEDIATHUMB_THUMBNAIL,
            &codec::key(&[server.as_bytes(), media_id.as_bytes(), spec.as_bytes()]),
            &codec::encode(MEDIATHUMB_THUMBNAIL, thumb)?,
        );
        batch.commit_unsynced()
    }

    /// Number and total size of cached thumbnails.
    pub fn thumbnail_stats(&self) -> StorageResult<(u64, u64)> {
        let mut count = 0;
        let mut bytes = 0;
        for (_, v) in self.db.scan_prefix(MEDIATHUMB_THUMBNAIL, b"")? {
            count += 1;
            bytes += v.len() as u64;
        }
        Ok((count, bytes))
    }

    /// When a media item was last downloaded.
    pub fn last_access(&self, server: &str, media_id: &str) -> StorageResult<Option<u64>> {
        self.db
            .get(MEDIAID_LASTACCESS, &media_key(server, media_id))?
            .map(|b| codec::read_u64(MEDIAID_LASTACCESS, &b))
            .transpose()
    }

    /// Records a download time (unsynced: losing one only makes media look older).
    pub fn set_last_access(&self, server: &str, media_id: &str, ms: u64) -> StorageResult<()> {
        let mut batch = self.db.batch();
        batch.put(MEDIAID_LASTACCESS, &media_key(server, media_id), &codec::u64_bytes(ms));
        batch.commit_unsynced()
    }

    /// A cached URL preview.
    pub fn preview(&self, url: &str) -> StorageResult<Option<PreviewRecord>> {
        self.db
            .get(URL_PREVIEW, url.as_bytes())?
            .map(|b| codec::decode(URL_PREVIEW, &b))
            .transpose()
    }

    /// Caches a URL preview (unsynced).
    pub fn put_preview(&self, url: &str, record: &PreviewRecord) -> StorageResult<()> {
        let mut batch = self.db.batch();
        batch.put(URL_PREVIEW, url.as_bytes(), &codec::encode(URL_PREVIEW, record)?);
        batch.commit_unsynced()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let record = MediaRecord {
            uploader: "@a:hs".into(),
            created_ms: 7,
            content_type: Some("image/png".into()),
            filename: None,
            content: Some(ContentRef { hash: [3; 32], size: 9 }),
            expires_ms: None,
        };
        let bytes = codec::encode("t", &record).unwrap();
        assert_eq!(codec::decode::<MediaRecord>("t", &bytes).unwrap(), record);
        let blob = BlobRecord {
            blob_id: 1,
            size: 1025,
            chunk_size: 512,
            refs: 2,
        };
        assert_eq!(blob.chunks(), 3);
        assert!(chunk_key(1, u32::MAX) < chunk_key(2, 0));
    }

    #[test]
    fn chunks_are_written_read_and_deleted_by_range() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &crate::storage::StorageOptions::for_tests()).unwrap();
        let table = MediaTable::new(db);
        for blob in [1, 2] {
            for i in 0..3 {
                table.put_chunk(blob, i, &vec![i as u8; 5000]).unwrap();
            }
        }
        let mut batch = table.batch();
        table.queue_delete_chunks(&mut batch, 1);
        batch.commit_blocking().unwrap();
        assert_eq!(table.chunk(1, 0).unwrap(), None);
        assert_eq!(table.chunk(2, 2).unwrap(), Some(vec![2; 5000]));
    }
}
