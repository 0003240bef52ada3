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
    Ok(send_transaction_message::v1::Response::new((*results).clone()))
}
