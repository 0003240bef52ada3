//! User profiles: `displayname`, `avatar_url` and the custom fields of spec v1.16, kept as one
//! JSON object per user.

use std::sync::Arc;

use ruma::{UserId, api::error::ErrorKind};
use serde_json::{Map, Value};

use crate::{
    Error, Result,
    storage::{Db, tables::accounts::AccountsTable},
};

/// Largest stored profile, in bytes of JSON (the spec's 64 KiB).
pub const MAX_PROFILE_BYTES: usize = 65536;
/// Longest field name, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// The profile service.
pub struct Profiles {
    db: Arc<Db>,
    table: AccountsTable,
}

impl Profiles {
    /// Builds the service.
    pub fn new(db: Arc<Db>) -> Self {
        Self {
            table: AccountsTable::new(Arc::clone(&db)),
            db,
        }
    }

    /// The whole profile; `None` when the user does not exist.
    pub fn get(&self, user_id: &UserId) -> Result<Option<Map<String, Value>>> {
        if self.table.get(user_id.as_str())?.is_none_or(|a| a.deactivated) {
            return Ok(None);
        }
        Ok(Some(match self.table.profile(user_id.as_str())? {
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| Error::internal(format!("stored profile: {e}")))?
            }
            None => Map::new(),
        }))
    }

    /// Sets one field (`None` removes it) and returns the profile after the change.
    pub async fn set_field(&self, user_id: &UserId, key: &str, value: Option<Value>) -> Result<Map<String, Value>> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ErrorKind::KeyTooLarge,
                format!("Profile field names are 1-{MAX_KEY_BYTES} bytes"),
            ));
        }
        match (key, &value) {
            ("displayname", Some(v)) if !(v.is_string() || v.is_null()) => {
                return Err(Error::bad_json("displayname must be a string"));
            }
            ("displayname", Some(Value::String(s))) if s.chars().count() > 256 => {
                return Err(Error::bad_json("displayname is longer than 256 characters"));
            }
            ("avatar_url", Some(v)) if !(v.is_string() || v.is_null()) => {
                return Err(Error::bad_json("avatar_url must be a string"));
            }
            ("avatar_url", Some(Value::String(s))) if !(s.is_empty() || s.starts_with("mxc://")) => {
                return Err(Error::bad_json("avatar_url must be an mxc:// URI"));
            }
            _ => {}
        }
        let mut profile = self
            .get(user_id)?
            .ok_or_else(|| Error::not_found("Profile not found"))?;
        match value {
            Some(Value::Null) | None => {
                profile.remove(key);
            }
            Some(v) => {
                profile.insert(key.to_owned(), v);
            }
        }
        let bytes = serde_json::to_vec(&profile).map_err(|e| Error::internal(e.to_string()))?;
        if bytes.len() > MAX_PROFILE_BYTES {
            return Err(Error::new(
                http::StatusCode::BAD_REQUEST,
                ErrorKind::ProfileTooLarge,
                "The profile would exceed 64 KiB",
            ));
        }
        let mut batch = self.db.batch();
        self.table.put_profile(&mut batch, user_id.as_str(), &bytes);
        batch.commit().await?;
        Ok(profile)
    }

    /// Queues the profile of a new account: its localpart as display name.
    pub fn queue_initial(&self, batch: &mut crate::storage::Batch, user_id: &UserId) -> Result<()> {
        let profile = serde_json::json!({ "displayname": user_id.localpart() });
        let bytes = serde_json::to_vec(&profile).map_err(|e| Error::internal(e.to_string()))?;
        self.table.put_profile(batch, user_id.as_str(), &bytes);
        Ok(())
    }

    /// Queues removal of the whole profile (deactivation).
    pub fn queue_clear(&self, batch: &mut crate::storage::Batch, user_id: &UserId) {
        self.table.delete_profile(batch, user_id.as_str());
    }
}
