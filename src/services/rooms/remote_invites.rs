//! Invites to rooms this server does not have (a user of another server invited one of ours):
//! the invite event and the stripped state the inviting server sent are kept per user and room,
//! and the membership index says `invite` at a stream position of its own, so `/sync` and
//! sliding sync show the invite like a local one. Joining then goes over federation (the room
//! is unknown here); declining only drops it here (the inviting server is not told yet).

use ruma::{EventId, OwnedEventId, RoomId, UserId};

use super::{Rooms, pdu::Pdu};
use crate::{
    Error, Result,
    services::sync::notifier::Key,
    storage::tables::membership::{Membership, RemoteInvite},
};

impl Rooms {
    /// Records `user_id`'s invite to `room_id` (a room this server does not have): the invite
    /// event (checked and countersigned by the caller) and the stripped state, as one JSON
    /// array.
    pub async fn store_remote_invite(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
        event_id: &EventId,
        event: Vec<u8>,
        stripped: Vec<u8>,
    ) -> Result<()> {
        self.set_remote_invite(
            room_id,
            user_id,
            Some(RemoteInvite {
                event_id: event_id.to_string(),
                event,
                stripped,
            }),
        )
        .await
    }

    /// Declines a remote invite here: the membership becomes `leave`, the invite is dropped.
    pub async fn drop_remote_invite(&self, room_id: &RoomId, user_id: &UserId) -> Result<()> {
        if self.remote_invite(room_id, user_id)?.is_none() {
            return Err(Error::forbidden("No invite to this room"));
        }
        self.set_remote_invite(room_id, user_id, None).await
    }

    async fn set_remote_invite(&self, room_id: &RoomId, user_id: &UserId, invite: Option<RemoteInvite>) -> Result<()> {
        let ticket = self.positions.allocate()?;
        let position = ticket.position();
        let mut batch = self.db.batch();
        self.memberships
            .queue_remote_invite(&mut batch, user_id.as_str(), room_id.as_str(), invite.as_ref())?;
        let membership = if invite.is_some() { "invite" } else { "leave" };
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
}
