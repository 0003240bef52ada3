//! The global stream position: one monotonic `u64` numbering everything a client can sync, and
//! the *watermark* up to which readers may safely advance.
//!
//! # The problem
//!
//! Every change a client can sync (an event, an account-data update, …) is stamped with a stream
//! position taken from one global counter, and a sync answers "everything after position `N`",
//! handing back a new `N` as its `next_batch` token. Writers take a position *before* their batch
//! is written, and batches become durable in whatever order the disk gets to them. So writers
//! finish out of order:
//!
//! ```text
//! writer A takes 6 ─────────── commit takes long ─────────────▶ durable
//! writer B takes 7 ── commit ──▶ durable
//!                                   ▲ a sync reads here
//! ```
//!
//! If a sync at that moment answered "up to 7" because 7 is the highest position written, the
//! client's next request would ask for "after 7", and the change at 6 would never reach it.
//! **Readers must never skip a position.** They may only advance to the watermark: the highest
//! position `P` such that every position `<= P` is done. In the picture above the watermark stays
//! at 5 until A's batch is durable, then jumps straight to 7.
//!
//! A position is *done* when its writer's batch is durable ([`Ticket::complete`]) or when the
//! write failed and the position was given up ([`Ticket`] dropped): a reader loses nothing by
//! passing a position that holds nothing. Positions can therefore have gaps; they are never reused.
//!
//! One exception: a position given up while the database has *failed closed* (a write or WAL
//! sync failed, see [`super`]) is never done. Its batch may sit in RocksDB's memtable, readable
//! though not durable, so the watermark stays below it for good and readers never see a write
//! that a restart may lose. Nothing can be written after such a failure anyway.
//!
//! # Allocation and restarts
//!
//! [`Positions::allocate`] is an in-memory counter behind a short mutex. To survive a restart
//! without a durable write per allocation, positions are reserved in blocks of [`BLOCK`]: the
//! highest reserved position is stored in the `global` column family, and a new mark is written
//! (and synced, with `sync_writes`) *before* any position above the old one is handed out. After a
//! restart allocation continues above the stored mark, so no position is ever handed out twice,
//! whatever was written in the block that was in use. At start every earlier position is done
//! (a write either reached the disk or it never will), so the watermark starts at the stored mark.
//!
//! The same ordering makes this safe with `sync_writes` off: RocksDB's write-ahead log is
//! sequential, so a batch stamped above the old mark is always logged after the new mark.
//!
//! # Waking readers
//!
//! [`Positions::subscribe`] returns a [`tokio::sync::watch`] receiver whose value is the
//! watermark; it changes whenever the watermark advances, which is what long-polling syncs wait on.
//!
//! # Example
//!
//! ```
//! use hearth::storage::{Db, StorageOptions, positions::Positions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let db = Db::open(dir.path(), &StorageOptions::for_tests()).unwrap();
//! let positions = Positions::open(db).unwrap();
//!
//! let first = positions.allocate().unwrap();
//! let second = positions.allocate().unwrap();
//! // ... each writer puts its position into its batch and commits it ...
//! second.complete();
//! assert_eq!(positions.watermark(), first.position() - 1); // `first` is still in flight
//! first.complete();
//! assert_eq!(positions.watermark(), 2);
//! ```

