//! Rooms over HTTP: creation, sending (idempotent transactions), state, membership and the
//! authorization rules that refuse, and /messages pagination.

use serde_json::json;

use crate::support::{Client, TestServer, enc};

pub(crate) fn create_room(c: &Client, body: serde_json::Value) -> String {
    let r = c.post("/_matrix/client/v3/createRoom", body);
    r.ok()["room_id"].as_str().expect("room_id").to_owned()
}

pub(crate) fn send(c: &Client, room: &str, txn: &str, body: &str) -> String {
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room));
    c.put(&path, json!({"msgtype": "m.text", "body": body})).ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn create_send_read_back() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({"name": "Team", "topic": "Plans"}));
    assert!(
        room.starts_with('!') && !room.contains(':'),
        "v12 room ids are hashes: {room}"
    );

    let first = send(&alice, &room, "t1", "hello");
    assert_eq!(send(&alice, &room, "t1", "hello"), first, "same txn id, same event");
    let second = send(&alice, &room, "t2", "again");
    assert_ne!(first, second);

    let event = alice.get(&format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        enc(&room),
        enc(&first)
    ));
    let event = event.ok();
    assert_eq!(event["content"]["body"], "hello");
    assert_eq!(event["sender"], alice.uid());
    assert_eq!(event["room_id"], room);

    let name = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)));
    assert_eq!(name.ok()["name"], "Team");
    let name = alice.get(&format!(
        "/_matrix/client/v3/rooms/{}/state/m.room.name?format=event",
        enc(&room)
    ));
    assert_eq!(name.ok()["type"], "m.room.name");
    let state = alice.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room)));
    let types: Vec<&str> = state
        .ok()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for t in [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.name",
        "m.room.topic",
    ] {
        assert!(types.contains(&t), "{t} missing from {types:?}");
    }
    alice
        .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.avatar/", enc(&room)))
        .expect_err(404, "M_NOT_FOUND");
    alice
        .get(&format!("/_matrix/client/v3/rooms/{}/event/%24nope", enc(&room)))
        .expect_err(404, "M_NOT_FOUND");
}

#[test]
fn messages_paginate_both_ways() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({}));
    for i in 0..25 {
        send(&alice, &room, &format!("t{i}"), &format!("m{i}"));
    }
    let mut bodies = Vec::new();
    let mut from: Option<String> = None;
    for _ in 0..20 {
        let mut path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10", enc(&room));
        if let Some(f) = &from {
            path.push_str(&format!("&from={f}"));
        }
        let page = alice.get(&path).ok().clone();
        for e in page["chunk"].as_array().unwrap() {
            if e["type"] == "m.room.message" {
                bodies.push(e["content"]["body"].as_str().unwrap().to_owned());
            }
        }
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(bodies, expected, "newest first, each exactly once");

    let forward = alice.get(&format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=1000",
        enc(&room)
    ));
    let forward: Vec<&str> = forward.ok()["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(forward[0], "m.room.create");
    assert_eq!(forward.iter().filter(|t| **t == "m.room.message").count(), 25);
    alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&from=abc",
            enc(&room)
        ))
        .expect_err(400, "M_INVALID_PARAM");
}

#[test]
fn authorization_rules_refuse() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let eve = server.user("eve", "pw");

    // Private room: strangers can neither join nor read.
    let private = create_room(&alice, json!({"preset": "private_chat"}));
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&private)), json!({}))
        .expect_err(403, "M_FORBIDDEN");
    bob.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&private)))
        .expect_err(403, "M_FORBIDDEN");
    bob.put(
        &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/x", enc(&private)),
        json!({"body": "hi"}),
    )
    .expect_err(403, "M_FORBIDDEN");

    // Invited, bob may join; eve still may not.
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&private)),
            json!({"user_id": bob.uid()}),
        )
        .ok();
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&private)), json!({}))
        .ok();
    eve.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&private)), json!({}))
        .expect_err(403, "M_FORBIDDEN");

    // Bob is a member without power: he may talk but not rename the room or raise himself.
    send(&bob, &private, "b1", "hi");
    bob.put(
        &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&private)),
        json!({"name": "mine"}),
    )
    .expect_err(403, "M_FORBIDDEN");
    let pl = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/state/m.room.power_levels/",
            enc(&private)
        ))
        .ok()
        .clone();
    let mut raised = pl.clone();
    raised["users"][bob.uid()] = json!(100);
    bob.put(
        &format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&private)),
        raised,
    )
    .expect_err(403, "M_FORBIDDEN");
    // Alice, the creator, may rename it.
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&private)),
            json!({"name": "ours"}),
        )
        .ok();

    // Public room: anyone joins, and a member who leaves reads nothing sent after.
    let public = create_room(&alice, json!({"preset": "public_chat"}));
    eve.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&public)), json!({}))
        .ok();
    send(&eve, &public, "e1", "hello");
    eve.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&public)), json!({}))
        .ok();
    let after = send(&alice, &public, "a1", "after eve left");
    let page = eve.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b", enc(&public)));
    assert!(
        !page.ok()["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event_id"] == after.as_str())
    );
    eve.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&public)), json!({}))
        .expect_err(403, "M_FORBIDDEN");
}

