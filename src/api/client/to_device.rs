//! Send-to-device messaging.
//!
//! - `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
//!
//! Spec: client-server-api "Send-to-Device messaging" (`modules/send_to_device.md`,
//! `data/api/client-server/to_device.yaml`).

use ruma::{api::client::to_device::send_event_to_device, to_device::DeviceIdOrAllDevices};

use crate::{Result, api::extract::Ctx, services::keys::to_device::Target};

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
pub async fn send_event_to_device(
    ctx: Ctx,
    req: send_event_to_device::v3::Request,
) -> Result<send_event_to_device::v3::Response> {
    let session = ctx.session()?;
    let for_appservices: Vec<(ruma::OwnedUserId, Option<String>, serde_json::Value)> =
        if ctx.services.appservices.all().iter().any(|s| s.receive_ephemeral) {
            req.messages
                .iter()
                .flat_map(|(user, devices)| {
                    devices.iter().filter_map(move |(device, content)| {
                        let device = match device {
                            DeviceIdOrAllDevices::DeviceId(id) => Some(id.to_string()),
                            DeviceIdOrAllDevices::AllDevices => None,
                        };
                        Some((user.clone(), device, serde_json::from_str(content.json().get()).ok()?))
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
    let messages = req
        .messages
        .iter()
        .flat_map(|(user, devices)| {
            devices.iter().map(move |(device, content)| {
                let target = match device {
                    DeviceIdOrAllDevices::DeviceId(id) => Target::Device(id.to_string()),
                    DeviceIdOrAllDevices::AllDevices => Target::All,
                };
                (user.clone(), target, content.json().to_owned())
            })
        })
        .collect();
    let sessions = &ctx.services.sessions;
    let devices_of = |user: &ruma::UserId| -> Result<Vec<String>> {
        Ok(sessions
            .list_devices(user)?
            .into_iter()
            .map(|d| d.device_id.to_string())
            .collect())
    };
    let federation = &ctx.services.federation;
    let event_type = req.event_type.to_string();
    let mut queued = None;
    let written = ctx
        .services
        .keys
        .send_to_device(
            (&session.user_id, session.device_id.as_str()),
            (&event_type, req.txn_id.as_str()),
            messages,
            &devices_of,
            &mut |batch, remote| {
                queued = Some(federation.queue_to_device(batch, &session.user_id, &event_type, remote)?);
                Ok(())
            },
        )
        .await;
    if let Some(queued) = queued {
        federation.wake(queued);
    }
    written?;
    if !for_appservices.is_empty() {
        ctx.services
            .appservice_to_device(&session.user_id, &req.event_type.to_string(), &for_appservices);
    }
    Ok(send_event_to_device::v3::Response::new())
}
