//! The outbound side of federation transactions (spec, server-server API, "Transactions";
//! `PUT /_matrix/federation/v1/send/{txnId}`): a persistent queue of PDUs per destination and
//! the background delivery that empties it.
//!
//! **Queue.** [`Federation::queue_pdu`] writes one entry per destination (our own name and
//! servers `check_peer` refuses left out) in one durable batch (`tables::federation_queue`:
//! destination SEP per-destination sequence number → the event id and the PDU's canonical
//! JSON bytes), so nothing queued is lost across a restart. A destination holds at most
//! [`MAX_QUEUED_PDUS`]; past that the oldest are dropped (and logged): a server that comes back
//! catches up on what it missed through `get_missing_events` from the newest events it gets.
//! EDUs (typing, receipts: [`Federation::queue_edu`]) are ephemeral and stay in memory, at most
//! [`MAX_QUEUED_EDUS`] per destination (oldest dropped). EDUs that must not be lost
//! (to-device messages: [`Federation::queue_durable_edus`]) have a second persistent queue
//! of the same shape (`destseq_fededu`), written in the caller's batch (so with what made
//! them, once), at most [`MAX_QUEUED_DURABLE_EDUS`] per destination: past that new ones are
//! refused (logged) rather than the oldest dropped, as a full to-device inbox does.
//!
//! **Delivery.** Each destination with something queued has one task, so at most one
//! transaction per destination is in flight and one destination never waits for another; at
//! most [`MAX_IN_FLIGHT`] transactions are in flight overall. A transaction carries the
//! destination's first [`MAX_PDUS_PER_TXN`] PDUs in queue order and up to [`MAX_EDUS_PER_TXN`]
//! EDUs (the persistent ones first, in queue order, at most [`MAX_DURABLE_EDUS_PER_TXN`] and
//! about [`DURABLE_EDU_BYTES_PER_TXN`]; the in-memory ones fill the rest); it is kept as built
//! (same transaction id, same content) until it is answered 200, then its PDUs and persistent
//! EDUs are deleted in one batch. One transaction in flight per destination keeps them in
//! order. Errors the receiver reports for single PDUs are logged at
//! info and not retried: the spec says the transaction as a whole succeeded. A failure (no
//! connection, a timeout, an error status) backs the destination off, 1 s doubling up to
//! 5 min; [`Federation::peer_is_back`] (an authenticated request from that server) ends the
//! back-off at once. At start ([`spawn`]) every destination with queued PDUs or persistent EDUs
//! is served.
//!
//! **At least once.** The PDUs are deleted in a batch written after the 200, so a crash in
//! between sends them again after the restart, in a transaction with a new id; receivers
//! deduplicate by transaction id and by event id, so that is harmless. Transaction ids are
//! this process's start time and a counter, unique per destination across restarts.
//!
//! Memory is bounded: destination states live in a [`BoundedMap`] (one in use, queuing or
//! delivering, is never dropped; a dropped one is read back from storage), their EDU queues
//! are capped, and a transaction holds at most 50 PDUs.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use ruma::{EventId, OwnedServerName, ServerName};
use serde_json::value::RawValue;
use tokio::sync::{Notify, Semaphore};

mod delivery;

pub use delivery::spawn;
use delivery::{base36, deliver};

use super::Federation;
use crate::{
    Result,
    services::Services,
    storage::{
        Batch, Db,
        tables::federation_queue::{FederationQueueTable, QueuedEdu, QueuedPdu},
    },
    util::bounded::BoundedMap,
};

/// Most PDUs in one transaction (the spec's limit).
pub const MAX_PDUS_PER_TXN: usize = 50;
/// Most EDUs in one transaction (the spec's limit).
pub const MAX_EDUS_PER_TXN: usize = 100;
/// Most PDUs queued for one destination; the oldest are dropped past it.
pub const MAX_QUEUED_PDUS: u64 = 10_000;
/// Most EDUs queued in memory for one destination; the oldest are dropped past it.
pub const MAX_QUEUED_EDUS: usize = 1_000;
/// Most persistent EDUs (to-device) queued for one destination; new ones are refused past it.
pub const MAX_QUEUED_DURABLE_EDUS: u64 = 10_000;
/// Most persistent EDUs in one transaction.
pub const MAX_DURABLE_EDUS_PER_TXN: usize = 50;
/// Persistent EDUs stop being added to a transaction past this many bytes (one always goes).
pub const DURABLE_EDU_BYTES_PER_TXN: usize = 1 << 20;
/// Most transactions in flight at once, all destinations together.
pub const MAX_IN_FLIGHT: usize = 50;
/// Wait after a destination's first failure.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// Destination states kept in memory (besides those in use).
const DESTINATIONS: usize = 10_000;
/// Destinations read per step of the start-up scan.
const SCAN_STEP: usize = 100;
/// Queue drops are logged at the first one and then every this many.
const DROP_LOG_EVERY: u64 = 1_000;

