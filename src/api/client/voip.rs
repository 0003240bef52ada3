//! Calls.
//!
//! - `GET /_matrix/client/v3/voip/turnServer` (client-server-api "Voice over IP",
//!   `data/api/client-server/voip.yaml`)
//! - `GET /_matrix/client/v1/rtc/transports` and its unstable path
//!   `/_matrix/client/unstable/org.matrix.msc4143/rtc/transports` (MSC4143, MSC4519 in
//!   `shared/msc/`)

use ruma::api::{
    IncomingRequest, Metadata,
    client::{rtc::RtcTransport, rtc::transports, voip::get_turn_server_info},
    path_builder::VersionHistory,
};

use crate::{Error, Result, api::extract::Ctx, services::voip, util};

/// `GET /_matrix/client/v3/voip/turnServer`
///
/// Answered as JSON: with no TURN server configured the answer is `{}`, as Synapse gives (the
/// spec has no error for it, and clients then call without TURN), which ruma's response type
/// cannot express.
pub async fn get_turn_server_info(ctx: Ctx, _req: get_turn_server_info::v3::Request) -> Result<serde_json::Value> {
    let now_secs = util::now_ms() / 1000;
    let Some(creds) = voip::turn_credentials(&ctx.services.config.voip, ctx.user_id()?, now_secs) else {
        return Ok(serde_json::json!({}));
    };
    Ok(serde_json::json!({
        "username": creds.username,
        "password": creds.password,
        "uris": creds.uris,
        "ttl": creds.ttl.as_secs(),
    }))
}

/// The RTC transports request under both its paths: ruma knows only the unstable one, and
/// MSC4519 names `/_matrix/client/v1/rtc/transports`, which the SDK will ask first once stable.
pub struct TransportsRequest(transports::v1::Request);

impl Metadata for TransportsRequest {
    const METHOD: http::Method = <transports::v1::Request as Metadata>::METHOD;
    const RATE_LIMITED: bool = <transports::v1::Request as Metadata>::RATE_LIMITED;
    type Authentication = <transports::v1::Request as Metadata>::Authentication;
    type PathBuilder = VersionHistory;
    const PATH_BUILDER: VersionHistory = VersionHistory::new(
        &[
            (None, "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports"),
            (None, "/_matrix/client/v1/rtc/transports"),
        ],
        &[],
        None,
        None,
    );
}

impl IncomingRequest for TransportsRequest {
    type EndpointError = <transports::v1::Request as IncomingRequest>::EndpointError;
    type OutgoingResponse = transports::v1::Response;

    fn try_from_http_request_inner(
        request: http::Request<&[u8]>,
        path_args: &[&str],
    ) -> Result<Self, ruma::api::error::DeserializationError> {
        transports::v1::Request::try_from_http_request_inner(request, path_args).map(Self)
    }
}

/// The configured transports as ruma's type (also the well-known `rtc_foci`).
pub fn configured_transports(ctx: &Ctx) -> Result<Vec<RtcTransport>> {
    ctx.services
        .config
        .rtc_transports
        .iter()
        .map(|t| serde_json::from_value(serde_json::Value::Object(t.clone())))
        .collect::<Result<_, _>>()
        .map_err(|e| Error::internal(format!("rtc.transports: {e}")))
}

/// `GET /_matrix/client/v1/rtc/transports`
pub async fn get_rtc_transports(ctx: Ctx, _req: TransportsRequest) -> Result<transports::v1::Response> {
    Ok(transports::v1::Response::new(configured_transports(&ctx)?))
}