#[test]
fn bad_room_input() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    alice
        .post("/_matrix/client/v3/createRoom", json!({"room_version": "1"}))
        .expect_err(400, "M_UNSUPPORTED_ROOM_VERSION");
    alice
        .post("/_matrix/client/v3/createRoom", json!({"room_version": "99"}))
        .expect_err(400, "M_UNSUPPORTED_ROOM_VERSION");
    let room = create_room(&alice, json!({"room_version": "11"}));
    assert!(room.ends_with(":hearth.test"), "v11 room ids name the server: {room}");
    alice
        .get("/_matrix/client/v3/rooms/!unknown:hearth.test/state")
        .expect_err(403, "M_FORBIDDEN");
    alice
        .get("/_matrix/client/v3/rooms/not-a-room/state")
        .expect_err(400, "M_INVALID_PARAM");
    let big = "x".repeat(70_000);
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/big", enc(&room)),
            json!({"body": big}),
        )
        .expect_err(413, "M_TOO_LARGE");
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/arr", enc(&room)),
            json!([1, 2]),
        )
        .expect_err(400, "M_BAD_JSON");
    // Nothing above harmed the room.
    send(&alice, &room, "ok", "still fine");
}

#[test]
fn rooms_survive_sigkill() {
    let mut server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({"name": "Durable"}));
    let ids: Vec<String> = (0..20)
        .map(|i| send(&alice, &room, &format!("t{i}"), &format!("m{i}")))
        .collect();
    server.kill9();
    server.launch();
    let alice = alice.with_base(&server.base);
    let page = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=100",
            enc(&room)
        ))
        .ok()
        .clone();
    let seen: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    for id in &ids {
        assert!(seen.contains(&id.as_str()), "acknowledged event {id} lost");
    }
    // The DAG continues after the restart, and the retried transaction is still known.
    assert_eq!(send(&alice, &room, "t0", "m0"), ids[0]);
    send(&alice, &room, "after", "after restart");
    let name = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)));
    assert_eq!(name.ok()["name"], "Durable");
}

