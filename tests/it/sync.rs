//! `/sync` over HTTP: initial and incremental syncs, long-polling, limited timelines, invites and
//! leaves, filters, lazy-loaded members, typing, receipts, read markers, tags, account data,
//! presence, ignored users, and many senders against many syncers.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    rooms::{create_room, send},
    support::{Client, TestServer, enc},
};

/// One `/sync` (no waiting unless `query` sets a timeout).
fn sync(c: &Client, since: Option<&str>, query: &str) -> Value {
    let mut path = "/_matrix/client/v3/sync?".to_owned();
    if let Some(since) = since {
        path.push_str(&format!("since={}&", enc(since)));
    }
    if !query.contains("timeout=") {
        path.push_str("timeout=0&");
    }
    path.push_str(query);
    c.get(&path).ok().clone()
}

fn filter_q(filter: Value) -> String {
    format!("filter={}", enc(&filter.to_string()))
}

fn next(body: &Value) -> String {
    body["next_batch"].as_str().expect("next_batch").to_owned()
}

/// Event ids of a joined room's timeline.
fn timeline_ids(body: &Value, room: &str) -> Vec<String> {
    body["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|a| a.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn bodies(events: &Value) -> Vec<String> {
    let Some(events) = events.as_array() else {
        return Vec::new();
    };
    events
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

fn types(events: &Value) -> Vec<String> {
    events
        .as_array()
        .map(|a| a.iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

fn join(c: &Client, room: &str) {
    c.post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({}))
        .ok();
}

fn public_room(c: &Client) -> String {
    create_room(c, json!({"preset": "public_chat", "name": "Lobby"}))
}

#[test]
fn initial_then_incremental_sees_each_event_once() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = public_room(&alice);
    let first = send(&alice, &room, "t1", "one");

    let initial = sync(&alice, None, "");
    let joined = &initial["rooms"]["join"][&room];
    let timeline = timeline_ids(&initial, &room);
    assert!(timeline.contains(&first), "{initial}");
    let all_types: Vec<String> = types(&joined["state"]["events"])
        .into_iter()
        .chain(types(&joined["timeline"]["events"]))
        .collect();
    assert!(all_types.contains(&"m.room.create".to_owned()), "{all_types:?}");
    assert_eq!(joined["summary"]["m.joined_member_count"], 1);
    assert_eq!(joined["unread_notifications"]["notification_count"], 0);
    assert_eq!(joined["unread_notifications"]["highlight_count"], 0);
    let token = next(&initial);

    let second = send(&alice, &room, "t2", "two");
    let third = send(&alice, &room, "t3", "three");
    let inc = sync(&alice, Some(&token), "");
    assert_eq!(timeline_ids(&inc, &room), vec![second, third]);
    // The sending device gets its transaction ids back; another device does not.
    let events = &inc["rooms"]["join"][&room]["timeline"]["events"];
    assert_eq!(events[0]["unsigned"]["transaction_id"], "t2");
    let mut other = server.client();
    other.login("alice", "pw");
    let seen = sync(&other, Some(&token), "");
    assert!(
        seen["rooms"]["join"][&room]["timeline"]["events"][0]["unsigned"]
            .get("transaction_id")
            .is_none()
    );
    assert_eq!(inc["rooms"]["join"][&room]["timeline"]["limited"], Value::Null);
    let token = next(&inc);
    let again = sync(&alice, Some(&token), "");
    assert!(again["rooms"]["join"].get(&room).is_none(), "nothing new: {again}");
    // The other device's login moved Alice's device list; after that nothing moves.
    let token = next(&again);
    let quiet = sync(&alice, Some(&token), "");
    assert_eq!(next(&quiet), token, "{quiet}");

    // Bad tokens are refused.
    alice
        .get("/_matrix/client/v3/sync?since=nonsense")
        .expect_err(400, "M_INVALID_PARAM");
    // full_state sends the whole state again.
    let full = sync(&alice, Some(&token), "full_state=true");
    assert!(types(&full["rooms"]["join"][&room]["state"]["events"]).contains(&"m.room.create".to_owned()));
}

#[test]
fn long_poll_wakes_on_send_and_times_out_empty() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = public_room(&alice);
    join(&bob, &room);
    let token = next(&sync(&bob, None, ""));

    // Nothing new: returns after the timeout, empty.
    let started = Instant::now();
    let empty = sync(&bob, Some(&token), "timeout=200");
    let waited = started.elapsed();
    assert!(empty["rooms"]["join"].get(&room).is_none(), "{empty}");
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );

    // A send wakes the waiting sync.
    let waiter = {
        let bob = bob.clone();
        let token = token.clone();
        std::thread::spawn(move || {
            let body = sync(&bob, Some(&token), "timeout=10000");
            (Instant::now(), body)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let sent_at = Instant::now();
    let event = send(&alice, &room, "wake", "wake up");
    let acked_at = Instant::now();
    let (woke_at, body) = waiter.join().unwrap();
    assert_eq!(timeline_ids(&body, &room), vec![event]);
    let latency = woke_at.saturating_duration_since(sent_at);
    eprintln!(
        "long-poll wake: {latency:?} after the send started ({:?} for the send itself)",
        acked_at - sent_at
    );
    assert!(latency < Duration::from_secs(1), "{latency:?}");
}

#[test]
fn limited_timeline_prev_batch_pages_with_messages() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = public_room(&alice);
    let token = next(&sync(&alice, None, ""));
    for i in 0..15 {
        send(&alice, &room, &format!("m{i}"), &format!("m{i}"));
    }
    let filter = filter_q(json!({"room": {"timeline": {"limit": 5}}}));
    let body = sync(&alice, Some(&token), &filter);
    let timeline = &body["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["limited"], true);
    assert_eq!(bodies(&timeline["events"]), vec!["m10", "m11", "m12", "m13", "m14"]);
    // A limited incremental sync sends the state at the start of the timeline.
    assert!(types(&body["rooms"]["join"][&room]["state"]["events"]).contains(&"m.room.create".to_owned()));
    let none = sync(
        &alice,
        Some(&token),
        &filter_q(json!({"room": {"timeline": {"limit": 0}}})),
    );
    let empty = &none["rooms"]["join"][&room]["timeline"];
    assert_eq!(
        (empty["limited"].clone(), bodies(&empty["events"]).len()),
        (json!(true), 0),
        "{none}"
    );
    let prev = timeline["prev_batch"].as_str().unwrap();
    let page = alice.get(&format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=5&from={}",
        enc(&room),
        enc(prev)
    ));
    assert_eq!(bodies(&page.ok()["chunk"]), vec!["m9", "m8", "m7", "m6", "m5"]);
}

#[test]
fn invites_joins_and_leaves() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"name": "Secret"}));
    let token = next(&sync(&bob, None, ""));

    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)),
            json!({"user_id": bob.uid()}),
        )
        .ok();
    let body = sync(&bob, Some(&token), "timeout=2000");
    let invite = &body["rooms"]["invite"][&room]["invite_state"]["events"];
    let kinds = types(invite);
    for t in ["m.room.create", "m.room.join_rules", "m.room.name", "m.room.member"] {
        assert!(kinds.contains(&t.to_owned()), "{t} missing: {body}");
    }
    let member = invite.as_array().unwrap().last().unwrap();
    assert_eq!(member["state_key"], bob.uid());
    assert_eq!(member["content"]["membership"], "invite");
    let token = next(&body);

    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({}))
        .ok();
    let body = sync(&bob, Some(&token), "");
    let joined = &body["rooms"]["join"][&room];
    assert!(
        types(&joined["state"]["events"]).contains(&"m.room.name".to_owned())
            || types(&joined["timeline"]["events"]).contains(&"m.room.name".to_owned())
    );
    assert!(body["rooms"]["invite"].get(&room).is_none());
    let token = next(&body);

    send(&alice, &room, "before", "before the kick");
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&room)),
            json!({"user_id": bob.uid(), "reason": "bye"}),
        )
        .ok();
    send(&alice, &room, "after", "after the kick");
    let body = sync(&bob, Some(&token), "");
    let left = &body["rooms"]["leave"][&room]["timeline"]["events"];
    assert_eq!(bodies(left), vec!["before the kick"], "{body}");
    assert_eq!(
        left.as_array().unwrap().last().unwrap()["content"]["membership"],
        "leave"
    );
    assert!(body["rooms"]["join"].get(&room).is_none());
    let token = next(&body);
    assert!(sync(&bob, Some(&token), "")["rooms"]["leave"].get(&room).is_none());

    // Initial syncs show left rooms only with include_leave.
    assert!(sync(&bob, None, "")["rooms"]["leave"].get(&room).is_none());
    let with_leave = sync(&bob, None, &filter_q(json!({"room": {"include_leave": true}})));
    assert!(with_leave["rooms"]["leave"].get(&room).is_some(), "{with_leave}");
}

