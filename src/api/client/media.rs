//! Content repository (spec "Content repository", `client-server-api/#content-repository`,
//! OpenAPI `content-repo.yaml` and `authed-content-repo.yaml`):
//!
//! - `POST /_matrix/media/v3/upload`, `POST /_matrix/media/v1/create`,
//!   `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`
//! - `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}]`,
//!   `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`,
//!   `GET /_matrix/client/v1/media/config`, `GET /_matrix/client/v1/media/preview_url`
//! - legacy `GET /_matrix/media/v3/download/…`, `/thumbnail/…` (frozen unless configured) and
//!   `/config`.
//!
//! Uploads and downloads stream: they are raw actix handlers (the route table buffers bodies)
//! that still authenticate, rate-limit and parse through `extract` and ruma's request types.
//! Every download carries the sandboxing headers; `Range` requests get 206 or 416.

// The legacy endpoints are deprecated in ruma, and served here on purpose.
#![allow(deprecated)]

use std::{future::Future, sync::Arc, time::Duration};

use actix_web::{HttpRequest, HttpResponse, body::SizedStream, http::StatusCode, web};
use futures_util::StreamExt;
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedServerName, UInt,
    api::{
        IncomingRequest,
        client::{
            authenticated_media::{
                get_content as auth_content, get_content_as_filename as auth_filename,
                get_content_thumbnail as auth_thumbnail, get_media_config as auth_config,
                get_media_preview as auth_preview,
            },
            media::{
                create_content, create_content_async, create_mxc_uri, get_content, get_content_as_filename,
                get_content_thumbnail, get_media_config,
            },
        },
    },
};

use crate::{
    Error, Result,
    api::{
        extract::{self, Ctx},
        respond,
        router::{AuthPolicy, RouteTable},
    },
    services::{
        Services,
        media::{MediaInfo, UploadTarget, thumbnails::Method},
        rate_limit::LimitClass,
    },
};

/// Synapse's sandbox for served media.
const CSP: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

