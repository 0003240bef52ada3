//! What every request goes through before its handler: the client's address (forwarding
//! headers believed only from `trusted_proxies`), the body (bounded by `max_request_size`), the
//! access token, the rate limit, and the conversion of the actix request into the
//! `http::Request` that ruma's request types parse.

use std::{net::IpAddr, sync::Arc};

use actix_web::{HttpRequest, web};
use futures_util::StreamExt;
use ruma::{
    OwnedUserId, UserId,
    api::{
        client::uiaa::{AuthData, AuthType},
        error::FromHttpRequestError,
    },
};

use crate::{
    Error, Result,
    services::{
        Services, appservice,
        media::ssrf::IpRange,
        rate_limit::{LimitClass, address_key},
        sessions::Session,
        uiaa::flow,
    },
};

/// Whether an endpoint needs an access token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthRequirement {
    /// No token is read.
    None,
    /// A token is used when present.
    Optional,
    /// A valid token is required.
    Required,
    /// A federation request: a valid `X-Matrix` signature of another server is required.
    Server,
    /// Only an application service's `as_token` is read (`/register`, `/login`); any other
    /// token sent along is ignored, as Synapse does.
    AppserviceOptional,
}

/// What a handler gets besides its request: the services and who is asking.
pub struct Ctx {
    /// Every service.
    pub services: Arc<Services>,
    /// The authenticated session, when the request carried a valid token.
    pub session: Option<Session>,
    /// The client's address.
    pub ip: Option<String>,
    /// The server that signed a federation request.
    pub origin: Option<ruma::OwnedServerName>,
    /// The request carried an access token (read or not).
    pub token_sent: bool,
}

impl Ctx {
    /// The session of an endpoint that requires authentication.
    pub fn session(&self) -> Result<&Session> {
        self.session.as_ref().ok_or_else(Error::missing_token)
    }

    /// The authenticated user.
    pub fn user_id(&self) -> Result<&UserId> {
        Ok(&self.session()?.user_id)
    }

    /// Re-proves the requester's identity with their password through user-interactive auth
    /// (for password changes, deactivation, device deletion) and returns their session.
    pub async fn confirm_with_password(&self, auth: Option<&AuthData>) -> Result<&Session> {
        let session = self.session()?;
        let flows = vec![flow(AuthType::Password)];
        self.services
            .uiaa
            .authenticate(&self.services, flows, auth, Some(&session.user_id))
            .await?;
        Ok(session)
    }

    /// The authenticated user, owned.
    pub fn owned_user_id(&self) -> Result<OwnedUserId> {
        Ok(self.session()?.user_id.clone())
    }
}

/// A request with its body read and its requester known.
pub struct Prepared {
    /// The handler's context.
    pub ctx: Ctx,
    /// Percent-decoded path variables, in path order.
    pub path_args: Vec<String>,
    method: http::Method,
    uri: http::Uri,
    headers: http::HeaderMap,
    body: bytes::Bytes,
}

impl Prepared {
    /// The raw body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The request as ruma's parsers take it.
    pub fn http_request(&self) -> http::Request<&[u8]> {
        let mut request = http::Request::new(&self.body[..]);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// Reads the body, authenticates and rate-limits a request.
pub async fn prepare(
    req: &HttpRequest,
    payload: web::Payload,
    services: &Arc<Services>,
    auth: AuthRequirement,
    limit: Option<LimitClass>,
    template: &'static str,
) -> Result<Prepared> {
    let mut prepared = prepare_head(req, services, auth, limit, template).await?;
    prepared.body = read_body(req, payload, services.config.max_request_size).await?;
    if auth == AuthRequirement::Server {
        prepared.ctx.origin = Some(services.federation.authenticate(&prepared.http_request()).await?);
    }
    // An empty POST body reads as `{}`, as Synapse allows for the endpoints whose fields are
    // all optional (clients send `join`, `leave`, `logout` with no body); an endpoint with
    // required fields still answers M_BAD_JSON / M_MISSING_PARAM.
    if prepared.body.is_empty() && req.method() == actix_web::http::Method::POST {
        prepared.body = bytes::Bytes::from_static(b"{}");
    }
    Ok(prepared)
}

/// Parses ruma's request type `R` from a prepared request. Some ruma parsers panic on odd
/// input (`POST /login` with no `type`); that is a bad request, not a reason to drop the
/// connection.
pub fn parse<R: ruma::api::IncomingRequest>(prepared: &Prepared) -> Result<R> {
    use ruma::api::IncomingRequestExt;
    let args: Vec<&str> = prepared.path_args.iter().map(String::as_str).collect();
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        R::try_from_http_request(prepared.http_request(), &args)
    }))
    .map_err(|_| Error::bad_json("Malformed request"))?;
    parsed.map_err(|e| request_error(e, prepared.body()))
}