/// An invite the invitee rejects, or the inviter withdraws (kicking the invitee), leaves the
/// invitee's client (issue 12): an incremental sync moves the room to `rooms.leave` with the
/// departure as the last event, and no state of a room never joined; an initial sync no longer
/// shows the invite (and, with `include_leave`, shows the room as left).
#[test]
fn rejected_and_withdrawn_invites_move_to_leave() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let rejected = create_room(&alice, json!({"name": "Rejected"}));
    let withdrawn = create_room(&alice, json!({"name": "Withdrawn"}));
    let r = |room: &str, path: &str| format!("/_matrix/client/v3/rooms/{}/{path}", enc(room));
    let token = next(&sync(&bob, None, ""));
    for room in [&rejected, &withdrawn] {
        alice.post(&r(room, "invite"), json!({"user_id": bob.uid()})).ok();
    }
    let body = sync(&bob, Some(&token), "");
    for room in [&rejected, &withdrawn] {
        assert!(body["rooms"]["invite"].get(room).is_some(), "{body}");
    }
    let token = next(&body);

    bob.post(&r(&rejected, "leave"), json!({})).ok();
    alice.post(&r(&withdrawn, "kick"), json!({"user_id": bob.uid()})).ok();
    let body = sync(&bob, Some(&token), "");
    for room in [&rejected, &withdrawn] {
        assert!(body["rooms"]["invite"].get(room).is_none(), "{body}");
        let left = &body["rooms"]["leave"][room];
        let last = left["timeline"]["events"]
            .as_array()
            .and_then(|events| events.last())
            .unwrap_or_else(|| panic!("{room} not left: {body}"));
        assert_eq!(last["state_key"], bob.uid());
        assert_eq!(last["content"]["membership"], "leave");
        let state = left["state"]["events"].as_array();
        assert!(
            state.is_none_or(|s| s.is_empty()),
            "no state of a room never joined: {body}"
        );
    }
    let token = next(&body);
    let body = sync(&bob, Some(&token), "");
    assert!(
        body["rooms"]["leave"].as_object().is_none_or(|l| l.is_empty()),
        "{body}"
    );

    let initial = sync(&bob, None, "");
    assert!(
        initial["rooms"]["invite"].as_object().is_none_or(|i| i.is_empty()),
        "{initial}"
    );
    let with_leave = sync(&bob, None, &filter_q(json!({"room": {"include_leave": true}})));
    for room in [&rejected, &withdrawn] {
        assert!(with_leave["rooms"]["leave"].get(room).is_some(), "{with_leave}");
    }
}

