//! Reporting content.
//!
//! - `POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}`
//! - `POST /_matrix/client/v3/rooms/{roomId}/report`
//! - `POST /_matrix/client/v3/users/{userId}/report`
//!
//! Spec: client-server-api "Reporting content" (`data/api/client-server/report_content.yaml`).

use ruma::api::client::{
    reporting::report_user,
    room::{report_content, report_room},
};

use crate::{Result, api::extract::Ctx};

/// `POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}`
pub async fn report_content(ctx: Ctx, req: report_content::v3::Request) -> Result<report_content::v3::Response> {
    let s = &ctx.services;
    s.reports
        .event(
            &s.rooms,
            ctx.user_id()?,
            &req.room_id,
            &req.event_id,
            req.reason.as_deref(),
        )
        .await?;
    Ok(report_content::v3::Response::new())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report`
pub async fn report_room(ctx: Ctx, req: report_room::v3::Request) -> Result<report_room::v3::Response> {
    let s = &ctx.services;
    s.reports
        .room(&s.rooms, ctx.user_id()?, &req.room_id, &req.reason)
        .await?;
    Ok(report_room::v3::Response::new())
}

/// `POST /_matrix/client/v3/users/{userId}/report`
pub async fn report_user(ctx: Ctx, req: report_user::v3::Request) -> Result<report_user::v3::Response> {
    let s = &ctx.services;
    s.reports
        .user(&s.accounts, ctx.user_id()?, &req.user_id, &req.reason)
        .await?;
    Ok(report_user::v3::Response::new())
}
