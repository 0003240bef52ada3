//! The outgoing HTTP/1.1 fetcher of URL previews: it resolves the host itself, keeps only
//! addresses the [`AddressPolicy`](super::ssrf::AddressPolicy) permits, connects to one of those
//! (never letting anything re-resolve the name), and follows redirects by hand so every hop is
//! vetted again. Size and time are bounded: the body is cut at `max_bytes` and the whole fetch,
//! redirects included, has one deadline. `https://` runs TLS (rustls) over the vetted
//! connection, trusting the public web's roots plus `media.url_preview_extra_ca_file`.
//! [`post_json`] is the same client for one JSON POST without redirects (push gateways), and
//! [`send_json`] for another method with extra headers (application services).

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, OnceLock},
    time::Duration,
};

use http::StatusCode;
use ruma::api::error::ErrorKind;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{
    TlsConnector,
    rustls::{
        ClientConfig, RootCertStore,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    },
};

use super::ssrf::AddressPolicy;
use crate::{Error, Result};

const MAX_REDIRECTS: usize = 5;
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A fetched page.
pub(crate) struct Fetched {
    /// The response's `Content-Type`.
    pub content_type: Option<String>,
    /// The response's `Content-Disposition`.
    pub content_disposition: Option<String>,
    /// The body, at most `max_bytes` of it.
    pub body: Vec<u8>,
}

fn refused(message: impl Into<String>) -> Error {
    Error::forbidden(message)
}

fn failed(message: impl Into<String>) -> Error {
    Error::new(StatusCode::BAD_GATEWAY, ErrorKind::Unknown, message)
}

/// An `http://` URL taken apart.
#[derive(Debug, PartialEq)]
pub(super) struct Target {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

/// The TLS settings of previews, set once when the media service starts.
static TLS: OnceLock<Arc<ClientConfig>> = OnceLock::new();

/// Trusts the public web's roots plus `extra` (DER certificates) for `https://` previews.
pub(super) fn init_tls(extra: &[Vec<u8>]) {
    let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in extra {
        if let Err(e) = roots.add(CertificateDer::from(der.clone())) {
            tracing::warn!(error = %e, "an extra URL preview CA certificate was not usable");
        }
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(config) => {
            let _ = TLS.set(Arc::new(config));
        }
        Err(e) => tracing::error!(error = %e, "TLS for URL previews is unavailable"),
    }
}

/// The certificates of a PEM file (for `media.url_preview_extra_ca_file`).
pub fn read_pem_certificates(path: &Path) -> std::result::Result<Vec<Vec<u8>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

pub(super) fn parse_url(url: &str) -> Result<Target> {
    let bad = || Error::invalid_param(format!("Cannot preview {url}: not an http(s):// URL"));
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        _ => return Err(Error::invalid_param("Only http:// and https:// URLs can be previewed")),
    };
    let default_port = if tls { 443 } else { 80 };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') || authority.is_empty() {
        return Err(bad());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => default_port,
            None => return Err(bad()),
        };
        (format!("[{host}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
            None => (authority.to_owned(), default_port),
        }
    };
    let path = path.split('#').next().unwrap_or("");
    let path = if path.is_empty() || path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) || host.bytes().any(|b| b <= b' ') {
        return Err(bad());
    }
    Ok(Target {
        tls,
        host: host.to_ascii_lowercase(),
        port,
        path,
    })
}

/// The vetted addresses of a host: all it resolves to that the policy permits.
async fn vetted_addrs(target: &Target, policy: &AddressPolicy) -> Result<Vec<SocketAddr>> {
    let bare = target.host.trim_matches(['[', ']']);
    let resolved: Vec<SocketAddr> = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, target.port)],
        Err(_) => tokio::net::lookup_host((bare, target.port))
            .await
            .map_err(|e| failed(format!("Cannot resolve {bare}: {e}")))?
            .collect(),
    };
    let permitted: Vec<SocketAddr> = resolved.iter().copied().filter(|a| policy.permits(a.ip())).collect();
    if permitted.is_empty() {
        tracing::info!(host = %target.host, ?resolved, "URL preview refused: no permitted address");
        return Err(refused(format!(
            "{} resolves only to addresses previews may not contact",
            target.host
        )));
    }
    Ok(permitted)
}

