//! Delivery of the queue (see the parent module): [`spawn`] starts it, one task per destination
//! with something queued ([`deliver`]) builds a transaction from the queue's head and the
//! waiting EDUs, sends it with `Federation::send_signed`, retries the same transaction after a
//! back-off until it is answered 200, then deletes its PDUs and goes on until the queue is
//! empty.

use std::{
    sync::{Arc, Weak, atomic::Ordering},
    time::Duration,
};

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedTransactionId, ServerName,
    api::federation::transactions::{edu::Edu, send_transaction_message::v1 as send},
    serde::Raw,
};
use serde_json::value::RawValue;

use super::{
    DURABLE_EDU_BYTES_PER_TXN, Dest, MAX_DURABLE_EDUS_PER_TXN, MAX_EDUS_PER_TXN, MAX_PDUS_PER_TXN, SCAN_STEP, Sender,
    Started,
};
use crate::{
    Result,
    services::Services,
    storage::tables::federation_queue::{QueuedEdu, QueuedPdu},
};

/// A transaction built for one destination, kept as is until it is answered 200.
struct Txn {
    id: OwnedTransactionId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// (sequence number, event id, PDU).
    pdus: Vec<(u64, String, Box<RawValue>)>,
    /// The sequence numbers of its persistent EDUs (the first of `edus`).
    durable: Vec<u64>,
    edus: Vec<Raw<Edu>>,
}

impl Sender {
    /// The next transaction for `dest`, or `None` when nothing is queued.
    fn next_transaction(&self, dest: &Dest) -> Result<Option<Txn>> {
        dest.lock().dirty = false;
        let entries = self.table.first::<QueuedPdu>(dest.name.as_str(), MAX_PDUS_PER_TXN)?;
        let (durable, mut raw_edus) = self.durable_edus(dest)?;
        let edus: Vec<serde_json::Value> = {
            let mut state = dest.lock();
            let n = state.edus.len().min(MAX_EDUS_PER_TXN - raw_edus.len());
            state.edus.drain(..n).collect()
        };
        if entries.is_empty() && edus.is_empty() && raw_edus.is_empty() {
            return Ok(None);
        }
        let mut pdus = Vec::with_capacity(entries.len());
        let mut bad = Vec::new();
        for (seq, entry) in entries {
            match String::from_utf8(entry.pdu)
                .ok()
                .and_then(|text| RawValue::from_string(text).ok())
            {
                Some(raw) => pdus.push((seq, entry.event_id, raw)),
                None => bad.push(seq),
            }
        }
        if !bad.is_empty() {
            // Never valid JSON, never sendable: dropped rather than blocking the queue.
            tracing::error!(destination = %dest.name, count = bad.len(), "queued PDUs that are not JSON dropped");
            let mut batch = self.table.batch();
            for seq in bad {
                self.table.queue_delete(&mut batch, dest.name.as_str(), seq);
            }
            batch.commit_blocking()?;
        }
        raw_edus.extend(
            edus.iter()
                .filter_map(|edu| serde_json::value::to_raw_value(edu).ok().map(Raw::from_json)),
        );
        let n = self.txn_counter.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Txn {
            id: format!("{}.{}", self.process, base36(n)).into(),
            origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
            pdus,
            durable,
            edus: raw_edus,
        }))
    }

    /// The first persistent EDUs of `dest` for a transaction: their sequence numbers and the
    /// EDUs (at most [`MAX_DURABLE_EDUS_PER_TXN`], about [`DURABLE_EDU_BYTES_PER_TXN`]).
    fn durable_edus(&self, dest: &Dest) -> Result<(Vec<u64>, Vec<Raw<Edu>>)> {
        let entries = self
            .edu_table
            .first::<QueuedEdu>(dest.name.as_str(), MAX_DURABLE_EDUS_PER_TXN)?;
        let (mut seqs, mut edus, mut bad) = (Vec::new(), Vec::new(), Vec::new());
        let mut bytes = 0;
        for (seq, entry) in entries {
            if bytes > 0 && bytes + entry.edu.len() > DURABLE_EDU_BYTES_PER_TXN {
                break;
            }
            bytes += entry.edu.len();
            match String::from_utf8(entry.edu)
                .ok()
                .and_then(|text| RawValue::from_string(text).ok())
            {
                Some(raw) => {
                    seqs.push(seq);
                    edus.push(Raw::from_json(raw));
                }
                None => bad.push(seq),
            }
        }
        if !bad.is_empty() {
            tracing::error!(destination = %dest.name, count = bad.len(), "queued EDUs that are not JSON dropped");
            let mut batch = self.edu_table.batch();
            for seq in bad {
                self.edu_table.queue_delete(&mut batch, dest.name.as_str(), seq);
            }
            batch.commit_blocking()?;
        }
        Ok((seqs, edus))
    }

    /// Ends `dest`'s delivery task unless something was queued since it looked.
    fn finish(&self, dest: &Dest) -> bool {
        let mut state = dest.lock();
        if state.dirty || !state.edus.is_empty() {
            return false;
        }
        state.running = false;
        true
    }

    /// After a 200: the transaction's PDUs leave the queue and the back-off ends.
    async fn delivered(&self, dest: &Dest, txn: &Txn) -> Result<()> {
        if !txn.pdus.is_empty() || !txn.durable.is_empty() {
            let mut batch = self.table.batch();
            for (seq, _, _) in &txn.pdus {
                self.table.queue_delete(&mut batch, dest.name.as_str(), *seq);
            }
            for seq in &txn.durable {
                self.edu_table.queue_delete(&mut batch, dest.name.as_str(), *seq);
            }
            batch.commit().await?;
        }
        let mut state = dest.lock();
        // (Bounds not read yet are read from storage when needed, after this delete.)
        if let Some((last, _, _)) = txn.pdus.last()
            && state.loaded
        {
            state.head = state.head.max(last + 1);
        }
        if let Some(last) = txn.durable.last()
            && state.durable_loaded
        {
            state.durable_head = state.durable_head.max(last + 1);
        }
        if state.backoff.take().is_some() {
            tracing::info!(destination = %dest.name, "federation destination reachable again");
        }
        state.dropped = 0;
        Ok(())
    }

    /// After a failure: the next back-off of `dest`.
    fn failed(&self, dest: &Dest) -> Duration {
        let mut state = dest.lock();
        let initial = Duration::from_millis(self.backoff_ms.0.load(Ordering::Relaxed));
        let max = Duration::from_millis(self.backoff_ms.1.load(Ordering::Relaxed));
        let next = match state.backoff {
            None => {
                tracing::info!(destination = %dest.name, "federation destination unreachable: backing off");
                initial
            }
            Some(last) => (last * 2).min(max),
        };
        state.backoff = Some(next);
        next
    }
}

