//! Content repository for other servers (spec server-server-api "Content Repository", OpenAPI
//! `server-server/content_repository.yaml`):
//!
//! - `GET /_matrix/federation/v1/media/download/{mediaId}`
//! - `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`
//!
//! Both are `X-Matrix` authenticated and answer `multipart/mixed`: a JSON part (`{}`, the
//! metadata), then the bytes with their `Content-Type` and `Content-Disposition` (we never use
//! the `Location` form). Only our own media is served; another server's (even cached here) or an
//! unknown id is 404 `M_NOT_FOUND`. Downloads stream from RocksDB chunk by chunk; thumbnails
//! follow the client thumbnail rules. Raw handlers (so bodies stream), mounted only when
//! federation is on.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, body::SizedStream, web};
use bytes::Bytes;
use futures_util::StreamExt;
use ruma::api::{
    IncomingRequest,
    federation::authenticated_media::{get_content, get_content_thumbnail},
};

use crate::{
    Result,
    api::{
        client::media::{INLINE_TYPES, answer, essence, filename_param, method, raw, side},
        extract,
        router::{AuthPolicy, RouteTable},
    },
    services::{Services, rate_limit::LimitClass},
};

/// Registers the two endpoints.
pub fn configure(table: &mut RouteTable) {
    raw::<get_content::v1::Request, _, _>(table, download);
    raw::<get_content_thumbnail::v1::Request, _, _>(table, thumbnail);
}

/// Checks the `X-Matrix` signature, rate-limits and parses `R`.
async fn prepare<R>(
    req: &HttpRequest,
    payload: web::Payload,
    services: &Arc<Services>,
    template: &'static str,
) -> Result<R>
where
    R: IncomingRequest,
    R::Authentication: AuthPolicy,
{
    let prepared = extract::prepare(
        req,
        payload,
        services,
        <R::Authentication as AuthPolicy>::REQUIREMENT,
        R::RATE_LIMITED.then_some(LimitClass::Client),
        template,
    )
    .await?;
    extract::parse(&prepared)
}

/// The multipart framing around the file: the `Content-Type` with a fresh boundary, the body
/// up to the file and the end after it.
fn framing(content_type: &str, disposition: &str) -> (String, String, String) {
    let boundary = crate::util::random_string(32);
    let head = format!(
        "\r\n--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\nContent-Type: {content_type}\r\nContent-Disposition: {disposition}\r\n\r\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    (format!("multipart/mixed; boundary={boundary}"), head, tail)
}

fn disposition(content_type: &str, filename: Option<&str>) -> String {
    let kind = if INLINE_TYPES.contains(&essence(content_type).as_str()) {
        "inline"
    } else {
        "attachment"
    };
    match filename {
        Some(name) => format!("{kind}; {}", filename_param(name)),
        None => kind.to_owned(),
    }
}

/// A header-safe content type (anything else is sent as `application/octet-stream`).
fn safe_type(content_type: Option<&str>) -> String {
    content_type
        .filter(|t| !t.is_empty() && t.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .unwrap_or("application/octet-stream")
        .to_owned()
}

async fn download(
    req: HttpRequest,
    payload: web::Payload,
    services: Arc<Services>,
    template: &'static str,
) -> HttpResponse {
    answer(
        async {
            let request: get_content::v1::Request = prepare(&req, payload, &services, template).await?;
            let media = &services.media;
            let ours = services.federation.server_name();
            let info = media.get(ours, &request.media_id, request.timeout_ms).await?;
            let content_type = safe_type(info.content_type.as_deref());
            let (multipart, head, tail) = framing(&content_type, &disposition(&content_type, info.filename.as_deref()));
            let length = head.len() as u64 + info.size + tail.len() as u64;
            let file = media.read(ours, &request.media_id, &info, 0, info.size);
            let body = futures_util::stream::once(async move { Ok(Bytes::from(head)) })
                .chain(file)
                .chain(futures_util::stream::once(async move { Ok(Bytes::from(tail)) }));
            Ok(HttpResponse::Ok()
                .insert_header((actix_web::http::header::CONTENT_TYPE, multipart))
                .body(SizedStream::new(length, body)))
        }
        .await,
    )
}

async fn thumbnail(
    req: HttpRequest,
    payload: web::Payload,
    services: Arc<Services>,
    template: &'static str,
) -> HttpResponse {
    answer(
        async {
            let request: get_content_thumbnail::v1::Request = prepare(&req, payload, &services, template).await?;
            let ours = services.federation.server_name();
            let thumb = services
                .media
                .thumbnail(
                    None,
                    ours,
                    &request.media_id,
                    side(request.width),
                    side(request.height),
                    method(request.method.as_ref())?,
                    request.animated.unwrap_or(false),
                    request.timeout_ms,
                )
                .await?;
            let content_type = safe_type(Some(&thumb.content_type));
            let (multipart, head, tail) = framing(&content_type, "inline");
            let mut body = head.into_bytes();
            body.extend_from_slice(&thumb.bytes);
            body.extend_from_slice(tail.as_bytes());
            Ok(HttpResponse::Ok()
                .insert_header((actix_web::http::header::CONTENT_TYPE, multipart))
                .body(body))
        }
        .await,
    )
}
