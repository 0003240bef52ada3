//! `GET /.well-known/matrix/client` and `GET /.well-known/matrix/server`.
//!
//! Spec: client-server-api "Server Discovery" (`data/api/client-server/wellknown.yaml`) and
//! server-server-api "Resolving server names". Each answers 404 `M_NOT_FOUND` unless the
//! operator configured it (`[well_known]`). The client answer carries the MatrixRTC transports of
//! `[rtc]` as `org.matrix.msc4143.rtc_foci` (MSC4143) when there are any.

use actix_web::{HttpResponse, web};
use ruma::api::client::discovery::discover_homeserver::{self, HomeserverInfo};

use crate::{
    Error, Result,
    api::{extract::Ctx, respond},
    services::Services,
};

/// `GET /.well-known/matrix/client`
pub async fn discover_homeserver(
    ctx: Ctx,
    _req: discover_homeserver::Request,
) -> Result<discover_homeserver::Response> {
    let base_url = ctx
        .services
        .config
        .well_known_client
        .clone()
        .ok_or_else(|| Error::not_found("No client discovery information is configured"))?;
    let mut response = discover_homeserver::Response::new(HomeserverInfo::new(base_url));
    // MatrixRTC transports (MSC4143), absent when none are configured.
    response.rtc_foci = super::voip::configured_transports(&ctx)?;
    Ok(response)
}

/// `GET /.well-known/matrix/server` (plain actix handler: ruma types for it live in the
/// federation API).
pub async fn discover_server(services: web::Data<Services>) -> HttpResponse {
    match &services.config.well_known_server {
        Some(server) => HttpResponse::Ok().json(serde_json::json!({ "m.server": server })),
        None => respond::error(Error::not_found("No server discovery information is configured")),
    }
}