/// One destination's state.
struct Dest {
    name: OwnedServerName,
    state: Mutex<DestState>,
    /// Ends a back-off early ([`Federation::peer_is_back`]).
    back: Notify,
}

#[derive(Default)]
struct DestState {
    /// `head` and `tail` were read from storage.
    loaded: bool,
    /// The lowest sequence number that may still be queued.
    head: u64,
    /// The next sequence number to give out.
    tail: u64,
    /// PDUs dropped from the front since the last delivery (for the log).
    dropped: u64,
    /// EDUs waiting, oldest first.
    edus: VecDeque<serde_json::Value>,
    /// The persistent EDU queue's bounds were read from storage.
    durable_loaded: bool,
    /// The lowest sequence number of a persistent EDU that may still be queued.
    durable_head: u64,
    /// The next sequence number of a persistent EDU.
    durable_tail: u64,
    /// Something was queued since the delivery task last looked.
    dirty: bool,
    /// A delivery task runs for this destination.
    running: bool,
    /// The current back-off, while failing.
    backoff: Option<Duration>,
}

impl Dest {
    fn lock(&self) -> MutexGuard<'_, DestState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What delivery needs once started: where to spawn tasks and the services they use.
struct Started {
    runtime: tokio::runtime::Handle,
    services: Weak<Services>,
}

/// The queue and its delivery; a field of [`Federation`].
pub struct Sender {
    table: FederationQueueTable,
    /// The persistent EDUs (`destseq_fededu`).
    edu_table: FederationQueueTable,
    max_queued_edus: u64,
    dests: BoundedMap<OwnedServerName, Arc<Dest>>,
    max_queued: u64,
    in_flight: Semaphore,
    started: OnceLock<Started>,
    /// This process's start (ms, base 36): the first part of its transaction ids.
    process: String,
    txn_counter: AtomicU64,
    /// The back-off's first and longest waits, ms ([`INITIAL_BACKOFF`], [`MAX_BACKOFF`]).
    backoff_ms: (AtomicU64, AtomicU64),
}

impl Sender {
    /// Where a later task can run and find the services (`None` before [`spawn`]).
    pub(crate) fn task_handle(&self) -> Option<(tokio::runtime::Handle, Weak<Services>)> {
        self.started
            .get()
            .map(|started| (started.runtime.clone(), started.services.clone()))
    }

    /// The sender over the database; nothing is delivered until [`spawn`].
    pub fn new(db: Arc<Db>) -> Sender {
        Self::with_max_queued(db, MAX_QUEUED_PDUS)
    }

    /// A sender whose destinations hold at most `max_queued` PDUs (tests of the bound).
    #[cfg(test)]
    pub(crate) fn for_tests(db: Arc<Db>, max_queued: u64) -> Sender {
        Self::with_max_queued(db, max_queued)
    }

    fn with_max_queued(db: Arc<Db>, max_queued: u64) -> Sender {
        let max_queued_edus = if max_queued == MAX_QUEUED_PDUS {
            MAX_QUEUED_DURABLE_EDUS
        } else {
            max_queued.max(1)
        };
        Sender {
            table: FederationQueueTable::new(Arc::clone(&db)),
            edu_table: FederationQueueTable::edus(db),
            max_queued_edus,
            dests: BoundedMap::new(DESTINATIONS),
            max_queued: max_queued.max(1),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            started: OnceLock::new(),
            process: base36(crate::util::now_ms()),
            txn_counter: AtomicU64::new(0),
            backoff_ms: (
                AtomicU64::new(INITIAL_BACKOFF.as_millis() as u64),
                AtomicU64::new(MAX_BACKOFF.as_millis() as u64),
            ),
        }
    }

