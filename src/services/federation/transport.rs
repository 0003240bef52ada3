//! The outbound HTTPS transport of federation: one HTTP/1.1 request over TLS (rustls, ring) to
//! a destination the [resolver](super::resolver) has already worked out — its addresses, the
//! `Host` header to send and the name the server's certificate must be valid for.
//!
//! It connects only to addresses the built-in address rules call public (unless built with
//! `allow_private`, for tests and closed federations), trying them in order, each with a bounded
//! connect time. Certificates are checked against the public web's roots (webpki-roots) plus
//! extra DER certificates. Responses are parsed with httparse, framed by `Content-Length`,
//! chunked encoding or the end of the connection; the body is capped and the whole exchange
//! has one deadline. Connections whose response was framed exactly are kept for reuse: at most
//! [`IDLE_PER_DESTINATION`] idle ones per destination, for at most [`MAX_DESTINATIONS`]
//! destinations, each for at most [`IDLE_TIMEOUT`]. A request that fails on a reused
//! connection before any byte of the answer arrived is sent once more on a fresh connection.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use http::{HeaderName, HeaderValue, StatusCode};
use ruma::api::error::ErrorKind;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    client::TlsStream,
    rustls::{
        ClientConfig, RootCertStore,
        pki_types::{CertificateDer, ServerName},
    },
};

use crate::{
    Error, Result,
    services::media::ssrf::is_public,
    util::bounded::{BoundedMap, Evict},
};

/// Idle connections kept per destination.
pub const IDLE_PER_DESTINATION: usize = 2;
/// Destinations with idle connections kept.
pub const MAX_DESTINATIONS: usize = 1_000;
/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest wait for one TCP connection (the overall deadline may cut it shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD_BYTES: usize = 32 * 1024;
const MAX_LINE_BYTES: usize = 4 * 1024;
const MAX_HEADERS: usize = 100;

/// Where a request goes: resolved addresses, the `Host` header and the certificate name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// Addresses to try, in order.
    pub addrs: Vec<SocketAddr>,
    /// The `Host` header.
    pub host: String,
    /// The SNI and the name the certificate must be valid for (a host name or an IP literal).
    pub tls_name: String,
}

/// The HTTPS client of federation.
pub struct Transport {
    tls: TlsConnector,
    allow_private: bool,
    idle: BoundedMap<(SocketAddr, String), IdleConnections>,
}

type Stream = TlsStream<TcpStream>;

/// The idle connections to one destination, newest last.
#[derive(Default)]
struct IdleConnections(Vec<(Stream, Instant)>);

impl Evict for IdleConnections {
    fn stale(&self, now: Instant) -> bool {
        self.0
            .iter()
            .all(|(_, since)| now.duration_since(*since) > IDLE_TIMEOUT)
    }
}

pub(crate) fn failed(message: impl Into<String>) -> Error {
    Error::new(StatusCode::BAD_GATEWAY, ErrorKind::Unknown, message)
}

impl Transport {
    /// A transport trusting the public web's roots plus `extra_roots` (DER certificates), which
    /// connects to non-public addresses only when `allow_private` is set.
    pub fn new(extra_roots: &[Vec<u8>], allow_private: bool) -> Transport {
        let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for der in extra_roots {
            if let Err(e) = roots.add(CertificateDer::from(der.clone())) {
                tracing::warn!(error = %e, "an extra federation CA certificate was not usable");
            }
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Transport {
            tls: TlsConnector::from(Arc::new(config)),
            allow_private,
            idle: BoundedMap::new(MAX_DESTINATIONS),
        }
    }

    /// Whether the transport may connect to non-public addresses (`allow_private_destinations`).
    pub fn allows_private(&self) -> bool {
        self.allow_private
    }

    /// Whether the transport may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow_private || is_public(ip)
    }

