//! The application-service ping (client-server API, "Application service ping"; spec
//! `data/api/client-server/appservice_ping.yaml`; MSC2659).
//!
//! - `POST /_matrix/client/v1/appservice/{appserviceId}/ping` (and MSC2659's unstable path)
//!
//! Only the service's own `as_token` may call it. The token is checked here against the
//! registrations (`Appservices::by_as_token`), not by the request extractor: the route is a raw
//! one whose request is still parsed with ruma's type.

use std::sync::Arc;

use actix_web::{HttpRequest, web};
use ruma::api::{Metadata, client::appservice::request_ping};

use crate::{
    Result,
    api::{
        extract::{self, AuthRequirement},
        respond,
        router::RouteTable,
    },
    services::{Services, appservice::transactions, rate_limit::LimitClass},
};

/// Registers the ping on every path ruma knows for it.
pub fn configure(table: &mut RouteTable) {
    for path in ruma::api::path_builder::PathBuilder::all_paths(&request_ping::v1::Request::PATH_BUILDER) {
        table.add_route(path, move || {
            web::post().to(
                move |req: HttpRequest, payload: web::Payload, services: web::Data<Services>| async move {
                    match ping(&req, payload, services.into_inner(), path).await {
                        Ok(response) => respond::ruma_response(response),
                        Err(error) => respond::error(error),
                    }
                },
            )
        });
    }
}

/// The `as_token` from `Authorization: Bearer …` or the `access_token` query parameter.
fn token(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned());
    }
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
}

/// `POST /_matrix/client/v1/appservice/{appserviceId}/ping`
async fn ping(
    req: &HttpRequest,
    payload: web::Payload,
    services: Arc<Services>,
    template: &'static str,
) -> Result<request_ping::v1::Response> {
    let token = token(req);
    let prepared = extract::prepare(
        req,
        payload,
        &services,
        AuthRequirement::None,
        None::<LimitClass>,
        template,
    )
    .await?;
    let request: request_ping::v1::Request = extract::parse(&prepared)?;
    let duration = transactions::ping(
        &services,
        token.as_deref(),
        &request.appservice_id,
        request.transaction_id.as_ref().map(|t| t.as_str()),
    )
    .await?;
    Ok(request_ping::v1::Response::new(duration))
}
