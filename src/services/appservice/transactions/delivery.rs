//! Delivery of the queues (see the parent module): [`spawn`] starts it; one task per service
//! with something waiting ([`deliver`]) sends the transaction in flight or builds and stores the
//! next, retries it unchanged after a back-off until it is answered 2xx, then clears it.

use std::{
    sync::{Arc, Weak, atomic::Ordering},
    time::Duration,
};

use ruma::UserId;
use serde_json::{Value, json};

use super::{GATHER, MAX_ANSWER_BYTES, MAX_EPHEMERAL_PER_TXN, MAX_EVENTS_PER_TXN, Outbox, Queue, Started};
use crate::{
    Error, Result,
    services::{Services, appservice::Registered, media::fetch},
    storage::tables::appservice_queue::{AsTxnState, InFlight},
};

/// Starts delivery on the current runtime: every service with queued events or a transaction
/// in flight is served, and later queuing starts delivery at once. The tasks hold the
/// services weakly and stop once they are dropped.
pub fn spawn(services: &Arc<Services>) {
    let Some(outbox) = services.appservices.outbox() else {
        return;
    };
    let started = Started {
        runtime: tokio::runtime::Handle::current(),
        services: Arc::downgrade(services),
    };
    if outbox.started.set(started).is_err() {
        return;
    }
    for queue in &outbox.queues {
        let id = queue.service.id();
        let waiting = outbox.table.bounds(id).map(|b| b.is_some()).unwrap_or(false)
            || outbox.table.state(id).map(|s| s.in_flight.is_some()).unwrap_or(false);
        if waiting && queue.service.registration.url.is_some() {
            tracing::info!(appservice = id, "delivering queued appservice transactions");
            outbox.kick(queue);
        }
    }
}

/// The transaction to send next for `queue`: the one in flight, else a new one built from the
/// queue's head and the waiting ephemeral data and stored (synced) before it is sent; `None`
/// when nothing waits.
async fn next_transaction(services: &Services, outbox: &Outbox, queue: &Queue) -> Result<Option<InFlight>> {
    let id = queue.service.id();
    let mut stored = outbox.table.state(id)?;
    if let Some(in_flight) = stored.in_flight {
        queue.lock().backlog = true;
        return Ok(Some(in_flight));
    }
    queue.lock().dirty = false;
    let entries = outbox.table.first(id, MAX_EVENTS_PER_TXN)?;
    queue.lock().backlog = entries.len() >= MAX_EVENTS_PER_TXN;
    let (ephemeral, to_device): (Vec<Value>, Vec<Value>) = {
        let mut state = queue.lock();
        let n = state.ephemeral.len().min(MAX_EPHEMERAL_PER_TXN);
        let m = state.to_device.len().min(MAX_EPHEMERAL_PER_TXN);
        (
            state.ephemeral.drain(..n).collect(),
            state.to_device.drain(..m).collect(),
        )
    };
    if entries.is_empty() && ephemeral.is_empty() && to_device.is_empty() {
        return Ok(None);
    }
    let last_seq = entries.last().map(|(seq, _)| *seq);
    let fail = |e: serde_json::Error| Error::internal(e.to_string());
    // Written by hand: the queued events are JSON already and are copied, never parsed.
    let mut body = Vec::with_capacity(entries.iter().map(|(_, e)| e.len() + 1).sum::<usize>() + 64);
    body.extend_from_slice(b"{\"events\":[");
    let mut first = true;
    for (_, event) in &entries {
        if serde_json::from_slice::<serde::de::IgnoredAny>(event).is_err() {
            tracing::error!(appservice = id, "a queued event is not JSON: left out");
            continue;
        }
        if !first {
            body.push(b',');
        }
        first = false;
        body.extend_from_slice(event);
    }
    body.push(b']');
    let mut field = |name: &str, value: &Value| -> Result<()> {
        body.extend_from_slice(format!(",\"{name}\":").as_bytes());
        serde_json::to_writer(&mut body, value).map_err(fail)
    };
    if queue.service.receive_ephemeral {
        let (ephemeral, to_device) = (json!(ephemeral), json!(to_device));
        field("ephemeral", &ephemeral)?;
        field("de.sorunome.msc2409.ephemeral", &ephemeral)?;
        field("to_device", &to_device)?;
        field("de.sorunome.msc2409.to_device", &to_device)?;
    }
    if queue.service.msc3202 {
        let (counts, fallback) = key_counts(services, &queue.service, &entries, &to_device);
        if !counts.is_empty() {
            let counts = Value::Object(counts);
            field("org.matrix.msc3202.device_one_time_keys_count", &counts)?;
            field("org.matrix.msc3202.device_one_time_key_counts", &counts)?;
        }
        if !fallback.is_empty() {
            field(
                "org.matrix.msc3202.device_unused_fallback_key_types",
                &Value::Object(fallback),
            )?;
        }
    }
    body.push(b'}');
    let in_flight = InFlight {
        txn_id: stored.next_txn_id,
        last_seq,
        body,
    };
    stored.next_txn_id += 1;
    stored.in_flight = Some(in_flight.clone());
    let mut batch = outbox.table.batch();
    outbox.table.queue_set_state(&mut batch, id, &stored)?;
    batch.commit().await?;
    Ok(Some(in_flight))
}

