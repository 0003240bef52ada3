//! Knocking over federation (server-server-api "Knocking upon a room", client-server-api
//! `POST /knock/{roomIdOrAlias}`): a user knocks on a room of another server, sees it in the
//! `knock` section of `/sync`, is let in (an invite, then a join), withdraws the knock or has it
//! refused; and the bound on pending invites from another server. Real Hearth servers on
//! loopback addresses with certificates from a test CA.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Client, TestServer,
    federation::{TestCa, federated_server},
};

/// Two servers with a user each: `(a, b, alice on a, bob on b)`; `extra_b` are settings of b.
fn pair(ca: &TestCa, ip_a: &str, ip_b: &str, extra_b: &[(&str, &str)]) -> (TestServer, TestServer, Client, Client) {
    let mut a = federated_server(ca, ip_a, &[]);
    let mut b = federated_server(ca, ip_b, extra_b);
    a.launch();
    b.launch();
    let alice = a.user("alice", "secret-password");
    let bob = b.user("bob", "secret-password");
    (a, b, alice, bob)
}

/// Polls `check` every 100 ms for up to 30 s; true once it holds.
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    for _ in 0..300 {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn membership_of(client: &Client, room_id: &str, user: &str) -> Option<String> {
    let answer = client.get(&format!(
        "/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{user}"
    ));
    (answer.status == 200).then(|| answer.body["membership"].as_str().unwrap_or("").to_owned())
}

/// A room of `alice` whose join rule is `knock`, named `name`, with an alias.
fn knockable_room(alice: &Client, name: &str, alias: &str) -> String {
    let room = alice.post(
        "/_matrix/client/v3/createRoom",
        json!({
            "preset": "private_chat",
            "name": name,
            "room_alias_name": alias,
            "initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}],
        }),
    );
    room.ok()["room_id"].as_str().unwrap().to_owned()
}

fn sync(client: &Client) -> Value {
    client.get("/_matrix/client/v3/sync?timeout=0").ok().clone()
}

#[test]
fn a_knock_on_a_room_of_another_server_is_seen_there_and_let_in() {
    let ca = TestCa::new();
    let (a, b, alice, bob) = pair(&ca, "127.0.0.171", "127.0.0.172", &[]);
    let (a_name, b_name) = (a.server_name.clone(), b.server_name.clone());
    let room_id = knockable_room(&alice, "Knock knock", "knockers");
    let bob_id = format!("@bob:{b_name}");

    // By alias: the alias's server says which room and who is in it.
    let knocked = bob.post(
        &format!("/_matrix/client/v3/knock/%23knockers:{a_name}"),
        json!({"reason": "let me in"}),
    );
    assert_eq!(knocked.ok()["room_id"], room_id.as_str(), "{}", knocked.text);

    // The room's server has the knock, with its reason.
    let member = alice.get(&format!(
        "/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{bob_id}"
    ));
    assert_eq!(member.ok()["membership"], "knock");
    assert_eq!(member.ok()["reason"], "let me in");

    // Bob sees the room under `knock`, with the stripped state the room's server answered and
    // his own knock last.
    let body = sync(&bob);
    let events = body["rooms"]["knock"][&room_id]["knock_state"]["events"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .clone();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Knock knock"),
        "{body}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "m.room.join_rules" && e["content"]["join_rule"] == "knock")
    );
    let last = events.last().unwrap();
    assert_eq!(last["type"], "m.room.member");
    assert_eq!(last["state_key"], bob_id.as_str());
    assert_eq!(last["content"]["membership"], "knock");
    assert!(body["rooms"]["join"].get(&room_id).is_none());
    // Knocking again while the knock is pending is what the room's rules say (allowed).
    let since = body["next_batch"].as_str().unwrap().to_owned();

    // Alice lets him in: the invite reaches Bob over federation and replaces the knock.
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/invite"),
            json!({"user_id": bob_id}),
        )
        .ok();
    let body = bob
        .get(&format!("/_matrix/client/v3/sync?timeout=0&since={since}"))
        .ok()
        .clone();
    assert!(body["rooms"]["invite"].get(&room_id).is_some(), "{body}");
    assert!(body["rooms"]["knock"].get(&room_id).is_none(), "{body}");

    // He joins, through the inviting server, and they talk.
    bob.post(&format!("/_matrix/client/v3/join/{room_id}"), json!({})).ok();
    assert_eq!(membership_of(&alice, &room_id, &bob_id).as_deref(), Some("join"));
    bob.put(
        &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t1"),
        json!({"msgtype": "m.text", "body": "thanks for letting me in"}),
    )
    .ok();
    assert!(eventually(|| {
        let page = alice.get(&format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=20"));
        page.ok()["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["content"]["body"] == "thanks for letting me in")
    }));
    let body = sync(&bob);
    assert!(body["rooms"]["join"].get(&room_id).is_some(), "{body}");
    assert!(body["rooms"]["knock"].get(&room_id).is_none(), "{body}");
}

#[test]
fn a_knock_is_withdrawn_through_the_room_server_or_refused_by_it() {
    let ca = TestCa::new();
    let (a, b, alice, bob) = pair(&ca, "127.0.0.173", "127.0.0.174", &[]);
    let (a_name, b_name) = (a.server_name.clone(), b.server_name.clone());
    let room_id = knockable_room(&alice, "Doorstep", "doorstep");
    let bob_id = format!("@bob:{b_name}");

    // By id with `via`; then Bob thinks better of it.
    bob.post(&format!("/_matrix/client/v3/knock/{room_id}?via={a_name}"), json!({}))
        .ok();
    assert_eq!(membership_of(&alice, &room_id, &bob_id).as_deref(), Some("knock"));
    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({}))
        .ok();
    // make_leave/send_leave reached the room's server at once.
    assert_eq!(membership_of(&alice, &room_id, &bob_id).as_deref(), Some("leave"));
    let body = sync(&bob);
    assert!(body["rooms"]["knock"].get(&room_id).is_none(), "{body}");
    // Nothing to leave any more.
    bob.post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({}))
        .expect_err(403, "M_FORBIDDEN");

    // Carol knocks and Alice refuses her (a kick of the knock): the leave is sent to Carol's
    // server, which ends the knock there too.
    let carol = b.user("carol", "secret-password");
    let carol_id = format!("@carol:{b_name}");
    carol
        .post(&format!("/_matrix/client/v3/knock/{room_id}?via={a_name}"), json!({}))
        .ok();
    let body = sync(&carol);
    assert!(body["rooms"]["knock"].get(&room_id).is_some(), "{body}");
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{room_id}/kick"),
            json!({"user_id": carol_id, "reason": "not today"}),
        )
        .ok();
    assert!(eventually(|| sync(&carol)["rooms"]["knock"].get(&room_id).is_none()));
    carol
        .post(&format!("/_matrix/client/v3/rooms/{room_id}/leave"), json!({}))
        .expect_err(403, "M_FORBIDDEN");

    // Dave knocks, then deactivates his account: the knock is withdrawn on the room's server.
    let dave = b.user("dave", "secret-password");
    let dave_id = format!("@dave:{b_name}");
    dave.post(&format!("/_matrix/client/v3/knock/{room_id}?via={a_name}"), json!({}))
        .ok();
    assert_eq!(membership_of(&alice, &room_id, &dave_id).as_deref(), Some("knock"));
    let first = dave.uia_start("POST", "/_matrix/client/v3/account/deactivate", json!({}));
    let session = first["session"].as_str().unwrap().to_owned();
    let auth = dave.password_auth("secret-password", Some(&session));
    dave.post("/_matrix/client/v3/account/deactivate", json!({"auth": auth}))
        .ok();
    assert_eq!(membership_of(&alice, &room_id, &dave_id).as_deref(), Some("leave"));
}

