//! Who may read and enter a room: history visibility for members who joined late, former
//! members and strangers; `members?at=`; forgetting; knocking and restricted join rules.

use serde_json::{Value, json};

use crate::{
    rooms::{create_room, send},
    support::{Client, TestServer, enc},
};

fn messages(c: &Client, room: &str) -> Vec<String> {
    let page = c.get(&format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=1000",
        enc(room)
    ));
    bodies(&page.ok()["chunk"])
}

/// The bodies of the `m.room.message` events of a chunk of events.
pub(crate) fn bodies(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

fn set_visibility(c: &Client, room: &str, visibility: &str) {
    c.put(
        &format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/",
            enc(room)
        ),
        json!({"history_visibility": visibility}),
    )
    .ok();
}

fn join(c: &Client, room: &str) {
    c.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(room)), json!({}))
        .ok();
}

fn event_path(room: &str, event: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(event))
}

#[test]
fn joined_visibility_hides_what_came_before_the_join() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    set_visibility(&alice, &room, "joined");
    let secret = send(&alice, &room, "t1", "before bob");
    join(&bob, &room);
    send(&alice, &room, "t2", "after bob");

    assert_eq!(messages(&bob, &room), ["after bob"]);
    assert_eq!(messages(&alice, &room), ["before bob", "after bob"]);
    bob.get(&event_path(&room, &secret)).expect_err(403, "M_FORBIDDEN");
    bob.get(&format!(
        "/_matrix/client/v3/rooms/{}/context/{}",
        enc(&room),
        enc(&secret)
    ))
    .expect_err(403, "M_FORBIDDEN");
    // Events from while the room was still "shared" stay visible to him, his own join too.
    let page = bob.get(&format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=1000",
        enc(&room)
    ));
    let chunk = page.ok()["chunk"].as_array().unwrap().clone();
    assert!(chunk.iter().any(|e| e["type"] == "m.room.create"));
    assert!(
        chunk
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.uid())
    );
    assert!(!chunk.iter().any(|e| e["event_id"] == secret.as_str()));
}

#[test]
fn shared_and_invited_visibility() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let carol = server.user("carol", "pw");
    let dave = server.user("dave", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    set_visibility(&alice, &room, "shared");
    send(&alice, &room, "s1", "shared history");
    join(&carol, &room);
    assert_eq!(
        messages(&carol, &room),
        ["shared history"],
        "shared: all history after joining"
    );

    set_visibility(&alice, &room, "invited");
    send(&alice, &room, "i1", "before the invite");
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({"user_id": dave.uid()}),
        )
        .ok();
    send(&alice, &room, "i2", "after the invite");
    // An invitee is not a member yet: no reading.
    dave.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&room)))
        .expect_err(403, "M_FORBIDDEN");
    join(&dave, &room);
    send(&alice, &room, "i3", "after the join");
    let seen = messages(&dave, &room);
    assert!(!seen.contains(&"before the invite".to_owned()), "{seen:?}");
    assert!(
        seen.ends_with(&["after the invite".to_owned(), "after the join".to_owned()]),
        "{seen:?}"
    );
    // Events sent while the room was "shared" stay visible to those who joined since.
    assert!(seen.contains(&"shared history".to_owned()), "{seen:?}");
}

#[test]
fn world_readable_rooms_are_open_to_strangers_and_others_are_not() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let eve = server.user("eve", "pw");
    let open = create_room(&alice, json!({"preset": "public_chat"}));
    set_visibility(&alice, &open, "world_readable");
    let event = send(&alice, &open, "w1", "for everyone");
    assert_eq!(messages(&eve, &open), ["for everyone"]);
    eve.get(&event_path(&open, &event)).ok();
    let state = eve.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&open)));
    assert!(state.ok().as_array().unwrap().len() > 3);
    // A stranger still cannot write.
    eve.put(
        &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/x", enc(&open)),
        json!({"msgtype": "m.text", "body": "hi"}),
    )
    .expect_err(403, "M_FORBIDDEN");

    let closed = create_room(&alice, json!({"preset": "public_chat"}));
    let event = send(&alice, &closed, "c1", "members only");
    for path in [
        format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&closed)),
        format!("/_matrix/client/v3/rooms/{}/state", enc(&closed)),
        format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&closed)),
        format!("/_matrix/client/v3/rooms/{}/members", enc(&closed)),
        event_path(&closed, &event),
    ] {
        eve.get(&path).expect_err(403, "M_FORBIDDEN");
    }
}

