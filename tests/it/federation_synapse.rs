//! Federation with a real Synapse (1.163.2 from PyPI, `support::synapse`) on loopback, both
//! directions: a room created on Hearth that a Synapse user joins, and a room created on Synapse
//! that a Hearth user joins; messages, redactions, leaves, bans and state set on either side,
//! until both servers show the same current state. Skipped with a note when the Synapse venv is
//! missing, unless `HEARTH_TEST_REQUIRE_SYNAPSE=1` (set by `tests/run.sh`, which installs it).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::support::{
    Client, TestServer,
    federation::{TestCa, federated_server},
    synapse::{self, Synapse},
};

/// A Hearth server and a Synapse on `ip` (this test's own address: 127.0.0.81 to 89; each
/// server on its own ports, so each has its own name), trusting the same CA; `None` when
/// Synapse is not installed (and not required).
fn servers(ip: &str) -> Option<(TestCa, TestServer, Synapse)> {
    let python = synapse::python()?;
    let ca = TestCa::new();
    let mut hearth = federated_server(&ca, ip, &[]);
    hearth.launch();
    let synapse = Synapse::start(&python, &ca, ip);
    Some((ca, hearth, synapse))
}

/// Polls `check` every 200 ms for up to 60 s; true once it holds.
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The latest events of a room as `client` sees them (`/messages`, newest first).
fn timeline(client: &Client, room_id: &str) -> Vec<Value> {
    let page = client.get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=100"));
    if page.status != 200 {
        return Vec::new();
    }
    page.body["chunk"].as_array().cloned().unwrap_or_default()
}

fn bodies(client: &Client, room_id: &str) -> Vec<String> {
    timeline(client, room_id)
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// The event `event_id` as `client` sees it in the timeline.
fn event_in_timeline(client: &Client, room_id: &str, event_id: &str) -> Option<Value> {
    timeline(client, room_id)
        .into_iter()
        .find(|e| e["event_id"] == event_id)
}

fn send_text(client: &Client, room_id: &str, txn: &str, body: &str) -> String {
    let answer = client.put(
        &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}"),
        json!({"msgtype": "m.text", "body": body}),
    );
    answer.ok()["event_id"].as_str().unwrap().to_owned()
}

fn redact(client: &Client, room_id: &str, event_id: &str, txn: &str) {
    client
        .put(
            &format!("/_matrix/client/v3/rooms/{room_id}/redact/{event_id}/{txn}"),
            json!({"reason": "interop"}),
        )
        .ok();
}

fn set_state(client: &Client, room_id: &str, event_type: &str, content: Value) -> String {
    let answer = client.put(
        &format!("/_matrix/client/v3/rooms/{room_id}/state/{event_type}"),
        content,
    );
    answer.ok()["event_id"].as_str().unwrap().to_owned()
}

fn membership_of(client: &Client, room_id: &str, user: &str) -> Option<String> {
    let answer = client.get(&format!(
        "/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{user}"
    ));
    (answer.status == 200).then(|| answer.body["membership"].as_str().unwrap_or("").to_owned())
}

