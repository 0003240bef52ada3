//! Media of other servers (server-server-api "Content Repository"): the outbound download of a
//! remote `mxc://` from its origin, for the media service to cache.
//!
//! The origin is asked with `GET /_matrix/federation/v1/media/download/{mediaId}` (signed); an
//! origin answering 404 `M_UNRECOGNIZED` (it predates Matrix 1.11) is asked again with the
//! deprecated `GET /_matrix/media/v3/download/{origin}/{mediaId}?allow_remote=false`, as the
//! spec requires and Synapse does. The `multipart/mixed` answer is taken apart by [`multipart`]
//! (our own parser: bounded, never panicking on garbage); its second part is the file itself or
//! a `Location` to fetch it from, which is followed once (a plain HTTP(S) GET through the media
//! fetcher: public addresses only unless `allow_private_destinations`, the same size limit, no
//! further redirects). Nothing larger than the limit is read: the transport refuses a declared
//! length over it and stops reading at it. Failures are Synapse's: 404 `M_NOT_FOUND` when the
//! origin says so, 502 `M_TOO_LARGE` for a file over the limit, 502 `M_UNKNOWN` otherwise.

use std::time::Duration;

use http::StatusCode;
use ruma::{
    ServerName,
    api::{
        error::ErrorKind,
        federation::authentication::{XMatrix, XMatrixSigningInput},
    },
    http_headers::ContentDisposition,
};

use super::Federation;
use crate::{
    Error, Result,
    services::media::{fetch, ssrf},
};

/// Room left for the multipart framing and the metadata part on top of the file.
const FRAMING_BYTES: usize = 64 * 1024;
/// Time limit of one remote download (the whole answer read).
pub const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the origin may wait for an asynchronous upload (`timeout_ms` sent).
const ORIGIN_WAIT_MS: u64 = 20_000;