/// 50 clients sending at once into one room: a single linear DAG (each event's `prev_events`
/// is exactly the event before it), nothing lost or duplicated, and every stored event carries
/// a valid content hash and signature (what federation peers will check).
#[test]
fn concurrent_senders_make_one_linear_signed_dag() {
    let mut server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    let senders: Vec<Client> = (0..50)
        .map(|i| {
            let c = server.user(&format!("s{i}"), "pw");
            c.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({}))
                .ok();
            c
        })
        .collect();
    let handles: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let room = room.clone();
            std::thread::spawn(move || {
                (0..4)
                    .map(|n| send(&c, &room, &format!("c{n}"), &format!("{i}/{n}")))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acknowledged: Vec<String> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    server.stop();

    let services = server.open_services();
    let room_id = ruma::RoomId::parse(&room).unwrap();
    let timeline = services.rooms.timeline(&room_id, 0, u64::MAX, false, 100_000).unwrap();
    for pair in timeline.windows(2) {
        assert_eq!(
            pair[1].1.prev_events,
            vec![pair[0].1.event_id.clone()],
            "the DAG forked at {}",
            pair[1].1.event_id
        );
        assert!(pair[1].0 > pair[0].0, "positions increase along the timeline");
    }
    let mut stored: Vec<String> = timeline
        .iter()
        .filter(|(_, p)| p.kind.to_string() == "m.room.message")
        .map(|(_, p)| p.event_id.to_string())
        .collect();
    acknowledged.sort();
    stored.sort();
    assert_eq!(stored, acknowledged, "every acknowledged event stored exactly once");

    let keys = &services.server_keys;
    let mut key_set = std::collections::BTreeMap::new();
    key_set.insert(
        format!("ed25519:{}", keys.version),
        ruma::serde::Base64::new(keys.keypair.public_key().to_vec()),
    );
    let key_map = std::collections::BTreeMap::from([("hearth.test".to_owned(), key_set)]);
    let rules = ruma::RoomVersionId::V12.rules().unwrap();
    for (_, pdu) in &timeline {
        let json = services.rooms.event_json(&pdu.event_id).unwrap().unwrap();
        let object: ruma::CanonicalJsonObject = serde_json::from_slice(&json).unwrap();
        let verified = ruma::signatures::verify_event(&key_map, &object, &rules);
        assert_eq!(verified.unwrap(), ruma::signatures::Verified::All, "{}", pdu.event_id);
        let reference = ruma::signatures::reference_hash(&object, &rules).unwrap();
        assert_eq!(
            pdu.event_id.as_str(),
            format!("${reference}"),
            "event id is the reference hash"
        );
    }
}

#[test]
fn kick_ban_unban_and_member_lists() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let eve = server.user("eve", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    let r = |path: &str| format!("/_matrix/client/v3/rooms/{}/{path}", enc(&room));
    bob.post(&r("join"), json!({})).ok();
    eve.post(&r("join"), json!({})).ok();

    let joined = alice.get(&r("joined_members")).ok().clone();
    let mut names: Vec<&String> = joined["joined"].as_object().unwrap().keys().collect();
    names.sort();
    assert_eq!(names, vec![&alice.uid(), &bob.uid(), &eve.uid()]);

    // Without power, bob can neither kick nor ban.
    bob.post(&r("kick"), json!({"user_id": eve.uid()}))
        .expect_err(403, "M_FORBIDDEN");
    bob.post(&r("ban"), json!({"user_id": eve.uid()}))
        .expect_err(403, "M_FORBIDDEN");

    // Alice kicks bob (he may come back) and bans eve (she may not).
    alice
        .post(&r("kick"), json!({"user_id": bob.uid(), "reason": "cool off"}))
        .ok();
    bob.put(
        &r("send/m.room.message/kicked"),
        json!({"msgtype": "m.text", "body": "x"}),
    )
    .expect_err(403, "M_FORBIDDEN");
    bob.post(&r("join"), json!({})).ok();
    alice.post(&r("ban"), json!({"user_id": eve.uid()})).ok();
    eve.post(&r("join"), json!({})).expect_err(403, "M_FORBIDDEN");

    let banned = alice.get(&r("members?membership=ban")).ok().clone();
    let banned: Vec<&str> = banned["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state_key"].as_str().unwrap())
        .collect();
    assert_eq!(banned, vec![eve.uid().as_str()]);
    let not_joined = alice.get(&r("members?not_membership=join")).ok().clone();
    assert_eq!(not_joined["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(alice.get(&r("members")).ok()["chunk"].as_array().unwrap().len(), 3);

    alice
        .post(&r("unban"), json!({"user_id": bob.uid()}))
        .expect_err(403, "M_FORBIDDEN");
    alice.post(&r("unban"), json!({"user_id": eve.uid()})).ok();
    eve.post(&r("join"), json!({})).ok();
}

#[test]
fn joined_rooms_follows_membership() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let one = create_room(&alice, json!({"preset": "public_chat"}));
    let two = create_room(&alice, json!({"preset": "public_chat"}));
    let rooms = |c: &Client| {
        let mut r: Vec<String> = c.get("/_matrix/client/v3/joined_rooms").ok()["joined_rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        r.sort();
        r
    };
    let mut both = vec![one.clone(), two.clone()];
    both.sort();
    assert_eq!(rooms(&alice), both);
    assert!(rooms(&bob).is_empty());
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&one)), json!({}))
        .ok();
    assert_eq!(rooms(&bob), vec![one.clone()]);
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&one)), json!({}))
        .ok();
    assert!(rooms(&bob).is_empty());
    bob.post("/_matrix/client/v3/join/%23nowhere%3Ahearth.test", json!({}))
        .expect_err(404, "M_NOT_FOUND");
}

/// Spec "Redactions": own events can always be redacted, others' need the `redact` level; the
/// served event loses its content (per the room version's algorithm) and carries
/// `unsigned.redacted_because`; a retried redaction transaction is idempotent.
#[test]
fn redactions() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat", "name": "Named"}));
    let r = |path: &str| format!("/_matrix/client/v3/rooms/{}/{path}", enc(&room));
    bob.post(&r("join"), json!({})).ok();
    let alices = send(&alice, &room, "a1", "alice's secret");
    let bobs = send(&bob, &room, "b1", "bob's oops");

    // Bob may not redact Alice's event; he may redact his own.
    bob.put(&r(&format!("redact/{}/x1", enc(&alices))), json!({}))
        .expect_err(403, "M_FORBIDDEN");
    let redaction = bob
        .put(&r(&format!("redact/{}/x2", enc(&bobs))), json!({"reason": "typo"}))
        .ok()["event_id"]
        .clone();
    let again = bob
        .put(&r(&format!("redact/{}/x2", enc(&bobs))), json!({"reason": "typo"}))
        .ok()["event_id"]
        .clone();
    assert_eq!(redaction, again, "same transaction, same redaction");

    let served = alice.get(&r(&format!("event/{}", enc(&bobs)))).ok().clone();
    assert_eq!(served["content"], json!({}), "content is redacted: {served}");
    assert_eq!(served["unsigned"]["redacted_because"]["event_id"], redaction);
    assert_eq!(served["unsigned"]["redacted_because"]["content"]["reason"], "typo");
    // Alice (the creator) may redact anyone's event, and state keeps its name key.
    alice.put(&r(&format!("redact/{}/y1", enc(&alices))), json!({})).ok();
    let name_id = alice.get(&r("state/m.room.name/?format=event")).ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.put(&r(&format!("redact/{}/y2", enc(&name_id))), json!({})).ok();
    assert_eq!(
        alice.get(&r("state/m.room.name/")).ok().clone(),
        json!({}),
        "m.room.name keeps no content keys"
    );
    // The create event keeps what the room version needs: the room still works.
    send(&alice, &room, "a2", "still works");
    alice
        .put(&r("redact/%24unknown/z1"), json!({}))
        .expect_err(404, "M_NOT_FOUND");
}

