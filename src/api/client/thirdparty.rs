//! Third-party lookup: the networks bridged into this server and their users and rooms.
//!
//! - `GET /_matrix/client/v3/thirdparty/protocols` and `/thirdparty/protocol/{protocol}`
//! - `GET /_matrix/client/v3/thirdparty/location/{protocol}` and `/thirdparty/location?alias=`
//! - `GET /_matrix/client/v3/thirdparty/user/{protocol}` and `/thirdparty/user?userid=`
//!
//! Spec: client-server-api "Third-party Lookups" (`data/api/client-server/third_party_lookup.yaml`).
//! Protocols come from application services (bridges) declaring them in `protocols`; each
//! lookup is asked of the services concerned (`services/appservice/query.rs`) and their answers
//! merged. A protocol no service declares is 404 `M_NOT_FOUND`; answers that do not have the
//! spec's shape are dropped.

use ruma::{
    api::client::thirdparty::{
        get_location_for_protocol, get_location_for_room_alias, get_protocol, get_protocols, get_user_for_protocol,
        get_user_for_user_id,
    },
    thirdparty::{Location, Protocol, User},
};
use serde::de::DeserializeOwned;

use crate::{Error, Result, api::extract::Ctx};

// The route table requires an access token for each (ruma's `AuthScheme`).

fn unknown_protocol(protocol: &str) -> Error {
    let shown: String = protocol.chars().take(64).collect();
    Error::not_found(format!("Unknown third-party protocol {shown:?}"))
}

/// The entries of a service's answer that have the spec's shape.
fn typed<T: DeserializeOwned>(values: Vec<serde_json::Value>) -> Vec<T> {
    values
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect()
}

/// The lookup fields of a request, without the client's own token.
fn fields(fields: std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    fields
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "access_token" | "user_id" | "device_id"))
        .collect()
}

/// `GET /_matrix/client/v3/thirdparty/protocols`
pub async fn get_protocols(ctx: Ctx, _req: get_protocols::v3::Request) -> Result<get_protocols::v3::Response> {
    let protocols = ctx
        .services
        .appservices
        .thirdparty_protocols()
        .await
        .into_iter()
        .filter_map(|(name, value)| Some((name, serde_json::from_value::<Protocol>(value).ok()?)))
        .collect();
    Ok(get_protocols::v3::Response::new(protocols))
}

/// `GET /_matrix/client/v3/thirdparty/protocol/{protocol}`
pub async fn get_protocol(ctx: Ctx, req: get_protocol::v3::Request) -> Result<get_protocol::v3::Response> {
    let value = ctx
        .services
        .appservices
        .thirdparty_protocol(&req.protocol)
        .await
        .ok_or_else(|| unknown_protocol(&req.protocol))?;
    let protocol: Protocol = serde_json::from_value(value).map_err(|_| unknown_protocol(&req.protocol))?;
    Ok(get_protocol::v3::Response::new(protocol))
}

/// `GET /_matrix/client/v3/thirdparty/location/{protocol}`
pub async fn get_location_for_protocol(
    ctx: Ctx,
    req: get_location_for_protocol::v3::Request,
) -> Result<get_location_for_protocol::v3::Response> {
    let services = &ctx.services.appservices;
    if !services.knows_protocol(&req.protocol) {
        return Err(unknown_protocol(&req.protocol));
    }
    let found = services
        .thirdparty_lookup("location", Some(&req.protocol), &fields(req.fields))
        .await;
    Ok(get_location_for_protocol::v3::Response::new(typed::<Location>(found)))
}

/// `GET /_matrix/client/v3/thirdparty/user/{protocol}`
pub async fn get_user_for_protocol(
    ctx: Ctx,
    req: get_user_for_protocol::v3::Request,
) -> Result<get_user_for_protocol::v3::Response> {
    let services = &ctx.services.appservices;
    if !services.knows_protocol(&req.protocol) {
        return Err(unknown_protocol(&req.protocol));
    }
    let found = services
        .thirdparty_lookup("user", Some(&req.protocol), &fields(req.fields))
        .await;
    Ok(get_user_for_protocol::v3::Response::new(typed::<User>(found)))
}

/// `GET /_matrix/client/v3/thirdparty/location?alias=`: the bridged locations of an alias.
pub async fn get_location_for_room_alias(
    ctx: Ctx,
    req: get_location_for_room_alias::v3::Request,
) -> Result<get_location_for_room_alias::v3::Response> {
    let query = [("alias".to_owned(), req.alias.to_string())];
    let found = ctx
        .services
        .appservices
        .thirdparty_lookup("location", None, &query)
        .await;
    Ok(get_location_for_room_alias::v3::Response::new(typed::<Location>(found)))
}

/// `GET /_matrix/client/v3/thirdparty/user?userid=`: the bridged users of a Matrix id.
pub async fn get_user_for_user_id(
    ctx: Ctx,
    req: get_user_for_user_id::v3::Request,
) -> Result<get_user_for_user_id::v3::Response> {
    let query = [("userid".to_owned(), req.userid.to_string())];
    let found = ctx.services.appservices.thirdparty_lookup("user", None, &query).await;
    Ok(get_user_for_user_id::v3::Response::new(typed::<User>(found)))
}
