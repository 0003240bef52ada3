//! Server-Server API handlers (spec: server-server-api), mounted only when `[federation]
//! enabled` is on; otherwise every path here answers 404 `M_UNRECOGNIZED` like any unknown
//! path. Requests that ruma marks `ServerSignatures` are checked for a valid `X-Matrix`
//! signature before the handler runs (`extract::prepare`), which then finds the sending server
//! in `ctx.origin`.

pub mod directory;
pub mod e2ee;
pub mod events;
pub mod keys;
pub mod media;
pub mod membership;
pub mod query;
pub mod send;
pub mod version;

use crate::{Error, Result, api::extract::Ctx};

/// The server that signed the request (every handler here is behind `X-Matrix`).
fn origin(ctx: &Ctx) -> Result<&ruma::ServerName> {
    ctx.origin
        .as_deref()
        .ok_or_else(|| Error::internal("a federation handler without an origin"))
}