/// A file fetched from another server.
#[derive(Debug)]
pub struct RemoteFile {
    /// Its `Content-Type`.
    pub content_type: Option<String>,
    /// The file name of its `Content-Disposition`.
    pub filename: Option<String>,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Synapse's answer for any failure that is not the origin's 404.
fn fetch_failed(origin: &ServerName, why: impl std::fmt::Display) -> Error {
    tracing::info!(%origin, "remote media fetch failed: {why}");
    Error::new(
        StatusCode::BAD_GATEWAY,
        ErrorKind::Unknown,
        "Failed to fetch remote media",
    )
}

fn too_large(max: u64) -> Error {
    Error::new(
        StatusCode::BAD_GATEWAY,
        ErrorKind::TooLarge,
        format!("Requested file is too large > {max} bytes"),
    )
}

fn header(headers: &http::HeaderMap, name: http::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn filename_of(disposition: Option<&[u8]>) -> Option<String> {
    disposition
        .and_then(|d| ContentDisposition::try_from(d).ok())
        .and_then(|d| d.filename)
        .filter(|f| !f.is_empty() && f.len() <= 1024)
}

impl Federation {
    /// Downloads `mxc://{origin}/{media_id}` from `origin`: at most `max_bytes` bytes, within
    /// [`DOWNLOAD_TIMEOUT`].
    pub async fn download_media(&self, origin: &ServerName, media_id: &str, max_bytes: u64) -> Result<RemoteFile> {
        self.check_peer(origin)?;
        let limit = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let id = encode_segment(media_id);
        let path = format!("/_matrix/federation/v1/media/download/{id}?timeout_ms={ORIGIN_WAIT_MS}");
        let response = self
            .signed_get(origin, &path, limit.saturating_add(FRAMING_BYTES), max_bytes)
            .await?;
        let status = response.status();
        if status == StatusCode::OK {
            return self.read_multipart(origin, response, max_bytes).await;
        }
        let errcode = errcode(response.body());
        // An origin that predates the endpoint: 404 `M_UNRECOGNIZED` as the spec says (400 from
        // servers older still), or 405.
        let unrecognized = matches!(status, StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST)
            && errcode.as_deref() == Some("M_UNRECOGNIZED");
        if unrecognized || status == StatusCode::METHOD_NOT_ALLOWED {
            return self.download_legacy(origin, &id, max_bytes, limit).await;
        }
        Err(answer_error(origin, status, errcode))
    }

    /// The deprecated client-server download, for an origin older than Matrix 1.11.
    async fn download_legacy(&self, origin: &ServerName, id: &str, max_bytes: u64, limit: usize) -> Result<RemoteFile> {
        let path = format!(
            "/_matrix/media/v3/download/{}/{id}?allow_remote=false&allow_redirect=true&timeout_ms={ORIGIN_WAIT_MS}",
            encode_segment(origin.as_str())
        );
        let response = self.signed_get(origin, &path, limit, max_bytes).await?;
        let status = response.status();
        if status.is_redirection() {
            let location = header(response.headers(), http::header::LOCATION)
                .ok_or_else(|| fetch_failed(origin, "a redirect without a Location"))?;
            return self.follow_location(origin, location, max_bytes).await;
        }
        if status != StatusCode::OK {
            return Err(answer_error(origin, status, errcode(response.body())));
        }
        let headers = response.headers();
        let file = RemoteFile {
            content_type: header(headers, http::header::CONTENT_TYPE).map(str::to_owned),
            filename: filename_of(headers.get(http::header::CONTENT_DISPOSITION).map(|v| v.as_bytes())),
            bytes: response.into_body(),
        };
        if file.bytes.len() as u64 > max_bytes {
            return Err(too_large(max_bytes));
        }
        Ok(file)
    }

    async fn read_multipart(
        &self,
        origin: &ServerName,
        response: http::Response<Vec<u8>>,
        max_bytes: u64,
    ) -> Result<RemoteFile> {
        let content_type = header(response.headers(), http::header::CONTENT_TYPE).unwrap_or("");
        let boundary = multipart::boundary(content_type)
            .ok_or_else(|| fetch_failed(origin, format!("not a multipart/mixed answer: {content_type:?}")))?;
        let parts = multipart::parse(response.body(), &boundary).map_err(|e| fetch_failed(origin, e))?;
        let [metadata, content] = &parts[..] else {
            return Err(fetch_failed(origin, format!("{} parts instead of 2", parts.len())));
        };
        if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(metadata.body).is_err() {
            return Err(fetch_failed(origin, "the metadata part is not a JSON object"));
        }
        if let Some(location) = content.header("location") {
            let location = location.to_owned();
            return self.follow_location(origin, &location, max_bytes).await;
        }
        if content.body.len() as u64 > max_bytes {
            return Err(too_large(max_bytes));
        }
        let content_type = content.header("content-type").map(str::to_owned);
        let filename = filename_of(content.header("content-disposition").map(str::as_bytes));
        // The file is cut out of the answer in place: never two copies in memory.
        let start = content.body.as_ptr() as usize - response.body().as_ptr() as usize;
        let end = start + content.body.len();
        drop(parts);
        let mut bytes = response.into_body();
        bytes.truncate(end);
        bytes.drain(..start);
        Ok(RemoteFile {
            content_type,
            filename,
            bytes,
        })
    }

    /// Fetches the file where the origin sent us (one hop, no further redirects).
    async fn follow_location(&self, origin: &ServerName, location: &str, max_bytes: u64) -> Result<RemoteFile> {
        let policy = if self.resolver.transport().allows_private() {
            ssrf::AddressPolicy {
                allow: ["0.0.0.0/0", "::/0"]
                    .iter()
                    .filter_map(|r| ssrf::IpRange::parse(r).ok())
                    .collect(),
                deny: Vec::new(),
            }
        } else {
            ssrf::AddressPolicy::default()
        };
        let limit = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        let fetched = fetch::fetch_once(location, &policy, limit.saturating_add(1), DOWNLOAD_TIMEOUT)
            .await
            .map_err(|e| fetch_failed(origin, format!("following {location}: {e}")))?;
        if fetched.body.len() as u64 > max_bytes {
            return Err(too_large(max_bytes));
        }
        Ok(RemoteFile {
            content_type: fetched.content_type,
            filename: filename_of(fetched.content_disposition.as_deref().map(str::as_bytes)),
            bytes: fetched.body,
        })
    }

    /// A GET of `path` on `origin`, signed with `X-Matrix`; the raw answer, its body at most
    /// `max_body` bytes (a longer one is 502 `M_TOO_LARGE`, naming the file limit `max_bytes`).
    async fn signed_get(
        &self,
        origin: &ServerName,
        path: &str,
        max_body: usize,
        max_bytes: u64,
    ) -> Result<http::Response<Vec<u8>>> {
        let mut request = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| Error::internal(format!("cannot build a request to {origin}: {e}")))?;
        let keys = self.own_keys.current();
        let input = XMatrixSigningInput::new(self.server_name.clone(), origin.to_owned(), &keys.keypair);
        let x_matrix = XMatrix::sign_http_request(&request, input)
            .map_err(|e| Error::internal(format!("cannot sign a request to {origin}: {e}")))?;
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, http::HeaderValue::from(&x_matrix));
        self.send_http_limited(origin, request, max_body, DOWNLOAD_TIMEOUT)
            .await
            .map_err(|e| match e.errcode().as_str() {
                "M_TOO_LARGE" => too_large(max_bytes),
                "M_FORBIDDEN" => e,
                _ => fetch_failed(origin, e),
            })
    }
}