#[test]
fn former_members_read_up_to_their_departure() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat", "name": "Before"}));
    join(&bob, &room);
    send(&alice, &room, "1", "while bob was here");
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({}))
        .ok();
    let later = send(&alice, &room, "2", "after bob left");
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            json!({"name": "After"}),
        )
        .ok();

    assert_eq!(messages(&bob, &room), ["while bob was here"]);
    bob.get(&event_path(&room, &later)).expect_err(403, "M_FORBIDDEN");
    let name = bob.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)));
    assert_eq!(name.ok()["name"], "Before", "state as of the departure");
    let members = bob.get(&format!("/_matrix/client/v3/rooms/{}/members", enc(&room)));
    let bob_member = members.ok()["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["state_key"] == bob.uid())
        .cloned()
        .unwrap();
    assert_eq!(bob_member["content"]["membership"], "leave");
}

#[test]
fn members_at_a_pagination_token() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    send(&alice, &room, "1", "one");
    let page = alice.get(&format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1",
        enc(&room)
    ));
    let token = page.ok()["start"].as_str().unwrap().to_owned();
    join(&bob, &room);

    let members = |query: &str| -> Vec<String> {
        let r = alice.get(&format!("/_matrix/client/v3/rooms/{}/members{query}", enc(&room)));
        r.ok()["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["state_key"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(members(&format!("?at={token}")), [alice.uid()]);
    let mut now = members("");
    now.sort();
    let mut expected = vec![alice.uid(), bob.uid()];
    expected.sort();
    assert_eq!(now, expected);
    alice
        .get(&format!("/_matrix/client/v3/rooms/{}/members?at=nonsense", enc(&room)))
        .expect_err(400, "M_INVALID_PARAM");
}

fn state_path(room: &str, kind: &str, key: &str) -> String {
    format!("/_matrix/client/v3/rooms/{}/state/{kind}/{}", enc(room), enc(key))
}

fn membership_of(c: &Client, room: &str, user: &str) -> Value {
    c.get(&state_path(room, "m.room.member", user)).ok().clone()
}

#[test]
fn forgetting_a_room() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    let forget = format!("/_matrix/client/v3/rooms/{}/forget", enc(&room));
    bob.post(&forget, json!({})).expect_err(404, "M_NOT_FOUND");
    join(&bob, &room);
    send(&alice, &room, "1", "hello bob");
    bob.post(&forget, json!({})).expect_err(400, "M_UNKNOWN");
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({}))
        .ok();
    assert_eq!(messages(&bob, &room), ["hello bob"]);
    bob.post(&forget, json!({})).ok();
    bob.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&room)))
        .expect_err(403, "M_FORBIDDEN");
    // Joining again remembers the room.
    join(&bob, &room);
    assert_eq!(messages(&bob, &room), ["hello bob"]);
}

#[test]
fn knocking() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let carol = server.user("carol", "pw");
    let room = create_room(&alice, json!({"preset": "private_chat"}));
    let knock = format!("/_matrix/client/v3/knock/{}", enc(&room));
    // An invite-only room refuses knocks.
    bob.post(&knock, json!({})).expect_err(403, "M_FORBIDDEN");
    alice
        .put(
            &state_path(&room, "m.room.join_rules", ""),
            json!({"join_rule": "knock"}),
        )
        .ok();
    let r = bob.post(&knock, json!({"reason": "let me in"}));
    assert_eq!(r.ok()["room_id"], room.as_str());
    let member = membership_of(&alice, &room, &bob.uid());
    assert_eq!(member["membership"], "knock");
    assert_eq!(member["reason"], "let me in");
    // Knocking is not joining; a second knock is refused only once invited or joined.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({}))
        .expect_err(403, "M_FORBIDDEN");
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({"user_id": bob.uid()}),
        )
        .ok();
    join(&bob, &room);
    bob.post(&knock, json!({})).expect_err(403, "M_FORBIDDEN");
    // A knock can be withdrawn by leaving.
    carol.post(&knock, json!({})).ok();
    carol
        .post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({}))
        .ok();
    assert_eq!(membership_of(&alice, &room, &carol.uid())["membership"], "leave");
    // Unknown rooms and malformed ids.
    bob.post("/_matrix/client/v3/knock/!nope:localhost", json!({}))
        .expect_err(404, "M_NOT_FOUND");
}

