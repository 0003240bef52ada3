//! To-device messages across servers (spec, server-server API, "Send-to-device messaging"; the
//! `m.direct_to_device` EDU), both ways.
//!
//! **Outbound.** A local `sendToDevice` request's messages for users of other servers are
//! grouped per destination into `m.direct_to_device` EDUs (`sender`, `type`, a random
//! `message_id`, `messages`: user → device id or `*` → content), split so one EDU stays under
//! [`SOFT_MAX_EDU_BYTES`] (as Synapse does; one oversized message goes alone), and written to
//! the persistent EDU queue (`sender/`, `destseq_fededu`) in the batch that records the
//! request's transaction: queued once, delivered at least once and in order (one transaction
//! in flight per destination), deleted after the 200.
//!
//! **Inbound.** An EDU counts only when its `sender` belongs to the server that sent it (a
//! forged sender is ignored and logged); its messages for our users go into their devices'
//! inboxes (`*`: every device) through `Keys::receive_remote_to_device`, which delivers one
//! (origin, `message_id`) once, so a retransmitted transaction delivers nothing twice, and at
//! most `MAX_REMOTE_DELIVERIES` device messages per EDU.

use std::collections::BTreeMap;

use ruma::{
    OwnedServerName, ServerName, UserId, api::federation::transactions::edu::DirectDeviceContent,
    to_device::DeviceIdOrAllDevices,
};
use serde_json::{Map, Value, json, value::RawValue};

use super::{Federation, sender::QueuedDurable};
use crate::{
    Result,
    services::{
        Services,
        keys::to_device::{RemoteMessages, Target},
    },
    storage::Batch,
};

/// An EDU's messages are split to stay under this many bytes (Synapse's `SOFT_MAX_EDU_SIZE`).
pub const SOFT_MAX_EDU_BYTES: usize = 65_536;

/// Room for an EDU's envelope (`edu_type`, `sender`, `type`, `message_id`, the braces).
const ENVELOPE_BYTES: usize = 256;

impl Federation {
    /// Queues `event_type` messages of our user `sender` for users of other servers as
    /// `m.direct_to_device` EDUs in `batch` (see the module documentation); call
    /// [`Federation::wake`] with the answer once the batch is committed.
    pub fn queue_to_device(
        &self,
        batch: &mut Batch,
        sender: &UserId,
        event_type: &str,
        messages: RemoteMessages,
    ) -> Result<QueuedDurable> {
        self.queue_durable_edus(batch, &to_device_edus(sender, event_type, messages))
    }
}

/// The `m.direct_to_device` EDUs carrying `messages`: per destination server, split so each
/// stays under about [`SOFT_MAX_EDU_BYTES`] (one message larger than that goes alone).
fn to_device_edus(sender: &UserId, event_type: &str, messages: RemoteMessages) -> Vec<(OwnedServerName, Value)> {
    let mut per_server: BTreeMap<OwnedServerName, Vec<(String, String, Value)>> = BTreeMap::new();
    for (user, target, content) in messages {
        let device = match target {
            Target::Device(id) => id,
            Target::All => "*".to_owned(),
        };
        per_server
            .entry(user.server_name().to_owned())
            .or_default()
            .push((user.to_string(), device, content));
    }
    let base = ENVELOPE_BYTES + sender.as_str().len() + event_type.len();
    let mut edus = Vec::new();
    for (server, entries) in per_server {
        let mut messages: Map<String, Value> = Map::new();
        let mut size = base;
        for (user, device, content) in entries {
            let entry = user.len() + device.len() + content.to_string().len() + 8;
            if !messages.is_empty() && size + entry > SOFT_MAX_EDU_BYTES {
                edus.push((
                    server.clone(),
                    direct_to_device(sender, event_type, std::mem::take(&mut messages)),
                ));
                size = base;
            }
            size += entry;
            let by_device = messages.entry(user).or_insert_with(|| json!({}));
            by_device[device] = content;
        }
        if !messages.is_empty() {
            edus.push((server, direct_to_device(sender, event_type, messages)));
        }
    }
    edus
}

