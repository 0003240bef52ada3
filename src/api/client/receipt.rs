//! Receipts and read markers.
//!
//! - `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}` (`m.read`,
//!   `m.read.private`, and `m.fully_read`, which sets the read marker)
//! - `POST /_matrix/client/v3/rooms/{roomId}/read_markers`
//!
//! Spec: client-server-api "Receipts" and "Fully read markers" (`data/api/client-server/
//! receipts.yaml`, `read_markers.yaml`).

use ruma::api::client::{
    read_marker::set_read_marker,
    receipt::create_receipt::{self, v3::ReceiptType},
};
use ruma::events::receipt::ReceiptThread;

use crate::{Error, Result, api::extract::Ctx};

/// `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}`
pub async fn create_receipt(ctx: Ctx, req: create_receipt::v3::Request) -> Result<create_receipt::v3::Response> {
    let user_id = ctx.user_id()?;
    let thread = match &req.thread {
        ReceiptThread::Unthreaded => None,
        ReceiptThread::Main => Some("main".to_owned()),
        ReceiptThread::Thread(id) => Some(id.to_string()),
        _ => return Err(Error::invalid_param("Invalid thread_id")),
    };
    let services = &ctx.services;
    match req.receipt_type {
        ReceiptType::FullyRead => {
            if thread.is_some() {
                return Err(Error::invalid_param("m.fully_read takes no thread_id"));
            }
            services
                .set_read_markers(&req.room_id, user_id, Some(&req.event_id), &[])
                .await?
        }
        ReceiptType::Read | ReceiptType::ReadPrivate => {
            if let Some(thread) = &thread
                && !services.rooms.in_thread(&req.event_id, thread)?
            {
                return Err(Error::invalid_param(format!(
                    "event_id {} is not related to thread {thread}",
                    req.event_id
                )));
            }
            let kind = req.receipt_type.to_string();
            services
                .set_read_markers(
                    &req.room_id,
                    user_id,
                    None,
                    &[(kind.as_str(), &req.event_id, thread.as_deref())],
                )
                .await?
        }
        _ => return Err(Error::invalid_param("Unknown receipt type")),
    }
    Ok(create_receipt::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/read_markers`
pub async fn set_read_marker(ctx: Ctx, req: set_read_marker::v3::Request) -> Result<set_read_marker::v3::Response> {
    let user_id = ctx.user_id()?;
    let mut receipts = Vec::new();
    if let Some(event_id) = &req.read_receipt {
        receipts.push(("m.read", &**event_id, None));
    }
    if let Some(event_id) = &req.private_read_receipt {
        receipts.push(("m.read.private", &**event_id, None));
    }
    ctx.services
        .set_read_markers(&req.room_id, user_id, req.fully_read.as_deref(), &receipts)
        .await?;
    Ok(set_read_marker::v3::Response::new())
}