    /// Changes the back-off's first and longest waits (for tests that need a long one).
    #[doc(hidden)]
    pub fn set_backoff_for_tests(&self, initial: Duration, max: Duration) {
        self.backoff_ms.0.store(initial.as_millis() as u64, Ordering::Relaxed);
        self.backoff_ms.1.store(max.as_millis() as u64, Ordering::Relaxed);
    }

    /// Lowers the number of transactions in flight at once (before any is sent; for tests).
    #[doc(hidden)]
    pub fn set_max_in_flight_for_tests(&self, max: usize) {
        let excess = self.in_flight.available_permits().saturating_sub(max.max(1));
        self.in_flight.forget_permits(excess);
    }

    /// The number of PDUs queued for `server` (reads them all: for reports and tests).
    pub fn queued_pdus(&self, server: &ServerName) -> Result<usize> {
        Ok(self.table.first::<QueuedPdu>(server.as_str(), usize::MAX)?.len())
    }

    /// The number of persistent EDUs queued for `server` (reads them all: for reports and
    /// tests).
    pub fn queued_durable_edus(&self, server: &ServerName) -> Result<usize> {
        Ok(self.edu_table.first::<QueuedEdu>(server.as_str(), usize::MAX)?.len())
    }

    /// Whether delivery to `server` is waiting out a back-off after a failure.
    pub fn is_backing_off(&self, server: &ServerName) -> bool {
        self.dests
            .with(server, |dest| dest.map(|d| d.lock().backoff.is_some()))
            .unwrap_or(false)
    }

    fn dest(&self, name: &ServerName) -> Arc<Dest> {
        self.dests.get_or_insert_with(
            name,
            || name.to_owned(),
            || {
                Arc::new(Dest {
                    name: name.to_owned(),
                    state: Mutex::default(),
                    back: Notify::new(),
                })
            },
            |dest| Arc::clone(dest),
        )
    }

    /// Reads a destination's queue bounds from storage the first time they are needed.
    fn ensure_loaded(&self, dest: &Dest, state: &mut DestState) -> Result<()> {
        if !state.loaded {
            if let Some((first, last)) = self.table.bounds(dest.name.as_str())? {
                state.head = first;
                state.tail = last + 1;
            }
            state.loaded = true;
        }
        Ok(())
    }

    /// Queues `pdu` for each of `destinations` (already filtered) in one durable batch, then
    /// wakes their delivery.
    async fn enqueue(&self, destinations: &[OwnedServerName], event_id: &EventId, pdu: &[u8]) -> Result<()> {
        let record = QueuedPdu {
            event_id: event_id.to_string(),
            pdu: pdu.to_vec(),
        };
        let mut batch = self.table.batch();
        // Held until the batch is durable, so their states (the sequence numbers given out)
        // stay in memory meanwhile.
        let mut held = Vec::with_capacity(destinations.len());
        for name in destinations {
            let dest = self.dest(name);
            {
                let mut state = dest.lock();
                self.ensure_loaded(&dest, &mut state)?;
                let seq = state.tail;
                state.tail += 1;
                self.table.queue_put(&mut batch, name.as_str(), seq, &record)?;
                if state.tail.saturating_sub(state.head) > self.max_queued {
                    let new_head = state.tail - self.max_queued;
                    self.table.queue_delete_below(&mut batch, name.as_str(), new_head);
                    let dropped = new_head - state.head;
                    state.head = new_head;
                    if state.dropped.is_multiple_of(DROP_LOG_EVERY) {
                        tracing::warn!(
                            destination = %name,
                            dropped = state.dropped + dropped,
                            limit = self.max_queued,
                            "federation queue full: the oldest PDUs are dropped"
                        );
                    }
                    state.dropped += dropped;
                }
            }
            held.push(dest);
        }
        batch.commit().await?;
        for dest in &held {
            self.kick(dest);
        }
        Ok(())
    }

    /// Queues one persistent EDU for `name` in `batch`; its destination, or `None` (logged)
    /// when the destination's queue is full.
    fn put_durable(&self, batch: &mut Batch, name: &ServerName, edu: Vec<u8>) -> Result<Option<Arc<Dest>>> {
        let dest = self.dest(name);
        {
            let mut state = dest.lock();
            if !state.durable_loaded {
                if let Some((first, last)) = self.edu_table.bounds(name.as_str())? {
                    state.durable_head = first;
                    state.durable_tail = last + 1;
                }
                state.durable_loaded = true;
            }
            if state.durable_tail.saturating_sub(state.durable_head) >= self.max_queued_edus {
                tracing::warn!(
                    destination = %name,
                    limit = self.max_queued_edus,
                    "federation to-device queue full: EDU dropped"
                );
                return Ok(None);
            }
            let seq = state.durable_tail;
            state.durable_tail += 1;
            self.edu_table
                .queue_put(batch, name.as_str(), seq, &QueuedEdu { edu })?;
        }
        Ok(Some(dest))
    }

