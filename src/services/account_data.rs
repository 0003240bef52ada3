//! Account data: per-user JSON objects by event type, global or per room.

use std::sync::Arc;

use ruma::UserId;
use serde_json::value::RawValue;

use crate::{
    Error, Result,
    storage::{Batch, Db, tables::account_data::AccountDataTable},
};

/// Types the server manages itself; clients may not write them through account data.
const SERVER_MANAGED: &[&str] = &["m.fully_read", "m.push_rules"];

/// The account-data service.
pub struct AccountData {
    db: Arc<Db>,
    table: AccountDataTable,
}

impl AccountData {
    /// Builds the service.
    pub fn new(db: Arc<Db>) -> Self {
        Self {
            table: AccountDataTable::new(Arc::clone(&db)),
            db,
        }
    }

    /// One entry's content.
    pub fn get(&self, user_id: &UserId, room_id: Option<&str>, kind: &str) -> Result<Option<Box<RawValue>>> {
        self.table
            .get(user_id.as_str(), room_id, kind)?
            .map(|bytes| {
                RawValue::from_string(String::from_utf8_lossy(&bytes).into_owned())
                    .map_err(|e| Error::internal(format!("stored account data: {e}")))
            })
            .transpose()
    }

    /// Stores one entry; `content` must be a JSON object.
    pub async fn set(&self, user_id: &UserId, room_id: Option<&str>, kind: &str, content: &RawValue) -> Result<()> {
        if SERVER_MANAGED.contains(&kind) {
            return Err(Error::new(
                http::StatusCode::METHOD_NOT_ALLOWED,
                ruma::api::error::ErrorKind::BadJson,
                format!("Cannot set {kind} through this API"),
            ));
        }
        if kind.is_empty() || kind.len() > 255 {
            return Err(Error::invalid_param("Account data types are 1-255 bytes"));
        }
        if !content.get().trim_start().starts_with('{') {
            return Err(Error::bad_json("Account data content must be a JSON object"));
        }
        let mut batch = self.db.batch();
        self.table
            .put(&mut batch, user_id.as_str(), room_id, kind, content.get().as_bytes());
        batch.commit().await?;
        Ok(())
    }

    /// Queues removal of everything a user stored (deactivation).
    pub fn queue_clear(&self, batch: &mut Batch, user_id: &UserId) -> Result<()> {
        Ok(self.table.delete_all(batch, user_id.as_str())?)
    }
}
