//! Questions the server asks application services (spec "Application Service API" →
//! "Querying", "Third-party networks"): whether an unknown user or alias of a service's
//! namespace exists (`GET /_matrix/app/v1/users/{userId}`, `/rooms/{roomAlias}`; on 200 the
//! service has created it through the client-server API before answering, so the caller looks
//! again), and the third-party lookups (`/_matrix/app/v1/thirdparty/*`), merged over the
//! services that declare the protocol.
//!
//! [`Outbound`] is the HTTP client for every request to a service (any method, a JSON body).
//! Requests carry `Authorization: Bearer <hs_token>`. The service URL comes from the admin's
//! registration, so loopback and private addresses are allowed. Each exchange has one deadline
//! ([`QUERY_TIMEOUT`]) and the answer is capped at [`MAX_ANSWER_BYTES`]; a service that is down,
//! slow or answers nonsense counts as "does not know it".

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ruma::{RoomAliasId, UserId};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Appservices, Registered};
use crate::{
    Error, Result,
    services::federation::transport::{Destination, Transport},
};

/// How long one question to a service may take, connection included.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read from a service.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// The HTTP client for services: plain HTTP by hand, HTTPS through federation's transport
/// (which checks certificates; private addresses are allowed here).
pub struct Outbound {
    tls: Transport,
}

impl Default for Outbound {
    fn default() -> Self {
        Outbound {
            tls: Transport::new(&[], true),
        }
    }
}

/// The answer of a service: status and body.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

impl Outbound {
    /// `GET {service.url}{path_and_query}` with the service's `hs_token`.
    pub async fn get(&self, service: &Registered, path_and_query: &str) -> Result<Answer> {
        self.send(service, http::Method::GET, path_and_query, None).await
    }

    /// `METHOD {service.url}{path_and_query}` with the service's `hs_token` and, when given, a
    /// JSON body; within [`QUERY_TIMEOUT`], the answer capped at [`MAX_ANSWER_BYTES`].
    pub async fn send(
        &self,
        service: &Registered,
        method: http::Method,
        path_and_query: &str,
        json_body: Option<Vec<u8>>,
    ) -> Result<Answer> {
        let body = json_body.unwrap_or_default();
        let base = service
            .registration
            .url
            .as_deref()
            .ok_or_else(|| Error::internal(format!("appservice {} has no url", service.id())))?;
        let url = url::Url::parse(&format!("{}{path_and_query}", base.trim_end_matches('/')))
            .map_err(|e| Error::internal(format!("appservice {} url: {e}", service.id())))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let host_header = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let lookup_host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let exchange = async {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((lookup_host.as_str(), port))
                .await
                .map_err(|e| Error::internal(format!("appservice {}: cannot resolve {host}: {e}", service.id())))?
                .collect();
            if url.scheme() == "https" {
                let request = http::Request::builder()
                    .method(method.clone())
                    .uri(target.as_str())
                    .header("authorization", format!("Bearer {}", service.registration.hs_token))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .map_err(|e| Error::internal(e.to_string()))?;
                let dest = Destination {
                    addrs,
                    host: host_header.clone(),
                    tls_name: lookup_host.clone(),
                };
                let response = self.tls.send(&dest, request, MAX_ANSWER_BYTES, QUERY_TIMEOUT).await?;
                return Ok(Answer {
                    status: response.status().as_u16(),
                    body: response.into_body(),
                });
            }
            let head = format!(
                "{method} {target} HTTP/1.1\r\nHost: {host_header}\r\nAuthorization: Bearer {}\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                service.registration.hs_token,
                body.len()
            );
            plain_exchange(&addrs, &host_header, head.as_bytes(), &body).await
        };
        tokio::time::timeout(QUERY_TIMEOUT, exchange)
            .await
            .map_err(|_| Error::internal(format!("appservice {} did not answer in time", service.id())))?
    }
}

/// One HTTP/1.1 exchange over plain TCP (`Connection: close`), the answer read to its end.
async fn plain_exchange(addrs: &[SocketAddr], host: &str, head: &[u8], body: &[u8]) -> Result<Answer> {
    let io = |e: std::io::Error| Error::internal(format!("appservice request: {e}"));
    let mut stream = None;
    for addr in addrs {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            stream = Some(s);
            break;
        }
    }
    let mut stream = stream.ok_or_else(|| Error::internal(format!("cannot connect to {host}")))?;
    stream.write_all(head).await.map_err(io)?;
    stream.write_all(body).await.map_err(io)?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(io)?;
        if n == 0 {
            break;
        }
        if raw.len() + n > MAX_ANSWER_BYTES + 64 * 1024 {
            return Err(Error::internal("appservice answer too large"));
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = response.parse(&raw) else {
        return Err(Error::internal("appservice answered no valid HTTP"));
    };
    let status = response.code.unwrap_or(0);
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length = header("content-length").and_then(|v| v.trim().parse::<usize>().ok());
    let rest = &raw[head_len..];
    let body = if chunked {
        dechunk(rest).ok_or_else(|| Error::internal("appservice answered a malformed chunked body"))?
    } else {
        rest[..length.unwrap_or(rest.len()).min(rest.len())].to_vec()
    };
    Ok(Answer { status, body })
}

/// The body of a chunked transfer encoding.
fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbound")
    }
}

impl Appservices {
    /// Asks the services whose users namespace covers `user_id` whether it exists; `true`
    /// when one answered 200 (it has registered the user by then).
    pub async fn query_user(&self, user_id: &UserId) -> bool {
        for service in self.services.iter().filter(|s| s.is_user_in_namespace(user_id)) {
            if service.registration.url.is_none() || *user_id == service.sender {
                continue;
            }
            let path = format!("/_matrix/app/v1/users/{}", encode(user_id.as_str()));
            match self.outbound.get(service, &path).await {
                Ok(answer) if answer.status == 200 => return true,
                Ok(_) => {}
                Err(e) => tracing::info!(appservice = service.id(), %user_id, error = %e, "user query failed"),
            }
        }
        false
    }

