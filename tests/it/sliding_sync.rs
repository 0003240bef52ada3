//! Simplified sliding sync (MSC4186 at `/_matrix/client/unstable/org.matrix.simplified_msc3575/sync`)
//! over HTTP: connections and `M_UNKNOWN_POS`, lists sorted by recency with ranges and filters,
//! room subscriptions, `required_state` and its changes, timelines usable with `/messages`,
//! unread counts clearing with a receipt, invites, leaves, the long-poll, and the extensions;
//! and the accepted form at `/_matrix/client/v4/sync` on the same engine.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    rooms::{create_room, send},
    support::{Client, Resp, TestServer, enc},
};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

fn ss_raw(c: &Client, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Resp {
    let mut path = format!("{PATH}?timeout={timeout_ms}");
    if let Some(pos) = pos {
        path.push_str(&format!("&pos={}", enc(pos)));
    }
    c.post(&path, body.clone())
}

/// One request, expected to succeed.
#[track_caller]
fn ss(c: &Client, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Value {
    ss_raw(c, pos, timeout_ms, body).ok().clone()
}

fn pos(body: &Value) -> String {
    body["pos"].as_str().expect("pos").to_owned()
}

/// A request with one list `all` of range `[0, end]`.
fn list_body(conn: &str, end: u64, timeline_limit: u64, required_state: Value) -> Value {
    json!({
        "conn_id": conn,
        "lists": {"all": {"ranges": [[0, end]], "timeline_limit": timeline_limit, "required_state": required_state}}
    })
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn state_keys(room: &Value) -> Vec<(String, String)> {
    room["required_state"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["type"].as_str().unwrap().to_owned(),
                        e["state_key"].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn has_state(room: &Value, kind: &str, key: &str) -> bool {
    state_keys(room).contains(&(kind.to_owned(), key.to_owned()))
}

fn join(c: &Client, room: &str) {
    c.post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({}))
        .ok();
}

fn public_room(c: &Client, name: &str) -> String {
    create_room(c, json!({"preset": "public_chat", "name": name}))
}

#[test]
fn versions_advertise_simplified_sliding_sync() {
    let server = TestServer::start();
    let body = server.client().get("/_matrix/client/versions").ok().clone();
    assert_eq!(
        body["unstable_features"]["org.matrix.simplified_msc3575"], true,
        "{body}"
    );
}

#[test]
fn initial_room_has_timeline_state_counts_and_prev_batch_pages() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = public_room(&alice, "Lobby");
    join(&bob, &room);
    for n in 0..5 {
        send(&bob, &room, &format!("t{n}"), &format!("m{n}"));
    }
    let body = list_body("main", 9, 2, json!([["m.room.name", ""], ["m.room.member", "$LAZY"]]));
    let first = ss(&alice, None, 0, &body);
    assert_eq!(first["lists"]["all"]["count"], 1, "{first}");
    let r = &first["rooms"][&room];
    assert_eq!(r["initial"], true, "{r}");
    assert_eq!(r["name"], "Lobby");
    assert_eq!(bodies(r), vec!["m3", "m4"]);
    assert_eq!(r["limited"], true);
    assert_eq!(r["joined_count"], 2);
    assert_eq!(r["invited_count"], 0);
    assert!(r["bump_stamp"].as_u64().is_some(), "{r}");
    assert_eq!(r["notification_count"], 5, "{r}");
    assert_eq!(r["highlight_count"], 0);
    assert!(
        r["heroes"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h["user_id"] == bob.uid()))
    );
    // $LAZY: the senders' members only (bob), plus what was asked by name.
    assert!(has_state(r, "m.room.name", ""), "{r}");
    assert!(has_state(r, "m.room.member", &bob.uid()), "{r}");
    assert!(!has_state(r, "m.room.member", &alice.uid()), "{r}");
    // prev_batch pages backwards with /messages from just before the timeline.
    let prev = r["prev_batch"].as_str().unwrap();
    let page = alice
        .get(&format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=2&from={}",
            enc(&room),
            enc(prev)
        ))
        .ok()
        .clone();
    let older: Vec<&str> = page["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(older, vec!["m2", "m1"], "{page}");

    // $ME and wildcards.
    let body = list_body("other", 9, 1, json!([["m.room.member", "$ME"], ["m.room.create", "*"]]));
    let other = ss(&alice, None, 0, &body);
    let r = &other["rooms"][&room];
    assert!(has_state(r, "m.room.member", &alice.uid()), "{r}");
    assert!(has_state(r, "m.room.create", ""), "{r}");
    assert!(!has_state(r, "m.room.member", &bob.uid()), "{r}");
    let body = list_body("all-state", 9, 1, json!([["*", "*"]]));
    let all = ss(&alice, None, 0, &body);
    let r = &all["rooms"][&room];
    for (kind, key) in [
        ("m.room.create", ""),
        ("m.room.power_levels", ""),
        ("m.room.join_rules", ""),
        ("m.room.member", bob.uid().as_str()),
    ] {
        assert!(has_state(r, kind, key), "{kind} {key}: {r}");
    }
}

#[test]
fn long_poll_wakes_and_a_message_moves_the_room_up() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let older = public_room(&alice, "Older");
    let newer = public_room(&alice, "Newer");
    join(&bob, &older);
    join(&bob, &newer);
    let newest = send(&alice, &newer, "n1", "newest");
    // A window of one room: the most recent.
    let body = list_body("main", 0, 1, json!([]));
    let first = ss(&bob, None, 0, &body);
    assert_eq!(first["lists"]["all"]["count"], 2);
    let rooms = first["rooms"].as_object().unwrap();
    assert_eq!(rooms.keys().collect::<Vec<_>>(), vec![&newer], "{first}");
    let newer_stamp = first["rooms"][&newer]["bump_stamp"].as_u64().unwrap();
    let p1 = pos(&first);

    // Nothing new: answers after the timeout with no rooms.
    let empty = ss(&bob, Some(&p1), 200, &body);
    assert!(
        empty.get("rooms").is_none_or(|r| r.as_object().unwrap().is_empty()),
        "{empty}"
    );
    let p1 = pos(&empty);

    // A waiting request is woken by a message, which moves `older` to the top of the list.
    let waiter = {
        let (bob, p1, body) = (bob.clone(), p1.clone(), body.clone());
        std::thread::spawn(move || ss(&bob, Some(&p1), 10_000, &body))
    };
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    send(&alice, &older, "o1", "bump");
    let woke = waiter.join().unwrap();
    eprintln!("sliding sync woke {:?} after the send", started.elapsed());
    let r = &woke["rooms"][&older];
    assert_eq!(r["initial"], true, "{woke}");
    assert_eq!(bodies(r), vec!["bump"]);
    assert!(r["bump_stamp"].as_u64().unwrap() > newer_stamp, "{woke}");
    assert_eq!(r["num_live"], 1, "{r}");
    assert!(woke["rooms"].get(&newer).is_none(), "{woke}");

    // A reaction, which does not bump, leaves the order as it is.
    let p2 = pos(&woke);
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/send/m.reaction/r1", enc(&newer)),
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": newest, "key": "x"}}),
        )
        .ok();
    let after = ss(&bob, Some(&p2), 0, &body);
    assert!(after["rooms"].get(&newer).is_none(), "{after}");
}

