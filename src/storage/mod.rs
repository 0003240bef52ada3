//! RocksDB, and nothing about Matrix: opening the database, the column families named in
//! [`schema`], key encodings ([`codec`]) and typed tables ([`tables`]).
//!
//! One logical change is one [`Batch`], committed atomically. By default a commit syncs the
//! write-ahead log before it returns (`database.sync_writes`); concurrent committers share one
//! sync through RocksDB's write-group leader, so durability does not cost one fsync per writer.
//! Writers whose batches depend on each other's (room events) use the [`commit_queue`]
//! instead, which keeps their order and syncs each group of queued batches once.
//!
//! # Failing closed
//!
//! A failed write or WAL sync leaves the database in a state nobody may build on: the batch may
//! be in RocksDB's memtable (readable) without being durable, and after a failed `fsync` the
//! kernel may already have dropped the unsynced pages, so a later sync that succeeds proves
//! nothing about them. The first such failure therefore *fails the database closed*: it is
//! logged at ERROR, and every later commit, through [`Batch`] or the [`commit_queue`], is
//! refused with [`StorageError::FailedClosed`] until the process restarts and RocksDB recovers
//! from what the WAL really holds. Reads keep working; the stream watermark stops below the
//! failed write ([`positions`]), so readers never see it.

pub mod codec;
pub mod commit_queue;
pub mod positions;
pub mod schema;
pub mod tables;

use std::{
    path::Path,
    sync::{Arc, OnceLock},
};

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Options, WriteOptions};

/// Errors from the storage layer. Services turn them into an internal server error.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another process (usually a running `hearth serve`) holds the database lock.
    #[error("the data directory {0} is in use by another hearth process (stop the server first)")]
    Locked(String),
    /// The database was written by a newer Hearth than this one.
    #[error("the database schema version is {found}, newer than this hearth understands ({supported}); upgrade hearth")]
    SchemaTooNew {
        /// Version found on disk.
        found: u64,
        /// Highest version this build knows.
        supported: u64,
    },
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A filesystem or thread-pool failure around the database.
    #[error("{0}")]
    Io(String),
    /// An earlier write or WAL sync failed, so the database refuses writes until a restart
    /// (see "Failing closed" in the module documentation).
    #[error("storage failed closed after {0}; writes are refused until hearth restarts")]
    FailedClosed(String),
    /// A stored record did not decode.
    #[error("corrupt record in {table}: {reason}")]
    Corrupt {
        /// Column family holding the record.
        table: &'static str,
        /// What failed to decode.
        reason: String,
    },
}

/// Result alias for storage operations.
pub type StorageResult<T> = Result<T, StorageError>;

/// Settings the storage layer needs from the configuration.
#[derive(Clone, Debug)]
pub struct StorageOptions {
    /// Size of the shared block cache, in bytes.
    pub cache_bytes: usize,
    /// Sync the WAL before a commit returns.
    pub sync_writes: bool,
}

impl StorageOptions {
    /// A small cache and no WAL sync: for tests and examples on temporary directories.
    pub fn for_tests() -> Self {
        Self {
            cache_bytes: 1 << 20,
            sync_writes: false,
        }
    }
}

/// Key-value pairs as read from a table, in key order.
pub type Entries = Vec<(Box<[u8]>, Box<[u8]>)>;

/// The open database: one RocksDB instance with every column family from [`schema::TABLES`].
pub struct Db {
    rocks: rocksdb::DB,
    sync_writes: bool,
    cache_bytes: usize,
    /// Set by the first failed write or sync; every later commit is refused.
    failed: OnceLock<String>,
}