/// Types a browser may show inline (Synapse's list); anything else is served as an attachment.
pub(crate) const INLINE_TYPES: &[&str] = &[
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

// ---- JSON endpoints (route table) ----

/// `GET /_matrix/client/v1/media/config`.
pub async fn config(ctx: Ctx, _: auth_config::v1::Request) -> Result<auth_config::v1::Response> {
    Ok(auth_config::v1::Response::new(upload_size(&ctx)))
}

/// `GET /_matrix/media/v3/config` (deprecated).
pub async fn legacy_config(ctx: Ctx, _: get_media_config::v3::Request) -> Result<get_media_config::v3::Response> {
    Ok(get_media_config::v3::Response::new(upload_size(&ctx)))
}

fn upload_size(ctx: &Ctx) -> UInt {
    UInt::try_from(ctx.services.media.config().max_upload_size).unwrap_or(UInt::MAX)
}

/// `POST /_matrix/media/v1/create`.
pub async fn create(ctx: Ctx, _: create_mxc_uri::v1::Request) -> Result<create_mxc_uri::v1::Response> {
    let (uri, expires_ms) = ctx.services.media.create_pending(ctx.user_id()?).await?;
    let mut response = create_mxc_uri::v1::Response::new(uri);
    response.unused_expires_at = UInt::try_from(expires_ms).ok().map(MilliSecondsSinceUnixEpoch);
    Ok(response)
}

/// `GET /_matrix/client/v1/media/preview_url`.
pub async fn preview_url(ctx: Ctx, request: auth_preview::v1::Request) -> Result<auth_preview::v1::Response> {
    let data = ctx.services.media.preview_url(&request.url, ctx.user_id()?).await?;
    auth_preview::v1::Response::from_serialize(&data).map_err(|e| Error::internal(e.to_string()))
}

// ---- Streaming endpoints ----

/// Registers the streaming endpoints (upload, download, thumbnail) on every path ruma knows.
pub fn configure_streaming(cfg: &mut RouteTable) {
    raw::<create_content::v3::Request, _, _>(cfg, upload);
    raw::<create_content_async::v3::Request, _, _>(cfg, upload_async);
    raw::<auth_content::v1::Request, _, _>(cfg, |r, _, s, t| download::<auth_content::v1::Request>(r, s, t));
    raw::<auth_filename::v1::Request, _, _>(cfg, |r, _, s, t| download::<auth_filename::v1::Request>(r, s, t));
    raw::<get_content::v3::Request, _, _>(cfg, |r, _, s, t| download::<get_content::v3::Request>(r, s, t));
    raw::<get_content_as_filename::v3::Request, _, _>(cfg, |r, _, s, t| {
        download::<get_content_as_filename::v3::Request>(r, s, t)
    });
    raw::<auth_thumbnail::v1::Request, _, _>(cfg, |r, _, s, t| thumbnail::<auth_thumbnail::v1::Request>(r, s, t));
    raw::<get_content_thumbnail::v3::Request, _, _>(cfg, |r, _, s, t| {
        thumbnail::<get_content_thumbnail::v3::Request>(r, s, t)
    });
}

/// Registers a raw (streaming) handler for every path of `R`.
pub(crate) fn raw<R, F, Fut>(table: &mut RouteTable, handler: F)
where
    R: IncomingRequest,
    F: Fn(HttpRequest, web::Payload, Arc<Services>, &'static str) -> Fut + Clone + 'static,
    Fut: Future<Output = HttpResponse> + 'static,
{
    let method = actix_web::http::Method::from_bytes(R::METHOD.as_str().as_bytes()).expect("ruma methods are valid");
    for path in ruma::api::path_builder::PathBuilder::all_paths(&R::PATH_BUILDER) {
        let handler = handler.clone();
        let method = method.clone();
        table.add_route(path, move || {
            let handler = handler.clone();
            web::method(method.clone()).to(
                move |req: HttpRequest, payload: web::Payload, services: web::Data<Services>| {
                    handler(req, payload, services.into_inner(), path)
                },
            )
        });
    }
}

/// Authenticates, rate-limits and parses `R` from the head of the request (no body).
async fn head<R>(req: &HttpRequest, services: &Arc<Services>, template: &'static str) -> Result<(Ctx, R)>
where
    R: IncomingRequest,
    R::Authentication: AuthPolicy,
{
    let prepared = extract::prepare_head(
        req,
        services,
        <R::Authentication as AuthPolicy>::REQUIREMENT,
        R::RATE_LIMITED.then_some(LimitClass::Client),
        template,
    )
    .await?;
    let request = extract::parse(&prepared)?;
    Ok((prepared.ctx, request))
}

pub(crate) fn answer(result: Result<HttpResponse>) -> HttpResponse {
    result.unwrap_or_else(respond::error)
}

async fn upload(
    req: HttpRequest,
    payload: web::Payload,
    services: Arc<Services>,
    template: &'static str,
) -> HttpResponse {
    answer(
        async {
            let (ctx, request): (_, create_content::v3::Request) = head(&req, &services, template).await?;
            let user = ctx.owned_user_id()?;
            check_length(&req, &services)?;
            let upload = services.media.begin_upload(&user, UploadTarget::New)?;
            let uri = receive(upload, payload, request.content_type, request.filename).await?;
            Ok(respond::ruma_response(create_content::v3::Response::new(uri)))
        }
        .await,
    )
}

async fn upload_async(
    req: HttpRequest,
    payload: web::Payload,
    services: Arc<Services>,
    template: &'static str,
) -> HttpResponse {
    answer(
        async {
            let (ctx, request): (_, create_content_async::v3::Request) = head(&req, &services, template).await?;
            let user = ctx.owned_user_id()?;
            let target = UploadTarget::Created {
                server: request.server_name,
                media_id: request.media_id,
            };
            let upload = services.media.begin_upload(&user, target)?;
            check_length(&req, &services)?;
            receive(upload, payload, request.content_type, request.filename).await?;
            Ok(HttpResponse::Ok().content_type("application/json").body("{}"))
        }
        .await,
    )
}

/// 413 before reading a body whose declared length is over the limit.
fn check_length(req: &HttpRequest, services: &Services) -> Result<()> {
    let max = services.media.config().max_upload_size;
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > max => Err(Error::too_large(format!("The upload is larger than {max} bytes"))),
        _ => Ok(()),
    }
}

/// Streams the body into the upload and completes it.
async fn receive(
    mut upload: crate::services::media::Upload<'_>,
    mut payload: web::Payload,
    content_type: Option<String>,
    filename: Option<String>,
) -> Result<ruma::OwnedMxcUri> {
    while let Some(chunk) = payload.next().await {
        let written = match chunk {
            Ok(chunk) => upload.write(&chunk).await,
            Err(e) => Err(Error::bad_json(format!("Could not read the request body: {e}"))),
        };
        if let Err(e) = written {
            upload.abort().await;
            return Err(e);
        }
    }
    upload.finish(content_type, filename).await
}

/// What the download endpoints have in common.
struct Download {
    server_name: OwnedServerName,
    media_id: String,
    filename: Option<String>,
    timeout: Duration,
    legacy: bool,
}

trait DownloadRequest: IncomingRequest<Authentication: AuthPolicy> {
    fn into_download(self) -> Download;
}

/// The download requests have the same fields, authenticated or legacy (`$legacy`), with or
/// without a file name.
macro_rules! download_request {
    ($request:ty, legacy: $legacy:expr, filename: |$r:ident| $filename:expr) => {
        impl DownloadRequest for $request {
            fn into_download(self) -> Download {
                let $r = self;
                Download {
                    filename: $filename,
                    server_name: $r.server_name,
                    media_id: $r.media_id,
                    timeout: $r.timeout_ms,
                    legacy: $legacy,
                }
            }
        }
    };
}

download_request!(auth_content::v1::Request, legacy: false, filename: |r| None);
download_request!(auth_filename::v1::Request, legacy: false, filename: |r| Some(r.filename));
download_request!(get_content::v3::Request, legacy: true, filename: |r| None);
download_request!(get_content_as_filename::v3::Request, legacy: true, filename: |r| Some(r.filename));

fn frozen() -> Error {
    Error::not_found("Not found: this media is only served by the authenticated media endpoints")
}

async fn download<R: DownloadRequest>(
    req: HttpRequest,
    services: Arc<Services>,
    template: &'static str,
) -> HttpResponse {
    answer(
        async {
            let (_ctx, request): (_, R) = head(&req, &services, template).await?;
            let d = request.into_download();
            let media = &services.media;
            // The legacy endpoints never fetch remote media (Synapse with authenticated media).
            let info = if d.legacy {
                media.get(&d.server_name, &d.media_id, d.timeout).await?
            } else {
                media
                    .get_or_fetch(&services.federation, &d.server_name, &d.media_id, d.timeout)
                    .await?
            };
            if d.legacy && !media.legacy_allowed(&info) {
                return Err(frozen());
            }
            let range = req
                .headers()
                .get(actix_web::http::header::RANGE)
                .and_then(|v| v.to_str().ok());
            let (status, start, end) = match parse_range(range, info.size) {
                RangeRequest::Full => (StatusCode::OK, 0, info.size),
                RangeRequest::Partial(start, end) => (StatusCode::PARTIAL_CONTENT, start, end),
                RangeRequest::Unsatisfiable => {
                    let mut response = respond::error(Error::new(
                        http::StatusCode::RANGE_NOT_SATISFIABLE,
                        ruma::api::error::ErrorKind::Unknown,
                        "The requested range is not satisfiable",
                    ));
                    response.headers_mut().insert(
                        actix_web::http::header::CONTENT_RANGE,
                        header_value(&format!("bytes */{}", info.size)),
                    );
                    return Ok(response);
                }
            };
            let mut builder = HttpResponse::build(status);
            safe_headers(&mut builder, &info, d.filename.as_deref());
            builder.insert_header((actix_web::http::header::ACCEPT_RANGES, "bytes"));
            if status == StatusCode::PARTIAL_CONTENT {
                builder.insert_header((
                    actix_web::http::header::CONTENT_RANGE,
                    format!("bytes {start}-{}/{}", end - 1, info.size),
                ));
            }
            let stream = media.read(&d.server_name, &d.media_id, &info, start, end);
            Ok(builder.body(SizedStream::new(end - start, stream)))
        }
        .await,
    )
}

fn header_value(text: &str) -> actix_web::http::header::HeaderValue {
    actix_web::http::header::HeaderValue::from_str(text)
        .unwrap_or_else(|_| actix_web::http::header::HeaderValue::from_static(""))
}

pub(crate) fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Content type as uploaded, inline only for safe types, sandboxing and cross-origin headers.
fn safe_headers(builder: &mut actix_web::HttpResponseBuilder, info: &MediaInfo, filename: Option<&str>) {
    let content_type = info
        .content_type
        .clone()
        .filter(|t| actix_web::http::header::HeaderValue::from_str(t).is_ok())
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let inline = INLINE_TYPES.contains(&essence(&content_type).as_str());
    let disposition = if inline { "inline" } else { "attachment" };
    let disposition = match filename.or(info.filename.as_deref()) {
        Some(name) => format!("{disposition}; {}", filename_param(name)),
        None => disposition.to_owned(),
    };
    builder
        .insert_header((actix_web::http::header::CONTENT_TYPE, content_type))
        .insert_header((actix_web::http::header::CONTENT_DISPOSITION, disposition));
    common_headers(builder);
}

fn common_headers(builder: &mut actix_web::HttpResponseBuilder) {
    builder
        .insert_header(("Content-Security-Policy", CSP))
        .insert_header(("Cross-Origin-Resource-Policy", "cross-origin"))
        .insert_header(("X-Content-Type-Options", "nosniff"));
}

/// `filename="…"` for plain ASCII names, RFC 5987 `filename*=utf-8''…` otherwise.
pub(crate) fn filename_param(name: &str) -> String {
    let plain = name
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' && b != b';');
    if plain {
        return format!("filename=\"{name}\"");
    }
    let mut out = String::from("filename*=utf-8''");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, PartialEq)]
enum RangeRequest {
    Full,
    /// `start..end`, end exclusive.
    Partial(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range; anything else (several ranges, other units, garbage) is served whole,
/// as RFC 9110 allows.
fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    match (first.parse::<u64>(), last.parse::<u64>()) {
        (Err(_), Ok(suffix)) if first.is_empty() => {
            if suffix == 0 || size == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(size.saturating_sub(suffix), size)
            }
        }
        (Ok(start), Err(_)) if last.is_empty() => {
            if start >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(start, size)
            }
        }
        (Ok(start), Ok(end)) if start <= end => {
            if start >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(start, end.min(size - 1) + 1)
            }
        }
        _ => RangeRequest::Full,
    }
}

