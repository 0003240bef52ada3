//! Thread subscriptions (MSC4306) over HTTP: subscribe, read and unsubscribe with their error
//! paths, the automatic-subscription conflict rule, notification counts and the notification
//! log following subscriptions (the `postcontent` thread rules), the sliding-sync extension
//! (MSC4308: initial, incremental, long-poll, `limit` with `prev_batch`) and its catch-up
//! endpoint; and the `spaces` / `tags` / `not_tags` list filters on the unstable sliding-sync
//! endpoint.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    rooms::{create_room, send},
    support::{Client, Resp, TestServer, enc},
};

const SS: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
const CHANGES: &str = "/_matrix/client/unstable/io.element.msc4308/thread_subscriptions";
const EXT: &str = "io.element.msc4308.thread_subscriptions";

fn sub_path(room: &str, root: &str) -> String {
    format!(
        "/_matrix/client/unstable/io.element.msc4306/rooms/{}/thread/{}/subscription",
        enc(room),
        enc(root)
    )
}

fn subscribe(c: &Client, room: &str, root: &str, body: Value) -> Resp {
    c.put(&sub_path(room, root), body)
}

fn get_sub(c: &Client, room: &str, root: &str) -> Resp {
    c.get(&sub_path(room, root))
}

fn unsubscribe(c: &Client, room: &str, root: &str) -> Resp {
    c.delete(&sub_path(room, root), json!({}))
}

fn send_content(c: &Client, room: &str, txn: &str, content: Value) -> String {
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room));
    c.put(&path, content).ok()["event_id"].as_str().unwrap().to_owned()
}

