//! Abuse reports about rooms, events and users (spec "Reporting content"): checked, stored
//! durably and logged at WARN so an operator sees them.

use std::sync::Arc;

use ruma::{EventId, RoomId, UserId};

use super::{accounts::Accounts, rooms::Rooms};
use crate::{
    Error, Result,
    storage::{
        Db,
        tables::reports::{ReportRecord, ReportsTable},
    },
    util,
};

/// The reports service.
pub struct Reports {
    table: ReportsTable,
}

impl Reports {
    /// Builds the service.
    pub fn new(db: Arc<Db>) -> Self {
        Self {
            table: ReportsTable::new(db),
        }
    }

    async fn store(
        &self,
        reporter: &UserId,
        kind: &str,
        target: String,
        room_id: Option<&RoomId>,
        reason: Option<&str>,
    ) -> Result<()> {
        if reason.is_some_and(|r| r.len() > 1000) {
            return Err(Error::invalid_param("The reason is longer than 1000 bytes"));
        }
        let record = ReportRecord {
            reporter: reporter.to_string(),
            kind: kind.to_owned(),
            target,
            room_id: room_id.map(ToString::to_string),
            reason: reason.map(str::to_owned),
            received_ms: util::now_ms(),
        };
        self.table.insert(&record, rand::random()).await?;
        tracing::warn!(reporter = %record.reporter, kind, target = %record.target, reason = record.reason.as_deref().unwrap_or(""), "abuse report received");
        Ok(())
    }

    /// Reports a room Hearth knows.
    pub async fn room(&self, rooms: &Rooms, reporter: &UserId, room_id: &RoomId, reason: &str) -> Result<()> {
        if rooms.room_version(room_id)?.is_none() {
            return Err(Error::not_found("Room not found"));
        }
        self.store(reporter, "room", room_id.to_string(), Some(room_id), Some(reason))
            .await
    }

    /// Reports an event of a room the reporter is joined to.
    pub async fn event(
        &self,
        rooms: &Rooms,
        reporter: &UserId,
        room_id: &RoomId,
        event_id: &EventId,
        reason: Option<&str>,
    ) -> Result<()> {
        let not_found = || Error::not_found("Event not found, or you are not in its room");
        if rooms.membership(room_id, reporter)?.as_deref() != Some("join") {
            return Err(not_found());
        }
        rooms
            .event(event_id)?
            .filter(|p| p.room().is_ok_and(|r| r == room_id))
            .ok_or_else(not_found)?;
        self.store(reporter, "event", event_id.to_string(), Some(room_id), reason)
            .await
    }

    /// Reports a local user.
    pub async fn user(&self, accounts: &Accounts, reporter: &UserId, user_id: &UserId, reason: &str) -> Result<()> {
        if accounts.get(user_id)?.is_none() {
            return Err(Error::not_found("User not found"));
        }
        self.store(reporter, "user", user_id.to_string(), None, Some(reason))
            .await
    }

    /// Every report, oldest first.
    pub fn list(&self) -> Result<Vec<ReportRecord>> {
        Ok(self.table.list()?)
    }
}