/// Authenticates and rate-limits a request without reading its body, for handlers that stream
/// the body themselves (media uploads); ruma sees an empty body.
pub async fn prepare_head(
    req: &HttpRequest,
    services: &Arc<Services>,
    auth: AuthRequirement,
    limit: Option<LimitClass>,
    template: &str,
) -> Result<Prepared> {
    let client = req
        .peer_addr()
        .map(|peer| client_address(peer.ip(), req.headers(), &services.config.trusted_proxies));
    let ip = client.map(|a| a.to_string());
    let token = match auth {
        AuthRequirement::None | AuthRequirement::Server => None,
        _ => access_token(req),
    };
    let service = token.as_deref().and_then(|t| services.appservices.by_as_token(t));
    let session = match (auth, token.as_deref(), service) {
        (AuthRequirement::Required, None, _) => return Err(Error::missing_token()),
        (_, Some(_), Some(service)) => {
            let query: Vec<(String, String)> = form_urlencoded_pairs(req.query_string()).collect();
            let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
            let device = param("device_id").or_else(|| param("org.matrix.msc3202.device_id"));
            Some(appservice::client_server::authenticate(services, service, param("user_id"), device).await?)
        }
        (AuthRequirement::AppserviceOptional, _, _) | (_, None, _) => None,
        (_, Some(token), None) => Some(services.sessions.authenticate(token, ip.as_deref()).await?),
    };
    // Application services are exempt when their registration says `rate_limited: false`,
    // their sender always, and their registrations of users always.
    let exempt = session
        .as_ref()
        .and_then(|s| s.appservice.as_ref().map(|service| (s, service)))
        .is_some_and(|(s, service)| {
            service.registration.rate_limited == Some(false)
                || s.user_id == service.sender
                || limit == Some(LimitClass::Register)
        });
    if let Some(class) = limit.filter(|_| !exempt) {
        let key = match &session {
            Some(s) if class.per_user() => s.user_id.to_string(),
            _ => client.map(address_key).unwrap_or_default(),
        };
        services.rate_limit.check(class, &key)?;
    }
    let path_args = path_args(template, req.uri().path())?;
    let uri: http::Uri = req
        .uri()
        .to_string()
        .parse()
        .map_err(|_| Error::invalid_param("Malformed request URI"))?;
    let method = http::Method::from_bytes(req.method().as_str().as_bytes()).map_err(|_| Error::unrecognized())?;
    let mut headers = http::HeaderMap::with_capacity(req.headers().len());
    for (name, value) in req.headers() {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_str().as_bytes()),
            http::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(name, value);
        }
    }
    Ok(Prepared {
        ctx: Ctx {
            services: Arc::clone(services),
            session,
            ip,
            origin: None,
            token_sent: token.is_some(),
        },
        path_args,
        method,
        uri,
        headers,
        body: bytes::Bytes::new(),
    })
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the rightmost
/// address of the forwarding chain (`X-Forwarded-For`, else `Forwarded`) that is not itself a
/// trusted proxy. Entries left of that were written by the client and prove nothing. An entry
/// that is no address (`unknown`, an obfuscated name) ends the walk at the last proxy.
fn client_address(peer: IpAddr, headers: &actix_web::http::header::HeaderMap, trusted: &[IpRange]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|range| range.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(client) {
        return client;
    }
    for hop in forwarding_chain(headers).into_iter().rev() {
        match hop {
            Some(ip) => client = ip.to_canonical(),
            None => return client,
        }
        if !is_trusted(client) {
            return client;
        }
    }
    client
}

