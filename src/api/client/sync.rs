//! Syncing.
//!
//! - `GET /_matrix/client/v3/sync` (initial and incremental, long-polling with `timeout`)
//!
//! Spec: client-server-api "Syncing" (`data/api/client-server/sync.yaml`).

use ruma::api::client::sync::sync_events;

use crate::{
    Result,
    api::extract::Ctx,
    services::sync::{self, Params},
};

/// `GET /_matrix/client/v3/sync`
pub async fn sync_events(ctx: Ctx, req: sync_events::v3::Request) -> Result<sync_events::v3::Response> {
    let session = ctx.session()?;
    let user_id = &session.user_id;
    let params = Params {
        device_id: Some(session.device_id.to_string()),
        since: req.since,
        full_state: req.full_state,
        use_state_after: req.use_state_after,
        timeout: req.timeout,
        set_presence: req.set_presence,
        filter: req.filter,
    };
    sync::sync(&ctx.services, user_id, params).await
}