    /// Notes that `dest` has something new and starts its delivery task unless it runs.
    fn kick(&self, dest: &Arc<Dest>) {
        let Some(started) = self.started.get() else {
            return;
        };
        {
            let mut state = dest.lock();
            state.dirty = true;
            if state.running {
                return;
            }
            state.running = true;
        }
        started
            .runtime
            .spawn(deliver(started.services.clone(), Arc::clone(dest)));
    }
}

/// Persistent EDUs written into a caller's batch ([`Federation::queue_durable_edus`]): their
/// destinations, kept in memory until [`Federation::wake`] starts their delivery (after the
/// batch is durable).
#[must_use = "wake the destinations once the batch is committed"]
pub struct QueuedDurable {
    held: Vec<Arc<Dest>>,
}

impl Federation {
    /// Queues EDUs that must be delivered (to-device messages), each for one destination, in
    /// `batch` (the caller commits it, then calls [`Federation::wake`]). Our own name and
    /// servers we do not federate with are left out; with federation off nothing is written.
    /// A destination holding [`MAX_QUEUED_DURABLE_EDUS`] refuses further ones (logged).
    pub fn queue_durable_edus(
        &self,
        batch: &mut Batch,
        edus: &[(OwnedServerName, serde_json::Value)],
    ) -> Result<QueuedDurable> {
        let mut held: Vec<Arc<Dest>> = Vec::new();
        if !self.enabled {
            return Ok(QueuedDurable { held });
        }
        let sender = &self.sender;
        for (name, edu) in edus {
            if *name == self.server_name || self.check_peer(name).is_err() {
                continue;
            }
            let bytes = serde_json::to_vec(edu).map_err(|e| crate::Error::internal(e.to_string()))?;
            let Some(dest) = sender.put_durable(batch, name, bytes)? else {
                continue;
            };
            if !held.iter().any(|d| Arc::ptr_eq(d, &dest)) {
                held.push(dest);
            }
        }
        Ok(QueuedDurable { held })
    }

    /// Starts delivery of what [`Federation::queue_durable_edus`] queued (call it once the
    /// batch was committed; after a failed commit it only costs a look at the queue).
    pub fn wake(&self, queued: QueuedDurable) {
        for dest in &queued.held {
            self.sender.kick(dest);
        }
    }

    /// Our own name and servers we may not talk to left out, each server once.
    fn destinations_for(&self, destinations: &[OwnedServerName]) -> Vec<OwnedServerName> {
        let mut out: Vec<OwnedServerName> = destinations
            .iter()
            .filter(|d| **d != self.server_name && self.check_peer(d).is_ok())
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Queues a PDU (its canonical JSON bytes) for `destinations`, durably, in one batch, and
    /// wakes their delivery. Our own server name and servers we do not federate with are left
    /// out; with federation off nothing is stored. `pdu` must be JSON (500 otherwise).
    pub async fn queue_pdu(&self, destinations: &[OwnedServerName], event_id: &EventId, pdu: &[u8]) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let destinations = self.destinations_for(destinations);
        if destinations.is_empty() {
            return Ok(());
        }
        if serde_json::from_slice::<&RawValue>(pdu).is_err() {
            return Err(crate::Error::internal(format!(
                "PDU {event_id} queued for federation is not JSON"
            )));
        }
        self.sender.enqueue(&destinations, event_id, pdu).await
    }

    /// Queues an EDU (typing, receipts) for `destinations`, in memory only (at most
    /// [`MAX_QUEUED_EDUS`] per destination, the oldest dropped); it goes in their next
    /// transactions.
    pub fn queue_edu(&self, destinations: &[OwnedServerName], edu: serde_json::Value) {
        if !self.enabled {
            return;
        }
        for name in self.destinations_for(destinations) {
            let dest = self.sender.dest(&name);
            {
                let mut state = dest.lock();
                if state.edus.len() >= MAX_QUEUED_EDUS {
                    state.edus.pop_front();
                }
                state.edus.push_back(edu.clone());
            }
            self.sender.kick(&dest);
        }
    }

