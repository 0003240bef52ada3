//! Inbound transactions (`PUT /_matrix/federation/v1/send/{txnId}`): at most 50 PDUs and 100
//! EDUs (400 `M_BAD_JSON` above), answered once per origin and transaction id (a replay gets
//! the first answer; the last 10,000 answers are remembered, and past that an event already
//! stored is answered as such).
//!
//! Each PDU, in order: its room must be one this server has (else an error for that PDU, but
//! for the leave that rescinds a remote invite or refuses a remote knock: `leave.rs`);
//! its signatures and hashes are checked (`pdu.rs`); its missing auth events are fetched from
//! the origin with `/event` (at most 10 per PDU, their own auth events one level deeper at
//! most) and stored as outliers; its missing prev events are asked for once with
//! `get_missing_events` (at most 10 events, between the room's forward extremities and it),
//! which go through the same path without fetching further. An event whose prev events are
//! still unknown after that (the oldest of those fetched, or a gap deeper than 10 events) gets
//! the state before it from the origin instead (`gaps.rs`); one whose state cannot be had is
//! answered with an error, not stored. Then `Rooms::receive_remote` decides (accepted,
//! soft-failed, rejected). A PDU of a room whose server ACL bars the origin is refused before
//! any of that (`acl.rs`), as Synapse. One transaction causes at most [`FETCHES_PER_TRANSACTION`]
//! requests to its origin in all, whatever its PDUs miss.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use ruma::{
    EventId, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, ServerName, UInt,
    api::federation::event::{get_event, get_missing_events},
};
use serde_json::value::RawValue;

use super::Federation;
use crate::{
    Error, Result,
    services::rooms::{Rooms, pdu::reference_ids, remote::Received},
    util::bounded::{BoundedMap, Evict},
};

/// PDUs per transaction (the spec's limit).
pub const MAX_PDUS: usize = 50;
/// EDUs per transaction (the spec's limit).
pub const MAX_EDUS: usize = 100;
/// Missing auth events fetched for one PDU.
const MAX_AUTH_FETCHES: usize = 10;
/// Events asked for with `get_missing_events`.
const MISSING_EVENTS_LIMIT: u32 = 10;
/// Requests to the origin (`/event`, `get_missing_events`) one transaction may cause in all:
/// a server cannot make us send hundreds of requests per transaction it sends.
pub const FETCHES_PER_TRANSACTION: usize = 20;
/// Transaction answers remembered.
pub const REMEMBERED_TRANSACTIONS: usize = 10_000;

/// The per-PDU results of one transaction.
pub type PduResults = BTreeMap<OwnedEventId, std::result::Result<(), String>>;

/// A remembered transaction answer.
pub struct Answered(pub Arc<PduResults>);

impl Evict for Answered {}

/// The transaction answers remembered, by (origin, transaction id).
pub type AnsweredTransactions = BoundedMap<(OwnedServerName, String), Answered>;

fn room_of(raw: &RawValue) -> Option<ruma::OwnedRoomId> {
    #[derive(serde::Deserialize)]
    struct Room {
        room_id: Option<ruma::OwnedRoomId>,
    }
    serde_json::from_str::<Room>(raw.get()).ok()?.room_id
}

impl Federation {
    /// Handles the PDUs of a transaction from `origin` (EDUs are the caller's).
    pub async fn receive_transaction(
        &self,
        rooms: &Rooms,
        origin: &ServerName,
        txn_id: &str,
        pdus: &[Box<RawValue>],
        edus: usize,
    ) -> Result<Arc<PduResults>> {
        if pdus.len() > MAX_PDUS || edus > MAX_EDUS {
            return Err(Error::bad_json(format!(
                "A transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
            )));
        }
        let key = (origin.to_owned(), txn_id.to_owned());
        if let Some(answered) = self.answered.with(&key, |a| a.map(|a| Arc::clone(&a.0))) {
            return Ok(answered);
        }
        let mut results = PduResults::new();
        let budget = AtomicUsize::new(FETCHES_PER_TRANSACTION);
        for raw in pdus {
            let (event_id, outcome) = self.receive_one(rooms, origin, raw, &budget).await;
            if let Some(event_id) = event_id {
                if let Err(e) = &outcome {
                    tracing::info!(%origin, %event_id, error = %e, "PDU not accepted");
                }
                results.insert(event_id, outcome);
            }
        }
        let results = Arc::new(results);
        self.answered.insert(key, Answered(Arc::clone(&results)));
        Ok(results)
    }

    /// One PDU of a transaction: its id (when it has one) and what became of it.
    async fn receive_one(
        &self,
        rooms: &Rooms,
        origin: &ServerName,
        raw: &RawValue,
        budget: &AtomicUsize,
    ) -> (Option<OwnedEventId>, std::result::Result<(), String>) {
        let Some(room_id) = room_of(raw) else {
            return (None, Err("no room id".into()));
        };
        let version = match rooms.room_version(&room_id) {
            Ok(Some(version)) => version,
            _ => {
                // A room we only know through an invite or a knock: its end may still reach us.
                if let Some(event_id) = self.receive_out_of_band_leave(rooms, origin, &room_id, raw).await {
                    return (Some(event_id), Ok(()));
                }
                return (None, Err(format!("this server is not in {room_id}")));
            }
        };
        match super::acl::allows(rooms, origin, &room_id) {
            Ok(true) => {}
            Ok(false) => {
                let event_id = serde_json::from_str::<ruma::CanonicalJsonObject>(raw.get())
                    .ok()
                    .and_then(|mut object| super::pdu::event_id_of(&mut object, &version).ok());
                return (
                    event_id,
                    Err(format!("{origin} is barred from {room_id} by its server ACL")),
                );
            }
            Err(e) => return (None, Err(e.to_string())),
        }
        let checked = match self.check_pdu(&version, raw).await {
            Ok(checked) => checked,
            Err(e) => return (None, Err(e.to_string())),
        };
        let event_id = checked.event_id.clone();
        let outcome = self
            .receive_checked(rooms, origin, &version, &room_id, checked, true, budget)
            .await;
        (Some(event_id), outcome)
    }