#[test]
fn two_connections_of_one_device_do_not_disturb_each_other() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = public_room(&alice, "R");
    let a_body = list_body("a", 9, 5, json!([]));
    let b_body = list_body("b", 9, 5, json!([]));
    let a1 = ss(&alice, None, 0, &a_body);
    let b1 = ss(&alice, None, 0, &b_body);
    assert_eq!(a1["rooms"][&room]["initial"], true);
    assert_eq!(b1["rooms"][&room]["initial"], true);
    send(&alice, &room, "t1", "hello");
    let a2 = ss(&alice, Some(&pos(&a1)), 0, &a_body);
    assert_eq!(bodies(&a2["rooms"][&room]), vec!["hello"], "{a2}");
    assert!(a2["rooms"][&room].get("initial").is_none(), "{a2}");
    // Connection b still gets it: a's answer did not count for b.
    let b2 = ss(&alice, Some(&pos(&b1)), 0, &b_body);
    assert_eq!(bodies(&b2["rooms"][&room]), vec!["hello"], "{b2}");
    // A retry with a's previous pos gets the same answer again.
    let a2_again = ss(&alice, Some(&pos(&a1)), 0, &a_body);
    assert_eq!(bodies(&a2_again["rooms"][&room]), vec!["hello"], "{a2_again}");
    // One connection's pos is unknown on the other.
    ss_raw(&alice, Some(&pos(&a2)), 0, &b_body).expect_err(400, "M_UNKNOWN_POS");
    // Then each goes on with nothing new.
    let a3 = ss(&alice, Some(&pos(&a2_again)), 0, &a_body);
    assert!(a3.get("rooms").is_none(), "{a3}");
    let b3 = ss(&alice, Some(&pos(&b2)), 0, &b_body);
    assert!(b3.get("rooms").is_none(), "{b3}");
}