    /// `server` is reachable again (it just sent us an authenticated request): its back-off
    /// ends and what is queued for it is sent now.
    pub fn peer_is_back(&self, server: &ServerName) {
        let Some(dest) = self.sender.dests.with(server, |d| d.cloned()) else {
            return;
        };
        let was_failing = dest.lock().backoff.take().is_some();
        if was_failing {
            dest.back.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StorageOptions;

    #[tokio::test]
    async fn a_destination_keeps_only_its_newest_pdus() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let sender = Sender::for_tests(Arc::clone(&db), 5);
        let full: OwnedServerName = "full.test".try_into().unwrap();
        let other: OwnedServerName = "other.test".try_into().unwrap();
        for n in 0..8u64 {
            let event_id = EventId::parse(format!("$e{n}")).unwrap();
            let dests = if n == 0 {
                vec![full.clone(), other.clone()]
            } else {
                vec![full.clone()]
            };
            sender
                .enqueue(&dests, &event_id, format!("{{\"n\":{n}}}").as_bytes())
                .await
                .unwrap();
        }
        let kept: Vec<String> = sender
            .table
            .first::<QueuedPdu>("full.test", 100)
            .unwrap()
            .into_iter()
            .map(|(_, pdu)| pdu.event_id)
            .collect();
        assert_eq!(
            kept,
            vec!["$e3", "$e4", "$e5", "$e6", "$e7"],
            "the oldest dropped, in order"
        );
        assert_eq!(
            sender.table.first::<QueuedPdu>("other.test", 100).unwrap().len(),
            1,
            "another destination keeps its own"
        );

        // A fresh sender (a restart) reads the bounds back and goes on numbering after them.
        let sender = Sender::for_tests(Arc::clone(&db), 5);
        let event_id = EventId::parse("$e8").unwrap();
        sender
            .enqueue(std::slice::from_ref(&full), &event_id, b"{}")
            .await
            .unwrap();
        let kept: Vec<(u64, String)> = sender
            .table
            .first::<QueuedPdu>("full.test", 100)
            .unwrap()
            .into_iter()
            .map(|(seq, pdu)| (seq, pdu.event_id))
            .collect();
        assert_eq!(kept.first().unwrap().1, "$e4");
        assert_eq!(kept.last().unwrap(), &(8, "$e8".to_owned()));
        assert_eq!(kept.len(), 5);
    }

    #[tokio::test]
    async fn a_full_durable_queue_refuses_new_edus_and_a_restart_reads_its_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
        let sender = Sender::for_tests(Arc::clone(&db), 3);
        let name: OwnedServerName = "full.test".try_into().unwrap();
        let mut batch = db.batch();
        let kept: Vec<bool> = (0..5)
            .map(|n| {
                sender
                    .put_durable(&mut batch, &name, format!("{{\"n\":{n}}}").into_bytes())
                    .unwrap()
                    .is_some()
            })
            .collect();
        batch.commit().await.unwrap();
        assert_eq!(
            kept,
            vec![true, true, true, false, false],
            "new ones refused, not the oldest dropped"
        );
        let queued: Vec<(u64, Vec<u8>)> = sender
            .edu_table
            .first::<QueuedEdu>("full.test", 10)
            .unwrap()
            .into_iter()
            .map(|(seq, e)| (seq, e.edu))
            .collect();
        assert_eq!(queued[0], (0, b"{\"n\":0}".to_vec()));
        assert_eq!(queued.len(), 3);

        // After a restart the bounds are read back: still full.
        let sender = Sender::for_tests(Arc::clone(&db), 3);
        let mut batch = db.batch();
        assert!(sender.put_durable(&mut batch, &name, b"{}".to_vec()).unwrap().is_none());
        // Once one was delivered (deleted), there is room again, numbered after the others.
        let mut delete = db.batch();
        sender.edu_table.queue_delete(&mut delete, "full.test", 0);
        delete.commit().await.unwrap();
        let sender = Sender::for_tests(Arc::clone(&db), 3);
        assert!(sender.put_durable(&mut batch, &name, b"{}".to_vec()).unwrap().is_some());
        batch.commit().await.unwrap();
        assert_eq!(sender.edu_table.bounds("full.test").unwrap(), Some((1, 3)));
    }
}