#[test]
fn stored_filters_and_their_errors() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let path = format!("/_matrix/client/v3/user/{}/filter", enc(&alice.uid()));
    let filter = json!({"room": {"timeline": {"limit": 2, "types": ["m.room.message"]}}});
    let id = alice.post(&path, filter.clone()).ok()["filter_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = alice.get(&format!("{path}/{id}"));
    assert_eq!(stored.ok()["room"]["timeline"]["limit"], 2);
    bob.get(&format!("{path}/{id}")).expect_err(403, "M_FORBIDDEN");
    bob.post(&path, filter).expect_err(403, "M_FORBIDDEN");
    alice.get(&format!("{path}/nope")).expect_err(404, "M_NOT_FOUND");
    let bad = alice.raw("POST", &path, Some(b"{not json"), Some("application/json"));
    assert_eq!(bad.status, 400);
    assert!(matches!(bad.errcode(), "M_NOT_JSON" | "M_BAD_JSON"), "{}", bad.text);
    alice
        .post(&path, json!({"room": {"timeline": {"limit": "ten"}}}))
        .expect_err(400, "M_BAD_JSON");
    alice
        .post(&path, json!({"room": {"timeline": {"types": [""]}}}))
        .expect_err(400, "M_INVALID_PARAM");

    let room = public_room(&alice);
    send(&alice, &room, "a", "a");
    send(&alice, &room, "b", "b");
    send(&alice, &room, "c", "c");
    let body = sync(&alice, None, &format!("filter={id}"));
    let events = &body["rooms"]["join"][&room]["timeline"]["events"];
    assert_eq!(bodies(events), vec!["b", "c"]);
    assert_eq!(types(events), vec!["m.room.message", "m.room.message"]);

    alice
        .get("/_matrix/client/v3/sync?filter=unknown")
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .get(&format!(
            "/_matrix/client/v3/sync?{}",
            filter_q(json!({"room": {"timeline": {"limit": "x"}}}))
        ))
        .expect_err(400, "M_INVALID_PARAM");
}

