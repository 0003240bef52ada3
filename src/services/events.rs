//! PDUs: building an event the way every server will see it. Fills in the envelope
//! (`prev_events`, `auth_events`, `depth`, timestamps), adds the content hash, signs with the
//! server key, and names the event by its reference hash, all through ruma-signatures and the
//! room version's rules (room versions 1 and 2: an `event_id` of ours, `$opaque:server`, is part
//! of the event, and prev and auth events are `[id, {"sha256": reference hash}]` pairs).
//!
//! The result carries the canonical JSON bytes that were hashed and signed: those bytes are what
//! storage keeps and what federation will send, never a re-serialised struct.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, UserId,
    room_version_rules::{EventIdFormatVersion, RoomIdFormatVersion, RoomVersionRules},
    signatures::hash_and_sign_event,
};

use super::server_keys::ServerKeys;
use crate::{Error, Result};

/// Finds the reference hash of a stored event (room versions 1 and 2 name prev and auth
/// events with it).
pub type ReferenceHash<'a> = &'a dyn Fn(&EventId) -> Option<String>;

/// A JSON object from a client (event content, a key object, `creation_content` …) as
/// canonical JSON, or 400 `M_BAD_JSON` naming `what` when it is not an object within
/// canonical JSON's limits (integer range, nesting).
pub fn canonical_object(raw: &serde_json::value::RawValue, what: &str) -> Result<CanonicalJsonObject> {
    match serde_json::from_str::<CanonicalJsonValue>(raw.get()) {
        Ok(CanonicalJsonValue::Object(o)) => Ok(o),
        Ok(_) => Err(Error::bad_json(format!("{what} must be a JSON object"))),
        Err(e) => Err(Error::bad_json(format!(
            "{what} must be a JSON object within the canonical JSON limits: {e}"
        ))),
    }
}

/// Largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;

/// What a new event is made of before it is hashed and signed.
pub struct NewPdu<'a> {
    /// Room version (decides event id format, hashing and redaction rules).
    pub room_version: &'a RoomVersionId,
    /// The room; `None` only for the create event of a room version that derives the room id
    /// from that event (v12).
    pub room_id: Option<&'a RoomId>,
    /// Sender.
    pub sender: &'a UserId,
    /// Event type.
    pub kind: &'a str,
    /// State key for state events.
    pub state_key: Option<&'a str>,
    /// Content object.
    pub content: CanonicalJsonObject,
    /// The room's forward extremities this event follows.
    pub prev_events: Vec<OwnedEventId>,
    /// The events that authorise it.
    pub auth_events: Vec<OwnedEventId>,
    /// One more than the deepest prev event.
    pub depth: u64,
    /// Milliseconds since the epoch.
    pub origin_server_ts: u64,
    /// For redactions: the event redacted (top-level before v11, in content from v11).
    pub redacts: Option<&'a EventId>,
    /// The reference hash of a stored event: room versions 1 and 2 name prev and auth events
    /// with it. `None` for later versions (and where no hash can be had: `{}` is sent then).
    pub reference_hashes: Option<ReferenceHash<'a>>,
}

/// A hashed and signed event.
#[derive(Clone, Debug)]
pub struct SignedPdu {
    /// Reference-hash event id.
    pub event_id: OwnedEventId,
    /// The room id (derived from the event for a v12 create event).
    pub room_id: OwnedRoomId,
    /// The PDU as signed (without `event_id`, as the v3+ formats have it).
    pub object: CanonicalJsonObject,
    /// Canonical JSON bytes of `object`.
    pub bytes: Vec<u8>,
}

/// The ruma rules of a room version this server knows.
pub fn rules(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version.rules().ok_or_else(|| {
        Error::new(
            http::StatusCode::BAD_REQUEST,
            ruma::api::error::ErrorKind::UnsupportedRoomVersion,
            format!("Room version {version} is not supported"),
        )
    })
}

fn string(s: impl Into<String>) -> CanonicalJsonValue {
    CanonicalJsonValue::String(s.into())
}

/// `prev_events`/`auth_events` in the room version's format: event ids, or in room versions 1
/// and 2 `[id, {"sha256": reference hash}]` pairs (`hash` gives the hashes; without one the pair
/// carries `{}`, which servers accept as they do not check these hashes).
pub fn event_references(
    ids: &[OwnedEventId],
    rules: &RoomVersionRules,
    hash: Option<ReferenceHash<'_>>,
) -> CanonicalJsonValue {
    let entry = |id: &OwnedEventId| match rules.event_id_format {
        EventIdFormatVersion::V1 => {
            let mut hashes = CanonicalJsonObject::new();
            if let Some(sha256) = hash.and_then(|hash| hash(id)) {
                hashes.insert("sha256".into(), string(sha256));
            }
            CanonicalJsonValue::Array(vec![string(id.as_str()), CanonicalJsonValue::Object(hashes)])
        }
        _ => string(id.as_str()),
    };
    CanonicalJsonValue::Array(ids.iter().map(entry).collect())
}

