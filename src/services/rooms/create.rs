//! `createRoom`: the events that make a room, in the spec's order (client-server-api "Creation"):
//! create, the creator's join, power levels (with the override), join rules, history
//! visibility, guest access, `initial_state`, name, topic, then invites. With `room_alias_name`
//! the alias is reserved before anything is written (400 `M_ROOM_IN_USE` when taken), stored
//! once the room has its id, and named in `m.room.canonical_alias` after the power levels.

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
        let room_id = self.create(&request.version, creator, create).await?.room_id;
        let alias = match alias {
            Some(reservation) => {
                let alias = reservation.alias().to_owned();
                reservation.commit(&room_id, creator).await?;
                Some(alias)
            }
            None => None,
        };
        let send = |kind: &'static str, key: String, content: CanonicalJsonObject| {
            let room_id = room_id.clone();
            async move {
                self.append(&room_id, creator, NewEvent::state(kind, &key, content))
                    .await
                    .map(|_| ())
            }
        };
        send("m.room.member", creator.to_string(), {
            let mut join = object(serde_json::json!({"membership": "join"}));
            join.extend(request.creator_profile.content());
            join
        })
        .await?;

        send("m.room.power_levels", String::new(), power_levels).await?;
        if let Some(alias) = alias {
            send(
                "m.room.canonical_alias",
                String::new(),
                object(serde_json::json!({"alias": alias})),
            )
            .await?;
        }

        let join_rule = if request.preset == Preset::PublicChat {
            "public"
        } else {
            "invite"
        };
        send(
            "m.room.join_rules",
            String::new(),
            object(serde_json::json!({"join_rule": join_rule})),
        )
        .await?;
        send(
            "m.room.history_visibility",
            String::new(),
            object(serde_json::json!({"history_visibility": "shared"})),
        )
        .await?;
        if request.preset != Preset::PublicChat {
            send(
                "m.room.guest_access",
                String::new(),
                object(serde_json::json!({"guest_access": "can_join"})),
            )
            .await?;
        }
        for (kind, key, content) in request.initial_state {
            let room_id = room_id.clone();
            self.append(&room_id, creator, NewEvent::state(&kind, &key, content))
                .await?;
        }
        if let Some(name) = request.name {
            send("m.room.name", String::new(), object(serde_json::json!({"name": name}))).await?;
        }
        if let Some(topic) = request.topic {
            send(
                "m.room.topic",
                String::new(),
                object(serde_json::json!({"topic": topic})),
            )
            .await?;
        }
        for invitee in &request.invite {
            let mut content = object(serde_json::json!({"membership": "invite"}));
            if request.is_direct {
                content.insert("is_direct".into(), CanonicalJsonValue::Bool(true));
            }
            self.append(
                &room_id,
                creator,
                NewEvent::state("m.room.member", invitee.as_str(), content),
            )
            .await
            .map_err(|e| match e {
                Error::Matrix { .. } => Error::forbidden(format!("Could not invite {invitee}: {e}")),
                other => other,
            })?;
        }
        if request.publish {
            self.directory.publish(&room_id, true).await?;
        }
        Ok(room_id)
    }
}