#[test]
fn each_kind_of_filter_applies() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let one = public_room(&alice);
    let two = public_room(&alice);
    join(&bob, &one);
    send(&alice, &one, "a1", "from alice");
    send(&bob, &one, "b1", "from bob");
    let state_key = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&one));
    alice.put(&state_key, json!({"topic": "t"})).ok();

    // Room lists.
    let body = sync(&alice, None, &filter_q(json!({"room": {"rooms": [one]}})));
    assert!(body["rooms"]["join"].get(&one).is_some() && body["rooms"]["join"].get(&two).is_none());
    let body = sync(&alice, None, &filter_q(json!({"room": {"not_rooms": [one]}})));
    assert!(body["rooms"]["join"].get(&one).is_none() && body["rooms"]["join"].get(&two).is_some());

    // Timeline: senders, not_senders, not_types with wildcards.
    let timeline = |filter: Value| {
        let body = sync(&alice, None, &filter_q(json!({"room": {"timeline": filter}})));
        body["rooms"]["join"][&one]["timeline"]["events"].clone()
    };
    assert_eq!(bodies(&timeline(json!({"senders": [bob.uid()]}))), vec!["from bob"]);
    assert_eq!(
        bodies(&timeline(
            json!({"not_senders": [bob.uid()], "types": ["m.room.message"]})
        )),
        vec!["from alice"]
    );
    let kinds = types(&timeline(json!({"not_types": ["m.room.*"]})));
    assert!(kinds.is_empty(), "{kinds:?}");
    let kinds = types(&timeline(json!({"types": ["m.room.t*"], "limit": 50})));
    assert_eq!(kinds, vec!["m.room.topic"]);

    // event_fields cuts events down to the listed paths.
    let body = sync(
        &alice,
        None,
        &filter_q(
            json!({"event_fields": ["type", "content.body"], "room": {"timeline": {"types": ["m.room.message"]}}}),
        ),
    );
    assert_eq!(
        body["rooms"]["join"][&one]["timeline"]["events"][0],
        json!({"type": "m.room.message", "content": {"body": "from alice"}})
    );

    // State: only the listed types.
    let body = sync(
        &alice,
        None,
        &filter_q(json!({"room": {"timeline": {"limit": 1}, "state": {"types": ["m.room.name"]}}})),
    );
    assert_eq!(
        types(&body["rooms"]["join"][&one]["state"]["events"]),
        vec!["m.room.name"]
    );

    // Ephemeral, room account data, global account data, presence.
    let typing = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&one), enc(&bob.uid()));
    bob.put(&typing, json!({"typing": true, "timeout": 10000})).ok();
    let tags = format!(
        "/_matrix/client/v3/user/{}/rooms/{}/tags/u.work",
        enc(&alice.uid()),
        enc(&one)
    );
    alice.put(&tags, json!({})).ok();
    alice
        .put(
            &format!("/_matrix/client/v3/user/{}/account_data/org.example", enc(&alice.uid())),
            json!({"x": 1}),
        )
        .ok();
    alice
        .put(
            &format!("/_matrix/client/v3/presence/{}/status", enc(&bob.uid())),
            json!({"presence": "online"}),
        )
        .expect_err(403, "M_FORBIDDEN");
    bob.put(
        &format!("/_matrix/client/v3/presence/{}/status", enc(&bob.uid())),
        json!({"presence": "online"}),
    )
    .ok();
    let all = sync(&alice, None, "");
    assert_eq!(
        types(&all["rooms"]["join"][&one]["ephemeral"]["events"]),
        vec!["m.typing"]
    );
    assert_eq!(
        types(&all["rooms"]["join"][&one]["account_data"]["events"]),
        vec!["m.tag"]
    );
    assert!(types(&all["account_data"]["events"]).contains(&"org.example".to_owned()));
    assert!(!types(&all["presence"]["events"]).is_empty());
    let none = sync(
        &alice,
        None,
        &filter_q(json!({
            "room": {"ephemeral": {"not_types": ["m.typing"]}, "account_data": {"types": ["x.*"]}},
            "account_data": {"not_types": ["org.*"]},
            "presence": {"not_types": ["*"]},
        })),
    );
    assert!(
        none["rooms"]["join"][&one]["ephemeral"]["events"]
            .as_array()
            .is_none_or(Vec::is_empty)
    );
    assert!(
        none["rooms"]["join"][&one]["account_data"]["events"]
            .as_array()
            .is_none_or(Vec::is_empty)
    );
    assert!(!types(&none["account_data"]["events"]).contains(&"org.example".to_owned()));
    assert!(none["presence"]["events"].as_array().is_none_or(Vec::is_empty));
}

#[test]
fn lazy_loading_sends_only_the_senders_members() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let carol = server.user("carol", "pw");
    let room = public_room(&alice);
    join(&bob, &room);
    join(&carol, &room);
    send(&bob, &room, "b", "hello from bob");
    let filter = json!({"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": true}}});
    let body = sync(&alice, None, &filter_q(filter));
    let state = body["rooms"]["join"][&room]["state"]["events"]
        .as_array()
        .unwrap()
        .clone();
    let mut members: Vec<String> = state
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .map(|e| e["state_key"].as_str().unwrap().to_owned())
        .collect();
    members.sort();
    let mut expected = vec![alice.uid(), bob.uid()];
    expected.sort();
    assert_eq!(members, expected);
    assert!(state.iter().any(|e| e["type"] == "m.room.create"));
    // Without lazy loading every member is there.
    let body = sync(&alice, None, &filter_q(json!({"room": {"timeline": {"limit": 1}}})));
    let count = body["rooms"]["join"][&room]["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member")
        .count();
    assert_eq!(count, 3);

    // Incremental: a new sender's member event comes with their message.
    let token = next(&body);
    send(&carol, &room, "c", "hello from carol");
    let body = sync(
        &alice,
        Some(&token),
        &filter_q(json!({"room": {"state": {"lazy_load_members": true}}})),
    );
    let state = &body["rooms"]["join"][&room]["state"]["events"];
    assert!(
        state.as_array().unwrap().iter().any(|e| e["state_key"] == carol.uid()),
        "{body}"
    );

    // Her next message does not bring her member event again (the device has it), unless the
    // filter asks for redundant members; a new member event of hers is sent.
    let members_in = |body: &Value| -> Vec<String> {
        body["rooms"]["join"][&room]["state"]["events"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let lazy = filter_q(json!({"room": {"state": {"lazy_load_members": true}}}));
    let token = next(&body);
    send(&carol, &room, "c2", "carol again");
    let body = sync(&alice, Some(&token), &lazy);
    assert!(!members_in(&body).contains(&carol.uid()), "{body}");
    assert!(
        body["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .is_some_and(|e| e.len() == 1)
    );
    let redundant =
        filter_q(json!({"room": {"state": {"lazy_load_members": true, "include_redundant_members": true}}}));
    let body = sync(&alice, Some(&token), &redundant);
    assert!(members_in(&body).contains(&carol.uid()), "{body}");
    let token = next(&body);
    carol
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&carol.uid())),
            json!({"displayname": "Caroline"}),
        )
        .ok();
    send(&carol, &room, "c3", "renamed");
    let limited = filter_q(json!({"room": {"timeline": {"limit": 1}, "state": {"lazy_load_members": true}}}));
    let body = sync(&alice, Some(&token), &limited);
    let state = &body["rooms"]["join"][&room]["state"]["events"];
    assert!(
        state
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["state_key"] == carol.uid() && e["content"]["displayname"] == "Caroline"),
        "{body}"
    );
}