#[test]
fn unknown_pos_answers_m_unknown_pos() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    public_room(&alice, "R");
    let body = list_body("main", 9, 1, json!([]));
    for bad in ["garbage", "5_5", "", "1_"] {
        ss_raw(&alice, Some(bad), 0, &body).expect_err(400, "M_UNKNOWN_POS");
    }
    let p1 = pos(&ss(&alice, None, 0, &body));
    let p2 = pos(&ss(&alice, Some(&p1), 0, &body));
    let p3 = pos(&ss(&alice, Some(&p2), 0, &body));
    // p1 was acknowledged away by the request with p2 ... and p2 by p3.
    ss(&alice, Some(&p3), 0, &body);
    ss_raw(&alice, Some(&p1), 0, &body).expect_err(400, "M_UNKNOWN_POS");
    // Another device of the same user does not know it.
    let mut other = server.client();
    other.login("alice", "pw");
    ss_raw(&other, Some(&p3), 0, &body).expect_err(400, "M_UNKNOWN_POS");
    // A fresh start of the connection forgets its positions.
    ss(&alice, None, 0, &body);
    ss_raw(&alice, Some(&p3), 0, &body).expect_err(400, "M_UNKNOWN_POS");
}

#[test]
fn required_state_changes_between_requests() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(
        &alice,
        json!({"preset": "public_chat", "name": "N", "topic": "first topic"}),
    );
    let narrow = list_body("main", 9, 1, json!([["m.room.name", ""]]));
    let first = ss(&alice, None, 0, &narrow);
    let r = &first["rooms"][&room];
    assert!(has_state(r, "m.room.name", ""), "{r}");
    assert!(!has_state(r, "m.room.topic", ""), "{r}");
    // Asking for more state sends the room again at once with it.
    let wider = list_body("main", 9, 1, json!([["m.room.name", ""], ["m.room.topic", ""]]));
    let second = ss(&alice, Some(&pos(&first)), 0, &wider);
    let r = &second["rooms"][&room];
    assert!(has_state(r, "m.room.topic", ""), "{second}");
    // Same config, nothing new: no room.
    let third = ss(&alice, Some(&pos(&second)), 0, &wider);
    assert!(third.get("rooms").is_none(), "{third}");
    // A state change the config asks for comes as required_state; one it does not ask for
    // only in the timeline.
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room)),
            json!({"topic": "second topic"}),
        )
        .ok();
    alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/",
                enc(&room)
            ),
            json!({"history_visibility": "shared"}),
        )
        .ok();
    let fourth = ss(&alice, Some(&pos(&third)), 0, &wider);
    let r = &fourth["rooms"][&room];
    let topics: Vec<&Value> = r["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.topic")
        .collect();
    assert_eq!(topics.len(), 1, "{r}");
    assert_eq!(topics[0]["content"]["topic"], "second topic");
    assert!(!has_state(r, "m.room.history_visibility", ""), "{r}");
}