/// The addresses of `X-Forwarded-For` (every header line, in order) or, when it is absent, the
/// `for=` parameters of `Forwarded` (RFC 7239), leftmost first; `None` for an entry that is no
/// address.
fn forwarding_chain(headers: &actix_web::http::header::HeaderMap) -> Vec<Option<IpAddr>> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    };
    let forwarded_for = values("x-forwarded-for");
    if !forwarded_for.is_empty() {
        return forwarded_for
            .iter()
            .flat_map(|line| line.split(','))
            .map(parse_hop)
            .collect();
    }
    values("forwarded")
        .iter()
        .flat_map(|line| line.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim().eq_ignore_ascii_case("for").then(|| parse_hop(value))
            })
        })
        .collect()
}

/// One hop: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`, quoted or not.
fn parse_hop(text: &str) -> Option<IpAddr> {
    let text = text.trim().trim_matches('"');
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = text.parse::<std::net::SocketAddr>() {
        return Some(socket.ip());
    }
    text.trim_start_matches('[').split(']').next()?.parse().ok()
}

/// The access token from `Authorization: Bearer …` or the deprecated `access_token` query
/// parameter.
fn access_token(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned());
    }
    form_urlencoded_pairs(req.query_string())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v)
}

fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        Some((
            percent_decode(&k.replace('+', " ")).ok()?,
            percent_decode(&v.replace('+', " ")).ok()?,
        ))
    })
}

