//! A stored event, parsed: the fields authorization, state and clients need, read lazily from
//! the canonical JSON (content stays raw). Implements ruma-state-res's `Event`, so the same type
//! goes through the authorization rules and state resolution.

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    events::TimelineEventType,
};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{Error, Result, util::glob};

/// A parsed PDU.
#[derive(Clone, Debug, Deserialize)]
pub struct Pdu {
    /// Event id (not part of the v3+ formats; set from the stored mapping).
    #[serde(skip, default = "placeholder_id")]
    pub event_id: OwnedEventId,
    /// Room; absent only on a v12 create event (then the room id comes from its event id).
    #[serde(default)]
    pub room_id: Option<OwnedRoomId>,
    /// Sender.
    pub sender: OwnedUserId,
    /// Origin timestamp.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: TimelineEventType,
    /// Content, unparsed.
    pub content: Box<RawValue>,
    /// State key for state events.
    #[serde(default)]
    pub state_key: Option<String>,
    /// The events this one follows.
    #[serde(deserialize_with = "event_references")]
    pub prev_events: Vec<OwnedEventId>,
    /// The events that authorise it.
    #[serde(deserialize_with = "event_references")]
    pub auth_events: Vec<OwnedEventId>,
    /// Depth in the DAG.
    pub depth: UInt,
    /// Redacted event (top level, room versions before 11).
    #[serde(default)]
    pub redacts: Option<OwnedEventId>,
    /// Rejected by the authorization rules (an event from another server stored as such).
    #[serde(skip)]
    pub rejected: bool,
    /// Soft-failed: allowed by the state before it, not by the room's current state.
    #[serde(skip)]
    pub soft_failed: bool,
    /// The redaction event (client format) when this event was redacted; `content` is then
    /// already the redacted content.
    #[serde(skip)]
    pub redacted_because: Option<serde_json::Value>,
    /// More `unsigned` fields for clients (`prev_content` of a state event…).
    #[serde(skip)]
    pub unsigned_extra: serde_json::Map<String, serde_json::Value>,
}

/// One entry of `prev_events`/`auth_events`: an event id (room versions 3 and later) or an
/// `[event id, {hashes}]` pair (versions 1 and 2).
#[derive(Deserialize)]
#[serde(untagged)]
enum EventReference {
    Id(OwnedEventId),
    Pair(OwnedEventId, serde::de::IgnoredAny),
}

fn event_references<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<OwnedEventId>, D::Error> {
    let references = Vec::<EventReference>::deserialize(deserializer)?;
    Ok(references
        .into_iter()
        .map(|r| match r {
            EventReference::Id(id) | EventReference::Pair(id, _) => id,
        })
        .collect())
}