/// A sync filter (URL-encoded) whose timelines hold every event of a small room.
const LONG_TIMELINE: &str = "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A50%7D%7D%7D";

/// `PUT /rooms/{roomId}/send/m.room.redaction/{txnId}` with `redacts` in the content (moved to
/// the top level before room version 11, as `room_send` says).
fn send_redaction(c: &Client, room: &str, txn: &str, target: &str) -> String {
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.redaction/{txn}", enc(room));
    c.put(&path, json!({"redacts": target})).ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// An event as `GET /rooms/{roomId}/event/{eventId}` serves it to `c`.
fn event(c: &Client, room: &str, id: &str) -> serde_json::Value {
    c.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(room), enc(id)))
        .ok()
        .clone()
}

/// The event with id `id` in a list of client-format events.
fn find_event(events: &serde_json::Value, id: &str) -> serde_json::Value {
    events
        .as_array()
        .and_then(|events| events.iter().find(|e| e["event_id"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("{id} missing: {events}"))
}

/// Spec "Redactions" (issue 12): a redaction takes effect only on an event of its own room, sent
/// by the redaction's sender or redacted by a user with the `redact` level, whichever endpoint
/// sent it. One that may not take effect is still a valid event, stored and served, and redacts
/// nothing.
#[test]
fn redactions_take_effect_only_in_their_room_and_with_the_power() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let alices_room = create_room(&alice, json!({"preset": "public_chat"}));
    let secret = send(&alice, &alices_room, "a1", "alice's words");

    // From a room of Bob's own, in a version with `redacts` in the content and one without.
    for version in ["12", "10"] {
        let bobs_room = create_room(&bob, json!({"room_version": version}));
        let redaction = send_redaction(&bob, &bobs_room, &format!("x{version}"), &secret);
        let kept = event(&alice, &alices_room, &secret);
        assert_eq!(kept["content"]["body"], "alice's words", "v{version}: {kept}");
        let served = event(&bob, &bobs_room, &redaction);
        assert_eq!(served["type"], "m.room.redaction", "{served}");
        if version == "10" {
            assert_eq!(served["redacts"], secret.as_str(), "moved to the top level: {served}");
        }
        let redact = format!(
            "/_matrix/client/v3/rooms/{}/redact/{}/y{version}",
            enc(&bobs_room),
            enc(&secret)
        );
        bob.put(&redact, json!({})).expect_err(404, "M_NOT_FOUND");
    }

    // In Alice's room Bob (power 0) redacts his own events, never hers.
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&alices_room)), json!({}))
        .ok();
    let refused = send_redaction(&bob, &alices_room, "z1", &secret);
    let bobs = send(&bob, &alices_room, "b1", "bob's words");
    send_redaction(&bob, &alices_room, "z2", &bobs);
    let kept = event(&alice, &alices_room, &secret);
    assert_eq!(kept["content"]["body"], "alice's words", "{kept}");
    assert!(kept["unsigned"].get("redacted_because").is_none(), "{kept}");
    assert_eq!(event(&alice, &alices_room, &bobs)["content"], json!({}));
    assert_eq!(
        event(&alice, &alices_room, &refused)["content"]["redacts"],
        secret.as_str()
    );
    let synced = alice
        .get(&format!("/_matrix/client/v3/sync?timeout=0&filter={LONG_TIMELINE}"))
        .ok()
        .clone();
    let timeline = &synced["rooms"]["join"][&alices_room]["timeline"]["events"];
    assert_eq!(find_event(timeline, &secret)["content"]["body"], "alice's words");
}

