//! Server access control lists (client-server-api "Server Access Control Lists",
//! server-server-api "Server Access Control Lists"): the one check of a room's current
//! `m.room.server_acl` against the server that sent a request, used by every inbound path that
//! concerns a room, as Synapse applies it (`check_server_matches_acl`):
//!
//! - the PDUs of a transaction (refused per PDU, each with an error, when their room bars the
//!   transaction's origin) and its `m.typing` and `m.receipt` EDUs (dropped);
//! - `make_join`/`send_join`, `make_leave`/`send_leave`, `make_knock`/`send_knock`, `invite`;
//! - `/backfill`, `/get_missing_events`, `/state`, `/state_ids`, `/event_auth`,
//!   `/timestamp_to_event` (`serve.rs`);
//! - the public room list: a room whose ACL bars the asking server is left out of its page.
//!
//! The ACL names hosts: the server name's port is ignored (ruma's `is_allowed`, as Synapse).
//! A room without an ACL, or with one whose content does not parse, bars nobody. Outbound,
//! nothing is filtered: Synapse still sends a room's events and EDUs to every server with
//! members in it, and so does Hearth.

use ruma::{RoomId, ServerName, events::room::server_acl::RoomServerAclEventContent};

use crate::{Error, Result, services::rooms::Rooms};

/// Whether the current `m.room.server_acl` of `room_id` lets `origin` in.
pub fn allows(rooms: &Rooms, origin: &ServerName, room_id: &RoomId) -> Result<bool> {
    let Some(acl) = rooms.state_event(room_id, &ruma::events::StateEventType::RoomServerAcl, "")? else {
        return Ok(true);
    };
    Ok(
        match serde_json::from_str::<RoomServerAclEventContent>(acl.content.get()) {
            Ok(content) => content.is_allowed(origin),
            Err(_) => true,
        },
    )
}

/// 403 `M_FORBIDDEN` when the room's `m.room.server_acl` bars `origin`.
pub fn check(rooms: &Rooms, origin: &ServerName, room_id: &RoomId) -> Result<()> {
    if allows(rooms, origin, room_id)? {
        Ok(())
    } else {
        Err(Error::forbidden(format!(
            "{origin} is barred from the room by its server ACL"
        )))
    }
}

#[cfg(test)]
mod tests {
    use ruma::{ServerName, events::room::server_acl::RoomServerAclEventContent};
    use serde_json::json;

    /// What `allows` relies on: hosts matched without their port, IP literals only when
    /// allowed, deny before allow.
    #[test]
    fn acls_match_hosts_without_ports() {
        let acl: RoomServerAclEventContent = serde_json::from_value(
            json!({"allow": ["*"], "deny": ["evil.example", "127.0.0.3"], "allow_ip_literals": true}),
        )
        .unwrap();
        let name = |s: &str| ServerName::parse(s).unwrap();
        assert!(!acl.is_allowed(&name("evil.example:8448")));
        assert!(!acl.is_allowed(&name("127.0.0.3:1234")));
        assert!(acl.is_allowed(&name("127.0.0.2:1234")));
        assert!(acl.is_allowed(&name("good.example")));
        let no_ips: RoomServerAclEventContent =
            serde_json::from_value(json!({"allow": ["*"], "allow_ip_literals": false})).unwrap();
        assert!(!no_ips.is_allowed(&name("127.0.0.2:1234")));
        let defaults: RoomServerAclEventContent = serde_json::from_value(json!({"allow": ["*"]})).unwrap();
        assert!(
            defaults.is_allowed(&name("127.0.0.2:1234")),
            "IP literals are allowed by default"
        );
    }
}