    /// A checked PDU: fetches what it misses (as far as `budget`, the requests left, goes),
    /// then hands it to the rooms service.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn receive_checked(
        &self,
        rooms: &Rooms,
        origin: &ServerName,
        version: &RoomVersionId,
        room_id: &RoomId,
        checked: super::pdu::CheckedPdu,
        fetch_prevs: bool,
        budget: &AtomicUsize,
    ) -> std::result::Result<(), String> {
        if checked.room_id != room_id {
            return Err("the event belongs to another room".into());
        }
        let ids = |field: &str| reference_ids(checked.object.get(field));
        self.fetch_auth_events(rooms, origin, version, room_id, ids("auth_events"), 2, budget)
            .await;
        let missing_prevs: Vec<OwnedEventId> = ids("prev_events")
            .into_iter()
            .filter(|id| rooms.event_json(id).ok().flatten().is_none())
            .collect();
        if fetch_prevs && !missing_prevs.is_empty() && spend(budget) {
            self.fetch_missing(rooms, origin, version, room_id, &checked.event_id, budget)
                .await;
        }
        let still_missing = missing_prevs
            .iter()
            .any(|id| rooms.event_json(id).ok().flatten().is_none());
        let given_before = if still_missing {
            let state = self
                .state_before_gap(rooms, origin, version, room_id, &checked.event_id, budget)
                .await
                .map_err(|e| format!("its prev events are unknown and so is the state before it: {e}"))?;
            Some(state)
        } else {
            None
        };
        match rooms
            .receive_remote(room_id, checked.event_id.clone(), checked.bytes, given_before)
            .await
        {
            Ok(Received::Accepted(_) | Received::Known) => Ok(()),
            Ok(Received::SoftFailed(reason)) => {
                tracing::info!(event_id = %checked.event_id, %reason, "soft-failed");
                Ok(())
            }
            Ok(Received::Rejected(reason)) => Err(format!("rejected: {reason}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Fetches and stores (as outliers) the auth events of an event that are not stored,
    /// `depth` levels deep at most, one request of `budget` each.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_auth_events(
        &self,
        rooms: &Rooms,
        origin: &ServerName,
        version: &RoomVersionId,
        room_id: &RoomId,
        wanted: Vec<OwnedEventId>,
        depth: u8,
        budget: &AtomicUsize,
    ) {
        let missing: Vec<OwnedEventId> = wanted
            .into_iter()
            .filter(|id| rooms.event_json(id).ok().flatten().is_none())
            .take(MAX_AUTH_FETCHES)
            .collect();
        for event_id in missing {
            if !spend(budget) {
                return;
            }
            let fetched = match self
                .send_signed(origin, get_event::v1::Request::new(event_id.clone()))
                .await
            {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::info!(%origin, %event_id, error = %e, "cannot fetch an auth event");
                    continue;
                }
            };
            let Ok(checked) = self.check_pdu(version, &fetched.pdu).await else {
                continue;
            };
            if checked.event_id != event_id || checked.room_id != room_id {
                continue;
            }
            if depth > 1 {
                let auth = reference_ids(checked.object.get("auth_events"));
                Box::pin(self.fetch_auth_events(rooms, origin, version, room_id, auth, depth - 1, budget)).await;
            }
            if let Err(e) = rooms.store_outlier(room_id, checked.event_id, checked.bytes).await {
                tracing::info!(%event_id, error = %e, "fetched auth event not stored");
            }
        }
    }

    /// Asks `origin` once for the events between the room's forward extremities and
    /// `latest`, and receives them oldest first (without fetching further).
    async fn fetch_missing(
        &self,
        rooms: &Rooms,
        origin: &ServerName,
        version: &RoomVersionId,
        room_id: &RoomId,
        latest: &EventId,
        budget: &AtomicUsize,
    ) {
        let mut request = get_missing_events::v1::Request::new(
            room_id.to_owned(),
            rooms.forward_extremities(room_id).unwrap_or_default(),
            vec![latest.to_owned()],
        );
        request.limit = UInt::from(MISSING_EVENTS_LIMIT);
        let answer = match self.send_signed(origin, request).await {
            Ok(answer) => answer,
            Err(e) => {
                tracing::info!(%origin, %room_id, error = %e, "get_missing_events failed");
                return;
            }
        };
        let mut events = Vec::new();
        for raw in answer.events.iter().take(MISSING_EVENTS_LIMIT as usize) {
            if let Ok(checked) = self.check_pdu(version, raw).await {
                let depth = match checked.object.get("depth") {
                    Some(ruma::CanonicalJsonValue::Integer(d)) => i64::from(*d),
                    _ => 0,
                };
                events.push((depth, checked));
            }
        }
        events.sort_by_key(|(depth, _)| *depth);
        for (_, checked) in events {
            let event_id = checked.event_id.clone();
            if let Err(e) =
                Box::pin(self.receive_checked(rooms, origin, version, room_id, checked, false, budget)).await
            {
                tracing::info!(%event_id, error = %e, "missing event not accepted");
            }
        }
    }
}

/// Takes one request from `budget`; false when none is left.
pub(super) fn spend(budget: &AtomicUsize) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1))
        .is_ok()
}