use std::{
    collections::BTreeSet,
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::watch;

use super::{Db, StorageResult, codec, schema};

/// Key in [`schema::GLOBAL`]: the highest position reserved so far (u64).
const RESERVED_KEY: &[u8] = b"stream_position_reserved";

/// Number of positions reserved by one durable write of the stored mark.
///
/// At most this many positions are skipped per restart; one write (and WAL sync) per this many
/// allocations is the cost.
pub const BLOCK: u64 = 1000;

/// The allocator of stream positions and keeper of the watermark.
///
/// Open one per process ([`Positions::open`]) and share it; clones are handles to the same
/// allocator.
#[derive(Clone)]
pub struct Positions {
    shared: Arc<Shared>,
}

struct Shared {
    db: Arc<Db>,
    /// Positions reserved per write of the stored mark ([`BLOCK`], smaller in tests).
    block: u64,
    state: Mutex<State>,
    /// Held while the stored mark is extended, so one allocator writes it and the others wait.
    reserving: Mutex<()>,
    /// The current watermark, for cheap reads; only ever raised (`fetch_max`).
    watermark: AtomicU64,
    /// The same value for subscribers; only ever raised.
    notify: watch::Sender<u64>,
}

struct State {
    /// The next position to hand out.
    next: u64,
    /// The stored mark: positions up to here may be handed out.
    reserved: u64,
    /// Positions handed out and not yet done. Everything below its first entry (or below `next`
    /// when it is empty) is done.
    in_flight: BTreeSet<u64>,
}

impl Positions {
    /// Loads the stored mark from the `global` column family and starts above it.
    ///
    /// The watermark starts at the stored mark: every position handed out before the restart is
    /// done. Nothing is written until the first allocation.
    pub fn open(db: Arc<Db>) -> StorageResult<Positions> {
        Positions::open_with_block(db, BLOCK)
    }

    fn open_with_block(db: Arc<Db>, block: u64) -> StorageResult<Positions> {
        assert!(block > 0, "the reservation block must hold at least one position");
        let reserved = match db.get(schema::GLOBAL, RESERVED_KEY)? {
            Some(bytes) => codec::read_u64(schema::GLOBAL, &bytes)?,
            None => 0,
        };
        let (notify, _) = watch::channel(reserved);
        Ok(Positions {
            shared: Arc::new(Shared {
                db,
                block,
                state: Mutex::new(State {
                    next: reserved + 1,
                    reserved,
                    in_flight: BTreeSet::new(),
                }),
                reserving: Mutex::new(()),
                watermark: AtomicU64::new(reserved),
                notify,
            }),
        })
    }

    /// Hands out the next position, greater than every position handed out before (in this
    /// process or an earlier one). Positions start at 1.
    ///
    /// Usually a counter bump under a short lock. Once per [`BLOCK`] calls it writes (and, with
    /// `sync_writes`, syncs) the new reserved mark on the calling thread, and concurrent callers
    /// wait for it. It fails only when that write fails; nothing is handed out then.
    ///
    /// Allocate just before building the batch and finish the ticket right after committing it:
    /// while the ticket is held, no reader advances past its position.
    pub fn allocate(&self) -> StorageResult<Ticket> {
        loop {
            {
                let mut state = self.shared.lock_state();
                if state.next <= state.reserved {
                    let position = state.next;
                    state.next += 1;
                    state.in_flight.insert(position);
                    return Ok(Ticket {
                        position,
                        shared: Arc::clone(&self.shared),
                    });
                }
            }
            self.shared.reserve_more()?;
        }
    }

    /// Skips `count` positions at once: none of them is ever handed out, and the watermark
    /// passes them. One durable write of the stored mark, whatever `count` is.
    pub fn skip(&self, count: u64) -> StorageResult<()> {
        {
            let _only_writer = self.shared.reserving.lock().unwrap_or_else(PoisonError::into_inner);
            // Allocators may hand out positions meanwhile, at most up to the stored mark: the
            // new mark covers the skip from wherever `next` is then.
            let reserved = self.shared.lock_state().reserved;
            let new_mark = reserved + count + self.shared.block;
            let mut batch = self.shared.db.batch();
            batch.put(schema::GLOBAL, RESERVED_KEY, &codec::u64_bytes(new_mark));
            batch.commit_blocking()?;
            let mut state = self.shared.lock_state();
            state.next += count;
            state.reserved = new_mark;
        }
        // Publishes the new watermark (an abandoned position counts as done).
        drop(self.allocate()?);
        Ok(())
    }

    /// The highest position `P` such that every position `<= P` is done (completed or
    /// abandoned). Readers may advance up to it and never beyond. It never decreases.
    pub fn watermark(&self) -> u64 {
        self.shared.watermark.load(Ordering::Acquire)
    }

    /// A receiver whose value is the watermark; it is marked changed whenever the watermark
    /// advances (several advances may show as one change). Long-polling syncs wait on it.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.notify.subscribe()
    }
}