    /// Sends `request` (its URI a path and query) to `dest` and reads the response, its body at
    /// most `max_response_bytes`, all within `timeout`.
    pub async fn send(
        &self,
        dest: &Destination,
        request: http::Request<Vec<u8>>,
        max_response_bytes: usize,
        timeout: Duration,
    ) -> Result<http::Response<Vec<u8>>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let addrs: Vec<SocketAddr> = dest.addrs.iter().copied().filter(|a| self.permits(a.ip())).collect();
        if addrs.is_empty() {
            return Err(failed(format!(
                "{} resolves to no address federation may contact ({:?})",
                dest.host, dest.addrs
            )));
        }
        let head = request_head(dest, &request)?;
        let body = request.body();
        let head_only = request.method() == http::Method::HEAD;
        tokio::time::timeout_at(deadline, async {
            // A reused connection first; if it fails before answering, a fresh one.
            if let Some((stream, addr)) = self.take_idle(dest, &addrs) {
                match exchange(stream, &head, body, head_only, max_response_bytes).await {
                    Ok((response, reusable)) => {
                        self.put_idle(addr, dest, reusable);
                        return Ok(response);
                    }
                    Err(Failure::BeforeAnswer(e)) => {
                        tracing::debug!(host = %dest.host, error = %e, "a reused connection failed, reconnecting");
                    }
                    Err(Failure::Answer(e)) => return Err(e),
                }
            }
            let (stream, addr) = self.connect(dest, &addrs, deadline).await?;
            match exchange(stream, &head, body, head_only, max_response_bytes).await {
                Ok((response, reusable)) => {
                    self.put_idle(addr, dest, reusable);
                    Ok(response)
                }
                Err(Failure::BeforeAnswer(e) | Failure::Answer(e)) => Err(e),
            }
        })
        .await
        .map_err(|_| failed(format!("Timed out talking to {}", dest.host)))?
    }

    fn take_idle(&self, dest: &Destination, addrs: &[SocketAddr]) -> Option<(Stream, SocketAddr)> {
        let now = Instant::now();
        for addr in addrs {
            let found = self.idle.with(&(*addr, dest.tls_name.clone()), |entry| {
                let entry = entry?;
                while let Some((stream, since)) = entry.0.pop() {
                    if now.duration_since(since) <= IDLE_TIMEOUT {
                        return Some(stream);
                    }
                }
                None
            });
            if let Some(stream) = found {
                return Some((stream, *addr));
            }
        }
        None
    }

    fn put_idle(&self, addr: SocketAddr, dest: &Destination, stream: Option<Stream>) {
        let Some(stream) = stream else { return };
        let now = Instant::now();
        self.idle.get_or_insert_with(
            &(addr, dest.tls_name.clone()),
            || (addr, dest.tls_name.clone()),
            IdleConnections::default,
            |entry| {
                entry.0.retain(|(_, since)| now.duration_since(*since) <= IDLE_TIMEOUT);
                if entry.0.len() >= IDLE_PER_DESTINATION {
                    entry.0.remove(0);
                }
                entry.0.push((stream, now));
            },
        );
    }

    async fn connect(
        &self,
        dest: &Destination,
        addrs: &[SocketAddr],
        deadline: tokio::time::Instant,
    ) -> Result<(Stream, SocketAddr)> {
        let name = ServerName::try_from(dest.tls_name.trim_matches(['[', ']']).to_owned())
            .map_err(|_| failed(format!("{} is not a TLS server name", dest.tls_name)))?;
        let mut last_error = String::from("no address");
        for addr in addrs {
            let connect_deadline = deadline.min(tokio::time::Instant::now() + CONNECT_TIMEOUT);
            let tcp = match tokio::time::timeout_at(connect_deadline, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => tcp,
                Ok(Err(e)) => {
                    last_error = format!("{addr}: {e}");
                    continue;
                }
                Err(_) => {
                    last_error = format!("{addr}: timed out connecting");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            match self.tls.connect(name.clone(), tcp).await {
                Ok(stream) => return Ok((stream, *addr)),
                Err(e) => last_error = format!("TLS with {} ({addr}) failed: {e}", dest.tls_name),
            }
        }
        Err(failed(format!("Cannot connect to {}: {last_error}", dest.host)))
    }
}

/// The request line and headers.
fn request_head(dest: &Destination, request: &http::Request<Vec<u8>>) -> Result<Vec<u8>> {
    if dest.host.is_empty() || dest.host.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(failed(format!("{:?} is not a Host header", dest.host)));
    }
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let target = if target.is_empty() { "/" } else { target };
    let mut head = format!("{} {target} HTTP/1.1\r\nHost: {}\r\n", request.method(), dest.host).into_bytes();
    for (name, value) in request.headers() {
        if matches!(
            name.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding" | "keep-alive" | "upgrade"
        ) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let method = request.method();
    if !request.body().is_empty() || !matches!(*method, http::Method::GET | http::Method::HEAD) {
        head.extend_from_slice(format!("Content-Length: {}\r\n", request.body().len()).as_bytes());
    }
    if !request.headers().contains_key(http::header::USER_AGENT) {
        head.extend_from_slice(b"User-Agent: Hearth\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Ok(head)
}

/// How an exchange failed: before any byte of the answer (the request may be sent again on a
/// fresh connection) or after.
enum Failure {
    BeforeAnswer(Error),
    Answer(Error),
}

/// A connection with a read buffer.
struct Reader {
    stream: Stream,
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    pos: usize,
    /// Whether the peer closed the connection.
    eof: bool,
}

impl Reader {
    fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Reads more; false at the end of the stream.
    async fn fill(&mut self) -> Result<bool> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = match self.stream.read(&mut chunk).await {
            Ok(n) => n,
            // A peer that closes without TLS close_notify: the framing decides if that is fine.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(failed(format!("Cannot read the response: {e}"))),
        };
        if n == 0 {
            self.eof = true;
            return Ok(false);
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(true)
    }

    /// One CRLF-terminated line (without the CRLF), at most [`MAX_LINE_BYTES`].
    async fn line(&mut self) -> Result<Vec<u8>> {
        loop {
            if let Some(end) = self.unread().windows(2).position(|w| w == b"\r\n") {
                let line = self.unread()[..end].to_vec();
                self.pos += end + 2;
                return Ok(line);
            }
            if self.unread().len() > MAX_LINE_BYTES {
                return Err(failed("A chunk line of the response is too long"));
            }
            if !self.fill().await? {
                return Err(failed("The connection closed in the middle of a chunked body"));
            }
        }
    }

    /// Exactly `n` bytes appended to `out`.
    async fn exact(&mut self, mut n: usize, out: &mut Vec<u8>) -> Result<()> {
        while n > 0 {
            if self.pos == self.buf.len() && !self.fill().await? {
                return Err(failed("The connection closed before the end of the body"));
            }
            let take = n.min(self.buf.len() - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            n -= take;
        }
        Ok(())
    }
}

/// Writes the request and reads the response; the connection back when it can be reused.
async fn exchange(
    mut stream: Stream,
    head: &[u8],
    body: &[u8],
    head_only: bool,
    max_bytes: usize,
) -> std::result::Result<(http::Response<Vec<u8>>, Option<Stream>), Failure> {
    let write = async {
        stream.write_all(head).await?;
        stream.write_all(body).await?;
        stream.flush().await
    };
    write
        .await
        .map_err(|e| Failure::BeforeAnswer(failed(format!("Cannot send the request: {e}"))))?;
    let mut reader = Reader {
        stream,
        buf: Vec::new(),
        pos: 0,
        eof: false,
    };
    // The head; informational (1xx) heads are skipped.
    let (status, version, headers) = loop {
        let parsed = {
            let mut header_buf = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut header_buf);
            match response.parse(reader.unread()) {
                Ok(httparse::Status::Complete(len)) => {
                    let headers: Vec<(String, Vec<u8>)> = response
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                        .collect();
                    Some((len, response.code.unwrap_or(0), response.version.unwrap_or(0), headers))
                }
                Ok(httparse::Status::Partial) => None,
                Err(e) => return Err(Failure::Answer(failed(format!("Malformed response: {e}")))),
            }
        };
        match parsed {
            Some((len, ..)) if len > MAX_HEAD_BYTES => {
                return Err(Failure::Answer(failed("The response's headers are too large")));
            }
            Some((len, code, _, _)) if (100..200).contains(&code) && code != 101 => reader.pos += len,
            Some((len, code, version, headers)) => {
                reader.pos += len;
                break (code, version, headers);
            }
            None if reader.unread().len() > MAX_HEAD_BYTES => {
                return Err(Failure::Answer(failed("The response's headers are too large")));
            }
            None => {
                let nothing_yet = reader.buf.is_empty();
                match reader.fill().await {
                    Ok(true) => {}
                    Ok(false) if nothing_yet => {
                        return Err(Failure::BeforeAnswer(failed("The connection closed before a response")));
                    }
                    Ok(false) => return Err(Failure::Answer(failed("The connection closed in the response's head"))),
                    Err(e) if nothing_yet => return Err(Failure::BeforeAnswer(e)),
                    Err(e) => return Err(Failure::Answer(e)),
                }
            }
        }
    };
    read_body(reader, status, version, headers, head_only, max_bytes)
        .await
        .map_err(Failure::Answer)
}

async fn read_body(
    mut reader: Reader,
    status: u16,
    version: u8,
    headers: Vec<(String, Vec<u8>)>,
    head_only: bool,
    max_bytes: usize,
) -> Result<(http::Response<Vec<u8>>, Option<Stream>)> {
    let status = StatusCode::from_u16(status).map_err(|_| failed(format!("Invalid status {status}")))?;
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice());
    let has_token = |name: &str, token: &str| {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    let mut keep_alive = version == 1 && !has_token("connection", "close");
    let chunked = has_token("transfer-encoding", "chunked");
    let mut body = Vec::new();
    let too_big = || {
        Error::new(
            StatusCode::BAD_GATEWAY,
            ErrorKind::TooLarge,
            format!("The response's body exceeds {max_bytes} bytes"),
        )
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(failed("The server switched protocols"));
    }
    if head_only || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
    {
        // No body.
    } else if chunked {
        loop {
            let line = reader.line().await?;
            let size_text = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
            let size = std::str::from_utf8(size_text)
                .ok()
                .filter(|s| !s.is_empty() && s.len() <= 15)
                .and_then(|s| usize::from_str_radix(s, 16).ok())
                .ok_or_else(|| failed("Malformed chunk size in the response"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                let mut trailers = 0;
                while !reader.line().await?.is_empty() {
                    trailers += 1;
                    if trailers > MAX_HEADERS {
                        return Err(failed("Too many trailers in the response"));
                    }
                }
                break;
            }
            if body.len().saturating_add(size) > max_bytes {
                return Err(too_big());
            }
            reader.exact(size, &mut body).await?;
            if !reader.line().await?.is_empty() {
                return Err(failed("Malformed chunk in the response"));
            }
        }
    } else if let Some(length) = header("content-length") {
        let length = std::str::from_utf8(length)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .ok_or_else(|| failed("Malformed Content-Length in the response"))?;
        if length > max_bytes {
            return Err(too_big());
        }
        reader.exact(length, &mut body).await?;
    } else {
        // Up to the end of the connection.
        keep_alive = false;
        loop {
            body.extend_from_slice(reader.unread());
            reader.pos = reader.buf.len();
            if body.len() > max_bytes {
                return Err(too_big());
            }
            if !reader.fill().await? {
                break;
            }
        }
    }
    // Anything after the response (or a closed stream) makes the connection unusable.
    if reader.pos != reader.buf.len() || reader.eof {
        keep_alive = false;
    }
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    for (name, value) in &headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
            response.headers_mut().append(name, value);
        }
    }
    Ok((response, keep_alive.then_some(reader.stream)))
}