#[test]
fn restricted_rooms_admit_members_of_allowed_rooms() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let carol = server.user("carol", "pw");
    let space = create_room(&alice, json!({"preset": "public_chat", "name": "Space"}));
    join(&bob, &space);
    let room = create_room(
        &alice,
        json!({
            "preset": "private_chat",
            "initial_state": [{
                "type": "m.room.join_rules",
                "state_key": "",
                "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": space}]}
            }]
        }),
    );
    join(&bob, &room);
    let member = membership_of(&alice, &room, &bob.uid());
    assert_eq!(member["membership"], "join");
    assert_eq!(member["join_authorised_via_users_server"], alice.uid());
    carol
        .post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({}))
        .expect_err(403, "M_FORBIDDEN");
}

#[test]
fn member_events_carry_the_profile() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    bob.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob.uid())),
        json!({"displayname": "Bobby"}),
    )
    .ok();
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    join(&bob, &room);
    assert_eq!(membership_of(&alice, &room, &bob.uid())["displayname"], "Bobby");
    // A room's creator shows with their profile too.
    let own = create_room(&bob, json!({}));
    assert_eq!(membership_of(&bob, &own, &bob.uid())["displayname"], "Bobby");
    // A new name reaches the rooms the user is in.
    bob.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob.uid())),
        json!({"displayname": "Robert"}),
    )
    .ok();
    let member = membership_of(&alice, &room, &bob.uid());
    assert_eq!(
        (member["displayname"].as_str(), member["membership"].as_str()),
        (Some("Robert"), Some("join"))
    );
}

#[test]
fn rejecting_an_invite_opens_no_history() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "private_chat"}));
    send(&alice, &room, "1", "members only");
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({"user_id": bob.uid()}),
        )
        .ok();
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({}))
        .ok();
    bob.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&room)))
        .expect_err(403, "M_FORBIDDEN");
}

#[test]
fn ignored_users_are_left_out_of_messages() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let troll = server.user("troll", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    join(&troll, &room);
    send(&troll, &room, "1", "noise");
    send(&alice, &room, "2", "signal");
    alice
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                enc(&alice.uid())
            ),
            json!({"ignored_users": {troll.uid(): {}}}),
        )
        .ok();
    assert_eq!(messages(&alice, &room), ["signal"]);
}

#[test]
fn a_former_member_reads_no_shared_history_after_leaving_a_room_made_world_readable() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    join(&bob, &room);
    send(&alice, &room, "t1", "while bob");
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({}))
        .ok();
    let hidden = send(&alice, &room, "t2", "after bob left");
    set_visibility(&alice, &room, "world_readable");
    send(&alice, &room, "t3", "public now");

    assert_eq!(messages(&bob, &room), ["while bob", "public now"]);
    bob.get(&event_path(&room, &hidden)).expect_err(403, "M_FORBIDDEN");
    let context = bob.get(&format!(
        "/_matrix/client/v3/rooms/{}/context/{}",
        enc(&room),
        enc(&hidden)
    ));
    context.expect_err(403, "M_FORBIDDEN");
    // A stranger sees only what is world-readable, as before.
    let eve = server.user("eve", "pw");
    assert_eq!(messages(&eve, &room), ["public now"]);
}

#[test]
fn timestamp_to_event_answers_only_with_what_the_reader_may_see() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    set_visibility(&alice, &room, "joined");
    let secret = send(&alice, &room, "t1", "before bob");
    let secret_ts = alice.get(&event_path(&room, &secret)).ok()["origin_server_ts"]
        .as_u64()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    join(&bob, &room);
    send(&alice, &room, "t2", "after bob");
    let lookup = |c: &Client, dir: &str| {
        c.get(&format!(
            "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={secret_ts}&dir={dir}",
            enc(&room)
        ))
    };
    // Alice may see it. Bob may not: he gets the nearest event he may read on that side
    // (the room's setup, shared before it turned `joined`; his own join after).
    assert_eq!(lookup(&alice, "b").ok()["event_id"], secret.as_str());
    for dir in ["b", "f"] {
        let found = lookup(&bob, dir).ok()["event_id"].as_str().unwrap().to_owned();
        assert_ne!(found, secret, "dir={dir}");
        bob.get(&event_path(&room, &found)).ok();
    }
    // A stranger to a room whose history is all `joined` finds nothing at all.
    let closed = create_room(
        &alice,
        json!({"preset": "public_chat", "initial_state": [
            {"type": "m.room.history_visibility", "state_key": "", "content": {"history_visibility": "joined"}}
        ]}),
    );
    send(&alice, &closed, "t3", "members only");
    let carol = server.user("carol", "pw");
    carol
        .get(&format!(
            "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts=4102444800000&dir=b",
            enc(&closed)
        ))
        .expect_err(403, "M_FORBIDDEN");
}