#[test]
fn counts_clear_after_a_read_receipt_and_receipts_arrive() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = public_room(&alice, "R");
    join(&bob, &room);
    send(&alice, &room, "t1", "one");
    let last = send(&alice, &room, "t2", "two");
    let body = json!({
        "conn_id": "room-list",
        "lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": []}},
        "extensions": {"receipts": {"enabled": true, "rooms": ["*"]}, "typing": {"enabled": true}}
    });
    let first = ss(&bob, None, 0, &body);
    assert_eq!(first["rooms"][&room]["notification_count"], 2, "{first}");
    bob.post(
        &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&last)),
        json!({}),
    )
    .ok();
    let second = ss(&bob, Some(&pos(&first)), 1000, &body);
    let r = &second["rooms"][&room];
    assert_eq!(r["notification_count"], 0, "{second}");
    assert_eq!(r["highlight_count"], 0, "{second}");
    // The receipt arrives through the extension, as an m.receipt event.
    let receipt = &second["extensions"]["receipts"]["rooms"][&room];
    assert_eq!(receipt["type"], "m.receipt", "{second}");
    assert!(
        receipt["content"][&last]["m.read"][&bob.uid()]["ts"].is_u64(),
        "{second}"
    );
    // A new message counts again, and typing arrives.
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.uid())),
            json!({"typing": true, "timeout": 30000}),
        )
        .ok();
    send(&alice, &room, "t3", "three");
    let third = ss(&bob, Some(&pos(&second)), 1000, &body);
    assert_eq!(third["rooms"][&room]["notification_count"], 1, "{third}");
    let typing = &third["extensions"]["typing"]["rooms"][&room];
    assert_eq!(typing["content"]["user_ids"], json!([alice.uid()]), "{third}");
}

#[test]
fn an_invite_appears_then_moves_to_the_joined_list() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let body = json!({
        "conn_id": "room-list",
        "lists": {
            "invites": {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": [], "filters": {"is_invite": true}},
            "rooms": {"ranges": [[0, 9]], "timeline_limit": 5, "required_state": [], "filters": {"is_invite": false}}
        }
    });
    let first = ss(&bob, None, 0, &body);
    assert_eq!(first["lists"]["invites"]["count"], 0, "{first}");
    let room = create_room(
        &alice,
        json!({"preset": "private_chat", "name": "Secret", "invite": [bob.uid()]}),
    );
    let second = ss(&bob, Some(&pos(&first)), 2000, &body);
    assert_eq!(second["lists"]["invites"]["count"], 1, "{second}");
    assert_eq!(second["lists"]["rooms"]["count"], 0, "{second}");
    let r = &second["rooms"][&room];
    let invite_state = r["invite_state"].as_array().expect("invite_state");
    assert!(invite_state.iter().any(|e| e["type"] == "m.room.name"), "{r}");
    assert!(
        invite_state
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.uid()),
        "{r}"
    );
    assert!(r.get("timeline").is_none(), "invites carry no timeline: {r}");
    // Not sent again while it stays an invite.
    let third = ss(&bob, Some(&pos(&second)), 0, &body);
    assert!(third.get("rooms").is_none(), "{third}");
    join(&bob, &room);
    let fourth = ss(&bob, Some(&pos(&third)), 2000, &body);
    assert_eq!(fourth["lists"]["invites"]["count"], 0, "{fourth}");
    assert_eq!(fourth["lists"]["rooms"]["count"], 1, "{fourth}");
    let r = &fourth["rooms"][&room];
    assert_eq!(r["initial"], true, "{r}");
    assert!(r.get("invite_state").is_none(), "{r}");
    let timeline = r["timeline"].as_array().unwrap();
    assert_eq!(timeline.last().unwrap()["content"]["membership"], "join", "{r}");
}

#[test]
fn a_left_room_leaves_the_list_and_a_kicked_one_stays() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let left = public_room(&alice, "Left");
    let kicked = public_room(&alice, "Kicked");
    join(&bob, &left);
    join(&bob, &kicked);
    let body = list_body("main", 9, 3, json!([["m.room.name", ""]]));
    let first = ss(&bob, None, 0, &body);
    assert_eq!(first["lists"]["all"]["count"], 2);
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&left)), json!({}))
        .ok();
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&kicked)),
            json!({"user_id": bob.uid(), "reason": "bye"}),
        )
        .ok();
    let second = ss(&bob, Some(&pos(&first)), 2000, &body);
    // Both come once with the departure in their timeline.
    for room in [&left, &kicked] {
        let r = &second["rooms"][room];
        let last = r["timeline"]
            .as_array()
            .and_then(|t| t.last().cloned())
            .unwrap_or_default();
        assert_eq!(last["content"]["membership"], "leave", "{second}");
        assert_eq!(last["state_key"], bob.uid());
    }
    // Then the room left by the user is out of the list; the kicked one stays.
    send(&alice, &left, "after", "not for bob");
    send(&alice, &kicked, "after", "not for bob either");
    let third = ss(&bob, Some(&pos(&second)), 0, &body);
    assert_eq!(third["lists"]["all"]["count"], 1, "{third}");
    // Neither room comes again: the departures were sent.
    assert!(third.get("rooms").is_none(), "{third}");
    // A new connection does not see the left room at all.
    let fresh = ss(&bob, None, 0, &list_body("fresh", 9, 3, json!([])));
    assert_eq!(fresh["lists"]["all"]["count"], 1, "{fresh}");
    assert!(fresh["rooms"].get(&left).is_none(), "{fresh}");
    assert!(fresh["rooms"].get(&kicked).is_some(), "{fresh}");
    // Nothing after bob's departure reaches him.
    let r = &fresh["rooms"][&kicked];
    assert!(bodies(r).is_empty(), "{fresh}");
    assert_eq!(
        r["timeline"].as_array().unwrap().last().unwrap()["content"]["membership"],
        "leave"
    );
    assert!(!third.to_string().contains("not for bob"), "{third}");
}