/// Current state as `(type, state_key) -> event_id`.
fn state_map(client: &Client, room_id: &str) -> BTreeMap<(String, String), String> {
    let answer = client.get(&format!("/_matrix/client/v3/rooms/{room_id}/state"));
    answer
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                (
                    e["type"].as_str().unwrap().to_owned(),
                    e["state_key"].as_str().unwrap().to_owned(),
                ),
                e["event_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Waits until both see the same current state, then returns it; panics with both maps.
fn assert_state_converges(a: &Client, b: &Client, room_id: &str) -> BTreeMap<(String, String), String> {
    let mut last = (BTreeMap::new(), BTreeMap::new());
    let same = eventually(|| {
        last = (state_map(a, room_id), state_map(b, room_id));
        last.0 == last.1
    });
    assert!(same, "current state differs:\n{:#?}\nvs\n{:#?}", last.0, last.1);
    last.0
}

fn is_redacted(event: &Value) -> bool {
    event["content"].as_object().is_some_and(|c| c.is_empty())
}

fn joined_rooms(client: &Client) -> Vec<String> {
    let rooms = client.get("/_matrix/client/v3/joined_rooms");
    rooms.ok()["joined_rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_synapse_user_joins_a_hearth_room_chats_redacts_leaves_and_is_banned() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.81") else {
        return;
    };
    let alice = hearth.user("alice", "secret-password");
    let bob = synapse.user("bob", "secret-password");
    let carol = synapse.user("carol", "secret-password");
    let (bob_id, carol_id) = (bob.uid(), carol.uid());
    let room = alice.post(
        "/_matrix/client/v3/createRoom",
        json!({"preset": "public_chat", "name": "Hearth room"}),
    );
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    let early = send_text(&alice, &room_id, "h0", "before bob joined");

    // Join over federation (Synapse: make_join, send_join to Hearth).
    let joined = bob.post(
        &format!("/_matrix/client/v3/join/{room_id}?server_name={}", hearth.server_name),
        json!({}),
    );
    assert_eq!(joined.ok()["room_id"], room_id.as_str());
    let name = bob.get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name"));
    assert_eq!(name.ok()["name"], "Hearth room");
    assert!(eventually(
        || membership_of(&alice, &room_id, &bob_id).as_deref() == Some("join")
    ));
    // History from before the join: Synapse backfills it from Hearth.
    assert!(
        eventually(|| event_in_timeline(&bob, &room_id, &early).is_some()),
        "bob never saw the message from before his join: {:#?}",
        timeline(&bob, &room_id)
    );

    // Messages both ways.
    let from_alice = send_text(&alice, &room_id, "h1", "hello from Hearth");
    assert!(eventually(
        || bodies(&bob, &room_id).contains(&"hello from Hearth".to_owned())
    ));
    let from_bob = send_text(&bob, &room_id, "s1", "hello from Synapse");
    assert!(eventually(
        || bodies(&alice, &room_id).contains(&"hello from Synapse".to_owned())
    ));

    // Redactions both ways.
    redact(&alice, &room_id, &from_alice, "hr1");
    assert!(
        eventually(|| event_in_timeline(&bob, &room_id, &from_alice).is_some_and(|e| is_redacted(&e))),
        "{:#?}",
        event_in_timeline(&bob, &room_id, &from_alice)
    );
    redact(&bob, &room_id, &from_bob, "sr1");
    assert!(
        eventually(|| event_in_timeline(&alice, &room_id, &from_bob).is_some_and(|e| is_redacted(&e))),
        "{:#?}",
        event_in_timeline(&alice, &room_id, &from_bob)
    );
    // A moderator's redaction of another server's user's message.
    let moderated = send_text(&bob, &room_id, "s2", "to be moderated");
    assert!(eventually(|| event_in_timeline(&alice, &room_id, &moderated).is_some()));
    redact(&alice, &room_id, &moderated, "hr2");
    assert!(
        eventually(|| event_in_timeline(&bob, &room_id, &moderated).is_some_and(|e| is_redacted(&e))),
        "{:#?}",
        event_in_timeline(&bob, &room_id, &moderated)
    );
    // A new display name (a member event over the join) shows on the other side.
    bob.put(
        &format!("/_matrix/client/v3/profile/{bob_id}/displayname"),
        json!({"displayname": "Bob renamed"}),
    )
    .ok();
    assert!(eventually(|| {
        let member = alice.get(&format!(
            "/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{bob_id}"
        ));
        member.status == 200 && member.body["displayname"] == "Bob renamed"
    }));

    // State set on each side: alice gives bob power, sets the topic; bob renames the room.
    let mut power = alice
        .get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels"))
        .ok()
        .clone();
    power["users"][&bob_id] = json!(50);
    set_state(&alice, &room_id, "m.room.power_levels", power);
    set_state(&alice, &room_id, "m.room.topic", json!({"topic": "set on Hearth"}));
    assert!(eventually(|| {
        let topic = bob.get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic"));
        topic.status == 200 && topic.body["topic"] == "set on Hearth"
    }));
    set_state(&bob, &room_id, "m.room.name", json!({"name": "renamed on Synapse"}));
    assert!(eventually(|| {
        let name = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name"));
        name.status == 200 && name.body["name"] == "renamed on Synapse"
    }));
    assert_state_converges(&alice, &bob, &room_id);

    // Bob leaves: Hearth sees it.
    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({}))
        .ok();
    assert!(
        eventually(|| membership_of(&alice, &room_id, &bob_id).as_deref() == Some("leave")),
        "{:?}",
        membership_of(&alice, &room_id, &bob_id)
    );

    // Carol joins, alice bans her: Synapse sees the ban and refuses carol's messages.
    carol
        .post(
            &format!("/_matrix/client/v3/join/{room_id}?server_name={}", hearth.server_name),
            json!({}),
        )
        .ok();
    assert!(eventually(
        || membership_of(&alice, &room_id, &carol_id).as_deref() == Some("join")
    ));
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/ban"),
            json!({"user_id": carol_id, "reason": "interop"}),
        )
        .ok();
    assert!(
        eventually(|| !joined_rooms(&carol).contains(&room_id)),
        "Synapse still has carol joined"
    );
    let after = carol.put(
        &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/c1"),
        json!({"msgtype": "m.text", "body": "after the ban"}),
    );
    assert_eq!(after.status, 403, "{}", after.text);
    // Synapse still has the room (bob left, carol is banned) as a remote state: both agree on
    // the memberships Hearth holds.
    assert_eq!(membership_of(&alice, &room_id, &carol_id).as_deref(), Some("ban"));
}