struct ThumbnailArgs {
    server_name: OwnedServerName,
    media_id: String,
    width: u32,
    height: u32,
    method: Method,
    animated: bool,
    timeout: Duration,
    legacy: bool,
}

trait ThumbnailRequest: IncomingRequest<Authentication: AuthPolicy> {
    fn into_args(self) -> Result<ThumbnailArgs>;
}

pub(crate) fn method(m: Option<&ruma::media::Method>) -> Result<Method> {
    match m {
        None | Some(ruma::media::Method::Scale) => Ok(Method::Scale),
        Some(ruma::media::Method::Crop) => Ok(Method::Crop),
        Some(other) => Err(Error::invalid_param(format!(
            "Unknown thumbnail method {}",
            other.as_str()
        ))),
    }
}

pub(crate) fn side(n: UInt) -> u32 {
    u32::try_from(u64::from(n)).unwrap_or(u32::MAX)
}

/// The thumbnail requests have the same fields, authenticated or legacy (`$legacy`).
macro_rules! thumbnail_request {
    ($request:ty, legacy: $legacy:expr) => {
        impl ThumbnailRequest for $request {
            fn into_args(self) -> Result<ThumbnailArgs> {
                Ok(ThumbnailArgs {
                    method: method(self.method.as_ref())?,
                    server_name: self.server_name,
                    media_id: self.media_id,
                    width: side(self.width),
                    height: side(self.height),
                    animated: self.animated.unwrap_or(false),
                    timeout: self.timeout_ms,
                    legacy: $legacy,
                })
            }
        }
    };
}