#[test]
fn filters_is_dm_is_encrypted_room_types() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let plain = public_room(&alice, "Plain");
    let encrypted = create_room(
        &alice,
        json!({"preset": "private_chat", "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
    );
    let dm = create_room(
        &alice,
        json!({"preset": "trusted_private_chat", "is_direct": true, "invite": [bob.uid()]}),
    );
    let space = create_room(
        &alice,
        json!({"creation_content": {"type": "m.space"}, "name": "Space"}),
    );
    alice
        .put(
            &format!("/_matrix/client/v3/user/{}/account_data/m.direct", enc(&alice.uid())),
            json!({bob.uid(): [dm.clone()]}),
        )
        .ok();
    let list =
        |filters: Value| json!({"ranges": [[0, 9]], "timeline_limit": 0, "required_state": [], "filters": filters});
    let body = json!({
        "lists": {
            "dms": list(json!({"is_dm": true})),
            "not_dms": list(json!({"is_dm": false})),
            "encrypted": list(json!({"is_encrypted": true})),
            "spaces": list(json!({"room_types": ["m.space"]})),
            "not_spaces": list(json!({"not_room_types": ["m.space"]})),
            "untyped": list(json!({"room_types": [null]})),
        }
    });
    let got = ss(&alice, None, 0, &body);
    let lists = &got["lists"];
    assert_eq!(lists["dms"]["count"], 1, "{got}");
    assert_eq!(lists["not_dms"]["count"], 3, "{got}");
    assert_eq!(lists["encrypted"]["count"], 1, "{got}");
    assert_eq!(lists["spaces"]["count"], 1, "{got}");
    assert_eq!(lists["not_spaces"]["count"], 3, "{got}");
    assert_eq!(lists["untyped"]["count"], 3, "{got}");
    assert_eq!(got["rooms"][&dm]["is_dm"], true, "{got}");
    for room in [&plain, &encrypted, &dm, &space] {
        assert!(got["rooms"].get(room).is_some(), "{room}: {got}");
    }
    // Bob's invite to the DM counts as a DM by its `is_direct`.
    let bob_got = ss(
        &bob,
        None,
        0,
        &json!({"lists": {"dms": list(json!({"is_dm": true, "is_invite": true}))}}),
    );
    assert_eq!(bob_got["lists"]["dms"]["count"], 1, "{bob_got}");
    assert_eq!(bob_got["rooms"][&dm]["is_dm"], true, "{bob_got}");
}

#[test]
fn room_subscriptions_send_rooms_outside_the_windows() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let quiet = public_room(&alice, "Quiet");
    let busy = public_room(&alice, "Busy");
    let foreign = public_room(&bob, "Bob's");
    send(&alice, &busy, "t1", "recent");
    let body = json!({
        "lists": {"top": {"ranges": [[0, 0]], "timeline_limit": 1, "required_state": []}},
        "room_subscriptions": {
            quiet.clone(): {"timeline_limit": 3, "required_state": [["m.room.name", ""]]},
            foreign.clone(): {"timeline_limit": 3, "required_state": []}
        }
    });
    let got = ss(&alice, None, 0, &body);
    assert!(got["rooms"].get(&busy).is_some(), "{got}");
    let r = &got["rooms"][&quiet];
    assert_eq!(r["name"], "Quiet", "{got}");
    assert_eq!(r["timeline"].as_array().unwrap().len(), 3, "{r}");
    // Not a member: nothing of that room.
    assert!(got["rooms"].get(&foreign).is_none(), "{got}");
    // A larger timeline for a room the connection has resends its latest events, `limited`.
    let bigger = json!({
        "lists": {"top": {"ranges": [[0, 0]], "timeline_limit": 3, "required_state": []}}
    });
    let again = ss(&alice, Some(&pos(&got)), 0, &bigger);
    let r = &again["rooms"][&busy];
    assert_eq!(r["timeline"].as_array().unwrap().len(), 3, "{again}");
    assert_eq!(r["limited"], true, "{again}");
}

