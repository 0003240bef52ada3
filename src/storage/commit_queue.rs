//! Ordered group commit for writers that build on each other's unsynced writes (the events of
//! one room: each names the previous one in `prev_events`).
//!
//! Batches are written by one thread in exactly the order they were queued. Whatever queued up
//! while the previous group was being synced becomes the next group: each batch is written to
//! the WAL unsynced, then one sync makes the whole group durable, and only then is each writer
//! told. Because the WAL is sequential, a crash keeps a prefix of the queue: an event can never
//! survive without the events it was built on.
//!
//! A batch that fails to be written or synced fails the database closed (see the parent
//! module): its writer and every batch queued behind it, which may be built on it, get an error,
//! and so does every batch queued later. No batch is acknowledged after a failed one.

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
        let mut group = vec![first];
        while group.len() < MAX_GROUP
            && let Ok(next) = inbox.try_recv()
        {
            group.push(next);
        }
        // Once one write fails the database is failed closed, so the batches after it in the
        // group (which may build on it) are refused without being written.
        let mut results = Vec::with_capacity(group.len());
        let mut waiting = Vec::with_capacity(group.len());
        for job in group {
            results.push(db.write_with(job.batch, false));
            waiting.push(job.done);
        }
        let synced = if db.sync_writes && results.iter().any(Result::is_ok) {
            db.sync_wal()
        } else {
            Ok(())
        };
        for (result, done) in results.into_iter().zip(waiting) {
            let result = match (&synced, result) {
                (Err(e), Ok(())) => Err(again(e)),
                (_, result) => result,
            };
            let _ = done.send(result);
        }
    }
}

/// The group's sync error, once for each of its writers.
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
}