/// One `m.direct_to_device` EDU with a fresh message id.
fn direct_to_device(sender: &UserId, event_type: &str, messages: Map<String, Value>) -> Value {
    json!({
        "edu_type": "m.direct_to_device",
        "content": {
            "sender": sender,
            "type": event_type,
            "message_id": crate::util::random_string(24),
            "messages": messages,
        },
    })
}

/// Delivers an `m.direct_to_device` EDU's `content` from `origin` to our users' devices.
pub(super) async fn receive_direct_to_device(services: &Services, origin: &ServerName, content: &RawValue) {
    let content: DirectDeviceContent = match serde_json::from_str(content.get()) {
        Ok(content) => content,
        Err(e) => {
            tracing::info!(%origin, error = %e, "malformed m.direct_to_device EDU ignored");
            return;
        }
    };
    if content.sender.server_name() != origin {
        tracing::warn!(%origin, sender = %content.sender, "m.direct_to_device EDU with a sender of another server ignored");
        return;
    }
    let messages = content
        .messages
        .into_iter()
        .flat_map(|(user, devices)| {
            devices.into_iter().map(move |(device, message)| {
                let target = match device {
                    DeviceIdOrAllDevices::DeviceId(id) => Target::Device(id.to_string()),
                    DeviceIdOrAllDevices::AllDevices => Target::All,
                };
                (user.clone(), target, message.into_json())
            })
        })
        .collect();
    let sessions = &services.sessions;
    let devices_of = |user: &UserId| -> Result<Vec<String>> {
        Ok(sessions
            .list_devices(user)?
            .into_iter()
            .map(|d| d.device_id.to_string())
            .collect())
    };
    let event_type = content.ev_type.to_string();
    if let Err(e) = services
        .keys
        .receive_remote_to_device(
            (origin, &content.sender),
            (&event_type, content.message_id.as_str()),
            messages,
            &devices_of,
        )
        .await
    {
        tracing::warn!(%origin, error = %e, "to-device messages from another server not stored");
    }
}

#[cfg(test)]
mod tests {
    use ruma::OwnedUserId;
    use serde_json::json;

    use super::*;

    fn user(id: &str) -> OwnedUserId {
        id.try_into().unwrap()
    }

    #[test]
    fn messages_are_grouped_per_server_and_split_by_size() {
        let alice = user("@alice:here.test");
        let big = "x".repeat(40_000);
        let messages: RemoteMessages = vec![
            (user("@bob:b.test"), Target::Device("D1".into()), json!({"n": 1})),
            (user("@bob:b.test"), Target::All, json!({"n": 2})),
            (user("@carol:c.test"), Target::Device("C".into()), json!({"big": big})),
            (user("@dan:c.test"), Target::Device("D".into()), json!({"big": big})),
            (user("@erin:c.test"), Target::Device("E".into()), json!({"n": 3})),
        ];
        let edus = to_device_edus(&alice, "m.room.encrypted", messages);
        let servers: Vec<&str> = edus.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(
            servers,
            vec!["b.test", "c.test", "c.test"],
            "two 40 kB messages need two EDUs"
        );
        let (_, b) = &edus[0];
        assert_eq!(b["edu_type"], "m.direct_to_device");
        assert_eq!(b["content"]["sender"], "@alice:here.test");
        assert_eq!(b["content"]["type"], "m.room.encrypted");
        assert_eq!(
            b["content"]["messages"]["@bob:b.test"],
            json!({"D1": {"n": 1}, "*": {"n": 2}})
        );
        assert!(edus[1].1["content"]["messages"]["@carol:c.test"]["C"].is_object());
        assert!(edus[2].1["content"]["messages"]["@dan:c.test"]["D"].is_object());
        assert!(edus[2].1["content"]["messages"]["@erin:c.test"]["E"].is_object());
        let ids: std::collections::BTreeSet<&str> = edus
            .iter()
            .map(|(_, e)| e["content"]["message_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 3, "each EDU has its own message id");
        for (_, edu) in &edus {
            assert!(edu.to_string().len() <= SOFT_MAX_EDU_BYTES);
            // ruma reads what we send.
            let content: DirectDeviceContent = serde_json::from_value(edu["content"].clone()).unwrap();
            assert_eq!(content.sender, alice);
        }
    }
}
