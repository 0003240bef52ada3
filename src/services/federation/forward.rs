//! This server's own events, handed over by the rooms service once durable
//! (`Rooms::forward_local_events`), queued for the other servers of their room (`sender.rs`).
//! The channel is bounded: when the queue falls behind, writers wait.

use std::sync::{Arc, Weak};

use crate::services::Services;

/// Events waiting between the rooms service and the queue.
const CHANNEL: usize = 1_024;

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
        while let Some(event) = events.recv().await {
            let Some(services) = services.upgrade() else {
                return;
            };
            if let Err(e) = services
                .federation
                .queue_pdu(&event.destinations, &event.event_id, &event.bytes)
                .await
            {
                tracing::error!(event_id = %event.event_id, error = %e, "event not queued for federation");
            }
        }
    });
}