#[test]
fn typing_appears_wakes_and_expires() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let eve = server.user("eve", "pw");
    let room = public_room(&alice);
    join(&bob, &room);
    let token = next(&sync(&bob, None, ""));
    let path = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.uid()));
    bob.put(&path, json!({"typing": true, "timeout": 1000}))
        .expect_err(403, "M_FORBIDDEN");
    eve.put(
        &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&eve.uid())),
        json!({"typing": true, "timeout": 1000}),
    )
    .expect_err(403, "M_FORBIDDEN");

    let waiter = {
        let bob = bob.clone();
        let token = token.clone();
        std::thread::spawn(move || sync(&bob, Some(&token), "timeout=5000"))
    };
    std::thread::sleep(Duration::from_millis(100));
    alice.put(&path, json!({"typing": true, "timeout": 400})).ok();
    let body = waiter.join().unwrap();
    let typing = &body["rooms"]["join"][&room]["ephemeral"]["events"][0];
    assert_eq!(typing["type"], "m.typing");
    assert_eq!(typing["content"]["user_ids"], json!([alice.uid()]));
    // The expiry wakes the next long-poll with an empty list.
    let started = Instant::now();
    let body = sync(&bob, Some(&next(&body)), "timeout=5000");
    assert!(started.elapsed() < Duration::from_secs(3));
    let typing = &body["rooms"]["join"][&room]["ephemeral"]["events"][0];
    assert_eq!(typing["content"]["user_ids"], json!([]), "{body}");
}

#[test]
fn receipts_public_and_private_and_read_markers() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = public_room(&alice);
    join(&bob, &room);
    let event = send(&alice, &room, "m", "read me");
    let alice_token = next(&sync(&alice, None, ""));
    let bob_token = next(&sync(&bob, None, ""));
    let receipt = |kind: &str| format!("/_matrix/client/v3/rooms/{}/receipt/{kind}/{}", enc(&room), enc(&event));

    bob.post(&receipt("m.read"), json!({})).ok();
    bob.post(&receipt("m.read.private"), json!({"thread_id": "main"})).ok();
    let body = sync(&alice, Some(&alice_token), "");
    let eph = &body["rooms"]["join"][&room]["ephemeral"]["events"];
    assert_eq!(types(eph), vec!["m.receipt"], "{body}");
    let content = &eph[0]["content"][&event];
    assert!(content["m.read"][bob.uid()]["ts"].is_u64());
    assert!(
        content.get("m.read.private").is_none(),
        "private receipts stay private: {body}"
    );
    let body = sync(&bob, Some(&bob_token), "");
    let content = &body["rooms"]["join"][&room]["ephemeral"]["events"][0]["content"][&event];
    assert_eq!(content["m.read.private"][bob.uid()]["thread_id"], "main");
    let bob_token = next(&body);
    // A receipt moved once is sent once.
    assert!(sync(&bob, Some(&bob_token), "")["rooms"]["join"].get(&room).is_none());

    // Read markers: m.fully_read becomes room account data.
    bob.post(
        &format!("/_matrix/client/v3/rooms/{}/read_markers", enc(&room)),
        json!({"m.fully_read": event, "m.read": event}),
    )
    .ok();
    let body = sync(&bob, Some(&bob_token), "");
    let data = &body["rooms"]["join"][&room]["account_data"]["events"];
    assert_eq!(data[0]["type"], "m.fully_read");
    assert_eq!(data[0]["content"]["event_id"], event);
    bob.post(&receipt("m.fully_read"), json!({})).ok();
    bob.put(
        &format!(
            "/_matrix/client/v3/user/{}/rooms/{}/account_data/m.fully_read",
            enc(&bob.uid()),
            enc(&room)
        ),
        json!({"event_id": event}),
    )
    .expect_err(405, "M_BAD_JSON");
    bob.post(
        &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/%24nope", enc(&room)),
        json!({}),
    )
    .expect_err(404, "M_NOT_FOUND");
    let eve = server.user("eve", "pw");
    eve.post(&receipt("m.read"), json!({})).expect_err(403, "M_FORBIDDEN");
}

