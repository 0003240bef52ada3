//! Federation: talking to other Matrix servers (server-server API). This module owns the switch
//! (`[federation] enabled`), who we talk to (`access`), our keys as others see them
//! (`own_keys`), other servers' keys (`remote_keys`, the notary too), and requests both ways:
//! outbound requests are resolved (`resolver`), signed with `X-Matrix` and sent (`transport`);
//! inbound ones are checked here ([`Federation::authenticate`]). PDUs and EDUs for other
//! servers are queued and delivered in transactions by `sender`.
//!
//! When federation is off nothing here ever opens a connection: every outbound call fails with
//! 403 before resolving anything.

pub mod access;
pub mod acl;
pub mod backfill;
pub mod device_lists;
pub mod edu;
pub mod forward;
pub mod gaps;
pub mod intake;
pub mod invite;
pub mod leave;
pub mod media;
pub mod membership;
pub mod own_keys;
pub mod pdu;
pub mod presence;
pub mod query;
pub mod remote_keys;
pub mod resolver;
pub mod sender;
pub mod serve;
pub mod to_device;
pub mod transport;

use std::{sync::Arc, time::Duration};

use http::StatusCode;
use ruma::{
    OwnedServerName, ServerName,
    api::{
        IncomingResponse, OutgoingRequest,
        auth_scheme::NoAuthentication,
        federation::authentication::{ServerSignatures, XMatrix, XMatrixSigningInput},
        path_builder::SinglePath,
    },
};

use crate::{
    Error, Result,
    config::Config,
    services::server_keys::ServerKeys,
    storage::{Db, tables::server_keys::ServerKeysTable},
};

/// Largest answer read from another server.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Time limit of one outbound request, resolution included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The federation service.
pub struct Federation {
    /// Federation on or off.
    pub enabled: bool,
    server_name: OwnedServerName,
    access: access::ServerAccess,
    /// Our keys.
    pub own_keys: own_keys::OwnKeys,
    /// Other servers' keys.
    pub remote_keys: remote_keys::RemoteKeys,
    resolver: resolver::Resolver,
    /// Inbound transaction answers, for replays.
    answered: intake::AnsweredTransactions,
    /// The outbound transaction queue and its delivery (`sender/`).
    pub sender: sender::Sender,
    /// When each local user's presence last went out (`presence.rs`).
    presence_sent: presence::PresenceSent,
    /// Other servers' users' profiles, as last fetched (`query.rs`).
    profiles: query::ProfileCache,
    /// Remote device lists: the resync queue and back-off (`device_lists`).
    pub device_lists: device_lists::DeviceListSync,
}

fn unauthorized(message: impl Into<String>) -> Error {
    Error::new(
        StatusCode::UNAUTHORIZED,
        ruma::api::error::ErrorKind::Unauthorized,
        message,
    )
}

fn remote_failed(server: &ServerName, message: impl std::fmt::Display) -> Error {
    Error::new(
        StatusCode::BAD_GATEWAY,
        ruma::api::error::ErrorKind::Unknown,
        format!("{server}: {message}"),
    )
}

impl Federation {
    /// The service, from the `[federation]` section.
    pub fn new(config: &Config, db: Arc<Db>, keys: Arc<ServerKeys>) -> Result<Federation> {
        let f = &config.federation;
        let sender = sender::Sender::new(Arc::clone(&db));
        let table = ServerKeysTable::new(db);
        let trusted = f
            .trusted_key_servers
            .iter()
            .filter_map(|name| ServerName::parse(name).ok())
            .collect();
        Ok(Federation {
            enabled: f.enabled,
            server_name: config.server_name.clone(),
            access: access::ServerAccess::new(f.allowed_servers.clone(), f.denied_servers.clone()),
            own_keys: own_keys::OwnKeys::new(config.server_name.clone(), keys, table.clone()),
            remote_keys: remote_keys::RemoteKeys::new(config.server_name.clone(), table, trusted),
            resolver: resolver::Resolver::new(resolver::ResolverSettings {
                dns_server: f.dns_server,
                extra_roots: f.extra_roots.clone(),
                allow_private: f.allow_private_destinations,
            })?,
            answered: crate::util::bounded::BoundedMap::new(intake::REMEMBERED_TRANSACTIONS),
            sender,
            presence_sent: crate::util::bounded::BoundedMap::new(presence::REMEMBERED_USERS),
            profiles: crate::util::bounded::BoundedMap::new(query::CACHED_PROFILES),
            device_lists: device_lists::DeviceListSync::default(),
        })
    }

    /// Our server name.
    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    /// Fails unless federation is on and `server` is one we may talk to.
    pub fn check_peer(&self, server: &ServerName) -> Result<()> {
        if !self.enabled {
            return Err(Error::forbidden("Federation is disabled on this server"));
        }
        if !self.access.permits(server) {
            return Err(Error::forbidden(format!("Federation with {server} is not allowed")));
        }
        Ok(())
    }

    /// Sends a request that needs no authentication (key fetches) to `destination`.
    pub async fn send_unsigned<R>(&self, destination: &ServerName, request: R) -> Result<R::IncomingResponse>
    where
        R: OutgoingRequest<Authentication = NoAuthentication, PathBuilder = SinglePath>,
    {
        use ruma::api::OutgoingRequestExt;
        let http = request
            .try_into_http_request::<Vec<u8>>(&format!("https://{destination}"), (), ())
            .map_err(|e| Error::internal(format!("cannot build a request to {destination}: {e}")))?;
        let response = self.send_http(destination, http).await?;
        parse_response::<R::IncomingResponse>(destination, &response)
    }