#[test]
fn a_hearth_user_joins_a_synapse_room_chats_redacts_leaves_and_is_banned() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.82") else {
        return;
    };
    let alice = hearth.user("alice", "secret-password");
    let bob = synapse.user("bob", "secret-password");
    let alice_id = alice.uid();
    let room = bob.post(
        "/_matrix/client/v3/createRoom",
        json!({"preset": "public_chat", "name": "Synapse room"}),
    );
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    let early = send_text(&bob, &room_id, "s0", "before alice joined");

    // Join over federation (Hearth: make_join, send_join to Synapse).
    let joined = alice.post(
        &format!("/_matrix/client/v3/join/{room_id}?via={}", synapse.server_name),
        json!({}),
    );
    assert_eq!(joined.ok()["room_id"], room_id.as_str(), "{}", joined.text);
    let name = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name"));
    assert_eq!(name.ok()["name"], "Synapse room");
    assert!(eventually(
        || membership_of(&bob, &room_id, &alice_id).as_deref() == Some("join")
    ));

    // Messages both ways.
    let from_bob = send_text(&bob, &room_id, "s1", "hello from Synapse");
    assert!(eventually(
        || bodies(&alice, &room_id).contains(&"hello from Synapse".to_owned())
    ));
    let from_alice = send_text(&alice, &room_id, "h1", "hello from Hearth");
    assert!(eventually(
        || bodies(&bob, &room_id).contains(&"hello from Hearth".to_owned())
    ));

    // Redactions both ways.
    redact(&bob, &room_id, &from_bob, "sr1");
    assert!(
        eventually(|| event_in_timeline(&alice, &room_id, &from_bob).is_some_and(|e| is_redacted(&e))),
        "{:#?}",
        event_in_timeline(&alice, &room_id, &from_bob)
    );
    redact(&alice, &room_id, &from_alice, "hr1");
    assert!(
        eventually(|| event_in_timeline(&bob, &room_id, &from_alice).is_some_and(|e| is_redacted(&e))),
        "{:#?}",
        event_in_timeline(&bob, &room_id, &from_alice)
    );
    // A moderator's redaction of another server's user's message.
    let moderated = send_text(&alice, &room_id, "h2", "to be moderated");
    assert!(eventually(|| event_in_timeline(&bob, &room_id, &moderated).is_some()));
    redact(&bob, &room_id, &moderated, "sr2");
    assert!(
        eventually(|| event_in_timeline(&alice, &room_id, &moderated).is_some_and(|e| is_redacted(&e))),
        "{:#?}",
        event_in_timeline(&alice, &room_id, &moderated)
    );
    // A new display name (a member event over the join) shows on the other side.
    alice
        .put(
            &format!("/_matrix/client/v3/profile/{alice_id}/displayname"),
            json!({"displayname": "Alice renamed"}),
        )
        .ok();
    assert!(eventually(|| {
        let member = bob.get(&format!(
            "/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{alice_id}"
        ));
        member.status == 200 && member.body["displayname"] == "Alice renamed"
    }));

    // State set on each side.
    let mut power = bob
        .get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels"))
        .ok()
        .clone();
    power["users"][&alice_id] = json!(50);
    set_state(&bob, &room_id, "m.room.power_levels", power);
    set_state(&bob, &room_id, "m.room.topic", json!({"topic": "set on Synapse"}));
    assert!(eventually(|| {
        let topic = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic"));
        topic.status == 200 && topic.body["topic"] == "set on Synapse"
    }));
    set_state(&alice, &room_id, "m.room.name", json!({"name": "renamed on Hearth"}));
    assert!(eventually(|| {
        let name = bob.get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name"));
        name.status == 200 && name.body["name"] == "renamed on Hearth"
    }));
    assert_state_converges(&alice, &bob, &room_id);

    // Alice leaves: Synapse sees it; she joins again.
    alice
        .post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({}))
        .ok();
    assert!(eventually(
        || membership_of(&bob, &room_id, &alice_id).as_deref() == Some("leave")
    ));
    alice
        .post(
            &format!("/_matrix/client/v3/join/{room_id}?via={}", synapse.server_name),
            json!({}),
        )
        .ok();
    assert!(eventually(
        || membership_of(&bob, &room_id, &alice_id).as_deref() == Some("join")
    ));

    // Bob bans alice: Hearth sees the ban and refuses her messages.
    bob.post(
        &format!("/_matrix/client/v3/rooms/{room_id}/ban"),
        json!({"user_id": alice_id, "reason": "interop"}),
    )
    .ok();
    assert!(
        eventually(|| !joined_rooms(&alice).contains(&room_id)),
        "Hearth still has alice joined"
    );
    let after = alice.put(
        &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/h2"),
        json!({"msgtype": "m.text", "body": "after the ban"}),
    );
    assert_eq!(after.status, 403, "{}", after.text);
    let _ = early;
}

#[test]
fn a_hearth_user_who_left_a_synapse_room_rejoins_through_synapse() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.83") else {
        return;
    };
    let alice = hearth.user("alice", "secret-password");
    let bob = synapse.user("bob", "secret-password");
    let alice_id = alice.uid();
    let room = bob.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    let join_path = format!("/_matrix/client/v3/join/{room_id}?via={}", synapse.server_name);
    alice.post(&join_path, json!({})).ok();
    assert!(eventually(
        || membership_of(&bob, &room_id, &alice_id).as_deref() == Some("join")
    ));
    alice
        .post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({}))
        .ok();
    assert!(eventually(
        || membership_of(&bob, &room_id, &alice_id).as_deref() == Some("leave")
    ));

    // While no Hearth user is in the room, it changes: Hearth hears nothing of it.
    set_state(&bob, &room_id, "m.room.topic", json!({"topic": "while alice was away"}));
    alice.post(&join_path, json!({})).ok();
    assert!(eventually(
        || membership_of(&bob, &room_id, &alice_id).as_deref() == Some("join")
    ));
    // The rejoin went through Synapse (make_join/send_join), so Hearth has the room's state now.
    let topic = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic"));
    assert_eq!(topic.ok()["topic"], "while alice was away");
    assert_state_converges(&alice, &bob, &room_id);

    // Left again, and the room became invite-only meanwhile: Synapse refuses the join, so Hearth
    // refuses it too instead of joining on its stale copy of the state.
    alice
        .post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({}))
        .ok();
    assert!(eventually(
        || membership_of(&bob, &room_id, &alice_id).as_deref() == Some("leave")
    ));
    set_state(&bob, &room_id, "m.room.join_rules", json!({"join_rule": "invite"}));
    alice.post(&join_path, json!({})).expect_err(403, "M_FORBIDDEN");
    assert_ne!(membership_of(&bob, &room_id, &alice_id).as_deref(), Some("join"));
    assert!(!joined_rooms(&alice).contains(&room_id));
}

#[test]
fn a_hearth_user_joining_a_synapse_room_sees_the_history_from_before_the_join() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.84") else {
        return;
    };
    let alice = hearth.user("alice", "secret-password");
    let bob = synapse.user("bob", "secret-password");
    let room = bob.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    for i in 0..5 {
        send_text(&bob, &room_id, &format!("s{i}"), &format!("early {i}"));
    }
    alice
        .post(
            &format!("/_matrix/client/v3/join/{room_id}?via={}", synapse.server_name),
            json!({}),
        )
        .ok();
    // History visibility is `shared`: the messages before the join are readable, and Hearth
    // fetches them from Synapse (`/backfill`) when it has not got them.
    let mut seen = Vec::new();
    let all = eventually(|| {
        seen = bodies(&alice, &room_id);
        (0..5).all(|i| seen.contains(&format!("early {i}")))
    });
    assert!(
        all,
        "Hearth's /messages shows {seen:?}: {:#?}",
        timeline(&alice, &room_id)
    );
}

