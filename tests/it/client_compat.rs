//! What real client libraries need in the events Hearth serves, found by running them across
//! servers (tests/clients/nio_federation.py): the `redacts` of `m.room.redaction` events in
//! both places the spec asks for (room version 11, "Moving the `redacts` property": top level
//! for older clients, in the content for newer ones), through `/sync`, `/messages`, `/event`
//! and `unsigned.redacted_because`.

use serde_json::{Value, json};

use crate::support::{Client, TestServer, enc};

fn send(client: &Client, room: &str, txn: &str, body: &str) -> String {
    client
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room)),
            json!({"msgtype": "m.text", "body": body}),
        )
        .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn timeline_event(sync: &Value, room: &str, event_id: &str) -> Value {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == event_id)
        .cloned()
        .unwrap_or_else(|| panic!("{event_id} not in the sync timeline: {sync}"))
}

/// In room versions 10 (top-level `redacts`) and 11, 12 (`redacts` in the content), a
/// redaction reaches clients with `redacts` at the top level and in the content, whether
/// sent through `/redact` or as an `m.room.redaction` through `/send`; its reason stays.
#[test]
fn redactions_carry_redacts_at_the_top_level_and_in_the_content() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    for version in ["10", "11", "12"] {
        let room = alice
            .post(
                "/_matrix/client/v3/createRoom",
                json!({"preset": "private_chat", "room_version": version}),
            )
            .ok()["room_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = |path: &str| format!("/_matrix/client/v3/rooms/{}/{path}", enc(&room));
        let first = send(&alice, &room, &format!("m1-{version}"), "one");
        let second = send(&alice, &room, &format!("m2-{version}"), "two");
        let by_redact = alice
            .put(
                &r(&format!("redact/{}/r1-{version}", enc(&first))),
                json!({"reason": "why"}),
            )
            .ok()["event_id"]
            .as_str()
            .unwrap()
            .to_owned();
        // Before version 11 Hearth moves a `redacts` of the content to the top level, where
        // those versions keep it.
        let content = json!({"reason": "sent", "redacts": second});
        let by_send = alice
            .put(&r(&format!("send/m.room.redaction/r2-{version}")), content)
            .ok()["event_id"]
            .as_str()
            .unwrap()
            .to_owned();

        let sync = alice.get("/_matrix/client/v3/sync").ok().clone();
        let messages = alice.get(&r("messages?dir=b&limit=20")).ok().clone();
        for (redaction, target, reason) in [(&by_redact, &first, "why"), (&by_send, &second, "sent")] {
            let from_event = alice.get(&r(&format!("event/{}", enc(redaction)))).ok().clone();
            let from_messages = messages["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| &e["event_id"] == redaction)
                .cloned()
                .unwrap_or_else(|| panic!("{redaction} not in /messages: {messages}"));
            let because = alice.get(&r(&format!("event/{}", enc(target)))).ok()["unsigned"]["redacted_because"].clone();
            for (place, event) in [
                ("/sync", timeline_event(&sync, &room, redaction)),
                ("/messages", from_messages),
                ("/event", from_event),
                ("redacted_because", because),
            ] {
                assert_eq!(
                    event["redacts"],
                    json!(target),
                    "v{version} {place}: top-level redacts: {event}"
                );
                assert_eq!(
                    event["content"]["redacts"],
                    json!(target),
                    "v{version} {place}: content.redacts: {event}"
                );
                assert_eq!(event["content"]["reason"], reason, "v{version} {place}: {event}");
            }
        }
    }
}
