//! Membership: who is in a room (point lookups in the membership index) and changes of it,
//! including those a user makes for themself, with the rules around them that the
//! authorization rules leave to the server: joining (with the profile copied into the member
//! event, and for `restricted` rooms a member chosen to authorise the join), knocking, and
//! forgetting a room.

use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedRoomId, OwnedUserId, RoomId, UserId, events::StateEventType};

use super::{Appended, NewEvent, Rooms};
use crate::{Error, Result};

/// What a member event shows of its user.
#[derive(Clone, Debug, Default)]
pub struct MemberProfile {
    /// Display name.
    pub displayname: Option<String>,
    /// Avatar.
    pub avatar_url: Option<String>,
}

impl MemberProfile {
    /// The member-event fields of a stored profile.
    pub fn from_profile(profile: &serde_json::Map<String, serde_json::Value>) -> Self {
        let field = |key: &str| profile.get(key).and_then(|v| v.as_str()).map(str::to_owned);
        MemberProfile {
            displayname: field("displayname"),
            avatar_url: field("avatar_url"),
        }
    }

    /// The member event content fields (`displayname`, `avatar_url`) that are set.
    pub fn content(&self) -> CanonicalJsonObject {
        let mut content = CanonicalJsonObject::new();
        if let Some(name) = &self.displayname {
            content.insert("displayname".into(), CanonicalJsonValue::String(name.clone()));
        }
        if let Some(avatar) = &self.avatar_url {
            content.insert("avatar_url".into(), CanonicalJsonValue::String(avatar.clone()));
        }
        content
    }
}

impl Rooms {
    /// Joins `user_id` to a room. In a `restricted` or `knock_restricted` room a user who is
    /// not invited may join only as a member of one of the rooms its join rule allows; the join
    /// then names a member with the power to invite who authorises it
    /// (`join_authorised_via_users_server`).
    pub async fn join(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<&str>,
        profile: &MemberProfile,
    ) -> Result<Appended> {
        let mut content = profile.content();
        let current = self.membership(room_id, user_id)?;
        if !matches!(current.as_deref(), Some("join" | "invite"))
            && let Some(authoriser) = self.restricted_join_authoriser(room_id, user_id)?
        {
            content.insert(
                "join_authorised_via_users_server".into(),
                CanonicalJsonValue::String(authoriser.to_string()),
            );
        }
        self.change_membership(room_id, user_id, user_id, "join", reason, content)
            .await
    }

    /// Asks to join a room whose join rule is `knock` or `knock_restricted`.
    pub async fn knock(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        reason: Option<&str>,
        profile: &MemberProfile,
    ) -> Result<Appended> {
        match self.membership(room_id, user_id)?.as_deref() {
            Some("join") => return Err(Error::forbidden(format!("{user_id} is already in the room"))),
            Some("invite") => return Err(Error::forbidden(format!("{user_id} is already invited"))),
            Some("ban") => return Err(Error::forbidden(format!("{user_id} is banned from the room"))),
            _ => {}
        }
        self.change_membership(room_id, user_id, user_id, "knock", reason, profile.content())
            .await
    }

    /// Forgets a room the user has left: its history is no longer readable to them (unless
    /// world-readable) until they are a member again.
    pub async fn forget(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        match self.membership(room_id, user_id)?.as_deref() {
            Some("leave" | "ban") => {}
            None => return Err(Error::not_found(format!("{user_id} has never been in {room_id}"))),
            Some(_) => {
                return Err(Error::new(
                    http::StatusCode::BAD_REQUEST,
                    ruma::api::error::ErrorKind::Unknown,
                    format!("{user_id} has not left {room_id}"),
                ));
            }
        }
        let mut batch = self.db.batch();
        self.memberships
            .queue_forget(&mut batch, user_id.as_str(), room_id.as_str());
        batch.commit().await?;
        Ok(())
    }

    /// After a profile change: a new member event in every room the user has joined, carrying
    /// the new display name and avatar (as Synapse does). A room that refuses it (for example
    /// one where the user may no longer change their membership) is logged and skipped.
    pub async fn refresh_member_profile(&self, user_id: &UserId, profile: &MemberProfile) -> Result<()> {
        for room_id in self.joined_rooms(user_id)? {
            let Some(current) = self.state_event(&room_id, &StateEventType::RoomMember, user_id.as_str())? else {
                continue;
            };
            let mut content = match serde_json::from_str::<CanonicalJsonValue>(current.content.get()) {
                Ok(CanonicalJsonValue::Object(o)) => o,
                _ => continue,
            };
            content.remove("displayname");
            content.remove("avatar_url");
            content.remove("reason");
            content.extend(profile.content());
            let event = super::NewEvent::state("m.room.member", user_id.as_str(), content);
            if let Err(e) = self.append(&room_id, user_id, event).await {
                tracing::info!(%room_id, %user_id, error = %e, "profile change not sent to room");
            }
        }
        Ok(())
    }