impl fmt::Debug for Positions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock_state();
        f.debug_struct("Positions")
            .field("next", &state.next)
            .field("reserved", &state.reserved)
            .field("in_flight", &state.in_flight.len())
            .field("watermark", &self.watermark())
            .finish()
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // No code path panics halfway through an update, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Durably raises the stored mark by one block, unless another allocator already did.
    fn reserve_more(&self) -> StorageResult<()> {
        let _only_writer = self.reserving.lock().unwrap_or_else(PoisonError::into_inner);
        let reserved = {
            let state = self.lock_state();
            if state.next <= state.reserved {
                return Ok(());
            }
            state.reserved
        };
        let new_mark = reserved + self.block;
        let mut batch = self.db.batch();
        batch.put(schema::GLOBAL, RESERVED_KEY, &codec::u64_bytes(new_mark));
        batch.commit_blocking()?;
        self.lock_state().reserved = new_mark;
        Ok(())
    }

    /// Marks `position` done and raises the watermark if it was the lowest one in flight.
    fn finish(&self, position: u64) {
        let mark = {
            let mut state = self.lock_state();
            let was_lowest = state.in_flight.first() == Some(&position);
            let removed = state.in_flight.remove(&position);
            debug_assert!(removed, "position {position} finished twice");
            if !was_lowest {
                return;
            }
            match state.in_flight.first() {
                Some(&lowest) => lowest - 1,
                None => state.next - 1,
            }
        };
        // Published outside the lock: concurrent finishers may publish out of order, so both
        // values are only ever raised, never overwritten.
        if self.watermark.fetch_max(mark, Ordering::AcqRel) < mark {
            self.notify.send_if_modified(|current| {
                let raise = *current < mark;
                if raise {
                    *current = mark;
                }
                raise
            });
        }
    }
}

/// One allocated position, held by its writer until the write is done.
///
/// [`complete`](Ticket::complete) it once the batch carrying the position is durable, or drop it
/// when the write failed (abandoned). Both count as done for the watermark, so an error path, a
/// panic or a cancelled future can never hold readers back for good; a leaked ticket
/// (`mem::forget`) would, and so does by design a ticket abandoned after the database failed
/// closed.
#[must_use = "complete the ticket once its batch is durable; dropping it abandons the position"]
pub struct Ticket {
    position: u64,
    shared: Arc<Shared>,
}

impl Ticket {
    /// The allocated position.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Declares the write carrying this position durable (and visible to readers).
    pub fn complete(mut self) {
        self.shared.finish(self.position);
        self.position = 0;
    }
}

impl Drop for Ticket {
    /// Abandons the position: done, unless the database has failed closed (then the watermark
    /// stays below it for good, see the module documentation).
    fn drop(&mut self) {
        if self.position != 0 && !self.shared.db.failed_closed() {
            self.shared.finish(self.position);
        }
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Ticket").field(&self.position).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        path::Path,
        sync::atomic::{AtomicBool, AtomicU64, Ordering},
        thread,
        time::Duration,
    };

    use rand::Rng;

    use super::*;
    use crate::storage::StorageOptions;

    fn open_db(dir: &Path) -> Arc<Db> {
        let options = StorageOptions::for_tests();
        Db::open(dir, &options).unwrap()
    }

