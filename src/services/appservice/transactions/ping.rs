//! The ping both ways (client-server `POST /_matrix/client/v1/appservice/{appserviceId}/ping`,
//! then `POST {url}/_matrix/app/v1/ping` to the service).

use std::time::{Duration, Instant};

use ruma::api::error::{BadStatusErrorData, ErrorKind};
use serde_json::json;

use super::{MAX_ANSWER_BYTES, Outbox, REQUEST_TIMEOUT};
use crate::{
    Error, Result,
    services::{Services, media::fetch},
};

/// `POST /_matrix/client/v1/appservice/{appserviceId}/ping` for the service whose `as_token`
/// is `token`: pings `POST {url}/_matrix/app/v1/ping` and answers how long it took. The errors
/// are the spec's: 403 `M_FORBIDDEN` (the token is no service's, or another service's), 400
/// `M_URL_NOT_SET`, 502 `M_BAD_STATUS` (with `status` and `body`) or `M_CONNECTION_FAILED`,
/// 504 `M_CONNECTION_TIMEOUT`.
pub async fn ping(
    services: &Services,
    token: Option<&str>,
    id: &str,
    transaction_id: Option<&str>,
) -> Result<Duration> {
    let token = token.ok_or_else(Error::missing_token)?;
    let service = services
        .appservices
        .by_as_token(token)
        .ok_or_else(|| Error::forbidden("Only application services can use the /appservice/ping endpoint"))?;
    if service.id() != id {
        return Err(Error::forbidden("Mismatching application service ID in path"));
    }
    let Some(url) = &service.registration.url else {
        return Err(Error::new(
            http::StatusCode::BAD_REQUEST,
            ErrorKind::UrlNotSet,
            "The application service does not have a URL set",
        ));
    };
    let url = format!("{}/_matrix/app/v1/ping", url.trim_end_matches('/'));
    let body =
        serde_json::to_vec(&json!({ "transaction_id": transaction_id })).map_err(|e| Error::internal(e.to_string()))?;
    let auth = format!("Bearer {}", service.registration.hs_token);
    let timeout = services.appservices.outbox().map_or(REQUEST_TIMEOUT, Outbox::timeout);
    let policy = services
        .appservices
        .outbox()
        .map(|o| o.policy.clone())
        .unwrap_or_default();
    let start = Instant::now();
    // The inner request gets more time than the outer limit, so a timeout is told apart from
    // a failure.
    let answer = tokio::time::timeout(
        timeout,
        fetch::send_json(
            "POST",
            &url,
            &policy,
            &[("Authorization", &auth)],
            &body,
            MAX_ANSWER_BYTES,
            timeout * 2,
        ),
    )
    .await;
    let (status, answer) = match answer {
        Err(_) => {
            return Err(Error::new(
                http::StatusCode::GATEWAY_TIMEOUT,
                ErrorKind::ConnectionTimeout,
                "The application service did not answer in time",
            ));
        }
        Ok(Err(e)) => {
            return Err(Error::new(
                http::StatusCode::BAD_GATEWAY,
                ErrorKind::ConnectionFailed,
                format!("Cannot reach the application service: {}", e),
            ));
        }
        Ok(Ok(answer)) => answer,
    };
    if !(200..300).contains(&status) {
        let status_code = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
        return Err(Error::new(
            http::StatusCode::BAD_GATEWAY,
            ErrorKind::BadStatus({
                let mut data = BadStatusErrorData::new();
                data.status = Some(status_code);
                data.body = Some(String::from_utf8_lossy(&answer).into_owned());
                data
            }),
            format!("HTTP {status}"),
        ));
    }
    let took = start.elapsed();
    services.appservices.service_is_back(id);
    Ok(took)
}
