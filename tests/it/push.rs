//! Push notifications over HTTP: the push-rule API (ordering, every error path), the unread
//! counts and pushes those rules decide, `/notifications` paging, pusher validation, and
//! delivery to a real push gateway on loopback (started here: a std `TcpListener` thread that
//! records every request), including a gateway that is down across a restart and one that
//! rejects a pushkey.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    rooms::{create_room, send},
    support::{Client, TestServer, enc},
};

/// How the test gateway answers.
#[derive(Clone, Debug)]
enum Mode {
    /// 200 `{"rejected": []}`.
    Up,
    /// 503.
    Down,
    /// 200 with these pushkeys rejected.
    Reject(Vec<String>),
}

/// One request the gateway saw, with what it answered.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    body: Value,
    accepted: bool,
}

/// A push gateway on a loopback port, recording requests.
struct Gateway {
    port: u16,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Gateway {
    fn start(mode: Mode) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(mode));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (m, s) = (Arc::clone(&mode), Arc::clone(&seen));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = header.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                let _ = reader.read_exact(&mut body);
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let mode = m.lock().unwrap().clone();
                let (status, answer) = match &mode {
                    Mode::Up => ("200 OK", json!({"rejected": []})),
                    Mode::Down => ("503 Service Unavailable", json!({})),
                    Mode::Reject(keys) => ("200 OK", json!({ "rejected": keys })),
                };
                s.lock().unwrap().push(Seen {
                    path,
                    body,
                    accepted: !matches!(mode, Mode::Down),
                });
                let answer = answer.to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        Gateway { port, mode, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/_matrix/push/v1/notify", self.port)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The accepted pushes for an event (any pusher).
    fn delivered(&self, event_id: &str) -> Vec<Value> {
        self.seen()
            .into_iter()
            .filter(|s| s.accepted && s.body["notification"]["event_id"] == event_id)
            .map(|s| s.body)
            .collect()
    }

    /// Waits (at most 20 s) until `done` holds for what was seen.
    fn wait_for(&self, what: &str, done: impl Fn(&[Seen]) -> bool) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if done(&self.seen()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the gateway never saw {what}: {:#?}", self.seen());
    }
}

fn server() -> TestServer {
    TestServer::start_with(&[("HEARTH_PUSH__GATEWAY_IP_ALLOW", "[\"127.0.0.1/32\"]")])
}

fn set_pusher(c: &Client, gateway_url: &str, pushkey: &str, data_extra: Value) {
    let mut data = json!({"url": gateway_url});
    if let Value::Object(extra) = data_extra {
        data.as_object_mut().unwrap().extend(extra);
    }
    c.post(
        "/_matrix/client/v3/pushers/set",
        json!({
            "kind": "http", "app_id": "org.example.app", "app_display_name": "Example",
            "device_display_name": "Phone", "pushkey": pushkey, "lang": "en", "data": data,
        }),
    )
    .ok();
}

/// A room alice creates with bob joined.
fn room_with(alice: &Client, bob: &Client, name: &str) -> String {
    let room = create_room(alice, json!({"preset": "public_chat", "name": name}));
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({}))
        .ok();
    room
}

fn unread(c: &Client, room: &str) -> (u64, u64) {
    let body = c.get("/_matrix/client/v3/sync?timeout=0").ok().clone();
    let u = &body["rooms"]["join"][room]["unread_notifications"];
    (
        u["notification_count"].as_u64().unwrap_or(0),
        u["highlight_count"].as_u64().unwrap_or(0),
    )
}

/// `/notifications` with `query` (worked out when asked: nothing to wait for).
fn notifications(c: &Client, query: &str) -> Value {
    c.get(&format!("/_matrix/client/v3/notifications?{query}")).ok().clone()
}

/// Every message of another member pushes once per pusher (full format and `event_id_only`),
/// with the unread badge, the device's pushkey, `pushkey_ts` and data without `url`; the
/// user's own messages push nothing; `/notifications` lists them, read once a receipt covers
/// them.
#[test]
fn each_message_pushes_once_per_pusher_with_counts() {
    let gateway = Gateway::start(Mode::Up);
    let server = server();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = room_with(&alice, &bob, "Garden");
    set_pusher(&bob, &gateway.url(), "full-key", json!({"extra": 1}));
    set_pusher(&bob, &gateway.url(), "id-key", json!({"format": "event_id_only"}));
    let pushers = bob.get("/_matrix/client/v3/pushers").ok().clone();
    assert_eq!(pushers["pushers"].as_array().unwrap().len(), 2, "{pushers}");

    let own = send(&bob, &room, "b1", "bob's own words");
    let first = send(&alice, &room, "a1", "hello bob");
    let second = send(&alice, &room, "a2", "still there?");
    gateway.wait_for("both messages on both pushers", |seen| {
        seen.iter().filter(|s| s.accepted).count() >= 4
    });
    // The barrier: a later message reaches the gateway only after everything before it.
    let barrier = send(&alice, &room, "a3", "barrier");
    gateway.wait_for("the barrier", |seen| {
        seen.iter()
            .filter(|s| s.body["notification"]["event_id"] == barrier.as_str())
            .count()
            == 2
    });
    assert!(gateway.delivered(&own).is_empty(), "no push for bob's own message");
    assert_eq!(gateway.seen().len(), 6, "exactly one push per message and pusher");
    for event in [&first, &second] {
        let pushes = gateway.delivered(event);
        assert_eq!(pushes.len(), 2, "{pushes:#?}");
        let full = pushes
            .iter()
            .find(|p| p["notification"]["devices"][0]["pushkey"] == "full-key")
            .unwrap();
        let n = &full["notification"];
        assert_eq!(n["room_id"], room.as_str());
        assert_eq!(n["type"], "m.room.message");
        assert_eq!(n["sender"], alice.uid());
        assert_eq!(n["room_name"], "Garden");
        assert_eq!(n["counts"]["unread"], 1, "one room has unread notifications");
        assert!(n["content"]["body"].is_string());
        let device = &n["devices"][0];
        assert_eq!(device["app_id"], "org.example.app");
        assert!(device["pushkey_ts"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(device["data"], json!({"extra": 1}), "data minus url");
        let id_only = pushes
            .iter()
            .find(|p| p["notification"]["devices"][0]["pushkey"] == "id-key")
            .unwrap();
        let n = &id_only["notification"];
        assert_eq!(n["event_id"], event.as_str());
        assert!(n.get("content").is_none() && n.get("type").is_none() && n.get("sender").is_none());
        assert_eq!(n["counts"]["unread"], 1);
        assert_eq!(n["devices"][0]["data"], json!({"format": "event_id_only"}));
    }
    assert!(gateway.seen().iter().all(|s| s.path == "/_matrix/push/v1/notify"));
    assert_eq!(unread(&bob, &room), (3, 0));

    let log = notifications(&bob, "");
    let entries = log["notifications"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{log}");
    assert_eq!(entries[0]["event"]["event_id"], barrier.as_str(), "newest first");
    assert_eq!(entries[2]["event"]["event_id"], first.as_str());
    assert!(
        entries
            .iter()
            .all(|e| e["read"] == false && e["room_id"] == room.as_str())
    );
    assert!(entries[0]["actions"].as_array().unwrap().iter().any(|a| a == "notify"));
    assert!(entries[0]["ts"].as_u64().unwrap() > 0);
    bob.post(
        &format!(
            "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
            enc(&room),
            enc(&second)
        ),
        json!({}),
    )
    .ok();
    let log = bob.get("/_matrix/client/v3/notifications").ok().clone();
    let read: Vec<bool> = log["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["read"].as_bool().unwrap())
        .collect();
    assert_eq!(read, vec![false, true, true]);
    // Alice's log has bob's message only (she has no pusher, so nothing was pushed to her).
    let log = alice.get("/_matrix/client/v3/notifications").ok().clone();
    let ids: Vec<&str> = log["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![own.as_str()]);
}

/// A room rule with no actions mutes the room: no push, no unread count; the rules reach the
/// user's clients as `m.push_rules` account data in `/sync`.
#[test]
fn a_muted_room_neither_pushes_nor_counts() {
    let gateway = Gateway::start(Mode::Up);
    let server = server();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let muted = room_with(&alice, &bob, "Noisy");
    let other = room_with(&alice, &bob, "Quiet");
    set_pusher(&bob, &gateway.url(), "k", json!({}));
    bob.put(
        &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&muted)),
        json!({"actions": []}),
    )
    .ok();
    let silent = send(&alice, &muted, "m1", "you will not hear this");
    let heard = send(&alice, &other, "o1", "but this");
    gateway.wait_for("the unmuted message", |seen| {
        seen.iter()
            .any(|s| s.body["notification"]["event_id"] == heard.as_str())
    });
    assert!(gateway.delivered(&silent).is_empty());
    assert_eq!(gateway.seen().len(), 1);
    assert_eq!(unread(&bob, &muted), (0, 0));
    assert_eq!(unread(&bob, &other), (1, 0));

    let body = bob.get("/_matrix/client/v3/sync?timeout=0").ok().clone();
    let rules = body["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .expect("m.push_rules in account_data")
        .clone();
    let room_rules = rules["content"]["global"]["room"].as_array().unwrap();
    assert!(room_rules.iter().any(|r| r["rule_id"] == muted.as_str()), "{rules}");

    // Unmuted by deleting the rule: the next message counts again.
    bob.delete(
        &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&muted)),
        json!({}),
    )
    .ok();
    send(&alice, &muted, "m2", "now you do");
    assert_eq!(unread(&bob, &muted), (1, 0));
}

fn rule_ids(c: &Client, kind: &str) -> Vec<String> {
    c.get("/_matrix/client/v3/pushrules/global/").ok()[kind]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule_id"].as_str().unwrap().to_owned())
        .collect()
}

/// PUT with `before`/`after` places user rules (below `.m.rule.master`, above the other
/// defaults); enabled/actions of server-default rules change; every error path answers as
/// the spec (and Synapse) say.
#[test]
fn push_rule_api_orders_rules_and_refuses_bad_requests() {
    let server = server();
    let alice = server.user("alice", "pw");
    let rule = |id: &str, query: &str| format!("/_matrix/client/v3/pushrules/global/override/{id}{query}");
    let body = json!({"actions": ["notify"], "conditions": [{"kind": "event_match", "key": "content.body", "pattern": "cake"}]});
    alice.put(&rule("a", ""), body.clone()).ok();
    alice.put(&rule("c", "?after=a"), body.clone()).ok();
    alice.put(&rule("b", "?before=c"), body.clone()).ok();
    alice.put(&rule("first", "?before=a"), body.clone()).ok();
    let ids = rule_ids(&alice, "override");
    assert_eq!(&ids[..5], &[".m.rule.master", "first", "a", "b", "c"], "{ids:?}");
    assert!(ids[5..].iter().all(|id| id.starts_with('.')));
    // Replacing a rule keeps its place; a new one with neither goes first.
    alice.put(&rule("b", ""), json!({"actions": [], "conditions": []})).ok();
    alice.put(&rule("new", ""), body.clone()).ok();
    assert_eq!(&rule_ids(&alice, "override")[1..6], &["new", "first", "a", "b", "c"]);

    let got = alice.get(&rule("a", "")).ok().clone();
    assert_eq!(got["rule_id"], "a");
    assert_eq!(got["default"], false);
    assert_eq!(got["enabled"], true);
    assert_eq!(got["conditions"][0]["pattern"], "cake");

    // A content rule with a pattern.
    alice
        .put(
            "/_matrix/client/v3/pushrules/global/content/cakes",
            json!({"pattern": "cake*", "actions": ["notify"]}),
        )
        .ok();
    assert_eq!(
        alice.get("/_matrix/client/v3/pushrules/global/content/cakes").ok()["pattern"],
        "cake*"
    );

    // Server-default rules: enabled and actions change (and stay changed), never deleted.
    let notices = "/_matrix/client/v3/pushrules/global/override/.m.rule.suppress_notices";
    alice.put(&format!("{notices}/enabled"), json!({"enabled": false})).ok();
    assert_eq!(alice.get(&format!("{notices}/enabled")).ok()["enabled"], false);
    alice
        .put(&format!("{notices}/actions"), json!({"actions": ["notify"]}))
        .ok();
    assert_eq!(
        alice.get(&format!("{notices}/actions")).ok()["actions"],
        json!(["notify"])
    );
    let got = alice.get(notices).ok().clone();
    assert_eq!(
        (got["default"].clone(), got["enabled"].clone()),
        (json!(true), json!(false))
    );
    alice.delete(notices, json!({})).expect_err(404, "M_NOT_FOUND");
    // Disabling a user rule keeps it; PUTting it again keeps it disabled (Synapse).
    alice.put(&rule("a", "/enabled"), json!({"enabled": false})).ok();
    alice.put(&rule("a", ""), body.clone()).ok();
    assert_eq!(alice.get(&rule("a", "/enabled")).ok()["enabled"], false);

    // Errors.
    alice
        .put(&rule(".m.rule.mine", ""), body.clone())
        .expect_err(400, "M_UNKNOWN");
    alice
        .put(&rule("x", "?before=nope"), body.clone())
        .expect_err(400, "M_UNKNOWN");
    alice
        .put(&rule("x", "?after=nope"), body.clone())
        .expect_err(400, "M_UNKNOWN");
    alice
        .put(&rule("x", "?after=.m.rule.master"), body.clone())
        .expect_err(400, "M_UNKNOWN");
    alice
        .put(&rule("x", "?before=a&after=c"), body.clone())
        .expect_err(400, "M_UNKNOWN");
    alice.put(&rule("x%5Cy", ""), body.clone()).expect_err(400, "M_UNKNOWN");
    assert!(
        !rule_ids(&alice, "override").contains(&"x".to_owned()),
        "a refused rule is not stored"
    );
    alice.get(&rule("nope", "")).expect_err(404, "M_NOT_FOUND");
    alice.get(&rule("nope", "/enabled")).expect_err(404, "M_NOT_FOUND");
    alice.get(&rule("nope", "/actions")).expect_err(404, "M_NOT_FOUND");
    alice
        .put(&rule("nope", "/enabled"), json!({"enabled": true}))
        .expect_err(404, "M_NOT_FOUND");
    alice
        .put(&rule("nope", "/actions"), json!({"actions": []}))
        .expect_err(404, "M_NOT_FOUND");
    alice
        .delete(&rule("nope", ""), json!({}))
        .expect_err(404, "M_NOT_FOUND");
    let status = alice.get("/_matrix/client/v3/pushrules/global/sideways/x").status;
    assert_eq!(status, 400, "an unknown kind");
    let status = alice.put(&rule("a", "/enabled"), json!({"enabled": "yes"})).status;
    assert_eq!(status, 400);
    alice
        .put(&rule("y", ""), json!({"conditions": []}))
        .expect_err(400, "M_BAD_JSON");
    server
        .client()
        .get("/_matrix/client/v3/pushrules/global/override/a")
        .expect_err(401, "M_MISSING_TOKEN");

    // Deleting a user rule; the rules survive a restart (stored as account data).
    alice.delete(&rule("new", ""), json!({})).ok();
    let mut server = server;
    server.stop();
    server.launch();
    let alice = alice.with_base(&server.base);
    assert_eq!(&rule_ids(&alice, "override")[1..5], &["first", "a", "b", "c"]);
    assert_eq!(alice.get(&format!("{notices}/enabled")).ok()["enabled"], false);
}

/// A gateway that is down gets the push retried with back-off; after a SIGKILL and restart the
/// queued push is delivered once the gateway is back: nothing lost, nothing delivered twice.
#[test]
fn a_push_to_a_down_gateway_is_retried_across_a_restart() {
    let gateway = Gateway::start(Mode::Down);
    let mut server = server();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = room_with(&alice, &bob, "Retry");
    set_pusher(&bob, &gateway.url(), "k", json!({}));
    let first = send(&alice, &room, "a1", "while the gateway is down");
    gateway.wait_for("two failed attempts", |seen| seen.len() >= 2);
    server.kill9();
    gateway.set(Mode::Up);
    server.launch();
    let alice = alice.with_base(&server.base);
    gateway.wait_for("the retried push", |seen| {
        seen.iter()
            .any(|s| s.accepted && s.body["notification"]["event_id"] == first.as_str())
    });
    let barrier = send(&alice, &room, "a2", "barrier");
    gateway.wait_for("the barrier", |seen| {
        seen.iter()
            .any(|s| s.body["notification"]["event_id"] == barrier.as_str())
    });
    assert_eq!(gateway.delivered(&first).len(), 1, "{:#?}", gateway.seen());
    assert_eq!(gateway.delivered(&barrier).len(), 1);
}

/// A push the user has read by the time of delivery (a receipt on another device) is not
/// sent.
#[test]
fn a_read_event_is_not_pushed() {
    let gateway = Gateway::start(Mode::Down);
    let server = server();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = room_with(&alice, &bob, "Read");
    set_pusher(&bob, &gateway.url(), "k", json!({}));
    let first = send(&alice, &room, "a1", "read elsewhere");
    gateway.wait_for("a failed attempt", |seen| !seen.is_empty());
    bob.post(
        &format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&first)),
        json!({}),
    )
    .ok();
    gateway.set(Mode::Up);
    let barrier = send(&alice, &room, "a2", "barrier");
    gateway.wait_for("the barrier", |seen| {
        seen.iter()
            .any(|s| s.body["notification"]["event_id"] == barrier.as_str())
    });
    assert!(gateway.delivered(&first).is_empty(), "{:#?}", gateway.seen());
}

/// The worker's cache of who has pushers follows a new pusher at once: a message the worker
/// evaluated while bob had none pushes nothing, the next one after his pusher is set pushes.
#[test]
fn a_pusher_set_after_messages_were_evaluated_gets_the_next_one() {
    let gateway = Gateway::start(Mode::Up);
    let server = server();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = room_with(&alice, &bob, "Later");
    let before = send(&alice, &room, "a0", "nobody is pushed yet");
    // The worker evaluates it (and caches that bob has no pusher) well within this.
    std::thread::sleep(Duration::from_millis(500));
    set_pusher(&bob, &gateway.url(), "k", json!({}));
    let after = send(&alice, &room, "a1", "now bob is");
    gateway.wait_for("the message after the pusher", |seen| {
        seen.iter()
            .any(|s| s.body["notification"]["event_id"] == after.as_str())
    });
    assert!(gateway.delivered(&before).is_empty(), "{:#?}", gateway.seen());
}

/// A pushkey the gateway rejects loses its pusher.
#[test]
fn a_rejected_pushkey_removes_the_pusher() {
    let gateway = Gateway::start(Mode::Reject(vec!["dead-key".into()]));
    let server = server();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = room_with(&alice, &bob, "Rejects");
    set_pusher(&bob, &gateway.url(), "dead-key", json!({}));
    send(&alice, &room, "a1", "to a dead phone");
    gateway.wait_for("the push", |seen| !seen.is_empty());
    let start = Instant::now();
    loop {
        let pushers = bob.get("/_matrix/client/v3/pushers").ok().clone();
        if pushers["pushers"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the pusher stayed: {pushers}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    send(&alice, &room, "a2", "nobody listens");
    let log = notifications(&bob, "");
    assert_eq!(log["notifications"].as_array().unwrap().len(), 2);
    assert_eq!(gateway.seen().len(), 1, "no pusher, no push");
}

/// `/notifications` pages newest first with `next_token` and filters with `only=highlight`.
#[test]
fn notifications_page_and_filter_highlights() {
    let server = server();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = room_with(&alice, &bob, "Paging");
    let mut sent = Vec::new();
    for i in 0..5 {
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/p{i}", enc(&room));
        let mut body = json!({"msgtype": "m.text", "body": format!("message {i}")});
        if i % 2 == 1 {
            body["m.mentions"] = json!({"user_ids": [bob.uid()]});
        }
        sent.push(alice.put(&path, body).ok()["event_id"].as_str().unwrap().to_owned());
    }
    let (seen, _) = all_notifications(&bob, 2);
    let newest_first: Vec<String> = sent.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);
    let highlights = bob.get("/_matrix/client/v3/notifications?only=highlight").ok().clone();
    let ids: Vec<&str> = highlights["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![sent[3].as_str(), sent[1].as_str()]);
    assert_eq!(unread(&bob, &room), (5, 2));
    // `@room` from alice (who has the power to notify the room) highlights too.
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/all", enc(&room));
    let everyone = alice
        .put(
            &path,
            json!({"msgtype": "m.text", "body": "all of you", "m.mentions": {"room": true}}),
        )
        .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let highlights = notifications(&bob, "only=highlight");
    assert_eq!(highlights["notifications"][0]["event"]["event_id"], everyone.as_str());
    assert_eq!(unread(&bob, &room), (6, 3));
    // Bob (power level 0) may not notify the room: his `@room` only notifies alice.
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/bob-all", enc(&room));
    bob.put(
        &path,
        json!({"msgtype": "m.text", "body": "hey all", "m.mentions": {"room": true}}),
    )
    .ok();
    let log = notifications(&alice, "");
    let actions = log["notifications"][0]["actions"].as_array().unwrap();
    assert!(actions.iter().all(|a| a["set_tweak"] != "highlight"), "{log}");
    assert_eq!(unread(&alice, &room), (1, 0));
    bob.get("/_matrix/client/v3/notifications?from=yesterday")
        .expect_err(400, "M_INVALID_PARAM");
}

/// The unread counts count the newest events: a notifying message after more quiet events than
/// are counted (notices, which `.m.rule.suppress_notices` silences) still counts.
#[test]
fn unread_counts_see_the_newest_events_after_a_long_quiet_stretch() {
    let server = server();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let room = room_with(&alice, &bob, "Notices");
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (alice, room) = (&alice, &room);
            scope.spawn(move || {
                for i in 0..130 {
                    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/n{t}-{i}", enc(room));
                    alice
                        .put(&path, json!({"msgtype": "m.notice", "body": "bot says"}))
                        .ok();
                }
            });
        }
    });
    send(&alice, &room, "last", "a person says");
    assert_eq!(unread(&bob, &room), (1, 0));
}