    fn stored_mark(db: &Db) -> u64 {
        codec::read_u64(schema::GLOBAL, &db.get(schema::GLOBAL, RESERVED_KEY).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn out_of_order_completion_holds_the_watermark_at_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        // A tiny block, so these allocations also cross reservations.
        let positions = Positions::open_with_block(open_db(dir.path()), 4).unwrap();
        assert_eq!(positions.watermark(), 0);

        let tickets: Vec<Ticket> = (0..6).map(|_| positions.allocate().unwrap()).collect();
        assert_eq!(
            tickets.iter().map(Ticket::position).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
        let [t1, t2, t3, t4, t5, t6] = <[Ticket; 6]>::try_from(tickets).unwrap();
        assert_eq!(positions.watermark(), 0, "nothing is done yet");

        t2.complete();
        t3.complete();
        assert_eq!(positions.watermark(), 0, "1 is in flight");
        drop(t1); // abandoned: done as well
        assert_eq!(positions.watermark(), 3, "the gap at 1 closed");

        t5.complete();
        t6.complete();
        assert_eq!(positions.watermark(), 3, "4 is in flight");
        drop(t4);
        assert_eq!(positions.watermark(), 6);

        let t7 = positions.allocate().unwrap();
        assert_eq!(t7.position(), 7);
        assert_eq!(positions.watermark(), 6, "allocating does not move the watermark");
        t7.complete();
        assert_eq!(positions.watermark(), 7);
    }

    #[test]
    fn restart_continues_above_every_earlier_position() {
        let dir = tempfile::tempdir().unwrap();
        let mut earlier_max = 0;
        let mut earlier_completed_max = 0;
        for lifetime in 0..3 {
            let db = open_db(dir.path());
            let positions = Positions::open_with_block(Arc::clone(&db), 10).unwrap();
            let start = positions.watermark();
            assert!(
                start >= earlier_completed_max,
                "lifetime {lifetime}: watermark {start} starts below a completed position"
            );

            let tickets: Vec<Ticket> = (0..25).map(|_| positions.allocate().unwrap()).collect();
            let first = tickets[0].position();
            assert!(first > earlier_max, "lifetime {lifetime}: {first} reuses a position");
            assert!(
                start < first,
                "lifetime {lifetime}: watermark {start} starts at or above {first}"
            );
            for pair in tickets.windows(2) {
                assert!(pair[0].position() < pair[1].position());
            }
            let last = tickets.last().unwrap().position();
            assert!(
                stored_mark(&db) >= last,
                "a position was handed out above the stored mark"
            );

            earlier_max = last;
            // Complete some, abandon some, and leave some in flight at "shutdown" (writers cut
            // off by a crash: they are dropped only with everything else below).
            let mut in_flight = Vec::new();
            for (i, ticket) in tickets.into_iter().enumerate() {
                match i % 5 {
                    0..=2 => {
                        earlier_completed_max = earlier_completed_max.max(ticket.position());
                        ticket.complete();
                    }
                    3 => drop(ticket),
                    _ => in_flight.push(ticket),
                }
            }
            assert!(positions.watermark() < in_flight[0].position());
            drop((in_flight, positions, db));
        }

        // The production entry point with the default block continues above it all as well.
        let positions = Positions::open(open_db(dir.path())).unwrap();
        assert!(positions.watermark() >= earlier_completed_max);
        let next = positions.allocate().unwrap();
        assert!(next.position() > earlier_max);
        assert!(positions.watermark() < next.position());
        next.complete();
    }

    #[test]
    fn concurrent_writers_never_let_the_watermark_pass_an_unfinished_position() {
        const THREADS: u64 = 8;
        const PER_THREAD: u64 = 2_000;
        const TOTAL: u64 = THREADS * PER_THREAD;

        let dir = tempfile::tempdir().unwrap();
        // A small block, so reservations happen often and concurrently with allocations.
        let positions = Positions::open_with_block(open_db(dir.path()), 64).unwrap();
        // done[p]: position p was completed or abandoned (set just before the ticket finishes).
        let done: Arc<Vec<AtomicBool>> = Arc::new((0..=TOTAL).map(|_| AtomicBool::new(false)).collect());
        let writers_left = Arc::new(AtomicU64::new(THREADS));

        let reader = {
            let (positions, done, writers_left) = (positions.clone(), Arc::clone(&done), Arc::clone(&writers_left));
            thread::spawn(move || {
                let mut seen = 0;
                let mut reads = 0u64;
                loop {
                    let finished = writers_left.load(Ordering::SeqCst) == 0;
                    let mark = positions.watermark();
                    assert!(mark >= seen, "the watermark went back from {seen} to {mark}");
                    // Positions <= seen were checked before, and done never reverts.
                    for p in seen + 1..=mark {
                        assert!(
                            done[p as usize].load(Ordering::SeqCst),
                            "watermark {mark} passed unfinished {p}"
                        );
                    }
                    seen = mark;
                    reads += 1;
                    if finished {
                        return (seen, reads);
                    }
                    thread::yield_now();
                }
            })
        };

        let writers: Vec<_> = (0..THREADS)
            .map(|_| {
                let (positions, done, writers_left) = (positions.clone(), Arc::clone(&done), Arc::clone(&writers_left));
                thread::spawn(move || {
                    let mut rng = rand::thread_rng();
                    let mut held: Vec<Ticket> = Vec::new();
                    let mut mine = Vec::with_capacity(PER_THREAD as usize);
                    for n in 0..PER_THREAD {
                        let ticket = positions.allocate().unwrap();
                        mine.push(ticket.position());
                        held.push(ticket);
                        // Keep a few in flight and finish a random one of them, so completions
                        // interleave out of order within and across threads.
                        let keep = if n + 1 == PER_THREAD { 0 } else { rng.gen_range(0..4) };
                        while held.len() > keep {
                            let ticket = held.swap_remove(rng.gen_range(0..held.len()));
                            if rng.gen_ratio(1, 16) {
                                thread::sleep(Duration::from_micros(rng.gen_range(1..50)));
                            } else if rng.gen_bool(0.5) {
                                thread::yield_now();
                            }
                            done[ticket.position() as usize].store(true, Ordering::SeqCst);
                            if rng.gen_ratio(1, 10) {
                                drop(ticket);
                            } else {
                                ticket.complete();
                            }
                        }
                    }
                    writers_left.fetch_sub(1, Ordering::SeqCst);
                    mine
                })
            })
            .collect();

        let mut all: Vec<u64> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        let (last_seen, reads) = reader.join().unwrap();
        all.sort_unstable();
        assert_eq!(
            all,
            (1..=TOTAL).collect::<Vec<_>>(),
            "every position handed out exactly once"
        );
        assert_eq!(positions.watermark(), TOTAL);
        assert_eq!(
            last_seen, TOTAL,
            "the reader's last look came after every writer finished"
        );
        assert!(reads > 1);
    }

    #[tokio::test]
    async fn subscribers_wake_when_the_watermark_advances() {
        let dir = tempfile::tempdir().unwrap();
        let positions = Positions::open(open_db(dir.path())).unwrap();
        let mut waiter_rx = positions.subscribe();
        let probe = positions.subscribe();
        assert_eq!(*probe.borrow(), 0);

        let waiter = tokio::spawn(async move {
            waiter_rx.changed().await.unwrap();
            *waiter_rx.borrow_and_update()
        });
        let first = positions.allocate().unwrap();
        let second = positions.allocate().unwrap();
        second.complete();
        assert!(!probe.has_changed().unwrap(), "no change while 1 is in flight");
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());

        first.complete();
        assert!(probe.has_changed().unwrap());
        let woke_with = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the subscriber was not woken")
            .unwrap();
        assert_eq!(woke_with, 2);
    }

    /// After a failed write the database is failed closed: an abandoned position may hold a
    /// batch that sits in the memtable without being durable, so the watermark never passes it,
    /// while positions completed below it still count.
    #[test]
    fn an_abandoned_position_holds_the_watermark_once_the_database_failed_closed() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path());
        let positions = Positions::open(Arc::clone(&db)).unwrap();
        let [t1, t2, t3, t4] = [(); 4].map(|()| positions.allocate().unwrap());
        drop(t1);
        assert_eq!(positions.watermark(), 1, "abandoned while healthy: done");
        db.fail_closed_for_test();
        drop(t3);
        t2.complete();
        assert_eq!(positions.watermark(), 2, "completed below the failure: done");
        t4.complete();
        assert_eq!(
            positions.watermark(),
            2,
            "never past the position abandoned after the failure"
        );
    }

    #[test]
    fn skipped_positions_are_never_handed_out_and_the_watermark_passes_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path());
        let positions = Positions::open_with_block(Arc::clone(&db), 10).unwrap();
        let held = positions.allocate().unwrap();
        positions.skip(1_000_000).unwrap();
        // A position in flight still holds the watermark below it.
        assert_eq!(positions.watermark(), held.position() - 1);
        held.complete();
        let after = positions.allocate().unwrap();
        assert!(after.position() > 1_000_000, "{after:?}");
        after.complete();
        assert_eq!(positions.watermark(), positions.allocate().unwrap().position() - 1);
        drop(positions);
        // After a restart too.
        let reopened = Positions::open_with_block(db, 10).unwrap();
        assert!(reopened.allocate().unwrap().position() > 1_000_000);
    }
}