#[test]
fn profiles_aliases_and_public_room_lists_are_served_both_ways() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.85") else {
        return;
    };
    let mut alice = hearth.user("alice", "secret-password");
    let mut bob = synapse.user("bob", "secret-password");
    let (alice_id, bob_id) = (alice.uid(), bob.uid());
    alice
        .put(
            &format!("/_matrix/client/v3/profile/{alice_id}/displayname"),
            json!({"displayname": "Alice of Hearth"}),
        )
        .ok();
    bob.put(
        &format!("/_matrix/client/v3/profile/{bob_id}/displayname"),
        json!({"displayname": "Bob of Synapse"}),
    )
    .ok();

    // Profiles (federation `query/profile`).
    let theirs = bob.get(&format!("/_matrix/client/v3/profile/{alice_id}"));
    assert_eq!(theirs.ok()["displayname"], "Alice of Hearth");
    let theirs = alice.get(&format!("/_matrix/client/v3/profile/{bob_id}"));
    assert_eq!(theirs.ok()["displayname"], "Bob of Synapse");

    // Published rooms with aliases on each side.
    let on_hearth = alice.post(
        "/_matrix/client/v3/createRoom",
        json!({"preset": "public_chat", "name": "Hearth lobby", "room_alias_name": "lobby", "visibility": "public"}),
    );
    let on_hearth = on_hearth.ok()["room_id"].as_str().unwrap().to_owned();
    let on_synapse = bob.post(
        "/_matrix/client/v3/createRoom",
        json!({"preset": "public_chat", "name": "Synapse lobby", "room_alias_name": "lobby", "visibility": "public"}),
    );
    let on_synapse = on_synapse.ok()["room_id"].as_str().unwrap().to_owned();

    // Aliases resolve across (federation `query/directory`), and joins by alias work.
    let hearth_alias = format!("%23lobby:{}", hearth.server_name);
    let synapse_alias = format!("%23lobby:{}", synapse.server_name);
    let resolved = bob.get(&format!("/_matrix/client/v3/directory/room/{hearth_alias}"));
    assert_eq!(resolved.ok()["room_id"], on_hearth.as_str());
    assert!(
        resolved.ok()["servers"]
            .as_array()
            .unwrap()
            .contains(&json!(hearth.server_name)),
        "{}",
        resolved.text
    );
    let resolved = alice.get(&format!("/_matrix/client/v3/directory/room/{synapse_alias}"));
    assert_eq!(resolved.ok()["room_id"], on_synapse.as_str());
    let joined = bob.post(&format!("/_matrix/client/v3/join/{hearth_alias}"), json!({}));
    assert_eq!(joined.ok()["room_id"], on_hearth.as_str());
    let joined = alice.post(&format!("/_matrix/client/v3/join/{synapse_alias}"), json!({}));
    assert_eq!(joined.ok()["room_id"], on_synapse.as_str(), "{}", joined.text);

    // Each lists the other's public rooms (federation `publicRooms`).
    let listed = |client: &mut Client, server: &str| -> Vec<String> {
        let page = client.get(&format!("/_matrix/client/v3/publicRooms?server={server}"));
        assert_eq!(page.status, 200, "{}", page.text);
        page.body["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["room_id"].as_str().unwrap().to_owned())
            .collect()
    };
    // (Synapse fills its list from room statistics it updates in the background.)
    let mut list = Vec::new();
    assert!(
        eventually(|| {
            list = listed(&mut bob, &hearth.server_name);
            list.contains(&on_hearth)
        }),
        "{list:?}"
    );
    assert!(
        eventually(|| {
            list = listed(&mut alice, &synapse.server_name);
            list.contains(&on_synapse)
        }),
        "{list:?}"
    );
}

#[test]
fn rooms_of_versions_10_and_11_federate_both_ways() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.86") else {
        return;
    };
    let alice = hearth.user("alice", "secret-password");
    let bob = synapse.user("bob", "secret-password");
    for version in ["10", "11"] {
        // Created on Hearth, joined from Synapse.
        let room = alice.post(
            "/_matrix/client/v3/createRoom",
            json!({"preset": "public_chat", "room_version": version}),
        );
        let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
        bob.post(
            &format!("/_matrix/client/v3/join/{room_id}?server_name={}", hearth.server_name),
            json!({}),
        )
        .ok();
        send_text(
            &bob,
            &room_id,
            &format!("s{version}"),
            &format!("v{version} from Synapse"),
        );
        assert!(eventually(
            || bodies(&alice, &room_id).contains(&format!("v{version} from Synapse"))
        ));
        send_text(
            &alice,
            &room_id,
            &format!("h{version}"),
            &format!("v{version} from Hearth"),
        );
        assert!(eventually(
            || bodies(&bob, &room_id).contains(&format!("v{version} from Hearth"))
        ));
        assert_state_converges(&alice, &bob, &room_id);

        // Created on Synapse, joined from Hearth.
        let room = bob.post(
            "/_matrix/client/v3/createRoom",
            json!({"preset": "public_chat", "room_version": version}),
        );
        let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
        let joined = alice.post(
            &format!("/_matrix/client/v3/join/{room_id}?via={}", synapse.server_name),
            json!({}),
        );
        assert_eq!(joined.status, 200, "v{version}: {}", joined.text);
        send_text(
            &alice,
            &room_id,
            &format!("h2{version}"),
            &format!("v{version} from Hearth"),
        );
        assert!(eventually(
            || bodies(&bob, &room_id).contains(&format!("v{version} from Hearth"))
        ));
        send_text(
            &bob,
            &room_id,
            &format!("s2{version}"),
            &format!("v{version} from Synapse"),
        );
        assert!(eventually(
            || bodies(&alice, &room_id).contains(&format!("v{version} from Synapse"))
        ));
        assert_state_converges(&alice, &bob, &room_id);
    }
}