/// The event ids of a `/notifications` page.
fn notification_ids(page: &Value) -> Vec<String> {
    page["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["event_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every notification of `c`, page by page (`limit` each), with the number of pages.
fn all_notifications(c: &Client, limit: usize) -> (Vec<String>, usize) {
    let (mut ids, mut pages) = (Vec::new(), 0);
    let mut from: Option<String> = None;
    while pages < 50 {
        let query = match &from {
            Some(t) => format!("limit={limit}&from={}", enc(t)),
            None => format!("limit={limit}"),
        };
        let page = c.get(&format!("/_matrix/client/v3/notifications?{query}")).ok().clone();
        pages += 1;
        ids.extend(notification_ids(&page));
        match page["next_token"].as_str() {
            Some(t) => from = Some(t.to_owned()),
            None => break,
        }
    }
    (ids, pages)
}

/// `/notifications` is worked out when asked, with no pusher and no wait: the user's rooms
/// merged newest first, an invite included, nothing from before their join, nothing they sent
/// and nothing redacted; paging across rooms gives the same list.
#[test]
fn notifications_merge_rooms_newest_first_without_pushers() {
    let server = server();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let carol = server.user("carol", "pw");
    let first = room_with(&alice, &bob, "First");
    let second = room_with(&alice, &bob, "Second");
    let late = create_room(&alice, json!({"preset": "public_chat"}));
    send(&alice, &late, "l0", "before bob came");
    bob.post(&format!("/_matrix/client/v3/join/{}", enc(&late)), json!({}))
        .ok();
    let a1 = send(&alice, &first, "a1", "one");
    let b1 = send(&alice, &second, "b1", "two");
    let own = send(&bob, &first, "own", "bob's own");
    let l1 = send(&alice, &late, "l1", "three");
    let gone = send(&alice, &second, "b2", "soon redacted");
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&second), enc(&gone)),
            json!({}),
        )
        .ok();
    let mention = send(&alice, &first, "a2", "bob!");
    let invite_room = create_room(&carol, json!({}));
    carol
        .post(
            &format!("/_matrix/client/v3/rooms/{}/invite", enc(&invite_room)),
            json!({"user_id": bob.uid()}),
        )
        .ok();
    let page = bob.get("/_matrix/client/v3/notifications").ok().clone();
    let ids = notification_ids(&page);
    assert_eq!(ids.len(), 5, "{page:#}");
    assert_eq!(page["notifications"][0]["room_id"], invite_room.as_str());
    assert_eq!(page["notifications"][0]["event"]["type"], "m.room.member");
    assert_eq!(&ids[1..], [mention.as_str(), l1.as_str(), b1.as_str(), a1.as_str()]);
    assert!(page.get("next_token").is_none(), "{page:#}");
    let (paged, pages) = all_notifications(&bob, 1);
    assert_eq!(paged, ids);
    assert!(pages <= 6, "{pages} pages");
    // Alice's: bob's message only, none of her own.
    assert_eq!(
        notification_ids(&alice.get("/_matrix/client/v3/notifications").ok().clone()),
        [own]
    );
}

