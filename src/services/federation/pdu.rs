//! The first checks on a PDU from another server (the spec's "Checks performed on receipt of a
//! PDU", steps 1 and 2): its format and size (ruma-state-res's `check_pdu_format`), its event id
//! (the reference hash, or the `event_id` field in room versions 1 and 2), the signatures of
//! the servers that must sign it (the sender's server; the event id's server in versions 1 and
//! 2; the authorising server of a restricted join), with keys valid when it was sent, and its
//! content hash: an event whose hash does not match is kept in its redacted form. The rest
//! (authorization, state) is `rooms::remote`.

use std::collections::BTreeSet;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId,
    RoomVersionId, ServerName, UserId,
    room_version_rules::EventIdFormatVersion,
    serde::Base64,
    signatures::{PublicKeyMap, Verified},
    state_res,
};
use serde_json::value::RawValue;

use super::Federation;
use crate::{
    Error, Result,
    services::events::{self, MAX_PDU_BYTES},
};

/// Key ids read per signing server (a server has one or two keys in use).
const KEYS_PER_SERVER: usize = 4;

/// A PDU that passed the signature and hash checks.
#[derive(Debug)]
pub struct CheckedPdu {
    /// Its id.
    pub event_id: OwnedEventId,
    /// Its room.
    pub room_id: OwnedRoomId,
    /// Canonical JSON as stored (redacted when the content hash did not match).
    pub bytes: Vec<u8>,
    /// The same, parsed.
    pub object: CanonicalJsonObject,
}

fn field<'a>(object: &'a CanonicalJsonObject, name: &str) -> Option<&'a str> {
    match object.get(name) {
        Some(CanonicalJsonValue::String(s)) => Some(s),
        _ => None,
    }
}

/// The event id of a PDU object in room version `version` (removing a v3+ `event_id` field,
/// which is not part of the format).
pub fn event_id_of(object: &mut CanonicalJsonObject, version: &RoomVersionId) -> Result<OwnedEventId> {
    let rules = events::rules(version)?;
    match rules.event_id_format {
        EventIdFormatVersion::V1 => field(object, "event_id")
            .and_then(|id| EventId::parse(id).ok())
            .ok_or_else(|| Error::bad_json("The event has no valid event_id")),
        _ => {
            object.remove("event_id");
            let hash = ruma::signatures::reference_hash(object, &rules)
                .map_err(|e| Error::bad_json(format!("Cannot hash the event: {e}")))?;
            EventId::parse(format!("${hash}")).map_err(|e| Error::bad_json(e.to_string()))
        }
    }
}

impl Federation {
    /// Checks `raw` as a PDU of a room of version `version`.
    pub async fn check_pdu(&self, version: &RoomVersionId, raw: &RawValue) -> Result<CheckedPdu> {
        let rules = events::rules(version)?;
        if raw.get().len() > MAX_PDU_BYTES {
            return Err(Error::too_large("The PDU is larger than 65536 bytes"));
        }
        let mut object: CanonicalJsonObject = serde_json::from_str(raw.get())
            .map_err(|e| Error::bad_json(format!("The PDU is not canonical JSON: {e}")))?;
        object.remove("unsigned");
        let event_id = event_id_of(&mut object, version)?;
        state_res::check_pdu_format(&object, &rules.event_format)
            .map_err(|e| Error::bad_json(format!("{event_id} is malformed: {e}")))?;
        let room_id = match field(&object, "room_id") {
            Some(room) => RoomId::parse(room).map_err(|e| Error::bad_json(format!("{event_id}: {e}")))?,
            None => RoomId::parse(format!("!{}", &event_id.as_str()[1..]))
                .map_err(|e| Error::bad_json(format!("{event_id}: {e}")))?,
        };

        // The servers whose signatures count, and their keys.
        let sender = field(&object, "sender")
            .and_then(|s| UserId::parse(s).ok())
            .ok_or_else(|| Error::bad_json(format!("{event_id} has no valid sender")))?;
        let mut servers: BTreeSet<OwnedServerName> = [sender.server_name().to_owned()].into();
        if rules.event_id_format == EventIdFormatVersion::V1
            && let Some(server) = event_id.server_name()
        {
            servers.insert(server.to_owned());
        }
        if let Some(CanonicalJsonValue::Object(content)) = object.get("content")
            && let Some(CanonicalJsonValue::String(via)) = content.get("join_authorised_via_users_server")
            && let Ok(via) = UserId::parse(via.as_str())
        {
            servers.insert(via.server_name().to_owned());
        }
        let at = if rules.enforce_key_validity {
            match object.get("origin_server_ts") {
                Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).unwrap_or(0),
                _ => 0,
            }
        } else {
            0
        };
        let keys = self.signing_keys(&object, &servers, at).await;
        match ruma::signatures::verify_event(&keys, &object, &rules) {
            Ok(Verified::All) => {}
            Ok(Verified::Signatures) => {
                tracing::info!(%event_id, "content hash mismatch: keeping the event redacted");
                object = ruma::canonical_json::redact(object, &rules.redaction, None)
                    .map_err(|e| Error::bad_json(format!("{event_id} cannot be redacted: {e}")))?;
            }
            Err(e) => return Err(Error::forbidden(format!("{event_id} has no valid signature: {e}"))),
        }
        let bytes = serde_json::to_vec(&object).map_err(|e| Error::internal(e.to_string()))?;
        Ok(CheckedPdu {
            event_id,
            room_id,
            bytes,
            object,
        })
    }

    /// The keys of `servers` named in the event's signatures, usable at `at_ms` (fetched as
    /// needed; a key that cannot be had is left out, so its signature fails to verify).
    async fn signing_keys(
        &self,
        object: &CanonicalJsonObject,
        servers: &BTreeSet<OwnedServerName>,
        at_ms: u64,
    ) -> PublicKeyMap {
        let mut map = PublicKeyMap::new();
        let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
            return map;
        };
        for server in servers {
            let Some(CanonicalJsonValue::Object(signed)) = signatures.get(server.as_str()) else {
                continue;
            };
            for key_id in signed.keys().take(KEYS_PER_SERVER) {
                let server: &ServerName = server;
                if let Ok(Some(key)) = self.remote_keys.key_valid_at(self, server, key_id, at_ms).await {
                    map.entry(server.to_string())
                        .or_default()
                        .insert(key_id.clone(), Base64::new(key));
                }
            }
        }
        map
    }
}