pub(super) fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Starts delivery on the current runtime (with federation on; otherwise nothing): every
/// destination with queued PDUs is served, and later queuing starts delivery at once. The
/// tasks hold the services weakly and stop once they are dropped.
pub fn spawn(services: &Arc<Services>) {
    let federation = &services.federation;
    if !federation.enabled {
        return;
    }
    let started = Started {
        runtime: tokio::runtime::Handle::current(),
        services: Arc::downgrade(services),
    };
    if federation.sender.started.set(started).is_err() {
        return;
    }
    let weak = Arc::downgrade(services);
    tokio::spawn(async move {
        let mut destinations = 0usize;
        for durable in [false, true] {
            let mut from = Vec::new();
            loop {
                let Some(services) = weak.upgrade() else {
                    return;
                };
                let federation = &services.federation;
                let table = if durable {
                    &federation.sender.edu_table
                } else {
                    &federation.sender.table
                };
                let (names, next) = match table.destinations(&from, SCAN_STEP) {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the federation queue");
                        return;
                    }
                };
                for name in names {
                    let Ok(server) = ServerName::parse(&name) else {
                        tracing::warn!(destination = name, "federation queue entry for an invalid server name");
                        continue;
                    };
                    if let Err(e) = federation.check_peer(&server) {
                        tracing::info!(destination = %server, reason = %e, "queued PDUs left undelivered");
                        continue;
                    }
                    destinations += 1;
                    federation.sender.kick(&federation.sender.dest(&server));
                }
                match next {
                    Some(next) => from = next,
                    None => break,
                }
            }
        }
        if destinations > 0 {
            tracing::info!(destinations, "delivering queued federation transactions");
        }
    });
}

/// One destination's delivery task: builds a transaction, sends it, retries it after a
/// back-off until it is answered 200, and goes on until the queue is empty.
pub(super) async fn deliver(services: Weak<Services>, dest: Arc<Dest>) {
    let mut txn: Option<Txn> = None;
    loop {
        let Some(services) = services.upgrade() else {
            return;
        };
        let federation = &services.federation;
        let sender = &federation.sender;
        let current = match txn.take() {
            Some(current) => Ok(current),
            None => match sender.next_transaction(&dest) {
                Ok(Some(next)) => Ok(next),
                Ok(None) if sender.finish(&dest) => return,
                Ok(None) => continue,
                Err(e) => Err(e),
            },
        };
        let outcome = match current {
            Ok(current) => {
                let mut request = send::Request::new(
                    current.id.clone(),
                    federation.server_name().to_owned(),
                    current.origin_server_ts,
                );
                request.pdus = current.pdus.iter().map(|(_, _, pdu)| pdu.clone()).collect();
                request.edus = current.edus.clone();
                let answer = {
                    let _permit = sender.in_flight.acquire().await;
                    federation.send_signed(&dest.name, request).await
                };
                match answer {
                    Ok(response) => {
                        for (event_id, result) in &response.pdus {
                            if let Err(error) = result {
                                tracing::info!(destination = %dest.name, %event_id, error, "PDU refused by the destination");
                            }
                        }
                        sender.delivered(&dest, &current).await
                    }
                    Err(e) => {
                        txn = Some(current);
                        Err(e)
                    }
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = outcome {
            let wait = sender.failed(&dest);
            tracing::debug!(destination = %dest.name, error = %e, retry_in_ms = wait.as_millis() as u64, "federation transaction failed");
            drop(services);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = dest.back.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_ids_are_short_and_distinct() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(36 * 36 + 35), "10z");
    }
}