fn thread_reply(c: &Client, room: &str, txn: &str, root: &str, body: &str) -> String {
    send_content(
        c,
        room,
        txn,
        json!({"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}}),
    )
}

fn join(c: &Client, room: &str) {
    c.post(&format!("/_matrix/client/v3/join/{}", enc(room)), json!({}))
        .ok();
}

fn ss(c: &Client, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Value {
    let mut path = format!("{SS}?timeout={timeout_ms}");
    if let Some(pos) = pos {
        path.push_str(&format!("&pos={}", enc(pos)));
    }
    c.post(&path, body.clone()).ok().clone()
}

fn ext_body(conn: &str, limit: Option<u64>) -> Value {
    let mut ext = json!({"enabled": true});
    if let Some(limit) = limit {
        ext["limit"] = limit.into();
    }
    json!({"conn_id": conn, "lists": {}, "extensions": {EXT: ext}})
}

/// `(room, root)` pairs of a subscription map.
fn entries(map: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(rooms) = map.as_object() {
        for (room, threads) in rooms {
            for root in threads.as_object().unwrap().keys() {
                out.push((room.clone(), root.clone()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn subscribe_get_unsubscribe_and_their_errors() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let carol = server.user("carol", "pw");
    let versions = alice.get("/_matrix/client/versions").ok().clone();
    assert_eq!(versions["unstable_features"]["org.matrix.msc4306"], true, "{versions}");

    let room = create_room(&alice, json!({"preset": "public_chat"}));
    join(&bob, &room);
    let root = send(&alice, &room, "root", "root");
    let reply = thread_reply(&bob, &room, "t1", &root, "in thread");
    let main = send(&bob, &room, "main", "main timeline");

    // Nothing yet.
    get_sub(&alice, &room, &root).expect_err(404, "M_NOT_FOUND");
    // Manual subscription.
    assert_eq!(subscribe(&alice, &room, &root, json!({})).ok(), &json!({}));
    assert_eq!(get_sub(&alice, &room, &root).ok(), &json!({"automatic": false}));
    // Idempotent.
    subscribe(&alice, &room, &root, json!({})).ok();
    // Subscriptions are per user.
    get_sub(&bob, &room, &root).expect_err(404, "M_NOT_FOUND");

    // Not thread roots: an unknown event, a thread reply (a relation), an event of another room.
    let other = create_room(&alice, json!({}));
    let elsewhere = send(&alice, &other, "x", "elsewhere");
    subscribe(&alice, &room, "$nope:hearth.test", json!({})).expect_err(404, "M_NOT_FOUND");
    subscribe(&alice, &room, &reply, json!({})).expect_err(404, "M_NOT_FOUND");
    subscribe(&alice, &room, &elsewhere, json!({})).expect_err(404, "M_NOT_FOUND");
    get_sub(&alice, &room, &reply).expect_err(404, "M_NOT_FOUND");
    unsubscribe(&alice, &room, &reply).expect_err(404, "M_NOT_FOUND");

    // A room the user is not in: 403 for all three.
    subscribe(&carol, &room, &root, json!({})).expect_err(403, "M_FORBIDDEN");
    get_sub(&carol, &room, &root).expect_err(403, "M_FORBIDDEN");
    unsubscribe(&carol, &room, &root).expect_err(403, "M_FORBIDDEN");
    subscribe(&carol, &other, &elsewhere, json!({})).expect_err(403, "M_FORBIDDEN");

    // A root that history visibility hides from the user: 404.
    let private = create_room(&alice, json!({"preset": "public_chat"}));
    alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.history_visibility/",
                enc(&private)
            ),
            json!({"history_visibility": "joined"}),
        )
        .ok();
    let hidden = send(&alice, &private, "h", "before carol joined");
    join(&carol, &private);
    subscribe(&carol, &private, &hidden, json!({})).expect_err(404, "M_NOT_FOUND");
    get_sub(&carol, &private, &hidden).expect_err(404, "M_NOT_FOUND");
    let seen = send(&alice, &private, "s", "after carol joined");
    subscribe(&carol, &private, &seen, json!({})).ok();

    // Automatic subscriptions need a cause event in the thread.
    subscribe(&bob, &room, &root, json!({"automatic": main})).expect_err(400, "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD");
    subscribe(&bob, &room, &root, json!({"automatic": root})).expect_err(400, "IO.ELEMENT.MSC4306.M_NOT_IN_THREAD");
    subscribe(&bob, &room, &root, json!({"automatic": "$nope:hearth.test"})).expect_err(404, "M_NOT_FOUND");
    subscribe(&bob, &room, &root, json!({"automatic": "not an event id"})).expect_err(400, "M_BAD_JSON");
    get_sub(&bob, &room, &root).expect_err(404, "M_NOT_FOUND");

    // Unsubscribe, idempotently.
    assert_eq!(unsubscribe(&alice, &room, &root).ok(), &json!({}));
    get_sub(&alice, &room, &root).expect_err(404, "M_NOT_FOUND");
    unsubscribe(&alice, &room, &root).ok();
    unsubscribe(&bob, &room, &root).ok();

    // A former member may read and remove, but not subscribe.
    subscribe(&bob, &room, &root, json!({})).ok();
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({}))
        .ok();
    assert_eq!(get_sub(&bob, &room, &root).ok(), &json!({"automatic": false}));
    subscribe(&bob, &room, &root, json!({})).expect_err(403, "M_FORBIDDEN");
    unsubscribe(&bob, &room, &root).ok();
    get_sub(&bob, &room, &root).expect_err(404, "M_NOT_FOUND");

    // No token.
    let anonymous = alice.with_token(None);
    anonymous
        .get(&sub_path(&room, &root))
        .expect_err(401, "M_MISSING_TOKEN");
}

#[test]
fn automatic_subscriptions_follow_the_conflict_rule() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    join(&bob, &room);
    let root = send(&alice, &room, "root", "root");
    let t1 = thread_reply(&bob, &room, "t1", &root, "mentions alice");

    subscribe(&alice, &room, &root, json!({"automatic": t1})).ok();
    assert_eq!(get_sub(&alice, &room, &root).ok(), &json!({"automatic": true}));
    // A manual subscription takes precedence; a later automatic one leaves it manual.
    subscribe(&alice, &room, &root, json!({})).ok();
    assert_eq!(get_sub(&alice, &room, &root).ok(), &json!({"automatic": false}));
    subscribe(&alice, &room, &root, json!({"automatic": t1})).ok();
    assert_eq!(get_sub(&alice, &room, &root).ok(), &json!({"automatic": false}));

    // Unsubscribed after t1 arrived: t1 cannot subscribe again (a dormant device).
    unsubscribe(&alice, &room, &root).ok();
    subscribe(&alice, &room, &root, json!({"automatic": t1}))
        .expect_err(409, "IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION");
    get_sub(&alice, &room, &root).expect_err(404, "M_NOT_FOUND");
    // A manual subscription is always allowed; so is an automatic one for a newer event.
    let t2 = thread_reply(&bob, &room, "t2", &root, "newer mention");
    subscribe(&alice, &room, &root, json!({"automatic": t2})).ok();
    assert_eq!(get_sub(&alice, &room, &root).ok(), &json!({"automatic": true}));
    unsubscribe(&alice, &room, &root).ok();
    subscribe(&alice, &room, &root, json!({"automatic": t2}))
        .expect_err(409, "IO.ELEMENT.MSC4306.M_CONFLICTING_UNSUBSCRIPTION");
    subscribe(&alice, &room, &root, json!({})).ok();
    assert_eq!(get_sub(&alice, &room, &root).ok(), &json!({"automatic": false}));
}

/// Alice's unread counts in `room` from `/sync`.
fn counts(c: &Client, room: &str) -> (u64, u64) {
    let sync = c.get("/_matrix/client/v3/sync?timeout=0").ok().clone();
    let unread = &sync["rooms"]["join"][room]["unread_notifications"];
    (
        unread["notification_count"].as_u64().unwrap_or(0),
        unread["highlight_count"].as_u64().unwrap_or(0),
    )
}

#[test]
fn notifications_follow_thread_subscriptions() {
    let server = TestServer::start_with(&[("HEARTH_PUSH__THREAD_SUBSCRIPTION_RULES", "true")]);
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    join(&bob, &room);
    let root = send(&alice, &room, "root", "root");
    // The server defaults carry the MSC's rules.
    let rules = alice.get("/_matrix/client/v3/pushrules/").ok().to_string();
    assert!(rules.contains(".io.element.msc4306.rule.subscribed_thread"), "{rules}");
    assert!(
        rules.contains(".io.element.msc4306.rule.unsubscribed_thread"),
        "{rules}"
    );

    send(&bob, &room, "m1", "main");
    assert_eq!(counts(&alice, &room), (1, 0));
    // Unsubscribed thread: no activity at all.
    let quiet = thread_reply(&bob, &room, "t1", &root, "unsubscribed");
    assert_eq!(counts(&alice, &room), (1, 0));
    // Subscribed thread: notifies.
    subscribe(&alice, &room, &root, json!({})).ok();
    let loud = thread_reply(&bob, &room, "t2", &root, "subscribed");
    assert_eq!(counts(&alice, &room), (2, 0));
    // Unsubscribed again: a mention still notifies (and highlights), plain replies do not.
    unsubscribe(&alice, &room, &root).ok();
    thread_reply(&bob, &room, "t3", &root, "unsubscribed again");
    assert_eq!(counts(&alice, &room), (2, 0));
    let mention = send_content(
        &bob,
        &room,
        "t4",
        json!({
            "msgtype": "m.text", "body": "hey alice",
            "m.mentions": {"user_ids": [alice.uid()]},
            "m.relates_to": {"rel_type": "m.thread", "event_id": root}
        }),
    );
    assert_eq!(counts(&alice, &room), (3, 1));
    // A muted room still notifies for a subscribed thread (postcontent comes before room
    // rules).
    alice
        .put(
            &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room)),
            json!({"actions": []}),
        )
        .ok();
    send(&bob, &room, "m2", "muted main");
    assert_eq!(counts(&alice, &room), (3, 1));
    subscribe(&alice, &room, &root, json!({})).ok();
    thread_reply(&bob, &room, "t5", &root, "muted but subscribed");
    assert_eq!(counts(&alice, &room), (4, 1));

    // `/notifications` is worked out with the rules as they are now (room muted, thread
    // subscribed): every reply of the thread, none of the muted room's main timeline.
    let log = alice.get("/_matrix/client/v3/notifications").ok().clone();
    let listed: Vec<&str> = log["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["event"]["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert_eq!(listed[1], mention.as_str());
    assert_eq!(&listed[3..], [loud.as_str(), quiet.as_str()]);
    assert!(log["notifications"][1]["actions"].to_string().contains("highlight"));

    // The postcontent defaults can be turned off, but no rule can be added there.
    let kind = "/_matrix/client/v3/pushrules/global/io.element.msc4306.postcontent";
    alice
        .put(&format!("{kind}/mine"), json!({"actions": [], "conditions": []}))
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .put(
            &format!("{kind}/.io.element.msc4306.rule.unsubscribed_thread/enabled"),
            json!({"enabled": false}),
        )
        .ok();
    let rule = alice
        .get(&format!("{kind}/.io.element.msc4306.rule.unsubscribed_thread"))
        .ok()
        .clone();
    assert_eq!(rule["enabled"], false, "{rule}");
    unsubscribe(&alice, &room, &root).ok();
    alice
        .delete(
            &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room)),
            json!({}),
        )
        .ok();
    thread_reply(&bob, &room, "t6", &root, "unsubscribed, rule off");
    assert_eq!(counts(&alice, &room), (5, 1));
}

#[test]
fn sliding_sync_extension_and_catch_up_endpoint() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    let roots: Vec<String> = (0..4)
        .map(|i| send(&alice, &room, &format!("r{i}"), &format!("root {i}")))
        .collect();
    let reply = thread_reply(&alice, &room, "t", &roots[1], "reply");
    subscribe(&alice, &room, &roots[0], json!({})).ok();
    subscribe(&alice, &room, &roots[1], json!({"automatic": reply})).ok();
    subscribe(&alice, &room, &roots[2], json!({})).ok();
    unsubscribe(&alice, &room, &roots[2]).ok();

    // Initial: every current state, unsubscriptions included, with bump stamps.
    let first = ss(&alice, None, 0, &ext_body("c", None));
    let ext = &first["extensions"][EXT];
    let mut expected = vec![(room.clone(), roots[0].clone()), (room.clone(), roots[1].clone())];
    expected.sort();
    assert_eq!(entries(&ext["subscribed"]), expected, "{first}");
    assert_eq!(ext["subscribed"][&room][&roots[0]]["automatic"], false);
    assert_eq!(ext["subscribed"][&room][&roots[1]]["automatic"], true);
    assert!(ext["subscribed"][&room][&roots[1]]["bump_stamp"].is_u64());
    assert_eq!(entries(&ext["unsubscribed"]), vec![(room.clone(), roots[2].clone())]);
    let stamp2 = ext["unsubscribed"][&room][&roots[2]]["bump_stamp"].as_u64().unwrap();
    assert!(ext.get("prev_batch").is_none(), "{first}");

    // Incremental: nothing new, then only what changed.
    let pos1 = first["pos"].as_str().unwrap().to_owned();
    let quiet = ss(&alice, Some(&pos1), 0, &ext_body("c", None));
    assert!(quiet["extensions"].get(EXT).is_none(), "{quiet}");
    let pos2 = quiet["pos"].as_str().unwrap().to_owned();
    subscribe(&alice, &room, &roots[2], json!({})).ok();
    let next = ss(&alice, Some(&pos2), 0, &ext_body("c", None));
    let ext = &next["extensions"][EXT];
    assert_eq!(
        entries(&ext["subscribed"]),
        vec![(room.clone(), roots[2].clone())],
        "{next}"
    );
    assert!(ext["subscribed"][&room][&roots[2]]["bump_stamp"].as_u64().unwrap() > stamp2);
    assert!(ext.get("unsubscribed").is_none(), "{next}");

    // A long-poll wakes for a subscription change.
    let pos3 = next["pos"].as_str().unwrap().to_owned();
    let poller = alice.clone();
    let body = ext_body("c", None);
    let waiting = std::thread::spawn(move || ss(&poller, Some(&pos3), 20_000, &body));
    std::thread::sleep(Duration::from_millis(300));
    unsubscribe(&alice, &room, &roots[0]).ok();
    let woken = waiting.join().unwrap();
    assert_eq!(
        entries(&woken["extensions"][EXT]["unsubscribed"]),
        vec![(room.clone(), roots[0].clone())],
        "{woken}"
    );

    // A limit: the newest changes, and a prev_batch for the rest.
    subscribe(&alice, &room, &roots[3], json!({})).ok();
    let limited = ss(&alice, None, 0, &ext_body("d", Some(2)));
    let ext = &limited["extensions"][EXT];
    let mut seen = entries(&ext["subscribed"]);
    seen.extend(entries(&ext["unsubscribed"]));
    // The two newest: roots[3] subscribed, roots[0] unsubscribed.
    seen.sort();
    let mut newest = vec![(room.clone(), roots[3].clone()), (room.clone(), roots[0].clone())];
    newest.sort();
    assert_eq!(seen, newest, "{limited}");
    let prev_batch = ext["prev_batch"].as_str().expect("prev_batch").to_owned();

    // The companion endpoint walks back the rest, one at a time.
    let mut token = prev_batch;
    let mut rest = Vec::new();
    for _ in 0..5 {
        let page = alice
            .get(&format!("{CHANGES}?dir=b&limit=1&from={}", enc(&token)))
            .ok()
            .clone();
        rest.extend(entries(&page["subscribed"]));
        rest.extend(entries(&page["unsubscribed"]));
        match page["end"].as_str() {
            Some(end) => token = end.to_owned(),
            None => break,
        }
    }
    rest.sort();
    let mut older = vec![(room.clone(), roots[1].clone()), (room.clone(), roots[2].clone())];
    older.sort();
    assert_eq!(rest, older);
    // Without `from`: from the newest; `to` bounds the walk.
    let all = alice.get(&format!("{CHANGES}?dir=b")).ok().clone();
    assert_eq!(entries(&all["subscribed"]).len(), 3, "{all}");
    assert_eq!(entries(&all["unsubscribed"]).len(), 1, "{all}");
    assert!(all.get("end").is_none(), "{all}");
    let bounded = alice.get(&format!("{CHANGES}?dir=b&to={}", stamp2)).ok().clone();
    let mut after_stamp2 = entries(&bounded["subscribed"]);
    after_stamp2.extend(entries(&bounded["unsubscribed"]));
    assert_eq!(after_stamp2.len(), 3, "{bounded}");
    // Bad input.
    alice
        .get(&format!("{CHANGES}?dir=b&limit=0"))
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .get(&format!("{CHANGES}?dir=b&from=garbage"))
        .expect_err(400, "M_INVALID_PARAM");
    assert_eq!(alice.get(CHANGES).status, 400);
}

