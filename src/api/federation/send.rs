//! Transactions (server-server-api "Transactions"): `PUT /_matrix/federation/v1/send/{txnId}`.
//! A user of the origin who joins a room through it gets our users' presence sent to the
//! origin (`federation/presence.rs`).

use ruma::api::federation::transactions::send_transaction_message;

use super::origin;
use crate::{Error, Result, api::extract::Ctx};

/// `PUT /_matrix/federation/v1/send/{txnId}`
pub async fn send_transaction(
    ctx: Ctx,
    req: send_transaction_message::v1::Request,
) -> Result<send_transaction_message::v1::Response> {
    let origin = origin(&ctx)?;
    if req.origin != origin {
        return Err(Error::forbidden(
            "The transaction's origin is not the server that signed it",
        ));
    }
    let services = &ctx.services;
    let joined = |room_id: &ruma::RoomId, user_id: &ruma::UserId| {
        services.rooms.membership(room_id, user_id).ok().flatten().as_deref() == Some("join")
    };
    // Users of the origin joining (not joined before: a rename is a join too).
    let joining: Vec<(ruma::OwnedRoomId, ruma::OwnedUserId)> = req
        .pdus
        .iter()
        .filter_map(|pdu| crate::services::federation::presence::joined_member(pdu.get()))
        .filter(|(room_id, user_id)| user_id.server_name() == origin && !joined(room_id, user_id))
        .collect();
    let results = services
        .federation
        .receive_transaction(
            &services.rooms,
            origin,
            req.transaction_id.as_str(),
            &req.pdus,
            req.edus.len(),
        )
        .await?;
    crate::services::federation::edu::receive_edus(services, origin, &req.edus).await;
    // Those who did join get our users' presence sent to their server.
    for (room_id, user_id) in joining {
        if joined(&room_id, &user_id) {
            services.presence_on_join(&room_id, &user_id);
        }
    }
    Ok(send_transaction_message::v1::Response::new((*results).clone()))
}