/// Events from a user one ignores are not among one's notifications (as no push is made for
/// them).
#[test]
fn notifications_leave_out_ignored_users() {
    let server = server();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let carol = server.user("carol", "pw");
    let room = room_with(&alice, &bob, "Ignoring");
    carol
        .post(&format!("/_matrix/client/v3/join/{}", enc(&room)), json!({}))
        .ok();
    bob.put(
        &format!(
            "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
            enc(&bob.uid())
        ),
        json!({"ignored_users": {carol.uid(): {}}}),
    )
    .ok();
    let heard = send(&alice, &room, "a1", "from alice");
    send(&carol, &room, "c1", "from carol, ignored");
    assert_eq!(notification_ids(&notifications(&bob, "")), std::slice::from_ref(&heard));
    // Alice ignores nobody: she hears carol.
    assert_eq!(notification_ids(&notifications(&alice, "")).len(), 1);
}

/// One request reads a bounded number of events: a muted room with more messages than that
/// gives an empty page with a `next_token`, and following it reaches what lies beyond.
#[test]
fn notifications_scan_a_bounded_number_of_events_per_request() {
    let server = server();
    let alice = server.user("alice", "pw");
    let bob = server.user("bob", "pw");
    let quiet = room_with(&alice, &bob, "Quiet");
    let heard = send(&alice, &quiet, "q1", "worth hearing");
    let noisy = room_with(&alice, &bob, "Noisy");
    bob.put(
        &format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&noisy)),
        json!({"actions": []}),
    )
    .ok();
    // More muted messages than one request reads (`SCAN_BUDGET`, 2,000), from 4 senders.
    std::thread::scope(|scope| {
        for t in 0..4 {
            let (alice, noisy) = (&alice, &noisy);
            scope.spawn(move || {
                for i in 0..520 {
                    send(alice, noisy, &format!("n{t}-{i}"), "noise");
                }
            });
        }
    });
    let first = bob.get("/_matrix/client/v3/notifications?limit=5").ok().clone();
    assert!(notification_ids(&first).is_empty(), "{first:#}");
    assert!(first["next_token"].is_string(), "more to read: {first:#}");
    let (ids, pages) = all_notifications(&bob, 5);
    assert_eq!(ids, vec![heard], "after {pages} pages");
    assert_eq!(pages, 2);
}

