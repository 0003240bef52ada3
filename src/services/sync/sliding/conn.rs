//! Sliding-sync connections: what each connection (user, device, `conn_id`) was sent, so a
//! request with a `pos` answers only what changed since the client saw it.
//!
//! A `pos` is `{seq}_{nonce}`: `nonce` is drawn when the connection starts (a request without
//! `pos`), `seq` counts its answers. Each answer's per-connection state is kept under its `seq`;
//! a request with `pos` N starts from state N and drops the states before N (the client has
//! acknowledged N), so a retry with the same `pos` gets the same starting point. A `pos` whose
//! state is gone, of another connection, or from before a restart answers `M_UNKNOWN_POS` and
//! the client starts again.
//!
//! Everything is in memory and bounded: at most [`MAX_DEVICES`] devices (the idle and then the
//! least recently used go first), [`MAX_PER_DEVICE`] connections per device (the least recently
//! used goes), [`MAX_STATES`] states per connection, and a connection idle for [`IDLE_EXPIRY`]
//! is forgotten.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::StatusCode;
use ruma::{OwnedRoomId, OwnedUserId, UserId, api::error::ErrorKind};

use crate::{
    Error, Result,
    services::tokens::SyncToken,
    util::bounded::{BoundedMap, Evict},
};

/// Most devices with connections held.
pub const MAX_DEVICES: usize = 4096;
/// Most connections per device (Element X uses two).
pub const MAX_PER_DEVICE: usize = 8;
/// Most states kept per connection (the acknowledged one and the answers sent after it).
pub const MAX_STATES: usize = 4;
/// How long an unused connection is kept.
pub const IDLE_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// The combined room config of a room (the superset of the lists and subscriptions it is in).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomConfig {
    /// The most timeline events to send.
    pub timeline_limit: u64,
    /// `(type, state_key)` pairs, special values (`*`, `$LAZY`, `$ME`) as sent.
    pub required_state: BTreeSet<(String, String)>,
    /// `(type, state_key)` pairs left out (only those every rule leaves out).
    pub exclude: BTreeSet<(String, String)>,
}

/// What a connection was sent of one room.
#[derive(Clone, Debug)]
pub struct RoomSent {
    /// The user's membership when it was sent (`invite`, `join`, `leave`, `ban`).
    pub membership: String,
    /// The stream position the client has the room up to.
    pub up_to: u64,
    /// The ephemeral value the client has the room's typing up to.
    pub ephemeral: u64,
    /// The config it was sent with.
    pub config: RoomConfig,
    /// The (notification, highlight) counts last sent.
    pub counts: Option<(u64, u64)>,
    /// Members sent for `$LAZY` since the room was last sent whole.
    pub lazy_sent: Arc<BTreeSet<String>>,
}

/// The state of a connection after one answer.
#[derive(Clone, Debug, Default)]
pub struct ConnState {
    /// Where the answer's data ends (`None`: nothing was sent yet).
    pub at: Option<SyncToken>,
    /// Every room sent on the connection.
    pub rooms: HashMap<OwnedRoomId, RoomSent>,
    /// The list counts sent.
    pub counts: BTreeMap<String, u64>,
    /// A hash of the request's lists, subscriptions and extensions.
    pub shape: u64,
    /// The extensions enabled on the connection so far.
    pub extensions_on: BTreeSet<&'static str>,
}

struct Connection {
    nonce: u64,
    next_seq: u64,
    states: BTreeMap<u64, Arc<ConnState>>,
    used: Instant,
}

/// One device's connections.
#[derive(Default)]
pub struct DeviceConnections {
    conns: Mutex<HashMap<String, Connection>>,
}

/// The map's entry for a device.
pub struct DeviceSlot(Arc<DeviceConnections>);

impl Evict for DeviceSlot {
    fn pinned(&self) -> bool {
        Arc::strong_count(&self.0) > 1
    }

    fn stale(&self, now: Instant) -> bool {
        let conns = self.0.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.values().all(|c| now.duration_since(c.used) > IDLE_EXPIRY)
    }
}

/// Every connection of every device.
pub struct Connections {
    devices: BoundedMap<(OwnedUserId, String), DeviceSlot>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            devices: BoundedMap::new(MAX_DEVICES),
        }
    }
}

fn unknown_pos() -> Error {
    Error::new(
        StatusCode::BAD_REQUEST,
        ErrorKind::UnknownPos,
        "Unknown or expired position; start the connection again",
    )
}

