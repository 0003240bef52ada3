//! Invites to and knocks on rooms this server does not have.
//!
//! A user of another server invited one of ours: the invite event and the stripped state the
//! inviting server sent are kept per user and room (`userroom_remoteinvite`), and the membership
//! index says `invite` at a stream position of its own, so `/sync` and sliding sync show the
//! invite like a local one. Joining then goes over federation (the room is unknown here);
//! declining is a leave through the inviting server. Pending remote invites are bounded per user
//! and per inviting server ([`RemoteInviteLimits`]).
//!
//! One of our users knocked on a room through another server: the knock event, the stripped
//! state that server answered, the server and the room version are kept
//! (`userroom_remoteknock`), the membership index says `knock`, and `/sync` shows the room
//! under `knock`. The room's answer comes as an invite over federation (kept as above, which
//! replaces the knock) or as a leave (a refused knock) when that server sends it to us.

use ruma::{EventId, OwnedEventId, RoomId, RoomVersionId, ServerName, UserId};

use super::{Rooms, pdu::Pdu};
use crate::{
    Error, Result,
    services::sync::notifier::Key,
    storage::{
        Batch,
        tables::membership::{Membership, RemoteInvite, RemoteKnock},
    },
};

/// The bound on one user's pending remote invites.
///
/// Further invites are refused (403 `M_FORBIDDEN` to the inviting server) rather than making
/// room by dropping the oldest: a flood would otherwise silently erase invites the user has not
/// looked at yet, while a refusal keeps what the user has and tells the inviter at once (their
/// invite fails instead of hanging). The per-server bound keeps one server's flood from
/// blocking invites from every other server; the total bounds the store.
#[derive(Clone, Copy, Debug)]
pub struct RemoteInviteLimits {
    /// Pending remote invites from users of one server.
    pub per_server: usize,
    /// Pending remote invites in all.
    pub total: usize,
}

/// A pending remote knock as `/sync` and a withdrawal need it.
pub struct PendingKnock {
    /// The knock event.
    pub event: Pdu,
    /// The stripped state the resident server answered.
    pub stripped: Vec<serde_json::Value>,
    /// The server the knock went through.
    pub via: ruma::OwnedServerName,
    /// The room's version.
    pub room_version: RoomVersionId,
}

fn sender_server(event: &[u8]) -> Option<ruma::OwnedServerName> {
    #[derive(serde::Deserialize)]
    struct Sender {
        sender: ruma::OwnedUserId,
    }
    serde_json::from_slice::<Sender>(event)
        .ok()
        .map(|s| s.sender.server_name().to_owned())
}

impl Rooms {
    /// Records `user_id`'s invite to `room_id` (a room this server does not have) from a user
    /// of `inviter`: the invite event (checked and countersigned by the caller) and the
    /// stripped state, as one JSON array. 403 when the user already has as many pending remote
    /// invites as `limits` allow (rows no longer pending are dropped on the way).
    #[allow(clippy::too_many_arguments)]
    pub async fn store_remote_invite(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        inviter: &ServerName,
        event_id: &EventId,
        event: Vec<u8>,
        stripped: Vec<u8>,
        limits: RemoteInviteLimits,
    ) -> Result<()> {
        let _counting = self.remote_invite_writes.lock().await;
        let mut stale = Vec::new();
        let (mut total, mut from_inviter) = (0usize, 0usize);
        for (room, invite) in self.memberships.remote_invites_of(user_id.as_str())? {
            if room == room_id.as_str() {
                continue;
            }
            let pending = self
                .memberships
                .get(user_id.as_str(), &room)?
                .is_some_and(|m| m.membership == "invite");
            if !pending {
                stale.push(room);
                continue;
            }
            total += 1;
            if sender_server(&invite.event).as_deref() == Some(inviter) {
                from_inviter += 1;
            }
        }
        if from_inviter >= limits.per_server || total >= limits.total {
            return Err(Error::forbidden(format!(
                "{user_id} has too many pending invites{}",
                if from_inviter >= limits.per_server {
                    format!(" from {inviter}")
                } else {
                    String::new()
                }
            )));
        }
        let invite = RemoteInvite {
            event_id: event_id.to_string(),
            event,
            stripped,
        };
        self.write_remote(room_id, user_id, "invite", |batch, memberships| {
            for room in &stale {
                memberships.queue_remote_invite(batch, user_id.as_str(), room, None)?;
            }
            memberships.queue_remote_knock(batch, user_id.as_str(), room_id.as_str(), None)?;
            memberships.queue_remote_invite(batch, user_id.as_str(), room_id.as_str(), Some(&invite))
        })
        .await
    }