#[test]
fn concurrent_state_changes_on_both_sides_converge() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.87") else {
        return;
    };
    let alice = hearth.user("alice", "secret-password");
    let bob = synapse.user("bob", "secret-password");
    let bob_id = bob.uid();
    let room = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    bob.post(
        &format!("/_matrix/client/v3/join/{room_id}?server_name={}", hearth.server_name),
        json!({}),
    )
    .ok();
    let mut power = alice
        .get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels"))
        .ok()
        .clone();
    power["users"][&bob_id] = json!(50);
    set_state(&alice, &room_id, "m.room.power_levels", power);
    assert!(eventually(|| {
        let power = bob.get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels"));
        power.status == 200 && power.body["users"][&bob_id] == 50
    }));

    // Both set the topic and the name at once, several times: the DAG forks, each side
    // resolves the state, and both end with the same current state.
    for round in 0..3 {
        let a = std::thread::scope(|s| {
            let h = s.spawn(|| {
                set_state(
                    &alice,
                    &room_id,
                    "m.room.topic",
                    json!({"topic": format!("hearth {round}")}),
                );
                set_state(
                    &alice,
                    &room_id,
                    "m.room.name",
                    json!({"name": format!("hearth {round}")}),
                )
            });
            set_state(
                &bob,
                &room_id,
                "m.room.topic",
                json!({"topic": format!("synapse {round}")}),
            );
            set_state(
                &bob,
                &room_id,
                "m.room.name",
                json!({"name": format!("synapse {round}")}),
            );
            h.join().unwrap()
        });
        assert!(!a.is_empty());
    }
    let state = assert_state_converges(&alice, &bob, &room_id);
    assert!(state.contains_key(&("m.room.topic".to_owned(), String::new())));
    // And messages still flow both ways after the forks.
    send_text(&alice, &room_id, "after-h", "after the forks from Hearth");
    send_text(&bob, &room_id, "after-s", "after the forks from Synapse");
    assert!(eventually(
        || bodies(&bob, &room_id).contains(&"after the forks from Hearth".to_owned())
    ));
    assert!(eventually(
        || bodies(&alice, &room_id).contains(&"after the forks from Synapse".to_owned())
    ));
}

/// Self-signed device keys and a signed one-time key of `client`'s device.
pub(crate) fn signed_keys(client: &Client) -> (Value, Value) {
    use ruma::signatures::{Ed25519KeyPair, sign_json};
    let device = client.device_id.clone().unwrap();
    let doc = Ed25519KeyPair::generate();
    let pair = Ed25519KeyPair::from_der(&doc, device.clone()).unwrap();
    let public = ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(pair.public_key().to_vec()).encode();
    let sign = |value: Value| {
        let mut object: ruma::CanonicalJsonObject = serde_json::from_value(value).unwrap();
        sign_json(&client.uid(), &pair, &mut object).unwrap();
        serde_json::to_value(object).unwrap()
    };
    let keys = sign(json!({
        "user_id": client.uid(),
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{device}"): "Y3VydmUyNTUxOWtleWN1cnZlMjU1MTlrZXljdXJ2ZTI1",
            format!("ed25519:{device}"): public,
        },
    }));
    let otk = sign(json!({"key": "b3RrZXkxb3RrZXkxb3RrZXkxb3RrZXkxb3RrZXkx"}));
    (keys, otk)
}

#[test]
fn device_keys_and_one_time_keys_are_fetched_across_both_ways() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.88") else {
        return;
    };
    let alice = hearth.user("alice", "secret-password");
    let bob = synapse.user("bob", "secret-password");
    let (alice_id, alice_device) = (alice.uid(), alice.device_id.clone().unwrap());
    let (keys, otk) = signed_keys(&alice);
    alice
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({"device_keys": keys, "one_time_keys": {"signed_curve25519:AAAAAQ": otk}}),
        )
        .ok();
    // A shared room, so Synapse tracks alice's device list.
    let room = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    bob.post(
        &format!("/_matrix/client/v3/join/{room_id}?server_name={}", hearth.server_name),
        json!({}),
    )
    .ok();

    // Synapse asks Hearth (user/devices or user/keys/query) and hands bob alice's keys as
    // uploaded, signatures intact.
    let mut answer = Value::Null;
    let found = eventually(|| {
        answer = bob
            .post(
                "/_matrix/client/v3/keys/query",
                json!({"device_keys": {alice_id.clone(): []}}),
            )
            .ok()
            .clone();
        answer["device_keys"][&alice_id][&alice_device].is_object()
    });
    assert!(found, "{answer:#}");
    let got = &answer["device_keys"][&alice_id][&alice_device];
    assert_eq!(got["keys"], keys["keys"]);
    assert_eq!(got["signatures"], keys["signatures"]);
    assert!(
        answer["failures"].as_object().is_none_or(|f| f.is_empty()),
        "{answer:#}"
    );

    // One-time keys: claimed once through Synapse (user/keys/claim), then gone.
    let claim = || {
        bob.post(
            "/_matrix/client/v3/keys/claim",
            json!({"one_time_keys": {alice_id.clone(): {alice_device.clone(): "signed_curve25519"}}}),
        )
        .ok()
        .clone()
    };
    let first = claim();
    assert_eq!(
        first["one_time_keys"][&alice_id][&alice_device]["signed_curve25519:AAAAAQ"], otk,
        "{first:#}"
    );
    let second = claim();
    assert!(
        second["one_time_keys"][&alice_id][&alice_device]
            .as_object()
            .is_none_or(|k| k.is_empty()),
        "{second:#}"
    );

    // The other way: bob's keys on Synapse, asked by alice through Hearth.
    let (bob_id, bob_device) = (bob.uid(), bob.device_id.clone().unwrap());
    let (keys, otk) = signed_keys(&bob);
    bob.post(
        "/_matrix/client/v3/keys/upload",
        json!({"device_keys": keys, "one_time_keys": {"signed_curve25519:AAAAAQ": otk}}),
    )
    .ok();
    let answer = alice
        .post(
            "/_matrix/client/v3/keys/query",
            json!({"device_keys": {bob_id.clone(): []}}),
        )
        .ok()
        .clone();
    assert!(
        answer["failures"].as_object().is_none_or(|f| f.is_empty()),
        "{answer:#}"
    );
    let got = &answer["device_keys"][&bob_id][&bob_device];
    assert_eq!(got["keys"], keys["keys"], "{answer:#}");
    assert_eq!(got["signatures"], keys["signatures"]);
    let claimed = alice
        .post(
            "/_matrix/client/v3/keys/claim",
            json!({"one_time_keys": {bob_id.clone(): {bob_device.clone(): "signed_curve25519"}}}),
        )
        .ok()
        .clone();
    assert_eq!(
        claimed["one_time_keys"][&bob_id][&bob_device]["signed_curve25519:AAAAAQ"], otk,
        "{claimed:#}"
    );
}