/// MSC3202: the one-time key counts and unused fallback key types of the devices of the
/// namespace users a transaction concerns (senders and member targets of its events in the
/// namespace, recipients of its to-device messages), as Synapse computes them:
/// user → device → counts, user → device → algorithms.
fn key_counts(
    services: &Services,
    service: &Registered,
    entries: &[(u64, Vec<u8>)],
    to_device: &[Value],
) -> (serde_json::Map<String, Value>, serde_json::Map<String, Value>) {
    let mut users = std::collections::BTreeSet::new();
    for (_, event) in entries {
        let Ok(event) = serde_json::from_slice::<Value>(event) else {
            continue;
        };
        users.insert(event["sender"].as_str().unwrap_or_default().to_owned());
        if event["type"] == "m.room.member" {
            users.insert(event["state_key"].as_str().unwrap_or_default().to_owned());
        }
    }
    users.extend(
        to_device
            .iter()
            .filter_map(|m| m["to_user_id"].as_str().map(str::to_owned)),
    );
    let (mut counts, mut fallback) = (serde_json::Map::new(), serde_json::Map::new());
    for user in users {
        let Ok(user_id) = UserId::parse(&user) else { continue };
        if !service.is_user_in_namespace(&user_id) {
            continue;
        }
        let (mut user_counts, mut user_fallback) = (serde_json::Map::new(), serde_json::Map::new());
        for device in services.device_ids(&user_id, None, None).unwrap_or_default() {
            if let Ok(keys) = services.keys.key_counts(&user_id, &device) {
                user_counts.insert(device.clone(), json!(keys.one_time));
                user_fallback.insert(device, json!(keys.unused_fallback));
            }
        }
        if !user_counts.is_empty() {
            counts.insert(user.clone(), Value::Object(user_counts));
            fallback.insert(user, Value::Object(user_fallback));
        }
    }
    (counts, fallback)
}

/// After a 2xx: the transaction's events leave the queue, the record is cleared and the
/// back-off ends.
async fn delivered(outbox: &Outbox, queue: &Queue, txn: &InFlight) -> Result<()> {
    let id = queue.service.id();
    let mut batch = outbox.table.batch();
    if let Some(last) = txn.last_seq {
        outbox.table.queue_delete_below(&mut batch, id, last + 1);
    }
    let state = AsTxnState {
        next_txn_id: txn.txn_id + 1,
        in_flight: None,
    };
    outbox.table.queue_set_state(&mut batch, id, &state)?;
    // Unsynced: the record of the transaction in flight was synced before it was sent, so a
    // power loss that undoes this batch only sends the same transaction (same id) again.
    batch.commit_unsynced()?;
    let mut state = queue.lock();
    if let Some(last) = txn.last_seq {
        state.head = state.head.max(last + 1);
    }
    if state.backoff.take().is_some() {
        tracing::info!(appservice = id, "appservice reachable again");
    }
    state.dropped = 0;
    Ok(())
}

/// After a failure: the next back-off of `queue`.
fn failed(outbox: &Outbox, queue: &Queue) -> Duration {
    let mut state = queue.lock();
    let initial = Duration::from_millis(outbox.timings_ms.0.load(Ordering::Relaxed));
    let max = Duration::from_millis(outbox.timings_ms.1.load(Ordering::Relaxed));
    let next = match state.backoff {
        None => {
            tracing::info!(appservice = queue.service.id(), "appservice unreachable: backing off");
            initial
        }
        Some(last) => (last * 2).min(max),
    };
    state.backoff = Some(next);
    next
}

/// Ends `queue`'s delivery task unless something was queued since it looked.
fn finish(queue: &Queue) -> bool {
    let mut state = queue.lock();
    if state.dirty || !state.ephemeral.is_empty() || !state.to_device.is_empty() {
        return false;
    }
    state.running = false;
    true
}

/// Sends one transaction; `Ok` on a 2xx answer.
async fn send(outbox: &Outbox, service: &Registered, txn: &InFlight) -> Result<()> {
    let Some(url) = &service.registration.url else {
        return Err(Error::internal("appservice without a URL"));
    };
    let url = format!(
        "{}/_matrix/app/v1/transactions/{}",
        url.trim_end_matches('/'),
        txn.txn_id
    );
    let auth = format!("Bearer {}", service.registration.hs_token);
    let (status, body) = fetch::send_json(
        "PUT",
        &url,
        &outbox.policy,
        &[("Authorization", &auth)],
        &txn.body,
        MAX_ANSWER_BYTES,
        outbox.timeout(),
    )
    .await?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(Error::internal(format!(
            "answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        )))
    }
}

/// One service's delivery task: sends the transaction in flight (or builds the next), retries
/// it after a back-off until it is answered 2xx, and goes on until nothing waits.
pub(super) async fn deliver(services: Weak<Services>, queue: Arc<Queue>) {
    loop {
        let Some(services) = services.upgrade() else {
            return;
        };
        let Some(outbox) = services.appservices.outbox() else {
            return;
        };
        let outcome = match next_transaction(&services, outbox, &queue).await {
            Ok(Some(txn)) => match send(outbox, &queue.service, &txn).await {
                // Not behind: the events sent meanwhile gather into fuller, fewer transactions
                // (each costs a synced write and a request).
                Ok(()) => delivered(outbox, &queue, &txn)
                    .await
                    .map(|()| txn.last_seq.is_some() && !queue.lock().backlog),
                Err(e) => Err(e),
            },
            Ok(None) if finish(&queue) => return,
            Ok(None) => continue,
            Err(e) => Err(e),
        };
        if let Ok(true) = outcome {
            drop(services);
            tokio::time::sleep(GATHER).await;
            continue;
        }
        if let Err(e) = outcome {
            let wait = failed(outbox, &queue);
            tracing::debug!(appservice = queue.service.id(), error = %e, retry_in_ms = wait.as_millis() as u64, "appservice transaction failed");
            drop(services);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = queue.back.notified() => {}
            }
        }
    }
}