/// Fetches `url`, following redirects, within `timeout` and `max_bytes`.
pub(super) async fn fetch(url: &str, policy: &AddressPolicy, max_bytes: usize, timeout: Duration) -> Result<Fetched> {
    tokio::time::timeout(timeout, fetch_inner(url, policy, max_bytes, MAX_REDIRECTS))
        .await
        .map_err(|_| failed("Timed out fetching the page"))?
}

/// Fetches `url` without following any redirect (a remote server's media `Location`, itself
/// the one redirect allowed), within `timeout` and `max_bytes`.
pub(crate) async fn fetch_once(
    url: &str,
    policy: &AddressPolicy,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Fetched> {
    tokio::time::timeout(timeout, fetch_inner(url, policy, max_bytes, 0))
        .await
        .map_err(|_| failed("Timed out fetching the media"))?
}

async fn fetch_inner(url: &str, policy: &AddressPolicy, max_bytes: usize, max_redirects: usize) -> Result<Fetched> {
    let mut current = url.to_owned();
    for _ in 0..=max_redirects {
        let target = parse_url(&current)?;
        let addrs = vetted_addrs(&target, policy).await?;
        let (status, headers, body) = request(&target, &addrs, max_bytes, None).await?;
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        if matches!(status, 301 | 302 | 303 | 307 | 308) {
            let location = header("location").ok_or_else(|| failed("Redirect without a Location"))?;
            current = join(&target, &location);
            continue;
        }
        if status != 200 {
            return Err(failed(format!("The page answered {status}")));
        }
        return Ok(Fetched {
            content_type: header("content-type"),
            content_disposition: header("content-disposition"),
            body,
        });
    }
    Err(failed("Too many redirects"))
}

/// Resolves a link found on the page at `base` (absolute, root-relative or relative).
pub(super) fn resolve(base: &str, link: &str) -> Result<String> {
    Ok(join(&parse_url(base)?, link))
}

/// Resolves a `Location` against the URL that answered with it.
fn join(base: &Target, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let scheme = if base.tls { "https" } else { "http" };
    let origin = format!("{scheme}://{}:{}", base.host, base.port);
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    if location.starts_with('/') {
        return format!("{origin}{location}");
    }
    let dir = base.path.rsplit_once('/').map_or("", |(d, _)| d);
    format!("{origin}{dir}/{location}")
}

type Response = (u16, Vec<(String, String)>, Vec<u8>);

/// POSTs a JSON body to `url` (redirects are not followed) within `timeout`, connecting only
/// to addresses `policy` permits: the status and at most `max_bytes` of the answer's body.
/// Push notifications to push gateways go out this way.
pub(crate) async fn post_json(
    url: &str,
    policy: &AddressPolicy,
    body: &[u8],
    max_bytes: usize,
    timeout: Duration,
) -> Result<(u16, Vec<u8>)> {
    send_json("POST", url, policy, &[], body, max_bytes, timeout).await
}

/// [`post_json`] with another method and extra header lines (`("Authorization", "Bearer …")`):
/// application-service transactions and pings go out this way.
pub(crate) async fn send_json(
    method: &str,
    url: &str,
    policy: &AddressPolicy,
    headers: &[(&str, &str)],
    body: &[u8],
    max_bytes: usize,
    timeout: Duration,
) -> Result<(u16, Vec<u8>)> {
    let mut extra = String::new();
    for (name, value) in headers {
        if [name, value]
            .iter()
            .any(|t| t.bytes().any(|b| b == b'\r' || b == b'\n'))
        {
            return Err(failed("Header with a line break"));
        }
        extra.push_str(&format!("{name}: {value}\r\n"));
    }
    tokio::time::timeout(timeout, async {
        let target = parse_url(url)?;
        let addrs = vetted_addrs(&target, policy).await?;
        let (status, _, body) = request(&target, &addrs, max_bytes, Some((method, body, extra.as_str()))).await?;
        Ok((status, body))
    })
    .await
    .map_err(|_| failed("Timed out"))?
}

/// What a request sends besides GET: its method, body and extra header lines.
type Send<'a> = Option<(&'a str, &'a [u8], &'a str)>;

