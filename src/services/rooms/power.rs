//! Power levels: a user's level (room creators of version 12 outrank every level), the level
//! an action needs, and the validation of `m.room.power_levels` content before it is sent.
//!
//! Levels are read with ruma-state-res's event helpers (the same reading the authorization
//! rules make, string levels of old room versions included) from the original `m.room.create`
//! and `m.room.power_levels` events: a redaction never changes what anyone may do.

use std::collections::HashSet;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedUserId, RoomId, RoomVersionId, UserId,
    events::TimelineEventType,
    room_version_rules::AuthorizationRules,
    state_res::events::{RoomCreateEvent, RoomPowerLevelsEvent, RoomPowerLevelsIntField},
};

use super::state::StateAt;
use super::{Rooms, pdu::Pdu};
use crate::{Error, Result, services::events};

/// The power levels of one room state.
pub(super) struct Powers {
    rules: AuthorizationRules,
    creators: HashSet<OwnedUserId>,
    levels: Option<RoomPowerLevelsEvent<Pdu>>,
}

/// A stored event ruma-state-res cannot read (never accepted by the write path).
fn unreadable(reason: String) -> Error {
    Error::internal(format!("stored power levels: {reason}"))
}

impl Powers {
    /// A user's level: unbounded (`i64::MAX`) for the creators of rooms whose version
    /// privileges them (v12); without power levels, 100 for a creator and 0 for others.
    pub(super) fn of(&self, user_id: &UserId) -> Result<i64> {
        if self.rules.explicitly_privilege_room_creators && self.creators.contains(user_id) {
            return Ok(i64::MAX);
        }
        match &self.levels {
            Some(levels) => Ok(levels
                .user_power_level(user_id, &self.rules)
                .map_err(unreadable)?
                .into()),
            None => Ok(if self.creators.contains(user_id) { 100 } else { 0 }),
        }
    }

    /// The level an action (`redact`, `kick`, `ban`, `invite`…) needs.
    pub(super) fn needed(&self, action: RoomPowerLevelsIntField) -> Result<i64> {
        match &self.levels {
            Some(levels) => Ok(levels
                .get_as_int_or_default(action, &self.rules)
                .map_err(unreadable)?
                .into()),
            None => Ok(action.default_value().into()),
        }
    }

    /// The level needed to send a state event of `kind` (its `events` entry, else
    /// `state_default`, else 50).
    fn state_event(&self, kind: &str) -> Result<i64> {
        match &self.levels {
            Some(levels) => Ok(levels
                .event_power_level(&TimelineEventType::from(kind), Some(""), &self.rules)
                .map_err(unreadable)?
                .into()),
            None => Ok(RoomPowerLevelsIntField::StateDefault.default_value().into()),
        }
    }
}

impl Rooms {
    /// The power levels of a state set of a room of `version`.
    pub(super) fn powers_in(&self, version: &RoomVersionId, state: &StateAt) -> Result<Powers> {
        let rules = events::rules(version)?.authorization;
        let create = self
            .original_lookup(state, "m.room.create", "")?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let creators = RoomCreateEvent::new(create).creators(&rules).map_err(unreadable)?;
        let levels = self
            .original_lookup(state, "m.room.power_levels", "")?
            .map(RoomPowerLevelsEvent::new);
        Ok(Powers {
            rules,
            creators,
            levels,
        })
    }

    /// The power levels of the room's current state.
    pub(super) fn powers(&self, room_id: &RoomId) -> Result<Powers> {
        let unknown = || Error::not_found("Unknown room");
        let version = self.room_version(room_id)?.ok_or_else(unknown)?;
        let short_room = self.ids.room(room_id.as_str())?.ok_or_else(unknown)?;
        let current = self.current_state(short_room)?.ok_or_else(unknown)?;
        self.powers_in(&version, &current)
    }

    /// A user's power level in the room's current state (see [`Powers::of`]).
    pub fn power_level(&self, room_id: &RoomId, user_id: &UserId) -> Result<i64> {
        self.powers(room_id)?.of(user_id)
    }

    /// The level an action (`redact`, `kick`, `ban`, `invite`…) needs in the room.
    pub fn required_level(&self, room_id: &RoomId, action: RoomPowerLevelsIntField) -> Result<i64> {
        self.powers(room_id)?.needed(action)
    }

    /// The level needed to send a state event of `kind` (its `events` entry, else
    /// `state_default`, else 50).
    pub fn state_level(&self, room_id: &RoomId, kind: &str) -> Result<i64> {
        self.powers(room_id)?.state_event(kind)
    }
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