/// The `redact` level is judged in the state a redaction is sent in: power granted later does
/// not revive a redaction that redacted nothing, power taken later does not undo one.
#[test]
fn redaction_power_is_judged_at_the_redaction() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    let r = |path: &str| format!("/_matrix/client/v3/rooms/{}/{path}", enc(&room));
    bob.post(&r("join"), json!({})).ok();
    let first = send(&alice, &room, "a1", "first");
    let second = send(&alice, &room, "a2", "second");
    let set_bobs_level = |level: i64| {
        let mut levels = alice.get(&r("state/m.room.power_levels/")).ok().clone();
        levels["users"][bob.uid()] = json!(level);
        alice.put(&r("state/m.room.power_levels/"), levels).ok();
    };

    send_redaction(&bob, &room, "z1", &first);
    set_bobs_level(50);
    assert_eq!(event(&alice, &room, &first)["content"]["body"], "first");
    send_redaction(&bob, &room, "z2", &second);
    set_bobs_level(0);
    assert_eq!(event(&alice, &room, &second)["content"], json!({}));
    assert_eq!(event(&alice, &room, &first)["content"]["body"], "first");
}

/// Authorization reads the original events, never their redacted forms (issue 12). In room
/// version 10 a redacted `m.room.power_levels` loses `invite`: Bob (power 0) cannot get it
/// redacted, and once Alice redacts it inviting still needs her level.
#[test]
fn redacting_power_levels_never_weakens_the_rules() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let carol = server.user("carol", "pw");
    let room = create_room(
        &alice,
        json!({"room_version": "10", "preset": "public_chat", "power_level_content_override": {"invite": 100}}),
    );
    let r = |path: &str| format!("/_matrix/client/v3/rooms/{}/{path}", enc(&room));
    bob.post(&r("join"), json!({})).ok();
    let levels = alice.get(&r("state/m.room.power_levels/?format=event")).ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let invite_carol = || bob.post(&r("invite"), json!({"user_id": carol.uid()}));

    send_redaction(&bob, &room, "z1", &levels);
    assert_eq!(alice.get(&r("state/m.room.power_levels/")).ok()["invite"], 100);
    invite_carol().expect_err(403, "M_FORBIDDEN");

    alice.put(&r(&format!("redact/{}/y1", enc(&levels))), json!({})).ok();
    let served = alice.get(&r("state/m.room.power_levels/")).ok().clone();
    assert!(served.get("invite").is_none(), "served redacted: {served}");
    invite_carol().expect_err(403, "M_FORBIDDEN");
}

/// Redacted state is served redacted by every read of state, as the timeline and `/sync` serve
/// it (issue 12): `/state`, `/state/{type}/{key}`, `/members`, `/joined_members`.
#[test]
fn redacted_state_is_served_redacted_everywhere() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    bob.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob.uid())),
        json!({"displayname": "Bob Secret"}),
    )
    .ok();
    let room = create_room(&alice, json!({"preset": "public_chat", "topic": "secret topic"}));
    let r = |path: &str| format!("/_matrix/client/v3/rooms/{}/{path}", enc(&room));
    bob.post(&r("join"), json!({})).ok();
    let id_of = |path: &str| alice.get(&r(path)).ok()["event_id"].as_str().unwrap().to_owned();
    let topic = id_of("state/m.room.topic/?format=event");
    let bobs_join = id_of(&format!("state/m.room.member/{}?format=event", enc(&bob.uid())));
    alice.put(&r(&format!("redact/{}/y1", enc(&topic))), json!({})).ok();
    alice.put(&r(&format!("redact/{}/y2", enc(&bobs_join))), json!({})).ok();

    let state = alice.get(&r("state")).ok().clone();
    assert_eq!(find_event(&state, &topic)["content"], json!({}), "/state");
    assert_eq!(
        find_event(&state, &bobs_join)["content"],
        json!({"membership": "join"}),
        "/state"
    );
    assert_eq!(alice.get(&r("state/m.room.topic/")).ok(), &json!({}));
    let member = alice
        .get(&r(&format!("state/m.room.member/{}", enc(&bob.uid()))))
        .ok()
        .clone();
    assert_eq!(member, json!({"membership": "join"}));
    let members = alice.get(&r("members")).ok()["chunk"].clone();
    let served = find_event(&members, &bobs_join);
    assert_eq!(served["content"], json!({"membership": "join"}), "/members");
    assert!(served["unsigned"]["redacted_because"].is_object(), "{served}");
    let joined = alice.get(&r("joined_members")).ok()["joined"][bob.uid()].clone();
    assert!(joined.get("display_name").is_none(), "/joined_members: {joined}");
    let synced = alice
        .get(&format!("/_matrix/client/v3/sync?timeout=0&filter={LONG_TIMELINE}"))
        .ok()["rooms"]["join"][&room]
        .clone();
    let timeline = &synced["timeline"]["events"];
    assert_eq!(
        find_event(timeline, &bobs_join)["content"],
        json!({"membership": "join"}),
        "/sync"
    );
}