impl Db {
    /// Opens (creating if needed) the database in `path`, then checks and migrates its schema.
    pub fn open(path: &Path, options: &StorageOptions) -> StorageResult<Arc<Db>> {
        std::fs::create_dir_all(path)
            .map_err(|e| StorageError::Io(format!("cannot create {}: {e}", path.display())))?;
        let cache = Cache::new_lru_cache(options.cache_bytes);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(3);
        db_opts.set_max_total_wal_size(64 << 20);
        db_opts.set_write_buffer_size(16 << 20);
        db_opts.set_enable_pipelined_write(true);

        let descriptors = schema::TABLES.iter().map(|table| {
            let mut cf = Options::default();
            let mut block = BlockBasedOptions::default();
            block.set_block_cache(&cache);
            block.set_bloom_filter(10.0, false);
            block.set_cache_index_and_filter_blocks(true);
            cf.set_block_based_table_factory(&block);
            cf.set_compression_type(DBCompressionType::Lz4);
            cf.set_write_buffer_size(table.preset.write_buffer_bytes());
            if table.preset == schema::Preset::Blobs {
                cf.set_enable_blob_files(true);
                cf.set_min_blob_size(4096);
                cf.set_blob_compression_type(DBCompressionType::None);
                // Deleted media must give its space back: rewrite old blob files' live values.
                cf.set_enable_blob_gc(true);
            }
            ColumnFamilyDescriptor::new(table.name, cf)
        });

        // Tables a previous version kept and this one dropped are opened only to be dropped.
        let existing = rocksdb::DB::list_cf(&db_opts, path).unwrap_or_default();
        let retired: Vec<&str> = schema::RETIRED_TABLES
            .iter()
            .copied()
            .filter(|name| existing.iter().any(|e| e == name))
            .collect();
        let descriptors = descriptors.chain(
            retired
                .iter()
                .map(|name| ColumnFamilyDescriptor::new(*name, Options::default())),
        );
        let mut rocks = rocksdb::DB::open_cf_descriptors(&db_opts, path, descriptors).map_err(|e| {
            let text = e.to_string();
            if text.contains("lock")
                && (text.contains("Resource temporarily unavailable")
                    || text.contains("No locks available")
                    || text.contains("already held"))
            {
                StorageError::Locked(path.display().to_string())
            } else {
                StorageError::Rocks(e)
            }
        })?;
        for name in retired {
            tracing::info!(table = name, "dropping a table this version no longer keeps");
            rocks.drop_cf(name)?;
        }
        let db = Arc::new(Db {
            rocks,
            sync_writes: options.sync_writes,
            cache_bytes: options.cache_bytes,
            failed: OnceLock::new(),
        });
        schema::check_and_migrate(&db)?;
        Ok(db)
    }

    /// The configured cache budget, in bytes; in-memory caches of decoded records size
    /// themselves from it.
    pub fn cache_bytes(&self) -> usize {
        self.cache_bytes
    }

    fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
        self.rocks
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} is not in schema::TABLES"))
    }

    /// Reads one value.
    pub fn get(&self, table: &'static str, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        Ok(self.rocks.get_cf(self.cf(table), key)?)
    }

    /// Reads many values at once, in the order of `keys`.
    pub fn multi_get<'k>(
        &self,
        table: &'static str,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> StorageResult<Vec<Option<Vec<u8>>>> {
        let cf = self.cf(table);
        self.rocks
            .multi_get_cf(keys.into_iter().map(|k| (cf, k)))
            .into_iter()
            .map(|r| r.map_err(StorageError::from))
            .collect()
    }

    /// Every (key, value) whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, table: &'static str, prefix: &[u8]) -> StorageResult<Entries> {
        let mut out = Vec::new();
        let iter = self.rocks.iterator_cf(
            self.cf(table),
            rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key, value));
        }
        Ok(out)
    }

    /// Up to `limit` entries with `start <= key < end`, ascending, or descending from just
    /// below `end` when `reverse` is set.
    pub fn scan_range(
        &self,
        table: &'static str,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> StorageResult<Entries> {
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_lower_bound(start.to_vec());
        opts.set_iterate_upper_bound(end.to_vec());
        let mode = if reverse {
            rocksdb::IteratorMode::End
        } else {
            rocksdb::IteratorMode::Start
        };
        let mut out = Vec::new();
        for item in self.rocks.iterator_cf_opt(self.cf(table), opts, mode).take(limit) {
            out.push(item?);
        }
        Ok(out)
    }

    /// Up to `limit` entries whose key is `prefix`, then a big-endian u64 `n` with
    /// `after < n <= up_to`, then anything; ascending, or descending when `reverse`. The
    /// tables' stream-ordered keys (a room's timeline, a change log, an inbox) are all read
    /// this way.
    pub fn scan_numbered(
        &self,
        table: &'static str,
        prefix: &[u8],
        (after, up_to): (u64, u64),
        reverse: bool,
        limit: usize,
    ) -> StorageResult<Entries> {
        if after >= up_to {
            return Ok(Vec::new());
        }
        let bound = |n: Option<u64>| {
            let mut key = prefix.to_vec();
            match n {
                Some(n) => key.extend_from_slice(&n.to_be_bytes()),
                // Past every number (and whatever follows it) under the prefix.
                None => key.extend_from_slice(&[0xFF; 9]),
            }
            key
        };
        self.scan_range(
            table,
            &bound(Some(after + 1)),
            &bound(up_to.checked_add(1)),
            reverse,
            limit,
        )
    }

    /// Number of keys in a table (a full scan; for admin reports and tests).
    pub fn count(&self, table: &'static str) -> StorageResult<u64> {
        let mut n = 0;
        for item in self.rocks.iterator_cf(self.cf(table), rocksdb::IteratorMode::Start) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// RocksDB's estimate of the number of keys in a table (cheap; for logs and reports).
    pub fn estimate_count(&self, table: &'static str) -> StorageResult<u64> {
        Ok(self
            .rocks
            .property_int_value_cf(self.cf(table), "rocksdb.estimate-num-keys")?
            .unwrap_or(0))
    }

    /// Writes every table's memtable to its files (a clean stop): what is stored then lives in
    /// SST files, not only in the write-ahead log, so the next start replays nothing.
    pub fn flush_all(&self) -> StorageResult<()> {
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(true);
        for table in schema::TABLES {
            self.rocks.flush_cf_opt(self.cf(table.name), &opts)?;
        }
        Ok(())
    }

    /// Compacts a whole table, so space freed by deletions goes back to the disk now (after a
    /// migration empties a table).
    pub fn compact(&self, table: &'static str) {
        self.rocks
            .compact_range_cf(self.cf(table), None::<&[u8]>, None::<&[u8]>);
    }

    /// Starts a batch: the unit of atomic, durable change.
    pub fn batch(self: &Arc<Self>) -> Batch {
        Batch {
            db: Arc::clone(self),
            inner: rocksdb::WriteBatch::default(),
        }
    }

    /// Whether an earlier write or sync failed and the database refuses writes.
    pub fn failed_closed(&self) -> bool {
        self.failed.get().is_some()
    }

    /// Refuses a write once the database has failed closed.
    fn writable(&self) -> StorageResult<()> {
        match self.failed.get() {
            Some(reason) => Err(StorageError::FailedClosed(reason.clone())),
            None => Ok(()),
        }
    }

    /// Fails the database closed after a failed write or sync (`what` names the operation);
    /// returns the error for the caller. Logged once, at ERROR, on the first failure.
    fn fail_closed(&self, what: &str, error: rocksdb::Error) -> StorageError {
        let reason = format!("{what} failed: {error}");
        if self.failed.set(reason.clone()).is_ok() {
            tracing::error!(
                "STORAGE FAILURE: {reason}. Nothing written from now on can be made durable, so \
                 hearth refuses every write until it is restarted (reads go on). Check the disk and \
                 the kernel log, then restart: RocksDB recovers what the WAL holds."
            );
        }
        StorageError::FailedClosed(reason)
    }

    /// Writes one batch with `sync`, failing the database closed on error.
    fn write_with(&self, batch: rocksdb::WriteBatch, sync: bool) -> StorageResult<()> {
        self.writable()?;
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        let what = if sync { "a synced write" } else { "a write" };
        self.rocks
            .write_opt(batch, &opts)
            .map_err(|e| self.fail_closed(what, e))
    }
}