thumbnail_request!(auth_thumbnail::v1::Request, legacy: false);
thumbnail_request!(get_content_thumbnail::v3::Request, legacy: true);

async fn thumbnail<R: ThumbnailRequest>(
    req: HttpRequest,
    services: Arc<Services>,
    template: &'static str,
) -> HttpResponse {
    answer(
        async {
            let (_ctx, request): (_, R) = head(&req, &services, template).await?;
            let a = request.into_args()?;
            let media = &services.media;
            if a.legacy {
                let info = media.get(&a.server_name, &a.media_id, a.timeout).await?;
                if !media.legacy_allowed(&info) {
                    return Err(frozen());
                }
            }
            let fetch_remote = (!a.legacy).then_some(&services.federation);
            let thumb = media
                .thumbnail(
                    fetch_remote,
                    &a.server_name,
                    &a.media_id,
                    a.width,
                    a.height,
                    a.method,
                    a.animated,
                    a.timeout,
                )
                .await?;
            let mut builder = HttpResponse::Ok();
            builder
                .insert_header((actix_web::http::header::CONTENT_TYPE, thumb.content_type))
                .insert_header((actix_web::http::header::CONTENT_DISPOSITION, "inline"));
            common_headers(&mut builder);
            Ok(builder.body(thumb.bytes))
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range(None, 10), Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Partial(0, 5));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Partial(5, 10));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Partial(7, 10));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Partial(0, 10));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Partial(8, 10));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Full);
    }

    #[test]
    fn filenames_are_quoted_or_encoded() {
        assert_eq!(filename_param("cat.png"), "filename=\"cat.png\"");
        assert_eq!(filename_param("ça\"va.txt"), "filename*=utf-8''%C3%A7a%22va.txt");
    }
}