#[test]
fn tags_and_account_data_reach_sync() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = public_room(&alice);
    let token = next(&sync(&alice, None, ""));
    let base = format!("/_matrix/client/v3/user/{}/rooms/{}", enc(&alice.uid()), enc(&room));

    alice.put(&format!("{base}/tags/u.work"), json!({"order": 0.5})).ok();
    alice.put(&format!("{base}/tags/m.favourite"), json!({})).ok();
    let tags = alice.get(&format!("{base}/tags"));
    assert_eq!(tags.ok()["tags"]["u.work"]["order"], 0.5);
    assert!(tags.ok()["tags"]["m.favourite"].is_object());
    alice.delete(&format!("{base}/tags/m.favourite"), json!({})).ok();
    bob.get(&format!("{base}/tags")).expect_err(403, "M_FORBIDDEN");

    alice
        .put(&format!("{base}/account_data/org.example.room"), json!({"a": 1}))
        .ok();
    assert_eq!(alice.get(&format!("{base}/account_data/org.example.room")).ok()["a"], 1);
    alice
        .get(&format!("{base}/account_data/org.missing"))
        .expect_err(404, "M_NOT_FOUND");
    alice
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/org.example.global",
                enc(&alice.uid())
            ),
            json!({"g": true}),
        )
        .ok();

    let body = sync(&alice, Some(&token), "");
    let data = &body["rooms"]["join"][&room]["account_data"]["events"];
    let mut kinds = types(data);
    kinds.sort();
    assert_eq!(kinds, vec!["m.tag", "org.example.room"]);
    let tag = data.as_array().unwrap().iter().find(|e| e["type"] == "m.tag").unwrap();
    assert_eq!(tag["content"]["tags"], json!({"u.work": {"order": 0.5}}));
    assert_eq!(types(&body["account_data"]["events"]), vec!["org.example.global"]);
    // An account-data write wakes the user's long-poll.
    let waiter = {
        let alice = alice.clone();
        let token = next(&body);
        std::thread::spawn(move || sync(&alice, Some(&token), "timeout=5000"))
    };
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    alice
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/org.example.late",
                enc(&alice.uid())
            ),
            json!({}),
        )
        .ok();
    let woken = waiter.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(types(&woken["account_data"]["events"]), vec!["org.example.late"]);
    let token = next(&woken);
    let quiet = sync(&alice, Some(&token), "");
    assert!(
        quiet["rooms"]["join"].get(&room).is_none() && quiet.get("account_data").is_none(),
        "{quiet}"
    );

    // An initial sync holds all of it.
    let body = sync(&alice, None, "");
    assert!(types(&body["account_data"]["events"]).contains(&"org.example.global".to_owned()));
    assert_eq!(types(&body["rooms"]["join"][&room]["account_data"]["events"]).len(), 2);
}

#[test]
fn presence_reaches_users_sharing_a_room() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let eve = server.user("eve", "pw");
    let room = public_room(&alice);
    join(&bob, &room);
    let token = next(&sync(&bob, None, "set_presence=offline"));
    let status = format!("/_matrix/client/v3/presence/{}/status", enc(&alice.uid()));
    alice
        .put(&status, json!({"presence": "online", "status_msg": "hi"}))
        .ok();

    let body = sync(&bob, Some(&token), "set_presence=offline&timeout=2000");
    let event = body["presence"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["sender"] == alice.uid())
        .cloned()
        .unwrap_or_else(|| panic!("no presence for alice: {body}"));
    assert_eq!(event["type"], "m.presence");
    assert_eq!(event["content"]["presence"], "online");
    assert_eq!(event["content"]["status_msg"], "hi");
    assert_eq!(event["content"]["currently_active"], true);

    let got = bob.get(&status);
    assert_eq!(got.ok()["presence"], "online");
    assert!(got.ok()["last_active_ago"].is_u64());
    eve.get(&status).expect_err(403, "M_FORBIDDEN");
    let eve_sync = sync(&eve, None, "");
    assert!(
        !eve_sync["presence"]["events"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["sender"] == alice.uid())),
        "{eve_sync}"
    );
    alice.put(&status, json!({"presence": "unavailable"})).ok();
    assert_eq!(bob.get(&status).ok()["presence"], "unavailable");
}

#[test]
fn ignored_users_are_left_out() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = public_room(&alice);
    join(&bob, &room);
    alice
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
                enc(&alice.uid())
            ),
            json!({"ignored_users": {bob.uid(): {}}}),
        )
        .ok();
    let token = next(&sync(&alice, None, ""));
    send(&bob, &room, "b", "ignored words");
    let kept = send(&alice, &room, "a", "my words");
    let body = sync(&alice, Some(&token), "");
    assert_eq!(timeline_ids(&body, &room), vec![kept]);

    let other = create_room(&bob, json!({}));
    bob.post(
        &format!("/_matrix/client/v3/rooms/{}/invite", enc(&other)),
        json!({"user_id": alice.uid()}),
    )
    .ok();
    let body = sync(&alice, Some(&next(&body)), "");
    assert!(body["rooms"]["invite"].get(&other).is_none(), "{body}");
}

