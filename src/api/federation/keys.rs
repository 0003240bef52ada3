//! Signing keys (server-server-api "Retrieving server keys"):
//!
//! - `GET /_matrix/key/v2/server`: our keys, current and retired, signed by us;
//! - `GET /_matrix/key/v2/query/{serverName}` and `POST /_matrix/key/v2/query`: the notary, other
//!   servers' own key answers countersigned by us (fetched first when what is stored is not
//!   valid long enough).

use ruma::{
    MilliSecondsSinceUnixEpoch,
    api::federation::discovery::{get_remote_server_keys, get_remote_server_keys_batch, get_server_keys},
    serde::Raw,
};

use crate::{Error, Result, api::extract::Ctx, services::federation::remote_keys::NOTARY_FETCHES_PER_REQUEST};

/// Servers one batch query may name.
const MAX_SERVERS_PER_QUERY: usize = 100;

fn ms(ts: MilliSecondsSinceUnixEpoch) -> u64 {
    u64::from(ts.0)
}

/// `GET /_matrix/key/v2/server`
pub async fn get_server_keys(ctx: Ctx, _req: get_server_keys::v2::Request) -> Result<get_server_keys::v2::Response> {
    Ok(get_server_keys::v2::Response::new(
        ctx.services.federation.own_keys.answer_raw()?,
    ))
}

/// `GET /_matrix/key/v2/query/{serverName}`
pub async fn get_remote_server_keys(
    ctx: Ctx,
    req: get_remote_server_keys::v2::Request,
) -> Result<get_remote_server_keys::v2::Response> {
    let federation = &ctx.services.federation;
    let answers = federation
        .remote_keys
        .notary_answers(federation, &req.server_name, ms(req.minimum_valid_until_ts), true)
        .await?;
    Ok(get_remote_server_keys::v2::Response::new(
        answers.into_iter().map(Raw::from_json).collect(),
    ))
}

/// `POST /_matrix/key/v2/query`
pub async fn get_remote_server_keys_batch(
    ctx: Ctx,
    req: get_remote_server_keys_batch::v2::Request,
) -> Result<get_remote_server_keys_batch::v2::Response> {
    if req.server_keys.len() > MAX_SERVERS_PER_QUERY {
        return Err(Error::invalid_param(format!(
            "At most {MAX_SERVERS_PER_QUERY} servers per query"
        )));
    }
    let federation = &ctx.services.federation;
    let now = crate::util::now_ms();
    let mut server_keys = Vec::new();
    for (i, (server, criteria)) in req.server_keys.iter().enumerate() {
        let min_valid_until = criteria
            .values()
            .filter_map(|c| c.minimum_valid_until_ts.map(ms))
            .max()
            .unwrap_or(now);
        let answers = federation
            .remote_keys
            .notary_answers(federation, server, min_valid_until, i < NOTARY_FETCHES_PER_REQUEST)
            .await?;
        server_keys.extend(answers.into_iter().map(Raw::from_json));
    }
    Ok(get_remote_server_keys_batch::v2::Response::new(server_keys))
}