#[test]
fn extensions_to_device_e2ee_and_account_data() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = public_room(&alice, "R");
    join(&bob, &room);
    let device = bob.device_id.clone().unwrap();
    let body = |since: Option<&str>| {
        let mut to_device = json!({"enabled": true});
        if let Some(since) = since {
            to_device["since"] = since.into();
        }
        json!({"conn_id": "encryption", "extensions": {"to_device": to_device, "e2ee": {"enabled": true}}})
    };
    let first = ss(&bob, None, 0, &body(None));
    let ext = &first["extensions"];
    assert_eq!(
        ext["e2ee"]["device_one_time_keys_count"]["signed_curve25519"], 0,
        "{first}"
    );
    assert!(ext["e2ee"]["device_unused_fallback_key_types"].is_array(), "{first}");
    let since = ext["to_device"]["next_batch"].as_str().unwrap().to_owned();

    alice
        .put(
            "/_matrix/client/v3/sendToDevice/m.room_key_request/t1",
            json!({"messages": {bob.uid(): {device.clone(): {"n": 1}}}}),
        )
        .ok();
    let second = ss(&bob, Some(&pos(&first)), 2000, &body(Some(&since)));
    let events = second["extensions"]["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(events.len(), 1, "{second}");
    assert_eq!(events[0]["content"]["n"], 1);
    assert_eq!(events[0]["sender"], alice.uid());
    let since2 = second["extensions"]["to_device"]["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    // A retry with the old `since` gets it again; with the new one it is gone.
    let retry = ss(&bob, Some(&pos(&first)), 0, &body(Some(&since)));
    assert_eq!(
        retry["extensions"]["to_device"]["events"].as_array().map(Vec::len),
        Some(1),
        "{retry}"
    );
    let third = ss(&bob, Some(&pos(&retry)), 0, &body(Some(&since2)));
    assert!(third["extensions"]["to_device"].get("events").is_none(), "{third}");

    // A waiting request of the encryption connection is woken by a to-device message.
    let waiter = {
        let (bob, p, b) = (bob.clone(), pos(&third), body(Some(&since2)));
        std::thread::spawn(move || ss(&bob, Some(&p), 10_000, &b))
    };
    std::thread::sleep(Duration::from_millis(300));
    alice
        .put(
            "/_matrix/client/v3/sendToDevice/m.room_key_request/t2",
            json!({"messages": {bob.uid(): {device.clone(): {"n": 2}}}}),
        )
        .ok();
    let woke = waiter.join().unwrap();
    let events = woke["extensions"]["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(events.len(), 1, "{woke}");
    assert_eq!(events[0]["content"]["n"], 2);
    let since2 = woke["extensions"]["to_device"]["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let third = woke;

    // Alice's new device shows in bob's device lists.
    let mut alice2 = server.client();
    alice2.login("alice", "pw");
    alice2
        .post(
            "/_matrix/client/v3/keys/upload",
            json!({"device_keys": {"user_id": alice.uid(), "device_id": alice2.device_id.clone().unwrap(), "algorithms": [], "keys": {}, "signatures": {}}}),
        );
    let fourth = ss(&bob, Some(&pos(&third)), 2000, &body(Some(&since2)));
    let changed = fourth["extensions"]["e2ee"]["device_lists"]["changed"].clone();
    assert!(
        changed.as_array().is_some_and(|c| c.contains(&json!(alice.uid()))),
        "{fourth}"
    );

    // Account data: global and per room.
    let ad = json!({
        "conn_id": "room-list",
        "lists": {"all": {"ranges": [[0, 9]], "timeline_limit": 0, "required_state": []}},
        "extensions": {"account_data": {"enabled": true}}
    });
    bob.put(
        &format!(
            "/_matrix/client/v3/user/{}/account_data/org.example.global",
            enc(&bob.uid())
        ),
        json!({"g": 1}),
    )
    .ok();
    let a1 = ss(&bob, None, 0, &ad);
    let global = a1["extensions"]["account_data"]["global"].as_array().unwrap();
    assert!(
        global
            .iter()
            .any(|e| e["type"] == "org.example.global" && e["content"]["g"] == 1),
        "{a1}"
    );
    bob.put(
        &format!(
            "/_matrix/client/v3/user/{}/rooms/{}/account_data/org.example.room",
            enc(&bob.uid()),
            enc(&room)
        ),
        json!({"r": 2}),
    )
    .ok();
    let a2 = ss(&bob, Some(&pos(&a1)), 2000, &ad);
    let in_room = &a2["extensions"]["account_data"]["rooms"][&room];
    assert_eq!(in_room[0]["type"], "org.example.room", "{a2}");
    assert_eq!(in_room[0]["content"]["r"], 2, "{a2}");
    assert!(a2["extensions"]["account_data"].get("global").is_none(), "{a2}");
}

#[test]
fn bad_input_is_refused() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let backwards = json!({"lists": {"a": {"ranges": [[5, 1]], "timeline_limit": 1, "required_state": []}}});
    ss_raw(&alice, None, 0, &backwards).expect_err(400, "M_INVALID_PARAM");
    let long_name = json!({"lists": {"x".repeat(65): {"ranges": [[0, 1]], "timeline_limit": 1, "required_state": []}}});
    ss_raw(&alice, None, 0, &long_name).expect_err(400, "M_INVALID_PARAM");
    let no_limit = json!({"lists": {"a": {"ranges": [[0, 1]], "required_state": []}}});
    assert_eq!(ss_raw(&alice, None, 0, &no_limit).status, 400);
    let bad_since = json!({"extensions": {"to_device": {"enabled": true, "since": "nope"}}});
    ss_raw(&alice, None, 0, &bad_since).expect_err(400, "M_INVALID_PARAM");
    let dancing = alice.post(&format!("{PATH}?set_presence=dancing"), json!({}));
    dancing.expect_err(400, "M_INVALID_PARAM");
    let anonymous = alice.with_token(None);
    ss_raw(&anonymous, None, 0, &json!({})).expect_err(401, "M_MISSING_TOKEN");
    // An empty request is a valid one.
    let empty = ss(&alice, None, 0, &json!({}));
    assert!(empty["pos"].is_string(), "{empty}");
}

#[test]
fn a_rejected_invite_leaves_the_invite_list() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let body = json!({
        "lists": {"invites": {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": [], "filters": {"is_invite": true}}}
    });
    let room = create_room(&alice, json!({"preset": "private_chat", "invite": [bob.uid()]}));
    send(&alice, &room, "t1", "secret before");
    let first = ss(&bob, None, 0, &body);
    assert_eq!(first["lists"]["invites"]["count"], 1, "{first}");
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({}))
        .ok();
    let second = ss(&bob, Some(&pos(&first)), 2000, &body);
    assert_eq!(second["lists"]["invites"]["count"], 0, "{second}");
    // Nothing of the room's history reaches bob.
    assert!(!second.to_string().contains("secret before"), "{second}");

    // An invite withdrawn by the inviter goes away too (and stays away).
    let withdrawn = create_room(&alice, json!({"preset": "private_chat", "invite": [bob.uid()]}));
    let all = json!({
        "lists": {
            "invites": {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": [], "filters": {"is_invite": true}},
            "all": {"ranges": [[0, 9]], "timeline_limit": 1, "required_state": []}
        }
    });
    let third = ss(&bob, None, 0, &all);
    assert_eq!(third["lists"]["invites"]["count"], 1, "{third}");
    alice
        .post(
            &format!("/_matrix/client/v3/rooms/{}/kick", enc(&withdrawn)),
            json!({"user_id": bob.uid()}),
        )
        .ok();
    let fourth = ss(&bob, Some(&pos(&third)), 2000, &all);
    assert_eq!(fourth["lists"]["invites"]["count"], 0, "{fourth}");
    let fifth = ss(&bob, Some(&pos(&fourth)), 0, &all);
    assert_eq!(fifth["lists"]["all"]["count"], 0, "{fifth}");
}

/// One request to the accepted form's endpoint.
fn v4(c: &Client, body: &Value) -> Resp {
    c.post("/_matrix/client/v4/sync", body.clone())
}

#[test]
fn the_accepted_form_at_v4_sync() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = public_room(&alice, "Lobby");
    join(&bob, &room);
    send(&alice, &room, "t1", "hello");
    let invite = create_room(
        &alice,
        json!({"preset": "private_chat", "name": "Invite", "invite": [bob.uid()]}),
    );
    let body = |pos: Option<&str>, timeout: u64| {
        let mut body = json!({
            "conn_id": "v4",
            "timeout": timeout,
            "lists": {
                "rooms": {
                    "range": [0, 9], "timeline_limit": 3,
                    "required_state": {"include": [{}], "exclude": [{"type": "m.room.create"}], "lazy_members": true},
                    "filters": {"is_invited": false}
                },
                "invites": {"range": [0, 9], "timeline_limit": 0, "required_state": {}, "filters": {"is_invited": true}}
            },
            "extensions": {"typing": {"enabled": true}, "receipts": {"enabled": true}}
        });
        if let Some(pos) = pos {
            body["pos"] = pos.into();
        }
        body
    };
    let first = v4(&bob, &body(None, 0)).ok().clone();
    assert_eq!(first["lists"]["rooms"]["count"], 1, "{first}");
    assert_eq!(first["lists"]["invites"]["count"], 1, "{first}");
    let r = &first["rooms"][&room];
    assert_eq!(r["membership"], "join", "{r}");
    assert_eq!(r["lists"], json!(["rooms"]), "{r}");
    assert!(r.get("notification_count").is_none(), "{r}");
    assert!(has_state(r, "m.room.name", ""), "{r}");
    assert!(!has_state(r, "m.room.create", ""), "exclude applies: {r}");
    // Lazy members: the senders in the timeline only.
    assert!(has_state(r, "m.room.member", &alice.uid()), "{r}");
    let i = &first["rooms"][&invite];
    assert_eq!(i["membership"], "invite", "{i}");
    assert!(i["stripped_state"].is_array(), "{i}");
    assert!(i.get("invite_state").is_none(), "{i}");

    // Typing comes as a bare object; the pos in the body resumes the connection.
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.uid())),
            json!({"typing": true, "timeout": 30000}),
        )
        .ok();
    let second = v4(&bob, &body(Some(first["pos"].as_str().unwrap()), 2000)).ok().clone();
    assert_eq!(
        second["extensions"]["typing"]["rooms"][&room],
        json!({"user_ids": [alice.uid()]}),
        "{second}"
    );
    // A removed name is `null`; heroes come only for rooms without a name.
    assert!(first["rooms"][&room].get("heroes").is_none(), "{first}");
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room)),
            json!({}),
        )
        .ok();
    let third = v4(&bob, &body(Some(second["pos"].as_str().unwrap()), 2000))
        .ok()
        .clone();
    let r = &third["rooms"][&room];
    assert!(r.get("name").is_some_and(Value::is_null), "{third}");
    // Bad input and an unknown pos.
    v4(&bob, &body(Some("nope"), 0)).expect_err(400, "M_UNKNOWN_POS");
    let mut bad = body(None, 0);
    bad["set_presence"] = "dancing".into();
    v4(&bob, &bad).expect_err(400, "M_INVALID_PARAM");
    let mut bad = body(None, 0);
    bad["lists"]["rooms"]["range"] = json!([3, 1]);
    v4(&bob, &bad).expect_err(400, "M_INVALID_PARAM");
    assert_eq!(v4(&bob, &json!({"lists": {"x": {"range": [0, 1]}}})).status, 400);
    // Tags filter.
    alice
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/tags/m.favourite",
                enc(&alice.uid()),
                enc(&room)
            ),
            json!({"order": 0.5}),
        )
        .ok();
    let tagged = v4(
        &alice,
        &json!({"lists": {
            "fav": {"timeline_limit": 0, "required_state": {}, "filters": {"tags": ["m.favourite"]}},
            "rest": {"timeline_limit": 0, "required_state": {}, "filters": {"not_tags": ["m.favourite"]}}
        }}),
    )
    .ok()
    .clone();
    assert_eq!(tagged["lists"]["fav"]["count"], 1, "{tagged}");
    assert_eq!(tagged["lists"]["rest"]["count"], 1, "{tagged}");
}