/// The connection a request works on, and its starting state.
pub struct Resumed {
    /// The connection's nonce (its answers' `pos` carry it).
    pub nonce: u64,
    /// The state to answer from.
    pub base: Arc<ConnState>,
}

impl Connections {
    fn device(&self, user_id: &UserId, device_id: &str) -> Arc<DeviceConnections> {
        let key = (user_id.to_owned(), device_id.to_owned());
        self.devices.get_or_insert_with(
            &key,
            || key.clone(),
            || DeviceSlot(Arc::default()),
            |d| Arc::clone(&d.0),
        )
    }

    /// Starts (no `pos`: a fresh connection replacing any of that `conn_id`) or resumes (`pos`)
    /// a connection. A `pos` that is not known answers `M_UNKNOWN_POS`.
    pub fn resume(&self, user_id: &UserId, device_id: &str, conn_id: &str, pos: Option<&str>) -> Result<Resumed> {
        let device = self.device(user_id, device_id);
        let mut conns = device.conns.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        conns.retain(|_, c| now.duration_since(c.used) <= IDLE_EXPIRY);
        let Some(pos) = pos else {
            if !conns.contains_key(conn_id) && conns.len() >= MAX_PER_DEVICE {
                let oldest = conns.iter().min_by_key(|(_, c)| c.used).map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    conns.remove(&oldest);
                }
            }
            let nonce = rand::random::<u64>() >> 12;
            let base = Arc::new(ConnState::default());
            conns.insert(
                conn_id.to_owned(),
                Connection {
                    nonce,
                    next_seq: 1,
                    states: BTreeMap::from([(0, Arc::clone(&base))]),
                    used: now,
                },
            );
            return Ok(Resumed { nonce, base });
        };
        let (seq, nonce) = parse_pos(pos).ok_or_else(unknown_pos)?;
        let conn = conns
            .get_mut(conn_id)
            .filter(|c| c.nonce == nonce)
            .ok_or_else(unknown_pos)?;
        let base = conn.states.get(&seq).cloned().ok_or_else(unknown_pos)?;
        // The client has acknowledged `seq`: what came before it is no longer needed.
        conn.states = conn.states.split_off(&seq);
        conn.used = now;
        Ok(Resumed { nonce, base })
    }

    /// Records the state after an answer and returns the answer's `pos`. When the connection
    /// was restarted meanwhile, the `pos` is one it does not know (the client starts again).
    pub fn store(&self, user_id: &UserId, device_id: &str, conn_id: &str, nonce: u64, state: ConnState) -> String {
        let device = self.device(user_id, device_id);
        let mut conns = device.conns.lock().unwrap_or_else(|p| p.into_inner());
        let Some(conn) = conns.get_mut(conn_id).filter(|c| c.nonce == nonce) else {
            return format!("0_{nonce}");
        };
        let seq = conn.next_seq;
        conn.next_seq += 1;
        conn.states.insert(seq, Arc::new(state));
        while conn.states.len() > MAX_STATES {
            conn.states.pop_first();
        }
        conn.used = Instant::now();
        format!("{seq}_{nonce}")
    }
}

fn parse_pos(pos: &str) -> Option<(u64, u64)> {
    let (seq, nonce) = pos.split_once('_')?;
    Some((seq.parse().ok()?, nonce.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_resume_retry_and_expire() {
        let conns = Connections::default();
        let user = ruma::user_id!("@a:x");
        let first = conns.resume(user, "D", "c", None).unwrap();
        let pos1 = conns.store(user, "D", "c", first.nonce, ConnState::default());
        // A retry with the same pos works, and so does the next one.
        assert!(conns.resume(user, "D", "c", Some(&pos1)).is_ok());
        let again = conns.resume(user, "D", "c", Some(&pos1)).unwrap();
        let pos2 = conns.store(user, "D", "c", again.nonce, ConnState::default());
        assert!(conns.resume(user, "D", "c", Some(&pos2)).is_ok());
        // pos1 was acknowledged away by pos2.
        assert!(conns.resume(user, "D", "c", Some(&pos1)).is_err());
        // Another connection, device or garbage: unknown.
        assert!(conns.resume(user, "D", "other", Some(&pos2)).is_err());
        assert!(conns.resume(user, "E", "c", Some(&pos2)).is_err());
        assert!(conns.resume(user, "D", "c", Some("garbage")).is_err());
        // A restart of the connection forgets its positions.
        conns.resume(user, "D", "c", None).unwrap();
        assert!(conns.resume(user, "D", "c", Some(&pos2)).is_err());
    }
}
