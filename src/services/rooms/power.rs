//! Power levels: a user's level (room creators of version 12 outrank every level), the level
//! an action needs, and the validation of `m.room.power_levels` content before it is sent.

use ruma::{CanonicalJsonObject, CanonicalJsonValue, RoomId, UserId, events::StateEventType};

use super::Rooms;
use crate::{Error, Result, services::events};

impl Rooms {
    /// A user's power level: from `m.room.power_levels`, unbounded for the creators of rooms whose
    /// version privileges them (v12), 100 for the creator of a room without power levels.
    pub fn power_level(&self, room_id: &RoomId, user_id: &UserId) -> Result<i64> {
        let version = self
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = events::rules(&version)?;
        let create = self
            .state_event(room_id, &StateEventType::RoomCreate, "")?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        if rules.authorization.explicitly_privilege_room_creators {
            #[derive(serde::Deserialize)]
            struct Create {
                #[serde(default)]
                additional_creators: Vec<String>,
            }
            let extra: Create = serde_json::from_str(create.content.get()).unwrap_or(Create {
                additional_creators: Vec::new(),
            });
            if create.sender == user_id || extra.additional_creators.iter().any(|c| c == user_id.as_str()) {
                return Ok(i64::MAX);
            }
        }
        let Some(levels) = self.power_levels(room_id)? else {
            return Ok(if create.sender == user_id { 100 } else { 0 });
        };
        let level = levels
            .get("users")
            .and_then(|u| u.get(user_id.as_str()))
            .or_else(|| levels.get("users_default"));
        Ok(level.and_then(as_level).unwrap_or(0))
    }

    /// The level an action (`redact`, `kick`, `ban`, `invite`…) needs in the room.
    pub fn required_level(&self, room_id: &RoomId, action: &str, default: i64) -> Result<i64> {
        Ok(self
            .power_levels(room_id)?
            .and_then(|l| l.get(action).and_then(as_level))
            .unwrap_or(default))
    }

    /// The level needed to send a state event of `kind` (its `events` entry, else
    /// `state_default`, else 50).
    pub fn state_level(&self, room_id: &RoomId, kind: &str) -> Result<i64> {
        let levels = self.power_levels(room_id)?;
        let level = levels.as_ref().and_then(|l| {
            l.get("events")
                .and_then(|e| e.get(kind))
                .and_then(as_level)
                .or_else(|| l.get("state_default").and_then(as_level))
        });
        Ok(level.unwrap_or(50))
    }

    fn power_levels(&self, room_id: &RoomId) -> Result<Option<serde_json::Value>> {
        let Some(pdu) = self.state_event(room_id, &StateEventType::RoomPowerLevels, "")? else {
            return Ok(None);
        };
        Ok(serde_json::from_str(pdu.content.get()).ok())
    }
}

/// A power level from JSON: an integer, or (in old room versions) a string holding one.
fn as_level(value: &serde_json::Value) -> Option<i64> {
    value.as_i64().or_else(|| value.as_str().and_then(|s| s.parse().ok()))
}

/// Rejects malformed `m.room.power_levels` content with 400 before it reaches the authorization
/// rules (which would answer 403): levels are integers, `users` keys are user ids.
pub(crate) fn validate_power_levels(content: &CanonicalJsonObject) -> Result<()> {
    let bad = |what: String| Err(Error::bad_json(format!("Invalid power levels: {what}")));
    for key in [
        "ban",
        "kick",
        "redact",
        "invite",
        "events_default",
        "state_default",
        "users_default",
    ] {
        if let Some(value) = content.get(key)
            && !matches!(value, CanonicalJsonValue::Integer(_))
        {
            return bad(format!("`{key}` must be an integer"));
        }
    }
    for map in ["users", "events", "notifications"] {
        match content.get(map) {
            None => {}
            Some(CanonicalJsonValue::Object(entries)) => {
                for (key, value) in entries {
                    if !matches!(value, CanonicalJsonValue::Integer(_)) {
                        return bad(format!("`{map}.{key}` must be an integer"));
                    }
                    if map == "users" && UserId::parse(key.as_str()).is_err() {
                        return bad(format!("`users` key {key} is not a user id"));
                    }
                }
            }
            Some(_) => return bad(format!("`{map}` must be an object")),
        }
    }
    Ok(())
}
