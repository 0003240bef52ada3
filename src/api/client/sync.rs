//! Syncing.
//!
//! - `GET /_matrix/client/v3/sync` (initial and incremental, long-polling with `timeout`)
//!
//! Spec: client-server-api "Syncing" (`data/api/client-server/sync.yaml`).
//!
//! An initial sync's turn (`services::sync::InitialSyncs`) is held until its answer is
//! serialised, so the memory of answers under construction stays bounded ([`answer`]).

use actix_web::HttpResponse;
use ruma::api::client::sync::sync_events;

use crate::{
    Result,
    api::{extract::Ctx, respond},
    services::sync::{self, Answer, Params},
};

/// `GET /_matrix/client/v3/sync`
pub async fn sync_events(ctx: Ctx, req: sync_events::v3::Request) -> Result<Answer> {
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

/// Serialises the answer, then gives the turn back.
pub fn answer(answer: Answer) -> HttpResponse {
    let Answer { response, turn } = answer;
    let http = respond::ruma_response(response);
    drop(turn);
    http
}
