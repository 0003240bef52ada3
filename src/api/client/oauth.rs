//! The OAuth 2.0 API (client-server API "OAuth 2.0 API", `data/api/client-server/
//! oauth_server_metadata.yaml`; RFC 6749, 7636, 7591, 7009, 8628): the JSON endpoints.
//!
//! - `GET /_matrix/client/v1/auth_metadata` (and MSC2965's
//!   `/_matrix/client/unstable/org.matrix.msc2965/auth_metadata`): server metadata
//! - `POST /_hearth/oauth2/register`: dynamic client registration (RFC 7591)
//! - `POST /_hearth/oauth2/token`: the `authorization_code`, `refresh_token` and
//!   `urn:ietf:params:oauth:grant-type:device_code` grants
//! - `POST /_hearth/oauth2/revoke`: token revocation (RFC 7009)
//! - `POST /_hearth/oauth2/device`: device authorization (RFC 8628)
//!
//! The browser side (authorization endpoint, sign-in, sign-up, consent, device verification
//! and account pages) is in [`super::oauth_pages`]. All of these are raw actix handlers: their
//! bodies are forms and their errors are OAuth's `{"error", "error_description"}`, not Matrix
//! JSON. With `oauth.enabled = false` each answers 404 `M_UNRECOGNIZED`.

use std::{collections::HashMap, sync::Arc};

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use ruma::{
    OwnedDeviceId, OwnedUserId,
    api::{Metadata, client::discovery::get_authorization_server_metadata::v1 as metadata},
    serde::Raw,
};
use serde_json::json;

use crate::{
    Error, Result,
    api::{
        extract::{self, AuthRequirement},
        respond,
        router::RouteTable,
    },
    config::RegistrationMode,
    services::{
        Services,
        oauth::{DEVICE_CODE_GRANT, Exchange, OAuthError},
        rate_limit::LimitClass,
    },
};

/// Where the endpoints live, below the public base URL.
pub const AUTHORIZE: &str = "/_hearth/oauth2/authorize";
const REGISTER: &str = "/_hearth/oauth2/register";
const TOKEN: &str = "/_hearth/oauth2/token";
const REVOKE: &str = "/_hearth/oauth2/revoke";
const DEVICE: &str = "/_hearth/oauth2/device";
/// The device verification page (RFC 8628 `verification_uri`).
pub const DEVICE_VERIFY: &str = "/_hearth/account/device";
/// The account management page.
pub const ACCOUNT: &str = "/_hearth/account/";

/// Registers the metadata endpoint on ruma's paths (in the route table, which groups
/// `/_matrix/…` paths) and the OAuth endpoints.
pub fn configure(table: &mut RouteTable, cfg: &mut web::ServiceConfig) {
    let paths = ruma::api::path_builder::PathBuilder::all_paths(&metadata::Request::PATH_BUILDER);
    for path in paths {
        table.add_route(path, || web::get().to(auth_metadata));
    }
    for (path, handler) in [
        (REGISTER, register as fn(_, _, _) -> _),
        (TOKEN, token),
        (REVOKE, revoke),
        (DEVICE, device_authorization),
    ] {
        cfg.service(
            web::resource(path)
                .route(web::post().to(handler))
                .default_service(web::to(respond::method_not_allowed)),
        );
    }
}

type Handler = std::pin::Pin<Box<dyn std::future::Future<Output = HttpResponse>>>;

/// 404 `M_UNRECOGNIZED` when OAuth is switched off.
pub fn check_enabled(services: &Services) -> Result<()> {
    match services.oauth.enabled() {
        true => Ok(()),
        false => Err(Error::unrecognized()),
    }
}

/// The public base URL (no trailing slash): `public_baseurl`, else `well_known.client`, else
/// the request's `Host` over http (local development).
pub fn base_url(req: &HttpRequest, services: &Services) -> String {
    match &services.config.public_baseurl {
        Some(base) => base.clone(),
        None => {
            let host = req
                .headers()
                .get(actix_web::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b'/' && b != b'@'))
                .map(str::to_owned)
                .unwrap_or_else(|| services.config.server_name.to_string());
            format!("http://{host}")
        }
    }
}

/// An OAuth error body (RFC 6749 §5.2), 400 (401 for `invalid_client`, as §5.2 allows).
pub fn oauth_error(code: &str, description: &str) -> HttpResponse {
    let status = match code {
        "invalid_client" => StatusCode::UNAUTHORIZED,
        _ => StatusCode::BAD_REQUEST,
    };
    HttpResponse::build(status)
        .content_type("application/json")
        .insert_header(("Cache-Control", "no-store"))
        .body(json!({"error": code, "error_description": description}).to_string())
}

fn answer(result: std::result::Result<HttpResponse, OAuthError>) -> HttpResponse {
    match result {
        Ok(response) => response,
        Err(OAuthError::OAuth { code, description }) => oauth_error(code, &description),
        Err(OAuthError::Other(e)) => respond::error(e),
    }
}

