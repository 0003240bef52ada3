//! `GET /_matrix/federation/v1/version` (server-server-api "Server implementation").

use ruma::api::federation::discovery::get_server_version;

use crate::{Result, api::extract::Ctx};

/// `GET /_matrix/federation/v1/version`
pub async fn get_server_version(
    _ctx: Ctx,
    _req: get_server_version::v1::Request,
) -> Result<get_server_version::v1::Response> {
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("Hearth".into());
    server.version = Some(env!("CARGO_PKG_VERSION").into());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(response)
}