    /// Whether the user has forgotten the room.
    pub fn is_forgotten(&self, room_id: &RoomId, user_id: &UserId) -> Result<bool> {
        Ok(self.memberships.is_forgotten(user_id.as_str(), room_id.as_str())?)
    }

    /// For a join under a `restricted`/`knock_restricted` rule: a joined local member who may
    /// invite, provided the user is in one of the allowed rooms (`None` under other rules).
    pub(super) fn restricted_join_authoriser(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<OwnedUserId>> {
        #[derive(serde::Deserialize)]
        struct JoinRules {
            join_rule: String,
            #[serde(default)]
            allow: Vec<Allow>,
        }
        #[derive(serde::Deserialize)]
        struct Allow {
            #[serde(rename = "type")]
            kind: String,
            room_id: Option<ruma::OwnedRoomId>,
        }
        let Some(event) = self.state_event(room_id, &StateEventType::RoomJoinRules, "")? else {
            return Ok(None);
        };
        let Ok(rules) = serde_json::from_str::<JoinRules>(event.content.get()) else {
            return Ok(None);
        };
        if !matches!(rules.join_rule.as_str(), "restricted" | "knock_restricted") {
            return Ok(None);
        }
        let member_of_allowed = rules
            .allow
            .iter()
            .filter(|a| a.kind == "m.room_membership")
            .filter_map(|a| a.room_id.as_deref())
            .map(|allowed| self.membership(allowed, user_id))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .any(|m| m.as_deref() == Some("join"));
        if !member_of_allowed {
            return Err(Error::forbidden(
                "You are not a member of any room whose members may join this one",
            ));
        }
        let invite_level = self.required_level(room_id, ruma::state_res::events::RoomPowerLevelsIntField::Invite)?;
        let mut best: Option<(i64, OwnedUserId)> = None;
        for member in self.members(room_id)?.with("join") {
            if member.server_name() != self.server_name {
                continue;
            }
            let level = self.power_level(room_id, member)?;
            if level >= invite_level && best.as_ref().is_none_or(|(l, _)| level > *l) {
                best = Some((level, member.to_owned()));
            }
        }
        best.map(|(_, member)| Some(member))
            .ok_or_else(|| Error::forbidden("No member of this server may authorise the join"))
    }
}

impl Rooms {
    /// A user's membership in a room (`join`, `invite`, `leave`, `ban`, `knock`), if any.
    ///
    /// A point lookup in the membership index, which is written in the same batch as the
    /// `m.room.member` event, so it always agrees with the current state.
    pub fn membership(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<String>> {
        Ok(self
            .memberships
            .get(user_id.as_str(), room_id.as_str())?
            .map(|m| m.membership))
    }

    /// Fails with 403 unless the user is joined to the room. (History-visibility rules that
    /// let former members read what they saw come with the rest of the rooms work.)
    pub fn ensure_joined(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        match self.membership(room_id, user_id)?.as_deref() {
            Some("join") => Ok(()),
            _ => Err(Error::forbidden(format!("{user_id} is not in the room {room_id}"))),
        }
    }

    /// Changes a user's membership (join, leave, invite, kick, ban…): an `m.room.member` event
    /// about `target` sent by `sender`, authorized like any other event.
    pub async fn set_membership(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        membership: &str,
        reason: Option<&str>,
    ) -> Result<Appended> {
        self.change_membership(room_id, sender, target, membership, reason, CanonicalJsonObject::new())
            .await
    }

    /// [`Self::set_membership`] with more content fields (profile, join authorisation).
    async fn change_membership(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        membership: &str,
        reason: Option<&str>,
        mut content: CanonicalJsonObject,
    ) -> Result<Appended> {
        content.insert(
            "membership".into(),
            ruma::CanonicalJsonValue::String(membership.to_owned()),
        );
        if let Some(reason) = reason {
            content.insert("reason".into(), ruma::CanonicalJsonValue::String(reason.to_owned()));
        }
        if self.room_version(room_id)?.is_none() {
            return Err(Error::not_found("Unknown room"));
        }
        self.append(
            room_id,
            sender,
            NewEvent::state("m.room.member", target.as_str(), content),
        )
        .await
    }

    /// The rooms a user has joined.
    pub fn joined_rooms(&self, user_id: &UserId) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .memberships
            .rooms_of(user_id.as_str())?
            .into_iter()
            .filter(|(_, m)| m.membership == "join")
            .filter_map(|(room, _)| OwnedRoomId::try_from(room).ok())
            .collect())
    }
}
