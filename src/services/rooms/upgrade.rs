//! Room upgrades (spec "Room Upgrades", server behaviour): a replacement room in the new
//! version whose create event links its predecessor, the transferable state carried over, a
//! tombstone in the old room, and the old room's power levels raised so that it falls silent.
//! Moving local aliases is the directory's part of the job; the caller does it between
//! [`Rooms::upgrade`] and [`Rooms::move_canonical_alias`].

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId,
    events::StateEventType,
};

use super::{NewEvent, Rooms};
use crate::{Error, Result, services::events};

/// State carried into the replacement room, in this order (power levels come first so the
/// rest is sent under them).
const TRANSFERRED: &[&str] = &[
    "m.room.power_levels",
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
];

/// The upgraded room, before the tombstone is sent.
pub struct Replacement {
    /// The new room.
    pub room_id: OwnedRoomId,
    /// Who upgraded it.
    sender: OwnedUserId,
    /// The old room.
    old_room: OwnedRoomId,
}

impl Rooms {
    /// Creates the replacement room of `old_room` in `version` (steps 1–3 of the spec). Call
    /// [`Self::finish_upgrade`] afterwards.
    pub async fn upgrade(
        &self,
        old_room: &RoomId,
        sender: &UserId,
        version: &RoomVersionId,
        additional_creators: &[OwnedUserId],
    ) -> Result<Replacement> {
        self.ensure_joined(old_room, sender)?;
        let tombstone_level = self.state_level(old_room, "m.room.tombstone")?;
        if self.power_level(old_room, sender)? < tombstone_level {
            return Err(Error::forbidden(
                "You may not upgrade this room (m.room.tombstone is above your power level)",
            ));
        }
        let rules = events::rules(version)?;
        let old_create = self
            .state_event(old_room, &StateEventType::RoomCreate, "")?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let old_create = old_create.content_object()?;

        let mut create = CanonicalJsonObject::new();
        create.insert("room_version".into(), CanonicalJsonValue::String(version.to_string()));
        if let Some(kind) = old_create.get("type") {
            create.insert("type".into(), kind.clone());
        }
        let mut predecessor = CanonicalJsonObject::new();
        predecessor.insert("room_id".into(), CanonicalJsonValue::String(old_room.to_string()));
        create.insert("predecessor".into(), CanonicalJsonValue::Object(predecessor));
        if !rules.authorization.use_room_create_sender {
            create.insert("creator".into(), CanonicalJsonValue::String(sender.to_string()));
        }
        if !additional_creators.is_empty() {
            if !rules.authorization.additional_room_creators {
                return Err(Error::invalid_param(format!(
                    "Room version {version} has no additional creators"
                )));
            }
            let list = additional_creators
                .iter()
                .map(|u| CanonicalJsonValue::String(u.to_string()))
                .collect();
            create.insert("additional_creators".into(), CanonicalJsonValue::Array(list));
        }

        let room_id = self.create(version, sender, create).await?;
        let mut join = CanonicalJsonObject::new();
        join.insert("membership".into(), CanonicalJsonValue::String("join".into()));
        self.append(
            &room_id,
            sender,
            NewEvent::state("m.room.member", sender.as_str(), join),
        )
        .await?;

        let creators: Vec<&str> = if rules.authorization.explicitly_privilege_room_creators {
            std::iter::once(sender.as_str())
                .chain(additional_creators.iter().map(|u| u.as_str()))
                .collect()
        } else {
            Vec::new()
        };
        for kind in TRANSFERRED {
            let Some(event) = self.state_event(old_room, &StateEventType::from(*kind), "")? else {
                continue;
            };
            let mut content = event.content_object()?;
            if *kind == "m.room.power_levels" {
                adjust_power_levels(&mut content, sender, &creators);
            }
            self.append(&room_id, sender, NewEvent::state(kind, "", content))
                .await?;
        }
        // Bans follow the room.
        for pdu in self.full_state(old_room)? {
            if pdu.kind.to_string() != "m.room.member" {
                continue;
            }
            let content = pdu.content_object()?;
            if content.get("membership") != Some(&CanonicalJsonValue::String("ban".into())) {
                continue;
            }
            let Some(target) = pdu.state_key.as_deref() else {
                continue;
            };
            let mut ban = CanonicalJsonObject::new();
            ban.insert("membership".into(), CanonicalJsonValue::String("ban".into()));
            self.append(&room_id, sender, NewEvent::state("m.room.member", target, ban))
                .await?;
        }
        Ok(Replacement {
            room_id,
            sender: sender.to_owned(),
            old_room: old_room.to_owned(),
        })
    }