/// `createRoom` is all or nothing (issue 12): when an `initial_state` event or an invite is
/// refused, no trace of the room remains (nothing in `joined_rooms`, `/sync` or the directory)
/// and the alias is free again.
#[test]
fn create_room_is_all_or_nothing() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let token = alice.get("/_matrix/client/v3/sync?timeout=0").ok()["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let create = |body: serde_json::Value| alice.post("/_matrix/client/v3/createRoom", body);
    // Joining someone else, and inviting a member, are refused by the authorization rules.
    create(json!({
        "room_alias_name": "atomic", "visibility": "public", "name": "Half",
        "initial_state": [{"type": "m.room.member", "state_key": "@bob:hearth.test", "content": {"membership": "join"}}],
    }))
    .expect_err(403, "M_FORBIDDEN");
    create(json!({"room_alias_name": "atomic", "visibility": "public", "invite": [alice.uid()]}))
        .expect_err(403, "M_FORBIDDEN");

    let joined = alice.get("/_matrix/client/v3/joined_rooms").ok()["joined_rooms"].clone();
    assert_eq!(joined, json!([]));
    alice
        .get("/_matrix/client/v3/directory/room/%23atomic%3Ahearth.test")
        .expect_err(404, "M_NOT_FOUND");
    let public = alice.get("/_matrix/client/v3/publicRooms").ok()["chunk"].clone();
    assert_eq!(public, json!([]));
    for since in [format!("&since={}", enc(&token)), String::new()] {
        let synced = alice
            .get(&format!("/_matrix/client/v3/sync?timeout=0{since}"))
            .ok()
            .clone();
        for section in ["join", "invite", "leave"] {
            let rooms = &synced["rooms"][section];
            assert!(rooms.as_object().is_none_or(|r| r.is_empty()), "{section}: {synced}");
        }
    }

    let room = create_room(&alice, json!({"room_alias_name": "atomic", "visibility": "public"}));
    let resolved = alice
        .get("/_matrix/client/v3/directory/room/%23atomic%3Ahearth.test")
        .ok()
        .clone();
    assert_eq!(resolved["room_id"], room.as_str());
    let joined = alice.get("/_matrix/client/v3/joined_rooms").ok()["joined_rooms"].clone();
    assert_eq!(joined, json!([room]));
}

#[test]
fn invalid_power_levels_are_bad_json() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({}));
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&room));
    let current = alice.get(&path).ok().clone();
    for (key, value) in [
        ("ban", json!("50")),
        ("users", json!({"not-a-user": 10})),
        ("events", json!({"m.room.name": 1.5})),
        ("users", json!([])),
    ] {
        let mut content = current.clone();
        content[key] = value;
        alice.put(&path, content).expect_err(400, "M_BAD_JSON");
    }
    alice
        .post(
            "/_matrix/client/v3/createRoom",
            json!({"power_level_content_override": {"kick": "high"}}),
        )
        .expect_err(400, "M_BAD_JSON");
    let joined = alice.get("/_matrix/client/v3/joined_rooms").ok()["joined_rooms"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(joined, 1, "a refused createRoom leaves no half-made room behind");
    let mut fine = current.clone();
    fine["kick"] = json!(60);
    alice.put(&path, fine).ok();
    assert_eq!(alice.get(&path).ok()["kick"], 60);
}

#[test]
fn messages_filter_by_type_and_sender() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({}))
        .ok();
    for i in 0..30 {
        let who = if i % 3 == 0 { &bob } else { &alice };
        send(who, &room, &format!("t{i}"), &format!("m{i}"));
    }
    let page = |filter: serde_json::Value, extra: &str| {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5{extra}&filter={}",
            enc(&room),
            enc(&filter.to_string())
        );
        alice.get(&path).ok().clone()
    };
    // Only bob's messages, newest first, paged across the filtered-out events in between.
    let first = page(json!({"types": ["m.room.message"], "senders": [bob.uid()]}), "");
    let bodies: Vec<&str> = first["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["m27", "m24", "m21", "m18", "m15"]);
    let from = format!("&from={}", first["end"].as_str().unwrap());
    let second = page(json!({"types": ["m.room.message"], "senders": [bob.uid()]}), &from);
    let bodies: Vec<&str> = second["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, vec!["m12", "m9", "m6", "m3", "m0"]);
    // Wildcards and exclusions.
    let state_only = page(json!({"types": ["m.room.*"], "not_types": ["m.room.message"]}), "");
    assert!(
        state_only["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] != "m.room.message" && e.get("state_key").is_some())
    );
    let not_alice = page(json!({"not_senders": [alice.uid()], "types": ["m.room.message"]}), "");
    assert!(
        not_alice["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["sender"] == bob.uid())
    );
    alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&filter=%7Bnope",
            enc(&room)
        ))
        .expect_err(400, "M_INVALID_PARAM");
}

/// `/context`: events around one, and the state as it was after the last one returned (not
/// the current state).
#[test]
fn context_around_an_event() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({"name": "Before"}));
    let ids: Vec<String> = (0..10)
        .map(|i| send(&alice, &room, &format!("t{i}"), &format!("m{i}")))
        .collect();
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            json!({"name": "After"}),
        )
        .ok();

    let path = format!(
        "/_matrix/client/v3/rooms/{}/context/{}?limit=4",
        enc(&room),
        enc(&ids[4])
    );
    let c = alice.get(&path).ok().clone();
    assert_eq!(c["event"]["event_id"], ids[4]);
    let before: Vec<&str> = c["events_before"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    let after: Vec<&str> = c["events_after"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap())
        .collect();
    assert_eq!(before, vec!["m3", "m2"], "newest first before the event");
    assert_eq!(after, vec!["m5", "m6"]);
    let name = c["state"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.name")
        .unwrap();
    assert_eq!(
        name["content"]["name"], "Before",
        "state at the last returned event, not the current one"
    );
    assert!(c["start"].is_string() && c["end"].is_string());
    // The end token continues /messages right after the window.
    let next = alice.get(&format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=f&limit=1&from={}",
        enc(&room),
        c["end"].as_str().unwrap()
    ));
    assert_eq!(next.ok()["chunk"][0]["content"]["body"], "m7");
    alice
        .get(&format!("/_matrix/client/v3/rooms/{}/context/%24nope", enc(&room)))
        .expect_err(404, "M_NOT_FOUND");
}

