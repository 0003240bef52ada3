//! Turning results into HTTP responses: ruma responses, Matrix errors (through the single
//! conversion in [`crate::error`]), the `M_UNRECOGNIZED` fallbacks, and the middleware that adds
//! CORS headers and traces every request.

use std::time::Instant;

use actix_web::{
    HttpResponse,
    body::{BoxBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::{Method, StatusCode, header},
    middleware::Next,
};
use ruma::api::OutgoingResponseExt;

use crate::{Error, error::MatrixError};

/// A ruma response as an actix response.
pub fn ruma_response<T: OutgoingResponseExt>(response: T) -> HttpResponse {
    match response.try_into_http_response::<bytes::BytesMut>() {
        Ok(http) => from_http(http),
        Err(e) => error(Error::internal(format!("serialising the response: {e}"))),
    }
}

fn from_http(response: http::Response<bytes::BytesMut>) -> HttpResponse {
    let (parts, body) = response.into_parts();
    let mut builder =
        HttpResponse::build(StatusCode::from_u16(parts.status.as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (name, value) in &parts.headers {
        builder.append_header((name.as_str(), value.as_bytes()));
    }
    builder.body(body.freeze())
}

/// An error as a Matrix error response. Internal errors are logged here, once.
pub fn error(error: Error) -> HttpResponse {
    if let Error::Internal(detail) = &error {
        tracing::error!("internal error: {detail}");
    }
    let http = match error.into_matrix() {
        MatrixError::Standard(e) => e.try_into_http_response::<bytes::BytesMut>(),
        MatrixError::Uiaa(e) => e.try_into_http_response::<bytes::BytesMut>(),
    };
    match http {
        Ok(http) => from_http(http),
        Err(_) => HttpResponse::InternalServerError()
            .content_type("application/json")
            .body(r#"{"errcode":"M_UNKNOWN","error":"Internal server error"}"#),
    }
}

/// A JSON answer (200).
pub fn json(value: serde_json::Value) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(value.to_string())
}

/// 405 for a known path with an unsupported method.
pub async fn method_not_allowed() -> HttpResponse {
    error(Error::method_not_allowed())
}

/// 404 for everything no route matches.
pub async fn not_found() -> HttpResponse {
    error(Error::unrecognized())
}

/// Adds the CORS headers the spec requires to every response, answers preflight `OPTIONS`
/// requests directly, and logs each request (without its query string, which may hold a token).
pub async fn cors_and_trace(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.path().to_owned();
    let mut response = if method == Method::OPTIONS {
        req.into_response(HttpResponse::Ok().finish())
    } else {
        next.call(req).await?.map_into_boxed_body()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        header::HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        header::HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(target: "hearth::http", %method, %path, status, ms, "request failed");
    } else {
        tracing::info!(target: "hearth::http", %method, %path, status, ms);
    }
    Ok(response)
}