async fn read_body(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<bytes::Bytes> {
    let too_large = || Error::too_large(format!("Request body is larger than {limit} bytes"));
    if let Some(length) = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && length > limit
    {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| Error::bad_json(format!("Could not read the request body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// The values of the `{variables}` of `template` in the raw request path, percent-decoded.
///
/// A trailing `{state_key}` may be empty or left out entirely (`…/state/m.room.name/` and
/// `…/state/m.room.name` both mean the empty state key), as the spec and Synapse allow.
fn path_args(template: &str, path: &str) -> Result<Vec<String>> {
    let mut segments = path.split('/');
    template
        .split('/')
        .filter_map(|t| {
            let value = segments.next();
            t.starts_with('{').then(|| value.unwrap_or(""))
        })
        .map(|value| percent_decode(value).map_err(|_| Error::invalid_param("Path parameters must be UTF-8")))
        .collect()
}

fn percent_decode(value: &str) -> std::result::Result<String, std::str::Utf8Error> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|e| e.utf8_error())
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Maps ruma's parse failures onto the spec's errcodes: unparsable JSON is `M_NOT_JSON`, JSON of
/// the wrong shape `M_BAD_JSON`, a missing query parameter `M_MISSING_PARAM`, a malformed one or
/// a malformed identifier `M_INVALID_PARAM`.
pub fn request_error(error: FromHttpRequestError, body: &[u8]) -> Error {
    use ruma::api::error::DeserializationError as D;
    match error {
        // ruma may report a type mismatch before reaching a syntax error further on (`[1,2`),
        // so the body's syntax is checked on its own.
        FromHttpRequestError::Deserialization(D::Json(e))
            if !body.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() =>
        {
            Error::not_json(format!("Content not JSON: {e}"))
        }
        FromHttpRequestError::Deserialization(D::Json(e)) => match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                Error::not_json(format!("Content not JSON: {e}"))
            }
            _ => Error::bad_json(format!("Malformed JSON: {e}")),
        },
        FromHttpRequestError::Deserialization(D::Utf8(_)) => Error::not_json("Content is not valid UTF-8"),
        FromHttpRequestError::Deserialization(D::Query(e)) => {
            let text = e.to_string();
            if text.contains("missing field") {
                Error::missing_param(format!("Missing query parameter: {text}"))
            } else {
                Error::invalid_param(format!("Invalid query parameter: {text}"))
            }
        }
        FromHttpRequestError::Deserialization(D::Ident(e)) => Error::invalid_param(format!("Invalid identifier: {e}")),
        FromHttpRequestError::Deserialization(e) => Error::bad_json(format!("Malformed request: {e}")),
        FromHttpRequestError::MethodMismatch { .. } => Error::method_not_allowed(),
        _ => Error::bad_json("Malformed request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> actix_web::http::header::HeaderMap {
        let mut map = actix_web::http::header::HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                actix_web::http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                actix_web::http::header::HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let trusted = vec![IpRange::parse("10.0.0.0/8").unwrap(), IpRange::parse("::1").unwrap()];
        let spoofed = headers(&[("X-Forwarded-For", "198.51.100.1"), ("Forwarded", "for=198.51.100.2")]);
        // From anyone else the headers are ignored.
        assert_eq!(client_address(ip("203.0.113.9"), &spoofed, &trusted), ip("203.0.113.9"));
        assert_eq!(client_address(ip("203.0.113.9"), &spoofed, &[]), ip("203.0.113.9"));
        // From a proxy: X-Forwarded-For first.
        assert_eq!(client_address(ip("10.0.0.2"), &spoofed, &trusted), ip("198.51.100.1"));
        // What the client wrote before the proxy appended its peer is not believed; proxies
        // in the chain are skipped.
        let chain = headers(&[
            ("X-Forwarded-For", "1.1.1.1, 198.51.100.7"),
            ("X-Forwarded-For", "10.0.0.3"),
        ]);
        assert_eq!(client_address(ip("10.0.0.2"), &chain, &trusted), ip("198.51.100.7"));
        // Forwarded, with ports, quotes and IPv6.
        let forwarded = headers(&[(
            "Forwarded",
            "for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\"",
        )]);
        assert_eq!(client_address(ip("::1"), &forwarded, &trusted), ip("2001:db8:cafe::17"));
        // An entry that is no address stops at the last proxy; no header: the proxy itself.
        let unknown = headers(&[("X-Forwarded-For", "198.51.100.1, unknown")]);
        assert_eq!(client_address(ip("10.0.0.2"), &unknown, &trusted), ip("10.0.0.2"));
        assert_eq!(client_address(ip("10.0.0.2"), &headers(&[]), &trusted), ip("10.0.0.2"));
        // IPv4-mapped peers are plain IPv4 (a dual-stack listener).
        assert_eq!(
            client_address(ip("::ffff:10.0.0.2"), &spoofed, &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(parse_hop("192.0.2.1:4711"), Some(ip("192.0.2.1")));
        assert_eq!(parse_hop("_hidden"), None);
    }

    #[test]
    fn path_arguments_are_decoded_in_order() {
        let args = path_args(
            "/_matrix/client/v3/profile/{user_id}/{field}",
            "/_matrix/client/v3/profile/%40a%3Ahs/displayname",
        )
        .unwrap();
        assert_eq!(args, vec!["@a:hs", "displayname"]);
        assert_eq!(percent_decode("a%2Fb%25%zz%4").unwrap(), "a/b%%zz%4");
        let state = "/_matrix/client/v3/rooms/{room_id}/state/{event_type}/{state_key}";
        assert_eq!(
            path_args(state, "/_matrix/client/v3/rooms/!r/state/m.room.name/").unwrap(),
            vec!["!r", "m.room.name", ""]
        );
        assert_eq!(
            path_args(state, "/_matrix/client/v3/rooms/!r/state/m.room.name").unwrap(),
            vec!["!r", "m.room.name", ""]
        );
        assert!(percent_decode("%ff").is_err());
    }
}
