//! This server's own events, handed over by the rooms service once durable
//! (`Rooms::forward_local_events`), queued for the other servers of their room (`sender.rs`).
//! The channel is bounded: when the queue falls behind, writers wait. Each event carries an
//! unsent mark from its own batch until it is queued (`Rooms::forwarded`); at start, the events
//! a crash left marked are queued first (`Rooms::unsent_local_events`). A local user's join,
//! once queued, is followed by their presence (`presence.rs`).

use std::sync::{Arc, Weak};

use crate::services::{Services, rooms::Outbound};

/// Events waiting between the rooms service and the queue.
const CHANNEL: usize = 1_024;
/// Events left unsent by the last run read per step at start.
const RECOVERY_STEP: usize = 1_000;

/// Starts forwarding (with federation on; otherwise nothing). The task holds the services
/// weakly, so it never keeps them open at shutdown.
pub fn spawn(services: &Arc<Services>) {
    if !services.federation.enabled {
        return;
    }
    let Some(mut events) = services.rooms.forward_local_events(CHANNEL) else {
        return;
    };
    let services: Weak<Services> = Arc::downgrade(services);
    tokio::spawn(async move {
        if let Some(services) = services.upgrade() {
            queue_left_unsent(&services).await;
        }
        while let Some(event) = events.recv().await {
            let Some(services) = services.upgrade() else {
                return;
            };
            queue(&services, event).await;
        }
    });
}

/// Queues one event; its unsent mark goes once it is queued.
async fn queue(services: &Services, event: Outbound) -> bool {
    match services
        .federation
        .queue_pdu(&event.destinations, &event.event_id, &event.bytes)
        .await
    {
        Ok(()) => {
            services.rooms.forwarded(event.short_event);
            if let Some((room_id, user_id)) = std::str::from_utf8(&event.bytes)
                .ok()
                .and_then(super::presence::joined_member)
            {
                services.presence_on_join(&room_id, &user_id);
            }
            true
        }
        Err(e) => {
            tracing::error!(event_id = %event.event_id, error = %e, "event not queued for federation");
            false
        }
    }
}

/// Queues the events the last run made durable but did not queue.
async fn queue_left_unsent(services: &Services) {
    let mut recovered = 0usize;
    let mut last_first = None;
    loop {
        let step = match services.rooms.unsent_local_events(RECOVERY_STEP) {
            Ok(step) => step,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the events left unsent");
                return;
            }
        };
        // A mark that cannot be cleared would come back forever.
        let first = step.first().map(|e| e.short_event);
        if first.is_none() || first == last_first {
            break;
        }
        last_first = first;
        for event in step {
            if !queue(services, event).await {
                // Left marked: tried again at the next start.
                return;
            }
            recovered += 1;
        }
    }
    if recovered > 0 {
        tracing::info!(events = recovered, "queued our events a stop had left unsent");
    }
}