#[test]
fn many_senders_many_syncers_each_event_once_in_order() {
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 25;
    const SYNCERS: usize = 4;
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = public_room(&alice);
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let c = server.user(&format!("sender{i}"), "pw");
        join(&c, &room);
        senders.push(c);
    }
    let filter = filter_q(json!({"room": {"timeline": {"limit": 200, "types": ["m.room.message"]}}}));
    let mut syncers = Vec::new();
    for i in 0..SYNCERS {
        let c = server.user(&format!("syncer{i}"), "pw");
        join(&c, &room);
        let token = next(&sync(&c, None, &filter));
        let filter = filter.clone();
        let room = room.clone();
        syncers.push(std::thread::spawn(move || {
            let mut token = token;
            let mut seen: Vec<String> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen.len() < SENDERS * PER_SENDER && Instant::now() < deadline {
                let body = sync(&c, Some(&token), &format!("{filter}&timeout=1000"));
                let timeline = &body["rooms"]["join"][&room]["timeline"];
                assert_ne!(timeline["limited"], true, "no gaps expected");
                seen.extend(bodies(&timeline["events"]));
                token = next(&body);
            }
            seen
        }));
    }
    let threads: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let room = room.clone();
            std::thread::spawn(move || {
                for n in 0..PER_SENDER {
                    send(&c, &room, &format!("t{n}"), &format!("{i}:{n}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let results: Vec<Vec<String>> = syncers.into_iter().map(|s| s.join().unwrap()).collect();
    for seen in &results {
        assert_eq!(seen.len(), SENDERS * PER_SENDER, "{seen:?}");
        let unique: std::collections::HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "an event came twice: {seen:?}");
        for i in 0..SENDERS {
            let mine: Vec<usize> = seen
                .iter()
                .filter_map(|b| b.strip_prefix(&format!("{i}:")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..PER_SENDER).collect::<Vec<_>>(), "sender {i} out of order");
        }
        assert_eq!(seen, &results[0], "every syncer sees the same order");
    }
    // ... which is the room's stream order.
    let page = alice.get(&format!(
        "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1000",
        enc(&room)
    ));
    let mut stream: Vec<String> = bodies(&page.ok()["chunk"])
        .into_iter()
        .filter(|b| b.contains(':'))
        .collect();
    stream.reverse();
    assert_eq!(stream, results[0]);
}

#[test]
fn knocks_profile_changes_and_redactions() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let carol = server.user("carol", "pw");
    let room = create_room(
        &alice,
        json!({"initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]}),
    );
    let token = next(&sync(&carol, None, ""));
    carol
        .post(&format!("/_matrix/client/v3/knock/{}", enc(&room)), json!({}))
        .ok();
    let body = sync(&carol, Some(&token), "");
    let knock = &body["rooms"]["knock"][&room]["knock_state"]["events"];
    assert!(types(knock).contains(&"m.room.join_rules".to_owned()), "{body}");
    assert_eq!(
        knock.as_array().unwrap().last().unwrap()["content"]["membership"],
        "knock"
    );

    // A profile change is a member event, but the room is not sent again from the start.
    let token = next(&sync(&alice, None, ""));
    let message = send(&alice, &room, "m", "secret");
    let token2 = next(&sync(&alice, Some(&token), ""));
    alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(&room),
                enc(&alice.uid())
            ),
            json!({"membership": "join", "displayname": "Alice"}),
        )
        .ok();
    let body = sync(&alice, Some(&token2), "");
    let timeline = &body["rooms"]["join"][&room]["timeline"]["events"];
    assert_eq!(types(timeline), vec!["m.room.member"], "{body}");
    assert!(!timeline_ids(&body, &room).contains(&message));

    // Redacted events are served redacted.
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(&message)),
            json!({}),
        )
        .ok();
    let body = sync(&alice, None, "");
    let events = body["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .clone();
    let redacted = events.iter().find(|e| e["event_id"] == message.as_str()).unwrap();
    assert_eq!(redacted["content"], json!({}), "{redacted}");
}

/// `unread_notifications`: messages from others after the user's read receipt notify (default
/// push rules); one that mentions the user (`m.mentions`) also highlights; a receipt at the
/// latest event clears both.
#[test]
fn unread_counts_follow_push_rules_and_receipts() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    bob.put(
        &format!("/_matrix/client/v3/profile/{}/displayname", enc(&bob.uid())),
        json!({"displayname": "Bobby"}),
    )
    .ok();
    let room = public_room(&alice);
    join(&bob, &room);
    send(&alice, &room, "u1", "hello all");
    send(&bob, &room, "u2", "my own message does not count");
    send(&alice, &room, "u3", "again");
    let mention = alice.put(
        &format!("/_matrix/client/v3/rooms/{}/send/m.room.message/u4", enc(&room)),
        json!({"msgtype": "m.text", "body": "Bobby, look", "m.mentions": {"user_ids": [bob.uid()]}}),
    );
    let last = mention.ok()["event_id"].as_str().unwrap().to_owned();
    let counts = |c: &Client| {
        let body = sync(c, None, "");
        let unread = body["rooms"]["join"][&room]["unread_notifications"].clone();
        (
            unread["notification_count"].as_u64(),
            unread["highlight_count"].as_u64(),
        )
    };
    assert_eq!(counts(&bob), (Some(3), Some(1)));
    assert_eq!(
        counts(&alice),
        (Some(1), Some(0)),
        "bob's message is alice's only unread one"
    );
    bob.post(
        &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&last)),
        json!({}),
    )
    .ok();
    assert_eq!(counts(&bob), (Some(0), Some(0)));
}