    /// Asks the services whose aliases namespace covers `alias` whether it exists; `true`
    /// when one answered 200 (it has created the room and alias by then).
    pub async fn query_alias(&self, alias: &RoomAliasId) -> bool {
        for service in self.services.iter().filter(|s| s.is_alias_in_namespace(alias)) {
            if service.registration.url.is_none() {
                continue;
            }
            let path = format!("/_matrix/app/v1/rooms/{}", encode(alias.as_str()));
            match self.outbound.get(service, &path).await {
                Ok(answer) if answer.status == 200 => return true,
                Ok(_) => {}
                Err(e) => tracing::info!(appservice = service.id(), %alias, error = %e, "alias query failed"),
            }
        }
        false
    }

    /// The services declaring `protocol`.
    fn with_protocol<'a>(&'a self, protocol: &'a str) -> impl Iterator<Item = &'a Arc<Registered>> + 'a {
        self.services.iter().filter(move |s| {
            s.registration.url.is_some()
                && s.registration
                    .protocols
                    .as_ref()
                    .is_some_and(|p| p.iter().any(|name| name == protocol))
        })
    }

    /// Every protocol some service declares (`GET /thirdparty/protocols`), as
    /// [`Self::thirdparty_protocol`] describes it. Protocols no service answers for are left
    /// out.
    pub async fn thirdparty_protocols(&self) -> serde_json::Map<String, Value> {
        let mut names: Vec<&str> = Vec::new();
        for service in &self.services {
            for name in service.registration.protocols.iter().flatten() {
                if !names.contains(&name.as_str()) {
                    names.push(name);
                }
            }
        }
        let mut out = serde_json::Map::new();
        for name in names {
            if let Some(protocol) = self.thirdparty_protocol(name).await {
                out.insert(name.to_owned(), protocol);
            }
        }
        out
    }

    /// One protocol's description (`GET /thirdparty/protocol/{protocol}`): the first answering
    /// service's, with the `instances` of every service declaring it merged and each instance
    /// given an `instance_id` of `{service id}|{network_id}` (as Synapse does); `None` when no
    /// service answers.
    pub async fn thirdparty_protocol(&self, protocol: &str) -> Option<Value> {
        let mut merged: Option<Value> = None;
        for service in self.with_protocol(protocol) {
            let path = format!("/_matrix/app/v1/thirdparty/protocol/{}", encode(protocol));
            let Some(Value::Object(mut info)) = get_json(&self.outbound, service, &path).await else {
                continue;
            };
            let mut instances = match info.remove("instances") {
                Some(Value::Array(list)) => list,
                _ => Vec::new(),
            };
            for instance in &mut instances {
                if let Value::Object(o) = instance
                    && let Some(network) = o.get("network_id").and_then(Value::as_str)
                {
                    let id = format!("{}|{network}", service.id());
                    o.insert("instance_id".into(), Value::String(id));
                }
            }
            match &mut merged {
                None => {
                    info.insert("instances".into(), Value::Array(instances));
                    merged = Some(Value::Object(info));
                }
                Some(Value::Object(m)) => {
                    if let Some(Value::Array(list)) = m.get_mut("instances") {
                        list.extend(instances);
                    }
                }
                Some(_) => {}
            }
        }
        merged
    }

    /// A third-party lookup (`location` or `user`, by protocol and fields, or by alias /
    /// user id), its answers from every concerned service concatenated. `protocol` `None`:
    /// every service declaring any protocol is asked.
    pub async fn thirdparty_lookup(
        &self,
        kind: &str,
        protocol: Option<&str>,
        query: &[(String, String)],
    ) -> Vec<Value> {
        let query_string: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .finish();
        let path = match protocol {
            Some(p) => format!("/_matrix/app/v1/thirdparty/{kind}/{}", encode(p)),
            None => format!("/_matrix/app/v1/thirdparty/{kind}"),
        };
        let path = if query_string.is_empty() {
            path
        } else {
            format!("{path}?{query_string}")
        };
        let services: Vec<&Arc<Registered>> = match protocol {
            Some(p) => self.with_protocol(p).collect(),
            None => self
                .services
                .iter()
                .filter(|s| {
                    s.registration.url.is_some() && s.registration.protocols.as_ref().is_some_and(|p| !p.is_empty())
                })
                .collect(),
        };
        let mut out = Vec::new();
        for service in services {
            if let Some(Value::Array(list)) = get_json(&self.outbound, service, &path).await {
                out.extend(list.into_iter().filter(Value::is_object));
            }
        }
        out
    }

    /// Whether any service declares `protocol`.
    pub fn knows_protocol(&self, protocol: &str) -> bool {
        self.with_protocol(protocol).next().is_some()
    }
}

/// A service's 200 JSON answer, or `None` (logged).
async fn get_json(outbound: &Outbound, service: &Registered, path: &str) -> Option<Value> {
    match outbound.get(service, path).await {
        Ok(answer) if answer.status == 200 => serde_json::from_slice(&answer.body).ok(),
        Ok(answer) => {
            tracing::debug!(
                appservice = service.id(),
                path,
                status = answer.status,
                "third-party lookup not answered"
            );
            None
        }
        Err(e) => {
            tracing::info!(appservice = service.id(), path, error = %e, "third-party lookup failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            super::dechunk(b"4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n").unwrap(),
            b"Wikipedia"
        );
        assert!(super::dechunk(b"zz\r\n").is_none());
    }
}
