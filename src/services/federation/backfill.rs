//! Fetching history from before this server joined a room (`GET /backfill`), when a client
//! pages back past the earliest event here: one request to a server with joined members (at
//! most three tried), for at most 100 events before the earliest one, each checked like any
//! PDU; `Rooms::store_backfilled` places them.

use ruma::{RoomId, UInt, api::federation::backfill::get_backfill};

use super::Federation;
use crate::{Result, services::rooms::Rooms};

/// Events asked for per request.
const MAX_BACKFILL: u32 = 100;
/// Servers tried per backfill.
const SERVERS_TRIED: usize = 3;

impl Federation {
    /// Fetches up to `limit` events from before the room's earliest event here; returns how
    /// many were stored (0 when federation is off, the room starts here, or nobody answered).
    pub async fn backfill(&self, rooms: &Rooms, room_id: &RoomId, limit: usize) -> Result<usize> {
        if !self.enabled {
            return Ok(0);
        }
        let Some(earliest) = rooms.earliest_event(room_id)? else {
            return Ok(0);
        };
        if earliest.kind.to_string() == "m.room.create" {
            return Ok(0);
        }
        let Some(version) = rooms.room_version(room_id)? else {
            return Ok(0);
        };
        let servers: Vec<_> = rooms
            .members(room_id)?
            .joined_servers()
            .iter()
            .filter(|s| **s != self.server_name())
            .take(SERVERS_TRIED)
            .cloned()
            .collect();
        let wanted = UInt::from((limit as u32).clamp(1, MAX_BACKFILL));
        for server in servers {
            let request = get_backfill::v1::Request::new(room_id.to_owned(), vec![earliest.event_id.clone()], wanted);
            let answer = match self.send_signed(&server, request).await {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::info!(%room_id, %server, error = %e, "backfill failed");
                    continue;
                }
            };
            let mut events = Vec::new();
            for raw in answer.pdus.iter().take(MAX_BACKFILL as usize + 1) {
                match self.check_pdu(&version, raw).await {
                    Ok(checked) if checked.room_id == room_id => events.push((checked.event_id, checked.bytes)),
                    Ok(_) => {}
                    Err(e) => tracing::info!(%server, error = %e, "backfilled event refused"),
                }
            }
            let offered = events.len();
            let stored = rooms.store_backfilled(room_id, events).await?;
            tracing::info!(%room_id, %server, offered, stored, "backfilled");
            if stored > 0 {
                return Ok(stored);
            }
        }
        Ok(0)
    }
}