    /// After the directory moved the local aliases: the canonical alias moves to the new room
    /// (and is cleared in the old one, where it would now point elsewhere).
    pub async fn move_canonical_alias(&self, replacement: &Replacement) -> Result<()> {
        let (old_room, sender) = (&replacement.old_room, &replacement.sender);
        let Some(alias) = self.state_event(old_room, &StateEventType::RoomCanonicalAlias, "")? else {
            return Ok(());
        };
        let content = alias.content_object()?;
        if content.is_empty() {
            return Ok(());
        }
        self.append(
            &replacement.room_id,
            sender,
            NewEvent::state("m.room.canonical_alias", "", content),
        )
        .await?;
        let cleared = NewEvent::state("m.room.canonical_alias", "", CanonicalJsonObject::new());
        if let Err(e) = self.append(old_room, sender, cleared).await {
            tracing::info!(%old_room, error = %e, "could not clear the old room's canonical alias");
        }
        Ok(())
    }

    /// Steps 5 and 6: the tombstone in the old room, then its power levels raised so ordinary
    /// members can neither talk nor invite there any more.
    pub async fn finish_upgrade(&self, replacement: &Replacement) -> Result<()> {
        let (old_room, sender) = (&replacement.old_room, &replacement.sender);
        let mut tombstone = CanonicalJsonObject::new();
        tombstone.insert(
            "body".into(),
            CanonicalJsonValue::String("This room has been replaced".into()),
        );
        tombstone.insert(
            "replacement_room".into(),
            CanonicalJsonValue::String(replacement.room_id.to_string()),
        );
        self.append(old_room, sender, NewEvent::state("m.room.tombstone", "", tombstone))
            .await?;

        let Some(levels) = self.state_event(old_room, &StateEventType::RoomPowerLevels, "")? else {
            return Ok(());
        };
        let mut levels = levels.content_object()?;
        let users_default = match levels.get("users_default") {
            Some(CanonicalJsonValue::Integer(i)) => i64::from(*i),
            _ => 0,
        };
        let restricted = CanonicalJsonValue::Integer(ruma::Int::from(50i32.max(users_default as i32 + 1)));
        let mut changed = false;
        for key in ["events_default", "invite"] {
            let current = match levels.get(key) {
                Some(CanonicalJsonValue::Integer(i)) => i64::from(*i),
                _ => 0,
            };
            if current < 50.max(users_default + 1) {
                levels.insert(key.into(), restricted.clone());
                changed = true;
            }
        }
        if changed {
            // Best effort: the upgrader may lack the power to change power levels.
            if let Err(e) = self
                .append(old_room, sender, NewEvent::state("m.room.power_levels", "", levels))
                .await
            {
                tracing::info!(%old_room, error = %e, "could not restrict the upgraded room");
            }
        }
        Ok(())
    }
}

/// The old room's power levels for the new one: creators of a version that privileges them
/// must not be listed, and only they may send its tombstone; otherwise the upgrader keeps at
/// least the power to run the room.
fn adjust_power_levels(content: &mut CanonicalJsonObject, sender: &UserId, creators: &[&str]) {
    let users = content
        .entry("users".into())
        .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
    let CanonicalJsonValue::Object(users) = users else {
        return;
    };
    if creators.is_empty() {
        let at_least = CanonicalJsonValue::Integer(ruma::Int::from(100i32));
        let keep = match users.get(sender.as_str()) {
            Some(CanonicalJsonValue::Integer(i)) => i64::from(*i) >= 100,
            _ => false,
        };
        if !keep {
            users.insert(sender.to_string(), at_least);
        }
    } else {
        for creator in creators {
            users.remove(*creator);
        }
        // Creators stand above every level, so replacing the room is theirs alone: the
        // tombstone goes above the highest listed user (at least 150, as at creation).
        let highest = users
            .values()
            .filter_map(|v| match v {
                CanonicalJsonValue::Integer(i) => Some(i64::from(*i)),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let level = CanonicalJsonValue::Integer(ruma::Int::new_saturating(highest.saturating_add(1).max(150)));
        let events = content
            .entry("events".into())
            .or_insert_with(|| CanonicalJsonValue::Object(CanonicalJsonObject::new()));
        if let CanonicalJsonValue::Object(events) = events {
            events.insert("m.room.tombstone".into(), level);
        }
    }
}