    /// Records `user_id`'s knock on `room_id` (a room this server does not have), accepted by
    /// `via`.
    #[allow(clippy::too_many_arguments)]
    pub async fn store_remote_knock(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        event_id: &EventId,
        event: Vec<u8>,
        stripped: Vec<u8>,
        via: &ServerName,
        room_version: &RoomVersionId,
    ) -> Result<()> {
        let knock = RemoteKnock {
            event_id: event_id.to_string(),
            event,
            stripped,
            via: via.to_string(),
            room_version: room_version.to_string(),
        };
        self.write_remote(room_id, user_id, "knock", |batch, memberships| {
            memberships.queue_remote_invite(batch, user_id.as_str(), room_id.as_str(), None)?;
            memberships.queue_remote_knock(batch, user_id.as_str(), room_id.as_str(), Some(&knock))
        })
        .await
    }

    /// Ends a remote invite or knock here (declined, withdrawn, rescinded or refused): the
    /// membership becomes `leave`, the records are dropped. 403 when there is neither.
    pub async fn drop_remote_invite(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        if self.remote_invite(room_id, user_id)?.is_none() && self.remote_knock(room_id, user_id)?.is_none() {
            return Err(Error::forbidden("No invite to or knock on this room"));
        }
        self.write_remote(room_id, user_id, "leave", |batch, memberships| {
            memberships.queue_remote_invite(batch, user_id.as_str(), room_id.as_str(), None)?;
            memberships.queue_remote_knock(batch, user_id.as_str(), room_id.as_str(), None)
        })
        .await
    }

    /// Drops the remote invite and knock records of a room the user has joined over
    /// federation (the room's own member events say the rest); the membership is untouched.
    pub async fn clear_remote_records(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        let mut batch = self.db.batch();
        self.memberships
            .queue_remote_invite(&mut batch, user_id.as_str(), room_id.as_str(), None)?;
        self.memberships
            .queue_remote_knock(&mut batch, user_id.as_str(), room_id.as_str(), None)?;
        self.commits.enqueue(batch).durable().await?;
        Ok(())
    }

    /// Writes `membership` for a remote invite or knock at a position of its own, with the
    /// records `queue` puts in the same batch.
    async fn write_remote(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        membership: &str,
        queue: impl FnOnce(
            &mut Batch,
            &crate::storage::tables::membership::MembershipTable,
        ) -> crate::storage::StorageResult<()>,
    ) -> Result<()> {
        let ticket = self.positions.allocate()?;
        let position = ticket.position();
        let mut batch = self.db.batch();
        queue(&mut batch, &self.memberships)?;
        self.memberships.queue_set(
            &mut batch,
            user_id.as_str(),
            room_id.as_str(),
            &Membership {
                membership: membership.into(),
                position,
            },
        );
        self.notifier.mark(position, vec![Key::User(user_id.to_string())]);
        let written = self.commits.enqueue(batch).durable().await;
        self.member_lists.invalidate(room_id, user_id);
        match written {
            Ok(()) => {
                ticket.complete();
                self.notifier.flush(self.positions.watermark());
                Ok(())
            }
            Err(e) => {
                drop(ticket);
                self.notifier.flush(self.positions.watermark());
                Err(e.into())
            }
        }
    }

    /// `user_id`'s pending invite to a room this server does not have: the invite event and
    /// the stripped state to show with it.
    pub fn remote_invite(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<(Pdu, Vec<serde_json::Value>)>> {
        let Some(invite) = self.memberships.remote_invite(user_id.as_str(), room_id.as_str())? else {
            return Ok(None);
        };
        if self.membership(room_id, user_id)?.as_deref() != Some("invite") {
            return Ok(None);
        }
        let event_id: OwnedEventId = EventId::parse(&invite.event_id).map_err(|e| Error::internal(e.to_string()))?;
        let pdu = Pdu::parse(event_id, &invite.event)?;
        let stripped: Vec<serde_json::Value> = serde_json::from_slice(&invite.stripped).unwrap_or_default();
        Ok(Some((pdu, stripped)))
    }

    /// `user_id`'s pending knock on a room this server does not have.
    pub fn remote_knock(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<PendingKnock>> {
        let Some(knock) = self.memberships.remote_knock(user_id.as_str(), room_id.as_str())? else {
            return Ok(None);
        };
        if self.membership(room_id, user_id)?.as_deref() != Some("knock") {
            return Ok(None);
        }
        let event_id: OwnedEventId = EventId::parse(&knock.event_id).map_err(|e| Error::internal(e.to_string()))?;
        Ok(Some(PendingKnock {
            event: Pdu::parse(event_id, &knock.event)?,
            stripped: serde_json::from_slice(&knock.stripped).unwrap_or_default(),
            via: ServerName::parse(&knock.via).map_err(|e| Error::internal(e.to_string()))?,
            room_version: RoomVersionId::try_from(knock.room_version.as_str())
                .map_err(|e| Error::internal(e.to_string()))?,
        }))
    }
}
