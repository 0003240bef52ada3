//! Simplified sliding sync.
//!
//! - `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync` (MSC4186 as Element X
//!   sends it: `pos`, `timeout` and `set_presence` in the query; extensions of MSC3884, 3885,
//!   3959, 3960 and 3961)
//!
//! Spec: not in the spec yet; `shared/msc/4186-simplified-sliding-sync.synapse-experimental.md`.

use ruma::api::client::sync::sync_events::v5;

use crate::{Result, api::extract::Ctx, services::sync::sliding};

/// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`
pub async fn sliding_sync(ctx: Ctx, req: v5::Request) -> Result<v5::Response> {
    let session = ctx.session()?;
    let answer = sliding::sliding_sync(
        &ctx.services,
        (&session.user_id, session.device_id.as_str()),
        req.into(),
    )
    .await?;
    Ok(answer.into())
}