/// Parses an `application/x-www-form-urlencoded` body or query; a parameter given twice is
/// refused (RFC 6749 §3.1).
pub fn parse_form(bytes: &[u8]) -> std::result::Result<HashMap<String, String>, OAuthError> {
    let mut out = HashMap::new();
    for (key, value) in url::form_urlencoded::parse(bytes) {
        if out.insert(key.clone().into_owned(), value.into_owned()).is_some() {
            return Err(OAuthError::OAuth {
                code: "invalid_request",
                description: format!("Parameter {key} is repeated"),
            });
        }
    }
    Ok(out)
}

async fn read(
    req: &HttpRequest,
    payload: web::Payload,
    services: &Arc<Services>,
    class: LimitClass,
    path: &'static str,
) -> std::result::Result<(extract::Ctx, bytes::Bytes), OAuthError> {
    check_enabled(services)?;
    let prepared = extract::prepare(req, payload, services, AuthRequirement::None, Some(class), path).await?;
    let body = bytes::Bytes::copy_from_slice(prepared.body());
    Ok((prepared.ctx, body))
}

async fn auth_metadata(req: HttpRequest, services: web::Data<Services>) -> HttpResponse {
    let services = services.into_inner();
    if let Err(e) = check_enabled(&services) {
        return respond::error(e);
    }
    let base = base_url(&req, &services);
    let mut body = json!({
        "issuer": format!("{base}/"),
        "authorization_endpoint": format!("{base}{AUTHORIZE}"),
        "token_endpoint": format!("{base}{TOKEN}"),
        "registration_endpoint": format!("{base}{REGISTER}"),
        "revocation_endpoint": format!("{base}{REVOKE}"),
        "device_authorization_endpoint": format!("{base}{DEVICE}"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query", "fragment"],
        "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_CODE_GRANT],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": [
            "urn:matrix:client:api:*",
            "urn:matrix:client:device:*",
            "urn:matrix:org.matrix.msc2967.client:api:*",
            "urn:matrix:org.matrix.msc2967.client:device:*",
        ],
        "account_management_uri": format!("{base}{ACCOUNT}"),
        "account_management_actions_supported": [
            "org.matrix.profile",
            "org.matrix.devices_list",
            "org.matrix.device_view",
            "org.matrix.device_delete",
            "org.matrix.sessions_list",
            "org.matrix.session_view",
            "org.matrix.session_end",
        ],
    });
    if services.registration.mode() != RegistrationMode::Closed {
        body["prompt_values_supported"] = json!(["create"]);
    }
    match serde_json::value::to_raw_value(&body) {
        Ok(raw) => respond::ruma_response(metadata::Response::new(Raw::from_json(raw))),
        Err(e) => respond::error(Error::internal(format!("metadata: {e}"))),
    }
}

fn register(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let services = services.into_inner();
        answer(
            async {
                let (_, body) = read(&req, payload, &services, LimitClass::Register, REGISTER).await?;
                let metadata: serde_json::Value = serde_json::from_slice(&body).map_err(|_| OAuthError::OAuth {
                    code: "invalid_client_metadata",
                    description: "The body is not JSON".into(),
                })?;
                let registered = services.oauth.register_client(metadata).await?;
                Ok(HttpResponse::Created()
                    .content_type("application/json")
                    .insert_header(("Cache-Control", "no-store"))
                    .body(registered.to_string()))
            }
            .await,
        )
    })
}

fn token(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let services = services.into_inner();
        answer(
            async {
                let (ctx, body) = read(&req, payload, &services, LimitClass::Client, TOKEN).await?;
                let form = parse_form(&body)?;
                let get = |k: &str| form.get(k).map(String::as_str);
                match get("grant_type") {
                    Some("authorization_code") => {
                        match services.oauth.exchange_code(
                            get("code"),
                            get("client_id"),
                            get("redirect_uri"),
                            get("code_verifier"),
                        )? {
                            Ok(exchange) => issue(&services, exchange, true, ctx.ip).await,
                            Err(revoke) => {
                                if let Some((user_id, device_id)) = revoke {
                                    revoke_device(&services, &user_id, &device_id).await?;
                                    tracing::warn!(%user_id, %device_id, "authorization code replayed: its device is revoked");
                                }
                                Err(OAuthError::OAuth {
                                    code: "invalid_grant",
                                    description: "The code was already used".into(),
                                })
                            }
                        }
                    }
                    Some("refresh_token") => {
                        let refresh = get("refresh_token").ok_or_else(|| OAuthError::OAuth {
                            code: "invalid_request",
                            description: "refresh_token is required".into(),
                        })?;
                        let owner = services.sessions.token_owner(refresh)?;
                        services.oauth.check_refresh_client(
                            get("client_id"),
                            owner.as_ref().map(|(user, device)| (user.as_str(), device.as_str())),
                        )?;
                        let grant = services.sessions.refresh(refresh).await.map_err(|e| match e {
                            Error::Matrix { .. } => OAuthError::OAuth {
                                code: "invalid_grant",
                                description: "Unknown, used or revoked refresh token".into(),
                            },
                            other => OAuthError::Other(other),
                        })?;
                        Ok(token_response(json!({
                            "access_token": grant.access_token,
                            "token_type": "Bearer",
                            "expires_in": grant.expires_in.map(|d| d.as_secs()),
                            "refresh_token": grant.refresh_token,
                        })))
                    }
                    Some(DEVICE_CODE_GRANT) => {
                        let exchange = services.oauth.poll_device(get("device_code"), get("client_id"))?;
                        issue(&services, exchange, false, ctx.ip).await
                    }
                    None => Err(OAuthError::OAuth {
                        code: "invalid_request",
                        description: "grant_type is required".into(),
                    }),
                    Some(_) => Err(OAuthError::OAuth {
                        code: "unsupported_grant_type",
                        description: "Supported: authorization_code, refresh_token, device_code".into(),
                    }),
                }
            }
            .await,
        )
    })
}

