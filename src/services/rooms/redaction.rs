//! Redactions (spec "Redactions", and "Handling redactions" in the room versions).
//!
//! A redaction is an event like any other, authorized by the room's rules; whether it *takes
//! effect* is decided once, on the write path when it is built, against the state it is sent
//! in: only on an event of the same room, sent by the redaction's sender or redacted by a user
//! with the room's `redact` level in that state. A redaction that may not take effect is still
//! stored and served, and redacts nothing (as Synapse does).
//!
//! Stored bytes are never rewritten: the redacted form (ruma's algorithm for the room version)
//! is produced when an event is served ([`Rooms::served`]). The authorization rules and power
//! levels always read events as stored, so a redaction never changes what anyone may do.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId, RoomVersionId, UserId,
    room_version_rules::RoomVersionRules, state_res::events::RoomPowerLevelsIntField,
};
use serde_json::value::RawValue;

use super::state::StateAt;
use super::{Appended, NewEvent, Rooms, pdu::Pdu, power::Powers};
use crate::{Error, Result, services::events};

impl Rooms {
    /// `PUT /redact`: redacts an event of the room. Refused up front (404 for an event not in
    /// the room, 403 for someone else's event without the `redact` level) so the client hears
    /// why; the write path decides again, under the room's lock.
    pub async fn redact(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &EventId,
        reason: Option<&str>,
        txn: (&str, &str, &str),
    ) -> Result<Appended> {
        let version = self
            .room_version(room_id)?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let rules = events::rules(&version)?;
        let original = self
            .original_event(target)?
            .filter(|p| p.room().is_ok_and(|r| r == room_id))
            .ok_or_else(|| Error::not_found("Event not found"))?;
        if !may_redact(&self.powers(room_id)?, sender, &original)? {
            return Err(Error::forbidden("You may only redact your own events in this room"));
        }
        let mut content = CanonicalJsonObject::new();
        if let Some(reason) = reason {
            content.insert("reason".into(), CanonicalJsonValue::String(reason.to_owned()));
        }
        let top_level = if rules.redaction.content_field_redacts {
            content.insert("redacts".into(), CanonicalJsonValue::String(target.to_string()));
            None
        } else {
            Some(target)
        };
        let event = NewEvent {
            kind: "m.room.redaction",
            state_key: None,
            content,
            redacts: top_level,
            txn: Some(txn),
            origin_server_ts: None,
        };
        self.append(room_id, sender, event).await
    }

    /// The event a new redaction takes effect on (its short id), or `None` when it redacts
    /// nothing: it names no stored event, or one of another room, or someone else's event
    /// while its sender lacks the `redact` level in `state`, the state it is sent in (room
    /// versions 1 and 2 check this in the authorization rules: an accepted redaction there takes
    /// effect).
    pub(super) fn redaction_effect(
        &self,
        version: &RoomVersionId,
        rules: &RoomVersionRules,
        state: &StateAt,
        redaction: &Pdu,
    ) -> Result<Option<u64>> {
        let Some(target) = redaction_target(rules, redaction) else {
            return Ok(None);
        };
        let Some(short) = self.ids.event(target.as_str())? else {
            return Ok(None);
        };
        let Some(original) = self.stored_event(short, target)? else {
            return Ok(None);
        };
        if original.room()? != redaction.room()? {
            return Ok(None);
        }
        if rules.authorization.special_case_room_redaction {
            // Room versions 1 and 2: the authorization rules already required the `redact`
            // level or the redacted event's id to be of the redaction's server.
            return Ok(Some(short));
        }
        let allowed = may_redact(&self.powers_in(version, state)?, &redaction.sender, &original)?;
        Ok(allowed.then_some(short))
    }

    /// Stored events (with their short ids) as clients see them: each in its redacted form
    /// when a redaction of it took effect, with the redaction in `unsigned.redacted_because`.
    /// Every read that serves events goes through here.
    pub(super) fn served(&self, events: Vec<(u64, Pdu)>) -> Result<Vec<Pdu>> {
        let shorts: Vec<u64> = events.iter().map(|(short, _)| *short).collect();
        let marks = self.pdus.redacted_by_many(&shorts)?;
        events
            .into_iter()
            .zip(marks)
            .map(|((_, pdu), redaction)| match redaction {
                Some(redaction) => self.redacted_form(pdu, &redaction),
                None => Ok(pdu),
            })
            .collect()
    }

    /// [`Self::served`] for one event.
    pub(super) fn apply_redaction(&self, short: u64, pdu: Pdu) -> Result<Pdu> {
        self.served(vec![(short, pdu)])?
            .pop()
            .ok_or_else(|| Error::internal("served no event"))
    }

    /// An event redacted by the event `redaction_id`, per its room version's rules.
    fn redacted_form(&self, mut pdu: Pdu, redaction_id: &str) -> Result<Pdu> {
        let version = self.room_version(&pdu.room()?)?.unwrap_or(RoomVersionId::V1);
        let rules = events::rules(&version)?;
        let mut content = match serde_json::from_str::<CanonicalJsonValue>(pdu.content.get()) {
            Ok(CanonicalJsonValue::Object(o)) => o,
            _ => CanonicalJsonObject::new(),
        };
        ruma::canonical_json::redact_content_in_place(&mut content, &rules.redaction, pdu.kind.to_string());
        pdu.content = RawValue::from_string(CanonicalJsonValue::Object(content).to_string())
            .map_err(|e| Error::internal(e.to_string()))?;
        let redaction_id = EventId::parse(redaction_id).map_err(|e| Error::internal(e.to_string()))?;
        if let Some(short) = self.ids.event(redaction_id.as_str())? {
            pdu.redacted_because = Some(self.raw_event_by_short(short, redaction_id)?.to_client()?);
        }
        Ok(pdu)
    }
}

/// Whether `sender` may redact `original`: always their own event, anyone's with the `redact`
/// level.
fn may_redact(powers: &Powers, sender: &UserId, original: &Pdu) -> Result<bool> {
    Ok(original.sender == sender || powers.of(sender)? >= powers.needed(RoomPowerLevelsIntField::Redact)?)
}

/// The event a redaction names: its top-level `redacts` before room version 11, the one in its
/// content from 11.
fn redaction_target(rules: &RoomVersionRules, redaction: &Pdu) -> Option<OwnedEventId> {
    if !rules.redaction.content_field_redacts {
        return redaction.redacts.clone();
    }
    #[derive(serde::Deserialize)]
    struct Content {
        redacts: Option<OwnedEventId>,
    }
    serde_json::from_str::<Content>(redaction.content.get()).ok()?.redacts
}

/// The content of a new redaction: a `redacts` in it must be an event id (400 otherwise). In
/// room versions before 11 it is moved to the top level, where those versions keep it (clients
/// may send redactions through `/send` in every version, spec `room_send`); returns it then.
pub(super) fn hoist_redacts(
    rules: &RoomVersionRules,
    content: &mut CanonicalJsonObject,
) -> Result<Option<OwnedEventId>> {
    let Some(value) = content.get("redacts") else {
        return Ok(None);
    };
    let target = match value {
        CanonicalJsonValue::String(id) => EventId::parse(id).ok(),
        _ => None,
    }
    .ok_or_else(|| Error::bad_json("`redacts` must be an event id"))?;
    if rules.redaction.content_field_redacts {
        return Ok(None);
    }
    content.remove("redacts");
    Ok(Some(target))
}
