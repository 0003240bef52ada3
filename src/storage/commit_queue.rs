//! Ordered group commit for writers that build on each other's unsynced writes (the events of
//! one room: each names the previous one in `prev_events`).
//!
//! Batches are written by one thread in exactly the order they were queued. Whatever queued up
//! while the previous group was being written becomes the next group: its batches, in order,
//! go to the WAL as one write batch with one sync, and only then is each writer told. Because
//! the WAL is sequential and a write batch is atomic, a crash keeps a prefix of the queue: an
//! event can never survive without the events it was built on.
//!
//! A group that fails to be written or synced fails the database closed (see the parent
//! module): each of its writers, which may build on each other, gets an error, and so does
//! every batch queued later. No batch is acknowledged after a failed one.

use std::{
    sync::{Arc, mpsc},
    thread,
};

use tokio::sync::oneshot;

use super::{Batch, Db, StorageError, StorageResult};

/// Most batches written under one sync.
const MAX_GROUP: usize = 512;

struct Job {
    batch: rocksdb::WriteBatch,
    done: oneshot::Sender<StorageResult<()>>,
}

/// The queue. Dropping it writes what is queued, then stops the thread (and releases its
/// handle on the database).
pub struct CommitQueue {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
}

/// A queued batch; [`Queued::durable`] resolves once it is on disk.
pub struct Queued(oneshot::Receiver<StorageResult<()>>);

impl Queued {
    /// Waits until the batch is written and (with `sync_writes`) its WAL synced.
    pub async fn durable(self) -> StorageResult<()> {
        self.0
            .await
            .unwrap_or_else(|_| Err(StorageError::Io("the commit thread stopped".into())))
    }
}