async fn request(target: &Target, addrs: &[SocketAddr], max_bytes: usize, post: Send<'_>) -> Result<Response> {
    let mut last_error = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_error = Some(e),
        }
    }
    let stream = stream.ok_or_else(|| {
        failed(format!(
            "Cannot connect to {}: {}",
            target.host,
            last_error.map_or("no address".into(), |e| e.to_string())
        ))
    })?;
    if !target.tls {
        return exchange(stream, target, max_bytes, post).await;
    }
    let config = TLS.get().ok_or_else(|| failed("TLS for URL previews is unavailable"))?;
    let name = ServerName::try_from(target.host.trim_matches(['[', ']']).to_owned())
        .map_err(|_| failed(format!("{} is not a TLS server name", target.host)))?;
    let stream = TlsConnector::from(Arc::clone(config))
        .connect(name, stream)
        .await
        .map_err(|e| failed(format!("TLS with {} failed: {e}", target.host)))?;
    exchange(stream, target, max_bytes, post).await
}

/// One request and its response over an open connection.
async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    target: &Target,
    max_bytes: usize,
    post: Send<'_>,
) -> Result<Response> {
    let default_port = if target.tls { 443 } else { 80 };
    let host_header = if target.port == default_port {
        target.host.clone()
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let head = match post {
        None => format!(
            "GET {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: Hearth URL preview\r\nAccept: text/html, application/xhtml+xml, */*;q=0.5\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n",
            target.path
        ),
        Some((method, body, extra)) => format!(
            "{method} {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: Hearth\r\nContent-Type: application/json\r\nContent-Length: {}\r\nAccept: application/json\r\nAccept-Encoding: identity\r\n{extra}Connection: close\r\n\r\n",
            target.path,
            body.len()
        ),
    };
    let mut request = head.into_bytes();
    request.extend_from_slice(post.map(|(_, body, _)| body).unwrap_or_default());
    stream
        .write_all(&request)
        .await
        .map_err(|e| failed(format!("Cannot send the request: {e}")))?;
    // Read the head, then at most max_bytes of body (plus chunk framing).
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let (status, headers, body_start) = loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| failed(format!("Cannot read the response: {e}")))?;
        if n == 0 {
            return Err(failed("The connection closed before a response"));
        }
        raw.extend_from_slice(&buf[..n]);
        let mut header_buf = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut header_buf);
        match response.parse(&raw) {
            Ok(httparse::Status::Complete(len)) => {
                let headers = response
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect::<Vec<_>>();
                break (response.code.unwrap_or(0), headers, len);
            }
            Ok(httparse::Status::Partial) if raw.len() < MAX_HEADER_BYTES => {}
            Ok(httparse::Status::Partial) => return Err(failed("Response headers too large")),
            Err(e) => return Err(failed(format!("Malformed response: {e}"))),
        }
    };
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked"));
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    let mut body = raw.split_off(body_start);
    if (300..400).contains(&status) {
        return Ok((status, headers, Vec::new()));
    }
    let cap = max_bytes + if chunked { max_bytes / 8 + 1024 } else { 0 };
    while body.len() < cap && length.is_none_or(|l| body.len() < l) {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| failed(format!("Cannot read the response: {e}")))?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    let mut body = if chunked { dechunk(&body) } else { body };
    body.truncate(max_bytes);
    Ok((status, headers, body))
}

/// Decodes a (possibly truncated) chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if size == 0 {
            break;
        }
        raw = &raw[line_end + 2..];
        let take = size.min(raw.len());
        out.extend_from_slice(&raw[..take]);
        if take < size || raw.len() < size + 2 {
            break;
        }
        raw = &raw[size + 2..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_join() {
        let t = parse_url("http://Example.org:8080/a/b?c=d#frag").unwrap();
        assert_eq!(
            t,
            Target {
                tls: false,
                host: "example.org".into(),
                port: 8080,
                path: "/a/b?c=d".into()
            }
        );
        assert_eq!(parse_url("http://[::1]/").unwrap().host, "[::1]");
        assert_eq!(parse_url("http://h?x=1").unwrap().path, "/?x=1");
        let https = parse_url("https://example.org/").unwrap();
        assert!(https.tls && https.port == 443);
        assert_eq!(join(&https, "//cdn.example.org/x"), "https://cdn.example.org/x");
        assert!(parse_url("http://user@evil/").is_err());
        assert!(parse_url("file:///etc/passwd").is_err());
        assert_eq!(join(&t, "/x"), "http://example.org:8080/x");
        assert_eq!(join(&t, "x"), "http://example.org:8080/a/x");
        assert_eq!(join(&t, "http://127.0.0.1/"), "http://127.0.0.1/");
    }

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(dechunk(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), b"hello world");
        assert_eq!(dechunk(b"5\r\nhel"), b"hel");
    }
}