#[test]
fn spaces_and_tags_filters_on_the_unstable_endpoint() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let space = create_room(&alice, json!({"creation_content": {"type": "m.space"}}));
    let inside = create_room(&alice, json!({"name": "inside"}));
    let outside = create_room(&alice, json!({"name": "outside"}));
    alice
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.space.child/{}",
                enc(&space),
                enc(&inside)
            ),
            json!({"via": ["hearth.test"]}),
        )
        .ok();
    alice
        .put(
            &format!(
                "/_matrix/client/v3/user/{}/rooms/{}/tags/m.favourite",
                enc(&alice.uid()),
                enc(&outside)
            ),
            json!({"order": 0.5}),
        )
        .ok();
    let list =
        |filters: Value| json!({"ranges": [[0, 10]], "timeline_limit": 0, "required_state": [], "filters": filters});
    let got = ss(
        &alice,
        None,
        0,
        &json!({"conn_id": "f", "lists": {
            "space": list(json!({"spaces": [space]})),
            "fav": list(json!({"tags": ["m.favourite"]})),
            "not_fav": list(json!({"not_tags": ["m.favourite"]})),
            "all": list(json!({})),
        }}),
    );
    assert_eq!(got["lists"]["all"]["count"], 3, "{got}");
    assert_eq!(got["lists"]["space"]["count"], 1, "{got}");
    assert_eq!(got["lists"]["fav"]["count"], 1, "{got}");
    assert_eq!(got["lists"]["not_fav"]["count"], 2, "{got}");
    let rooms = &got["rooms"];
    assert!(rooms.get(&inside).is_some() && rooms.get(&outside).is_some(), "{got}");
    // Badly typed filters are refused.
    let bad = alice.post(
        &format!("{SS}?timeout=0"),
        json!({"lists": {"x": {"ranges": [[0, 1]], "timeline_limit": 0, "required_state": [], "filters": {"spaces": "nope"}}}}),
    );
    assert_eq!(bad.status, 400, "{:?}", bad.body);
}

#[test]
fn thread_rules_are_off_by_default() {
    let server = TestServer::start();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = create_room(&alice, json!({"preset": "public_chat"}));
    join(&bob, &room);
    let root = send(&alice, &room, "root", "root");
    // Every thread reply notifies, subscribed or not; the endpoints still work.
    thread_reply(&bob, &room, "t1", &root, "one");
    assert_eq!(counts(&alice, &room), (1, 0));
    subscribe(&alice, &room, &root, json!({})).ok();
    thread_reply(&bob, &room, "t2", &root, "two");
    assert_eq!(counts(&alice, &room), (2, 0));
}
