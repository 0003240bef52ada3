//! Server-Server API handlers (spec: server-server-api), mounted only when `[federation]
//! enabled` is on; otherwise every path here answers 404 `M_UNRECOGNIZED` like any unknown
//! path. Requests that ruma marks `ServerSignatures` are checked for a valid `X-Matrix`
//! signature before the handler runs (`extract::prepare`), which then finds the sending server
//! in `ctx.origin`.

pub mod directory;
pub mod events;
pub mod keys;
pub mod query;
pub mod version;