#[test]
fn messages_sent_while_the_hearth_server_was_down_arrive_after_its_restart() {
    let Some((_ca, mut hearth, synapse)) = servers("127.0.0.89") else {
        return;
    };
    let alice = hearth.user("alice", "secret-password");
    let bob = synapse.user("bob", "secret-password");
    let room = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "public_chat"}));
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    bob.post(
        &format!("/_matrix/client/v3/join/{room_id}?server_name={}", hearth.server_name),
        json!({}),
    )
    .ok();
    send_text(&bob, &room_id, "s0", "before the restart");
    assert!(eventually(
        || bodies(&alice, &room_id).contains(&"before the restart".to_owned())
    ));

    // Hearth goes down; bob keeps talking (Synapse cannot deliver and backs off).
    hearth.stop();
    for i in 0..3 {
        send_text(
            &bob,
            &room_id,
            &format!("s{}", i + 1),
            &format!("while Hearth was down {i}"),
        );
    }
    hearth.launch();
    let alice = alice.with_base(&hearth.base);
    // Synapse retries its transaction (after a longer outage it would back off, then catch up
    // with its latest event only, and Hearth fetch the rest with get_missing_events: too slow
    // for a test); Hearth delivers what it sends now.
    send_text(&alice, &room_id, "h1", "Hearth is back");
    assert!(eventually(
        || bodies(&bob, &room_id).contains(&"Hearth is back".to_owned())
    ));
    send_text(&bob, &room_id, "s9", "welcome back");
    let mut seen = Vec::new();
    let all = eventually(|| {
        seen = bodies(&alice, &room_id);
        seen.contains(&"welcome back".to_owned())
            && (0..3).all(|i| seen.contains(&format!("while Hearth was down {i}")))
    });
    assert!(all, "Hearth shows {seen:?}");
    assert_state_converges(&alice, &bob, &room_id);
}

#[test]
fn invites_cross_both_ways_and_are_accepted() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.80") else {
        return;
    };
    let alice = hearth.user("alice", "secret-password");
    let bob = synapse.user("bob", "secret-password");
    let bob_id = format!("@bob:{}", synapse.server_name);
    let alice_id = format!("@alice:{}", hearth.server_name);

    // Hearth invites a Synapse user to a private room; Synapse shows it, bob accepts.
    let room = alice.post(
        "/_matrix/client/v3/createRoom",
        json!({"preset": "private_chat", "name": "From Hearth"}),
    );
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/invite"),
            json!({"user_id": bob_id}),
        )
        .ok();
    assert!(eventually(|| {
        let sync = bob.get("/_matrix/client/v3/sync?timeout=0");
        sync.status == 200 && sync.body["rooms"]["invite"].get(&room_id).is_some()
    }));
    bob.post(&format!("/_matrix/client/v3/join/{room_id}"), json!({})).ok();
    assert!(eventually(
        || membership_of(&alice, &room_id, &bob_id).as_deref() == Some("join")
    ));

    // Synapse invites a Hearth user; Hearth shows it with the room's name, alice accepts.
    let room = bob.post(
        "/_matrix/client/v3/createRoom",
        json!({"preset": "private_chat", "name": "From Synapse"}),
    );
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    bob.post(
        &format!("/_matrix/client/v3/rooms/{room_id}/invite"),
        json!({"user_id": alice_id}),
    )
    .ok();
    let sync = alice.get("/_matrix/client/v3/sync?timeout=0");
    let state = sync.ok()["rooms"]["invite"][&room_id]["invite_state"]["events"].clone();
    assert!(
        state
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["content"]["name"] == "From Synapse")),
        "{}",
        sync.ok()
    );
    alice
        .post(&format!("/_matrix/client/v3/join/{room_id}"), json!({}))
        .ok();
    send_text(&alice, &room_id, "i1", "accepted");
    assert!(eventually(|| bodies(&bob, &room_id).contains(&"accepted".to_owned())));
}

