//! `createRoom`: the events that make a room, in the spec's order (client-server-api "Creation"):
//! create, the creator's join, power levels (with the override), join rules, history
//! visibility, guest access, `initial_state`, name, topic, then invites. With `room_alias_name`
//! the alias is reserved first (400 `M_ROOM_IN_USE` when taken) and named in
//! `m.room.canonical_alias` after the power levels.
//!
//! It is all or nothing: every event is built and checked on a draft of the room before
//! anything is written, then the events, the alias and the directory listing are written in one
//! batch. When any step is refused, no trace of the room remains and the alias is free again.

use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedRoomId, OwnedUserId, RoomVersionId, UserId};

use super::{NewEvent, Rooms};
use crate::{Error, Result, services::events};

/// The presets of the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// Invite-only, history shared, guests may join.
    PrivateChat,
    /// Like private, and every invitee gets the creator's power.
    TrustedPrivateChat,
    /// Anyone may join, history shared, no guests.
    PublicChat,
}

/// What the client asked for.
pub struct CreateRoom {
    /// The creator's display name and avatar, for their member event.
    pub creator_profile: super::membership::MemberProfile,
    /// Room version.
    pub version: RoomVersionId,
    /// Preset.
    pub preset: Preset,
    /// Extra keys for the create event.
    pub creation_content: CanonicalJsonObject,
    /// Keys merged over the default power levels.
    pub power_level_override: CanonicalJsonObject,
    /// `initial_state`: (type, state key, content).
    pub initial_state: Vec<(String, String, CanonicalJsonObject)>,
    /// `name`.
    pub name: Option<String>,
    /// `topic`.
    pub topic: Option<String>,
    /// Users to invite.
    pub invite: Vec<OwnedUserId>,
    /// Mark invites as direct chats.
    pub is_direct: bool,
    /// `room_alias_name`: the localpart of a local alias for the room.
    pub alias_localpart: Option<String>,
    /// `visibility: public`: publish the room in the room directory.
    pub publish: bool,
}

fn object(value: serde_json::Value) -> CanonicalJsonObject {
    match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        _ => CanonicalJsonObject::new(),
    }
}

/// Merges `invitees` into the create content's `additional_creators` (deduplicated, the
/// creator left out), as the `trusted_private_chat` preset asks in room version 12.
fn add_creators(create: &mut CanonicalJsonObject, creator: &UserId, invitees: &[OwnedUserId]) -> Result<()> {
    let mut creators = match create.remove("additional_creators") {
        None => Vec::new(),
        Some(CanonicalJsonValue::Array(values)) => values,
        Some(_) => return Err(Error::bad_json("additional_creators must be an array of user IDs")),
    };
    for invitee in invitees.iter().filter(|i| i.as_str() != creator.as_str()) {
        let value = CanonicalJsonValue::String(invitee.to_string());
        if !creators.contains(&value) {
            creators.push(value);
        }
    }
    create.insert("additional_creators".into(), CanonicalJsonValue::Array(creators));
    Ok(())
}