impl CommitQueue {
    /// Starts the commit thread.
    pub fn start(db: Arc<Db>) -> StorageResult<CommitQueue> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let thread = thread::Builder::new()
            .name("hearth-commit".into())
            .spawn(move || run(&db, &inbox))
            .map_err(|e| StorageError::Io(format!("cannot start the commit thread: {e}")))?;
        Ok(CommitQueue {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Queues a batch behind every batch queued before it. Never blocks.
    pub fn enqueue(&self, batch: Batch) -> Queued {
        let (done, wait) = oneshot::channel();
        let job = Job {
            batch: batch.inner,
            done,
        };
        let refused = match &self.jobs {
            Some(jobs) => jobs.send(job).err().map(|mpsc::SendError(job)| job),
            None => Some(job),
        };
        if let Some(job) = refused {
            let _ = job.done.send(Err(StorageError::Io("the commit thread stopped".into())));
        }
        Queued(wait)
    }
}

impl Drop for CommitQueue {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(db: &Db, inbox: &mpsc::Receiver<Job>) {
    while let Ok(first) = inbox.recv() {
        // Let the writers that are running go on first: on a busy core they queue more batches
        // behind this one, and the group shares one write and one sync (when nothing else is
        // runnable this returns at once).
        thread::yield_now();
        let mut group = vec![first];
        while group.len() < MAX_GROUP
            && let Ok(next) = inbox.try_recv()
        {
            group.push(next);
        }
        // The group is one write (its batches in queue order) and one sync: a failure fails
        // the database closed, and every writer of the group hears of it.
        let mut waiting = Vec::with_capacity(group.len());
        let batches: Vec<rocksdb::WriteBatch> = group
            .into_iter()
            .map(|job| {
                waiting.push(job.done);
                job.batch
            })
            .collect();
        let result = db.write_with(concatenate(batches), db.sync_writes);
        for done in waiting {
            let _ = done.send(result.as_ref().map(|_| ()).map_err(again));
        }
    }
}

/// Size of a write batch's header: the sequence number (8 bytes) and the count (4 bytes, little
/// endian) that precede its records.
const BATCH_HEADER: usize = 12;

/// One batch holding the records of `batches` in order (RocksDB's own `WriteBatchInternal::
/// Append`: the records side by side under one header whose count is the sum), so a group
/// costs one write.
fn concatenate(mut batches: Vec<rocksdb::WriteBatch>) -> rocksdb::WriteBatch {
    if batches.len() == 1 {
        return batches.pop().unwrap_or_default();
    }
    let size = batches
        .iter()
        .map(|b| b.size_in_bytes().saturating_sub(BATCH_HEADER))
        .sum::<usize>();
    let mut rep = Vec::with_capacity(BATCH_HEADER + size);
    rep.extend_from_slice(&[0; BATCH_HEADER]);
    let mut count: u32 = 0;
    for batch in &batches {
        let data = batch.data();
        if data.len() > BATCH_HEADER {
            count += u32::try_from(batch.len()).unwrap_or(u32::MAX);
            rep.extend_from_slice(&data[BATCH_HEADER..]);
        }
    }
    rep[8..BATCH_HEADER].copy_from_slice(&count.to_le_bytes());
    rocksdb::WriteBatch::from_data(&rep)
}

/// The group's error, once for each of its writers.
fn again(error: &StorageError) -> StorageError {
    match error {
        StorageError::FailedClosed(reason) => StorageError::FailedClosed(reason.clone()),
        other => StorageError::Io(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{StorageOptions, schema::GLOBAL};

    /// Many writers queued at once all land, in order, and each hears back.
    #[tokio::test]
    async fn queued_batches_land_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let queue = CommitQueue::start(Arc::clone(&db)).unwrap();
        let mut waits = Vec::new();
        for i in 0u32..200 {
            let mut batch = db.batch();
            batch.put(GLOBAL, b"test_last", &i.to_be_bytes());
            batch.put(GLOBAL, format!("test_{i}").as_bytes(), b"x");
            waits.push(queue.enqueue(batch));
        }
        for wait in waits {
            wait.durable().await.unwrap();
        }
        assert_eq!(db.get(GLOBAL, b"test_last").unwrap().unwrap(), 199u32.to_be_bytes());
        assert!(db.get(GLOBAL, b"test_150").unwrap().is_some());
    }

    /// Once the database failed closed, nothing is written any more: queued batches, plain
    /// commits and unsynced bookkeeping all get `FailedClosed`; reads go on.
    #[tokio::test]
    async fn a_database_failed_closed_refuses_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let queue = CommitQueue::start(Arc::clone(&db)).unwrap();
        let mut batch = db.batch();
        batch.put(GLOBAL, b"test_before", b"x");
        queue.enqueue(batch).durable().await.unwrap();
        db.fail_closed_for_test();
        let refused =
            |result: StorageResult<()>| assert!(matches!(result, Err(StorageError::FailedClosed(_))), "{result:?}");
        let mut batch = db.batch();
        batch.put(GLOBAL, b"test_after", b"x");
        refused(queue.enqueue(batch).durable().await);
        let mut batch = db.batch();
        batch.put(GLOBAL, b"test_after", b"x");
        refused(batch.commit().await);
        let mut batch = db.batch();
        batch.put(GLOBAL, b"test_after", b"x");
        refused(batch.commit_unsynced());
        assert!(db.get(GLOBAL, b"test_before").unwrap().is_some());
        assert!(db.get(GLOBAL, b"test_after").unwrap().is_none());
    }

    /// A group written as one batch keeps each batch's records and their order: a later
    /// batch's delete or put of a key wins over an earlier one's.
    #[test]
    fn concatenated_batches_keep_every_record_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let mut batches = Vec::new();
        for i in 0u8..3 {
            let mut batch = db.batch();
            batch.put(GLOBAL, b"test_shared", &[i]);
            batch.put(GLOBAL, &[b't', i], b"kept");
            if i == 2 {
                batch.delete(GLOBAL, &[b't', 0]);
            }
            batches.push(batch.inner);
        }
        batches.push(db.batch().inner);
        let merged = concatenate(batches);
        assert_eq!(merged.len(), 7);
        db.write_with(merged, true).unwrap();
        assert_eq!(db.get(GLOBAL, b"test_shared").unwrap().unwrap(), [2]);
        assert!(db.get(GLOBAL, &[b't', 0]).unwrap().is_none());
        assert!(db.get(GLOBAL, &[b't', 1]).unwrap().is_some());
        assert!(db.get(GLOBAL, &[b't', 2]).unwrap().is_some());
    }
}