#[test]
fn knocks_the_room_does_not_allow_or_no_server_knows_are_refused() {
    let ca = TestCa::new();
    let (a, b, alice, bob) = pair(&ca, "127.0.0.175", "127.0.0.176", &[]);
    let (a_name, b_name) = (a.server_name.clone(), b.server_name.clone());
    // An invite-only room: the room's server refuses, and its refusal is relayed.
    let private = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "private_chat"}));
    let private_id = private.ok()["room_id"].as_str().unwrap().to_owned();
    bob.post(
        &format!("/_matrix/client/v3/knock/{private_id}?via={a_name}"),
        json!({}),
    )
    .expect_err(403, "M_FORBIDDEN");
    let bob_id = format!("@bob:{b_name}");
    assert_ne!(membership_of(&alice, &private_id, &bob_id).as_deref(), Some("knock"));
    let body = sync(&bob);
    assert!(body["rooms"]["knock"].get(&private_id).is_none(), "{body}");

    // A room the via server does not know, and a room with no server to ask (room ids of
    // version 12 name none): 404.
    bob.post(
        &format!("/_matrix/client/v3/knock/!nowhere:{a_name}?via={a_name}"),
        json!({}),
    )
    .expect_err(404, "M_NOT_FOUND");
    bob.post(&format!("/_matrix/client/v3/knock/{private_id}"), json!({}))
        .expect_err(404, "M_NOT_FOUND");
    // An alias nobody has.
    bob.post(&format!("/_matrix/client/v3/knock/%23nothing:{a_name}"), json!({}))
        .expect_err(404, "M_NOT_FOUND");
}

