//! Abuse reports: `reportid_report` maps a report id (u64 ms timestamp ++ u32 random, so ids sort
//! by time) to a postcard [`ReportRecord`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::storage::{Db, StorageResult, codec, schema::REPORTID_REPORT};

/// One report, as stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReportRecord {
    /// Who reported.
    pub reporter: String,
    /// `room`, `event` or `user`.
    pub kind: String,
    /// The room, event or user reported.
    pub target: String,
    /// The room of a reported event.
    pub room_id: Option<String>,
    /// The reporter's reason.
    pub reason: Option<String>,
    /// When, ms since the epoch.
    pub received_ms: u64,
}

/// Typed access to reports.
#[derive(Clone)]
pub struct ReportsTable {
    db: Arc<Db>,
}

impl ReportsTable {
    /// Wraps the database.
    pub fn new(db: Arc<Db>) -> Self {
        Self { db }
    }

    /// Stores a report durably.
    pub async fn insert(&self, report: &ReportRecord, nonce: u32) -> StorageResult<()> {
        let mut key = codec::u64_bytes(report.received_ms).to_vec();
        key.extend_from_slice(&nonce.to_be_bytes());
        let mut batch = self.db.batch();
        batch.put(REPORTID_REPORT, &key, &codec::encode(REPORTID_REPORT, report)?);
        batch.commit().await
    }

    /// Every report, oldest first.
    pub fn list(&self) -> StorageResult<Vec<ReportRecord>> {
        self.db
            .scan_prefix(REPORTID_REPORT, b"")?
            .into_iter()
            .map(|(_, v)| codec::decode(REPORTID_REPORT, &v))
            .collect()
    }
}