fn token_response(body: serde_json::Value) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Pragma", "no-cache"))
        .body(body.to_string())
}

/// Issues the device and tokens of a completed grant, through the ordinary sessions service.
async fn issue(
    services: &Services,
    exchange: Exchange,
    from_code: bool,
    ip: Option<String>,
) -> std::result::Result<HttpResponse, OAuthError> {
    let invalid = |d: &str| OAuthError::OAuth {
        code: "invalid_grant",
        description: d.into(),
    };
    if !services.accounts.is_active(&exchange.user_id)? {
        return Err(invalid("The account is deactivated"));
    }
    let device_id = exchange.scope.device_id.clone();
    let grant = services
        .sessions
        .login(
            &exchange.user_id,
            Some(device_id.clone()),
            Some(exchange.client_name.clone()),
            true,
            ip,
        )
        .await?;
    if grant.new_device {
        services
            .keys
            .device_added(&services.rooms, &exchange.user_id, grant.device_id.as_str())
            .await?;
    }
    services
        .oauth
        .bind_device(exchange.user_id.as_str(), device_id.as_str(), &exchange.client_id)
        .await?;
    if from_code && services.oauth.code_issued(&exchange.code_hash, &device_id) {
        revoke_device(services, &exchange.user_id, &device_id).await?;
        return Err(invalid("The code was already used"));
    }
    tracing::info!(user_id = %exchange.user_id, %device_id, "signed in through OAuth");
    Ok(token_response(json!({
        "access_token": grant.access_token,
        "token_type": "Bearer",
        "expires_in": grant.expires_in.map(|d| d.as_secs()),
        "refresh_token": grant.refresh_token,
        "scope": exchange.scope.granted,
    })))
}

async fn revoke_device(services: &Services, user_id: &OwnedUserId, device_id: &OwnedDeviceId) -> Result<()> {
    services
        .delete_devices(user_id, Some(&[device_id.to_string()]), None)
        .await
}

fn revoke(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let services = services.into_inner();
        answer(
            async {
                let (_, body) = read(&req, payload, &services, LimitClass::Client, REVOKE).await?;
                let form = parse_form(&body)?;
                let token = form.get("token").ok_or_else(|| OAuthError::OAuth {
                    code: "invalid_request",
                    description: "token is required".into(),
                })?;
                // RFC 7009 §2.2: an unknown or already revoked token is answered 200 too.
                if let Some((user_id, device_id)) = services.sessions.token_owner(token)? {
                    services
                        .delete_devices(&user_id, Some(std::slice::from_ref(&device_id)), None)
                        .await?;
                    tracing::info!(%user_id, %device_id, "OAuth token revoked");
                }
                Ok(HttpResponse::Ok()
                    .content_type("application/json")
                    .insert_header(("Cache-Control", "no-store"))
                    .body("{}"))
            }
            .await,
        )
    })
}

fn device_authorization(req: HttpRequest, payload: web::Payload, services: web::Data<Services>) -> Handler {
    Box::pin(async move {
        let services = services.into_inner();
        answer(
            async {
                let (_, body) = read(&req, payload, &services, LimitClass::Register, DEVICE).await?;
                let form = parse_form(&body)?;
                let get = |k: &str| form.get(k).map(String::as_str);
                let grant = services.oauth.start_device(get("client_id"), get("scope"))?;
                let base = base_url(&req, &services);
                let verify = format!("{base}{DEVICE_VERIFY}");
                let complete = format!(
                    "{verify}?{}",
                    url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("user_code", &grant.user_code)
                        .finish()
                );
                Ok(token_response(json!({
                    "device_code": grant.device_code,
                    "user_code": grant.user_code,
                    "verification_uri": verify,
                    "verification_uri_complete": complete,
                    "expires_in": grant.expires_in.as_secs(),
                    "interval": grant.interval.as_secs(),
                })))
            }
            .await,
        )
    })
}