/// The event ids of a `prev_events`/`auth_events` array of a PDU object, in either format
/// (ids, or the `[id, {hashes}]` pairs of room versions 1 and 2); entries of neither are left
/// out.
pub fn reference_ids(value: Option<&ruma::CanonicalJsonValue>) -> Vec<OwnedEventId> {
    use ruma::CanonicalJsonValue as V;
    let Some(V::Array(entries)) = value else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| match entry {
            V::String(id) => EventId::parse(id.as_str()).ok(),
            V::Array(pair) => match pair.first() {
                Some(V::String(id)) => EventId::parse(id.as_str()).ok(),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn placeholder_id() -> OwnedEventId {
    EventId::parse("$unset").expect("valid placeholder")
}

impl Pdu {
    /// Parses canonical JSON bytes of the event `event_id`.
    pub fn parse(event_id: OwnedEventId, bytes: &[u8]) -> Result<Pdu> {
        let mut pdu: Pdu =
            serde_json::from_slice(bytes).map_err(|e| Error::internal(format!("stored event {event_id}: {e}")))?;
        pdu.event_id = event_id;
        Ok(pdu)
    }

    /// The event's room (for a v12 create event, derived from its id).
    pub fn room(&self) -> Result<OwnedRoomId> {
        match &self.room_id {
            Some(room) => Ok(room.clone()),
            None => RoomId::parse(format!("!{}", &self.event_id.as_str()[1..]))
                .map_err(|e| Error::internal(format!("room id of {}: {e}", self.event_id))),
        }
    }

    /// Whether this is a state event.
    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// The content as a canonical JSON object (stored events always have one).
    pub fn content_object(&self) -> Result<ruma::CanonicalJsonObject> {
        match serde_json::from_str::<ruma::CanonicalJsonValue>(self.content.get()) {
            Ok(ruma::CanonicalJsonValue::Object(o)) => Ok(o),
            _ => Err(Error::internal(format!(
                "content of {} is not an object",
                self.event_id
            ))),
        }
    }

    /// A string field of the content (`membership`, `history_visibility`…).
    pub fn content_str(&self, field: &str) -> Option<String> {
        let content: serde_json::Value = serde_json::from_str(self.content.get()).ok()?;
        content.get(field)?.as_str().map(str::to_owned)
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        self.rejected
    }
}

impl Pdu {
    /// The event in the client format (`ClientEvent` of the Client-Server API: `content`,
    /// `event_id`, `origin_server_ts`, `room_id`, `sender`, `type`, `state_key`, `redacts`,
    /// `unsigned`) as a JSON value.
    pub fn to_client(&self) -> Result<serde_json::Value> {
        serde_json::from_str(self.to_client_json()?.get()).map_err(|e| Error::internal(e.to_string()))
    }

    /// [`Pdu::to_client`] as JSON text, written directly: the content is copied as stored,
    /// never parsed (this is what every synced timeline event goes through).
    pub fn to_client_json(&self) -> Result<Box<RawValue>> {
        let fail = |e: serde_json::Error| Error::internal(e.to_string());
        let mut out = Vec::with_capacity(self.content.get().len() + 320);
        let field = |out: &mut Vec<u8>, name: &str, value: &str| -> Result<()> {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            serde_json::to_writer(&mut *out, value).map_err(fail)
        };
        let (top_redacts, content) = self.redaction_for_clients()?;
        // Keys in sorted order, as a JSON object map would write them.
        out.extend_from_slice(b"{\"content\":");
        out.extend_from_slice(content.as_deref().unwrap_or(self.content.get()).as_bytes());
        field(&mut out, "event_id", self.event_id.as_str())?;
        out.extend_from_slice(format!(",\"origin_server_ts\":{}", u64::from(self.origin_server_ts.0)).as_bytes());
        if let Some(redacts) = &top_redacts {
            field(&mut out, "redacts", redacts)?;
        }
        field(&mut out, "room_id", self.room()?.as_str())?;
        field(&mut out, "sender", self.sender.as_str())?;
        if let Some(key) = &self.state_key {
            field(&mut out, "state_key", key)?;
        }
        field(&mut out, "type", &self.kind.to_string())?;
        out.extend_from_slice(b",\"unsigned\":");
        match &self.redacted_because {
            None => serde_json::to_writer(&mut out, &self.unsigned_extra).map_err(fail)?,
            Some(because) => {
                let mut unsigned = self.unsigned_extra.clone();
                unsigned.insert("redacted_because".into(), because.clone());
                serde_json::to_writer(&mut out, &unsigned).map_err(fail)?;
            }
        }
        out.push(b'}');
        let text = String::from_utf8(out).map_err(|e| Error::internal(e.to_string()))?;
        RawValue::from_string(text).map_err(fail)
    }
}

impl Pdu {
    /// The top-level `redacts` and, when it differs from the stored one, the content clients
    /// are shown. Room version 11 moved `redacts` into the content of `m.room.redaction`;
    /// servers serving such events to clients add a top-level copy for older clients, and in
    /// older room versions a copy in the content for newer ones (spec, room version 11,
    /// "Moving the `redacts` property"). matrix-nio, for one, rejects a redaction without the
    /// top-level key.
    fn redaction_for_clients(&self) -> Result<(Option<String>, Option<String>)> {
        let top = self.redacts.as_ref().map(|r| r.to_string());
        if self.kind != TimelineEventType::RoomRedaction {
            return Ok((top, None));
        }
        let Ok(mut content) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(self.content.get())
        else {
            return Ok((top, None));
        };
        match top {
            Some(redacts) if !content.contains_key("redacts") => {
                content.insert("redacts".into(), serde_json::Value::String(redacts.clone()));
                let text = serde_json::to_string(&content).map_err(|e| Error::internal(e.to_string()))?;
                Ok((Some(redacts), Some(text)))
            }
            Some(redacts) => Ok((Some(redacts), None)),
            None => Ok((content.get("redacts").and_then(|r| r.as_str()).map(str::to_owned), None)),
        }
    }

    /// Whether the event passes a room event filter's event criteria (`types`, `not_types`,
    /// `senders`, `not_senders`, `contains_url`; `*` is a wildcard in types).
    pub fn matches(&self, filter: &ruma::api::client::filter::RoomEventFilter) -> bool {
        let kind = self.kind.to_string();
        let type_matches = |patterns: &[String]| patterns.iter().any(|p| glob(p, &kind));
        if filter.types.as_deref().is_some_and(|t| !type_matches(t)) || type_matches(&filter.not_types) {
            return false;
        }
        if filter.senders.as_ref().is_some_and(|s| !s.contains(&self.sender))
            || filter.not_senders.contains(&self.sender)
        {
            return false;
        }
        match filter.url_filter {
            Some(ruma::api::client::filter::UrlFilter::EventsWithUrl) => self.has_url(),
            Some(ruma::api::client::filter::UrlFilter::EventsWithoutUrl) => !self.has_url(),
            _ => true,
        }
    }

    fn has_url(&self) -> bool {
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(self.content.get())
            .is_ok_and(|c| c.get("url").is_some_and(|u| u.is_string()))
    }
}

#[cfg(test)]
mod tests {
    use ruma::owned_event_id;
    use serde_json::json;

    use super::Pdu;

    #[test]
    fn prev_and_auth_events_are_read_in_both_formats() {
        let v1 = json!({
            "event_id": "$e:x", "room_id": "!r:x", "sender": "@a:x", "origin_server_ts": 7, "type": "m.room.message",
            "content": {}, "prev_events": [["$p:x", {"sha256": "abc"}]],
            "auth_events": [["$a1:x", {"sha256": "abc"}], ["$a2:x", {}]], "depth": 3,
        });
        let pdu = Pdu::parse(owned_event_id!("$e:x"), v1.to_string().as_bytes()).unwrap();
        assert_eq!(pdu.prev_events, vec![owned_event_id!("$p:x")]);
        assert_eq!(
            pdu.auth_events,
            vec![owned_event_id!("$a1:x"), owned_event_id!("$a2:x")]
        );
        let object: ruma::CanonicalJsonObject = serde_json::from_value(v1).unwrap();
        assert_eq!(super::reference_ids(object.get("auth_events")).len(), 2);
        let v3 = json!({
            "room_id": "!r:x", "sender": "@a:x", "origin_server_ts": 7, "type": "m.room.message",
            "content": {}, "prev_events": ["$p"], "auth_events": ["$a1", "$a2"], "depth": 3,
        });
        let pdu = Pdu::parse(owned_event_id!("$e"), v3.to_string().as_bytes()).unwrap();
        assert_eq!(pdu.prev_events, vec![owned_event_id!("$p")]);
        let object: ruma::CanonicalJsonObject = serde_json::from_value(v3).unwrap();
        assert_eq!(
            super::reference_ids(object.get("prev_events")),
            vec![owned_event_id!("$p")]
        );
    }

    #[test]
    fn client_json_is_the_client_format_written_as_a_sorted_map_would_be() {
        let stored = json!({
            "room_id": "!r:x", "sender": "@a:x", "origin_server_ts": 7, "type": "m.room.member",
            "state_key": "@a:x", "content": {"membership": "join", "displayname": "A \"quoted\" name"},
            "prev_events": [], "auth_events": [], "depth": 3,
            "hashes": {"sha256": "x"}, "signatures": {},
        });
        let mut pdu = Pdu::parse(owned_event_id!("$e:x"), stored.to_string().as_bytes()).unwrap();
        pdu.unsigned_extra
            .insert("prev_content".into(), json!({"membership": "invite"}));
        pdu.redacted_because = Some(json!({"type": "m.room.redaction"}));
        let expected = json!({
            "content": {"membership": "join", "displayname": "A \"quoted\" name"},
            "event_id": "$e:x", "origin_server_ts": 7, "room_id": "!r:x", "sender": "@a:x",
            "state_key": "@a:x", "type": "m.room.member",
            "unsigned": {"prev_content": {"membership": "invite"}, "redacted_because": {"type": "m.room.redaction"}},
        });
        assert_eq!(pdu.to_client().unwrap(), expected);
        assert_eq!(pdu.to_client_json().unwrap().get(), expected.to_string());
    }
}