/// A new event id of room versions 1 and 2: `$opaque:server`.
pub fn local_event_id(server_name: &str) -> String {
    format!("${}:{server_name}", crate::util::random_string(18))
}

/// Builds, hashes and signs a PDU.
pub fn build(keys: &ServerKeys, server_name: &str, new: NewPdu<'_>) -> Result<SignedPdu> {
    let rules = rules(new.room_version)?;
    let mut object = CanonicalJsonObject::new();
    object.insert("type".into(), string(new.kind));
    object.insert("sender".into(), string(new.sender.as_str()));
    object.insert("content".into(), CanonicalJsonValue::Object(new.content));
    if let Some(key) = new.state_key {
        object.insert("state_key".into(), string(key));
    }
    match (new.room_id, rules.room_id_format) {
        (Some(room_id), _) => {
            object.insert("room_id".into(), string(room_id.as_str()));
        }
        (None, RoomIdFormatVersion::V2) if new.kind == "m.room.create" => {}
        (None, _) => return Err(Error::internal("an event needs a room id in this room version")),
    }
    object.insert(
        "prev_events".into(),
        event_references(&new.prev_events, &rules, new.reference_hashes),
    );
    object.insert(
        "auth_events".into(),
        event_references(&new.auth_events, &rules, new.reference_hashes),
    );
    if rules.event_id_format == EventIdFormatVersion::V1 {
        object.insert("event_id".into(), string(local_event_id(server_name)));
    }
    object.insert("depth".into(), CanonicalJsonValue::Integer(int(new.depth)?));
    object.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(int(new.origin_server_ts)?),
    );
    if let Some(redacts) = new.redacts {
        object.insert("redacts".into(), string(redacts.as_str()));
    }
    hash_and_sign_event(server_name, &keys.keypair, &mut object, &rules.redaction).map_err(signing_error)?;
    let reference = ruma::signatures::reference_hash(&object, &rules).map_err(signing_error)?;
    let event_id = match object.get("event_id") {
        Some(CanonicalJsonValue::String(id)) => EventId::parse(id.as_str()),
        _ => EventId::parse(format!("${reference}")),
    }
    .map_err(|e| Error::internal(format!("event id: {e}")))?;
    let room_id = match new.room_id {
        Some(room_id) => room_id.to_owned(),
        None => RoomId::parse(format!("!{reference}")).map_err(|e| Error::internal(format!("room id: {e}")))?,
    };
    // The canonical form, serialised from the object itself (no copy of it first).
    let bytes = serde_json::to_vec(&object).map_err(|e| Error::internal(format!("serialising an event: {e}")))?;
    if bytes.len() > MAX_PDU_BYTES {
        return Err(Error::too_large("Event is larger than 65536 bytes"));
    }
    Ok(SignedPdu {
        event_id,
        room_id,
        object,
        bytes,
    })
}

fn signing_error(error: ruma::signatures::JsonError) -> Error {
    match error {
        ruma::signatures::JsonError::PduTooLarge => Error::too_large("Event is larger than 65536 bytes"),
        other => Error::internal(format!("hashing or signing an event: {other}")),
    }
}

