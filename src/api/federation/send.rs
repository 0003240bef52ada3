//! Transactions (server-server-api "Transactions"): `PUT /_matrix/federation/v1/send/{txnId}`.

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
    // Users of the origin who joined: our users' presence goes to it.
    for pdu in &req.pdus {
        if let Some((room_id, user_id)) = crate::services::federation::presence::joined_member(pdu.get())
            && user_id.server_name() == origin
            && services.rooms.membership(&room_id, &user_id).ok().flatten().as_deref() == Some("join")
        {
            services.presence_on_join(&room_id, &user_id);
        }
    }
    Ok(send_transaction_message::v1::Response::new((*results).clone()))
}