    /// Sends a request signed with `X-Matrix` to `destination`.
    pub async fn send_signed<R>(&self, destination: &ServerName, request: R) -> Result<R::IncomingResponse>
    where
        R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath>,
    {
        use ruma::api::OutgoingRequestExt;
        let keys = self.own_keys.current();
        let input = XMatrixSigningInput::new(self.server_name.clone(), destination.to_owned(), &keys.keypair);
        let http = request
            .try_into_http_request::<Vec<u8>>(&format!("https://{destination}"), input, ())
            .map_err(|e| Error::internal(format!("cannot build a request to {destination}: {e}")))?;
        let response = self.send_http(destination, http).await?;
        parse_response::<R::IncomingResponse>(destination, &response)
    }

    /// Resolves `destination` and sends `request` there (its URI's path and query).
    async fn send_http(
        &self,
        destination: &ServerName,
        request: http::Request<Vec<u8>>,
    ) -> Result<http::Response<Vec<u8>>> {
        self.send_http_limited(destination, request, MAX_RESPONSE_BYTES, REQUEST_TIMEOUT)
            .await
    }

    /// [`Self::send_http`] with its own limits: the answer's body at most `max_response_bytes`
    /// (a longer one is 502 `M_TOO_LARGE`), the whole exchange within `timeout`.
    async fn send_http_limited(
        &self,
        destination: &ServerName,
        mut request: http::Request<Vec<u8>>,
        max_response_bytes: usize,
        timeout: Duration,
    ) -> Result<http::Response<Vec<u8>>> {
        self.check_peer(destination)?;
        if destination == self.server_name {
            return Err(Error::internal("refusing to send a federation request to ourselves"));
        }
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        *request.uri_mut() = path
            .parse()
            .map_err(|e| Error::internal(format!("bad request path {path}: {e}")))?;
        let exchange = async {
            let target = self.resolver.resolve(destination).await?;
            self.resolver
                .transport()
                .send(&target, request, max_response_bytes, timeout)
                .await
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(remote_failed(destination, "timed out")),
        }
    }

    /// Checks the `X-Matrix` signature of an inbound request and returns the server that sent
    /// it: 401 `M_UNAUTHORIZED` for a missing or malformed header, a request meant for another
    /// server, an unknown key or a bad signature; 403 `M_FORBIDDEN` for a server we do not
    /// federate with.
    pub async fn authenticate<T: AsRef<[u8]>>(&self, request: &http::Request<T>) -> Result<OwnedServerName> {
        let x_matrix = XMatrix::extract_from_http_headers(request.headers())
            .map_err(|e| unauthorized(format!("Missing or malformed X-Matrix authorization: {e}")))?;
        let origin = x_matrix.origin.clone();
        if x_matrix.destination.as_deref().is_some_and(|d| d != self.server_name) {
            return Err(unauthorized("The request is meant for another server"));
        }
        if !self.access.permits(&origin) {
            return Err(Error::forbidden(format!("Federation with {origin} is not allowed")));
        }
        if origin == self.server_name {
            return Err(unauthorized("A request claiming to come from this server"));
        }
        let key_id = x_matrix.key.as_str();
        let key = self
            .remote_keys
            .key_valid_at(self, &origin, key_id, crate::util::now_ms())
            .await
            .map_err(|e| unauthorized(format!("Cannot check the signature of {origin}: {e}")))?
            .ok_or_else(|| unauthorized(format!("Unknown or expired key {key_id} of {origin}")))?;
        let map = remote_keys::key_map(&origin, key_id, &key);
        x_matrix
            .verify_http_request(request, &self.server_name, &map)
            .map_err(|e| unauthorized(format!("Invalid X-Matrix signature: {e}")))?;
        self.peer_is_back(&origin);
        Ok(origin)
    }
}

/// ruma's response type from another server's answer; their errors become 502s naming them.
fn parse_response<T: IncomingResponse>(server: &ServerName, response: &http::Response<Vec<u8>>) -> Result<T> {
    let borrowed = http::Response::builder()
        .status(response.status())
        .body(response.body().as_slice())
        .map_err(|e| Error::internal(e.to_string()))?;
    use ruma::api::IncomingResponseExt;
    T::try_from_http_response(borrowed).map_err(|e| {
        // The remote's own words, relayed where they are the answer to the client: its
        // refusal, and a room version one side does not support.
        let remote: serde_json::Value = serde_json::from_slice(response.body()).unwrap_or_default();
        let (errcode, said) = (remote["errcode"].as_str(), remote["error"].as_str().unwrap_or_default());
        match response.status() {
            StatusCode::NOT_FOUND => Error::not_found(format!("Not found on {server}")),
            StatusCode::FORBIDDEN if said.is_empty() => Error::forbidden(format!("{server} refused the request")),
            StatusCode::FORBIDDEN => Error::forbidden(format!(
                "{server} refused the request: {}",
                said.chars().take(500).collect::<String>()
            )),
            StatusCode::BAD_REQUEST if errcode == Some("M_INCOMPATIBLE_ROOM_VERSION") => {
                match remote["room_version"]
                    .as_str()
                    .and_then(|v| ruma::RoomVersionId::try_from(v).ok())
                {
                    Some(version) => membership::incompatible_room_version(&version),
                    None => remote_failed(server, "400 M_INCOMPATIBLE_ROOM_VERSION without a room version"),
                }
            }
            StatusCode::BAD_REQUEST if errcode == Some("M_UNSUPPORTED_ROOM_VERSION") => Error::new(
                StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::UnsupportedRoomVersion,
                format!("{server} does not support the room's version"),
            ),
            status => remote_failed(server, format!("{status}: {e}")),
        }
    })
}
