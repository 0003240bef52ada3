//! Ephemeral data over federation (EDUs): typing notifications (`m.typing`) and public read
//! receipts (`m.receipt`), both ways. Outbound, a local user's change goes to the servers with
//! joined members of the room (in memory, with the next transaction: `sender/`). Inbound, an
//! EDU counts only for users of the server that sent it who are joined to the room, and a
//! receipt only for an event of that room, and nothing of a room whose server ACL bars the
//! sending server (`acl.rs`); `m.direct_to_device` goes to `to_device.rs`; other EDU types
//! are ignored.

use std::time::Duration;

use ruma::{EventId, OwnedServerName, RoomId, ServerName, UserId, api::federation::transactions::edu::Edu, serde::Raw};
use serde_json::{Value, json};

use super::Federation;
use crate::services::{Services, rooms::Rooms};

/// How long a remote user counts as typing without news (Synapse's federation timeout).
const REMOTE_TYPING: Duration = Duration::from_secs(30);
/// Rooms and users read from one receipt EDU.
const MAX_RECEIPT_ENTRIES: usize = 100;

impl Federation {
    /// The other servers with joined members in the room.
    fn room_servers(&self, rooms: &Rooms, room_id: &RoomId) -> Vec<OwnedServerName> {
        rooms
            .members(room_id)
            .map(|m| {
                m.joined_servers()
                    .iter()
                    .filter(|s| **s != self.server_name())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Tells the room's other servers that `user_id` (ours) is typing or stopped.
    pub fn send_typing(&self, rooms: &Rooms, room_id: &RoomId, user_id: &UserId, typing: bool) {
        if !self.enabled {
            return;
        }
        let edu = json!({
            "edu_type": "m.typing",
            "content": {"room_id": room_id, "user_id": user_id, "typing": typing},
        });
        self.queue_edu(&self.room_servers(rooms, room_id), edu);
    }

    /// Tells the room's other servers of `user_id`'s (ours) public read receipt.
    pub fn send_receipt(
        &self,
        rooms: &Rooms,
        room_id: &RoomId,
        user_id: &UserId,
        event_id: &EventId,
        thread: Option<&str>,
    ) {
        if !self.enabled {
            return;
        }
        let mut data = json!({"ts": crate::util::now_ms()});
        if let Some(thread) = thread {
            data["thread_id"] = json!(thread);
        }
        let edu = json!({
            "edu_type": "m.receipt",
            "content": {room_id.as_str(): {"m.read": {user_id.as_str(): {"event_ids": [event_id], "data": data}}}},
        });
        self.queue_edu(&self.room_servers(rooms, room_id), edu);
    }
}

/// Whether `user` (given as text) belongs to `origin` and is joined to `room`.
fn member_of_origin(services: &Services, origin: &ServerName, room: &RoomId, user: &str) -> Option<ruma::OwnedUserId> {
    let user = UserId::parse(user).ok()?;
    (user.server_name() == origin && services.rooms.membership(room, &user).ok()?.as_deref() == Some("join"))
        .then_some(user)
}

/// Whether the room's server ACL lets `origin` in (an EDU of a room that bars it is dropped,
/// as Synapse, MSC4163).
fn acl_allows(services: &Services, origin: &ServerName, room: &RoomId) -> bool {
    super::acl::allows(&services.rooms, origin, room).unwrap_or(false)
}

/// Applies the EDUs of a transaction from `origin`.
pub async fn receive_edus(services: &Services, origin: &ServerName, edus: &[Raw<Edu>]) {
    for edu in edus {
        let Ok(edu) = serde_json::from_str::<Value>(edu.json().get()) else {
            continue;
        };
        let content = &edu["content"];
        match edu["edu_type"].as_str() {
            Some("m.typing") => {
                let (Some(room), Some(user)) = (content["room_id"].as_str(), content["user_id"].as_str()) else {
                    continue;
                };
                let Ok(room) = RoomId::parse(room) else { continue };
                if !acl_allows(services, origin, &room) {
                    continue;
                }
                if let Some(user) = member_of_origin(services, origin, &room, user) {
                    let typing = content["typing"].as_bool().unwrap_or(false);
                    services.typing.set(&room, &user, typing.then_some(REMOTE_TYPING));
                    services.appservice_typing(&room);
                }
            }
            Some("m.receipt") => {
                let Some(rooms) = content.as_object() else { continue };
                for (room, receipts) in rooms.iter().take(MAX_RECEIPT_ENTRIES) {
                    let Ok(room) = RoomId::parse(room.as_str()) else {
                        continue;
                    };
                    if !acl_allows(services, origin, &room) {
                        continue;
                    }
                    let Some(users) = receipts["m.read"].as_object() else {
                        continue;
                    };
                    for (user, receipt) in users.iter().take(MAX_RECEIPT_ENTRIES) {
                        let Some(user) = member_of_origin(services, origin, &room, user) else {
                            continue;
                        };
                        let Some(event_id) = receipt["event_ids"][0].as_str().and_then(|e| EventId::parse(e).ok())
                        else {
                            continue;
                        };
                        let in_room = services
                            .rooms
                            .event(&event_id)
                            .ok()
                            .flatten()
                            .is_some_and(|pdu| pdu.room().is_ok_and(|r| r == room));
                        if !in_room {
                            continue;
                        }
                        let thread = receipt["data"]["thread_id"].as_str();
                        match services.receipts.set(&room, &user, "m.read", &event_id, thread).await {
                            Ok(()) => services.appservice_receipt(&room, &user, &event_id, thread),
                            Err(e) => tracing::info!(%origin, error = %e, "receipt not stored"),
                        }
                    }
                }
            }
            Some("m.direct_to_device") => {
                let Ok(content) = serde_json::value::to_raw_value(content) else {
                    continue;
                };
                super::to_device::receive_direct_to_device(services, origin, &content).await;
            }
            Some("m.presence") => super::presence::receive_presence(services, origin, content),
            Some("m.device_list_update") => {
                super::device_lists::receive_device_list_update(services, origin, content).await;
            }
            Some("m.signing_key_update") => {
                super::device_lists::receive_signing_key_update(services, origin, content).await;
            }
            _ => {}
        }
    }
}