#[test]
fn pending_invites_from_one_server_are_bounded_and_a_rescinded_one_is_cleared() {
    let ca = TestCa::new();
    let (_a, b, alice, bob) = pair(
        &ca,
        "127.0.0.177",
        "127.0.0.178",
        &[("HEARTH_FEDERATION__MAX_REMOTE_INVITES_PER_SERVER", "2")],
    );
    let bob_id = format!("@bob:{}", b.server_name);
    let rooms: Vec<String> = (0..3)
        .map(|i| {
            let room = alice.post(
                "/_matrix/client/v3/createRoom",
                json!({"preset": "private_chat", "name": format!("Room {i}")}),
            );
            room.ok()["room_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let invite = |room_id: &str| {
        alice.post(
            &format!("/_matrix/client/v3/rooms/{room_id}/invite"),
            json!({"user_id": bob_id}),
        )
    };
    invite(&rooms[0]).ok();
    invite(&rooms[1]).ok();
    // The third from the same server is refused by Bob's server, and withdrawn on Alice's.
    invite(&rooms[2]).expect_err(403, "M_FORBIDDEN");
    assert_eq!(membership_of(&alice, &rooms[2], &bob_id).as_deref(), Some("leave"));
    let body = sync(&bob);
    let invited = body["rooms"]["invite"].as_object().unwrap();
    assert!(
        invited.contains_key(&rooms[0]) && invited.contains_key(&rooms[1]),
        "{body}"
    );
    assert!(!invited.contains_key(&rooms[2]), "{body}");

    // Alice rescinds the first (a kick of the invite): Bob's server hears of it and drops it,
    // which makes room for another.
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", rooms[0]),
            json!({"user_id": bob_id}),
        )
        .ok();
    assert!(eventually(|| {
        sync(&bob)["rooms"]["invite"].get(&rooms[0]).is_none()
    }));
    // No invite left to join by (and no server known to be in the room).
    bob.post(&format!("/_matrix/client/v3/join/{}", rooms[0]), json!({}))
        .expect_err(404, "M_NOT_FOUND");
    invite(&rooms[2]).ok();
    // A declined invite leaves room too; accepting one works as before.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", rooms[1]), json!({}))
        .ok();
    bob.post(&format!("/_matrix/client/v3/join/{}", rooms[2]), json!({}))
        .ok();
    assert_eq!(membership_of(&alice, &rooms[2], &bob_id).as_deref(), Some("join"));
}

/// A server that says the room's version is one of ours it cannot serve, or one we do not
/// support, or that answers `make_knock` with a template for another event: the client gets
/// the spec's room-version errors or 403, and nothing is signed and sent with `send_knock`.
#[test]
fn room_version_errors_and_lying_knock_templates() {
    use crate::support::fake_server::FakeServer;
    let ca = TestCa::new();
    let mut b = federated_server(&ca, "127.0.0.179", &[]);
    b.launch();
    let bob = b.user("bob", "secret-password");
    let bob_id = format!("@bob:{}", b.server_name);
    let remote = FakeServer::start(&ca, "127.0.0.180");
    let room_id = format!("!door:{}", remote.name);
    let knock = || bob.post(&format!("/_matrix/client/v3/knock/{room_id}"), json!({}));

    remote.answer_status_with(
        400,
        r#"{"errcode":"M_INCOMPATIBLE_ROOM_VERSION","error":"no","room_version":"org.example.future"}"#,
    );
    let answer = knock();
    answer.expect_err(400, "M_INCOMPATIBLE_ROOM_VERSION");
    assert_eq!(answer.body["room_version"], "org.example.future");

    let template = |version: &str, sender: &str, membership: &str| {
        json!({
            "room_version": version,
            "event": {
                "type": "m.room.member", "room_id": room_id, "sender": sender, "state_key": sender,
                "content": {"membership": membership}, "prev_events": [], "auth_events": [], "depth": 5,
                "origin_server_ts": 1, "origin": remote.name,
            },
        })
        .to_string()
    };
    remote.answer_with(&template("org.example.future", &bob_id, "knock"));
    knock().expect_err(400, "M_UNSUPPORTED_ROOM_VERSION");

    let other = format!("@other:{}", remote.name);
    for (sender, membership) in [(bob_id.as_str(), "join"), (other.as_str(), "knock")] {
        remote.answer_with(&template("11", sender, membership));
        let answer = knock();
        assert_eq!(answer.status, 403, "{membership} of {sender}: {}", answer.text);
    }
    assert!(
        remote.received().iter().all(|r| !r.path.contains("send_knock")),
        "{:?}",
        remote.received()
    );
    let body = sync(&bob);
    assert!(body["rooms"]["knock"].get(&room_id).is_none(), "{body}");
}

/// Synapse's rule for a leave reaching a server not in the room: only the inviter rescinds an
/// invite (we cannot check a moderator's power without the room's state). A leave by another
/// moderator is ignored; the inviter's, sent after it on the same queue, is applied, so once
/// that one is seen the other has been decided.
#[test]
fn only_the_inviter_rescinds_an_invite_to_a_room_this_server_lacks() {
    let ca = TestCa::new();
    let (a, b, alice, bob) = pair(&ca, "127.0.0.182", "127.0.0.183", &[]);
    let carol = a.user("carol", "secret-password");
    let (carol_id, bob_id) = (format!("@carol:{}", a.server_name), format!("@bob:{}", b.server_name));
    let moderated = alice.post(
        "/_matrix/client/v3/createRoom",
        json!({
            "preset": "private_chat",
            "invite": [carol_id],
            "power_level_content_override": {"users": {carol_id.clone(): 100}},
        }),
    );
    let moderated = moderated.ok()["room_id"].as_str().unwrap().to_owned();
    carol
        .post(&format!("/_matrix/client/v3/join/{moderated}"), json!({}))
        .ok();
    let other = alice.post("/_matrix/client/v3/createRoom", json!({"preset": "private_chat"}));
    let other = other.ok()["room_id"].as_str().unwrap().to_owned();
    for room_id in [&moderated, &other] {
        alice
            .post(
                &format!("/_matrix/client/v3/rooms/{room_id}/invite"),
                json!({"user_id": bob_id}),
            )
            .ok();
    }
    // Carol (not the inviter) kicks the invite: fine on A, ignored on B.
    carol
        .post(
            &format!("/_matrix/client/v3/rooms/{moderated}/kick"),
            json!({"user_id": bob_id}),
        )
        .ok();
    assert_eq!(membership_of(&alice, &moderated, &bob_id).as_deref(), Some("leave"));
    // Alice rescinds the other one, after Carol's kick in A's queue to B.
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{other}/kick"),
            json!({"user_id": bob_id}),
        )
        .ok();
    assert!(eventually(|| sync(&bob)["rooms"]["invite"].get(&other).is_none()));
    let body = sync(&bob);
    assert!(body["rooms"]["invite"].get(&moderated).is_some(), "{body}");
}
