//! OpenID.
//!
//! - `POST /_matrix/client/v3/user/{userId}/openid/request_token` (client-server-api "OpenID",
//!   `data/api/client-server/openid.yaml`)
//! - `GET /_matrix/federation/v1/openid/userinfo` (server-server-api "OpenID",
//!   `data/api/server-server/openid.yaml`)
//!
//! The userinfo endpoint is served although federation is off: widgets and call services
//! (Element Call's JWT service) check the tokens a client hands them there, as with Synapse,
//! which serves it on its `openid` listener resource. It is a plain actix handler because the
//! ruma types for it live in the federation API crate, which Hearth does not build yet.

use std::collections::HashMap;

use actix_web::{HttpRequest, HttpResponse, web};
use ruma::{api::client::account::request_openid_token, authentication::TokenType};

use crate::{
    Error, Result,
    api::{extract::Ctx, respond},
    services::{Services, openid::TOKEN_LIFETIME},
};

/// `POST /_matrix/client/v3/user/{userId}/openid/request_token`
pub async fn request_openid_token(
    ctx: Ctx,
    req: request_openid_token::v3::Request,
) -> Result<request_openid_token::v3::Response> {
    let token = ctx.services.openid.request_token(ctx.user_id()?, &req.user_id).await?;
    Ok(request_openid_token::v3::Response::new(
        token,
        TokenType::Bearer,
        ctx.services.config.server_name.clone(),
        TOKEN_LIFETIME,
    ))
}

/// `GET /_matrix/federation/v1/openid/userinfo?access_token=…`
pub async fn userinfo(services: web::Data<Services>, req: HttpRequest) -> HttpResponse {
    let Ok(query) = web::Query::<HashMap<String, String>>::from_query(req.query_string()) else {
        return respond::error(Error::invalid_param("Malformed query string"));
    };
    let Some(token) = query.get("access_token") else {
        return respond::error(Error::missing_param("Missing access_token query parameter"));
    };
    // A token outlives nothing: once its user is deactivated it names nobody.
    let user = services
        .openid
        .userinfo(token)
        .and_then(|user_id| match services.accounts.is_active(&user_id)? {
            true => Ok(user_id),
            false => Err(Error::unknown_token(false)),
        });
    match user {
        Ok(user_id) => HttpResponse::Ok().json(serde_json::json!({ "sub": user_id })),
        Err(e) => respond::error(e),
    }
}