/// Spec "Reporting content": reports about rooms, events and users are accepted only for
/// things the reporter can see, and are kept in the database (read back after the server
/// stops).
#[test]
fn reports_are_checked_and_stored() {
    let mut server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    let event = send(&alice, &room, "t1", "rude");
    let r = |path: &str| format!("/_matrix/client/v3/rooms/{}/{path}", enc(&room));
    // Bob is not in the room: the event is not his to report.
    bob.post(&r(&format!("report/{}", enc(&event))), json!({"reason": "spam"}))
        .expect_err(404, "M_NOT_FOUND");
    bob.post(&r("join"), json!({})).ok();
    bob.post(&r(&format!("report/{}", enc(&event))), json!({"reason": "spam"}))
        .ok();
    bob.post(&r("report"), json!({"reason": "bad room"})).ok();
    bob.post(
        "/_matrix/client/v3/rooms/!nope:hearth.test/report",
        json!({"reason": "x"}),
    )
    .expect_err(404, "M_NOT_FOUND");
    bob.post(
        &format!("/_matrix/client/v3/users/{}/report", enc(&alice.uid())),
        json!({"reason": "rude"}),
    )
    .ok();
    bob.post(
        "/_matrix/client/v3/users/%40ghost%3Ahearth.test/report",
        json!({"reason": "x"}),
    )
    .expect_err(404, "M_NOT_FOUND");
    server.stop();

    let services = server.open_services();
    let mut kinds: Vec<String> = services.reports.list().unwrap().into_iter().map(|r| r.kind).collect();
    kinds.sort();
    assert_eq!(kinds, vec!["event", "room", "user"]);
    drop(services);

    // The operator reads them with `hearth reports`.
    let listed = server.admin(&["reports"], None);
    let (out, err) = crate::support::out_text(&listed);
    assert!(listed.status.success(), "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains("reported user") && out.contains("rude"), "{out}");
}

#[test]
fn timestamp_to_event_finds_the_nearest_event() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({}));
    let mut sent = Vec::new();
    for i in 0..5 {
        let id = send(&alice, &room, &format!("t{i}"), &format!("m{i}"));
        let event = alice.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&id)));
        sent.push((id, event.ok()["origin_server_ts"].as_u64().unwrap()));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let find = |ts: u64, dir: &str| {
        alice.get(&format!(
            "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={ts}&dir={dir}",
            enc(&room)
        ))
    };
    let (third, third_ts) = &sent[2];
    assert_eq!(find(*third_ts, "f").ok()["event_id"], third.as_str());
    assert_eq!(find(*third_ts, "b").ok()["event_id"], third.as_str());
    assert_eq!(find(third_ts - 1, "b").ok()["event_id"], sent[1].0.as_str());
    assert_eq!(find(third_ts + 1, "f").ok()["event_id"], sent[3].0.as_str());
    assert_eq!(find(sent[4].1 + 60_000, "b").ok()["event_id"], sent[4].0.as_str());
    find(sent[4].1 + 60_000, "f").expect_err(404, "M_NOT_FOUND");
    find(1, "b").expect_err(404, "M_NOT_FOUND");
    let stranger = server.user("eve", "pw");
    stranger
        .get(&format!(
            "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts=1&dir=f",
            enc(&room)
        ))
        .expect_err(403, "M_FORBIDDEN");
}