#[cfg(test)]
impl Db {
    /// Fails the database closed as a failed write would, for tests of what follows.
    pub(crate) fn fail_closed_for_test(&self) {
        let _ = self.failed.set("a write in a test".into());
    }
}

/// A set of puts and deletes applied atomically by [`Batch::commit`].
pub struct Batch {
    db: Arc<Db>,
    inner: rocksdb::WriteBatch,
}

impl Batch {
    /// Queues a put.
    pub fn put(&mut self, table: &'static str, key: &[u8], value: &[u8]) {
        let cf = self.db.cf(table);
        self.inner.put_cf(cf, key, value);
    }

    /// Queues a delete.
    pub fn delete(&mut self, table: &'static str, key: &[u8]) {
        let cf = self.db.cf(table);
        self.inner.delete_cf(cf, key);
    }

    /// Queues the deletion of every key in `from..to`.
    pub fn delete_range(&mut self, table: &'static str, from: &[u8], to: &[u8]) {
        let cf = self.db.cf(table);
        self.inner.delete_range_cf(cf, from, to);
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Writes the batch on the calling thread; durable on return when `sync_writes` is on.
    pub fn commit_blocking(self) -> StorageResult<()> {
        self.db.write_with(self.inner, self.db.sync_writes)
    }

    /// Writes the batch without syncing the WAL, for bookkeeping (id interning) that only has
    /// to be durable once a later synced batch that depends on it is: the WAL is sequential, so
    /// syncing that batch makes this one durable too.
    pub fn commit_unsynced(self) -> StorageResult<()> {
        self.db.write_with(self.inner, false)
    }

    /// Writes the batch from a blocking-pool thread, so concurrent async callers can share one WAL
    /// sync (RocksDB's group commit) without stalling the runtime's workers.
    pub async fn commit(self) -> StorageResult<()> {
        match tokio::task::spawn_blocking(move || self.commit_blocking()).await {
            Ok(result) => result,
            Err(join) => Err(StorageError::Io(format!("write task failed: {join}"))),
        }
    }
}