/// The push rules clients read (matrix-js-sdk waits for them) are the server defaults that
/// unread counts use.
#[test]
fn push_rules_are_the_server_defaults() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let all = alice.get("/_matrix/client/v3/pushrules/");
    let master = &all.ok()["global"]["override"][0];
    assert_eq!(master["rule_id"], ".m.rule.master");
    let global = alice.get("/_matrix/client/v3/pushrules/global/");
    assert!(global.ok()["underride"].as_array().is_some_and(|r| !r.is_empty()));
    server
        .client()
        .get("/_matrix/client/v3/pushrules/")
        .expect_err(401, "M_MISSING_TOKEN");
}

#[test]
fn incremental_state_shows_what_the_timeline_filter_hides() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = public_room(&alice);
    let only_messages = filter_q(json!({"room": {"timeline": {"types": ["m.room.message"]}}}));
    let since = next(&sync(&alice, None, &only_messages));

    let topic = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room));
    alice.put(&topic, json!({"topic": "first"})).ok();
    alice.put(&topic, json!({"topic": "second"})).ok();
    send(&alice, &room, "t1", "after the topics");
    let body = sync(&alice, Some(&since), &only_messages);
    let joined = &body["rooms"]["join"][&room];
    assert_eq!(bodies(&joined["timeline"]["events"]), vec!["after the topics"]);
    assert_ne!(joined["timeline"]["limited"], true);
    // The state section carries the topic the timeline left out, the latest one only.
    let state = joined["state"]["events"].as_array().expect("state events");
    let topics: Vec<&Value> = state.iter().filter(|e| e["type"] == "m.room.topic").collect();
    assert_eq!(topics.len(), 1, "{state:?}");
    assert_eq!(topics[0]["content"]["topic"], "second");

    // With nothing new, the room is left out.
    let body = sync(&alice, Some(&next(&body)), &only_messages);
    assert!(body["rooms"]["join"].get(&room).is_none());
}

#[test]
fn use_state_after_sends_the_state_at_the_end_of_the_timeline() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = public_room(&alice);
    let topic = |text: &str| {
        alice
            .put(
                &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room)),
                json!({"topic": text}),
            )
            .ok();
    };
    topic("first");
    let token = next(&sync(&alice, None, ""));
    topic("second");
    send(&alice, &room, "t1", "after the topic");

    // Without it: `state` (up to the timeline's start) leaves out what the timeline shows.
    let before = sync(&alice, Some(&token), "");
    let joined = &before["rooms"]["join"][&room];
    assert!(joined.get("state_after").is_none(), "{joined}");
    assert!(
        !types(&joined["state"]["events"]).contains(&"m.room.topic".to_owned()),
        "{joined}"
    );

    // With it: `state_after` holds the topic change even though the timeline shows it too.
    let after = sync(&alice, Some(&token), "use_state_after=true");
    let joined = &after["rooms"]["join"][&room];
    assert!(joined.get("state").is_none(), "{joined}");
    let events = joined["state_after"]["events"].as_array().expect("state_after").clone();
    let topic_event = events.iter().find(|e| e["type"] == "m.room.topic").expect("topic");
    assert_eq!(topic_event["content"]["topic"], "second");

    // An initial sync with a short timeline: the full state at its end.
    let filter = filter_q(json!({"room": {"timeline": {"limit": 1}}}));
    let initial = sync(&alice, None, &format!("use_state_after=true&{filter}"));
    let joined = &initial["rooms"]["join"][&room];
    let state = types(&joined["state_after"]["events"]);
    for kind in ["m.room.create", "m.room.member", "m.room.topic", "m.room.name"] {
        assert!(state.contains(&kind.to_owned()), "{kind}: {joined}");
    }
}

#[test]
fn presence_must_be_a_spec_state() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let path = format!("/_matrix/client/v3/presence/{}/status", enc(&alice.uid()));
    alice
        .put(&path, json!({"presence": "sleeping"}))
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .put(&path, json!({"presence": "unavailable", "status_msg": "lunch"}))
        .ok();
    assert_eq!(alice.get(&path).ok()["presence"], "unavailable");
}