impl Rooms {
    /// Creates a room with the events of the spec's creation algorithm; returns its id.
    pub async fn create_room(&self, creator: &UserId, request: CreateRoom) -> Result<OwnedRoomId> {
        let rules = events::rules(&request.version)?;
        let mut create = request.creation_content;
        create.insert(
            "room_version".into(),
            CanonicalJsonValue::String(request.version.to_string()),
        );
        if !rules.authorization.use_room_create_sender {
            create
                .entry("creator".into())
                .or_insert_with(|| CanonicalJsonValue::String(creator.to_string()));
        }
        let creators_privileged = rules.authorization.explicitly_privilege_room_creators;
        let mut users = serde_json::Map::new();
        if !creators_privileged {
            users.insert(creator.to_string(), 100.into());
        }
        if request.preset == Preset::TrustedPrivateChat {
            if creators_privileged {
                // Room version 12: invitees become creators too (never listed in `users`).
                add_creators(&mut create, creator, &request.invite)?;
            } else {
                for invitee in &request.invite {
                    users.insert(invitee.to_string(), 100.into());
                }
            }
        }
        // With creators above every level (v12), only they may replace the room.
        let tombstone_level = if creators_privileged { 150 } else { 100 };
        let mut power_levels = object(serde_json::json!({
            "users": users,
            "users_default": 0,
            "events": {
                "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": tombstone_level,
                "m.room.server_acl": 100, "m.room.encryption": 100
            },
            "events_default": 0, "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0,
        }));
        power_levels.extend(request.power_level_override);
        // Checked before anything is written, so a bad override leaves no half-made room.
        super::validate_power_levels(&power_levels)?;
        let alias = match &request.alias_localpart {
            Some(localpart) => {
                let alias = self.directory.local_alias(localpart)?;
                let reservation = self.directory.reserve(&alias)?.ok_or_else(|| {
                    Error::new(
                        http::StatusCode::BAD_REQUEST,
                        ruma::api::error::ErrorKind::RoomInUse,
                        format!("Room alias {alias} is already taken"),
                    )
                })?;
                Some(reservation)
            }
            None => None,
        };
        // Every event is built and checked before anything is written; the room, its alias and
        // its directory listing are then written in one batch (a refused event leaves nothing).
        let mut draft = self.draft_room(&request.version, creator, create)?;
        let room_id = draft.room_id().to_owned();
        if let Some(reservation) = &alias {
            reservation.queue(draft.batch(), &room_id, creator)?;
        }
        draft.add(NewEvent::state("m.room.member", creator.as_str(), {
            let mut join = object(serde_json::json!({"membership": "join"}));
            join.extend(request.creator_profile.content());
            join
        }))?;

        draft.add(NewEvent::state("m.room.power_levels", "", power_levels))?;
        if let Some(reservation) = &alias {
            let content = object(serde_json::json!({"alias": reservation.alias()}));
            draft.add(NewEvent::state("m.room.canonical_alias", "", content))?;
        }

        let join_rule = if request.preset == Preset::PublicChat {
            "public"
        } else {
            "invite"
        };
        draft.add(NewEvent::state(
            "m.room.join_rules",
            "",
            object(serde_json::json!({"join_rule": join_rule})),
        ))?;
        draft.add(NewEvent::state(
            "m.room.history_visibility",
            "",
            object(serde_json::json!({"history_visibility": "shared"})),
        ))?;
        if request.preset != Preset::PublicChat {
            draft.add(NewEvent::state(
                "m.room.guest_access",
                "",
                object(serde_json::json!({"guest_access": "can_join"})),
            ))?;
        }
        for (kind, key, content) in request.initial_state {
            draft.add(NewEvent::state(&kind, &key, content))?;
        }
        if let Some(name) = request.name {
            draft.add(NewEvent::state(
                "m.room.name",
                "",
                object(serde_json::json!({"name": name})),
            ))?;
        }
        if let Some(topic) = request.topic {
            draft.add(NewEvent::state(
                "m.room.topic",
                "",
                object(serde_json::json!({"topic": topic})),
            ))?;
        }
        for invitee in &request.invite {
            let mut content = object(serde_json::json!({"membership": "invite"}));
            if request.is_direct {
                content.insert("is_direct".into(), CanonicalJsonValue::Bool(true));
            }
            draft
                .add(NewEvent::state("m.room.member", invitee.as_str(), content))
                .map_err(|e| match e {
                    Error::Matrix { .. } => Error::forbidden(format!("Could not invite {invitee}: {e}")),
                    other => other,
                })?;
        }
        if request.publish {
            self.directory.queue_publish(draft.batch(), &room_id);
        }
        draft.commit().await?;
        // The alias is stored now; its claim can go.
        drop(alias);
        Ok(room_id)
    }
}