#[test]
fn a_synapse_user_knocks_on_a_hearth_room_and_is_let_in() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.79") else {
        return;
    };
    let alice = hearth.user("alice", "secret-password");
    let bob = synapse.user("bob", "secret-password");
    let bob_id = format!("@bob:{}", synapse.server_name);
    let room = alice.post(
        "/_matrix/client/v3/createRoom",
        json!({"preset": "private_chat", "initial_state": [
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
        ]}),
    );
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
    bob.post(
        &format!("/_matrix/client/v3/knock/{room_id}?server_name={}", hearth.server_name),
        json!({"reason": "let me in"}),
    )
    .ok();
    assert_eq!(membership_of(&alice, &room_id, &bob_id).as_deref(), Some("knock"));
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/invite"),
            json!({"user_id": bob_id}),
        )
        .ok();
    assert!(eventually(|| bob
        .post(
            &format!("/_matrix/client/v3/join/{room_id}?server_name={}", hearth.server_name),
            json!({})
        )
        .status
        == 200));
    assert!(eventually(
        || membership_of(&alice, &room_id, &bob_id).as_deref() == Some("join")
    ));
}

#[test]
fn a_hearth_user_knocks_on_a_synapse_room_and_is_let_in() {
    let Some((_ca, hearth, synapse)) = servers("127.0.0.181") else {
        return;
    };
    let alice = hearth.user("alice", "secret-password");
    let bob = synapse.user("bob", "secret-password");
    let alice_id = format!("@alice:{}", hearth.server_name);
    let room = bob.post(
        "/_matrix/client/v3/createRoom",
        json!({"preset": "private_chat", "room_version": "11", "name": "Synapse door",
            "room_alias_name": "door", "initial_state": [
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
        ]}),
    );
    let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();

    // By alias: Synapse resolves it and answers make_knock/send_knock.
    let knocked = alice.post(
        &format!("/_matrix/client/v3/knock/%23door:{}", synapse.server_name),
        json!({"reason": "let me in"}),
    );
    assert_eq!(knocked.ok()["room_id"], room_id.as_str(), "{}", knocked.text);
    let sync = alice.get("/_matrix/client/v3/sync?timeout=0");
    let state = sync.ok()["rooms"]["knock"][&room_id]["knock_state"]["events"].clone();
    assert!(
        state
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["content"]["name"] == "Synapse door")),
        "{}",
        sync.ok()
    );

    // Synapse shows the knock; bob lets alice in; the invite reaches Hearth and she joins.
    assert!(eventually(
        || membership_of(&bob, &room_id, &alice_id).as_deref() == Some("knock")
    ));
    bob.post(
        &format!("/_matrix/client/v3/rooms/{room_id}/invite"),
        json!({"user_id": alice_id}),
    )
    .ok();
    assert!(eventually(|| {
        let sync = alice.get("/_matrix/client/v3/sync?timeout=0");
        sync.status == 200 && sync.body["rooms"]["invite"].get(&room_id).is_some()
    }));
    alice
        .post(&format!("/_matrix/client/v3/join/{room_id}"), json!({}))
        .ok();
    assert!(eventually(
        || membership_of(&bob, &room_id, &alice_id).as_deref() == Some("join")
    ));
    send_text(&alice, &room_id, "k1", "hello from the knocker");
    assert!(eventually(
        || bodies(&bob, &room_id).contains(&"hello from the knocker".to_owned())
    ));
    send_text(&bob, &room_id, "k2", "welcome in");
    assert!(eventually(
        || bodies(&alice, &room_id).contains(&"welcome in".to_owned())
    ));

    // A Hearth user knocks on a second room, where our server is not, and withdraws through
    // Synapse's make_leave/send_leave.
    let room = bob.post(
        "/_matrix/client/v3/createRoom",
        json!({"preset": "private_chat", "room_version": "10", "initial_state": [
            {"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}
        ]}),
    );
    let second = room.ok()["room_id"].as_str().unwrap().to_owned();
    let carol = hearth.user("carol", "secret-password");
    let carol_id = format!("@carol:{}", hearth.server_name);
    carol
        .post(
            &format!("/_matrix/client/v3/knock/{second}?via={}", synapse.server_name),
            json!({}),
        )
        .ok();
    assert!(eventually(
        || membership_of(&bob, &second, &carol_id).as_deref() == Some("knock")
    ));
    carol
        .post(&format!("/_matrix/client/v3/rooms/{second}/leave"), json!({}))
        .ok();
    assert!(eventually(
        || membership_of(&bob, &second, &carol_id).as_deref() == Some("leave")
    ));
    let sync = carol.get("/_matrix/client/v3/sync?timeout=0");
    assert!(sync.ok()["rooms"]["knock"].get(&second).is_none(), "{}", sync.ok());
}