/// A path segment with everything but RFC 3986's unreserved characters percent-encoded.
fn encode_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn errcode(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["errcode"].as_str().map(str::to_owned))
}

/// Synapse's mapping of an origin's error: its 404 is ours, anything else a 502.
fn answer_error(origin: &ServerName, status: StatusCode, errcode: Option<String>) -> Error {
    if status == StatusCode::NOT_FOUND {
        return Error::not_found("Not found");
    }
    fetch_failed(origin, format!("{status} {}", errcode.unwrap_or_default()))
}

/// A `multipart/mixed` body (RFC 2046) taken apart: at most [`multipart::MAX_PARTS`] parts,
/// each with at most 32 headers. Garbage is an error, never a panic.
pub mod multipart {
    /// The most parts read (the spec's answers have two).
    pub const MAX_PARTS: usize = 4;
    const MAX_HEADERS: usize = 32;

    /// One part: its headers and its body.
    #[derive(Debug)]
    pub struct Part<'a> {
        headers: Vec<(String, String)>,
        /// The part's content.
        pub body: &'a [u8],
    }

    impl Part<'_> {
        /// The value of the header `name` (case-insensitive).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// The boundary of a `multipart/mixed` content type, if it is one with a valid boundary
    /// (1 to 70 characters of RFC 2046's set, quoted or not).
    pub fn boundary(content_type: &str) -> Option<String> {
        let mut params = content_type.split(';');
        let essence = params.next()?.trim();
        if !essence.eq_ignore_ascii_case("multipart/mixed") {
            return None;
        }
        let value = params.find_map(|p| {
            let (name, value) = p.split_once('=')?;
            name.trim().eq_ignore_ascii_case("boundary").then(|| value.trim())
        })?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        let valid = (1..=70).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"'()+_,-./:=? ".contains(&b))
            && !value.ends_with(' ');
        valid.then(|| value.to_owned())
    }

    /// Where `needle` next occurs in `hay` from `from` (the boundary holds no CR, so each CR
    /// is compared at most once: linear time).
    fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
        let first = *needle.first()?;
        let mut i = from;
        while i + needle.len() <= hay.len() {
            let next = hay[i..].iter().position(|&b| b == first)? + i;
            if hay.get(next..next + needle.len()) == Some(needle) {
                return Some(next);
            }
            i = next + 1;
        }
        None
    }

    /// The parts of `body`, delimited by `boundary`.
    pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
        let delimiter = format!("\r\n--{boundary}").into_bytes();
        // The first delimiter may open the body without its CRLF (no preamble).
        let mut pos = if body.starts_with(&delimiter[2..]) {
            delimiter.len() - 2
        } else {
            find(body, &delimiter, 0).ok_or("no boundary in the body")? + delimiter.len()
        };
        let mut parts = Vec::new();
        loop {
            // After a delimiter: `--` closes, else optional whitespace then CRLF (or LF).
            let rest = &body[pos..];
            // ruma's serializer ends the body with a delimiter lacking the closing `--`.
            if rest.starts_with(b"--") || rest.iter().all(|b| b.is_ascii_whitespace()) {
                return Ok(parts);
            }
            let line_end = rest
                .iter()
                .position(|&b| b == b'\n')
                .ok_or("a boundary line that does not end")?;
            if !rest[..line_end].iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
                return Err("text after a boundary".into());
            }
            let start = pos + line_end + 1;
            let Some(end) = find(body, &delimiter, start) else {
                return Err("a part that never ends".into());
            };
            if parts.len() == MAX_PARTS {
                return Err("too many parts".into());
            }
            parts.push(part(&body[start..end])?);
            pos = end + delimiter.len();
        }
    }

    fn part(raw: &[u8]) -> Result<Part<'_>, String> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (len, parsed) = match httparse::parse_headers(raw, &mut storage) {
            Ok(httparse::Status::Complete((len, parsed))) => (len, parsed),
            Ok(httparse::Status::Partial) => return Err("a part whose headers do not end".into()),
            Err(e) => return Err(format!("a part with bad headers: {e}")),
        };
        let headers = parsed
            .iter()
            .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).trim().to_owned()))
            .collect();
        Ok(Part {
            headers,
            body: &raw[len..],
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn boundaries() {
            assert_eq!(boundary("multipart/mixed; boundary=abc").as_deref(), Some("abc"));
            assert_eq!(boundary("Multipart/Mixed;boundary=\"a b\"").as_deref(), Some("a b"));
            assert_eq!(boundary("application/json"), None);
            assert_eq!(boundary("multipart/mixed"), None);
            assert_eq!(boundary("multipart/mixed; boundary="), None);
            assert_eq!(boundary(&format!("multipart/mixed; boundary={}", "x".repeat(71))), None);
            assert_eq!(boundary("multipart/mixed; boundary=a\rb"), None);
        }

        #[test]
        fn two_parts_parse() {
            let body = b"\r\n--B\r\nContent-Type: application/json\r\n\r\n{}\r\n--B\r\nContent-Type: text/plain\r\nContent-Disposition: inline; filename=\"a.txt\"\r\n\r\nhello\r\n--B--\r\n";
            let parts = parse(body, "B").unwrap();
            assert_eq!(parts.len(), 2);
            assert_eq!(parts[0].body, b"{}");
            assert_eq!(parts[1].header("content-type"), Some("text/plain"));
            assert_eq!(parts[1].body, b"hello");
            // ruma's form: no leading CRLF, a final delimiter without `--`.
            let body =
                b"--B\r\nContent-Type: application/json\r\n\r\n{}\r\n--B\r\nLocation: https://x/y\r\n\r\n\r\n--B";
            let parts = parse(body, "B").unwrap();
            assert_eq!(parts[1].header("Location"), Some("https://x/y"));
            let body =
                b"--B\r\nContent-Type: application/json\r\n\r\n{}\r\n--B\r\nLocation: https://x/y\r\n\r\n\r\n--B--";
            let parts = parse(body, "B").unwrap();
            assert_eq!(parts[1].header("Location"), Some("https://x/y"));
            assert_eq!(parts[1].body, b"");
            // A part without headers.
            let parts = parse(b"--B\r\n\r\nraw\r\n--B--", "B").unwrap();
            assert_eq!(parts[0].body, b"raw");
        }

        #[test]
        fn garbage_is_an_error() {
            for body in [
                &b""[..],
                b"--B",
                b"--B\r\n",
                b"--B\r\n\r\n",
                b"--Bxx\r\n\r\n\r\n--B--",
                b"--B\r\nno colon here\r\n\r\nx\r\n--B--",
                b"\r\n--B\r\n\r\n--B\r\n\r\n--B\r\n\r\n--B\r\n\r\n--B\r\n\r\n--B--",
                b"\r\n--\r\n--B",
                b"--B\r\n\xff\xfe: \x00\r\n\r\n\r\n--B--",
            ] {
                let _ = parse(body, "B");
            }
            assert!(parse(b"--B\r\nX: y\r\n\r\nbody", "B").is_err());
            assert!(parse(b"nothing", "B").is_err());
            assert!(
                parse(
                    b"\r\n--B\r\n\r\nx\r\n--B\r\n\r\ny\r\n--B\r\n\r\nz\r\n--B\r\n\r\nw\r\n--B\r\n\r\nv\r\n--B--",
                    "B"
                )
                .is_err()
            );
        }
    }
}
