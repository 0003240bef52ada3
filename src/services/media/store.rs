//! Content bytes in chunks: [`BlobWriter`] hashes and writes an upload chunk by chunk as it
//! arrives (never holding more than one chunk), and [`read_range`] streams a byte range back
//! one chunk at a time. Every RocksDB call runs on the blocking pool.

use bytes::Bytes;
use futures_util::Stream;

use crate::{
    Error, Result,
    storage::tables::media::{BlobRecord, MediaTable},
    util,
};

/// Size of a stored chunk.
pub(super) const CHUNK_SIZE: usize = 512 * 1024;

pub(super) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("media task failed: {e}")))?
}

/// What a finished [`BlobWriter`] wrote.
pub(super) struct Written {
    /// The blob id its chunks are under.
    pub blob_id: u64,
    /// SHA-256 of the content.
    pub hash: [u8; 32],
    /// Length in bytes.
    pub size: u64,
}

/// Writes one upload's bytes as chunks under a fresh blob id, marked pending until the media
/// record that references it is committed.
pub(super) struct BlobWriter {
    table: MediaTable,
    blob_id: u64,
    hasher: ring::digest::Context,
    buffer: Vec<u8>,
    next_chunk: u32,
    size: u64,
    marked: bool,
    done: bool,
}

impl BlobWriter {
    pub(super) fn new(table: MediaTable) -> Self {
        Self {
            table,
            // Below u64::MAX so that `blob_id + 1` bounds its chunk range.
            blob_id: rand::random::<u64>() >> 1,
            hasher: ring::digest::Context::new(&ring::digest::SHA256),
            buffer: Vec::new(),
            next_chunk: 0,
            size: 0,
            marked: false,
            done: false,
        }
    }

    /// Bytes received so far.
    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// Takes more bytes; full chunks are written out.
    pub(super) async fn write(&mut self, data: &[u8]) -> Result<()> {
        if !self.marked {
            let (table, id) = (self.table.clone(), self.blob_id);
            blocking(move || Ok(table.mark_pending_blob(id, util::now_ms())?)).await?;
            self.marked = true;
        }
        self.hasher.update(data);
        self.size += data.len() as u64;
        self.buffer.extend_from_slice(data);
        while self.buffer.len() >= CHUNK_SIZE {
            let rest = self.buffer.split_off(CHUNK_SIZE);
            let chunk = std::mem::replace(&mut self.buffer, rest);
            self.flush(chunk).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, chunk: Vec<u8>) -> Result<()> {
        let (table, id, index) = (self.table.clone(), self.blob_id, self.next_chunk);
        blocking(move || Ok(table.put_chunk(id, index, &chunk)?)).await?;
        self.next_chunk += 1;
        Ok(())
    }

    /// Writes the last partial chunk; the blob stays pending until the caller commits.
    pub(super) async fn finish(mut self) -> Result<Written> {
        if !self.marked {
            self.write(&[]).await?;
        }
        let last = std::mem::take(&mut self.buffer);
        if !last.is_empty() {
            self.flush(last).await?;
        }
        self.done = true;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(self.hasher.clone().finish().as_ref());
        Ok(Written {
            blob_id: self.blob_id,
            hash,
            size: self.size,
        })
    }

    /// Deletes whatever was written (an upload that failed or was refused).
    pub(super) async fn discard(mut self) {
        self.done = true;
        if self.marked {
            discard_blob(&self.table, self.blob_id).await;
        }
    }
}

impl Drop for BlobWriter {
    /// An upload dropped half-way (the client went away) deletes its chunks in the background.
    fn drop(&mut self) {
        if self.marked
            && !self.done
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (table, blob_id) = (self.table.clone(), self.blob_id);
            runtime.spawn(async move { discard_blob(&table, blob_id).await });
        }
    }
}

/// Deletes a pending blob's chunks and its pending mark.
pub(super) async fn discard_blob(table: &MediaTable, blob_id: u64) {
    let table = table.clone();
    let result = blocking(move || {
        let mut batch = table.batch();
        table.queue_delete_chunks(&mut batch, blob_id);
        table.queue_pending_blob_done(&mut batch, blob_id);
        Ok(batch.commit_unsynced()?)
    })
    .await;
    if let Err(e) = result {
        tracing::warn!("could not delete an abandoned upload's chunks: {e}");
    }
}

/// The bytes `start..end` of a blob, one chunk per item.
pub(super) fn read_range(
    table: MediaTable,
    blob: BlobRecord,
    start: u64,
    end: u64,
) -> impl Stream<Item = Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(start, move |pos| {
        let table = table.clone();
        let blob = blob.clone();
        async move {
            if pos >= end {
                return None;
            }
            let chunk_size = u64::from(blob.chunk_size);
            let index = (pos / chunk_size) as u32;
            let chunk_start = u64::from(index) * chunk_size;
            let result = blocking(move || {
                table
                    .chunk(blob.blob_id, index)?
                    .ok_or_else(|| Error::internal(format!("chunk {index} of blob {} is missing", blob.blob_id)))
            })
            .await;
            match result {
                Ok(chunk) => {
                    let from = (pos - chunk_start) as usize;
                    let to = ((end - chunk_start) as usize).min(chunk.len());
                    if from >= to {
                        return Some((Err(Error::internal("stored chunk is shorter than its blob")), end));
                    }
                    let bytes = Bytes::from(chunk).slice(from..to);
                    Some((Ok(bytes), chunk_start + to as u64))
                }
                Err(e) => Some((Err(e), end)),
            }
        }
    })
}

/// A whole blob in memory (for thumbnailing small images), refused above `limit` bytes.
pub(super) async fn read_all(table: &MediaTable, blob: &BlobRecord, limit: u64) -> Result<Vec<u8>> {
    if blob.size > limit {
        return Err(Error::too_large("The media is too large to thumbnail"));
    }
    let (table, blob) = (table.clone(), blob.clone());
    blocking(move || {
        let mut out = Vec::with_capacity(blob.size as usize);
        for index in 0..blob.chunks() {
            let chunk = table
                .chunk(blob.blob_id, index)?
                .ok_or_else(|| Error::internal(format!("chunk {index} of blob {} is missing", blob.blob_id)))?;
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    })
    .await
}
