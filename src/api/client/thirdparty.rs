//! Third-party lookup: the networks bridged into this server and their users and rooms.
//!
//! - `GET /_matrix/client/v3/thirdparty/protocols` and `/thirdparty/protocol/{protocol}`
//! - `GET /_matrix/client/v3/thirdparty/location/{protocol}` and `/thirdparty/location?alias=`
//! - `GET /_matrix/client/v3/thirdparty/user/{protocol}` and `/thirdparty/user?userid=`
//!
//! Spec: client-server-api "Third-party Lookups" (`data/api/client-server/third_party_lookup.yaml`).
//! Protocols come from application services (bridges). Hearth registers none yet, so no
//! protocol is known: the list is empty, a named protocol is 404 `M_NOT_FOUND` as the spec
//! says for an unknown one, and reverse lookups of Matrix ids find no third-party entries.

use ruma::api::client::thirdparty::{
    get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols, get_user_for_protocol,
    get_user_for_user_id,
};

use crate::{Error, Result, api::extract::Ctx};

// The route table requires an access token for each (ruma's `AuthScheme`).

fn unknown_protocol(protocol: &str) -> Error {
    let shown: String = protocol.chars().take(64).collect();
    Error::not_found(format!("Unknown third-party protocol {shown:?}"))
}

/// `GET /_matrix/client/v3/thirdparty/protocols`
pub async fn get_protocols(_ctx: Ctx, _req: get_protocols::v3::Request) -> Result<get_protocols::v3::Response> {
    Ok(get_protocols::v3::Response::new(Default::default()))
}

/// `GET /_matrix/client/v3/thirdparty/protocol/{protocol}`
pub async fn get_protocol(_ctx: Ctx, req: get_protocol::v3::Request) -> Result<get_protocol::v3::Response> {
    Err(unknown_protocol(&req.protocol))
}

/// `GET /_matrix/client/v3/thirdparty/location/{protocol}`
pub async fn get_location_for_protocol(
    _ctx: Ctx,
    req: get_location_for_protocol::v3::Request,
) -> Result<get_location_for_protocol::v3::Response> {
    Err(unknown_protocol(&req.protocol))
}

/// `GET /_matrix/client/v3/thirdparty/user/{protocol}`
pub async fn get_user_for_protocol(
    _ctx: Ctx,
    req: get_user_for_protocol::v3::Request,
) -> Result<get_user_for_protocol::v3::Response> {
    Err(unknown_protocol(&req.protocol))
}

/// `GET /_matrix/client/v3/thirdparty/location?alias=`: no bridged location maps to any alias.
pub async fn get_location_for_room_alias(
    _ctx: Ctx,
    _req: get_location_for_room_alias::v3::Request,
) -> Result<get_location_for_room_alias::v3::Response> {
    Ok(get_location_for_room_alias::v3::Response::new(Vec::new()))
}

/// `GET /_matrix/client/v3/thirdparty/user?userid=`: no bridged user maps to any Matrix id.
pub async fn get_user_for_user_id(
    _ctx: Ctx,
    _req: get_user_for_user_id::v3::Request,
) -> Result<get_user_for_user_id::v3::Response> {
    Ok(get_user_for_user_id::v3::Response::new(Vec::new()))
}
