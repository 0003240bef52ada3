//! Redactions (spec "Redactions"): stored bytes are never rewritten; the redacted form (ruma's
//! algorithm for the room version) is produced when an event is served ([`Rooms::served`]),
//! which every read of events and state goes through.

use ruma::{CanonicalJsonObject, CanonicalJsonValue, EventId, RoomVersionId};
use serde_json::value::RawValue;

use super::{Rooms, pdu::Pdu};
use crate::{Error, Result, services::events};

impl Rooms {
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