/// /messages serves events as they stand: redacted ones redacted, state events with what they
/// replaced; and an empty POST body (as clients send to `join`) reads as `{}`.
#[test]
fn messages_show_redactions_and_prev_content() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat", "name": "First"}));
    let r = |path: &str| format!("/_matrix/client/v3/rooms/{}/{path}", enc(&room));
    bob.raw(
        "POST",
        &format!("/_matrix/client/v3/join/{}", enc(&room)),
        None,
        Some("application/json"),
    )
    .ok();
    let secret = send(&alice, &room, "t1", "oops");
    alice.put(&r(&format!("redact/{}/r1", enc(&secret))), json!({})).ok();
    alice.put(&r("state/m.room.name/"), json!({"name": "Second"})).ok();
    let page = bob.get(&r("messages?dir=b&limit=20"));
    let chunk = page.ok()["chunk"].as_array().unwrap().clone();
    let redacted = chunk.iter().find(|e| e["event_id"] == secret.as_str()).unwrap();
    assert_eq!(redacted["content"], json!({}), "{redacted}");
    assert!(redacted["unsigned"]["redacted_because"].is_object());
    let rename = chunk
        .iter()
        .find(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Second")
        .unwrap();
    assert_eq!(rename["unsigned"]["prev_content"]["name"], "First", "{rename}");
    assert_eq!(rename["unsigned"]["prev_sender"], alice.uid());
}

/// In room version 12 a room id is the hash of its create event: one user creating rooms with
/// the same content at the same moment must still get distinct rooms, each fully set up.
#[test]
fn concurrent_room_creation_gives_distinct_rooms() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let rooms: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..24)
            .map(|_| scope.spawn(|| create_room(&alice, json!({"preset": "private_chat"}))))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: std::collections::HashSet<&String> = rooms.iter().collect();
    assert_eq!(distinct.len(), rooms.len(), "{rooms:?}");
    let joined = alice.get("/_matrix/client/v3/joined_rooms");
    assert_eq!(joined.ok()["joined_rooms"].as_array().unwrap().len(), rooms.len());
}

/// `/messages` with `lazy_load_members`: the member events of the page's senders come along
/// in `state`, so a client can name them without loading every member.
#[test]
fn messages_with_lazy_members_carry_the_senders_member_events() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let carol = server.user("carol", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    for c in [&bob, &carol] {
        c.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({}))
            .ok();
    }
    send(&alice, &room, "t1", "from alice");
    send(&bob, &room, "t2", "from bob");
    let filter = enc(&json!({"lazy_load_members": true, "types": ["m.room.message"]}).to_string());
    let page = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10&filter={filter}",
            enc(&room)
        ))
        .ok()
        .clone();
    let mut members: Vec<String> = page["state"]
        .as_array()
        .expect("state")
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "m.room.member");
            e["state_key"].as_str().unwrap().to_owned()
        })
        .collect();
    members.sort();
    let mut expected = vec![alice.uid(), bob.uid()];
    expected.sort();
    assert_eq!(members, expected, "carol sent nothing: {page}");
    // `/context` with the option: the room's other state, and of the members only those of
    // the events' senders; without it, every member.
    let bobs = page["chunk"][0]["event_id"].as_str().unwrap().to_owned();
    let context = |filter: serde_json::Value| {
        let filter = enc(&filter.to_string());
        let answer = alice
            .get(&format!(
                "/_matrix/client/v3/rooms/{}/context/{}?limit=0&filter={filter}",
                enc(&room),
                enc(&bobs)
            ))
            .ok()
            .clone();
        let state = answer["state"].as_array().expect("state").clone();
        let mut members: Vec<String> = state
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| e["state_key"].as_str().unwrap().to_owned())
            .collect();
        members.sort();
        assert!(state.iter().any(|e| e["type"] == "m.room.create"), "{answer}");
        members
    };
    assert_eq!(context(json!({"lazy_load_members": true})), vec![bob.uid()]);
    let mut everyone = vec![alice.uid(), bob.uid(), carol.uid()];
    everyone.sort();
    assert_eq!(context(json!({})), everyone);
    // Without the option, no state.
    let plain = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=10",
            enc(&room)
        ))
        .ok()
        .clone();
    assert!(
        plain
            .get("state")
            .is_none_or(|s| s.as_array().is_some_and(Vec::is_empty)),
        "{plain}"
    );
}

/// `rooms.default_room_version` decides the version of rooms created without one.
#[test]
fn the_configured_default_room_version_is_used() {
    let server = TestServer::start_with(&[("HEARTH_ROOMS__DEFAULT_ROOM_VERSION", "11")]);
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({}));
    let create = alice
        .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.create/", enc(&room)))
        .ok()
        .clone();
    assert_eq!(create["room_version"], "11");
    let caps = alice.get("/_matrix/client/v3/capabilities").ok().clone();
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "11");
}