/// Rooms of every version Synapse knows (1 to 12; room version 1 is the one with state
/// resolution v1, `rooms/state_res_v1.rs`) created on Synapse and joined from Hearth by id with a
/// via: messages both ways, redactions both ways (one from Synapse seen redacted on Hearth),
/// the same current state on both. In versions 1 and 2 both servers change the power levels, the topic and
/// the name at the same time (forks that Hearth resolves with the room's algorithm: v1 in
/// version 1, v2 in version 2) and still end with the same state; then a user of a second Hearth
/// joins them through the first (its `make_join` template and `send_join` in that format).
#[test]
fn rooms_of_every_version_1_to_12_created_on_synapse_federate_and_converge() {
    let Some((ca, hearth, synapse)) = servers("127.0.0.131") else {
        return;
    };
    let alice = hearth.user("alice", "secret-password");
    let bob = synapse.user("bob", "secret-password");
    let alice_id = alice.uid();
    // A second Hearth, whose user joins the version 1 and 2 rooms through the first one (its
    // make_join template and send_join in the version's format).
    let mut other = federated_server(&ca, "127.0.0.131", &[]);
    other.launch();
    let dave = other.user("dave", "secret-password");
    let dave_id = dave.uid();
    for version in 1..=12 {
        let v = format!("v{version}");
        let room = bob.post(
            "/_matrix/client/v3/createRoom",
            json!({"preset": "public_chat", "room_version": version.to_string()}),
        );
        let room_id = room.ok()["room_id"].as_str().unwrap().to_owned();
        let joined = alice.post(
            &format!("/_matrix/client/v3/join/{room_id}?via={}", synapse.server_name),
            json!({}),
        );
        assert_eq!(joined.status, 200, "{v}: {}", joined.text);
        assert!(
            eventually(|| membership_of(&bob, &room_id, &alice_id).as_deref() == Some("join")),
            "{v}: Synapse never saw the join"
        );

        // Messages both ways.
        let from_alice = send_text(&alice, &room_id, &format!("h{version}"), &format!("{v} from Hearth"));
        assert!(
            eventually(|| bodies(&bob, &room_id).contains(&format!("{v} from Hearth"))),
            "{v}: Synapse never got Hearth's message"
        );
        let from_bob = send_text(&bob, &room_id, &format!("s{version}"), &format!("{v} from Synapse"));
        assert!(
            eventually(|| bodies(&alice, &room_id).contains(&format!("{v} from Synapse"))),
            "{v}: Hearth never got Synapse's message"
        );

        // A redaction from Synapse (the room version's redaction rules on Hearth). Event ids of
        // version 3 are standard base64: `/` and `+` are escaped in the path.
        let escaped = from_bob.replace('/', "%2F").replace('+', "%2B");
        redact(&bob, &room_id, &escaped, &format!("sr{version}"));
        assert!(
            eventually(|| event_in_timeline(&alice, &room_id, &from_bob).is_some_and(|e| is_redacted(&e))),
            "{v}: {:#?}",
            event_in_timeline(&alice, &room_id, &from_bob)
        );
        // And one from Hearth, built in the room version's format.
        let escaped = from_alice.replace('/', "%2F").replace('+', "%2B");
        redact(&alice, &room_id, &escaped, &format!("hr{version}"));
        assert!(
            eventually(|| event_in_timeline(&bob, &room_id, &from_alice).is_some_and(|e| is_redacted(&e))),
            "{v}: {:#?}",
            event_in_timeline(&bob, &room_id, &from_alice)
        );

        if version <= 2 {
            // Alice gets the power to change the room, then both change it at once.
            let mut power = bob
                .get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels"))
                .ok()
                .clone();
            power["users"][&alice_id] = json!(100);
            set_state(&bob, &room_id, "m.room.power_levels", power);
            assert!(
                eventually(|| {
                    let power = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels"));
                    power.status == 200 && power.body["users"][&alice_id] == 100
                }),
                "{v}: Hearth never saw alice's power"
            );
            for round in 0..3 {
                std::thread::scope(|s| {
                    let on_hearth = s.spawn(|| {
                        let mut power = alice
                            .get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels"))
                            .ok()
                            .clone();
                        power["events"]["m.room.topic"] = json!(10 + round);
                        set_state(&alice, &room_id, "m.room.power_levels", power);
                        set_state(
                            &alice,
                            &room_id,
                            "m.room.topic",
                            json!({"topic": format!("hearth {round}")}),
                        );
                        set_state(
                            &alice,
                            &room_id,
                            "m.room.name",
                            json!({"name": format!("hearth {round}")}),
                        );
                    });
                    let mut power = bob
                        .get(&format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.power_levels"))
                        .ok()
                        .clone();
                    power["events"]["m.room.name"] = json!(20 + round);
                    set_state(&bob, &room_id, "m.room.power_levels", power);
                    set_state(
                        &bob,
                        &room_id,
                        "m.room.topic",
                        json!({"topic": format!("synapse {round}")}),
                    );
                    set_state(
                        &bob,
                        &room_id,
                        "m.room.name",
                        json!({"name": format!("synapse {round}")}),
                    );
                    on_hearth.join().unwrap();
                });
            }
        }

        let state = assert_state_converges(&alice, &bob, &room_id);
        assert!(
            state.contains_key(&("m.room.member".to_owned(), alice_id.clone())),
            "{v}"
        );

        if version <= 2 {
            let joined = dave.post(
                &format!("/_matrix/client/v3/join/{room_id}?via={}", hearth.server_name),
                json!({}),
            );
            assert_eq!(joined.status, 200, "{v}: {}", joined.text);
            assert!(
                eventually(|| membership_of(&bob, &room_id, &dave_id).as_deref() == Some("join")),
                "{v}: Synapse never saw dave's join through Hearth"
            );
            send_text(&dave, &room_id, &format!("d{version}"), &format!("{v} from dave"));
            assert!(
                eventually(|| bodies(&bob, &room_id).contains(&format!("{v} from dave"))),
                "{v}: Synapse never got dave's message"
            );
            assert_state_converges(&dave, &bob, &room_id);
        }
        // Messages still flow after the forks.
        send_text(
            &bob,
            &room_id,
            &format!("s2{version}"),
            &format!("{v} again from Synapse"),
        );
        send_text(
            &alice,
            &room_id,
            &format!("h2{version}"),
            &format!("{v} again from Hearth"),
        );
        assert!(
            eventually(|| bodies(&alice, &room_id).contains(&format!("{v} again from Synapse"))),
            "{v}"
        );
        assert!(
            eventually(|| bodies(&bob, &room_id).contains(&format!("{v} again from Hearth"))),
            "{v}"
        );
        assert_state_converges(&alice, &bob, &room_id);
    }
}