/// `/pushers/set`: validation errors, `kind: null` deletes, and without `append` a pushkey
/// moves from another user to the caller (with `append` both keep it); logout removes the
/// device's pushers.
#[test]
fn pushers_set_validates_replaces_and_deletes() {
    let server = server();
    let bob = server.user("bob", "pw");
    let carol = server.user("carol", "pw");
    let base = json!({
        "kind": "http", "app_id": "org.example.app", "app_display_name": "Example",
        "device_display_name": "Phone", "pushkey": "key1", "lang": "en",
        "data": {"url": "https://push.example.org/_matrix/push/v1/notify"},
    });
    let with = |f: &dyn Fn(&mut Value)| {
        let mut b = base.clone();
        f(&mut b);
        b
    };
    let set = "/_matrix/client/v3/pushers/set";
    // No url: ruma's parse refuses the body.
    assert_eq!(bob.post(set, with(&|b| b["data"] = json!({}))).status, 400);
    bob.post(
        set,
        with(&|b| b["data"]["url"] = json!("https://push.example.org/notify")),
    )
    .expect_err(400, "M_MISSING_PARAM");
    bob.post(
        set,
        with(&|b| b["data"]["url"] = json!("ftp://push.example.org/_matrix/push/v1/notify")),
    )
    .expect_err(400, "M_MISSING_PARAM");
    bob.post(set, with(&|b| b["kind"] = json!("email")))
        .expect_err(400, "M_THREEPID_NOT_FOUND");
    let status = bob.post(set, with(&|b| b["kind"] = json!("carrier-pigeon"))).status;
    assert_eq!(status, 400);
    let status = bob
        .post(
            set,
            with(&|b| {
                b.as_object_mut().unwrap().remove("app_display_name");
            }),
        )
        .status;
    assert_eq!(status, 400);
    bob.post(set, with(&|b| b["pushkey"] = json!("k".repeat(513))))
        .expect_err(400, "M_INVALID_PARAM");
    bob.post(set, with(&|b| b["app_id"] = json!("a".repeat(65))))
        .expect_err(400, "M_INVALID_PARAM");
    assert_eq!(bob.get("/_matrix/client/v3/pushers").ok()["pushers"], json!([]));

    bob.post(set, base.clone()).ok();
    let got = bob.get("/_matrix/client/v3/pushers").ok().clone();
    let pusher = &got["pushers"][0];
    assert_eq!(pusher["pushkey"], "key1");
    assert_eq!(pusher["kind"], "http");
    assert_eq!(pusher["data"]["url"], "https://push.example.org/_matrix/push/v1/notify");
    assert_eq!(pusher["app_display_name"], "Example");

    // With append, carol shares the pushkey; without, she takes it over.
    carol.post(set, with(&|b| b["append"] = json!(true))).ok();
    assert_eq!(
        bob.get("/_matrix/client/v3/pushers").ok()["pushers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    carol.post(set, base.clone()).ok();
    assert_eq!(bob.get("/_matrix/client/v3/pushers").ok()["pushers"], json!([]));
    assert_eq!(
        carol.get("/_matrix/client/v3/pushers").ok()["pushers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Updating replaces (same app id and pushkey), another pushkey adds.
    carol
        .post(set, with(&|b| b["device_display_name"] = json!("Tablet")))
        .ok();
    carol.post(set, with(&|b| b["pushkey"] = json!("key2"))).ok();
    let got = carol.get("/_matrix/client/v3/pushers").ok().clone();
    let names: Vec<&str> = got["pushers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["device_display_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["Tablet", "Phone"]);
    // kind: null deletes.
    carol
        .post(
            set,
            json!({"kind": null, "app_id": "org.example.app", "pushkey": "key1"}),
        )
        .ok();
    let got = carol.get("/_matrix/client/v3/pushers").ok().clone();
    assert_eq!(got["pushers"].as_array().unwrap().len(), 1);
    assert_eq!(got["pushers"][0]["pushkey"], "key2");
    // Logging the device out removes its pushers (Synapse).
    carol.post("/_matrix/client/v3/logout", json!({})).ok();
    let mut carol = server.client();
    carol.login("carol", "pw");
    assert_eq!(carol.get("/_matrix/client/v3/pushers").ok()["pushers"], json!([]));
}

/// A password change that signs out the other devices (the default) takes their pushers too:
/// a phone signed out must stop getting pushes. The device kept keeps its pusher.
#[test]
fn a_password_change_removes_the_signed_out_devices_pushers() {
    let server = server();
    let alice = server.user("alice", "old-pw");
    let mut phone = server.client();
    phone.login("alice", "old-pw");
    let url = "https://push.example.org/_matrix/push/v1/notify";
    set_pusher(&phone, url, "phone-key", json!({}));
    set_pusher(&alice, url, "laptop-key", json!({}));
    let keys = |c: &Client| -> Vec<String> {
        let mut keys: Vec<String> = c.get("/_matrix/client/v3/pushers").ok()["pushers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pushkey"].as_str().unwrap().to_owned())
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&alice), ["laptop-key", "phone-key"]);
    const PATH: &str = "/_matrix/client/v3/account/password";
    let first = alice.uia_start("POST", PATH, json!({"new_password": "new-pw"}));
    alice
        .post(
            PATH,
            json!({"new_password": "new-pw", "auth": alice.password_auth("old-pw", first["session"].as_str())}),
        )
        .ok();
    phone.whoami().expect_err(401, "M_UNKNOWN_TOKEN");
    assert_eq!(keys(&alice), ["laptop-key"]);
}
