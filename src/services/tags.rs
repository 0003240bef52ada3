//! Room tags (spec "Room Tagging"): the `m.tag` room account data entry, edited one tag at a
//! time. The whole entry is rewritten, so it reaches the next sync like any account data.

use ruma::{RoomId, UserId};
use serde_json::{Map, Value};

use super::account_data::AccountData;
use crate::{Error, Result};

/// Longest tag name accepted.
const MAX_TAG_LEN: usize = 255;

impl AccountData {
    /// The room's tags as the `tags` object (empty when none).
    pub fn tags(&self, user_id: &UserId, room_id: &RoomId) -> Result<Map<String, Value>> {
        let Some(raw) = self.get(user_id, Some(room_id.as_str()), "m.tag")? else {
            return Ok(Map::new());
        };
        let content: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
        Ok(match content.get("tags") {
            Some(Value::Object(tags)) => tags.clone(),
            _ => Map::new(),
        })
    }

    /// Adds or replaces one tag (`info` is its `TagInfo` object), or removes it (`None`).
    pub async fn set_tag(&self, user_id: &UserId, room_id: &RoomId, tag: &str, info: Option<Value>) -> Result<()> {
        if tag.is_empty() || tag.len() > MAX_TAG_LEN {
            return Err(Error::invalid_param("Tags are 1-255 bytes"));
        }
        let mut tags = self.tags(user_id, room_id)?;
        match info {
            Some(info) => {
                tags.insert(tag.to_owned(), info);
            }
            None => {
                tags.remove(tag);
            }
        }
        let content = serde_json::value::to_raw_value(&serde_json::json!({ "tags": tags }))
            .map_err(|e| Error::internal(e.to_string()))?;
        self.set_managed(user_id, Some(room_id.as_str()), "m.tag", &content)
            .await
    }
}
