//! Push rules, read side.
//!
//! - `GET /_matrix/client/v3/pushrules/`
//! - `GET /_matrix/client/v3/pushrules/global/`
//!
//! Spec: client-server-api "Push Rules" (`data/api/client-server/pushrules.yaml`). Every user
//! has the server-default rule set (ruma's `Ruleset::server_default`), the same rules the
//! unread counts in /sync are computed with. Changing rules (PUT/DELETE) is not served yet, so
//! those paths answer 404 `M_UNRECOGNIZED`.

use ruma::{
    api::client::push::{get_pushrules_all, get_pushrules_global_scope},
    push::Ruleset,
};

use crate::{Result, api::extract::Ctx};

/// `GET /_matrix/client/v3/pushrules/`
pub async fn get_pushrules_all(
    ctx: Ctx,
    _req: get_pushrules_all::v3::Request,
) -> Result<get_pushrules_all::v3::Response> {
    Ok(get_pushrules_all::v3::Response::new(Ruleset::server_default(
        ctx.user_id()?,
    )))
}

/// `GET /_matrix/client/v3/pushrules/global/`
pub async fn get_pushrules_global_scope(
    ctx: Ctx,
    _req: get_pushrules_global_scope::v3::Request,
) -> Result<get_pushrules_global_scope::v3::Response> {
    Ok(get_pushrules_global_scope::v3::Response::new(Ruleset::server_default(
        ctx.user_id()?,
    )))
}