fn int(n: u64) -> Result<ruma::Int> {
    ruma::Int::try_from(n).map_err(|_| Error::internal("number out of the canonical JSON range"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use ruma::{serde::Base64, signatures::Verified, user_id};

    use super::*;
    use crate::services::server_keys::generate_key_file;

    fn content(pairs: &[(&str, &str)]) -> CanonicalJsonObject {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), string(*v))).collect()
    }

    fn verify(keys: &ServerKeys, pdu: &SignedPdu, version: &RoomVersionId) -> std::result::Result<Verified, String> {
        let mut key_set = BTreeMap::new();
        key_set.insert(
            format!("ed25519:{}", keys.version),
            Base64::new(keys.keypair.public_key().to_vec()),
        );
        let mut map = BTreeMap::new();
        map.insert("hearth.test".to_owned(), key_set);
        ruma::signatures::verify_event(&map, &pdu.object, &rules(version).unwrap()).map_err(|e| e.to_string())
    }

    #[test]
    fn v12_create_names_the_room_and_events_verify() {
        let keys = ServerKeys::parse(&generate_key_file().unwrap()).unwrap();
        let alice = user_id!("@alice:hearth.test");
        let v12 = RoomVersionId::V12;
        let create = build(
            &keys,
            "hearth.test",
            NewPdu {
                room_version: &v12,
                room_id: None,
                sender: alice,
                kind: "m.room.create",
                state_key: Some(""),
                content: content(&[("room_version", "12")]),
                prev_events: vec![],
                auth_events: vec![],
                depth: 1,
                origin_server_ts: 1_700_000_000_000,
                redacts: None,
                reference_hashes: None,
            },
        )
        .unwrap();
        assert_eq!(
            &create.room_id.as_str()[1..],
            &create.event_id.as_str()[1..],
            "v12 room id is the create event's hash"
        );
        assert!(!create.object.contains_key("room_id"));
        assert_eq!(verify(&keys, &create, &v12).unwrap(), Verified::All);
        // The stored bytes are the canonical form of what was signed.
        assert_eq!(
            create.bytes,
            CanonicalJsonValue::Object(create.object.clone())
                .to_string()
                .into_bytes()
        );

        let message = build(
            &keys,
            "hearth.test",
            NewPdu {
                room_version: &v12,
                room_id: Some(&create.room_id),
                sender: alice,
                kind: "m.room.message",
                state_key: None,
                content: content(&[("msgtype", "m.text"), ("body", "hi")]),
                prev_events: vec![create.event_id.clone()],
                auth_events: vec![],
                depth: 2,
                origin_server_ts: 1_700_000_000_001,
                redacts: None,
                reference_hashes: None,
            },
        )
        .unwrap();
        assert_eq!(verify(&keys, &message, &v12).unwrap(), Verified::All);
        // The stored bytes are the canonical form of the signed object.
        let reparsed: CanonicalJsonObject = serde_json::from_slice(&message.bytes).unwrap();
        assert_eq!(reparsed, message.object);

        // Tampering with the content breaks the hash (Verified::Signatures = redacted form only).
        let mut forged = message.clone();
        forged.object.insert(
            "content".into(),
            CanonicalJsonValue::Object(content(&[("body", "forged")])),
        );
        assert_eq!(verify(&keys, &forged, &v12).unwrap(), Verified::Signatures);
        // Tampering with a signed envelope field breaks the signature.
        forged
            .object
            .insert("depth".into(), CanonicalJsonValue::Integer(ruma::Int::from(99u32)));
        assert!(verify(&keys, &forged, &v12).is_err());
    }

    #[test]
    fn oversized_events_are_refused() {
        let keys = ServerKeys::parse(&generate_key_file().unwrap()).unwrap();
        let big = "x".repeat(70_000);
        let err = build(
            &keys,
            "hearth.test",
            NewPdu {
                room_version: &RoomVersionId::V11,
                room_id: Some(ruma::room_id!("!room:hearth.test")),
                sender: user_id!("@alice:hearth.test"),
                kind: "m.room.message",
                state_key: None,
                content: content(&[("body", &big)]),
                prev_events: vec![],
                auth_events: vec![],
                depth: 1,
                origin_server_ts: 1,
                redacts: None,
                reference_hashes: None,
            },
        )
        .unwrap_err();
        assert_eq!(err.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn v1_and_v2_events_carry_their_own_id_and_name_prev_and_auth_events_with_hashes() {
        let keys = ServerKeys::parse(&generate_key_file().unwrap()).unwrap();
        let alice = user_id!("@alice:hearth.test");
        let room = ruma::room_id!("!r:hearth.test");
        for version in [RoomVersionId::V1, RoomVersionId::V2] {
            let prev = ruma::owned_event_id!("$prev:other.test");
            let auth = ruma::owned_event_id!("$auth:other.test");
            let hash = |id: &EventId| (id.as_str() == "$prev:other.test").then(|| "aGFzaA".to_owned());
            let message = build(
                &keys,
                "hearth.test",
                NewPdu {
                    room_version: &version,
                    room_id: Some(room),
                    sender: alice,
                    kind: "m.room.message",
                    state_key: None,
                    content: content(&[("body", "hi")]),
                    prev_events: vec![prev],
                    auth_events: vec![auth],
                    depth: 3,
                    origin_server_ts: 1_700_000_000_000,
                    redacts: None,
                    reference_hashes: Some(&hash),
                },
            )
            .unwrap();
            assert_eq!(message.event_id.server_name().map(|s| s.as_str()), Some("hearth.test"));
            assert_eq!(message.object.get("event_id"), Some(&string(message.event_id.as_str())));
            let json = serde_json::to_value(&message.object).unwrap();
            assert_eq!(
                json["prev_events"],
                serde_json::json!([["$prev:other.test", {"sha256": "aGFzaA"}]])
            );
            assert_eq!(json["auth_events"], serde_json::json!([["$auth:other.test", {}]]));
            assert_eq!(verify(&keys, &message, &version).unwrap(), Verified::All);
            let pdu = crate::services::rooms::pdu::Pdu::parse(message.event_id.clone(), &message.bytes).unwrap();
            assert_eq!(pdu.prev_events[0].as_str(), "$prev:other.test");
        }
    }
}
